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

from dataclasses import dataclass

import polars as pl

from backfill.config import Identifier, Job, TraitMapping
from backfill.errors import InvalidIdentifierError
from backfill.normalize import normalize
from backfill.source import FILE, PROBLEM, ROW, unread

PID = "__pid"
ORDER = "__order"
INVALID = "__invalid"
PROFILE_ID_PATTERN = r"^mem_profile_[0-7][0-9a-z]{25}$"
TRUE = ("true", "yes", "y", "t", "1")
FALSE = ("false", "no", "n", "f", "0")
# US numbers the vectorized path settles exactly as phonenumbers would: optional +1 or 1, an area
# code starting 2-9, and the usual separators. Everything else goes to phonenumbers itself.
US_PHONE = r"^\+?(?:1[\s.\-]?)?\(?([2-9]\d{2})\)?[\s.\-]?(\d{3})[\s.\-]?(\d{4})$"


def identifier_column(k: int) -> str:
    return f"__id_{k}"


def value_column(j: int) -> str:
    return f"__v_{j}"


def present_column(j: int) -> str:
    return f"__p_{j}"


def _text(column: str, dtype: pl.DataType) -> pl.Expr:
    """The cell as stripped text, null when blank."""
    expr = pl.col(column)
    if dtype != pl.String:
        expr = expr.cast(pl.String)
    expr = expr.str.strip_chars()
    return pl.when(expr.str.len_chars() > 0).then(expr)


def _sample(text: pl.Expr) -> pl.Expr:
    """A short quote of a bad cell for the report."""
    return pl.concat_str(pl.lit('"'), text.str.slice(0, 40), pl.lit('"'))


@dataclass(frozen=True)
class Problem:
    """A cell rule: ``flag`` is true where a row breaks it; ``message`` says how (per row)."""

    flag: pl.Expr
    message: pl.Expr


def _problem(column: str, text: pl.Expr, flag: pl.Expr, what: str) -> Problem:
    return Problem(flag, pl.concat_str(pl.lit(f"{column}: "), _sample(text), pl.lit(what)))


def _filled(column: str, dtype: pl.DataType) -> pl.Expr:
    """True where the cell is not blank (cheaper than stripping it)."""
    if dtype == pl.String:
        return pl.col(column).str.contains(r"\S")
    return pl.col(column).is_not_null()


def _trait(j: int, mapping: TraitMapping, dtype: pl.DataType) -> tuple[pl.Expr, Problem | None]:
    """(typed value, the problem a cell can have) for trait ``j``; the problem's flag reads
    the value column the expression produces, so the rule is not evaluated twice."""
    text = _text(mapping.column, dtype)
    col = pl.col(mapping.column)
    kind = mapping.type
    if kind == "NUMBER":
        if dtype.is_numeric():
            value = col.cast(pl.Float64)
            return pl.when(value.is_finite()).then(value), None
        # polars' parse takes plain decimal and exponent forms only ("1,200", "0x1" fail);
        # nan and inf parse, and are refused as not finite.
        parsed = text.cast(pl.Float64, strict=False)
        value = pl.when(parsed.is_finite()).then(parsed)
        flag = _filled(mapping.column, dtype) & pl.col(value_column(j)).is_null()
        return value, _problem(mapping.column, text, flag, " is not a NUMBER")
    if kind == "BOOLEAN":
        if dtype == pl.Boolean:
            return col, None
        words = {**dict.fromkeys(TRUE, True), **dict.fromkeys(FALSE, False)}
        value = text.str.to_lowercase().replace_strict(words, default=None, return_dtype=pl.Boolean)
        flag = _filled(mapping.column, dtype) & pl.col(value_column(j)).is_null()
        what = " is not a BOOLEAN (true/false, yes/no, 1/0)"
        return value, _problem(mapping.column, text, flag, what)
    if kind == "ARRAY":
        if isinstance(dtype, pl.List):
            items = col.cast(pl.List(pl.String))
        elif mapping.split is not None:
            items = text.str.split(mapping.split)
        else:
            items = pl.concat_list(text)
        items = items.list.eval(
            pl.element().str.strip_chars().filter(pl.element().str.len_chars() > 0)
        )
        return pl.when(items.list.len() > 0).then(items), None
    return text, None


def _identifier(identifier: Identifier, dtype: pl.DataType) -> pl.Expr:
    """Vectorized normalization; phones outside the US fast path are left for ``_phones``."""
    text = _text(identifier.column, dtype)
    if identifier.normalization == "email":
        return text.str.replace_all(r"\s+", "").str.to_lowercase()
    if identifier.normalization == "phone":
        if identifier.default_region != "US":
            return pl.lit(None, pl.String)
        parts = text.str.extract_groups(US_PHONE)
        return pl.concat_str(
            pl.lit("+1"),
            parts.struct.field("1"),
            parts.struct.field("2"),
            parts.struct.field("3"),
        )
    if identifier.normalization == "none":
        return pl.when(text.is_not_null()).then(pl.col(identifier.column).cast(pl.String))
    return text  # trim


def normalize_column(frame: pl.DataFrame, identifier: Identifier) -> pl.Series:
    """``identifier.column`` of ``frame`` normalized; null where blank or rejected.

    Vectorized for every rule; phone numbers the US fast path cannot settle are normalized once
    per distinct value with phonenumbers (the same code the emulator uses).
    """
    fast = frame.select(_identifier(identifier, frame.schema[identifier.column])).to_series()
    if identifier.normalization != "phone":
        return fast
    raw = frame.get_column(identifier.column).cast(pl.String).str.strip_chars()
    open_ = fast.is_null() & (raw.str.len_chars() > 0)
    if not open_.any():
        return fast
    answers: dict[str, str | None] = {}
    for value in raw.filter(open_).unique().to_list():
        try:
            answers[value] = normalize(value, "phone", identifier.default_region)
        except InvalidIdentifierError:
            answers[value] = None
    return fast.fill_null(raw.replace_strict(answers, default=None, return_dtype=pl.String))


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
    order = job.source.order_by
    if order is None:
        exprs.append(pl.lit(None, pl.Datetime("us", "UTC")).alias(ORDER))
    elif schema[order] == pl.String:
        exprs.append(_order_key(batch, order).alias(ORDER))
    else:  # one type per kind, so batches of different files concatenate
        exprs.append(typed_order(order, schema[order]).alias(ORDER))
    for j, mapping in enumerate(job.traits):
        value, problem = _trait(j, mapping, schema[mapping.column])
        exprs.append(value.alias(value_column(j)))
        present = value.is_not_null()
        if mapping.nulls == "delete":  # a blank deletes; a cell source could not read does not
            blank = _text(mapping.column, schema[mapping.column]).is_null()
            present = present | (blank & ~unread(mapping.column))
        exprs.append(present.alias(present_column(j)))
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
        what = f" is not a valid {identifier.normalization} identifier"
        problems.append(_problem(identifier.column, raw, flag, what))
    # What source could not read faithfully (bad bytes, a ragged line) is reported as well.
    problems.append(Problem(pl.col(PROBLEM).is_not_null(), pl.col(PROBLEM)))
    work = batch.with_columns(exprs)
    return work.with_columns(_invalid(work, problems).alias(INVALID)).select(mapped_columns(job))


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
