"""What a person reads afterwards: the rejects file now, delivery reports next.

Every source row that will not be sent, or carries a cell that could not be used, gets a line with
its file and row number, its identifiers, the outcome and the reason, so it can be fixed and fed
back. The file holds customer data, so it is owner-only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from backfill.checkpoint import private_file
from backfill.config import Job
from backfill.mapping import INVALID, PID, identifier_column
from backfill.resolve import ACTION, AMBIGUOUS, CONFLICT, OUTCOME, REASON, UNRESOLVED
from backfill.source import FILE, ROW, SourceFile

if TYPE_CHECKING:
    from backfill.pipeline import PlanResult

REJECT_COLUMNS = ["file", "row", "identifiers", "outcome", "reason"]


def identifiers_text(job: Job) -> pl.Expr:
    """``profile_id=...; email=...; phone=...`` from the row's usable (normalized) identifiers."""
    parts = [pl.concat_str(pl.lit("profile_id="), pl.col(PID))]
    parts += [
        pl.concat_str(pl.lit(f"{identifier.id_type}="), pl.col(identifier_column(k)))
        for k, identifier in enumerate(job.identity.identifiers)
    ]
    return pl.concat_str(parts, separator="; ", ignore_nulls=True)


def write_rejects(job: Job, resolved: pl.LazyFrame, files: list[SourceFile], path: Path) -> int:
    """Write rejects.csv; return its number of lines (header excluded)."""
    names = {f.index: str(f.path) for f in files}
    common = [
        pl.col(FILE),
        pl.col(FILE).replace_strict(names, return_dtype=pl.String).alias("file"),
        pl.col(ROW).alias("row"),
        identifiers_text(job).alias("identifiers"),
    ]
    invalid = resolved.filter(pl.col(INVALID).is_not_null()).select(
        *common, pl.lit("invalid_row").alias("outcome"), pl.col(INVALID).alias("reason")
    )
    unsent = resolved.filter(
        pl.col(OUTCOME).is_in([UNRESOLVED, AMBIGUOUS, CONFLICT]) & pl.col(ACTION).is_null()
    ).select(*common, pl.col(OUTCOME).alias("outcome"), pl.col(REASON).alias("reason"))
    frame = pl.concat([invalid, unsent]).sort([FILE, "row", "outcome"]).drop(FILE).collect()
    private_file(path)
    frame.write_csv(path)
    return frame.height


def format_plan(result: PlanResult) -> str:
    """The one-screen summary ``backfill plan`` prints."""
    s = result.summary
    n = "{:,}".format

    def line(label: str, value: int, note: str = "") -> str:
        return f"  {label:<22}{n(value):>10}{'  ' + note if note else ''}"

    lookups = f"{n(s.lookups_asked)} asked, {n(s.lookups_cached)} cached"
    if s.lookups_failed:
        lookups += f", {n(s.lookups_failed)} failed"
    out = [
        f"Plan for {result.job.name} ({result.job.path}), {s.seconds:.1f} s",
        line("rows read", s.rows, f"from {s.files} file{'s' if s.files != 1 else ''}"),
        line("invalid rows", s.invalid_rows, "bad cells are reported; the rest of the row goes on"),
        line("resolved", s.resolved),
        line("  by profile ID", s.resolved_profile_id),
        line("  by identity map", s.resolved_identity_map),
        line("  by lookup", s.resolved_lookup),
        line("unresolved", s.unresolved, "to create" if s.to_create else ""),
        line("ambiguous", s.ambiguous),
        line("conflicts", s.conflict),
        line("profiles", s.profiles, f"{n(s.to_create)} to create" if s.to_create else ""),
        line("requests", s.requests, f"{n(s.split_requests)} extra from the 50-group limit"),
        f"  {'lookups':<22}{lookups}",
        f"Wrote {result.plan_path} and {result.rejects_path} ({n(s.rejects)} lines).",
    ]
    return "\n".join(out)
