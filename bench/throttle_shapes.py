"""How the client holds every server limiter shape: the fake-clock simulation's table (issue 13).

The real ``MemoryClient`` (token bucket and ``AdaptiveRate`` as ``backfill run`` builds them)
against the emulator's limiters on virtual time (tests/throttle_sim.py): 60 simulated seconds
per run at a limit of 100 requests/s (8 in flight for the concurrency limiter), 16 workers. For
each shape, ``Retry-After`` style and scenario it prints accepted/s as a share of the limit,
the share of answers that were 429s, the seconds after each limit change until the client is
back above 90 % of the new limit, the limiter's own utilisation (its ``used / offered``), the
controller's events, and its whole-run holds with the seconds they held everyone in all (what
honouring Retry-After cost the run beyond the requests that got it)::

    python bench/throttle_shapes.py                     # every shape, style and scenario
    python bench/throttle_shapes.py --styles whole --seconds 60 --seed 1

``ok`` marks a row that meets the issue's target for its scenario (10x: >= 90 %, <= 2 % 429s;
at-limit: >= 95 %, <= 1 % 429s; halved: both recoveries <= 10 s). The concurrency limiter sends
no ``Retry-After`` whatever the style, so it is run once. After the table, for each rate shape:
the share of the limit that perfectly even sends could have had admitted under the simulated
network with at most 1 % (2 %) refused (``throttle_sim.paced_bound``), a bound for any client.
Results: BENCHMARKS.md, "Throttling: every limiter shape". Deterministic: the same seed prints the
same table on any machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from throttle_common import meets, recovery_text

from backfill.emulator.limits import RETRY_AFTER_STYLES, RetryAfterStyle
from throttle_sim import (  # tests/ is not a package: the path goes first
    LIMITS,
    SCENARIOS,
    paced_bound,
    scenario_config,
    simulate,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shapes", default=",".join(LIMITS), help="comma-separated")
    parser.add_argument("--styles", default=",".join(RETRY_AFTER_STYLES), help="comma-separated")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    styles: list[RetryAfterStyle] = []
    for style in args.styles.split(","):
        if style not in RETRY_AFTER_STYLES:
            parser.error(f"unknown style {style!r}; expected one of {RETRY_AFTER_STYLES}")
        styles.append(style)
    for shape in shapes:
        if shape not in LIMITS:
            parser.error(f"unknown shape {shape!r}; expected one of {', '.join(LIMITS)}")

    print(
        "| shape | Retry-After | scenario | accepted % of limit | 429 share | "
        "recovery s (halved / restored) | phases % | limiter used/offered | cuts | "
        "whole-run holds (s) | target |"
    )
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    started = time.perf_counter()
    met = total = 0
    for shape in shapes:
        for style in styles if LIMITS[shape].shape != "concurrency" else styles[:1]:
            shown = "none (never sent)" if LIMITS[shape].shape == "concurrency" else style
            for scenario in SCENARIOS:
                config = scenario_config(
                    shape, scenario, retry_after=style, seconds=args.seconds, seed=args.seed
                )
                result = simulate(config)
                ok = meets(result, scenario)
                met += ok
                total += 1
                phases = " / ".join(f"{p.share * 100:.0f}" for p in result.phases)
                view = result.view
                print(
                    f"| {shape} | {shown} | {scenario} | {result.share * 100:.1f} | "
                    f"{result.share_429 * 100:.2f} % | {recovery_text(result)} | {phases} | "
                    f"{view.used / view.offered:.3f} | {result.cuts} | "
                    f"{result.holds} ({result.held:.1f}) | {'ok' if ok else '**miss**'} |",
                    flush=True,
                )
    elapsed = time.perf_counter() - started
    print(f"\n{met} of {total} rows meet their target; {elapsed:.1f} s of real time.")
    print("\nWhat perfectly even sends could get under this network (the arrivals' jitter):")
    for shape in shapes:
        if LIMITS[shape].shape == "concurrency":
            continue
        config = scenario_config(shape, "at-limit", seconds=args.seconds, seed=args.seed)
        print(
            f"  {shape}: {paced_bound(config, 0.01) * 100:.1f} % of the limit with <= 1 % "
            f"refused, {paced_bound(config, 0.02) * 100:.1f} % with <= 2 %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
