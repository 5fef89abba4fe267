"""``backfill run`` into a Segment space against the official client (issue 11).

One generated extract of N people, one row each: a user id, an email, an E.164 phone and four
traits of mixed types (``firstName`` STRING, ``points`` NUMBER, ``optIn`` BOOLEAN, ``tags``
ARRAY). The job sends every identifier in Segment's own fields (``userId``, the ``email`` trait,
``context.externalIds``); the official client is handed exactly those ids and traits: the job is
planned once (``pipeline.build_plan``, not timed) and each planned identify event becomes one
``identify(user_id, traits, context={"externalIds": [...]})`` call.

1. **compare** (``--people``, 20,000): each client sends the same people to a **fresh**
   ``backfill emulator`` (no tracking limit) pinned to ``--server-cpu``, the client pinned to
   ``--client-cpu``; the two alternate (official first in odd repetitions) ``--repeat`` times and
   the ratio is taken within each repetition.

   - *official*: ``segment-analytics-python`` 2.4.x, ``Client(write_key, host=url)`` with its
     default settings (one consumer thread, batches of 100 / 0.5 s / 475,000 B, a queue of
     10,000) plus an ``on_error`` that counts failures. It runs in a **pinned subprocess** of this
     script, like ``backfill run``: a fresh interpreter on the client core, so neither this
     script's poller thread nor its memory shares its GIL, and its import time stays outside the
     clock as backfill's delivery stage keeps planning outside. The clock runs from the first
     ``identify`` to the moment ``/__emulator__/stats`` says every event is applied (polled after
     ``flush()``, which returns once every batch was answered); ``shutdown()`` follows, untimed.
     When ``identify`` answers ``(False, msg)`` (the queue of 10,000 is full: the client would
     drop the message) the call is repeated 1 ms later, so every person is sent; how often that
     happened is reported, as the count the obvious loop would have lost.
   - *backfill*: ``python -m backfill run JOB --quiet`` as a pinned subprocess, the job
     ``kind = "segment"`` with ``tracking_url``/``profiles_url`` the emulator's loopback URL,
     ``SEGMENT_WRITE_KEY``/``SEGMENT_ACCESS_TOKEN`` the emulator's defaults, ``[send] verify =
     "none"``, ``rate = 1000000`` (so the bucket never binds; its burst of 100,000 lets a batch
     fill to 2,500 events or 475,000 B) and the default concurrency (8). Reported over the process
     wall time (start to exit: start-up, reading, planning, reports) and over the delivery stage
     (``seconds`` in summary.json).

   Every run must leave exactly N events applied and 0 duplicates in the emulator's stats. Target:
   backfill's profiles/s >= 3x the official client's. Beside them, the emulator's **ceiling**:
   the same events pre-encoded and POSTed by a minimal aiohttp client (batches of 100 one at a
   time, as the official client sends; of up to 2,500 events / 475,000 B, 8 at a time, as
   backfill does), each on a fresh emulator: no client can beat the official one by more than
   the best ceiling over it. ``--latency-ms L`` starts every emulator with ``--latency-ms L``
   (L x uniform(0.5, 1.5) added to each request): the round trip a real network adds, which
   loopback does not.

2. **limited** (``--limited-people``, 30,000: ~30 s): the emulator at ``--tracking-rate 1000``
   with ``--tracking-limiter fixed`` (its default) and then ``token`` (its default burst, rate/10),
   a fresh one each; the job at its default ``rate`` for Segment (1,000 events/s, burst 100,
   adaptive). Reported: accepted events/s over the delivery stage (N / ``seconds``) and in the
   emulator's view (events applied / (last - first accepted), those instants from this script's
   poll of the stats every ``POLL_S``), the 429 share (429s / tracking requests, from the stats'
   per-operation counts) and the throttle summary (summary.json ``throttle``). Target: >= 950
   events/s accepted with under 1 % 429s.

This script polls ``/__emulator__/stats`` every ``POLL_S`` (50 ms) from a thread during every run,
both clients alike, for the emulator's view; a poll costs the emulator well under a millisecond.
A run that stalls is killed (``timeout``: 600 s unlimited, 60 s + 3x its ideal time limited) and
reported with the events the emulator applied and when it last applied one::

    python bench/segment_delivery.py                      # both scenarios, --repeat 2 (~2-7 min)
    python bench/segment_delivery.py --scenarios compare --people 50000 --repeat 3
    python bench/segment_delivery.py --scenarios limited --limiters fixed
    python bench/segment_delivery.py --scenarios compare --latency-ms 20   # a network's RTT

Targets are reported, not enforced. Exits 1 if a run's counts are wrong (a client failed, or the
emulator did not apply exactly N events with no duplicate), 2 if the benchmark could not run.
Results: BENCHMARKS.md, "Delivery: Segment target against the official client (issue 11)".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import polars as pl
from common import Process, add_cores, check_cores, pct, run_process
from emulator_patch import BenchError, process_cpu, stats
from plan_throughput import machine
from transport import emulator, pin

from backfill.config import load_job
from backfill.emulator import EmulatorConfig
from backfill.pipeline import build_plan

HERE: Final = Path(__file__).resolve()
WRITE_KEY: Final = EmulatorConfig.segment_write_key
ACCESS_TOKEN: Final = EmulatorConfig.segment_access_token
SPACE_ID: Final = EmulatorConfig.segment_space_id
SCENARIOS: Final = ("compare", "limited")
CLIENTS: Final = ("official", "backfill")
LIMITERS: Final = ("fixed", "token", "gcra", "sliding")
TRACKING_RATE: Final = 1_000.0  # events/s: Segment's documented workspace budget
RATIO_TARGET: Final = 3.0  # backfill / official, profiles per second
ACCEPTED_TARGET: Final = 950.0  # events/s accepted under the 1,000/s limit, at least
SHARE_429_TARGET: Final = 0.01  # under
POLL_S: Final = 0.05
BATCH_OP: Final = "segment.batch"  # the emulator's per-operation name for POST /v1/batch
TAGS: Final = ("vip", "newsletter", "retail", "online")
BATCH_BYTES: Final = 475_000  # the official client's aim for a batch, and backfill's
# The ceiling's shapes: the official client's batches one at a time, backfill's 8 at a time.
CEILINGS: Final = ((100, 1), (2_500, 8))
RUN_TIMEOUT_S: Final = 600.0  # an unlimited run; a limited one gets 60 s + 3x its ideal time
# What stands for summary.json when backfill run wrote none (it was killed): nothing counted.
NO_SUMMARY: Final[dict[str, Any]] = {
    "exit_code": None,
    "requests": {"sent": 0, "throttled": 0, "retries": 0},
    "rate": {"final": 0.0},
    "plan": {},
    "delivery": {},
    "throttle": None,
}

JOB: Final = """\
name = "{name}"

[connection]
kind = "segment"
space_id = "{space}"
tracking_url = "{url}"
profiles_url = "{url}"

[source]
paths = ["{csv}"]

[[identity.identifiers]]
column = "user_id"
id_type = "user_id"

[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"

[[identity.identifiers]]
column = "phone"
id_type = "phone"
normalization = "phone"

[traits]
firstName = "first_name"
points = {{ column = "points", type = "NUMBER" }}
optIn = {{ column = "opt_in", type = "BOOLEAN" }}
tags = {{ column = "tags", type = "ARRAY", split = ";" }}

[send]
verify = "none"
{rate}
[output]
dir = "{out}"
"""


# ------------------------------------------------------------------ data


def write_extract(path: Path, people: int) -> None:
    """Person ``i``: ``u{i}``, ``person{i}@bench.example``, ``+1`` and ten digits, 4 traits."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "email", "phone", "first_name", "points", "opt_in", "tags"])
        for i in range(people):
            tags = ";".join(TAGS[k] for k in range(len(TAGS)) if (i >> k) & 1) or TAGS[0]
            out.writerow([f"u{i:07d}", f"person{i:07d}@bench.example",
                          f"+1{2_000_000_000 + 7 * i}", f"P{i}", (i * 7) % 100_000,
                          "true" if i % 2 else "false", tags])  # fmt: skip


def write_job(path: Path, name: str, url: str, extract: Path, rate: float | None) -> Path:
    """The job file (``rate`` None: Segment's default, 1,000 events/s); returns its output
    folder, ``path``'s stem beside it."""
    out = path.with_suffix("")
    rate_line = f"rate = {rate:g}\n" if rate is not None else ""
    path.write_text(JOB.format(name=name, space=SPACE_ID, url=url, csv=extract, rate=rate_line,
                               out=out), encoding="utf-8")  # fmt: skip
    return out


@dataclass(frozen=True)
class Data:
    extract: Path
    people: int
    calls: Path  # JSON lines: the official client's identify arguments, one person a line


def make_data(work: Path, people: int) -> Data:
    """The extract, and the planned events as identify arguments (planned once, untimed)."""
    extract, calls = work / f"extract-{people}.csv", work / f"calls-{people}.jsonl"
    write_extract(extract, people)
    job_path = work / f"plan-{people}.toml"
    out = write_job(job_path, f"plan-{people}", "http://127.0.0.1:9", extract, None)
    out.mkdir(mode=0o700, exist_ok=True)
    plan = build_plan(load_job(job_path), quiet=True, keep_rows=True)
    bodies = pl.read_parquet(plan.plan_path, columns=["body"])["body"].to_list()
    if len(bodies) != people:
        raise BenchError(f"the plan of {people:,} people holds {len(bodies):,} events")
    with calls.open("w", encoding="utf-8") as f:
        for body in bodies:
            f.write(json.dumps(identify_args(json.loads(body)), separators=(",", ":")) + "\n")
    return Data(extract, people, calls)


def identify_args(event: dict[str, Any]) -> dict[str, Any]:
    """A planned identify event as ``Client.identify`` keywords: the same ids and traits."""
    extra = set(event) - {"type", "userId", "traits", "context"}
    if event.get("type") != "identify" or extra or set(event.get("context", {})) - {"externalIds"}:
        raise BenchError(f"a planned event the official client could not say alike: {event}")
    return {
        "user_id": event["userId"],
        "traits": event["traits"],
        "context": {"externalIds": event["context"]["externalIds"]},
    }


# ------------------------------------------------------------------ the emulator's view


@dataclass
class Poller:
    """``events_applied`` every ``POLL_S`` from a thread, for the first and last acceptance."""

    url: str
    looks: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, applied)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Poller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as http:
            while not self._stop.is_set():
                t = time.perf_counter()
                applied = stats(http, self.url)["segment"]["tracking"]["events_applied"]
                self.looks.append((t, int(applied)))
                self._stop.wait(max(0.0, t + POLL_S - time.perf_counter()))


# ------------------------------------------------------------------ one run


@dataclass(frozen=True)
class Run:
    """One client's delivery of ``people`` to a fresh emulator."""

    client: str  # official | backfill
    scenario: str  # compare | limited
    limiter: str | None  # the emulator's tracking limiter (limited), else None
    repeat: int
    people: int
    process: Process
    seconds: float  # official: first identify to all applied; backfill: the delivery stage
    worker: dict[str, Any]  # official: the worker's own figures; backfill: summary.json
    server: dict[str, Any]  # the emulator's stats after the run
    emulator_cpu: float  # its CPU seconds over the process
    looks: list[tuple[float, int]]  # the poller's (time, events applied)
    started: float  # the process's start, on the poller's clock

    @property
    def span(self) -> tuple[float, float] | None:
        """(first poll that saw an event applied, first that saw the final count), or None."""
        if not self.looks or self.looks[-1][1] == 0:
            return None
        final = self.looks[-1][1]
        first = next(t for t, n in self.looks if n > 0)
        last = next(t for t, n in self.looks if n == final)
        return first, last

    @property
    def tracking(self) -> dict[str, Any]:
        found: dict[str, Any] = self.server["segment"]["tracking"]
        return found

    @property
    def applied(self) -> int:
        return int(self.tracking["events_applied"])

    @property
    def rate(self) -> float:
        """Profiles/s over ``seconds`` (of those applied: a run killed short counts its own)."""
        return min(self.people, self.applied) / self.seconds if self.seconds else 0.0

    @property
    def wall_rate(self) -> float:
        return self.people / self.process.wall

    @property
    def emulator_rate(self) -> float:
        """Events applied / (last - first accepted), as the poller saw them."""
        if self.span is None or self.span[1] <= self.span[0]:
            return 0.0
        return self.applied / (self.span[1] - self.span[0])

    @property
    def batches(self) -> dict[str, int]:
        by: dict[str, int] = self.server["byOperation"].get(BATCH_OP, {})
        return by

    @property
    def requests(self) -> int:
        return sum(self.batches.values())

    @property
    def share_429(self) -> float:
        return self.batches.get("429", 0) / self.requests if self.requests else 0.0

    def stall(self) -> str:
        """When the emulator last saw an event applied, from the run's first poll."""
        looks = self.looks
        if not looks:
            return "never polled"
        final = looks[-1][1]
        last = next(t for t, n in looks if n == final)
        return (f"{final:,} events applied, the last at {last - looks[0][0]:.1f} s, none in the "
                f"{looks[-1][0] - last:.1f} s after")  # fmt: skip

    def problems(self) -> list[str]:
        name = f"{self.scenario} {self.client} {self.limiter or ''} repeat {self.repeat}"
        bad = []
        if self.process.done.returncode != 0:
            bad.append(f"{name}: exit {self.process.done.returncode}")
        if self.worker.get("throttle", {}) is None:
            bad.append(f"{name}: no summary.json; {self.stall()}")
        if self.applied != self.people or self.tracking["duplicates"]:
            bad.append(f"{name}: {self.applied:,} of {self.people:,} events applied, "
                       f"{self.tracking['duplicates']} duplicates")  # fmt: skip
        if self.tracking["discarded"]:
            bad.append(f"{name}: discarded {self.tracking['discarded']}")
        if self.client == "official" and self.worker.get("errors"):
            bad.append(f"{name}: on_error called {self.worker['errors']} times")
        return bad


def run_client(
    args: argparse.Namespace, work: Path, http: httpx.Client, data: Data, client: str,
    scenario: str, limiter: str | None, rep: int,
) -> Run:  # fmt: skip
    """One client on a fresh emulator (limited: ``--tracking-rate 1000`` of ``limiter``)."""
    name = f"{scenario}-{client}-{limiter or 'open'}-{rep}"
    extra = ["--latency-ms", f"{args.latency_ms:g}"] if args.latency_ms else []
    if limiter is not None:
        extra += ["--tracking-rate", f"{TRACKING_RATE:g}", "--tracking-limiter", limiter]
    with emulator(work / "seed.json", args.server_cpu, work / f"{name}.log", extra) as (proc, url):
        if client == "official":
            out = None
            cmd = [*pin(args.client_cpu), sys.executable, str(HERE), "--worker", "--url", url,
                   "--calls", str(data.calls), "--people", str(data.people)]  # fmt: skip
        else:
            job = work / f"{name}.toml"
            rate = None if limiter else 1_000_000.0  # limited: Segment's default, 1,000/s
            out = write_job(job, name, url, data.extract, rate)
            cmd = [*pin(args.client_cpu), sys.executable, "-m", "backfill", "run", str(job),
                   "--quiet"]  # fmt: skip
        # A run that stalls is killed, and reported with what the emulator applied by then.
        limit = RUN_TIMEOUT_S if limiter is None else 60.0 + 3.0 * data.people / TRACKING_RATE
        cmd = ["timeout", "--kill-after=10", f"{limit:.0f}", *cmd]
        stats(http, url, reset=True)
        cpu0 = process_cpu(proc.pid)
        with Poller(url) as poller:
            started = time.perf_counter()
            process = run_process(cmd, work, (args.server_cpu, args.client_cpu))
        emulator_cpu = process_cpu(proc.pid) - cpu0
        server = stats(http, url)
    if out is None:
        lines = [line for line in process.done.stdout.splitlines() if line.startswith("{")]
        if process.done.returncode != 0 or not lines:
            raise BenchError(f"{name}: the official client's worker failed (exit "
                             f"{process.done.returncode}):\n{process.done.stderr}")  # fmt: skip
        worker: dict[str, Any] = json.loads(lines[-1])
        seconds = float(worker["seconds"])
    else:
        summary_path = out / "summary.json"
        if summary_path.is_file():
            worker = json.loads(summary_path.read_text(encoding="utf-8"))
        else:  # killed (timed out) or failed before its report: the run's wall time stands in
            worker = dict(NO_SUMMARY, seconds=process.wall)
            print(f"  {name}: backfill run wrote no summary (exit {process.done.returncode}"
                  f"{', timed out' if process.done.returncode in (124, 137, -9) else ''}):\n"
                  f"{process.done.stderr.strip()}", flush=True)  # fmt: skip
        seconds = float(worker["seconds"])
    return Run(client, scenario, limiter, rep, data.people, process, seconds, worker, server,
               emulator_cpu, poller.looks, started)  # fmt: skip


# ------------------------------------------------------------------ the official client's worker


def official_worker(url: str, calls_path: Path, people: int) -> dict[str, Any]:
    """The official client, default settings, in this (pinned) process; see the docstring."""
    from segment.analytics import Client  # type: ignore[import-untyped]  # ships no types

    with calls_path.open(encoding="utf-8") as f:
        calls = [json.loads(line) for line in f]
    errors: list[Exception] = []
    client = Client(WRITE_KEY, host=url, on_error=lambda exc, _batch: errors.append(exc))
    refused = 0
    with httpx.Client(timeout=30.0) as http:
        cpu0, t0 = time.process_time(), time.perf_counter()
        for call in calls:
            # identify() writes the library into the context it is given: a fresh one a try.
            while not client.identify(call["user_id"], call["traits"],
                                      context={**call["context"]})[0]:  # fmt: skip
                refused += 1  # the queue is full: the obvious loop would have lost it
                time.sleep(0.001)
        queued = time.perf_counter() - t0
        client.flush()
        flushed = time.perf_counter() - t0
        deadline = time.monotonic() + 120.0
        while True:
            applied = stats(http, url)["segment"]["tracking"]["events_applied"]
            if applied >= people or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    client.shutdown()
    return {"seconds": seconds, "queued": queued, "flushed": flushed, "cpu": cpu,
            "refused": refused, "errors": len(errors), "applied": applied}  # fmt: skip


# ------------------------------------------------------------------ the emulator's ceiling


@dataclass(frozen=True)
class Ceiling:
    """The same events pre-encoded and POSTed by a minimal aiohttp client: what the emulator
    alone allows, with (almost) no client cost."""

    events: int  # a batch's, at most
    concurrency: int
    requests: int
    wall: float  # first POST to the last answer
    applied: int
    emulator_cpu: float

    @property
    def rate(self) -> float:
        return self.applied / self.wall


def encode_batches(calls: Path, events: int) -> list[bytes]:
    """Every person's identify (the official client's arguments, a UUID messageId) in
    ``/v1/batch`` bodies of at most ``events`` events and 475,000 bytes."""
    batches: list[bytes] = []
    part: list[bytes] = []
    size = 0
    with calls.open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            call = json.loads(line)
            event = {"type": "identify", "messageId": f"ceiling-{k}", "userId": call["user_id"],
                     "traits": call["traits"], "context": call["context"]}  # fmt: skip
            encoded = json.dumps(event, separators=(",", ":")).encode()
            if part and (len(part) >= events or size + len(encoded) + 1 > BATCH_BYTES - 16):
                batches.append(b'{"batch":[' + b",".join(part) + b"]}")
                part, size = [], 0
            part.append(encoded)
            size += len(encoded) + 1
    if part:
        batches.append(b'{"batch":[' + b",".join(part) + b"]}")
    return batches


async def _post_all(url: str, batches: Sequence[bytes], concurrency: int) -> Counter[str]:
    import aiohttp

    statuses: Counter[str] = Counter()
    queue = iter(batches)
    key = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Authorization": f"Basic {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(
        base_url=url, headers=headers, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:

        async def worker() -> None:
            for body in queue:
                async with session.post("/v1/batch", data=body) as response:
                    await response.read()
                    statuses[str(response.status)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def ceiling_run(
    args: argparse.Namespace, work: Path, http: httpx.Client, data: Data, events: int,
    concurrency: int,
) -> Ceiling:  # fmt: skip
    batches = encode_batches(data.calls, events)
    name = f"ceiling-{events}-{concurrency}"
    extra = ["--latency-ms", f"{args.latency_ms:g}"] if args.latency_ms else []
    with emulator(work / "seed.json", args.server_cpu, work / f"{name}.log", extra) as (proc, url):
        stats(http, url, reset=True)
        cpu0, t0 = process_cpu(proc.pid), time.perf_counter()
        statuses = asyncio.run(_post_all(url, batches, concurrency))
        wall = time.perf_counter() - t0
        emulator_cpu = process_cpu(proc.pid) - cpu0
        seen = stats(http, url)["segment"]["tracking"]
    if statuses != Counter({"200": len(batches)}):
        raise BenchError(f"{name}: the emulator answered {dict(statuses)}")
    return Ceiling(events, concurrency, len(batches), wall, int(seen["events_applied"]),
                   emulator_cpu)  # fmt: skip


# ------------------------------------------------------------------ the report


def compare_runs(args: argparse.Namespace, work: Path, http: httpx.Client) -> list[Run]:
    data = make_data(work, args.people)
    done: list[Run] = []
    for rep in range(1, args.repeat + 1):
        order = CLIENTS if rep % 2 else CLIENTS[::-1]
        for client in order:
            r = run_client(args, work, http, data, client, "compare", None, rep)
            done.append(r)
            print(f"  compare {client} repeat {rep}: {r.rate:,.0f} profiles/s over "
                  f"{r.seconds:.2f} s, {r.applied:,} applied", flush=True)  # fmt: skip
    ceilings = [ceiling_run(args, work, http, data, events, c) for events, c in CEILINGS]
    report_compare(done, ceilings, args)
    return done


def report_compare(
    done: Sequence[Run], ceilings: Sequence[Ceiling], args: argparse.Namespace
) -> None:
    print(f"\n1. compare: {args.people:,} people, no tracking limit, a fresh emulator a run; "
          "official = first identify to all applied; backfill = delivery stage (summary.json "
          "seconds) and process wall")  # fmt: skip
    print(
        "| repeat | client | **profiles/s** | seconds | process wall s | profiles/s over wall "
        "| emulator view events/s | batches (200) | events/batch | applied / duplicates "
        "| client CPU s | emulator CPU s (of its time) | cores busy (emulator / client) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in done:
        ok = r.batches.get("200", 0)
        cpu = r.worker["cpu"] if r.client == "official" else r.process.cpu
        print(
            f"| {r.repeat} | {r.client} | **{r.rate:,.0f}** | {r.seconds:.2f} | "
            f"{r.process.wall:.2f} | {r.wall_rate:,.0f} | {r.emulator_rate:,.0f} | {ok:,} | "
            f"{r.applied / max(1, ok):,.0f} | {r.applied:,} / {r.tracking['duplicates']} | "
            f"{cpu:.2f} | {r.emulator_cpu:.2f} ({r.emulator_cpu / r.seconds:.0%}) | "
            f"{r.process.core_busy[0]:.0%} / {r.process.core_busy[1]:.0%} |"
        )
    for r in done:
        if r.client == "official":
            w = r.worker
            print(f"  official repeat {r.repeat}: all queued after {w['queued']:.2f} s, flush() "
                  f"returned at {w['flushed']:.2f} s; identify() refused {w['refused']:,} times "
                  f"(queue full); on_error {w['errors']}; client CPU {w['cpu']:.2f} s over "
                  f"{w['seconds']:.2f} s")  # fmt: skip
        else:
            s = r.worker
            print(f"  backfill repeat {r.repeat}: requests sent {s['requests']['sent']:,}, "
                  f"plan {s['plan'].get('seconds', 0):.2f} s, delivery {s['seconds']:.2f} s, "
                  f"process {r.process.wall:.2f} s (CPU {r.process.cpu:.2f} s); "
                  f"delivery: {s['delivery']}")  # fmt: skip
            if r.span is not None:
                first, last = (t - r.started for t in r.span)
                print(f"    from the process start: first event applied at {first:.2f} s, the "
                      f"last at {last:.2f} s (polled every {POLL_S * 1000:.0f} ms), exit at "
                      f"{r.process.wall:.2f} s")  # fmt: skip
    print(
        "\nthe emulator's ceiling for the same events, pre-encoded, a minimal aiohttp client "
        "(fresh emulator; first POST to the last answer)"
    )
    print(
        "| events a batch (at most) | concurrency | requests | **events/s** | emulator CPU s "
        "(of the wall) | emulator CPU us/event |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for c in ceilings:
        print(f"| {c.events:,} | {c.concurrency} | {c.requests} | **{c.rate:,.0f}** | "
              f"{c.emulator_cpu:.2f} ({c.emulator_cpu / c.wall:.0%}) | "
              f"{1e6 * c.emulator_cpu / c.applied:.0f} |")  # fmt: skip
    ratios: list[tuple[float, float]] = []
    for rep in sorted({r.repeat for r in done}):
        pair = {r.client: r for r in done if r.repeat == rep}
        if set(CLIENTS) <= set(pair):
            o, b = pair["official"], pair["backfill"]
            ratios.append((b.rate / o.rate, b.wall_rate / o.rate))
            print(f"  repeat {rep}: backfill / official = **{ratios[-1][0]:.2f}x** over the "
                  f"delivery stage, {ratios[-1][1]:.2f}x over backfill's whole process; target "
                  f"{RATIO_TARGET:g}x: {verdict(ratios[-1][0] >= RATIO_TARGET)} / "
                  f"{verdict(ratios[-1][1] >= RATIO_TARGET)}")  # fmt: skip
    if ratios:
        delivery = statistics.median(x for x, _ in ratios)
        whole = statistics.median(y for _, y in ratios)
        print(f"  median backfill / official: {delivery:.2f}x (delivery stage), {whole:.2f}x "
              "(process wall)")  # fmt: skip
    official = [r.rate for r in done if r.client == "official"]
    if ceilings and official:
        best = max(c.rate for c in ceilings)
        print(f"  the emulator's best ceiling / the official client's median: "
              f"{best / statistics.median(official):.2f}x: no client can beat the official one "
              "by more on this emulator and machine")  # fmt: skip


def limited_runs(args: argparse.Namespace, work: Path, http: httpx.Client) -> list[Run]:
    data = make_data(work, args.limited_people)
    done: list[Run] = []
    for rep in range(1, args.repeat + 1):
        for limiter in args.limiters:
            r = run_client(args, work, http, data, "backfill", "limited", limiter, rep)
            done.append(r)
            print(f"  limited {limiter} repeat {rep}: {r.rate:,.0f} events/s over the delivery, "
                  f"{pct(r.share_429)} 429s", flush=True)  # fmt: skip
    report_limited(done, args)
    return done


def report_limited(done: Sequence[Run], args: argparse.Namespace) -> None:
    print(f"\n2. limited: emulator --tracking-rate {TRACKING_RATE:g} (limiter below; token: its "
          f"default burst, rate/10), backfill at its default rate (1,000 events/s, adaptive), "
          f"{args.limited_people:,} people")  # fmt: skip
    print(
        "| repeat | limiter | **accepted events/s (delivery)** | delivery s | emulator view "
        "events/s | process wall s | tracking requests | 429 | **429 share** | client "
        "throttled / retries | applied / duplicates | final rate | throttle | target |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in done:
        s = r.worker
        met = r.rate >= ACCEPTED_TARGET and r.share_429 < SHARE_429_TARGET
        t = s["throttle"]
        throttle = "no summary: " + r.stall() if t is None else (
            f"concurrency {t['concurrency']['configured']}->{t['concurrency']['final']}, "
            f"events {t['events']}, window events {t['window_events']}, holds "
            f"{t['holds']} ({t['held_seconds']:g} s)")  # fmt: skip
        print(
            f"| {r.repeat} | {r.limiter} | **{r.rate:,.0f}** | {r.seconds:.2f} | "
            f"{r.emulator_rate:,.0f} | {r.process.wall:.2f} | {r.requests:,} | "
            f"{r.batches.get('429', 0)} | **{pct(r.share_429)}** | "
            f"{s['requests']['throttled']} / {s['requests']['retries']} | {r.applied:,} / "
            f"{r.tracking['duplicates']} | {s['rate']['final']:g} | {throttle} | {verdict(met)} |"
        )
    for limiter in args.limiters:
        mine = [r for r in done if r.limiter == limiter]
        if mine:
            print(f"  {limiter}: median {statistics.median(r.rate for r in mine):,.0f} events/s "
                  f"(delivery), worst 429 share {pct(max(r.share_429 for r in mine))}; target >= "
                  f"{ACCEPTED_TARGET:g}/s and < {SHARE_429_TARGET:.0%}")  # fmt: skip


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ------------------------------------------------------------------ main


@contextlib.contextmanager
def client_side(cpu: int) -> Iterator[None]:
    """This process on the client's core, with the emulator's Segment credentials in its
    environment (``backfill run`` reads them there; ``common.child_env`` passes it on); both
    as they were afterwards, for a caller that runs ``main`` in its own process."""
    affinity = os.sched_getaffinity(0)
    saved = {k: os.environ.get(k) for k in ("SEGMENT_WRITE_KEY", "SEGMENT_ACCESS_TOKEN")}
    os.sched_setaffinity(0, {cpu})
    os.environ.update(SEGMENT_WRITE_KEY=WRITE_KEY, SEGMENT_ACCESS_TOKEN=ACCESS_TOKEN)
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench(args: argparse.Namespace, work: Path) -> int:
    (work / "seed.json").write_text('{"stores": []}', encoding="utf-8")
    started = datetime.now(UTC)
    from segment.analytics.version import VERSION  # type: ignore[import-untyped]

    print(f"segment delivery: {started:%Y-%m-%d %H:%M} UTC; {machine()}; "
          f"segment-analytics-python {VERSION}; scenarios {','.join(args.scenarios)}, "
          f"{args.repeat} repeat(s); emulator --latency-ms {args.latency_ms:g}; emulator on "
          f"core {args.server_cpu}, clients on core "
          f"{args.client_cpu}", flush=True)  # fmt: skip
    done: list[Run] = []
    with httpx.Client(timeout=30.0) as http:
        if "compare" in args.scenarios:
            done += compare_runs(args, work, http)
        if "limited" in args.scenarios:
            done += limited_runs(args, work, http)
    print(f"\nfinished in {(datetime.now(UTC) - started).total_seconds():.0f} s")
    bad = [problem for r in done for problem in r.problems()]
    if bad:
        print("FAIL: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--scenarios", default="compare,limited", help="any of compare, limited (both)")
    add("--people", type=int, default=20_000, help="people, compare (20000)")
    add("--limited-people", type=int, default=30_000, help="people, limited (30000)")
    add("--limiters", default="fixed,token",
        help=f"tracking limiters, limited; any of {', '.join(LIMITERS)} (fixed,token)")  # fmt: skip
    add("--repeat", type=int, default=2, help="repetitions (2)")
    add("--latency-ms", type=float, default=0.0,
        help="the emulator's --latency-ms, every run: a network's round trip (0)")  # fmt: skip
    add_cores(parser, "the clients and this script")
    add("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: the official client
    add("--url", help=argparse.SUPPRESS)
    add("--calls", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    if not args.scenarios or any(s not in SCENARIOS for s in args.scenarios):
        parser.error(f"--scenarios takes a comma-separated subset of {', '.join(SCENARIOS)}")
    args.limiters = [s.strip() for s in str(args.limiters).split(",") if s.strip()]
    if not args.limiters or any(s not in LIMITERS for s in args.limiters):
        parser.error(f"--limiters takes a comma-separated subset of {', '.join(LIMITERS)}")
    if min(args.people, args.limited_people, args.repeat) < 1 or args.latency_ms < 0:
        parser.error("--people, --limited-people and --repeat must be positive, --latency-ms not "
                     "negative")  # fmt: skip
    check_cores(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(official_worker(args.url, args.calls, args.people)))
        return 0
    try:
        with (
            tempfile.TemporaryDirectory(prefix="segment-delivery-") as tmp,
            client_side(args.client_cpu),
        ):
            return bench(args, Path(tmp))
    except BenchError as exc:
        print(f"segment_delivery: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
