"""``backfill run`` against a rate-limited and an unlimited emulator: the issue's delivery targets.

The issue's targets, measured with ``backfill run`` itself (``python -m backfill run JOB --quiet``
in a subprocess pinned to one core, the emulator pinned to the other):

A. emulator limited to 100 requests/s (``--rate 100``, burst 10), job ``rate = 100``,
   ``concurrency = 16``, ``adaptive = true``: at least 95 accepted PATCH/s, under 1 % of the
   requests answered 429;
B. the same emulator, job ``rate = 1000`` (adaptive): at least 90 accepted PATCH/s, under 5 % 429s;
C. no limit, job ``rate = 100000``, ``concurrency = 16``: at least 3 times the throughput of a
   loop over the official ``twilio`` package's ``profiles(store, id).patch(...)`` in 16 threads
   over the same rows, measured against the same emulator process, alternated. The loop runs
   twice per repeat: with a ``Client`` per thread (``twilio``) and with one shared ``Client``
   (``twilio-shared``); ``--twilio-client`` picks one (``transport.twilio_patch_all``).

Every row of the generated CSV carries a profile ID the emulator's seed holds (no lookups), and
two Loyalty traits. Before each run the emulator's stats are reset (``DELETE
/__emulator__/stats``) and, while it runs, sampled every ``--poll`` seconds, so the server's own
count of PATCH answers (202 and 429) gives both the totals and the timeline. Figures per run:

* accepted PATCH/s = the server's ``profiles.patch`` 202 count / the delivery time (``seconds``
  in summary.json: ``run``'s delivery stage, after planning);
* 429 share = the server's 429s / every ``/v1`` request it saw (= ``requests.throttled`` /
  ``requests.sent`` in summary.json, the client's view, also shown);
* ``rate.final`` (where adaptive throttling left the bucket) and ``rate.achieved``;
* for C also the end-to-end rate (rows / process start to exit) of every side;
* the client process's CPU time, and how busy both cores were over the run (``/proc/stat``:
  the machine is shared, so busy minus our own processes is someone else's load).

A and B alternate (A B, then B A, ...); C's sides rotate (each repeat starts one later)::

    python bench/run_throughput.py                  # A, B (4,500 rows), C (12,000 rows); twice
    python bench/run_throughput.py --scenarios C --rows 20000 --repeat 3
    python bench/run_throughput.py --scenarios A,B --limited-rows 6000

Targets are reported, not enforced (a benchmark, not a timed test). Exits 1 if a run's counts
are inconsistent (the server accepted a different number of PATCHes than rows, or ``run`` did
not exit 0 in C), 2 if the benchmark could not run. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from common import Process, add_cores, check_cores, pct, run_process
from emulator_patch import (
    STORE_ID,
    TIERS,
    BenchError,
    profile_id,
    smoke_test,
    stats,
    write_seed,
)
from transport import emulator, pin, twilio_patch_all

HERE: Final = Path(__file__).resolve()
LIMITED: Final = ("A", "B")
TARGETS: Final = {
    "A": (95.0, 0.01),
    "B": (90.0, 0.05),
}  # accepted PATCH/s at least, 429 share under
SPEEDUP: Final = 3.0  # C: backfill run / the twilio loop

JOB: Final = """\
name = "{name}"

[connection]
base_url = "{url}"
store_id = "{store}"

[source]
paths = ["{csv}"]

[identity]
profile_id_column = "profile_id"
lookup = false

[traits.Loyalty]
points = {{ column = "points", type = "NUMBER" }}
tier = "tier"

[send]
concurrency = {concurrency}
rate = {rate}
adaptive = true

[output]
dir = "{out}"
"""


def write_csv(path: Path, rows: int) -> None:
    """``rows`` rows, one per seeded profile: ``profile_id,points,tier``."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["profile_id", "points", "tier"])
        for i in range(rows):
            out.writerow([profile_id(i), (i * 7) % 100_000, TIERS[(i + 1) % 3]])


def read_jobs(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The CSV as (profile ID, PATCH body) pairs, the bodies ``backfill run`` sends for it."""
    with path.open(newline="", encoding="utf-8") as f:
        return [
            (
                r["profile_id"],
                {"traits": {"Loyalty": {"points": int(r["points"]), "tier": r["tier"]}}},
            )
            for r in csv.DictReader(f)
        ]


# ------------------------------------------------------------------ watching the server


@dataclass
class Sample:
    at: float  # seconds since the client process started
    accepted: int  # profiles.patch 202 so far
    throttled: int  # 429s so far (any /v1 request)
    requests: int


@dataclass
class Watcher:
    """Samples the emulator's stats every ``every`` seconds in a thread while a run goes on."""

    url: str
    every: float
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        with httpx.Client(timeout=10.0) as http:
            while not self._stop.wait(self.every):
                seen = stats(http, self.url)
                patches = seen["byOperation"].get("profiles.patch", {})
                self.samples.append(
                    Sample(
                        time.perf_counter() - self._t0,
                        patches.get("202", 0),
                        seen["byStatus"].get("429", 0),
                        seen["requests"],
                    )
                )


def timeline(samples: Sequence[Sample], window: float) -> list[tuple[float, float, int]]:
    """(start, accepted/s, 429s) per ``window`` seconds from the first accepted PATCH on."""
    first = next((s for s in samples if s.accepted), None)
    if first is None:
        return []
    out: list[tuple[float, float, int]] = []
    mark = first
    for s in samples:
        if s.at >= mark.at + window or s is samples[-1]:
            if s.at > mark.at:
                rate = (s.accepted - mark.accepted) / (s.at - mark.at)
                out.append((mark.at - first.at, rate, s.throttled - mark.throttled))
            mark = s
    return out


# ------------------------------------------------------------------ one run of each side

TWILIO_SIDES: Final = {"twilio": "per-thread", "twilio-shared": "shared"}


@dataclass(frozen=True)
class Outcome:
    scenario: str
    repeat: int
    side: str  # "backfill", "twilio" (a Client per thread) or "twilio-shared" (one Client)
    rows: int
    process: Process
    delivery: float  # backfill: summary.json seconds; twilio: its timed loop
    server_202: int
    server_429: int
    server_requests: int
    summary: dict[str, Any]  # backfill: summary.json; twilio: the worker's report
    samples: list[Sample]

    @property
    def accepted_rate(self) -> float:
        return self.server_202 / self.delivery if self.delivery else 0.0

    @property
    def share_429(self) -> float:
        return self.server_429 / self.server_requests if self.server_requests else 0.0

    @property
    def end_to_end(self) -> float:
        return self.server_202 / self.process.wall

    @property
    def consistent(self) -> bool:
        return self.server_202 == self.rows


def run_backfill(
    args: argparse.Namespace,
    url: str,
    http: httpx.Client,
    work: Path,
    scenario: str,
    repeat: int,
    data: Path,
    rows: int,
    rate: float,
) -> Outcome:
    """One ``backfill run`` of a fresh job (its own output folder), watched from the server."""
    name = f"bench-{scenario}-{repeat}"
    out = work / name
    job = work / f"{name}.toml"
    text = JOB.format(
        name=name, url=url, store=STORE_ID, csv=data, concurrency=args.concurrency, rate=rate,
        out=out,
    )  # fmt: skip
    job.write_text(text, encoding="utf-8")
    stats(http, url, reset=True)
    watcher = Watcher(url, args.poll)
    watcher.start()
    try:
        cmd = [*pin(args.client_cpu), sys.executable, "-m", "backfill", "run", str(job), "--quiet"]
        process = run_process(cmd, work, (args.server_cpu, args.client_cpu))
    finally:
        watcher.stop()
    seen = stats(http, url)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise BenchError(
            f"backfill run wrote no summary (exit {process.done.returncode}):\n"
            f"{process.done.stderr}"
        )
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    patches = seen["byOperation"].get("profiles.patch", {})
    return Outcome(
        scenario, repeat, "backfill", rows, process, float(summary["seconds"]),
        patches.get("202", 0), seen["byStatus"].get("429", 0), seen["requests"], summary,
        watcher.samples,
    )  # fmt: skip


def run_twilio(
    args: argparse.Namespace,
    url: str,
    http: httpx.Client,
    work: Path,
    side: str,
    repeat: int,
    data: Path,
    rows: int,
) -> Outcome:
    """The twilio package's loop over the same CSV, in a client process of its own."""
    stats(http, url, reset=True)
    cmd = [
        *pin(args.client_cpu), sys.executable, str(HERE), "--twilio-worker", str(data),
        "--url", url, "--threads", str(args.threads), "--twilio-client", TWILIO_SIDES[side],
    ]  # fmt: skip
    process = run_process(cmd, work, (args.server_cpu, args.client_cpu))
    seen = stats(http, url)
    lines = [line for line in process.done.stdout.splitlines() if line.startswith("{")]
    if process.done.returncode != 0 or not lines:
        raise BenchError(
            f"twilio loop failed (exit {process.done.returncode}):\n{process.done.stderr}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    patches = seen["byOperation"].get("profiles.patch", {})
    return Outcome(
        "C", repeat, side, rows, process, float(result["wall"]), patches.get("202", 0),
        seen["byStatus"].get("429", 0), seen["requests"], result, [],
    )  # fmt: skip


def twilio_worker(args: argparse.Namespace) -> int:
    """In the client process: read the CSV, PATCH every row with the twilio package."""
    jobs = read_jobs(Path(args.twilio_worker))
    m = twilio_patch_all(args.url, jobs, args.threads, shared=args.twilio_client == "shared")
    print(json.dumps({"wall": m.wall, "cpu": m.cpu, "statuses": dict(m.statuses)}))
    return 0


# ------------------------------------------------------------------ reporting


def report_limited(outcomes: Sequence[Outcome], args: argparse.Namespace) -> None:
    print(
        f"\nA and B: emulator --rate {args.emulator_rate:g} (burst default), job concurrency "
        f"{args.concurrency}, adaptive, {args.limited_rows:,} rows"
    )
    print(
        "| run | scenario | job rate | delivery s | server 202 | accepted PATCH/s | server 429 "
        "| 429 share | client sent / 429 / retries | rate.final | rate.achieved | exit "
        "| cores busy (emulator's / client's) | verdict |"
    )
    print(
        "|----:|:--------:|---------:|-----------:|-----------:|-----------------:|-----------:"
        "|----------:|----------------------------:|-----------:|--------------:|-----:"
        "|:---:|---------|"
    )
    for n, o in enumerate(outcomes, 1):
        s = o.summary
        floor, ceiling = TARGETS[o.scenario]
        ok = o.accepted_rate >= floor and o.share_429 < ceiling and o.consistent
        req = s["requests"]
        busy = o.process.core_busy
        print(
            f"| {n} | {o.scenario} | {s['rate']['configured']:g} | {o.delivery:.1f} | "
            f"{o.server_202:,} | **{o.accepted_rate:.1f}** | {o.server_429:,} | "
            f"**{pct(o.share_429)}** | "
            f"{req['sent']:,} / {req['throttled']:,} / {req['retries']:,} | "
            f"{s['rate']['final']:.1f} | {s['rate']['achieved']:.1f} | {s['exit_code']} | "
            f"{busy[0]:.0%} / {busy[1]:.0%} | "
            f"{'met' if ok else 'NOT met'} (>= {floor:g}/s, < {ceiling:.0%}) |"
        )
    print(
        f"\ntimeline per run (from the first accepted PATCH; {args.window:g} s windows: "
        "accepted/s, and 429s in brackets when any)"
    )
    for n, o in enumerate(outcomes, 1):
        parts = [
            f"{start:.0f}s {rate:.0f}" + (f" [{t}]" if t else "")
            for start, rate, t in timeline(o.samples, args.window)
        ]
        print(f"  run {n} ({o.scenario}): " + ", ".join(parts))


def report_free(runs: Sequence[list[Outcome]], args: argparse.Namespace) -> None:
    print(
        f"\nC: no limit; backfill run (rate 100000, concurrency {args.concurrency}) vs the twilio "
        f"package in {args.threads} threads, {args.rows:,} rows"
    )
    print(
        "| repeat | side | delivery s | server 202 | not 202 | PATCH/s | end-to-end s "
        "| rows/s end-to-end | client CPU s | CPU ms/PATCH | cores busy (emulator's / client's) |"
    )
    print(
        "|-------:|------|-----------:|-----------:|--------:|--------:|-------------:"
        "|-----------------:|-------------:|-------------:|:---:|"
    )
    for outcomes in runs:
        for o in outcomes:
            p = o.process
            print(
                f"| {o.repeat} | {o.side} | {o.delivery:.2f} | {o.server_202:,} | "
                f"{o.server_requests - o.server_202} | **{o.accepted_rate:,.0f}** | "
                f"{p.wall:.2f} | {o.end_to_end:,.0f} | {p.cpu:.1f} | "
                f"{1000 * p.cpu / max(1, o.server_202):.2f} | "
                f"{p.core_busy[0]:.0%} / {p.core_busy[1]:.0%} |"
            )
    ratios: dict[str, list[float]] = {}
    for outcomes in runs:
        mine = {o.side: o for o in outcomes}
        b = mine["backfill"]
        for side, t in mine.items():
            if side == "backfill":
                continue
            r, e = b.accepted_rate / t.accepted_rate, b.end_to_end / t.end_to_end
            ratios.setdefault(side, []).append(r)
            ratios.setdefault(side + " end to end", []).append(e)
            verdict = "met" if r >= SPEEDUP else "NOT met"
            print(
                f"  repeat {b.repeat} (order {', '.join(o.side for o in outcomes)}): "
                f"backfill / {side} = **{r:.2f}x** delivery, {e:.2f}x end to end; "
                f"target {SPEEDUP:g}x: {verdict}"
            )
    for name, values in ratios.items():
        print(f"  median backfill / {name}: {statistics.median(values):.2f}x")


# ------------------------------------------------------------------ main


def limited_runs(args: argparse.Namespace, http: httpx.Client, work: Path, seed: Path) -> list[str]:
    """A and B, alternated, against one emulator limited to ``--emulator-rate``."""
    scenarios = [s for s in args.scenarios if s in LIMITED]
    data = work / "limited.csv"
    write_csv(data, args.limited_rows)
    done: list[Outcome] = []
    bad: list[str] = []
    extra = ["--rate", f"{args.emulator_rate:g}"]
    with emulator(seed, args.server_cpu, work / "emulator-limited.log", extra) as (_, url):
        for rep in range(1, args.repeat + 1):
            for scenario in scenarios if rep % 2 else scenarios[::-1]:
                rate = args.emulator_rate if scenario == "A" else 10 * args.emulator_rate
                o = run_backfill(args, url, http, work, scenario, rep, data, args.limited_rows,
                                 rate)  # fmt: skip
                done.append(o)
                print(
                    f"  {scenario} repeat {rep}: {o.accepted_rate:.1f} accepted PATCH/s, "
                    f"{pct(o.share_429)} 429s, exit {o.summary['exit_code']}",
                    flush=True,
                )
                if not o.consistent:
                    bad.append(f"{scenario} repeat {rep}: the server accepted {o.server_202:,} "
                               f"PATCHes for {o.rows:,} rows")  # fmt: skip
    report_limited(done, args)
    return bad


def free_runs(args: argparse.Namespace, http: httpx.Client, work: Path, seed: Path) -> list[str]:
    """C: backfill run and the twilio loop(s), alternated, against one unlimited emulator."""
    data = work / "free.csv"
    write_csv(data, args.rows)
    sides = ["backfill", *(["twilio"] if args.twilio_client != "shared" else []),
             *(["twilio-shared"] if args.twilio_client != "per-thread" else [])]  # fmt: skip
    runs: list[list[Outcome]] = []
    bad: list[str] = []
    with emulator(seed, args.server_cpu, work / "emulator-free.log") as (_, url):
        smoke_test(http, url)
        for rep in range(1, args.repeat + 1):
            shift = (rep - 1) % len(sides)
            outcomes: list[Outcome] = []
            for side in sides[shift:] + sides[:shift]:
                if side == "backfill":
                    o = run_backfill(args, url, http, work, "C", rep, data, args.rows, 100_000)
                else:
                    o = run_twilio(args, url, http, work, side, rep, data, args.rows)
                outcomes.append(o)
                print(f"  C repeat {rep} {side}: {o.accepted_rate:,.0f} PATCH/s", flush=True)
                failed = side == "backfill" and o.summary["exit_code"] != 0
                if not o.consistent or failed:
                    bad.append(f"C repeat {rep} {side}: the server accepted {o.server_202:,} "
                               f"PATCHes for {o.rows:,} rows")  # fmt: skip
            runs.append(outcomes)
    report_free(runs, args)
    return bad


def bench(args: argparse.Namespace, work: Path) -> int:
    os.sched_setaffinity(0, {args.client_cpu})
    limited = any(s in LIMITED for s in args.scenarios)
    profiles = max(args.limited_rows if limited else 0, args.rows if "C" in args.scenarios else 0)
    seed = work / "seed.json"
    write_seed(seed, profiles)
    print(
        f"run throughput: scenarios {','.join(args.scenarios)}, {args.repeat} repeat(s), "
        f"{profiles:,} profiles seeded; emulator on core {args.server_cpu}, clients on core "
        f"{args.client_cpu}",
        flush=True,
    )
    bad: list[str] = []
    with httpx.Client(timeout=30.0) as http:
        if limited:
            bad += limited_runs(args, http, work, seed)
        if "C" in args.scenarios:
            bad += free_runs(args, http, work, seed)
    if bad:
        print("FAIL: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--scenarios", default="A,B,C", help="any of A, B, C (A,B,C)")
    add("--repeat", type=int, default=2, help="runs of each scenario (2)")
    add("--limited-rows", type=int, default=4500, help="rows for A and B (4500: 45 s at 100/s)")
    add("--rows", type=int, default=12000, help="rows for C (12000)")
    add("--emulator-rate", type=float, default=100.0, help="the limit in A and B (100)")
    add("--concurrency", type=int, default=16, help="the job's send.concurrency (16)")
    add("--threads", type=int, default=16, help="twilio loop threads (16)")
    add(
        "--twilio-client",
        choices=("per-thread", "shared", "both"),
        default="both",
        help="C's twilio loop: a Client per thread, one shared, or both in turn (both)",
    )
    add("--poll", type=float, default=0.5, help="stats sampling interval, s (0.5)")
    add("--window", type=float, default=5.0, help="timeline window, s (5)")
    add_cores(parser, "the clients")
    add("--twilio-worker", help=argparse.SUPPRESS)  # internal: the CSV to send
    add("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scenarios = [s.strip().upper() for s in str(args.scenarios).split(",") if s.strip()]
    if not args.scenarios or any(s not in ("A", "B", "C") for s in args.scenarios):
        parser.error("--scenarios takes a comma-separated subset of A, B, C")
    args.scenarios = [s for s in ("A", "B", "C") if s in args.scenarios]
    if min(args.repeat, args.limited_rows, args.rows, args.concurrency, args.threads) < 1:
        parser.error("--repeat, --limited-rows, --rows, --concurrency, --threads must be positive")
    if not (args.poll > 0 and args.window > 0 and args.emulator_rate > 0):
        parser.error("--poll, --window and --emulator-rate must be positive")
    check_cores(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.twilio_worker:
        return twilio_worker(args)
    try:
        with tempfile.TemporaryDirectory(prefix="run-throughput-") as tmp:
            return bench(args, Path(tmp))
    except BenchError as exc:
        print(f"run_throughput: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
