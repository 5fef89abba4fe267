"""Issue 13's throttling targets, on virtual time, for every server limiter shape.

The real client (tests/throttle_sim.py) runs 60 simulated seconds against a limit of 100
requests/s (8 in flight for the concurrency limiter). Targets: the job's rate 10x too high
(adaptive) -> at least 90 % of the limit accepted and at most 2 % 429s; the job's rate at the
limit -> at least 95 % and at most 1 %; the limit halved for 20 s and restored -> back above
90 % of it within 10 s of each change.

Each miss is a strict xfail saying why (bench/throttle_shapes.py prints every figure), so a
change that meets the target turns it into a failure until the mark is removed.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from backfill.emulator.limits import RetryAfterStyle
from throttle_sim import (
    LIMITS,
    SCENARIOS,
    TARGETS,
    Scenario,
    SimResult,
    meets,
    paced_bound,
    scenario_config,
    simulate,
)

# (shape, Retry-After style, scenario) -> what the controller measured (seed 1). Only the burst-1
# token bucket misses, and no client can do better under this network: arrivals jittered by up to
# 3.5 ms against a 10 ms spacing come closer than the bucket allows unless paced near 77 % of it
# (a bound from the arrival model alone, BENCHMARKS.md). The controller settles near there.
MISSES: dict[tuple[str, RetryAfterStyle, Scenario], str] = {
    (shape, style, scenario): "under the network's jitter no client holds a burst-1 limit"
    for shape in ("token-b1",)
    for style in ("whole", "fraction", "none")
    for scenario in SCENARIOS
}


def _case(shape: str, style: RetryAfterStyle, scenario: Scenario) -> object:
    reason = MISSES.get((shape, style, scenario))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(shape, style, scenario, marks=marks, id=f"{shape}-{style}-{scenario}")


# Every shape and scenario with Twilio's whole-second Retry-After; a fractional and an absent one
# where the client must find the rate itself (10x, halved) for every rate shape. The
# concurrency limiter sends none whatever the style.
CASES = [_case(shape, "whole", scenario) for shape in LIMITS for scenario in SCENARIOS] + [
    _case(shape, style, scenario)
    for style in ("fraction", "none")
    for shape, limit in LIMITS.items()
    if limit.shape != "concurrency"
    for scenario in ("10x", "halved")
]


def check(result: SimResult, scenario: Scenario) -> None:
    """The issue's target for ``scenario``, with the figures in the failure message."""
    figures = (
        f"{result.share:.1%} of the limit, {result.share_429:.2%} 429s, recovery {result.recovery}"
    )
    if scenario == "halved":
        assert len(result.recovery) == 2, figures
    assert meets(result, scenario), figures


@pytest.mark.parametrize(("shape", "style", "scenario"), CASES)
def test_target(shape: str, style: RetryAfterStyle, scenario: Scenario) -> None:
    """60 virtual seconds of the real client against one limiter shape meet the issue's target."""
    check(simulate(scenario_config(shape, scenario, retry_after=style)), scenario)


@pytest.mark.parametrize("scenario", ["10x", "at-limit"])
def test_burst_1_is_held_close_to_what_perfect_pacing_could_get(scenario: Scenario) -> None:
    """The burst-1 bucket's target is out of any client's reach under this network (the
    xfails above); the client still gets at least 85 % of what perfectly even sends could have
    had admitted within the scenario's 429 budget, and stays within that budget."""
    budget = TARGETS[scenario][1]
    config = scenario_config("token-b1", scenario)
    result = simulate(config)
    bound = paced_bound(config, budget)
    assert 0.70 < bound < 0.80  # what the arrival model leaves of the limit
    assert result.share >= 0.85 * bound, (result.share, bound)
    assert result.share_429 <= budget


def test_the_client_never_exceeds_a_limit_it_is_configured_under() -> None:
    """Configured below every limit, nothing is refused: the harness's 429s are the client's
    doing, not the simulation's."""
    for shape in LIMITS:
        config = scenario_config(shape, "at-limit", seconds=10.0)
        config = replace(config, send=replace(config.send, rate=50.0, concurrency=4))
        result = simulate(config)
        assert result.throttled == 0, shape
        assert result.per_second == pytest.approx(50.0, rel=0.05), shape


def test_harness_counts_agree_with_the_limiter_view() -> None:
    """What the harness counts is what the limiter admitted and refused over the run."""
    for shape in ("token-b1", "sliding-1s", "concurrency-8"):
        result = simulate(scenario_config(shape, "10x", seconds=10.0))
        assert result.throttled > 0, shape
        assert result.accepted == result.view.admitted, shape
        assert result.throttled == result.view.refused_requests, shape
        assert result.view.seconds == pytest.approx(10.0)


def test_simulation_is_deterministic() -> None:
    """Virtual time and seeded randomness: the same run gives the same figures."""
    config = scenario_config("sliding-1s", "halved", seconds=45.0)
    assert simulate(config) == simulate(config)


def test_direct_wire_matches_httpx_mock_transport() -> None:
    """Skipping httpx (the harness's default, for speed) changes no figure: the client's retry
    loop, bucket and controller see the same answers at the same virtual times."""
    config = scenario_config("token-b1", "10x", seconds=10.0)
    direct = simulate(config)
    through_httpx = simulate(replace(config, wire="httpx"))
    assert direct.throttled > 0
    assert (direct.accepted, direct.throttled, direct.cuts) == (
        through_httpx.accepted,
        through_httpx.throttled,
        through_httpx.cuts,
    )
