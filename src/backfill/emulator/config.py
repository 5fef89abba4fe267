"""The emulator's switches: every test-only behaviour is off by default, seeded by random_seed."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from backfill.emulator.limits import (
    RETRY_AFTER_STYLES,
    SHAPES,
    RetryAfterStyle,
    Shape,
    Step,
    check_schedule,
)
from backfill.emulator.segment import DEFAULT_SPACE_ID
from backfill.errors import ConfigError
from backfill.transport.throttle import default_burst

BURST_SHAPES: tuple[Shape, ...] = ("token", "gcra")
WINDOW_SHAPES: tuple[Shape, ...] = ("fixed", "sliding")

TRACKING_SHAPES: tuple[Shape, ...] = ("token", "gcra", "fixed", "sliding")
SPACE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_WRITE_KEY = "emulator-write-key"
DEFAULT_ACCESS_TOKEN = "emulator-access-token"  # noqa: S105 - the local emulator's public token
DEFAULT_ACCOUNT_SID = "AC00000000000000000000000000000000"
DEFAULT_AUTH_SECRET = "emulator"  # noqa: S105 - the documented, public credential of the local emulator


@dataclass(frozen=True)
class EmulatorConfig:
    """How an emulator instance behaves; one object shared by the CLI, tests and the sample job.

    ``max_body_bytes`` stands for the request-size cap of the gateway in front of the real API
    (none is published): a larger ``/v1`` body is answered 413 before auth, rate limit or faults,
    so a client's split of a too-large bulk batch can be tested. The import upload URL stands for
    a storage service with its own limit (an import's ``fileSize``), so the cap leaves it alone.

    The account's limit is one shape (``limiter``; see ``limits``): a rate shape needs ``rate``,
    ``concurrency`` needs ``max_in_flight`` and takes no rate. ``limiter=None`` is the token
    bucket when ``rate`` is set, else no limit - the emulator's behaviour before it had shapes.
    """

    host: str = "127.0.0.1"
    port: int = 0
    username: str = DEFAULT_ACCOUNT_SID
    password: str = DEFAULT_AUTH_SECRET
    rate: float | None = None  # requests/second for the whole account; None = unlimited
    burst: int | None = None  # bucket depth (token, gcra); defaults to max(1, rate / 10)
    limiter: Shape | None = None  # None: "token" with a rate, no limit without
    window_s: float | None = None  # window length (fixed, sliding); defaults to 1 s
    max_in_flight: int | None = None  # the concurrency limiter's N
    retry_after: RetryAfterStyle = "whole"  # how a 429's Retry-After is written
    limit_schedule: tuple[Step, ...] = ()  # (seconds after start, factor of the limit)
    fault_rate: float = 0.0  # share answered 500 or 503, with no state change
    drop_rate: float = 0.0  # share whose connection is closed with no response
    lost_response_rate: float = 0.0  # share of writes applied, then the response lost
    latency_ms: float = 0.0  # added to every request, with +-50% jitter
    write_lag_ms: float = 0.0  # writes become visible to reads only after this delay
    random_seed: int | None = None
    state: Path | None = None  # SQLite file that keeps state across restarts
    seed: Path | None = None  # JSON document of stores, settings, trait groups and profiles
    upload_ttl_s: float = 900.0  # an import's upload URL expires this long after registration
    import_delay_ms: float = 0.0  # an uploaded import stays PROCESSING at least this long
    max_body_bytes: int | None = None  # larger /v1 request bodies are answered 413; None = no cap
    # The Segment Unify space served beside Memory (see segment.py, segment_http.py).
    segment_write_key: str = DEFAULT_WRITE_KEY  # the twilio-unified-profiles source's key
    segment_access_token: str = DEFAULT_ACCESS_TOKEN  # the Profile API's token
    segment_space_id: str = DEFAULT_SPACE_ID
    tracking_rate: float | None = None  # Tracking API events/second; None = unlimited
    tracking_limiter: Shape = "fixed"  # token, gcra, fixed or sliding (windows of 1 s)
    tracking_burst: int | None = None  # token/gcra depth in events; defaults to max(1, rate / 10)
    profile_rate: float | None = None  # Profile API requests/second; None = unlimited
    segment_lag_ms: float = 0.0  # tracked writes become visible to Profile API reads this late

    def __post_init__(self) -> None:
        for name in ("fault_rate", "drop_rate", "lost_response_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be between 0 and 1, got {value}")
        if self.fault_rate + self.drop_rate + self.lost_response_rate > 1.0:
            raise ConfigError("fault-rate + drop-rate + lost-response-rate must not exceed 1")
        for name in ("latency_ms", "write_lag_ms", "import_delay_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must not be negative")
        if self.upload_ttl_s <= 0:
            raise ConfigError(f"upload TTL must be positive, got {self.upload_ttl_s}")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ConfigError(f"max-body-bytes must be at least 1, got {self.max_body_bytes}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if self.burst is not None and (self.burst < 1 or self.rate is None):
            raise ConfigError("burst must be at least 1 and needs --rate")
        self._check_limiter()
        self._check_segment()
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if not self.username or not self.password:
            raise ConfigError("auth must be SID:SECRET with both parts non-empty")

    def _check_limiter(self) -> None:
        shape = self.limiter
        if shape is not None and shape not in SHAPES:
            raise ConfigError(f"limiter must be one of {', '.join(SHAPES)}, got {shape!r}")
        if self.retry_after not in RETRY_AFTER_STYLES:
            raise ConfigError(
                f"retry-after must be one of {', '.join(RETRY_AFTER_STYLES)}, "
                f"got {self.retry_after!r}"
            )
        if shape == "concurrency":
            if self.max_in_flight is None:
                raise ConfigError("limiter concurrency needs --max-in-flight N")
            if self.rate is not None:
                raise ConfigError("limiter concurrency limits requests in flight, not a rate: "
                                  "drop --rate (or choose a rate limiter)")  # fmt: skip
        elif shape is not None and self.rate is None:
            raise ConfigError(f"limiter {shape} needs --rate")
        if self.max_in_flight is not None:
            if shape != "concurrency":
                raise ConfigError("max-in-flight needs --limiter concurrency")
            if isinstance(self.max_in_flight, bool) or self.max_in_flight < 1:
                raise ConfigError(f"max-in-flight must be at least 1, got {self.max_in_flight}")
        if self.burst is not None and self.effective_limiter not in BURST_SHAPES:
            raise ConfigError(f"burst applies to the token and gcra limiters, not {shape}; "
                              "a window's limit is rate x window-s")  # fmt: skip
        if self.window_s is not None:
            if self.effective_limiter not in WINDOW_SHAPES:
                raise ConfigError(f"window-s applies to the fixed and sliding limiters, not "
                                  f"{self.effective_limiter or 'no limiter'}")  # fmt: skip
            if not (math.isfinite(self.window_s) and self.window_s > 0):
                raise ConfigError(f"window-s must be positive, got {self.window_s}")
        if self.effective_limiter in WINDOW_SHAPES and self.rate is not None:
            limit = self.rate * self.effective_window_s
            if limit < 1:
                raise ConfigError(f"rate x window-s is {limit:g}: a window must allow at least "
                                  "one request")  # fmt: skip
        if self.limit_schedule:
            if self.effective_limiter is None:
                raise ConfigError("limit-schedule needs a limit: --rate or --limiter concurrency")
            try:
                check_schedule(self.limit_schedule)
            except ValueError as exc:
                raise ConfigError(f"limit-schedule: {exc}") from None

    def _check_segment(self) -> None:
        for name in ("segment_write_key", "segment_access_token"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or ":" in value:
                raise ConfigError(f"{name.replace('_', '-')} must be a non-empty string "
                                  "without ':'")  # fmt: skip
        if not isinstance(self.segment_space_id, str) or not SPACE_ID.match(self.segment_space_id):
            raise ConfigError(f"space-id must match {SPACE_ID.pattern}, got "
                              f"{self.segment_space_id!r}")  # fmt: skip
        for name in ("tracking_rate", "profile_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name.replace('_', '-')} must be positive, got {value}")
        if self.tracking_limiter not in TRACKING_SHAPES:
            raise ConfigError(f"tracking-limiter must be one of {', '.join(TRACKING_SHAPES)}, "
                              f"got {self.tracking_limiter!r}")  # fmt: skip
        if self.tracking_burst is not None:
            if self.tracking_rate is None or self.tracking_limiter not in BURST_SHAPES:
                raise ConfigError("tracking-burst needs --tracking-rate and a token or gcra "
                                  "--tracking-limiter")  # fmt: skip
            if isinstance(self.tracking_burst, bool) or self.tracking_burst < 1:
                raise ConfigError(f"tracking-burst must be at least 1, got {self.tracking_burst}")
        if (
            self.tracking_rate is not None
            and self.tracking_limiter in WINDOW_SHAPES
            and self.tracking_rate < 1
        ):
            raise ConfigError(f"tracking-rate {self.tracking_rate:g} with a 1 s window must be "
                              "at least 1")  # fmt: skip
        if self.profile_rate is not None and self.profile_rate < 1:
            raise ConfigError(f"profile-rate {self.profile_rate:g} with a 1 s window must be "
                              "at least 1")  # fmt: skip
        if not (math.isfinite(self.segment_lag_ms) and self.segment_lag_ms >= 0):
            raise ConfigError("segment-lag-ms must not be negative")

    @property
    def tracking_capacity(self) -> float:
        """The most events the tracking limiter admits at once: a request that weighs more is
        charged this much, so it is admitted when the limiter is wholly idle (a full bucket, an
        empty window) instead of being refused forever."""
        if self.tracking_rate is None:
            return math.inf
        if self.tracking_limiter in BURST_SHAPES:
            burst = self.tracking_burst
            return float(burst if burst is not None else default_burst(self.tracking_rate))
        return self.tracking_rate * 1.0  # one window of 1 s

    @property
    def effective_limiter(self) -> Shape | None:
        """The shape served: None when the account is unlimited."""
        if self.limiter is not None:
            return self.limiter
        return "token" if self.rate is not None else None

    @property
    def effective_window_s(self) -> float:
        return self.window_s if self.window_s is not None else 1.0

    @property
    def effective_burst(self) -> int:
        if self.rate is None:
            return 0
        return self.burst if self.burst is not None else default_burst(self.rate)


def parse_schedule(text: str) -> tuple[Step, ...]:
    """``"20:0.5,40:1"``: at 20 s after start the limit halves, at 40 s it is whole again."""
    steps: list[Step] = []
    for part in text.split(","):
        at, sep, factor = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            steps.append((float(at), float(factor)))
        except ValueError:
            raise ConfigError(
                f"limit-schedule: expected SECONDS:FACTOR[,SECONDS:FACTOR...], got {part.strip()!r}"
            ) from None
    try:
        return check_schedule(steps)
    except ValueError as exc:
        raise ConfigError(f"limit-schedule: {exc}") from None
