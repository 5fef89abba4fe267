"""How the client holds every server limiter shape over HTTP, beside the simulation (issue 13).

The cells of bench/throttle_shapes.py, run for real: for each shape of ``throttle_sim.LIMITS``,
``Retry-After`` style and scenario, a fresh ``backfill emulator`` subprocess on loopback (pinned
to one core, this process to another) with the matching switches - ``--limiter``, ``--rate 100``,
``--burst``, ``--window-s``, ``--max-in-flight 8``, ``--retry-after``, and for ``halved``
``--limit-schedule 20:0.5,40:1`` - seeded with one store of profiles. 16 worker tasks PATCH
profiles for ``--seconds`` through ONE client built by ``client_for`` from the ``Send`` that
``scenario_config`` builds (what ``backfill run`` sends, on uvloop as ``run`` does), and the same
cell is simulated (``simulate(scenario_config(...))``) for the columns beside it::

    python bench/throttle_http.py                       # 6 shapes x 3 scenarios x 60 s (~20 min)
    python bench/throttle_http.py --seconds 10 --shapes token-b1,concurrency-8 --scenarios 10x
    python bench/throttle_http.py --styles whole,fraction --seed 2
    python bench/throttle_http.py --jitter --seconds 30  # loopback's one-way delay (below)

How a run is measured. The stats are cleared (``DELETE /__emulator__/stats``: counters afresh and
the limit schedule restarted) right before the workers start; that instant is the run's start,
on ``time.monotonic()``, which the emulator's limiter reads too (one clock system-wide on Linux),
so the schedule's steps fall within a millisecond of where the simulation puts them. The stats
are read again at each step and at the end, while the workers still run:

- **accepted %** = the limiter's own count of admitted requests over each phase, as a share of
  the limit in force over the limiter's own elapsed time (phases % per phase); the client's
  count of 202 answers is beside it as a cross-check. **429 %** = the limiter's refusals over
  everything it judged (the client's ``stats.throttled / stats.sent`` beside it);
  **used/offered** = the limiter's utilisation, as in the simulation's table.
- **recovery** uses ``throttle_sim.phases`` and ``recovery`` unchanged, on the client-side
  monotonic time of every 202 answer from the run's start. That stands for the server's
  admission time (what the simulation records) late by the service time and the trip back: about
  a millisecond for the rate shapes, the 75 ms service for the concurrency limiter - each
  instant shifts by that much, far below the 2 s window a recovery is averaged over and the 0.05
  s step it is searched in.
- The **limit** of the rate shapes is the configured 100/s (times the schedule's factor). For the
  concurrency limiter it is ``SimConfig.limit_rate`` - what 8 in flight carry when each is held
  for the service time plus two one-way trips of the simulation's network (0.5-4 ms uniform, 4.5
  ms both ways on average) - with the service time the emulator actually applied: the limiter's
  occupied slot-seconds over its admitted requests (``--latency-ms`` plus the emulator's own
  work). The emulator's ``--latency-ms L`` sleeps ``L * uniform(0.5, 1.5)``; at L = 75.5 ms that
  is 37.8-113.3 ms against the simulation's ``SLOW`` 35.5-115.5 ms: the same mean, a range 5 %
  narrower. Loopback's round trip is a fraction of a millisecond (``--jitter``), not 4.5 ms, so 8
  in flight can carry about 5 % more than this limit: a concurrency row can read above 100 %.

Where the emulator is not the simulation's server (described, not changed here): its fixed
windows start with the emulator, not at the ``DELETE`` that restarts the schedule, so a limit
change falls somewhere inside a window (a boundary in the simulation); its concurrency limiter
answers a refusal after the added latency (the simulation's after one network trip); and its
clock is a shared machine's, whose timers and scheduling are late now and then.

``--jitter`` measures what the simulation models as its network (each way uniform 0.5-4 ms):
the one-way delay from the client's send to the server handler's entry on loopback, under this
benchmark's load - 100 requests/s paced (``--jitter-rate``), a pool of 16 keep-alive
connections, the client built by ``client_for`` (aiohttp, as ``backfill run`` sends), on uvloop.
Each request carries ``time.monotonic()`` read just before ``client.request`` in a header; the
server, a tiny ASGI app in a subprocess of this script on the emulator's own stack (uvicorn,
httptools, uvloop; pinned to the other core), reads the clock on entry - where the emulator's
gate takes its verdict - and so measures a floor of the emulator's delay (the emulator's
per-request work is not there). Reported: the delay's p50/p90/p99/max, the distribution of
(arrival gap - send gap) for consecutive requests, how exactly the client's loop paced them, and
what that jitter does to a burst-1 token bucket at 100/s fed a perfect pace (the measured delays
added to ideal send times), each beside the simulation's model.

Targets (``throttle_sim.meets``) are reported, not enforced: 10x >= 90 % of the limit and <= 2
% 429s, at-limit >= 95 % and <= 1 %, halved back above 90 % within 10 s of each change. The
concurrency limiter sends no ``Retry-After`` whatever the style, so it runs once. Exits 1 if any
request was answered other than 202 or 429 (the benchmark itself is broken then), 2 if it could
not run. Results: BENCHMARKS.md, "Throttling over HTTP: every limiter shape".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
from emulator_patch import (
    PASSWORD,
    STORE_ID,
    USERNAME,
    BenchError,
    _wait_listening,
    profile_id,
    smoke_test,
    stop,
    write_seed,
)
from throttle_common import meets, phases_text, recovery_text, target_text
from transport import emulator, pin

from backfill.aio import run_async
from backfill.config import Send
from backfill.emulator.limits import RETRY_AFTER_STYLES, TokenBucket
from backfill.transport.client import Credentials
from backfill.transport.connection import client_for
from throttle_sim import (
    LIMITS,
    NETWORK,
    SCENARIOS,
    SLOW,
    Phase,
    Scenario,
    SimConfig,
    SimResult,
    phases,
    recovery,
    scenario_config,
    simulate,
)

HERE: Final = Path(__file__).resolve()
CREDENTIALS: Final = Credentials(USERNAME, PASSWORD)
BODY: Final = {"traits": {"Loyalty": {"points": 1}}}  # the simulation's PATCH body
LATENCY_MS: Final = sum(SLOW) / 2 * 1000  # --latency-ms for the concurrency limiter: 75.5
QUIET_S: Final = 1.1  # after the smoke PATCH, so a 1 s window has forgotten it
STATS: Final = "/__emulator__/stats"

TABLE: Final = (
    "| shape | Retry-After | scenario | limit /s | HTTP accepted % | HTTP 429 % | "
    "HTTP recovery s | HTTP phases % | used/offered | admitted (client 202) | client 429 % | "
    "final rate /s | sim accepted % | sim 429 % | sim recovery s | sim phases % | "
    "HTTP target | sim target |\n"
    "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
)


# ------------------------------------------------------------------ one HTTP run


@dataclass(frozen=True)
class HttpResult:
    """One cell over HTTP, in the simulation's terms (``throttle_sim.Figures``)."""

    config: SimConfig  # as run; for concurrency ``service`` is the hold the emulator applied
    phases: tuple[Phase, ...]  # the limiter's own counts, over its own elapsed time
    client_phases: tuple[Phase, ...]  # from the client's 202 times (what recovery reads)
    recovery: tuple[float | None, ...]
    admitted: int  # the limiter's count
    refused: int  # the limiter's 429s
    used: float
    offered: float
    client_accepted: int  # 202 answers the client saw within the run
    client_sent: int  # HTTP attempts, retries included
    client_throttled: int
    unexpected: dict[str, int]  # answers that are neither 202 nor 429, client's and server's
    held_s: float | None  # concurrency: the limiter's slot-seconds per admitted request
    latency_s: float | None  # concurrency: the mean --latency-ms draw (the emulator's stats)
    final_rate: float  # the client bucket's rate at the end

    @property
    def share(self) -> float:
        offered = sum(p.limit_rate * (p.end - p.start) for p in self.phases)
        return self.admitted / offered if offered else 0.0

    @property
    def share_429(self) -> float:
        return self.refused / max(1, self.admitted + self.refused)

    @property
    def client_share_429(self) -> float:
        return self.client_throttled / max(1, self.client_sent)

    @property
    def worst_recovery(self) -> float | None:
        if any(r is None for r in self.recovery):
            return None
        return max((r for r in self.recovery if r is not None), default=0.0)


def switches(config: SimConfig) -> list[str]:
    """The ``backfill emulator`` switches that serve ``config``'s limit."""
    limit = config.limit
    out = ["--limiter", limit.shape, "--retry-after", config.retry_after]
    out += ["--random-seed", str(config.seed)]
    if limit.shape == "concurrency":
        assert limit.max_in_flight is not None
        out += ["--max-in-flight", str(limit.max_in_flight), "--latency-ms", f"{LATENCY_MS:g}"]
    else:
        out += ["--rate", f"{config.rate:g}"]
        if limit.burst is not None:
            out += ["--burst", str(int(limit.burst))]
        if limit.window_s is not None:
            out += ["--window-s", f"{limit.window_s:g}"]
    if config.schedule:
        out += ["--limit-schedule", ",".join(f"{at:g}:{f:g}" for at, f in config.schedule)]
    return out


@dataclass(frozen=True)
class Observed:
    """What one drive saw: the stats at each schedule step and at the end, the client's side."""

    looks: list[dict[str, Any]]
    accepted: list[float]  # client-side seconds from the run's start of each 202
    finals: Counter[str]  # final replies that were not 202, by status
    sent: int
    throttled: int
    final_rate: float


async def drive(url: str, config: SimConfig) -> Observed:
    """16 workers PATCHing through one ``client_for`` client for ``config.seconds``."""
    client = client_for(config.send, url, CREDENTIALS)
    ends = [at for at, _ in config.schedule if at < config.seconds] + [config.seconds]
    accepted: list[float] = []
    finals: Counter[str] = Counter()
    looks: list[dict[str, Any]] = []
    async with client, httpx.AsyncClient(base_url=url, timeout=30.0) as control:
        (await control.delete(STATS)).raise_for_status()
        t0 = time.monotonic()

        async def worker(n: int) -> None:
            path = f"/v1/Stores/{STORE_ID}/Profiles/{profile_id(n)}"
            while True:
                reply = await client.request("PATCH", path, json=BODY)
                if reply.status == 202:
                    accepted.append(time.monotonic() - t0)
                else:
                    finals[str(reply.status)] += 1

        async with anyio.create_task_group() as tg:
            for n in range(config.workers):
                tg.start_soon(worker, n)
            for end in ends:
                await anyio.sleep(max(0.0, t0 + end - time.monotonic()))
                response = await control.get(STATS)
                response.raise_for_status()
                looks.append(response.json())
            sent, throttled = client.stats.sent, client.stats.throttled
            assert client.bucket is not None
            final_rate = client.bucket.rate
            tg.cancel_scope.cancel()
    return Observed(looks, accepted, finals, sent, throttled, final_rate)


def measure(config: SimConfig, seen: Observed) -> HttpResult:
    """The HTTP run's figures, defined as the simulation defines its own."""
    limiter = [look["limiter"] for look in seen.looks]
    last, stats = limiter[-1], seen.looks[-1]
    held = latency = None
    if config.limit.shape == "concurrency":
        held = last["used"] / max(1, last["admitted"])
        drawn = stats["latency"]
        latency = drawn["seconds"] / max(1, sum(drawn["byOperation"].values()))
        config = replace(config, service=(held, held))  # only the mean enters limit_rate
    factors = [1.0] + [f for at, f in config.schedule if at < config.seconds]
    own: list[Phase] = []
    start, before = 0.0, 0
    for factor, view in zip(factors, limiter, strict=True):
        own.append(
            Phase(start, view["seconds"], factor, config.limit_rate * factor,
                  view["admitted"] - before)
        )  # fmt: skip
        start, before = view["seconds"], view["admitted"]
    times = sorted(t for t in seen.accepted if t < config.seconds)
    split = phases(config, times)
    unexpected = {f"client {k}": v for k, v in seen.finals.items() if k != "429"}
    unexpected |= {
        f"server {k}": v for k, v in stats["byStatus"].items() if k not in ("202", "429")
    }
    return HttpResult(
        config=config,
        phases=tuple(own),
        client_phases=split,
        recovery=tuple(recovery(p, times) for p in split[1:]),
        admitted=last["admitted"],
        refused=last["refusedRequests"],
        used=last["used"],
        offered=last["offered"],
        client_accepted=len(times),
        client_sent=seen.sent,
        client_throttled=seen.throttled,
        unexpected=unexpected,
        held_s=held,
        latency_s=latency,
        final_rate=seen.final_rate,
    )


def run_cell(config: SimConfig, work: Path, cores: Cores) -> HttpResult:
    """One cell on a fresh emulator (a fresh limiter, as each simulation starts one)."""
    seed = work / "seed.json"
    write_seed(seed, config.workers)
    log = work / "emulator.log"
    with emulator(seed, cores.server, log, switches(config)) as (_, url):
        with httpx.Client(timeout=30.0) as http:
            smoke_test(http, url)  # a wrong seed or route fails loudly before any load
        time.sleep(QUIET_S)
        return measure(config, run_async(lambda: drive(url, config)))


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Cores:
    server: int
    client: int | None  # None: one core only, this process is not pinned


def pick_cores() -> Cores:
    """The emulator on the first core this process may use, the client on the second."""
    mine = sorted(os.sched_getaffinity(0))
    return Cores(mine[0], mine[1] if len(mine) > 1 else None)


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """This process on ``cpu`` for the block (off the emulator's core), then as it was."""
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def row(shape: str, style: str, scenario: Scenario, http: HttpResult, sim: SimResult) -> str:
    return (
        f"| {shape} | {style} | {scenario} | {http.config.limit_rate:.1f} | "
        f"{http.share * 100:.1f} | {http.share_429 * 100:.2f} | {recovery_text(http)} | "
        f"{phases_text(http.phases)} | {http.used / http.offered:.3f} | "
        f"{http.admitted:,} ({http.client_accepted:,}) | {http.client_share_429 * 100:.2f} | "
        f"{http.final_rate:.1f} | {sim.share * 100:.1f} | {sim.share_429 * 100:.2f} | "
        f"{recovery_text(sim)} | {phases_text(sim.phases)} | "
        f"{target_text(meets(http, scenario))} | {target_text(meets(sim, scenario))} |"
    )


def table(args: argparse.Namespace) -> int:
    cores = pick_cores()
    print(
        f"{len(args.shapes)} shape(s) x {len(args.scenarios)} scenario(s), styles "
        f"{','.join(args.styles)}, {args.seconds:g} s a run, seed {args.seed}; emulator on core "
        f"{cores.server}, client on core {cores.client}; load average "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    print(f"\n{TABLE}", flush=True)
    notes: list[str] = []
    bad = met = total = 0
    started = time.perf_counter()
    with pinned(cores.client), tempfile.TemporaryDirectory(prefix="throttle-http-") as tmp:
        for shape in args.shapes:
            concurrent = LIMITS[shape].shape == "concurrency"
            for style in args.styles[:1] if concurrent else args.styles:
                shown = "none (never sent)" if concurrent else style
                for scenario in args.scenarios:
                    config = scenario_config(
                        shape, scenario, retry_after=style, seconds=args.seconds, seed=args.seed
                    )
                    http = run_cell(config, Path(tmp), cores)
                    sim = simulate(config)
                    print(row(shape, shown, scenario, http, sim), flush=True)
                    met += meets(http, scenario)
                    total += 1
                    if http.held_s is not None and http.latency_s is not None:
                        notes.append(
                            f"{shape} {scenario}: held {http.held_s * 1000:.1f} ms a request "
                            f"(latency drawn {http.latency_s * 1000:.1f} ms), in flight "
                            f"{http.used / http.offered * 8:.2f} of 8 on average"
                        )
                    if http.unexpected:
                        bad += 1
                        notes.append(f"{shape} {shown} {scenario}: UNEXPECTED {http.unexpected}")
    elapsed = time.perf_counter() - started
    print(
        f"\n{met} of {total} HTTP rows meet their target; {elapsed:.0f} s of real time; load "
        f"average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for note in notes:
        print(f"- {note}")
    if bad:
        print(f"FAIL: {bad} run(s) had answers other than 202 and 429", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ --jitter


def jitter_server() -> None:
    """A subprocess: record (seq, sent, arrival) on each request's entry, list them at GET
    /results; on uvicorn with httptools and uvloop, as the emulator is served."""
    import uvicorn

    records: list[tuple[int, float, float]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        arrival = time.monotonic()  # first: where the emulator's gate takes its verdict
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        if scope["path"] == "/results":
            body = json.dumps(records).encode()
            status = 200
        else:
            records.append(
                (int(headers.get(b"x-seq", b"-1")), float(headers.get(b"x-sent", b"nan")), arrival)
            )
            body, status = b'{"status":"accepted"}', 202
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    config = uvicorn.Config(
        app, http="httptools", lifespan="off", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag
                await anyio.sleep(0.01)
            print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)

    run_async(main)


@dataclass(frozen=True)
class Paced:
    sent: list[float]  # the client's stamp, by sequence number
    arrival: list[float]  # the handler's entry, same clock
    failed: int


async def pace(url: str, rate: float, seconds: float) -> Paced:
    """``rate`` requests a second, each started on time whatever the others do (open loop),
    through a pool of 16 keep-alive connections; the client's bucket is out of the way."""
    client = client_for(Send(rate=1e6, concurrency=16, adaptive=False), url, CREDENTIALS)
    count = int(rate * seconds)
    failed = 0
    async with client:

        async def one(seq: int) -> None:
            nonlocal failed
            sent = time.monotonic()
            headers = {"X-Sent": repr(sent), "X-Seq": str(seq)}
            reply = await client.request("PATCH", "/v1/jitter", json=BODY, headers=headers)
            failed += reply.status != 202

        async with anyio.create_task_group() as tg:  # open every connection of the pool
            for _ in range(16):
                tg.start_soon(one, -1)
        t0 = time.monotonic() + 0.1
        async with anyio.create_task_group() as tg:
            for seq in range(count):
                await anyio.sleep(max(0.0, t0 + seq / rate - time.monotonic()))
                tg.start_soon(one, seq)
        async with httpx.AsyncClient(timeout=30.0) as http:
            records = (await http.get(url + "/results")).json()
    timed = sorted((seq, sent, arrival) for seq, sent, arrival in records if seq >= 0)
    if [seq for seq, _, _ in timed] != list(range(count)):
        raise BenchError(f"the server saw {len(timed)} of {count} paced requests")
    return Paced([s for _, s, _ in timed], [a for _, _, a in timed], failed)


def quantiles(values: Sequence[float], points: Sequence[float]) -> list[float]:
    """Nearest-rank percentiles (0-100) of ``values``."""
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]
            for p in points]  # fmt: skip


def refused_share(delays: Sequence[float], pace_rate: float, limit: float = 100.0) -> float:
    """What a burst-1 token bucket at ``limit``/s refuses of a perfect ``pace_rate``/s send whose
    arrivals are late by ``delays`` (open loop: a refusal is not re-sent)."""
    arrivals = [k / pace_rate + d for k, d in enumerate(delays)]
    bucket = TokenBucket(limit, 1, start=arrivals[0] - 1.0)
    refused = sum(not bucket.admit(a).admitted for a in arrivals)
    return refused / len(arrivals)


def jitter(args: argparse.Namespace) -> int:
    cores = pick_cores()
    with tempfile.TemporaryDirectory(prefix="throttle-jitter-") as tmp, pinned(cores.client):
        log = Path(tmp) / "server.log"
        cmd = [*pin(cores.server), sys.executable, str(HERE), "--jitter-server"]
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            url = _wait_listening(proc, log)
            load = os.getloadavg()
            paced = run_async(lambda: pace(url, args.jitter_rate, args.seconds))
        finally:
            stop(proc)
    n = len(paced.sent)
    delay = [(a - s) * 1000 for s, a in zip(paced.sent, paced.arrival, strict=True)]
    gaps = [delay[k + 1] - delay[k] for k in range(n - 1)]  # arrival gap - send gap, ms
    interval = 1000 / args.jitter_rate
    pacing = [(paced.sent[k + 1] - paced.sent[k]) * 1000 - interval for k in range(n - 1)]
    rng = random.Random(args.seed)
    model = [rng.uniform(*NETWORK) * 1000 for _ in range(n)]
    model_gaps = [model[k + 1] - model[k] for k in range(n - 1)]
    print(
        f"loopback one-way delay, client send -> handler entry: {n:,} PATCHes paced at "
        f"{args.jitter_rate:g}/s over {args.seconds:g} s, a pool of 16 keep-alive connections "
        f"(client_for, aiohttp, uvloop); server on core {cores.server}, client on core "
        f"{cores.client}; load average {'/'.join(f'{x:.2f}' for x in load)}; "
        f"{paced.failed} not answered 202\n"
    )
    points = (50, 90, 99)
    print("| ms | p50 | p90 | p99 | max | mean |\n|---|---:|---:|---:|---:|---:|")
    for name, values in (("loopback one-way", delay), ("simulation's model", model)):
        p = quantiles(values, points)
        print(f"| {name} | {p[0]:.3f} | {p[1]:.3f} | {p[2]:.3f} | {max(values):.3f} | "
              f"{statistics.fmean(values):.3f} |")  # fmt: skip
    spread = (0.1, 1, 5, 25, 50, 75, 95, 99, 99.9)
    print(
        "\n| arrival gap - send gap, ms | min | "
        + " | ".join(f"p{p:g}" for p in spread)
        + " | max | sd |\n|---|"
        + "---:|" * (len(spread) + 3)
    )
    for name, values in (
        ("loopback", gaps),
        ("simulation's model", model_gaps),
        (f"client's pacing (send gap - {interval:g} ms)", pacing),
    ):
        cells = " | ".join(f"{q:+.3f}" for q in quantiles(values, spread))
        print(f"| {name} | {min(values):+.3f} | {cells} | {max(values):+.3f} | "
              f"{statistics.stdev(values):.3f} |")  # fmt: skip
    paces = (100.0, 95.0, 90.0, 80.0)
    interval_100 = 10.0  # ms between requests at the limit of 100/s
    print(
        "\n| a perfect pace, the delays above | "
        + " | ".join(f"{p:g}/s" for p in paces)
        + " |\n|---|"
        + "---:|" * len(paces)
    )
    for name, delays, steps in (
        ("loopback", delay, gaps),
        ("simulation's model", model, model_gaps),
    ):
        closer = [sum(1000 / p + g < interval_100 for g in steps) / len(steps) for p in paces]
        refused = [refused_share([d / 1000 for d in delays], p) for p in paces]
        print(f"| {name}: arrivals < 10 ms apart | " + " | ".join(f"{c:.2%}" for c in closer)
              + " |")  # fmt: skip
        print(f"| {name}: refused by a burst-1 bucket at 100/s | "
              + " | ".join(f"{r:.2%}" for r in refused) + " |")  # fmt: skip
    return 1 if paced.failed else 0


# ------------------------------------------------------------------ main


def _listed(
    value: str, known: Sequence[str], what: str, parser: argparse.ArgumentParser
) -> list[str]:
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        parser.error(f"unknown {what} {unknown}; expected some of {', '.join(known)}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="a run's length (60)")
    parser.add_argument("--shapes", default=",".join(LIMITS), help="comma-separated")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--styles", default="whole", help=f"Retry-After, comma-separated ({RETRY_AFTER_STYLES})"
    )
    parser.add_argument("--seed", type=int, default=1, help="the simulation's and emulator's")
    parser.add_argument("--jitter", action="store_true", help="measure loopback's delay instead")
    parser.add_argument(
        "--jitter-rate", type=float, default=100.0, help="--jitter's pace, requests/s (100)"
    )
    parser.add_argument("--jitter-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.seconds > 0 or not args.jitter_rate > 0:
        parser.error("--seconds and --jitter-rate must be positive")
    args.shapes = _listed(args.shapes, list(LIMITS), "shape(s)", parser)
    args.scenarios = _listed(args.scenarios, SCENARIOS, "scenario(s)", parser)
    args.styles = _listed(args.styles, RETRY_AFTER_STYLES, "style(s)", parser)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.jitter_server:
        jitter_server()
        return 0
    try:
        return jitter(args) if args.jitter else table(args)
    except BenchError as exc:
        print(f"throttle_http: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
