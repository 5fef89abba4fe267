"""Delivering the plan: ``send.concurrency`` workers over one client, outcomes checkpointed.

``deliver(job, client, db, ...)`` is the stage's one entry. Each worker claims a unit, sends it,
and claims its next unit in the same group commit that records the result, so the checkpoint
always knows which units may be in flight (see ``checkpoint``). Per response, following the
Studio widget's transitions (profileUpdated, profileNotFound, failed):

- 2xx: ``updated`` (``created`` for a new profile, whose ID is kept);
- 308: the profile was merged; the same PATCH goes once to the ``Canonical-Profile-Id``
  (Twilio's published ``Location`` example is malformed), and the remap is recorded. It goes
  without the traits for which another unit bound for that profile (its own, or another merged
  one's that landed) holds a later row, so "the latest row wins" whatever the sending order;
- 404: ``profile_not_found``; 400 and anything else final: ``failed`` with the Twilio code and
  message; 429/500/503 and network errors were already retried by the client up to
  ``send.max_attempts``, so what comes back is final too;
- 401/403: ``AuthError`` from the client stops the whole run at once.

Stopping (``stop`` set, e.g. by Ctrl-C) drains: no new unit is claimed, in-flight ones finish.

One request is in flight per profile (``_Locks``, taken in plan order, before the claim; a 308's
re-send also takes the canonical profile's), so the comparison above sees every unit that landed.

Creates happen once. The client never re-sends a POST whose outcome is unknown (no answer, a
500), and a create unit claimed before (a killed run) may have landed: either way Lookup is
asked by the identifier the create is keyed on (``new:<idType> <value>``) first; a profile found
is PATCHed (outcome ``created``: this run made it), none found is POSTed. Later chunks of the
same person PATCH the profile the first one made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

import anyio

from backfill.checkpoint import DONE, FAILED, Result, RunDB, Unit
from backfill.client import MemoryClient, Reply, encode_json
from backfill.config import Job
from backfill.mapping import PROFILE_ID_PATTERN
from backfill.plan import OrderKey, unit_orders
from backfill.resolve import NEW

UPDATED = "updated"
CREATED = "created"
PROFILE_NOT_FOUND = "profile_not_found"
FAILED_OUTCOME = "failed"
PROFILE_ID = re.compile(PROFILE_ID_PATTERN)  # the one pattern the plan checks IDs by
PAGE = 1_000

T = TypeVar("T")


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not future.done():  # its waiter may be gone (the loop shutting down)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _DB:
    """The run file from async code: one thread of its own runs every call in turn (a connection
    is not thread-safe), off the event loop, and never stops half-way through a commit.

    A plain thread and queue rather than ``anyio.to_thread``: a round trip costs ~20 us of CPU
    instead of ~75 us on uvloop (BENCHMARKS.md, "Delivery"), and an unthrottled run makes about
    one a unit.
    """

    def __init__(self, db: RunDB) -> None:
        self.db = db
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="backfill-checkpoint")
            self._thread.daemon = True  # a crashed loop must not hang the exit
            self._thread.start()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        with anyio.CancelScope(shield=True):  # the caller learns how the call ended
            result = await future
        return result

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                ok, value = True, fn(*args)
            except BaseException as exc:  # handed to the caller, raised there
                ok, value = False, exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, ok, value)

    def close(self) -> None:
        """Stop the thread once the calls queued so far have run."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()


class _GroupCommit:
    """Workers hand in (previous result, next claim) and wait until the batch holding them is
    durable; one transaction, and one event, serve every worker that arrived meanwhile."""

    def __init__(self, db: _DB) -> None:
        self._db = db
        self._results: list[Result] = []
        self._claims: list[int] = []
        self._durable = anyio.Event()  # set once the batch now gathering is committed
        self._wake = anyio.Event()
        self._closed = False

    async def commit(self, result: Result | None, claim: int | None) -> None:
        if result is None and claim is None:
            return
        if result is not None:
            self._results.append(result)
        if claim is not None:
            self._claims.append(claim)
        durable = self._durable
        self._wake.set()
        await durable.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            if not (self._results or self._claims):
                if self._closed:
                    return
                continue
            results, self._results = self._results, []
            claims, self._claims = self._claims, []
            durable, self._durable = self._durable, anyio.Event()
            await self._db.call(self._db.db.record, results, claims)
            durable.set()


class _Feed:
    """The pending units in plan order, read a page at a time when the last one is taken."""

    def __init__(self, db: _DB) -> None:
        self._db = db
        self._units: deque[Unit] = deque()
        self._after = 0
        self._exhausted = False
        self._reading = anyio.Lock(fast_acquire=True)

    async def next(self) -> Unit | None:
        if not self._units and not self._exhausted:
            async with self._reading:
                if not self._units and not self._exhausted:  # nobody read it meanwhile
                    page = await self._db.call(self._db.db.pending, self._after, PAGE)
                    self._units.extend(page)
                    self._exhausted = not page
                    if page:
                        self._after = page[-1].seq
        return self._units.popleft() if self._units else None


class _Locks:
    """One holder per key (a profile ID or a ``new:`` target), waiters served first come first
    served. Uncontended, taking and giving back a key is two dict operations: no lock object."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[anyio.Event]] = {}  # present while the key is held

    async def acquire(self, key: str) -> None:
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return
        event = anyio.Event()
        queue.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed over as we were cancelled: hand it on
                self.release(key)
            else:
                queue.remove(event)
            raise

    def release(self, key: str) -> None:
        queue = self._waiting[key]
        if queue:
            queue.popleft().set()  # the key passes to the first waiter, still held
        else:
            del self._waiting[key]


Keys = dict[int, OrderKey]


class Known:
    """What delivery has learned so far, shared by the workers of one event loop: the profile
    each create made (``new:`` target -> ID) and, per canonical profile, the order keys of the
    units a 308 sent there that landed. Loaded from the checkpoint, so a resume decides the same.
    """

    def __init__(self, db: _DB | None = None) -> None:
        self.locks = _Locks()
        self.created: dict[str, str] = {}
        self.landed: dict[str, list[Keys]] = {}
        self.db = db

    async def load(self) -> None:
        if self.db is not None:
            self.created = await self.db.call(self.db.db.created)
            remaps = await self.db.call(self.db.db.landed_remaps)
            self.landed = {p: [unit_orders(o) for o in orders] for p, orders in remaps.items()}

    async def planned(self, profile_id: str) -> list[Keys]:
        """The order keys of the units planned for ``profile_id`` itself."""
        if self.db is None:
            return []
        orders = await self.db.call(self.db.db.planned_orders, profile_id)
        return [unit_orders(o) for o in orders]


def profile_path(store_id: str, profile_id: str) -> str:
    return f"/v1/Stores/{quote(store_id, safe='')}/Profiles/{quote(profile_id, safe='')}"


def _result(unit: Unit, reply: Reply, outcome_ok: str, sent_to: str | None, tries: int) -> Result:
    status = reply.status
    if status is not None and 200 <= status < 300:
        return Result(unit.seq, DONE, outcome_ok, status, None, None, tries, sent_to)
    outcome = PROFILE_NOT_FOUND if status == 404 else FAILED_OUTCOME
    return Result(unit.seq, FAILED, outcome, status, reply.code, reply.message, tries, sent_to)


def without_older(job: Job, body: str, mine: Keys, others: list[Keys]) -> str | None:
    """``body`` without the traits for which one of ``others`` holds a later row than ``mine``
    (None when nothing is left to send); ``body`` itself when nothing is dropped."""
    drop = [j for j, key in mine.items() if any(key < other.get(j, key) for other in others)]
    if not drop:
        return body
    data = json.loads(body)
    traits: dict[str, dict[str, Any]] = data["traits"]
    for j in drop:
        mapping = job.traits[j]
        group = traits.get(mapping.group, {})
        group.pop(mapping.trait, None)
        if not group:
            traits.pop(mapping.group, None)
    return encode_json(data).decode() if traits else None


async def _patch(
    job: Job, client: MemoryClient, unit: Unit, profile_id: str, known: Known | None
) -> Result:
    """PATCH ``profile_id`` with the unit's body, following one merge redirect (see the module
    docstring); the redirected send holds the canonical profile's lock."""
    store = job.connection.store_id
    body = unit.body
    landed = known.landed.get(profile_id) if known is not None else None
    if landed:  # units merged into this profile landed here: keep their later rows
        trimmed = without_older(job, body, unit_orders(unit.orders), landed)
        if trimmed is None:
            message = "every trait has a later row in a merged profile's unit"
            return Result(unit.seq, DONE, UPDATED, None, None, message, 0, None)
        body = trimmed
    reply = await client.request("PATCH", profile_path(store, profile_id), content=body.encode())
    if reply.status != 308:
        return _result(unit, reply, UPDATED, None, reply.attempts)
    canonical = reply.headers.get("canonical-profile-id", "")
    if not PROFILE_ID.match(canonical):
        message = "308 without a usable Canonical-Profile-Id header"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message, reply.attempts, None)
    if known is None or canonical == profile_id:
        return await _remap(job, client, unit, profile_id, canonical, reply, known)
    await known.locks.acquire(canonical)
    try:
        return await _remap(job, client, unit, profile_id, canonical, reply, known)
    finally:
        known.locks.release(canonical)


async def _remap(
    job: Job,
    client: MemoryClient,
    unit: Unit,
    profile_id: str,
    canonical: str,
    moved: Reply,
    known: Known | None,
) -> Result:
    """The re-send of a 308 to ``canonical``, with the canonical profile's lock held."""
    body: str | None = unit.body
    mine = unit_orders(unit.orders)
    if known is not None and mine:
        others = [*await known.planned(canonical), *known.landed.get(canonical, [])]
        body = without_older(job, unit.body, mine, others)
    if body is None:
        message = f"every trait has a later row in {canonical}'s own units"
        return Result(unit.seq, DONE, UPDATED, 308, None, message, moved.attempts, canonical)
    again = await client.request("PATCH", profile_path(job.connection.store_id, canonical),
                                 content=body.encode())  # fmt: skip
    tries = moved.attempts + again.attempts
    if again.status == 308:
        message = f"{canonical} (the merge target of {profile_id}) moved again"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message, tries, canonical)
    if again.ok and known is not None and mine:
        known.landed.setdefault(canonical, []).append(mine)
    return _result(unit, again, UPDATED, canonical, tries)


async def _create(job: Job, client: MemoryClient, unit: Unit, known: Known | None) -> Result:
    """Create the person once (see the module docstring)."""
    target = unit.target
    made = known.created.get(target) if known is not None else None
    if made is not None:  # an earlier chunk created them: this one is a PATCH of that profile
        result = await _patch(job, client, unit, made, None)
        return replace(result, sent_to=result.sent_to or made)
    store = job.connection.store_id
    id_type, _, value = target.removeprefix(NEW).partition(" ")
    found: list[str] = []

    async def landed_before() -> Reply | None:
        """Ask Lookup whether an earlier attempt created them: if so, PATCH that profile."""
        asked = await client.lookup(store, id_type, value)
        profiles = asked.body.get("profiles") if isinstance(asked.body, dict) else None
        if not asked.ok or not isinstance(profiles, list):
            detail = asked.message or f"HTTP {asked.status}"
            message = f"cannot tell whether an earlier attempt created {target}: {detail}"
            return replace(asked, status=asked.status if not asked.ok else None, message=message)
        if not profiles:
            return None
        patched = await _patch(job, client, unit, str(profiles[0]), None)
        found.append(patched.sent_to or str(profiles[0]))  # the canonical one after a 308
        return Reply(patched.status, None, {}, patched.attempts, patched.code, patched.message, 0)

    reply = await landed_before() if unit.claims > 0 else None
    if reply is None:
        path = f"/v1/Stores/{quote(store, safe='')}/Profiles"
        reply = await client.request("POST", path, content=unit.body.encode(),
                                     unknown=landed_before)  # fmt: skip
    if found:
        sent_to: str | None = found[0]
    else:
        sent_to = reply.body.get("id") if isinstance(reply.body, dict) else None
    result = _result(unit, reply, CREATED, sent_to, reply.attempts)
    if result.state == DONE and sent_to is not None and known is not None:
        known.created[target] = sent_to
    return result


async def send_unit(
    job: Job, client: MemoryClient, unit: Unit, known: Known | None = None
) -> Result:
    """Send one unit and classify the answer (following one merge redirect). ``known`` is the
    delivery's shared knowledge (creates, landed remaps, locks); without it each unit stands
    alone."""
    if unit.action == "create":
        return await _create(job, client, unit, known)
    assert unit.profile_id is not None
    return await _patch(job, client, unit, unit.profile_id, known)


async def deliver(
    job: Job,
    client: MemoryClient,
    db: RunDB,
    *,
    stop: anyio.Event,
    on_result: Callable[[Result], None] | None = None,
    send: Callable[[Job, MemoryClient, Unit], Awaitable[Result]] | None = None,
) -> None:
    """Send every pending unit; return when all are finished, or drained after ``stop``."""
    store = _DB(db)
    committer = _GroupCommit(store)
    feed = _Feed(store)
    known = Known(store)
    locks = known.locks

    async def send_known(job: Job, client: MemoryClient, unit: Unit) -> Result:
        return await send_unit(job, client, unit, known)

    sender = send if send is not None else send_known

    async def worker() -> None:
        previous: Result | None = None
        while not stop.is_set():
            unit = await feed.next()
            if unit is None:
                break
            # Taken before any await after the feed handed the unit out: waiters queue in plan
            # order, so a person's first chunk (the create) goes before the others.
            target = unit.target
            await locks.acquire(target)
            try:
                await committer.commit(previous, unit.seq)
                previous = await sender(job, client, unit)
            finally:
                locks.release(target)
            if on_result is not None:
                on_result(previous)
        await committer.commit(previous, None)

    try:
        await known.load()
        async with anyio.create_task_group() as outer:
            outer.start_soon(committer.run)
            async with anyio.create_task_group() as workers:
                for _ in range(job.send.concurrency):
                    workers.start_soon(worker)
            committer.close()
    finally:
        store.close()
