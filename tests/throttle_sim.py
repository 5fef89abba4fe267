"""The whole client against every server limiter shape, on virtual time (issue 13).

Test support, not a test file. It drives the REAL ``MemoryClient`` (token bucket and
``AdaptiveRate`` built as ``backfill run`` builds them: ``client_for``) over
``httpx.MockTransport`` on an asyncio loop whose clock jumps to the next timer whenever every
task waits (``VirtualTimeLoop``). The simulated server decides with the emulator's own limiters
(``backfill.emulator.limits``) and writes ``Retry-After`` as the emulator does, so a 60 s run
takes about a second of real time, is deterministic for a seed, and no figure depends on how
fast the machine is.

What one run reports (``SimResult``): accepted/s over the run and over each phase of the limit
schedule, as a share of the limit in force; the share of answers that were 429s; the seconds
after each limit change until the client is back above 90 % of the new limit; and the limiter's
own ``View``. ``bench/throttle_shapes.py`` prints the table for every shape, ``Retry-After``
style and scenario; tests/test_throttle_shapes.py holds the issue's targets against it.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import selectors
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeVar, get_args

import anyio
import httpx

from backfill.config import Send
from backfill.emulator.limits import (
    Limiter,
    RetryAfterStyle,
    Scheduled,
    Shape,
    Step,
    View,
    make_limiter,
    render_retry_after,
)
from backfill.transport.client import Credentials
from backfill.transport.connection import client_for

URL = "https://memory.example.test"
CREDS = Credentials("SK0123456789abcdef0123456789abcdef", "s3cr3t")
STORE = "mem_store_01jtest0000000000000000000"
_TOO_MANY = b'{"code":20429,"message":"Too many requests","status":429}'
_ACCEPTED = b'{"status":"accepted"}'

T = TypeVar("T")


# --- Virtual time ------------------------------------------------------------------------


class _VirtualSelector(selectors.SelectSelector):
    """Never blocks: waiting for `timeout` moves the virtual clock on by `timeout` instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("every task waits and no timer is set: a deadlock")
        self.now += max(0.0, timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time: when every task waits, time jumps to the next timer.

    Runs are deterministic and take no real time; nothing here does real I/O.
    """

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


class LoopClock:
    """The running loop's (virtual) time, and anyio's sleep on it."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """``main()`` to completion on a fresh ``VirtualTimeLoop``."""
    return anyio.run(main, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})


# --- What is simulated -------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLimit:
    """One limiter the server applies, as the emulator's switches would build it."""

    name: str
    shape: Shape
    burst: float | None = None  # token, gcra (None: the emulator's default, R/10)
    window_s: float | None = None  # fixed, sliding (None: 1 s)
    max_in_flight: int | None = None  # concurrency


LIMITS: dict[str, ServerLimit] = {
    limit.name: limit
    for limit in (
        ServerLimit("token-b1", "token", burst=1),
        ServerLimit("token-b10", "token", burst=10),
        ServerLimit("gcra", "gcra"),
        ServerLimit("fixed-1s", "fixed", window_s=1.0),
        ServerLimit("sliding-1s", "sliding", window_s=1.0),
        ServerLimit("concurrency-8", "concurrency", max_in_flight=8),
    )
}

Wire = Literal["direct", "httpx"]  # how the client's requests reach the simulated server
Scenario = Literal["10x", "at-limit", "halved"]
SCENARIOS: tuple[Scenario, ...] = get_args(Scenario)
HALVED: tuple[Step, ...] = ((20.0, 0.5), (40.0, 1.0))  # another client takes half for 20 s

# The network, each way, uniform: jitter means arrivals are not spaced as the client's bucket
# sent them, which is what a strict limiter (burst 1) punishes.
NETWORK: tuple[float, float] = (0.0005, 0.004)
# Service time (the server's, from admission to answer), uniform. A rate limit's requests are
# quick; a concurrency limit's take 75.5 ms on average, so that with the network's 4.5 ms a
# request is in flight for 80 ms as the client sees it and 8 in flight carry 100/s.
QUICK: tuple[float, float] = (0.002, 0.010)
SLOW: tuple[float, float] = (0.0355, 0.1155)


@dataclass(frozen=True)
class SimConfig:
    """One run: the server's limit, how the job is configured, and what is measured."""

    limit: ServerLimit
    send: Send
    rate: float = 100.0  # the server's rate (rate shapes), requests a second
    retry_after: RetryAfterStyle = "whole"
    schedule: tuple[Step, ...] = ()
    seconds: float = 60.0
    workers: int = 16  # tasks sending requests through the one client
    service: tuple[float, float] = QUICK
    one_way: tuple[float, float] = NETWORK  # network, each way, uniform
    seed: int = 1
    wire: Wire = "direct"

    @property
    def limit_rate(self) -> float:
        """The configured limit in requests a second. For concurrency, what N requests in
        flight carry, each counted from the client's send to its answer (Little's law): the
        client cannot tell the server's own time from the network's. The limiter's ``View``
        counts its slots from arrival to answer, so its utilisation reads a little lower."""
        if self.limit.shape == "concurrency":
            assert self.limit.max_in_flight is not None
            held = sum(self.service) / 2 + sum(self.one_way)  # two one-way trips
            return self.limit.max_in_flight / held
        return self.rate


def scenario_config(
    limit: ServerLimit | str,
    scenario: Scenario,
    *,
    retry_after: RetryAfterStyle = "whole",
    seconds: float = 60.0,
    seed: int = 1,
) -> SimConfig:
    """The issue's scenarios at 100 requests/s (8 in flight for the concurrency limiter).

    ``10x``: ``send.rate`` 1,000, adaptive, the default concurrency 16. ``at-limit``:
    ``send.rate`` 100 (and ``send.concurrency`` 8 against the concurrency limiter).
    ``halved``: as ``10x`` (the limit is unknown), the limit halved from 20 s to 40 s.
    """
    if isinstance(limit, str):
        limit = LIMITS[limit]
    concurrent = limit.shape == "concurrency"
    send = Send(rate=1000.0, concurrency=16)
    if scenario == "at-limit":
        send = Send(rate=100.0, concurrency=8 if concurrent else 16)
    return SimConfig(
        limit=limit,
        send=send,
        retry_after=retry_after,
        schedule=HALVED if scenario == "halved" else (),
        seconds=seconds,
        service=SLOW if concurrent else QUICK,
        seed=seed,
    )


# --- What a run reports ------------------------------------------------------------------

RECOVERED = 0.9  # "back above 90 %" of the new limit ...
RECOVERY_WINDOW = 2.0  # ... averaged over this many seconds from the moment reported


@dataclass(frozen=True)
class Phase:
    """A stretch of the run at one limit."""

    start: float
    end: float
    factor: float
    limit_rate: float  # requests a second in force
    accepted: int

    @property
    def per_second(self) -> float:
        return self.accepted / (self.end - self.start)

    @property
    def share(self) -> float:
        """Accepted as a share of the limit in force."""
        return self.per_second / self.limit_rate


@dataclass(frozen=True)
class SimResult:
    config: SimConfig
    accepted: int  # requests the server admitted within the run
    throttled: int  # 429s it answered within the run
    phases: tuple[Phase, ...]
    recovery: tuple[float | None, ...]  # per limit change; None: not within its phase
    view: View  # the limiter's own account over the run
    cuts: int  # AdaptiveRate's congestion events (0 when not adaptive)
    final_rate: float  # the client bucket's rate at the end
    holds: int = 0  # whole-run holds (the server refused everything)
    held: float = 0.0  # seconds the whole run was held, in all

    @property
    def per_second(self) -> float:
        return self.accepted / self.config.seconds

    @property
    def limit_per_second(self) -> float:
        """The limit in force, averaged over the run (the schedule weighs in)."""
        return sum(p.limit_rate * (p.end - p.start) for p in self.phases) / self.config.seconds

    @property
    def share(self) -> float:
        """Accepted as a share of the limit."""
        return self.per_second / self.limit_per_second

    @property
    def share_429(self) -> float:
        return self.throttled / max(1, self.accepted + self.throttled)

    @property
    def worst_recovery(self) -> float | None:
        """The slowest recovery over the changes (None if one never recovered; 0 if none)."""
        if any(r is None for r in self.recovery):
            return None
        return max((r for r in self.recovery if r is not None), default=0.0)


def phases(config: SimConfig, admitted: list[float]) -> tuple[Phase, ...]:
    """Split the run at the schedule's steps; ``admitted`` are sorted admission times."""
    bounds = [(0.0, 1.0)] + [(at, f) for at, f in config.schedule if at < config.seconds]
    out = []
    for i, (start, factor) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else config.seconds
        count = bisect.bisect_left(admitted, end) - bisect.bisect_left(admitted, start)
        out.append(Phase(start, end, factor, config.limit_rate * factor, count))
    return tuple(out)


def recovery(phase: Phase, admitted: list[float], step: float = 0.05) -> float | None:
    """Seconds from the phase's start until the accepted rate, averaged over the next
    ``RECOVERY_WINDOW`` seconds, is at least ``RECOVERED`` of the phase's limit."""
    need = RECOVERED * phase.limit_rate * RECOVERY_WINDOW
    k = 0
    while (at := phase.start + k * step) + RECOVERY_WINDOW <= phase.end + 1e-9:
        end = at + RECOVERY_WINDOW
        if bisect.bisect_left(admitted, end) - bisect.bisect_left(admitted, at) >= need:
            return k * step
        k += 1
    return None


# --- The targets ------------------------------------------------------------------

# Accepted as a share of the limit at least, 429s as a share of the answers at most; and for
# ``halved``, back above ``RECOVERED`` of the new limit within this many seconds of each change.
TARGETS: dict[Scenario, tuple[float, float]] = {"10x": (0.90, 0.02), "at-limit": (0.95, 0.01)}
RECOVERY_TARGET = 10.0


class Figures(Protocol):
    """What a run reports that its target is judged on (``SimResult``, and the HTTP run's)."""

    @property
    def share(self) -> float: ...  # accepted as a share of the limit

    @property
    def share_429(self) -> float: ...  # share of the answers that were 429s

    @property
    def recovery(self) -> tuple[float | None, ...]: ...  # seconds, per limit change

    @property
    def worst_recovery(self) -> float | None: ...


def meets(result: Figures, scenario: Scenario) -> bool:
    """The issue's target for the scenario: the one rule the tests and both benchmarks use."""
    if scenario in TARGETS:
        least, most_429 = TARGETS[scenario]
        return result.share >= least and result.share_429 <= most_429
    worst = result.worst_recovery
    return worst is not None and worst <= RECOVERY_TARGET


# --- The run -----------------------------------------------------------------------------


@dataclass
class _Server:
    """The simulated Memory API: the limiter's verdict, then the service time."""

    config: SimConfig
    limiter: Limiter
    clock: LoopClock
    t0: float
    rng: random.Random
    admitted: list[float] = field(default_factory=list)  # seconds into the run
    throttled: int = 0

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """One request's (status, headers with lower-case names, body), in the emulator's
        order: the network, the limiter's verdict, the service time (holding a concurrency
        slot), the network back."""
        config, rng = self.config, self.rng
        await anyio.sleep(rng.uniform(*config.one_way))
        now = self.clock.now()
        verdict = self.limiter.admit(now)
        within = now - self.t0 < config.seconds
        if not verdict.admitted:
            self.throttled += within
            value = render_retry_after(verdict.retry_after, config.retry_after)
            await anyio.sleep(rng.uniform(*config.one_way))
            return 429, {} if value is None else {"retry-after": value}, _TOO_MANY
        if within:
            self.admitted.append(now - self.t0)
        try:
            await anyio.sleep(rng.uniform(*config.service))
        finally:  # a slot is freed even when the run ends mid-request
            self.limiter.release(self.clock.now())
        await anyio.sleep(rng.uniform(*config.one_way))
        return 202, {}, _ACCEPTED

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """The same answer through ``httpx.MockTransport``."""
        status, headers, body = await self.answer()
        return httpx.Response(status, headers=headers, content=body)


class _DirectWire:
    """MemoryClient's wire interface answered in-process: the retry loop, bucket, controller
    and slots are the client's own, only httpx's per-request work (two thirds of a run's real
    time) is skipped. ``wire="httpx"`` runs the same through MockTransport; a test holds the
    two to the same figures."""

    def __init__(self, server: _Server) -> None:
        self._server = server

    async def send(
        self,
        method: str,
        path: str,
        content: bytes | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, dict[str, str], bytes]:
        return await self._server.answer()

    async def close(self) -> None:
        return None


async def _run(config: SimConfig) -> SimResult:
    clock = LoopClock()
    t0 = clock.now()
    limit = config.limit
    inner = make_limiter(
        limit.shape,
        rate=None if limit.shape == "concurrency" else config.rate,
        burst=limit.burst,
        window_s=limit.window_s,
        max_in_flight=limit.max_in_flight,
        start=t0,
    )
    limiter = Scheduled(inner, config.schedule, start=t0)
    server = _Server(config, limiter, clock, t0, random.Random(config.seed))
    client = client_for(
        config.send,
        URL,
        CREDS,
        clock=clock,
        transport=httpx.MockTransport(server.handle),
        rng=random.Random(config.seed + 1),
    )
    body = {"traits": {"Loyalty": {"points": 1}}}

    async def worker(n: int) -> None:
        while True:
            await client.request("PATCH", f"/v1/Stores/{STORE}/Profiles/p{n}", json=body)

    async with client:
        if config.wire == "direct":
            await client._wire.close()  # type: ignore[union-attr]  # opened by __aenter__
            client._wire = _DirectWire(server)
        with anyio.move_on_after(config.seconds):
            async with anyio.create_task_group() as tg:
                for n in range(config.workers):
                    tg.start_soon(worker, n)
        view = limiter.view(t0 + config.seconds)
    split = phases(config, server.admitted)
    changes = tuple(recovery(p, server.admitted) for p in split[1:])
    adaptive = client.adaptive
    assert client.bucket is not None
    return SimResult(
        config=config,
        accepted=len(server.admitted),
        throttled=server.throttled,
        phases=split,
        recovery=changes,
        view=view,
        cuts=adaptive.cuts if adaptive is not None else 0,
        final_rate=client.bucket.rate,
        holds=adaptive.holds if adaptive is not None else 0,
        held=adaptive.held if adaptive is not None else 0.0,
    )


def simulate(config: SimConfig) -> SimResult:
    """One run on a fresh virtual-time loop."""
    return run_virtual(lambda: _run(config))


def with_seconds(config: SimConfig, seconds: float) -> SimConfig:
    return replace(config, seconds=seconds)


# --- What perfect pacing could get ---------------------------------------------------------


def paced_bound(config: SimConfig, max_refused: float, *, requests: int = 20_000) -> float:
    """The largest share of a rate limit that requests sent perfectly evenly could have
    admitted, with at most ``max_refused`` of them refused, under this run's network.

    A bound for any client, not a figure of ours: arrivals are the even sends plus the one-way
    delay drawn as ``_Server`` draws it (seeded), judged by the emulator's limiter, each refused
    request simply dropped (a client's retries only add arrivals). The send rate is searched by
    bisection; against a burst-1 token bucket this is what the network's jitter leaves of the
    limit (BENCHMARKS.md, "Throttling: every limiter shape").
    """
    limit = config.limit
    if limit.shape == "concurrency":
        raise ValueError("a bound by pacing is for the rate shapes")

    def trial(share: float) -> tuple[float, float]:
        rng = random.Random(config.seed)
        rate = share * config.rate
        arrivals = sorted(i / rate + rng.uniform(*config.one_way) for i in range(requests))
        limiter = make_limiter(
            limit.shape, rate=config.rate, burst=limit.burst, window_s=limit.window_s
        )
        admitted = sum(limiter.admit(at).admitted for at in arrivals)
        span = requests / rate
        return admitted / (config.rate * span), 1.0 - admitted / requests

    low, high = 0.0, 1.0
    best = 0.0
    for _ in range(14):
        middle = (low + high) / 2
        admitted, refused = trial(middle)
        if refused <= max_refused:
            best, low = max(best, admitted), middle
        else:
            high = middle
    top, refused = trial(1.0)
    return max(best, top) if refused <= max_refused else best
