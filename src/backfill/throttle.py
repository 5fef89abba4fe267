"""Time and rate: the one clock the library sleeps through, and the account's token bucket.

``SystemClock`` is the only place in backfill that sleeps; everything else takes a ``Clock`` so
tests can swap in a virtual one. ``TokenBucket`` is a real token bucket (not "N per period",
which lets about 2N through in the first period: mjpieters/aiolimiter#298): at most
``burst + rate * T`` tokens in any window of length T.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio

from backfill.errors import ConfigError

# Float slack when a sleeper wakes exactly at its token's due time: (1 - tokens) / rate * rate
# can land a hair under 1.0, and a virtual clock may not advance by a sub-ulp sleep.
_SLACK = 1e-9


class Clock(Protocol):
    """Monotonic time and a way to wait for it."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cancellable)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


def default_burst(rate: float) -> int:
    """A tenth of a second's worth of tokens, at least 1 (rclone's --tpslimit bursts 1)."""
    return max(1, int(rate / 10))


def _check_rate(rate: float) -> float:
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"rate must be a positive number of requests a second, got {rate}")
    return float(rate)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; waiters served first come, first served.

    One bucket is shared by every worker of an account, and every HTTP attempt (retries included)
    takes one token. ``hold(until)`` pauses the whole bucket, e.g. for a 429's Retry-After.
    """

    def __init__(self, rate: float, burst: int, clock: Clock | None = None) -> None:
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"burst must be a whole number of at least 1, got {burst!r}")
        self._rate = _check_rate(rate)
        self._burst = burst
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._tokens = float(burst)
        self._updated = self._clock.now()
        self._held_until = -math.inf
        # anyio's Lock queues waiters FIFO and drops cancelled ones, which gives both fairness
        # and cancellation safety: only the head of the queue ever sleeps for a token.
        self._lock = anyio.Lock()
        self._wake: anyio.CancelScope | None = None

    @property
    def clock(self) -> Clock:
        """The clock this bucket reads; ``hold`` deadlines are on its time line."""
        return self._clock

    @property
    def burst(self) -> int:
        return self._burst

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = _check_rate(value)
        self._refill(self._clock.now())  # tokens earned so far were earned at the old rate
        self._rate = value
        if self._wake is not None:  # the head waiter slept for the old rate; let it recompute
            self._wake.cancel()

    @property
    def held_until(self) -> float:
        """Monotonic time before which no token is granted (``-inf`` when never held)."""
        return self._held_until

    def hold(self, until: float) -> None:
        """Grant no token before monotonic time ``until``; a shorter hold never shortens one.

        At ``until`` the bucket holds at most one token: nothing is saved during the pause, so
        the waiters are released at ``rate``, not as a burst. The server's bucket has only
        refilled to its own burst, and a burst from ours could meet another 429 (and another
        whole-second pause) at once.
        """
        now = self._clock.now()
        if until <= max(self._held_until, now):
            return
        self._refill(now)
        self._tokens = min(self._tokens, 1.0)
        self._updated = until  # nothing is earned while held
        self._held_until = until

    async def acquire(self) -> None:
        """Take one token, waiting behind earlier callers as needed."""
        async with self._lock:
            while True:
                now = self._clock.now()
                self._refill(now)
                if now < self._held_until:
                    wait = self._held_until - now
                elif self._tokens >= 1.0 - _SLACK:
                    self._tokens -= 1.0
                    return
                else:
                    wait = (1.0 - self._tokens) / self._rate
                with anyio.CancelScope() as scope:
                    self._wake = scope
                    try:
                        await self._clock.sleep(wait)
                    finally:
                        self._wake = None

    def _refill(self, now: float) -> None:
        if now > self._updated:
            earned = (now - self._updated) * self._rate
            self._tokens = min(float(self._burst), self._tokens + earned)
            self._updated = now
