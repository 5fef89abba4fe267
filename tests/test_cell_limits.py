"""Per-cell API limits: the emulator and the planner agree on every case of tests/cell_cases.py.

``test_service_accepts_exactly_the_valid_cases`` sends each case to the emulator over HTTP;
``test_planner_refuses_exactly_what_the_service_refuses`` plans each case and checks that mapping
refuses the same cells and that the JSON it sends is the value that lands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from backfill.config import Job, load_job
from backfill.emulator import EmulatorServer
from backfill.pipeline import build_plan
from backfill.plan.mapping import INVALID, map_batch, value_column
from backfill.plan.source import FILE, PROBLEM, ROW, read_batches
from backfill.plan.units import encode_trait
from cell_cases import CASES, REFUSED, Case, Kind, same_json

STORE = "mem_store_01jtest0000000000000000000"
A = "mem_profile_01jtest000000000000000000a"
TRAITS = {"STRING": "text", "NUMBER": "number", "BOOLEAN": "flag", "ARRAY": "items"}
TEXT_CASES = [c for c in CASES if not c.typed]
TYPED_CASES = [c for c in CASES if c.typed]


def test_the_table_covers_each_kind_both_ways() -> None:
    """A guard on the table itself: every kind has a case that lands and one refused."""
    for kind in TRAITS:
        assert any(c.kind == kind and c.refused for c in CASES), kind
        assert any(c.kind == kind and not c.refused and not c.blank for c in CASES), kind
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------ the service


def test_service_accepts_exactly_the_valid_cases(emulator: EmulatorServer) -> None:
    """Each non-blank case's JSON, PATCHed alone: 202 and read back as ``lands``, or a 400."""
    with httpx.Client(base_url=emulator.url, auth=emulator.auth, timeout=10) as api:
        created = api.post(
            f"/v1/ControlPlane/Stores/{STORE}/TraitGroups",
            json={
                "displayName": "Cells",
                "traits": {name: {"dataType": kind} for kind, name in TRAITS.items()},
            },
        )
        assert created.status_code == 202, created.text
        wrong: list[str] = []
        for case in CASES:
            if case.blank:
                continue
            trait = TRAITS[case.kind]
            body = f'{{"traits": {{"Cells": {{"{trait}": {case.body_value()}}}}}}}'
            answer = api.patch(
                f"/v1/Stores/{STORE}/Profiles/{A}",
                content=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            if case.refused:
                if answer.status_code != 400:
                    wrong.append(f"{case.id}: accepted ({answer.status_code}), expected a 400")
                continue
            if answer.status_code != 202:
                wrong.append(f"{case.id}: {answer.status_code} {answer.text[:200]}")
                continue
            got = api.get(f"/v1/Stores/{STORE}/Profiles/{A}", params={"traitGroups": "Cells"})
            landed = got.json()["traits"]["Cells"][trait]
            if not same_json(case.lands, landed):
                wrong.append(f"{case.id}: landed {str(landed)[:80]!r}")
        assert wrong == []


# ------------------------------------------------------------------------------ the planner


def _job(tmp_path: Path, cases: list[Case], source: str) -> Job:
    """One trait per case (``c<k>`` feeds ``Cells.t<k>``), keyed by profile ID."""
    traits = "\n".join(
        f't{k} = {{ column = "c{k}", type = "{c.kind}"'
        + (f", split = {json.dumps(c.split)}" if c.split is not None else "")
        + " }"
        for k, c in enumerate(cases)
    )
    path = tmp_path / "job.toml"
    path.write_text(
        f"""
name = "cells"
[connection]
base_url = "emulator"
store_id = "{STORE}"
[source]
paths = [{json.dumps(str(tmp_path / source))}]
[identity]
profile_id_column = "id"
[traits.Cells]
{traits}
[output]
dir = {json.dumps(str(tmp_path / "out"))}
""",
        encoding="utf-8",
    )
    return load_job(path)


def _diagonal(cases: list[Case], typed: bool) -> pl.DataFrame:
    """Row ``k`` holds case ``k``'s cell in column ``c<k>`` and blanks elsewhere."""
    n = len(cases)
    columns: dict[str, pl.Series] = {"id": pl.Series("id", [A] * n)}
    for k, case in enumerate(cases):
        blank: Any = None if typed else ""
        values = [blank] * n
        values[k] = case.cell
        columns[f"c{k}"] = pl.Series(f"c{k}", values, dtype=case.dtype if typed else pl.String())
    return pl.DataFrame(columns)


def _judge(job: Job, cases: list[Case], mapped: pl.DataFrame) -> list[str]:
    """Mismatches between the cases and the mapped rows (one row per case, in order)."""
    fragments = mapped.select(
        pl.when(pl.col(value_column(k)).is_not_null()).then(encode_trait(job, k)).alias(f"f{k}")
        for k in range(len(cases))
    )
    wrong: list[str] = []
    for k, case in enumerate(cases):
        invalid = mapped[INVALID][k]
        fragment = fragments[f"f{k}"][k]
        if case.refused:
            if fragment is not None or invalid is None or not invalid.startswith(f"c{k}: "):
                wrong.append(f"{case.id}: not refused ({fragment=}, {invalid=})")
        elif invalid is not None:
            wrong.append(f"{case.id}: refused: {invalid}")
        elif case.blank:
            if fragment is not None:
                wrong.append(f"{case.id}: blank, yet sends {fragment}")
        elif fragment is None:
            wrong.append(f"{case.id}: nothing sent")
        else:
            sent = json.loads("{" + fragment + "}")[f"t{k}"]
            if not same_json(case.lands, sent):
                wrong.append(f"{case.id}: sends {fragment[:80]}")
    return wrong


def test_planner_refuses_exactly_what_the_service_refuses(tmp_path: Path) -> None:
    """CSV cells through the real reader, then mapping and the plan's own JSON encoding."""
    job = _job(tmp_path, TEXT_CASES, "cells.csv")
    _diagonal(TEXT_CASES, typed=False).write_csv(tmp_path / "cells.csv")
    mapped = pl.concat([map_batch(job, batch) for batch in read_batches(job)])
    assert mapped.height == len(TEXT_CASES)
    assert _judge(job, TEXT_CASES, mapped) == []


def test_planner_refuses_typed_cells_exactly_as_the_service(tmp_path: Path) -> None:
    """Typed Parquet cells (lists included) as the reader hands them over: items keep their
    JSON type. Built in memory, since source refuses some of these types at job check; mapping
    must still judge them cell by cell and never crash."""
    job = _job(tmp_path, TYPED_CASES, "cells.parquet")
    frame = _diagonal(TYPED_CASES, typed=True)
    batch = frame.with_columns(
        pl.lit(0, pl.UInt16).alias(FILE),
        pl.int_range(1, frame.height + 1, dtype=pl.UInt32).alias(ROW),
        pl.lit(None, pl.String).alias("__problem"),
    )
    assert _judge(job, TYPED_CASES, map_batch(job, batch)) == []


@pytest.mark.parametrize("kind", ["STRING", "NUMBER", "BOOLEAN", "ARRAY"])
def test_binary_cells_are_reported_not_crashed_on(tmp_path: Path, kind: Kind) -> None:
    """Binary (here not even UTF-8) cannot be sent as any trait: each cell is reported."""
    case = Case("binary", kind, b"\xe9t\xe9", REFUSED, wire="")
    job = _job(tmp_path, [case, case], "cells.parquet")
    batch = pl.DataFrame(
        {
            FILE: pl.Series([0, 0], dtype=pl.UInt16),
            ROW: pl.Series([1, 2], dtype=pl.UInt32),
            PROBLEM: pl.Series([None, None], dtype=pl.String),
            "id": [A, A],
            "c0": pl.Series([b"\xe9t\xe9", None], dtype=pl.Binary),
            "c1": pl.Series([None, [b"x"]], dtype=pl.List(pl.Binary)),
        }
    )
    mapped = map_batch(job, batch)
    assert mapped[INVALID].to_list() == [
        'c0: "0xe974e9" is binary data, not text',
        'c1: "<List(Binary)>" is binary data, not text',
    ]
    assert mapped[value_column(0)].null_count() == 2


def test_a_bad_cell_leaves_the_rest_of_its_row_to_be_sent(tmp_path: Path) -> None:
    """README's promise: the over-long cell is reported and dropped alone; the row's other
    traits still make the profile's request, which the service would take."""
    cases = [
        Case("long", "STRING", "x" * 1025, REFUSED, wire=""),
        Case("number", "NUMBER", "12", 12),
        Case("items", "ARRAY", ";".join(["a"] * 101), REFUSED, wire="", split=";"),
        Case("flag", "BOOLEAN", "yes", True),
    ]
    job = _job(tmp_path, cases, "cells.csv")
    pl.DataFrame({"id": [A], **{f"c{k}": [c.cell] for k, c in enumerate(cases)}}).write_csv(
        tmp_path / "cells.csv"
    )
    result = build_plan(job, offline=True, quiet=True)
    units = pl.read_parquet(result.plan_path)
    assert [json.loads(b) for b in units["body"]] == [{"traits": {"Cells": {"t1": 12, "t3": True}}}]
    assert result.summary.invalid_rows == 1
    reasons = pl.read_csv(result.rejects_path)["reason"].to_list()
    assert len(reasons) == 1
    assert "c0: " in reasons[0] and "has 1025 characters; a STRING holds 1024" in reasons[0]
    assert "c2: " in reasons[0] and "has 101 items; an ARRAY holds 100" in reasons[0]
