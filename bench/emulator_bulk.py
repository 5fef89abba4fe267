"""How many profiles a second the emulator applies from ``PUT /Profiles/Bulk`` bodies of 1,000.

bench/emulator_patch.py is the emulator's ceiling for PATCH; this is its ceiling for bulk: when
``backfill run`` in bulk mode is measured against the emulator, the emulator must not be what
limits it. Each measurement starts a fresh emulator (``transport.emulator``: ``backfill emulator``
pinned to one core, no rate limit, faults, latency or write lag; a store with the default email
and phone identity and a validated Loyalty group), this script pinned to the other core. Bodies
are built before the clock starts, ``--profiles-per-body`` profiles each (default 1,000, the
API's maximum), every profile keyed by a new email with a first name and three Loyalty traits:

* ``create``: one pass over a pool of ``--pool`` new emails: each profile is created;
* ``update``: ``--passes`` more passes over the same bodies with new trait values: each profile
  is found by its email and merged into.

``concurrency`` requests are in flight (one ``httpx.AsyncClient``, a pool of that many
connections). Each phase first sends one warm-up body a connection (profiles beyond the pool,
created or updated as in the phase), then is timed from its first request to its last answer.
The rate is the server's own count of ``profiles.bulk`` 202 answers (``/__emulator__/stats``,
reset before each phase, warm-up subtracted) times the profiles a body holds, over the wall
time; the emulator's CPU time over the same stretch (``/proc``) says whether its core was
saturated, this script's whether the client was in the way. Profiles per second of the
emulator's CPU time is also shown: on a shared machine it is the steadier estimate of what the
emulator applies on a core of its own. After the phases a sample of emails is looked up
(exactly one profile each) and read back (the last pass's values)::

    python bench/emulator_bulk.py                     # pool 50,000; concurrency 1 and 4; 2 repeats
    python bench/emulator_bulk.py --pool 50000 --passes 3 --concurrency 1,4,16 --repeat 3

Exits 1 if any request was not answered 202 or a read-back differs, 2 if the benchmark could not
run. Results: reported by the helper that ran it (BENCHMARKS.md folds them in).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
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
    core_times,
    process_cpu,
    stats,
)
from transport import emulator

BULK: Final = f"/v1/Stores/{STORE_ID}/Profiles/Bulk"
DP: Final = f"/v1/Stores/{STORE_ID}/Profiles"
TIMEOUT: Final = 120.0


def write_seed(path: Path) -> None:
    """One store (default identity: email then phone; the out-of-the-box Contact group) and a
    Loyalty group of validated traits; no profiles: the first pass creates them."""
    loyalty = {
        "displayName": "Loyalty",
        "traits": {
            "points": {
                "dataType": "NUMBER",
                "validationRule": {"ruleType": "NUMBER", "min": 0, "max": 1_000_000},
            },
            "tier": {
                "dataType": "STRING",
                "validationRule": {"ruleType": "STRING", "pattern": "^(bronze|silver|gold)$"},
            },
            "subscribed": {"dataType": "BOOLEAN"},
        },
    }
    store = {"id": STORE_ID, "displayName": "bench-bulk", "traitGroups": [loyalty]}
    path.write_text(json.dumps({"stores": [store]}), encoding="utf-8")


def email(i: int) -> str:
    return f"user{i:07d}@bulk.example"


def profile(i: int, version: int) -> dict[str, Any]:
    """Profile ``i`` as written by pass ``version`` (0 creates it; later passes change it)."""
    return {
        "traits": {
            "Contact": {"email": email(i), "firstName": f"First{i}"},
            "Loyalty": {
                "points": (i * 7 + version) % 1_000_000,
                "tier": TIERS[(i + version) % 3],
                "subscribed": (i + version) % 2 == 0,
            },
        }
    }


def bodies(first: int, end: int, per_body: int, version: int) -> list[bytes]:
    """Profiles ``first .. end - 1`` as bulk bodies, JSON-encoded once, ahead of the clock."""
    return [
        json.dumps(
            {"profiles": [profile(i, version) for i in range(start, min(end, start + per_body))]},
            separators=(",", ":"),
        ).encode()
        for start in range(first, end, per_body)
    ]


@dataclass(frozen=True)
class Phase:
    """One timed phase against one emulator."""

    name: str
    concurrency: int
    repeat: int
    requests: int
    profiles: int  # profiles the server accepted: its 202 count times the body size
    wall: float
    client_cpu: float  # this script's CPU time over the phase, share of one core
    emulator_cpu: float  # share of one core over the phase
    core_busy: float  # the emulator's core, anyone's work, share
    p50_ms: float
    max_ms: float
    not_202: dict[str, int]
    body_kib: float

    @property
    def rate(self) -> float:
        return self.profiles / self.wall

    @property
    def per_cpu_second(self) -> float:
        """Profiles a second of the emulator's CPU applied: its ceiling on a core of its own,
        which a shared machine's wall-clock rate understates when others use that core."""
        return self.profiles / (self.emulator_cpu * self.wall) if self.emulator_cpu else 0.0


class Clocks:
    """Wall time, this process's CPU time, the emulator's CPU time and its core's busy time."""

    def __init__(self, pid: int, cpu: int) -> None:
        self.pid, self.cpu = pid, cpu
        self.start = self.now()

    def now(self) -> tuple[float, float, float, float]:
        busy = core_times(self.cpu)[0] / CLOCK_TICKS
        return time.perf_counter(), time.process_time(), process_cpu(self.pid), busy

    def shares(self) -> tuple[float, float, float, float]:
        """Wall seconds since the start, then client CPU, emulator CPU, core busy as shares."""
        (t0, c0, e0, b0), (t1, c1, e1, b1) = self.start, self.now()
        wall = t1 - t0
        return wall, (c1 - c0) / wall, (e1 - e0) / wall, (b1 - b0) / wall


async def send_all(
    url: str, warm: Sequence[bytes], payloads: Sequence[bytes], concurrency: int,
    pid: int, cpu: int,
) -> tuple[Clocks, list[float]]:  # fmt: skip
    """PUT the ``warm`` bodies (one a connection: they open the pool), start the clocks, PUT
    every payload ``concurrency`` at a time; the clocks and each timed request's seconds. A
    non-202 is counted by the server (and reported from its stats), so it is not raised here."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=url, auth=(USERNAME, PASSWORD), timeout=TIMEOUT, limits=limits
    ) as client:

        async def worker(todo: Iterator[bytes], timed: bool) -> None:
            for payload in todo:  # one shared iterator: each body is sent once
                t0 = time.perf_counter()
                await client.put(BULK, content=payload, headers=headers)
                if timed:
                    latencies.append(time.perf_counter() - t0)

        warming = iter(warm)
        await asyncio.gather(*(worker(warming, False) for _ in range(concurrency)))
        clocks = Clocks(pid, cpu)
        todo = iter(payloads)
        await asyncio.gather(*(worker(todo, True) for _ in range(concurrency)))
    return clocks, latencies


def run_phase(
    name: str, url: str, pid: int, http: httpx.Client, warm: Sequence[bytes],
    payloads: Sequence[bytes], per_body: int, concurrency: int, repeat: int, server_cpu: int,
) -> Phase:  # fmt: skip
    stats(http, url, reset=True)
    clocks, latencies = asyncio.run(send_all(url, warm, payloads, concurrency, pid, server_cpu))
    wall, client_cpu, emulator_cpu, core_busy = clocks.shares()
    seen = stats(http, url)
    ok = seen["byOperation"].get("profiles.bulk", {}).get("202", 0) - len(warm)
    not_202 = {k: v for k, v in seen["byStatus"].items() if k != "202"}
    if seen["requests"] != ok + len(warm):
        not_202.setdefault("other /v1 requests", seen["requests"] - ok - len(warm))
    ordered = sorted(latencies)
    return Phase(
        name=name,
        concurrency=concurrency,
        repeat=repeat,
        requests=len(payloads),
        profiles=ok * per_body,
        wall=wall,
        client_cpu=client_cpu,
        emulator_cpu=emulator_cpu,
        core_busy=core_busy,
        p50_ms=1000 * statistics.median(ordered),
        max_ms=1000 * ordered[-1],
        not_202=not_202,
        body_kib=statistics.mean(len(p) for p in payloads) / 1024,
    )


def read_back(http: httpx.Client, url: str, pool: int, version: int) -> list[str]:
    """Problems with a sample of the pool: each email one profile holding pass ``version``."""
    problems: list[str] = []
    auth = (USERNAME, PASSWORD)
    for i in sorted({0, 1, pool // 3, pool // 2, pool - 2, pool - 1}):
        found = http.post(f"{url}{DP}/Lookup", json={"idType": "email", "value": email(i)},
                          auth=auth).json()  # fmt: skip
        if len(found.get("profiles", [])) != 1:
            problems.append(f"{email(i)}: lookup found {found}")
            continue
        traits = http.get(f"{url}{DP}/{found['profiles'][0]}", auth=auth).json()["traits"]
        if traits != profile(i, version)["traits"]:
            problems.append(f"{email(i)}: holds {traits}")
    return problems


def measure(args: argparse.Namespace, work: Path, concurrency: int, repeat: int) -> list[Phase]:
    """A fresh emulator: the create pass, then the update passes, then the read-back."""
    seed = work / "seed.json"
    per_body = args.profiles_per_body
    create = bodies(0, args.pool, per_body, 0)
    updates = [bodies(0, args.pool, per_body, v) for v in range(1, args.passes + 1)]
    # Warm-up profiles follow the pool: created before the create pass, updated before each
    # update pass, so the warm-up does what the phase it precedes does.
    warm = bodies(args.pool, args.pool + concurrency * per_body, per_body, 0)
    phases: list[Phase] = []
    with (
        emulator(seed, args.server_cpu, work / "emulator.log") as (proc, url),
        httpx.Client(timeout=TIMEOUT) as http,
    ):
        common = (url, proc.pid, http)
        tail = (args.profiles_per_body, concurrency, repeat, args.server_cpu)
        phases.append(run_phase("create", *common, warm, create, *tail))
        for payloads in updates:
            phases.append(run_phase("update", *common, warm, payloads, *tail))
        problems = read_back(http, url, args.pool, args.passes)
    if problems:
        raise ReadBackError("\n".join(problems))
    return phases


class ReadBackError(Exception):
    """The emulator answered 202 but does not hold what was sent."""


def print_table(phases: Sequence[Phase]) -> None:
    header = (f"{'phase':<7} {'conc':>4} {'rep':>3} {'bodies':>6} {'profiles/s':>11} "
              f"{'/emu CPU s':>11} {'wall s':>7} {'p50 ms':>7} {'max ms':>7} {'emu CPU':>7} "
              f"{'core':>5} {'client':>6} {'not 202':>7}")  # fmt: skip
    print(header)
    for p in phases:
        bad = sum(p.not_202.values())
        print(f"{p.name:<7} {p.concurrency:>4} {p.repeat:>3} {p.requests:>6} {p.rate:>11,.0f} "
              f"{p.per_cpu_second:>11,.0f} {p.wall:>7.2f} {p.p50_ms:>7.1f} {p.max_ms:>7.1f} "
              f"{p.emulator_cpu:>7.0%} {p.core_busy:>5.0%} {p.client_cpu:>6.0%} "
              f"{bad:>7}")  # fmt: skip


def summarize(phases: Sequence[Phase], levels: Sequence[int]) -> None:
    print("\nmedian (min-max) by phase and concurrency: profiles/s | per emulator CPU second")
    for name in ("create", "update"):
        for c in levels:
            mine = [p for p in phases if p.name == name and p.concurrency == c]
            if not mine:
                continue
            rates = [p.rate for p in mine]
            cpu = [p.per_cpu_second for p in mine]
            print(f"  {name:<6} concurrency {c:>2}: {statistics.median(rates):>7,.0f} "
                  f"({min(rates):,.0f}-{max(rates):,.0f}) | {statistics.median(cpu):>7,.0f} "
                  f"({min(cpu):,.0f}-{max(cpu):,.0f}), {len(mine)} phases")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pool", type=int, default=50_000,
                        help="profiles created, then updated (default 50,000)")  # fmt: skip
    parser.add_argument("--profiles-per-body", type=int, default=1000,
                        help="profiles a bulk body holds, 1..1000 (default 1000)")  # fmt: skip
    parser.add_argument("--passes", type=int, default=2,
                        help="update passes after the create pass (default 2)")  # fmt: skip
    parser.add_argument("--concurrency", default="1,4",
                        help="requests in flight, comma-separated (default 1,4)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2,
                        help="measurements per level, levels alternated (default 2)")  # fmt: skip
    add_cores(parser, "this script")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency must be comma-separated integers")
    if min(args.pool, args.passes, args.repeat, *args.levels) < 1:
        parser.error("--pool, --passes, --repeat and --concurrency must be positive")
    if not 1 <= args.profiles_per_body <= 1000:
        parser.error("--profiles-per-body must be 1..1000 (the API's bulk limit)")
    if args.pool % args.profiles_per_body:
        parser.error("--pool must be a multiple of --profiles-per-body (full bodies only)")
    check_cores(parser, args)
    return args


def bench(args: argparse.Namespace, work: Path) -> int:
    write_seed(work / "seed.json")
    os.sched_setaffinity(0, {args.client_cpu})  # keep this script off the emulator's core
    print(
        f"emulator bulk throughput: pool {args.pool:,} profiles, {args.profiles_per_body} a body, "
        f"1 create + {args.passes} update passes, concurrency {args.concurrency}, "
        f"{args.repeat} repeat(s); emulator on core {args.server_cpu}, client on core "
        f"{args.client_cpu}"
    )
    phases: list[Phase] = []
    for repeat in range(1, args.repeat + 1):
        order = args.levels if repeat % 2 else args.levels[::-1]  # alternate, same conditions
        for concurrency in order:
            phases += measure(args, work, concurrency, repeat)
    print(f"body size: {phases[0].body_kib:,.0f} KiB on average\n")
    print_table(phases)
    summarize(phases, args.levels)
    failed = [p for p in phases if p.not_202]
    if failed:
        for p in failed:
            print(f"FAIL: {p.name} c={p.concurrency} rep {p.repeat}: {p.not_202}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="emulator-bulk-") as tmp:
            return bench(args, Path(tmp))
    except ReadBackError as exc:
        print(f"emulator_bulk: a read-back differs:\n{exc}", file=sys.stderr)
        return 1
    except BenchError as exc:
        print(f"emulator_bulk: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
