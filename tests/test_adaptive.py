"""AdaptiveRate and Window: the controller's rules one at a time on a fake clock, the client's
reports to it, and one run against the real emulator over HTTP.

How the whole client holds every server limiter shape is tests/test_throttle_shapes.py, on the
virtual-time simulation in tests/throttle_sim.py.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator.faults import AccountBucket
from backfill.errors import ConfigError
from backfill.transport.client import Credentials, MemoryClient
from backfill.transport.throttle import AdaptiveRate, Sent, TokenBucket, Window, default_burst

SEED = Path(__file__).parent / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
URL = "https://memory.example.test"
CREDS = Credentials("SK0123456789abcdef0123456789abcdef", "s3cr3t")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Virtual time: ``now`` is set by the test, and ``sleep`` advances it at once."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


def controller(
    rate: float = 100.0, window: int | None = None, **options: Any
) -> tuple[AdaptiveRate, FakeClock]:
    clock = FakeClock()
    bucket = TokenBucket(rate, default_burst(rate), clock=clock)
    steered = Window(window) if window is not None else None
    return AdaptiveRate(bucket, ceiling=rate, window=steered, **options), clock


def accept(
    adaptive: AdaptiveRate, clock: FakeClock, per_second: float, seconds: float, rtt: float = 0.01
) -> None:
    """Evenly spaced accepted answers from now on, for ``seconds``, one in flight each."""
    for _ in range(round(per_second * seconds)):
        clock.t += 1.0 / per_second
        adaptive.on_accepted(Sent(clock.t - rtt, 1, False))


def refuse(
    adaptive: AdaptiveRate,
    clock: FakeClock,
    *,
    sent_ago: float = 0.005,
    in_flight: int = 1,
    full: bool = False,
    retry_after: float | None = 1.0,
) -> None:
    adaptive.on_throttled(Sent(clock.t - sent_ago, in_flight, full), retry_after)


# --- The rate ----------------------------------------------------------------------------


def test_starts_at_the_ceiling_without_the_saved_burst() -> None:
    """The bucket starts at the configured rate, capped by the ceiling, with no saved burst."""
    clock = FakeClock()
    bucket = TokenBucket(500, 50, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=200)
    assert adaptive.rate == 200 and adaptive.target == 200

    async def first_two() -> list[float]:
        times = []
        for _ in range(2):
            await bucket.acquire()
            times.append(clock.now())
        return times

    assert anyio.run(first_two) == [0.0, pytest.approx(1 / 200)]


def test_the_cut_lands_just_under_the_estimated_capacity() -> None:
    """Sent at 100/s and accepted at 50/s for 2 s: the target is just under 50 (the estimate
    allows the server a tenth of a second's burst), and the rate dips to it at once."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 50, 2.0)
    refuse(adaptive, clock)
    assert adaptive.cuts == 1
    estimate = adaptive.estimate
    assert estimate is not None and estimate == pytest.approx(50 * 2.0 / 2.1, rel=0.02)
    assert adaptive.target == pytest.approx(0.98 * estimate, rel=1e-6)
    assert adaptive.rate == pytest.approx(adaptive.target)


def test_a_cut_without_any_answer_is_multiplicative() -> None:
    adaptive, clock = controller(100)
    clock.t = 1.0
    refuse(adaptive, clock)
    assert adaptive.estimate is None and adaptive.rate == pytest.approx(70.0)


def test_old_news_is_not_a_new_event() -> None:
    """429s to requests sent before the controller reacted change nothing, however many."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 50, 2.0)
    refuse(adaptive, clock)
    rate = adaptive.rate
    for _ in range(20):
        clock.t += 0.001
        refuse(adaptive, clock, sent_ago=0.5)
    assert (adaptive.cuts, adaptive.holds, adaptive.rate) == (1, 0, rate)
    assert adaptive.throttled == 21


def test_scattered_429s_near_the_limit_are_one_event() -> None:
    """Fresh 429s among accepted answers within the event window are the jitter of a limit held
    closely: cutting on each (the AWS SDK's adaptive mode) starves the run."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 95, 2.0)
    refuse(adaptive, clock)
    for _ in range(3):
        accept(adaptive, clock, 95, 0.2)
        refuse(adaptive, clock)
    assert adaptive.cuts == 1 and adaptive.holds == 0


def test_a_reaction_that_fell_short_is_followed_by_another() -> None:
    """A quarter or more of the fresh answers refused: the cut was not enough, cut again now."""
    adaptive, clock = controller(1000)
    accept(adaptive, clock, 500, 0.2)
    refuse(adaptive, clock)
    first = adaptive.rate
    accept(adaptive, clock, 200, 0.01)
    for _ in range(3):
        clock.t += 0.002
        refuse(adaptive, clock)
    assert adaptive.cuts == 2 and adaptive.rate < first


def test_recovers_holds_then_probes_up_to_the_ceiling() -> None:
    """After an event: back to the target within a second, held there, then probed above it,
    slowly at first, up to the configured ceiling; growth only on accepted answers."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 50, 2.0)
    refuse(adaptive, clock)
    target = adaptive.target
    assert adaptive.rate == pytest.approx(target)  # the estimate is below 0.9 r: no deeper dip
    clock.t += 5.0  # idle: no growth without answers; an idle spell counts a second at most
    accept(adaptive, clock, 40, 0.4)
    assert adaptive.rate == pytest.approx(target)
    accept(adaptive, clock, 40, 1.5)
    assert adaptive.rate == pytest.approx(target)  # the plateau
    accept(adaptive, clock, 40, 2.0)
    assert target < adaptive.rate < 1.2 * target  # a slow start ...
    accept(adaptive, clock, 40, 10.0)
    assert adaptive.rate == 100.0  # ... that reaches the ceiling and stops there


def test_failed_probes_at_the_same_rate_settle_the_target_there() -> None:
    """A window limiter has no burst, so the estimate (which allows for one) reads a few per
    cent low; two probes failing at the same rate put the target just under that rate."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 100, 2.0)
    refuse(adaptive, clock)
    for _ in range(2):
        accept(adaptive, clock, 95, 20.0)  # recover, plateau, probe back to the ceiling
        assert adaptive.rate == 100.0
        refuse(adaptive, clock)
    assert adaptive.target == pytest.approx(98.0)


def test_429s_on_the_plateau_above_the_budget_lower_the_target() -> None:
    """Refused more than 1 % of the time while holding the target: the estimate is not to be
    trusted there (arrivals jittered against a strict limiter), the target goes 4 % under."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 90, 2.0)
    refuse(adaptive, clock)
    previous = adaptive.target
    accept(adaptive, clock, 90, 1.5)  # recovered, on the plateau: 45 answers there
    refuse(adaptive, clock)  # 1 in 46 refused: over the budget
    assert adaptive.cuts == 2
    assert adaptive.target <= 0.96 * previous + 1e-9


def test_a_429_now_and_then_on_the_plateau_is_within_the_budget() -> None:
    adaptive, clock = controller(100)
    accept(adaptive, clock, 90, 2.0)
    refuse(adaptive, clock)
    previous = adaptive.target
    accept(adaptive, clock, 90, 0.99)  # recovering: these answers do not count
    accept(adaptive, clock, 90, 1.9)  # 171 on the plateau, then one refused: 0.6 %
    refuse(adaptive, clock)
    assert adaptive.target > 0.96 * previous


def test_once_refused_the_run_paces_evenly() -> None:
    """A server that refused tolerates no bursts: the bucket's depth drops to 1 plus 5 ms worth
    of slack (a timer that fired late is made up, not lost), half a token at most."""
    adaptive, clock = controller(500)
    assert adaptive.bucket.burst == 50
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock)
    assert adaptive.rate < 100
    assert adaptive.bucket.burst == pytest.approx(1 + adaptive.rate * 0.005)
    adaptive, clock = controller(500)
    accept(adaptive, clock, 400, 1.0)
    refuse(adaptive, clock)
    assert adaptive.rate > 300 and adaptive.bucket.burst == 1.5


@pytest.mark.anyio
async def test_half_a_token_of_slack_makes_up_a_late_send() -> None:
    """At depth 1.5, a send 4 ms late at 100/s lets the next one go 4 ms early: the pace holds
    on average. At depth 1 the 4 ms are lost."""
    for depth, second in ((1.5, 0.020), (1.0, 0.024)):
        clock = FakeClock()
        bucket = TokenBucket(100, 1, clock=clock)
        bucket.burst = depth
        await bucket.acquire()  # t = 0
        clock.t = 0.014  # the next was due at 0.010; the worker came 4 ms late
        await bucket.acquire()
        await bucket.acquire()
        assert clock.now() == pytest.approx(second), depth


def test_after_a_spell_of_refusals_the_allowance_over_the_wait_is_the_rate() -> None:
    """A fixed window: 100 let through in a tenth of a second, then everything refused until
    the window turns. The burst estimate reads 500/s; the first answer after the spell shows
    100 over about a second, and the target follows (at most 1.5 times that: the holds overshoot
    the spell by less than half)."""
    adaptive, clock = controller(1000)
    accept(adaptive, clock, 1000, 0.1)
    refuse(adaptive, clock)
    assert adaptive.target > 400
    while clock.t < 1.0:  # holds, each ended by a fresh refusal
        clock.t = max(clock.t, adaptive.bucket.held_until) + 0.001
        refuse(adaptive, clock, sent_ago=0.0005)
    clock.t = adaptive.bucket.held_until + 0.001
    adaptive.on_accepted(Sent(clock.t - 0.0005, 1, False))
    rate = 100 / (clock.t - 0.001)
    assert adaptive.target == pytest.approx(0.98 * 1.5 * rate, rel=0.02)
    assert adaptive.target < 200


def test_floor_is_respected() -> None:
    adaptive, clock = controller(100, floor=20.0)
    for _ in range(10):
        clock.t += 2.0
        refuse(adaptive, clock)
    assert adaptive.rate >= 20.0


def test_not_steering_keeps_the_rate_and_window() -> None:
    """send.adaptive = false: the configured rate and concurrency stay; holds still apply."""
    adaptive, clock = controller(100, window=16, steer=False)
    accept(adaptive, clock, 50, 2.0)
    refuse(adaptive, clock, in_flight=16, full=True)
    clock.t += 0.1
    refuse(adaptive, clock)  # fresh, nothing accepted since
    assert adaptive.rate == 100.0 and adaptive.window is not None
    assert adaptive.window.limit == 16 and adaptive.cuts == 0 and adaptive.holds == 1


def test_rejects_nonsense() -> None:
    bucket = TokenBucket(10, 1, clock=FakeClock())
    for options in (
        {"ceiling": 0},
        {"ceiling": math.nan},
        {"ceiling": 10, "beta": 1.0},
        {"ceiling": 10, "margin": 0.5},
        {"ceiling": 10, "event_window": -1},
    ):
        with pytest.raises(ConfigError):
            AdaptiveRate(bucket, **options)
    with pytest.raises(ConfigError):
        Window(0)


# --- Holding the whole run ---------------------------------------------------------------


def test_one_429_holds_nobody() -> None:
    adaptive, clock = controller(100)
    accept(adaptive, clock, 90, 1.0)
    refuse(adaptive, clock)
    assert adaptive.bucket.held_until == -math.inf and adaptive.holds == 0


@pytest.mark.parametrize(
    ("retry_after", "holds"),
    [
        # whole seconds: an upper bound (Twilio rounds up), probed from 50 ms, x1.5 a time
        (1.0, [0.05, 0.075, 0.1125, 0.16875, 0.253125, 0.379688, 0.569531, 0.854297, 1.0]),
        # none: the same, up to 2 s
        (
            None,
            [
                0.05,
                0.075,
                0.1125,
                0.16875,
                0.253125,
                0.379688,
                0.569531,
                0.854297,
                1.281445,
                1.922168,
                2.0,
            ],
        ),
        # fractional: a measurement, held exactly
        (0.3, [0.3, 0.3, 0.3]),
    ],
)
def test_the_run_is_held_while_the_server_refuses_everything(
    retry_after: float | None, holds: list[float]
) -> None:
    """A fresh 429 with nothing accepted since the reaction: the server refuses everything (a
    spent window). Every worker waits, as briefly as the evidence allows, longer while it
    lasts."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock, retry_after=retry_after)  # the event
    seen = []
    for _ in holds:
        clock.t = max(clock.t, adaptive.bucket.held_until) + 0.01
        refuse(adaptive, clock, retry_after=retry_after)
        seen.append(round(adaptive.bucket.held_until - clock.t, 6))
    assert seen == holds
    assert adaptive.held == pytest.approx(sum(holds), abs=1e-5)  # what everyone waited, in all
    clock.t = adaptive.bucket.held_until + 0.01
    accept(adaptive, clock, 100, 0.02)  # an answer accepted: the next hold starts small again
    refuse(adaptive, clock, retry_after=retry_after)
    clock.t += 1.1
    refuse(adaptive, clock, retry_after=retry_after)
    assert adaptive.bucket.held_until - clock.t <= max(holds[0], 0.05) + 1e-9


def test_after_a_full_hold_the_rate_is_cut_too() -> None:
    """Refused again right after waiting all the server asked: it is the rate it refuses."""
    adaptive, clock = controller(1000)
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock, retry_after=0.01)
    cuts = adaptive.cuts
    clock.t += 0.02
    refuse(adaptive, clock, retry_after=0.01)  # held exactly 0.01: spent
    clock.t += 0.02
    refuse(adaptive, clock, retry_after=0.01)
    assert adaptive.cuts == cuts + 1


# --- The window --------------------------------------------------------------------------


def by_load(adaptive: AdaptiveRate, clock: FakeClock, n: int, accepted_below: int) -> None:
    """Answers with 1..n in flight: accepted up to ``accepted_below``, refused above, as a
    server with that many places answers. The refusals are old news (sent before the last
    reaction), so that only the test's own ``refuse`` is an event."""
    for k in range(1, n + 1):
        clock.t += 0.001
        if k <= accepted_below:
            adaptive.on_accepted(Sent(clock.t - 0.001, k, k == n))
        else:
            adaptive.on_throttled(Sent(clock.t - 10.0, k, k == n), None)


def test_a_refusal_only_above_some_number_in_flight_moves_the_window() -> None:
    """Refused only with 9 or more in flight, accepted with fewer: a concurrency limit. The
    window drops below the number refused, and the rate stays."""
    adaptive, clock = controller(1000, window=16)
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock)  # the first event is always the rate's
    clock.t += 1.5
    for _ in range(5):
        by_load(adaptive, clock, 16, 8)
    rate = adaptive.rate
    refuse(adaptive, clock, in_flight=9)
    assert adaptive.window is not None
    assert adaptive.window.limit == 8 and adaptive.window_cuts == 1
    assert adaptive.rate == rate


def test_a_refusal_at_any_number_in_flight_is_the_rate() -> None:
    adaptive, clock = controller(1000, window=16)
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock)
    clock.t += 1.5
    for _ in range(5):
        by_load(adaptive, clock, 4, 4)
        adaptive.on_throttled(Sent(clock.t - 10.0, 2, False), None)  # refused with few too
    refuse(adaptive, clock, in_flight=3)
    assert adaptive.window is not None and adaptive.window.limit == 16
    assert adaptive.window_cuts == 0 and adaptive.cuts == 2


def test_one_event_at_most_halves_the_window() -> None:
    adaptive, clock = controller(1000, window=16)
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock)
    clock.t += 1.5
    for _ in range(5):
        by_load(adaptive, clock, 16, 2)
    refuse(adaptive, clock, in_flight=3)
    assert adaptive.window is not None and adaptive.window.limit == 8


def with_window_found_at_8() -> tuple[AdaptiveRate, FakeClock, Window]:
    """A run whose window was cut to 8: refused only with 9 or more in flight."""
    adaptive, clock = controller(1000, window=16)
    accept(adaptive, clock, 100, 1.0)
    refuse(adaptive, clock)
    clock.t += 1.5
    for _ in range(5):
        by_load(adaptive, clock, 16, 8)
    refuse(adaptive, clock, in_flight=9)
    window = adaptive.window
    assert window is not None and window.limit == 8
    return adaptive, clock, window


def test_a_full_window_grows_one_place_at_a_time_after_its_plateau() -> None:
    adaptive, clock, window = with_window_found_at_8()
    sizes = []
    for answers in (150, 100, 100, 100, 100):  # at 1.5, 2.5, 3.5, 4.5 and 5.5 s
        for _ in range(answers):
            clock.t += 0.01
            adaptive.on_accepted(Sent(clock.t - 0.08, 8, True))
        sizes.append(window.limit)
    assert sizes == [8, 8, 9, 10, 11]
    for _ in range(300):  # not full: the window is not what limits, it is not probed
        clock.t += 0.01
        adaptive.on_accepted(Sent(clock.t - 0.08, 3, False))
    assert window.limit == 11


def test_a_failed_window_probe_goes_back_to_the_size_that_drew_no_429() -> None:
    adaptive, clock, window = with_window_found_at_8()
    while window.limit == 8:
        clock.t += 0.01
        adaptive.on_accepted(Sent(clock.t - 0.08, 8, True))
    assert window.limit == 9
    clock.t += 0.01
    refuse(adaptive, clock, in_flight=8)  # reordered on the way: fewer on the wire than places
    assert window.limit == 8 and adaptive.window_cuts == 2
    started = clock.t
    while window.limit == 8:
        clock.t += 0.01
        adaptive.on_accepted(Sent(clock.t - 0.08, 8, True))
    assert clock.t - started == pytest.approx(4.0, abs=0.05)  # the plateau doubled, up to 3 s


@pytest.mark.anyio
async def test_window_waiters_are_served_in_order_and_follow_its_limit() -> None:
    window = Window(5)
    window.limit = 2
    assert await window.acquire() is False  # one of two: not full
    assert await window.acquire() is True  # took the last place
    order: list[int] = []

    async def waiter(n: int) -> None:
        assert await window.acquire() is True  # waited: full
        order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
            await anyio.wait_all_tasks_blocked()
        window.limit = 1  # lowered while they wait: two releases free one place
        window.release()
        await anyio.lowlevel.checkpoint()
        assert order == []
        window.release()
        await anyio.wait_all_tasks_blocked()
        assert order == [0]
        window.limit = 5  # raised: the rest go at once
        await anyio.wait_all_tasks_blocked()
        assert order == [0, 1, 2] and window.in_flight == 3
        for _ in range(3):
            window.release()
    assert window.in_flight == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_no_place_taken() -> None:
    window = Window(1)
    await window.acquire()
    with anyio.move_on_after(0.01):
        await window.acquire()
    window.release()
    assert window.in_flight == 0
    assert await window.acquire() is True and window.in_flight == 1


# --- The client's reports ----------------------------------------------------------------


class Probe(AdaptiveRate):
    """Records what the client reports, then does what AdaptiveRate does."""

    def __init__(self, bucket: TokenBucket) -> None:
        super().__init__(bucket, ceiling=bucket.rate, window=Window(16))
        self.calls: list[tuple[str, float | None, float]] = []

    def on_throttled(self, sent: Sent, retry_after: float | None = None) -> None:
        self.calls.append(("throttled", retry_after, sent.weight))
        super().on_throttled(sent, retry_after)

    def on_accepted(self, sent: Sent) -> None:
        self.calls.append(("accepted", None, sent.weight))
        super().on_accepted(sent)


@pytest.mark.anyio
async def test_client_reports_each_http_answer_with_its_weight() -> None:
    """429 -> on_throttled with its Retry-After; any other status -> on_accepted; a transport
    error -> neither. Each attempt takes its weight in tokens."""
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock=clock)
    probe = Probe(bucket)
    answers: list[httpx.Response | Exception] = [
        httpx.Response(429, headers={"Retry-After": "0.5"}, json={"code": 20429}),
        httpx.ConnectError("refused"),
        httpx.Response(503, json={"code": 20503}),
        httpx.Response(200, json={"profiles": []}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = MemoryClient(
        URL,
        CREDS,
        bucket=bucket,
        adaptive=probe,
        transport=httpx.MockTransport(handler),
        clock=clock,
        rng=random.Random(1),
    )
    async with client:
        reply = await client.request("GET", "/v1/Stores", weight=5.0)
    assert reply.status == 200 and reply.attempts == 4
    assert probe.calls == [
        ("throttled", 0.5, 5.0),
        ("accepted", None, 5.0),
        ("accepted", None, 5.0),
    ]
    assert probe.cuts == 1 and client.adaptive is probe


def test_client_refuses_a_controller_of_another_bucket_or_width() -> None:
    clock = FakeClock()
    adaptive = AdaptiveRate(TokenBucket(10, 1, clock=clock), ceiling=10)
    with pytest.raises(ConfigError):
        MemoryClient(URL, CREDS, bucket=TokenBucket(10, 1, clock=clock), adaptive=adaptive)
    with pytest.raises(ConfigError):
        MemoryClient(URL, CREDS, adaptive=adaptive)
    bucket = TokenBucket(10, 1, clock=clock)
    wide = AdaptiveRate(bucket, ceiling=10, window=Window(8))
    with pytest.raises(ConfigError):
        MemoryClient(URL, CREDS, bucket=bucket, adaptive=wide, concurrency=16)


@pytest.mark.anyio
async def test_a_heavy_request_goes_when_the_bucket_is_full_and_leaves_it_in_debt() -> None:
    """Weights above the burst still go, and the rate holds over time whatever the weights."""
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock=clock)
    await bucket.acquire(20.0)  # full bucket: goes now, 15 in debt
    assert clock.now() == 0.0
    await bucket.acquire(1.0)  # waits out the debt and its own token: 1.6 s
    assert clock.now() == pytest.approx(1.6)


# --- Against the real emulator over HTTP -------------------------------------------------


class SharedClock:
    """One virtual time line for the client and the emulator's account bucket, over real HTTP.

    Time stands still while any request is on the wire (``Counting`` tells), so the emulator
    sees the client's virtual time whatever the machine's load; when every worker waits on this
    clock, ``drive`` moves time on to the earliest sleeper's deadline. No figure depends on
    how fast the machine is.
    """

    def __init__(self) -> None:
        self.t = 0.0
        self.in_flight = 0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._order), woken))
        await woken.wait()

    async def drive(self, done: Callable[[], bool]) -> None:
        """Move time on whenever only sleepers are left, until ``done()``."""
        while not done():
            for _ in range(20):  # let whatever is runnable reach its next wait
                await anyio.lowlevel.checkpoint()
            if self.in_flight or not self._sleepers:
                await anyio.sleep(0.001)  # real time: an answer is on its way
                continue
            deadline, _, woken = heapq.heappop(self._sleepers)
            self.t = max(self.t, deadline)
            woken.set()


class Counting(httpx.AsyncBaseTransport):
    """A real HTTP transport that tells the shared clock while a request is on the wire."""

    def __init__(self, clock: SharedClock) -> None:
        self._wire = httpx.AsyncHTTPTransport()
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._clock.in_flight += 1
        try:
            response = await self._wire.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self._clock.in_flight -= 1

    async def aclose(self) -> None:
        await self._wire.aclose()


@pytest.mark.anyio
async def test_emulator_at_50_per_second_client_configured_at_500() -> None:
    """Configured 10x too fast, 16 workers settle near the emulator's 50/s with few 429s: the
    real client, the real emulator over HTTP, its 429s and Retry-After, on one virtual clock."""
    clock = SharedClock()
    config = EmulatorConfig(seed=SEED, rate=50, random_seed=1)
    server = EmulatorServer(config)
    # The account bucket the emulator built, again on the shared clock (same rate and burst).
    server.emulator.faults.bucket = AccountBucket(50, config.effective_burst, clock=clock.now)
    with server as emu:
        bucket = TokenBucket(500, default_burst(500), clock=clock)
        adaptive = AdaptiveRate(bucket, ceiling=500, window=Window(16))
        client = MemoryClient(
            emu.url,
            Credentials(*emu.auth),
            bucket=bucket,
            adaptive=adaptive,
            concurrency=16,
            transport=Counting(clock),
            clock=clock,
            rng=random.Random(1),
        )
        seconds = 20.0
        answered: list[tuple[float, int | None]] = []  # (virtual time, status) of each lookup
        workers = 16

        async def worker() -> None:
            nonlocal workers
            try:
                while clock.now() < seconds:
                    reply = await client.lookup(STORE, "email", "ada@example.com")
                    answered.append((clock.now(), reply.status))
            finally:
                workers -= 1

        async with client, anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker)
            tg.start_soon(clock.drive, lambda: workers == 0)
        stats = emu.stats()

    lookups = stats["byOperation"]["profiles.lookup"]
    accepted, limited = lookups.get("200", 0), stats["rateLimited"]
    assert {status for _, status in answered} == {200}  # every 429 was retried
    assert limited == client.stats.throttled == adaptive.throttled
    assert limited / (accepted + limited) < 0.10
    # Unthrottled, a 10x-too-fast client gets ~1/3 429s and pauses each second (~6/s). Within
    # the 20 virtual seconds (a ~1 s pause included) it gets most of the 50/s.
    in_time = sum(1 for at, status in answered if status == 200 and at <= seconds)
    assert in_time / seconds >= 40.0
    assert adaptive.cuts >= 1 and adaptive.rate <= 55.0
