"""``backfill reconcile``: what Memory holds, compared trait by trait with what the plan sends.

``reconcile(job_path, fix=..., settle=..., quiet=...)`` is the stage's one entry. Under the job's
lock it plans the job (no writes) into ``reconcile/plan/``, derives per profile and trait the value
the plan sends and the source row that supplied it, fetches every target profile
(``GET .../Profiles/{id}?traitGroups=...``, ``send.concurrency`` at a time under the job's token
bucket, following one merge redirect) and compares them (all in ``compare``). In
``<output>/reconcile/``:

- ``reconcile.csv``: one line per trait that differs (``differs``) or is absent from Memory
  (``missing_in_memory``): profile_id, group, trait, expected, actual, file, row, kind;
- ``profiles.csv``: every profile not found, not fetchable, differing, or merged into another;
- ``reconcile.json`` and ``reconcile.md``: the counts, per trait group.

Reads lag writes on the real service (writes are accepted asynchronously, shared/memory-api.md):
with ``settle``, each profile that did not match is fetched again at least ``settle`` seconds
after it was first seen, and only what persists is reported. ``fix`` sends exactly the
differing traits through ``run``'s delivery path (``pipeline.deliver_planned``) and does not
check them again: that is the next reconcile's job.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import polars as pl

from backfill.checkpoint import RunDB, RunLock
from backfill.config import Job, load_job
from backfill.errors import ConfigError
from backfill.files import (
    ROWS_FILE,
    RUN_FILE,
    VALUES_FILE,
    output_folder,
    private_dir,
    private_file,
)
from backfill.pipeline import (
    EXIT_INTERRUPTED,
    build_plan,
    deliver_planned,
    ended,
)
from backfill.plan.resolve import NEW, TARGET
from backfill.plan.source import FILE, ROW, source_files
from backfill.plan.units import (
    HASH_SCHEME,
    addressed_identity,
    encode_trait,
    units_from_fragments,
)
from backfill.report import NOT_RESOLVED, REJECT_COLUMNS, PlanResult, write_private
from backfill.verify.compare import (
    DIFFERS,
    FETCH_FAILED,
    MATCHES,
    MISSING,
    NOT_FOUND,
    Checked,
    check_all,
    expected_frame,
    file_column,
    row_column,
    same_value,
    write_expected,
)
from backfill.verify.landing import locate_all

__all__ = ["ReconcileResult", "expected_frame", "format_reconcile", "reconcile", "same_value"]

REPORTS: Final = {  # summary["files"] key -> name in <output>/reconcile/
    "differences": "reconcile.csv",
    "profiles": "profiles.csv",
    "summary": "reconcile.json",
    "report": "reconcile.md",
    "html": "report.html",
}


@dataclass(frozen=True)
class ReconcileResult:
    job: Job
    summary: dict[str, Any]  # reconcile.json
    text: str  # reconcile.md
    exit_code: int  # 0: Memory matches the plan; 1: it does not, or some rows could not be checked
    line: str = ""  # the one line ``--quiet`` prints


def _created_profiles(out: Path) -> dict[str, str]:
    """The profile the job's run created for each ``new:...`` target, so those are checked
    too; targets never created stay ``new:...`` (counted as ``to_create``)."""
    if not (out / RUN_FILE).is_file():
        return {}
    with RunDB(out / RUN_FILE) as db:
        return db.created()


def _retarget_rows(rows: Path, where: pl.DataFrame) -> None:
    """rows.parquet with each row's target replaced by the profile the store put it in, so the
    rows behind a finding (and a fix) are found by profile."""
    frame = (
        pl.read_parquet(rows)
        .join(where, on=TARGET, how="left")
        .with_columns(pl.coalesce("profile", TARGET).alias(TARGET))
        .drop("profile")
    )
    frame.write_parquet(rows)


# ------------------------------------------------------------------------------------ fix


def _merged_together(profiles: Path, parts: list[Path]) -> pl.DataFrame:
    """Planned targets that are now one Memory profile: merged into another planned target, or
    into the same profile as another. The plan sends each its own values, so they compete (the
    run's last write won); --fix leaves them alone, or reconcile --fix would never settle."""
    merged = pl.scan_csv(profiles, infer_schema=False).filter(
        pl.col("canonical_profile_id").is_not_null()
    )
    planned = pl.scan_parquet(parts).select(pl.col(TARGET))
    owners = pl.concat(
        [
            merged.select(pl.col("profile_id").alias(TARGET), pl.col("canonical_profile_id")),
            planned.join(merged.select(pl.col("profile_id").alias(TARGET)), on=TARGET, how="anti")
            .select(pl.col(TARGET), pl.col(TARGET).alias("canonical_profile_id")),
        ]
    )  # fmt: skip
    shared = owners.group_by("canonical_profile_id").agg(pl.len()).filter(pl.col("len") > 1)
    return owners.join(shared, on="canonical_profile_id", how="semi").select(TARGET).collect()


def _fix(
    job: Job, rec: Path, plan_folder: Path, parts: list[Path], findings: Path,
    leave: pl.DataFrame, sources: list[str], quiet: bool,
) -> dict[str, Any]:  # fmt: skip
    """Send exactly the traits of ``findings`` (differing and missing ones) through run's
    delivery path; what it did, for reconcile.json (``units`` None: nothing to send)."""
    wanted = (
        pl.scan_csv(findings, infer_schema=False)
        .select(pl.col("profile_id").alias(TARGET), pl.col("j").cast(pl.Int64))
        .join(leave.lazy(), on=TARGET, how="anti")
        .group_by(TARGET)
        .agg(pl.col("j").alias("__fix"))
    )
    fixing = pl.scan_parquet(parts).join(wanted, on=TARGET, how="inner")
    n = len(job.traits)
    flags = {j: pl.col("__fix").list.contains(j) for j in range(n)}
    suppliers = pl.concat(
        fixing.filter(flags[j]).select(
            pl.col(TARGET), pl.col(file_column(j)).alias(FILE), pl.col(row_column(j)).alias(ROW)
        )
        for j in range(n)
    ).unique()
    rows = (
        pl.scan_parquet(plan_folder / ROWS_FILE)
        .join(suppliers, on=[FILE, ROW, TARGET], how="semi")
        .collect()
    )
    folder = rec / "fix"
    shutil.rmtree(folder, ignore_errors=True)  # the last fix's files would read as this one's
    if rows.is_empty():
        return {"exit_code": 0, "profiles": 0, "rows": 0, "units": None, "requests": None,
                "remaps": 0, "files": None}  # fmt: skip
    private_dir(folder)
    rows.write_parquet(private_file(folder / ROWS_FILE))
    per_target = rows.group_by(TARGET).agg(pl.len().cast(pl.UInt32).alias("rows")).lazy()
    # The bodies as plan.py encodes them, from fragments of only the traits to fix (a null
    # expected value encodes as null: the trait is deleted).
    encoded = fixing.with_columns(pl.when(flags[j]).then(encode_trait(job, j)) for j in range(n))
    if job.connection.segment:
        encoded = encoded.with_columns(addressed_identity(job))
    units = (
        units_from_fragments(job, encoded)
        .join(per_target.rename({TARGET: "profile_id"}), on="profile_id", how="left")
        .select("key", "profile_id", "action", "chunk", "body", "hash", pl.col("rows").fill_null(0))
        .sort("key")
        .collect()
    )
    units.write_parquet(private_file(folder / "plan.parquet"))
    pl.DataFrame(schema=dict.fromkeys(REJECT_COLUMNS, pl.String)).write_csv(
        private_file(folder / "rejects.csv")
    )
    meta = {
        "made_by": "reconcile --fix",
        "rows": rows.height,
        "profiles": units.get_column("profile_id").n_unique(),
        "requests": units.height,
        "hash_scheme": HASH_SCHEME,
    }
    result = deliver_planned(job, folder, plan_meta=meta, sources=sources, quiet=quiet)
    s = result.summary
    return {
        "exit_code": result.exit_code,
        "profiles": meta["profiles"],
        "rows": meta["rows"],
        "units": s["units"],
        "requests": s["requests"],
        "remaps": s["remaps"],
        "files": s["files"],
    }


# --------------------------------------------------------------------------------- reports


def _write_findings(checked: Checked, differences: Path, profiles: Path) -> None:
    """reconcile.csv (sorted by profile, then the job's trait order) and profiles.csv."""
    private_file(differences)
    (
        pl.scan_csv(checked.traits_path, infer_schema=False)
        .with_columns(pl.col("j").cast(pl.Int64))
        .sort("profile_id", "j")
        .drop("j")
        .sink_csv(differences)
    )
    private_file(profiles)
    parts = [
        pl.scan_csv(path, infer_schema=False).filter(
            (pl.col("outcome") == MATCHES) if only_matching else pl.lit(True)
        )
        for path, only_matching in checked.profile_paths
    ]
    pl.concat(parts).sort("profile_id").sink_csv(profiles)


def _write_reports(summary: dict[str, Any], files: dict[str, Path]) -> str:
    """reconcile.json, reconcile.md and report.html; returns reconcile.md's text."""
    from backfill.report_html import reconcile_html

    text = format_reconcile(summary)
    write_private(files["summary"], json.dumps(summary, indent=2) + "\n")
    write_private(files["report"], text)
    write_private(files["html"], reconcile_html(summary, files["differences"]))
    return text


def _rejected_rows(plan_folder: Path) -> dict[str, int]:
    """Source rows in the plan's rejects.csv, per outcome (a row counts once per outcome)."""
    rejects = pl.scan_csv(plan_folder / "rejects.csv", infer_schema=False)
    frame = rejects.group_by("outcome").agg(pl.struct("file", "row").n_unique()).collect()
    return {outcome: int(n) for outcome, n in frame.rows()}


def _summary(
    job: Job, plan: PlanResult, checked: Checked, rejected: dict[str, int], to_create: int,
    merged_together: int, settle: float, files: dict[str, str], seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """reconcile.json; ``exit_code`` is 1 when anything differs or could not be checked."""
    p, t = checked.tally.profiles, checked.tally.traits
    kinds = {"matching": MATCHES, "differing": DIFFERS, "missing_in_memory": MISSING}
    groups = {
        g: {"checked": sum(t[(g, k)] for k in kinds.values())}
        | {name: t[(g, k)] for name, k in kinds.items()}
        for g in dict.fromkeys(m.group for m in job.traits)
    }
    profiles = {
        "checked": sum(p[k] for k in (MATCHES, DIFFERS, NOT_FOUND, FETCH_FAILED)),
        "matching": p[MATCHES],
        "differing": p[DIFFERS],
        "profile_not_found": p[NOT_FOUND],
        "fetch_failed": p[FETCH_FAILED],
        "remapped": p["remapped"],
        "to_create": to_create,
        "merged_together": merged_together,
    }
    rows = {
        "read": plan.summary.rows,
        "not_resolved": sum(rejected.get(k, 0) for k in NOT_RESOLVED),
        "invalid": rejected.get("invalid_row", 0),
        "rejected_by_outcome": rejected,
    }
    unchecked = ("differing", "profile_not_found", "fetch_failed", "to_create")
    failing = any(profiles[k] for k in unchecked) or rows["not_resolved"] or rows["invalid"]
    return {
        "job": str(job.path),
        "store": "Segment" if job.connection.segment else "Memory",
        "exit_code": 1 if failing else 0,
        "seconds": round(seconds, 3),
        "profiles": profiles,
        "traits": {
            "checked": sum(g["checked"] for g in groups.values()),
            **{name: sum(g[name] for g in groups.values()) for name in kinds},
        },
        "groups": groups,
        "rows": rows,
        "settle": {
            "seconds": settle,
            "rechecked": checked.rechecked,
            "settled": checked.settled,
            "waited": checked.waited,
        },
        "requests": {
            "sent": checked.stats.sent,
            "retries": checked.stats.retries,
            "throttled": checked.stats.throttled,
            "transport_errors": checked.stats.transport_errors,
            "by_status": {str(k): v for k, v in sorted(checked.stats.by_status.items())},
        },
        "fix": None,
        "files": files,
    }


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def format_reconcile(summary: dict[str, Any]) -> str:
    """reconcile.md, and what ``backfill reconcile`` prints."""
    p, t, r, s = summary["profiles"], summary["traits"], summary["rows"], summary["settle"]
    q, files = summary["requests"], summary["files"]
    store = summary.get("store", "Memory")
    n = "{:,}".format
    problems = [
        (p["differing"], _count(p["differing"], "profile differs", "profiles differ")),
        (p["profile_not_found"], _count(p["profile_not_found"], "profile was", "profiles were")
         + " not found"),
        (p["fetch_failed"], _count(p["fetch_failed"], "profile", "profiles")
         + " could not be fetched"),
        (p["to_create"], _count(p["to_create"], "planned create", "planned creates")
         + " cannot be checked"),
        (r["not_resolved"], _count(r["not_resolved"], "source row resolves", "source rows resolve")
         + " to no profile"),
        (r["invalid"], _count(r["invalid"], "source row has", "source rows have")
         + " unusable cells"),
    ]  # fmt: skip
    if summary["exit_code"] == 0:
        verdict = (
            f"{store} matches the plan: {_count(p['checked'], 'profile', 'profiles')} checked."
        )
    else:
        found = "; ".join(text for count, text in problems if count)
        verdict = f"{found[0].upper()}{found[1:]}. Differences: {files['differences']}."
    lines = [
        f"# backfill reconcile: {summary['job']}",
        "",
        verdict,
        "",
        "| | |",
        "|---|---:|",
        f"| profiles checked | {n(p['checked'])} |",
        f"| matching | {n(p['matching'])} |",
        f"| differing | {n(p['differing'])} |",
        f"| profile not found | {n(p['profile_not_found'])} |",
        f"| could not be fetched | {n(p['fetch_failed'])} |",
        f"| merged profiles followed | {n(p['remapped'])} |",
        f"| planned creates (not checked) | {n(p['to_create'])} |",
        f"| planned profiles merged into one (never fixed) | {n(p['merged_together'])} |",
        f"| traits checked | {n(t['checked'])} |",
        f"| traits differing | {n(t['differing'])} |",
        f"| traits missing in {store} | {n(t['missing_in_memory'])} |",
        f"| source rows resolving to no profile | {n(r['not_resolved'])} |",
        f"| source rows with unusable cells | {n(r['invalid'])} |",
    ]
    if s["seconds"]:
        lines.append(f"| re-checked after {s['seconds']:g} s | {n(s['rechecked'])} "
                     f"({n(s['settled'])} settled, waited {s['waited']:.1f} s) |")  # fmt: skip
    lines += [
        f"| HTTP requests | {n(q['sent'])} ({n(q['retries'])} retries, "
        f"{n(q['throttled'])} answered 429) |",
        f"| time | {summary['seconds']:.1f} s |",
        "",
        f"| trait group | checked | matching | differing | missing in {store} |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {g or '(all traits)'} | {n(c['checked'])} | {n(c['matching'])} "
            f"| {n(c['differing'])} | {n(c['missing_in_memory'])} |"
            for g, c in summary["groups"].items()
        ),
    ]
    fix = summary["fix"]
    if fix is not None and fix["units"] is None:
        why = " (profiles merged into one are never fixed)" if p["merged_together"] else ""
        lines += ["", f"Fix: nothing to send{why}."]
    elif fix is not None:
        u = fix["units"]
        lines += [
            "",
            f"Fix: {_count(u['total'], 'request', 'requests')} for "
            f"{_count(fix['profiles'], 'profile', 'profiles')}: "
            f"{n(u['updated'] + u.get('upserted', 0))} accepted, "
            f"{n(u['profile_not_found'])} profile not found, {n(u['failed'])} failed "
            f"(see {fix['files']['report']}). Run reconcile again to verify that they landed.",
        ]
    lines += ["", f"Files: {', '.join(files.values())}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- entry


def reconcile(
    job_path: Path | str, *, fix: bool = False, settle: float = 0.0, quiet: bool = False
) -> ReconcileResult:
    """``backfill reconcile``: compare Memory with the job's plan (see the module docstring)."""
    if not 0 <= settle < float("inf"):
        raise ConfigError(f"--settle must be a number of seconds, at least 0 (got {settle})")
    started = time.monotonic()
    job = load_job(job_path)
    result = _reconcile(job, fix=fix, settle=settle, quiet=quiet, started=started)
    ended(job, "reconcile", result.summary, result.exit_code)
    return result


def _reconcile(
    job: Job, *, fix: bool, settle: float, quiet: bool, started: float
) -> ReconcileResult:
    source_files(job)  # a missing input fails before any folder is made
    with output_folder(job.output_dir) as out, RunLock(out, "reconcile"):
        rec = private_dir(out / "reconcile")
        files = {key: rec / name for key, name in REPORTS.items()}
        for path in files.values():  # a reconcile that fails leaves no report to mistake
            path.unlink(missing_ok=True)
        # Into reconcile/plan: the run's own plan files (which a resume or retry reads again)
        # stay as they are, while rows resolve with the run's lookup cache and emulator.
        plan_folder = rec / "plan"
        shutil.rmtree(plan_folder, ignore_errors=True)
        plan = build_plan(job, quiet=quiet, keep_rows=True, keep_values=True, into=plan_folder)
        fixer = job
        if job.send.store_resolves:  # the store put people somewhere: ask where, per person
            targets = (
                pl.scan_parquet(plan_folder / VALUES_FILE).select(pl.col(TARGET).unique())
                .collect().get_column(TARGET).sort().to_list()
            )  # fmt: skip
            where = locate_all(job, targets, out)
            parts = write_expected(job, plan_folder, {}, profiles=where)
            _retarget_rows(plan_folder / ROWS_FILE, where)
            # A fix sends the few traits that differ, to profiles now known: PATCH does that
            # (a bulk body would need the identifiers too). Segment's one way is an identify
            # keyed by the identifier the person was read by.
            if not job.connection.segment:
                fixer = replace(job, send=replace(job.send, mode="patch"))
        else:
            parts = write_expected(job, plan_folder, _created_profiles(out))
        profiles, to_create = (
            pl.scan_parquet(parts)
            .select(pl.len(), pl.col(TARGET).str.starts_with(NEW).sum())
            .collect()
            .row(0)
        )
        names = dict(enumerate(plan.sources))
        checked = check_all(job, parts, names, rec, profiles - to_create, settle, quiet)
        _write_findings(checked, files["differences"], files["profiles"])
        rejected = _rejected_rows(plan_folder)
        paths = {key: str(path) for key, path in files.items()}
        seconds = time.monotonic() - started
        together = _merged_together(files["profiles"], parts)
        summary = _summary(job, plan, checked, rejected, to_create, together.height, settle,
                           paths, seconds)  # fmt: skip
        _write_reports(summary, files)
        if fix:  # the report above stands if the fix fails; it is rewritten with the fix's
            summary["fix"] = _fix(fixer, rec, plan_folder, parts, checked.traits_path,
                                  together, plan.sources, quiet)  # fmt: skip
            if summary["fix"]["exit_code"] == EXIT_INTERRUPTED:
                summary["exit_code"] = EXIT_INTERRUPTED
            summary["seconds"] = round(time.monotonic() - started, 3)
        for scratch in (".pass1", ".pass2"):
            shutil.rmtree(rec / scratch, ignore_errors=True)
        text = _write_reports(summary, files)
        verdict = text.splitlines()[2]
        line = f"backfill: {job.path}: exit {summary['exit_code']}; {verdict}"
        return ReconcileResult(job, summary, text, summary["exit_code"], line)
