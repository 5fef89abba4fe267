"""Bulk against PATCH (issue 10): profiles landed per second under a rate limit, and bulk's CPU.

One identifier-keyed extract, generated: person ``i`` has an email, a phone number (E.164), a
first name and two Loyalty traits (``points`` NUMBER, ``tier``); the emulator's seed already
knows every third person (``i % 3 == 0``: same email and phone, other trait values), the rest are
new. The job maps email and phone to the ``Contact`` traits the store promotes, so the same job
runs in both modes (``[send] mode``); in PATCH mode it asks Lookup (``lookup = true``) and creates
the people nobody knows (``on_unresolved = "create"``); bulk asks nothing and upserts. Every job
runs at ``[send] concurrency`` = ``--concurrency`` (4).

1. **Rate-limited.** The emulator at ``--rate 10 --burst 1``, the job at ``rate = 10``,
   ``adaptive = true``. ``python -m backfill run JOB --quiet`` runs as a subprocess pinned to the
   client core (the emulator on the other), once in PATCH mode over the first ``--patch-people``
   people (120: two lookups and one write each, ~50 s at 10 requests/s) and once in bulk mode
   over ``--bulk-people`` (100,000: 100 batches of 1,000); each run on a fresh emulator started
   from the seed with ``--state``, the two alternated ``--repeat`` times. Afterwards the emulator
   is started again on that state with no limit and the store is read back (every profile listed
   and fetched): **landed** = the extract's people whose one profile holds every trait the
   extract gives them (people with two profiles, a stale one, or none are counted apart).
   Reported: landed per second end to end (process start to exit: planning and its lookups
   included) and over the delivery stage (``seconds`` in summary.json), the server's requests by
   operation, its 429 share, its CPU, and the ratio bulk / PATCH (target >= 500x end to end;
   bulk 429s < 1 %).
2. **Unlimited.** No limit, job ``rate = 1000000``, bulk, ``--unlimited-people`` (100,000), in
   this process: the plan is built first (``pipeline.build_plan``, not measured), then
   ``pipeline.deliver_planned`` - ``run``'s delivery path (``_deliver_and_report``), the one
   ``reconcile --fix`` uses - is timed with ``time.process_time()`` (every thread: the event
   loop's, which is this one, and the checkpoint's; ``time.thread_time()`` splits them).
   ``deliver_planned`` first loads the plan into the checkpoint (``RunDB.replace_units``), which
   ``run`` does at the end of planning, so that step's CPU is measured alone on a scratch
   checkpoint and subtracted: **delivery CPU per profile** (target <= 20 us). The store is read
   back as above. Next to it, the emulator's own ceiling for bulk bodies: the plan's bodies, 1,000
   to a request, ``PUT`` by a minimal aiohttp client at concurrency 1 and 4 (server 202 count x
   profiles / wall), each on a fresh emulator from the seed, in memory and with ``--state`` (as
   the rate-limited runs keep it).
3. If the CPU target is missed, one more delivery runs under cProfile, CPU time per thread (the
   event loop's, and the checkpoint's by wrapping ``AsyncDB._serve`` for that run), and the
   functions with the most own time are printed (``--profile always|never`` overrides).

``--scenarios paced`` (not in the default set) asks where bulk's 429s come from: on a fresh
emulator at ``--rate 10 --burst 1`` (in memory, then with ``--state``), ``--paced-requests``
Lookups and then as many bulk requests are started every 110 ms, 10 % under the limit, whatever
the answers (an open loop: the arrivals of an ideal client bucket), and the 429s are counted.

::

    python bench/delivery_modes.py                       # both scenarios, --repeat 2 (~8 min)
    python bench/delivery_modes.py --scenarios limited --concurrency 1
    python bench/delivery_modes.py --scenarios unlimited --repeat 3 --profile never
    python bench/delivery_modes.py --scenarios paced                      # ~45 s

Targets are reported, not enforced (a benchmark, not a timed test). Exits 1 if a run's counts are
wrong (``run`` did not exit 0, or fewer people landed than the extract holds), 2 if the benchmark
could not run. Results: BENCHMARKS.md, "Delivery modes: bulk against PATCH".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import csv
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from unittest import mock

import aiohttp
import httpx
import polars as pl
from common import Process, add_cores, check_cores, child_env, pct, run_process
from emulator_patch import (
    CLOCK_TICKS,
    PASSWORD,
    TIERS,
    USERNAME,
    BenchError,
    core_times,
    process_cpu,
    stats,
)
from plan_throughput import machine
from transport import emulator, pin

from backfill.checkpoint import RunDB, RunLock
from backfill.config import Job, load_job
from backfill.deliver.loop import AsyncDB
from backfill.pipeline import RunResult, build_plan, deliver_planned
from backfill.report import PlanSummary

STORE_ID: Final = "mem_store_01jmodebench00000000000000"
KNOWN_EVERY: Final = 3  # the seed knows person i when i % 3 == 0
BATCH: Final = 1_000  # profiles per bulk request (memory_bulk.MAX_PROFILES)
RATIO_TARGET: Final = 500.0  # bulk / PATCH, landed profiles per second
SHARE_429_TARGET: Final = 0.01  # bulk, under
CPU_TARGET_US: Final = 20.0  # delivery CPU per profile, at most
# Reading the store back is latency-bound: 8 GETs in flight kept both cores under half busy.
READ_CONCURRENCY: Final = 64
AUTH: Final = {
    "Authorization": "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
}

Mode = Literal["patch", "bulk"]
SCENARIOS: Final = ("limited", "unlimited", "paced")

JOB: Final = """\
name = "{name}"

[connection]
base_url = "{url}"
store_id = "{store}"

[source]
paths = ["{csv}"]

[identity]
{identity}
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"

[[identity.identifiers]]
column = "phone"
id_type = "phone"
normalization = "phone"

[traits.Contact]
email = "email"
phone = "phone"
firstName = "first_name"

[traits.Loyalty]
points = {{ column = "points", type = "NUMBER" }}
tier = "tier"

[send]
mode = "{mode}"
concurrency = {concurrency}
rate = {rate}
adaptive = true

[output]
dir = "{out}"
"""

IDENTITY: Final[dict[Mode, str]] = {
    "patch": 'lookup = true\non_unresolved = "create"\n',
    "bulk": "",  # the store resolves: nothing to look up, nothing to create
}


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class Person:
    """What the extract says of person ``i``: what a landed profile must hold."""

    email: str
    phone: str
    first_name: str
    points: int
    tier: str


def person(i: int) -> Person:
    return Person(
        email=f"person{i:07d}@bench.example",
        phone=f"+1{2_000_000_000 + 7 * i}",  # ten digits after +1: E.164 as the store keeps it
        first_name=f"P{i}",
        points=(i * 7) % 100_000 + 1,
        tier=TIERS[(i + 1) % 3],
    )


def person_index(email: str) -> int | None:
    """``i`` of ``person{i}@bench.example``; None for any other address."""
    name, _, domain = email.partition("@")
    if domain != "bench.example" or not name.startswith("person"):
        return None
    digits = name.removeprefix("person")
    return int(digits) if digits.isdigit() else None


def write_extract(path: Path, people: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["email", "phone", "first_name", "points", "tier"])
        for i in range(people):
            p = person(i)
            out.writerow([p.email, p.phone, p.first_name, p.points, p.tier])


def write_seed(path: Path, people: int) -> None:
    """The store (email and phone identity, the out-of-the-box Contact group, a Loyalty group)
    and a profile for every ``KNOWN_EVERY``-th person, holding other values than the extract's."""
    loyalty = {
        "displayName": "Loyalty",
        "description": "Loyalty programme.",
        "traits": {"points": {"dataType": "NUMBER"}, "tier": {"dataType": "STRING"}},
    }
    profiles = []
    for i in range(0, people, KNOWN_EVERY):
        p = person(i)
        contact = {"email": p.email, "phone": p.phone, "firstName": "Old"}
        profiles.append(
            {
                "id": f"mem_profile_01mode{i:020d}",
                "traits": {"Contact": contact, "Loyalty": {"points": 0, "tier": TIERS[i % 3]}},
            }
        )
    store = {
        "id": STORE_ID,
        "displayName": "modes",
        "description": "Delivery modes benchmark.",
        "traitGroups": [loyalty],
        "profiles": profiles,
    }
    path.write_text(json.dumps({"stores": [store]}), encoding="utf-8")


@dataclass(frozen=True)
class Data:
    extract: Path
    seed: Path
    people: int


def make_data(work: Path, people: int) -> Data:
    """The extract of the first ``people`` people and its seed (made once per size)."""
    extract, seed = work / f"extract-{people}.csv", work / f"seed-{people}.json"
    if not (extract.is_file() and seed.is_file()):
        write_extract(extract, people)
        write_seed(seed, people)
    return Data(extract, seed, people)


def write_job(
    path: Path, name: str, url: str, data: Data, mode: Mode, rate: float, concurrency: int
) -> Path:
    """The job file; its output folder is ``path``'s stem next to it."""
    out = path.with_suffix("")
    path.write_text(
        JOB.format(
            name=name,
            url=url,
            store=STORE_ID,
            csv=data.extract,
            identity=IDENTITY[mode],
            mode=mode,
            concurrency=concurrency,
            rate=f"{rate:g}",
            out=out,
        ),
        encoding="utf-8",
    )
    return out


# ------------------------------------------------------------------ reading the store back


@dataclass(frozen=True)
class Landed:
    """What the store holds for the extract's people, read back over the API."""

    profiles: int  # live profiles in the store, anyone's
    landed: int  # people whose (single) profile holds every trait the extract gives them
    stale: int  # people with a profile that lacks a value of the extract
    duplicates: int  # people with more than one profile
    missing: int  # people with no profile at all
    seconds: float  # the read-back itself


def holds(traits: dict[str, Any], p: Person) -> bool:
    contact, loyalty = traits.get("Contact", {}), traits.get("Loyalty", {})
    return bool(
        contact.get("email") == p.email
        and contact.get("phone") == p.phone
        and contact.get("firstName") == p.first_name
        and loyalty.get("points") == p.points
        and loyalty.get("tier") == p.tier
    )


async def _read_back(url: str, people: int) -> Landed:
    started = time.perf_counter()
    base = f"/v1/Stores/{STORE_ID}/Profiles"
    async with aiohttp.ClientSession(
        base_url=url,
        headers=AUTH,
        connector=aiohttp.TCPConnector(limit=READ_CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:

        async def get(path: str, params: dict[str, str]) -> dict[str, Any]:
            async with session.get(path, params=params) as response:
                if response.status != 200:
                    raise BenchError(f"reading {path} back: HTTP {response.status}")
                body: dict[str, Any] = await response.json()
                return body

        ids: list[str] = []
        params = {"pageSize": "100"}
        while True:
            page = await get(base, params)
            ids += page["profiles"]
            token = page["meta"].get("nextToken")
            if not token:
                break
            params["pageToken"] = token
        queue = iter(ids)
        found: dict[int, list[bool]] = {}

        async def worker() -> None:
            for profile_id in queue:
                got = await get(f"{base}/{profile_id}", {"traitGroups": "Contact,Loyalty"})
                traits = got["traits"]
                i = person_index(str(traits.get("Contact", {}).get("email", "")))
                if i is not None and i < people:
                    found.setdefault(i, []).append(holds(traits, person(i)))

        await asyncio.gather(*(worker() for _ in range(READ_CONCURRENCY)))
    landed = sum(1 for seen in found.values() if seen == [True])
    stale = sum(1 for seen in found.values() if len(seen) == 1 and not seen[0])
    duplicates = sum(1 for seen in found.values() if len(seen) > 1)
    return Landed(len(ids), landed, stale, duplicates, people - len(found),
                  time.perf_counter() - started)  # fmt: skip


def read_back(url: str, people: int) -> Landed:
    return asyncio.run(_read_back(url, people))


# ------------------------------------------------------------------ 1. rate-limited


@dataclass(frozen=True)
class Limited:
    mode: Mode
    repeat: int
    people: int
    process: Process
    summary: dict[str, Any]  # summary.json
    server: dict[str, Any]  # the limited emulator's stats after the run
    emulator_cpu: float  # its CPU seconds over the run
    landed: Landed

    @property
    def delivery(self) -> float:
        return float(self.summary["seconds"])

    @property
    def end_to_end_rate(self) -> float:
        return self.landed.landed / self.process.wall

    @property
    def delivery_rate(self) -> float:
        return self.landed.landed / self.delivery if self.delivery else 0.0

    def ops(self, status: str | None = None) -> Counter[str]:
        """Requests per operation (answered ``status``, or any)."""
        return Counter(
            {
                op: sum(n for s, n in by.items() if status is None or s == status)
                for op, by in self.server["byOperation"].items()
            }
        )

    @property
    def throttled(self) -> int:
        return int(self.server["byStatus"].get("429", 0))

    @property
    def share_429(self) -> float:
        total = int(self.server["requests"])
        return self.throttled / total if total else 0.0

    @property
    def ok(self) -> bool:
        return self.summary["exit_code"] == 0 and self.landed.landed == self.people


def limited_run(
    args: argparse.Namespace, work: Path, http: httpx.Client, data: Data, mode: Mode, rep: int
) -> Limited:
    """One ``backfill run`` on a fresh rate-limited emulator, then the store read back."""
    name = f"limited-{mode}-{rep}"
    state = work / f"{name}.sqlite"
    limit = ["--rate", f"{args.emulator_rate:g}", "--burst", "1", "--state", str(state)]
    with emulator(data.seed, args.server_cpu, work / f"{name}.log", limit) as (proc, url):
        job = work / f"{name}.toml"
        out = write_job(job, name, url, data, mode, args.emulator_rate, args.concurrency)
        stats(http, url, reset=True)
        cmd = [*pin(args.client_cpu), sys.executable, "-m", "backfill", "run", str(job), "--quiet"]
        cpu0 = process_cpu(proc.pid)
        process = run_process(cmd, work, (args.server_cpu, args.client_cpu))
        emulator_cpu = process_cpu(proc.pid) - cpu0
        server = stats(http, url)
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise BenchError(
            f"{name}: backfill run wrote no summary (exit {process.done.returncode}):\n"
            f"{process.done.stderr}"
        )
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    unlimited = ["--state", str(state)]  # the state the run left, read without a limit
    with emulator(data.seed, args.server_cpu, work / f"{name}-read.log", unlimited) as (_, url):
        landed = read_back(url, data.people)
    return Limited(mode, rep, data.people, process, summary, server, emulator_cpu, landed)


def limited_runs(args: argparse.Namespace, work: Path, http: httpx.Client) -> list[str]:
    """PATCH and bulk, alternated (PATCH first in odd repeats)."""
    data = {
        "patch": make_data(work, args.patch_people),
        "bulk": make_data(work, args.bulk_people),
    }
    done: list[Limited] = []
    for rep in range(1, args.repeat + 1):
        modes: list[Mode] = ["patch", "bulk"] if rep % 2 else ["bulk", "patch"]
        for mode in modes:
            r = limited_run(args, work, http, data[mode], mode, rep)
            done.append(r)
            print(
                f"  limited {mode} repeat {rep}: {r.landed.landed:,} of {r.people:,} landed, "
                f"{r.end_to_end_rate:,.1f} profiles/s end to end, {pct(r.share_429)} 429s, "
                f"exit {r.summary['exit_code']}",
                flush=True,
            )
    report_limited(done, args)
    return [
        f"limited {r.mode} repeat {r.repeat}: exit {r.summary['exit_code']}, "
        f"{r.landed.landed:,} of {r.people:,} people landed"
        for r in done
        if not r.ok
    ]


def report_limited(done: Sequence[Limited], args: argparse.Namespace) -> None:
    print(
        f"\n1. Rate-limited: emulator --rate {args.emulator_rate:g} --burst 1, job rate "
        f"{args.emulator_rate:g} adaptive, concurrency {args.concurrency}; PATCH "
        f"{args.patch_people:,} people, bulk {args.bulk_people:,} (1 in {KNOWN_EVERY} known to "
        "the seed)"
    )
    print(
        "| repeat | mode | people | landed | stale / dup. / missing | server requests "
        "(lookup / create / patch / bulk / other) | 429 | 429 share | wall s | delivery s "
        "| **landed/s end to end** | landed/s delivery | client CPU s | emulator CPU s "
        "(of wall) | exit |"
    )
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in done:
        ops = r.ops()
        named = ("profiles.lookup", "profiles.create", "profiles.patch", "profiles.bulk")
        other = sum(ops.values()) - sum(ops[o] for o in named)
        split = " / ".join(f"{ops[o]:,}" for o in named)
        land = r.landed
        print(
            f"| {r.repeat} | {r.mode} | {r.people:,} | {land.landed:,} | "
            f"{land.stale} / {land.duplicates} / {land.missing} | "
            f"{r.server['requests']:,} ({split} / {other}) | {r.throttled} | "
            f"{pct(r.share_429)} | {r.process.wall:.1f} | {r.delivery:.1f} | "
            f"**{r.end_to_end_rate:,.1f}** | {r.delivery_rate:,.1f} | {r.process.cpu:.1f} | "
            f"{r.emulator_cpu:.1f} ({r.emulator_cpu / r.process.wall:.0%}) | "
            f"{r.summary['exit_code']} |"
        )
    print("\nrates and requests as the client saw them (summary.json)")
    for r in done:
        s = r.summary
        print(
            f"  repeat {r.repeat} {r.mode}: requests sent {s['requests']['sent']:,}, "
            f"throttled {s['requests']['throttled']}, retries {s['requests']['retries']}; "
            f"rate.final {s['rate']['final']:g}, plan {s['plan'].get('seconds', 0):.1f} s "
            f"(lookups asked {s['plan'].get('lookups_asked', 0):,}); cores busy (emulator's / "
            f"client's, anyone's work) {r.process.core_busy[0]:.0%} / "
            f"{r.process.core_busy[1]:.0%}; read back {r.landed.profiles:,} profiles in "
            f"{r.landed.seconds:.1f} s"
        )
        refused = {op: n for op, n in sorted(r.ops("429").items()) if n}
        print(f"    429s by operation: {refused or 'none'}; throttle: {s.get('throttle')}")
    by_rep: dict[int, dict[str, Limited]] = {}
    for r in done:
        by_rep.setdefault(r.repeat, {})[r.mode] = r
    ratios: list[float] = []
    for rep, pair in sorted(by_rep.items()):
        if {"patch", "bulk"} <= set(pair) and pair["patch"].end_to_end_rate:
            b, p = pair["bulk"], pair["patch"]
            ratio = b.end_to_end_rate / p.end_to_end_rate
            ratios.append(ratio)
            delivery = b.delivery_rate / p.delivery_rate if p.delivery_rate else 0.0
            print(
                f"  repeat {rep}: bulk / PATCH = **{ratio:,.0f}x** end to end "
                f"({delivery:,.0f}x over the delivery stage alone); target "
                f"{RATIO_TARGET:g}x: {'met' if ratio >= RATIO_TARGET else 'NOT met'}"
            )
    bulk = [r for r in done if r.mode == "bulk"]
    if ratios:
        print(f"  median bulk / PATCH end to end: {statistics.median(ratios):,.0f}x")
    if bulk:
        worst = max(r.share_429 for r in bulk)
        verdict = "met" if worst < SHARE_429_TARGET else "NOT met"
        print(
            f"  bulk 429 share, worst run: {pct(worst)}; target < {SHARE_429_TARGET:.0%}: {verdict}"
        )


# ------------------------------------------------------------------ 2. unlimited


def set_credentials() -> None:
    """This process talks to the emulator itself: its credentials, and no other TWILIO_*."""
    env = child_env()
    os.environ.clear()
    os.environ.update(env)


@dataclass(frozen=True)
class Planned:
    job: Job
    out: Path
    summary: PlanSummary
    sources: list[str]
    load_cpu: float  # RunDB.replace_units of this plan into a scratch checkpoint, CPU s


def plan_unlimited(work: Path, name: str, url: str, data: Data, concurrency: int) -> Planned:
    """Plan the unlimited job (not measured), and measure loading its units into a checkpoint."""
    job_path = work / f"{name}.toml"
    out = write_job(job_path, name, url, data, "bulk", 1_000_000, concurrency)
    job = load_job(job_path)
    out.mkdir(mode=0o700, exist_ok=True)
    plan = build_plan(job, quiet=True, keep_rows=True)
    scratch = work / f"{name}-scratch.sqlite"
    with RunDB(scratch) as db:
        cpu0 = time.process_time()
        db.replace_units(plan.plan_path)
        load_cpu = time.process_time() - cpu0
    scratch.unlink()
    return Planned(job, out, plan.summary, plan.sources, load_cpu)


@dataclass(frozen=True)
class Unlimited:
    repeat: int
    people: int
    units: int
    cpu: float  # deliver_planned, all threads
    loop_cpu: float  # of it, the calling thread's (the event loop's, and replace_units)
    load_cpu: float  # the replace_units share of it, measured apart
    wall: float  # deliver_planned
    summary: dict[str, Any]
    server: dict[str, Any]
    emulator_cpu: float  # over deliver_planned
    core_busy: tuple[float, float]  # the emulator's core, this one's: anyone's work
    landed: Landed

    @property
    def delivery_cpu(self) -> float:
        return self.cpu - self.load_cpu

    @property
    def us_per_profile(self) -> float:
        return 1e6 * self.delivery_cpu / self.units

    @property
    def delivery(self) -> float:
        return float(self.summary["seconds"])

    @property
    def landed_rate(self) -> float:
        return self.landed.landed / self.delivery if self.delivery else 0.0

    @property
    def ok(self) -> bool:
        return self.summary["exit_code"] == 0 and self.landed.landed == self.people


@dataclass(frozen=True)
class Timed:
    result: RunResult
    cpu: float  # the process: every thread
    thread_cpu: float  # the calling thread, which runs the event loop
    wall: float


def core_busy(args: argparse.Namespace) -> tuple[int, int]:
    """Busy jiffies so far of the emulator's core and the client's."""
    return core_times(args.server_cpu)[0], core_times(args.client_cpu)[0]


def deliver_timed(planned: Planned, profile: cProfile.Profile | None = None) -> Timed:
    """``deliver_planned`` under the job's run lock, timed."""
    meta = asdict(planned.summary)
    with RunLock(planned.out, "run"):
        cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        try:
            result = deliver_planned(
                planned.job, planned.out, plan_meta=meta, sources=planned.sources, quiet=True
            )
        finally:
            if profile is not None:
                profile.disable()
        wall = time.perf_counter() - wall0
        return Timed(result, time.process_time() - cpu0, time.thread_time() - thread0, wall)


def unlimited_run(
    args: argparse.Namespace, work: Path, http: httpx.Client, data: Data, rep: int
) -> tuple[Unlimited, Planned]:
    name = f"unlimited-{rep}"
    with emulator(data.seed, args.server_cpu, work / f"{name}.log") as (proc, url):
        planned = plan_unlimited(work, name, url, data, args.concurrency)
        stats(http, url, reset=True)
        emulator0, busy0 = process_cpu(proc.pid), core_busy(args)
        t = deliver_timed(planned)
        emulator_cpu = process_cpu(proc.pid) - emulator0
        busy1 = core_busy(args)
        server = stats(http, url)
        landed = read_back(url, data.people)
    done = Unlimited(rep, data.people, planned.summary.requests, t.cpu, t.thread_cpu,
                     planned.load_cpu, t.wall, t.result.summary, server, emulator_cpu,
                     ((busy1[0] - busy0[0]) / CLOCK_TICKS / t.wall,
                      (busy1[1] - busy0[1]) / CLOCK_TICKS / t.wall), landed)  # fmt: skip
    return done, planned


@dataclass(frozen=True)
class Ceiling:
    concurrency: int
    state: bool  # the emulator kept --state (as the rate-limited runs do)
    profiles: int  # sent in 202-answered requests, by the server's count of 202s
    requests: int
    wall: float
    client_cpu: float
    emulator_cpu: float

    @property
    def rate(self) -> float:
        return self.profiles / self.wall


def plan_bodies(planned: Planned) -> list[tuple[bytes, int]]:
    """The plan's unit bodies, ``BATCH`` to a ``{"profiles": [...]}`` request, in plan order:
    what the bulk delivery sends, built before the clock starts."""
    bodies = pl.read_parquet(planned.out / "plan.parquet", columns=["body"])["body"].to_list()
    return [
        (b'{"profiles":[' + ",".join(bodies[k : k + BATCH]).encode() + b"]}",
         len(bodies[k : k + BATCH]))
        for k in range(0, len(bodies), BATCH)
    ]  # fmt: skip


async def _put_all(
    url: str, batches: Sequence[tuple[bytes, int]], concurrency: int
) -> Counter[str]:
    path = f"/v1/Stores/{STORE_ID}/Profiles/Bulk"
    statuses: Counter[str] = Counter()
    queue = iter(batches)
    async with aiohttp.ClientSession(
        base_url=url,
        headers={**AUTH, "Content-Type": "application/json"},
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    ) as session:

        async def worker() -> None:
            for body, _ in queue:
                async with session.put(path, data=body) as response:
                    await response.read()
                    statuses[str(response.status)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def ceiling(
    args: argparse.Namespace, work: Path, http: httpx.Client, data: Data,
    batches: Sequence[tuple[bytes, int]], concurrency: int, state: bool,
) -> Ceiling:  # fmt: skip
    """The emulator's rate for bulk bodies, fresh from the seed: server 202s x profiles / wall."""
    name = f"ceiling-{concurrency}{'-state' if state else ''}"
    extra = ["--state", str(work / f"{name}.sqlite")] if state else []
    with emulator(data.seed, args.server_cpu, work / f"{name}.log", extra) as (proc, url):
        stats(http, url, reset=True)
        emulator0 = process_cpu(proc.pid)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        statuses = asyncio.run(_put_all(url, batches, concurrency))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        emulator_cpu = process_cpu(proc.pid) - emulator0
        server = stats(http, url)
    accepted = int(server["byOperation"].get("profiles.bulk", {}).get("202", 0))
    if accepted != len(batches):
        raise BenchError(f"{name}: the server accepted {accepted} of {len(batches)} bulk "
                         f"requests: {dict(statuses)}")  # fmt: skip
    profiles = sum(n for _, n in batches)
    return Ceiling(concurrency, state, profiles, len(batches), wall, cpu, emulator_cpu)


def profile_delivery(args: argparse.Namespace, work: Path, http: httpx.Client, data: Data) -> None:
    """One more delivery under cProfile, CPU time per thread: the calling thread (the event
    loop's) and the checkpoint's (``AsyncDB``'s worker thread, profiled by wrapping its loop
    for this run only)."""
    loop = cProfile.Profile(time.thread_time)  # CPU, not wall: waiting on the server is free
    checkpoint = cProfile.Profile(time.thread_time)
    serve = AsyncDB._serve

    def profiled_serve(self: AsyncDB) -> None:
        checkpoint.enable()
        try:
            serve(self)
        finally:
            checkpoint.disable()

    with (
        emulator(data.seed, args.server_cpu, work / "profiled.log") as (_, url),
        mock.patch.object(AsyncDB, "_serve", profiled_serve),
    ):
        planned = plan_unlimited(work, "profiled", url, data, args.concurrency)
        t = deliver_timed(planned, loop)
    print(
        f"\n3. cProfile of one delivery ({planned.summary.requests:,} profiles; CPU under the "
        f"profilers {t.cpu:.2f} s, of it the calling thread {t.thread_cpu:.2f} s; wall "
        f"{t.wall:.2f} s)"
    )
    for title, profile, order in (
        ("the calling thread (event loop; replace_units and reports before and after)", loop,
         "tottime"),
        ("the calling thread, cumulative", loop, "cumulative"),
        ("the checkpoint thread (AsyncDB)", checkpoint, "tottime"),
    ):  # fmt: skip
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(order).print_stats(args.profile_lines)
        body = text.getvalue().strip().splitlines()
        print(f"\n{title}, by {order}:")
        print("\n".join(line for line in body if line.strip()))


def unlimited_runs(args: argparse.Namespace, work: Path, http: httpx.Client) -> list[str]:
    set_credentials()
    data = make_data(work, args.unlimited_people)
    done: list[Unlimited] = []
    for rep in range(1, args.repeat + 1):
        u, planned = unlimited_run(args, work, http, data, rep)
        done.append(u)
        print(
            f"  unlimited repeat {rep}: {u.us_per_profile:.1f} us CPU/profile, "
            f"{u.landed_rate:,.0f} landed/s, exit {u.summary['exit_code']}; read back "
            f"{u.landed.profiles:,} profiles in {u.landed.seconds:.1f} s",
            flush=True,
        )
    batches = plan_bodies(planned)
    ceilings: list[Ceiling] = []
    for state in (False, True):
        for c in args.ceiling_concurrency:
            ceilings.append(ceiling(args, work, http, data, batches, c, state))
            print(f"  ceiling c={c}{' --state' if state else ''}: {ceilings[-1].rate:,.0f} "
                  "profiles/s", flush=True)  # fmt: skip
    median_us = report_unlimited(done, ceilings, args)
    missed = median_us > CPU_TARGET_US
    if args.profile == "always" or (args.profile == "auto" and missed):
        profile_delivery(args, work, http, data)
    return [
        f"unlimited repeat {u.repeat}: exit {u.summary['exit_code']}, "
        f"{u.landed.landed:,} of {u.people:,} people landed"
        for u in done
        if not u.ok
    ]


def report_unlimited(
    done: Sequence[Unlimited], ceilings: Sequence[Ceiling], args: argparse.Namespace
) -> float:
    print(
        f"\n2. Unlimited: bulk, job rate 1000000, concurrency {args.concurrency}, "
        f"{args.unlimited_people:,} people (1 in {KNOWN_EVERY} known to the seed), in process"
    )
    print(
        "| repeat | units | landed | stale / dup. / missing | server bulk 202 | not 202 "
        "| deliver_planned CPU s (loop thread / others) | replace_units CPU s "
        "| **delivery CPU us/profile** | delivery s | **landed/s** | emulator CPU (of wall) "
        "| cores busy |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for u in done:
        ok = int(u.server["byOperation"].get("profiles.bulk", {}).get("202", 0))
        land = u.landed
        print(
            f"| {u.repeat} | {u.units:,} | {land.landed:,} | "
            f"{land.stale} / {land.duplicates} / {land.missing} | {ok} | "
            f"{int(u.server['requests']) - ok} | {u.cpu:.2f} ({u.loop_cpu:.2f} / "
            f"{u.cpu - u.loop_cpu:.2f}) | {u.load_cpu:.2f} | **{u.us_per_profile:.1f}** | "
            f"{u.delivery:.2f} | **{u.landed_rate:,.0f}** | {u.emulator_cpu / u.wall:.0%} | "
            f"{u.core_busy[0]:.0%} / {u.core_busy[1]:.0%} |"
        )
    print("\nthe emulator's ceiling for the same bodies (minimal aiohttp client, fresh emulator)")
    print(
        "| emulator | concurrency | requests | profiles | wall s | **profiles/s** "
        "| emulator CPU (of wall) | emulator CPU ms/request | client CPU us/profile |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in ceilings:
        print(
            f"| {'--state' if c.state else 'in memory'} | {c.concurrency} | {c.requests} | "
            f"{c.profiles:,} | {c.wall:.2f} | **{c.rate:,.0f}** | "
            f"{c.emulator_cpu / c.wall:.0%} | {1e3 * c.emulator_cpu / c.requests:.0f} | "
            f"{1e6 * c.client_cpu / c.profiles:.1f} |"
        )
    median_us = statistics.median(u.us_per_profile for u in done)
    verdict = "met" if median_us <= CPU_TARGET_US else "NOT met"
    print(
        f"  median delivery CPU: {median_us:.1f} us/profile; target <= {CPU_TARGET_US:g} us: "
        f"{verdict}"
    )
    memory = [c.rate for c in ceilings if not c.state]
    if memory:
        best = max(memory)
        rate = statistics.median(u.landed_rate for u in done)
        print(
            f"  median landed/s {rate:,.0f} = {rate / best:.0%} of the emulator's best ceiling "
            f"in memory ({best:,.0f} profiles/s)"
        )
    return median_us


# ------------------------------------------------------------------ paced (diagnostic)


def bulk_request(start: int) -> bytes:
    """``BATCH`` people from ``start`` as one bulk body, as the plan writes them."""
    profiles = []
    for i in range(start, start + BATCH):
        p = person(i)
        contact = {"email": p.email, "phone": p.phone, "firstName": p.first_name}
        profiles.append({"traits": {"Contact": contact, "Loyalty": {"points": p.points,
                                                                     "tier": p.tier}}})  # fmt: skip
    return json.dumps({"profiles": profiles}, separators=(",", ":")).encode()


async def _paced(url: str, kind: str, count: int, interval: float) -> Counter[str]:
    """``count`` requests started every ``interval`` s whatever the answers (an open loop):
    the arrivals a perfect client bucket makes, with no client-side queueing."""
    bodies = [bulk_request(k * BATCH) for k in range(count)] if kind == "bulk" else []
    statuses: Counter[str] = Counter()
    async with aiohttp.ClientSession(
        base_url=url, headers={**AUTH, "Content-Type": "application/json"}
    ) as session:

        async def one(k: int) -> None:
            if kind == "bulk":
                request = session.put(f"/v1/Stores/{STORE_ID}/Profiles/Bulk", data=bodies[k])
            else:
                lookup = {"idType": "email", "value": person(k).email}
                request = session.post(f"/v1/Stores/{STORE_ID}/Profiles/Lookup", json=lookup)
            async with request as response:
                await response.read()
                statuses[str(response.status)] += 1

        started, tasks = time.perf_counter(), []
        for k in range(count):
            await asyncio.sleep(max(0.0, started + k * interval - time.perf_counter()))
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
    return statuses


def paced_runs(args: argparse.Namespace, work: Path, http: httpx.Client) -> list[str]:
    """Where bulk's 429s come from: requests paced just under the emulator's limit, small
    (Lookup) and bulk, on a fresh limited emulator each, in memory and with --state."""
    data = make_data(work, args.paced_requests * BATCH)
    interval = 1.1 / args.emulator_rate  # 10 % under the limit
    print(
        f"\nPaced: {args.paced_requests} requests started every {1000 * interval:.0f} ms "
        f"(open loop) against --rate {args.emulator_rate:g} --burst 1"
    )
    print("| emulator | requests | answered 429 | share | emulator CPU s |")
    print("|---|---|---:|---:|---:|")
    for state in (False, True):
        for kind in ("lookup", "bulk"):
            name = f"paced-{kind}{'-state' if state else ''}"
            extra = ["--rate", f"{args.emulator_rate:g}", "--burst", "1"]
            extra += ["--state", str(work / f"{name}.sqlite")] if state else []
            with emulator(data.seed, args.server_cpu, work / f"{name}.log", extra) as (proc, url):
                time.sleep(1.5)  # the bucket full, the start-up's work done
                cpu0 = process_cpu(proc.pid)
                got = asyncio.run(_paced(url, kind, args.paced_requests, interval))
                cpu = process_cpu(proc.pid) - cpu0
            n = sum(got.values())
            print(
                f"| {'--state' if state else 'in memory'} | {kind} | {got['429']} | "
                f"{pct(got['429'] / n)} | {cpu:.1f} |"
            )
    return []


# ------------------------------------------------------------------ main


def bench(args: argparse.Namespace, work: Path) -> int:
    os.sched_setaffinity(0, {args.client_cpu})
    started = datetime.now(UTC)
    print(
        f"delivery modes: {started:%Y-%m-%d %H:%M} UTC; {machine()}; scenarios "
        f"{','.join(args.scenarios)}, {args.repeat} repeat(s); emulator on core "
        f"{args.server_cpu}, clients on core {args.client_cpu}",
        flush=True,
    )
    bad: list[str] = []
    with httpx.Client(timeout=30.0) as http:
        if "limited" in args.scenarios:
            bad += limited_runs(args, work, http)
        if "unlimited" in args.scenarios:
            bad += unlimited_runs(args, work, http)
        if "paced" in args.scenarios:
            bad += paced_runs(args, work, http)
    took = (datetime.now(UTC) - started).total_seconds()
    print(f"\nfinished in {took:.0f} s")
    if bad:
        print("FAIL: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--scenarios", default="limited,unlimited",
        help="any of limited, unlimited, paced (limited,unlimited)")  # fmt: skip
    add("--repeat", type=int, default=2, help="runs of each side (2)")
    add("--patch-people", type=int, default=120, help="PATCH extract, rate-limited (120)")
    add("--bulk-people", type=int, default=100_000, help="bulk extract, rate-limited (100000)")
    add("--unlimited-people", type=int, default=100_000, help="extract, unlimited (100000)")
    add("--emulator-rate", type=float, default=10.0, help="emulator and job rate, limited (10)")
    add("--concurrency", type=int, default=4, help="the job's send.concurrency (4)")
    add("--ceiling-concurrency", default="1,4", help="the ceiling client's levels (1,4)")
    add("--profile", choices=("auto", "always", "never"), default="auto",
        help="cProfile one more delivery: when the CPU target is missed (auto)")  # fmt: skip
    add("--profile-lines", type=int, default=25, help="functions listed per ordering (25)")
    add("--paced-requests", type=int, default=60, help="requests of each kind, paced (60)")
    add_cores(parser, "the clients and this script")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    if not args.scenarios or any(s not in SCENARIOS for s in args.scenarios):
        parser.error(f"--scenarios takes a comma-separated subset of {', '.join(SCENARIOS)}")
    try:
        args.ceiling_concurrency = [int(c) for c in str(args.ceiling_concurrency).split(",") if c]
    except ValueError:
        parser.error("--ceiling-concurrency takes comma-separated whole numbers")
    numbers = (args.repeat, args.patch_people, args.bulk_people, args.unlimited_people,
               args.concurrency, args.paced_requests, *args.ceiling_concurrency)  # fmt: skip
    if min(numbers) < 1 or not args.emulator_rate > 0:
        parser.error("counts, concurrency levels and --emulator-rate must be positive")
    check_cores(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="delivery-modes-") as tmp:
            return bench(args, Path(tmp))
    except BenchError as exc:
        print(f"delivery_modes: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
