"""One async client for the Twilio Memory API: auth, pacing, retries, and nothing else.

``MemoryClient.request`` sends one logical request and answers a ``Reply``: every attempt takes a
token from the shared ``TokenBucket``; 429, 500, 503 and transport errors are retried with
``RetryPolicy`` (Retry-After is honoured and pauses the whole bucket); 401/403 raise ``AuthError``;
every other status is the caller's to judge. httpx errors never leave this module.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from backfill import __version__
from backfill.errors import AuthError, BackfillError, ConfigError
from backfill.throttle import AdaptiveRate, Clock, SystemClock, TokenBucket

DEFAULT_BASE_URL = "https://memory.twilio.com"
USER_AGENT = f"backfill/{__version__}"

# (username variable, password variable), in order of preference: API keys are what Twilio
# recommends, the Auth Token is the account's master secret.
CREDENTIAL_VARIABLES = (
    ("TWILIO_API_KEY", "TWILIO_API_SECRET"),
    ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
)

RETRY_STATUSES = frozenset({429, 500, 503})
AUTH_STATUSES = frozenset({401, 403})
_WHOLE_SECONDS = re.compile(r"[0-9]+")  # Retry-After as the API documents it: ^[0-9]+$

# Transport errors that are our own doing, not the network's: retrying cannot help.
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)


@dataclass(frozen=True)
class Credentials:
    """HTTP Basic credentials: an API key SID + secret, or the Account SID + Auth Token."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r})"

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
                raise AuthError(f"{present} is set but {missing} is not; set {missing} too")
        raise AuthError(
            "no Twilio credentials found: set TWILIO_API_KEY and TWILIO_API_SECRET (recommended), "
            "or TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        )


def parse_retry_after(value: str | None) -> int | None:
    """Whole seconds from a Retry-After header, or None when missing or not whole seconds."""
    if value is None:
        return None
    text = value.strip()
    return int(text) if _WHOLE_SECONDS.fullmatch(text) else None


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
        seconds = parse_retry_after(retry_after)
        if seconds is not None and seconds >= 1:
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


@dataclass
class ClientStats:
    """Counters for run summaries."""

    sent: int = 0  # HTTP attempts, retries included
    retries: int = 0
    throttled: int = 0  # 429s
    transport_errors: int = 0  # attempts that got no HTTP response
    by_status: Counter[int] = field(default_factory=Counter)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(text: str | None, secret: str) -> str | None:
    if text is None or not secret:
        return text
    return text.replace(secret, "***")


class MemoryClient:
    """An async Memory API client owning one pooled ``httpx.AsyncClient``::

    async with MemoryClient(url, Credentials.from_env(), bucket=TokenBucket(50, 5)) as client:
        reply = await client.lookup(store_id, "email", "ada@example.com")
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
        self._http: httpx.AsyncClient | None = None
        self._slots: anyio.CapacityLimiter | None = None

    async def __aenter__(self) -> MemoryClient:
        if self._http is not None:
            raise BackfillError("this MemoryClient is already open")
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        # httpx is the interface (tests inject MockTransport); aiohttp carries the bytes by
        # default, because httpx's own async pool slows as concurrency rises (encode/httpx#3215):
        # measured here, ~4x the requests a second at concurrency 8.
        if self._transport is None:
            # Imported here: aiohttp costs ~0.15 s to import, and an offline plan never sends.
            from httpx_aiohttp import AiohttpTransport

            transport: httpx.AsyncBaseTransport = AiohttpTransport(verify=True, limits=limits)
        else:
            transport = self._transport
        http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=httpx.BasicAuth(self._credentials.username, self._credentials.password),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            limits=limits,
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,  # a 308 is re-sent by the delivery stage, not here
            verify=True,
            transport=transport,
        )
        await http.__aenter__()
        self._http = http
        # Requests beyond `concurrency` queue here (FIFO) rather than in httpcore's pool, where
        # they would count against the pool timeout.
        self._slots = anyio.CapacityLimiter(self.concurrency)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.__aexit__(exc_type, exc, tb)

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
    ) -> Reply:
        """Send one request, retrying 429/500/503 and transport errors; see the module docstring.

        ``headers`` are added to the client's own (e.g. ``If-Match``); the Reply's header names
        are lower-case.

        Raises ``AuthError`` on 401/403 and ``BackfillError`` when the request cannot be built
        or sent at all (a bad URL, a proxy refusing); never an httpx error.
        """
        http, slots = self._http, self._slots
        if http is None or slots is None:
            raise BackfillError(
                "MemoryClient is not open; use it as `async with MemoryClient(...)`"
            )
        throttled = 0
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                self.stats.retries += 1
            async with slots:
                if self.bucket is not None:
                    await self.bucket.acquire()
                self.stats.sent += 1
                try:
                    response = await http.request(
                        method, path, json=json, params=params, headers=headers
                    )
                except _NOT_TRANSIENT as exc:
                    raise BackfillError(f"cannot send {method} {path}: {_describe(exc)}") from exc
                except httpx.TransportError as exc:
                    response = None
                    error = _describe(exc)
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    raise BackfillError(f"cannot send {method} {path}: {_describe(exc)}") from exc
            if response is None:
                self.stats.transport_errors += 1
                reply = Reply(None, None, {}, attempt, None, error, throttled)
            else:
                status = response.status_code
                self.stats.by_status[status] += 1
                if status == 429:
                    throttled += 1
                    self.stats.throttled += 1
                    if self.adaptive is not None:
                        self.adaptive.on_throttled()  # before the hold below, as it expects
                elif self.adaptive is not None:
                    self.adaptive.on_accepted()
                reply = self._reply(response, attempt, throttled)
                if status in AUTH_STATUSES:
                    raise self._auth_error(reply, method, path)
                if status not in RETRY_STATUSES:
                    return reply
            retry_after = reply.headers.get("retry-after")
            if reply.status == 429 and self.bucket is not None:
                # The limit is the account's: every worker waits, not only this one.
                pause = parse_retry_after(retry_after) or 0
                self.bucket.hold(self.bucket.clock.now() + max(pause, self.retry.base))
            if attempt >= self.retry.max_attempts:
                return reply
            await self._clock.sleep(self.retry.delay(attempt, retry_after, self._rng))

    def _reply(self, response: httpx.Response, attempt: int, throttled: int) -> Reply:
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        code: int | None = None
        message: str | None = None
        if response.status_code >= 400 and isinstance(body, Mapping):
            raw_code, raw_message = body.get("code"), body.get("message")
            code = (
                raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
            )
            message = raw_message if isinstance(raw_message, str) else None
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Reply(response.status_code, body, headers, attempt, code, message, throttled)

    def _auth_error(self, reply: Reply, method: str, path: str) -> AuthError:
        what = (
            "refused the credentials"
            if reply.status == 401
            else f"does not allow these credentials to {method} {path}"
        )
        detail = f"HTTP {reply.status}"
        if reply.code is not None:
            detail += f", Twilio error {reply.code}"
        message = _redact(reply.message, self._credentials.password)
        if message:
            detail += f": {message}"
        return AuthError(
            f"the Memory API {what} ({detail}); check TWILIO_API_KEY and TWILIO_API_SECRET "
            "(or TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
        )
