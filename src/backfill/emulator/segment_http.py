"""The Segment space's HTTP face: the Tracking API (write) and the Profile API (read).

They share the emulator's port and its ``Gate`` (latency, 500/503 faults, drops, lost responses,
per-operation stats) but not Twilio's Basic auth, the Memory body cap or the account's limit:
each checks its own credential and has its own optional limit, here, in the route. The gate
draws its fault before the route runs, so a faulted request changes nothing whatever its
credential; a lost response was applied (a re-send is then a ``duplicate`` by messageId).

Error bodies, chosen where Segment documents none for the Tracking API:
``{"code": "<code>", "message": "..."}`` (what analytics-python reads), codes ``invalid_request``
(not JSON content, not an object, ``batch`` not a list, bad gzip), ``invalid_json``,
``request_too_large`` (over 500,000 bytes, before or after gunzip), ``event_too_large`` (an item
over 32,768 bytes of its JSON encoding; nothing applied), ``unauthorized`` (401),
``rate_limited`` (429), ``internal_error``/``service_unavailable`` (faults). The Profile API's
are documented: ``{"error": {"code", "message"}}``, every response with a ``Request-Id``.

The tracking limit is weighted by the events a request carries (at most 2,500 count). A request
weighing more than the limiter can ever hold at once is charged the limiter's whole capacity:
admitted only when the limiter is wholly idle, then it empties it (``tracking_capacity``).
Content-Type must be ``application/json`` (400 otherwise: the facts call it mandatory and 400 is
the API's answer to a body it cannot read). An unknown space, and any path under ``/v1/spaces``
that is not a served route, answer 404 ``not_found`` after authentication.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from backfill.emulator.apierror import ApiError
from backfill.emulator.faults import AccountLimit
from backfill.emulator.limits import Verdict, make_limiter, render_retry_after
from backfill.emulator.segment import Profile, Replica, merge_batch_context
from backfill.emulator.state import iso

if TYPE_CHECKING:
    from backfill.emulator.app import Emulator
    from backfill.emulator.config import EmulatorConfig

MAX_BODY = 500_000
MAX_EVENT = 32_768
MAX_BATCH = 2_500
DEFAULT_PAGE = 10
MAX_PAGE = 100
PROFILES = "/v1/spaces/{space_id}/collections/users/profiles/{ident:path}"
BAD_CURSOR = "next is not a cursor this API issued."
TRACKING_PATHS = frozenset({"/v1/batch", "/v1/identify"})


def is_segment(path: str) -> bool:
    return path in TRACKING_PATHS or path.startswith("/v1/spaces/")


class TrackingError(ApiError):
    """A Tracking API refusal: ``{"code", "message"}`` as analytics-python reads it."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, code=status, headers=headers)
        self.segment_code = code

    def body(self) -> dict[str, Any]:
        return {"code": self.segment_code, "message": self.message}


class ProfileError(ApiError):
    """A Profile API refusal: ``{"error": {"code", "message"}}`` with a ``Request-Id``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, code=status,
                         headers={"Request-Id": str(uuid.uuid4()), **(headers or {})})  # fmt: skip
        self.segment_code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.segment_code, "message": self.message}}


def fault_error(path: str, status: int) -> ApiError:
    """The gate's 500/503 in the shape of the API the path belongs to."""
    code = "internal_error" if status == 500 else "service_unavailable"
    message = "Internal Server Error" if status == 500 else "Service Unavailable"
    if path.startswith("/v1/spaces/"):
        return ProfileError(status, code, message)
    return TrackingError(status, code, message)


def tracking_limit(config: EmulatorConfig) -> AccountLimit | None:
    if config.tracking_rate is None:
        return None
    shape = config.tracking_limiter
    limiter = make_limiter(
        shape,
        rate=config.tracking_rate,
        burst=config.tracking_capacity if shape in ("token", "gcra") else None,
        window_s=1.0,
        start=time.monotonic(),
    )
    return AccountLimit(limiter, retry_after=config.retry_after)


def profile_limit(config: EmulatorConfig) -> AccountLimit | None:
    """A fixed window of one second: the documented "100 requests/s per space"."""
    if config.profile_rate is None:
        return None
    limiter = make_limiter("fixed", rate=config.profile_rate, window_s=1.0,
                           start=time.monotonic())  # fmt: skip
    return AccountLimit(limiter, retry_after=config.retry_after)


def _limit_headers(limit: AccountLimit, verdict: Verdict) -> dict[str, str]:
    headers = limit.headers(verdict)
    reset = render_retry_after(verdict.retry_after, "whole")
    if reset is not None:
        headers["X-RateLimit-Reset"] = reset
    return headers


def _respond(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status, headers, "application/json")


def _basic_user(request: Request) -> bytes | None:
    """The username of a Basic header (``user:`` or, for old clients, ``user`` alone)."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[0]


def _same(given: bytes | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given, expected.encode())


# ------------------------------------------------------------------------------- Tracking API


def _gunzip(raw: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, MAX_BODY + 1)
    except zlib.error:
        raise TrackingError(400, "invalid_request", "The gzip body cannot be read.") from None
    if len(out) > MAX_BODY:
        raise TrackingError(400, "request_too_large",
                            f"The request is larger than {MAX_BODY} bytes.")  # fmt: skip
    if not inflater.eof:
        raise TrackingError(400, "invalid_request", "The gzip body is truncated.")
    return out


async def _tracking_body(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise TrackingError(400, "invalid_request", "Content-Type must be application/json.")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise TrackingError(400, "request_too_large",
                            f"The request is larger than {MAX_BODY} bytes.")  # fmt: skip
    if request.headers.get("content-encoding", "").strip().lower() == "gzip":
        raw = _gunzip(raw)
    try:
        body = json.loads(raw)
    except ValueError:
        raise TrackingError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise TrackingError(400, "invalid_request", "The request body must be a JSON object.")
    return body


async def track(emu: Emulator, request: Request, batch: bool) -> Response:
    space = emu.segment
    space.counters.requests += 1
    body = await _tracking_body(request)
    key = emu.config.segment_write_key
    key_in_body = body.get("writeKey")
    if not (
        _same(_basic_user(request), key)
        or (isinstance(key_in_body, str) and _same(key_in_body.encode(), key))
    ):
        raise TrackingError(401, "unauthorized", "Invalid or missing write key.")
    if batch:
        items = body.get("batch")
        if not isinstance(items, list):
            raise TrackingError(400, "invalid_request", "batch must be a list of events.")
    else:
        items = [body]
    for i, item in enumerate(items):
        if len(json.dumps(item).encode()) > MAX_EVENT:
            where = f"batch[{i}]" if batch else "The event"
            raise TrackingError(400, "event_too_large",
                                f"{where} is larger than {MAX_EVENT} bytes.")  # fmt: skip
    kept, beyond = items[:MAX_BATCH], max(0, len(items) - MAX_BATCH)
    limit = emu.tracking_limit
    if limit is not None:
        weight = min(float(max(1, len(kept))), emu.config.tracking_capacity)
        verdict = limit.admit(weight)
        if not verdict.admitted:
            raise TrackingError(429, "rate_limited", "Too many events; retry later.",
                                _limit_headers(limit, verdict))  # fmt: skip
    now = emu.segment_clock()
    context, integrations = body.get("context"), body.get("integrations")
    for item in kept:
        event = merge_batch_context(item, context, integrations) if batch else item
        space.ingest(event, now, None if batch else "identify")
    if beyond:
        space.discard_beyond(beyond)
    return _respond(200, {"success": True})


async def batch(emu: Emulator, request: Request) -> Response:
    return await track(emu, request, batch=True)


async def identify(emu: Emulator, request: Request) -> Response:
    return await track(emu, request, batch=False)


# -------------------------------------------------------------------------------- Profile API


def _cursor_token(value: Any) -> str:
    raw = json.dumps({"n": value}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_value(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["n"]
    except (ValueError, KeyError, TypeError):
        raise ProfileError(400, "validation_error", BAD_CURSOR) from None


def _page_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise ProfileError(400, "validation_error", "limit must be an integer.") from None
    if value < 1:
        raise ProfileError(400, "validation_error", "limit must be at least 1.")
    return min(value, MAX_PAGE)


def _include(request: Request) -> set[str] | None:
    raw = request.query_params.get("include")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _cursor(request: Request, has_more: bool, nxt: str, limit: int) -> dict[str, Any]:
    return {"url": request.url.path, "has_more": has_more, "next": nxt, "limit": limit}


def _profile(emu: Emulator, request: Request) -> tuple[Profile, Replica]:
    """Auth, limit, space and profile: the Profile API's checks, in that order."""
    space = emu.segment
    space.counters.profile_requests += 1
    if not _same(_basic_user(request), emu.config.segment_access_token):
        raise ProfileError(401, "authentication_error", "Invalid or missing access token.",
                           {"WWW-Authenticate": 'Basic realm="Segment"'})  # fmt: skip
    limit = emu.profile_limit
    if limit is not None:
        verdict = limit.admit()
        if not verdict.admitted:
            raise ProfileError(429, "rate_limit_error", "Too many requests.",
                               _limit_headers(limit, verdict))  # fmt: skip
    if request.path_params.get("space_id") != space.space_id:
        raise ProfileError(404, "not_found", "Space was not found.")
    id_type, sep, value = request.path_params.get("ident", "").partition(":")
    replica = space.read(emu.segment_clock())
    profile = replica.lookup(id_type, value) if sep and id_type and value else None
    if profile is None:
        raise ProfileError(404, "not_found", "Profile was not found.")
    return profile, replica


def _ok(payload: Any) -> Response:
    return _respond(200, payload, {"Request-Id": str(uuid.uuid4())})


async def traits(emu: Emulator, request: Request) -> Response:
    profile, _ = _profile(emu, request)
    limit = _page_limit(request)
    include = _include(request)
    verbose = request.query_params.get("verbose", "false").lower() == "true"
    keys = sorted(k for k in profile.traits if include is None or k in include)
    after = request.query_params.get("next")
    if after:
        last = _cursor_value(after)
        keys = [k for k in keys if k > str(last)]
    page, more = keys[:limit], len(keys) > limit
    out: dict[str, Any] = {}
    for k in page:
        t = profile.traits[k]
        out[k] = (
            {"value": t.value, "source_id": t.source_id, "updated_at": iso(t.updated_at)}
            if verbose
            else t.value
        )
    nxt = _cursor_token(page[-1]) if more else ""
    return _ok({"traits": out, "cursor": _cursor(request, more, nxt, limit)})


async def external_ids(emu: Emulator, request: Request) -> Response:
    profile, _ = _profile(emu, request)
    limit = _page_limit(request)
    include = _include(request)
    rows = [e for e in profile.external_ids if include is None or e.type in include]
    start = 0
    token = request.query_params.get("next")
    if token:
        start = _cursor_value(token)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ProfileError(400, "validation_error", BAD_CURSOR)
    page, more = rows[start : start + limit], start + limit < len(rows)
    data = [
        {
            "id": e.id,
            "type": e.type,
            "source_id": e.source_id,
            "collection": "users",
            "created_at": iso(e.created_at),
            "encoding": "none",
            "first_message_id": e.first_message_id,
        }
        for e in page
    ]
    nxt = _cursor_token(start + limit) if more else ""
    return _ok({"data": data, "cursor": _cursor(request, more, nxt, limit)})


async def metadata(emu: Emulator, request: Request) -> Response:
    p, _ = _profile(emu, request)
    return _ok(
        {
            "metadata": {
                "created_at": iso(p.created_at),
                "updated_at": iso(p.updated_at),
                "expires_at": None,
                "first_message_id": p.first_message_id,
                "first_source_id": p.first_source_id,
                "last_message_id": p.last_message_id,
                "last_source_id": p.last_source_id,
            }
        }
    )


async def events(emu: Emulator, request: Request) -> Response:
    """Identify events never show here (documented); the emulator stores no track events."""
    _profile(emu, request)
    limit = _page_limit(request)
    return _ok({"data": [], "cursor": _cursor(request, False, "", limit)})


async def unknown(emu: Emulator, request: Request) -> Response:
    """Any other path under /v1/spaces: the Profile API's 404, after its auth."""
    emu.segment.counters.profile_requests += 1
    if not _same(_basic_user(request), emu.config.segment_access_token):
        raise ProfileError(401, "authentication_error", "Invalid or missing access token.")
    raise ProfileError(404, "not_found", "Not found.")


ROUTES: list[tuple[str, str, str, Callable[[Emulator, Request], Awaitable[Response]]]] = [
    ("POST", "/v1/batch", "segment.batch", batch),
    ("POST", "/v1/identify", "segment.identify", identify),
    ("GET", PROFILES + "/traits", "segment.traits", traits),
    ("GET", PROFILES + "/external_ids", "segment.external_ids", external_ids),
    ("GET", PROFILES + "/metadata", "segment.metadata", metadata),
    ("GET", PROFILES + "/events", "segment.events", events),
]
UNKNOWN = "/v1/spaces/{rest:path}"
