"""Sending a batch the server refuses whole because of some of its items: halve it until what it
refuses is alone, so one bad item fails alone and every other lands. Bulk into Memory and
identify batches into Segment both need it (each module says which answers refuse a batch)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from backfill.checkpoint import DONE, FAILED, Result, Unit
from backfill.transport.client import Reply

SPLIT_ON: Final = frozenset({400, 413})  # answers that refuse a batch as a whole
FAILED_OUTCOME: Final = "failed"


class Bisector:
    """``send(units)``: ``post`` them as one request; on a refusal of the whole (``SPLIT_ON``),
    each half on its own, down to single units, which fail with ``refused`` and the server's
    message. ``fits(units)`` False halves a batch before any request (a body over a limit).
    ``splits`` counts the refused batches that were split."""

    def __init__(
        self,
        post: Callable[[Sequence[Unit]], Awaitable[Reply]],
        outcome: str,
        refused: str,
        request: str,
        fits: Callable[[Sequence[Unit]], bool] = lambda units: True,
    ) -> None:
        self.post = post
        self.outcome = outcome
        self.refused = refused  # "the store refused this profile"
        self.request = request  # "the bulk request"
        self.fits = fits
        self.splits = 0

    async def send(self, units: Sequence[Unit], tries: int = 0) -> list[Result]:
        if len(units) > 1 and not self.fits(units):
            return await self._halves(units, tries)
        reply = await self.post(units)
        tries += reply.attempts
        if reply.ok:
            return [Result(u.seq, DONE, self.outcome, reply.status, None, None, tries, None)
                    for u in units]  # fmt: skip
        if reply.status in SPLIT_ON and len(units) > 1:
            self.splits += 1
            return await self._halves(units, tries)
        return [self._failed(u, reply, tries) for u in units]

    async def _halves(self, units: Sequence[Unit], tries: int) -> list[Result]:
        half = len(units) // 2
        return [*await self.send(units[:half], tries), *await self.send(units[half:], tries)]

    def _failed(self, unit: Unit, reply: Reply, tries: int) -> Result:
        message = reply.message
        if reply.status in SPLIT_ON:
            message = f"{self.refused}: {message}"
        elif reply.status is not None:
            message = f"{self.request} failed (HTTP {reply.status}): {message}"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, reply.status, reply.code, message, tries,
                      None)  # fmt: skip
