"""Peak memory of ``backfill plan`` on a 5,000,000-row Parquet file.

Generates a deterministic Parquet file (default 5,000,000 rows in row groups of 100,000, the same
columns and shape as bench/plan_throughput.py: a ``mem_profile_`` ID on every row, about two rows
per profile, ``updated_at`` out of order), writes a job for it and runs
``python -m backfill plan JOB --offline --quiet`` as a subprocess ``--repeat`` times. For each
run it reports the child's peak RSS (``ru_maxrss`` from ``os.wait4`` on that one child: the
kernel's high-water mark of its resident set, in KiB), when the sampled RSS peaked, the wall
time (process start to exit) and rows/s. Every run is checked: plan.json must say ``rows`` = N
and ``requests`` = the distinct profiles (N/2), else the script exits 1. The target from the
issue is a peak under 1 GiB (1,048,576 KiB), reported, not enforced::

    python bench/plan_memory.py                          # 5,000,000 rows, 3 runs
    python bench/plan_memory.py --compare 3649098        # also the code before, runs alternated
    python bench/plan_memory.py --rows 1000000 --repeat 1 --workdir /tmp/pm   # keep the data

``--rev REV`` measures revision REV instead of this checkout's ``src/``; ``--compare REV`` runs a
temporary ``git worktree`` of REV alternately with it (after, before, ...). A ``--compare`` run
that crashes, outgrows ``--rss-limit-mib`` (default: half the machine's memory) or ``--timeout``
is reported as such, not fatal. Exits 1 if a run of the code
under test fails or any run's counts are wrong, 2 if the benchmark could not run. Results:
BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

from plan_throughput import KIB, BenchError, bench, exit_code, num, parser, ratio, summarize

TARGET_KIB: Final = 1024 * KIB  # 1 GiB


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(__doc__.split("\n", 1)[0] if __doc__ else "", 5_000_000).parse_args(argv)
    try:
        data, runs = bench(args, "parquet")
    except BenchError as exc:
        print(f"plan_memory: {exc}", file=sys.stderr)
        return 2
    stats = summarize(data, runs)
    print(
        f"\nover successful runs ({data.rows:,} Parquet rows, {data.profiles:,} profiles, "
        f"{data.size / KIB / KIB:,.1f} MiB file):"
    )
    for label, s in stats.items():
        print(
            f"  {label:<6} {s['ok']:.0f}/{s['runs']:.0f} ok  peak RSS median {num(s['peak_mib'])} "
            f"MiB, max {num(s['max_peak_mib'])} MiB;  wall {num(s['wall'], '.2f')} s = "
            f"{num(s['wall_rate'])} rows/s end to end;  plan {num(s['seconds'], '.2f')} s = "
            f"{num(s['rate'])} rows/s in the library;  CPU {num(s['cpu'], '.1f')} s"
        )
    for run in runs:
        if run.variant.label == "before" and not run.ok:
            print(f"  before #{run.index} did not plan: {run.detail}")
    if "before" in stats:
        a, b = stats["after"], stats["before"]
        print(
            f"  after/before: peak RSS {ratio(a['peak_mib'], b['peak_mib'])}, "
            f"end-to-end rows/s {ratio(a['wall_rate'], b['wall_rate'])}, "
            f"library rows/s {ratio(a['rate'], b['rate'])}"
        )
    worst = stats["after"]["max_peak_mib"]
    verdict = "no successful run" if worst is None else "met"
    verdict = "MISSED" if worst is not None and worst * KIB >= TARGET_KIB else verdict
    print(
        f"target peak RSS < {TARGET_KIB:,} KiB (1 GiB): {verdict} (worst run "
        f"{num(worst * KIB if worst is not None else None)} KiB = {num(worst)} MiB)"
    )
    return exit_code(runs)


if __name__ == "__main__":
    sys.exit(main())
