"""Server-side limiter shapes, on time passed in rather than read from a clock.

Nobody publishes how Twilio's limiter is shaped (issue 13), so the emulator offers several, and
the same objects serve a fake-clock simulation in tests: every method takes ``now`` (seconds on
any monotonic scale) and nothing here sleeps or reads a clock. Times that go backwards are
treated as the latest time seen.

Shapes (``rate`` R per second, ``weight`` w = what one request counts: 1, or the events a batch
carries), each with the most it admits, which the property tests hold it to:

- ``TokenBucket(R, B)``: B tokens saved at most, refilled at R. Any span of d seconds:
  at most ``B + R*d``.
- ``Gcra(R, B)``: the generic cell rate algorithm, emission interval T = 1/R, tolerance
  tau = (B - 1) * T. The same bound, and the same decisions as the token bucket: it keeps one
  timestamp (the theoretical arrival time) instead of a token count.
- ``FixedWindow(R, W)``: at most L = R*W per window; windows are aligned on multiples of W
  from the limiter's start. Any span of d seconds: at most ``L * (floor(d / W) + 2)`` - up to
  2L across one boundary, the known flaw of "N per period" limiters (mjpieters/aiolimiter#298).
- ``SlidingWindow(R, W)``: a sliding log - the admitted (time, weight) pairs of the last W
  seconds - so at most L in ANY span of W seconds, exactly. A two-window weighted count is what
  large gateways use to save memory, but it assumes the last window's requests were spread
  evenly and lets up to ~2L through a true window when they were not; an emulator holds at most
  L entries per account, so it can afford the exact shape, and a test can state its bound.
- ``Concurrency(N)``: at most N requests in flight; ``release(now)`` when one ends. A refusal
  has no ``retry_after``: the limiter cannot know when a request will end.

``scale(factor, now)`` changes the limit from ``now`` on (another client on the account takes a
share): the rate of the rate shapes (the window's limit for fixed and sliding), N for
concurrency; a bucket's depth B stays. ``Scheduled`` applies a list of such changes at set times.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, get_args

from backfill.transport.throttle import default_burst

# Float slack, in weight (a millionth of a request): a request retried exactly ``retry_after``
# later must be admitted, although (1 - tokens) / rate * rate can land a hair under 1.0 - more so
# on a monotonic clock whose seconds count in the hundred thousands.
EPS = 1e-6

Shape = Literal["token", "gcra", "fixed", "sliding", "concurrency"]
SHAPES: tuple[Shape, ...] = get_args(Shape)
RetryAfterStyle = Literal["whole", "fraction", "none"]
RETRY_AFTER_STYLES: tuple[RetryAfterStyle, ...] = get_args(RetryAfterStyle)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision; ``retry_after`` is the seconds until the same request would be admitted if
    the limit stayed as it is (None when admitted, or when the limiter cannot know)."""

    admitted: bool
    retry_after: float | None = None


ADMITTED = Verdict(True)


@dataclass(frozen=True, slots=True)
class View:
    """The limiter's own account since its counters started.

    ``offered`` is what the limit allowed: the shape's allowance at the start (its burst, or one
    window's limit) plus the rate integrated over the time elapsed, scaled as the limit was; for
    ``concurrency`` it is slot-seconds (N integrated over time). ``used`` is the admitted weight
    (occupied slot-seconds for concurrency), so ``used / offered`` is the utilisation either way.
    """

    shape: Shape
    seconds: float
    factor: float
    offered: float
    used: float
    refused: float  # refused weight
    admitted: int  # requests
    refused_requests: int
    in_flight: int | None = None
    in_flight_peak: int | None = None


class Limiter(Protocol):
    """What the emulator's gate and a fake-clock simulation ask of any shape."""

    @property
    def shape(self) -> Shape: ...

    def admit(self, now: float, weight: float = 1.0) -> Verdict: ...

    def release(self, now: float) -> None: ...

    def scale(self, factor: float, now: float) -> None: ...

    def reset_counters(self, now: float) -> None: ...

    def view(self, now: float) -> View: ...


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class _Shape:
    """Counters, time keeping and scaling shared by the shapes; each adds its decision."""

    shape: ClassVar[Shape]

    def __init__(self, most: float, *, start: float) -> None:
        self.factor = 1.0
        self._most = most  # the largest weight the shape can ever admit at once
        self._last = start
        self._start = start
        self._offered = self._allowance()
        self._used = 0.0
        self._refused = 0.0
        self._admitted = 0
        self._refused_requests = 0

    # --- what each shape defines

    def _allowance(self) -> float:
        """What the shape lets through at once when idle."""
        raise NotImplementedError

    def _offer_rate(self) -> float:
        """Capacity added per second at the current factor."""
        raise NotImplementedError

    def _elapse(self, before: float, now: float) -> None:
        """Bring the shape's state from ``before`` to ``now``."""

    def _rescale(self, old: float, new: float, now: float) -> None:
        """Keep the shape's state consistent when its factor changes at ``now``."""

    def _decide(self, now: float, weight: float) -> Verdict:
        raise NotImplementedError

    # --- the protocol

    def _tick(self, now: float) -> float:
        if now > self._last:
            self._offered += self._offer_rate() * (now - self._last)
            self._elapse(self._last, now)
            self._last = now
        return self._last

    def admit(self, now: float, weight: float = 1.0) -> Verdict:
        _positive("weight", weight)
        if weight > self._most + EPS:
            raise ValueError(
                f"weight {weight:g} exceeds what the {self.shape} limiter can ever admit at once "
                f"({self._most:g}); it would be refused forever"
            )
        verdict = self._decide(self._tick(now), weight)
        if verdict.admitted:
            self._used += weight
            self._admitted += 1
        else:
            self._refused += weight
            self._refused_requests += 1
        return verdict

    def release(self, now: float) -> None:
        """A request ended; only the concurrency limiter cares."""
        self._tick(now)

    def scale(self, factor: float, now: float) -> None:
        """From ``now`` on the limit is ``factor`` times the configured one (1 restores it)."""
        _positive("factor", factor)
        now = self._tick(now)
        if factor != self.factor:
            self._rescale(self.factor, factor, now)
            self.factor = factor

    def reset_counters(self, now: float) -> None:
        """Start the counters afresh at ``now``; the limiter's state (tokens, log) stays."""
        self._start = self._tick(now)
        self._offered = self._allowance()
        self._used = self._refused = 0.0
        self._admitted = self._refused_requests = 0

    def view(self, now: float) -> View:
        now = self._tick(now)
        return View(
            shape=self.shape,
            seconds=now - self._start,
            factor=self.factor,
            offered=self._offered,
            used=self._used,
            refused=self._refused,
            admitted=self._admitted,
            refused_requests=self._refused_requests,
        )


class TokenBucket(_Shape):
    """``burst`` tokens at most, refilled at ``rate`` a second; a request takes its weight."""

    shape: ClassVar[Shape] = "token"

    def __init__(self, rate: float, burst: float, *, start: float = 0.0) -> None:
        self.rate = _positive("rate", rate)
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.burst = float(burst)
        self.tokens = self.burst
        super().__init__(self.burst, start=start)

    def _allowance(self) -> float:
        return self.burst

    def _offer_rate(self) -> float:
        return self.rate * self.factor

    def _elapse(self, before: float, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - before) * self.rate * self.factor)

    def _decide(self, now: float, weight: float) -> Verdict:
        if self.tokens + EPS >= weight:
            self.tokens = max(0.0, self.tokens - weight)
            return ADMITTED
        return Verdict(False, (weight - self.tokens) / (self.rate * self.factor))


class Gcra(_Shape):
    """Generic cell rate algorithm (virtual scheduling): T = 1/rate, tau = (burst - 1) * T.

    ``tat`` is the theoretical arrival time: when the limiter would be idle again. A request of
    weight w is admitted when ``tat + w*T - (tau + T) <= now``, i.e. when it would fit a bucket
    of ``burst`` tokens; the refusal's wait is exactly how far ``now`` falls short.
    """

    shape: ClassVar[Shape] = "gcra"

    def __init__(self, rate: float, burst: float, *, start: float = 0.0) -> None:
        self.rate = _positive("rate", rate)
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.burst = float(burst)
        self.tat = start
        super().__init__(self.burst, start=start)

    @property
    def interval(self) -> float:
        """The emission interval T at the current factor."""
        return 1.0 / (self.rate * self.factor)

    def _allowance(self) -> float:
        return self.burst

    def _offer_rate(self) -> float:
        return self.rate * self.factor

    def _rescale(self, old: float, new: float, now: float) -> None:
        # The backlog (tat - now) is "tokens owed" times T; keep the tokens, change T.
        if self.tat > now:
            self.tat = now + (self.tat - now) * old / new

    def _decide(self, now: float, weight: float) -> Verdict:
        t = self.interval
        new_tat = max(self.tat, now) + weight * t
        allowed_at = new_tat - self.burst * t  # tau + T = burst * T
        if allowed_at <= now + EPS * t:
            self.tat = new_tat
            return ADMITTED
        return Verdict(False, allowed_at - now)


class FixedWindow(_Shape):
    """At most ``rate * window_s`` weight per window, as a counter keyed by the window number.

    Windows are aligned on multiples of ``window_s`` from ``start`` rather than from the time
    scale's zero: a monotonic clock's zero means nothing, and a run (or a test) then meets the
    same boundaries whenever it starts.
    """

    shape: ClassVar[Shape] = "fixed"

    def __init__(self, rate: float, window_s: float, *, start: float = 0.0) -> None:
        self.rate = _positive("rate", rate)
        self.window_s = _positive("window_s", window_s)
        if rate * window_s < 1 - EPS:
            raise ValueError(f"rate * window_s must be at least 1, got {rate * window_s:g}")
        self.origin = start
        self.window = 0
        self.count = 0.0
        super().__init__(rate * window_s, start=start)

    @property
    def limit(self) -> float:
        """The current window's limit at the current factor."""
        return self.rate * self.window_s * self.factor

    def _allowance(self) -> float:
        return self.rate * self.window_s * self.factor

    def _offer_rate(self) -> float:
        return self.rate * self.factor

    def _elapse(self, before: float, now: float) -> None:
        window = math.floor((now - self.origin) / self.window_s + EPS)
        if window != self.window:
            self.window, self.count = window, 0.0

    def _decide(self, now: float, weight: float) -> Verdict:
        if self.count + weight <= self.limit + EPS:
            self.count += weight
            return ADMITTED
        return Verdict(False, max(0.0, self.origin + (self.window + 1) * self.window_s - now))


class SlidingWindow(_Shape):
    """At most ``rate * window_s`` weight in any ``window_s`` seconds: a sliding log."""

    shape: ClassVar[Shape] = "sliding"

    def __init__(self, rate: float, window_s: float, *, start: float = 0.0) -> None:
        self.rate = _positive("rate", rate)
        self.window_s = _positive("window_s", window_s)
        if rate * window_s < 1 - EPS:
            raise ValueError(f"rate * window_s must be at least 1, got {rate * window_s:g}")
        self.log: deque[tuple[float, float]] = deque()  # (admitted at, weight), oldest first
        self.total = 0.0
        super().__init__(rate * window_s, start=start)

    @property
    def limit(self) -> float:
        return self.rate * self.window_s * self.factor

    def _allowance(self) -> float:
        return self.limit

    def _offer_rate(self) -> float:
        return self.rate * self.factor

    def _elapse(self, before: float, now: float) -> None:
        # An entry admitted at t counts until t + W: the window is (now - W, now].
        while self.log and self.log[0][0] + self.window_s <= now + EPS:
            self.total -= self.log.popleft()[1]
        if not self.log:
            self.total = 0.0  # no drift from float subtraction

    def _decide(self, now: float, weight: float) -> Verdict:
        excess = self.total + weight - self.limit
        if excess <= EPS:
            self.log.append((now, weight))
            self.total += weight
            return ADMITTED
        freed = 0.0
        for at, w in self.log:  # the wait is until enough of the oldest entries leave
            freed += w
            if freed + EPS >= excess:
                return Verdict(False, at + self.window_s - now)
        # Not even an empty window holds it (the limit is scaled below the weight).
        return Verdict(False, self.window_s)


class Concurrency(_Shape):
    """At most ``limit`` requests in flight at once, whatever their weight."""

    shape: ClassVar[Shape] = "concurrency"

    def __init__(self, limit: int, *, start: float = 0.0) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number of at least 1, got {limit!r}")
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._busy = 0.0  # occupied slot-seconds
        super().__init__(math.inf, start=start)

    def _allowance(self) -> float:
        return 0.0

    def _offer_rate(self) -> float:
        return self.limit * self.factor

    def _elapse(self, before: float, now: float) -> None:
        self._busy += self.in_flight * (now - before)

    def _decide(self, now: float, weight: float) -> Verdict:
        if self.in_flight + 1 <= self.limit * self.factor + EPS:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return ADMITTED
        return Verdict(False, None)

    def release(self, now: float) -> None:
        self._tick(now)
        if self.in_flight == 0:
            raise RuntimeError("release() without a request in flight")
        self.in_flight -= 1

    def reset_counters(self, now: float) -> None:
        super().reset_counters(now)
        self._busy = 0.0
        self.peak = self.in_flight  # requests still in flight keep their slots

    def view(self, now: float) -> View:
        base = super().view(now)
        return View(
            shape=base.shape,
            seconds=base.seconds,
            factor=base.factor,
            offered=base.offered,
            used=self._busy,
            refused=base.refused,
            admitted=base.admitted,
            refused_requests=base.refused_requests,
            in_flight=self.in_flight,
            in_flight_peak=self.peak,
        )


Step = tuple[float, float]  # (seconds after the schedule's start, factor of the configured limit)


def check_schedule(steps: Sequence[Step]) -> tuple[Step, ...]:
    """Steps in strictly increasing time from 0 on, each factor positive; else ValueError."""
    previous = -math.inf
    for at, factor in steps:
        if not (math.isfinite(at) and at >= 0):
            raise ValueError(f"a schedule time must be 0 or more seconds, got {at!r}")
        if at <= previous:
            raise ValueError(f"schedule times must increase, got {at:g} after {previous:g}")
        _positive("a schedule factor", factor)
        previous = at
    return tuple((float(at), float(factor)) for at, factor in steps)


class Scheduled:
    """A limiter whose limit changes at set times: another client on the account takes a share
    of the budget for a while, e.g. ``[(20, 0.5), (40, 1)]``. Steps are applied at their exact
    time before any later call, so the counters integrate the limit piecewise."""

    def __init__(self, inner: Limiter, steps: Sequence[Step], *, start: float = 0.0) -> None:
        self.inner = inner
        self.steps = check_schedule(steps)
        self._pending: deque[Step] = deque()
        self._origin = start
        self.restart(start)

    @property
    def shape(self) -> Shape:
        return self.inner.shape

    def restart(self, now: float) -> None:
        """Run the schedule again from ``now``, at the configured limit until its first step."""
        self._origin = now
        self._pending = deque(self.steps)
        self.inner.scale(1.0, now)

    def _apply(self, now: float) -> None:
        while self._pending and self._origin + self._pending[0][0] <= now:
            at, factor = self._pending.popleft()
            self.inner.scale(factor, self._origin + at)

    def admit(self, now: float, weight: float = 1.0) -> Verdict:
        self._apply(now)
        return self.inner.admit(now, weight)

    def release(self, now: float) -> None:
        self._apply(now)
        self.inner.release(now)

    def scale(self, factor: float, now: float) -> None:
        self._apply(now)
        self.inner.scale(factor, now)

    def reset_counters(self, now: float) -> None:
        self._apply(now)
        self.inner.reset_counters(now)

    def view(self, now: float) -> View:
        self._apply(now)
        return self.inner.view(now)


def make_limiter(
    shape: Shape,
    *,
    rate: float | None = None,
    burst: float | None = None,
    window_s: float | None = None,
    max_in_flight: int | None = None,
    start: float = 0.0,
) -> Limiter:
    """One shape from the emulator's switches (defaults: burst a tenth of a second's worth,
    at least 1; a window of one second), so a simulation builds what the emulator serves."""
    if shape == "concurrency":
        if max_in_flight is None:
            raise ValueError("the concurrency limiter needs max_in_flight")
        return Concurrency(max_in_flight, start=start)
    if rate is None:
        raise ValueError(f"the {shape} limiter needs a rate")
    if shape == "token":
        return TokenBucket(rate, burst if burst is not None else default_burst(rate), start=start)
    if shape == "gcra":
        return Gcra(rate, burst if burst is not None else default_burst(rate), start=start)
    if shape == "fixed":
        return FixedWindow(rate, window_s if window_s is not None else 1.0, start=start)
    if shape == "sliding":
        return SlidingWindow(rate, window_s if window_s is not None else 1.0, start=start)
    raise ValueError(f"unknown limiter shape {shape!r}; expected one of {', '.join(SHAPES)}")


def render_retry_after(seconds: float | None, style: RetryAfterStyle) -> str | None:
    """The ``Retry-After`` header value, or None for no header.

    ``whole``: rounded up to whole seconds, at least 1, as Twilio sends it. ``fraction``: rounded
    up to milliseconds (never early), at least 0.001. ``none``: no header.
    """
    if seconds is None or style == "none":
        return None
    if style == "whole":
        return str(max(1, math.ceil(seconds - EPS)))
    return f"{max(1, math.ceil(seconds * 1000 - EPS)) / 1000:.3f}"
