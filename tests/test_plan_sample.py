"""`backfill plan` on the sample job, against the embedded emulator, checked against the oracle
that sample_data/make_sample.py computed independently while generating the data."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from backfill.cli import main
from backfill.config import Job, Send, Source, load_job
from backfill.errors import ConfigError
from backfill.pipeline import build_plan
from backfill.report import PlanResult

ROOT = Path(__file__).parents[1]
EXPECTED: dict[str, Any] = json.loads((ROOT / "sample_data" / "expected_plan.json").read_text())
COUNTS = ["rows", "invalid_rows", "resolved_profile_id", "resolved_identity_map",
          "resolved_lookup", "unresolved", "ambiguous", "conflict", "profiles", "requests",
          "rejects"]  # fmt: skip


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job paths are relative to where backfill runs; the sample job is run from the repo."""
    monkeypatch.chdir(ROOT)


def sample_job(tmp_path: Path, source: str = "sample_data/customers.csv") -> Job:
    job = load_job(ROOT / "jobs" / "sample_backfill.toml")
    return replace(
        job,
        source=replace(job.source, paths=(source,)),
        send=Send(concurrency=8, rate=5000),  # the emulator is unthrottled; keep the test fast
        output_dir=tmp_path / "out",
    )


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> PlanResult:
    os.chdir(ROOT)
    return build_plan(sample_job(tmp_path_factory.mktemp("plan")), quiet=True)


def test_summary_matches_what_the_sample_was_built_to_contain(planned: PlanResult) -> None:
    """Every count of the summary equals the generator's independent oracle."""
    got = {key: getattr(planned.summary, key) for key in COUNTS}
    assert got == {key: EXPECTED[key] for key in COUNTS}
    assert planned.summary.split_requests == 0
    assert planned.summary.lookups_failed == 0


def test_every_profile_gets_exactly_the_expected_traits(planned: PlanResult) -> None:
    """Per profile and trait, the latest row that carries the trait wins; nothing else is sent."""
    units = pl.read_parquet(planned.plan_path)
    bodies = {row["profile_id"]: json.loads(row["body"]) for row in units.iter_rows(named=True)}
    assert {pid: body["traits"] for pid, body in bodies.items()} == EXPECTED["profile_traits"]
    assert units["key"].is_unique().all()
    assert (units["key"] == units["profile_id"] + "#0").all()
    assert units["hash"].str.contains(r"^\d+-\d+$").all()
    assert units["hash"].is_unique().all()


def test_rejects_name_every_row_that_will_not_be_sent(planned: PlanResult) -> None:
    """rejects.csv has one line per invalid row (its bad columns) and per unsent row."""
    rejects = pl.read_csv(planned.rejects_path)
    assert rejects.columns == ["file", "row", "identifiers", "outcome", "reason"]
    assert set(rejects["file"]) == {"sample_data/customers.csv"}
    invalid = {
        str(r["row"]): sorted(part.split(":")[0] for part in r["reason"].split("; "))
        for r in rejects.filter(pl.col("outcome") == "invalid_row").iter_rows(named=True)
    }
    assert invalid == EXPECTED["invalid"]
    unsent = {
        str(r["row"]): r["outcome"]
        for r in rejects.filter(pl.col("outcome") != "invalid_row").iter_rows(named=True)
    }
    expected = {row: outcome for row, outcome in EXPECTED["row_outcomes"].items()
                if outcome in ("unresolved", "ambiguous", "conflict")}  # fmt: skip
    assert unsent == expected
    assert rejects["reason"].null_count() == 0


def test_outputs_are_owner_only(planned: PlanResult) -> None:
    """The folder and every file in it hold customer data: nobody else may read them."""
    folder = planned.plan_path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_parquet_plans_exactly_like_csv(planned: PlanResult, tmp_path: Path) -> None:
    """The Parquet copy of the extract gives the same units, bodies and hashes."""
    result = build_plan(sample_job(tmp_path, "sample_data/customers.parquet"), quiet=True)
    assert result.summary.rows == planned.summary.rows
    csv_units = pl.read_parquet(planned.plan_path)
    assert pl.read_parquet(result.plan_path).equals(csv_units)


def test_a_rerun_asks_no_lookup_twice(tmp_path: Path) -> None:
    """Lookup answers are cached in the run's SQLite file; the second plan asks nothing."""
    job = sample_job(tmp_path)
    first = build_plan(job, quiet=True)
    second = build_plan(job, quiet=True)
    assert first.summary.lookups_asked > 0
    assert second.summary.lookups_asked == 0
    assert second.summary.lookups_cached == first.summary.lookups_asked
    assert pl.read_parquet(second.plan_path).equals(pl.read_parquet(first.plan_path))


def test_offline_resolves_without_any_lookup(tmp_path: Path) -> None:
    """--offline uses the profile ID column and identity map only, and says so per row."""
    result = build_plan(sample_job(tmp_path), offline=True, quiet=True)
    s = result.summary
    assert (s.lookups_asked, s.resolved_lookup) == (0, 0)
    assert s.resolved_profile_id == EXPECTED["resolved_profile_id"]
    assert s.resolved_identity_map >= EXPECTED["resolved_identity_map"]
    rejects = pl.read_csv(result.rejects_path).filter(pl.col("outcome") == "unresolved")
    assert rejects["reason"].str.contains("not looked up").any()


def test_cli_prints_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backfill plan JOB --quiet` prints the one-screen summary and exits 0."""
    job_text = (ROOT / "jobs" / "sample_backfill.toml").read_text()
    job_text = job_text.replace("rate = 200", "rate = 5000")
    job_text += f'\n[output]\ndir = "{tmp_path / "out"}"\n'
    path = tmp_path / "job.toml"
    path.write_text(job_text)
    assert main(["plan", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "rows read                  2,000  from 1 file" in out
    assert f"unresolved                    {EXPECTED['unresolved']}" in out
    assert f"Wrote {tmp_path / 'out' / 'plan' / 'plan.parquet'}" in out


def test_a_missing_column_fails_before_any_row(tmp_path: Path) -> None:
    """A mapping naming a column the extract lacks stops at once, naming file and column."""
    job = sample_job(tmp_path)
    bad = replace(job, source=Source(paths=("sample_data/identity_map.parquet",)))
    with pytest.raises(ConfigError, match=r"identity_map\.parquet has no column .email."):
        build_plan(bad, quiet=True)
    assert not (tmp_path / "out" / "plan.parquet").exists()


def test_bucketed_planning_gives_the_same_units(
    planned: PlanResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large inputs are planned in hash buckets to bound memory; the units are the same."""
    import backfill.plan.units

    monkeypatch.setattr(backfill.plan.units, "BUCKET_ROWS", 500)  # 2,000 rows -> 4 buckets
    result = build_plan(sample_job(tmp_path), quiet=True)
    whole = pl.read_parquet(planned.plan_path).sort("key")
    assert pl.read_parquet(result.plan_path).sort("key").equals(whole)
