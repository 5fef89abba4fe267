"""One table of trait cells, shared by the test that sends them to the emulator and the test that
plans them (tests/test_cell_limits.py): together they prove that mapping refuses exactly the
values the service refuses, and that what it sends is what lands.

A case is a trait type (and ARRAY split), a raw cell (CSV text, or a typed Parquet value with its
polars type) and its outcome: ``lands`` (the JSON value the service stores), ``REFUSED`` (the
service answers 400 for it, so mapping must report the cell and drop it alone) or ``BLANK``
(nothing to send: mapping sends nothing and reports nothing). For a refused case, ``wire`` is the
JSON a client that checked nothing would send for the cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

Kind = Literal["STRING", "NUMBER", "BOOLEAN", "ARRAY"]
REFUSED = "refused"
BLANK = "blank"


@dataclass(frozen=True)
class Case:
    id: str
    kind: Kind
    cell: Any  # str: a CSV cell's text; anything else: a Parquet cell of type ``dtype``
    lands: Any  # the JSON value stored, or REFUSED / BLANK
    wire: str | None = None  # JSON sent by a client that checks nothing (refused cases)
    split: str | None = None
    dtype: pl.DataType | None = None  # None: CSV text

    @property
    def refused(self) -> bool:
        return isinstance(self.lands, str) and self.lands == REFUSED

    @property
    def blank(self) -> bool:
        return isinstance(self.lands, str) and self.lands == BLANK

    @property
    def typed(self) -> bool:
        return self.dtype is not None

    def body_value(self) -> str:
        """The JSON sent to the emulator for this case."""
        if self.wire is not None:
            return self.wire
        return json.dumps(self.lands, ensure_ascii=False)


def _refused(id_: str, kind: Kind, cell: Any, wire: str, **kw: Any) -> Case:
    return Case(id_, kind, cell, REFUSED, wire=wire, **kw)


def _items(n: int) -> list[str]:
    return [f"i{k}" for k in range(n)]


X1024, X1025 = "x" * 1024, "x" * 1025
E1024, E1025 = "é" * 1024, "é" * 1025  # two UTF-8 bytes each: the limit counts characters
EMOJI1024, EMOJI1025 = "😀" * 1024, "😀" * 1025  # four bytes, two UTF-16 units, one code point
COMBINING1024 = "e\u0301" * 512  # 1,024 code points drawn as 512 letters
INTS = pl.List(pl.Int64())

CASES: tuple[Case, ...] = (
    # STRING: the limit is 1,024 characters (code points), counted after stripping.
    Case("string-1024", "STRING", X1024, X1024),
    _refused("string-1025", "STRING", X1025, json.dumps(X1025)),
    Case("string-1024-two-byte", "STRING", E1024, E1024),
    _refused("string-1025-two-byte", "STRING", E1025, json.dumps(E1025)),
    Case("string-1024-emoji", "STRING", EMOJI1024, EMOJI1024),
    _refused("string-1025-emoji", "STRING", EMOJI1025, json.dumps(EMOJI1025)),
    Case("string-1024-combining", "STRING", COMBINING1024, COMBINING1024),
    Case("string-1024-padded", "STRING", f"  {X1024}  ", X1024),
    Case("string-whitespace", "STRING", "  gold \t", "gold"),
    Case("string-blank", "STRING", "  \t ", BLANK),
    Case("string-inner-newline", "STRING", "two\nlines", "two\nlines"),
    Case("string-from-int", "STRING", 42, "42", dtype=pl.Int64()),
    Case("string-from-bool", "STRING", True, "true", dtype=pl.Boolean()),
    _refused("string-from-list", "STRING", ["a"], '["a"]', dtype=pl.List(pl.String())),
    _refused(
        "string-from-struct", "STRING", {"a": 1}, '{"a": 1}', dtype=pl.Struct({"a": pl.Int64()})
    ),
    # NUMBER: finite, and whole numbers only where a double holds them exactly (|n| <= 2^53).
    Case("number-int", "NUMBER", "42", 42),
    Case("number-padded", "NUMBER", " 7 ", 7),
    Case("number-decimal", "NUMBER", "-0.5", -0.5),
    Case("number-tenth", "NUMBER", "0.1", 0.1),
    Case("number-exponent", "NUMBER", "1.5e3", 1500),
    Case("number-1e20", "NUMBER", "1e20", 1e20),
    Case("number-max-double", "NUMBER", "1.7976931348623157e308", 1.7976931348623157e308),
    Case("number-min-subnormal", "NUMBER", "5e-324", 5e-324),
    Case("number-2^53", "NUMBER", "9007199254740992", 2**53),
    Case("number-minus-2^53", "NUMBER", "-9007199254740992", -(2**53)),
    _refused("number-2^53+1", "NUMBER", "9007199254740993", "9007199254740993"),
    _refused("number-huge-int", "NUMBER", "12345678901234567890", "12345678901234567890"),
    _refused("number-beyond-int64", "NUMBER", "9" * 25, "9" * 25),
    _refused("number-1e400", "NUMBER", "1e400", "1e400"),
    _refused("number-minus-1e400", "NUMBER", "-1e400", "-1e400"),
    _refused("number-nan", "NUMBER", "nan", "NaN"),
    _refused("number-inf", "NUMBER", "inf", "Infinity"),
    _refused("number-minus-inf", "NUMBER", "-inf", "-Infinity"),
    _refused("number-thousands", "NUMBER", "1,200", '"1,200"'),
    _refused("number-hex", "NUMBER", "0x10", '"0x10"'),
    _refused("number-word", "NUMBER", "many", '"many"'),
    Case("number-blank", "NUMBER", " ", BLANK),
    Case("number-typed-int", "NUMBER", -7, -7, dtype=pl.Int32()),
    Case("number-typed-2^53", "NUMBER", 2**53, 2**53, dtype=pl.Int64()),
    _refused("number-typed-2^53+1", "NUMBER", 2**53 + 1, str(2**53 + 1), dtype=pl.Int64()),
    _refused("number-typed-uint64", "NUMBER", 2**64 - 1, str(2**64 - 1), dtype=pl.UInt64()),
    Case("number-typed-float", "NUMBER", 0.1, 0.1, dtype=pl.Float64()),
    _refused("number-typed-nan", "NUMBER", float("nan"), "NaN", dtype=pl.Float64()),
    _refused("number-typed-inf", "NUMBER", float("inf"), "Infinity", dtype=pl.Float64()),
    _refused("number-typed-list", "NUMBER", [1], "[1]", dtype=INTS),
    # BOOLEAN
    Case("boolean-yes", "BOOLEAN", "yes", True),
    Case("boolean-upper-false", "BOOLEAN", " FALSE ", False),
    _refused("boolean-maybe", "BOOLEAN", "maybe", '"maybe"'),
    _refused("boolean-two", "BOOLEAN", "2", "2"),
    Case("boolean-typed", "BOOLEAN", False, False, dtype=pl.Boolean()),
    # ARRAY from text: items stripped, empty items dropped before counting; text stays text.
    Case("array-100", "ARRAY", ";".join(_items(100)), _items(100), split=";"),
    _refused("array-101", "ARRAY", ";".join(_items(101)), json.dumps(_items(101)), split=";"),
    Case("array-101-one-empty", "ARRAY", ";".join(["", *_items(100)]), _items(100), split=";"),
    Case("array-empty-items", "ARRAY", "a;;b;", ["a", "b"], split=";"),
    Case("array-whitespace", "ARRAY", " a ; b ", ["a", "b"], split=";"),
    Case("array-only-separators", "ARRAY", " ; ;", BLANK, split=";"),
    Case("array-digits-stay-text", "ARRAY", "1,2", ["1", "2"], split=","),
    Case("array-long-item", "ARRAY", X1025, [X1025]),  # the limit is on strings, not on items
    Case("array-no-split", "ARRAY", "a;b", ["a;b"]),
    # ARRAY from typed Parquet: items keep their JSON type.
    Case("array-ints", "ARRAY", [1, 2, 3], [1, 2, 3], dtype=INTS),
    Case("array-ints-100", "ARRAY", list(range(100)), list(range(100)), dtype=INTS),
    _refused("array-ints-101", "ARRAY", list(range(101)), json.dumps(list(range(101))), dtype=INTS),
    _refused("array-ints-null", "ARRAY", [1, None], "[1, null]", dtype=INTS),
    _refused("array-ints-2^53+1", "ARRAY", [2**53 + 1], f"[{2**53 + 1}]", dtype=INTS),
    Case("array-empty-list", "ARRAY", [], BLANK, dtype=INTS),
    Case("array-floats", "ARRAY", [0.1, 2.0], [0.1, 2.0], dtype=pl.List(pl.Float64())),
    _refused(
        "array-floats-nan", "ARRAY", [1.5, float("nan")], "[1.5, NaN]", dtype=pl.List(pl.Float64())
    ),
    Case("array-booleans", "ARRAY", [True, False], [True, False], dtype=pl.List(pl.Boolean())),
    Case("array-strings", "ARRAY", [" a ", "", "b"], ["a", "b"], dtype=pl.List(pl.String())),
    _refused("array-strings-null", "ARRAY", ["a", None], '["a", null]', dtype=pl.List(pl.String())),
    Case("array-fixed-size", "ARRAY", [1, 2], [1, 2], dtype=pl.Array(pl.Int64(), 2)),
    Case("array-one-int", "ARRAY", 5, [5], dtype=pl.Int64()),
    _refused("array-nested", "ARRAY", [[1], [2]], "[[1], [2]]", dtype=pl.List(INTS)),
    _refused(
        "array-of-structs",
        "ARRAY",
        [{"a": 1}],
        '[{"a": 1}]',
        dtype=pl.List(pl.Struct({"a": pl.Int64()})),
    ),
    _refused("array-struct", "ARRAY", {"a": 1}, '{"a": 1}', dtype=pl.Struct({"a": pl.Int64()})),
)


def same_json(expected: Any, actual: Any) -> bool:
    """Equal as JSON values: numbers by value (1 == 1.0), never a number for a string or bool."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(same_json, expected, actual))
    return type(expected) is type(actual) and bool(expected == actual)
