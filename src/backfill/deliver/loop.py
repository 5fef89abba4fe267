"""The send loop: ``send.concurrency`` workers over one delivery, outcomes checkpointed.

``deliver(job, db, delivery, ...)`` is the stage's one entry, the same for every target. Each
worker takes a batch of pending units (as many as the delivery's ``Limits`` allow: one for
PATCH, up to 1,000 profiles for bulk), claims it, sends it through the delivery, and claims its
next batch in the same group commit that records the results, so the checkpoint always knows
which units may be in flight. A claimed batch keeps its ID in the checkpoint until it finishes:
after a crash its units come back together, under that ID, so a delivery that keeps state per
batch (an import) finds it again and nothing is sent twice that need not be.

One batch is in flight per target (``Locks``, taken in sorted order, before the claim), so a
person's chunks never race each other, and a PATCH delivery's merge redirect can take the
canonical profile's lock too.

Stopping (``stop`` set, e.g. by Ctrl-C) drains: no new batch is claimed, in-flight ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from backfill.checkpoint import Result, RunDB, Unit
from backfill.config import Job
from backfill.deliver.interface import Batch, Delivery, Limits, Locks, Run

PAGE = 1_000

T = TypeVar("T")


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not future.done():  # its waiter may be gone (the loop shutting down)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class AsyncDB:
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
    """Workers hand in (previous results, next claims) and wait until the batch holding them is
    durable; one transaction, and one event, serve every worker that arrived meanwhile."""

    def __init__(self, db: AsyncDB) -> None:
        self._db = db
        self._results: list[Result] = []
        self._claims: list[tuple[int, list[int]]] = []  # (batch, seqs)
        self._durable = anyio.Event()  # set once the batch now gathering is committed
        self._wake = anyio.Event()
        self._closed = False

    async def commit(self, results: list[Result], claim: Batch | None) -> None:
        if not results and claim is None:
            return
        self._results.extend(results)
        if claim is not None:
            self._claims.append((claim.id, [unit.seq for unit in claim.units]))
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
    """The pending units in plan order, read a page at a time, handed out as batches."""

    def __init__(self, db: AsyncDB, limits: Limits) -> None:
        self._db = db
        self._limits = limits
        self._units: list[Unit] = []
        self._at = 0  # the next unit of ``_units`` to hand out
        self._after = 0
        self._exhausted = False
        self._reading = anyio.Lock(fast_acquire=True)
        self._last_batch = 0

    async def start(self) -> None:
        self._last_batch = await self._db.call(self._db.db.last_batch)

    async def _fill(self) -> None:
        page = await self._db.call(self._db.db.pending, self._after, PAGE)
        self._units = self._units[self._at :] + page  # what was left, then the new page
        self._at = 0
        self._exhausted = not page
        if page:
            self._after = page[-1].seq

    def _left(self) -> int:
        return len(self._units) - self._at

    async def next(self) -> Batch | None:
        """The next batch: the units an interrupted session claimed together, as they were;
        otherwise as many fresh units as the limits allow. Taken whole under one lock, so
        concurrent workers never interleave one batch."""
        async with self._reading:
            if not self._left() and not self._exhausted:
                await self._fill()
            if not self._left():
                return None
            first = self._units[self._at]
            if first.batch is not None:  # claimed before a crash: the same units again
                units = [first]
                self._at += 1
                while True:
                    if not self._left() and not self._exhausted:
                        await self._fill()
                    if not self._left() or self._units[self._at].batch != first.batch:
                        break
                    units.append(self._units[self._at])
                    self._at += 1
                return Batch(first.batch, units)
            units = []
            size = 0
            limits = self._limits
            while len(units) < limits.units:
                if not self._left() and not self._exhausted:
                    await self._fill()
                if not self._left():
                    break
                # Take what fits from the page in one slice: units of a batch claimed before a
                # crash, and the byte budget, end it early.
                page, at = self._units, self._at
                end = min(len(page), at + limits.units - len(units))
                taken = at
                while taken < end:
                    unit = page[taken]
                    length = len(unit.body)
                    if unit.batch is not None or (
                        (units or taken > at) and (size + length > limits.body_bytes)
                    ):
                        break
                    size += length
                    taken += 1
                units.extend(page[at:taken])
                self._at = taken
                if taken < end or taken == at:
                    break
            self._last_batch += 1
            return Batch(self._last_batch, units)


async def _acquire_all(locks: Locks, keys: list[str]) -> None:
    if locks.take_free(keys):  # nobody holds any of them: no await, no events
        return
    taken: list[str] = []
    try:
        for key in keys:
            await locks.acquire(key)
            taken.append(key)
    except BaseException:
        for key in taken:
            locks.release(key)
        raise


async def deliver(
    job: Job,
    db: RunDB,
    delivery: Callable[[Run], Delivery],
    *,
    stop: anyio.Event,
    on_result: Callable[[Result], None] | None = None,
) -> dict[str, Any]:
    """Send every pending unit through ``delivery`` (made for this session's ``Run``); return
    when all are finished, or drained after ``stop``, with the delivery's ``summary()``."""
    store = AsyncDB(db)
    committer = _GroupCommit(store)
    locks = Locks()
    target = delivery(Run(store, locks))
    feed = _Feed(store, target.limits)
    per_target = target.limits.per_target

    async def worker() -> None:
        previous: list[Result] = []
        while not stop.is_set():
            batch = await feed.next()
            if batch is None:
                break
            # Taken before any await after the feed handed the batch out: waiters queue in plan
            # order, so a person's first chunk (the create) goes before the others. Sorted, so
            # two batches never wait on each other.
            keys = sorted({unit.target for unit in batch.units}) if per_target else []
            await _acquire_all(locks, keys)
            try:
                await committer.commit(previous, batch)
                previous = []  # recorded: not held while the next batch is sent
                previous = await target.send(batch)
            finally:
                for key in keys:
                    locks.release(key)
            if on_result is not None:
                for result in previous:
                    on_result(result)
        await committer.commit(previous, None)

    try:
        await feed.start()
        await target.start()
        async with anyio.create_task_group() as outer:
            outer.start_soon(committer.run)
            async with anyio.create_task_group() as workers:
                cap = target.limits.in_flight
                for _ in range(min(job.send.concurrency, cap or job.send.concurrency)):
                    workers.start_soon(worker)
            committer.close()
    finally:
        store.close()
    return target.summary()
