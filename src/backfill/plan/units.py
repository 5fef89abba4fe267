"""From resolved rows to request units: one PATCH body per profile and chunk, keyed and hashed.

``plan_units(job, resolved)`` is the stage's one entry. Rows are grouped per target profile; per
trait, the latest row by ``order_by`` (then file, then row) among those that carry the trait wins.
The job's traits are split once, up front, into chunks that respect the API's limits (50 trait
groups a request, 99 traits a group: ``chunk_traits``), so a profile's patch is one request per
chunk it has data for. Every unit gets a stable key (``<profile>#<chunk>``) and a content hash of
its body (``HASH_SCHEME``), which delivery uses to resume and incremental runs to skip
unchanged data. Each unit also carries ``orders``: per trait it sends, the sort key (order, then
file and row) of the row that won (``unit_orders``), so delivery can keep "the latest row wins"
when a 308 sends one profile's unit to another's canonical profile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl

from backfill.config import SEGMENT_FIELDS, Job
from backfill.plan.mapping import ORDER, identifier_column, present_column, value_column
from backfill.plan.resolve import NEW, TARGET, UPSERT
from backfill.plan.source import FILE, ROW

MAX_GROUPS_PER_REQUEST = 50  # Memory API: TraitGroups maxProperties
MAX_TRAITS_PER_GROUP = 99  # Memory API: traits of one group maxProperties


def chunk_traits(
    traits: Sequence[tuple[str, str]],
    max_groups: int = MAX_GROUPS_PER_REQUEST,
    max_traits: int = MAX_TRAITS_PER_GROUP,
    always: Sequence[int] = (),
) -> list[list[int]]:
    """Partition trait indices into request chunks: each chunk has at most ``max_groups``
    groups and at most ``max_traits`` traits of any group; every trait lands in exactly one,
    except those in ``always`` (identifiers the store resolves by), which go in every chunk."""
    if always:
        fixed = [traits[i][0] for i in always]
        room_groups = max_groups - len(set(fixed))
        room_traits = max_traits - max(fixed.count(g) for g in fixed)
        rest = [i for i in range(len(traits)) if i not in set(always)]
        if room_groups < 1 or room_traits < 1:
            raise ValueError("the identifier traits alone fill a request")
        inner = chunk_traits([traits[i] for i in rest], room_groups, room_traits)
        return [[*always, *(rest[i] for i in chunk)] for chunk in inner] or [list(always)]
    by_group: dict[str, list[int]] = {}
    for index, (group, _) in enumerate(traits):
        by_group.setdefault(group, []).append(index)
    slices = {
        g: [idx[i : i + max_traits] for i in range(0, len(idx), max_traits)]
        for g, idx in by_group.items()
    }
    chunks: list[list[int]] = []
    level = 0
    while True:
        pieces = [s[level] for s in slices.values() if len(s) > level]
        if not pieces:
            return chunks
        for start in range(0, len(pieces), max_groups):
            chunks.append([i for piece in pieces[start : start + max_groups] for i in piece])
        level += 1


def identifier_traits(job: Job) -> list[int]:
    """The indices of the traits that write an identifier column: what the store resolves a
    bulk or import profile by, so every chunk of such a profile carries them."""
    columns = {i.column for i in job.identity.identifiers}
    return [j for j, t in enumerate(job.traits) if t.column in columns]


def _encode(job: Job, j: int) -> pl.Expr:
    """``"trait":<json value>`` of trait ``j``'s value column (``null`` when the value is)."""
    mapping = job.traits[j]
    value = pl.col(value_column(j))
    encoded = pl.struct(value.alias(mapping.trait)).struct.json_encode()
    if mapping.type == "NUMBER":
        integral = (value == value.floor()) & (value.abs() < 2**53)
        as_int = pl.struct(value.cast(pl.Int64).alias(mapping.trait)).struct.json_encode()
        encoded = pl.when(integral).then(as_int).otherwise(encoded)
    return encoded.str.strip_prefix("{").str.strip_suffix("}")


def _fragment_column(j: int) -> str:
    return f"__f_{j}"


def _body(job: Job, chunk: list[int], required: Sequence[int] | None = None) -> pl.Expr:
    """The JSON body of one chunk from the fragment columns (null when nothing is sent, or
    nothing among ``required`` when given)."""
    groups: dict[str, list[int]] = {}
    for j in chunk:
        groups.setdefault(job.traits[j].group, []).append(j)
    group_parts = []
    for group, members in groups.items():
        fragments = [pl.col(_fragment_column(j)) for j in members]
        joined = pl.concat_str(fragments, separator=",", ignore_nulls=True)
        group_parts.append(
            pl.when(pl.any_horizontal([f.is_not_null() for f in fragments])).then(
                pl.concat_str(pl.lit(f'"{group}":{{'), joined, pl.lit("}"))
            )
        )
    inner = pl.concat_str(group_parts, separator=",", ignore_nulls=True)
    wanted = chunk if required is None else required
    sent = pl.any_horizontal([pl.col(_fragment_column(j)).is_not_null() for j in wanted])
    return pl.when(sent).then(pl.concat_str(pl.lit('{"traits":{'), inner, pl.lit("}}")))


# Content hashes are two seeded polars hashes of the body (128 bits): vectorized, ~40x cheaper
# than SHA-256 in a Python loop, which alone cost more than the whole plan budget per million
# units. polars guarantees them only within one version, so the scheme names the version:
# whoever compares hashes (resume, incremental runs) must treat another scheme's as unknown,
# which can only cause a resend, never a skip.
HASH_SCHEME = f"polars-{pl.__version__}/hash(11)-hash(23)"


def _content_hash(body: pl.Expr) -> pl.Expr:
    return pl.concat_str(
        body.hash(seed=11).cast(pl.String), pl.lit("-"), body.hash(seed=23).cast(pl.String)
    )


def plan_units(job: Job, resolved: pl.LazyFrame) -> pl.LazyFrame:
    """The request units of ``resolved`` rows (see the module docstring).

    One sort by (target, order, file, row) puts each profile's rows oldest first, so the value
    sent per trait is the group's last non-null one. A ``nulls = "delete"`` trait's explicit null
    must survive that, so those traits are encoded to JSON fragments before grouping.
    """
    deletes = [j for j, t in enumerate(job.traits) if t.nulls == "delete"]
    ordered = job.source.order_by is not None
    order = pl.col(ORDER)
    if ordered and resolved.collect_schema()[ORDER].is_temporal():
        order = order.to_physical()  # JSON numbers that compare as the sort does
    rows = (
        resolved.filter(pl.col(TARGET).is_not_null())
        .with_columns(
            pl.when(pl.col(present_column(j))).then(encode_trait(job, j)) for j in deletes
        )
        .sort([TARGET, ORDER, FILE, ROW], nulls_last=False)
        .with_columns(
            (pl.col(FILE).cast(pl.UInt64) * 2**32 + pl.col(ROW).cast(pl.UInt64)).alias(_POS)
        )
    )
    aggs: list[pl.Expr] = [pl.len().cast(pl.UInt32).alias("rows")]
    if job.connection.segment:
        aggs += segment_aggs(job)
    for j in range(len(job.traits)):
        column = _fragment_column(j) if j in deletes else value_column(j)
        aggs.append(pl.col(column).last(ignore_nulls=True))
        # The winning row is the last that sends the trait. Its order is the last non-null
        # order among those rows: nulls sort first, so a null there means every one was null.
        sends = pl.col(column).is_not_null()
        aggs.append(pl.when(sends).then(pl.col(_POS)).last(ignore_nulls=True).alias(_kp(j)))
        if ordered:
            aggs.append(pl.when(sends).then(order).last(ignore_nulls=True).alias(_ko(j)))
    # Rows arrive sorted by target: keeping first-seen order yields the units in target order
    # (then chunk), deterministic without a second sort.
    grouped = (
        rows.group_by(TARGET, maintain_order=True)
        .agg(aggs)
        .with_columns(
            pl.when(pl.col(value_column(j)).is_not_null()).then(encode_trait(job, j))
            for j in range(len(job.traits))
            if j not in deletes
        )
    )
    # Orders serve PATCH's merge redirects; bulk and import never read them (a 1M-row plan
    # would carry ~27 MiB of them into every batch in memory).
    return units_from_fragments(job, grouped, carry=["rows"], orders=not job.send.store_resolves)


_POS = "__pos"  # a row's place in the extract: file << 32 | row


def _kp(j: int) -> str:
    return f"__kp_{j}"


def _ko(j: int) -> str:
    return f"__ko_{j}"


def _orders(job: Job, chunk: list[int], ordered: bool) -> pl.Expr:
    """JSON ``{"o<j>": order, "p<j>": position}`` of the winning row of each trait ``j`` the
    chunk sends (null for a trait it does not send); read back by ``unit_orders``."""
    fields: list[pl.Expr] = []
    for j in chunk:
        sent = pl.col(_fragment_column(j)).is_not_null()
        order = pl.col(_ko(j)) if ordered else pl.lit(None, pl.Int64)
        fields.append(pl.when(sent).then(order).alias(f"o{j}"))
        fields.append(pl.when(sent).then(pl.col(_kp(j))).alias(f"p{j}"))
    return pl.struct(fields).struct.json_encode()


OrderKey = tuple[bool, Any, int]  # (has an order, the order, file << 32 | row): compares as sorted


def unit_orders(orders: str | None) -> dict[int, OrderKey]:
    """Per trait index the unit sends, the sort key of the row its value came from; keys of
    two units compare as plan.py's rule (order_by, nulls first, then file, then row)."""
    if not orders:
        return {}
    data: dict[str, Any] = json.loads(orders)
    keys: dict[int, OrderKey] = {}
    for name, position in data.items():
        if name.startswith("p") and position is not None:
            order = data.get("o" + name[1:])
            keys[int(name[1:])] = (order is not None, order, int(position))
    return keys


def encode_trait(job: Job, j: int) -> pl.Expr:
    """Trait ``j``'s value column as its JSON fragment (``"trait":value``), named as
    ``units_from_fragments`` expects; wrap it in ``when`` to leave the trait out of a body."""
    return _encode(job, j).alias(_fragment_column(j))


def job_chunks(job: Job) -> list[list[int]]:
    """The job's traits as request chunks (identifier traits in each, for bulk and import;
    for Segment, at most ``SEGMENT_TRAITS`` a chunk, one identify event each)."""
    if job.connection.segment:
        return chunk_traits([("", t.trait) for t in job.traits], 1, SEGMENT_TRAITS)
    ids = identifier_traits(job) if job.send.store_resolves else []
    return chunk_traits([(t.group, t.trait) for t in job.traits], always=ids)


# Segment: traits one identify may carry. The docs disagree at exactly 300 (Engage rejects
# 300 or more, Unify drops more than 300): 299, less the email trait an event may add.
SEGMENT_TRAITS: Final = 298


def _ids(k: int) -> str:
    return f"__ids_{k}"  # a person's distinct values of identifier k, oldest row first


def _latest_id(k: int) -> str:
    return f"__idl_{k}"  # the value of identifier k in the person's latest row that has one


STAMP: Final = "__stamp"  # the person's latest order_by value: the events' timestamp


def segment_aggs(job: Job) -> list[pl.Expr]:
    """Per person (rows sorted oldest first), what their identify events carry besides traits:
    every value of each identifier, the latest one, and the latest order_by value."""
    aggs: list[pl.Expr] = []
    for k in range(len(job.identity.identifiers)):
        column = pl.col(identifier_column(k))
        aggs.append(column.drop_nulls().unique(maintain_order=True).alias(_ids(k)))
        aggs.append(column.last(ignore_nulls=True).alias(_latest_id(k)))
    aggs.append(pl.col(ORDER).last(ignore_nulls=True).alias(STAMP))
    return aggs


def segment_columns(job: Job) -> list[str]:
    """The columns ``segment_aggs`` makes (what ``units_from_fragments`` reads for Segment)."""
    ids = range(len(job.identity.identifiers))
    return [name for k in ids for name in (_ids(k), _latest_id(k))] + [STAMP]


def addressed_identity(job: Job) -> list[pl.Expr]:
    """``segment_aggs``' columns for rows whose ``TARGET`` is a Profile API address
    (``type:value``, ``reconcile --fix``): the person as Segment already holds them, named by
    that one identifier; no timestamp, so the fix is the latest write."""
    parts = pl.col(TARGET).str.splitn(":", 2)
    id_type, value = parts.struct.field("field_0"), parts.struct.field("field_1")
    exprs: list[pl.Expr] = []
    for k, identifier in enumerate(job.identity.identifiers):
        mine = pl.when(id_type == identifier.id_type).then(value)
        exprs.append(
            pl.when(mine.is_not_null())
            .then(pl.concat_list(mine))
            .otherwise(pl.lit([], pl.List(pl.String)))
            .alias(_ids(k))
        )
        exprs.append(mine.alias(_latest_id(k)))
    exprs.append(pl.lit(None, pl.Datetime("us", "UTC")).alias(STAMP))
    return exprs


def _json_string(value: pl.Expr) -> pl.Expr:
    """A string column as JSON string literals (quotes and escapes as ``json_encode`` writes);
    null stays null."""
    encoded = pl.struct(value.alias("s")).struct.json_encode()
    return pl.when(value.is_not_null()).then(
        encoded.str.strip_prefix('{"s":').str.strip_suffix("}")
    )


def _identify_body(job: Job, chunk: list[int], stamped: bool) -> pl.Expr:
    """One identify event of a chunk (null when the chunk sends no trait): ``userId`` and
    ``anonymousId`` from those identifiers, the chunk's traits with ``email`` (the latest email
    identifier, lower-cased), every other identifier value in ``context.externalIds``, and the
    latest order_by as ``timestamp``. ``messageId`` is the delivery's to add (it names the job
    and the space, which a plan does not)."""
    identifiers = job.identity.identifiers
    fields: list[pl.Expr] = [pl.lit('"type":"identify"')]
    external: list[pl.Expr] = []
    mapped = {t.trait for t in job.traits}
    email: pl.Expr | None = None
    for k, identifier in enumerate(identifiers):
        field = SEGMENT_FIELDS.get(identifier.id_type)
        latest = pl.col(_latest_id(k))
        if field is not None:
            fields.append(pl.concat_str(pl.lit(f'"{field}":'), _json_string(latest)))
            continue
        if identifier.id_type == "email" and "email" not in mapped:
            email = pl.concat_str(pl.lit('"email":'), _json_string(latest))
        item = pl.struct(
            pl.element().alias("id"),
            pl.lit(identifier.id_type).alias("type"),
            pl.lit("users").alias("collection"),
            pl.lit("none").alias("encoding"),
        ).struct.json_encode()
        values = pl.col(_ids(k)).list.eval(item).list.join(",")
        external.append(pl.when(pl.col(_ids(k)).list.len() > 0).then(values))
    fragments = [pl.col(_fragment_column(j)) for j in chunk]
    traits = pl.concat_str([*fragments, *([email] if email is not None else [])], separator=",",
                           ignore_nulls=True)  # fmt: skip
    fields.append(pl.concat_str(pl.lit('"traits":{'), traits, pl.lit("}")))
    if external:
        ids = pl.concat_str(external, separator=",", ignore_nulls=True)
        context = pl.concat_str(pl.lit('"context":{"externalIds":['), ids, pl.lit("]}"))
        fields.append(pl.when(ids != "").then(context))
    if stamped:
        stamp = pl.col(STAMP)
        text = stamp.dt.convert_time_zone("UTC").dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ")
        # Segment may not ingest events dated before 1970: those go without a timestamp, as
        # if sent now (the traits are the same; only the profile's history date differs).
        fields.append(pl.when(stamp.dt.year() >= 1970).then(pl.concat_str(
            pl.lit('"timestamp":"'), text, pl.lit('"'))))  # fmt: skip
    body = pl.concat_str(pl.lit("{"), pl.concat_str(fields, separator=",", ignore_nulls=True),
                         pl.lit("}"))  # fmt: skip
    sent = pl.any_horizontal([f.is_not_null() for f in fragments])
    return pl.when(sent).then(body)


def units_from_fragments(
    job: Job, fragments: pl.LazyFrame, carry: Sequence[str] = (), orders: bool = False
) -> pl.LazyFrame:
    """Request units from one row per target holding each trait's fragment (null: not sent):
    one body per target and chunk that sends anything, with its key, action and content hash.
    Also what ``reconcile --fix`` uses, so a fix is encoded exactly as a plan. With ``orders``,
    ``fragments`` also holds ``plan_units``' per-trait key columns, and units an ``orders``
    column."""
    segment = job.connection.segment
    ids = identifier_traits(job) if job.send.store_resolves and not segment else []
    chunks = job_chunks(job)
    ordered = job.source.order_by is not None
    with_orders = ["orders"] if orders else []
    stamped = segment and ordered and fragments.collect_schema()[STAMP].is_temporal()

    def body(c: int, chunk: list[int]) -> pl.Expr:
        if segment:
            return _identify_body(job, chunk, stamped)
        return _body(job, chunk, None if c == 0 or not ids else chunk[len(ids) :])

    per_chunk = [
        fragments.select(
            pl.col(TARGET),
            pl.lit(c, pl.UInt16).alias("chunk"),
            body(c, chunk).alias("body"),
            *(pl.col(name) for name in carry),
            *([_orders(job, chunk, ordered).alias("orders")] if orders else []),
        ).filter(pl.col("body").is_not_null())
        for c, chunk in enumerate(chunks)
    ]
    units = pl.concat(per_chunk)
    creating = pl.col(TARGET).str.starts_with(NEW)
    create = UPSERT if job.send.store_resolves else "create"
    return units.select(
        pl.concat_str(pl.col(TARGET), pl.lit("#"), pl.col("chunk").cast(pl.String)).alias("key"),
        pl.when(~creating).then(pl.col(TARGET)).alias("profile_id"),
        pl.when(creating).then(pl.lit(create)).otherwise(pl.lit("patch")).alias("action"),
        pl.col("chunk"),
        pl.col("body"),
        _content_hash(pl.col("body")).alias("hash"),
        *(pl.col(name) for name in [*carry, *with_orders]),
    )


BUCKET_ROWS = 1_500_000  # rows one sort may hold: ~0.5 GB at the widths seen in bench/
# zstd at level 1 writes the plan ~35 % faster than polars' default level, and no larger (1M-row
# bench: 0.14 s and 21.0 MiB against 0.22 s and 21.9 MiB).
PLAN_LEVEL: Final = 1


def write_units(job: Job, resolved: pl.LazyFrame, path: Path, rows: int, scratch: Path) -> None:
    """Write ``plan_units`` to ``path`` in bounded memory.

    A profile's rows must meet in one sort, so large inputs are split by a hash of the target
    into buckets planned one after another and then merged, a streaming copy.
    """
    one_pass = units_sink(job, resolved, path, rows)
    if one_pass is not None:
        pl.collect_all([one_pass])
        return
    buckets = max(1, -(-rows // BUCKET_ROWS))
    bucket = pl.col(TARGET).hash(seed=7) % buckets
    parts = []
    for b in range(buckets):
        part = scratch / f"units-{b:04d}.parquet"
        plan_units(job, resolved.filter(bucket == b)).sink_parquet(part, compression="lz4")
        parts.append(part)
    pl.scan_parquet(parts).sink_parquet(path, compression="zstd", compression_level=PLAN_LEVEL)


def units_sink(job: Job, resolved: pl.LazyFrame, path: Path, rows: int) -> pl.LazyFrame | None:
    """The lazy sink of ``plan_units`` to ``path`` when ``rows`` fit one sort, so the caller
    can run it in one pass with other readers of ``resolved`` (``pl.collect_all``); None when
    they need buckets (``write_units``)."""
    if rows > BUCKET_ROWS:
        return None
    sink = plan_units(job, resolved).sink_parquet(
        path, compression="zstd", compression_level=PLAN_LEVEL, lazy=True
    )
    assert sink is not None  # lazy=True returns the sink's plan
    return sink
