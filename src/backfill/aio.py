"""Running the async stages from synchronous library code."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from backfill.errors import reported

T = TypeVar("T")


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """anyio.run on uvloop (where it exists), with a task group's failure turned back into the
    error that caused it. uvloop: an unthrottled run is CPU-bound on the event loop, and on
    uvloop delivery costs about a tenth less CPU a unit (BENCHMARKS.md, "Delivery")."""
    try:
        return anyio.run(fn, backend_options={"use_uvloop": sys.platform != "win32"})
    except BaseExceptionGroup as group:  # one task failing fails its whole group
        error = reported(group)
        if error is group:
            raise
        raise error from None
