"""``[send] mode = "bulk"``: ``PUT /v1/Stores/{storeId}/Profiles/Bulk``, up to 1,000 profiles a
request, each keyed by the identifiers it carries and resolved by the store.

A unit is one profile body (``{"traits": ...}``, as the plan writes it for every mode); a batch
joins them into ``{"profiles": [...]}`` without parsing them again. The store validates the
whole batch before it applies any of it, so a 400 (or a 413: too large) fails all of it: the
batch is bisected, each half sent on its own, until the profiles the store refuses are alone
and reported one by one with the store's message, while every other profile lands.

A bulk write is an upsert that merges, so re-sending a batch whose answer was lost (the
client's retries, or a resumed run re-sending the batches in flight at a crash) is harmless:
the store finds the profiles the first attempt made by the identifiers they carry.

A 202 says the store accepted the batch, not what each profile now holds: the outcome is
``upserted``, and ``run`` reads some back afterwards (``[send] verify``, ``verify.landing``) to
prove the landing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import quote

from backfill.checkpoint import Result, Unit
from backfill.config import Job
from backfill.deliver.interface import Batch, Limits, Run
from backfill.plan.units import job_chunks
from backfill.targets.bisect import Bisector
from backfill.transport.client import MemoryClient, Reply

UPSERTED: Final = "upserted"
MAX_PROFILES: Final = 1_000  # Memory API: profiles of one bulk request, 1..1000
# Bodies of one request, at most (the JSON envelope adds 15 bytes and a comma a profile). No
# limit is published. Measured (BENCHMARKS.md, "Delivery modes"): 1,000 profiles of seven traits
# make a 143 KiB body, which the emulator applies in 80-120 ms; 4 MiB binds only for profiles
# over ~4 KiB each (wide jobs, long strings), keeps a request well under the 10 MiB that API
# gateways commonly cap bodies at, and a 413 from a stricter server splits the batch anyway.
MAX_BODY_BYTES: Final = 4 * 1024 * 1024


def bulk_path(store_id: str) -> str:
    return f"/v1/Stores/{quote(store_id, safe='')}/Profiles/Bulk"


def bulk_body(units: Sequence[Unit]) -> bytes:
    """``{"profiles": [...]}`` from the units' bodies, joined as they are."""
    return b'{"profiles":[' + ",".join(unit.body for unit in units).encode() + b"]}"


class MemoryBulk:
    """The bulk delivery (see the module docstring)."""

    def __init__(self, job: Job, client: MemoryClient, run: Run) -> None:
        # A person is one unit unless the job's traits need several requests (chunks): then
        # their units must not be in two batches in flight at once.
        one_chunk = len(job_chunks(job)) == 1
        self.limits = Limits(MAX_PROFILES, MAX_BODY_BYTES, per_target=not one_chunk)
        self.client = client
        self.path = bulk_path(job.connection.store_id)
        self.batches = 0  # batches sent in this session
        self.bisector = Bisector(self._post, UPSERTED, "the store refused this profile",
                                 "the bulk request")  # fmt: skip

    async def start(self) -> None:
        pass

    async def send(self, batch: Batch) -> list[Result]:
        self.batches += 1
        return await self.bisector.send(batch.units)

    def summary(self) -> dict[str, Any]:
        return {"mode": "bulk", "batches": self.batches, "split_requests": self.bisector.splits}

    async def _post(self, units: Sequence[Unit]) -> Reply:
        return await self.client.request("PUT", self.path, content=bulk_body(units))
