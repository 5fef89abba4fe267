"""MemoryClient: retries, Retry-After, auth errors and credentials; then against the emulator.

The client has two wires (raw aiohttp by default, httpx over an injected transport), and every
behaviour check runs on both (the ``wire`` fixture): on httpx through ``httpx.MockTransport``, on
aiohttp against ``ScriptServer``, which serves the same scripted answers over real HTTP on
loopback; the emulator tests give each wire a real server with its fault switches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import itertools
import json
import math
import random
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill import __version__
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import AuthError, BackfillError, ConfigError, CredentialsMissing
from backfill.transport.client import (
    Credentials,
    MemoryClient,
    Reply,
    RetryPolicy,
    aiohttp_transient,
    encode_json,
)
from backfill.transport.throttle import TokenBucket, retry_after_seconds

SEED = Path(__file__).parent / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
ADA = "mem_profile_01jtest000000000000000000a"
URL = "https://memory.example.test"
SECRET = "s3cr3t-Pa55word"
CREDS = Credentials("SK0123456789abcdef0123456789abcdef", SECRET)
FAST = RetryPolicy(max_attempts=4)  # the fake clock makes the default delays free anyway


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Virtual time: ``sleep`` records the delay and advances ``now`` at once."""

    def __init__(self) -> None:
        self._now = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


Step = httpx.Response | Exception


class Script:
    """A MockTransport handler answering with `steps` in order (the last one repeats)."""

    def __init__(self, *steps: Step, clock: FakeClock | None = None) -> None:
        self.steps = list(steps)
        self.clock = clock
        self.requests: list[httpx.Request] = []
        self.sent_at: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.sent_at.append(self.clock.now() if self.clock else 0.0)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if isinstance(step, Exception):
            raise step
        return step


def error(status: int, code: int, message: str = "nope", **headers: str) -> httpx.Response:
    body = {"code": code, "message": message, "more_info": "https://x", "status": status}
    return httpx.Response(status, json=body, headers=headers)


def throttled(retry_after: str | None) -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return error(429, 20429, "Too many requests", **headers)


OK = httpx.Response(200, json={"normalizedValue": "ada@example.com", "profiles": [ADA]})


STALL = 5.0  # how long ScriptServer sits on a request scripted as a timeout
SHORT = 0.3  # the client timeout in tests that meet one on the aiohttp wire


class ScriptServer:
    """A Script's answers over real HTTP on loopback, for the aiohttp wire.

    Each request is mirrored into an ``httpx.Request`` (method, URL with the raw path, headers,
    body) so tests inspect ``script.requests`` alike on both wires. A scripted timeout
    (``httpx.TimeoutException``) holds the request for ``STALL`` seconds; any other scripted
    transport error closes the connection without an answer.
    """

    def __init__(self, script: Script, ssl_context: Any = None) -> None:
        self.script = script
        self.url = ""
        self._ssl = ssl_context
        self._runner: Any = None

    async def __aenter__(self) -> ScriptServer:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        scheme = "https" if self._ssl is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        mirrored = httpx.Request(
            request.method,
            self.url + request.raw_path,
            headers=list(request.headers.items()),
            content=await request.read(),
        )
        try:
            response = self.script(mirrored)
        except httpx.TimeoutException:
            await asyncio.sleep(STALL)
            raise
        except httpx.TransportError:
            request.transport.close()
            raise
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return web.Response(status=response.status_code, body=response.content, headers=headers)


@pytest.fixture(params=["httpx", "aiohttp"])
def wire(request: pytest.FixtureRequest) -> str:
    """Which wire the client under test uses: MockTransport, or raw aiohttp to ScriptServer."""
    return str(request.param)


@contextlib.asynccontextmanager
async def open_client(script: Script, wire: str, **kwargs: Any) -> AsyncIterator[MemoryClient]:
    """A MemoryClient whose every request ``script`` answers, over ``wire``."""
    kwargs.setdefault("credentials", CREDS)
    if wire == "httpx":
        kwargs.pop("timeout", None)
        async with MemoryClient(URL, transport=httpx.MockTransport(script), **kwargs) as client:
            assert client.wire == "httpx"
            yield client
        return
    async with ScriptServer(script) as server:
        kwargs.setdefault("timeout", 10.0)
        async with MemoryClient(server.url, **kwargs) as client:
            assert client.wire == "aiohttp"
            yield client


async def run(
    script: Script,
    wire: str = "httpx",
    *,
    retry: RetryPolicy = FAST,
    bucket: TokenBucket | None = None,
    clock: FakeClock | None = None,
    client_timeout: float = 10.0,
) -> tuple[Reply, MemoryClient, FakeClock]:
    """One lookup through a client on ``wire`` answered by ``script``, with a fake clock."""
    clock = clock or script.clock or FakeClock()
    script.clock = clock
    async with open_client(
        script, wire, retry=retry, bucket=bucket, clock=clock, rng=random.Random(1),
        timeout=client_timeout,
    ) as client:  # fmt: skip
        reply = await client.lookup(STORE, "email", "ada@example.com")
    return reply, client, clock


# --- Retry-After and backoff -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("seconds", [1, 3, 17])
async def test_retry_after_is_honoured_with_small_positive_jitter(seconds: int, wire: str) -> None:
    """A 429's Retry-After is waited in full, stretched by at most 20%, then retried."""
    script = Script(throttled(str(seconds)), OK)
    reply, client, clock = await run(script, wire)
    assert (reply.status, reply.attempts, reply.throttled) == (200, 2, 1)
    assert len(clock.sleeps) == 1
    assert seconds <= clock.sleeps[0] <= seconds * 1.2
    assert (client.stats.sent, client.stats.retries, client.stats.throttled) == (2, 1, 1)


@pytest.mark.anyio
@pytest.mark.parametrize("retry_after", ["0", "soon", "-1", "nan", "", None])
async def test_unusable_retry_after_falls_back_to_floored_backoff(
    retry_after: str | None, wire: str
) -> None:
    """Retry-After "0", garbage or missing means backoff of at least `base`, never "now"."""
    policy = RetryPolicy(max_attempts=5, base=0.5, cap=20)
    script = Script(throttled(retry_after))
    reply, _, clock = await run(script, wire, retry=policy)
    assert (reply.status, reply.code, reply.attempts, reply.throttled) == (429, 20429, 5, 5)
    assert len(clock.sleeps) == 4
    for attempt, delay in enumerate(clock.sleeps, start=1):
        assert 0.5 <= delay <= max(0.5, min(20, 0.5 * 2 ** (attempt - 1)))


@pytest.mark.anyio
async def test_a_fractional_retry_after_is_honoured_too(wire: str) -> None:
    """Twilio sends whole seconds; a server that measures finer is taken at its word."""
    script = Script(throttled("0.25"), OK)
    reply, _, clock = await run(script, wire)
    assert (reply.status, reply.attempts) == (200, 2)
    assert 0.25 <= clock.sleeps[0] <= 0.25 * 1.2


@given(
    attempt=st.integers(min_value=1, max_value=200),
    header=st.one_of(
        st.none(),
        st.text(max_size=6),
        st.integers(-5, 10**6).map(str),
        st.floats(-5, 1000, allow_nan=False).map(str),
    ),
    seed=st.integers(0, 2**32),
)
def test_delay_is_never_below_the_floor_or_the_header(
    attempt: int, header: str | None, seed: int
) -> None:
    """RetryPolicy.delay: >= Retry-After (<= +20%) when it is a positive number of seconds,
    else in [base, cap]."""
    policy = RetryPolicy()
    delay = policy.delay(attempt, header, random.Random(seed))
    seconds = retry_after_seconds(header)
    if seconds is not None and seconds > 0:
        assert seconds <= delay <= seconds * 1.2
        return
    assert policy.base <= delay <= policy.cap


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), (" 2 ", 2.0), ("0.5", 0.5), ("0", 0.0), ("-1", None), ("soon", None),
     ("inf", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), (None, None)],
)  # fmt: skip
def test_retry_after_seconds_reads_numbers_and_dates(
    header: str | None, seconds: float | None
) -> None:
    """Whole, fractional, or an HTTP date (one in the past is "now"); garbage is None."""
    assert retry_after_seconds(header) == seconds


def test_retry_policy_rejects_nonsense() -> None:
    """No attempts, a zero base or a cap below the base are configuration errors."""
    for kwargs in ({"max_attempts": 0}, {"base": 0}, {"base": 2, "cap": 1}):
        with pytest.raises(ConfigError):
            RetryPolicy(**kwargs)


@pytest.mark.anyio
@pytest.mark.parametrize("retry_after", ["3", "0", None])
async def test_one_429_holds_only_the_request_that_got_it(
    retry_after: str | None, wire: str
) -> None:
    """A single 429 stalls nobody else: another worker's request goes at once (the whole run is
    held only on evidence that the server refuses everything: AdaptiveRate, test_adaptive)."""
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock)
    script = Script(throttled(retry_after), OK, clock=clock)
    reply, _, _ = await run(script, wire, retry=RetryPolicy(max_attempts=1), bucket=bucket)
    assert reply.status == 429  # out of attempts: the 429 itself comes back
    assert bucket.held_until == -math.inf
    reply, _, _ = await run(script, wire, bucket=bucket)  # another worker, same bucket
    assert reply.status == 200
    assert script.sent_at == [0.0, 0.0]


@pytest.mark.anyio
async def test_every_attempt_takes_a_token(wire: str) -> None:
    """Retries take tokens from the bucket too, not only first attempts."""
    taken = 0

    class Counting(TokenBucket):
        async def acquire(self, weight: float = 1.0) -> None:
            nonlocal taken
            taken += 1
            await super().acquire(weight)

    clock = FakeClock()
    script = Script(error(500, 20500), error(503, 20503), httpx.ConnectError("refused"), OK)
    reply, _, _ = await run(script, wire, bucket=Counting(1000, 10, clock), clock=clock)
    assert (reply.status, reply.attempts) == (200, 4)
    assert taken == 4


# --- What is retried and what is not -----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, 20503), (429, 20429)])
async def test_server_errors_are_retried_until_attempts_run_out(
    status: int, code: int, wire: str
) -> None:
    """500/503/429 are retried up to max_attempts, then the last reply comes back."""
    script = Script(error(status, code, "try later"))
    reply, client, clock = await run(script, wire)
    assert (reply.status, reply.code, reply.message) == (status, code, "try later")
    assert reply.attempts == len(script.requests) == FAST.max_attempts
    assert len(clock.sleeps) == FAST.max_attempts - 1
    assert client.stats.by_status[status] == FAST.max_attempts
    assert client.stats.retries == FAST.max_attempts - 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("All connection attempts failed"),
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout(""),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
    ],
)
async def test_transport_errors_are_retried_then_reported_without_status(
    exc: Exception, wire: str
) -> None:
    """Connect errors, timeouts and disconnects are retried; the end is a Reply with status None.

    On the aiohttp wire the server drops the connection, or holds the request past the client's
    timeout; the message is then aiohttp's (ServerDisconnectedError, SocketTimeoutError)."""
    script = Script(exc)
    reply, client, _ = await run(script, wire, client_timeout=SHORT)
    assert reply.status is None
    assert reply.attempts == len(script.requests) == FAST.max_attempts
    assert reply.message is not None
    if wire == "httpx":
        assert type(exc).__name__ in reply.message
    else:
        timeout = isinstance(exc, httpx.TimeoutException)
        assert ("Timeout" if timeout else "Disconnected") in reply.message
    assert (reply.body, reply.code, dict(reply.headers)) == (None, None, {})
    assert client.stats.transport_errors == FAST.max_attempts


@pytest.mark.anyio
async def test_transport_error_then_success(wire: str) -> None:
    """A dropped connection followed by a good answer ends 200 after two attempts."""
    script = Script(httpx.RemoteProtocolError("Server disconnected"), OK)
    reply, _, clock = await run(script, wire)
    assert (reply.status, reply.attempts, reply.body["profiles"]) == (200, 2, [ADA])
    assert clock.sleeps[0] >= FAST.base


@pytest.mark.anyio
@pytest.mark.parametrize(
    "response",
    [
        error(400, 400, "bad idType"),
        error(404, 20404, "no such store"),
        error(409, 20409),
        error(412, 20412),
        httpx.Response(202, json={"message": "accepted"}),
        httpx.Response(
            308,
            json={"message": "This resource has moved.", "uri": "/x"},
            headers={"Location": "https:///memory/x", "Canonical-Profile-Id": ADA},
        ),
    ],
)
async def test_other_statuses_come_back_at_once(response: httpx.Response, wire: str) -> None:
    """2xx, 3xx and other 4xx are the caller's to judge: one attempt, no sleep; the Reply's
    header names are lower-case."""
    script = Script(response)
    reply, _, clock = await run(script, wire)
    assert all(name == name.lower() for name in reply.headers)
    assert reply.status == response.status_code
    assert reply.attempts == len(script.requests) == 1
    assert clock.sleeps == []
    if response.status_code >= 400:
        assert reply.code == response.json()["code"]
    if response.status_code == 308:
        assert reply.headers["canonical-profile-id"] == ADA
        assert reply.headers["location"] == "https:///memory/x"


@pytest.mark.anyio
async def test_non_json_body_is_none(wire: str) -> None:
    """A body that is not JSON gives body None and no Twilio code, not an exception."""
    reply, _, _ = await run(Script(httpx.Response(502, text="<html>bad gateway</html>")), wire)
    assert (reply.status, reply.body, reply.code, reply.message) == (502, None, None, None)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "code"), [(401, 20003), (403, 403)])
async def test_auth_failure_raises_after_one_attempt_without_secrets(
    status: int, code: int, wire: str
) -> None:
    """401/403 raise AuthError at once with status, code and a hint, never the credentials."""
    echo = f"Authenticate failed for {CREDS.username}:{SECRET}"  # a server echoing is redacted
    script = Script(error(status, code, echo))
    with pytest.raises(AuthError) as caught:
        await run(script, wire)
    text = str(caught.value)
    assert len(script.requests) == 1
    assert str(status) in text and str(code) in text and "TWILIO_" in text
    assert SECRET not in text
    assert SECRET not in repr(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc", [httpx.UnsupportedProtocol("ftp"), httpx.LocalProtocolError("bad header")]
)
async def test_errors_of_our_own_are_translated_not_retried(exc: Exception) -> None:
    """Transport errors retrying cannot fix become BackfillError after one attempt."""
    script = Script(exc)
    with pytest.raises(BackfillError) as caught:
        await run(script)
    assert not isinstance(caught.value, httpx.HTTPError)
    assert isinstance(caught.value.__cause__, type(exc))
    assert len(script.requests) == 1


# --- The request itself ------------------------------------------------------------------


@pytest.mark.anyio
async def test_lookup_sends_basic_auth_user_agent_and_body(wire: str) -> None:
    """lookup POSTs {idType, value} to the store's Lookup path with Basic auth and User-Agent."""
    script = Script(OK)
    async with open_client(script, wire) as client:
        reply = await client.lookup(STORE, "email", "ada@example.com")
    (request,) = script.requests
    assert request.method == "POST"
    assert request.url == f"{client.base_url}/v1/Stores/{STORE}/Profiles/Lookup"
    assert json.loads(request.content) == {"idType": "email", "value": "ada@example.com"}
    assert request.headers["content-type"] == "application/json"
    token = base64.b64encode(f"{CREDS.username}:{SECRET}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {token}"
    assert request.headers["user-agent"] == f"backfill/{__version__}"
    assert request.headers["accept"] == "application/json"
    assert reply.body == {"normalizedValue": "ada@example.com", "profiles": [ADA]}


@pytest.mark.anyio
async def test_request_passes_params_and_quotes_path_ids(wire: str) -> None:
    """request() passes query parameters; lookup() cannot be steered off its path by an ID."""
    script = Script(OK)
    async with open_client(script, wire) as client:
        await client.request("GET", "/v1/Stores/x/Profiles", params={"pageSize": "10"})
        await client.lookup("../../ControlPlane", "email", "a@b.c")
    assert script.requests[0].url.params["pageSize"] == "10"
    assert script.requests[1].url.raw_path == b"/v1/Stores/..%2F..%2FControlPlane/Profiles/Lookup"


@pytest.mark.anyio
async def test_bodies_and_headers_are_sent_alike_on_both_wires(wire: str) -> None:
    """``json=`` is encoded compactly (as httpx does); ``content=`` goes byte for byte; both as
    application/json; the caller's headers are added, a Content-Type of its own wins."""
    script = Script(httpx.Response(202, json={"message": "accepted"}))
    planned = rb'{"traits": {"Loyalty": {"tier": "g\u00f6ld"}}}'  # not re-encoded
    async with open_client(script, wire) as client:
        await client.request("PATCH", "/v1/p", json={"traits": {"Loyalty": {"tier": "göld"}}})
        await client.request("PATCH", "/v1/p", content=planned, headers={"If-Match": '"e1"'})
        await client.request("PUT", "/v1/p", content=b"x", headers={"content-type": "text/plain"})
        reply = await client.request("GET", "/v1/p")
    first, second, third, fourth = script.requests
    assert first.content == '{"traits":{"Loyalty":{"tier":"göld"}}}'.encode()
    assert first.content == encode_json({"traits": {"Loyalty": {"tier": "göld"}}})
    assert second.content == planned
    assert second.headers["if-match"] == '"e1"'
    assert [r.headers.get("content-type") for r in (first, second)] == ["application/json"] * 2
    assert third.headers.get_list("content-type") == ["text/plain"]
    assert fourth.content == b"" and "content-type" not in fourth.headers
    assert (reply.status, reply.body) == (202, {"message": "accepted"})


@pytest.mark.anyio
async def test_relative_and_absolute_paths_reach_the_same_place(wire: str) -> None:
    """A path with or without its leading slash is under the base URL; an absolute URL (a
    next-page link) is sent as it is."""
    script = Script(OK)
    async with open_client(script, wire) as client:
        await client.request("GET", "/v1/a")
        await client.request("GET", "v1/b")
        await client.request("GET", f"{client.base_url}/v1/c?pageToken=x")
    assert [r.url.raw_path for r in script.requests] == [b"/v1/a", b"/v1/b", b"/v1/c?pageToken=x"]


@pytest.mark.anyio
async def test_a_body_that_cannot_be_sent_is_refused_before_sending(wire: str) -> None:
    """json= and content= together, or JSON with NaN, are a BackfillError; nothing is sent."""
    script = Script(OK)
    async with open_client(script, wire) as client:
        with pytest.raises(BackfillError, match="not both"):
            await client.request("PATCH", "/v1/p", json={}, content=b"{}")
        with pytest.raises(BackfillError, match="not JSON"):
            await client.request("PATCH", "/v1/p", json={"points": math.nan})
        with pytest.raises(BackfillError, match="not JSON"):
            await client.request("PATCH", "/v1/p", json={"when": time})
    assert script.requests == []
    assert client.stats.sent == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "headers"),
    [("/v1/p", {"X-Note": "two\r\nlines"}), ("ftp://memory.example.test/v1/p", None)],
)
async def test_aiohttp_errors_of_our_own_are_translated_not_retried(
    path: str, headers: dict[str, str] | None
) -> None:
    """On the aiohttp wire a header aiohttp refuses or a URL it cannot send is a BackfillError
    after one attempt, as httpx's LocalProtocolError / UnsupportedProtocol are on the other."""
    script = Script(OK)
    async with open_client(script, "aiohttp") as client:
        with pytest.raises(BackfillError) as caught:
            await client.request("GET", path, headers=headers)
    assert isinstance(caught.value.__cause__, ValueError | aiohttp.ClientError)
    assert not isinstance(caught.value, aiohttp.ClientError)
    assert (script.requests, client.stats.sent, client.stats.retries) == ([], 1, 0)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(  # noqa: S603 - our own fixed command line
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.anyio
async def test_aiohttp_wire_verifies_certificates(self_signed: tuple[Path, Path]) -> None:
    """Over https the aiohttp wire checks the server's certificate: a self-signed one is a
    transport error (retried, then status None), never an answer."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    script = Script(OK)
    retry = RetryPolicy(max_attempts=2, base=0.01, cap=0.01)
    async with (
        ScriptServer(script, context) as server,
        MemoryClient(server.url, CREDS, retry=retry) as client,
    ):
        assert server.url.startswith("https://")
        reply = await client.lookup(STORE, "email", "ada@example.com")
    assert (reply.status, reply.attempts, client.stats.transport_errors) == (None, 2, 2)
    assert reply.message is not None and "Certificate" in reply.message
    assert script.requests == []


def _aiohttp_errors() -> list[type[BaseException]]:
    found = {
        value
        for value in vars(aiohttp).values()
        if isinstance(value, type) and issubclass(value, aiohttp.ClientError)
    }
    return sorted(found, key=lambda cls: cls.__name__)


@pytest.mark.parametrize("cls", _aiohttp_errors(), ids=lambda cls: cls.__name__)
def test_every_aiohttp_error_is_mapped(cls: type[BaseException]) -> None:
    """Every aiohttp ClientError is either transient (retried: no answer from the network) or a
    request of ours that cannot be sent (InvalidURL, a non-HTTP URL); nothing is left over."""
    exc = cls.__new__(cls)  # the class is what decides; constructors differ
    ours = issubclass(cls, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError)
    assert aiohttp_transient(exc) is not ours


def test_timeouts_and_os_errors_are_transient_other_errors_are_not() -> None:
    """asyncio's total timeout and raw OS errors are transient; a ValueError (a header aiohttp
    refuses) or anything else is not."""
    assert aiohttp_transient(TimeoutError())  # asyncio's too, since 3.11
    assert aiohttp_transient(ConnectionResetError())
    assert not aiohttp_transient(ValueError("newline in header"))
    assert not aiohttp_transient(RuntimeError("Session is closed"))


@pytest.mark.anyio
async def test_closed_client_refuses_requests() -> None:
    """Using the client outside `async with` is a BackfillError, not an AttributeError."""
    client = MemoryClient(URL, CREDS, transport=httpx.MockTransport(Script(OK)))
    with pytest.raises(BackfillError):
        await client.lookup(STORE, "email", "a@b.c")


@pytest.mark.parametrize(
    "url", ["ftp://memory.twilio.com", "memory.twilio.com", "https://sid:token@memory.twilio.com"]
)
def test_base_url_must_be_plain_http_or_https(url: str) -> None:
    """Only http(s)://host URLs without embedded credentials are accepted."""
    with pytest.raises(ConfigError) as caught:
        MemoryClient(url, CREDS)
    assert "token" not in str(caught.value)


# --- Credentials -------------------------------------------------------------------------


def test_credentials_repr_hides_the_password() -> None:
    """repr/str/format of Credentials show the username only."""
    for text in (repr(CREDS), str(CREDS), f"{CREDS}", f"{CREDS!r}", repr([CREDS])):
        assert SECRET not in text
        assert CREDS.username in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TWILIO_API_KEY": "SKk", "TWILIO_API_SECRET": "ks"}, ("SKk", "ks")),
        ({"TWILIO_ACCOUNT_SID": "ACa", "TWILIO_AUTH_TOKEN": "at"}, ("ACa", "at")),
        (
            {
                "TWILIO_API_KEY": "SKk",
                "TWILIO_API_SECRET": "ks",
                "TWILIO_ACCOUNT_SID": "ACa",
                "TWILIO_AUTH_TOKEN": "at",
            },
            ("SKk", "ks"),
        ),
        (  # the helper library wants the Account SID next to an API key: not half a pair
            {"TWILIO_API_KEY": "SKk", "TWILIO_API_SECRET": "ks", "TWILIO_ACCOUNT_SID": "ACa"},
            ("SKk", "ks"),
        ),
    ],
)
def test_credentials_from_env_prefers_api_keys(
    env: dict[str, str], expected: tuple[str, str]
) -> None:
    """An API key pair wins; otherwise the Account SID + Auth Token pair is used."""
    creds = Credentials.from_env(env)
    assert (creds.username, creds.password) == expected


def test_credentials_from_env_with_nothing_names_all_variables() -> None:
    """No credentials at all: the error names both pairs of variables to set."""
    with pytest.raises(CredentialsMissing) as caught:
        Credentials.from_env({"TWILIO_API_KEY": "", "HOME": "/root"})
    for name in ("TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"TWILIO_API_KEY": "SKvalue"}, "TWILIO_API_SECRET"),
        ({"TWILIO_API_SECRET": "hunter2value"}, "TWILIO_API_KEY"),
        ({"TWILIO_ACCOUNT_SID": "ACvalue"}, "TWILIO_AUTH_TOKEN"),
        ({"TWILIO_AUTH_TOKEN": "hunter2value"}, "TWILIO_ACCOUNT_SID"),
        (  # half an API key pair is a mistake even when the other pair is complete
            {"TWILIO_API_KEY": "SKvalue", "TWILIO_ACCOUNT_SID": "AC", "TWILIO_AUTH_TOKEN": "t"},
            "TWILIO_API_SECRET",
        ),
    ],
)
def test_credentials_from_env_half_a_pair_names_the_missing_one(
    env: dict[str, str], missing: str
) -> None:
    """Half a pair: the error names the missing variable and echoes no value."""
    with pytest.raises(CredentialsMissing) as caught:
        Credentials.from_env(env)
    text = str(caught.value)
    assert f"{missing} is not" in text
    assert "value" not in text


def test_credentials_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, os.environ is read."""
    for name in ("TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "ACenv")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tokenenv")
    assert Credentials.from_env() == Credentials("ACenv", "tokenenv")


# --- Against the real emulator over real HTTP --------------------------------------------

WHO: contextvars.ContextVar[int] = contextvars.ContextVar("who", default=-1)


@dataclass(frozen=True)
class Exchange:
    who: int
    sent: float
    answered: float
    status: int | None
    retry_after: str | None


class Recorder(httpx.AsyncBaseTransport):
    """The real HTTP transport, logging who sent what when (no mocking: it only watches)."""

    def __init__(self, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.inner = httpx.AsyncHTTPTransport(limits=limits)
        self.log: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.log.append(Exchange(WHO.get(), sent, time.monotonic(), None, None))
            raise
        retry_after = response.headers.get("retry-after")
        self.log.append(
            Exchange(WHO.get(), sent, time.monotonic(), response.status_code, retry_after)
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def lookups(
    client: MemoryClient, n: int, id_type: str = "email", value: str = "ada@example.com"
) -> list[Reply]:
    """n concurrent lookups, each task tagged in WHO with its index."""
    replies: list[Reply | None] = [None] * n

    async def one(i: int) -> None:
        WHO.set(i)
        replies[i] = await client.lookup(STORE, id_type, value)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return [r for r in replies if r is not None]


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorServer]]:
    """Start emulators with the given EmulatorConfig keywords; stopped after the test."""
    started: list[EmulatorServer] = []

    def start(**kwargs: Any) -> EmulatorServer:
        server = EmulatorServer(EmulatorConfig(seed=SEED, **kwargs)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def real_transport(wire: str, concurrency: int = 16) -> httpx.AsyncBaseTransport | None:
    """What to pass as ``transport=`` for a real server over ``wire``: httpx's own pool, or
    nothing (raw aiohttp)."""
    if wire == "aiohttp":
        return None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncHTTPTransport(limits=limits)


@pytest.mark.anyio
async def test_rate_limited_emulator_every_lookup_ends_200_after_retry_after(
    emulator_factory: Callable[..., EmulatorServer], wire: str
) -> None:
    """Over-driving an 80/s emulator at 100/s: 429s are met and waited out per Retry-After.

    On the httpx wire a recording transport also checks each worker's own timing."""
    emu = emulator_factory(rate=80, burst=8, random_seed=3)
    recorder = Recorder(16) if wire == "httpx" else None
    client = MemoryClient(
        emu.url,
        Credentials(*emu.auth),
        bucket=TokenBucket(100, 10),
        retry=RetryPolicy(max_attempts=12),
        transport=recorder,
        rng=random.Random(5),
    )
    assert client.wire == wire
    start = time.monotonic()
    async with client:
        replies = await lookups(client, 40)
    elapsed = time.monotonic() - start

    assert [r.status for r in replies] == [200] * 40
    assert all(r.body["profiles"] == [ADA] for r in replies)
    assert client.stats.throttled > 0
    assert client.stats.retries == client.stats.throttled == sum(r.throttled for r in replies)
    assert emu.stats()["rateLimited"] == client.stats.throttled
    assert client.stats.sent == 40 + client.stats.throttled
    # Each worker came back no sooner than its 429's Retry-After said.
    log = recorder.log if recorder is not None else []
    for who in range(40 if recorder is not None else 0):
        mine = [x for x in log if x.who == who]
        assert mine[-1].status == 200
        for answer, retry in itertools.pairwise(mine):
            assert answer.status == 429 and answer.retry_after is not None
            assert retry.sent - answer.answered >= int(answer.retry_after)
    assert elapsed >= 1.0  # at least one Retry-After (>= 1 s) was waited out


@pytest.mark.anyio
async def test_faulty_emulator_every_lookup_ends_200_with_retries(
    emulator_factory: Callable[..., EmulatorServer], wire: str
) -> None:
    """With 20% 500/503 and 10% dropped connections, 50 lookups all end 200 after retries."""
    emu = emulator_factory(fault_rate=0.2, drop_rate=0.1, random_seed=11)
    client = MemoryClient(
        emu.url,
        Credentials(*emu.auth),
        retry=RetryPolicy(max_attempts=10, base=0.01, cap=0.05),
        rng=random.Random(5),
        transport=real_transport(wire),
    )
    async with client:
        replies = await lookups(client, 50)
    assert [r.status for r in replies] == [200] * 50
    faults = emu.stats()["faults"]
    failed = faults["500"] + faults["503"] + faults["drop"]
    assert failed > 0
    assert client.stats.retries == failed == sum(r.attempts - 1 for r in replies)
    assert client.stats.transport_errors == faults["drop"]
    assert client.stats.sent == 50 + failed


@pytest.mark.anyio
async def test_wrong_password_raises_auth_error_after_one_request(
    emulator_factory: Callable[..., EmulatorServer], wire: str
) -> None:
    """A refused password raises AuthError on the first 401; the emulator saw one request."""
    emu = emulator_factory(random_seed=1)
    wrong = "not-the-emulator-password"
    creds = Credentials(emu.auth[0], wrong)
    async with MemoryClient(emu.url, creds, transport=real_transport(wire)) as client:
        with pytest.raises(AuthError) as caught:
            await client.lookup(STORE, "email", "ada@example.com")
    assert wrong not in str(caught.value) and "401" in str(caught.value)
    stats = emu.stats()
    assert stats["requests"] == 1
    assert sum(counts.get("401", 0) for counts in stats["byOperation"].values()) == 1


@pytest.mark.anyio
async def test_client_still_works_after_cancelled_requests(
    emulator_factory: Callable[..., EmulatorServer], wire: str
) -> None:
    """Cancelling in-flight requests leaves the pool usable (encode/httpcore#1093)."""
    emu = emulator_factory(latency_ms=200, random_seed=2)
    creds, transport = Credentials(*emu.auth), real_transport(wire, 4)
    async with MemoryClient(
        emu.url, creds, concurrency=4, timeout=5, transport=transport
    ) as client:
        for cancel_after in (0.001, 0.1):  # while connecting; while awaiting the answer
            async with anyio.create_task_group() as tg:
                for _ in range(8):  # more than `concurrency`: some are still queued
                    tg.start_soon(client.lookup, STORE, "email", "ada@example.com")
                await anyio.sleep(cancel_after)
                tg.cancel_scope.cancel()
            replies = await lookups(client, 6, "phone", "(317) 555-0001")
            assert [r.status for r in replies] == [200] * 6
            assert all(r.body["profiles"] == [ADA] for r in replies)
