"""Chunking at the API's limits: never over 50 groups or 99 traits a group, nothing lost."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from backfill.plan.units import chunk_traits

group_sizes = st.lists(st.integers(min_value=1, max_value=260), min_size=0, max_size=130)


@given(group_sizes, st.integers(1, 60), st.integers(1, 120))
def test_chunks_respect_limits_and_cover_every_trait_once(
    sizes: list[int], max_groups: int, max_traits: int
) -> None:
    """Any mapping splits into chunks within both limits, each trait in exactly one chunk."""
    traits = [(f"G{g}", f"t{i}") for g, n in enumerate(sizes) for i in range(n)]
    chunks = chunk_traits(traits, max_groups, max_traits)
    seen = Counter(i for chunk in chunks for i in chunk)
    assert sorted(seen) == list(range(len(traits)))
    assert set(seen.values()) <= {1}
    for chunk in chunks:
        per_group = Counter(traits[i][0] for i in chunk)
        assert len(per_group) <= max_groups
        assert max(per_group.values()) <= max_traits


def test_a_store_sized_mapping_is_one_request() -> None:
    """50 groups of 95 traits (the store's own limits) fit one request."""
    traits = [(f"G{g}", f"t{i}") for g in range(50) for i in range(95)]
    assert len(chunk_traits(traits)) == 1


def test_split_only_when_needed() -> None:
    """51 groups need two requests; a 100-trait group is split across two."""
    assert len(chunk_traits([(f"G{g}", "t") for g in range(51)])) == 2
    assert [len(c) for c in chunk_traits([("G", f"t{i}") for i in range(100)])] == [99, 1]
