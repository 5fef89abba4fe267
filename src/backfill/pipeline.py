"""The commands' library side: each runs the stages in order, config -> source -> map -> resolve
-> plan (-> send -> report), and returns a frozen result the CLI prints."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import polars as pl
from tqdm import tqdm

from backfill.checkpoint import RunDB, private_dir
from backfill.config import Job, load_job
from backfill.errors import ConfigError
from backfill.mapping import INVALID, map_batch
from backfill.plan import HASH_SCHEME, write_units
from backfill.report import write_rejects
from backfill.resolve import (
    AMBIGUOUS,
    BY_LOOKUP,
    BY_MAP,
    BY_PROFILE_ID,
    CONFLICT,
    OUTCOME,
    UNRESOLVED,
    LookupStats,
    cached_candidates,
    identity_map_candidates,
    lookup_candidates,
    open_pairs,
    resolve,
)
from backfill.source import check_columns, read_batches, source_files
from backfill.target import open_target

SPILL: Final = "lz4"  # temporary files between stages: speed over size


@dataclass(frozen=True)
class PlanSummary:
    """The counts ``backfill plan`` prints and writes to plan.json."""

    rows: int
    files: int
    invalid_rows: int
    resolved_profile_id: int
    resolved_identity_map: int
    resolved_lookup: int
    unresolved: int
    ambiguous: int
    conflict: int
    to_create: int
    profiles: int
    requests: int
    split_requests: int  # requests beyond one per profile, from the 50-group / 99-trait limits
    rejects: int
    lookups_asked: int
    lookups_cached: int
    lookups_failed: int
    seconds: float

    @property
    def resolved(self) -> int:
        return self.resolved_profile_id + self.resolved_identity_map + self.resolved_lookup


@dataclass(frozen=True)
class PlanResult:
    job: Job
    summary: PlanSummary
    plan_path: Path
    rejects_path: Path
    sources: list[str] = field(default_factory=list)


def _bar(quiet: bool, **kwargs: Any) -> tqdm[Any]:
    return tqdm(disable=quiet or not sys.stderr.isatty(), leave=False, **kwargs)


def plan(job_path: Path | str, *, offline: bool = False, quiet: bool = False) -> PlanResult:
    """``backfill plan``: everything up to the request units, with no trait written."""
    job = load_job(job_path)
    return build_plan(job, offline=offline, quiet=quiet)


def build_plan(job: Job, *, offline: bool = False, quiet: bool = False) -> PlanResult:
    started = time.monotonic()
    files = source_files(job)
    check_columns(job, files)
    if job.identity.identity_map is not None and not job.identity.identity_map.is_file():
        raise ConfigError(
            f"{job.path}: identity.identity_map: {job.identity.identity_map}: no such file"
        )
    candidates = identity_map_candidates(job)
    out = private_dir(job.output_dir)
    spill = out / ".spill"
    shutil.rmtree(spill, ignore_errors=True)
    private_dir(spill)
    try:
        with _bar(quiet, desc="reading", unit=" rows", unit_scale=True) as bar:
            for i, batch in enumerate(read_batches(job, files)):
                mapped_batch = map_batch(job, batch)
                mapped_batch.write_parquet(spill / f"mapped-{i:06d}.parquet", compression=SPILL)
                bar.update(batch.height)
        mapped = pl.scan_parquet(spill / "mapped-*.parquet")
        stats = LookupStats()
        pairs = open_pairs(job, mapped, candidates)
        looked_up = job.identity.lookup and not offline
        if looked_up and pairs.height:
            found, stats = _lookups(job, pairs, out, quiet)
            candidates = pl.concat([candidates, found])
        resolved_path = spill / "resolved.parquet"
        resolve(job, mapped, candidates, looked_up=looked_up).sink_parquet(
            resolved_path, compression=SPILL
        )
        resolved = pl.scan_parquet(resolved_path)
        plan_path = out / "plan.parquet"
        rows = resolved.select(pl.len()).collect().item()
        write_units(job, resolved, plan_path, rows, spill)
        plan_path.chmod(0o600)
        rejects_path = out / "rejects.csv"
        rejects = write_rejects(job, resolved, files, rejects_path)
        summary = _summary(job, resolved, plan_path, len(files), rejects, stats, started)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    result = PlanResult(job, summary, plan_path, rejects_path, [str(f.path) for f in files])
    summary_path = out / "plan.json"
    summary_path.write_text(
        json.dumps(
            {
                "job": str(job.path),
                "sources": result.sources,
                "hash_scheme": HASH_SCHEME,
                **asdict(summary),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    summary_path.chmod(0o600)
    return result


def _lookups(
    job: Job, pairs: pl.DataFrame, out: Path, quiet: bool
) -> tuple[pl.DataFrame, LookupStats]:
    """Cached answers first; the network (and credentials) only for what is left."""
    with RunDB(out / "run.sqlite") as db:
        known, todo = cached_candidates(job, pairs, db)
        if todo.is_empty():
            return known, LookupStats(cached=known.height)

        async def ask() -> tuple[pl.DataFrame, LookupStats]:
            with (
                open_target(job) as target,
                _bar(quiet, desc="lookups", unit=" ids", total=todo.height) as bar,
            ):
                async with target.client(job) as client:
                    return await lookup_candidates(job, todo, client, db, progress=bar.update)

        found, stats = anyio.run(ask)
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
    counts: dict[str, int] = dict(resolved.group_by(OUTCOME).agg(pl.len()).collect().rows())
    rows, invalid = resolved.select(pl.len(), pl.col(INVALID).is_not_null().sum()).collect().row(0)
    units = pl.scan_parquet(plan_path)
    requests, profiles, creates = (
        units.select(
            pl.len(),
            pl.col("key").str.replace(r"#\d+$", "").n_unique(),
            (pl.col("action") == "create").sum(),
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
    )
