"""What the two throttling benchmarks report alike: how figures print (and the issue's targets,
``throttle_sim.meets``, which the tests hold too).

bench/throttle_shapes.py (the fake-clock simulation) and bench/throttle_http.py (the same cells
over HTTP against the emulator) judge a row by the same rule and write recoveries and phases the
same way, so their tables can be read side by side (issue 13).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from throttle_sim import (  # tests/ is not a package: the path goes first
    Figures,
    Phase,
    meets,
)

__all__ = ["meets", "phases_text", "recovery_text", "target_text"]


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
