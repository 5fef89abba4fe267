"""``connection.kind = "segment"``: identify events through the Tracking API's ``/v1/batch``,
into a Unify space (Twilio Unified Profiles).

A unit is one identify event as the plan wrote it (``plan.units``: userId, the traits, the email
trait, the other identifiers in ``context.externalIds``, ``timestamp`` from ``order_by``). Here
each event gets:

- a **deterministic ``messageId``**, a UUIDv5 of the space, the job, the unit's key and its
  body. Segment drops a ``messageId`` it saw in the last day (its dedupe is global, hence the
  space and job in it), so a batch re-sent after a lost answer, or by a run resumed after a
  crash, is not applied twice; a changed value makes another body, hence another ID.
- an **``anonymousId``** when the person has neither a user_id nor an anonymous_id: the
  Tracking API discards an identify without one of them (``no_user_anon_id``). It is a UUIDv5
  of the space and the person's key (``email a@x.io``), the same on every run, so a person
  gains one such identifier, not one a run.

Batches hold at most ``MAX_EVENTS`` events (fewer: half the bucket's burst, so a batch never
waits seconds for its tokens, nor needs a server bucket exactly full) and ``BATCH_BYTES`` of
JSON (the official client's aim, under the documented 500 KB). Each request weighs its events
in the throttle: Segment counts events, not requests. An event over ``EVENT_BYTES`` is never
sent (Segment refuses the whole batch holding it): it is reported with its rows. A 400 refuses
the whole batch: it is bisected until the events Segment refuses are alone, each reported,
while every other lands.

A 200 proves only that the batch was received: Segment processes events asynchronously and
discards some without saying (segment-api.md, 1). The outcome is ``upserted``; ``run`` reads
people back through the Profile API afterwards (``[send] verify``) to prove the landing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, Final

from backfill.checkpoint import FAILED, Result, Unit
from backfill.config import Job
from backfill.deliver.interface import Batch, Limits, Run
from backfill.plan.resolve import NEW
from backfill.plan.units import job_chunks
from backfill.targets.bisect import FAILED_OUTCOME, Bisector
from backfill.transport.client import MemoryClient, Reply

UPSERTED: Final = "upserted"
MAX_EVENTS: Final = 2_500  # events one batch may hold; Segment drops the ones beyond, with a 200
EVENT_BYTES: Final = 32 * 1024  # one event's JSON, at most: 400 for the whole batch above it
BATCH_BYTES: Final = 475_000  # the official client's aim, under the documented 500 KB a request
BATCH_PATH: Final = "/v1/batch"
ADDED_BYTES: Final = 104  # '"messageId":"<uuid>",' and '"anonymousId":"<uuid>",', and a comma
# UUIDv5 namespaces: fixed forever, or a re-run would not be deduplicated against the last one.
MESSAGE_NS: Final = uuid.UUID("6f1c8a52-3d0e-5b7a-9c41-0b2f5e7d9a10")
ANONYMOUS_NS: Final = uuid.UUID("0d6b3e8f-51a2-5c94-8e07-4a9f2c1b6d33")


def message_id(space_id: str, job_name: str, unit: Unit) -> str:
    return str(uuid.uuid5(MESSAGE_NS, f"{space_id}\n{job_name}\n{unit.key}\n{unit.body}"))


def anonymous_id(space_id: str, target: str) -> str:
    """The same for a plan's ``new:email a@x.io`` as for reconcile's ``email:a@x.io``."""
    person = target.removeprefix(NEW).replace(" ", ":", 1) if target.startswith(NEW) else target
    return str(uuid.uuid5(ANONYMOUS_NS, f"{space_id}\n{person}"))


def event(space_id: str, job_name: str, unit: Unit) -> bytes:
    """The unit's body with its ``messageId`` (and ``anonymousId`` where needed) spliced in;
    the plan's body is a JSON object whose fields before ``"traits"`` are the ids."""
    body = unit.body
    head = body[: body.find('"traits":')]
    extra = f'"messageId":"{message_id(space_id, job_name, unit)}",'
    if '"userId":' not in head and '"anonymousId":' not in head:
        extra += f'"anonymousId":"{anonymous_id(space_id, unit.target)}",'
    return ("{" + extra + body[1:]).encode()


def event_size(encoded: bytes) -> int:
    """An event's size as Segment's 32 KB is counted: the official client measures
    ``len(json.dumps(message))``, Python's defaults (``\\uXXXX`` escapes, a space after ``,`` and
    ``:``), which can be several times our compact UTF-8. That is at most 4 times it, so only
    larger events are measured exactly."""
    if len(encoded) * 4 <= EVENT_BYTES:
        return len(encoded)
    return len(json.dumps(json.loads(encoded)))


def batch_body(events: Sequence[bytes]) -> bytes:
    """``{"batch": [...]}``: the write key goes in the Authorization header, and no ``sentAt``:
    a backfill's events carry their own timestamps, which a stale ``sentAt`` would shift."""
    return b'{"batch":[' + b",".join(events) + b"]}"


EMPTY_BATCH: Final = batch_body([])  # the envelope's bytes


class SegmentIdentify:
    """The Segment delivery (see the module docstring)."""

    def __init__(self, job: Job, client: MemoryClient, run: Run) -> None:
        # A person's chunks (over 298 traits) are separate events: keep one batch in flight a
        # person so their order holds.
        one_chunk = len(job_chunks(job)) == 1
        burst = client.bucket.burst if client.bucket is not None else 2 * MAX_EVENTS
        # Half the bucket's burst: a server bucket as deep as ours (rate/10, the common
        # default) then keeps room for a batch that comes a little early, where a batch of
        # the whole depth needs it exactly full (BENCHMARKS.md, "Delivery: Segment target").
        events = max(1, min(MAX_EVENTS, int(burst) // 2))
        # The plan's bodies, less what each event gains here (messageId, anonymousId), so a
        # full batch is within BATCH_BYTES without a split.
        self.limits = Limits(events, BATCH_BYTES - events * ADDED_BYTES, per_target=not one_chunk)
        self.client = client
        self.space = job.connection.space_id
        self.name = job.name
        self.batches = 0  # batches sent in this session
        self.events = 0  # events in the batches sent (each counted once)
        self._encoded: dict[int, bytes] = {}  # the events of the batches in flight, by unit
        self.bisector = Bisector(self._post, UPSERTED, "Segment refused this event",
                                 "the batch request", fits=self._fits)  # fmt: skip

    async def start(self) -> None:
        pass

    async def send(self, batch: Batch) -> list[Result]:
        self.batches += 1
        results: list[Result] = []
        units: list[Unit] = []
        for unit in batch.units:
            encoded = event(self.space, self.name, unit)
            size = event_size(encoded)
            if size > EVENT_BYTES:
                results.append(_oversize(unit, size))
                continue
            units.append(unit)
            self._encoded[unit.seq] = encoded
        self.events += len(units)
        try:
            if units:
                results += await self.bisector.send(units)
        finally:
            for unit in units:
                self._encoded.pop(unit.seq, None)
        return results

    def summary(self) -> dict[str, Any]:
        return {
            "mode": "identify",
            "batches": self.batches,
            "events": self.events,
            "split_requests": self.bisector.splits,
        }

    def _body(self, units: Sequence[Unit]) -> bytes:
        return batch_body([self._encoded[u.seq] for u in units])

    def _fits(self, units: Sequence[Unit]) -> bool:
        """Whether the batch is within BATCH_BYTES once the messageIds are in: ``batch_body``'s
        length, counted rather than built (the post builds it once)."""
        events = sum(len(self._encoded[u.seq]) for u in units) + len(units) - 1
        return len(EMPTY_BATCH) + events <= BATCH_BYTES

    async def _post(self, units: Sequence[Unit]) -> Reply:
        return await self.client.request("POST", BATCH_PATH, content=self._body(units),
                                         weight=len(units))  # fmt: skip


def _oversize(unit: Unit, size: int) -> Result:
    message = (f"the identify event is {size:,} bytes; Segment refuses events over "
               f"{EVENT_BYTES:,} (32 KB): shorten or drop traits")  # fmt: skip
    return Result(unit.seq, FAILED, FAILED_OUTCOME, None, None, message, 0, None)
