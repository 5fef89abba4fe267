"""The store's trait groups against what a job writes: diff, apply, and the check before a run.

The Memory API refuses a profile write that names an undefined trait group or trait (a 400 for
every row), so ``check`` stops a run before its first row instead, and ``apply`` defines what is
missing. Writes to a trait group carry ``If-Match``: a 412 (someone changed the group since we
read it) makes us read it again and diff again, so a trait defined meanwhile, possibly with
another dataType, is never overwritten. Nothing is deleted unless ``prune`` asks, and then only
traits of the job's own groups that the job does not map and that promote no identifier;
groups are never deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote

import anyio

from backfill.config import Job, load_job
from backfill.errors import ConfigError, SchemaError, SchemaMismatch, reported
from backfill.transport.throttle import Clock, SystemClock

if TYPE_CHECKING:
    from backfill.transport.client import MemoryClient, Reply

TraitDefinition = dict[str, Any]  # the API's TraitDefinition JSON: {"dataType": ..., ...}
Action = Literal["create", "add", "delete"]

MAX_TRAITS_PER_PATCH: Final = 95  # "PATCH /{name} ... (<= 95 traits a request)"
MAX_RACES: Final = 5  # 412/409 answers met before apply gives up
MAX_WRITES_PER_GROUP: Final = 8  # a create, or deletions + additions, is 1 to 3 in practice
OPERATION_TIMEOUT: Final = 300.0  # seconds to wait for one control-plane Operation
POLL_FLOOR, POLL_CAP = 0.5, 5.0  # backoff between polls when Retry-After says nothing useful
EXIT_READY, EXIT_NOT_READY = 0, 1
DELETE: Final[TraitDefinition] = {"dataType": ""}  # a PATCH's deletion marker


def required(job: Job) -> dict[str, dict[str, TraitDefinition]]:
    """Group -> trait -> the definition the job's writes need: its dataType, and the identifier's
    idTypePromotion when the trait's column is an identifier column (so that writing the trait
    also attaches the identifier, as identity resolution expects)."""
    promotes: dict[str, str] = {}
    for identifier in job.identity.identifiers:
        promotes.setdefault(identifier.column, identifier.id_type)
    out: dict[str, dict[str, TraitDefinition]] = {}
    for mapping in job.traits:
        definition: TraitDefinition = {"dataType": mapping.type}
        if mapping.column in promotes:
            definition["idTypePromotion"] = promotes[mapping.column]
        out.setdefault(mapping.group, {})[mapping.trait] = definition
    return out


@dataclass(frozen=True)
class Conflict:
    """A trait the store defines with another dataType than the job writes: never changed here."""

    group: str
    trait: str
    store_type: str
    job_type: str


@dataclass(frozen=True)
class Promotion:
    """A trait with the right dataType but not the idTypePromotion the job's identifier needs;
    reported only, since changing how the store resolves identity is not a loader's call."""

    group: str
    trait: str
    store: str | None
    job: str


@dataclass(frozen=True)
class SchemaDiff:
    """What the store lacks, or defines differently, for the job's traits."""

    create: Mapping[str, Mapping[str, TraitDefinition]] = field(default_factory=dict)
    add: Mapping[str, Mapping[str, TraitDefinition]] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()
    promotions: tuple[Promotion, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # only --prune acts
    # Unmapped too, but promoting an identifier: deleting one would strip that identifier's
    # source from every profile, so even --prune keeps them.
    kept: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        """Whether a run would fail row by row: a group or trait missing, or a type conflict."""
        return bool(self.create or self.add or self.conflicts)

    @property
    def empty(self) -> bool:
        return not (self.blocking or self.promotions or self.extra or self.kept)


@dataclass(frozen=True)
class _Group:
    """One trait group as read: its trait definitions and the ETag to write it with."""

    traits: dict[str, TraitDefinition]
    etag: str | None


@dataclass(frozen=True)
class _GroupDiff:
    add: dict[str, TraitDefinition]
    conflicts: list[Conflict]
    promotions: list[Promotion]
    extra: list[str]
    kept: list[str]


def _diff_group(group: str, needed: Mapping[str, TraitDefinition], found: _Group) -> _GroupDiff:
    unmapped = sorted(set(found.traits) - set(needed))
    kept = [t for t in unmapped if found.traits[t].get("idTypePromotion")]
    diff = _GroupDiff({}, [], [], [t for t in unmapped if t not in kept], kept)
    for trait, want in needed.items():
        have = found.traits.get(trait)
        if have is None:
            diff.add[trait] = dict(want)
        elif have.get("dataType") != want["dataType"]:
            diff.conflicts.append(
                Conflict(group, trait, str(have.get("dataType")), want["dataType"])
            )
        elif "idTypePromotion" in want and have.get("idTypePromotion") != want["idTypePromotion"]:
            store = have.get("idTypePromotion")
            diff.promotions.append(
                Promotion(
                    group, trait, store if isinstance(store, str) else None, want["idTypePromotion"]
                )
            )
    return diff


def _diff(
    needed: Mapping[str, Mapping[str, TraitDefinition]], found: Mapping[str, _Group | None]
) -> SchemaDiff:
    create: dict[str, Mapping[str, TraitDefinition]] = {}
    add: dict[str, Mapping[str, TraitDefinition]] = {}
    conflicts: list[Conflict] = []
    promotions: list[Promotion] = []
    extra: dict[str, tuple[str, ...]] = {}
    kept: dict[str, tuple[str, ...]] = {}
    for group, traits in needed.items():
        state = found[group]
        if state is None:
            create[group] = {t: dict(d) for t, d in traits.items()}
            continue
        part = _diff_group(group, traits, state)
        if part.add:
            add[group] = part.add
        conflicts += part.conflicts
        promotions += part.promotions
        if part.extra:
            extra[group] = tuple(part.extra)
        if part.kept:
            kept[group] = tuple(part.kept)
    return SchemaDiff(create, add, tuple(conflicts), tuple(promotions), extra, kept)


# ------------------------------------------------------------------------------- reading


def _groups_path(job: Job, group: str | None = None) -> str:
    path = f"/v1/ControlPlane/Stores/{quote(job.connection.store_id, safe='')}/TraitGroups"
    return path if group is None else f"{path}/{quote(group, safe='')}"


def _failure(what: str, reply: Reply) -> SchemaError:
    if reply.status is None:
        detail = f"no answer ({reply.message})"
    else:
        detail = f"HTTP {reply.status}"
        if reply.code is not None:
            detail += f", Twilio error {reply.code}"
        if reply.message:
            detail += f": {reply.message}"
    return SchemaError(f"{what}: {detail}")


async def _fetch_group(job: Job, client: MemoryClient, group: str) -> _Group | None:
    """The group's traits (every page of them), or None when the store has no such group.

    The ETag is the first page's: if the group changes while later pages are read, the write
    meets a 412 and starts over, which is the safe way round."""
    path = _groups_path(job, group)
    params = {"includeTraits": "true"}
    traits: dict[str, TraitDefinition] = {}
    etag: str | None = None
    first = True
    while True:
        reply = await client.request("GET", path, params=params)
        if reply.status == 404 and first:
            return None
        body = reply.body if reply.ok else None
        data = body.get("traitGroup") if isinstance(body, Mapping) else None
        if not isinstance(data, Mapping):
            raise _failure(f"cannot read trait group {group!r}", reply)
        if first:
            etag = reply.headers.get("etag")
            first = False
        page = data.get("traits") or {}
        if not isinstance(page, Mapping):
            raise SchemaError(f"trait group {group!r}: traits is not a JSON object")
        traits.update({str(k): dict(v) for k, v in page.items() if isinstance(v, Mapping)})
        meta = body.get("meta") if isinstance(body, Mapping) else None
        token = meta.get("nextToken") if isinstance(meta, Mapping) else None
        if not token:
            return _Group(traits, etag)
        params = {"includeTraits": "true", "pageToken": str(token)}


async def _check_store(job: Job, client: MemoryClient) -> None:
    """A 404 for a group may mean the store itself is missing; say which, rather than offering
    to create every group in a store that does not exist."""
    store = job.connection.store_id
    reply = await client.request("GET", f"/v1/ControlPlane/Stores/{quote(store, safe='')}")
    if reply.status == 404:
        raise ConfigError(f"{job.path}: connection.store_id: store {store} not found")
    if not reply.ok:
        raise _failure(f"cannot read store {store}", reply)


async def _fetch_all(job: Job, client: MemoryClient, groups: list[str]) -> dict[str, _Group | None]:
    found: dict[str, _Group | None] = {}

    async def one(group: str) -> None:
        found[group] = await _fetch_group(job, client, group)

    try:
        async with anyio.create_task_group() as tg:
            for group in groups:
                tg.start_soon(one, group)
    except BaseExceptionGroup as group_error:
        error = reported(group_error)
        if error is group_error:
            raise
        raise error from None
    if any(state is None for state in found.values()):
        await _check_store(job, client)
    return {g: found[g] for g in groups}


async def fetch_diff(job: Job, client: MemoryClient) -> SchemaDiff:
    """Read each of the job's trait groups (GET ...?includeTraits=true) and diff them."""
    needed = required(job)
    return _diff(needed, await _fetch_all(job, client, list(needed)))


async def check(job: Job, client: MemoryClient) -> None:
    """Raise SchemaMismatch when the store would refuse the job's writes, before any is sent."""
    diff = await fetch_diff(job, client)
    if diff.blocking:
        text = format_diff(diff)
        raise SchemaMismatch(f"{_refusal(job, diff)}\n{text}", text)


def _refusal(job: Job, diff: SchemaDiff) -> str:
    store = job.connection.store_id
    hints = []
    if diff.create or diff.add:
        hints.append(f"`backfill schema {job.path} --apply` defines what is missing")
    if diff.conflicts:
        hints.append("a type conflict needs the job's type or the store's definition changed")
    return f"store {store} is not ready for job {job.name} ({'; '.join(hints)}):"


# ------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Change:
    """One write apply made and saw through to its Operation's completion."""

    group: str
    action: Action
    traits: tuple[str, ...]
    operation_id: str | None


@dataclass(frozen=True)
class ApplyResult:
    before: SchemaDiff
    after: SchemaDiff  # read back once all writes completed
    changes: tuple[Change, ...]
    races: int  # 412/409 answers met, each followed by a fresh read and diff


class _Race(Exception):
    """The group changed under us (412, 409, 404 on write): read it again."""


async def wait_operation(
    client: MemoryClient,
    reply: Reply,
    *,
    clock: Clock | None = None,
    max_wait: float = OPERATION_TIMEOUT,
) -> str | None:
    """Wait for the Operation a control-plane 202 started, honouring Retry-After; return its ID.

    The group is only guaranteed to be as written once its Operation is COMPLETED; FAILED or
    CANCELLED raise SchemaError with the Operation's error."""
    op_id = reply.headers.get("operation-id")
    if not op_id:
        return None
    clock = clock if clock is not None else SystemClock()
    deadline = clock.now() + max_wait
    path = f"/v1/ControlPlane/Operations/{quote(op_id, safe='')}"
    polls = 0
    while True:
        await clock.sleep(_poll_delay(reply.headers.get("retry-after"), polls))
        polls += 1
        reply = await client.request("GET", path)
        body = reply.body if reply.ok else None
        status = body.get("status") if isinstance(body, Mapping) else None
        if not isinstance(status, str):
            raise _failure(f"cannot read operation {op_id}", reply)
        if status == "COMPLETED":
            return op_id
        if status in ("FAILED", "CANCELLED"):
            error = body.get("error") if isinstance(body, Mapping) else None
            if isinstance(error, Mapping):
                error = error.get("message") or error
            detail = f": {error}" if error else ""
            raise SchemaError(f"operation {op_id} ended {status}{detail}")
        if clock.now() >= deadline:
            raise SchemaError(
                f"operation {op_id} still {status} after {max_wait:g} s; "
                "run the command again to see where the store stands"
            )


def _poll_delay(retry_after: str | None, polls: int) -> float:
    """Retry-After when the server gives one (whole or fractional seconds); else nothing before
    the first poll and a doubling backoff between later ones."""
    from backfill.transport.throttle import retry_after_seconds

    seconds = retry_after_seconds(retry_after)
    if seconds:
        return seconds
    return 0.0 if polls == 0 else min(POLL_CAP, POLL_FLOOR * 2.0 ** (polls - 1))


async def _write(
    client: MemoryClient,
    method: str,
    path: str,
    body: Any,
    etag: str | None,
    what: str,
    clock: Clock | None,
) -> str | None:
    """One POST or PATCH, then its Operation. A 409 to a create (the group exists now), a 412
    (stale ETag) or a 404 to a PATCH (the group is gone) mean: read the group again."""
    headers = {"If-Match": etag} if etag else None
    reply = await client.request(method, path, json=body, headers=headers)
    if reply.status in ((409,) if method == "POST" else (404, 412)):
        raise _Race
    if not reply.ok:
        raise _failure(what, reply)
    return await wait_operation(client, reply, clock=clock)


@dataclass(frozen=True)
class _Step:
    """The next write that brings a group closer to what the job needs."""

    method: Literal["POST", "PATCH"]
    path: str
    body: dict[str, Any]
    etag: str | None
    changes: tuple[tuple[Action, tuple[str, ...]], ...]


def _next_step(
    job: Job, group: str, needed: Mapping[str, TraitDefinition], state: _Group | None, prune: bool
) -> _Step | None:
    if state is None:
        body = {
            "displayName": group,
            "description": f"Created by backfill job {job.name}.",
            "traits": {t: dict(d) for t, d in needed.items()},
        }
        return _Step("POST", _groups_path(job), body, None, (("create", tuple(needed)),))
    diff = _diff_group(group, needed, state)  # conflicting traits are in neither list
    deleted = diff.extra if prune else []
    # Deletions first: a group near its 95-trait limit needs the room.
    names = [*deleted, *diff.add][:MAX_TRAITS_PER_PATCH]
    if not names:
        return None
    traits = {t: dict(DELETE) if t in deleted else diff.add[t] for t in names}
    changes: tuple[tuple[Action, tuple[str, ...]], ...] = (
        ("delete", tuple(t for t in names if t in deleted)),
        ("add", tuple(t for t in names if t not in deleted)),
    )
    return _Step(
        "PATCH",
        _groups_path(job, group),
        {"traits": traits},
        state.etag,
        tuple((action, ts) for action, ts in changes if ts),
    )


async def _settle(
    job: Job,
    client: MemoryClient,
    group: str,
    needed: Mapping[str, TraitDefinition],
    prune: bool,
    changes: list[Change],
    clock: Clock | None,
) -> int:
    """Bring one group to what the job needs, one write at a time, each against a fresh read
    and diff; return how many races (412/409) it met."""
    races = writes = 0
    while True:
        step = _next_step(job, group, needed, await _fetch_group(job, client, group), prune)
        if step is None:
            return races
        if writes >= MAX_WRITES_PER_GROUP:
            # Every write completed, yet the group still differs: do not loop forever.
            raise SchemaError(f"trait group {group!r} still differs after {writes} writes")
        what = f"cannot {'create' if step.method == 'POST' else 'change'} trait group {group!r}"
        try:
            op = await _write(client, step.method, step.path, step.body, step.etag, what, clock)
        except _Race:
            races += 1
            if races >= MAX_RACES:
                raise SchemaError(
                    f"trait group {group!r} changed under each of {MAX_RACES} attempts "
                    "(HTTP 412/409): is another process editing it? Try again later"
                ) from None
            continue
        writes += 1
        changes += [Change(group, action, traits, op) for action, traits in step.changes]


async def apply(
    job: Job, client: MemoryClient, *, prune: bool = False, clock: Clock | None = None
) -> ApplyResult:
    """Create missing groups, add missing traits (and with ``prune`` delete unmapped ones),
    waiting for each write's Operation; conflicting traits are left exactly as they are."""
    needed = required(job)
    before = _diff(needed, await _fetch_all(job, client, list(needed)))
    changes: list[Change] = []
    races = 0
    touched = set(before.create) | set(before.add) | (set(before.extra) if prune else set())
    for group in (g for g in needed if g in touched):  # in the job's order
        races += await _settle(job, client, group, needed[group], prune, changes, clock)
    after = await fetch_diff(job, client)
    return ApplyResult(before, after, tuple(changes), races)


_apply = apply  # for schema(), whose `apply` flag (the CLI's --apply) shadows the function


# ------------------------------------------------------------------------------- reporting


def _definition(d: Mapping[str, Any]) -> str:
    promotion = d.get("idTypePromotion")
    return f"{d['dataType']}, idTypePromotion {promotion}" if promotion else str(d["dataType"])


def format_diff(diff: SchemaDiff) -> str:
    """The diff as a person reads it: what ``schema`` prints and ``run`` refuses with."""
    lines: list[str] = []
    if not diff.blocking:
        lines.append("The store defines every trait group and trait the job writes.")
    if diff.create:
        lines.append("Trait groups to create:")
        for group, traits in diff.create.items():
            lines.append(f"  + {group}")
            lines += [f"      {t} ({_definition(d)})" for t, d in traits.items()]
    if diff.add:
        lines.append("Traits to add:")
        for group, traits in diff.add.items():
            lines += [f"  + {group}.{t} ({_definition(d)})" for t, d in traits.items()]
    if diff.conflicts:
        lines.append("Type conflicts (never changed by --apply: change the job or the store):")
        lines += [
            f"  ! {c.group}.{c.trait}: the store has {c.store_type}, the job writes {c.job_type}"
            for c in diff.conflicts
        ]
    if diff.promotions:
        lines.append("idTypePromotion differences (reported, not changed):")
        lines += [
            f"  ~ {p.group}.{p.trait}: the store has {p.store or 'none'}, "
            f"the job's identifier is {p.job}"
            for p in diff.promotions
        ]
    if diff.extra:
        lines.append("Traits the job does not map (deleted only with --prune):")
        lines += [f"  - {g}.{t}" for g, traits in diff.extra.items() for t in traits]
    if diff.kept:
        lines.append("Traits the job does not map that promote an identifier (never deleted):")
        lines += [f"  = {g}.{t}" for g, traits in diff.kept.items() for t in traits]
    return "\n".join(lines)


def format_changes(changes: tuple[Change, ...]) -> str:
    """What apply did, a line a write; ``schema --apply`` prints it before what still differs."""
    if not changes:
        return "Nothing changed."
    verbs = {"create": "Created trait group", "add": "Added to", "delete": "Deleted from"}
    return "\n".join(f"{verbs[c.action]} {c.group}: {', '.join(c.traits)}" for c in changes)


# ------------------------------------------------------------------------------- command


@dataclass(frozen=True)
class SchemaResult:
    job: Job
    diff: SchemaDiff  # before any change
    applied: ApplyResult | None
    text: str
    exit_code: int  # 0: the store is ready for the job; 1: something still blocks a run

    @property
    def remaining(self) -> SchemaDiff:
        return self.applied.after if self.applied is not None else self.diff


def segment_schema_text(job: Job) -> str:
    """What ``schema`` says for a Segment job: a Unify space has no trait schema to create
    (an event's traits make themselves), but its identity settings decide where they land."""
    lines = [
        f"Nothing to create on Segment: space {job.connection.space_id} keeps no trait "
        "definitions; each identify event's traits are created as they arrive.",
        "What the job sends as identifiers; check each in Unify settings > Identity resolution "
        "(a type not configured there is added with the default limit and priority):",
    ]
    for identifier in job.identity.identifiers:
        lines.append(f"  {identifier.id_type} (column {identifier.column!r}): at most "
                     f"{identifier.limit} a profile")  # fmt: skip
    return "\n".join(lines) + "\n"


def schema(job_path: Path | str, *, apply: bool = False, prune: bool = False) -> SchemaResult:
    """``backfill schema JOB [--apply [--prune]]``: the diff, and with ``apply`` the fix."""
    from backfill.aio import run_async
    from backfill.checkpoint import RunLock
    from backfill.files import output_folder
    from backfill.transport.connection import open_target

    if prune and not apply:
        raise ConfigError("--prune deletes traits, so it only goes with --apply")
    job = load_job(job_path)
    if job.connection.segment:
        return SchemaResult(job, SchemaDiff(), None, segment_schema_text(job), EXIT_READY)

    async def main(client: MemoryClient) -> SchemaResult:
        async with client:
            if not apply:
                diff = await fetch_diff(job, client)
                code = EXIT_NOT_READY if diff.blocking else EXIT_READY
                return SchemaResult(job, diff, None, format_diff(diff), code)
            done = await _apply(job, client, prune=prune)
        text = format_changes(done.changes) + "\n" + format_diff(done.after)
        code = EXIT_NOT_READY if done.after.blocking else EXIT_READY
        return SchemaResult(job, done.before, done, text, code)

    # The embedded emulator keeps its state in the output folder, which a run may be using.
    embedded = job.connection.embedded
    folder = output_folder(job.output_dir) if embedded else nullcontext(job.output_dir)
    with (
        folder as out,
        RunLock(out, "schema") if embedded else nullcontext(),
        open_target(job) as t,
    ):
        return run_async(lambda: main(t.client(job)))
