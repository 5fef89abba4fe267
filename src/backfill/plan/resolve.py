"""Which Memory profile each row belongs to: profile ID column, identity map, then Lookup.

``resolve_parts(job, mapped, candidates)`` is the stage's one entry: polars plans that add
``__target``, ``__outcome``, ``__reason`` and ``__action`` to the mapped rows, as parts that
together hold every row once (the caller spills them in one pass; rows one profile settles
take a short path). Its inputs come from
``identity_map_candidates`` (a join table from an export) and ``lookup_candidates`` (each
distinct still-open identifier asked once, concurrently, under the run's token bucket, answers
cached in the run's SQLite file for ``identity.lookup_ttl``; "no profile" for at most an hour).

Per row, in this order: a valid profile ID column value wins. Otherwise each identifier, in the
job's priority order, gets its candidate profiles (from the map if the map knows the value, else
from Lookup). The first identifier with candidates decides: none -> ``unresolved``; several ->
``ambiguous`` (or the earliest, with ``on_ambiguous = "first"``); one -> the target, unless a
later identifier names only other profiles -> ``conflict`` (both are reported).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import polars as pl

from backfill.checkpoint import RunDB
from backfill.config import Job
from backfill.errors import ConfigError
from backfill.plan.mapping import (
    ORDER,
    PID,
    PROFILE_ID_PATTERN,
    identifier_column,
    normalize_column,
)
from backfill.plan.source import FILE, ROW

if TYPE_CHECKING:
    from backfill.transport.client import MemoryClient, Reply

TARGET = "__target"
OUTCOME = "__outcome"
REASON = "__reason"
ACTION = "__action"
NEW = "new:"  # target prefix of a profile to create (on_unresolved = "create", bulk, import)
UPSERT = "upsert"  # a unit's action when the store resolves its identifiers (bulk, import)

BY_STORE = "by_store"  # bulk and import: the store resolves the identifiers sent
BY_PROFILE_ID = "profile_id"
BY_MAP = "identity_map"
BY_LOOKUP = "lookup"
UNRESOLVED = "unresolved"
AMBIGUOUS = "ambiguous"
CONFLICT = "conflict"
RESOLVED = (BY_PROFILE_ID, BY_MAP, BY_LOOKUP)

CANDIDATE_SCHEMA = pl.Schema(
    [
        ("k", pl.UInt8()),
        ("value", pl.String()),
        ("source", pl.String()),
        ("profiles", pl.List(pl.String())),
        ("error", pl.String()),
    ]
)


PAIR_SCHEMA = pl.Schema([("k", pl.UInt8()), ("value", pl.String())])


def _empty_candidates() -> pl.DataFrame:
    return pl.DataFrame(schema=CANDIDATE_SCHEMA)


def identity_map_candidates(job: Job) -> pl.DataFrame:
    """The identity map as (k, normalized value) -> profiles, for the job's identifiers."""
    path = job.identity.identity_map
    if path is None:
        return _empty_candidates()
    where = f"{job.path}: identity.identity_map: {path}"
    try:
        if path.suffix == ".csv":
            frame = pl.read_csv(path, infer_schema=False)
        else:
            frame = pl.read_parquet(path)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    missing = [c for c in ("id_type", "value", "profile_id") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"{where}: needs columns id_type, value, profile_id; {missing[0]} is missing"
        )
    frame = frame.select(
        pl.col("id_type").cast(pl.String).str.strip_chars(),
        pl.col("value").cast(pl.String),
        pl.col("profile_id").cast(pl.String).str.strip_chars(),
    ).filter(pl.col("profile_id").str.contains(PROFILE_ID_PATTERN))
    parts = []
    for k, identifier in enumerate(job.identity.identifiers):
        rows = frame.filter(pl.col("id_type") == identifier.id_type)
        if rows.is_empty():
            continue
        spec = identifier.__class__(
            "value", identifier.id_type, identifier.normalization, identifier.default_region
        )
        rows = rows.with_columns(normalize_column(rows, spec).alias("value")).drop_nulls("value")
        parts.append(
            rows.group_by("value", maintain_order=True)
            .agg(pl.col("profile_id").unique(maintain_order=True).alias("profiles"))
            .with_columns(
                pl.lit(k, pl.UInt8).alias("k"),
                pl.lit(BY_MAP).alias("source"),
                pl.lit(None, pl.String).alias("error"),
            )
            .select(list(CANDIDATE_SCHEMA))
        )
    return pl.concat(parts) if parts else _empty_candidates()


def open_pairs(job: Job, mapped: pl.LazyFrame, known: pl.DataFrame) -> pl.DataFrame:
    """Distinct (k, value) of rows without a profile ID that the map does not answer."""
    parts = [
        mapped.filter(pl.col(PID).is_null())
        .select(pl.lit(k, pl.UInt8).alias("k"), pl.col(identifier_column(k)).alias("value"))
        .drop_nulls("value")
        .unique()
        for k in range(len(job.identity.identifiers))
    ]
    if not parts:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    pairs = pl.concat(parts).collect()
    return pairs.join(known.select("k", "value"), on=["k", "value"], how="anti").sort("k", "value")


@dataclass
class LookupStats:
    asked: int = 0
    cached: int = 0
    failed: int = 0


def cached_candidates(
    job: Job, pairs: pl.DataFrame, db: RunDB, *, now: float, refresh: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(candidates the run file knows from answers still fresh at ``now``, the pairs to ask).

    ``refresh`` (``run --restart`` / ``--full``) trusts no cached answer: everything is asked
    again, and the new answers replace the old. ``identity.lookup_ttl`` = 0 never reuses one.
    """
    identity = job.identity
    id_types = [i.id_type for i in identity.identifiers]
    wanted = [(int(k), v) for k, v in pairs.iter_rows()]
    cached: dict[tuple[str, str], list[str]] = {}
    if not refresh and identity.lookup_ttl > 0:
        cached = db.cached_lookups(
            job.connection.store_id,
            [(id_types[k], v) for k, v in wanted],
            now=now,
            max_age=identity.lookup_ttl,
            max_age_empty=identity.no_profile_ttl,
        )
    rows = [(k, v, BY_LOOKUP, cached[(id_types[k], v)], None) for k, v in wanted
            if (id_types[k], v) in cached]  # fmt: skip
    todo = [(k, v) for k, v in wanted if (id_types[k], v) not in cached]
    return (
        pl.DataFrame(rows, schema=CANDIDATE_SCHEMA, orient="row"),
        pl.DataFrame(todo, schema=PAIR_SCHEMA, orient="row"),
    )


def _lookup_failure(reply: Reply) -> str:
    """The reason a Lookup gave no answer about the person, for the rows that needed it."""
    what = f"HTTP {reply.status}" if reply.status else "no response"
    detail = f" (code {reply.code}: {reply.message})" if reply.code else ""
    if reply.status is None and reply.message:
        detail = f" ({reply.message})"
    return f"lookup failed after {reply.attempts} attempt(s): {what}{detail}"


async def lookup_candidates(
    job: Job,
    pairs: pl.DataFrame,
    client: MemoryClient,
    db: RunDB,
    *,
    progress: Callable[[int], object] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[pl.DataFrame, LookupStats]:
    """Ask Lookup once per pair, ``send.concurrency`` at a time; answers are cached as they come,
    dated by ``clock`` (wall time: the cache outlives the process).

    Only a 200 is an answer about the person ("no profile" is a 200 with no IDs). Anything else
    is a failure, reported on the pair's rows and never cached, a 404 included: the API answers
    404 for a store (or route) that does not exist, which says nothing about the person.
    """
    store = job.connection.store_id
    id_types = [i.id_type for i in job.identity.identifiers]
    todo = [(int(k), v) for k, v in pairs.iter_rows()]
    stats = LookupStats()
    rows: list[tuple[int, str, str, list[str], str | None]] = []
    answers: dict[tuple[str, str], list[str]] = {}
    send, receive = anyio.create_memory_object_stream[tuple[int, str]](len(todo) or 1)
    for item in todo:
        send.send_nowait(item)
    send.close()

    async def worker() -> None:
        async for k, value in receive:
            reply = await client.lookup(store, id_types[k], value)
            stats.asked += 1
            if reply.status == 200 and isinstance(reply.body, dict):
                found = [p for p in reply.body.get("profiles", []) if isinstance(p, str)]
                answers[(id_types[k], value)] = found
                rows.append((k, value, BY_LOOKUP, found, None))
            else:
                stats.failed += 1
                rows.append((k, value, BY_LOOKUP, [], _lookup_failure(reply)))
            if len(answers) >= 200:
                db.cache_lookups(store, dict(answers), now=clock())
                answers.clear()
            if progress is not None:
                progress(1)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(max(1, min(job.send.concurrency, len(todo)))):
                tg.start_soon(worker)
    finally:
        db.cache_lookups(store, answers, now=clock())
    frame = pl.DataFrame(rows, schema=CANDIDATE_SCHEMA, orient="row")
    return frame, stats


def _first(exprs: Sequence[pl.Expr], dtype: pl.DataType) -> pl.Expr:
    """The first non-null of ``exprs`` (a typed null when there are none)."""
    return pl.coalesce(exprs) if exprs else pl.lit(None, dtype)


def resolve_parts(
    job: Job,
    mapped: pl.LazyFrame,
    candidates: pl.DataFrame,
    *,
    looked_up: bool = True,
    easy_path: bool = True,
) -> list[pl.LazyFrame]:
    """Add ``__target``, ``__outcome``, ``__reason`` and ``__action`` to every mapped row, as
    parts that together hold every row once, each with the same columns: rows with a valid
    profile ID, rows settled by one profile, and the rest. A caller that spills them can sink
    all parts in one pass (``pl.collect_all``) so the joins run once; ``pl.concat`` of the parts
    is the whole. ``looked_up`` is false when Lookup was not asked (``lookup = false`` or
    ``--offline``), so an unresolved row says that only the profile ID column and the identity
    map were tried.

    Most rows name one profile through every identifier that has candidates; those take a
    short path of a few cheap columns (polars evaluates every branch of a ``when`` on every
    row, and the general rules build several strings per row). The general rules
    (``_general``) still decide every other row, exactly as they decide the easy ones
    (``easy_path=False`` sends every row through them: tests/test_resolve_paths.py).
    """
    identifiers = job.identity.identifiers
    by_id = mapped.filter(pl.col(PID).is_not_null()).with_columns(
        pl.col(PID).alias(TARGET),
        pl.lit(BY_PROFILE_ID).alias(OUTCOME),
        pl.lit(None, pl.String()).alias(REASON),
        pl.lit("patch").alias(ACTION),
    )
    frame = mapped.filter(pl.col(PID).is_null())
    tables = {k: candidates.filter(pl.col("k") == k) for k in range(len(identifiers))}
    joined = [k for k, table in tables.items() if not table.is_empty()]
    # A value listed twice would repeat its rows in each join: only the general path (one join)
    # keeps that as it always was. Candidates are unique per identifier and value in practice.
    unique = candidates.select(pl.struct("k", "value").is_unique().all()).item()
    if not joined or not easy_path or not unique:
        # Without candidates, the general rules say why no row resolves.
        everything = _join(frame, tables, joined, (_n, _f, _m, _s, _e))
        return [by_id, _general(job, everything, looked_up).drop(_scratch(job))]
    # The first join brings what the short path reads; both paths read it (polars computes it
    # once when both branches read the same columns), and only the rest joins the other columns.
    frame = _join(frame, tables, joined, (_n, _f, _s))
    n = [pl.col(_n(k)).fill_null(0) for k in range(len(identifiers))]
    chosen = _first([pl.when(n[k] > 0).then(pl.col(_f(k))) for k in joined], pl.String())
    source = _first([pl.when(n[k] > 0).then(pl.col(_s(k))) for k in joined], pl.String())
    # Every identifier with candidates (the decider included) names exactly the chosen one.
    agree = [(n[k] == 0) | ((n[k] == 1) & (pl.col(_f(k)) == chosen)) for k in joined]
    easy = chosen.is_not_null() & source.is_in(RESOLVED) & pl.all_horizontal(agree)
    frame = frame.with_columns(easy.fill_null(False).alias(_EASY))
    settled = (
        frame.filter(pl.col(_EASY))
        .with_columns(
            chosen.alias(TARGET),
            source.alias(OUTCOME),
            pl.lit(None, pl.String()).alias(REASON),
            pl.when(chosen.str.starts_with(NEW))
            .then(pl.lit("create"))
            .otherwise(pl.lit("patch"))
            .alias(ACTION),
        )
        .drop(*(name(k) for k in range(len(identifiers)) for name in (_n, _f, _s)), _EASY)
    )
    hard = _join(frame.filter(~pl.col(_EASY)), tables, joined, (_m, _e))
    rest = _general(job, hard, looked_up).drop(*_scratch(job), _EASY)
    return [by_id, settled, rest]


def _first_identifier(job: Job) -> pl.Expr:
    """``<idType> <value>`` of the row's first usable identifier in priority order."""
    identifiers = job.identity.identifiers
    return _first(
        [
            pl.concat_str(pl.lit(f"{identifiers[k].id_type} "), pl.col(identifier_column(k)))
            for k in range(len(identifiers))
        ],
        pl.String(),
    )


def linked_in_store(job: Job, mapped: pl.LazyFrame) -> pl.LazyFrame:
    """Bulk and import: the rows whose person, keyed by their first identifier, shares an
    identifier value with another key (row 1 keyed by email a with phone p, row 2 by email b
    with phone p). The store may resolve both keys to one profile, where whichever body came
    last would win every trait they share: these rows are resolved as PATCH mode does (Lookup,
    then per profile), so "the latest row wins" holds for them too. Every other person has one
    key, and the store resolving it is all PATCH mode would do."""
    key = pl.concat_str(pl.lit(NEW), _first_identifier(job)).alias(TARGET)
    ids = range(len(job.identity.identifiers))
    keyed = mapped.select(key, *(identifier_column(k) for k in ids))
    pairs = [
        keyed.select(
            pl.col(TARGET), pl.lit(k, pl.UInt8).alias("k"), pl.col(identifier_column(k)).alias("v")
        ).drop_nulls()
        for k in ids
    ]
    if not pairs:
        return pl.LazyFrame(schema={TARGET: pl.String})
    shared = (
        pl.concat(pairs)
        .unique()
        .with_columns(pl.len().over("k", "v").alias("__keys"))
        .filter(pl.col("__keys") > 1)
        .select(TARGET)
        .unique()
    )
    return shared


LINK_ROUNDS = 64  # label-propagation rounds; a chain of people longer than this stays split


def link_new_people(job: Job, resolved: pl.LazyFrame) -> pl.DataFrame:
    """Where the rows of people to create (``new:`` targets) should go, given the identifier
    values they share with other rows of the extract: ``TARGET`` -> new target, action, outcome.

    The store resolves a create (or a bulk body) by its identifiers, so two ``new:`` keys that
    share a value (row 1: email a and phone p; row 2: only phone p) end in one profile, where
    the body applied last would win every trait both send. Planned as one person instead, the
    latest row wins per trait, as for anyone else. Rows linked by such values form one group
    (connected through shared values, found by label propagation):

    - with exactly one existing profile in it (a row that resolved to profile P shares a value
      with the new rows), the new rows go to P (outcome ``lookup``: their identifier led there);
    - with none, one ``new:`` key: the group's highest-priority identifier type, with the value
      of its latest row (so the body carries that very value, and Lookup finds the profile by
      it after a lost create, or in the read-back);
    - with several profiles, nothing changes (which profile is the store's to say).

    Only values some new row holds are followed, so the work is bounded by the people to create.
    """
    ids = range(len(job.identity.identifiers))
    id_types = [i.id_type for i in job.identity.identifiers]
    keyed = resolved.filter(pl.col(TARGET).is_not_null()).select(
        TARGET, ORDER, FILE, ROW, *(identifier_column(k) for k in ids)
    )
    values = [
        keyed.select(
            pl.col(TARGET), pl.lit(k, pl.UInt8).alias("k"),
            pl.col(identifier_column(k)).alias("v"),
        ).drop_nulls("v")
        for k in ids
    ]  # fmt: skip
    link_columns = (TARGET, "__link_to", "__link_action", "__link_outcome")
    empty = pl.DataFrame(schema=dict.fromkeys(link_columns, pl.String))
    if not values:
        return empty
    pairs_all = pl.concat(values).unique()
    new_values = pairs_all.filter(pl.col(TARGET).str.starts_with(NEW)).select("k", "v").unique()
    pairs = pairs_all.join(new_values, on=["k", "v"], how="semi").collect()
    if pairs.is_empty():
        return empty
    labels = pairs.select(pl.col(TARGET).unique()).with_columns(pl.col(TARGET).alias("__label"))
    for _ in range(LINK_ROUNDS):
        by_value = pairs.join(labels, on=TARGET).group_by("k", "v").agg(pl.col("__label").min())
        spread = pairs.join(by_value, on=["k", "v"]).group_by(TARGET).agg(pl.col("__label").min())
        moved = labels.join(spread, on=TARGET, suffix="_n").with_columns(
            pl.min_horizontal("__label", "__label_n").alias("__label_n")
        )
        if moved.filter(pl.col("__label_n") != pl.col("__label")).is_empty():
            break
        labels = moved.select(TARGET, pl.col("__label_n").alias("__label"))
    groups = labels.group_by("__label").agg(pl.col(TARGET))
    linked = groups.filter(pl.col(TARGET).list.len() > 1).explode(TARGET)
    if linked.is_empty():
        return empty
    is_new = pl.col(TARGET).str.starts_with(NEW)
    profiles = (
        linked.filter(~is_new).group_by("__label").agg(pl.col(TARGET).unique().alias("__profiles"))
    )
    # The key of a group with no profile: its best identifier type, the latest row's value.
    rows = (
        keyed.join(linked.lazy().filter(is_new), on=TARGET, how="inner")
        .sort([ORDER, FILE, ROW], nulls_last=False)
        .collect()
    )
    latest = pl.concat(
        rows.filter(pl.col(identifier_column(k)).is_not_null())
        .group_by("__label")
        .agg(pl.col(identifier_column(k)).last().alias("v"))
        .with_columns(pl.lit(k, pl.UInt8).alias("k"))
        for k in ids
    )
    keys = (
        latest.sort("k")
        .group_by("__label", maintain_order=True)
        .first()
        .with_columns(
            pl.concat_str(
                pl.lit(NEW),
                pl.col("k").replace_strict(list(ids), id_types, return_dtype=pl.String),
                pl.lit(" "),
                pl.col("v"),
            ).alias("__key")
        )
        .select("__label", "__key")
    )
    return (
        linked.filter(is_new)
        .join(profiles, on="__label", how="left")
        .join(keys, on="__label", how="left")
        .filter(pl.col("__profiles").list.len().fill_null(0) <= 1)
        .select(
            pl.col(TARGET),
            pl.coalesce(pl.col("__profiles").list.first(), pl.col("__key")).alias("__link_to"),
            pl.when(pl.col("__profiles").list.len() == 1)
            .then(pl.lit("patch"))
            .otherwise(pl.lit("create"))
            .alias("__link_action"),
            pl.when(pl.col("__profiles").list.len() == 1)
            .then(pl.lit(BY_LOOKUP))
            .otherwise(pl.lit(UNRESOLVED))
            .alias("__link_outcome"),
        )
        .filter(pl.col("__link_to") != pl.col(TARGET))
    )


def relink(resolved: pl.LazyFrame, links: pl.DataFrame) -> pl.LazyFrame:
    """``resolved`` with the targets ``link_new_people`` moved."""
    if links.is_empty():
        return resolved
    return (
        resolved.join(links.lazy(), on=TARGET, how="left")
        .with_columns(
            pl.coalesce("__link_to", TARGET).alias(TARGET),
            pl.coalesce("__link_action", ACTION).alias(ACTION),
            pl.coalesce("__link_outcome", OUTCOME).alias(OUTCOME),
            pl.when(pl.col("__link_outcome") == BY_LOOKUP)
            .then(None)
            .otherwise(REASON)
            .alias(REASON),
        )
        .drop("__link_to", "__link_action", "__link_outcome")
    )


def resolve_in_store(job: Job, mapped: pl.LazyFrame) -> pl.LazyFrame:
    """Bulk and import: the store resolves identity from the identifiers in each body, so a
    row's target is its first usable identifier in priority order, normalized as the store
    normalizes it (``new:<idType> <value>``): rows of one person merge as in PATCH mode. A row
    without a usable identifier is ``unresolved``."""
    first = _first_identifier(job)
    target = pl.concat_str(pl.lit(NEW), first)
    return mapped.with_columns(
        target.alias(TARGET),
        pl.when(first.is_null())
        .then(pl.lit(UNRESOLVED))
        .otherwise(pl.lit(BY_STORE))
        .alias(OUTCOME),
        pl.when(first.is_null()).then(pl.lit("no usable identifier in the row")).alias(REASON),
        pl.when(first.is_not_null()).then(pl.lit(UPSERT)).alias(ACTION),
    )


def _join(
    frame: pl.LazyFrame,
    tables: dict[int, pl.DataFrame],
    joined: list[int],
    names: Sequence[Callable[[int], str]],
) -> pl.LazyFrame:
    """``frame`` with the candidate columns ``names`` of every identifier: joined for those in
    ``joined``, null for the others (as a value no candidate lists)."""
    for k in tables:
        profiles = pl.col("profiles")
        count = profiles.list.len().cast(pl.UInt32)
        columns = {
            _n(k): count,
            _f(k): profiles.list.first(),
            # The whole list only where it has several: the general rules rebuild it.
            _m(k): pl.when(count > 1).then(profiles),
            _s(k): pl.col("source"),
            _e(k): pl.col("error"),
        }
        wanted = [name(k) for name in names]
        if k not in joined:
            frame = frame.with_columns(
                pl.lit(None, _SCRATCH_TYPES[name]).alias(name(k)) for name in names
            )
            continue
        frame = frame.join(
            tables[k]
            .lazy()
            .select(
                pl.col("value").alias(identifier_column(k)),
                *(columns[c].alias(c) for c in wanted),
            ),
            on=identifier_column(k),
            how="left",
            nulls_equal=False,
        )
    return frame


def _scratch(job: Job) -> list[str]:
    return [name(k) for k in range(len(job.identity.identifiers)) for name in _SCRATCH_TYPES]


_EASY = "__easy"


def _n(k: int) -> str:
    """How many candidate profiles identifier ``k``'s value has (0: none)."""
    return f"__n_{k}"


def _f(k: int) -> str:
    """The first of them."""
    return f"__f_{k}"


def _m(k: int) -> str:
    """All of them, where there are several (null otherwise)."""
    return f"__m_{k}"


def _s(k: int) -> str:
    return f"__s_{k}"


def _e(k: int) -> str:
    return f"__e_{k}"


_SCRATCH_TYPES: dict[Callable[[int], str], pl.DataType] = {
    _n: pl.UInt32(),
    _f: pl.String(),
    _m: pl.List(pl.String()),
    _s: pl.String(),
    _e: pl.String(),
}


def _general(job: Job, frame: pl.LazyFrame, looked_up: bool) -> pl.LazyFrame:
    """The resolution rules for rows without a profile ID, in full (see the module docstring),
    from the candidate columns ``resolve_parts`` joined."""
    identifiers = job.identity.identifiers
    candidate_lists = [
        pl.when(pl.col(_n(k)) > 1)
        .then(pl.col(_m(k)))
        .when(pl.col(_n(k)) == 1)
        .then(pl.concat_list(pl.col(_f(k))))
        .when(pl.col(_n(k)) == 0)
        .then(pl.lit([], pl.List(pl.String())))
        .alias(f"__c_{k}")
        for k in range(len(identifiers))
    ]
    frame = frame.with_columns(candidate_lists)
    n = [pl.col(f"__c_{k}").list.len().fill_null(0) for k in range(len(identifiers))]
    decider_list = _first(
        [pl.when(n[k] > 0).then(pl.col(f"__c_{k}")) for k in range(len(identifiers))],
        pl.List(pl.String()),
    )
    decider_source = _first(
        [pl.when(n[k] > 0).then(pl.col(_s(k))) for k in range(len(identifiers))],
        pl.String(),
    )
    first = decider_list.list.first()
    several = decider_list.list.len() > 1
    take_first = job.identity.on_ambiguous == "first"
    single = pl.when(~several | pl.lit(take_first)).then(first)
    clashes = [
        pl.when((n[k] > 0) & ~pl.col(f"__c_{k}").list.contains(single)).then(
            pl.concat_str(
                pl.lit(f"{identifiers[k].id_type} "),
                pl.col(identifier_column(k)),
                pl.lit(" -> "),
                pl.col(f"__c_{k}").list.join(", "),
            )
        )
        for k in range(len(identifiers))
    ]
    clash = pl.concat_str(clashes, separator="; ", ignore_nulls=True) if clashes else pl.lit("")
    has_pid = pl.col(PID).is_not_null()
    outcome = (
        pl.when(has_pid)
        .then(pl.lit(BY_PROFILE_ID))
        .when(decider_list.is_null())
        .then(pl.lit(UNRESOLVED))
        .when(several & ~pl.lit(take_first))
        .then(pl.lit(AMBIGUOUS))
        .when(clash != "")
        .then(pl.lit(CONFLICT))
        .otherwise(decider_source)
    )
    decider_text = _first(
        [
            pl.when(n[k] > 0).then(
                pl.concat_str(pl.lit(f"{identifiers[k].id_type} "), pl.col(identifier_column(k)))
            )
            for k in range(len(identifiers))
        ],
        pl.String(),
    )
    tried = pl.concat_str(
        [
            pl.concat_str(pl.lit(f"{identifiers[k].id_type} "), pl.col(identifier_column(k)))
            for k in range(len(identifiers))
        ]
        or [pl.lit("")],
        separator=", ",
        ignore_nulls=True,
    )
    first_identifier = _first_identifier(job)
    errors = pl.concat_str(
        [pl.col(_e(k)) for k in range(len(identifiers))] or [pl.lit(None, pl.String)],
        separator="; ",
        ignore_nulls=True,
    )
    unresolved_reason = (
        pl.when(tried == "")
        .then(pl.lit("no usable identifier in the row"))
        .when(errors != "")
        .then(pl.concat_str(pl.lit("no profile found for "), tried, pl.lit("; "), errors))
        .otherwise(
            pl.concat_str(
                pl.lit("no profile found for "),
                tried,
                pl.lit("" if looked_up else " (not looked up: lookup = false or --offline)"),
            )
        )
    )
    reason = (
        pl.when(outcome == UNRESOLVED)
        .then(unresolved_reason)
        .when(outcome == AMBIGUOUS)
        .then(
            pl.concat_str(
                decider_text, pl.lit(" matches several profiles: "), decider_list.list.join(", ")
            )
        )
        .when(outcome == CONFLICT)
        .then(
            pl.concat_str(
                decider_text,
                pl.lit(" -> "),
                single,
                pl.lit(", but "),
                clash,
            )
        )
        .when(several)
        .then(
            pl.concat_str(
                decider_text,
                pl.lit(" matches several profiles; chose the earliest of "),
                decider_list.list.join(", "),
            )
        )
    )
    create = job.identity.on_unresolved == "create"
    target = (
        pl.when(has_pid)
        .then(pl.col(PID))
        .when(outcome.is_in(RESOLVED))
        .then(single)
        .when(pl.lit(create) & (outcome == UNRESOLVED) & (tried != ""))
        .then(pl.concat_str(pl.lit(NEW), first_identifier))
    )
    action = (
        pl.when(target.str.starts_with("new:"))
        .then(pl.lit("create"))
        .otherwise(pl.when(target.is_not_null()).then(pl.lit("patch")))
    )
    return frame.with_columns(
        target.alias(TARGET), outcome.alias(OUTCOME), reason.alias(REASON), action.alias(ACTION)
    ).drop([f"__c_{k}" for k in range(len(identifiers))])


LIMIT_VALUES_SHOWN: Final = 6  # values named in an over-limit reason; the rest are counted


def within_segment_limits(job: Job, resolved: pl.LazyFrame) -> pl.LazyFrame:
    """Segment: every row with a person goes to Segment, which resolves them (``by_store``);
    except the people whose rows carry more values of an identifier type than one profile may
    hold (``limit``: user_id 1, others 5). Segment would drop the incoming event's
    lowest-priority identifier and match again (segment-api.md, 3): the traits would land on
    another profile, or a new one. All such a person's rows are reported (``conflict``, naming
    the values), not sent blind."""
    identifiers = job.identity.identifiers
    keyed = pl.col(TARGET).is_not_null()
    over = [
        pl.col(identifier_column(k)).drop_nulls().n_unique() > (identifier.limit or 1)
        for k, identifier in enumerate(identifiers)
    ]
    counts = (
        resolved.filter(keyed)
        .group_by(TARGET)
        .agg(
            pl.any_horizontal(over).alias("__over"),
            *(o.alias(f"__over_{k}") for k, o in enumerate(over)),
        )
    )
    people = counts.filter(pl.col("__over")).select(
        TARGET, *(f"__over_{k}" for k in range(len(identifiers)))
    )
    values = (
        resolved.join(people, on=TARGET, how="semi")
        .group_by(TARGET)
        .agg(
            pl.col(identifier_column(k)).drop_nulls().unique().sort().alias(f"__vals_{k}")
            for k in range(len(identifiers))
        )
    )
    parts = []
    for k, identifier in enumerate(identifiers):
        vals = pl.col(f"__vals_{k}")
        shown = vals.list.head(LIMIT_VALUES_SHOWN).list.join(", ")
        more = vals.list.len().cast(pl.Int64) - LIMIT_VALUES_SHOWN
        text = pl.concat_str(
            vals.list.len().cast(pl.String),
            pl.lit(f" {identifier.id_type} values ("),
            shown,
            pl.when(more > 0)
            .then(pl.concat_str(pl.lit(", and "), more.cast(pl.String), pl.lit(" more")))
            .otherwise(pl.lit("")),
            pl.lit(f"), where a Segment profile holds at most {identifier.limit}"),
        )
        parts.append(pl.when(pl.col(f"__over_{k}")).then(text))
    reason = pl.concat_str(
        pl.lit("this person's rows carry "),
        pl.concat_str(parts, separator="; ", ignore_nulls=True),
        pl.lit(": Segment would drop an identifier and put the traits elsewhere"),
    )
    reasons = people.join(values, on=TARGET).select(TARGET, reason.alias("__limit_reason"))
    marked = resolved.join(reasons, on=TARGET, how="left")
    over_limit = pl.col("__limit_reason").is_not_null()
    return marked.with_columns(
        pl.when(over_limit).then(None).otherwise(pl.col(TARGET)).alias(TARGET),
        pl.when(over_limit)
        .then(pl.lit(CONFLICT))
        .when(keyed)
        .then(pl.lit(BY_STORE))
        .otherwise(pl.col(OUTCOME))
        .alias(OUTCOME),
        pl.when(over_limit)
        .then(pl.col("__limit_reason"))
        .when(keyed)
        .then(None)
        .otherwise(pl.col(REASON))
        .alias(REASON),
        pl.when(over_limit)
        .then(None)
        .when(keyed)
        .then(pl.lit(UPSERT))
        .otherwise(pl.col(ACTION))
        .alias(ACTION),
    ).drop("__limit_reason")
