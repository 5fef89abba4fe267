"""Import mode end to end: 1,000,000 people from an extract to COMPLETED imports, next to bulk.

Issue 10 asks what ``[send] mode = "import"`` costs on a real-sized extract: how long from
``backfill run`` starting to every import ``COMPLETED``, how that splits between planning and
delivery, how much memory the run and the store take, what files it writes, and how it compares
with ``mode = "bulk"`` on the same extract. Everything is measured from outside the processes:

1. Generates (deterministic, plain Python, cached in ``--workdir``) an extract of ``--people``
   people (1,000,000) keyed by identifiers only: an email and a US phone number on every row,
   a first name (STRING), points (NUMBER), a tier (STRING), tags (ARRAY, ``;``-split, some
   blank) and an opt-in (BOOLEAN). Every 50th person (2 %) has a second, newer row, written
   *before* the older one with the email in upper case and the phone in another spelling, its
   tags blank: ``order_by = "updated_at"`` must put it last, normalization must key both rows
   to one person, and the older row's tags must survive the blank. ``--format parquet`` writes
   the same rows as Parquet (all columns text, row groups of 100,000).
2. Per run, a fresh emulator (``python -m backfill emulator --port 0 --seed SEED`` pinned to
   ``--server-cpu``; a store with the default email/phone identity and the Loyalty group the
   job writes, no profiles: every person is created) and a fresh output folder; the job has
   ``base_url = "http://127.0.0.1:PORT"``, credentials in ``TWILIO_ACCOUNT_SID`` /
   ``TWILIO_AUTH_TOKEN``, ``rate = 100000`` (no limit), ``concurrency = --concurrency`` (4;
   import mode keeps at most 4 files in flight whatever it says) and ``verify = --verify``
   ("none": the read-back is timed separately below, not inside ``run``).
3. ``taskset -c CLIENT /usr/bin/time -f %M python -m backfill run JOB --quiet``: wall time from
   ``Popen`` to exit; CPU time from ``wait4``; **peak RSS** from GNU time (the kernel's
   ``ru_maxrss`` of that process alone: a child forked straight from this script would inherit
   this script's own high-water mark through ``exec``); and, every ``--poll`` s, both
   processes' RSS from ``/proc``, so the report says when each peaked and what the run's peak
   was while planning (until ``plan.json`` appears) and while delivering. The emulator's
   **peak RSS** is its ``VmHWM`` (``/proc/PID/status``) at the end of the run, next to its RSS
   once started; its CPU time is read from ``/proc/PID/stat``.
4. Figures from the run's own files: planning seconds (``plan.json`` / ``summary.json``
   ``plan.seconds``), delivery seconds (``summary.json`` ``seconds``), the rest (start-up,
   checkpoint, reports); the import files in ``<out>/imports/`` with their sizes and each
   import's summary (rows, errors, warnings); the server's own request counts by operation
   (``/__emulator__/stats``).
5. Checks (a benchmark must check its result; any failure: exit 1): ``run`` exited 0; the plan
   read every row and made one unit per person; every unit landed (``imported`` / ``upserted``);
   import mode: every file ``COMPLETED`` with rows summing to the people and no errors; the
   store lists exactly ``--people`` profiles (keyset pages of 100); and a sample of
   ``--sample`` people (every tenth of them with two rows) is found by email (exactly one
   profile, the same one their phone finds) and holds exactly the traits the extract's latest
   rows say. The read-back's time is reported on its own.

Each repeat runs both modes, import first in odd repeats and bulk first in even ones, so their
ratio is taken under the same machine conditions. The machine is shared, so each run also
reports the CPU time used by other processes (``/proc/stat`` minus ours) and stolen::

    python bench/import_million.py                       # 1,000,000 people, import + bulk, once
    python bench/import_million.py --people 100000 --repeat 2
    python bench/import_million.py --modes import --format parquet --workdir /tmp/imp

Targets: none from the issue beyond "measure"; the default invocation takes about 7 minutes on
2 cores (two 1M runs, and 10-30 s of listing after each). Exits 1 if a check fails, 2 if the
benchmark could not run. Results: BENCHMARKS.md, "Delivery: import mode, 1M profiles".
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import polars as pl
from common import add_cores, check_cores, child_env
from emulator_patch import (
    CLOCK_TICKS,
    PASSWORD,
    USERNAME,
    core_times,
    process_cpu,
    stats,
)
from incremental_rerun import cpu_times, machine_load, run_bench
from plan_throughput import GNU_TIME, KIB, max_rss_kib, only_child
from transport import emulator, pin

from backfill.errors import InvalidIdentifierError
from backfill.plan.normalize import normalize

STORE_ID: Final = "mem_store_01jimportbench000000000000"
DP: Final = f"/v1/Stores/{STORE_ID}/Profiles"
GENERATOR: Final = 1  # bump when rows_of() changes, so data cached in a --workdir is remade
DUP_EVERY: Final = 50  # every 50th person has a second, newer row: 2 %
MAX_PEOPLE: Final = 7_000_000  # phone 201-2xx..9xx-xxxx: person numbers stay 10 digits, NANP
TIERS: Final = ("bronze", "silver", "gold")
NAMES: Final = ("Ada", "Ben", "Chloe", "Dev", "Eva", "Finn", "Grace", "Hugo")
TAGS: Final = ("a;b", "vip", "", "new;web;x")  # blank on every fourth person
START: Final = 1_735_689_600  # 2025-01-01T00:00:00Z
COLUMNS: Final = ("email", "phone", "first_name", "points", "tier", "tags", "opt_in", "updated_at")
GIB_KIB: Final = 1024 * 1024
# How a run is started; an ad hoc experiment may point it at a wrapper that patches the library
# before calling ``backfill.cli.main`` (BENCHMARKS.md shows the ones behind its suggestions).
BACKFILL: list[str] = [sys.executable, "-m", "backfill"]

Mode = Literal["import", "bulk"]
MODES: Final[tuple[Mode, ...]] = ("import", "bulk")
LANDED: Final[dict[Mode, str]] = {"import": "imported", "bulk": "upserted"}

JOB: Final = """\
name = "{name}"

[connection]
base_url = "{url}"
store_id = "{store}"

[source]
paths = [{data}]
order_by = "updated_at"

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
tags = {{ column = "tags", type = "ARRAY", split = ";" }}
optIn = {{ column = "opt_in", type = "BOOLEAN" }}

[send]
mode = "{mode}"
verify = "{verify}"
concurrency = {concurrency}
rate = 100000

[output]
dir = {out}
"""


# ------------------------------------------------------------------ data


def email(p: int) -> str:
    return f"person{p:08d}@import.example"


def phone(p: int) -> str:
    """Person ``p``'s number in E.164, as the store keeps it."""
    return f"+1{2_012_000_000 + p}"


def stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rows_of(p: int) -> list[list[str]]:
    """Person ``p``'s rows in file order (COLUMNS). A second row, when there is one, is newer but
    comes first, its email upper case, its phone spelled nationally and its tags blank."""
    older = [
        email(p), phone(p), NAMES[p % 8], str(p * 37 % 100_000), TIERS[p % 3], TAGS[p % 4],
        "true" if p % 2 == 0 else "false", stamp(START + p * 104_729 % 31_536_000),
    ]  # fmt: skip
    if p % DUP_EVERY:
        return [older]
    digits = str(2_012_000_000 + p)
    newer = [
        email(p).upper(), f"({digits[:3]}) {digits[3:6]}-{digits[6:]}", NAMES[(p + 1) % 8],
        str((p * 37 + 1) % 100_000), TIERS[(p + 1) % 3], "", "false" if p % 2 == 0 else "true",
        stamp(START + 40_000_000 + p % 1_000_000),
    ]  # fmt: skip
    return [newer, older]


def expected(p: int) -> dict[str, dict[str, Any]]:
    """What the store must hold for person ``p``: per trait, the latest row's non-blank cell."""
    latest: dict[str, str] = {}
    for row in sorted(rows_of(p), key=lambda r: r[-1]):
        latest.update({c: v for c, v in zip(COLUMNS, row, strict=True) if v != ""})
    loyalty: dict[str, Any] = {
        "points": int(latest["points"]),
        "tier": latest["tier"],
        "optIn": latest["opt_in"] == "true",
    }
    if "tags" in latest:
        loyalty["tags"] = latest["tags"].split(";")
    contact = {"email": email(p), "phone": phone(p), "firstName": latest["first_name"]}
    return {"Contact": contact, "Loyalty": loyalty}


@dataclass(frozen=True)
class Data:
    path: Path
    seed: Path
    people: int
    rows: int
    size: int  # bytes of the extract
    fmt: str


def write_seed(path: Path) -> None:
    """One store: the default email/phone identity and Contact group, the Loyalty group the
    job writes, no profiles (every person is created)."""
    loyalty = {
        "displayName": "Loyalty",
        "description": "Import benchmark.",
        "traits": {
            "points": {"dataType": "NUMBER"},
            "tier": {"dataType": "STRING"},
            "tags": {"dataType": "ARRAY"},
            "optIn": {"dataType": "BOOLEAN"},
        },
    }
    store = {"id": STORE_ID, "displayName": "import-bench", "traitGroups": [loyalty]}
    path.write_text(json.dumps({"stores": [store]}), encoding="utf-8")


def generate(work: Path, people: int, fmt: str) -> Data:
    """Write (or reuse, if an earlier invocation left it in ``work``) the extract and seed."""
    path = work / f"people-{people}.{fmt}"
    seed = work / "seed.json"
    meta = path.with_name(path.name + ".json")
    want = {"generator": GENERATOR, "people": people, "format": fmt}
    write_seed(seed)
    if path.is_file() and meta.is_file():
        known = json.loads(meta.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in want} == want and known.get("size") == path.stat().st_size:
            print(f"reusing {path} ({known['size']:,} bytes)", flush=True)
            return Data(path, seed, people, int(known["rows"]), int(known["size"]), fmt)
    started = time.perf_counter()
    # Parquet is converted from a CSV of its own: the cached CSV extract stays as it is.
    text = path if fmt == "csv" else path.with_name(path.name + ".tmp.csv")
    rows = 0
    with text.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(COLUMNS)
        for p in range(people):
            for row in rows_of(p):
                out.writerow(row)
                rows += 1
    if fmt == "parquet":
        frame = pl.read_csv(text, infer_schema=False)  # every column text, as in the CSV
        frame.write_parquet(path, row_group_size=100_000)
        del frame
        text.unlink()
    size = path.stat().st_size
    meta.write_text(json.dumps({**want, "rows": rows, "size": size}), encoding="utf-8")
    print(
        f"generated {path}: {people:,} people, {rows:,} rows, {size:,} bytes in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Data(path, seed, people, rows, size, fmt)


# ------------------------------------------------------------------ watching the processes


def status_kib(pid: int, field_name: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of ``pid`` in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


@dataclass
class Sampler:
    """Samples both processes' RSS every ``every`` s in a thread; notes when plan.json appears
    (the end of planning) and the first import file (the first batch written)."""

    time_pid: int  # GNU time; the run is its one child
    emulator_pid: int
    out: Path
    every: float
    t0: float
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # at, run, emulator KiB
    run_hwm: int = 0  # the run's VmHWM at its last sample
    plan_done_at: float | None = None
    first_file_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        run: int | None = None
        while not self._stop.wait(self.every):
            now = time.perf_counter() - self.t0
            run = run or only_child(self.time_pid)
            rss = status_kib(run, "VmRSS") if run else None
            hwm = status_kib(run, "VmHWM") if run else None
            emu = status_kib(self.emulator_pid, "VmRSS") or 0
            self.run_hwm = max(self.run_hwm, hwm or 0)
            self.samples.append((now, rss or 0, emu))
            if self.plan_done_at is None and any(self.out.glob("**/plan.json")):
                self.plan_done_at = now
            folder = self.out / "imports"
            if self.first_file_at is None and folder.is_dir() and any(folder.glob("*.csv")):
                self.first_file_at = now

    def peak(self, column: int, start: float = 0.0, end: float = float("inf")) -> tuple[int, float]:
        """(peak KiB, when) of the run (column 1) or emulator (2) between start and end."""
        best = (0, 0.0)
        for sample in self.samples:
            if start <= sample[0] < end and sample[column] > best[0]:
                best = (int(sample[column]), sample[0])
        return best


# ------------------------------------------------------------------ one run


@dataclass
class Run:
    repeat: int
    mode: Mode
    exit_code: int = -1
    wall: float = 0.0
    cpu: float = 0.0  # the run's user + system, from wait4
    peak_kib: int = 0  # GNU time's %M: the run's ru_maxrss
    emulator_start_kib: int = 0  # RSS once listening, seed loaded
    emulator_peak_kib: int = 0  # VmHWM at the end
    emulator_end_kib: int = 0  # RSS at the end
    emulator_cpu: float = 0.0
    others: float = 0.0  # share of both cores' time used by other processes
    core_others: tuple[float, float] = (0.0, 0.0)  # others' share of the emulator's, run's core
    steal: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[str, int]] = field(default_factory=list)  # import files: name, bytes
    outputs: dict[str, int] = field(default_factory=dict)  # the output folder: name -> bytes
    imports: list[tuple[float, float]] = field(default_factory=list)  # registered, ended: s
    sampler: Sampler | None = None
    listed: int = -1  # profiles the store lists after the run
    list_seconds: float = 0.0
    sample_read: int = 0  # people read back
    sample_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def plan_seconds(self) -> float:
        return float(self.plan.get("seconds", 0.0))

    @property
    def delivery_seconds(self) -> float:
        return float(self.summary.get("seconds", 0.0))

    @property
    def units(self) -> dict[str, int]:
        units: dict[str, int] = self.summary.get("units", {})
        return units


def timed(cmd: list[str], log: Path, timeout: float, sampler: Sampler) -> tuple[int, float, float]:
    """Run ``cmd`` (GNU time over the run) to its end: (exit code, wall s, CPU s from wait4),
    sampled meanwhile. A watchdog kills it past ``timeout``, only before it is reaped."""
    lock = threading.Lock()
    exited = threading.Event()
    with log.open("wb") as output:
        child = subprocess.Popen(cmd, env=child_env(), stdout=output, stderr=subprocess.STDOUT)
        sampler.time_pid = child.pid
        sampler.start()

        def watchdog() -> None:
            if not exited.wait(timeout):
                with lock:
                    if not exited.is_set():
                        run = only_child(child.pid)
                        if run is not None:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(run, signal.SIGKILL)

        thread = threading.Thread(target=watchdog, daemon=True)
        thread.start()
        try:
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
            wall = time.perf_counter() - sampler.t0
            with lock:
                exited.set()
            sampler.stop()
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        finally:
            with lock:
                if child.returncode is None:  # interrupted: leave nothing behind
                    child.kill()
                    child.wait()
                exited.set()
            sampler.stop()
            thread.join()
    return child.returncode, wall, usage.ru_utime + usage.ru_stime


def run_mode(
    args: argparse.Namespace, data: Data, work: Path, repeat: int, mode: Mode, http: httpx.Client
) -> Run:
    """One ``backfill run`` of ``mode`` against a fresh emulator, measured, then checked."""
    folder = work / f"repeat-{repeat}-{mode}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    out = folder / "out"
    result = Run(repeat, mode)
    with emulator(data.seed, args.server_cpu, folder / "emulator.log") as (proc, url):
        job = folder / "job.toml"
        job.write_text(
            JOB.format(
                name=f"import-million-{mode}-{repeat}", url=url, store=STORE_ID,
                data=json.dumps(str(data.path)), mode=mode, verify=args.verify,
                concurrency=args.concurrency, out=json.dumps(str(out)),
            ),
            encoding="utf-8",
        )  # fmt: skip
        result.emulator_start_kib = status_kib(proc.pid, "VmRSS") or 0
        stats(http, url, reset=True)
        peak_file = folder / "run.maxrss"
        run = [*BACKFILL, "run", str(job), "--quiet"]
        cmd = [*pin(args.client_cpu), GNU_TIME, "-f", "%M", "-o", str(peak_file), "--", *run]
        cores = (args.server_cpu, args.client_cpu)
        emu0, load0 = process_cpu(proc.pid), cpu_times()
        busy0 = [core_times(c)[0] for c in cores]
        sampler = Sampler(0, proc.pid, out, args.poll, time.perf_counter())
        epoch = time.time()  # the emulator's createdAt/updatedAt are wall-clock times
        code, wall, cpu = timed(cmd, folder / "run.log", args.timeout, sampler)
        emu1, load1 = process_cpu(proc.pid), cpu_times()
        busy1 = [core_times(c)[0] for c in cores]
        result.emulator_peak_kib = status_kib(proc.pid, "VmHWM") or 0
        result.emulator_end_kib = status_kib(proc.pid, "VmRSS") or 0
        result.server = stats(http, url)
        (folder / "rss.csv").write_text(
            "seconds,run_kib,emulator_kib\n"
            + "".join(
                f"{at:.2f},{run_kib},{emu_kib}\n" for at, run_kib, emu_kib in sampler.samples
            ),
            encoding="utf-8",
        )
        result.exit_code, result.wall, result.cpu = code, wall, cpu
        result.emulator_cpu = emu1 - emu0
        result.others, result.steal = machine_load(load0, load1, cpu + result.emulator_cpu)
        # Each of our processes is pinned to its core: a core's busy time beyond it is others'.
        emulator_core, run_core = (
            max(0.0, (b - a) / CLOCK_TICKS - ours) / wall
            for a, b, ours in zip(busy0, busy1, (result.emulator_cpu, cpu), strict=True)
        )
        result.core_others = (emulator_core, run_core)
        result.peak_kib = max_rss_kib(peak_file)
        result.sampler = sampler
        result.summary = read_json(out / "summary.json")
        result.plan = result.summary.get("plan", {}) or read_json(out / "plan" / "plan.json")
        folder_imports = out / "imports"
        if folder_imports.is_dir():
            result.files = sorted((p.name, p.stat().st_size) for p in folder_imports.iterdir())
        if out.is_dir():
            result.outputs = {
                str(p.relative_to(out)): p.stat().st_size
                for p in sorted(out.rglob("*"))
                if p.is_file() and p.parent != folder_imports
            }
        result.imports = import_times(http, url, result.summary, epoch)
        result.problems += check_run(result, data)
        if result.exit_code == 0:
            started = time.perf_counter()
            result.listed = count_profiles(http, url)
            result.list_seconds = time.perf_counter() - started
            if result.listed != data.people:
                result.problems.append(
                    f"the store lists {result.listed:,} profiles, not {data.people:,}"
                )
            started = time.perf_counter()
            picked = sample_people(data.people, args.sample)
            result.problems += read_back(http, url, picked)
            result.sample_read = len(picked)
            result.sample_seconds = time.perf_counter() - started
    if result.problems:
        tail = (folder / "run.log").read_text(errors="replace").strip().splitlines()[-5:]
        result.problems = [f"repeat {repeat} {mode}: {p}" for p in result.problems]
        result.problems += [f"  log: {line}" for line in tail]
    if not args.keep_outputs:
        shutil.rmtree(out / "imports", ignore_errors=True)  # ~100 MB a million people
    return result


def import_times(
    http: httpx.Client, url: str, summary: dict[str, Any], epoch: float
) -> list[tuple[float, float]]:
    """When each import of the run was registered and when it ended (the store's createdAt and
    updatedAt), in seconds after the run started."""
    times: list[tuple[float, float]] = []
    for f in summary.get("delivery", {}).get("files", []):
        if not f.get("import_id"):
            continue
        got = http.get(f"{url}{DP}/Imports/{f['import_id']}", auth=(USERNAME, PASSWORD)).json()
        created, updated = (
            datetime.fromisoformat(got[k].replace("Z", "+00:00")).timestamp() - epoch
            for k in ("createdAt", "updatedAt")
        )
        times.append((created, updated))
    return times


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def check_run(run: Run, data: Data) -> list[str]:
    """What ``run``'s own files must say for the run to count (see the module docstring)."""
    if not run.summary:
        return [f"exit {run.exit_code}, no summary.json"]
    problems: list[str] = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    units = run.units
    want(run.exit_code == 0, f"exit {run.exit_code}, not 0")
    want(run.plan.get("rows") == data.rows, f"plan read {run.plan.get('rows')} rows, not "
                                             f"{data.rows:,}")  # fmt: skip
    want(units.get("total") == data.people, f"{units.get('total')} units, not {data.people:,}")
    landed = units.get(LANDED[run.mode])
    want(landed == data.people, f"{landed} units {LANDED[run.mode]}, not {data.people:,}")
    if run.mode == "import":
        files = run.summary.get("delivery", {}).get("files", [])
        statuses = sorted({f.get("status") for f in files})
        want(statuses == ["COMPLETED"], f"imports ended {statuses}, not all COMPLETED")
        rows = sum(int(f.get("rows") or 0) for f in files)
        want(rows == data.people, f"the imports applied {rows:,} rows, not {data.people:,}")
        errors = sum(int(f.get("errors") or 0) for f in files)
        want(errors == 0, f"the imports counted {errors:,} row errors")
        want(len(run.files) == len(files), f"{len(run.files)} files in imports/, "
                                           f"{len(files)} in summary.json")  # fmt: skip
    return problems


# ------------------------------------------------------------------ proving what landed


def count_profiles(http: httpx.Client, url: str) -> int:
    """Every profile the store lists, page by page (keyset pages of 100, the API's maximum)."""
    params = {"pageSize": "100"}
    count = 0
    while True:
        page = http.get(f"{url}{DP}", params=params, auth=(USERNAME, PASSWORD))
        page.raise_for_status()
        body = page.json()
        count += len(body["profiles"])
        token = body["meta"].get("nextToken")
        if not token:
            return count
        params["pageToken"] = token


def sample_people(people: int, size: int) -> list[int]:
    """``size`` people spread over the extract (deterministic), every tenth with two rows,
    the first and last person always among them."""
    picked = {0, people - 1}
    step = max(1, people // max(1, size))
    for k, p in enumerate(range(0, people, step)):
        picked.add(p - p % DUP_EVERY if k % 10 == 0 else p)
    return sorted(picked)


def read_back(http: httpx.Client, url: str, people: Sequence[int]) -> list[str]:
    """Problems with each person: found by email as exactly one profile, the same profile
    their phone finds, holding exactly the traits the extract's latest rows say (identifier
    traits compared normalized, as ``run``'s own verification compares them: the store keeps
    the latest row's spelling, ``PERSON...@IMPORT.EXAMPLE``, ``(201) 200-0000``)."""
    problems: list[str] = []
    auth = (USERNAME, PASSWORD)
    for p in people:
        ids = []
        for id_type, value in (("email", email(p)), ("phone", phone(p))):
            found = http.post(f"{url}{DP}/Lookup", json={"idType": id_type, "value": value},
                              auth=auth).json()  # fmt: skip
            ids.append(found.get("profiles", []))
        if len(ids[0]) != 1 or ids[0] != ids[1]:
            problems.append(f"person {p}: email finds {ids[0]}, phone finds {ids[1]}")
            continue
        got = http.get(f"{url}{DP}/{ids[0][0]}", auth=auth).json().get("traits", {})
        want = expected(p)
        held = {group: dict(got.get(group) or {}) for group in want}
        for trait in ("email", "phone"):  # the cell as the latest row spells it: normalized
            with contextlib.suppress(KeyError, InvalidIdentifierError):
                held["Contact"][trait] = normalize(held["Contact"][trait], trait)
        if held != want:
            problems.append(f"person {p}: holds {held}, expected {want}")
    return problems[:10] + ([f"... {len(problems) - 10} more"] if len(problems) > 10 else [])


# ------------------------------------------------------------------ reporting


def mib(kib: float) -> str:
    return f"{kib / KIB:,.0f}"


def report(runs: Sequence[Run], data: Data, args: argparse.Namespace) -> None:
    print(
        f"\n{data.people:,} people, {data.rows:,} rows, {data.fmt} {data.size / KIB / KIB:,.1f} "
        f"MiB; wall = process start to exit; plan = plan.json seconds; delivery = summary.json "
        f"seconds; rest = wall - plan - delivery; RSS in MiB"
    )
    print(
        "| repeat | mode | exit | wall s | plan s | delivery s | rest s | people/s end to end "
        "| CPU s | peak RSS run | ... while planning / delivering (sampled) | emulator RSS "
        "start / peak / end | emulator CPU s | others: machine, emulator's core, run's core "
        "| steal |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---:|---:|---:|")
    for r in runs:
        s = r.sampler
        split = "-"
        if s is not None and s.plan_done_at is not None:
            planning = s.peak(1, end=s.plan_done_at)
            delivering = s.peak(1, start=s.plan_done_at)
            split = (f"{mib(planning[0])} (at {planning[1]:.0f} s) / {mib(delivering[0])} "
                     f"(at {delivering[1]:.0f} s)")  # fmt: skip
        rest = r.wall - r.plan_seconds - r.delivery_seconds
        print(
            f"| {r.repeat} | {r.mode} | {r.exit_code} | **{r.wall:.1f}** | {r.plan_seconds:.1f} | "
            f"{r.delivery_seconds:.1f} | {rest:.1f} | {data.people / r.wall:,.0f} | "
            f"{r.cpu:.1f} | **{mib(r.peak_kib)}** | {split} | {mib(r.emulator_start_kib)} / "
            f"**{mib(r.emulator_peak_kib)}** / {mib(r.emulator_end_kib)} | "
            f"{r.emulator_cpu:.1f} | {r.others:.0%}, {r.core_others[0]:.0%}, "
            f"{r.core_others[1]:.0%} | {r.steal:.1%} |"
        )
    print("\nper run: server requests by operation (status: count); files; checks")
    for r in runs:
        ops = "; ".join(
            f"{op} " + ", ".join(f"{k}: {v:,}" for k, v in sorted(by.items()))
            for op, by in sorted(r.server.get("byOperation", {}).items())
        )
        print(f"  repeat {r.repeat} {r.mode}: {r.server.get('requests', 0):,} /v1 requests: {ops}")
        s = r.sampler
        if s is not None:
            marks = [f"plan.json at {s.plan_done_at:.1f} s" if s.plan_done_at else "",
                     f"first import file at {s.first_file_at:.1f} s" if s.first_file_at
                     else ""]  # fmt: skip
            hwm = f"run VmHWM at last sample {mib(s.run_hwm)} MiB"
            print(f"    {', '.join(m for m in marks if m)}; {hwm}; {len(s.samples)} samples")
        if s is not None and s.samples:
            last = len(s.samples) - 1
            tenths = [s.samples[round(k * last / 10)] for k in range(11)]
            print(
                "    RSS run / emulator (MiB) over the run: "
                + ", ".join(f"{at:.0f} s {mib(run)}/{mib(emu)}" for at, run, emu in tenths)
            )
        big = {name: size for name, size in r.outputs.items() if size >= KIB * KIB}
        print(
            "    output folder, files of 1 MiB or more (import files below): "
            + ", ".join(f"{name} {size / KIB / KIB:,.1f} MiB" for name, size in big.items())
        )
        if r.imports:
            print(
                "    imports (registered -> ended, s after start): "
                + ", ".join(f"{a:.0f}->{b:.0f}" for a, b in r.imports)
                + f"; the last ended {r.wall - max(b for _, b in r.imports):.1f} s before exit"
            )
        if r.files:
            sizes = [size for _, size in r.files]
            print(
                f"    {len(sizes)} import files, {sum(sizes) / KIB / KIB:,.1f} MiB in all "
                f"({min(sizes) / KIB / KIB:,.1f}-{max(sizes) / KIB / KIB:,.1f} MiB each, "
                f"{sum(sizes) / data.people:,.0f} bytes a person)"
            )
            for f in r.summary.get("delivery", {}).get("files", []):
                print(
                    f"      batch {f['batch']}: {Path(f['file']).name} {f['status']} rows "
                    f"{f['rows']:,} errors {f['errors']} warnings {f['warnings']:,}"
                )
        verify = r.summary.get("delivery", {}).get("verify")
        if verify:
            print(f"    run's own read-back (verify = {args.verify}): {verify}")
        print(
            f"    store lists {r.listed:,} profiles ({r.list_seconds:.1f} s); {r.sample_read} "
            f"people read back ({r.sample_seconds:.1f} s); "
            + ("checks passed" if not r.problems else f"{len(r.problems)} problem(s)")
        )
    pairs: dict[int, dict[str, Run]] = {}
    for r in runs:
        pairs.setdefault(r.repeat, {})[r.mode] = r
    ratios = [
        (p["import"].wall / p["bulk"].wall, p["import"].peak_kib / p["bulk"].peak_kib)
        for p in pairs.values()
        if {"import", "bulk"} <= p.keys() and p["bulk"].wall and p["bulk"].peak_kib
    ]
    if ratios:
        print(
            f"\nimport / bulk, median over {len(ratios)} repeat(s): wall "
            f"{statistics.median(w for w, _ in ratios):.2f}x, peak RSS of the run "
            f"{statistics.median(m for _, m in ratios):.2f}x"
        )
    for r in runs:
        if r.peak_kib > GIB_KIB:
            print(f"note: repeat {r.repeat} {r.mode}: peak RSS {mib(r.peak_kib)} MiB > 1 GiB")


# ------------------------------------------------------------------ main


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, polars {pl.__version__}"
    )


def bench(args: argparse.Namespace, work: Path, code: str) -> int:
    os.sched_setaffinity(0, {args.client_cpu})
    print(
        f"import million: {args.people:,} people, modes {','.join(args.modes)}, {args.repeat} "
        f"repeat(s), {args.format}, concurrency {args.concurrency}, verify {args.verify}; "
        f"emulator on core {args.server_cpu}, runs on core {args.client_cpu}; work dir {work}; "
        f"code {code}; {machine()}; started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        flush=True,
    )
    data = generate(work, args.people, args.format)
    runs: list[Run] = []
    with httpx.Client(timeout=60.0) as http:
        for repeat in range(1, args.repeat + 1):
            order = args.modes if repeat % 2 else args.modes[::-1]
            for mode in order:
                r = run_mode(args, data, work, repeat, mode, http)
                runs.append(r)
                print(
                    f"  repeat {repeat} {mode}: exit {r.exit_code}, {r.wall:.1f} s wall (plan "
                    f"{r.plan_seconds:.1f} s, delivery {r.delivery_seconds:.1f} s), peak RSS "
                    f"{mib(r.peak_kib)} MiB, emulator peak {mib(r.emulator_peak_kib)} MiB, "
                    f"others {r.others:.0%} (emulator's core {r.core_others[0]:.0%}); "
                    + ("checks passed" if not r.problems else "CHECKS FAILED"),
                    flush=True,
                )
    report(runs, data, args)
    print(f"finished {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
    problems = [p for r in runs for p in r.problems]
    if problems:
        print("FAIL:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--people", type=int, default=1_000_000, help="people in the extract (1000000)")
    add("--modes", default="import,bulk", help="import, bulk or both (import,bulk)")
    add("--repeat", type=int, default=1, help="runs of each mode, order alternated (1)")
    add("--format", choices=("csv", "parquet"), default="csv", help="the extract's format (csv)")
    add("--concurrency", type=int, default=4, help="the job's send.concurrency (4)")
    add("--verify", choices=("none", "sample", "all"), default="none",
        help="the job's send.verify (none: this script reads back on its own)")  # fmt: skip
    add("--sample", type=int, default=300, help="people read back after each run (300)")
    add("--poll", type=float, default=0.1, help="RSS sampling interval, s (0.1)")
    add("--workdir", type=Path, help="keep the extract and the runs here (and reuse the extract)")
    add("--keep-outputs", action="store_true", help="keep the import files after each run")
    add("--rev", help="measure git revision REV (a temporary worktree), not this working tree")
    add("--timeout", type=float, default=1800.0, help="seconds before a run is killed (1800)")
    add_cores(parser, "backfill run")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in str(args.modes).split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error("--modes takes import, bulk or import,bulk")
    args.modes = [m for m in MODES if m in modes]
    if not 1 <= args.people <= MAX_PEOPLE:
        parser.error(f"--people must be 1..{MAX_PEOPLE:,}")
    if min(args.repeat, args.concurrency, args.sample) < 1 or args.poll <= 0:
        parser.error("--repeat, --concurrency, --sample and --poll must be positive")
    check_cores(parser, args)
    if not Path(GNU_TIME).is_file():
        parser.error(f"{GNU_TIME} not found (Debian: apt-get install time)")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), "import_million", bench)


if __name__ == "__main__":
    sys.exit(main())
