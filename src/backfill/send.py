"""Delivering the plan: ``send.concurrency`` workers over one client, outcomes checkpointed.

``deliver(job, client, db, ...)`` is the stage's one entry. Each worker claims a unit, sends it,
and claims its next unit in the same group commit that records the result, so the checkpoint
always knows which units may be in flight (see ``checkpoint``). Per response, following the
Studio widget's transitions (profileUpdated, profileNotFound, failed):

- 2xx: ``updated`` (``created`` for a new profile, whose ID is kept);
- 308: the profile was merged; the same PATCH goes once to the ``Canonical-Profile-Id``
  (Twilio's published ``Location`` example is malformed), and the remap is recorded;
- 404: ``profile_not_found``; 400 and anything else final: ``failed`` with the Twilio code and
  message; 429/500/503 and network errors were already retried by the client up to
  ``send.max_attempts``, so what comes back is final too;
- 401/403: ``AuthError`` from the client stops the whole run at once.

Stopping (``stop`` set, e.g. by Ctrl-C) drains: no new unit is claimed, in-flight ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import anyio

from backfill.checkpoint import DONE, FAILED, Result, RunDB, Unit
from backfill.client import MemoryClient, Reply
from backfill.config import Job
from backfill.mapping import PROFILE_ID_PATTERN

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


def profile_path(store_id: str, profile_id: str) -> str:
    return f"/v1/Stores/{quote(store_id, safe='')}/Profiles/{quote(profile_id, safe='')}"


def _result(unit: Unit, reply: Reply, outcome_ok: str, sent_to: str | None, tries: int) -> Result:
    status = reply.status
    if status is not None and 200 <= status < 300:
        return Result(unit.seq, DONE, outcome_ok, status, None, None, tries, sent_to)
    outcome = PROFILE_NOT_FOUND if status == 404 else FAILED_OUTCOME
    return Result(unit.seq, FAILED, outcome, status, reply.code, reply.message, tries, sent_to)


async def send_unit(job: Job, client: MemoryClient, unit: Unit) -> Result:
    """Send one unit and classify the answer (following one merge redirect)."""
    store = job.connection.store_id
    body = unit.body.encode()  # the planned JSON, sent as planned
    if unit.action == "create":
        reply = await client.request("POST", f"/v1/Stores/{quote(store, safe='')}/Profiles",
                                     content=body)  # fmt: skip
        created = reply.body.get("id") if isinstance(reply.body, dict) else None
        return _result(unit, reply, CREATED, created, reply.attempts)
    assert unit.profile_id is not None
    reply = await client.request("PATCH", profile_path(store, unit.profile_id), content=body)
    if reply.status != 308:
        return _result(unit, reply, UPDATED, None, reply.attempts)
    canonical = reply.headers.get("canonical-profile-id", "")
    if not PROFILE_ID.match(canonical):
        message = "308 without a usable Canonical-Profile-Id header"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message, reply.attempts, None)
    again = await client.request("PATCH", profile_path(store, canonical), content=body)
    if again.status == 308:
        message = f"{canonical} (the merge target of {unit.profile_id}) moved again"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message,
                      reply.attempts + again.attempts, canonical)  # fmt: skip
    return _result(unit, again, UPDATED, canonical, reply.attempts + again.attempts)


async def deliver(
    job: Job,
    client: MemoryClient,
    db: RunDB,
    *,
    stop: anyio.Event,
    on_result: Callable[[Result], None] | None = None,
    send: Callable[[Job, MemoryClient, Unit], Awaitable[Result]] = send_unit,
) -> None:
    """Send every pending unit; return when all are finished, or drained after ``stop``."""
    store = _DB(db)
    committer = _GroupCommit(store)
    feed = _Feed(store)

    async def worker() -> None:
        previous: Result | None = None
        while not stop.is_set():
            unit = await feed.next()
            if unit is None:
                break
            await committer.commit(previous, unit.seq)
            previous = await send(job, client, unit)
            if on_result is not None:
                on_result(previous)
        await committer.commit(previous, None)

    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(committer.run)
            async with anyio.create_task_group() as workers:
                for _ in range(job.send.concurrency):
                    workers.start_soon(worker)
            committer.close()
    finally:
        store.close()
