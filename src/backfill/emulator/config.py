"""The emulator's switches: every test-only behaviour is off by default, seeded by random_seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backfill.errors import ConfigError
from backfill.transport.throttle import default_burst

DEFAULT_ACCOUNT_SID = "AC00000000000000000000000000000000"
DEFAULT_AUTH_SECRET = "emulator"  # noqa: S105 - the documented, public credential of the local emulator


@dataclass(frozen=True)
class EmulatorConfig:
    """How an emulator instance behaves; one object shared by the CLI, tests and the sample job.

    ``max_body_bytes`` stands for the request-size cap of the gateway in front of the real API
    (none is published): a larger ``/v1`` body is answered 413 before auth, rate limit or faults,
    so a client's split of a too-large bulk batch can be tested. The import upload URL stands for
    a storage service with its own limit (an import's ``fileSize``), so the cap leaves it alone.
    """

    host: str = "127.0.0.1"
    port: int = 0
    username: str = DEFAULT_ACCOUNT_SID
    password: str = DEFAULT_AUTH_SECRET
    rate: float | None = None  # requests/second for the whole account; None = unlimited
    burst: int | None = None  # bucket depth; defaults to max(1, rate / 10)
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
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if not self.username or not self.password:
            raise ConfigError("auth must be SID:SECRET with both parts non-empty")

    @property
    def effective_burst(self) -> int:
        if self.rate is None:
            return 0
        return self.burst if self.burst is not None else default_burst(self.rate)
