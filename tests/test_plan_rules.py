"""The planning rules the sample does not exercise, each on a small extract against the
embedded emulator seeded from tests/data/emulator_seed.json."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from backfill.config import load_job
from backfill.pipeline import build_plan
from backfill.plan.source import read_batches
from backfill.report import PlanResult

SEED = Path(__file__).parent / "data" / "emulator_seed.json"
A = "mem_profile_01jtest000000000000000000a"  # ada@example.com, +13175550001
B = "mem_profile_01jtest000000000000000000b"  # user_id shared-7 (with C), created before C
C = "mem_profile_01jtest000000000000000000c"

COLUMNS = ["email", "phone", "user_id", "updated_at", "tier", "points", "tags", "subscribed"]


def job_file(
    tmp_path: Path,
    paths: list[str],
    *,
    identity: str = "",
    traits: str = "",
    identifiers: tuple[tuple[str, str, str], ...] = (
        ("email", "email", "email"),
        ("phone", "phone", "phone"),
        ("user_id", "user_id", "trim"),
    ),
    source: str = "",
) -> Path:
    ids = "".join(
        f'[[identity.identifiers]]\ncolumn = "{c}"\nid_type = "{t}"\nnormalization = "{n}"\n'
        for c, t, n in identifiers
    )
    text = f"""
name = "rules"
[connection]
base_url = "emulator"
store_id = "mem_store_01jtest0000000000000000000"
seed = "{SEED}"
[source]
paths = {json.dumps(paths)}
order_by = "updated_at"
{source}
[identity]
{identity}
{ids}
[traits.Loyalty]
{traits or 'tier = "tier"'}
[send]
rate = 5000
[output]
dir = "{tmp_path / "out"}"
"""
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> str:
    pl.DataFrame([{c: r.get(c, "") for c in COLUMNS} for r in rows]).write_csv(path)
    return str(path)


def units(result: PlanResult) -> dict[str, dict[str, Any]]:
    frame = pl.read_parquet(result.plan_path)
    return {row["key"]: row for row in frame.iter_rows(named=True)}


def bodies(result: PlanResult) -> dict[str | None, Any]:
    return {u["profile_id"]: json.loads(u["body"])["traits"] for u in units(result).values()}


def rejects(result: PlanResult) -> list[dict[str, Any]]:
    return pl.read_csv(result.rejects_path).to_dicts()


def plan(path: Path, **kwargs: Any) -> PlanResult:
    return build_plan(load_job(path), quiet=True, **kwargs)


def test_nulls_delete_sends_null_when_the_latest_row_is_blank(tmp_path: Path) -> None:
    """Under nulls = "delete" a blank cell is a value (null): the latest row decides."""
    rows = [
        {"email": "ada@example.com", "updated_at": "2026-01-01T00:00:00Z", "tier": "gold"},
        {"email": "ada@example.com", "updated_at": "2026-02-01T00:00:00Z", "tier": " "},
    ]
    traits = 'tier = { column = "tier", nulls = "delete" }'
    result = plan(job_file(tmp_path, [write_csv(tmp_path / "x.csv", rows)], traits=traits))
    assert bodies(result) == {A: {"Loyalty": {"tier": None}}}
    rows.reverse()  # file order does not matter, only order_by
    result = plan(job_file(tmp_path, [write_csv(tmp_path / "x.csv", rows)], traits=traits))
    assert bodies(result) == {A: {"Loyalty": {"tier": None}}}
    rows[0]["updated_at"] = "2025-12-01T00:00:00Z"  # now the blank row is the older one
    result = plan(job_file(tmp_path, [write_csv(tmp_path / "x.csv", rows)], traits=traits))
    assert bodies(result) == {A: {"Loyalty": {"tier": "gold"}}}


def test_blank_cells_never_overwrite_by_default(tmp_path: Path) -> None:
    """With the default nulls = "skip", a later blank leaves the earlier value in place."""
    rows = [
        {"email": "ada@example.com", "updated_at": "2026-01-01T00:00:00Z", "tier": "gold"},
        {"email": "ada@example.com", "updated_at": "2026-02-01T00:00:00Z", "tier": ""},
    ]
    result = plan(job_file(tmp_path, [write_csv(tmp_path / "x.csv", rows)]))
    assert bodies(result) == {A: {"Loyalty": {"tier": "gold"}}}


def test_ambiguous_is_reported_or_sent_to_the_earliest(tmp_path: Path) -> None:
    """A value held by two profiles is reported by default; on_ambiguous = "first" picks the
    earliest (canonical) one and the row is not rejected."""
    rows = [{"user_id": "shared-7", "tier": "silver"}]
    src = [write_csv(tmp_path / "x.csv", rows)]
    reported = plan(job_file(tmp_path, src))
    assert reported.summary.ambiguous == 1
    (line,) = rejects(reported)
    assert line["outcome"] == "ambiguous"
    assert B in line["reason"] and C in line["reason"]
    first = plan(job_file(tmp_path, src, identity='on_ambiguous = "first"'))
    assert (first.summary.ambiguous, first.summary.resolved_lookup) == (0, 1)
    assert bodies(first) == {B: {"Loyalty": {"tier": "silver"}}}
    assert rejects(first) == []


def test_unresolved_people_become_create_units(tmp_path: Path) -> None:
    """on_unresolved = "create" plans one POST per unknown person, keyed by their first
    identifier, with their latest values; nothing is rejected."""
    rows = [
        {"email": "New@Example.com", "updated_at": "2026-01-01", "tier": "bronze"},
        {
            "email": "new@example.com",
            "phone": "3175559999",
            "updated_at": "2026-03-01",
            "tier": "gold",
        },
    ]
    traits = 'tier = "tier"\nemail = "email"\nphone = "phone"\nuserId = "user_id"'
    result = plan(
        job_file(
            tmp_path,
            [write_csv(tmp_path / "x.csv", rows)],
            identity='on_unresolved = "create"',
            traits=traits,
        )
    )
    (unit,) = units(result).values()
    assert unit["key"] == "new:email new@example.com#0"
    assert (unit["action"], unit["profile_id"], unit["rows"]) == ("create", None, 2)
    body = {"tier": "gold", "email": "new@example.com", "phone": "3175559999"}
    assert json.loads(unit["body"]) == {"traits": {"Loyalty": body}}
    assert result.summary.to_create == 1
    assert rejects(result) == []


def test_typed_parquet_columns_are_taken_as_they_are(tmp_path: Path) -> None:
    """Numbers, booleans, lists and datetimes from a warehouse export need no parsing."""
    frame = pl.DataFrame(
        {
            "email": ["ada@example.com", "ada@example.com"],
            "phone": [None, None],
            "user_id": [None, None],
            "updated_at": [datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)],
            "tier": ["gold", "silver"],
            "points": [1200, 7],
            "tags": [["a", " b ", ""], ["z"]],
            "subscribed": [True, False],
        }
    )
    path = tmp_path / "typed.parquet"
    frame.write_parquet(path)
    traits = "\n".join(
        [
            'tier = "tier"',
            'points = { column = "points", type = "NUMBER" }',
            'tags = { column = "tags", type = "ARRAY" }',
            'subscribed = { column = "subscribed", type = "BOOLEAN" }',
        ]
    )
    result = plan(job_file(tmp_path, [str(path)], traits=traits))
    assert bodies(result) == {
        A: {"Loyalty": {"tier": "gold", "points": 1200, "tags": ["a", "b"], "subscribed": True}}
    }


def test_several_files_gzip_and_row_numbers_per_file(tmp_path: Path) -> None:
    """Globs take every file in sorted order; rows are numbered within their own file."""
    (tmp_path / "in").mkdir()
    write_csv(tmp_path / "in" / "a.csv", [{"email": "nobody@example.com", "tier": "gold"}])
    plain = tmp_path / "in" / "b.csv"
    write_csv(plain, [{"email": "ada@example.com", "tier": "gold"}, {"email": "x@y.z"}])
    with gzip.open(tmp_path / "in" / "c.csv.gz", "wb") as f:
        f.write(plain.read_bytes())
    plain.unlink()
    result = plan(
        job_file(tmp_path, [str(tmp_path / "in" / "*.csv"), str(tmp_path / "in" / "*.csv.gz")])
    )
    assert result.summary.files == 2
    assert result.summary.rows == 3
    lines = {(line["file"], line["row"]) for line in rejects(result)}
    assert lines == {(str(tmp_path / "in" / "a.csv"), 1), (str(tmp_path / "in" / "c.csv.gz"), 2)}
    assert bodies(result) == {A: {"Loyalty": {"tier": "gold"}}}


def test_a_later_identifier_naming_another_profile_is_a_conflict(tmp_path: Path) -> None:
    """email says A, user_id says only B and C: conflict. A later identifier that also names
    the target (or nothing) is no conflict."""
    rows = [
        {"email": "ada@example.com", "user_id": "shared-7", "tier": "gold"},
        {"email": "ada@example.com", "phone": "1-317-555-0001", "tier": "gold"},
        {"email": "ada@example.com", "user_id": "unknown-9", "tier": "gold"},
    ]
    result = plan(job_file(tmp_path, [write_csv(tmp_path / "x.csv", rows)]))
    assert result.summary.conflict == 1
    (line,) = rejects(result)
    assert line["row"] == 1
    assert line["outcome"] == "conflict"
    assert A in line["reason"] and B in line["reason"] and "user_id shared-7" in line["reason"]
    assert result.summary.resolved_lookup == 2


def test_failed_lookups_are_reported_and_asked_again_next_time(tmp_path: Path) -> None:
    """An idType the store does not know answers 400: the rows say why, nothing is cached."""
    rows = [{"email": "crm-1", "tier": "gold"}]
    path = job_file(
        tmp_path,
        [write_csv(tmp_path / "x.csv", rows)],
        identifiers=(("email", "loyalty_no", "trim"),),
    )
    first = plan(path)
    assert (first.summary.lookups_failed, first.summary.unresolved) == (1, 1)
    (line,) = rejects(first)
    assert "lookup failed after 1 attempt(s): HTTP 400" in line["reason"]
    assert "loyalty_no" in line["reason"]
    second = plan(path)
    assert (second.summary.lookups_asked, second.summary.lookups_cached) == (1, 0)


def test_unreadable_order_values_count_as_oldest(tmp_path: Path) -> None:
    """A row whose order_by cannot be read loses to any row with a time."""
    rows = [
        {"email": "ada@example.com", "updated_at": "2026-01-01 08:00:00", "tier": "silver"},
        {"email": "ada@example.com", "updated_at": "yesterday", "tier": "gold"},
    ]
    result = plan(job_file(tmp_path, [write_csv(tmp_path / "x.csv", rows)]))
    assert bodies(result) == {A: {"Loyalty": {"tier": "silver"}}}


def test_batches_are_bounded(tmp_path: Path) -> None:
    """The reader never hands over more than source.batch_rows rows at once, and numbers rows
    across batches, for CSV and Parquet alike."""
    rows = [{"email": f"p{i}@example.com", "tier": "gold"} for i in range(2_500)]
    csv = write_csv(tmp_path / "x.csv", rows)
    pl.read_csv(csv, infer_schema=False).write_parquet(tmp_path / "x.parquet", row_group_size=700)
    for source in (csv, str(tmp_path / "x.parquet")):
        path = job_file(tmp_path, [source], source="batch_rows = 1000")
        batches = list(read_batches(load_job(path)))
        assert [b.height for b in batches] == [1000, 1000, 500]
        joined = pl.concat(batches)
        assert joined["__row"].to_list() == list(range(1, 2_501))
        assert joined["email"].to_list() == [r["email"] for r in rows]
