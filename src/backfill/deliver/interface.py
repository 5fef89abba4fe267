"""What the send loop asks of a way of writing to a store (a *delivery*), and nothing more.

The loop (``deliver.loop``) owns concurrency, the checkpoint, claims, locks and progress; a
delivery owns how a batch of units becomes requests and how the answers become one ``Result``
per unit. Like an httpx transport, it never learns who called it, and the loop never learns
which store it writes to: PATCH, bulk and import into Memory are three modules in ``targets/``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from backfill.checkpoint import Result, RunDB, Unit

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """How many units one request may carry: ``units`` at most, and bodies summing to at most
    ``body_bytes`` (a single unit above that still goes, alone); and how many batches may be in
    flight at once, at most (``in_flight``, below ``send.concurrency`` where a batch is large)."""

    units: int = 1
    body_bytes: int = 1 << 62
    in_flight: int | None = None
    # One batch in flight per target (the loop's Locks). A delivery whose units can never share
    # a target (one unit a person, no redirects to follow) turns it off and saves the work.
    per_target: bool = True


@dataclass(frozen=True)
class Batch:
    """Units claimed together. ``id`` is kept by the checkpoint with each unit until the batch
    finishes, so a run resumed after a crash hands the same units to the delivery under the
    same ``id`` (an import it started can be found again by it)."""

    id: int
    units: Sequence[Unit]


class Checkpoint(Protocol):
    """The run file, from async code: ``call`` runs one ``RunDB`` method off the event loop."""

    db: RunDB

    async def call(self, fn: Callable[..., T], *args: Any) -> T: ...


class Locks:
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

    def take_free(self, keys: list[str]) -> bool:
        """Take every key at once if none is held (True); else take none (False)."""
        waiting = self._waiting
        if any(key in waiting for key in keys):
            return False
        for key in keys:
            waiting[key] = deque()
        return True

    def release(self, key: str) -> None:
        queue = self._waiting[key]
        if queue:
            queue.popleft().set()  # the key passes to the first waiter, still held
        else:
            del self._waiting[key]


@dataclass
class Run:
    """What a delivery may share with the loop for one delivery session."""

    checkpoint: Checkpoint | None  # None: units stand alone (narrow unit tests)
    locks: Locks


class Delivery(Protocol):
    """One way of writing to a store."""

    limits: Limits

    async def start(self) -> None:
        """Load what earlier sessions of this run learned (before the first ``send``)."""
        ...

    async def send(self, batch: Batch) -> list[Result]:
        """Send the batch; one final ``Result`` per unit, in any order. Retries of transient
        failures happen inside; the loop records what comes back."""
        ...

    def summary(self) -> dict[str, Any]:
        """What the run's summary.json should say about this way of writing (``delivery``)."""
        ...
