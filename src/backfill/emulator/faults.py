"""What the emulator does to a request before and after the API sees it: throttle, fail, drop, lag.

Each knob is a typed, seeded switch (the dummy-destination habit): set one to 1.0 in a test to
force its path; with a fixed ``random_seed`` the sequence of decisions repeats.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from backfill.emulator.config import EmulatorConfig


class Fault(enum.Enum):
    """What happens to one request instead of (or after) a normal answer."""

    NONE = "none"
    ERROR_500 = "500"
    ERROR_503 = "503"
    DROP = "drop"  # close the connection, no response, no state change
    LOST_RESPONSE = "lostResponse"  # apply the write, then close the connection


class AccountBucket:
    """Token bucket for the whole account: ``rate`` tokens a second, at most ``burst`` saved."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> int:
        """0 when a token was taken, else the whole seconds to wait (Retry-After, at least 1)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self._tokens) / self._rate))


class FaultPlan:
    """Draws, per request, whether it is throttled, faulted, dropped or loses its response."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._rng = random.Random(config.random_seed)
        self._config = config
        self.bucket = (
            AccountBucket(config.rate, config.effective_burst) if config.rate is not None else None
        )
        self.active = bool(
            config.fault_rate or config.drop_rate or config.lost_response_rate or config.latency_ms
        )

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
