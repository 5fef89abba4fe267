"""Delivering the plan: ``send.concurrency`` workers over one client, outcomes checkpointed.

``MemoryPatch`` is the delivery (``deliver.interface``) the send loop drives: one request per
unit, to the profile the plan resolved. Per response, following the Studio widget's transitions
(profileUpdated, profileNotFound, failed):

- 2xx: ``updated`` (``created`` for a new profile, whose ID is kept);
- 308: the profile was merged; the same PATCH goes once to the ``Canonical-Profile-Id``
  (Twilio's published ``Location`` example is malformed), and the remap is recorded. It goes
  without the traits for which another unit bound for that profile (its own, or another merged
  one's that landed) holds a later row, so "the latest row wins" whatever the sending order;
- 404: ``profile_not_found``; 400 and anything else final: ``failed`` with the Twilio code and
  message; 429/500/503 and network errors were already retried by the client up to
  ``send.max_attempts``, so what comes back is final too;
- 401/403: ``AuthError`` from the client stops the whole run at once.

Stopping (``stop`` set, e.g. by Ctrl-C) drains: no new unit is claimed, in-flight ones finish.

One request is in flight per profile (the loop's ``Locks``, taken in plan order, before the claim;
a 308's re-send also takes the canonical profile's), so the comparison above sees every unit that
landed.

Creates happen once. The client never re-sends a POST whose outcome is unknown (no answer, a
500), and a create unit claimed before (a killed run) may have landed: either way Lookup is
asked by the identifier the create is keyed on (``new:<idType> <value>``) first; a profile found
is PATCHed (outcome ``created``: this run made it), none found is POSTed. Later chunks of the
same person PATCH the profile the first one made.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from backfill.checkpoint import DONE, FAILED, Result, Unit
from backfill.config import Job
from backfill.deliver.interface import Batch, Checkpoint, Limits, Locks, Run
from backfill.plan.mapping import PROFILE_ID_PATTERN
from backfill.plan.resolve import NEW
from backfill.plan.units import OrderKey, unit_orders
from backfill.transport.client import MemoryClient, Reply, encode_json

UPDATED = "updated"
CREATED = "created"
PROFILE_NOT_FOUND = "profile_not_found"
FAILED_OUTCOME = "failed"
PROFILE_ID = re.compile(PROFILE_ID_PATTERN)  # the one pattern the plan checks IDs by


Keys = dict[int, OrderKey]


class Known:
    """What delivery has learned so far, shared by the workers of one event loop: the profile
    each create made (``new:`` target -> ID) and, per canonical profile, the order keys of the
    units a 308 sent there that landed. Loaded from the checkpoint, so a resume decides the same.
    """

    def __init__(self, db: Checkpoint | None = None, locks: Locks | None = None) -> None:
        self.locks = locks if locks is not None else Locks()
        self.created: dict[str, str] = {}
        self.landed: dict[str, list[Keys]] = {}
        self.db = db

    async def load(self) -> None:
        if self.db is not None:
            self.created = await self.db.call(self.db.db.created)
            remaps = await self.db.call(self.db.db.landed_remaps)
            self.landed = {p: [unit_orders(o) for o in orders] for p, orders in remaps.items()}

    async def planned(self, profile_id: str) -> list[Keys]:
        """The order keys of the units planned for ``profile_id`` itself."""
        if self.db is None:
            return []
        orders = await self.db.call(self.db.db.planned_orders, profile_id)
        return [unit_orders(o) for o in orders]


def profile_path(store_id: str, profile_id: str) -> str:
    return f"/v1/Stores/{quote(store_id, safe='')}/Profiles/{quote(profile_id, safe='')}"


def _result(unit: Unit, reply: Reply, outcome_ok: str, sent_to: str | None, tries: int) -> Result:
    status = reply.status
    if status is not None and 200 <= status < 300:
        return Result(unit.seq, DONE, outcome_ok, status, None, None, tries, sent_to)
    outcome = PROFILE_NOT_FOUND if status == 404 else FAILED_OUTCOME
    return Result(unit.seq, FAILED, outcome, status, reply.code, reply.message, tries, sent_to)


def without_older(job: Job, body: str, mine: Keys, others: list[Keys]) -> str | None:
    """``body`` without the traits for which one of ``others`` holds a later row than ``mine``
    (None when nothing is left to send); ``body`` itself when nothing is dropped."""
    drop = [j for j, key in mine.items() if any(key < other.get(j, key) for other in others)]
    if not drop:
        return body
    data = json.loads(body)
    traits: dict[str, dict[str, Any]] = data["traits"]
    for j in drop:
        mapping = job.traits[j]
        group = traits.get(mapping.group, {})
        group.pop(mapping.trait, None)
        if not group:
            traits.pop(mapping.group, None)
    return encode_json(data).decode() if traits else None


async def _patch(
    job: Job, client: MemoryClient, unit: Unit, profile_id: str, known: Known | None
) -> Result:
    """PATCH ``profile_id`` with the unit's body, following one merge redirect (see the module
    docstring); the redirected send holds the canonical profile's lock."""
    store = job.connection.store_id
    body = unit.body
    landed = known.landed.get(profile_id) if known is not None else None
    if landed:  # units merged into this profile landed here: keep their later rows
        trimmed = without_older(job, body, unit_orders(unit.orders), landed)
        if trimmed is None:
            message = "every trait has a later row in a merged profile's unit"
            return Result(unit.seq, DONE, UPDATED, None, None, message, 0, None)
        body = trimmed
    reply = await client.request("PATCH", profile_path(store, profile_id), content=body.encode())
    if reply.status != 308:
        return _result(unit, reply, UPDATED, None, reply.attempts)
    canonical = reply.headers.get("canonical-profile-id", "")
    if not PROFILE_ID.match(canonical):
        message = "308 without a usable Canonical-Profile-Id header"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message, reply.attempts, None)
    if known is None or canonical == profile_id:
        return await _remap(job, client, unit, profile_id, canonical, reply, known)
    await known.locks.acquire(canonical)
    try:
        return await _remap(job, client, unit, profile_id, canonical, reply, known)
    finally:
        known.locks.release(canonical)


async def _remap(
    job: Job,
    client: MemoryClient,
    unit: Unit,
    profile_id: str,
    canonical: str,
    moved: Reply,
    known: Known | None,
) -> Result:
    """The re-send of a 308 to ``canonical``, with the canonical profile's lock held."""
    body: str | None = unit.body
    mine = unit_orders(unit.orders)
    if known is not None and mine:
        others = [*await known.planned(canonical), *known.landed.get(canonical, [])]
        body = without_older(job, unit.body, mine, others)
    if body is None:
        message = f"every trait has a later row in {canonical}'s own units"
        return Result(unit.seq, DONE, UPDATED, 308, None, message, moved.attempts, canonical)
    again = await client.request("PATCH", profile_path(job.connection.store_id, canonical),
                                 content=body.encode())  # fmt: skip
    tries = moved.attempts + again.attempts
    if again.status == 308:
        message = f"{canonical} (the merge target of {profile_id}) moved again"
        return Result(unit.seq, FAILED, FAILED_OUTCOME, 308, None, message, tries, canonical)
    if again.ok and known is not None and mine:
        known.landed.setdefault(canonical, []).append(mine)
    return _result(unit, again, UPDATED, canonical, tries)


async def _create(job: Job, client: MemoryClient, unit: Unit, known: Known | None) -> Result:
    """Create the person once (see the module docstring)."""
    target = unit.target
    made = known.created.get(target) if known is not None else None
    if made is not None:  # an earlier chunk created them: this one is a PATCH of that profile
        result = await _patch(job, client, unit, made, None)
        return result._replace(sent_to=result.sent_to or made)
    store = job.connection.store_id
    id_type, _, value = target.removeprefix(NEW).partition(" ")
    found: list[str] = []

    async def landed_before() -> Reply | None:
        """Ask Lookup whether an earlier attempt created them: if so, PATCH that profile."""
        asked = await client.lookup(store, id_type, value)
        profiles = asked.body.get("profiles") if isinstance(asked.body, dict) else None
        if not asked.ok or not isinstance(profiles, list):
            detail = asked.message or f"HTTP {asked.status}"
            message = f"cannot tell whether an earlier attempt created {target}: {detail}"
            return replace(asked, status=asked.status if not asked.ok else None, message=message)
        if not profiles:
            return None
        patched = await _patch(job, client, unit, str(profiles[0]), None)
        found.append(patched.sent_to or str(profiles[0]))  # the canonical one after a 308
        return Reply(patched.status, None, {}, patched.attempts, patched.code, patched.message, 0)

    reply = await landed_before() if unit.claims > 0 else None
    if reply is None:
        path = f"/v1/Stores/{quote(store, safe='')}/Profiles"
        reply = await client.request("POST", path, content=unit.body.encode(),
                                     unknown=landed_before)  # fmt: skip
    if found:
        sent_to: str | None = found[0]
    else:
        sent_to = reply.body.get("id") if isinstance(reply.body, dict) else None
    result = _result(unit, reply, CREATED, sent_to, reply.attempts)
    if result.state == DONE and sent_to is not None and known is not None:
        known.created[target] = sent_to
    return result


async def send_unit(
    job: Job, client: MemoryClient, unit: Unit, known: Known | None = None
) -> Result:
    """Send one unit and classify the answer (following one merge redirect). ``known`` is the
    delivery's shared knowledge (creates, landed remaps, locks); without it each unit stands
    alone."""
    if unit.action == "create":
        return await _create(job, client, unit, known)
    assert unit.profile_id is not None
    return await _patch(job, client, unit, unit.profile_id, known)


class MemoryPatch:
    """``[send] mode = "patch"``: one PATCH (or create) per unit, to a profile resolved while
    planning; per-unit outcomes straight from the answers."""

    limits = Limits(units=1)

    def __init__(self, job: Job, client: MemoryClient, run: Run) -> None:
        self.job = job
        self.client = client
        self.known = Known(run.checkpoint, run.locks)

    async def start(self) -> None:
        await self.known.load()

    async def send(self, batch: Batch) -> list[Result]:
        return [await send_unit(self.job, self.client, unit, self.known) for unit in batch.units]

    def summary(self) -> dict[str, Any]:
        return {"mode": "patch"}
