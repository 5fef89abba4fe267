"""``--json``: every command prints exactly one JSON document on stdout, its result or its
error, with the document's version; nothing else goes to stdout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backfill.cli import JSON_VERSION, main

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "jobs" / "sample_segment.toml"


def copy_job(tmp_path: Path, source: Path = SAMPLE) -> Path:
    """The sample job with its output folder under ``tmp_path`` and absolute input paths."""
    text = source.read_text()
    text = re.sub(r'"(sample_data/[^"]+)"', lambda m: f'"{ROOT / m.group(1)}"', text)
    text += f'\n[output]\ndir = "{tmp_path / "out"}"\n'
    job = tmp_path / "job.toml"
    job.write_text(text)
    return job


def document(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, f"stdout holds more than one document: {out[:500]!r}"
    doc: dict[str, Any] = json.loads(lines[0])
    if doc["result"] is None:
        assert err.startswith("backfill: error: "), err  # a person's line still goes to stderr
    assert doc["backfill_json"] == JSON_VERSION
    assert doc["command"] == argv[0] and doc["exit_code"] == code
    return code, doc


def test_every_job_command_prints_one_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = copy_job(tmp_path)
    code, planned = document(capsys, "plan", str(job), "--offline")
    assert code == 0
    assert planned["result"]["rows"] == 2000 and planned["result"]["mode"] == "identify"
    assert planned["result"]["files"]["plan"].endswith("plan.parquet")

    code, ran = document(capsys, "run", str(job))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert code == 1 and ran["result"] == summary  # the same content as summary.json

    code, status = document(capsys, "status", str(job))
    assert code == 0 and status["result"]["state"] == "finished"
    assert status["result"]["units"]["upserted"] == summary["units"]["upserted"]

    code, retried = document(capsys, "retry", str(job))
    assert retried["result"]["exit_code"] == code == 1

    code, schema = document(capsys, "schema", str(job))
    assert code == 0 and schema["result"]["ready"] is True and schema["result"]["applied"] is None
    assert schema["result"]["diff"]["create"] == {}

    code, rec = document(capsys, "reconcile", str(job))
    assert rec["result"]["store"] == "Segment"
    assert rec["result"]["profiles"]["differing"] == 0
    assert code == rec["result"]["exit_code"]


def test_the_memory_schema_diff_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = copy_job(tmp_path, ROOT / "jobs" / "sample_backfill.toml")
    code, schema = document(capsys, "schema", str(job))
    diff = schema["result"]["diff"]
    assert code == (0 if schema["result"]["ready"] else 1)
    assert set(diff) == {"create", "add", "conflicts", "promotions", "extra", "kept"}


def test_an_error_is_a_document_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[connection]\nkind = "segment"\n')
    code, doc = document(capsys, "run", str(bad))
    assert code == 2 and doc["result"] is None
    assert "connection.space_id: is required" in doc["error"]


def test_the_emulator_says_where_it_listens(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "backfill", "emulator", "--port", "0", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert doc["command"] == "emulator" and doc["exit_code"] == 0
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", doc["result"]["url"])
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()
