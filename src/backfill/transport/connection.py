"""Where a job's requests go: the embedded emulator, or the real service with env credentials."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from backfill.config import Job, Send
from backfill.files import EMULATOR_STATE
from backfill.transport.client import Credentials, MemoryClient, RetryPolicy
from backfill.transport.throttle import AdaptiveRate, Clock, TokenBucket, Window


@dataclass(frozen=True)
class Target:
    base_url: str
    credentials: Credentials
    embedded: bool

    def client(self, job: Job) -> MemoryClient:
        """A client as the job's ``[send]`` says (``client_for``)."""
        return client_for(job.send, self.base_url, self.credentials)


def client_for(
    send: Send,
    base_url: str,
    credentials: Credentials,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
) -> MemoryClient:
    """The one way a client is built from ``[send]``: pool sized to the concurrency, one token
    bucket for all its requests (lookups and writes alike), adaptive unless
    ``send.adaptive = false``. Benchmarks and the throttle simulation build theirs here too
    (with their clock and transport), so what they measure is what ``backfill run`` sends."""
    bucket = TokenBucket(send.rate, send.effective_burst, clock=clock)
    window = Window(send.concurrency)
    adaptive = AdaptiveRate(bucket, ceiling=send.rate, window=window, steer=send.adaptive)
    return MemoryClient(
        base_url,
        credentials,
        concurrency=send.concurrency,
        bucket=bucket,
        adaptive=adaptive,
        retry=RetryPolicy(max_attempts=send.max_attempts),
        timeout=send.timeout,
        transport=transport,
        clock=clock,
        rng=rng,
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
