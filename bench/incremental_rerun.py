"""An incremental re-run over 1,000,000 unchanged rows: how long it takes next to the first run.

The issue's target: with ``[incremental] state`` set, a re-run over an extract in which nothing
changed finishes **in under a fifth of the time of the first run, with zero requests sent**.

Generates (polars expressions, deterministic) a CSV of ``--rows`` rows (1,000,000) keyed by a
``profile_id`` column over ``--profiles`` profiles (100,000: ten rows each, far apart in the file,
``updated_at`` out of order) with four Loyalty traits (a NUMBER, a STRING, an ARRAY, a BOOLEAN),
and an emulator seed holding those profiles and that trait group. The emulator runs pinned to
core 0 (``taskset -c 0``) with no limit and ``--state`` in the work dir; each ``backfill run`` is
``python -m backfill run JOB --quiet`` pinned to core 1, timed from process start to exit, its
CPU time read from ``wait4``. Per repeat (``--repeat``, 2), with a fresh incremental state and a
fresh output folder (the emulator's store stays):

1. **first run**: every unit is sent; checks: exit 0, every unit ``updated``, the server
   accepted one PATCH per unit and saw as many PATCHes as the client sent (other ``/v1``
   requests, such as the store schema check ``run`` makes first, are listed, not counted);
2. **re-run**, as a nightly cron job would with tonight's identical extract: the CSV is replaced
   by a byte-identical copy (a new file: new inode and mtime, so ``run`` sees a changed input and
   needs ``--restart``, the documented cron way), then ``backfill run JOB --quiet --restart``;
   checks: exit 0, ``units.skipped_unchanged`` = every unit, ``requests.sent`` = 0 and the server
   saw no ``/v1`` request at all (the issue says zero requests: a read counts too).

The server's counters are reset (``DELETE /__emulator__/stats``) before each run and read after.
Because the machine is shared, each run also reports the emulator's CPU time and the share of
CPU time used by *other* processes (``/proc/stat`` minus our two processes' own CPU), over both
cores and per core, and stolen by the hypervisor.

The code measured is this checkout's ``src/`` as it is, or with ``--rev REV`` that revision,
checked out into a temporary ``git worktree`` and put on ``PYTHONPATH`` for the emulator and
every run (others may have uncommitted work in ``src/``)::

    python bench/incremental_rerun.py --rev HEAD         # 1,000,000 rows, 100,000 profiles, twice
    python bench/incremental_rerun.py --repeat 3 --workdir /tmp/incr    # keep and reuse the data
    python bench/incremental_rerun.py --rows 200000 --profiles 20000

The target is reported, not enforced (a benchmark, not a timed test). Exits 1 if any check
fails, 2 if the benchmark could not run. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import polars as pl
from common import add_cores, check_cores, child_env
from emulator_patch import (
    CLOCK_TICKS,
    BenchError,
    core_times,
    process_cpu,
    stats,
)
from plan_throughput import describe_checkout, worktree
from transport import emulator, pin

STORE_ID: Final = "mem_store_01jincrbench00000000000000"
GENERATOR: Final = 1  # bump when frame() changes, so data cached in a --workdir is remade
TARGET_RATIO: Final = 0.2  # re-run wall / first run wall, from the issue
STRIDE: Final = 7919  # row i belongs to profile (i * STRIDE) mod P: a prime, coprime to 10^k

JOB: Final = """\
name = "{name}"

[connection]
base_url = "{url}"
store_id = "{store}"

[source]
paths = ["{csv}"]
order_by = "updated_at"

[identity]
profile_id_column = "profile_id"
lookup = false

[traits.Loyalty]
points = {{ column = "points", type = "NUMBER" }}
tier = "tier"
tags = {{ column = "tags", type = "ARRAY", split = ";" }}
optIn = {{ column = "opt_in", type = "BOOLEAN" }}

[send]
concurrency = {concurrency}
rate = 100000

[output]
dir = "{out}"

[incremental]
state = "{state}"
"""

Kind = Literal["first", "rerun"]


# ------------------------------------------------------------------ data


def profile_id(i: int) -> str:
    """``mem_profile_01inc`` + 21 digits: ``^mem_profile_[0-7][0-9a-z]{25}$``, as frame() writes."""
    return f"mem_profile_01inc{i:021d}"


def frame(rows: int, profiles: int) -> pl.DataFrame:
    """``rows`` rows over ``profiles`` profiles (row i -> profile (i * 7919) mod P, so with P
    dividing ``rows`` every profile is on rows/P rows, P rows apart), ``updated_at`` over two
    years out of file order, four traits with some blank cells (a blank is skipped, so the
    latest row *with* a value wins per trait)."""
    i = pl.col("i")
    return (
        pl.select(i=pl.int_range(rows, dtype=pl.Int64))
        .with_columns(
            profile_id=pl.format(
                "mem_profile_01inc{}", ((i * STRIDE) % profiles).cast(pl.String).str.zfill(21)
            ),
            points=(i * 31 % 100_000).cast(pl.String),
            tier=pl.when(i % 3 == 0)
            .then(pl.lit("gold"))
            .when(i % 3 == 1)
            .then(pl.lit("silver"))
            .otherwise(pl.lit("bronze")),
            tags=pl.when(i % 4 == 0)
            .then(pl.lit("a;b"))
            .when(i % 4 == 1)
            .then(pl.lit("c"))
            .otherwise(pl.lit("")),
            opt_in=pl.when(i % 2 == 0).then(pl.lit("yes")).otherwise(pl.lit("0")),
            updated_at=pl.from_epoch(
                1_700_000_000 + (i * 104_729) % 60_000_000, time_unit="s"
            ).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        .drop("i")
    )


@dataclass(frozen=True)
class Data:
    csv: Path
    seed: Path
    rows: int
    profiles: int  # distinct profile IDs = the units of a correct plan (one chunk each)
    size: int  # CSV bytes


def generate(work: Path, rows: int, profiles: int) -> Data:
    """Write (or reuse, if an earlier run left them in ``work``) the CSV and the seed."""
    csv = work / f"extract-{rows}-{profiles}.csv"
    seed = work / f"seed-{profiles}.json"
    meta = csv.with_name(csv.name + ".json")
    want = {"generator": GENERATOR, "rows": rows, "profiles_asked": profiles}
    if csv.is_file() and seed.is_file() and meta.is_file():
        known = json.loads(meta.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in want} == want and known.get("size") == csv.stat().st_size:
            print(f"reusing {csv} ({known['size']:,} bytes) and {seed.name}", flush=True)
            return Data(csv, seed, rows, int(known["profiles"]), int(known["size"]))
    started = time.perf_counter()
    df = frame(rows, profiles)
    distinct = df.get_column("profile_id").n_unique()
    df.write_csv(csv)
    del df
    write_seed(seed, distinct, profiles)
    size = csv.stat().st_size
    meta.write_text(json.dumps({**want, "profiles": distinct, "size": size}), encoding="utf-8")
    print(
        f"generated {csv}: {rows:,} rows, {distinct:,} profiles, {size:,} bytes, and the seed, "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Data(csv, seed, rows, distinct, size)


def write_seed(path: Path, distinct: int, profiles: int) -> None:
    """One store with the job's Loyalty trait group and the profiles the CSV names."""
    if distinct != profiles:
        raise BenchError(f"{profiles:,} profiles asked but the data names {distinct:,}")
    group = {
        "displayName": "Loyalty",
        "description": "Incremental re-run benchmark.",
        "traits": {
            "points": {"dataType": "NUMBER"},
            "tier": {"dataType": "STRING"},
            "tags": {"dataType": "ARRAY"},
            "optIn": {"dataType": "BOOLEAN"},
        },
    }
    store = {
        "id": STORE_ID,
        "displayName": "incremental",
        "traitGroups": [group],
        "profiles": [{"id": profile_id(i), "traits": {}} for i in range(profiles)],
    }
    path.write_text(json.dumps({"stores": [store]}), encoding="utf-8")


def new_extract(csv: Path) -> None:
    """Tonight's extract, identical to yesterday's: a byte-identical copy replaces the file
    (new inode, new mtime), as a nightly export job would deliver it."""
    fresh = csv.with_name(csv.name + ".new")
    shutil.copyfile(csv, fresh)
    os.replace(fresh, csv)


# ------------------------------------------------------------------ one run


@dataclass(frozen=True)
class Run:
    repeat: int
    kind: Kind
    exit_code: int
    wall: float  # process start to exit
    cpu: float  # user + system of the run process, from wait4
    emulator_cpu: float  # the emulator's CPU over the same stretch
    others: float  # share of the machine's CPU time (both cores) used by other processes
    steal: float  # share stolen by the hypervisor
    core_others: tuple[float, float]  # others' share of the emulator's core, of the run's core
    summary: dict[str, Any]  # summary.json ({} if none was written)
    server: dict[str, Any]  # /__emulator__/stats after the run
    problems: list[str]

    @property
    def plan_seconds(self) -> float:
        return float(self.summary.get("plan", {}).get("seconds", 0.0))

    @property
    def delivery_seconds(self) -> float:
        return float(self.summary.get("seconds", 0.0))

    @property
    def units(self) -> dict[str, int]:
        units: dict[str, int] = self.summary.get("units", {})
        return units

    @property
    def sent(self) -> int:
        return int(self.summary.get("requests", {}).get("sent", -1))

    @property
    def server_requests(self) -> int:
        return int(self.server["requests"])

    @property
    def server_202(self) -> int:
        return int(self.server["byOperation"].get("profiles.patch", {}).get("202", 0))

    @property
    def server_patches(self) -> int:
        """PATCH /Profiles/{id} requests the server saw, whatever their answer."""
        return sum(self.server["byOperation"].get("profiles.patch", {}).values())

    @property
    def server_other(self) -> dict[str, int]:
        """Every other /v1 request the server saw, by operation (e.g. the schema check's GETs)."""
        return {
            op: sum(statuses.values())
            for op, statuses in self.server["byOperation"].items()
            if op != "profiles.patch"
        }


def cpu_times() -> list[int]:
    """The machine's line of /proc/stat: jiffies per state, all cores together."""
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def machine_load(before: list[int], after: list[int], ours: float) -> tuple[float, float]:
    """(others, steal) over a run, as shares of all CPU time: what processes other than ours
    (``ours`` CPU seconds) used, and what the hypervisor took."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    if total <= 0:
        return 0.0, 0.0
    busy = sum(delta[i] for i in (0, 1, 2, 5, 6)) / CLOCK_TICKS
    return max(0.0, busy - ours) * CLOCK_TICKS / total, delta[7] / total


def timed(cmd: list[str], log: Path, timeout: float) -> tuple[int, float, float]:
    """Run ``cmd`` to its end: (exit code, wall s, CPU s from wait4). A watchdog kills it past
    ``timeout``; it signals only before the child is reaped, so never a reused pid."""
    lock = threading.Lock()
    exited = threading.Event()
    with log.open("wb") as output:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, env=child_env(), stdout=output, stderr=subprocess.STDOUT)

        def watchdog() -> None:
            if not exited.wait(timeout):
                with lock:
                    if not exited.is_set():
                        child.kill()

        thread = threading.Thread(target=watchdog, daemon=True)
        thread.start()
        try:
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
            wall = time.perf_counter() - started
            with lock:
                exited.set()
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        finally:
            with lock:
                if child.returncode is None:  # interrupted: leave nothing behind
                    child.kill()
                    child.wait()
                exited.set()
            thread.join()
    return child.returncode, wall, usage.ru_utime + usage.ru_stime


def run_backfill(
    args: argparse.Namespace,
    http: httpx.Client,
    url: str,
    emulator_pid: int,
    job: Path,
    out: Path,
    repeat: int,
    kind: Kind,
) -> Run:
    """One ``backfill run`` of ``job`` (``--restart`` for the re-run), measured and read back."""
    cmd = [*pin(args.client_cpu), sys.executable, "-m", "backfill", "run", str(job), "--quiet"]
    if kind == "rerun":
        cmd.append("--restart")
    (out / "summary.json").unlink(missing_ok=True)
    stats(http, url, reset=True)
    cores = (args.server_cpu, args.client_cpu)
    emu0, load0, busy0 = process_cpu(emulator_pid), cpu_times(), [core_times(c)[0] for c in cores]
    code, wall, cpu = timed(cmd, job.with_name(f"{kind}.log"), args.timeout)
    emu1, load1, busy1 = process_cpu(emulator_pid), cpu_times(), [core_times(c)[0] for c in cores]
    server = stats(http, url)
    others, steal = machine_load(load0, load1, cpu + (emu1 - emu0))
    # Each of our processes is pinned to its core, so a core's busy time beyond it is others'.
    core_others = tuple(
        max(0.0, (b1 - b0) / CLOCK_TICKS - ours) / wall
        for b0, b1, ours in zip(busy0, busy1, (emu1 - emu0, cpu), strict=True)
    )
    summary_path = out / "summary.json"
    summary: dict[str, Any] = (
        json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    )
    run = Run(
        repeat, kind, code, wall, cpu, emu1 - emu0, others, steal,
        (core_others[0], core_others[1]), summary, server, [],
    )  # fmt: skip
    run.problems.extend(check(run, args.rows))
    if run.problems:
        tail = job.with_name(f"{kind}.log").read_text(errors="replace").strip().splitlines()[-5:]
        run.problems.extend(f"  log: {line}" for line in tail)
    return run


def check(run: Run, rows: int) -> list[str]:
    """What must hold for this run to count (see the module docstring)."""
    where = f"repeat {run.repeat} {run.kind}"
    if not run.summary:
        return [f"{where}: exit {run.exit_code}, no summary.json"]
    units = run.units
    total = units.get("total", -1)
    plan = run.summary.get("plan", {})
    problems: list[str] = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{where}: {what}")

    want(run.exit_code == 0, f"exit {run.exit_code}, not 0")
    want(plan.get("rows") == rows, f"plan read {plan.get('rows')} rows, not {rows:,}")
    want(total == plan.get("requests"), f"{total} units but the plan has {plan.get('requests')}")
    if run.kind == "first":
        want(units.get("updated") == total, f"{units.get('updated')} of {total} units updated")
        want(run.server_202 == total, f"server accepted {run.server_202} PATCHes, not {total}")
        want(
            run.server_requests == run.sent,
            f"server saw {run.server_requests} requests, the client sent {run.sent}",
        )
    else:
        skipped = units.get("skipped_unchanged")
        want(skipped == total, f"{skipped} of {total} units skipped_unchanged")
        want(run.sent == 0, f"client sent {run.sent} requests, not 0")
        want(
            run.server_requests == 0,
            f"server saw {run.server_requests} /v1 requests, not 0: {run.server['byOperation']}",
        )
        want(units.get("sent_this_run") == 0, f"{units.get('sent_this_run')} units sent")
    return problems


# ------------------------------------------------------------------ reporting


def report(runs: Sequence[Run], data: Data, cores: tuple[int, int]) -> None:
    print(
        f"\n{data.rows:,} rows, {data.profiles:,} profiles; wall = process start to exit; "
        "plan = plan.json seconds; delivery = summary.json seconds (after planning); "
        "others/steal = share of both cores' time used by other processes / the hypervisor; "
        "others on core = share of that core's time used by processes other than ours"
    )
    print(
        "| repeat | run | exit | wall s | plan s | delivery s | rest s | units | updated "
        "| skipped unchanged | requests sent | server /v1 requests | server PATCH 202 | other /v1 "
        "| PATCH/s (delivery) | CPU s | emulator CPU s | others | others on core "
        f"{cores[0]} / {cores[1]} | steal |"
    )
    print("|" + "---:|" * 2 + ":---:|" + "---:|" * 10 + "---|" + "---:|" * 4 + ":---:|---:|")
    for r in runs:
        rate = f"{r.server_202 / r.delivery_seconds:,.0f}" if r.server_202 else "-"
        rest = r.wall - r.plan_seconds - r.delivery_seconds
        u = r.units
        other = ", ".join(f"{op} {n:,}" for op, n in sorted(r.server_other.items())) or "0"
        print(
            f"| {r.repeat} | {r.kind} | {r.exit_code} | **{r.wall:.2f}** | {r.plan_seconds:.2f} | "
            f"{r.delivery_seconds:.2f} | {rest:.2f} | {u.get('total', 0):,} | "
            f"{u.get('updated', 0):,} | {u.get('skipped_unchanged', 0):,} | {r.sent:,} | "
            f"{r.server_requests:,} | {r.server_202:,} | {other} | {rate} | {r.cpu:.1f} | "
            f"{r.emulator_cpu:.1f} | {r.others:.0%} | "
            f"{r.core_others[0]:.0%} / {r.core_others[1]:.0%} | {r.steal:.1%} |"
        )
    print(
        f"\n| repeat | first run wall s | re-run wall s | **re-run / first** "
        f"| target < {TARGET_RATIO:g} and 0 requests | CPU s first / re-run | CPU ratio |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|")
    ratios: list[float] = []
    for first, rerun in zip(runs[::2], runs[1::2], strict=True):
        ratio = rerun.wall / first.wall
        ratios.append(ratio)
        missed = [f"ratio >= {TARGET_RATIO:g}"] if ratio >= TARGET_RATIO else []
        if rerun.sent or rerun.server_requests:
            missed.append(f"{max(rerun.sent, rerun.server_requests):,} request(s)")
        verdict = "met" if not missed else "NOT met: " + ", ".join(missed)
        print(
            f"| {first.repeat} | {first.wall:.2f} | {rerun.wall:.2f} | **{ratio:.3f}** "
            f"(1/{1 / ratio:.0f}) | {verdict} | {first.cpu:.1f} / {rerun.cpu:.1f} | "
            f"{rerun.cpu / first.cpu:.3f} |"
        )
    if ratios:
        print(f"median re-run / first: {statistics.median(ratios):.3f}")


# ------------------------------------------------------------------ main


@contextlib.contextmanager
def code_under_test(rev: str | None) -> Iterator[str]:
    """This working tree's src/ (as the venv imports it), or REV checked out into a temporary
    worktree and put first on PYTHONPATH for every child (emulator and runs); yields a label."""
    if rev is None:
        yield describe_checkout()
        return
    with worktree(rev) as (src, short):
        os.environ["PYTHONPATH"] = str(src)  # inherited by every child process
        probe = "import backfill.cli, backfill.pipeline; print(backfill.__file__)"
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=False
        )
        where = Path(done.stdout.strip())
        if done.returncode or not where.is_relative_to(src):
            raise BenchError(f"backfill imports from {where or '?'}, not {src}:\n{done.stderr}")
        try:
            yield f"{rev} = {short} (worktree)"
        finally:
            del os.environ["PYTHONPATH"]


def bench(args: argparse.Namespace, work: Path, code: str) -> int:
    os.sched_setaffinity(0, {args.client_cpu})
    print(
        f"incremental re-run: {args.rows:,} rows, {args.profiles:,} profiles, {args.repeat} "
        f"repeat(s); emulator on core {args.server_cpu}, runs on core {args.client_cpu}; "
        f"work dir {work}; code {code}; Python {platform.python_version()}, "
        f"polars {pl.__version__}",
        flush=True,
    )
    data = generate(work, args.rows, args.profiles)
    state = work / f"emulator-{data.profiles}.sqlite"
    extra = ["--state", str(state)]
    runs: list[Run] = []
    started = time.perf_counter()
    with (
        httpx.Client(timeout=30.0) as http,
        emulator(data.seed, args.server_cpu, work / "emulator.log", extra) as (proc, url),
    ):
        print(f"emulator {url} ready in {time.perf_counter() - started:.1f} s", flush=True)
        for repeat in range(1, args.repeat + 1):
            folder = work / f"repeat-{repeat}"
            shutil.rmtree(folder, ignore_errors=True)  # a fresh state and output folder
            folder.mkdir()
            out = folder / "out"
            job = folder / "job.toml"
            job.write_text(
                JOB.format(
                    name=f"incremental-{repeat}", url=url, store=STORE_ID, csv=data.csv,
                    concurrency=args.concurrency, out=out,
                    state=folder / "state" / "incremental.sqlite",
                ),
                encoding="utf-8",
            )  # fmt: skip
            for kind in ("first", "rerun"):
                if kind == "rerun":
                    new_extract(data.csv)
                r = run_backfill(args, http, url, proc.pid, job, out, repeat, kind)
                runs.append(r)
                print(
                    f"  repeat {repeat} {kind}: exit {r.exit_code}, {r.wall:.2f} s wall "
                    f"(plan {r.plan_seconds:.2f} s, delivery {r.delivery_seconds:.2f} s), "
                    f"{r.sent:,} requests sent, server saw {r.server_requests:,}, "
                    f"others {r.others:.0%} (core {args.client_cpu}: {r.core_others[1]:.0%})",
                    flush=True,
                )
    report(runs, data, (args.server_cpu, args.client_cpu))
    problems = [p for r in runs for p in r.problems]
    if problems:
        print("FAIL:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--rows", type=int, default=1_000_000, help="CSV rows (1000000)")
    add("--profiles", type=int, default=100_000, help="distinct profiles (100000); divides --rows")
    add("--repeat", type=int, default=2, help="first run + re-run pairs (2)")
    add("--concurrency", type=int, default=16, help="the job's send.concurrency (16)")
    add("--workdir", type=Path, help="keep the data, emulator state and runs here (and reuse)")
    add("--rev", help="measure git revision REV (a temporary worktree), not this working tree")
    add("--timeout", type=float, default=3600.0, help="seconds before a run is killed (3600)")
    add_cores(parser, "backfill run")
    args = parser.parse_args(argv)
    if min(args.rows, args.profiles, args.repeat, args.concurrency) < 1:
        parser.error("--rows, --profiles, --repeat and --concurrency must be positive")
    if args.rows % args.profiles:
        parser.error("--profiles must divide --rows (the same number of rows per profile)")
    check_cores(parser, args)
    return args


def run_bench(
    args: argparse.Namespace, name: str, bench: Callable[[argparse.Namespace, Path, str], int]
) -> int:
    """Run ``bench(args, workdir, code)`` for the code at ``args.rev`` in ``args.workdir`` (or a
    temp dir), unwinding on SIGTERM; a BenchError is one line and exit 2."""

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind: stop the emulator, remove the worktree and temp dir

    signal.signal(signal.SIGTERM, terminated)
    try:
        with contextlib.ExitStack() as stack:
            code = stack.enter_context(code_under_test(args.rev))
            if args.workdir is not None:
                args.workdir.mkdir(parents=True, exist_ok=True)
                return bench(args, args.workdir.resolve(), code)
            prefix = name.replace("_", "-") + "-"
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix))
            return bench(args, Path(tmp), code)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), "incremental_rerun", bench)


if __name__ == "__main__":
    sys.exit(main())
