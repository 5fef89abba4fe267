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

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from backfill.checkpoint import DONE, FAILED, Result, RunDB, Unit
from backfill.client import MemoryClient, Reply
from backfill.config import Job

UPDATED = "updated"
CREATED = "created"
PROFILE_NOT_FOUND = "profile_not_found"
FAILED_OUTCOME = "failed"
PROFILE_ID = re.compile(r"^mem_profile_[0-7][0-9a-z]{25}$")
PAGE = 1_000

T = TypeVar("T")


class _DB:
    """The run file from async code: one thread at a time (a connection is not thread-safe),
    off the event loop, and never cancelled half-way through a commit."""

    def __init__(self, db: RunDB) -> None:
        self.db = db
        self._one = anyio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(fn, *args, limiter=self._one)
        return result


class _GroupCommit:
    """Workers hand in (previous result, next claim) and wait until the batch holding them is
    durable; one transaction serves every worker that arrived meanwhile."""

    def __init__(self, db: _DB) -> None:
        self._db = db
        self._results: list[Result] = []
        self._claims: list[int] = []
        self._waiters: list[anyio.Event] = []
        self._wake = anyio.Event()
        self._closed = False

    async def commit(self, result: Result | None, claim: int | None) -> None:
        if result is None and claim is None:
            return
        if result is not None:
            self._results.append(result)
        if claim is not None:
            self._claims.append(claim)
        done = anyio.Event()
        self._waiters.append(done)
        self._wake.set()
        await done.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            results, self._results = self._results, []
            claims, self._claims = self._claims, []
            waiters, self._waiters = self._waiters, []
            if waiters:
                await self._db.call(self._db.db.record, results, claims)
                for waiter in waiters:
                    waiter.set()
            elif self._closed:
                return


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
    body = json.loads(unit.body)
    if unit.action == "create":
        reply = await client.request("POST", f"/v1/Stores/{quote(store, safe='')}/Profiles",
                                     json=body)  # fmt: skip
        created = reply.body.get("id") if isinstance(reply.body, dict) else None
        return _result(unit, reply, CREATED, created, reply.attempts)
    assert unit.profile_id is not None
    reply = await client.request("PATCH", profile_path(store, unit.profile_id), json=body)
    if reply.status != 308:
        return _result(unit, reply, UPDATED, None, reply.attempts)
    canonical = reply.headers.get("canonical-profile-id", "")
    if not PROFILE_ID.match(canonical):
        message = "308 without a usable Canonical-Profile-Id header"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message, reply.attempts, None)
    again = await client.request("PATCH", profile_path(store, canonical), json=body)
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
    buffer = max(2 * job.send.concurrency, 64)
    feed_in, feed_out = anyio.create_memory_object_stream[Unit](buffer)

    async def feed(stream: ObjectSendStream[Unit]) -> None:
        async with stream:
            after = 0
            while not stop.is_set():
                page = await store.call(db.pending, after, PAGE)
                if not page:
                    return
                for unit in page:
                    if stop.is_set():
                        return
                    try:
                        await stream.send(unit)
                    except anyio.BrokenResourceError:  # every worker has stopped (drain)
                        return
                after = page[-1].seq

    async def worker(stream: ObjectReceiveStream[Unit]) -> None:
        previous: Result | None = None
        async with stream:
            while not stop.is_set():
                try:
                    unit = await stream.receive()
                except anyio.EndOfStream:
                    break
                await committer.commit(previous, unit.seq)
                previous = await send(job, client, unit)
                if on_result is not None:
                    on_result(previous)
        await committer.commit(previous, None)

    async with anyio.create_task_group() as outer:
        outer.start_soon(committer.run)
        async with anyio.create_task_group() as workers:
            workers.start_soon(feed, feed_in)
            for _ in range(job.send.concurrency):
                workers.start_soon(worker, feed_out.clone())
            feed_out.close()
        committer.close()
