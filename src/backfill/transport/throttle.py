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

import email.utils
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple, Protocol

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
    takes its weight in tokens: 1 for a request, or what the server counts in it (events).
    ``hold(until)`` pauses the whole bucket, e.g. while the server refuses everything.
    """

    def __init__(self, rate: float, burst: int, clock: Clock | None = None) -> None:
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"burst must be a whole number of at least 1, got {burst!r}")
        self._rate = _check_rate(rate)
        self._burst = float(burst)
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
    def burst(self) -> float:
        return self._burst

    @burst.setter
    def burst(self, value: float) -> None:
        """A depth of 1 or more; fractional depths (a slack of part of a token) are allowed."""
        if isinstance(value, bool) or not (isinstance(value, int | float) and value >= 1):
            raise ConfigError(f"burst must be at least 1, got {value!r}")
        self._refill(self._clock.now())
        self._burst = float(value)
        self._tokens = min(self._tokens, self._burst)
        if self._wake is not None:  # the head waiter may have slept for a heavier need
            self._wake.cancel()

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

    async def acquire(self, weight: float = 1.0) -> None:
        """Take ``weight`` tokens, waiting behind earlier callers as needed.

        A request heavier than the burst goes when the bucket is full and leaves it in debt, which
        later requests wait out: the rate holds over time whatever the weights.
        """
        async with self._lock:
            if self._drop_burst:
                self._drop_burst = False
                self._refill(self._clock.now())
                self._tokens = min(self._tokens, 1.0)
            while True:
                now = self._clock.now()
                self._refill(now)
                # Read each time: the burst may shrink while we wait (pacing after a 429), and
                # a heavy request that needed the old one would never find it again.
                need = min(weight, self._burst)
                if now < self._held_until:
                    wait = self._held_until - now
                elif self._tokens >= need - _SLACK:
                    self._tokens -= weight
                    return
                else:
                    wait = (need - self._tokens) / self._rate
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


class Window:
    """At most ``limit`` requests in flight, waiters served first come, first served.

    The limit moves between 1 and ``ceiling`` (the pool's size) while requests wait: lowering it
    stops new sends until enough answers came back, raising it lets waiters go at once. Why not
    a semaphore: a concurrency limit on the server is found by moving this one (``AdaptiveRate``).
    """

    def __init__(self, ceiling: int) -> None:
        if isinstance(ceiling, bool) or not isinstance(ceiling, int) or ceiling < 1:
            raise ConfigError(f"concurrency must be a whole number of at least 1, got {ceiling!r}")
        self._ceiling = ceiling
        self._limit = ceiling
        self._in_flight = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = max(1, min(self._ceiling, int(value)))
        self._wake()

    @property
    def in_flight(self) -> int:
        """Requests holding a place now."""
        return self._in_flight

    async def acquire(self) -> bool:
        """Take a place, waiting behind earlier callers; free places cost no event-loop trip.

        True when the window was full: this request waited, or took the last place."""
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return self._in_flight >= self._limit
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed a place as it was cancelled: pass it on
                self.release()
            else:
                self._waiters.remove(event)
            raise
        return True

    def release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            self._in_flight += 1  # handed over: the waiter owns it when it wakes
            self._waiters.popleft().set()


class Sent(NamedTuple):
    """What the client knew when it sent a request, reported with its answer."""

    at: float  # monotonic send time
    in_flight: int  # requests on the wire at the send, this one included
    full: bool  # the window was full: the send waited for (or took) its last place
    weight: float = 1.0


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: whole (as Twilio sends them) or fractional, or an
    HTTP date; None when missing or unreadable (negative, not a number, no date)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
        return max(0.0, seconds)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


# AdaptiveRate's tuning. Each value was chosen with, and is checked by, the simulation of every
# server limiter shape (tests/throttle_sim.py, tests/test_throttle_shapes.py, BENCHMARKS.md).
_DIP = 0.9  # every event drops the rate at least to this share of its rate, for _RECOVER s
_MAX_CUT = 0.05  # one event never cuts below this share of the rate it happened at
_HORIZON = 10.0  # seconds of accepted answers the capacity estimate looks back over
_MAX_SAMPLES = 20_000  # ... and at most this many of them
_RECOVER = 1.0  # seconds to climb (concave) from the dip to the target
_PLATEAU = 2.0  # seconds held at the target before probing above it; doubles per failed probe
_PLATEAU_MAX = 3.0
_MOVED = 1.1  # a probe whose event lifts the target more than this found room: plateau reset
_PLATEAU_SHORT = 0.5  # the plateau after an estimate drawn from too short a stretch to trust
_CONFIDENT = 0.5  # an estimate drawn from this many seconds of answers or more is trusted
_PROBE = 1.5  # seconds a probe takes to climb _PROBE_GAIN above the target (cubic: slow start)
_PROBE_FAST = 0.75  # ... after an estimate that is not trusted
_PROBE_GAIN = 0.02
_IDLE = 1.0  # growth time advances at most this much between two accepted answers
_SILENCE = 0.05  # a pause in the answers longer than this (and than _SILENT answers' worth)
_SILENT = 10  # means they stopped (a stall, not a capacity): evidence starts after it
_SPARE_AFTER = 10.0  # an unexplained event this long after the last keeps the target
_LATE = 0.005  # once paced, a send this late (a timer's lateness) is made up by the next ...
_SLACK_MOST = 0.5  # ... within half a token at most
_BUDGET = 0.01  # 429s above this share of the answers on the plateau lower the target
_AGAIN = 0.03  # two failed probes this close in rate: the limit is there
_STEP = 1e-3  # smaller relative changes are not passed on to the bucket
_HOLD_FIRST = 0.05  # the first whole-run hold; grows while the server keeps refusing ...
_HOLD_GROWTH = 1.5  # ... by this factor: the spell is overshot by less than half
_HOLD_MAX = 2.0  # the longest whole-run hold without a Retry-After to go by
_RTT_SPAN = 1.0  # seconds of accepted answers the in-flight estimate (Little's law) uses
_WINDOW_STEP = 1.0  # seconds of growth time per place the window grows by, once probing
_BY_LOAD = 0.5  # seconds of answers that tell a concurrency limit from a rate limit ...
_BY_LOAD_LEAST = 32  # ... and at least this many of them
_REFUSED_SHARE = 0.25  # this share of fresh answers refused (>= 2): the reaction fell short


def _check_share(name: str, value: float, *, low: float, high: float) -> float:
    if not (math.isfinite(value) and low <= value < high):
        raise ConfigError(f"{name} must be at least {low} and below {high}, got {value}")
    return float(value)


class AdaptiveRate:
    """Steers the bucket's rate and the window of requests in flight from the server's answers.

    Why: the Memory API publishes no limit, nor its shape (token bucket, windows, requests in
    flight), so a run's configured ``rate`` and ``concurrency`` are guesses. The client reports
    every HTTP answer with what it knew at the send (``Sent``): ``on_throttled`` for a 429,
    ``on_accepted`` for any other status. The rate stays in ``[floor, ceiling]`` (the ceiling
    being the configured rate) and the window in ``[1, concurrency]``; both start at the top:
    the guess is honoured until the server objects.

    **Events.** A 429 answers a request sent at some time. If it was sent before the controller
    last reacted, it is old news (the reaction already covers it). The first fresh 429 begins a
    congestion event, acted on once; fresh 429s within ``window`` seconds of it that are mixed
    with accepted answers are the noise of a limit held closely (jitter), not new events: cutting
    on every 429 (the AWS SDK's adaptive mode) reached ~41 % of the capacity
    (aws/aws-sdk-java-v2#7197).

    **Which limit.** A refusal points at the number in flight (Twilio's 20429 also means too many
    concurrent requests) when, over the last answers, those sent with as many on the wire or more
    were mostly refused and those sent with fewer were not: a rate limit refuses whatever the
    number. The window then drops below the number refused and to what the accepted answers
    carried (Little's law: accepted per second times their round trip), by one at least and by
    half at most. A refusal while the window probes a place above a clean plateau is the
    probe's: back to the plateau's size. Otherwise the rate moves. The first event is always the
    rate's: as a run opens, the number in flight grows while a rate limit's allowance runs out,
    and the two look alike.

    **Holding the whole run.** A 429's ``Retry-After`` is honoured by the request that got it
    (``RetryPolicy``). The whole run is held only on evidence that the server refuses everything:
    a fresh 429 after the reaction, with nothing accepted since (a fixed window spent, a
    blocked account). The hold starts at ``_HOLD_FIRST`` and doubles while the refusals go on,
    up to the Retry-After when it is whole seconds (Twilio's rounding: "1" may mean 10 ms) or
    exactly the Retry-After when it is fractional (a measurement). A single 429 among accepted
    answers stalls nothing: with the old rule (every 429 held every worker for its whole-second
    Retry-After), a burst-1 limiter set at the run's own rate cost over half the throughput.

    **The rate, per event at rate ``r``:**

    1. Estimate the capacity from the answers accepted before it, assuming the server is a
       token bucket whose burst is about ``server_burst`` seconds of its rate. In any window of
       T seconds it accepted at most ``burst + R*T``, so ``R >= n / (server_burst + T)`` for the
       n (weighted) answers accepted in the last T seconds. The estimate is the largest such value
       over windows that start no earlier than the previous event, ``_HORIZON`` seconds back, or
       a silence in the answers (a stall). Answers still arriving for requests sent before the
       reaction refine it.
    2. If the estimate explains the 429 (it is below ``r``), target ``(1 - margin) * estimate``:
       the rate drops there, or to ``_DIP * r`` if that is lower, and climbs back to the target
       in ``_RECOVER`` seconds. If it does not, the rate dips to ``_DIP * r`` (``beta * r``
       without answers) and climbs back to the old target, or to just under ``r`` if that was
       above it; such a 429 within ``_SPARE_AFTER`` seconds of the last lowers the target by the
       margin. One event never cuts below ``_MAX_CUT * r``.
    3. Hold the target ``_PLATEAU`` seconds, then probe above it, slowly at first (cubic in
       time: ``_PROBE_GAIN`` in ``_PROBE`` seconds, +80 % in 3.4 times that), up to the ceiling.
       A failed probe doubles the plateau, up to ``_PLATEAU_MAX``: short enough that a limit
       restored after a cut is found again within ten seconds, long enough that events stay
       rare once the limit is held (each costs a 429 or two, no pause). An estimate from less than
       ``_CONFIDENT`` seconds of answers (a run that opened far above the capacity) rests on the
       burst assumption: it is held only ``_PLATEAU_SHORT`` and probed twice as fast.
    4. Corrections the estimate cannot make: two failed probes at about the same rate put the
       target just under it (a window limiter has no burst, so the burst allowance reads it a
       few per cent low); more than ``_BUDGET`` of the answers refused while holding the target
       puts the next target 4 % under the old one (arrivals jittered against a strict limiter:
       the rate the server measures is not the one sent); after a spell of refusing everything,
       what was let through before it, over the time until the first acceptance after it, is
       the rate (a fixed window's allowance, which the burst allowance reads several times too
       high).

    **The window** after a window event stays at its new size for the plateau, then grows by one
    place per ``_WINDOW_STEP`` seconds while it is full (a window nobody fills is not probed).

    Growth is clocked by success: the growth time advances by the time between accepted answers,
    at most ``_IDLE`` at a time, so an idle or failing spell raises nothing.

    The bucket's first grant finds no saved burst (``TokenBucket.drop_burst``): a burst at
    the start spends the server's burst too, and leaves it no slack for jitter at an equal rate.
    After the first rate event its depth is 1: a server that refused tolerates no bursts.

    With ``steer=False`` (``send.adaptive = false``) the rate and the window stay as configured;
    only the whole-run holds apply.

    Not thread-safe; call it from the event loop that uses the bucket.
    """

    def __init__(
        self,
        bucket: TokenBucket,
        *,
        ceiling: float,
        window: Window | None = None,
        clock: Clock | None = None,
        floor: float = 0.1,
        beta: float = 0.7,
        margin: float = 0.02,
        event_window: float = 1.0,
        server_burst: float = 0.1,
        steer: bool = True,
    ) -> None:
        self._ceiling = _check_rate(ceiling)
        self._floor = min(_check_rate(floor), self._ceiling)
        self._beta = _check_share("beta", beta, low=0.05, high=1.0)
        self._margin = _check_share("margin", margin, low=0.0, high=0.5)
        self._window_s = _check_share("event_window", event_window, low=0.0, high=math.inf)
        self._burst_time = _check_rate(server_burst)
        self._bucket = bucket
        self._window = window
        self._steer = steer
        # The time line of bucket.held_until, unless the caller knows better.
        self._clock: Clock = clock if clock is not None else bucket.clock
        # Accepted answers: (time, weight, round trip).
        self._answers: deque[tuple[float, float, float]] = deque(maxlen=_MAX_SAMPLES)
        # Every answer of the last _BY_LOAD seconds: (time, in flight at its send, refused).
        self._by_load: deque[tuple[float, int, bool]] = deque(maxlen=_MAX_SAMPLES)
        self._fresh = [0, 0]  # answers to requests sent since the last reaction: [ok, refused]
        self._event_at = -math.inf  # when the current rate event began
        self._last_event = -math.inf  # when the last event (rate or window) began
        self._reacted = -math.inf  # when the controller last acted (event or hold)
        self._stretch = -math.inf  # where the evidence for the next estimate starts
        self._event_rate = self._ceiling  # the rate it began at
        self._prior_rate = 0.0  # the rate the rate event before it began at
        self._probed = False  # the current rate event came while probing above the target
        self._since = [0, 0]  # answers on the plateau since the last rate event: [ok, refused]
        self._over_budget = False  # more than _BUDGET of those were refused
        self._at_target = False  # the rate holds at the target (its plateau): answers count
        self._paced = False  # a rate event happened: the bucket paces evenly (_apply)
        self._base = self._target = self._ceiling
        self._plateau = _PLATEAU
        self._hold_for = _PLATEAU
        self._probe = _PROBE
        self._confident = True
        self._grown = 0.0  # growth time since the event
        self._seen = -math.inf  # when growth time last advanced
        self._cuts = 0
        self._window_cuts = 0
        self._holds = 0
        self._held = 0.0  # seconds the whole run was held, in all
        self._hold = _HOLD_FIRST
        self._hold_spent = False  # the last hold was as long as the server asked
        # (start, end, weight) of the answers accepted before the current spell of holds
        self._spell: tuple[float, float, float] | None = None
        self._throttled = 0
        self._estimate: float | None = None
        self._explained = True  # whether the last event's answers explained it
        self._spare = True  # whether an unexplained event may keep the target
        self._previous = self._ceiling  # the target before the current event
        self._refining = False  # old answers still refine the current rate event
        # The window's own schedule: its size after the last window event, and growth since.
        self._w_target = window.ceiling if window is not None else 0
        self._w_grown = 0.0
        self._w_plateau = _PLATEAU
        self._w_probing = False
        self._w_event_at = -math.inf
        self._w_seen = -math.inf
        bucket.rate = min(bucket.rate, self._ceiling)
        bucket.drop_burst()

    @property
    def bucket(self) -> TokenBucket:
        """The bucket whose rate this steers."""
        return self._bucket

    @property
    def window(self) -> Window | None:
        """The window of requests in flight this steers, if any."""
        return self._window

    @property
    def rate(self) -> float:
        """The bucket's current rate, in weight a second."""
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
        """Congestion events acted on, rate and window alike (one per burst of 429s)."""
        return self._cuts

    @property
    def window_cuts(self) -> int:
        """Of the ``cuts``, those that moved the window rather than the rate."""
        return self._window_cuts

    @property
    def holds(self) -> int:
        """Whole-run holds: fresh 429s with nothing accepted since the last reaction."""
        return self._holds

    @property
    def held(self) -> float:
        """Seconds the whole run was held, in all (what the holds cost, at most)."""
        return self._held

    @property
    def throttled(self) -> int:
        """429s reported, including those folded into an event already acted on."""
        return self._throttled

    @property
    def estimate(self) -> float | None:
        """The capacity estimated at the last rate event; None before any, or without answers."""
        return self._estimate

    def on_throttled(self, sent: Sent, retry_after: float | None = None) -> None:
        """A 429 arrived for a request sent as ``sent`` says, with its Retry-After in seconds."""
        now = self._clock.now()
        self._throttled += 1
        if self._at_target:
            self._since[1] += 1
        self._note(now, sent, refused=True)
        if sent.at < self._reacted:
            return  # old news: sent before the last reaction, which covers it
        ok, refused = self._fresh
        self._fresh[1] = refused = refused + 1
        window = self._window
        concurrent = False
        if window is not None and self._w_probing and window.limit > self._w_target:
            concurrent = True  # refused once the window's probe added a place
        elif window is not None and self._steer and sent.in_flight > 1 and self._cuts:
            # Not at the first event: as a run opens, the number in flight grows while a rate
            # limit's allowance runs out, and the two look alike. None (nothing sent with fewer
            # in flight answered yet: quick refusals, slow answers) points at a window too.
            concurrent = self._concurrent(sent) is not False
        if ok == 0 and self._last_event > -math.inf and not concurrent:
            # Refused since, none accepted: hold everyone. After a hold as long as the server
            # asked, the rate is what it refuses, not a spent window: cut it too.
            spent = self._hold_spent
            self._hold_all(now, retry_after)
            if spent and self._steer:
                self._last_event = now
                self._rate_event(now)
            return
        short = refused >= 2 and refused > _REFUSED_SHARE * (ok + refused)
        if now < self._last_event + self._window_s and not short:
            return  # noise around a limit held closely: the event was acted on
        self._last_event = self._reacted = now
        self._fresh = [0, 0]
        self._hold = _HOLD_FIRST
        self._hold_spent = False
        if not self._steer:
            return  # send.adaptive = false: the rate and window stay as configured
        if concurrent and window is not None:
            self._window_event(now, window, sent)
        else:
            self._rate_event(now)

    def _note(self, now: float, sent: Sent, *, refused: bool) -> None:
        by_load = self._by_load
        by_load.append((now, sent.in_flight, refused))
        while len(by_load) > _BY_LOAD_LEAST and by_load[0][0] < now - _BY_LOAD:
            by_load.popleft()

    def _concurrent(self, sent: Sent) -> bool | None:
        """Whether a refusal points at the number in flight rather than the rate: of the
        answers of the last ``_BY_LOAD`` seconds, those sent with as many in flight or more were
        mostly refused and those sent with fewer were not (a rate limit refuses whatever the
        number in flight). None when nothing was sent with fewer: too early to tell."""
        low = [0, 0]
        high = [0, 0]
        for _, in_flight, refused in self._by_load:
            counts = high if in_flight >= sent.in_flight else low
            counts[refused] += 1
        if low[0] + low[1] == 0:
            return None
        if low[0] < 4:
            return False  # too few to tell: the rate, which any limit answers to
        share_low = low[1] / (low[0] + low[1])
        share_high = high[1] / (high[0] + high[1])
        return share_high >= 0.5 and share_low <= 0.1

    def on_accepted(self, sent: Sent) -> None:
        """An HTTP answer other than 429 arrived (an error status too: the server let it in)."""
        now = self._clock.now()
        answers = self._answers
        answers.append((now, sent.weight, now - sent.at))
        while answers[0][0] < now - _HORIZON:
            answers.popleft()
        self._note(now, sent, refused=False)
        if self._at_target:
            self._since[0] += 1
        if sent.at >= self._reacted:
            self._fresh[0] += 1
            if self._spell is not None:
                self._after_spell(now)
        elif self._refining:  # sent before the reaction: more evidence about the event
            self._decide()
            return
        held = self._bucket.held_until
        if now < held:
            return  # no growth while held
        if self._event_at > -math.inf:  # after a rate event: the rate's schedule
            self._grown += min(now - max(self._seen, self._event_at, held), _IDLE)
            self._seen = now
            self._apply(self._schedule(self._grown))
        window = self._window
        if window is not None and sent.full and self._w_event_at > -math.inf:
            self._w_grown += min(now - max(self._w_seen, self._w_event_at, held), _IDLE)
            self._w_seen = now
            self._grow_window(window)

    # --- rate ------------------------------------------------------------------------------

    def _rate_event(self, now: float) -> None:
        probed = self._grown > _RECOVER + self._hold_for  # the rate was above the target
        self._probed = probed
        probing = self._confident and probed
        previous = self._previous = self._target
        # An unexplained event may leave the target be; one soon after another lowers it.
        self._spare = probing or self._explained or now - self._event_at >= _SPARE_AFTER
        # Evidence starts at the previous event; a hold since shows as a silence in the
        # answers, where _measure stops too.
        self._stretch = self._event_at
        self._event_at = now
        self._prior_rate = self._event_rate if self._cuts else 0.0
        accepted, refused = self._since
        self._over_budget = refused > _BUDGET * (accepted + refused)
        self._since = [0, 0]
        self._event_rate = self._bucket.rate
        self._cuts += 1
        self._grown = 0.0
        self._at_target = False
        self._paced = True  # the server objected: pace evenly from now on (_apply)
        self._seen = -math.inf
        self._refining = True
        self._decide()
        if self._target > _MOVED * previous:  # the capacity grew: probe as often as at first
            self._plateau = _PLATEAU
        elif probed:  # a failed probe: the capacity has not grown, probe less often
            self._plateau = min(_PLATEAU_MAX, 2.0 * self._plateau)
        self._phases()

    def _decide(self) -> None:
        """Set the target, the dip and the plateau for the current event, and apply the dip."""
        estimate, span = self._measure()
        rate = self._event_rate
        explained = False
        if estimate is not None and estimate < rate:
            explained = True
            # Two events at about the same rate: the limit is there, whatever the estimate
            # (a window limiter has no burst, and the estimate's burst allowance reads low).
            again = self._probed and abs(rate - self._prior_rate) <= _AGAIN * rate
            target = (1.0 - self._margin) * (max(estimate, rate) if again else estimate)
            base = min(target, _DIP * rate)
        else:  # the answers do not explain the 429: a multiplicative cut, deep without answers
            base = (self._beta if estimate is None else _DIP) * rate
            if rate > self._previous:  # above the old plateau: r was accepted, keep under it
                target = (1.0 - self._margin) * rate
            elif self._spare:  # at or under it: noise (a stall), keep it
                target = self._previous
            else:  # again: lower it a little
                target = (1.0 - self._margin) * self._previous
        if self._over_budget:  # 429s kept coming at the old target (jitter): below it, whatever
            target = min(target, (1.0 - 2.0 * self._margin) * self._previous)
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

        Windows end at the event, or at the last answer still arriving from before it. They
        reach back no further than the previous event, ``_HORIZON`` seconds, or a silence in
        the answers: before those the server's bucket may have refilled, or its capacity may
        have been another.
        """
        answers = self._answers
        end = max(self._event_at, answers[-1][0]) if answers else self._event_at
        start = max(self._stretch, end - _HORIZON)
        best, span, n, seen = 0.0, 0.0, 0.0, False
        for at, weight in self._unbroken(end, start, self._event_rate):
            n += weight
            seen = True
            elapsed = max(0.0, end - at)
            value = n / (self._burst_time + elapsed)
            if value > best:
                best, span = value, elapsed
        if not seen:
            return None, 0.0
        return best, span

    def _unbroken(self, end: float, start: float, rate: float) -> Iterator[tuple[float, float]]:
        """Accepted answers (time, weight), newest first, back from ``end`` to ``start`` or to
        a silence: a gap longer than ``_SILENCE`` and than ``_SILENT`` answers' worth at
        ``rate`` means they stopped (a stall, a hold), and what came before is another story."""
        silence = max(_SILENCE, _SILENT / rate)
        later = end
        for at, weight, _ in reversed(self._answers):
            if at < start or later - at > silence:
                return
            later = at
            yield at, weight

    def _schedule(self, t: float) -> float:
        """The rate ``t`` seconds of growth after the event."""
        self._at_target = _RECOVER <= t < _RECOVER + self._hold_for
        if t < _RECOVER:
            rate = self._target - (self._target - self._base) * (1.0 - t / _RECOVER) ** 3
        elif self._at_target:
            self._refining = False
            rate = self._target
        else:
            self._refining = False
            x = (t - _RECOVER - self._hold_for) / self._probe
            rate = self._target * (1.0 + _PROBE_GAIN * x**3)
        return min(self._ceiling, max(self._floor, rate))

    def _apply(self, rate: float) -> None:
        bucket = self._bucket
        current = bucket.rate
        if rate != current and (
            abs(rate - current) >= _STEP * current or rate in (self._target, self._ceiling)
        ):
            bucket.rate = current = rate
        if self._paced:
            # Even pacing, with a few ms of slack: a timer that fires late on a shared machine
            # is made up at the next send instead of lost (a depth of exactly 1 lost ~10 % of
            # 100/s over HTTP), and never more than that goes early (half a token at 100/s,
            # 5 % of one at 10/s: a burst-1 limiter at 10/s refused pairs sent 50 ms apart).
            depth = 1.0 + min(_SLACK_MOST, current * _LATE)
            if depth != bucket.burst:
                bucket.burst = depth

    # --- window ----------------------------------------------------------------------------

    def _window_event(self, now: float, window: Window, sent: Sent) -> None:
        """Below the number in flight that was refused, and what the accepted answers carried
        (Little's law), and at least one place less."""
        self._cuts += 1
        self._window_cuts += 1
        if self._w_probing and window.limit > self._w_target:
            # A failed probe: back to the size whose plateau drew no 429, probe less often.
            size = self._w_target
            self._w_plateau = min(_PLATEAU_MAX, 2.0 * self._w_plateau)
        else:
            carried = self._carried(now)
            size = min(window.limit, sent.in_flight) - 1
            if carried is not None:
                size = min(size, math.floor(carried))
            # At most halved by one event: early in a run the number in flight grows as a rate
            # limit's allowance runs out, and a rate limit can pass for a concurrency limit.
            size = max(size, window.limit // 2)
        self._w_probing = False
        self._w_target = max(1, size)
        self._w_grown = 0.0
        self._w_event_at = now
        self._w_seen = -math.inf
        window.limit = self._w_target

    def _carried(self, now: float) -> float | None:
        """Requests in flight the accepted answers of the last ``_RTT_SPAN`` s carried."""
        count, total, first = 0, 0.0, now
        for at, _, rtt in reversed(self._answers):
            if at < now - _RTT_SPAN:
                break
            count += 1
            total += rtt
            first = at
        if count < 2 or now <= first:
            return None
        return count / (now - first) * (total / count)

    def _grow_window(self, window: Window) -> None:
        if window.limit >= window.ceiling:
            return
        past = self._w_grown - self._w_plateau
        if past < _WINDOW_STEP:
            return
        self._w_probing = True
        self._w_grown = self._w_plateau  # one place a step
        window.limit = window.limit + 1

    # --- holds -----------------------------------------------------------------------------

    def _hold_all(self, now: float, retry_after: float | None) -> None:
        """The server refused a request sent after the last reaction, and accepted none: pause
        every worker, as briefly as the evidence allows (see the class docstring)."""
        if retry_after is not None and retry_after != math.floor(retry_after):
            pause = retry_after  # fractional: the server measured it
            self._hold_spent = True
        else:
            most = _HOLD_MAX if retry_after is None else retry_after
            pause = min(self._hold, most)
            self._hold_spent = pause >= most
            self._hold = min(_HOLD_GROWTH * self._hold, most)
        if self._spell is None and self._event_at > -math.inf:
            self._spell = self._allowance()
        self._holds += 1
        self._reacted = now
        self._fresh = [0, 0]
        if pause > 0:
            # Only what extends the hold in force counts: holds overlap when answers to requests
            # sent before one arrive during it.
            self._held += max(0.0, now + pause - max(now, self._bucket.held_until))
            self._bucket.hold(now + pause)

    def _allowance(self) -> tuple[float, float, float]:
        """When the last unbroken run of accepted answers began and ended, and their weight:
        what the server let through before it began refusing everything."""
        answers = self._answers
        if not answers:
            return self._event_at, self._event_at, 0.0
        end = start = answers[-1][0]
        n = 0.0
        for at, weight in self._unbroken(end, -math.inf, self._bucket.rate):
            start = at
            n += weight
        return start, end, n

    def _after_spell(self, now: float) -> None:
        """The first answer accepted after a spell of refusing everything: the allowance before
        the spell, over the time from its start until now, is the server's rate (a fixed
        window's limit per window). The burst allowance in ``_measure`` reads that allowance as
        a rate several times too high."""
        spell, self._spell = self._spell, None
        if spell is None or not self._steer:
            return
        start, end, n = spell
        if now <= start or n <= 0 or end - start > now - end:
            return  # not an allowance spent in a burst, then a longer wait: a rate, not a window
        # The holds overshot the spell's end by less than _HOLD_GROWTH - 1 of it: the rate is
        # at most that much above n over the time since the allowance began.
        rate = _HOLD_GROWTH * n / (now - start)
        target = (1.0 - self._margin) * rate
        if target < self._target:
            self._estimate = rate
            self._target = max(self._floor, target)
            self._base = min(self._base, self._target)
            self._apply(min(self._bucket.rate, self._target))
