"""Time and rate: the one clock the library sleeps through, the account's token bucket, and the
controller that steers the bucket's rate from the server's 429s.

``SystemClock`` is the only place in backfill that sleeps; everything else takes a ``Clock`` so
tests can swap in a virtual one. ``TokenBucket`` is a real token bucket (not "N per period",
which lets about 2N through in the first period: mjpieters/aiolimiter#298): at most
``burst + rate * T`` tokens in any window of length T. ``AdaptiveRate`` lowers and raises the
bucket's ``rate`` so that a run configured with the wrong rate still settles near what the
server allows.
"""

from __future__ import annotations

import math
import time
from collections import deque
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
        self._drop_burst = False
        # anyio's Lock queues waiters FIFO and drops cancelled ones, which gives both fairness
        # and cancellation safety: only the head of the queue ever sleeps for a token.
        # fast_acquire: taking a free lock costs no trip through the event loop, which at no
        # limit is a trip per request (BENCHMARKS.md, "Delivery").
        self._lock = anyio.Lock(fast_acquire=True)
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

    def drop_burst(self) -> None:
        """Let the next ``acquire`` find at most one token saved: it starts at ``rate``, not with
        a burst (whatever was saved until then, idle time included)."""
        self._drop_burst = True

    async def acquire(self) -> None:
        """Take one token, waiting behind earlier callers as needed."""
        async with self._lock:
            if self._drop_burst:
                self._drop_burst = False
                self._refill(self._clock.now())
                self._tokens = min(self._tokens, 1.0)
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


# AdaptiveRate's tuning. Each value was chosen with, and is checked by, the simulation in
# tests/test_adaptive.py (a server bucket of R/s, burst R/10, Retry-After "1", 16 workers).
_DIP = 0.9  # every event drops the rate at least to this share of its rate, for _RECOVER s
_MAX_CUT = 0.05  # one event never cuts below this share of the rate it happened at
_HORIZON = 10.0  # seconds of accepted answers the capacity estimate looks back over
_MAX_SAMPLES = 20_000  # ... and at most this many of them
_RECOVER = 2.0  # seconds to climb (concave) from the dip to the target
_PLATEAU = 20.0  # seconds held at the target before probing above it; doubles per failed probe
_PLATEAU_MAX = 160.0
_MOVED = 1.1  # a probe whose event lifts the target more than this found room: plateau reset
_PLATEAU_SHORT = 2.0  # the plateau after an estimate drawn from too short a stretch to trust
_CONFIDENT = 0.5  # an estimate drawn from this many seconds of answers or more is trusted
_PROBE = 10.0  # seconds a probe takes to climb _PROBE_GAIN above the target (cubic: slow start)
_PROBE_FAST = 5.0  # ... after an estimate that is not trusted
_PROBE_GAIN = 0.1
_IDLE = 1.0  # growth time advances at most this much between two accepted answers
_SILENCE = 0.05  # a pause in the answers longer than this (and than _SILENT answers' worth)
_SILENT = 10  # means they stopped (a stall, not a capacity): evidence starts after it
_SPARE_AFTER = 10.0  # an unexplained event this long after the last keeps the target
_STEP = 1e-3  # smaller relative changes are not passed on to the bucket


def _check_share(name: str, value: float, *, low: float, high: float) -> float:
    if not (math.isfinite(value) and low <= value < high):
        raise ConfigError(f"{name} must be at least {low} and below {high}, got {value}")
    return float(value)


class AdaptiveRate:
    """Steers ``bucket.rate`` from the server's answers: down on 429, slowly back up on success.

    Why: the Memory API publishes no request rate, so a run's configured ``rate`` is a guess; too
    high and it hammers the server. The client reports every HTTP answer here: ``on_throttled()``
    for a 429, ``on_accepted()`` for any other status. The rate stays in ``[floor, ceiling]``,
    the ceiling being the configured rate, and starts there: the guess is honoured until the
    server objects.

    Pitfalls this answers (field notes on rate control and Retry-After):

    * Cut once per congestion event, not per 429. The 429s that arrive within ``window`` seconds
      of a cut, or while the bucket is paused, answer requests sent before the cut. A simulation
      of cutting on every 429 (the AWS SDK's adaptive mode) reached ~41% of the server's capacity
      (aws/aws-sdk-java-v2#7197).
    * Events are expensive here: the client pauses the whole bucket for the 429's Retry-After
      (whole seconds, at least 1). A plain AIMD sawtooth between 0.7 R and R averages ~85% of the
      capacity R and pays a one-second pause per tooth. So events must be rare once converged:
      the rate goes back to just under the capacity, stays there, and probes above it rarely.

    How, per congestion event at rate ``r``:

    1. Estimate the capacity from the answers accepted before it, assuming the server is a
       token bucket whose burst is about ``server_burst`` seconds of its rate (as ours and the
       emulator's: a tenth of a second). A 429 means its bucket was empty; in any window of T
       seconds it accepted at most ``burst + R*T`` requests, so ``R >= n / (server_burst + T)``
       for the n answers accepted in the last T seconds, with equality from the moment it began
       to run dry. The estimate is the largest such value over windows that start no earlier
       than the bucket's last resume, ``_HORIZON`` seconds back, or a silence in the answers
       (a stall, during which the server's bucket refilled): older answers may reflect a
       capacity since lost. Answers still arriving while the bucket is paused were sent before
       it, and refine the estimate. With few answers it errs low (by up to one answer's worth),
       never high: a second event costs more than a few seconds a little under the capacity.
    2. If the estimate explains the 429 (it is below ``r``), target ``(1 - margin) * estimate``:
       the rate drops there, or to ``_DIP * r`` if that is lower (in case the estimate is high),
       and climbs back to the target in ``_RECOVER`` seconds. If it does not (answers came as
       fast as they were sent: a stall bunched them, or the server's burst is larger than
       assumed), the rate drops to ``_DIP * r`` (to ``beta * r`` when there were no answers at
       all) and climbs back to the target it had, or to just under ``r`` if that was above it
       (CUBIC's plateau below the last congestion point); such a 429 within ``_SPARE_AFTER``
       seconds of the last lowers the target by the margin. One event never cuts below
       ``_MAX_CUT * r``.
    3. Hold the target for ``_PLATEAU`` seconds, then probe above it, slowly at first (cubic in
       time), up to the ceiling. A probe that ends in a 429 doubles the plateau (up to
       ``_PLATEAU_MAX``): the capacity has not grown, so the next probe waits longer; one that
       lifts the target by more than ``_MOVED`` found room and resets it. An estimate from
       less than ``_CONFIDENT`` seconds of answers (typically a run that opened far above the
       capacity) leans on the burst assumption: it is held only ``_PLATEAU_SHORT`` seconds and
       probed twice as fast, in case it was low. That early probe is a probe like any other: if
       it finds no room, the plateau doubles too (each failed probe costs a whole Retry-After
       pause, about 2 % of a 45 s run at 100/s; the early one already confirmed the estimate).

    Growth is clocked by success: the growth time advances by the time between accepted answers,
    at most ``_IDLE`` at a time, so an idle or failing spell does not raise the rate.

    The bucket's first grant also finds no saved burst (``TokenBucket.drop_burst``): a burst at
    the start spends the server's burst too, and leaves it no slack for jitter at an equal rate.

    Not thread-safe; call it from the event loop that uses the bucket.
    """

    def __init__(
        self,
        bucket: TokenBucket,
        *,
        ceiling: float,
        clock: Clock | None = None,
        floor: float = 0.1,
        beta: float = 0.7,
        margin: float = 0.02,
        window: float = 1.0,
        server_burst: float = 0.1,
    ) -> None:
        self._ceiling = _check_rate(ceiling)
        self._floor = min(_check_rate(floor), self._ceiling)
        self._beta = _check_share("beta", beta, low=0.05, high=1.0)
        self._margin = _check_share("margin", margin, low=0.0, high=0.5)
        self._window = _check_share("window", window, low=0.0, high=math.inf)
        self._burst_time = _check_rate(server_burst)
        self._bucket = bucket
        # The time line of bucket.held_until, unless the caller knows better.
        self._clock: Clock = clock if clock is not None else bucket.clock
        self._times: deque[float] = deque(maxlen=_MAX_SAMPLES)  # when answers were accepted
        self._event_at = -math.inf  # when the current congestion event began
        self._stretch = -math.inf  # when the bucket resumed before it: the evidence starts there
        self._event_rate = self._ceiling  # the rate it began at
        self._base = self._target = self._ceiling
        self._plateau = _PLATEAU
        self._hold_for = _PLATEAU
        self._probe = _PROBE
        self._confident = True
        self._grown = 0.0  # growth time since the bucket resumed after the event
        self._seen = -math.inf  # when growth time last advanced
        self._pause_end: float | None = None  # end of the pause the client began for the event
        self._cuts = 0
        self._throttled = 0
        self._estimate: float | None = None
        self._explained = True  # whether the last event's answers explained it
        self._spare = True  # whether an unexplained event may keep the target
        self._previous = self._ceiling  # the target before the current event
        bucket.rate = min(bucket.rate, self._ceiling)
        bucket.drop_burst()

    @property
    def bucket(self) -> TokenBucket:
        """The bucket whose rate this steers."""
        return self._bucket

    @property
    def rate(self) -> float:
        """The bucket's current rate, requests a second."""
        return self._bucket.rate

    @property
    def ceiling(self) -> float:
        return self._ceiling

    @property
    def floor(self) -> float:
        return self._floor

    @property
    def target(self) -> float:
        """Where the rate settles after the last event (the ceiling before any)."""
        return self._target

    @property
    def cuts(self) -> int:
        """Congestion events acted on (one per burst of 429s)."""
        return self._cuts

    @property
    def throttled(self) -> int:
        """429s reported, including those folded into an event already acted on."""
        return self._throttled

    @property
    def estimate(self) -> float | None:
        """The capacity estimated at the last event; None before any, or without answers."""
        return self._estimate

    def on_throttled(self) -> None:
        """A 429 arrived. Call before pausing the bucket for its Retry-After."""
        now = self._clock.now()
        self._throttled += 1
        held = self._bucket.held_until
        if now < self._event_at + self._window or now < held:
            if self._pause_end is None:
                self._pause_end = held
            return  # the same event: an answer to a request sent before the cut
        probed = self._grown > _RECOVER + self._hold_for  # the rate was above the target
        probing = self._confident and probed
        previous = self._previous = self._target
        # An unexplained event may leave the target be; one soon after another lowers it.
        self._spare = probing or self._explained or now - self._event_at >= _SPARE_AFTER
        self._stretch = held
        self._event_at = now
        self._event_rate = self._bucket.rate
        self._cuts += 1
        self._grown = 0.0
        self._seen = -math.inf
        self._pause_end = None
        self._decide()
        if self._target > _MOVED * previous:  # the capacity grew: probe as often as at first
            self._plateau = _PLATEAU
        elif probed:  # a failed probe: the capacity has not grown, probe less often
            self._plateau = min(_PLATEAU_MAX, 2.0 * self._plateau)
        self._phases()

    def on_accepted(self) -> None:
        """An HTTP answer other than 429 arrived (an error status too: the server let it in)."""
        now = self._clock.now()
        times = self._times
        times.append(now)
        while times[0] < now - _HORIZON:
            times.popleft()
        if self._event_at == -math.inf:
            return  # no event yet: the rate stays where it started
        held = self._bucket.held_until
        if self._pause_end is None:
            self._pause_end = held  # the client paused the bucket right after on_throttled
        if now < held:  # no growth while paused
            if now < self._pause_end:  # sent before the event's pause: more evidence about it
                self._decide()
            return
        last = max(self._seen, self._event_at, held)
        self._grown += min(now - last, _IDLE)
        self._seen = now
        self._apply(self._schedule(self._grown))

    def _decide(self) -> None:
        """Set the target, the dip and the plateau for the current event, and apply the dip."""
        estimate, span = self._measure()
        rate = self._event_rate
        explained = False
        if estimate is not None and estimate < rate:
            explained = True
            target = (1.0 - self._margin) * estimate
            base = min(target, _DIP * rate)
        else:  # the answers do not explain the 429: a multiplicative cut, deep without answers
            base = (self._beta if estimate is None else _DIP) * rate
            if rate > self._previous:  # above the old plateau: r was accepted, keep under it
                target = (1.0 - self._margin) * rate
            elif self._spare:  # at or under it: noise (a stall), keep it
                target = self._previous
            else:  # again: lower it a little
                target = (1.0 - self._margin) * self._previous
        low = max(self._floor, _MAX_CUT * rate)
        self._target = min(self._ceiling, max(low, target))
        self._base = min(self._target, max(low, base))
        self._estimate = estimate
        self._explained = explained
        # Only a target drawn from a short span of answers rests on the burst assumption.
        self._confident = not explained or span >= _CONFIDENT
        self._phases()
        self._apply(self._base)

    def _phases(self) -> None:
        self._hold_for = self._plateau if self._confident else _PLATEAU_SHORT
        self._probe = _PROBE if self._confident else _PROBE_FAST

    def _measure(self) -> tuple[float | None, float]:
        """The capacity estimate at the current event, and the span of answers it rests on.

        Windows end at the event, or at the last answer still arriving from before the pause.
        They reach back no further than the end of the previous pause, ``_HORIZON`` seconds, or
        a silence in the answers: before those the server's bucket may have refilled, or its
        capacity may have been another.
        """
        end = max(self._event_at, self._times[-1]) if self._times else self._event_at
        start = max(self._stretch, end - _HORIZON)
        silence = max(_SILENCE, _SILENT / self._event_rate)
        best, span, n = 0.0, 0.0, 0
        later = end
        for at in reversed(self._times):
            if at < start or later - at > silence:
                break
            later = at
            n += 1
            elapsed = max(0.0, end - at)
            value = n / (self._burst_time + elapsed)
            if value > best:
                best, span = value, elapsed
        return (best, span) if n else (None, 0.0)

    def _schedule(self, t: float) -> float:
        """The rate ``t`` seconds of growth after the bucket resumed from the event's pause."""
        if t < _RECOVER:
            rate = self._target - (self._target - self._base) * (1.0 - t / _RECOVER) ** 3
        elif t < _RECOVER + self._hold_for:
            rate = self._target
        else:
            x = (t - _RECOVER - self._hold_for) / self._probe
            rate = self._target * (1.0 + _PROBE_GAIN * x**3)
        return min(self._ceiling, max(self._floor, rate))

    def _apply(self, rate: float) -> None:
        current = self._bucket.rate
        if rate == current:
            return
        if abs(rate - current) >= _STEP * current or rate in (self._target, self._ceiling):
            self._bucket.rate = rate
