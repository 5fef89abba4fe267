"""How fast ``backfill plan`` turns a 1,000,000-row CSV into request units, end to end.

Generates a deterministic CSV (default 1,000,000 rows, a ``mem_profile_`` ID on every row, about
two rows per profile, ``updated_at`` out of order), writes a job for it and runs
``python -m backfill plan JOB --offline --quiet`` as a subprocess ``--repeat`` times. The wall
time is process start to exit, so interpreter start-up, imports and job loading count; the
library's own time (``seconds`` in plan.json, the figure on the summary's first line) is reported
next to it. Every run is checked: plan.json must say ``rows`` = N and ``requests`` = the number
of distinct profiles in the data (N/2), else the script exits 1. The target from the issue is
300,000 rows/s end to end (reported, not enforced: this is a benchmark, not a timed test).

``--keys email-phone`` plans a second extract instead (issue 9): no profile IDs, only an email
(half of them upper-case) and a phone number per row (90 % US in four spellings, 10 %
international "+<code> ..."), resolved offline (``lookup = false``) through an identity map of
N/2 rows; target 250,000 rows/s. ``--keys both`` (the default) runs the two one after the other::

    python bench/plan_throughput.py                        # 1,000,000 rows, both keys, 3 runs
    python bench/plan_throughput.py --compare 3649098      # also the code before, runs alternated
    python bench/plan_throughput.py --keys email-phone --compare 4c38e8e   # issue 9's figure
    python bench/plan_throughput.py --rows 200000 --repeat 5 --workdir /tmp/pt   # keep the data

The code measured ("after") is this checkout's ``src/`` as it is, or with ``--rev REV`` that
revision. ``--compare REV`` adds a "before": REV is checked out into a temporary ``git worktree``
and the two run alternately (after, before, after, before, ...), each with ``PYTHONPATH`` at its
own ``src/``, so their ratio is taken under the same machine conditions; worktrees are removed
afterwards. ``--compare`` runs that crash, time out or outgrow ``--rss-limit-mib`` are reported,
not fatal. BENCHMARKS.md gives the exact commands behind its results.

bench/plan_memory.py reuses this module for the 5,000,000-row Parquet peak-memory benchmark.
Exits 1 if a run of the code under test fails or any run's counts are wrong, 2 if the benchmark
could not run. Results: BENCHMARKS.md.
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
from typing import Final, Literal

import polars as pl

REPO: Final = Path(__file__).resolve().parents[1]
STORE_ID: Final = "mem_store_01jsamp1e00000000000000000"
GENERATOR: Final = 1  # bump when generate() changes, so cached data in a --workdir is remade
POLL_SECONDS: Final = 0.05  # the watchdog's RSS sampling interval
KIB: Final = 1024
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
GNU_TIME: Final = "/usr/bin/time"  # Debian: apt-get install time
TARGET_RATE: Final = 300_000  # rows/s end to end, from the issue

Format = Literal["csv", "parquet"]
# What identifies a row's profile: a profile ID column (the issue's first benchmark), or only an
# email and a phone number resolved through an identity map (issue 9: no profile IDs, 10 %
# international numbers, a map of N/2 rows), which exercises identifier normalization.
Keys = Literal["profile-id", "email-phone"]
KEYS: Final[tuple[Keys, ...]] = ("profile-id", "email-phone")
TARGETS: Final[dict[Keys, int]] = {"profile-id": TARGET_RATE, "email-phone": 250_000}

JOB: Final = """\
name = "{name}"

[connection]
base_url = "emulator"   # never started: --offline makes no request
store_id = "{store}"

[source]
paths = [{source}]
order_by = "updated_at"

[identity]
{identity}

[traits.Contact]
firstName = "first_name"

[traits.Loyalty]
points = {{ column = "points", type = "NUMBER" }}
tier = "tier"
tags = {{ column = "tags", type = "ARRAY", split = ";" }}
optIn = {{ column = "opt_in", type = "BOOLEAN" }}

[output]
dir = {out}
"""

IDENTITY: Final[dict[Keys, str]] = {
    "profile-id": """\
profile_id_column = "profile_id"

[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
""",
    "email-phone": """\
identity_map = {identity_map}
lookup = false

[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"

[[identity.identifiers]]
column = "phone"
id_type = "phone"
normalization = "phone"
""",
}

# Run in the child's interpreter before the measured runs: proves where ``backfill`` is imported
# from and compiles the variant's bytecode, so no measured run pays for that.
IMPORT_CHECK: Final = (
    "import backfill, backfill.cli, backfill.pipeline, backfill.report; print(backfill.__file__)"
)


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and the plan was wrong)."""


@dataclass(frozen=True)
class Data:
    path: Path
    rows: int
    profiles: int  # distinct profile IDs: the requests a correct plan has
    size: int  # bytes on disk
    keys: Keys = "profile-id"
    identity_map: Path | None = None  # with keys = "email-phone"


@dataclass(frozen=True)
class Variant:
    label: str  # "after" (this checkout) or "before" (--compare)
    rev: str  # what it is, for the report
    src: Path  # goes on PYTHONPATH
    job: Path
    out: Path
    required: bool  # a failed run of it fails the benchmark


@dataclass(frozen=True)
class Run:
    variant: Variant
    index: int  # 1-based repetition
    status: str  # "ok", "exit N", "timeout", "rss limit", "wrong counts"
    wall: float  # seconds, process start to exit
    seconds: float | None  # the library's own time, from plan.json
    peak_kib: int  # ru_maxrss of the plan process, from GNU time
    peak_at: float | None  # seconds after start when the sampled RSS peaked
    cpu: float  # user + system seconds of the child
    steal: float  # % of all CPU time stolen by the hypervisor during the run
    others: float  # % of all CPU time used by other processes during the run
    detail: str  # why it failed; plan.json counts if it ran

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --- data and jobs ---------------------------------------------------------------------------


def frame(n: int) -> pl.DataFrame:
    """N rows, about two per profile (every profile ID on two rows when gcd(7919, N/2) = 1),
    ``updated_at`` spread over two years and out of order."""
    i = pl.col("i")
    return (
        pl.select(i=pl.int_range(n))
        .with_columns(
            profile_id=pl.format(
                "mem_profile_01big{}", ((i * 7919) % max(1, n // 2)).cast(pl.String).str.zfill(21)
            ),
            email=pl.format("u{}@x.io", i),
            first_name=pl.lit("Ann"),
            points=(i * 31 % 100_000).cast(pl.String),
            tier=pl.when(i % 3 == 0).then(pl.lit("gold")).otherwise(pl.lit("silver")),
            tags=pl.when(i % 4 == 0).then(pl.lit("a;b")).otherwise(pl.lit("")),
            opt_in=pl.when(i % 2 == 0).then(pl.lit("yes")).otherwise(pl.lit("0")),
            updated_at=pl.from_epoch(
                1_700_000_000 + (i * 104_729) % 60_000_000, time_unit="s"
            ).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        .drop("i")
    )


# International numbers of the email-phone extract: (country code, national number's leading
# digits, digits of the person number that follow), each a length its country accepts, written
# "+<code> <first 4> <rest>"; the identity map holds them in E.164. GB, DE, FR, IN, AU, BR, MX
# mobiles. None has 10 digits after "+", so main before issue 9 (which read "+6591234567" as
# +1 659 123 4567) still plans this data right and the comparison is of speed only.
INTERNATIONAL: Final = (
    ("44", "7", 9),
    ("49", "15", 9),
    ("33", "6", 8),
    ("91", "9", 9),
    ("61", "4", 8),
    ("55", "119", 8),
    ("52", "55", 8),
)


def _nationals(person: pl.Expr) -> list[tuple[str, pl.Expr]]:
    """(country code, national number) of person ``person`` in each INTERNATIONAL country."""
    return [
        (code, pl.concat_str(pl.lit(lead), person.cast(pl.String).str.zfill(width)))
        for code, lead, width in INTERNATIONAL
    ]


def frame_by_identifiers(n: int) -> pl.DataFrame:
    """N rows, no profile ID: person ``p = (i * 7919) mod N/2`` (about two rows each) with an
    email (upper case on even rows) and a phone number: 90 % US in four spellings, 10 %
    (``p mod 10 = 3``) international; the other columns as in ``frame``."""
    p = ((pl.col("i") * 7919) % max(1, n // 2)).alias("p")
    us = (2_000_000_000 + pl.col("p") * 7).cast(pl.String)
    area, exchange, line = us.str.slice(0, 3), us.str.slice(3, 3), us.str.slice(6, 4)
    spelled = (
        pl.when(pl.col("i") % 4 == 0)
        .then(pl.format("({}) {}-{}", area, exchange, line))
        .when(pl.col("i") % 4 == 1)
        .then(pl.format("{}-{}-{}", area, exchange, line))
        .when(pl.col("i") % 4 == 2)
        .then(pl.format("+1 {} {} {}", area, exchange, line))
        .otherwise(us)
    )
    intl = pl.coalesce(
        pl.when(pl.col("p") // 10 % len(INTERNATIONAL) == k).then(
            pl.format("+{} {} {}", pl.lit(code), national.str.slice(0, 4), national.str.slice(4))
        )
        for k, (code, national) in enumerate(_nationals(pl.col("p")))
    )
    phone = pl.when(pl.col("p") % 10 == 3).then(intl).otherwise(spelled)
    email = (
        pl.when(pl.col("i") % 2 == 0)
        .then(pl.format("U{}@X.io", "p"))
        .otherwise(pl.format("u{}@x.io", "p"))
    )
    base = frame(n).drop("profile_id", "email")
    ids = pl.select(i=pl.int_range(n)).with_columns(p).select(email=email, phone=phone)
    return pl.concat([ids, base], how="horizontal")


def identity_map_frame(n: int) -> pl.DataFrame:
    """N/2 rows, one per person: even persons by email, odd ones by phone (E.164), each with
    the profile ID the plan must send to; so every row resolves through exactly one of them."""
    p = pl.col("p")
    us = pl.format("+1{}", (2_000_000_000 + p * 7).cast(pl.String))
    intl = pl.coalesce(
        pl.when(p // 10 % len(INTERNATIONAL) == k).then(pl.concat_str(pl.lit("+" + code), national))
        for k, (code, national) in enumerate(_nationals(p))
    )
    phone = pl.when(p % 10 == 3).then(intl).otherwise(us)
    return pl.select(p=pl.int_range(max(1, n // 2))).select(
        id_type=pl.when(p % 2 == 0).then(pl.lit("email")).otherwise(pl.lit("phone")),
        value=pl.when(p % 2 == 0).then(pl.format("u{}@x.io", p)).otherwise(phone),
        profile_id=pl.format("mem_profile_01big{}", p.cast(pl.String).str.zfill(21)),
    )


def generate(directory: Path, n: int, fmt: Format, keys: Keys = "profile-id") -> Data:
    """Write (or reuse, if a previous run left it in ``directory``) the extract of N rows."""
    stem = "extract" if keys == "profile-id" else f"extract-{keys}"
    path = directory / f"{stem}-{n}.{fmt}"
    identity_map = directory / f"identity-map-{n}.parquet" if keys == "email-phone" else None
    meta = path.with_name(path.name + ".json")
    want = {"generator": GENERATOR, "rows": n, "format": fmt, "keys": keys}
    if path.is_file() and meta.is_file() and (identity_map is None or identity_map.is_file()):
        known = json.loads(meta.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in want} == want and known.get("size") == path.stat().st_size:
            print(f"reusing {path} ({known['size']:,} bytes)", flush=True)
            return Data(path, n, int(known["profiles"]), int(known["size"]), keys, identity_map)
    started = time.perf_counter()
    if keys == "profile-id":
        df = frame(n)
        profiles = df.get_column("profile_id").n_unique()
    else:
        assert identity_map is not None
        df = frame_by_identifiers(n)
        known_ids = identity_map_frame(n)
        profiles = known_ids.height
        known_ids.write_parquet(identity_map)
    if fmt == "csv":
        df.write_csv(path)
    else:
        df.write_parquet(path, row_group_size=100_000)
    del df
    size = path.stat().st_size
    meta.write_text(json.dumps({**want, "profiles": profiles, "size": size}), encoding="utf-8")
    print(
        f"generated {path}: {n:,} rows, {profiles:,} profiles, {size:,} bytes "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Data(path, n, profiles, size, keys, identity_map)


def write_job(path: Path, name: str, data: Data, out: Path) -> None:
    identity = IDENTITY[data.keys].format(identity_map=json.dumps(str(data.identity_map)))
    path.write_text(
        JOB.format(
            name=name,
            store=STORE_ID,
            source=json.dumps(str(data.path)),  # a JSON string is a valid TOML basic string
            identity=identity,
            out=json.dumps(str(out)),
        ),
        encoding="utf-8",
    )


# --- git ---------------------------------------------------------------------------------------


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def describe_checkout() -> str:
    """``HEAD a61e395``, plus a warning if src/ differs from HEAD (others may be editing it)."""
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "src")
    return f"HEAD {head}" + (" + uncommitted changes in src/" if dirty else "")


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """Check REV out into a temporary detached worktree; yield its src/ and short hash."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    short = git("rev-parse", "--short", commit)
    directory = Path(tempfile.mkdtemp(prefix=f"backfill-bench-{short}-"))
    try:
        git("worktree", "add", "--detach", str(directory), commit)
        yield directory / "src", short
    finally:
        with contextlib.suppress(BenchError):
            git("worktree", "remove", "--force", str(directory))
        shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(BenchError):
            git("worktree", "prune")


# --- running one plan -------------------------------------------------------------------------


def child_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)  # before site-packages: beats the venv's editable install
    return env


def check_import(variant: Variant) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        env=child_env(variant.src),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise BenchError(
            f"{variant.label} ({variant.rev}): cannot import backfill from {variant.src}:\n"
            f"{done.stderr.strip()[-1000:]}"
        )
    where = Path(done.stdout.strip())
    if not where.is_relative_to(variant.src):
        raise BenchError(f"{variant.label}: backfill imports from {where}, not {variant.src}")
    print(f"{variant.label:<6} = {variant.rev}: backfill from {where}", flush=True)


def cpu_times() -> list[int]:
    with open("/proc/stat", encoding="ascii") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def machine_load(before: list[int], after: list[int], cpu: float) -> tuple[float, float]:
    """(steal, others) over a run, in % of all CPU time: what the hypervisor took, and what
    processes other than the plan used (everything busy minus the plan's own CPU seconds)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    if total <= 0:
        return 0.0, 0.0
    busy = sum(delta[i] for i in (0, 1, 2, 5, 6)) / CLOCK_TICKS
    others = max(0.0, busy - cpu) * CLOCK_TICKS
    return 100.0 * delta[7] / total, 100.0 * others / total


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def only_child(pid: int) -> int | None:
    """The one child of ``pid`` (GNU time's command), once it has been forked."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            found = children.read().split()
    except OSError:
        return None
    return int(found[0]) if found else None


def max_rss_kib(path: Path) -> int:
    """GNU time's ``%M``, the last line of its ``-o`` file (after any "terminated by signal")."""
    try:
        return int(path.read_text(encoding="ascii").strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Watch:
    """What the watchdog saw; it kills the plan past the time or RSS limit."""

    killed: str = ""
    peak_kib: int = 0
    peak_at: float | None = None


def run_plan(variant: Variant, index: int, data: Data, timeout: float, rss_limit_kib: int) -> Run:
    """One ``backfill plan`` subprocess: wall time, CPU time, peak RSS, and the plan.json counts,
    checked against the data.

    The plan runs under GNU time, which reports its peak RSS (``%M``, the kernel's ``ru_maxrss``
    of that process). Not ``wait4``/``RUSAGE_CHILDREN`` here: a child spawned straight from this
    process takes this process's own high-water RSS with it through ``exec`` (Linux keeps the
    old address space's peak in ``maxrss``), and after generating 5M rows that is ~1.2 GB, so
    every run would report at least that. GNU time is a few MB.
    """
    shutil.rmtree(variant.out, ignore_errors=True)  # no earlier plan.json can pass the check
    log = variant.job.with_suffix(f".{index}.log")
    peak_file = variant.job.with_suffix(f".{index}.maxrss")
    peak_file.unlink(missing_ok=True)
    plan = [sys.executable, "-m", "backfill", "plan", str(variant.job), "--offline", "--quiet"]
    cmd = [GNU_TIME, "-f", "%M", "-o", str(peak_file), "--", *plan]
    watch = Watch()
    lock = threading.Lock()
    exited = threading.Event()
    planner: list[int] = []  # the plan's pid, once seen
    cpu_before = cpu_times()
    with open(log, "wb") as output:
        started = time.perf_counter()
        child = subprocess.Popen(
            cmd, env=child_env(variant.src), stdout=output, stderr=subprocess.STDOUT
        )

        def kill_plan() -> None:
            """Under ``lock``, while GNU time has not exited (so has not reaped the plan)."""
            pid = planner[0] if planner else only_child(child.pid)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        def watchdog() -> None:
            while not exited.wait(POLL_SECONDS):
                now = time.perf_counter() - started
                if not planner and (pid := only_child(child.pid)) is not None:
                    planner.append(pid)
                rss = rss_kib(planner[0]) if planner else None
                if rss is not None and rss > watch.peak_kib:
                    watch.peak_kib, watch.peak_at = rss, now
                reason = ""
                if now > timeout:
                    reason = f"timeout: still running after {timeout:g} s"
                elif rss is not None and rss > rss_limit_kib:
                    reason = f"rss limit: {rss // KIB:,} MiB > {rss_limit_kib // KIB:,} MiB"
                if reason:
                    with lock:
                        if not exited.is_set():
                            watch.killed = reason
                            kill_plan()
                    return

        thread = threading.Thread(target=watchdog, daemon=True)
        thread.start()
        reaped = False
        try:
            # Wait without reaping, so the watchdog cannot signal a reused pid; then reap.
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
            wall = time.perf_counter() - started
            with lock:
                exited.set()
            _, status, usage = os.wait4(child.pid, 0)  # CPU: GNU time's + its reaped child's
            reaped = True
            child.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if not reaped:  # interrupted: leave no process behind
                with lock:
                    if not exited.is_set():
                        kill_plan()
                    exited.set()
                child.kill()
                child.wait()
            exited.set()
            thread.join()
    cpu = usage.ru_utime + usage.ru_stime
    steal, others = machine_load(cpu_before, cpu_times(), cpu)

    def result(status: str, seconds: float | None, detail: str) -> Run:
        peak = max_rss_kib(peak_file)
        return Run(
            variant, index, status, wall, seconds, peak, watch.peak_at, cpu, steal, others, detail
        )

    if watch.killed:
        return result(watch.killed.split(":")[0], None, watch.killed)
    if child.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return result(
            f"exit {child.returncode}", None, f"exit {child.returncode}: " + " | ".join(tail)
        )
    # `backfill plan` writes into <output>/plan/ since the integrator's change; older revisions
    # (a --compare before it) wrote into the output folder itself.
    found = [p for p in (variant.out / "plan" / "plan.json", variant.out / "plan.json")
             if p.is_file()]  # fmt: skip
    if not found:
        return result("no plan.json", None, f"no plan.json under {variant.out}")
    summary = json.loads(found[0].read_text(encoding="utf-8"))
    rows, requests = summary.get("rows"), summary.get("requests")
    detail = (
        f"rows={rows} requests={requests} profiles={summary.get('profiles')} "
        f"invalid_rows={summary.get('invalid_rows')} rejects={summary.get('rejects')}"
    )
    right = rows == data.rows and requests == data.profiles
    if not right:
        detail += f" (expected rows={data.rows} requests={data.profiles})"
    seconds = summary.get("seconds")
    seconds = float(seconds) if isinstance(seconds, int | float) else None
    return result("ok" if right else "wrong counts", seconds, detail)


# --- the benchmark ---------------------------------------------------------------------------


def parser(description: str, rows: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=rows, help=f"rows to generate (default {rows:,})")
    p.add_argument("--repeat", type=int, default=3, help="runs of each variant (default 3)")
    p.add_argument(
        "--rev",
        metavar="REV",
        help="measure git revision REV (in a temporary worktree) instead of this working tree",
    )
    p.add_argument(
        "--compare", metavar="REV", help="also run git revision REV, alternately with this checkout"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep the generated data (and plans) here and reuse it next time; "
        "default: a temp dir, removed at the end",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before a run is killed (default 600)"
    )
    p.add_argument(
        "--rss-limit-mib",
        type=int,
        default=memory_total_kib() // 2 // KIB,
        help="RSS at which a run is killed (default: half of RAM)",
    )
    return p


def memory_total_kib() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 8 * KIB * KIB


def machine() -> str:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory_total_kib() // KIB:,} MiB, "
        f"Python {platform.python_version()}, polars {pl.__version__}, "
        f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def bench(
    args: argparse.Namespace, fmt: Format, keys: Keys = "profile-id"
) -> tuple[Data, list[Run]]:
    """Generate the data, then run the variants alternately; the caller reports."""
    if args.rows < 2 or args.repeat < 1:
        raise BenchError("--rows must be at least 2 and --repeat at least 1")
    if not os.access(GNU_TIME, os.X_OK):
        raise BenchError(f"needs GNU time at {GNU_TIME} (Debian: apt-get install time)")
    print(machine(), flush=True)
    # Killed politely (SIGTERM), still clean up: the running child, the worktrees, the temp dir.
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="backfill-bench-")))
        else:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        data = generate(work, args.rows, fmt, keys)
        checkout = describe_checkout()
        if args.rev:
            src, short = stack.enter_context(worktree(args.rev))
            after = make_variant(work, data, "after", f"{short} ({args.rev})", src, True)
        else:
            after = make_variant(
                work, data, "after", f"working tree, {checkout}", REPO / "src", True
            )
        variants = [after]
        if args.compare:
            src, short = stack.enter_context(worktree(args.compare))
            variants.append(
                make_variant(work, data, "before", f"{short} ({args.compare})", src, False)
            )
        for variant in variants:
            check_import(variant)
        runs: list[Run] = []
        limit = args.rss_limit_mib * KIB
        for index in range(1, args.repeat + 1):
            for variant in variants:  # after, before, after, before, ...
                run = run_plan(variant, index, data, args.timeout, limit)
                print_run(run, data)
                runs.append(run)
        if not args.rev and describe_checkout() != checkout:
            print(f"warning: the checkout changed during the runs: now {describe_checkout()}")
    return data, runs


def make_variant(
    work: Path, data: Data, label: str, rev: str, src: Path, required: bool
) -> Variant:
    job = work / f"job-{label}-{data.keys}-{data.path.suffix[1:]}.toml"
    out = work / f"out-{label}-{data.keys}-{data.path.suffix[1:]}"
    write_job(job, f"bench-{label}", data, out)
    return Variant(label, rev, src, job, out, required)


def rate(rows: int, seconds: float | None) -> str:
    return f"{rows / seconds:,.0f}" if seconds else "-"


def print_run(run: Run, data: Data) -> None:
    seconds = f"{run.seconds:.3f}" if run.seconds is not None else "-"
    at = f" at {run.peak_at:.1f} s" if run.peak_at is not None else ""
    print(
        f"{run.variant.label:<6} #{run.index}  {run.status:<12} wall {run.wall:7.3f} s "
        f"({rate(data.rows, run.wall if run.ok else None):>9} rows/s)  plan {seconds:>7} s "
        f"({rate(data.rows, run.seconds):>9} rows/s)  peak RSS {run.peak_kib / KIB:7,.0f} MiB{at}  "
        f"CPU {run.cpu:6.2f} s  steal {run.steal:4.1f} %  others {run.others:4.1f} %",
        flush=True,
    )
    if not run.ok:
        print(f"         {run.detail}", flush=True)


def median(runs: Sequence[Run], value: Callable[[Run], float | None]) -> float | None:
    values = [v for r in runs if r.ok and (v := value(r)) is not None]
    return statistics.median(values) if values else None


def summarize(data: Data, runs: Sequence[Run]) -> dict[str, dict[str, float | None]]:
    """Per variant: medians over its successful runs (wall s, plan s, rows/s, peak MiB, ...)."""
    out: dict[str, dict[str, float | None]] = {}
    for label in dict.fromkeys(r.variant.label for r in runs):
        mine = [r for r in runs if r.variant.label == label]
        wall = median(mine, lambda r: r.wall)
        seconds = median(mine, lambda r: r.seconds)
        out[label] = {
            "ok": float(sum(r.ok for r in mine)),
            "runs": float(len(mine)),
            "wall": wall,
            "seconds": seconds,
            "other": median(mine, lambda r: r.wall - r.seconds if r.seconds else None),
            "wall_rate": data.rows / wall if wall else None,
            "rate": data.rows / seconds if seconds else None,
            "peak_mib": median(mine, lambda r: r.peak_kib / KIB),
            "max_peak_mib": max((r.peak_kib / KIB for r in mine if r.ok), default=None),
            "cpu": median(mine, lambda r: r.cpu),
        }
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def exit_code(runs: Sequence[Run]) -> int:
    if any(r.status == "wrong counts" for r in runs):
        return 1
    return 1 if any(r.variant.required and not r.ok for r in runs) else 0


def num(value: float | None, spec: str = ",.0f") -> str:
    return format(value, spec) if value is not None else "-"


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.split("\n", 1)[0] if __doc__ else "", 1_000_000)
    p.add_argument(
        "--keys",
        choices=[*KEYS, "both"],
        default="both",
        help="profile-id: a profile ID on every row (target 300,000 rows/s); email-phone: only "
        "an email and a phone, resolved by an identity map (target 250,000 rows/s); "
        "default both, one after the other",
    )
    args = p.parse_args(argv)
    code = 0
    for keys in KEYS if args.keys == "both" else (args.keys,):
        print(f"\n=== keys: {keys} ===", flush=True)
        try:
            data, runs = bench(args, "csv", keys)
        except BenchError as exc:
            print(f"plan_throughput: {exc}", file=sys.stderr)
            return 2
        report(data, runs)
        code = max(code, exit_code(runs))
    return code


def report(data: Data, runs: Sequence[Run]) -> None:
    stats = summarize(data, runs)
    print(
        f"\nmedians over successful runs ({data.rows:,} CSV rows keyed by {data.keys}, "
        f"{data.profiles:,} profiles):"
    )
    for label, s in stats.items():
        print(
            f"  {label:<6} {s['ok']:.0f}/{s['runs']:.0f} ok  wall {num(s['wall'], '.3f')} s = "
            f"{num(s['wall_rate'])} rows/s end to end;  plan {num(s['seconds'], '.3f')} s = "
            f"{num(s['rate'])} rows/s in the library;  start-up/imports/exit "
            f"{num(s['other'], '.3f')} s;  CPU {num(s['cpu'], '.2f')} s;  "
            f"peak RSS {num(s['peak_mib'])} MiB (max {num(s['max_peak_mib'])} MiB)"
        )
    if "before" in stats:
        a, b = stats["after"], stats["before"]
        print(
            f"  after/before: end-to-end rows/s {ratio(a['wall_rate'], b['wall_rate'])}, "
            f"library rows/s {ratio(a['rate'], b['rate'])}, "
            f"peak RSS {ratio(a['peak_mib'], b['peak_mib'])}"
        )
    target = TARGETS[data.keys]
    end_to_end = stats["after"]["wall_rate"]
    verdict = "no successful run" if end_to_end is None else "met"
    verdict = "MISSED" if end_to_end is not None and end_to_end < target else verdict
    print(
        f"target {target:,} rows/s end to end ({data.keys}): {verdict} ({num(end_to_end)} "
        f"rows/s; library alone {num(stats['after']['rate'])} rows/s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
