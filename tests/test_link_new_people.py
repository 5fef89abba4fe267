"""People to create who share identifier values in the extract are planned as one person."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from backfill.config import load_job
from backfill.plan.mapping import ORDER, identifier_column
from backfill.plan.resolve import ACTION, BY_LOOKUP, OUTCOME, TARGET, UNRESOLVED, relink
from backfill.plan.resolve import link_new_people as link
from backfill.plan.source import FILE, ROW

P = "mem_profile_01jlink000000000000000000p"
Q = "mem_profile_01jlink000000000000000000q"
JOB = """name = "link"
[connection]
base_url = "emulator"
store_id = "mem_store_01jlink0000000000000000000"
[source]
paths = ["x.csv"]
[identity]
on_unresolved = "create"
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[[identity.identifiers]]
column = "phone"
id_type = "phone"
normalization = "phone"
[traits.Contact]
email = "email"
phone = "phone"
"""


def resolved(rows: list[tuple[str, str | None, str | None, int]]) -> pl.LazyFrame:
    """(target, email, phone, order) per row, as resolve_parts leaves them."""
    return pl.LazyFrame(
        {
            TARGET: [r[0] for r in rows],
            identifier_column(0): [r[1] for r in rows],
            identifier_column(1): [r[2] for r in rows],
            ORDER: [r[3] for r in rows],
            FILE: [0] * len(rows),
            ROW: list(range(1, len(rows) + 1)),
            OUTCOME: [UNRESOLVED if r[0].startswith("new:") else BY_LOOKUP for r in rows],
            ACTION: ["create" if r[0].startswith("new:") else "patch" for r in rows],
            "__reason": [None] * len(rows),
        }
    )


def moved(tmp_path: Path, rows: list[tuple[str, str | None, str | None, int]]) -> dict[int, Any]:
    (tmp_path / "job.toml").write_text(JOB)
    job = load_job(tmp_path / "job.toml")
    frame = resolved(rows)
    out = relink(frame, link(job, frame)).collect()
    return dict(zip(out[ROW], zip(out[TARGET], out[ACTION], strict=True), strict=True))


def test_new_keys_sharing_a_phone_become_one_keyed_by_the_latest_email(tmp_path: Path) -> None:
    """Two new keys linked by a phone: one person, keyed by the best identifier type (email)
    with its latest row's value, so the body carries exactly that value."""
    got = moved(tmp_path, [
        ("new:email a@x.com", "a@x.com", "+13175557001", 1),
        ("new:phone +13175557001", None, "+13175557001", 2),
        ("new:email b@x.com", "b@x.com", "+13175557001", 3),
        ("new:email z@x.com", "z@x.com", None, 4),  # linked to nobody: unchanged
    ])  # fmt: skip
    assert got == {
        1: ("new:email b@x.com", "create"),
        2: ("new:email b@x.com", "create"),
        3: ("new:email b@x.com", "create"),
        4: ("new:email z@x.com", "create"),
    }


def test_new_rows_sharing_a_value_with_one_profile_go_to_it(tmp_path: Path) -> None:
    """A new key whose phone a row resolved to profile P holds: that person is P."""
    got = moved(tmp_path, [
        (P, "p@x.com", "+13175557002", 1),
        ("new:phone +13175557002", None, "+13175557002", 2),
    ])  # fmt: skip
    assert got == {1: (P, "patch"), 2: (P, "patch")}


def test_a_chain_links_across_several_values(tmp_path: Path) -> None:
    """a-phone1, phone1-b(email), b-phone2, phone2-only: all one person."""
    got = moved(tmp_path, [
        ("new:email a@x.com", "a@x.com", "+13175557003", 1),
        ("new:email b@x.com", "b@x.com", "+13175557003", 2),
        ("new:email b@x.com", "b@x.com", "+13175557004", 3),
        ("new:phone +13175557004", None, "+13175557004", 4),
    ])  # fmt: skip
    assert {target for target, _ in got.values()} == {"new:email b@x.com"}


def test_new_rows_linked_to_two_profiles_are_left_to_the_store(tmp_path: Path) -> None:
    """Linked to P by email and to Q by phone: which one is the store's to say; unchanged."""
    got = moved(tmp_path, [
        (P, "p@x.com", None, 1),
        (Q, None, "+13175557005", 2),
        ("new:email p@x.com", "p@x.com", "+13175557005", 3),
    ])  # fmt: skip
    assert got[3] == ("new:email p@x.com", "create")
