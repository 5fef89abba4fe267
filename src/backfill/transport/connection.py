"""Where a job's requests go: the embedded emulator, or the real service with env credentials."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backfill.config import Job
from backfill.files import EMULATOR_STATE
from backfill.transport.client import Credentials, MemoryClient, RetryPolicy
from backfill.transport.throttle import AdaptiveRate, TokenBucket


@dataclass(frozen=True)
class Target:
    base_url: str
    credentials: Credentials
    embedded: bool

    def client(self, job: Job) -> MemoryClient:
        """A client as the job says: pool sized to the concurrency, one token bucket for all
        its requests (lookups and writes alike), adaptive unless ``send.adaptive = false``."""
        send = job.send
        bucket = TokenBucket(send.rate, send.effective_burst)
        return MemoryClient(
            self.base_url,
            self.credentials,
            concurrency=send.concurrency,
            bucket=bucket,
            adaptive=AdaptiveRate(bucket, ceiling=send.rate) if send.adaptive else None,
            retry=RetryPolicy(max_attempts=send.max_attempts),
            timeout=send.timeout,
        )


@contextmanager
def open_target(job: Job) -> Iterator[Target]:
    """Start the embedded emulator for ``base_url = "emulator"``; else read credentials.

    The embedded emulator keeps its state in the output folder, so a resumed run continues
    against the profiles the interrupted one wrote (``--restart`` starts it from the seed).
    """
    if job.connection.embedded:
        from backfill.emulator import EmulatorConfig, EmulatorServer

        state = job.output_dir / EMULATOR_STATE
        with EmulatorServer(EmulatorConfig(seed=job.connection.seed, state=state)) as emu:
            yield Target(emu.url, Credentials(*emu.auth), embedded=True)
    else:
        yield Target(job.connection.base_url, Credentials.from_env(), embedded=False)
