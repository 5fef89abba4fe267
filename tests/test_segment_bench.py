"""bench/segment_delivery.py on tiny sizes, so that it cannot rot unnoticed.

The benchmark's figures are not a test (they are in BENCHMARKS.md). This holds only that every
part of it runs end to end against real emulators: the official client's worker and ``backfill
run`` each deliver the same 200 people (the emulator applies exactly 200, no duplicate), the
emulator's ceiling is measured, and ``backfill run`` delivers 300 people under a tracking limit
of 1,000 events/s; and that the tables come out well formed. The ``fixed`` limiter only: the
``token`` one can stall a run (see BENCHMARKS.md, issue 11's section).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "segment_delivery.py"


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.strip() for cell in line[1:-1].split("|")]


def _table(lines: list[str], header: str) -> list[dict[str, str]]:
    """The rows of the table whose header line starts with ``header``, by column name."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = _cells(lines[start])
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        cells = _cells(line)
        assert len(cells) == len(names), line
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def _number(cell: str) -> float:
    return float(cell.strip("*").split()[0].replace(",", "").rstrip("%"))


def test_both_scenarios_run_and_print_their_tables() -> None:
    argv = ["--people", "200", "--limited-people", "300", "--limiters", "fixed", "--repeat", "1"]
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()

    compare = _table(lines, "| repeat | client |")
    assert [row["client"] for row in compare] == ["official", "backfill"]
    for row in compare:
        assert row["applied / duplicates"] == "200 / 0", row
        assert _number(row["**profiles/s**"]) > 0
        assert _number(row["batches (200)"]) >= 1
    official = compare[0]
    assert official["events/batch"] == "100"  # the official client's default upload_size

    ceilings = _table(lines, "| events a batch (at most) |")
    assert [(row["events a batch (at most)"], row["concurrency"]) for row in ceilings] == [
        ("100", "1"),
        ("2,500", "8"),
    ]
    assert all(_number(row["**events/s**"]) > 0 for row in ceilings)
    assert any("backfill / official = **" in line for line in lines), done.stdout

    limited = _table(lines, "| repeat | limiter |")
    assert len(limited) == 1
    row = limited[0]
    assert row["limiter"] == "fixed"
    assert row["applied / duplicates"] == "300 / 0", row
    assert _number(row["**accepted events/s (delivery)**"]) > 0
    assert row["**429 share**"].strip("*").endswith("%")
    assert row["throttle"].startswith("concurrency 8->"), row
    assert row["target"] in ("met", "NOT met")
