"""What the emulator does to a request before and after the API sees it: throttle, fail, drop, lag.

Each knob is a typed, seeded switch (the dummy-destination habit): set one to 1.0 in a test to
force its path; with a fixed ``random_seed`` the sequence of decisions repeats.
"""

from __future__ import annotations

import enum
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from backfill.emulator.config import EmulatorConfig
from backfill.emulator.limits import (
    Limiter,
    RetryAfterStyle,
    Scheduled,
    Step,
    TokenBucket,
    Verdict,
    make_limiter,
    render_retry_after,
)


class Fault(enum.Enum):
    """What happens to one request instead of (or after) a normal answer."""

    NONE = "none"
    ERROR_500 = "500"
    ERROR_503 = "503"
    DROP = "drop"  # close the connection, no response, no state change
    LOST_RESPONSE = "lostResponse"  # apply the write, then close the connection


class AccountLimit:
    """The account's limiter (any shape in ``limits``) on the emulator's clock, with its
    schedule and how its 429s write ``Retry-After``: what the gate asks, what stats show.

    The schedule's clock starts with the emulator and again at each ``reset`` (``DELETE
    /__emulator__/stats``), so a benchmark that clears the stats before it starts measuring
    meets the limit changes at the seconds it asked for.
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        clock: Callable[[], float] = time.monotonic,
        schedule: Sequence[Step] = (),
        retry_after: RetryAfterStyle = "whole",
    ) -> None:
        self.clock = clock
        self.limiter = Scheduled(limiter, schedule, start=clock())
        self.retry_after: RetryAfterStyle = retry_after
        # A concurrency limit holds a slot from arrival until the response is sent; a rate
        # limit decides once, after authentication.
        self.holds_slots = limiter.shape == "concurrency"
        self.limiter.reset_counters(clock())

    def admit(self, weight: float = 1.0) -> Verdict:
        """``weight``: what the request counts (the Tracking API's events in a batch)."""
        return self.limiter.admit(self.clock(), weight)

    def release(self) -> None:
        self.limiter.release(self.clock())

    def headers(self, verdict: Verdict) -> dict[str, str]:
        """The 429's headers: ``Retry-After`` rendered here, at the HTTP edge, from the float."""
        value = render_retry_after(verdict.retry_after, self.retry_after)
        return {} if value is None else {"Retry-After": value}

    def take(self) -> int:
        """0 when admitted, else Retry-After in whole seconds (the interface AccountBucket had)."""
        verdict = self.admit()
        if verdict.admitted:
            return 0
        return int(render_retry_after(verdict.retry_after, "whole") or 1)

    def reset(self) -> None:
        """Counters afresh and the schedule from its start; the limiter's state stays."""
        now = self.clock()
        self.limiter.restart(now)
        self.limiter.reset_counters(now)

    def snapshot(self) -> dict[str, Any]:
        view = self.limiter.view(self.clock())
        data: dict[str, Any] = {
            "shape": view.shape,
            "seconds": view.seconds,
            "factor": view.factor,
            "offered": view.offered,
            "used": view.used,
            "refused": view.refused,
            "admitted": view.admitted,
            "refusedRequests": view.refused_requests,
        }
        if view.in_flight is not None:
            data["inFlight"] = view.in_flight
            data["inFlightPeak"] = view.in_flight_peak
        return data


class AccountBucket(AccountLimit):
    """The token bucket the emulator always had: ``rate`` a second, at most ``burst`` saved.

    Kept by name because tests put one on a virtual clock (``faults.bucket = AccountBucket(...,
    clock=...)``) to drive the real emulator in simulated time.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        super().__init__(TokenBucket(rate, burst, start=clock()), clock=clock)


def account_limit(config: EmulatorConfig) -> AccountLimit | None:
    """The limit ``config`` asks for, on the wall clock; None when the account is unlimited."""
    shape = config.effective_limiter
    if shape is None:
        return None
    now = time.monotonic()
    limiter = make_limiter(
        shape,
        rate=config.rate,
        burst=config.effective_burst if shape in ("token", "gcra") else None,
        window_s=config.effective_window_s,
        max_in_flight=config.max_in_flight,
        start=now,
    )
    return AccountLimit(limiter, schedule=config.limit_schedule, retry_after=config.retry_after)


class FaultPlan:
    """Draws, per request, whether it is throttled, faulted, dropped or loses its response."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._rng = random.Random(config.random_seed)
        self._config = config
        self.limit = account_limit(config)
        self.active = bool(
            config.fault_rate or config.drop_rate or config.lost_response_rate or config.latency_ms
        )

    @property
    def bucket(self) -> AccountLimit | None:
        """The account's limit under its old name (tests swap in one on a virtual clock)."""
        return self.limit

    @bucket.setter
    def bucket(self, limit: AccountLimit | None) -> None:
        self.limit = limit

    def latency(self) -> float:
        """Seconds to sleep before answering: latency_ms with +-50% jitter."""
        if not self._config.latency_ms:
            return 0.0
        return self._config.latency_ms / 1000.0 * self._rng.uniform(0.5, 1.5)

    def draw(self, is_write: bool) -> Fault:
        c = self._config
        if not (c.fault_rate or c.drop_rate or c.lost_response_rate):
            return Fault.NONE
        x = self._rng.random()
        if x < c.fault_rate:
            return Fault.ERROR_500 if self._rng.random() < 0.5 else Fault.ERROR_503
        x -= c.fault_rate
        if x < c.drop_rate:
            return Fault.DROP
        x -= c.drop_rate
        if is_write and x < c.lost_response_rate:
            return Fault.LOST_RESPONSE
        return Fault.NONE


class Stats:
    """What the server saw, by operation and status; read at ``GET /__emulator__/stats``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.by_op: dict[str, Counter[str]] = {}
        self.faults: Counter[str] = Counter()
        self.delayed: Counter[str] = Counter()  # requests given added latency, by operation
        self.delay_s = 0.0  # the latency added, in total
        self.rate_limited = 0
        self.total = 0

    def delay(self, op: str, seconds: float) -> None:
        """Count added latency, so a test can see which operations it reached."""
        self.delayed[op] += 1
        self.delay_s += seconds

    def record(self, op: str, status: str) -> None:
        self.total += 1
        counter = self.by_op.get(op)
        if counter is None:
            counter = self.by_op[op] = Counter()
        counter[status] += 1

    def snapshot(self) -> dict[str, Any]:
        by_status: Counter[str] = Counter()
        for counter in self.by_op.values():
            by_status.update(counter)
        return {
            "since": self.started,
            "requests": self.total,
            "byStatus": dict(sorted(by_status.items())),
            "byOperation": {op: dict(sorted(c.items())) for op, c in sorted(self.by_op.items())},
            "rateLimited": self.rate_limited,
            "faults": {f.value: self.faults[f.value] for f in Fault if f is not Fault.NONE},
            "latency": {"seconds": self.delay_s, "byOperation": dict(sorted(self.delayed.items()))},
        }
