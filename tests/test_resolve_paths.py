"""resolve's short path for rows settled by one profile agrees with the general rules.

``resolve_parts`` sends most rows (every identifier with candidates names the same one profile)
through a few cheap columns, and only the rest through the general rules. Here hypothesis draws
candidate tables (no, one or several profiles per value, repeated profiles, lookup failures, map
and lookup sources) and rows (profile IDs, values with and without candidates, blanks), and the
result must equal the general rules applied to every row, and a plain Python reading of the
rules in the module docstring for the target, outcome and action.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.config import Job, load_job
from backfill.plan.mapping import PID, identifier_column
from backfill.plan.resolve import (
    ACTION,
    AMBIGUOUS,
    BY_LOOKUP,
    BY_MAP,
    BY_PROFILE_ID,
    CANDIDATE_SCHEMA,
    CONFLICT,
    NEW,
    OUTCOME,
    REASON,
    TARGET,
    UNRESOLVED,
    resolve_parts,
)
from backfill.plan.source import FILE, ROW

PROFILES = [f"mem_profile_01jtest000000000000000000{c}" for c in "abc"]
VALUES = ["v1", "v2", "v3"]  # few, so rows often share values with the tables and each other
COLUMNS = [TARGET, OUTCOME, REASON, ACTION]


def make_job(folder: Path, on_ambiguous: str, on_unresolved: str) -> Job:
    path = folder / f"job-{on_ambiguous}-{on_unresolved}.toml"
    path.write_text(
        f"""
name = "paths"
[connection]
base_url = "emulator"
store_id = "mem_store_01jtest0000000000000000000"
[source]
paths = ["{folder / "x.csv"}"]
[identity]
on_ambiguous = "{on_ambiguous}"
on_unresolved = "{on_unresolved}"
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[[identity.identifiers]]
column = "phone"
id_type = "phone"
normalization = "phone"
[traits.Loyalty]
tier = "tier"
[traits.Contact]
email = "email"
phone = "phone"
[output]
dir = "{folder / "out"}"
""",
        encoding="utf-8",
    )
    return load_job(path)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Job]:
    folder = tmp_path_factory.mktemp("resolve-paths")
    return {
        (a, u): make_job(folder, a, u) for a in ("report", "first") for u in ("report", "create")
    }


candidate = st.tuples(
    st.lists(st.sampled_from(PROFILES), max_size=3),  # may repeat a profile
    st.sampled_from([BY_MAP, BY_LOOKUP]),
    st.sampled_from([None, None, "lookup failed after 3 attempt(s): HTTP 503"]),
)
# Per identifier: value -> (profiles, source, error); a value missing has no candidate.
tables = st.lists(
    st.dictionaries(st.sampled_from(VALUES), candidate, min_size=1, max_size=3),
    min_size=2,
    max_size=2,
)
row = st.tuples(
    st.one_of(st.none(), st.none(), st.none(), st.sampled_from(PROFILES)),
    st.sampled_from([None, *VALUES]),
    st.sampled_from([None, *VALUES]),
)


def oracle(job: Job, pid: str | None, ids: list[str | None], tables: list[Any]) -> tuple[Any, ...]:
    """(target, outcome, action) by the module docstring's rules, one row at a time."""
    if pid is not None:
        return pid, BY_PROFILE_ID, "patch"
    found = [tables[k].get(v) if v is not None else None for k, v in enumerate(ids)]
    named = [(k, f) for k, f in enumerate(found) if f is not None and f[0]]
    if not named:
        present = [(k, v) for k, v in enumerate(ids) if v is not None]
        if job.identity.on_unresolved == "create" and present:
            k, v = present[0]
            return f"{NEW}{job.identity.identifiers[k].id_type} {v}", UNRESOLVED, "create"
        return None, UNRESOLVED, None
    profiles, source = named[0][1][0], named[0][1][1]
    if len(profiles) > 1 and job.identity.on_ambiguous != "first":
        return None, AMBIGUOUS, None
    single = profiles[0]
    if any(single not in f[0] for _, f in named):
        return None, CONFLICT, None
    return single, source, "patch"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables=tables,
    rows=st.lists(row, min_size=1, max_size=30),
    on_ambiguous=st.sampled_from(["report", "first"]),
    on_unresolved=st.sampled_from(["report", "create"]),
)
def test_short_path_equals_general_rules(
    jobs: dict[tuple[str, str], Job],
    tables: list[dict[str, tuple[list[str], str, str | None]]],
    rows: list[tuple[str | None, str | None, str | None]],
    on_ambiguous: str,
    on_unresolved: str,
) -> None:
    job = jobs[(on_ambiguous, on_unresolved)]
    candidates = pl.DataFrame(
        [
            (k, value, source, profiles, error)
            for k, table in enumerate(tables)
            for value, (profiles, source, error) in table.items()
        ],
        schema=["k", "value", "source", "profiles", "error"],
        orient="row",
    ).cast(CANDIDATE_SCHEMA)
    mapped = pl.LazyFrame(
        {
            FILE: [0] * len(rows),
            ROW: list(range(1, len(rows) + 1)),
            PID: [r[0] for r in rows],
            identifier_column(0): [r[1] for r in rows],
            identifier_column(1): [r[2] for r in rows],
        },
        schema={
            FILE: pl.UInt16,
            ROW: pl.UInt32,
            PID: pl.String,
            identifier_column(0): pl.String,
            identifier_column(1): pl.String,
        },
    )

    def run(easy_path: bool) -> pl.DataFrame:
        parts = resolve_parts(job, mapped, candidates, looked_up=False, easy_path=easy_path)
        return pl.concat(parts).collect().sort(ROW)

    fast, general = run(True), run(False)
    assert fast.height == len(rows)
    assert fast.columns == general.columns
    assert fast.to_dicts() == general.to_dicts()
    for got, (pid, *ids) in zip(fast.iter_rows(named=True), rows, strict=True):
        assert (got[TARGET], got[OUTCOME], got[ACTION]) == oracle(job, pid, ids, tables)
