"""TokenBucket and SystemClock: rate bound, FIFO, rate changes, holds, cancellation."""

from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.errors import ConfigError
from backfill.transport.throttle import SystemClock, TokenBucket, default_burst


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Virtual time. Auto mode: ``sleep`` advances ``now`` at once. Manual mode: sleepers block
    until the test calls ``advance`` past their deadline."""

    def __init__(self, *, manual: bool = False) -> None:
        self._now = 0.0
        self.manual = manual
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if not self.manual:
            self._now += max(0.0, seconds)
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._now + max(0.0, seconds), anyio.Event())
        self._sleepers.append(entry)
        try:
            await entry[1].wait()
        finally:
            self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time on, wake every sleeper now due, and let the woken tasks run."""
        self._now += seconds
        for deadline, event in list(self._sleepers):
            if deadline <= self._now:
                event.set()
        await settle()


async def settle() -> None:
    """Let every runnable task run until it blocks again (virtual time needs no real waiting)."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


async def grant_times(
    bucket: TokenBucket, clock: FakeClock, pattern: list[tuple[float, int]]
) -> list[float]:
    """For each (gap, n) step: let `gap` seconds pass, then run n concurrent acquires."""
    times: list[float] = []

    async def take() -> None:
        await bucket.acquire()
        times.append(clock.now())

    for gap, n in pattern:
        await clock.sleep(gap)
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(take)
    return times


@pytest.mark.anyio
@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=2000.0),
    burst=st.integers(min_value=1, max_value=20),
    pattern=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3.0), st.integers(min_value=0, max_value=12)),
        min_size=1,
        max_size=12,
    ),
)
async def test_bucket_never_exceeds_burst_plus_rate_times_window(
    rate: float, burst: int, pattern: list[tuple[float, int]]
) -> None:
    """In every window of length T the bucket grants at most burst + rate * T tokens."""
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    times = await grant_times(bucket, clock, pattern)
    assert len(times) == sum(n for _, n in pattern)
    assert times == sorted(times)
    for i, j in itertools.combinations(range(len(times)), 2):
        assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-6


@pytest.mark.anyio
async def test_bucket_grants_at_full_rate() -> None:
    """A full bucket lets `burst` through at once, then one token every 1/rate seconds."""
    clock = FakeClock()
    bucket = TokenBucket(10, 2, clock)
    times = await grant_times(bucket, clock, [(0.0, 12)])
    assert times[:2] == [0.0, 0.0]
    assert times[2:] == pytest.approx([0.1 * k for k in range(1, 11)])


@pytest.mark.anyio
async def test_waiters_are_served_in_arrival_order() -> None:
    """Waiters get tokens first come, first served."""
    clock = FakeClock(manual=True)
    bucket = TokenBucket(1, 1, clock)
    await bucket.acquire()  # empty the bucket
    order: list[int] = []

    async def take(who: int) -> None:
        await bucket.acquire()
        order.append(who)

    async with anyio.create_task_group() as tg:
        for who in range(5):
            tg.start_soon(take, who)
            await settle()  # `who` is queued before the next arrives
        for _ in range(5):
            await clock.advance(1.0)
        tg.cancel_scope.cancel()  # a waiter still asleep fails the assert below, not hangs
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_rate_change_takes_effect_for_the_next_token() -> None:
    """Raising the rate wakes the waiter for the sooner token; lowering it spaces later ones."""
    clock = FakeClock(manual=True)
    bucket = TokenBucket(1, 1, clock)
    await bucket.acquire()
    granted: list[float] = []

    async def take() -> None:
        await bucket.acquire()
        granted.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await settle()  # asleep until t=1 at the old rate
        bucket.rate = 10
        assert bucket.rate == 10
        await settle()
        await clock.advance(0.1)
        tg.cancel_scope.cancel()
    assert granted == [pytest.approx(0.1)]

    bucket.rate = 0.5
    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        await settle()
        await clock.advance(1.0)
        assert len(granted) == 1  # at 0.5/s the next token is 2 s after the last
        await clock.advance(1.0)
        tg.cancel_scope.cancel()
    assert len(granted) == 2
    assert granted[1] == pytest.approx(2.1)


@pytest.mark.anyio
async def test_a_heavy_request_still_goes_when_the_burst_shrinks_while_it_waits() -> None:
    """A Segment batch weighing 40 waits for a full 40-token bucket; the throttle then paces
    (burst 1.5): it goes once the smaller bucket is full, in debt, instead of waiting forever
    for 40 tokens a 1.5 bucket can never hold (a run hung this way)."""
    clock = FakeClock(manual=True)
    bucket = TokenBucket(100, 40, clock)
    await bucket.acquire(40)
    granted: list[float] = []

    async def heavy() -> None:
        await bucket.acquire(40)
        granted.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(heavy)
        await settle()  # asleep until the 40 tokens are back, at t=0.4
        bucket.burst = 1.5
        for _ in range(10):
            await clock.advance(0.01)
        tg.cancel_scope.cancel()
    assert granted == [pytest.approx(0.02)]  # 1.5 tokens at 100/s: the first wake after 15 ms


@pytest.mark.anyio
async def test_hold_delays_every_waiter_and_only_extends() -> None:
    """hold(until): no token before `until`, then one at a time; holds only ever extend."""
    clock = FakeClock()
    bucket = TokenBucket(100, 5, clock)
    bucket.hold(3.0)
    bucket.hold(2.0)
    assert bucket.held_until == 3.0
    times = await grant_times(bucket, clock, [(0.0, 4)])
    # One token at the end of the hold, then paced: the saved burst is not spent in one go.
    assert times == pytest.approx([3.0, 3.01, 3.02, 3.03])
    bucket.hold(clock.now() + 1.5)
    times = await grant_times(bucket, clock, [(0.5, 2)])
    assert times == pytest.approx([4.54, 4.55])  # the bucket was empty when held: stays so
    bucket.hold(clock.now() - 1)  # a hold in the past changes nothing
    assert bucket.held_until == pytest.approx(4.53)


@pytest.mark.anyio
@pytest.mark.parametrize("cancelled", ["head", "queued"])
async def test_cancelled_waiter_takes_no_token_and_blocks_nobody(cancelled: str) -> None:
    """A waiter cancelled by its cancel scope consumes no token and the next waiter goes on."""
    clock = FakeClock(manual=True)
    bucket = TokenBucket(1, 1, clock)
    await bucket.acquire()
    granted: dict[str, float] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def take(who: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[who] = scope
            await bucket.acquire()
            granted[who] = clock.now()

    async with anyio.create_task_group() as tg:
        for who in ("head", "queued", "last"):
            tg.start_soon(take, who)
            await settle()
        scopes[cancelled].cancel()
        await settle()
        await clock.advance(1.0)
        await clock.advance(1.0)
        tg.cancel_scope.cancel()
    survivors = [who for who in ("head", "queued", "last") if who != cancelled]
    assert granted == {survivors[0]: 1.0, survivors[1]: 2.0}


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0)])
def test_bucket_rejects_nonsense_settings(rate: float, burst: int) -> None:
    """Rate must be positive and finite, burst at least 1."""
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst, FakeClock())


def test_rate_setter_rejects_nonsense() -> None:
    """Setting the rate to zero is refused and leaves the old rate."""
    bucket = TokenBucket(5, 1, FakeClock())
    with pytest.raises(ConfigError):
        bucket.rate = 0
    assert bucket.rate == 5


@pytest.mark.parametrize(("rate", "burst"), [(1, 1), (9.9, 1), (20, 2), (250, 25)])
def test_default_burst_is_a_tenth_of_a_second(rate: float, burst: int) -> None:
    """The default burst is a tenth of a second's worth of tokens, at least 1."""
    assert default_burst(rate) == burst


@pytest.mark.anyio
async def test_system_clock_is_monotonic_and_sleeps() -> None:
    """SystemClock.sleep waits at least the time asked (loose lower bound only)."""
    clock = SystemClock()
    start = clock.now()
    await clock.sleep(0.02)
    assert clock.now() - start >= 0.019
