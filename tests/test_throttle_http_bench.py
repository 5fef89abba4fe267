"""bench/throttle_http.py's launcher, run for 3 s so that it cannot rot unnoticed.

The benchmark's 60 s runs are not a test (their figures are in BENCHMARKS.md). This holds only
that one cell starts a real emulator with its shape's switches, drives it over HTTP through a
``client_for`` client and prints a well-formed row whose counts come from the emulator's own
limiter. The concurrency limiter is the cell chosen: its limit is derived from the service time
the emulator reports, the longest path through the script.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import throttle_http  # bench/ is not a package: the path goes first

NUMERIC = (
    "limit /s",
    "HTTP accepted %",
    "HTTP 429 %",
    "used/offered",
    "client 429 %",
    "final rate /s",
    "sim accepted %",
    "sim 429 %",
)


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.strip() for cell in line[1:-1].split("|")]


def test_one_cell_is_driven_over_http_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seconds", "3", "--shapes", "concurrency-8", "--scenarios", "at-limit"]
    code = throttle_http.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    header = _cells(next(line for line in lines if line.startswith("| shape |")))
    rows = [line for line in lines if line.startswith("| concurrency-8 |")]
    assert len(rows) == 1, out
    cells = _cells(rows[0])
    assert len(cells) == len(header), rows[0]
    row = dict(zip(header, cells, strict=True))

    assert (row["Retry-After"], row["scenario"]) == ("none (never sent)", "at-limit")
    for name in NUMERIC:
        assert float(row[name]) >= 0, name
    assert float(row["limit /s"]) > 0
    counts = re.fullmatch(r"([\d,]+) \(([\d,]+)\)", row["admitted (client 202)"])
    assert counts is not None, row
    admitted, answered = (int(c.replace(",", "")) for c in counts.groups())
    assert admitted > 0 and answered > 0  # the limiter admitted them; the client saw 202s
    assert float(row["HTTP accepted %"]) > 0
    assert row["HTTP recovery s"] == row["sim recovery s"] == ""  # no limit change in at-limit
    assert row["HTTP target"] in ("ok", "**miss**")
    assert row["sim target"] in ("ok", "**miss**")
    assert re.search(r"concurrency-8 at-limit: held \d+\.\d ms a request", out), out
