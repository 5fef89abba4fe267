"""Where a job's requests go: the embedded emulator, or the real service with env credentials."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Final

import httpx

from backfill.config import Job, Send
from backfill.errors import ConfigError, CredentialsMissing
from backfill.files import EMULATOR_STATE
from backfill.transport.client import Credentials, MemoryClient, RetryPolicy
from backfill.transport.throttle import AdaptiveRate, Clock, TokenBucket, Window


@dataclass(frozen=True)
class Target:
    base_url: str
    credentials: Credentials
    embedded: bool
    # Segment: the Profile API, which reads what the Tracking API (``base_url``) wrote.
    profiles_url: str = ""
    reader_credentials: Credentials | None = None

    def client(self, job: Job) -> MemoryClient:
        """A client as the job's ``[send]`` says (``client_for``)."""
        return client_for(job.send, self.base_url, self.credentials)

    def reader(self, job: Job) -> MemoryClient:
        """Segment: a Profile API client with its own bucket (``connection.profiles_rate``, the
        space's 100 requests/s by default): reads never spend the Tracking API's budget, nor
        it theirs."""
        if self.reader_credentials is None:
            raise ConfigError(f"{job.path}: a Memory job reads through its own client")
        rate = job.connection.profiles_rate
        send = replace(job.send, rate=rate, burst=None, concurrency=min(job.send.concurrency, 8))
        return client_for(send, self.profiles_url, self.reader_credentials)


WRITE_KEY: Final = "SEGMENT_WRITE_KEY"
ACCESS_TOKEN: Final = "SEGMENT_ACCESS_TOKEN"  # noqa: S105 - a variable's name, not a token


def segment_credentials(variable: str, env: Mapping[str, str] | None = None) -> Credentials:
    """A Segment key from the environment (never from the job file): the write key of the
    space's ``twilio-unified-profiles`` source, or a Profile API access token."""
    source: Mapping[str, str] = os.environ if env is None else env
    value = source.get(variable, "").strip()
    if variable == WRITE_KEY:
        api, what = (
            "the Segment Tracking API",
            "the write key of the space's twilio-unified-profiles source",
        )
    else:
        api, what = (
            "the Segment Profile API",
            "a Profile API access token (Unify settings > API access)",
        )
    if not value:
        raise CredentialsMissing(f"{variable} is not set: export {what} as {variable}")
    return Credentials(value, "", api=api, check=f"check {variable} ({what})")


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
    connection = job.connection
    if connection.embedded:
        from backfill.emulator import EmulatorConfig, EmulatorServer

        state = job.output_dir / EMULATOR_STATE
        config = EmulatorConfig(seed=connection.seed, state=state)
        if connection.segment:  # the emulator's space takes the job's ID
            config = replace(config, segment_space_id=connection.space_id)
        with EmulatorServer(config) as emu:
            if not connection.segment:
                yield Target(emu.url, Credentials(*emu.auth), embedded=True)
                return
            write = Credentials(emu.config.segment_write_key, "", api="the Segment Tracking API")
            read = Credentials(emu.config.segment_access_token, "", api="the Segment Profile API")
            yield Target(emu.url, write, True, emu.url, read)
    elif connection.segment:
        write, read = segment_credentials(WRITE_KEY), segment_credentials(ACCESS_TOKEN)
        yield Target(connection.base_url, write, False, connection.profiles_url, read)
    else:
        yield Target(connection.base_url, Credentials.from_env(), embedded=False)
