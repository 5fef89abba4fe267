"""Which HTTP client carries backfill's PATCHes fastest, measured against the emulator.

The issue says httpx's own async pool is slow under concurrency and that httpx over the aiohttp
transport (``httpx-aiohttp``) is nearly as fast as raw aiohttp. This measures that here, against
the real ``backfill emulator`` (not a trivial server): N ``PATCH /v1/Stores/{store}/Profiles/{id}``
with ``{"traits": {"Loyalty": {...}}}`` bodies and HTTP Basic auth, at each concurrency, with:

==================  ================================================================================
``httpx``           ``httpx.AsyncClient`` with its default transport (httpcore's pool)
``httpx-aiohttp``   ``httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport(...))``
``aiohttp``         raw ``aiohttp.ClientSession``
``twilio``          the official ``twilio`` package, ``profiles(store, id).patch(...)``, in as many
                    threads as the concurrency, one ``Client`` per thread
``twilio-shared``   the same, the threads sharing one ``Client`` (the obvious way to write it;
                    for http:// requests pools 10 connections a host: more threads reconnect)
``backfill``        backfill's own ``MemoryClient`` (no token bucket), as ``backfill run`` uses it
==================  ================================================================================

The async variants run ``concurrency`` tasks over one client (connection pool of that size) on
the default asyncio loop, or on uvloop with ``--loop uvloop`` (as ``backfill run`` does). The
emulator runs pinned to one core with limits and faults off (``taskset -c 0``); each measurement
is a fresh client process pinned to the other core (``taskset -c 1``) that sends a warm-up (not
timed, opens the connections), then the measured N, and reports its wall time and its CPU time
(``time.process_time``: all threads) over the measured part, with the emulator's CPU time and
how busy both cores were over the same stretch (``/proc``; the machine is shared, so a core's
busy time beyond our process's is someone else's load). Every (concurrency, variant) pair runs
once per repeat, the variants alternated and their order rotated each repeat, so ratios are
taken under the same machine conditions. Each measurement is checked against the server's own
count (``/__emulator__/stats``, reset before it): every request must have been answered 202::

    python bench/transport.py         # 3,000 PATCHes, concurrency 4 and 16, 3 repeats
    python bench/transport.py --requests 5000 --repeat 5 --concurrency 16
    python bench/transport.py --variants httpx,httpx-aiohttp
    python bench/transport.py --variants aiohttp,backfill --concurrency 16 --loop uvloop

bench/run_throughput.py reuses the emulator launcher and the twilio thread loop from here.
Exits 1 if any request was not answered 202, 2 if the benchmark could not run. Results:
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from common import add_cores, check_cores
from emulator_patch import (
    CLOCK_TICKS,
    PASSWORD,
    STORE_ID,
    TIERS,
    USERNAME,
    BenchError,
    _wait_listening,
    core_times,
    process_cpu,
    profile_id,
    smoke_test,
    stats,
    stop,
    write_seed,
)

HERE: Final = Path(__file__).resolve()
VARIANTS: Final = ("httpx", "httpx-aiohttp", "aiohttp", "twilio", "twilio-shared", "backfill")
BASELINE: Final = "httpx"  # ratios are to this variant, same concurrency, same repeat
TIMEOUT: Final = 30.0


# ------------------------------------------------------------------ the emulator, for both scripts


def start_emulator(
    seed: Path, cpu: int, log: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """``backfill emulator --port 0 --seed SEED [extra...]`` pinned to ``cpu``; wait until it
    listens and return it with its URL (``emulator_patch.start_emulator`` takes no switches)."""
    emulator = [sys.executable, "-m", "backfill", "emulator", "--port", "0", "--seed", str(seed)]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *emulator, *extra], stdout=subprocess.PIPE, stderr=err
        )
    try:
        return proc, _wait_listening(proc, log)
    except BaseException:
        stop(proc)
        raise


@contextlib.contextmanager
def emulator(
    seed: Path, cpu: int, log: Path, extra: Sequence[str] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The emulator for a ``with`` block; it is always stopped at the end."""
    proc, url = start_emulator(seed, cpu, log, extra)
    try:
        yield proc, url
    finally:
        stop(proc)


def pin(cpu: int) -> list[str]:
    """The command prefix that runs a process on one core."""
    return ["taskset", "-c", str(cpu)]


# ------------------------------------------------------------------ the requests


def body(i: int) -> dict[str, Any]:
    """The ``i``-th PATCH body: two Loyalty traits that pass the seed's validation rules."""
    return {"traits": {"Loyalty": {"points": (i * 7) % 100_000, "tier": TIERS[i % 3]}}}


def path(i: int, profiles: int) -> str:
    """The ``i``-th PATCH path, round-robin over the seeded profiles."""
    return f"/v1/Stores/{STORE_ID}/Profiles/{profile_id(i % profiles)}"


@dataclass(frozen=True)
class Spec:
    """One measurement: where, how many, how concurrently."""

    url: str
    profiles: int
    warmup: int  # sent first, not timed: opens the connections
    requests: int  # timed
    concurrency: int
    emulator_pid: int | None = None  # to read the emulator's CPU time over the timed part
    cores: tuple[int, int] = (0, 1)  # the emulator's core, the client's core


@dataclass(frozen=True)
class Measured:
    """One timed stretch in a client process."""

    wall: float
    cpu: float  # this process's CPU seconds (user + system, all threads)
    emulator_cpu: float  # the emulator's CPU time over the same stretch, share of one core
    core_busy: tuple[float, float]  # emulator's, client's core busy (anyone's work), share
    statuses: Counter[str]


class Clocks:
    """Wall time, this process's CPU time, the emulator's CPU time and how busy both cores
    were (the machine is shared: busy minus our own processes is someone else's load), from
    construction on."""

    def __init__(self, emulator_pid: int | None, cores: tuple[int, int]) -> None:
        self._pid = emulator_pid
        self._cores = cores
        self._start = self._now()

    def _now(self) -> tuple[float, float, float, float, float]:
        emu = process_cpu(self._pid) if self._pid else 0.0
        busy0, busy1 = (core_times(c)[0] / CLOCK_TICKS for c in self._cores)
        return time.perf_counter(), time.process_time(), emu, busy0, busy1

    def stop(self, statuses: Counter[str]) -> Measured:
        (t0, c0, e0, a0, b0), (t1, c1, e1, a1, b1) = self._start, self._now()
        wall = t1 - t0
        busy = ((a1 - a0) / wall, (b1 - b0) / wall)
        return Measured(wall, c1 - c0, (e1 - e0) / wall, busy, statuses)


SendOne = Callable[[int], Awaitable[str]]


async def _drive(start: int, count: int, concurrency: int, send: SendOne) -> Counter[str]:
    """``concurrency`` tasks send requests ``start .. start + count - 1`` between them."""
    statuses: Counter[str] = Counter()
    numbers = iter(range(start, start + count))

    async def worker() -> None:
        for i in numbers:  # one shared iterator: each number is taken once
            statuses[await send(i)] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def _measure(spec: Spec, send: SendOne) -> Measured:
    await _drive(0, spec.warmup, spec.concurrency, send)
    clocks = Clocks(spec.emulator_pid, spec.cores)
    statuses = await _drive(spec.warmup, spec.requests, spec.concurrency, send)
    return clocks.stop(statuses)


async def run_httpx(spec: Spec, aiohttp: bool) -> Measured:
    """httpx.AsyncClient, over its own pool or over httpx-aiohttp's AiohttpTransport; the
    same limits (a pool of ``concurrency`` connections) either way."""
    c = spec.concurrency
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    transport: httpx.AsyncBaseTransport | None = None
    if aiohttp:
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(
        base_url=spec.url,
        auth=httpx.BasicAuth(USERNAME, PASSWORD),
        limits=limits,
        timeout=TIMEOUT,
        transport=transport,
    ) as client:

        async def send(i: int) -> str:
            response = await client.patch(path(i, spec.profiles), json=body(i))
            return str(response.status_code)

        return await _measure(spec, send)


async def run_aiohttp(spec: Spec) -> Measured:
    """Raw aiohttp: one ClientSession, a connector of ``concurrency`` connections."""
    import aiohttp

    async with aiohttp.ClientSession(
        base_url=spec.url,
        auth=aiohttp.BasicAuth(USERNAME, PASSWORD),
        connector=aiohttp.TCPConnector(limit=spec.concurrency),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT),
    ) as session:

        async def send(i: int) -> str:
            async with session.patch(path(i, spec.profiles), json=body(i)) as response:
                await response.read()
                return str(response.status)

        return await _measure(spec, send)


async def run_backfill(spec: Spec) -> Measured:
    """backfill's MemoryClient with no token bucket: its default transport, auth, retries."""
    from backfill.transport.client import Credentials, MemoryClient

    credentials = Credentials(USERNAME, PASSWORD)
    async with MemoryClient(spec.url, credentials, concurrency=spec.concurrency) as client:

        async def send(i: int) -> str:
            reply = await client.request("PATCH", path(i, spec.profiles), json=body(i))
            return str(reply.status)

        return await _measure(spec, send)


def twilio_client(url: str) -> Any:
    """An official ``twilio`` client whose Memory domain is the emulator at ``url``."""
    from twilio.rest import Client

    client = Client(USERNAME, PASSWORD)
    client.memory.base_url = url
    return client


def twilio_patch_all(
    url: str,
    jobs: Sequence[tuple[str, dict[str, Any]]],
    threads: int,
    *,
    shared: bool = False,
    warmup: int = 0,
    emulator_pid: int | None = None,
    cores: tuple[int, int] = (0, 1),
) -> Measured:
    """PATCH every ``(profile_id, body)`` in ``jobs`` with the official twilio package the
    obvious way: ``threads`` threads, each looping over
    ``client.memory.v1.profiles(store, id).patch(ProfileList.ProfilePatch(body))``.

    With ``shared`` the threads share one ``Client``; otherwise each makes its own (its own
    requests Session: one connection per thread). The first ``warmup`` jobs are split between
    the threads and sent before the clock starts, so every thread is connected when it does;
    the rest are timed. Answers are counted as ``"2xx"`` or the ``TwilioRestException``'s
    HTTP status, for the timed part only.
    """
    from twilio.base.exceptions import TwilioRestException
    from twilio.rest.memory.v1.profile import ProfileList

    one = twilio_client(url) if shared else None
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    lock = threading.Lock()
    timed = iter(range(warmup, len(jobs)))
    statuses: Counter[str] = Counter()

    def patch(api: Any, i: int, into: Counter[str]) -> None:
        profile, payload = jobs[i]
        try:
            api.profiles(STORE_ID, profile).patch(ProfileList.ProfilePatch(payload))
            into["2xx"] += 1
        except TwilioRestException as exc:
            into[str(exc.status)] += 1

    def loop(k: int) -> None:
        api = (one if one is not None else twilio_client(url)).memory.v1
        try:
            for i in range(k, warmup, threads):  # this thread's share of the warm-up
                patch(api, i, Counter())
        finally:
            ready.wait()
        go.wait()
        mine: Counter[str] = Counter()
        while True:
            with lock:
                n = next(timed, None)
            if n is None:
                break
            patch(api, n, mine)
        with lock:
            statuses.update(mine)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(loop, k) for k in range(threads)]
        with contextlib.suppress(threading.BrokenBarrierError):  # a thread failed: see below
            ready.wait(timeout=600)
        clocks = Clocks(emulator_pid, cores)
        go.set()
        for future in futures:
            future.result()
        return clocks.stop(statuses)


def run_on(loop: str, main: Coroutine[Any, Any, Measured]) -> Measured:
    """``main`` on the default asyncio loop or on uvloop (``backfill run``'s loop)."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def worker(variant: str, spec: Spec, loop: str = "asyncio") -> Measured:
    """One measurement, in this (client) process."""
    if variant in ("httpx", "httpx-aiohttp"):
        return run_on(loop, run_httpx(spec, aiohttp=variant == "httpx-aiohttp"))
    if variant == "aiohttp":
        return run_on(loop, run_aiohttp(spec))
    if variant == "backfill":
        return run_on(loop, run_backfill(spec))
    if variant in ("twilio", "twilio-shared"):
        jobs = [
            (profile_id(i % spec.profiles), body(i)) for i in range(spec.warmup + spec.requests)
        ]
        return twilio_patch_all(
            spec.url, jobs, spec.concurrency, shared=variant == "twilio-shared",
            warmup=spec.warmup, emulator_pid=spec.emulator_pid, cores=spec.cores,
        )  # fmt: skip
    raise BenchError(f"unknown variant {variant!r}")


# ------------------------------------------------------------------ the parent


@dataclass(frozen=True)
class Row:
    repeat: int
    concurrency: int
    variant: str
    requests: int
    wall: float
    cpu: float
    emulator_cpu: float
    core_busy: tuple[float, float]  # the emulator's core, the client's core
    server_202: int
    server_other: dict[str, int]  # anything the server answered or counted that was not a 202

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_ms(self) -> float:
        return 1000.0 * self.cpu / self.requests

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.wall


def measure(
    args: argparse.Namespace, url: str, emulator_pid: int, http: httpx.Client, rep: int,
    concurrency: int, variant: str,
) -> Row:  # fmt: skip
    """Run one measurement in a fresh client process and check it against the server's count."""
    stats(http, url, reset=True)
    cmd = [
        *pin(args.client_cpu), sys.executable, str(HERE), "--worker", variant, "--url", url,
        "--profiles", str(args.profiles), "--warmup", str(args.warmup),
        "--requests", str(args.requests), "--concurrency", str(concurrency),
        "--emulator-pid", str(emulator_pid),
        "--server-cpu", str(args.server_cpu), "--client-cpu", str(args.client_cpu),
        "--loop", args.loop,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
    seen = stats(http, url)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise BenchError(f"{variant} worker failed (exit {done.returncode}):\n{done.stderr}")
    result = json.loads(lines[-1])
    expected = args.warmup + args.requests
    ok = seen["byOperation"].get("profiles.patch", {}).get("202", 0)
    other = {k: v for k, v in seen["byStatus"].items() if k != "202"}
    if ok != expected or seen["requests"] != expected:
        other["missing"] = expected - ok
    return Row(rep, concurrency, variant, args.requests, result["wall"], result["cpu"],
               result["emulator_cpu"], tuple(result["core_busy"]), ok, other)  # fmt: skip


TABLE: Final = (
    "| conc. | variant | req/s | x httpx | client CPU ms/req | client CPU (its core busy) "
    "| emulator CPU (its core busy) | server 202 | not 202 |\n"
    "|------:|---------|------:|--------:|------------------:|---------------------------:"
    "|-----------------------------:|-----------:|--------:|"
)


def print_table(rows: Sequence[Row], title: str) -> None:
    """One repeat: every measurement, with its ratio to the baseline of the same repeat."""
    print(f"\n{title}\n{TABLE}")
    for row in rows:
        base = [r for r in rows if r.variant == BASELINE and r.concurrency == row.concurrency]
        ratio = f"{row.rate / base[0].rate:.2f}" if base else "-"
        bad = sum(row.server_other.values())
        note = f" {row.server_other}" if bad else ""
        print(
            f"| {row.concurrency} | {row.variant} | {row.rate:,.0f} | {ratio} | "
            f"{row.cpu_ms:.2f} | {row.cpu_share:.0%} ({row.core_busy[1]:.0%}) | "
            f"{row.emulator_cpu:.0%} ({row.core_busy[0]:.0%}) | "
            f"{row.server_202:,} | {bad}{note} |"
        )


def summarize(rows: Sequence[Row], variants: Sequence[str], levels: Sequence[int]) -> None:
    """Median over repeats of req/s, of the per-repeat ratios, and of CPU per request."""
    print("\nmedian over repeats (ratios: median of the per-repeat ratios)")
    print("| conc. | variant | req/s | x httpx | x backfill | client CPU ms/req |")
    print("|------:|---------|------:|--------:|-----------:|------------------:|")

    def ratio(mine: list[Row], to: str) -> str:
        values = [
            r.rate / b.rate
            for r in mine
            for b in rows
            if b.variant == to and b.concurrency == r.concurrency and b.repeat == r.repeat
        ]
        return f"{statistics.median(values):.2f}" if values else "-"

    for c in levels:
        for v in variants:
            mine = [r for r in rows if r.variant == v and r.concurrency == c]
            if mine:
                rate = statistics.median(r.rate for r in mine)
                cpu = statistics.median(r.cpu_ms for r in mine)
                print(f"| {c} | {v} | {rate:,.0f} | {ratio(mine, BASELINE)} | "
                      f"{ratio(mine, 'backfill')} | {cpu:.2f} |")  # fmt: skip


def bench(args: argparse.Namespace, work: Path) -> int:
    seed = work / "seed.json"
    write_seed(seed, args.profiles)
    os.sched_setaffinity(0, {args.client_cpu})
    rows: list[Row] = []
    print(
        f"transport benchmark: {args.requests:,} measured PATCHes (+{args.warmup} warm-up) per "
        f"measurement, {args.profiles:,} profiles, concurrency {args.concurrency}, "
        f"{args.repeat} repeat(s); emulator on core {args.server_cpu}, clients on core "
        f"{args.client_cpu}"
    )
    with (
        emulator(seed, args.server_cpu, work / "emulator.log") as (proc, url),
        httpx.Client(timeout=30.0) as http,
    ):
        smoke_test(http, url)
        for rep in range(1, args.repeat + 1):
            shift = (rep - 1) % len(args.variants)
            order = args.variants[shift:] + args.variants[:shift]
            mine: list[Row] = []
            for c in args.concurrency:
                for variant in order:
                    row = measure(args, url, proc.pid, http, rep, c, variant)
                    mine.append(row)
                    print(f"  repeat {rep} c={c} {variant}: {row.rate:,.0f} req/s", flush=True)
            rows += mine
            print_table(mine, f"repeat {rep} (order: {', '.join(order)})")
    summarize(rows, args.variants, args.concurrency)
    bad = [r for r in rows if r.server_other]
    if bad:
        print(f"FAIL: {len(bad)} measurement(s) had answers other than 202", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="measured PATCHes (3000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up PATCHes (200)")
    parser.add_argument(
        "--concurrency", default="4,16", help="comma-separated concurrency levels (4,16)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (3)")
    parser.add_argument("--profiles", type=int, default=1000, help="profiles seeded (1000)")
    add_cores(parser, "the clients")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the async variants (asyncio; backfill run uses uvloop)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    except ValueError:
        parser.error("--concurrency takes comma-separated whole numbers")
    args.variants = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if min(args.requests, args.repeat, args.profiles, *args.concurrency) < 1 or args.warmup < 0:
        parser.error("--requests, --repeat, --profiles and --concurrency must be positive")
    check_cores(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = Spec(args.url, args.profiles, args.warmup, args.requests, args.concurrency[0],
                    args.emulator_pid, (args.server_cpu, args.client_cpu))  # fmt: skip
        m = worker(args.worker, spec, args.loop)
        print(json.dumps({"wall": m.wall, "cpu": m.cpu, "emulator_cpu": m.emulator_cpu,
                          "core_busy": m.core_busy,
                          "statuses": dict(m.statuses)}))  # fmt: skip
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
            return bench(args, Path(tmp))
    except BenchError as exc:
        print(f"transport: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
