"""The ways of writing to a store, one module each, all behind ``deliver.interface.Delivery``."""

from __future__ import annotations

from collections.abc import Callable

from backfill.config import Job
from backfill.deliver.interface import Delivery, Run
from backfill.transport.client import MemoryClient


def delivery_for(job: Job, client: MemoryClient) -> Callable[[Run], Delivery]:
    """The delivery ``[send] mode`` names, bound to the job and client."""
    from backfill.targets.memory_patch import MemoryPatch

    return lambda run: MemoryPatch(job, client, run)
