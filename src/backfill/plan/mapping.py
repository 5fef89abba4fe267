"""Columns to traits: coercion, identifier normalization and cell-level validation, in polars.

``map_batch(job, batch)`` is the stage's one entry: it turns one source batch into the columns
below, with every rule written as a polars expression (phone numbers that the vectorized US fast
path cannot settle are normalized once per distinct value with ``phonenumbers``). A cell that
cannot be coerced never stops a row: it becomes a reason in ``__invalid`` and the row's other
traits carry on.

Output columns (``j`` indexes ``job.traits``, ``k`` indexes ``job.identity.identifiers``):
``__file``, ``__row``; ``__pid`` (a valid profile ID or null); ``__id_k`` (normalized
identifier or null); ``__order`` (sort key or null); ``__v_j`` (typed trait value) with
``__p_j`` (true when the trait is to be sent: a value, or a blank cell under ``nulls = "delete"``);
``__invalid`` (``column: reason; ...`` or null).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import polars as pl

from backfill.config import (
    SEGMENT_BLOCKED,
    SEGMENT_BLOCKED_PATTERN,
    Identifier,
    Job,
    TraitMapping,
)
from backfill.errors import InvalidIdentifierError
from backfill.plan.normalize import SPACE_CHARS, normalize, phone_countries, reads_national_as_nanp
from backfill.plan.source import FILE, PROBLEM, ROW, unread

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

PID = "__pid"
ORDER = "__order"
INVALID = "__invalid"
PROFILE_ID_PATTERN = r"^mem_profile_[0-7][0-9a-z]{25}$"
TRUE = ("true", "yes", "y", "t", "1")
FALSE = ("false", "no", "n", "f", "0")
# Phone shapes the vectorized path settles exactly as normalize() does (tests/
# test_identifier_agreement.py proves it over every region phonenumbers knows); anything else goes
# to phonenumbers once per distinct value. ASCII digits and " .-" only: polars' \d and \s are
# Unicode-wide, phonenumbers' separators are not the same set.
_SEP = r"[ .\-]"
# A US-shaped number: optional 1 or +1 (a "+" not followed by 1 is another country), an area code
# starting 2-9. The +1 is required under a region that does not read national numbers as the US.
US_PHONE = rf"^(?:\+?1{_SEP}?)?\(?([2-9][0-9]{{2}})\)?{_SEP}?([0-9]{{3}}){_SEP}?([0-9]{{4}})$"
PLUS_ONE_PHONE = rf"^\+1{_SEP}?\(?([2-9][0-9]{{2}})\)?{_SEP}?([0-9]{{3}}){_SEP}?([0-9]{{4}})$"
# +<country code><national number>, digit groups split by one separator.
PLUS_PHONE = rf"^\+[0-9]+(?:{_SEP}[0-9]+)*$"
# A country code written without "+" (a US-reading region only; a leading 0 or 1 is a prefix).
BARE_PHONE = rf"^[2-9][0-9]*(?:{_SEP}[0-9]+)*$"
# Limits on one trait value (memory-api.md, "Published limits"). The service counts a string's
# characters as Unicode code points (what polars' len_chars and Python's len count).
MAX_STRING = 1024
MAX_ITEMS = 100


@dataclass(frozen=True)
class Caps:
    """The most one value may hold where the job writes: a cell over it is reported alone,
    where sending it would fail the whole request."""

    max_string: int = MAX_STRING
    max_items: int = MAX_ITEMS


MEMORY_CAPS: Final = Caps()
# Segment documents no cap on one value, only 32 KB an event (segment-api.md, 1): a longer
# string can never be sent, and 10,000 is the most properties an event keeps.
SEGMENT_CAPS: Final = Caps(max_string=32_000, max_items=10_000)


def caps_for(job: Job) -> Caps:
    return SEGMENT_CAPS if job.connection.segment else MEMORY_CAPS


# JSON numbers are IEEE doubles: a whole number beyond 2^53 would land as a different number
# (12345678901234567891 as ...890), so the service refuses one, and so does mapping.
MAX_EXACT = 2**53
_INTEGER = r"^[+-]?\d+$"
_VALUE_TYPES: dict[str, pl.DataType] = {
    "STRING": pl.String(),
    "NUMBER": pl.Float64(),
    "BOOLEAN": pl.Boolean(),
    "ARRAY": pl.List(pl.String()),
}


def identifier_column(k: int) -> str:
    return f"__id_{k}"


def value_column(j: int) -> str:
    return f"__v_{j}"


def present_column(j: int) -> str:
    return f"__p_{j}"


def _text(column: str, dtype: pl.DataType) -> pl.Expr:
    """The cell as stripped text, null when blank. Lists and structs read as their JSON and
    binary as hex: only ever quoted in a report, never sent."""
    expr = pl.col(column)
    if dtype == pl.Binary:
        return pl.when(expr.is_not_null()).then(pl.concat_str(pl.lit("0x"), expr.bin.encode("hex")))
    if _holds_binary(dtype):
        return pl.when(expr.is_not_null()).then(pl.lit(f"<{dtype}>"))
    if dtype.is_nested():
        encoded = pl.struct(expr.alias("v")).struct.json_encode()
        return pl.when(expr.is_not_null()).then(encoded.str.slice(5).str.strip_suffix("}"))
    if dtype != pl.String:
        expr = expr.cast(pl.String)
    expr = expr.str.strip_chars()
    return pl.when(expr.str.len_chars() > 0).then(expr)


def _holds_binary(dtype: PolarsDataType) -> bool:
    """Binary at any depth (polars cannot write it as JSON, nor cast invalid UTF-8 to text)."""
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_holds_binary(f.dtype) for f in dtype.fields)
    return False


def _sample(text: pl.Expr) -> pl.Expr:
    """A short quote of a bad cell for the report."""
    return pl.concat_str(pl.lit('"'), text.str.slice(0, 40), pl.lit('"'))


@dataclass(frozen=True)
class Problem:
    """A cell rule: ``flag`` is true where a row breaks it; ``message`` says how (per row)."""

    flag: pl.Expr
    message: pl.Expr


def _problem(column: str, text: pl.Expr, flag: pl.Expr, what: str | pl.Expr) -> Problem:
    """``column: "preview" what``; ``what`` may be an expression to say how far off a cell is."""
    reason = pl.lit(what) if isinstance(what, str) else what
    return Problem(flag, pl.concat_str(pl.lit(f"{column}: "), _sample(text), reason))


def _filled(column: str, dtype: pl.DataType) -> pl.Expr:
    """True where the cell is not blank (cheaper than stripping it)."""
    if dtype == pl.String:
        return pl.col(column).str.contains(r"\S")
    return pl.col(column).is_not_null()


def _trait(
    j: int, mapping: TraitMapping, dtype: pl.DataType, caps: Caps = MEMORY_CAPS
) -> tuple[pl.Expr, Problem | None]:
    """(typed value, the problem a cell can have) for trait ``j``; the problem's flag reads
    the value column the expression produces, so the rule is not evaluated twice.

    Every limit the service puts on one value is checked here: a cell over one is reported and
    dropped alone, where sending it would fail the profile's whole request with a 400.
    """
    column, kind = mapping.column, mapping.type
    refused = _refused(dtype, kind)
    if refused is not None:
        flag = pl.col(column).is_not_null()
        if isinstance(dtype, pl.List | pl.Array):
            flag = flag & (_listed(pl.col(column), dtype).list.len() > 0)  # [] is blank
        value = pl.lit(None, _VALUE_TYPES[kind])
        return value, _problem(column, _text(column, dtype), flag, refused)
    if kind == "ARRAY":
        return _array(j, mapping, dtype, caps)
    text = _text(column, dtype)
    unset = _filled(column, dtype) & pl.col(value_column(j)).is_null()
    if kind == "NUMBER":
        value, why = _number(pl.col(column), dtype, text)
        return value, _problem(column, text, unset, why)
    if kind == "BOOLEAN":
        if dtype == pl.Boolean:
            return pl.col(column), None
        words = {**dict.fromkeys(TRUE, True), **dict.fromkeys(FALSE, False)}
        value = text.str.to_lowercase().replace_strict(words, default=None, return_dtype=pl.Boolean)
        what = " is not a BOOLEAN (true/false, yes/no, 1/0)"
        return value, _problem(column, text, unset, what)
    length = text.str.len_chars()
    most = caps.max_string
    why = pl.concat_str(
        pl.lit(" has "), length.cast(pl.String), pl.lit(f" characters; a STRING holds {most}")
    )
    if dtype == pl.String:
        # Over the limit needs over MAX_STRING bytes: only those few cells are stripped again.
        long = pl.when(pl.col(column).str.len_bytes() > most).then(text)
        unset = pl.col(value_column(j)).is_null() & long.is_not_null()
    return pl.when(length <= most).then(text), _problem(column, text, unset, why)


def _refused(dtype: pl.DataType, kind: str) -> str | None:
    """Why no cell of a ``dtype`` column can be a ``kind`` value (None: cells are judged one by
    one). Source refuses these columns at job check; mapping must still never crash on them."""
    if _holds_binary(dtype):
        return " is binary data, not text"
    if isinstance(dtype, pl.Struct) or dtype == pl.Object:
        return f" is a {dtype.base_type()}; a {kind} trait takes text or a typed value"
    if isinstance(dtype, pl.List | pl.Array):
        if kind != "ARRAY":
            return " is a list; only an ARRAY trait takes one"
        inner = dtype.inner
        if isinstance(inner, pl.List | pl.Array):
            return " is a nested list; the service takes no nested arrays"
        if inner.is_nested() or inner == pl.Null or inner == pl.Object:
            return f" holds {inner} items; array items are strings, numbers or booleans"
    return None


def _number(col: pl.Expr, dtype: pl.DataType, text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(the cell as a finite Float64 a double holds exactly, or null; why not, where it is not).

    Text takes polars' plain decimal and exponent forms only ("1,200", "0x1" are refused).
    """
    beyond = " is a whole number beyond 2^53 that a NUMBER cannot hold exactly (map it as STRING)"
    if dtype.is_integer():
        return pl.when(col.is_between(-MAX_EXACT, MAX_EXACT)).then(col.cast(pl.Float64)), pl.lit(
            beyond
        )
    if dtype.is_numeric():
        value = col.cast(pl.Float64)
        return pl.when(value.is_finite()).then(value), pl.lit(" is not a finite NUMBER")
    parsed = text.cast(pl.Float64, strict=False)
    # Only a whole number of 2^53 or more (16 digits) can be off: those few cells are read
    # again, exactly; the byte length of the others settles it without parsing them twice.
    raw = col.cast(pl.String)
    big = pl.when(raw.str.len_bytes() >= 16).then(raw).str.strip_chars()
    whole = big.cast(pl.Int64, strict=False)
    exact = ~big.str.contains(_INTEGER) | whole.is_between(-MAX_EXACT, MAX_EXACT).fill_null(False)
    value = pl.when(parsed.is_finite() & exact.fill_null(True)).then(parsed)
    why = (
        pl.when(parsed.is_null())
        .then(pl.lit(" is not a NUMBER"))
        .when(~parsed.is_finite())
        .then(pl.lit(" is not a finite NUMBER"))
        .otherwise(pl.lit(beyond))
    )
    return value, why


def _listed(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A List or Array column as a List."""
    return col.arr.to_list() if isinstance(dtype, pl.Array) else col


def _array(
    j: int, mapping: TraitMapping, dtype: pl.DataType, caps: Caps
) -> tuple[pl.Expr, Problem | None]:
    """An ARRAY value: split text, a typed list keeping its items' JSON type (numbers stay
    numbers, so what lands equals the source), or one typed cell as a one-item list.

    Strings are stripped and blank ones dropped, as blank cells are; an array left empty is a
    blank cell. Null items, numbers a double cannot hold and more than MAX_ITEMS items are
    refused, as the service would refuse them.
    """
    column = mapping.column
    col = pl.col(column)
    text = _text(column, dtype)
    typed = isinstance(dtype, pl.List | pl.Array) or (
        mapping.split is None and (dtype.is_numeric() or dtype == pl.Boolean)
    )
    if not typed:
        return _text_array(j, mapping, dtype, text, caps)
    inner: PolarsDataType
    if isinstance(dtype, pl.List | pl.Array):
        items, inner = _listed(col, dtype), dtype.inner
    else:
        items, inner = pl.when(col.is_not_null()).then(pl.concat_list(col)), dtype
    off = pl.lit(False)
    why_off = ""
    if inner.is_integer():
        off = items.list.eval(~pl.element().is_between(-MAX_EXACT, MAX_EXACT)).list.any()
        why_off = " has a whole number beyond 2^53 that a NUMBER cannot hold exactly"
        items = items.cast(pl.List(pl.Int64), strict=False)
    elif inner.is_numeric():
        items = items.cast(pl.List(pl.Float64))
        off = items.list.eval(~pl.element().is_finite()).list.any()
        why_off = " has an item that is not a finite NUMBER"
    elif inner != pl.Boolean:
        element = pl.element().cast(pl.String).str.strip_chars()
        blank = element.str.len_chars() == 0
        items = items.list.eval(element.filter(~blank.fill_null(False)))
    off = off.fill_null(False)
    count = items.list.len()
    holes = items.list.drop_nulls().list.len() < count
    flag = pl.col(value_column(j)).is_null() & (count > 0)
    why = (
        pl.when(holes)
        .then(pl.lit(" has null items; the service takes none in an ARRAY"))
        .when(off)
        .then(pl.lit(why_off))
        .otherwise(_too_many(count, caps))
    )
    ok = count.is_between(1, caps.max_items) & ~holes & ~off
    return pl.when(ok).then(items), _problem(column, text, flag.fill_null(False), why)


def _text_array(
    j: int, mapping: TraitMapping, dtype: pl.DataType, text: pl.Expr, caps: Caps
) -> tuple[pl.Expr, Problem | None]:
    """An ARRAY of strings from text: split, or the whole cell as one item. Only the item
    count can be off, and only where the cell holds MAX_ITEMS separators or more."""
    item = pl.element().str.strip_chars()
    if mapping.split is None:
        return pl.when(text.is_not_null()).then(pl.concat_list(text)), None
    items = text.str.split(mapping.split).list.eval(item.filter(item.str.len_chars() > 0))
    count = items.list.len()
    raw = pl.col(mapping.column) if dtype == pl.String else text
    many = raw.str.count_matches(mapping.split, literal=True) >= caps.max_items
    flag = pl.col(value_column(j)).is_null() & many.fill_null(False)
    value = pl.when(count.is_between(1, caps.max_items)).then(items)
    return value, _problem(mapping.column, text, flag, _too_many(count, caps))


def _too_many(count: pl.Expr, caps: Caps) -> pl.Expr:
    return pl.concat_str(
        pl.lit(" has "), count.cast(pl.String), pl.lit(f" items; an ARRAY holds {caps.max_items}")
    )


def normalize_column(frame: pl.DataFrame, identifier: Identifier) -> pl.Series:
    """``identifier.column`` of ``frame`` normalized; null where blank or rejected.

    Equal to ``normalize()`` on every non-blank cell (blank: nothing left after ``str.strip()``).
    Polars expressions settle what they can decide exactly; the rest (non-ASCII emails, phone
    shapes outside the vectorized rules) goes to ``normalize()`` once per distinct value.
    """
    values = frame.get_column(identifier.column)
    if values.dtype != pl.String:
        values = values.cast(pl.String)
    text = values.str.strip_chars(SPACE_CHARS)
    text = pl.select(pl.when(text.str.len_bytes() > 0).then(text)).to_series()
    if identifier.normalization == "trim":
        return text.alias(identifier.column)
    if identifier.normalization == "none":
        return pl.select(pl.when(text.is_not_null()).then(values)).to_series()
    if identifier.normalization == "email":
        settled = _emails(text)
    elif identifier.normalization == "phone":
        settled = _phones(text, identifier.default_region)
    else:
        raise InvalidIdentifierError(f"unknown normalization {identifier.normalization!r}")
    # settled: the answer, "" where rejected, null where only normalize() can say.
    open_ = settled.is_null() & text.is_not_null()
    if open_.any():
        answers: dict[str, str] = {}
        for value in text.filter(open_).unique().to_list():
            try:
                answers[value] = normalize(
                    value, identifier.normalization, identifier.default_region
                )
            except InvalidIdentifierError:
                answers[value] = ""
        settled = settled.fill_null(
            text.replace_strict(answers, default=None, return_dtype=pl.String)
        )
    return pl.select(pl.when(settled.str.len_bytes() > 0).then(settled)).to_series()


def map_batch(job: Job, batch: pl.DataFrame) -> pl.DataFrame:
    """One source batch in, the mapped columns out (see the module docstring)."""
    schema = batch.schema
    exprs: list[pl.Expr | pl.Series] = []
    problems: list[Problem] = []
    pid_col = job.identity.profile_id_column
    if pid_col is not None:
        text = _text(pid_col, schema[pid_col])
        batch = batch.with_columns(
            pl.when(text.str.contains(PROFILE_ID_PATTERN)).then(text).alias(PID)
        )
        flag = pl.col(PID).is_null() & _filled(pid_col, schema[pid_col])
        problems.append(_problem(pid_col, text, flag, " is not a Memory profile ID"))
        # Identifiers matter only where there is no valid profile ID: they are neither
        # normalized nor judged on the rows that have one.
        open_rows: pl.Series | None = batch.get_column(PID).is_null()
    else:
        batch = batch.with_columns(pl.lit(None, pl.String).alias(PID))
        open_rows = None
    exprs += [
        _only(batch, open_rows, identifier).alias(identifier_column(k))
        for k, identifier in enumerate(job.identity.identifiers)
    ]
    blocked = _blocked(job, schema)
    order = job.source.order_by
    if order is None:
        exprs.append(pl.lit(None, pl.Datetime("us", "UTC")).alias(ORDER))
    elif schema[order] == pl.String:
        exprs.append(_order_key(batch, order).alias(ORDER))
    else:  # one type per kind, so batches of different files concatenate
        exprs.append(typed_order(order, schema[order]).alias(ORDER))
    presents: list[pl.Expr] = []
    caps = caps_for(job)
    for j, mapping in enumerate(job.traits):
        value, problem = _trait(j, mapping, schema[mapping.column], caps)
        exprs.append(value.alias(value_column(j)))
        # Read from the value column once it exists: eager polars would compute the value again.
        present = pl.col(value_column(j)).is_not_null()
        if mapping.nulls == "delete":  # a blank deletes; a cell source could not read does not
            blank = _text(mapping.column, schema[mapping.column]).is_null()
            present = present | (blank & ~unread(mapping.column))
        presents.append(present.alias(present_column(j)))
        if problem is not None:
            problems.append(problem)
    # Identifier cells that normalization rejects are reported, and take no part in resolution.
    for k, identifier in enumerate(job.identity.identifiers):
        raw = _text(identifier.column, schema[identifier.column])
        flag = (
            pl.col(PID).is_null()
            & _filled(identifier.column, schema[identifier.column])
            & pl.col(identifier_column(k)).is_null()
        )
        what: str | pl.Expr = f" is not a valid {identifier.normalization} identifier"
        if k in blocked:
            what = pl.when(blocked[k]).then(pl.lit(BLOCKED)).otherwise(pl.lit(what))
        problems.append(_problem(identifier.column, raw, flag, what))
    # What source could not read faithfully (bad bytes, a ragged line) is reported as well.
    problems.append(Problem(pl.col(PROBLEM).is_not_null(), pl.col(PROBLEM)))
    work = batch.with_columns(exprs)
    if blocked:
        work = work.with_columns(
            pl.when(~flag).then(pl.col(identifier_column(k))).alias(identifier_column(k))
            for k, flag in blocked.items()
        )
    work = work.with_columns(_unsendable_identifiers(job, schema))
    return work.with_columns(*presents, _invalid(work, problems).alias(INVALID)).select(
        mapped_columns(job)
    )


BLOCKED: Final = " is a value Segment blocks as an identifier (it would match no one)"


def _blocked(job: Job, schema: pl.Schema) -> dict[int, pl.Expr]:
    """Segment: per identifier, where its cell holds a blocked value (``SEGMENT_BLOCKED``, the
    0-and-dash pattern, ``identity.blocked_values``). Segment never promotes such a value to
    an identifier, so a row keyed by it would land on no profile or a wrong one: the cell is
    reported and takes no part in resolution, like a value that fails normalization."""
    if not job.connection.segment:
        return {}
    exact = [*SEGMENT_BLOCKED, *job.identity.blocked_values]
    flags = {}
    for k, identifier in enumerate(job.identity.identifiers):
        text = _text(identifier.column, schema[identifier.column]).str.strip_chars()
        flag = text.str.contains(SEGMENT_BLOCKED_PATTERN) | text.is_in(exact)
        flags[k] = (flag & (text.str.len_chars() > 0)).fill_null(False)
    return flags


def _unsendable_identifiers(job: Job, schema: pl.Schema) -> list[pl.Expr]:
    """A trait that writes an identifier the row's cell fails to normalize would make the store
    refuse the whole request (the trait is promoted: its value must be a valid identifier); the
    cell is reported (``map_batch``'s identifier problem) and the trait left out, so the rest of
    the row still lands. Rows with a profile ID are not judged, as there."""
    exprs = []
    for j, mapping in enumerate(job.traits):
        for k, identifier in enumerate(job.identity.identifiers):
            if identifier.column == mapping.column:
                bad = (
                    pl.col(PID).is_null()
                    & _filled(mapping.column, schema[mapping.column])
                    & pl.col(identifier_column(k)).is_null()
                )
                value = pl.col(value_column(j))
                if job.connection.segment and mapping.type == "STRING":
                    # Segment promotes a trait-keyed identifier from the trait: it must hold
                    # the value as normalized (an E.164 phone, a lower-case email).
                    value = pl.col(identifier_column(k))
                exprs.append(pl.when(bad).then(None).otherwise(value).alias(value_column(j)))
                break
    return exprs


def typed_order(column: str, dtype: pl.DataType) -> pl.Expr:
    """A typed order_by column as Float64 (numbers) or UTC Datetime(us) (dates, datetimes:
    naive ones read as UTC, as in text); ``source.check_columns`` refuses other types."""
    col = pl.col(column)
    if dtype.is_numeric():
        return col.cast(pl.Float64)
    if dtype == pl.Date:
        col, dtype = col.cast(pl.Datetime("us")), pl.Datetime("us")
    if isinstance(dtype, pl.Datetime):
        col = col.dt.cast_time_unit("us")
        if dtype.time_zone is None:
            return col.dt.replace_time_zone("UTC")
        return col.dt.convert_time_zone("UTC")
    return pl.lit(None, pl.Datetime("us", "UTC"))  # a Null-typed column: no order values


def _invalid(work: pl.DataFrame, problems: list[Problem]) -> pl.Series:
    """``column: reason; ...`` per row, built only on the rows that break a rule."""
    out = pl.repeat(None, work.height, dtype=pl.String, eager=True)
    if not problems:
        return out
    bad = work.select(pl.any_horizontal([p.flag for p in problems])).to_series()
    if not bad.any():
        return out
    messages = work.filter(bad).select(
        pl.concat_str(
            [pl.when(p.flag).then(p.message) for p in problems], separator="; ", ignore_nulls=True
        )
    )
    return out.scatter(bad.arg_true(), messages.to_series())


# ISO-8601 shapes tried in turn, each only while cells are left unparsed: one pass for a
# consistent column, and no format guessed from one row and forced on the others.
ORDER_FORMATS = (
    "%Y-%m-%dT%H:%M:%SZ",  # fixed width: polars' fast path, and what most exports write
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)


def _order_key(batch: pl.DataFrame, column: str) -> pl.Series:
    """The order_by text as UTC datetimes (naive ones read as UTC); null when unreadable."""
    text = batch.select(_text(column, pl.String())).to_series()
    out = pl.repeat(None, batch.height, dtype=pl.Datetime("us", "UTC"), eager=True)
    for fmt in ORDER_FORMATS:
        left = text.is_not_null() & out.is_null()
        if not left.any():
            break
        parsed = text.filter(left).str.to_datetime(
            fmt, strict=False, time_zone="UTC", time_unit="us"
        )
        out = out.scatter(left.arg_true(), parsed)
    return out


def _only(batch: pl.DataFrame, rows: pl.Series | None, identifier: Identifier) -> pl.Series:
    """``normalize_column`` on the rows selected by the boolean ``rows`` (all when None)."""
    if rows is None or rows.all():
        return normalize_column(batch, identifier)
    out = pl.repeat(None, batch.height, dtype=pl.String, eager=True)
    if rows.any():
        picked = batch.filter(rows)
        out = out.scatter(rows.arg_true(), normalize_column(picked, identifier))
    return out


def mapped_columns(job: Job) -> list[str]:
    """The columns ``map_batch`` returns, in order."""
    return (
        [FILE, ROW, PID]
        + [identifier_column(k) for k in range(len(job.identity.identifiers))]
        + [ORDER]
        + [c for j in range(len(job.traits)) for c in (value_column(j), present_column(j))]
        + [INVALID]
    )


# --- identifiers: the vectorized rules behind normalize_column ------------------------------
# Each returns the normalized value, "" where normalize() rejects the value, or null where it
# cannot decide exactly (then normalize_column asks normalize() itself).


def _emails(text: pl.Series) -> pl.Series:
    """ASCII addresses: every str.isspace() character removed, lower-cased. Non-ASCII ones are
    left open: Python's lower() and Rust's differ on letters newer than the runtime's Unicode."""
    ascii_ = text.str.len_bytes() == text.str.len_chars()  # one byte a character: ASCII
    cleaned = text.str.replace_all(r"[\t\n\x0b\x0c\r\x1c-\x1f ]+", "").str.to_lowercase()
    return pl.select(pl.when(ascii_).then(cleaned)).to_series()


def _phones(text: pl.Series, region: str) -> pl.Series:
    """US shapes by regex; ``+<code><digits>`` (and, in a US-reading region, a country code
    without "+") by phonenumbers' per-country lengths; the rest open."""
    nanp = reads_national_as_nanp(region)
    parts = text.str.extract_groups(US_PHONE if nanp else PLUS_ONE_PHONE)
    out = pl.select(
        pl.concat_str(pl.lit("+1"), *(parts.struct.field(str(g)) for g in (1, 2, 3)))
    ).to_series()
    left = out.is_null() & text.is_not_null()
    if not left.any():
        return out
    # Step by step, each column once: polars would evaluate the country code again in every
    # branch that reads it (about 3x the time of these few columns).
    text_ = pl.col("text")
    rest = (
        pl.DataFrame({"text": text.filter(left)})
        .with_columns(
            text_.str.replace_all(r"[^0-9]", "").alias("digits"),
            text_.str.contains(PLUS_PHONE).alias("plus"),
            (text_.str.contains(BARE_PHONE) if nanp else pl.lit(False)).alias("bare"),
        )
        .with_columns(_country_code(pl.col("digits")).alias("code"))
        .with_columns(pl.col("digits").str.slice(pl.col("code").str.len_bytes()).alias("national"))
    )
    digits, plus, bare = pl.col("digits"), pl.col("plus"), pl.col("bare")
    settled = rest.select(
        pl.when(bare & (digits.str.len_bytes() == 10))
        .then(pl.concat_str(pl.lit("+1"), digits))  # a US number split oddly: "31 7555 6789"
        .when(plus | bare)
        .then(_e164(digits, pl.col("code"), pl.col("national")))
    ).to_series()
    return out.scatter(left.arg_true(), settled)


def _country_code(digits: pl.Expr) -> pl.Expr:
    """The country code ``digits`` start with (the shortest that is one), or null."""
    codes = pl.Series(sorted(phone_countries().codes), dtype=pl.String).implode()
    first = [digits.str.slice(0, n) for n in (1, 2, 3)]
    return (
        pl.when(first[0].is_in(codes))
        .then(first[0])
        .when(first[1].is_in(codes))
        .then(first[1])
        .when(first[2].is_in(codes))
        .then(first[2])
    )


def _e164(digits: pl.Expr, code: pl.Expr, national: pl.Expr) -> pl.Expr:
    """``+digits`` if its country ``code`` accepts the ``national`` number's length, "" if not,
    null (phonenumbers decides) when there is no code up front or when phonenumbers might
    rewrite the national number (it starts with a national prefix)."""
    length = pl.concat_str(code, pl.lit(":"), national.str.len_bytes().cast(pl.String))
    lengths = pl.Series(sorted(phone_countries().lengths), dtype=pl.String)
    return (
        pl.when(code.is_null())  # no country code up front: phonenumbers may still read one
        .then(pl.lit(None, pl.String))  # ("+011 247..." strips the US exit code 011)
        .when(
            pl.concat_str(code, pl.lit("|"), national)
            .str.extract(_prefix_pattern(), 0)
            .str.len_bytes()
            > code.str.len_bytes() + 1
        )
        .then(pl.lit(None, pl.String))
        .when(length.is_in(lengths.implode()))
        .then(pl.concat_str(pl.lit("+"), digits))
        .otherwise(pl.lit(""))
    )


@functools.cache
def _prefix_pattern() -> str:
    """One regex over ``<code>|<national number>``: its match ends where phonenumbers'
    national_prefix_for_parsing, matched at the start of the national number (``re.match``),
    ends (Rust's leftmost-first alternation picks the same match). An empty prefix match
    rewrites nothing: Argentina's ``0?(...15)?`` matches every number, mostly with nothing."""
    by_prefix: dict[str, list[str]] = {}
    for code, prefix in phone_countries().prefixes.items():
        by_prefix.setdefault(prefix, []).append(code)
    branches = [
        f"(?:{'|'.join(sorted(codes))})\\|(?:{prefix})" for prefix, codes in by_prefix.items()
    ]
    return f"^(?:{'|'.join(branches)})"
