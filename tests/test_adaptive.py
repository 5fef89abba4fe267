"""AdaptiveRate: unit rules on virtual time, a simulation of the whole loop, one emulator run.

The virtual-time loop lives in tests/throttle_sim.py, which runs the client against every
limiter shape (tests/test_throttle_shapes.py).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator.faults import AccountBucket
from backfill.errors import ConfigError
from backfill.transport.client import Credentials, MemoryClient, RetryPolicy
from backfill.transport.throttle import AdaptiveRate, TokenBucket, default_burst
from throttle_sim import LoopClock, run_virtual

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


def controller(rate: float = 100.0, **options: Any) -> tuple[AdaptiveRate, FakeClock]:
    clock = FakeClock()
    bucket = TokenBucket(rate, default_burst(rate), clock=clock)
    return AdaptiveRate(bucket, ceiling=rate, **options), clock


def accept(adaptive: AdaptiveRate, clock: FakeClock, per_second: float, seconds: float) -> None:
    """Report evenly spaced accepted answers from now on, for `seconds`."""
    for _ in range(round(per_second * seconds)):
        clock.t += 1.0 / per_second
        adaptive.on_accepted()


def pause(adaptive: AdaptiveRate, clock: FakeClock, seconds: float = 1.0) -> None:
    """What the client does after a 429: hold the whole bucket for Retry-After."""
    adaptive.bucket.hold(clock.now() + seconds)


# --- The rules, one at a time ------------------------------------------------------------


def test_starts_at_the_ceiling_without_the_saved_burst() -> None:
    """The bucket starts at the configured rate, capped by the ceiling, with no saved burst."""
    clock = FakeClock()
    bucket = TokenBucket(500, 50, clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=200)
    assert adaptive.rate == bucket.rate == 200 and adaptive.cuts == 0

    clock.t = 5.0  # idle before the first request: 50 tokens saved, then dropped but one

    async def grants() -> list[float]:
        times = []
        for _ in range(3):
            await bucket.acquire()
            times.append(clock.now())
        return times

    assert anyio.run(grants) == pytest.approx([5.0, 5.005, 5.010])


def test_a_cut_without_evidence_is_multiplicative() -> None:
    """With no accepted answers to learn from, a 429 cuts the rate by beta."""
    adaptive, _ = controller(100)
    adaptive.on_throttled()
    assert adaptive.rate == pytest.approx(70.0)
    assert adaptive.cuts == 1 and adaptive.estimate is None
    other, _ = controller(100, beta=0.5)
    other.on_throttled()
    assert other.rate == pytest.approx(50.0)


def test_one_cut_per_event_window() -> None:
    """429s within the window, or while the bucket is paused, are one event: one cut."""
    adaptive, clock = controller(100)
    for _ in range(5):
        adaptive.on_throttled()  # a burst of 429s at once
    pause(adaptive, clock, 3.0)
    clock.t = 0.9
    adaptive.on_throttled()
    clock.t = 2.5  # past the window, but the bucket is still paused
    adaptive.on_throttled()
    assert adaptive.cuts == 1 and adaptive.throttled == 7
    assert adaptive.rate == pytest.approx(70.0)
    clock.t = 3.2  # resumed and throttled again: a new event
    adaptive.on_throttled()
    assert adaptive.cuts == 2 and adaptive.rate == pytest.approx(49.0)


def test_the_cut_lands_just_under_the_estimated_capacity() -> None:
    """Over a server of 100/s (burst 10), a client at 150/s is cut to 98% of ~100/s at once."""
    adaptive, clock = controller(150)
    for _ in range(10):
        adaptive.on_accepted()  # the server's burst
    accept(adaptive, clock, 100, 2.0)  # then its rate, until its bucket ran dry
    adaptive.on_throttled()
    assert adaptive.estimate == pytest.approx(100)  # (10 + 200 answers) / (0.1 + 2 s)
    assert adaptive.rate == adaptive.target == pytest.approx(98)


def test_answers_arriving_during_the_pause_refine_the_estimate() -> None:
    """Accepted answers to requests sent before the pause count as evidence, not as growth."""
    adaptive, clock = controller(1000)
    for _ in range(3):
        adaptive.on_accepted()
    adaptive.on_throttled()  # processed before the rest of the server's burst of 10
    pause(adaptive, clock)
    low = adaptive.rate
    for _ in range(7):
        adaptive.on_accepted()
    assert adaptive.estimate == pytest.approx(100)  # 10 answers over a burst of 0.1 s
    assert adaptive.rate == pytest.approx(98) and adaptive.rate > low
    assert adaptive.cuts == 1


def test_a_stall_is_not_mistaken_for_the_capacity() -> None:
    """Answers bunched after a silence leave the target be once; a repeat soon lowers it 2%."""
    adaptive, clock = controller(100)

    def stall_then_429() -> None:
        accept(adaptive, clock, 100, 3.0)
        clock.t += 0.3  # the server stalls; then answers its backlog at once, and 429s
        for _ in range(12):
            adaptive.on_accepted()
        adaptive.on_throttled()
        pause(adaptive, clock)
        clock.t += 1.0

    stall_then_429()
    assert adaptive.estimate == pytest.approx(120)  # only the bunch: faster than we sent
    assert adaptive.rate == pytest.approx(90.0) and adaptive.target == 100.0
    stall_then_429()  # 4.3 s later
    assert adaptive.target == pytest.approx(98.0)
    accept(adaptive, clock, 98, 10.0)
    stall_then_429()  # 14.3 s later: noise again, not the capacity
    assert adaptive.target == pytest.approx(98.0) and adaptive.cuts == 3


def test_evidence_starts_when_the_bucket_resumed() -> None:
    """After a pause, only the answers since count: a halved capacity is seen at once."""
    adaptive, clock = controller(150)
    for _ in range(10):
        adaptive.on_accepted()
    accept(adaptive, clock, 100, 2.0)
    adaptive.on_throttled()
    pause(adaptive, clock)
    clock.t += 1.0
    assert adaptive.target == pytest.approx(98)
    accept(adaptive, clock, 50, 1.0)  # the server now takes 50/s (its burst spent on others)
    adaptive.on_throttled()
    assert adaptive.estimate == pytest.approx(50 / 1.08)
    assert adaptive.target < 50.0


def test_floor_is_respected() -> None:
    """Event after event without a single success never takes the rate below the floor."""
    adaptive, clock = controller(100, floor=2.0)
    for _ in range(40):
        adaptive.on_throttled()
        pause(adaptive, clock)
        clock.t += 1.0
    assert adaptive.cuts == 40
    assert adaptive.rate == adaptive.floor == 2.0
    with pytest.raises(ConfigError):
        controller(100, floor=0.0)


def test_growth_is_additive_while_accepted_and_stops_at_the_ceiling() -> None:
    """After a cut the rate climbs back while answers succeed, and never above the ceiling."""
    adaptive, clock = controller(100)
    accept(adaptive, clock, 100, 10.0)  # a clean stretch at the full rate, then one 429
    adaptive.on_throttled()
    assert adaptive.estimate == pytest.approx(1000 / 10.09)  # answers / (0.1 s + 9.99 s)
    assert adaptive.rate == pytest.approx(90.0)  # a dip of 10% ...
    assert adaptive.target == pytest.approx(0.98 * 1000 / 10.09)  # ... under the target
    pause(adaptive, clock)
    clock.t += 1.0
    rates = []
    for _ in range(60):
        accept(adaptive, clock, 50, 1.0)
        rates.append(adaptive.rate)
    assert 90.0 < rates[0] < adaptive.target  # climbing
    assert all(b >= a for a, b in itertools.pairwise(rates))  # never down
    assert rates[2] == rates[15] == adaptive.target  # back at the target in 2 s, and staying
    assert rates[30] > adaptive.target  # then probing above it
    assert rates[-1] == adaptive.ceiling == 100.0  # up to the ceiling only
    accept(adaptive, clock, 50, 100.0)
    assert adaptive.rate == 100.0


def test_no_growth_without_accepted_answers() -> None:
    """Time alone does not raise the rate: an idle minute counts as one second of growth."""
    adaptive, clock = controller(100)
    adaptive.on_throttled()
    pause(adaptive, clock)
    clock.t = 60.0
    assert adaptive.rate == pytest.approx(70.0)
    adaptive.on_accepted()
    target = adaptive.target
    assert adaptive.rate == pytest.approx(target - (target - 70.0) * 0.5**3)  # 1 s of 2 s


def test_a_failed_probe_waits_longer_before_the_next() -> None:
    """A 429 while probing above the target doubles the plateau before the next probe."""
    adaptive, clock = controller(200)
    for _ in range(10):
        adaptive.on_accepted()
    accept(adaptive, clock, 100, 2.0)
    adaptive.on_throttled()  # at 200/s against ~100/s: target ~98
    pause(adaptive, clock)
    clock.t += 1.0

    def seconds_on_plateau() -> float:
        start = clock.now()
        while adaptive.rate <= adaptive.target * 1.001:
            accept(adaptive, clock, 100, 0.1)
        return clock.now() - start

    first = seconds_on_plateau()
    accept(adaptive, clock, 100, 8.0)
    adaptive.on_throttled()  # the probe met the limit again
    pause(adaptive, clock)
    clock.t += 1.0
    second = seconds_on_plateau()
    assert 20 <= first <= 26 and 40 <= second <= 46


def test_an_early_probe_that_finds_no_room_also_doubles_the_plateau() -> None:
    """A run opening far above the capacity probes its untrusted first estimate after 2 s; if
    that probe only confirms it, the next probe waits 40 s, not 20 (each costs a pause)."""
    adaptive, clock = controller(1000)
    for _ in range(10):
        adaptive.on_accepted()  # the server's burst, then a 429 at once: an untrusted estimate
    adaptive.on_throttled()
    pause(adaptive, clock)
    clock.t += 1.0
    assert adaptive.target == pytest.approx(98)
    while adaptive.rate <= adaptive.target * 1.001:  # the short plateau
        accept(adaptive, clock, 98, 0.1)
    accept(adaptive, clock, 100, 4.0)  # the probe finds the same capacity, and a 429
    adaptive.on_throttled()
    assert adaptive.estimate == pytest.approx(100, rel=0.05)  # trusted: 4 s of answers
    pause(adaptive, clock)
    clock.t += 1.0
    start = clock.now()
    while adaptive.rate <= adaptive.target * 1.001:
        accept(adaptive, clock, 100, 0.1)
    assert 40 <= clock.now() - start <= 46


def test_rejects_nonsense() -> None:
    """A ceiling, beta, margin or window that makes no sense is a ConfigError."""
    for options in ({"ceiling": 0}, {"ceiling": math.inf}, {"ceiling": 10, "beta": 1.0}):
        with pytest.raises(ConfigError):
            AdaptiveRate(TokenBucket(10, 1, clock=FakeClock()), **options)
    for bad in ({"margin": -0.1}, {"window": -1.0}, {"server_burst": 0.0}):
        with pytest.raises(ConfigError):
            controller(10, **bad)


# --- MemoryClient reports to it ----------------------------------------------------------


class Probe(AdaptiveRate):
    """An AdaptiveRate that records what it was told, and whether the bucket was held then."""

    def __init__(self, bucket: TokenBucket) -> None:
        super().__init__(bucket, ceiling=bucket.rate)
        self.calls: list[tuple[str, bool]] = []

    def on_throttled(self) -> None:
        self.calls.append(("throttled", self.bucket.held_until > self.bucket.clock.now()))
        super().on_throttled()

    def on_accepted(self) -> None:
        self.calls.append(("accepted", False))
        super().on_accepted()


@pytest.mark.anyio
async def test_client_reports_each_http_answer_before_holding() -> None:
    """429 → on_throttled (before the pause); any other status → on_accepted; errors → neither."""
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock=clock)
    probe = Probe(bucket)
    answers: list[httpx.Response | Exception] = [
        httpx.Response(429, headers={"Retry-After": "1"}, json={"code": 20429}),
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
        rng=random.Random(1),
    )
    async with client:
        reply = await client.lookup(STORE, "email", "ada@example.com")
    assert reply.status == 200 and reply.attempts == 4
    assert probe.calls == [("throttled", False), ("accepted", False), ("accepted", False)]
    assert probe.cuts == 1 and client.adaptive is probe


def test_client_refuses_a_controller_of_another_bucket() -> None:
    """The controller must steer the bucket the client takes its tokens from."""
    clock = FakeClock()
    adaptive = AdaptiveRate(TokenBucket(10, 1, clock=clock), ceiling=10)
    with pytest.raises(ConfigError):
        MemoryClient(URL, CREDS, bucket=TokenBucket(10, 1, clock=clock), adaptive=adaptive)
    with pytest.raises(ConfigError):
        MemoryClient(URL, CREDS, adaptive=adaptive)


# --- The whole loop, simulated on virtual time -------------------------------------------


@dataclass
class Outcome:
    accepted: int = 0  # server-side, before the end of the run
    throttled: int = 0
    cuts: int = 0
    final_rate: float = 0.0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds

    @property
    def share_429(self) -> float:
        return self.throttled / max(1, self.accepted + self.throttled)


class Server:
    """The emulator's own account bucket (rate R, burst max(1, R/10)) on the loop's time."""

    def __init__(self, rate: float, seconds: float, outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        self.bucket = AccountBucket(rate, max(1, int(rate / 10)), clock=loop.time)
        self.loop, self.seconds, self.outcome = loop, seconds, outcome

    def take(self) -> int:
        """0 when accepted, else the Retry-After in whole seconds."""
        wait = self.bucket.take()
        if self.loop.time() < self.seconds:
            if wait:
                self.outcome.throttled += 1
            else:
                self.outcome.accepted += 1
        return wait


async def simulate(
    configured: float,
    capacity: float,
    *,
    seconds: float = 60.0,
    latency: tuple[float, float] = (0.004, 0.004),
    workers: int = 16,
    seed: int = 1,
) -> Outcome:
    """16 workers under one bucket and AdaptiveRate, against the emulator's bucket.

    Each attempt mirrors MemoryClient.request: take a token, send (half the latency each way),
    and on a 429 tell the controller, hold the bucket for Retry-After and retry after
    RetryPolicy.delay (Retry-After plus 0-20% jitter); anything else tells it `on_accepted`.
    """
    clock = LoopClock()
    outcome = Outcome(seconds=seconds)
    server = Server(capacity, seconds, outcome)
    bucket = TokenBucket(configured, default_burst(configured), clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=configured)
    policy = RetryPolicy()
    rng = random.Random(seed)
    lag = random.Random(seed + 1)

    async def request() -> None:
        attempt = 0
        while True:
            attempt += 1
            await bucket.acquire()
            one_way = lag.uniform(*latency) / 2
            await anyio.sleep(one_way)
            wait = server.take()
            await anyio.sleep(one_way)
            if not wait:
                adaptive.on_accepted()
                return
            adaptive.on_throttled()
            bucket.hold(clock.now() + max(wait, policy.base))
            await anyio.sleep(policy.delay(attempt, str(wait), rng))

    async def worker() -> None:
        while clock.now() < seconds:
            await request()

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    outcome.cuts, outcome.final_rate = adaptive.cuts, adaptive.rate
    return outcome


JITTER = (0.001, 0.008)  # one-way halves of 0.5-4 ms: arrivals no longer evenly spaced

SCENARIOS = [
    # configured, capacity, latency, at least this share of min(configured, capacity), max 429s
    pytest.param(100, 100, (0.004, 0.004), 0.95, 0.01, id="a-100-at-100"),
    pytest.param(1000, 100, (0.004, 0.004), 0.90, 0.05, id="b-1000-at-100"),
    pytest.param(100, 100, JITTER, 0.95, 0.01, id="a-100-at-100-jitter"),
    pytest.param(1000, 100, JITTER, 0.90, 0.05, id="b-1000-at-100-jitter"),
    pytest.param(300, 50, (0.004, 0.004), 0.90, 0.05, id="300-at-50"),
    pytest.param(100, 200, (0.004, 0.004), 0.99, 0.0, id="100-at-200-server-faster"),
]


@pytest.mark.parametrize(("configured", "capacity", "latency", "least", "most_429"), SCENARIOS)
def test_simulated_run_settles_near_the_capacity(
    configured: float,
    capacity: float,
    latency: tuple[float, float],
    least: float,
    most_429: float,
) -> None:
    """60 virtual seconds, 16 workers: accepted/s and the share of 429s meet the targets."""
    outcome = run_virtual(lambda: simulate(configured, capacity, latency=latency))
    assert outcome.per_second >= least * min(configured, capacity)
    assert outcome.share_429 <= most_429
    # never above the configured rate (plus the one token a fresh bucket keeps)
    assert outcome.accepted <= configured * outcome.seconds + 1
    assert outcome.final_rate <= configured


def test_simulation_is_deterministic() -> None:
    """Virtual time and seeded randomness: the same run gives the same numbers."""
    runs = [run_virtual(lambda: simulate(1000, 100, seconds=10.0, latency=JITTER)) for _ in "ab"]
    assert runs[0] == runs[1]


async def drive_real_client(configured: float, capacity: float, seconds: float) -> Outcome:
    """16 workers of lookups through the real MemoryClient, over MockTransport, on the loop's
    virtual time, against the emulator's bucket (2 ms each way)."""
    clock = LoopClock()
    outcome = Outcome(seconds=seconds)
    server = Server(capacity, seconds, outcome)

    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.002)
        wait = server.take()
        await anyio.sleep(0.002)
        if wait:
            body = {"code": 20429, "message": "Too many requests", "status": 429}
            return httpx.Response(429, headers={"Retry-After": str(wait)}, json=body)
        return httpx.Response(200, json={"normalizedValue": "ada@example.com", "profiles": []})

    bucket = TokenBucket(configured, default_burst(configured), clock=clock)
    adaptive = AdaptiveRate(bucket, ceiling=configured)
    client = MemoryClient(
        URL,
        CREDS,
        bucket=bucket,
        adaptive=adaptive,
        transport=httpx.MockTransport(handler),
        clock=clock,
        rng=random.Random(1),
    )

    async def worker() -> None:
        while clock.now() < seconds:
            await client.lookup(STORE, "email", "ada@example.com")

    async with client, anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(worker)
    outcome.cuts, outcome.final_rate = adaptive.cuts, adaptive.rate
    return outcome


def test_real_client_over_virtual_time_matches_the_model() -> None:
    """The real MemoryClient (MockTransport, virtual time) settles as the model of it does."""
    real = run_virtual(lambda: drive_real_client(1000, 100, 20.0))
    model = run_virtual(lambda: simulate(1000, 100, seconds=20.0))
    assert real.per_second >= 85.0 and real.share_429 < 0.05
    assert abs(real.per_second - model.per_second) <= 3.0


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
        adaptive = AdaptiveRate(bucket, ceiling=500)
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
