"""What the two throttling benchmarks report alike: the issue's targets and how figures print.

bench/throttle_shapes.py (the fake-clock simulation) and bench/throttle_http.py (the same cells
over HTTP against the emulator) judge a row by the same rule and write recoveries and phases the
same way, so their tables can be read side by side (issue 13).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from throttle_sim import Phase, Scenario  # tests/ is not a package: the path goes first


class Figures(Protocol):
    """What a run reports that its target is judged on (``SimResult``, and the HTTP run's)."""

    @property
    def share(self) -> float: ...  # accepted as a share of the limit

    @property
    def share_429(self) -> float: ...  # share of the answers that were 429s

    @property
    def recovery(self) -> tuple[float | None, ...]: ...  # seconds, per limit change

    @property
    def worst_recovery(self) -> float | None: ...


def meets(result: Figures, scenario: Scenario) -> bool:
    """The issue's target for the scenario."""
    if scenario == "10x":
        return result.share >= 0.90 and result.share_429 <= 0.02
    if scenario == "at-limit":
        return result.share >= 0.95 and result.share_429 <= 0.01
    worst = result.worst_recovery
    return worst is not None and worst <= 10.0


def recovery_text(result: Figures) -> str:
    """``"3.9 / never"``: seconds to recover after each limit change; empty without changes."""
    if not result.recovery:
        return ""
    return " / ".join("never" if r is None else f"{r:.1f}" for r in result.recovery)


def phases_text(phases: Sequence[Phase]) -> str:
    """Each phase's accepted rate as a whole percentage of its limit: ``"89 / 79 / 49"``."""
    return " / ".join(f"{p.share * 100:.0f}" for p in phases)


def target_text(ok: bool) -> str:
    return "ok" if ok else "**miss**"
