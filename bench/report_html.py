"""How long ``report.html`` takes to write, and how big it gets, for a run of 1M units (issue 12).

The worst case a run can give it: every one of ``--units`` (1,000,000) units failed, so
errors.csv holds a line each (one row a unit), with messages of ``--reasons`` (40) kinds each
carrying its own values (as real ones do: a cell's value, a profile ID); and a timeline of
``--hours`` (10) hours of answers, one entry a second. ``write_run_html`` is timed ``--repeat``
(3) times; the median and the file's size are printed against the targets (<= 2 s, < 2 MB).

::

    python bench/report_html.py                 # ~1 min, most of it writing the input
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from backfill.report_html import write_run_html


def errors_csv(path: Path, units: int, reasons: int) -> None:
    i = pl.int_range(0, units)
    frame = pl.select(
        pl.lit("extract.csv").alias("file"),
        (i + 2).alias("row"),
        pl.format("email=person{}@example.com", i).alias("identifiers"),
        pl.format("mem_profile_01j{}", i.cast(pl.String).str.zfill(23)).alias("profile_id"),
        pl.when(i % 3 == 0)
        .then(pl.lit("invalid_row"))
        .otherwise(pl.lit("failed"))
        .alias("outcome"),
        pl.lit("400").alias("status"),
        pl.lit("20001").alias("code"),
        pl.format("trait{}: 'value {}' is not a NUMBER", i % reasons, i).alias("message"),
        pl.lit(1).alias("attempts"),
    )
    frame.write_csv(path)


def summary(units: int, hours: float) -> dict[str, object]:
    seconds = int(hours * 3600)
    return {
        "job": "bench.toml", "mode": "patch", "exit_code": 1, "seconds": float(seconds),
        "rows": {"read": units, "landed": 0, "landed_in_part": 0, "not_landed": units,
                 "not_sent_yet": 0, "lines": {"failed": units}},
        "units": {"total": units, "failed": units},
        "requests": {"sent": units, "retries": 0, "throttled": 0},
        "rate": {"configured": 50.0, "final": 50.0, "achieved": units / seconds},
        "timeline": [{"started_at": 1.7e9, "second": list(range(seconds)),
                      "accepted": [27] * seconds, "throttled": [0] * seconds,
                      "retries": [1] * seconds, "errors": [0] * seconds,
                      "rate": [50.0] * seconds}],
        "files": {"errors": "errors.csv"},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--reasons", type=int, default=40)
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        errors = folder / "errors.csv"
        errors_csv(errors, args.units, args.reasons)
        data = summary(args.units, args.hours)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            write_run_html(data, errors, folder / "report.html")
            times.append(time.perf_counter() - started)
        size = (folder / "report.html").stat().st_size
        csv_mb = errors.stat().st_size / 1e6
    median = statistics.median(times)
    print(f"units {args.units:,} (errors.csv {csv_mb:.0f} MB, {args.reasons} reasons), "
          f"timeline {args.hours:g} h")  # fmt: skip
    print(f"write_run_html: {', '.join(f'{t:.2f}' for t in times)} s; median {median:.2f} s "
          f"(target <= 2 s: {'met' if median <= 2 else 'NOT met'})")  # fmt: skip
    print(f"report.html: {size / 1e6:.2f} MB (target < 2 MB: {'met' if size < 2e6 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
