"""The edges a user meets before the data: errors as one line with the right exit code, output
folders that appear only when a job passes its checks, resume by meaning, dry runs that never
touch a run's files, empty extracts, and reports that count rows by outcome."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import polars as pl
import pytest

from backfill import pipeline
from backfill.checkpoint import RunDB
from backfill.cli import main
from backfill.errors import StorageError
from backfill.transport.client import CREDENTIAL_VARIABLES

SEED = Path(__file__).parent / "data" / "emulator_seed.json"
A = "mem_profile_01jtest000000000000000000a"  # ada@example.com in the seed
ROWS = [
    {"email": "ada@example.com", "tier": "gold", "points": "12"},
    {"email": "nobody@example.com", "tier": "silver", "points": "3"},
    {"email": "ADA@example.com ", "tier": "", "points": "many"},  # a bad cell: lands in part
]


def write_job(
    tmp_path: Path,
    source: Path,
    *,
    traits: str = 'tier = "tier"\npoints = { column = "points", type = "NUMBER" }',
    connection: str = f'base_url = "emulator"\nseed = "{SEED}"',
    extra: str = "",
    out: Path | None = None,
) -> Path:
    text = f"""# a job for the edges
name = "edges"
[connection]
store_id = "mem_store_01jtest0000000000000000000"
{connection}
[source]
paths = ["{source}"]
[identity]
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[traits.Loyalty]
{traits}
[send]
rate = 5000
{extra}
[output]
dir = "{out or tmp_path / "out"}"
"""
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, str]] = ROWS) -> Path:
    pl.DataFrame(rows, schema=dict.fromkeys(("email", "tier", "points"), pl.String)).write_csv(path)
    return path


# ------------------------------------------------------------------------ errors, one line


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug is reported as one line naming the command and exception, exit 1; --debug raises."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(pipeline, "plan", broken)
    assert main(["plan", "job.toml"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "backfill: internal error in plan: RuntimeError: boom; run with --debug for the traceback\n"
    )
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "plan", "job.toml"])


def test_a_task_group_failure_reports_the_error_behind_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent work fails as an ExceptionGroup; the user sees the StorageError inside it."""

    def broken(*args: object, **kwargs: object) -> None:
        group = ExceptionGroup("workers", [StorageError("cannot use out/run.sqlite: disk full")])
        raise group

    monkeypatch.setattr(pipeline, "plan", broken)
    assert main(["plan", "job.toml"]) == 1
    assert capsys.readouterr().err == "backfill: error: cannot use out/run.sqlite: disk full\n"


def test_ctrl_c_while_planning_exits_130_with_a_word(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    assert main(["run", "job.toml"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_names_its_file(tmp_path: Path) -> None:
    """SQLite errors become StorageError naming the file (read-only stands in for a full disk;
    chmod cannot make a file read-only for root)."""
    path = tmp_path / "run.sqlite"
    with RunDB(path) as db:
        db._db.execute("PRAGMA query_only=1")
        with pytest.raises(StorageError, match=f"cannot use {path}: attempt to write a readonly"):
            db.set_meta(x=1)


def test_a_checkpoint_failing_during_delivery_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint thread's failure stops the run with one line naming run.sqlite, exit 1."""
    job = write_job(tmp_path, write_csv(tmp_path / "x.csv"))
    original = RunDB.record

    def record(self: RunDB, *args: object) -> None:
        self._db.execute("PRAGMA query_only=1")
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(RunDB, "record", record)
    assert main(["run", str(job), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("backfill: error: cannot use ")
    assert "run.sqlite" in err and "readonly" in err


# --------------------------------------------------------------- output folders and checks


@pytest.mark.parametrize("command", ["run", "plan", "reconcile"])
def test_a_job_failing_its_checks_leaves_no_output_folder(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mapped column the extract lacks: exit 2 naming it, and no out/ folder for status."""
    job = write_job(tmp_path, write_csv(tmp_path / "x.csv"), traits='tier = "no_such_column"')
    assert main([command, str(job)]) == 2
    assert "no_such_column" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["status", str(job)]) == 2
    assert "has not been run yet" in capsys.readouterr().err


def test_missing_credentials_exit_2_and_leave_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials for the real service: exit 2 (not 3, which means refused), no folder,
    and no request was sent (the URL is unroutable by design)."""
    for name in (v for pair in CREDENTIAL_VARIABLES for v in pair):
        monkeypatch.delenv(name, raising=False)
    job = write_job(
        tmp_path,
        write_csv(tmp_path / "x.csv"),
        connection='base_url = "https://memory.invalid"',
    )
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "TWILIO_API_KEY" in err
    assert not (tmp_path / "out").exists()


def test_an_existing_output_folder_keeps_its_mode(tmp_path: Path) -> None:
    """dir may be a shared folder: only folders the tool creates are made owner-only; the
    files holding customer data are owner-only either way."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)  # noqa: S103 - a shared folder is the case under test
    job = write_job(tmp_path, write_csv(tmp_path / "x.csv"), out=shared / "edges")
    assert main(["run", str(job), "--quiet"]) == 1
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "edges").stat().st_mode) == 0o700
    for name in ("errors.csv", "summary.json", "report.md", "rejects.csv", "run.sqlite"):
        assert stat.S_IMODE((shared / "edges" / name).stat().st_mode) == 0o600, name


def test_plan_never_writes_over_a_runs_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run between a run and its retry leaves the run's files as they were."""
    job = write_job(tmp_path, write_csv(tmp_path / "x.csv"))
    assert main(["run", str(job), "--quiet"]) == 1
    out = tmp_path / "out"
    names = ("rejects.csv", "plan.json", "plan.parquet", "rows.parquet", "errors.csv")
    before = {name: (out / name).read_bytes() for name in names}
    write_csv(tmp_path / "x.csv", ROWS[:1])  # the extract moves on; the dry run sees it
    assert main(["plan", str(job), "--quiet"]) == 0
    assert f"Wrote {out / 'plan' / 'plan.parquet'}" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in names} == before
    assert json.loads((out / "plan" / "plan.json").read_text())["rows"] == 1


# ------------------------------------------------------------------------ resume by meaning


def test_resume_accepts_send_changes_and_comments_and_names_a_changed_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = write_csv(tmp_path / "x.csv")
    job = write_job(tmp_path, csv)
    assert main(["run", str(job), "--quiet"]) == 1
    capsys.readouterr()
    text = job.read_text()
    job.write_text("# edited\n" + text.replace("rate = 5000", "rate = 10\nconcurrency = 2"))
    assert main(["run", str(job), "--quiet"]) == 1  # the same run, with nothing left to send
    assert capsys.readouterr().out.startswith("Nothing to send")

    job.write_text(text.replace('tier = "tier"', 'tier = "email"'))
    assert main(["run", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "traits.Loyalty.tier.column changed ('tier' -> 'email')" in err
    assert "--restart" in err

    job.write_text(text)
    csv.write_text(csv.read_text() + "bob@example.com,gold,1\n")
    assert main(["run", str(job), "--quiet"]) == 2
    assert f"input {csv} changed (size" in capsys.readouterr().err
    assert main(["run", str(job), "--quiet", "--restart"]) == 1


# ---------------------------------------------------------------------------- empty input


@pytest.mark.parametrize("kind", ["header-only csv", "0-row parquet"])
def test_an_empty_extract_plans_nothing_and_exits_0(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A quiet night: 0 rows read, 0 units, reports that say so, exit 0 for every command."""
    if kind == "header-only csv":
        source = write_csv(tmp_path / "x.csv", [])
    else:
        source = tmp_path / "x.parquet"
        pl.DataFrame(
            schema={"email": pl.String, "tier": pl.String, "points": pl.Int64}
        ).write_parquet(source)
    job = write_job(tmp_path, source)
    assert main(["plan", str(job), "--quiet"]) == 0
    assert main(["run", str(job), "--quiet"]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"]["read"] == summary["units"]["total"] == 0
    assert summary["requests"]["sent"] == 0
    assert "The extract had no rows" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["reconcile", str(job), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith(f"backfill: {job}: exit 0; ")


# -------------------------------------------------------------------------------- reports


def test_rows_are_counted_by_outcome_and_quiet_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ada's two rows land (one without its bad cell); nobody@ does not resolve."""
    job = write_job(tmp_path, write_csv(tmp_path / "x.csv"))
    assert main(["run", str(job), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"backfill: {job}: exit 1; 3 rows: 1 landed, 1 landed in part, ")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows"] == {
        "read": 3,
        "landed": 1,
        "landed_in_part": 1,
        "not_landed": 1,
        "not_sent_yet": 0,
        "lines": {"invalid_row": 1, "unresolved": 1},
    }
    report = (tmp_path / "out" / "report.md").read_text()
    assert "1 source rows did not land" in report
    assert "| landed in part (a cell rejected, the rest sent) | 1 |" in report


def test_files_that_would_map_to_different_types_are_refused_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ARRAY trait fed a list of numbers by Parquet and text by a CSV cannot be planned as
    one column without changing values: refused at job check, naming the trait and both files."""
    text = write_csv(tmp_path / "a.csv")
    typed = tmp_path / "b.parquet"
    pl.DataFrame(
        {"email": ["ada@example.com"], "tier": ["gold"], "points": [[1, 2]]},
        schema={"email": pl.String, "tier": pl.String, "points": pl.List(pl.Int64)},
    ).write_parquet(typed)
    job = write_job(tmp_path, text, traits='tags = { column = "points", type = "ARRAY" }')
    job.write_text(job.read_text().replace(f'paths = ["{text}"]', f'paths = ["{text}", "{typed}"]'))
    assert main(["plan", str(job)]) == 2
    err = capsys.readouterr().err
    assert "traits.Loyalty.tags (column 'points') is fed List(String) by" in err
    assert str(typed) in err
    assert not (tmp_path / "out").exists()
