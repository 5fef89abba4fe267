"""The commands' library side: each runs the stages in order, config -> source -> map -> resolve
-> plan (-> send -> report), and returns a frozen result the CLI prints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import polars as pl
from tqdm import tqdm

from backfill.aio import run_async
from backfill.checkpoint import (
    DONE,
    FAILED,
    IN_FLIGHT,
    LANDED,
    PENDING,
    SKIPPED_UNCHANGED,
    Result,
    RunDB,
    RunLock,
    lock_holder,
    read_progress,
)
from backfill.config import Job, load_job
from backfill.errors import BackfillError, ConfigError, StorageError
from backfill.files import (
    EMULATOR_STATE,
    ROWS_FILE,
    RUN_FILE,
    VALUES_FILE,
    output_folder,
    private_dir,
)
from backfill.plan.mapping import INVALID, ORDER, map_batch, present_column, value_column
from backfill.plan.resolve import (
    AMBIGUOUS,
    BY_LOOKUP,
    BY_MAP,
    BY_PROFILE_ID,
    BY_STORE,
    CONFLICT,
    OUTCOME,
    TARGET,
    UNRESOLVED,
    UPSERT,
    LookupStats,
    cached_candidates,
    identity_map_candidates,
    link_new_people,
    linked_in_store,
    lookup_candidates,
    open_pairs,
    relink,
    resolve_in_store,
    resolve_parts,
    within_segment_limits,
)
from backfill.plan.resume import made_from, why_not
from backfill.plan.source import (
    FILE,
    PROBLEM,
    ROW,
    SourceFile,
    check_columns,
    read_batches,
    source_files,
)
from backfill.plan.units import HASH_SCHEME, write_units
from backfill.report import (
    DeliveryProgress,
    PlanResult,
    PlanSummary,
    format_nothing_to_send,
    format_run,
    format_run_line,
    format_status,
    identifiers_text,
    write_errors,
    write_private,
    write_rejects,
)
from backfill.report_html import write_run_html

if TYPE_CHECKING:
    from backfill.transport.client import ClientStats, MemoryClient

EXIT_OK, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 1, 130
# The HTTP stack (client, send, target) is imported where it is used: ~0.2 s of imports that an
# offline plan, whose whole budget is ~3 s per million rows, never needs.

SPILL: Final = "lz4"  # temporary files between stages: speed over size
PLAN_FILES: Final = ("plan.parquet", ROWS_FILE, VALUES_FILE, "rejects.csv", "plan.json")
DRY_RUN_DIR: Final = "plan"  # `backfill plan` writes here, never over a run's own files
STAGING_DIR: Final = ".next-plan"  # a run's new plan, moved into place once the checkpoint has it


def _bar(quiet: bool, **kwargs: Any) -> tqdm[Any]:
    return tqdm(disable=quiet or not sys.stderr.isatty(), leave=False, **kwargs)


def plan(job_path: Path | str, *, offline: bool = False, quiet: bool = False) -> PlanResult:
    """``backfill plan``: everything up to the request units, with no trait written. Its files
    go to ``<output>/plan/``: the output folder's own plan files belong to the last ``run``,
    which ``retry``, ``status`` and a resume still read."""
    job = load_job(job_path)
    source_files(job)  # a missing input fails before any folder is made
    with output_folder(job.output_dir) as out, RunLock(out, "plan"):
        return build_plan(job, offline=offline, quiet=quiet, into=out / DRY_RUN_DIR)


def build_plan(
    job: Job,
    *,
    offline: bool = False,
    quiet: bool = False,
    keep_rows: bool = False,
    keep_values: bool = False,
    into: Path | None = None,
    refresh_lookups: bool = False,
    clock: Callable[[], float] = time.time,
) -> PlanResult:
    """The plan stages; ``keep_rows`` also writes rows.parquet (which rows feed which target),
    which ``run`` needs to name the source rows behind a failed request; ``keep_values`` writes
    values.parquet (each resolved row's typed trait values), from which ``reconcile`` names the
    row behind each expected value. ``into``: write the plan's files there instead of the
    output folder, whose run files stay untouched (the lookup cache and the embedded
    emulator's state are still the output folder's, so rows resolve as the run's did).
    ``refresh_lookups`` asks Lookup again instead of reusing cached answers; ``clock`` dates
    them (wall time: ``identity.lookup_ttl`` spans runs)."""
    started = time.monotonic()
    files = source_files(job)
    _check_mapped_types(job, check_columns(job, files))
    if job.identity.identity_map is not None and not job.identity.identity_map.is_file():
        raise ConfigError(
            f"{job.path}: identity.identity_map: {job.identity.identity_map}: no such file"
        )
    candidates = identity_map_candidates(job)
    out = private_dir(job.output_dir)
    folder = private_dir(into) if into is not None else out
    spill = folder / ".spill"
    shutil.rmtree(spill, ignore_errors=True)
    private_dir(spill)
    try:
        with _bar(quiet, desc="reading", unit=" rows", unit_scale=True) as bar:
            batches = _map_batches(job, files, spill, bar)
        if not batches:  # an empty extract (a quiet night): plan 0 units, not a crash
            _empty_mapped(job).write_parquet(spill / "mapped-000000.parquet")
        mapped = pl.scan_parquet(spill / "mapped-*.parquet")
        stats = LookupStats()
        looked_up = job.identity.lookup and not offline
        # Bulk, import: the store resolves what each body carries; only people whose rows
        # carry different first identifiers are resolved here (``linked_in_store``).
        by_store: pl.LazyFrame | None = None
        to_resolve, resolving = mapped, job
        if job.send.store_resolves:
            keyed = resolve_in_store(job, mapped)
            linked = linked_in_store(job, mapped).collect()
            by_store = keyed.join(linked.lazy(), on=TARGET, how="anti")
            names = mapped.collect_schema().names()
            to_resolve = keyed.join(linked.lazy(), on=TARGET, how="semi").select(names)
            resolving = replace(job, identity=replace(job.identity, on_unresolved="create"))
        if looked_up:  # the open pairs cost a pass over every row: only for Lookup
            pairs = open_pairs(resolving, to_resolve, candidates)
            if pairs.height:
                found, stats = _lookups(resolving, pairs, out, quiet, refresh_lookups, clock)
                candidates = pl.concat([candidates, found])
        parts = resolve_parts(resolving, to_resolve, candidates, looked_up=looked_up)
        if by_store is not None:
            columns = by_store.collect_schema().names()
            parts = [by_store, *(part.select(columns) for part in parts)]
        resolved = pl.concat(parts, how="vertical")
        if not candidates.is_empty():
            # With candidates, resolving joins; do it once for the four readers below, every
            # part in one pass over the mapped rows. Without (profile IDs only), it is a few
            # cheap columns: recomputing beats a spill.
            paths = [spill / f"resolved-{i}.parquet" for i in range(len(parts))]
            pl.collect_all(
                [
                    p.sink_parquet(path, compression=SPILL, lazy=True)
                    for p, path in zip(parts, paths, strict=True)
                ]
            )
            resolved = pl.scan_parquet(paths)
        if resolving.identity.on_unresolved == "create":  # people to create, linked in the extract
            # Rows keyed for the store share no value with another key (linked_in_store):
            # only the rest can be linked, which keeps a 1M-row bulk plan from walking them all.
            open_rows = resolved.filter(pl.col(OUTCOME) != BY_STORE)
            resolved = relink(resolved, link_new_people(resolving, open_rows))
        if job.connection.segment:
            resolved = within_segment_limits(job, resolved)
        plan_path = folder / "plan.parquet"
        rows = mapped.select(pl.len()).collect().item()
        write_units(job, resolved, plan_path, rows, spill)
        plan_path.chmod(0o600)
        if keep_rows:
            resolved.filter(pl.col(TARGET).is_not_null()).select(
                pl.col(FILE),
                pl.col(ROW),
                identifiers_text(job).alias("identifiers"),
                pl.col(TARGET),
            ).sink_parquet(folder / ROWS_FILE)
            (folder / ROWS_FILE).chmod(0o600)
        if keep_values:
            resolved.filter(pl.col(TARGET).is_not_null()).select(
                pl.col(FILE),
                pl.col(ROW),
                pl.col(ORDER),
                pl.col(TARGET),
                *(pl.col(value_column(j)) for j in range(len(job.traits))),
                *(pl.col(present_column(j)) for j in range(len(job.traits))),
            ).sink_parquet(folder / VALUES_FILE)
            (folder / VALUES_FILE).chmod(0o600)
        rejects_path = folder / "rejects.csv"
        rejects = write_rejects(job, resolved, files, rejects_path)
        summary = _summary(job, resolved, plan_path, len(files), rejects, stats, started)
    except pl.exceptions.PolarsError as exc:  # reading is translated in source; this is ours
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StorageError(f"cannot plan {job.path} into {folder}: {first}") from exc
    except OSError as exc:
        raise StorageError(f"cannot plan {job.path} into {folder}: {exc}") from exc
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    plan_id = uuid.uuid4().hex
    sources = [str(f.path) for f in files]
    result = PlanResult(job, summary, plan_path, rejects_path, sources, plan_id)
    summary_path = folder / "plan.json"
    text = json.dumps(
        {
            "job": str(job.path),
            "plan_id": plan_id,
            "sources": sources,
            "hash_scheme": HASH_SCHEME,
            **asdict(summary),
        },
        indent=2,
    )
    write_private(summary_path, text + "\n")
    return result


MAP_THREADS: Final = 2  # batches mapped at once (one more batch in memory per thread)


def _map_batches(job: Job, files: list[SourceFile], spill: Path, bar: tqdm[Any]) -> int:
    """Map every source batch into ``spill/mapped-NNNNNN.parquet``; return how many.

    Batches are mapped ``MAP_THREADS`` at a time: mapping is many short polars steps with
    Python between them, so one batch alone keeps about one core busy (polars releases the
    GIL while it works). Each batch keeps its number, so the files read back in order."""

    def map_one(batch: pl.DataFrame, path: Path) -> None:
        map_batch(job, batch).write_parquet(path, compression=SPILL)

    batches = 0
    with ThreadPoolExecutor(MAP_THREADS, thread_name_prefix="map") as pool:
        pending: deque[Future[None]] = deque()
        for batch in read_batches(job, files, scratch=spill):
            if len(pending) >= MAP_THREADS:
                pending.popleft().result()  # a failed batch fails the plan here
            pending.append(pool.submit(map_one, batch, spill / f"mapped-{batches:06d}.parquet"))
            batches += 1
            bar.update(batch.height)
        for done in pending:
            done.result()
    return batches


def _check_mapped_types(job: Job, schemas: dict[Path, pl.Schema]) -> None:
    """Refuse, before any row is read, files whose columns would map to different types (an
    ARRAY trait fed by a list of numbers in one Parquet file and by text in a CSV): their
    batches could not be planned together, and no type can hold both without changing values.
    ``schemas``: each file's columns as ``check_columns`` read them."""
    seen: dict[str, tuple[pl.DataType, Path]] = {}
    names = mapped_names(job)
    for path, schema in schemas.items():
        mapped = _empty_mapped(job, schema).schema
        for column, dtype in mapped.items():
            if column not in names:
                continue
            first = seen.setdefault(column, (dtype, path))
            if first[0] != dtype:
                raise ConfigError(
                    f"{job.path}: {names[column]} is fed {first[0]} by {first[1]} but "
                    f"{dtype} by {path}: convert one file so both hold the same type"
                )


def mapped_names(job: Job) -> dict[str, str]:
    """Each mapped value column's name as the job file says it (for messages)."""
    names = {value_column(j): f"traits.{t.name} (column {t.column!r})"
             for j, t in enumerate(job.traits)}  # fmt: skip
    names[ORDER] = f"source.order_by (column {job.source.order_by!r})"
    return names


def _empty_mapped(job: Job, schema: pl.Schema | None = None) -> pl.DataFrame:
    """What ``map_batch`` makes of a batch with no rows (of a file with ``schema``; text
    columns by default): the mapped columns with their types, so every later stage runs
    unchanged over zero rows."""
    columns = schema if schema is not None else {c: pl.String() for c in job.columns}
    empty = pl.DataFrame(schema=columns).with_columns(
        pl.lit(None, pl.UInt16).alias(FILE),
        pl.lit(None, pl.UInt32).alias(ROW),
        pl.lit(None, pl.String).alias(PROBLEM),
    )
    return map_batch(job, empty.clear())


def _lookups(
    job: Job,
    pairs: pl.DataFrame,
    out: Path,
    quiet: bool,
    refresh: bool,
    clock: Callable[[], float],
) -> tuple[pl.DataFrame, LookupStats]:
    """Fresh cached answers first (none with ``refresh``); the network (and credentials) only
    for what is left."""
    from backfill.transport.connection import open_target

    with RunDB(out / RUN_FILE) as db:
        known, todo = cached_candidates(job, pairs, db, now=clock(), refresh=refresh)
        if todo.is_empty():
            return known, LookupStats(cached=known.height)

        async def ask() -> tuple[pl.DataFrame, LookupStats]:
            with (
                open_target(job) as target,
                _bar(quiet, desc="lookups", unit=" ids", total=todo.height) as bar,
            ):
                async with target.client(job) as client:
                    return await lookup_candidates(
                        job, todo, client, db, progress=bar.update, clock=clock
                    )

        found, stats = run_async(ask)
    stats.cached = known.height
    return pl.concat([known, found]), stats


def _summary(
    job: Job,
    resolved: pl.LazyFrame,
    plan_path: Path,
    files: int,
    rejects: int,
    stats: LookupStats,
    started: float,
) -> PlanSummary:
    # One pass over the resolved rows: per outcome, its rows and those with an invalid cell.
    per_outcome = (
        resolved.group_by(OUTCOME)
        .agg(pl.len().alias("rows"), pl.col(INVALID).is_not_null().sum().alias("invalid"))
        .collect()
    )
    counts: dict[str, int] = dict(zip(per_outcome[OUTCOME], per_outcome["rows"], strict=True))
    rows, invalid = int(per_outcome["rows"].sum()), int(per_outcome["invalid"].sum())
    units = pl.scan_parquet(plan_path)
    requests, profiles, creates = (
        units.select(
            pl.len(),
            pl.col("key").str.replace(r"#\d+$", "").n_unique(),
            pl.col("action").is_in(["create", UPSERT]).sum(),
        )
        .collect()
        .row(0)
    )
    return PlanSummary(
        rows=rows,
        files=files,
        invalid_rows=invalid,
        resolved_profile_id=counts.get(BY_PROFILE_ID, 0),
        resolved_identity_map=counts.get(BY_MAP, 0),
        resolved_lookup=counts.get(BY_LOOKUP, 0),
        resolved_by_store=counts.get(BY_STORE, 0),
        unresolved=counts.get(UNRESOLVED, 0),
        ambiguous=counts.get(AMBIGUOUS, 0),
        conflict=counts.get(CONFLICT, 0),
        to_create=creates,
        profiles=profiles,
        requests=requests,
        split_requests=requests - profiles,
        rejects=rejects,
        lookups_asked=stats.asked,
        lookups_cached=stats.cached,
        lookups_failed=stats.failed,
        seconds=round(time.monotonic() - started, 3),
        mode=job.send.mode,
    )


# ---------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class RunResult:
    job: Job
    summary: dict[str, Any]
    text: str  # the human report (report.md), or why there was nothing to send
    exit_code: int
    line: str = ""  # the one line ``--quiet`` prints


def run(
    job_path: Path | str,
    *,
    restart: bool = False,
    full: bool = False,
    quiet: bool = False,
    metrics_port: int | None = None,
) -> RunResult:
    """``backfill run``: plan (or resume), deliver under the checkpoint, and report.

    The last run is resumed; if what it would send changed since (``resume.why_not``), ``run``
    refuses unless ``restart`` or ``full``. With ``[incremental]``, a new plan's units whose
    body already landed are not sent (``full`` plans afresh and sends them anyway).
    ``metrics_port``: serve the delivery's live figures on loopback while it runs.
    """
    job = load_job(job_path)
    result = _run(job, restart=restart, full=full, quiet=quiet, port=metrics_port)
    ended(job, "run", result.summary, result.exit_code)
    return result


def _run(job: Job, *, restart: bool, full: bool, quiet: bool, port: int | None) -> RunResult:
    files = source_files(job)
    with output_folder(job.output_dir) as out, RunLock(out, "run"), RunDB(out / RUN_FILE) as db:
        if db.meta("plan") is not None and not (restart or full):
            reason = why_not(db.meta("fingerprint"), job, files)
            if reason is not None:
                raise ConfigError(
                    f"cannot resume the run in {out}: {reason}; run with --restart to plan and "
                    "send again from the start"
                )
            _publish(out, db.meta("plan_id"))  # a killed run may not have moved them yet
            resumed = db.reset_in_flight()
            return _deliver_and_report(job, db, out, resumed, quiet, remember=True, fresh=False,
                                       port=port)  # fmt: skip
        made = made_from(job, files)
        state = job.incremental.state if job.incremental is not None else None
        store = job.connection.destination
        if restart and job.connection.embedded:
            (out / EMULATOR_STATE).unlink(missing_ok=True)
            if state is not None:  # the store starts from its seed again: nothing landed
                db.forget_landed(state, store, HASH_SCHEME)
        else:  # what a killed run landed, before its checkpoint goes
            _remember(job, db)
        db.set_meta(planning_started=time.time())
        # Planned aside: until the checkpoint holds the new units, the last run's files stay.
        # --restart / --full: the nightly extract names people created since the last night,
        # so no cached answer is trusted; a first run reuses what `plan` asked.
        plan_result = build_plan(
            job,
            quiet=quiet,
            keep_rows=True,
            keep_values=job.send.store_resolves and job.send.verify != "none",  # verify reads it
            into=out / STAGING_DIR,
            refresh_lookups=restart or full,
        )
        db.set_meta(plan=None)  # killed from here to the next set_meta: the next run re-plans
        db.replace_units(plan_result.plan_path)
        skipped = 0
        if state is not None and not full:
            skipped = db.skip_unchanged(state, store, HASH_SCHEME)
        db.set_meta(
            fingerprint=made,
            plan=asdict(plan_result.summary),
            plan_id=plan_result.plan_id,
            sources=plan_result.sources,
            hash_scheme=HASH_SCHEME,
            incremental=_incremental_meta(job, full, skipped),
            sessions=[],
        )
        _publish(out, plan_result.plan_id)
        return _deliver_and_report(job, db, out, 0, quiet, remember=True, fresh=True, port=port)


def ended(job: Job, command: str, summary: dict[str, Any], exit_code: int) -> None:
    """What the systems around a scheduled job hear when a command has finished its work (an
    interrupted run included): the ``[metrics]`` textfile, then the ``[notify]`` webhook. After
    the job's lock is released: a slow receiver never holds up the next run. Neither changes
    ``exit_code``; each only warns on stderr."""
    if job.metrics is not None:
        from backfill.metrics import write_textfile  # prometheus_client: only for [metrics]

        write_textfile(job, command, summary, exit_code)
    if job.notify is not None:
        from backfill.notify import notify  # httpx: not for a job without [notify]

        notify(job, command, summary, exit_code)


# Why a command stopped before its work was done, by exit code: said instead of the error's own
# message, which may name a column, a file or the service's words (cli.py maps errors to codes).
STOPPED: Final = {
    1: "stopped with an error",
    2: "stopped: the job, its input or its credentials are not usable",
    3: "stopped: the service refused the credentials",
    130: "was interrupted before it finished",
}


def stopped(job_path: Path | str, command: str, exit_code: int) -> None:
    """Tell the systems around a job (``ended``) that ``command`` stopped with an error before
    its reports (expired credentials at 3 am): a job file that does not load has nobody to
    tell. Never raises."""
    try:
        job = load_job(job_path)
    except BackfillError:
        return
    why = STOPPED.get(exit_code, STOPPED[1])
    ended(job, command, {"stopped": why}, exit_code)


def _publish(out: Path, plan_id: str | None) -> None:
    """Move the staged plan whose id the checkpoint holds into the output folder, plan.json
    last: a kill half-way leaves plan.json staged, and the next run finishes the move."""
    staging = out / STAGING_DIR
    staged = _read_json(staging / "plan.json")
    if plan_id is None or staged is None or staged.get("plan_id") != plan_id:
        return
    try:
        for name in PLAN_FILES:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise StorageError(f"cannot move the new plan from {staging} to {out}: {exc}") from exc


def retry(
    job_path: Path | str,
    *,
    not_found: bool = False,
    quiet: bool = False,
    metrics_port: int | None = None,
) -> RunResult:
    """``backfill retry``: send again the units of the last run that ended ``failed`` (and,
    with ``not_found``, ``profile_not_found``), e.g. after a schema fix. Nothing is re-planned:
    the checkpoint holds the bodies. Units the last run left unsent are finished too."""
    job = load_job(job_path)
    result = _retry(job, not_found=not_found, quiet=quiet, port=metrics_port)
    ended(job, "retry", result.summary, result.exit_code)
    return result


def _retry(job: Job, *, not_found: bool, quiet: bool, port: int | None) -> RunResult:
    from backfill.targets.memory_patch import FAILED_OUTCOME, PROFILE_NOT_FOUND
    from backfill.verify.landing import VERIFY_FAILED

    out = job.output_dir
    if not (out / RUN_FILE).is_file():
        raise ConfigError(f"nothing to retry: {job.path} has no run in {out} yet")
    with RunLock(out, "retry"), RunDB(out / RUN_FILE) as db:
        if db.meta("plan") is None:
            raise ConfigError(f"nothing to retry: the last run of {job.path} was never planned")
        _publish(out, db.meta("plan_id"))
        outcomes = [FAILED_OUTCOME, VERIFY_FAILED]
        if not_found:
            outcomes.append(PROFILE_NOT_FOUND)
        resumed = db.reset_in_flight()
        db.requeue_failed(outcomes)
        return _deliver_and_report(job, db, out, resumed, quiet, remember=True, fresh=False,
                                   port=port, command="retry")  # fmt: skip


@dataclass(frozen=True)
class StatusResult:
    job: Job
    summary: dict[str, Any]
    text: str


def status(job_path: Path | str) -> StatusResult:
    """``backfill status``: the last or current run's progress, read from its checkpoint
    without taking the lock or writing anything, so it is safe beside a running ``run``."""
    job = load_job(job_path)
    out = job.output_dir
    checkpoint = out / RUN_FILE
    if not checkpoint.is_file():
        raise ConfigError(f"{job.path} has not been run yet: no checkpoint at {checkpoint}")
    progress = read_progress(checkpoint)
    holder = lock_holder(out)
    pid, command = holder if holder is not None else (None, None)
    started = {"planning_started", "fingerprint"} & set(progress.meta)
    if not started and command not in ("run", "retry"):  # only `plan` or `schema` used it
        raise ConfigError(f"{job.path} has not been run yet: its checkpoint {checkpoint} is empty")
    c = progress.counts
    total = sum(c[s] for s in (PENDING, IN_FLIGHT, DONE, FAILED))
    unfinished = c[PENDING] + c[IN_FLIGHT]
    if command in ("run", "retry"):
        state = "running"
    elif progress.meta.get("plan") is None:
        state = "planning interrupted"
    else:
        state = "interrupted" if unfinished else "finished"
    rate = None
    if progress.last_finished is not None and progress.first_finished is not None:
        window = min(60.0, progress.last_finished - progress.first_finished)
        rate = progress.recent / window if window > 0 else None
    last_summary = _read_json(out / "summary.json") if state == "finished" else None
    summary: dict[str, Any] = {
        "job": str(job.path),
        "checkpoint": str(checkpoint),
        "state": state,
        "pid": pid,
        "busy": f"backfill {command}" if command else None,  # what holds the lock now
        "units": {
            "total": total,
            "finished": c[DONE] + c[FAILED],
            "pending": c[PENDING],
            "in_flight": c[IN_FLIGHT],
            **{k.removeprefix("outcome:"): v for k, v in c.items() if k.startswith("outcome:")},
        },
        "resent_units": c["resent"],
        "rate_last_minute": round(rate, 3) if rate is not None else None,
        "seconds_left": round(unfinished / rate) if rate and state == "running" else None,
        "last_finished_at": progress.last_finished,
        "plan": progress.meta.get("plan"),
        "incremental": progress.meta.get("incremental"),
        "exit_code": last_summary.get("exit_code") if last_summary else None,
    }
    return StatusResult(job, summary, format_status(summary))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _remember(job: Job, db: RunDB) -> None:
    """Copy what landed into the job's incremental state, if it has one. A checkpoint planned
    under another hash scheme (another polars version) is not copied: its hashes would never
    match again, so they could only make the state bigger."""
    if job.incremental is not None and db.meta("hash_scheme") == HASH_SCHEME:
        db.remember_landed(job.incremental.state, job.connection.destination, HASH_SCHEME)


def _incremental_meta(job: Job, full: bool, skipped: int) -> dict[str, Any] | None:
    if job.incremental is None:
        return None
    return {"state": str(job.incremental.state), "full": full, "skipped_unchanged": skipped}


def deliver_planned(
    job: Job, folder: Path, *, plan_meta: dict[str, Any], sources: list[str], quiet: bool = False
) -> RunResult:
    """Send a plan made by another command (``reconcile --fix``) through ``run``'s delivery path.

    ``folder`` holds ``plan.parquet`` (plan_units' columns), ``rows.parquet`` and ``rejects.csv``
    as ``build_plan(keep_rows=True)`` writes them; the checkpoint, errors.csv, summary.json and
    report.md go next to them. The caller holds the job's RunLock.
    """
    with RunDB(folder / RUN_FILE) as db:
        db.replace_units(folder / "plan.parquet")
        db.set_meta(plan=plan_meta, sources=sources, hash_scheme=HASH_SCHEME)
        return _deliver_and_report(
            job, db, folder, 0, quiet, remember=False, fresh=True, read_back=False
        )


def _deliver_and_report(
    job: Job,
    db: RunDB,
    out: Path,
    resumed: int,
    quiet: bool,
    *,
    remember: bool,
    fresh: bool,
    read_back: bool = True,
    port: int | None = None,
    command: str = "run",
) -> RunResult:
    """Deliver the checkpoint's pending units and write the reports. ``remember``: copy what
    landed into the job's incremental state (not for partial bodies such as reconcile's).
    ``fresh``: a new plan, whose report is written even when it sends nothing; otherwise a
    resume or retry with nothing left to send leaves the last report as it is. ``read_back``:
    prove a bulk or import delivery by reading it back (``verify``); not for another command's
    partial plan, which has no values to compare with. ``port``: serve the live figures there
    (``command`` labels them) while delivering."""
    from backfill.deliver.loop import deliver
    from backfill.metrics import LiveFigures, serve_live
    from backfill.targets import delivery_for
    from backfill.targets.memory_schema import check
    from backfill.transport.client import ClientStats
    from backfill.transport.connection import open_target
    from backfill.verify.landing import verify_landing

    before = db.counts()
    todo = before[PENDING]
    last = _read_json(out / "summary.json")
    if not todo and not fresh and last is not None and last.get("exit_code") != EXIT_INTERRUPTED:
        text = format_nothing_to_send(last)
        return RunResult(job, last, text, int(last["exit_code"]), text.splitlines()[0])
    started = time.monotonic()
    progress = DeliveryProgress(todo, quiet)
    live = LiveFigures(job.name, command, todo, job.send.rate)
    interrupted = False
    said: dict[str, Any] = {"mode": job.send.mode}  # the delivery's own summary

    async def send_all(client: MemoryClient) -> None:
        nonlocal interrupted
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        if stop.is_set():  # a second Ctrl-C: stop now
                            tg.cancel_scope.cancel()
                        interrupted = True
                        stop.set()
                        progress.note("stopping: finishing the requests in flight")

            if threading.current_thread() is threading.main_thread():
                tg.start_soon(on_signal)
            make = delivery_for(job, client)
            said.update(await deliver(job, db, make, stop=stop, on_result=finished))
            tg.cancel_scope.cancel()

    def finished(result: Result) -> None:
        progress.update(result)
        live.finish(result.outcome)

    async def main() -> tuple[ClientStats, float, dict[str, Any]]:
        with open_target(job) as target:
            client = target.client(job)
            live.client = client
            bucket = client.bucket
            assert bucket is not None
            async with client:
                # Before the first write, and only when there is one (an incremental re-run
                # with nothing to send sends no request at all): a store lacking a group or
                # trait would refuse every such unit one by one; this stops with the diff.
                if not job.connection.segment:  # a Unify space has no schema to check
                    await check(job, client)
                await send_all(client)
                if (
                    read_back
                    and not interrupted
                    and job.send.store_resolves
                    and job.send.verify != "none"
                ):
                    if job.connection.segment:  # the Profile API, under its own bucket
                        async with target.reader(job) as reader:
                            said["verify"] = await verify_landing(job, reader, db, out,
                                                                  quiet=quiet)  # fmt: skip
                    else:
                        said["verify"] = await verify_landing(job, client, db, out, quiet=quiet)
            return client.stats, bucket.rate, _throttle(job, client)

    try:
        with serve_live(port if todo else None, live):
            stats, final_rate, throttle = (
                run_async(main) if todo else (ClientStats(), job.send.rate, _throttle(job, None))
            )
    finally:
        progress.close()
        if remember:  # also what an interrupted run landed
            _remember(job, db)
    # Delivery time: the read-back after it is reported on its own (summary: delivery.verify).
    seconds = time.monotonic() - started - float(said.get("verify", {}).get("seconds", 0.0))
    after = db.counts()
    delivered = (after[DONE] + after[FAILED]) - (before[DONE] + before[FAILED])
    accepted = sum(after.get(f"outcome:{o}", 0) - before.get(f"outcome:{o}", 0) for o in LANDED)
    sessions = [*(db.meta("sessions") or []), _session(stats, seconds, delivered, accepted)]
    db.set_meta(sessions=sessions)
    plan_meta = db.meta("plan") or {}
    sources = db.meta("sources") or []
    unfinished = after[PENDING] + after[IN_FLIGHT]
    rows = write_errors(
        out / "rejects.csv",
        out / ROWS_FILE,
        list(db.failed_units()),
        sources,
        out / "errors.csv",
        read=plan_meta.get("rows", 0),
        unsent=db.unfinished_targets() if unfinished else [],
    )
    if interrupted or unfinished:
        exit_code = EXIT_INTERRUPTED
    elif rows.not_landed:
        exit_code = EXIT_SOME_FAILED
    else:
        exit_code = EXIT_OK
    whole = _totals(sessions)
    summary: dict[str, Any] = {
        "job": str(job.path),
        "mode": job.send.mode,
        "exit_code": exit_code,
        "seconds": round(whole["seconds"], 3),
        "rows": rows.as_dict(),
        "units": {
            "total": sum(after[s] for s in (PENDING, IN_FLIGHT, DONE, FAILED)),
            "sent_this_run": delivered,
            "updated": after.get("outcome:updated", 0),
            "created": after.get("outcome:created", 0),
            "upserted": after.get("outcome:upserted", 0),
            "imported": after.get("outcome:imported", 0),
            "profile_not_found": after.get("outcome:profile_not_found", 0),
            "failed": after.get("outcome:failed", 0),
            "verify_failed": after.get("outcome:verify_failed", 0),
            "skipped_unchanged": after.get(f"outcome:{SKIPPED_UNCHANGED}", 0),
            "pending": after[PENDING],
            "in_flight": after[IN_FLIGHT],
        },
        "requests": {
            "sent": whole["sent"],
            "retries": whole["retries"],
            "throttled": whole["throttled"],
            "transport_errors": whole["transport_errors"],
            "by_status": whole["by_status"],
        },
        "rate": {
            "configured": job.send.rate,
            "final": round(final_rate, 3),
            "achieved": round(whole["accepted"] / whole["seconds"], 3) if whole["seconds"] else 0.0,
        },
        "throttle": throttle,
        # Per session that sent anything, answers a second (README: summary.json).
        "timeline": [t for x in sessions if (t := x.get("timeline")) and t["second"]],
        "delivery": said,
        "remaps": db.remaps(),
        "resumed": resumed,
        "sessions": len(sessions),
        "resent_units": after["resent"],
        "plan": plan_meta,
        "files": {
            "errors": str(out / "errors.csv"),
            "summary": str(out / "summary.json"),
            "report": str(out / "report.md"),
            "html": str(out / "report.html"),
        },
    }
    text = format_run(summary)
    write_private(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_private(out / "report.md", text)
    write_run_html(summary, out / "errors.csv", out / "report.html")
    return RunResult(job, summary, text, exit_code, format_run_line(summary))


def _throttle(job: Job, client: MemoryClient | None) -> dict[str, Any]:
    """What the throttle did in this invocation: how far it moved the requests in flight, and
    its events and whole-run holds (README, "Throttling")."""
    adaptive = client.adaptive if client is not None else None
    window = adaptive.window if adaptive is not None else None
    return {
        "concurrency": {
            "configured": job.send.concurrency,
            "final": window.limit if window is not None else job.send.concurrency,
        },
        "events": adaptive.cuts if adaptive is not None else 0,
        "window_events": adaptive.window_cuts if adaptive is not None else 0,
        "holds": adaptive.holds if adaptive is not None else 0,
        "held_seconds": round(adaptive.held, 3) if adaptive is not None else 0.0,
    }


def _session(stats: ClientStats, seconds: float, units: int, accepted: int) -> dict[str, Any]:
    """One invocation's share of a run (a resumed run has several): kept in the checkpoint so
    the report covers the whole run."""
    return {
        "seconds": seconds,
        "units": units,
        "accepted": accepted,
        "sent": stats.sent,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "transport_errors": stats.transport_errors,
        "by_status": {str(k): v for k, v in stats.by_status.items()},
        "timeline": stats.timeline.as_dict(),
    }


def _totals(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "units", "accepted", "sent", "retries", "throttled", "transport_errors")
    total: dict[str, Any] = dict.fromkeys(keys, 0)
    by_status: dict[str, int] = {}
    for session in sessions:
        for key in total:
            total[key] += session.get(key, 0)
        for code, n in session.get("by_status", {}).items():
            by_status[code] = by_status.get(code, 0) + n
    total["by_status"] = dict(sorted(by_status.items()))
    return total
