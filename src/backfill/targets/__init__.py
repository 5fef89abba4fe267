"""The ways of writing to a store, one module each, all behind ``deliver.interface.Delivery``."""

from __future__ import annotations

from collections.abc import Callable

from backfill.config import Job
from backfill.deliver.interface import Delivery, Run
from backfill.transport.client import MemoryClient


def delivery_for(job: Job, client: MemoryClient) -> Callable[[Run], Delivery]:
    """The delivery ``[send] mode`` (or ``connection.kind``) names, bound to job and client."""
    if job.connection.segment:
        from backfill.targets.segment import SegmentIdentify

        return lambda run: SegmentIdentify(job, client, run)
    if job.send.mode == "bulk":
        from backfill.targets.memory_bulk import MemoryBulk

        return lambda run: MemoryBulk(job, client, run)
    if job.send.mode == "import":
        from backfill.targets.memory_import import MemoryImport

        return lambda run: MemoryImport(job, client, run)
    from backfill.targets.memory_patch import MemoryPatch

    return lambda run: MemoryPatch(job, client, run)
