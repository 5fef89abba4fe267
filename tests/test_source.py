"""Odd extracts are normal (issue 9, items 3-5): encodings, undecodable bytes, ragged lines and
broken quotes, typed Parquet, empty files. Each test writes real files into tmp_path and reads
them through ``read_batches``; the end-to-end ones plan offline and read rejects.csv."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.config import load_job
from backfill.errors import ConfigError
from backfill.pipeline import build_plan
from backfill.plan.mapping import INVALID, map_batch, present_column, value_column
from backfill.plan.source import PROBLEM, ROW, read_batches

SEED = Path(__file__).parent / "data" / "emulator_seed.json"
A = "mem_profile_01jtest000000000000000000a"
BROKEN = "broken quoting (a quote inside a field, or text after a closing quote); row not used"


def job_file(
    tmp_path: Path,
    paths: list[Path],
    *,
    source: str = "",
    traits: str = 'tier = "tier"',
    identity: str = "",
) -> Path:
    text = f"""
name = "source"
[connection]
base_url = "emulator"
store_id = "mem_store_01jtest0000000000000000000"
seed = "{SEED}"
[source]
paths = {json.dumps([str(p) for p in paths])}
{source}
[identity]
{identity}
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[traits.Loyalty]
{traits}
[output]
dir = "{tmp_path / "out"}"
"""
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def read(tmp_path: Path, data: bytes, *, name: str = "x.csv", **kw: Any) -> pl.DataFrame:
    """``data`` written as one extract, read back as one frame (empty frame: no batches)."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    batches = list(read_batches(load_job(job_file(tmp_path, [path], **kw))))
    return pl.concat(batches) if batches else pl.DataFrame()


def rows(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    return frame.select("email", "tier", ROW, PROBLEM).rows()


def rejects(tmp_path: Path, data: bytes, **kw: Any) -> tuple[list[dict[str, Any]], int]:
    """Plan ``data`` offline (ada@example.com is A in the identity map): rejects.csv's
    invalid_row lines, and the number of profiles planned."""
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    known = tmp_path / "known.csv"
    known.write_text(f"id_type,value,profile_id\nemail,ada@example.com,{A}\n")
    job = load_job(job_file(tmp_path, [path], identity=f'identity_map = "{known}"', **kw))
    result = build_plan(job, offline=True, quiet=True)
    lines = pl.read_csv(result.rejects_path, infer_schema=False).to_dicts()
    return [r for r in lines if r["outcome"] == "invalid_row"], result.summary.profiles


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16", "utf-8-sig", "utf-8"])
@pytest.mark.parametrize("name", ["x.csv", "x.csv.gz"])
def test_each_encoding_reads_the_text_that_was_written(
    tmp_path: Path, encoding: str, name: str
) -> None:
    """José, Zoë and the euro sign arrive as written, from any encoding that can hold them."""
    text = "email,tier\na@x.com,José\nb@x.com,Zoë\n"
    if encoding != "latin-1":
        text += "c@x.com,€5\n"
    frame = read(tmp_path, text.encode(encoding), name=name, source=f'encoding = "{encoding}"')
    assert frame["tier"].to_list()[:2] == ["José", "Zoë"]
    assert frame[PROBLEM].null_count() == frame.height
    assert frame["email"].to_list()[0] == "a@x.com"  # no BOM glued to the first header


def test_latin1_read_as_utf8_is_reported_per_cell_not_replaced(tmp_path: Path) -> None:
    """Under UTF-8, a Latin-1 byte nulls its cell and says which column and bytes; the row's
    other cells and every other row carry on."""
    data = b"email,tier\na@x.com,gold\nb@x.com,Jos\xe9\nc@x.com,silver\n"
    frame = read(tmp_path, data)
    assert rows(frame) == [
        ("a@x.com", "gold", 1, None),
        ("b@x.com", None, 2, "tier: invalid UTF-8 bytes b'\\xe9' in \"Jos?\"; cell not used"),
        ("c@x.com", "silver", 3, None),
    ]
    assert "\ufffd" not in "".join(frame["tier"].drop_nulls())


def test_undecodable_bytes_in_two_columns_of_one_row(tmp_path: Path) -> None:
    """Each bad cell is named; cp1252's undefined 0x81 counts as undecodable too."""
    data = b"email,tier\na\x81@x.com,g\xff\xfeld\n"
    frame = read(tmp_path, data, source='encoding = "cp1252"')
    problem = frame[PROBLEM].item()
    assert problem.startswith("email: invalid cp1252 bytes b'\\x81'")
    assert "tier: invalid cp1252 bytes b'\\xff' in" not in problem  # ÿþ are defined in cp1252
    assert frame["email"].item() is None and frame["tier"].item() == "gÿþld"


def test_a_file_already_holding_the_marker_characters_is_not_misread(tmp_path: Path) -> None:
    """Private-use text that looks like a marker stays text; the bad byte is still found."""
    native = "\U000f00e9"
    data = f"email,tier\na@x.com,{native}\n".encode() + b"b@x.com,Jos\xe9\n"
    frame = read(tmp_path, data)
    assert frame["tier"].to_list() == [native, None]
    assert frame[PROBLEM].to_list()[0] is None
    assert "b'\\xe9'" in frame[PROBLEM].to_list()[1]


def test_bad_bytes_end_to_end_are_an_invalid_row_line(tmp_path: Path) -> None:
    """rejects.csv names file, row and the column with its bytes, as an invalid_row."""
    lines, _ = rejects(tmp_path, b"email,tier\nada@example.com,Jos\xe9\n")
    assert [(r["file"], r["row"]) for r in lines] == [(str(tmp_path / "x.csv"), "1")]
    assert "tier: invalid UTF-8 bytes b'\\xe9'" in lines[0]["reason"]


def test_an_unreadable_cell_is_never_sent_as_a_delete(tmp_path: Path) -> None:
    """Under nulls = "delete" a blank deletes, but a cell nulled for bad bytes is not sent."""
    traits = 'tier = { column = "tier", nulls = "delete" }'
    path = job_file(tmp_path, [tmp_path / "x.csv"], traits=traits)
    (tmp_path / "x.csv").write_bytes(b"email,tier\na@x.com,Jos\xe9\nb@x.com,\n")
    job = load_job(path)
    mapped = pl.concat(map_batch(job, b) for b in read_batches(job))
    assert mapped[present_column(0)].to_list() == [False, True]
    assert mapped[value_column(0)].to_list() == [None, None]
    assert "invalid UTF-8" in mapped[INVALID][0]


@pytest.mark.parametrize("bad", ["utf-9", "base64", "rot13"])
def test_an_unknown_or_non_text_encoding_is_refused_at_load(tmp_path: Path, bad: str) -> None:
    path = job_file(tmp_path, [tmp_path / "x.csv"], source=f'encoding = "{bad}"')
    with pytest.raises(ConfigError, match=rf"source\.encoding: '{bad}' is not"):
        load_job(path)


def test_encoding_names_are_canonical(tmp_path: Path) -> None:
    path = job_file(tmp_path, [tmp_path / "x.csv"], source='encoding = "Latin-1"')
    assert load_job(path).source.encoding == "iso8859-1"
    assert load_job(job_file(tmp_path, [tmp_path / "x.csv"])).source.encoding == "utf-8"


# --- ragged lines and quotes ----------------------------------------------------------------


def test_ragged_lines_are_not_used_and_named_by_line(tmp_path: Path) -> None:
    """Too many or too few fields: the row's cells are all nulled, the reason gives the line
    (not the row: a quoted field over two lines makes them differ), later rows keep numbers."""
    data = (
        b'email,tier\na@x.com,"two\nlines"\nb@x.com,gold,extra\nc@x.com\n\n'
        b'd@x.com,",,"\ne@x.com,x,y,"z\nw"\nf@x.com,ok\r\n'
    )
    assert rows(read(tmp_path, data)) == [
        ("a@x.com", "two\nlines", 1, None),
        (None, None, 2, "line 4: 3 fields where the header has 2; row not used"),
        (None, None, 3, "line 5: 1 field where the header has 2; row not used"),
        # row 4, a blank line, carries nothing: left out, and later rows keep their numbers
        ("d@x.com", ",,", 5, None),
        (None, None, 6, "lines 8-9: 4 fields where the header has 2; row not used"),
        ("f@x.com", "ok", 7, None),
    ]


@pytest.mark.parametrize(
    ("line", "where"),
    [
        (b'b@x.com,5" screen', "line 3"),  # a quote inside an unquoted field
        (b'b@x.com,"gold"en', "line 3"),  # text after a closing quote
        (b'b@x.com,"go\nld"en', "lines 3-4"),
    ],
)
def test_broken_quotes_lose_one_row_not_the_file(tmp_path: Path, line: bytes, where: str) -> None:
    data = b"email,tier\na@x.com,gold\n" + line + b"\nc@x.com,silver\n"
    assert rows(read(tmp_path, data)) == [
        ("a@x.com", "gold", 1, None),
        (None, None, 2, f"{where}: {BROKEN}"),
        ("c@x.com", "silver", 3, None),
    ]


def test_two_stray_quotes_far_apart_lose_two_rows(tmp_path: Path) -> None:
    """Counting quotes alone would read everything between them as one field."""
    body = [f"p{i}@x.com,t{i}" for i in range(50)]
    body[3], body[40] = 'p3@x.com,5" screen', 'p40@x.com,7" tablet'
    frame = read(tmp_path, ("email,tier\n" + "\n".join(body) + "\n").encode())
    problems = frame.filter(pl.col(PROBLEM).is_not_null())
    assert problems[ROW].to_list() == [4, 41]
    assert problems[PROBLEM].to_list() == [f"line 5: {BROKEN}", f"line 42: {BROKEN}"]
    assert frame.height == 50 and frame["tier"].null_count() == 2


def test_a_quote_never_closed_refuses_the_file_naming_the_line(tmp_path: Path) -> None:
    data = b'email,tier\na@x.com,gold\nb@x.com,"open\nc@x.com,ok\n'
    with pytest.raises(ConfigError, match=r"x\.csv: line 3: a quoted field opened on this line"):
        read(tmp_path, data)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(tmp_path: Path, delimiter: str) -> None:
    d = delimiter.encode()
    data = b"email" + d + b"tier\na@x.com" + d + b"gold\nb@x.com" + d + b"x" + d + b"y\n"
    frame = read(tmp_path, data, source=f"delimiter = {json.dumps(delimiter)}")
    assert rows(frame) == [
        ("a@x.com", "gold", 1, None),
        (None, None, 2, "line 3: 3 fields where the header has 2; row not used"),
    ]


CELL = st.text(st.characters(codec="utf-8"), max_size=8)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cells=st.lists(st.tuples(CELL, CELL), min_size=1, max_size=12),
    ragged=st.sets(st.integers(0, 11)),
)
def test_reading_agrees_with_pythons_csv_writer(
    tmp_path: Path, cells: list[tuple[str, str]], ragged: set[int]
) -> None:
    """Any cells Python's csv module writes (quotes, delimiters, newlines inside) read back
    exactly; rows written with a third field are reported by their first line, the rest kept."""
    out = io.StringIO(newline="")
    # CRLF: Python's writer quotes only fields holding a character of its terminator, and a
    # bare "\r" left unquoted before "\n" is a line ending to every reader.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["email", "tier"])
    expected: list[tuple[Any, ...]] = []
    for i, (email, tier) in enumerate(cells):
        line = out.getvalue().count("\n") + 1
        if i in ragged:
            writer.writerow([email, tier, "x"])
            expected.append((None, None, i + 1, line))
        else:
            writer.writerow([email, tier])
            if email or tier:  # a row of empty cells carries nothing: left out
                expected.append((email or None, tier or None, i + 1, None))
    frame = read(tmp_path, out.getvalue().encode())
    got = [
        (e, t, r, int(p.split(" ")[1].split("-")[0].rstrip(":")) if p else None)
        for e, t, r, p in rows(frame)
    ]
    assert got == expected


# --- empty files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [("x.csv", b""), ("x.csv", b"email,tier\n"), ("x.csv", b"email,tier"),
     ("x.csv.gz", b"email,tier\r\n"), ("x.csv.gz", b"")],
)  # fmt: skip
def test_empty_csv_files_yield_no_batches(tmp_path: Path, name: str, data: bytes) -> None:
    assert read(tmp_path, data, name=name).height == 0


def test_a_header_only_file_still_needs_the_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no column 'tier'"):
        read(tmp_path, b"email,level\n")


def test_an_empty_parquet_yields_no_batches(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pl.DataFrame(
        {"email": [], "tier": []}, schema={"email": pl.String, "tier": pl.String}
    ).write_parquet(path)
    assert list(read_batches(load_job(job_file(tmp_path, [path])))) == []


def test_batches_have_one_schema_across_files_and_kinds(tmp_path: Path) -> None:
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b"email,tier\na@x.com,gold\nb@x.com,Jos\xe9\n")
    parquet = tmp_path / "b.parquet"
    pl.DataFrame({"tier": ["x"], "email": ["c@x.com"]}).write_parquet(parquet)
    batches = list(read_batches(load_job(job_file(tmp_path, [csv_path, parquet]))))
    assert len({tuple(b.schema.items()) for b in batches}) == 1
    assert batches[0].columns == ["email", "tier", "__file", "__row", "__problem"]


# --- typed Parquet --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "shown"),
    [
        (pl.Series("tier", [{"a": 1}]), "Struct"),
        (pl.Series("tier", [b"\xff\xfe"]), "Binary"),
        (pl.Series("tier", [[["a"]]]), "List(List(String))"),
        (pl.Series("tier", [["a", "b"]]), "List(String)"),  # a list, but tier is a STRING
        (pl.Series("email", [["a@x.com"]]), "List(String)"),  # identifiers take no lists
    ],
)
def test_parquet_columns_no_trait_can_take_are_refused_at_check(
    tmp_path: Path, column: pl.Series, shown: str
) -> None:
    frame = pl.DataFrame({"email": ["a@x.com"], "tier": ["gold"]}).with_columns(column)
    path = tmp_path / "x.parquet"
    frame.write_parquet(path)
    job = load_job(job_file(tmp_path, [path]))
    with pytest.raises(
        ConfigError, match=rf"x\.parquet: column '{column.name}' is {re.escape(shown)}"
    ):
        next(read_batches(job))


def test_a_parquet_list_of_scalars_feeds_an_array_trait(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pl.DataFrame({"email": ["a@x.com"], "tags": [["a", "b"]]}).write_parquet(path)
    job = load_job(job_file(tmp_path, [path], traits='tags = { column = "tags", type = "ARRAY" }'))
    (batch,) = read_batches(job)
    assert map_batch(job, batch)[value_column(0)].to_list() == [["a", "b"]]


TYPED = pl.DataFrame(
    {
        "email": ["a@x.com", "b@x.com"],
        "date": [dt.date(2026, 1, 2), None],
        "stamp": [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None],
        "money": pl.Series([Decimal("1.50"), None], dtype=pl.Decimal(10, 2)),
        "cat": pl.Series(["gold", None], dtype=pl.Categorical),
        "enum": pl.Series(["gold", None], dtype=pl.Enum(["gold", "silver"])),
        "nothing": pl.Series([None, None], dtype=pl.Null),
        "count": pl.Series([7, None], dtype=pl.UInt8),
    }
)


def test_typed_parquet_columns_map_to_text_without_crashing(tmp_path: Path) -> None:
    """Dates, datetimes, decimals, categoricals, enums and null-typed columns become text."""
    path = tmp_path / "x.parquet"
    TYPED.write_parquet(path)
    names = [c for c in TYPED.columns if c != "email"]
    traits = "\n".join(f'{c} = "{c}"' for c in names)
    job = load_job(job_file(tmp_path, [path], traits=traits))
    (batch,) = read_batches(job)
    mapped = map_batch(job, batch)
    got = {c: mapped[value_column(j)].to_list() for j, c in enumerate(names)}
    assert got == {
        "date": ["2026-01-02", None],
        "stamp": [got["stamp"][0], None],
        "money": ["1.50", None],
        "cat": ["gold", None],
        "enum": ["gold", None],
        "nothing": [None, None],
        "count": ["7", None],
    }
    assert got["stamp"][0].startswith("2026-01-02 03:04:05")
    result = build_plan(job, offline=True, quiet=True)  # and the whole plan gets through
    assert result.summary.rows == 2


def test_a_field_over_lines_after_a_stray_quote(tmp_path: Path) -> None:
    """After a stray quote, quote parity no longer tells which lines are inside a field: the
    walk then reads every line, and still finds the field and the numbers."""
    data = (
        b'email,tier\na@x.com,a\nb@x.com,5" screen\nd@x.com,ok\nc@x.com,"multi\nx,y\nend"\n'
        b"e@x.com,z\n"
    )
    assert rows(read(tmp_path, data)) == [
        ("a@x.com", "a", 1, None),
        (None, None, 2, f"line 3: {BROKEN}"),
        ("d@x.com", "ok", 3, None),
        ("c@x.com", "multi\nx,y\nend", 4, None),
        ("e@x.com", "z", 5, None),
    ]


def test_bad_bytes_in_a_gzipped_file(tmp_path: Path) -> None:
    frame = read(tmp_path, b"email,tier\na@x.com,Jos\xe9\n", name="x.csv.gz")
    assert frame[PROBLEM].item().startswith("tier: invalid UTF-8 bytes b'\\xe9'")


def test_transcoded_text_lives_in_a_private_folder_removed_after_reading(
    tmp_path: Path,
) -> None:
    """Customer data written for polars is owner-only and does not outlive the read."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "x.csv").write_bytes("email,tier\na@x.com,José\n".encode("latin-1"))
    job = load_job(job_file(tmp_path, [tmp_path / "x.csv"], source='encoding = "latin-1"'))
    batches = read_batches(job, scratch=scratch)
    next(batches)
    (folder,) = scratch.iterdir()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in folder.iterdir()] == ["text.csv"]
    assert list(batches) == []
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"ada@example.com,gold,x", "line 3: 3 fields where the header has 2; row not used"),
        (b'ada@example.com,5" gold', f"line 3: {BROKEN}"),
    ],
)
def test_a_bad_line_end_to_end_names_file_row_and_line(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    """rejects.csv carries the line number; the good row beside it is still planned."""
    data = b'email,tier\n"ada@example.com","gold"\n' + line + b"\n"
    lines, profiles = rejects(tmp_path, data)
    assert [(r["file"], r["row"], r["reason"]) for r in lines] == [
        (str(tmp_path / "x.csv"), "2", reason)
    ]
    assert profiles == 1


def test_a_long_run_of_bad_bytes_is_shown_in_part(tmp_path: Path) -> None:
    frame = read(tmp_path, b"email,tier\na@x.com,\xff" + b"\xfe" * 100 + b"\n")
    shown = "b'\\xff" + "\\xfe" * 15 + "'"
    assert frame[PROBLEM].item() == f'tier: invalid UTF-8 bytes {shown} in "?"; cell not used'


def test_quoting_that_starts_late_in_an_unquoted_file(tmp_path: Path) -> None:
    """The quick count (chosen because the file's start shows no quotes) fails on a quoted
    delimiter far down; the full check then accepts it: nothing is reported."""
    body = "".join(f"p{i}@x.com,t{i}\n" for i in range(8_000))  # > 64 KiB
    frame = read(tmp_path, f'email,tier\n{body}late@x.com,"a,b"\n'.encode())
    assert frame[PROBLEM].null_count() == frame.height == 8_001
    assert frame["tier"][-1] == "a,b"


@pytest.mark.parametrize(
    "stamp",
    [
        pl.Series([dt.datetime(2026, 2, 1)]).cast(pl.Datetime("ns")),
        pl.Series([dt.datetime(2026, 2, 1, 9)]).cast(pl.Datetime("ms", "Asia/Tokyo")),
        pl.Series([dt.date(2026, 2, 1)]),
    ],
)
def test_typed_order_by_in_parquet_beside_text_in_csv(tmp_path: Path, stamp: pl.Series) -> None:
    """Dates and datetimes of any unit or zone order rows against a CSV's ISO-8601 text."""
    (tmp_path / "a.csv").write_text("email,tier,updated_at\nada@example.com,old,2026-01-31\n")
    parquet = tmp_path / "b.parquet"
    pl.DataFrame(
        {"email": ["ada@example.com"], "tier": ["new"], "updated_at": stamp}
    ).write_parquet(parquet)
    (tmp_path / "c.csv").write_text("email,tier,updated_at\nada@example.com,older,2026-01-01\n")
    paths = [tmp_path / "a.csv", parquet, tmp_path / "c.csv"]
    job = load_job(job_file(tmp_path, paths, source='order_by = "updated_at"'))
    result = build_plan(job, quiet=True)
    (body,) = pl.read_parquet(result.plan_path)["body"]
    assert json.loads(body)["traits"] == {"Loyalty": {"tier": "new"}}


def test_order_by_numbers_beside_text_is_refused_at_check(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("email,tier,updated_at\nada@example.com,old,2026-01-31\n")
    parquet = tmp_path / "b.parquet"
    pl.DataFrame({"email": ["a@x.com"], "tier": ["new"], "updated_at": [5]}).write_parquet(parquet)
    job = load_job(
        job_file(tmp_path, [tmp_path / "a.csv", parquet], source='order_by = "updated_at"')
    )
    with pytest.raises(ConfigError, match=r"holds times in .*a\.csv but numbers in .*b\.parquet"):
        next(read_batches(job))


def test_an_order_by_type_that_orders_nothing_is_refused_at_check(tmp_path: Path) -> None:
    parquet = tmp_path / "b.parquet"
    frame = pl.DataFrame({"email": ["a@x.com"], "tier": ["new"], "updated_at": [True]})
    frame.write_parquet(parquet)
    job = load_job(job_file(tmp_path, [parquet], source='order_by = "updated_at"'))
    with pytest.raises(ConfigError, match=r"column 'updated_at' is Boolean: source\.order_by"):
        next(read_batches(job))
