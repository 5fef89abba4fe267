"""One async client for the Twilio Memory API: auth, pacing, retries, and nothing else.

``MemoryClient.request`` sends one logical request and answers a ``Reply``: every attempt takes
its weight from the shared ``TokenBucket``, then a place in the ``Window`` of requests in flight;
429, 500, 503 and transport errors are retried with ``RetryPolicy`` (the request that got a 429
waits its Retry-After; whether everyone waits is ``AdaptiveRate``'s call, on evidence); 401/403
raise ``AuthError``; every other status is the caller's to judge. Every answer is reported to the
``AdaptiveRate`` with what was known at the send (``Sent``).

Two wires carry the bytes, behind one retry loop that does not know which it talks to:

- by default raw aiohttp (``_AiohttpWire``): it costs about a third of the CPU per request of
  httpx over aiohttp, which is what bounds an unthrottled run on one core (BENCHMARKS.md,
  "Delivery: HTTP transport");
- with ``transport=`` an ``httpx.AsyncClient`` over that transport (``_HttpxWire``), so tests can
  inject ``httpx.MockTransport``.

Each wire translates its library's errors at this edge: a network failure (no HTTP answer) comes
back as its description, to be retried; an error of our own (a URL or header that cannot be sent)
raises ``BackfillError``. No httpx or aiohttp error leaves this module.
"""

from __future__ import annotations

import base64
import json as jsonlib
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx

from backfill import __version__
from backfill.errors import AuthError, BackfillError, ConfigError, CredentialsMissing
from backfill.transport.throttle import (
    AdaptiveRate,
    Clock,
    Sent,
    SystemClock,
    TokenBucket,
    Window,
    retry_after_seconds,
)

DEFAULT_BASE_URL = "https://memory.twilio.com"
USER_AGENT = f"backfill/{__version__}"

# (username variable, password variable), in order of preference: API keys are what Twilio
# recommends, the Auth Token is the account's master secret.
CREDENTIAL_VARIABLES = (
    ("TWILIO_API_KEY", "TWILIO_API_SECRET"),
    ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
)

RETRY_STATUSES = frozenset({429, 500, 503})
# Answers after which a write may or may not have been applied: no answer at all, or a 500 (the
# server failed somewhere, perhaps after applying it). 429 and 503 refuse before processing.
UNKNOWN_OUTCOME = frozenset({None, 500})
AUTH_STATUSES = frozenset({401, 403})

# httpx transport errors that are our own doing, not the network's: retrying cannot help.
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)
_JSON_TYPE: Final = {"Content-Type": "application/json"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # an absolute URL, not a path


TWILIO_CHECK: Final = (
    "check TWILIO_API_KEY and TWILIO_API_SECRET (or TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
)


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials: an API key SID + secret, or the Account SID + Auth Token; or a
    Segment key alone as the user name with an empty password (a write key, a Profile API
    token), which is then the secret. ``api`` and ``check`` word an auth failure."""

    username: str
    password: str = field(repr=False)
    api: str = "the Memory API"
    check: str = TWILIO_CHECK

    def __repr__(self) -> str:
        shown = repr(self.username) if self.password else "'***'"
        return f"Credentials(username={shown})"

    @property
    def secret(self) -> str:
        """What must never be shown: the password, or the key that stands alone."""
        return self.password or self.username

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        """Read TWILIO_API_KEY/TWILIO_API_SECRET, else TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN."""
        source: Mapping[str, str] = os.environ if env is None else env
        for user_var, secret_var in CREDENTIAL_VARIABLES:
            username, password = source.get(user_var, ""), source.get(secret_var, "")
            if username and password:
                return cls(username, password)
            if username or password:
                present, missing = (user_var, secret_var) if username else (secret_var, user_var)
                raise CredentialsMissing(
                    f"{present} is set but {missing} is not; set {missing} too"
                )
        raise CredentialsMissing(
            "no Twilio credentials found: set TWILIO_API_KEY and TWILIO_API_SECRET (recommended), "
            "or TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a request gets and how long to wait between them."""

    max_attempts: int = 6
    base: float = 0.5  # backoff floor, and the first attempt's backoff ceiling
    cap: float = 20.0
    retry_after_jitter: float = 0.2  # Retry-After is stretched by up to this share, never shrunk

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.base <= self.cap:
            raise ConfigError(f"need 0 < base <= cap, got base={self.base}, cap={self.cap}")
        if self.retry_after_jitter < 0:
            raise ConfigError(f"retry_after_jitter must be >= 0, got {self.retry_after_jitter}")

    def delay(self, attempt: int, retry_after: str | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        seconds = retry_after_seconds(retry_after)
        if seconds is not None and seconds > 0:
            # Positive jitter only: workers must not wake in lockstep (hermes-agent#109234),
            # and none may come back before the server said.
            return seconds * (1.0 + rng.uniform(0.0, self.retry_after_jitter))
        # Missing, "0" or garbage: full-jitter exponential backoff, floored at `base`, since
        # "0" is not "retry now" (sooperset/mcp-atlassian#1544).
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt, 1) - 1, 60))
        return max(self.base, rng.uniform(0.0, ceiling))


@dataclass(frozen=True)
class Reply:
    """The outcome of one logical request, after any retries."""

    status: int | None  # None: no HTTP response after all attempts (connection error, timeout)
    body: Any  # parsed JSON, or None
    headers: Mapping[str, str]  # lower-case names
    attempts: int
    code: int | None  # Twilio error code from the body when status >= 400
    message: str | None  # Twilio message, or the transport error when status is None
    throttled: int  # how many 429s this request met

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


ACCEPTED, THROTTLED, RETRIED, ERRORS = range(4)  # a Timeline second's counters


@dataclass
class Timeline:
    """Answers per second of the client's life (from its first send), by kind, with the rate
    the throttle allowed then: what the report's chart draws. One entry a second that saw an
    answer: a night's run is some thousands."""

    started: float | None = None  # the clock's time of the first send
    started_at: float | None = None  # the same moment in Unix time, to place sessions
    seconds: dict[int, list[float]] = field(default_factory=dict)

    def count(self, now: float, kind: int, rate: float | None) -> None:
        if self.started is None:
            self.started, self.started_at = now, time.time()
        entry = self.seconds.setdefault(int(now - self.started), [0, 0, 0, 0, 0.0])
        entry[kind] += 1
        if rate is not None:
            entry[4] = rate

    def as_dict(self) -> dict[str, Any]:
        """Columns: ``second`` (from ``started_at``), ``accepted`` (1xx-3xx), ``throttled``
        (429), ``retries`` (attempts after the first), ``errors`` (no answer, any other 4xx or
        5xx), ``rate`` (the bucket's, at the second's last answer)."""
        keys = sorted(self.seconds)
        rows = [self.seconds[k] for k in keys]
        return {
            "started_at": self.started_at,
            "second": keys,
            "accepted": [int(r[ACCEPTED]) for r in rows],
            "throttled": [int(r[THROTTLED]) for r in rows],
            "retries": [int(r[RETRIED]) for r in rows],
            "errors": [int(r[ERRORS]) for r in rows],
            "rate": [round(r[4], 3) for r in rows],
        }


@dataclass
class ClientStats:
    """Counters for run summaries."""

    sent: int = 0  # HTTP attempts, retries included
    retries: int = 0
    throttled: int = 0  # 429s
    transport_errors: int = 0  # attempts that got no HTTP response
    by_status: Counter[int] = field(default_factory=Counter)
    timeline: Timeline = field(default_factory=Timeline)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(text: str | None, secret: str) -> str | None:
    if text is None or not secret:
        return text
    return text.replace(secret, "***")


def encode_json(value: Any) -> bytes:
    """A JSON request body as httpx's ``json=`` encodes it: compact, UTF-8, no NaN."""
    return jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


# What a wire answers for one attempt: (status, headers with lower-case names, body bytes), or
# the description of the network failure that left it without an answer.
_Answer = tuple[int, dict[str, str], bytes]


class _Wire(Protocol):
    async def send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> _Answer | str: ...

    async def close(self) -> None: ...


def _cannot_send(method: str, path: str, exc: BaseException) -> BackfillError:
    return BackfillError(f"cannot send {method} {path}: {_describe(exc)}")


class _HttpxWire:
    """``httpx.AsyncClient`` over an injected transport (tests: ``httpx.MockTransport``)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> _Answer | str:
        try:
            response = await self._http.request(
                method, path, content=content, params=params, headers=headers
            )
        except _NOT_TRANSIENT as exc:
            raise _cannot_send(method, path, exc) from exc
        except httpx.TransportError as exc:
            return _describe(exc)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _cannot_send(method, path, exc) from exc
        names = {name.lower(): value for name, value in response.headers.items()}
        return response.status_code, names, response.content

    async def close(self) -> None:
        await self._http.aclose()


def aiohttp_transient(exc: BaseException) -> bool:
    """Whether an aiohttp-side error means "no answer from the network" (retry it) rather than
    a request of ours that cannot be sent (a URL aiohttp refuses, a header with a line break).

    The httpx wire's mapping, for the other library: connection, timeout, disconnect and
    malformed-response errors are transient (httpx's ``TransportError``), bad URLs are not
    (``InvalidURL``, ``UnsupportedProtocol``).
    """
    import aiohttp

    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return False
    # ClientConnectionError (refused, reset, disconnected, socket timeouts, TLS failures),
    # ClientPayloadError (body cut short), ClientResponseError (an answer that is not HTTP: we
    # never ask aiohttp to raise for status or follow redirects), and OSError, which includes
    # TimeoutError (asyncio's too).
    return isinstance(exc, aiohttp.ClientError | OSError)


class _AiohttpWire:
    """A raw ``aiohttp.ClientSession``: a pool of ``concurrency`` keep-alive connections,
    certificates verified (aiohttp's default SSL context), Basic auth precomputed, no cookies,
    no redirects followed, httpx's timeout phases (connect and each read within ``timeout``)."""

    def __init__(self, base_url: str, credentials: Credentials, concurrency: int, timeout: float):
        import aiohttp  # ~0.15 s to import, and an offline plan never sends

        token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode())
        self._base = base_url
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Authorization": f"Basic {token.decode('ascii')}",
            },
            timeout=aiohttp.ClientTimeout(
                total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # an API client keeps no cookies
            trust_env=False,  # as the httpx wire over an injected transport: no env proxies
        )

    def _url(self, path: str) -> str:
        if path.startswith("/"):
            return self._base + path
        if _SCHEME.match(path):  # an absolute URL (a next-page link): as httpx, sent as is
            return path
        return f"{self._base}/{path}"

    async def send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> _Answer | str:
        try:
            response = await self._session.request(
                method,
                self._url(path),
                data=content,
                params=params,
                headers=headers,
                allow_redirects=False,  # a 308 is re-sent by the delivery stage, not here
            )
            body = await response.read()  # releases the connection, or closes it on failure
        except Exception as exc:  # translated here; cancellation is not an Exception
            if aiohttp_transient(exc):
                return _describe(exc)
            import aiohttp

            # InvalidURL, a non-HTTP URL, a header aiohttp refuses to send (ValueError)
            if isinstance(exc, ValueError | aiohttp.ClientError):
                raise _cannot_send(method, path, exc) from exc
            raise
        names = {name.lower(): value for name, value in response.headers.items()}
        return response.status, names, body

    async def close(self) -> None:
        await self._session.close()


def _with_json_type(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    if headers is None:
        return _JSON_TYPE
    if any(name.lower() == "content-type" for name in headers):
        return headers
    return {**_JSON_TYPE, **headers}


class MemoryClient:
    """An async Memory API client owning one pool of keep-alive connections::

    async with MemoryClient(url, Credentials.from_env(), bucket=TokenBucket(50, 5)) as client:
        reply = await client.lookup(store_id, "email", "ada@example.com")

    The pool holds ``concurrency`` connections; requests beyond that queue here, first come first
    served, before taking a token. Without ``transport`` the requests go over raw aiohttp; with
    one, over ``httpx.AsyncClient(transport=transport)``: same requests, same Replies.
    """

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        concurrency: int = 16,
        bucket: TokenBucket | None = None,
        adaptive: AdaptiveRate | None = None,
        retry: RetryPolicy = RetryPolicy(),  # frozen: a shared default is safe
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"invalid base URL {base_url!r}: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"base URL must be http(s)://host[:port], got {base_url!r}")
        if url.userinfo:
            raise ConfigError("put credentials in TWILIO_* variables, not in the base URL")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        if adaptive is not None and adaptive.bucket is not bucket:
            raise ConfigError("adaptive must steer this client's own bucket")
        steered = adaptive.window if adaptive is not None else None
        if steered is not None and steered.ceiling != concurrency:
            raise ConfigError("adaptive's window must be as wide as the concurrency")
        self.base_url = str(url).rstrip("/")
        self.concurrency = concurrency
        self.bucket = bucket
        self.adaptive = adaptive  # told of every HTTP answer; steers bucket.rate
        self.retry = retry
        self.stats = ClientStats()
        self._credentials = credentials
        self._timeout = timeout
        self._transport = transport
        if clock is not None:
            self._clock: Clock = clock
        else:
            self._clock = bucket.clock if bucket is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        self._wire: _Wire | None = None
        self._window = steered if steered is not None else Window(concurrency)
        self._on_wire = 0  # requests sent and not yet answered

    @property
    def wire(self) -> str:
        """``"aiohttp"`` or ``"httpx"``: what carries the requests."""
        return "aiohttp" if self._transport is None else "httpx"

    async def __aenter__(self) -> MemoryClient:
        if self._wire is not None:
            raise BackfillError("this MemoryClient is already open")
        if self._transport is None:
            wire: _Wire = _AiohttpWire(
                self.base_url, self._credentials, self.concurrency, self._timeout
            )
        else:
            limits = httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            )
            http = httpx.AsyncClient(
                base_url=self.base_url,
                auth=httpx.BasicAuth(self._credentials.username, self._credentials.password),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                limits=limits,
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,  # a 308 is re-sent by the delivery stage, not here
                verify=True,
                transport=self._transport,
            )
            await http.__aenter__()
            wire = _HttpxWire(http)
        self._wire = wire
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            await wire.close()

    async def lookup(self, store_id: str, id_type: str, value: str) -> Reply:
        """Profiles holding identifier ``value`` of type ``id_type`` (POST .../Profiles/Lookup)."""
        path = f"/v1/Stores/{quote(store_id, safe='')}/Profiles/Lookup"
        return await self.request("POST", path, json={"idType": id_type, "value": value})

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        unknown: Callable[[], Awaitable[Reply | None]] | None = None,
        weight: float = 1.0,
    ) -> Reply:
        """Send one request, retrying 429/500/503 and transport errors; see the module docstring.

        ``unknown`` is for writes that must not be applied twice (``POST /Profiles``): before
        re-sending after an attempt whose outcome is unknown (``UNKNOWN_OUTCOME``), it is awaited
        instead of re-sending blindly; a Reply it returns ends the request (the write is known
        to have landed, and was dealt with), None re-sends.

        The body is ``json`` (encoded as httpx does) or ``content``, JSON already encoded (e.g. a
        planned unit's body, sent as stored); either goes with ``Content-Type: application/json``.
        ``path`` is relative to the base URL. ``headers`` are added to the client's own (e.g.
        ``If-Match``); the Reply's header names are lower-case.

        ``weight`` is what the server's limit counts in this request (1, or the events a batch
        carries): each attempt takes that many tokens, and the controller counts in it.

        Raises ``AuthError`` on 401/403 and ``BackfillError`` when the request cannot be built
        or sent at all (a bad URL, a body that is not JSON); never an httpx or aiohttp error.
        """
        wire, window = self._wire, self._window
        if wire is None:
            raise BackfillError(
                "MemoryClient is not open; use it as `async with MemoryClient(...)`"
            )
        if json is not None:
            if content is not None:
                raise BackfillError(f"cannot send {method} {path}: give json or content, not both")
            try:
                content = encode_json(json)
            except (TypeError, ValueError) as exc:
                raise BackfillError(
                    f"cannot send {method} {path}: body is not JSON: {exc}"
                ) from exc
        if content is not None:
            headers = _with_json_type(headers)
        stats, bucket, adaptive = self.stats, self.bucket, self.adaptive
        throttled = 0
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                stats.retries += 1
            # A place in the window, then the token: the token's time is the send's, so the
            # pacing holds even when the window is what limits. What the controller hears is
            # the number on the wire (not those waiting for a token) and whether the window
            # was full when this request asked.
            full = await window.acquire()
            try:
                if bucket is not None:
                    await bucket.acquire(weight)
                self._on_wire += 1
                try:
                    sent = Sent(self._clock.now(), self._on_wire, full, weight)
                    stats.sent += 1
                    answer = await wire.send(method, path, content, params, headers)
                finally:
                    self._on_wire -= 1
            finally:
                window.release()
            retry_after: str | None = None
            now, rate = self._clock.now(), bucket.rate if bucket is not None else None
            if attempt > 1:
                stats.timeline.count(now, RETRIED, rate)
            if isinstance(answer, str):
                stats.transport_errors += 1
                stats.timeline.count(now, ERRORS, rate)
                reply = Reply(None, None, {}, attempt, None, answer, throttled)
            else:
                status = answer[0]
                stats.by_status[status] += 1
                kind = ACCEPTED if status < 400 else THROTTLED if status == 429 else ERRORS
                stats.timeline.count(now, kind, rate)
                retry_after = answer[1].get("retry-after")
                if status == 429:
                    throttled += 1
                    stats.throttled += 1
                    if adaptive is not None:
                        adaptive.on_throttled(sent, retry_after_seconds(retry_after))
                elif adaptive is not None:
                    adaptive.on_accepted(sent)
                reply = _reply(answer, attempt, throttled)
                if status in AUTH_STATUSES:
                    raise self._auth_error(reply, method, path)
                if status not in RETRY_STATUSES:
                    return reply
            if attempt >= self.retry.max_attempts:
                return reply
            await self._clock.sleep(self.retry.delay(attempt, retry_after, self._rng))
            if unknown is not None and reply.status in UNKNOWN_OUTCOME:
                checked = await unknown()
                if checked is not None:
                    return replace(checked, attempts=attempt + checked.attempts)

    def _auth_error(self, reply: Reply, method: str, path: str) -> AuthError:
        what = (
            "refused the credentials"
            if reply.status == 401
            else f"does not allow these credentials to {method} {path}"
        )
        detail = f"HTTP {reply.status}"
        if reply.code is not None:
            detail += f", Twilio error {reply.code}"
        credentials = self._credentials
        message = _redact(reply.message, credentials.secret)
        if message:
            detail += f": {message}"
        return AuthError(f"{credentials.api} {what} ({detail}); {credentials.check}")


def _reply(answer: _Answer, attempt: int, throttled: int) -> Reply:
    status, headers, content = answer
    body: Any = None
    if content:
        try:
            body = jsonlib.loads(content)
        except ValueError:
            body = None
    code: int | None = None
    message: str | None = None
    if status >= 400 and isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):  # Segment's Profile API: {"error": {code, message}}
            raw_code, raw_message = error.get("code"), error.get("message")
        else:
            raw_code, raw_message = body.get("code"), body.get("message")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
        message = raw_message if isinstance(raw_message, str) else None
        if isinstance(raw_code, str) and raw_code:  # Segment's codes are words: keep them
            message = f"{raw_code}: {message}" if message else raw_code
    return Reply(status, body, headers, attempt, code, message, throttled)
