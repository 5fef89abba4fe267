"""The emulator's limiter shapes: on a fake time sequence, under hypothesis, and over HTTP.

The limiters take the time as an argument, so most tests here are exact: a list of instants
goes in, the admitted counts and waits come out. The HTTP tests check what the gate does with
them (the 429, its Retry-After rendering, the concurrency slots, the stats), never wall time.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import math
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator.limits import (
    EPS,
    SHAPES,
    Concurrency,
    FixedWindow,
    Gcra,
    Limiter,
    Scheduled,
    SlidingWindow,
    TokenBucket,
    Verdict,
    make_limiter,
    render_retry_after,
)

SEED = Path(__file__).parents[1] / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
A = "mem_profile_01jtest000000000000000000a"
CP = f"/v1/ControlPlane/Stores/{STORE}"
DP = f"/v1/Stores/{STORE}/Profiles"
MS = 0.001


def greedy(limiter: Limiter, instants: Iterable[float], weight: float = 1.0) -> list[int]:
    """At each instant, ask until refused (the most a client could get); admitted per instant."""
    counts = []
    for now in instants:
        n = 0
        while limiter.admit(now, weight).admitted:
            n += 1
        counts.append(n)
    return counts


def ticks(seconds: float, step: float = MS, start: float = 0.0) -> list[float]:
    """Instants ``start, start + step, ...`` below ``start + seconds``, without float drift."""
    return [start + k * step for k in range(round(seconds / step))]


# ------------------------------------------------------------------ exact counts per shape


@pytest.mark.parametrize("cls", [TokenBucket, Gcra])
def test_bucket_shapes_admit_burst_plus_rate_times_time(cls: type[TokenBucket | Gcra]) -> None:
    """A greedy client every ms for 10 s gets floor(B + R*t) by the last instant t = 9.999."""
    limiter = cls(100, 10)
    counts = greedy(limiter, ticks(10))
    assert counts[0] == 10  # the burst, at once
    assert sum(counts) == math.floor(10 + 100 * 9.999) == 1009
    assert max(counts[1:]) == 1  # then paced: never two at one instant


@pytest.mark.parametrize("cls", [TokenBucket, Gcra])
def test_burst_1_admits_only_evenly_paced_requests(cls: type[TokenBucket | Gcra]) -> None:
    """Burst 1: one request per 1/R, however hard the client pushes; gaps are exactly 10 ms."""
    limiter = cls(100, 1)
    instants = ticks(2)
    counts = greedy(limiter, instants)
    admitted_at = [t for t, n in zip(instants, counts, strict=True) if n]
    assert max(counts) == 1
    assert len(admitted_at) == 200
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(admitted_at)}
    assert gaps == {0.01}
    # Two requests 5 ms apart: the second is refused, told to wait the remaining 5 ms.
    fresh = cls(100, 1)
    assert fresh.admit(0.0).admitted
    refused = fresh.admit(0.005)
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(0.005)


def test_fixed_window_lets_two_windows_through_across_a_boundary() -> None:
    """L = R*W per aligned window: 100 at 0.9 s and 100 more at 1.0 s (the shape's flaw)."""
    limiter = FixedWindow(100, 1.0)
    assert greedy(limiter, [0.9, 0.95, 1.0, 1.5, 2.0]) == [100, 0, 100, 0, 100]
    refused = limiter.admit(2.25)
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(0.75)  # to the next window's start
    assert limiter.admit(2.25 + 0.75).admitted


def test_sliding_window_holds_the_limit_in_any_window() -> None:
    """The same client against a sliding log: nothing at 1.0 s, the window frees at 1.9 s."""
    limiter = SlidingWindow(100, 1.0)
    assert greedy(limiter, [0.9, 0.95, 1.0, 1.5]) == [100, 0, 0, 0]
    refused = limiter.admit(1.5)
    assert refused.retry_after == pytest.approx(0.4)
    assert greedy(limiter, [1.9]) == [100]


def test_sliding_window_frees_weight_as_the_oldest_entries_leave() -> None:
    """Entries leave one by one: the wait is until enough of the oldest have gone."""
    limiter = SlidingWindow(4, 1.0)  # L = 4
    for at in (0.0, 0.2, 0.4, 0.6):
        assert limiter.admit(at).admitted
    assert limiter.admit(0.7).retry_after == pytest.approx(0.3)  # the entry of 0.0 leaves at 1.0
    assert limiter.admit(0.7, weight=3).retry_after == pytest.approx(0.7)  # three must leave
    assert not limiter.admit(1.39, weight=3).admitted
    assert limiter.admit(1.4, weight=3).admitted


def test_greedy_totals_over_ten_seconds_per_shape() -> None:
    """Over 10 s every ms at 100/s: each shape's most, by its own rule."""
    seconds = ticks(10)
    assert sum(greedy(TokenBucket(100, 1), seconds)) == 1000
    assert sum(greedy(Gcra(100, 1), seconds)) == 1000
    assert sum(greedy(FixedWindow(100, 1.0), seconds)) == 1000  # 10 windows of 100
    assert sum(greedy(FixedWindow(100, 0.1), seconds)) == 1000  # 100 windows of 10
    assert sum(greedy(SlidingWindow(100, 1.0), seconds)) == 1000
    assert sum(greedy(SlidingWindow(100, 0.1), seconds)) == 1000


# ----------------------------------------------------------------------------- retry_after


@pytest.mark.parametrize(
    ("limiter", "fill", "wait"),
    [
        (TokenBucket(4, 2), 2, 0.25),
        (Gcra(4, 2), 2, 0.25),
        (FixedWindow(4, 1.0), 4, 1.0),
        (SlidingWindow(4, 1.0), 4, 1.0),
    ],
    ids=["token", "gcra", "fixed", "sliding"],
)
def test_a_request_retried_after_its_wait_is_admitted(
    limiter: Limiter, fill: int, wait: float
) -> None:
    """Full at t=0: the wait is exact, a hair earlier is still refused, at the wait it passes."""
    assert greedy(limiter, [0.0]) == [fill]
    verdict = limiter.admit(0.0)
    assert not verdict.admitted
    assert verdict.retry_after == pytest.approx(wait)
    assert verdict.retry_after is not None
    early = copy.deepcopy(limiter)
    assert not early.admit(verdict.retry_after - 1e-4).admitted
    assert limiter.admit(verdict.retry_after).admitted


# ------------------------------------------------------------------------------ concurrency


def test_concurrency_admits_n_in_flight_and_frees_a_slot_on_release() -> None:
    """N in flight; the next is refused with no Retry-After (nobody knows when one ends)."""
    limiter = Concurrency(2)
    assert limiter.admit(0.0).admitted
    assert limiter.admit(0.0).admitted
    assert limiter.admit(0.5) == Verdict(False, None)
    limiter.release(1.0)
    assert limiter.admit(1.0).admitted
    limiter.release(2.0)
    limiter.release(3.0)
    view = limiter.view(4.0)
    # Slot-seconds: 2 busy for 0..1, 2 for 1..2, 1 for 2..3, 0 after; offered 2 x 4 s.
    assert view.used == pytest.approx(5.0)
    assert view.offered == pytest.approx(8.0)
    assert (view.admitted, view.refused_requests) == (3, 1)
    assert (view.in_flight, view.in_flight_peak) == (0, 2)
    with pytest.raises(RuntimeError, match="without a request in flight"):
        limiter.release(5.0)


def test_concurrency_counts_requests_not_weight() -> None:
    """A heavy request takes one slot, as a server counting connections sees it."""
    limiter = Concurrency(1)
    assert limiter.admit(0.0, weight=500).admitted
    assert not limiter.admit(0.0, weight=1).admitted
    assert limiter.view(0.0).refused == 1.0


# ------------------------------------------------------------------------------- schedules


def test_schedule_halves_a_bucket_from_20_to_40_seconds() -> None:
    """'20:0.5,40:1' on 100/s: 2,000 + 1,000 + 2,000 (+ the burst) in 60 s, phase by phase."""
    limiter = Scheduled(TokenBucket(100, 1, start=100.0), [(20, 0.5), (40, 1)], start=100.0)
    counts = greedy(limiter, ticks(60, start=100.0))
    phase = [sum(counts[i * 20_000 : (i + 1) * 20_000]) for i in range(3)]
    assert phase == [2000, 1000, 2000]
    view = limiter.view(160.0)
    assert view.factor == 1.0
    assert view.offered == pytest.approx(1 + 100 * 20 + 50 * 20 + 100 * 20)
    assert view.used == 5000


@pytest.mark.parametrize("shape", ["token", "gcra", "fixed", "sliding"])
def test_schedule_applies_to_every_rate_shape(shape: Any) -> None:
    """Each rate shape admits about half as much while scaled by 0.5 (within one allowance)."""
    limiter = Scheduled(make_limiter(shape, rate=100, burst=1, window_s=0.5), [(5, 0.5), (10, 1)])
    counts = greedy(limiter, ticks(15))
    full, half = sum(counts[:5000]), sum(counts[5000:10_000])
    assert full == pytest.approx(500, abs=50)
    assert half == pytest.approx(250, abs=50)


def test_schedule_shrinks_concurrency_without_evicting_requests() -> None:
    """8 in flight, then the limit halves: nobody is evicted, new ones wait until below 4."""
    limiter = Scheduled(Concurrency(8), [(1, 0.5)])
    assert greedy(limiter, [0.0]) == [8]
    assert greedy(limiter, [1.0]) == [0]
    for _ in range(5):
        limiter.release(1.5)
    assert limiter.view(1.5).in_flight == 3
    assert greedy(limiter, [1.5]) == [1]


def test_restart_runs_the_schedule_again_from_now() -> None:
    """restart() puts the configured limit back and re-arms every step relative to now."""
    limiter = Scheduled(TokenBucket(10, 1), [(1, 0.5)])
    limiter.view(2.0)
    assert limiter.view(2.0).factor == 0.5
    limiter.restart(3.0)
    assert limiter.view(3.5).factor == 1.0
    assert limiter.view(4.0).factor == 0.5


def test_gcra_keeps_its_backlog_in_tokens_when_scaled() -> None:
    """GCRA's backlog is tokens times T: halving the rate doubles the wait, as for a bucket."""
    gcra, bucket = Gcra(10, 1), TokenBucket(10, 1)
    for limiter in (gcra, bucket):
        assert limiter.admit(0.0).admitted
        limiter.scale(0.5, 0.05)  # half a token back by now, at 10/s
        assert limiter.admit(0.05).retry_after == pytest.approx(0.1)  # the other half at 5/s


# --------------------------------------------------------------------------------- weights


def test_weights_take_their_size_from_each_shape() -> None:
    """A batch of w events takes w: tokens, window room, log room; the wait scales with it."""
    bucket = TokenBucket(10, 10)
    assert bucket.admit(0.0, weight=6).admitted
    refused = bucket.admit(0.0, weight=6)
    assert refused.retry_after == pytest.approx(0.2)  # 2 tokens short at 10/s
    assert bucket.admit(0.2, weight=6).admitted
    fixed = FixedWindow(10, 1.0)
    assert greedy(fixed, [0.0], weight=3) == [3]  # 9 of 10
    assert fixed.admit(0.0, weight=1).admitted
    view = fixed.view(0.0)
    assert (view.used, view.refused, view.refused_requests) == (10, 3, 1)


@pytest.mark.parametrize(
    "limiter",
    [TokenBucket(100, 10), Gcra(100, 10), FixedWindow(10, 1.0), SlidingWindow(10, 1.0)],
    ids=["token", "gcra", "fixed", "sliding"],
)
def test_a_weight_no_limit_could_ever_admit_is_an_error(limiter: Limiter) -> None:
    """Weight 11 against a capacity of 10 would be refused forever: say so instead."""
    with pytest.raises(ValueError, match="can ever admit"):
        limiter.admit(0.0, weight=11)


def test_a_weight_over_a_scaled_window_waits_for_the_next_window() -> None:
    """Scaled to half, a window holds 5: weight 6 waits, and passes once the limit is back."""
    limiter = Scheduled(FixedWindow(10, 1.0), [(0, 0.5), (2, 1)])
    refused = limiter.admit(0.5, weight=6)
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(0.5)
    assert not limiter.admit(1.0, weight=6).admitted
    assert limiter.admit(2.0, weight=6).admitted


# -------------------------------------------------------------------- factory and rendering


def test_make_limiter_defaults_and_errors() -> None:
    """Defaults as the emulator's: burst a tenth of the rate (at least 1), a 1 s window."""
    bucket = make_limiter("token", rate=100)
    assert isinstance(bucket, TokenBucket) and bucket.burst == 10
    assert isinstance(make_limiter("gcra", rate=5), Gcra)
    window = make_limiter("sliding", rate=5)
    assert isinstance(window, SlidingWindow) and window.window_s == 1.0
    assert [make_limiter(s, rate=1, max_in_flight=1).shape for s in SHAPES] == list(SHAPES)
    with pytest.raises(ValueError, match="needs a rate"):
        make_limiter("fixed")
    with pytest.raises(ValueError, match="max_in_flight"):
        make_limiter("concurrency", rate=5)
    with pytest.raises(ValueError, match="at least 1"):
        FixedWindow(0.5, 1.0)


@pytest.mark.parametrize(
    ("seconds", "style", "header"),
    [
        (0.004, "whole", "1"),
        (1.0, "whole", "1"),
        (1.0000001, "whole", "1"),  # float noise does not cost a second
        (1.2, "whole", "2"),
        (0.0123, "fraction", "0.013"),  # rounded up: never early
        (0.0, "fraction", "0.001"),
        (2.5, "fraction", "2.500"),
        (1.2, "none", None),
        (None, "whole", None),
    ],
)
def test_retry_after_rendering(seconds: float | None, style: Any, header: str | None) -> None:
    """whole: ceil, at least 1 (Twilio's); fraction: ms, rounded up; none or unknown: absent."""
    assert render_retry_after(seconds, style) == header


# ------------------------------------------------------------------------- property tests


# Arrivals: gaps on a 1 ms grid (bursts are gaps of 0), weights 1-3.
def _arrivals(ops: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """(gap in ms, weight) pairs as (instant, weight), instants from whole milliseconds."""
    at = list(itertools.accumulate(gap for gap, _ in ops))
    return [(ms * MS, float(w)) for ms, (_, w) in zip(at, ops, strict=True)]


ARRIVALS = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 3)), min_size=1, max_size=150).map(
    _arrivals
)
RATES = st.sampled_from([1.0, 7.0, 50.0, 100.0, 333.0])


def admitted(limiter: Limiter, arrivals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(t, w) for t, w in arrivals if limiter.admit(t, w).admitted]


@settings(max_examples=150, deadline=None)
@given(arrivals=ARRIVALS, rate=RATES, burst=st.integers(3, 20), gcra=st.booleans())
def test_bucket_shapes_never_exceed_burst_plus_rate_times_span(
    arrivals: list[tuple[float, float]], rate: float, burst: int, gcra: bool
) -> None:
    """Token bucket and GCRA: admitted weight in any span [a, b] <= B + R*(b - a)."""
    limiter = Gcra(rate, burst) if gcra else TokenBucket(rate, burst)
    got = admitted(limiter, arrivals)
    for i, (a, _) in enumerate(got):
        total = 0.0
        for j in range(i, len(got)):
            total += got[j][1]
            assert total <= burst + rate * (got[j][0] - a) + (j - i + 1) * EPS
    view = limiter.view(arrivals[-1][0])
    assert view.used <= view.offered + len(got) * EPS


@settings(max_examples=150, deadline=None)
@given(arrivals=ARRIVALS, rate=RATES, window_ms=st.sampled_from([10, 100, 250, 1000]))
def test_fixed_window_never_exceeds_its_limit_per_window(
    arrivals: list[tuple[float, float]], rate: float, window_ms: int
) -> None:
    """Fixed: <= L per aligned window, so <= L*(floor(d/W) + 2) in any span of d seconds."""
    window = window_ms * MS
    limit = rate * window
    if limit < 3:  # a weight of 3 must fit a window
        return
    got = admitted(FixedWindow(rate, window), arrivals)
    per_window: dict[int, float] = {}
    for t, w in got:
        key = math.floor(t / window + EPS)
        per_window[key] = per_window.get(key, 0.0) + w
    assert all(total <= limit + EPS for total in per_window.values())
    for i, (a, _) in enumerate(got):
        total = 0.0
        for b, w in got[i:]:
            total += w
            assert total <= limit * (math.floor((b - a) / window) + 2) + EPS


@settings(max_examples=150, deadline=None)
@given(arrivals=ARRIVALS, rate=RATES, window_ms=st.sampled_from([10, 100, 250, 1000]))
def test_sliding_window_never_exceeds_its_limit_in_any_window(
    arrivals: list[tuple[float, float]], rate: float, window_ms: int
) -> None:
    """Sliding log: admitted weight in any [a, a + W) <= L, exactly (so <= L + R*d too)."""
    window = window_ms * MS
    limit = rate * window
    if limit < 3:
        return
    limiter = SlidingWindow(rate, window)
    got = admitted(limiter, arrivals)
    for i, (a, _) in enumerate(got):
        assert sum(w for t, w in got[i:] if t < a + window - EPS) <= limit + EPS
    view = limiter.view(arrivals[-1][0])
    assert view.used <= view.offered + EPS


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(st.sampled_from(["admit", "release"]), max_size=200),
    limit=st.integers(1, 8),
)
def test_concurrency_never_has_more_than_n_in_flight(ops: list[str], limit: int) -> None:
    """Any order of arrivals and endings: at most N in flight, and every free slot is used."""
    limiter = Concurrency(limit)
    in_flight = 0
    for k, op in enumerate(ops):
        if op == "admit":
            verdict = limiter.admit(k * MS)
            assert verdict.admitted == (in_flight < limit)
            in_flight += verdict.admitted
        elif in_flight:
            limiter.release(k * MS)
            in_flight -= 1
        assert limiter.view(k * MS).in_flight == in_flight <= limit


@settings(max_examples=150, deadline=None)
@given(
    arrivals=ARRIVALS,
    rate=RATES,
    burst=st.integers(3, 10),
    factors=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0]), max_size=4),
)
def test_gcra_decides_as_the_token_bucket_under_any_schedule(
    arrivals: list[tuple[float, float]], rate: float, burst: int, factors: list[float]
) -> None:
    """GCRA is a token bucket kept as one timestamp: the same decisions and waits, also while
    the limit changes; and what either admitted never exceeds what it offered."""
    steps = [(0.5 * (i + 1), f) for i, f in enumerate(factors)]
    gcra = Scheduled(Gcra(rate, burst), steps)
    bucket = Scheduled(TokenBucket(rate, burst), steps)
    for t, w in arrivals:
        g, b = gcra.admit(t, w), bucket.admit(t, w)
        assert g.admitted == b.admitted
        if not g.admitted:
            assert g.retry_after == pytest.approx(b.retry_after, rel=1e-6, abs=1e-9)
        view = bucket.view(t)
        assert view.used <= view.offered + EPS * len(arrivals)


@settings(max_examples=150, deadline=None)
@given(
    arrivals=ARRIVALS,
    shape=st.sampled_from(["token", "gcra", "fixed", "sliding"]),
    rate=st.sampled_from([10.0, 50.0, 100.0]),
)
def test_every_refusal_names_the_earliest_moment_that_works(
    arrivals: list[tuple[float, float]], shape: Any, rate: float
) -> None:
    """For each refusal: the same request a hair before retry_after is refused, at it admitted."""
    limiter = make_limiter(shape, rate=rate, burst=3, window_s=0.3)
    for t, w in arrivals:
        before = copy.deepcopy(limiter)
        verdict = limiter.admit(t, w)
        if verdict.admitted:
            continue
        assert verdict.retry_after is not None and verdict.retry_after > 0
        early, on_time = copy.deepcopy(before), copy.deepcopy(before)
        assert not early.admit(t + verdict.retry_after - 1e-4, w).admitted
        assert on_time.admit(t + verdict.retry_after, w).admitted


# ---------------------------------------------------------------------------------- HTTP


def serve(**switches: Any) -> EmulatorServer:
    return EmulatorServer(EmulatorConfig(seed=SEED, **switches))


def limited(emu: EmulatorServer, api: httpx.Client, fill: int) -> httpx.Response:
    """Use up ``fill`` requests of the limit, then return the refusal that follows."""
    for _ in range(fill):
        assert api.get(CP).status_code == 200
    response = api.get(CP)
    assert response.status_code == 429, response.text
    body = response.json()
    assert (body["code"], body["status"]) == (20429, 429)
    return response


HTTP_CASES = {  # switches, requests the limit admits at once, Retry-After pattern (None: absent)
    "token-whole": ({"rate": 0.5, "burst": 1}, 1, r"2"),  # the default: whole seconds
    "gcra-whole": ({"limiter": "gcra", "rate": 0.5, "burst": 2}, 2, r"2"),
    "gcra-fraction": (
        {"limiter": "gcra", "rate": 4, "burst": 1, "retry_after": "fraction"},
        1,
        r"0\.2[0-9][0-9]",
    ),
    "fixed-fraction": (
        {"limiter": "fixed", "rate": 2, "window_s": 60, "retry_after": "fraction"},
        120,
        r"5[0-9]\.[0-9]{3}",  # the rest of the emulator's first minute
    ),
    "sliding-whole": ({"limiter": "sliding", "rate": 1, "window_s": 3}, 3, r"3"),
    "sliding-none": (
        {"limiter": "sliding", "rate": 1, "window_s": 3, "retry_after": "none"},
        3,
        None,
    ),
}


@pytest.mark.parametrize(("switches", "fill", "header"), HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_429_carries_retry_after_as_configured(
    switches: dict[str, Any], fill: int, header: str | None
) -> None:
    """Each shape's 429 is code 20429, its Retry-After whole, fractional or absent."""
    with serve(**switches) as emu, httpx.Client(base_url=emu.url, auth=emu.auth) as api:
        response = limited(emu, api, fill)
        value = response.headers.get("retry-after")
        if header is None:
            assert value is None
            assert response.json()["message"] == "Too many requests."
        else:
            assert value is not None and re.fullmatch(header, value), value
            assert "Retry-After" in response.json()["message"]
        stats = emu.stats()
        shape = switches.get("limiter", "token")
        view = stats["limiter"]
        assert (view["shape"], view["admitted"], view["refusedRequests"]) == (shape, fill, 1)
        assert (view["used"], view["refused"]) == (fill, 1)
        assert view["offered"] >= fill
        assert stats["rateLimited"] == 1
        assert "inFlightPeak" not in view


def test_schedule_over_http_and_delete_restarts_it() -> None:
    """'0:0.5': the limit is halved from the start, so the wait doubles; DELETE re-arms it."""
    with (
        serve(
            limiter="gcra",
            rate=2,
            burst=1,
            retry_after="fraction",
            limit_schedule=((0.0, 0.5), (3600.0, 1.0)),
        ) as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth) as api,
    ):
        wait = float(limited(emu, api, 1).headers["retry-after"])
        assert 0.9 < wait <= 1.0  # 1 s at the halved 1/s, not 0.5 s at 2/s
        assert emu.stats()["limiter"]["factor"] == 0.5
        cleared = httpx.delete(emu.url + "/__emulator__/stats").json()["limiter"]
        assert (cleared["admitted"], cleared["refusedRequests"], cleared["used"]) == (0, 0, 0)
        assert cleared["factor"] == 0.5  # the step at 0 s is due again at once


def test_stats_without_a_limit_say_so() -> None:
    """No --rate, no limiter: ``limiter`` is null, and nothing is ever 429."""
    with serve() as emu, httpx.Client(base_url=emu.url, auth=emu.auth) as api:
        assert all(api.get(CP).status_code == 200 for _ in range(20))
        assert emu.stats()["limiter"] is None


async def _at_once(url: str, auth: tuple[str, str], count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, auth=auth, timeout=30) as api:
        return await asyncio.gather(*(api.get(CP) for _ in range(count)))


def test_concurrency_limit_answers_429_beyond_n_in_flight() -> None:
    """5 at once, N = 2, each held >= 0.5 s by latency: 2 answered 200, 3 are 429 without
    Retry-After; then every slot is free again and the stats tell the peak."""
    with serve(limiter="concurrency", max_in_flight=2, latency_ms=1000, random_seed=1) as emu:
        responses = asyncio.run(_at_once(emu.url, emu.auth, 5))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 429, 429, 429]
        for refused in (r for r in responses if r.status_code == 429):
            assert refused.json() == {
                "code": 20429,
                "message": "Too many concurrent requests.",
                "more_info": "https://www.twilio.com/docs/api/errors/20429",
                "status": 429,
            }
            assert "retry-after" not in refused.headers
        stats = emu.stats()
        # Turned away at the door: only the two admitted ones were given the latency (work).
        assert sum(stats["latency"]["byOperation"].values()) == 2
        view = stats["limiter"]
        assert view["shape"] == "concurrency"
        assert (view["inFlight"], view["inFlightPeak"]) == (0, 2)
        assert (view["admitted"], view["refusedRequests"]) == (2, 3)
        assert view["used"] > 0 and view["offered"] > view["used"]


def _sequential(emu: EmulatorServer, calls: list[Callable[[httpx.Client], Any]]) -> None:
    """With N = 1, each call must leave its slot free: the next one is never a 429."""
    with httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api:
        for call in calls:
            try:
                response = call(api)
            except httpx.TransportError:
                continue  # a dropped or lost response: the slot must still come back
            assert response.status_code != 429, response.text
    view = emu.stats()["limiter"]
    assert (view["inFlight"], view["refusedRequests"]) == (0, 0)


def _patch(api: httpx.Client) -> httpx.Response:
    return api.patch(f"{DP}/{A}", json={"traits": {"Contact": {"firstName": "Ada"}}})


@pytest.mark.parametrize(
    "switches",
    [{"fault_rate": 1.0}, {"drop_rate": 1.0}, {"lost_response_rate": 1.0}, {"max_body_bytes": 10}],
    ids=["500-503", "drop", "lost-response", "413"],
)
def test_concurrency_slot_comes_back_on_every_failure_path(switches: dict[str, Any]) -> None:
    """Faults, drops, lost responses and 413s each end a request: its slot is released."""
    with serve(limiter="concurrency", max_in_flight=1, random_seed=2, **switches) as emu:
        _sequential(emu, [_patch] * 4)


def test_concurrency_slot_comes_back_after_401_404_and_success() -> None:
    """Refused by auth, by the API, or answered: the next request finds the slot free."""
    with serve(limiter="concurrency", max_in_flight=1) as emu:
        _sequential(
            emu,
            [
                lambda api: api.get(CP, auth=("AC00000000000000000000000000000000", "wrong")),
                lambda api: api.get("/v1/ControlPlane/Stores/mem_store_01jzzzz0000000000000000000"),
                _patch,
                lambda api: api.get(CP),
            ],
        )


def test_concurrency_slot_comes_back_when_the_client_gives_up() -> None:
    """A client that times out mid-request: the server ends the request and frees its slot."""
    with serve(limiter="concurrency", max_in_flight=1, latency_ms=600, random_seed=3) as emu:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(emu.url + CP, auth=emu.auth, timeout=0.05)
        for _ in range(200):  # the server finishes its latency (<= 0.9 s) and lets go
            if emu.stats()["limiter"]["inFlight"] == 0:
                break
            time.sleep(0.01)
        assert emu.stats()["limiter"]["inFlight"] == 0
        assert httpx.get(emu.url + CP, auth=emu.auth, timeout=10).status_code == 200


def test_the_upload_url_takes_no_slot() -> None:
    """The import upload URL stands for another service: no slot, so no 429 from it."""
    with serve(limiter="concurrency", max_in_flight=1) as emu:
        response = httpx.put(emu.url + "/__uploads__/nothing", content=b"x")
        assert response.status_code == 404
        view = emu.stats()["limiter"]
        assert (view["admitted"], view["refusedRequests"]) == (0, 0)
