"""The command line as a whole: every command and switch is documented, errors map to exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from backfill import __version__
from backfill.cli import build_parser, main

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_command_and_switch_is_in_readme() -> None:
    """README is the manual: each command and each of its switches appears in it."""
    for name, sub in _subcommands().items():
        assert f"backfill {name}" in README, name
        assert sub.description, f"{name} has no description for --help"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in README, f"{name} {option} is not documented"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"backfill {__version__}"


def test_bad_seed_is_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken seed stops the emulator before it listens, with exit 2 and the file named."""
    seed = tmp_path / "seed.json"
    seed.write_text("{not json", encoding="utf-8")
    assert main(["emulator", "--port", "0", "--seed", str(seed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("backfill: error: seed file ")
    assert str(seed) in err


@pytest.mark.parametrize("settle", ["nan", "-1", "inf", "soon"])
def test_reconcile_settle_must_be_seconds(settle: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --settle is a usage error (exit 2) before the job file is even read."""
    with pytest.raises(SystemExit) as done:
        main(["reconcile", "no-such-job.toml", "--settle", settle])
    assert done.value.code == 2
    assert "--settle" in capsys.readouterr().err


def test_each_job_command_names_a_missing_job_file(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that reads a job fails with exit 2 naming the file it could not read."""
    for command in ("run", "plan", "schema", "reconcile", "retry", "status"):
        assert main([command, "no-such-job.toml"]) == 2, command
        assert "no-such-job.toml" in capsys.readouterr().err, command
