"""Reading extracts: CSV (plain or gzip, any encoding) and Parquet, lazily, in bounded batches.

``read_batches(job)`` is the stage's one entry. Each batch is a polars DataFrame with the job's
columns plus ``__file`` (the file's index in ``source_files(job)``), ``__row`` (the 1-based data
row within that file) and ``__problem`` (null when the row was read faithfully), so every later
report can point at the exact row. CSV cells are read as text, never inferred: a column of ZIP
codes keeps its leading zeros, and coercion happens in one place (``mapping``) where a bad cell
becomes a report instead of a failed read.

Odd files are normal, and one odd row never stops the others (issue 9):

- bytes the file's encoding cannot decode are never replaced silently: the cell holding them is
  nulled and ``__problem`` names the column and shows the bytes;
- a ragged line (more or fewer fields than the header) or broken quoting is not used at all (its
  cells cannot be trusted to be in the right columns): its cells are nulled and ``__problem``
  gives the line number; only a quote that is never closed, which hides the rest of the file,
  refuses the file (naming the line) before anything is written;
- a 0-byte CSV is an empty extract, like a header-only CSV or a 0-row Parquet: no batches.

Valid UTF-8 CSV (the common case) takes a fast path: one vectorized pass over the lines checks
every field count and quoting (a delimiter count where the file shows no quotes, else one regex;
polars validates UTF-8 as it reads): ~0.13 s for 1M rows / 110 MB, about what polars takes to
read the file. Only a file that fails it is walked, and only on the lines that need it.
Any other encoding (and gzip) is first written out as UTF-8, streaming, into a private
temporary directory that is removed when the file has been read.
"""

from __future__ import annotations

import codecs
import functools
import glob
import gzip
import io
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TypeAlias

import polars as pl
from polars.datatypes import DataTypeClass

from backfill.config import Job
from backfill.errors import ConfigError

FILE = "__file"
ROW = "__row"
PROBLEM = "__problem"

QUOTE = '"'
PolarsDataType: TypeAlias = pl.DataType | DataTypeClass
CHUNK = 1 << 22  # characters per transcoding step: memory stays bounded whatever the file
FAST_ENCODINGS = ("utf-8", "utf-8-sig")  # polars reads these itself (and drops a BOM)
# An undecodable byte b is first escaped as the lone surrogate U+DC00+b (which no decoder
# yields for valid input), then written as the private-use character base+b: UTF-8 cannot
# carry surrogates, and a file that already holds that range gets the next base instead.
ESCAPE = "backfill-escape"
SURROGATES = re.compile("[\udc00-\udcff]")
ESCAPED = re.compile(b"\xed[\xb0-\xb3]")  # U+DC00-DCFF encoded with "surrogatepass"
MARK_BASES = (0xF0000, 0x100000, 0xFFE00)


def _escape(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return "".join(chr(0xDC00 + b) for b in bad), exc.end


codecs.register_error(ESCAPE, _escape)


@dataclass(frozen=True)
class SourceFile:
    index: int
    path: Path

    @property
    def is_csv(self) -> bool:
        return self.path.name.endswith((".csv", ".csv.gz"))

    @property
    def is_gzip(self) -> bool:
        return self.path.name.endswith(".gz")


def source_files(job: Job) -> list[SourceFile]:
    """Every file the job's ``source.paths`` name, globs expanded in sorted order, each once."""
    found: dict[Path, None] = {}
    for pattern in job.source.paths:
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            if not matches:
                raise ConfigError(f"{job.path}: source.paths: {pattern!r} matches no file")
            found.update(dict.fromkeys(matches))
        else:
            path = Path(pattern)
            if not path.is_file():
                raise ConfigError(f"{job.path}: source.paths: {pattern!r}: no such file")
            found[path] = None
    return [SourceFile(i, p) for i, p in enumerate(found)]


def unread(column: str) -> pl.Expr:
    """True where source nulled ``column``'s cell: its bytes could not be decoded, or its whole
    row was not used (a ragged line, broken quoting), so a blank there is no blank in the file."""
    problem = pl.col(PROBLEM)
    return problem.is_not_null() & (
        problem.str.starts_with("line")
        | pl.concat_str(pl.lit("; "), problem).str.contains(f"; {column}: ", literal=True)
    )


# --- job check ------------------------------------------------------------------------------


def check_columns(job: Job, files: list[SourceFile]) -> dict[Path, pl.Schema]:
    """Fail before reading any row when a file lacks a column the job maps, or holds one whose
    type no trait or identifier can take (Parquet structs, maps, binary, nested lists).

    Returns, per file, the job's columns typed as a batch of it will be (text for CSV); a
    0-byte CSV has none."""
    orders: dict[str, Path] = {}  # kind of order_by value -> the first file holding it
    schemas: dict[Path, pl.Schema] = {}
    for file in files:
        try:
            schema = _csv_header(job, file) if file.is_csv else _parquet_schema(file)
        except (pl.exceptions.PolarsError, OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{file.path}: cannot read: {exc}") from None
        if schema is None:  # a 0-byte CSV: an empty extract, with no header to check
            continue
        missing = [c for c in job.columns if c not in schema]
        if missing:
            raise ConfigError(
                f"{file.path} has no column {missing[0]!r} that {job.path} maps"
                f" (columns found: {', '.join(schema.names()[:20])})"
            )
        if not file.is_csv:
            _check_types(job, file, schema)
        if job.source.order_by is not None:
            orders.setdefault(_order_kind(job, file, schema[job.source.order_by]), file.path)
        schemas[file.path] = pl.Schema({c: schema[c] for c in job.columns})
    if len(orders) > 1:
        (a, first), (b, second) = orders.items()
        raise ConfigError(
            f"{job.path}: source.order_by {job.source.order_by!r} holds {a} in {first} but {b}"
            f" in {second}: rows of one job are ordered by one kind of value"
        )
    return schemas


def _order_kind(job: Job, file: SourceFile, dtype: PolarsDataType) -> str:
    """ "numbers" or "times" (text is read as ISO-8601 times); other types are refused."""
    if dtype.is_numeric():
        return "numbers"
    if dtype in (pl.String, pl.Date, pl.Datetime, pl.Null):
        return "times"
    raise ConfigError(
        f"{file.path}: column {job.source.order_by!r} is {dtype}: source.order_by takes"
        f" ISO-8601 text, a date, a datetime or a number ({job.path})"
    )


def _parquet_schema(file: SourceFile) -> pl.Schema:
    return pl.scan_parquet(file.path).collect_schema()


def _csv_header(job: Job, file: SourceFile) -> pl.Schema | None:
    """The header's column names as polars reads them; None for a 0-byte file."""
    with _open_text(file, job.source.encoding) as text:
        line = text.readline()
    if not line:
        return None
    header = _marked(line, MARK_BASES[0]).encode("utf-8")
    return pl.read_csv(
        io.BytesIO(header), separator=job.source.delimiter, infer_schema=False, n_rows=0
    ).schema


def _scalar(dtype: PolarsDataType) -> bool:
    """A type mapping casts to text faithfully (numbers, booleans, dates, decimals, enums)."""
    if dtype in (pl.Binary, pl.Object, pl.Unknown):
        return False
    return not dtype.is_nested()


def _check_types(job: Job, file: SourceFile, schema: pl.Schema) -> None:
    arrays = {t.column for t in job.traits if t.type == "ARRAY"}
    scalars = (set(job.columns) - arrays) | {t.column for t in job.traits if t.type != "ARRAY"}
    for column in job.columns:
        dtype = schema[column]
        if _scalar(dtype):
            continue
        inner = dtype.inner if isinstance(dtype, pl.List) else None
        if column not in scalars and inner is not None and _scalar(inner):
            continue  # a list of scalars feeds an ARRAY trait
        why = (
            "a list can only feed an ARRAY trait"
            if inner is not None and _scalar(inner)
            else "no trait or identifier can take it"
        )
        raise ConfigError(f"{file.path}: column {column!r} is {dtype}: {why} ({job.path})")


# --- reading --------------------------------------------------------------------------------


def read_batches(
    job: Job, files: list[SourceFile] | None = None, *, scratch: Path | None = None
) -> Iterator[pl.DataFrame]:
    """Yield the job's columns in batches of at most ``source.batch_rows`` rows, file by file.

    ``scratch``: where a private temporary folder for transcoded text goes (the system's
    temporary directory by default; the run's spill folder keeps it on the output's disk)."""
    files = source_files(job) if files is None else files
    check_columns(job, files)
    for file in files:
        try:
            if file.is_csv:
                yield from _csv_batches(job, file, scratch)
            else:
                yield from _parquet_batches(job, file)
        except (pl.exceptions.PolarsError, OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{file.path}: cannot read: {exc}") from None


def _finish(job: Job, batch: pl.DataFrame, file: SourceFile, first_row: int) -> pl.DataFrame:
    """Number the rows, then leave out the blank ones: a blank line (a nightly extract's
    trailing newline, say) or a row with no value in any column the job reads carries nothing
    to send or to report; the rows after it keep their numbers."""
    empty = pl.all_horizontal(pl.col(c).is_null() for c in job.columns)
    return (
        batch.with_columns(
            pl.int_range(first_row, first_row + batch.height, dtype=pl.UInt32).alias(ROW),
            pl.lit(file.index, pl.UInt16).alias(FILE),
        )
        .filter(~empty | pl.col(PROBLEM).is_not_null())
        .select(*job.columns, FILE, ROW, PROBLEM)
    )


def _csv_batches(job: Job, file: SourceFile, scratch: Path | None) -> Iterator[pl.DataFrame]:
    header = _csv_header(job, file)
    if header is None:
        return
    with tempfile.TemporaryDirectory(prefix="backfill-source-", dir=scratch) as tmp:  # 0700
        path, base, layout = _prepare(job, file, header.len(), Path(tmp))
        lazy = pl.scan_csv(
            path,
            separator=job.source.delimiter,
            infer_schema=False,  # every cell as text: coercion is mapping's job
            raise_if_empty=False,
            truncate_ragged_lines=bool(layout.problems),  # each such row is nulled below
        ).select(job.columns)
        row = 1
        for batch in lazy.collect_batches(chunk_size=job.source.batch_rows):
            if batch.height == 0:
                continue
            ids = pl.int_range(row, row + batch.height, dtype=pl.UInt32)
            problem = (
                ids.replace_strict(layout.problems, default=None, return_dtype=pl.String)
                if layout.problems
                else pl.lit(None, pl.String)
            )
            out = batch.with_columns(problem.alias(PROBLEM))
            if layout.problems:  # a row whose cells may sit in the wrong columns is not used
                used = pl.col(PROBLEM).is_null()
                out = out.with_columns(pl.when(used).then(pl.col(c)).alias(c) for c in job.columns)
            if base is not None:
                out = _bad_bytes(job, out, base, job.source.encoding)
            yield _finish(job, out, file, row)
            row += batch.height


def _prepare(
    job: Job, file: SourceFile, fields: int, tmp: Path
) -> tuple[Path, int | None, _Layout]:
    """(a UTF-8 file polars can read, the marker base of its bad bytes if any, what the line
    check found); the file is ``file`` itself on the fast path, else written under ``tmp``."""
    encoding, delimiter = job.source.encoding, job.source.delimiter
    path, base = file.path, None
    if encoding not in FAST_ENCODINGS:
        path = tmp / "text.csv"
        base = _transcode(file, encoding, path)
    elif file.is_gzip:  # polars would inflate it all in memory; inflate it to disk instead
        path = tmp / "plain.csv"
        with gzip.open(file.path, "rb") as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    try:
        try:
            layout = _layout(path, fields, delimiter)
        except _NotUTF8:  # the fast path's file has bad bytes: mark them and look again
            path = tmp / "text.csv"
            base = _transcode(file, encoding, path)
            layout = _layout(path, fields, delimiter)
    except _Unclosed as exc:
        raise ConfigError(
            f"{file.path}: line {exc.line}: a quoted field opened on this line is never"
            f" closed, so the file cannot be read past line {exc.line - 1}"
        ) from None
    if layout.broken:  # ragged lines alone polars reads (truncated or padded), then nulled
        clean = tmp / "clean.csv"
        _blank_lines(path, layout.drop, clean)
        path = clean
    return path, base, layout


def _blank_lines(path: Path, spans: list[tuple[int, int]], dst: Path) -> None:
    """Copy ``path`` with each span of lines replaced by one blank line: polars reads it as a
    row of nulls, so the rows after it keep their numbers."""
    starts = {first: last for first, last in spans}
    with open(path, "rb") as src, open(dst, "wb") as out:
        skip_to = 0
        for n, line in enumerate(src, start=1):
            if n <= skip_to:
                continue
            if n in starts:
                out.write(b"\n")
                skip_to = starts[n]
                continue
            out.write(line)


def _parquet_batches(job: Job, file: SourceFile) -> Iterator[pl.DataFrame]:
    """Parquet by slices: the scan prunes row groups outside each slice, so memory stays near
    one batch, where ``collect_batches`` decodes far ahead of a slow consumer (~560 MB seen for
    a 33 MB file; pola-rs/polars#28569)."""
    scan = pl.scan_parquet(file.path).select(job.columns)
    total = scan.select(pl.len()).collect().item()
    size = job.source.batch_rows
    for start in range(0, total, size):
        batch = (
            scan.slice(start, size).collect().with_columns(pl.lit(None, pl.String).alias(PROBLEM))
        )
        yield _finish(job, batch, file, start + 1)


# --- encodings and bad bytes ----------------------------------------------------------------


def _open_text(file: SourceFile, encoding: str) -> IO[str]:
    """The file as text, gunzipped and decoded, undecodable bytes escaped (never replaced)."""
    if file.is_gzip:
        return io.TextIOWrapper(
            gzip.open(file.path, "rb"), encoding=encoding, errors=ESCAPE, newline=""
        )
    return open(file.path, encoding=encoding, errors=ESCAPE, newline="")


def _marked(text: str, base: int) -> str:
    """``text`` with each escaped byte (U+DC00+b) written as the marker ``base``+b."""
    return SURROGATES.sub(lambda m: chr(base - 0xDC00 + ord(m.group())), text)


def _marks(base: int) -> str:
    return f"[{chr(base)}-{chr(base + 0xFF)}]"


def _encoded_marks(base: int) -> re.Pattern[bytes]:
    """The markers ``base``..``base``+255 as UTF-8: two fixed bytes, then a small range."""
    first, last = chr(base).encode(), chr(base + 0xFF).encode()
    assert first[:2] == last[:2] and first[3] == 0x80 and last[3] == 0xBF
    return re.compile(re.escape(first[:2]) + b"[\\x%02x-\\x%02x]" % (first[2], last[2]))


def _transcode(file: SourceFile, encoding: str, dst: Path) -> int | None:
    """Write ``file`` as UTF-8 to ``dst``; the marker base used for bad bytes (None if none).

    Each chunk is encoded first and searched as bytes (a literal-prefix search, far faster
    than scanning the text for a character range)."""
    for base in MARK_BASES:
        native = _encoded_marks(base)
        clash = escaped = False
        with _open_text(file, encoding) as src, open(dst, "wb") as out:
            while chunk := src.read(CHUNK):
                data = chunk.encode("utf-8", "surrogatepass")
                clash = clash or native.search(data) is not None
                if ESCAPED.search(data) is not None:
                    escaped = True
                    data = _marked(chunk, base).encode("utf-8")
                out.write(data)
        if not escaped:
            return None
        if not clash:
            return base
    raise ConfigError(f"{file.path}: cannot mark its undecodable bytes apart from its text")


def _bad_bytes(job: Job, batch: pl.DataFrame, base: int, encoding: str) -> pl.DataFrame:
    """Null each cell holding undecodable bytes and say which column and bytes in ``__problem``."""
    marks = _marks(base)
    bad = [c for c in job.columns if batch.get_column(c).str.contains(marks).any()]
    if not bad:
        return batch
    shown: dict[str, str] = {}  # each run of marks, as the bytes it stands for
    for c in bad:
        runs = (
            batch.get_column(c).str.extract_all(f"{marks}{{1,16}}").explode().drop_nulls().unique()
        )
        shown.update({run: repr(bytes(ord(ch) - base for ch in run)) for run in runs})
    what = f"invalid {_codec_label(encoding)} bytes"
    notes = [
        pl.when(pl.col(c).str.contains(marks)).then(
            pl.concat_str(
                pl.lit(f"{c}: {what} "),
                pl.col(c)
                .str.extract(f"({marks}{{1,16}})")
                .replace_strict(shown, default=None, return_dtype=pl.String),
                pl.lit(' in "'),
                pl.col(c).str.replace_all(f"{marks}+", "?").str.slice(0, 40),
                pl.lit('"; cell not used'),
            )
        )
        for c in bad
    ]
    problem = pl.concat_str([pl.col(PROBLEM), *notes], separator="; ", ignore_nulls=True)
    hit = pl.any_horizontal(pl.col(c).str.contains(marks) for c in bad)
    return batch.with_columns(
        pl.when(hit).then(problem).otherwise(pl.col(PROBLEM)).alias(PROBLEM),
        *(pl.when(~pl.col(c).str.contains(marks)).then(pl.col(c)).alias(c) for c in bad),
    )


def _codec_label(encoding: str) -> str:
    return {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16"}.get(encoding, encoding)


# --- lines, fields and quotes ---------------------------------------------------------------


class _NotUTF8(Exception):
    """The file polars was about to read holds bytes that are not UTF-8."""


class _Unclosed(Exception):
    """A quoted field opened on ``line`` runs to the end of the file."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


@dataclass(frozen=True)
class _Layout:
    """What the line check found: data row -> why it is not used, and the line spans
    (first, last) each such row covers, to be blanked before polars reads the file."""

    problems: dict[int, str] = field(default_factory=dict)
    drop: list[tuple[int, int]] = field(default_factory=list)
    broken: bool = False  # polars cannot parse some lines: read a copy with them blanked


def _char(c: str) -> str:
    return f"\\x{{{ord(c):X}}}"  # one spelling that works inside and outside a class


def _row_regex(fields: int, delimiter: str) -> str:
    """A whole line that is exactly ``fields`` well-quoted fields, or blank."""
    d, q = _char(delimiter), _char(QUOTE)
    one = f"(?:[^{q}{d}\\n]*|{q}(?:[^{q}]|{q}{q})*{q})"
    return f"^\\x{{FEFF}}?(?:{one}(?:{d}{one}){{{fields - 1}}})?\\r?$"  # BOM: line 1


def _blank() -> pl.Expr:
    return pl.col("line").str.len_bytes() == 0


def _layout(path: Path, fields: int, delimiter: str) -> _Layout:
    """Check every data line in one vectorized pass; walk the few that fail it."""
    ok = pl.col("line").str.contains(_row_regex(fields, delimiter))
    checks = [ok]
    with open(path, "rb") as head:
        if QUOTE.encode() not in head.read(1 << 16):  # likely no quoting: count, ~40% cheaper
            line = pl.col("line")
            count = line.str.count_matches(delimiter, literal=True)
            checks.insert(0, (count == fields - 1) & ~line.str.contains(QUOTE, literal=True))
    try:
        for check in checks:
            fine = pl.scan_lines(path, name="line").select((check | _blank()).all())
            if fine.collect(engine="streaming").item():
                return _Layout()
        lines = pl.scan_lines(path, name="line").with_row_index("n", offset=1)
        # A line inside a quoted field spanning lines may look fine alone: take every line
        # between an odd count of quotes and the next one too.
        odd = pl.col("line").str.count_matches(QUOTE, literal=True) % 2 == 1
        inside = (odd.cum_sum() - odd.cast(pl.UInt32)) % 2 == 1
        picked = (
            lines.filter((pl.col("n") > 1) & (~ok | odd | inside))
            .select("n", "line")
            .collect(engine="streaming")
        )
        total = _Lazy(lambda: int(lines.select(pl.len()).collect().item()))
        try:
            found = dict(zip(picked["n"], picked["line"], strict=True))
            return _walk(found, total, fields, delimiter)
        except _Missing:  # a line the quick pick left out: take them all (rare)
            every = lines.select("n", "line").collect()
            found = dict(zip(every["n"], every["line"], strict=True))
            return _walk(found, total, fields, delimiter)
    except pl.exceptions.ComputeError as exc:
        if "utf8" in str(exc).lower() or "utf-8" in str(exc).lower():
            raise _NotUTF8 from None
        raise


class _Lazy:
    """A count worked out only if it is asked for (a full pass over the file)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count, self._value = count, -1

    def __call__(self) -> int:
        if self._value < 0:
            self._value = self._count()
        return self._value


class _Missing(Exception):
    """The walk needs a line it was not given."""


def _walk(lines: dict[int, str], total: Callable[[], int], fields: int, delimiter: str) -> _Layout:
    """Parse the given lines into records, as polars will: which are unusable, and why."""

    def line(n: int) -> str:
        if n in lines:
            return lines[n]
        raise EOFError if n > total() else _Missing

    layout = _Layout()
    broken_any = False
    continued = 0  # lines before this record that continue an earlier one
    last = 1
    for n in sorted(lines):
        if n <= last:
            continue
        end, count, broken = _record(line, n, delimiter)
        row = n - 1 - continued
        continued += end - n
        last = end
        where = f"line {n}" if end == n else f"lines {n}-{end}"
        if count == 0:  # blank
            continue
        if broken:
            broken_any = True
            why = f"{where}: broken quoting (a quote inside a field, or text after a closing quote)"
        elif count != fields:
            found = f"{count} field" if count == 1 else f"{count} fields"
            why = f"{where}: {found} where the header has {fields}"
        else:
            continue
        layout.problems[row] = f"{why}; row not used"
        layout.drop.append((n, end))
    return replace(layout, broken=broken_any)


QUOTED = re.compile('(?:[^"]|"")*')  # inside quotes: anything but a lone quote


@functools.cache
def _plain(delimiter: str) -> re.Pattern[str]:
    """An unquoted field: no quote, no delimiter."""
    return re.compile(f"[^{re.escape(QUOTE + delimiter)}]*")


def _record(line: Callable[[int], str], start: int, delimiter: str) -> tuple[int, int, bool]:
    """(last line, field count, broken) of the record that starts on line ``start``."""
    n, text, pos, count = start, line(start).removesuffix("\r"), 0, 1
    if not text:
        return n, 0, False  # a blank line: polars reads a row of nulls, as for any blank row
    quoted, plain = QUOTED, _plain(delimiter)
    while True:
        if pos < len(text) and text[pos] == QUOTE:
            pos += 1
            while True:  # inside quotes, maybe over several lines
                match = quoted.match(text, pos)
                assert match is not None
                pos = match.end()
                if pos < len(text):
                    pos += 1  # the closing quote
                    break
                try:
                    n, text, pos = n + 1, line(n + 1).removesuffix("\r"), 0
                except EOFError:
                    raise _Unclosed(start) from None
        else:
            match = plain.match(text, pos)
            assert match is not None
            pos = match.end()
        if pos == len(text):
            return n, count, False
        if text[pos] != delimiter:
            return n, count, True
        pos, count = pos + 1, count + 1
