"""Where a job's requests go: the embedded emulator, or the real service with env credentials."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backfill.client import Credentials, MemoryClient, RetryPolicy
from backfill.config import Job
from backfill.throttle import TokenBucket


@dataclass(frozen=True)
class Target:
    base_url: str
    credentials: Credentials
    embedded: bool

    def client(self, job: Job) -> MemoryClient:
        """The run's one client: pool sized to the concurrency, one shared token bucket."""
        send = job.send
        return MemoryClient(
            self.base_url,
            self.credentials,
            concurrency=send.concurrency,
            bucket=TokenBucket(send.rate, send.effective_burst),
            retry=RetryPolicy(max_attempts=send.max_attempts),
            timeout=send.timeout,
        )


@contextmanager
def open_target(job: Job) -> Iterator[Target]:
    """Start the embedded emulator for ``base_url = "emulator"``; else read credentials."""
    if job.connection.embedded:
        from backfill.emulator import EmulatorConfig, EmulatorServer

        with EmulatorServer(EmulatorConfig(seed=job.connection.seed)) as emu:
            yield Target(emu.url, Credentials(*emu.auth), embedded=True)
    else:
        yield Target(job.connection.base_url, Credentials.from_env(), embedded=False)
