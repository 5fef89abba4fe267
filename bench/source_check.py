"""What source's line check costs on a valid extract, next to polars' own read of the same file.

Issue 9 asks that bad bytes, ragged lines and broken quotes be reported per row, while valid
files (the common case) keep a fast path: the whole plan has ~4 s per million rows, and the check
should stay a small fraction of it (under 0.3 s for 1M rows / ~100 MB). Generates (polars,
deterministic) a 1,000,000-row CSV of nine text columns twice, unquoted and with every field
quoted, and times ``source._layout`` (the check; it also validates UTF-8) and polars reading the
file, best of ``--repeat``, wall and CPU::

    python bench/source_check.py                 # 1,000,000 rows, best of 5
    python bench/source_check.py --rows 200000 --repeat 3

Exits 1 if the check reports anything in these valid files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import polars as pl

from backfill.plan.source import _layout


def extract(rows: int) -> pl.DataFrame:
    i = pl.int_range(rows, eager=True)
    return pl.DataFrame(
        {
            "email": "user" + i.cast(pl.String) + "@example.com",
            "phone": "+1 (415) 555-" + (i % 10_000).cast(pl.String).str.zfill(4),
            "first_name": pl.Series(["José", "Anna", "Zoë", "Li"]).gather(i % 4),
            "last_name": "Lastname" + (i % 5_000).cast(pl.String),
            "tier": pl.Series(["gold", "silver", "bronze"]).gather(i % 3),
            "ltv": ((i * 7919) % 100_000 / 100).cast(pl.String),
            "vip": (i % 2 == 0).cast(pl.String),
            "tags": pl.Series(["a;b;c", "x;y", "loyal;newsletter"]).gather(i % 3),
            "updated_at": "2026-0" + (1 + i % 9).cast(pl.String) + "-10T12:00:00Z",
        }
    )


def best(action: Callable[[], object], repeat: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    frame = extract(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        for style in ("necessary", "always"):
            path = Path(tmp) / f"{style}.csv"
            frame.write_csv(path, quote_style=style)
            layout = _layout(path, frame.width, ",")
            if layout.problems:
                print(
                    f"{path.name}: the check reported {len(layout.problems)} rows", file=sys.stderr
                )
                return 1
            check = best(partial(_layout, path, frame.width, ","), args.repeat)
            read = best(pl.scan_csv(path, infer_schema=False).collect, args.repeat)
            size = path.stat().st_size / 1e6
            print(
                f"quotes {style:9s} {args.rows:,} rows {size:.0f} MB:"
                f" check {check[0]:.3f} s wall {check[1]:.3f} s CPU;"
                f" polars read {read[0]:.3f} s wall {read[1]:.3f} s CPU"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
