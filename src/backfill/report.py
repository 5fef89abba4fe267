"""What a person reads afterwards: the rejects file now, delivery reports next.

Every source row that will not be sent, or carries a cell that could not be used, gets a line with
its file and row number, its identifiers, the outcome and the reason, so it can be fixed and fed
back. The file holds customer data, so it is owner-only.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl
from tqdm import tqdm

from backfill.checkpoint import FAILED, Result
from backfill.config import Job
from backfill.files import private_file
from backfill.plan.mapping import INVALID, PID, identifier_column
from backfill.plan.resolve import ACTION, AMBIGUOUS, CONFLICT, OUTCOME, REASON, TARGET, UNRESOLVED
from backfill.plan.source import FILE, ROW, SourceFile


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
    resolved_by_store: int = 0  # bulk, import: rows whose identifiers the store resolves
    mode: str = "patch"

    @property
    def resolved(self) -> int:
        return (
            self.resolved_profile_id
            + self.resolved_identity_map
            + self.resolved_lookup
            + self.resolved_by_store
        )


@dataclass(frozen=True)
class PlanResult:
    job: Job
    summary: PlanSummary
    plan_path: Path
    rejects_path: Path
    sources: list[str] = field(default_factory=list)
    plan_id: str = ""  # names this plan's files: a checkpoint finds its own by it


def identifiers_text(job: Job) -> pl.Expr:
    """``profile_id=...; email=...; phone=...`` from the row's usable (normalized) identifiers."""
    parts = [pl.concat_str(pl.lit("profile_id="), pl.col(PID))]
    parts += [
        pl.concat_str(pl.lit(f"{identifier.id_type}="), pl.col(identifier_column(k)))
        for k, identifier in enumerate(job.identity.identifiers)
    ]
    return pl.concat_str(parts, separator="; ", ignore_nulls=True)


REJECT_COLUMNS: Final = ("file", "row", "identifiers", "outcome", "reason")  # rejects.csv
NOT_RESOLVED: Final = (UNRESOLVED, AMBIGUOUS, CONFLICT)  # its outcomes besides invalid_row


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
    unsent = resolved.filter(pl.col(OUTCOME).is_in(NOT_RESOLVED) & pl.col(ACTION).is_null()).select(
        *common, pl.col(OUTCOME).alias("outcome"), pl.col(REASON).alias("reason")
    )
    frame = (
        pl.concat([invalid, unsent]).sort([FILE, "row", "outcome"]).select(REJECT_COLUMNS).collect()
    )
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
    head = [
        f"Plan for {result.job.name} ({result.job.path}), {s.seconds:.1f} s",
        line("rows read", s.rows, f"from {s.files} file{'s' if s.files != 1 else ''}"),
        line("invalid rows", s.invalid_rows, "see rejects.csv: a bad cell's row goes on"),
    ]
    tail = f"Wrote {result.plan_path} and {result.rejects_path} ({n(s.rejects)} lines)."
    if s.mode == "identify":  # Segment: it resolves every identify by the ids it carries
        return "\n".join([
            *head,
            line("to Segment", s.resolved_by_store, "it resolves the ids each event carries"),
            line("unresolved", s.unresolved, "no usable identifier"),
            line("over a limit", s.conflict, "more ids of a type than a profile holds"),
            line("people", s.profiles, "by their first identifier"),
            line("identify events", s.requests, f"{n(s.split_requests)} extra: 298 traits each"),
            tail,
        ])  # fmt: skip
    if s.mode != "patch":  # the store resolves: no lookups, no profile IDs known yet
        return "\n".join([
            *head,
            line("to the store", s.resolved_by_store, f"{s.mode}: it resolves the identifiers"),
            line("resolved by lookup", s.resolved_lookup, "people with rows under other keys"),
            line("unresolved", s.unresolved, "to create" if s.to_create else ""),
            line("ambiguous", s.ambiguous),
            line("conflicts", s.conflict),
            f"  {'lookups':<22}{lookups}",
            line("people", s.profiles, "by their first identifier"),
            line("profile bodies", s.requests, f"{n(s.split_requests)} extra from the limits"),
            tail,
        ])  # fmt: skip
    out = [
        *head,
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
        tail,
    ]
    return "\n".join(out)


INVALID_ROW: Final = "invalid_row"  # a bad cell: reported, while the rest of its row goes on


@dataclass(frozen=True)
class RowOutcomes:
    """Every source row, counted once: ``landed`` (all of it), ``landed_in_part`` (a cell was
    rejected; the rest landed), ``not_landed`` (unresolved, unreadable, or its request failed)
    and ``not_sent_yet`` (an interrupted run's pending requests). ``lines``: errors.csv's lines
    per outcome."""

    read: int
    landed: int
    landed_in_part: int
    not_landed: int
    not_sent_yet: int
    lines: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_errors(
    rejects: Path,
    rows: Path,
    failures: list[tuple[Any, ...]],
    files: list[str],
    path: Path,
    *,
    read: int,
    unsent: list[str],
) -> RowOutcomes:
    """errors.csv: every source row that did not land, or landed without a rejected cell.

    Rows rejected while planning come from rejects.csv; rows behind a request that failed come
    from rows.parquet (which rows fed which target), one line per row with the request's
    outcome, HTTP status, Twilio code, message and attempts. ``unsent``: targets whose requests
    are still to send (an interrupted run), whose rows count as not sent yet.
    """
    planned = pl.read_csv(rejects, infer_schema=False).select(
        pl.col("file"),
        pl.col("row").cast(pl.UInt32),
        pl.col("identifiers"),
        pl.lit(None, pl.String).alias("profile_id"),
        pl.col("outcome"),
        pl.lit(None, pl.Int64).alias("status"),
        pl.lit(None, pl.Int64).alias("code"),
        pl.col("reason").alias("message"),
        pl.lit(None, pl.Int64).alias("attempts"),
    )
    parts = [planned]
    names = dict(enumerate(files))
    if failures:
        failed = pl.DataFrame(
            failures,
            schema=[
                "key",
                "profile_id",
                "outcome",
                "status",
                "code",
                "message",
                "attempts",
                "sent_to",
            ],
            orient="row",
        ).with_columns(pl.col("key").str.replace(r"#\d+$", "").alias(TARGET))
        sent = (
            pl.scan_parquet(rows)
            .join(failed.lazy(), on=TARGET, how="inner")
            .select(
                pl.col(FILE).replace_strict(names, return_dtype=pl.String).alias("file"),
                pl.col(ROW).cast(pl.UInt32).alias("row"),
                pl.col("identifiers"),
                pl.coalesce("sent_to", "profile_id").alias("profile_id"),
                pl.col("outcome"),
                pl.col("status").cast(pl.Int64),
                pl.col("code").cast(pl.Int64),
                pl.col("message"),
                pl.col("attempts").cast(pl.Int64),
            )
            .collect()
        )
        parts.append(sent)
    order = {name: i for i, name in enumerate(files)}
    frame = (
        pl.concat(parts)
        .with_columns(pl.col("file").replace_strict(order, default=len(files)).alias("_f"))
        .sort("_f", "row", "outcome")
        .drop("_f")
    )
    private_file(path)
    frame.write_csv(path)
    per_row = frame.group_by("file", "row").agg(
        (pl.col("outcome") != INVALID_ROW).any().alias("lost")
    )
    pending = pl.DataFrame(schema={"file": pl.String, "row": pl.UInt32})
    if unsent:
        pending = (
            pl.scan_parquet(rows)
            .filter(pl.col(TARGET).is_in(unsent))
            .select(
                pl.col(FILE).replace_strict(names, return_dtype=pl.String).alias("file"),
                pl.col(ROW).cast(pl.UInt32).alias("row"),
            )
            .unique()
            .collect()
        )
    lost = per_row.filter(pl.col("lost")).select("file", "row")
    partial = per_row.filter(~pl.col("lost")).select("file", "row")
    not_sent = pending.join(lost, on=["file", "row"], how="anti").height
    in_part = partial.join(pending, on=["file", "row"], how="anti").height
    lines = dict(frame.group_by("outcome").len().sort("outcome").iter_rows())
    return RowOutcomes(
        read=read,
        landed=max(0, read - lost.height - in_part - not_sent),
        landed_in_part=in_part,
        not_landed=lost.height,
        not_sent_yet=not_sent,
        lines={str(k): int(v) for k, v in lines.items()},
    )


def write_private(path: Path, text: str) -> None:
    private_file(path)
    path.write_text(text, encoding="utf-8")


def format_run(summary: dict[str, Any]) -> str:
    """report.md, and what ``backfill run`` prints: the same facts for people."""
    u, r, q, t = summary["units"], summary["rows"], summary["requests"], summary["rate"]
    n = "{:,}".format
    errors = summary["files"]["errors"]
    if summary["exit_code"] == 130:
        verdict = "Interrupted: run the same command again to continue where it stopped."
    elif r["not_landed"]:
        verdict = f"{n(r['not_landed'])} source rows did not land: see {errors}."
    elif r["landed_in_part"]:
        verdict = f"Every source row landed, {n(r['landed_in_part'])} of them without a rejected"
        verdict += f" cell: see {errors}."
    elif r["read"] == 0:
        verdict = "The extract had no rows: nothing to send."
    else:
        verdict = "Everything landed."
    lines = [
        f"# backfill run: {summary['job']}",
        "",
        verdict,
        "",
        "| source rows | |",
        "|---|---:|",
        f"| read | {n(r['read'])} |",
        f"| landed | {n(r['landed'])} |",
        f"| landed in part (a cell rejected, the rest sent) | {n(r['landed_in_part'])} |",
        f"| not landed | {n(r['not_landed'])} |",
    ]
    if r["not_sent_yet"]:
        lines.append(f"| not sent yet | {n(r['not_sent_yet'])} |")
    if r["lines"]:
        lines += ["", f"| lines in {errors} by outcome | |", "|---|---:|"]
        lines += [f"| {name} | {n(count)} |" for name, count in r["lines"].items()]
    delivery = summary.get("delivery") or {}
    mode = delivery.get("mode", "patch")
    units = "requests" if mode == "patch" else "profile bodies"
    lines += [
        "",
        f"| {units} ({mode}) | |",
        "|---|---:|",
        f"| planned | {n(u['total'])} |",
    ]
    if mode == "patch" or u.get("updated") or u.get("created"):
        lines.append(f"| profiles updated | {n(u['updated'])} |")
        lines.append(f"| profiles created | {n(u['created'])} |")
    if mode == "bulk":
        lines.append(f"| accepted by the store (bulk) | {n(u.get('upserted', 0))} |")
        splits = n(delivery.get("split_requests", 0))
        batches = n(delivery.get("batches", 0))
        lines.append(f"| bulk batches | {batches} ({splits} split to find refused profiles) |")
    if mode == "identify":
        lines.append(f"| accepted by Segment (identify) | {n(u.get('upserted', 0))} |")
        splits = n(delivery.get("split_requests", 0))
        batches = n(delivery.get("batches", 0))
        lines.append(
            f"| Tracking API batches | {batches} ({splits} split to find refused events) |"
        )
    if mode == "import":
        files = delivery.get("files", [])
        done = sum(1 for f in files if f.get("status") == "COMPLETED")
        lines.append(f"| imported (the import completed) | {n(u.get('imported', 0))} |")
        lines.append(f"| import files | {n(len(files))} ({n(done)} completed) |")
        warnings = sum(int(f.get("warnings") or 0) for f in files)
        unnamed = sum(int(f.get("unnamed_errors") or 0) for f in files)
        lines.append(f"| rows the imports warned about | {n(warnings)} |")
        if unnamed:
            lines.append(f"| rows in error the imports did not name (left to the read-back) | "
                         f"{n(unnamed)} |")  # fmt: skip
    if u.get("verify_failed"):
        lines.append(f"| read back not holding their latest rows | {n(u['verify_failed'])} |")
    lines += [
        f"| profile not found | {n(u['profile_not_found'])} |",
        f"| failed | {n(u['failed'])} |",
        f"| unchanged since they last landed, not sent (incremental) | "
        f"{n(u['skipped_unchanged'])} |",
        f"| not sent yet | {n(u['pending'] + u['in_flight'])} |",
        f"| merged profiles followed | {n(summary['remaps'])} |",
        f"| HTTP requests | {n(q['sent'])} ({n(q['retries'])} retries) |",
        f"| answered 429 | {n(q['throttled'])} |",
        f"| network errors | {n(q['transport_errors'])} |",
        f"| achieved rate | {t['achieved']:.1f} accepted/s (configured {t['configured']:g}/s, "
        f"ending at {t['final']:.1f}/s) |",
        f"| delivery time | {summary['seconds']:.1f} s |",
    ]
    throttle = summary.get("throttle")
    if throttle and (throttle["events"] or throttle["holds"]):
        inflight = throttle["concurrency"]
        lines.append(
            f"| throttle | {n(throttle['events'])} congestion events "
            f"({n(throttle['window_events'])} on requests in flight: "
            f"{inflight['configured']} configured, ending at {inflight['final']}); "
            f"{n(throttle['holds'])} whole-run holds, {throttle['held_seconds']:.1f} s in all |"
        )
    if summary.get("sessions", 1) > 1:
        lines.append(f"| invocations (the run was resumed) | {n(summary['sessions'])} |")
    if summary["resumed"]:
        lines.append(f"| resumed units (were in flight when the last run stopped) | "
                     f"{n(summary['resumed'])} |")  # fmt: skip
    check = delivery.get("verify")
    if check:
        lines += [
            "",
            f"Read back ({check['how']}): {n(check['checked'])} of {n(check['landed_people'])} "
            f"people that landed; {n(check['matched'])} hold what their latest rows say, "
            f"{n(check['failed'])} do not (outcome verify_failed in {errors}), "
            f"{n(check['unverified'])} could not be read.",
        ]
    lines += ["", f"Files: {', '.join(summary['files'].values())}."]
    return "\n".join(lines) + "\n"


def format_run_line(summary: dict[str, Any]) -> str:
    """The one line ``--quiet`` prints: enough for a cron log."""
    r = summary["rows"]
    n = "{:,}".format
    pending = f", {n(r['not_sent_yet'])} not sent yet" if r["not_sent_yet"] else ""
    return (
        f"backfill: {summary['job']}: exit {summary['exit_code']}; {n(r['read'])} rows: "
        f"{n(r['landed'])} landed, {n(r['landed_in_part'])} landed in part, "
        f"{n(r['not_landed'])} not landed{pending}; report {summary['files']['report']}"
    )


def format_nothing_to_send(last: dict[str, Any]) -> str:
    """A resume or retry that found every unit finished: the last report stands."""
    return (
        f"Nothing to send: every request of the last run of {last['job']} has finished "
        f"(exit {last['exit_code']}). Its report stands: {last['files']['report']}.\n"
    )


def format_status(summary: dict[str, Any]) -> str:
    """What ``backfill status`` prints."""
    u = summary["units"]
    n = "{:,}".format
    state = summary["state"]
    if state == "running":
        state += f" (pid {summary['pid']})"
    elif state == "finished" and summary["exit_code"] is not None:
        state += f", exit code {summary['exit_code']}"
    if summary["busy"] and state.startswith(("finished", "interrupted")):
        state += f"; {summary['busy']} (pid {summary['pid']}) is using the job's folder now"
    share = 100 * u["finished"] / u["total"] if u["total"] else 100.0
    lines = [
        f"{summary['job']}: {state}",
        f"  units: {n(u['finished'])} of {n(u['total'])} finished ({share:.1f}%), "
        f"{n(u['pending'])} pending, {n(u['in_flight'])} in flight",
    ]
    outcomes = [
        f"{n(u[name])} {name.replace('_', ' ')}"
        for name in (
            "updated",
            "created",
            "upserted",
            "skipped_unchanged",
            "profile_not_found",
            "failed",
        )
        if u.get(name)
    ]
    if outcomes:
        lines.append(f"  outcomes: {', '.join(outcomes)}")
    if summary["rate_last_minute"] is not None:
        line = f"  rate: {summary['rate_last_minute']:.1f} units/s over the last minute of sending"
        if summary["seconds_left"] is not None:
            line += f", about {summary['seconds_left']:,} s left"
        lines.append(line)
    if summary["last_finished_at"] is not None:
        stamp = datetime.fromtimestamp(summary["last_finished_at"], UTC)
        lines.append(f"  last unit finished: {stamp:%Y-%m-%d %H:%M:%S} UTC")
    if summary["resent_units"]:
        lines.append(f"  re-sent after a crash: {n(summary['resent_units'])} units")
    return "\n".join(lines) + "\n"


class DeliveryProgress:
    """Sending progress: a tqdm bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, total: int, quiet: bool, every: float = 10.0) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.quiet = quiet
        self.every = every
        self.started = time.monotonic()
        self._last_line = self.started
        self.bar: tqdm[Any] | None = None
        if not quiet and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc="sending", unit=" req", dynamic_ncols=True)

    def update(self, result: Result) -> None:
        self.done += 1
        if result.state == FAILED:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
            if result.state == FAILED:
                self.bar.set_postfix(failed=self.failed, refresh=False)
        elif not self.quiet:
            now = time.monotonic()
            if now - self._last_line >= self.every:
                self._last_line = now
                self.note(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate else float("inf")
        share = 100 * self.done / self.total if self.total else 100.0
        return (
            f"sent {self.done:,}/{self.total:,} ({share:.0f}%), {rate:.1f}/s, "
            f"{self.failed:,} failed, about {left:.0f} s left"
        )

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
