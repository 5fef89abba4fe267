"""The emulator's HTTP face: Starlette routes over ``state.Account``, behind one ASGI gate.

The gate (``Gate``) sees every request first, in this order: added latency, the body size cap
(413, as a gateway in front of the API would refuse it), basic auth (401), the account's limit
(429, shaped as ``limits`` offers), then the drawn fault (500/503, or the connection closed with
no response). Only then does the request reach a route, so a faulted request changes no state -
except a lost response, which is applied and then dropped. Stats are counted there too. Every
``/v1`` route passes the same gate: ``PUT /Profiles/Bulk`` and the import endpoints are
throttled, faulted, dropped and delayed exactly as a PATCH is. A concurrency limit counts a
request from its arrival to its answer, so it takes its slot before the latency (which stands
for the server's work) and gives it back however the request ends; a request it refuses gets
no latency (the gateway turns it away at the door, without the work) and is answered where a
rate limit's 429 is, after auth.

An import's upload URL (``/__uploads__/<token>``) stands for a storage service's pre-signed URL
(S3-style), not for Twilio's API: Twilio's auth, the account's rate limit and the body size cap
do not apply there (the import's ``fileSize`` bounds it), while latency, 500/503 faults, drops
and lost responses do, because any HTTP service on the way fails like that. A lost upload
response was applied: re-sending the file is a 409 saying the import already received it.

The same port serves a Segment Unify space (``segment_http``: ``/v1/batch``, ``/v1/identify``,
``/v1/spaces/...``). The gate gives those paths latency, 500/503 faults, drops, lost responses
and per-operation stats (``segment.batch``, ``segment.traits``, ...), but neither Twilio's auth,
the Memory body cap nor the account's limit: they check their own credential and limit in the
route, after the fault is drawn. Their 429s are not in ``rateLimited`` (the account's figure);
their limiters' own counts are under ``segment`` in the stats.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backfill.emulator import imports, schema, segment_http
from backfill.emulator.apierror import ApiError, bad_request
from backfill.emulator.config import EmulatorConfig
from backfill.emulator.faults import AccountLimit, Fault, FaultPlan, Stats
from backfill.emulator.ids import IdMinter
from backfill.emulator.limits import Verdict
from backfill.emulator.segment import Counters, Space, SpaceConfigError
from backfill.emulator.segment_seed import seed_space
from backfill.emulator.state import Account, Redirect, Store, check_if_match, etag, paginate
from backfill.emulator.storage import SqliteStorage, load_seed
from backfill.errors import ConfigError

JSON = "application/json"
Handler = Callable[["Emulator", Request], Awaitable[Response]]


def respond(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(payload), status, headers, JSON)


class Emulator:
    """One emulated account with its switches, storage and stats; ``app`` serves it."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        rng = random.Random(config.random_seed) if config.random_seed is not None else None
        self.account = Account(IdMinter(rng), write_lag=config.write_lag_ms / 1000.0)
        self.stats = Stats()
        self.faults = FaultPlan(config)
        self.storage = SqliteStorage(config.state) if config.state is not None else None
        # The Segment space (segment.py): its clock is the wall clock, swappable by tests.
        self.segment_clock: Callable[[], float] = time.time
        lag = config.segment_lag_ms / 1000.0
        space: Space | None = None
        if self.storage is not None and not self.storage.is_empty():
            self.storage.load(self.account)
            space = self.storage.load_segment(lag)
        elif config.seed is not None:
            doc = load_seed(self.account, config.seed)
            if "segment" in doc:
                try:
                    space = seed_space(doc["segment"], config.segment_space_id, lag, time.time())
                except SpaceConfigError as exc:
                    raise ConfigError(f"seed file {config.seed}: {exc}") from None
        if space is None:
            space = Space(config.segment_space_id, lag=lag)
        self.segment = space
        self.config = config = _space_id(config, space)
        self.tracking_limit = segment_http.tracking_limit(config)
        self.profile_limit = segment_http.profile_limit(config)
        self.commit()
        routes = [Route(path, _bind(self, fn), methods=[m], name=op) for m, path, op, fn in ROUTES]
        routes += [Route(path, _bind(self, fn), methods=[m], name=op)
                   for m, path, op, fn in segment_http.ROUTES]  # fmt: skip
        routes.append(Route(segment_http.UNKNOWN, _bind(self, segment_http.unknown),
                            name="segment.unknown"))  # fmt: skip
        routes.append(Route("/__emulator__/stats", self._stats, methods=["GET", "DELETE"]))
        upload = Route(imports.UPLOADS + "{token}", _bind(self, upload_import), methods=["PUT"],
                       name="imports.upload")  # fmt: skip
        routes.append(upload)
        self.tasks: set[asyncio.Task[None]] = set()  # running imports, kept from the GC
        self._writes = asyncio.Lock()
        handlers = {
            ApiError: _api_error,
            HTTPException: _http_error,
            ClientDisconnect: _gone,
            Exception: _crash,
        }
        starlette = Starlette(routes=routes, exception_handlers=handlers)
        self.app = Gate(self, starlette, starlette.router.routes)

    def commit(self) -> None:
        """Persist what the last request changed (or forget it when state lives in memory)."""
        if self.storage is not None:
            self.storage.flush(self.account, self.segment)
        else:
            self.account.dirty.clear()
            self.segment.take_rows()

    async def commit_async(self) -> None:
        """``commit`` for a request's answer: the rows are taken here, in the event loop, and
        written in a worker thread, one write at a time in the order taken. Writing a bulk
        request's 1,000 profiles in the loop stalled it, and the rate limiter judged the
        requests that queued meanwhile late and bunched."""
        storage = self.storage
        if storage is None:
            self.account.dirty.clear()
            self.segment.take_rows()
            return
        rows = storage.rows(self.account) + storage.segment_rows(self.segment)
        if not rows:
            return

        async def write() -> None:
            async with self._writes:  # FIFO: later snapshots are written later
                await asyncio.to_thread(storage.write, rows)

        # A task, shielded: a request cancelled meanwhile (its client gone) still has its write
        # finish before the next one starts on the same connection.
        task = asyncio.ensure_future(write())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await asyncio.shield(task)

    async def _stats(self, request: Request) -> Response:
        limit = self.faults.limit
        seg_limits = (self.tracking_limit, self.profile_limit)
        if request.method == "DELETE":
            self.stats.reset()
            self.segment.counters = Counters()
            for each in (limit, *seg_limits):
                if each is not None:
                    each.reset()
        body = self.stats.snapshot()
        body["limiter"] = limit.snapshot() if limit is not None else None
        tracking, profile = (x.snapshot() if x is not None else None for x in seg_limits)
        body["segment"] = {
            **self.segment.counters.view(),
            "tracking_limiter": tracking,
            "profile_limiter": profile,
            "profiles": len(self.segment.current.profiles),
        }
        return respond(200, body)

    def close(self) -> None:
        if self.storage is not None:
            self.storage.close()


def _space_id(config: EmulatorConfig, space: Space) -> EmulatorConfig:
    """The space a seed or state file names wins over the default id, not over a chosen one."""
    if space.space_id == config.segment_space_id:
        return config
    if config.segment_space_id != EmulatorConfig.segment_space_id:
        raise ConfigError(f"the seed or state names space {space.space_id!r}, "
                          f"but the space id asked for is {config.segment_space_id!r}")  # fmt: skip
    return dataclasses.replace(config, segment_space_id=space.space_id)


def _bind(emulator: Emulator, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        response = await fn(emulator, request)
        await emulator.commit_async()
        return response

    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if isinstance(exc, Redirect):
        path = request.url.path.replace(exc.old_id, exc.canonical_id, 1)
        query = f"?{request.url.query}" if request.url.query else ""
        location = str(request.base_url).rstrip("/") + path + query
        return respond(
            exc.status,
            {"message": exc.message, "uri": location},
            {"Location": location, "Canonical-Profile-Id": exc.canonical_id},
        )
    return respond(exc.status, exc.body(), exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route or method), in the API's error shape."""
    assert isinstance(exc, HTTPException)
    message = "Not Found" if exc.status_code == 404 else f"Method {request.method} not allowed."
    return respond(exc.status_code, ApiError(exc.status_code, message).body(), exc.headers)


async def _gone(request: Request, exc: Exception) -> Response:
    """The client hung up while sending its body (a cancelled request): nobody to answer."""
    return Response(status_code=499)


async def _crash(request: Request, exc: Exception) -> Response:
    return respond(500, ApiError(500, f"Emulator bug: {type(exc).__name__}: {exc}").body())


READS = frozenset({"profiles.lookup"})  # a POST that writes nothing: no response to lose
UNAUTHORIZED = ApiError(
    401,
    "Authentication failed: wrong or missing credentials.",
    headers={"WWW-Authenticate": 'Basic realm="Twilio"'},
)


class Gate:
    """Outermost ASGI layer: latency, auth, throttle, faults, stats. See the module docstring."""

    def __init__(self, emulator: Emulator, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.emulator = emulator
        self.app = app
        self.routes = routes
        config = emulator.config
        token = base64.b64encode(f"{config.username}:{config.password}".encode()).decode()
        self._expected_auth = f"Basic {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        # An import's upload URL stands for a storage service's pre-signed URL: faults and
        # latency apply as to any write, Twilio auth and the account's rate limit do not.
        upload = path.startswith(imports.UPLOADS)
        if not (path.startswith("/v1/") or upload):
            await self.app(scope, receive, send)
            return
        if segment_http.is_segment(path):
            # Segment's APIs check their own credential and limit in the route (both need the
            # body or the path); the gate gives them latency, faults, drops and stats.
            await self._pass(scope, receive, send, False, None, None, segment=True)
            return
        limit = None if upload else self.emulator.faults.limit
        if limit is None or not limit.holds_slots:
            await self._pass(scope, receive, send, upload, limit, None)
            return
        # A concurrency limit: the request holds a slot from its arrival (so added latency,
        # standing for the server's work, keeps it in flight) until its answer is sent, or it
        # ends any other way: 401, 413, 429, fault, drop, lost response, crash, cancellation.
        verdict = limit.admit()
        try:
            await self._pass(scope, receive, send, upload, limit, verdict)
        finally:
            if verdict.admitted:
                limit.release()

    async def _pass(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upload: bool,
        limit: AccountLimit | None,
        verdict: Verdict | None,
        segment: bool = False,
    ) -> None:
        """Everything after the gate's first look; ``verdict`` is a concurrency limit's."""
        emulator = self.emulator
        stats, faults = emulator.stats, emulator.faults
        op = self._operation(scope)
        if faults.active and (verdict is None or verdict.admitted):
            # A concurrency refusal is the gateway's, at the door: no work, no latency.
            delay = faults.latency()
            if delay:
                stats.delay(op, delay)
                await asyncio.sleep(delay)
        cap = emulator.config.max_body_bytes
        if cap is not None and not (upload or segment):
            whole = await _body_within(scope, receive, cap)
            if whole is None:
                stats.record(op, "413")
                await _send_error(send, ApiError(
                    413, f"The request body is larger than {cap} bytes."))  # fmt: skip
                return
            receive = whole
        if not (upload or segment) and not self._authorized(scope):
            stats.record(op, "401")
            await _send_error(send, UNAUTHORIZED)
            return
        if limit is not None:
            if verdict is None:
                verdict = limit.admit()
            if not verdict.admitted:
                stats.rate_limited += 1
                stats.record(op, "429")
                await _send_error(send, _too_many(limit, verdict))
                return
        fault = faults.draw(scope["method"] != "GET" and op not in READS)
        if fault in (Fault.ERROR_500, Fault.ERROR_503):
            stats.faults[fault.value] += 1
            stats.record(op, fault.value)
            code = int(fault.value)
            message = "Internal Server Error" if code == 500 else "Service Unavailable"
            error = segment_http.fault_error(scope["path"], code) if segment else None
            await _send_error(send, error or ApiError(code, message))
            return
        if fault is Fault.DROP:
            stats.faults[fault.value] += 1
            stats.record(op, "dropped")
            await _drain(receive)
            _close_connection(send)
            return
        status: str = "?"

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            if fault is not Fault.LOST_RESPONSE:
                await send(message)

        await self.app(scope, receive, watch)
        if fault is Fault.LOST_RESPONSE:
            stats.faults[fault.value] += 1
            stats.record(op, "lost")
            _close_connection(send)
        else:
            stats.record(op, status)

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value
                break
        if header == self._expected_auth:
            return True
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        config = self.emulator.config
        return hmac.compare_digest(user, config.username.encode()) & hmac.compare_digest(
            password, config.password.encode()
        )

    def _operation(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "name", None) or "unknown"
        return "unknown"


def _too_many(limit: AccountLimit, verdict: Verdict) -> ApiError:
    """429, code 20429: Twilio uses it for a rate and for too many concurrent requests."""
    headers = limit.headers(verdict)
    if limit.holds_slots:
        message = "Too many concurrent requests."
    elif headers:
        message = "Too many requests. Please retry according to the Retry-After header."
    else:
        message = "Too many requests."
    return ApiError(429, message, headers=headers)


async def _body_within(scope: Scope, receive: Receive, limit: int) -> Receive | None:
    """A ``receive`` that yields the whole body again, or None when the body is over ``limit``.

    A declared Content-Length decides at once; a chunked body is read up to the limit. A body
    that is over it is read to its end (and thrown away) before the 413, so the client, which
    sends its whole body before it reads an answer, gets the 413 on a connection still usable.
    """
    for key, value in scope["headers"]:
        if key == b"content-length":
            if value.isdigit() and int(value) > limit:
                await _drain(receive)
                return None
            return receive
    held: list[Message] = []
    size = 0
    while True:
        message = await receive()
        held.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > limit:
            if message.get("more_body", False):
                await _drain(receive)
            return None
        if not message.get("more_body", False):
            break

    async def replay() -> Message:
        return held.pop(0) if held else await receive()

    return replay


async def _drain(receive: Receive) -> None:
    """Read the request body to its end: closing a socket with unread bytes sends a TCP reset,
    and a dropped response should look like a clean disconnect, not a reset."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _send_error(send: Send, exc: ApiError) -> None:
    body = json.dumps(exc.body()).encode()
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _close_connection(send: Send) -> None:
    """Close the TCP connection with no response at all, as a dying proxy would.

    ASGI has no message for this, so it reaches uvicorn's per-request cycle (the owner of
    ``send``) for its transport; marking the cycle disconnected stops uvicorn from answering 500.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("dropping a connection needs the emulator served by uvicorn")
    transport.close()
    cycle.disconnected = True  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ endpoints


def _query_int(request: Request, key: str, default: int, hi: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{key} must be an integer.") from None
    if not 1 <= value <= hi:
        raise bad_request(f"{key} must be between 1 and {hi}.")
    return value


def _order(request: Request) -> str:
    order = request.query_params.get("orderBy", "DESC")
    if order not in ("ASC", "DESC"):
        raise bad_request("orderBy must be ASC or DESC.")
    return order


def _token(request: Request) -> str | None:
    token = request.query_params.get("pageToken")
    if token is not None and len(token) > 500:
        raise bad_request("pageToken is longer than 500 characters.")
    return token


def _flag(request: Request, key: str, default: bool) -> bool:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise bad_request(f"{key} must be true or false.")
    return raw.lower() == "true"


def _groups(request: Request, store: Store) -> list[str] | None:
    raw = request.query_params.get("traitGroups")
    if raw is None:
        return None
    if not 1 <= len(raw) <= 256:
        raise bad_request("traitGroups must be 1 to 256 characters.")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in store.groups:
            raise bad_request(f"Unknown trait group {name!r} in traitGroups.")
    return names


async def _json(request: Request) -> Any:
    return schema.parse_json(await request.body())


async def _optional_json(request: Request) -> Any:
    """A body the API marks optional: none at all means an empty patch; anything else is JSON."""
    raw = await request.body()
    return schema.parse_json(raw) if raw else {}


def _accepted(emu: Emulator, request: Request, resource_id: str, message: str) -> Response:
    """A control-plane 202: an Operation that is already complete, and where to read it."""
    op = emu.account.operation(resource_id)
    url = _operation_url(request, op.id)
    headers = {"Operation-Id": op.id, "Location": url, "Retry-After": "0"}
    return respond(202, {"message": message, "statusUrl": url}, headers)


def _operation_url(request: Request, op_id: str) -> str:
    """Built per request, so a restarted emulator on another port still answers with its own."""
    return str(request.base_url).rstrip("/") + f"/v1/ControlPlane/Operations/{op_id}"


def _store(emu: Emulator, request: Request) -> Store:
    return emu.account.store(request.path_params["storeId"])


async def create_store(emu: Emulator, request: Request) -> Response:
    store = emu.account.create_store(await _json(request))
    return _accepted(emu, request, store.id, "Memory Store creation accepted for processing.")


async def list_stores(emu: Emulator, request: Request) -> Response:
    ids = sorted(emu.account.stores, reverse=_order(request) == "DESC")
    size = _query_int(request, "pageSize", 50, 100)
    return respond(200, paginate(ids, "stores", size, _token(request), 100))


async def fetch_store(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    return respond(200, store.to_json(), {"ETag": etag("store", store.id, store.version)})


async def patch_store(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    check_if_match(request.headers.get("if-match"), etag("store", store.id, store.version))
    emu.account.patch_store(store, await _optional_json(request))
    return _accepted(emu, request, store.id, "Memory Store update request accepted.")


async def fetch_identity(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    tag = etag("identity", store.id, store.identity_version)
    return respond(200, store.identity_json(), {"ETag": tag})


async def put_identity(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    check_if_match(
        request.headers.get("if-match"), etag("identity", store.id, store.identity_version)
    )
    emu.account.put_identity(store, await _json(request))
    return _accepted(
        emu, request, store.id, "Identity Resolution Settings accepted for processing."
    )


async def create_group(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    group = emu.account.create_group(store, await _json(request))
    return _accepted(emu, request, group.name, "TraitGroup creation request accepted.")


async def list_groups(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    include = _flag(request, "includeTraits", False)
    groups = sorted(store.groups.values(), key=lambda g: g.name,
                    reverse=_order(request) == "DESC")  # fmt: skip
    size = _query_int(request, "pageSize", 50, 100)
    items = [g.to_json(include) for g in groups]
    return respond(200, paginate(items, "traitGroups", size, _token(request), 50))


async def fetch_group(emu: Emulator, request: Request) -> Response:
    """Traits come whole unless pageSize is given; then they page by name like any list."""
    store = _store(emu, request)
    group = emu.account.group(store, request.path_params["name"])
    body: dict[str, Any] = group.to_json(_flag(request, "includeTraits", True))
    meta: dict[str, Any] = {"key": "traitGroup", "pageSize": len(body.get("traits", {}))}
    if "traits" in body and "pageSize" in request.query_params:
        names = sorted(body["traits"], reverse=_order(request) == "DESC")
        size = _query_int(request, "pageSize", 50, 100)
        page = paginate(names, "traits", size, _token(request), 100)
        body["traits"] = {n: body["traits"][n] for n in page["traits"]}
        meta.update({k: v for k, v in page["meta"].items() if k != "key"})
    tag = etag("traitGroup", f"{store.id}/{group.name}", group.version)
    return respond(200, {"traitGroup": body, "meta": meta}, {"ETag": tag})


async def patch_group(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    group = emu.account.group(store, request.path_params["name"])
    tag = etag("traitGroup", f"{store.id}/{group.name}", group.version)
    check_if_match(request.headers.get("if-match"), tag)
    emu.account.patch_group(store, group, await _optional_json(request))
    return _accepted(emu, request, group.name, "TraitGroup update request accepted.")


async def delete_group(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    group = emu.account.group(store, request.path_params["name"])
    emu.account.delete_group(store, group)
    return _accepted(emu, request, group.name, "TraitGroup deletion request accepted.")


async def fetch_operation(emu: Emulator, request: Request) -> Response:
    op_id = request.path_params["operationId"]
    op = emu.account.operations.get(op_id)
    if op is None:
        raise ApiError(404, f"Operation {op_id} not found.")
    body = op.to_json(_operation_url(request, op.id))
    return respond(200, body, {"Operation-Id": op.id, "Retry-After": "0"})


async def create_profile(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile_id = emu.account.create_profile(store, await _json(request))
    return respond(202, {"message": "Profile resolved and accepted for processing.",
                         "id": profile_id})  # fmt: skip


async def list_profiles(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    size = min(_query_int(request, "pageSize", 50, 1000), 100)
    return respond(200, emu.account.profile_ids(store, size, _token(request), _order(request)))


async def bulk_profiles(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    for _ in emu.account.bulk_steps(store, await _json(request)):
        await asyncio.sleep(0)  # let requests that arrived meanwhile meet the rate limiter
    return respond(202, {"message": "Profile batch accepted for processing."})


def _upload_url(request: Request, token: str) -> str:
    """Built per request, like operation URLs: a restarted emulator answers with its own port."""
    return str(request.base_url).rstrip("/") + imports.UPLOADS + token


async def create_import(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    job = imports.register(emu.account, store, await _json(request), emu.config.upload_ttl_s)
    return respond(201, {"importId": job.id, "url": _upload_url(request, job.token)})


async def list_imports(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    ids = imports.ids(emu.account, store)
    if _order(request) == "DESC":
        ids.reverse()
    size = _query_int(request, "pageSize", 50, 100)
    return respond(200, paginate(ids, "imports", size, _token(request), 100))


async def fetch_import(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    job = imports.find(emu.account, store, request.path_params["importId"])
    return respond(200, job.to_json())


async def upload_import(emu: Emulator, request: Request) -> Response:
    """The upload URL: one PUT of exactly ``fileSize`` bytes, then processing in the background."""
    raw_length = request.headers.get("content-length")
    length = int(raw_length) if raw_length is not None and raw_length.isdigit() else None
    job = imports.accept_upload(emu.account, request.path_params["token"], length)
    data = await request.body()
    job = imports.accept_upload(emu.account, request.path_params["token"], len(data))
    imports.received(emu.account, job, data)
    delay = emu.config.import_delay_ms / 1000.0
    task = asyncio.get_running_loop().create_task(
        imports.process(emu.account, job, data, delay, emu.commit_async)
    )
    emu.tasks.add(task)
    task.add_done_callback(emu.tasks.discard)
    return respond(200, {"importId": job.id, "status": job.status})


async def lookup(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    return respond(200, emu.account.lookup(store, await _json(request)))


async def fetch_profile(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=False)
    return respond(200, emu.account.profile_json(profile, _groups(request, store)))


async def patch_profile(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=True)
    emu.account.patch_profile(store, profile, await _json(request))
    return respond(202, {"message": "Trait modifications accepted for processing."})


async def delete_profile(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=True)
    emu.account.delete_profile(store, profile)
    return respond(202, {"message": "Profile accepted for deletion."})


async def list_traits(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=False)
    rows = emu.account.trait_list(profile, _groups(request, store), _order(request))
    size = _query_int(request, "pageSize", 50, 1000)
    return respond(200, paginate(rows, "traits", size, _token(request), 100))


async def list_identifiers(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=False)
    sets = [{"idType": t, "values": list(v)} for t, v in profile.identifiers.items()]
    return respond(200, {"identifiers": sets})


async def add_identifier(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=True)
    id_type, value = emu.account.identifier_body(store, await _json(request))
    emu.account.add_identifier(store, profile, id_type, value, emu.account.clock())
    return respond(202, {"message": "Identifier accepted for processing."})


def _id_type(request: Request) -> str:
    id_type: str = request.path_params["idType"]
    if not 2 <= len(id_type) <= 30:
        raise bad_request("idType must be 2 to 30 characters.")
    return id_type


async def fetch_identifier(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=False)
    id_type = _id_type(request)
    values = profile.identifiers.get(id_type)
    if not values:
        raise ApiError(404, f"Profile {profile.id} has no {id_type} identifier.")
    return respond(200, {"idType": id_type, "values": list(values)})


async def patch_identifier(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=True)
    emu.account.replace_identifier(store, profile, _id_type(request), await _json(request))
    return respond(202, {"message": "Identifier update accepted."})


async def delete_identifier(emu: Emulator, request: Request) -> Response:
    store = _store(emu, request)
    profile = emu.account.profile(store, request.path_params["profileId"], write=True)
    remove_all = _flag(request, "removeAll", False)
    emu.account.remove_identifier(store, profile, _id_type(request), remove_all)
    return respond(202, {"message": "Identifier removal accepted."})


CP = "/v1/ControlPlane/Stores"
DP = "/v1/Stores/{storeId}/Profiles"
ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", CP, "stores.create", create_store),
    ("GET", CP, "stores.list", list_stores),
    ("GET", CP + "/{storeId}", "stores.fetch", fetch_store),
    ("PATCH", CP + "/{storeId}", "stores.patch", patch_store),
    ("GET", CP + "/{storeId}/IdentityResolutionSettings", "identity.fetch", fetch_identity),
    ("PUT", CP + "/{storeId}/IdentityResolutionSettings", "identity.update", put_identity),
    ("POST", CP + "/{storeId}/TraitGroups", "traitGroups.create", create_group),
    ("GET", CP + "/{storeId}/TraitGroups", "traitGroups.list", list_groups),
    ("GET", CP + "/{storeId}/TraitGroups/{name}", "traitGroups.fetch", fetch_group),
    ("PATCH", CP + "/{storeId}/TraitGroups/{name}", "traitGroups.patch", patch_group),
    ("DELETE", CP + "/{storeId}/TraitGroups/{name}", "traitGroups.delete", delete_group),
    ("GET", "/v1/ControlPlane/Operations/{operationId}", "operations.fetch", fetch_operation),
    ("POST", DP, "profiles.create", create_profile),
    ("GET", DP, "profiles.list", list_profiles),
    ("PUT", DP + "/Bulk", "profiles.bulk", bulk_profiles),
    ("POST", DP + "/Imports", "imports.create", create_import),
    ("GET", DP + "/Imports", "imports.list", list_imports),
    ("GET", DP + "/Imports/{importId}", "imports.fetch", fetch_import),
    ("POST", DP + "/Lookup", "profiles.lookup", lookup),
    ("GET", DP + "/{profileId}", "profiles.fetch", fetch_profile),
    ("PATCH", DP + "/{profileId}", "profiles.patch", patch_profile),
    ("DELETE", DP + "/{profileId}", "profiles.delete", delete_profile),
    ("GET", DP + "/{profileId}/Traits", "traits.list", list_traits),
    ("GET", DP + "/{profileId}/Identifiers", "identifiers.list", list_identifiers),
    ("POST", DP + "/{profileId}/Identifiers", "identifiers.create", add_identifier),
    ("GET", DP + "/{profileId}/Identifiers/{idType}", "identifiers.fetch", fetch_identifier),
    ("PATCH", DP + "/{profileId}/Identifiers/{idType}", "identifiers.patch", patch_identifier),
    ("DELETE", DP + "/{profileId}/Identifiers/{idType}", "identifiers.delete", delete_identifier),
]
