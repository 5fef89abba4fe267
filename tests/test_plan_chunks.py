"""Chunking at the API's limits: never over 50 groups or 99 traits a group, nothing lost."""

from __future__ import annotations

from collections import Counter

import pytest
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


@given(group_sizes.filter(bool), st.integers(2, 60), st.integers(2, 120), st.data())
def test_identifier_traits_go_in_every_chunk(
    sizes: list[int], max_groups: int, max_traits: int, data: st.DataObject
) -> None:
    """Bulk and import: the traits the store resolves by are in every chunk, every other trait
    in exactly one, and no chunk breaks a limit with them in it."""
    traits = [(f"G{g}", f"t{i}") for g, n in enumerate(sizes) for i in range(n)]
    always = data.draw(
        st.lists(st.sampled_from(range(len(traits))), min_size=1, max_size=3, unique=True)
    )
    fixed = [traits[i][0] for i in always]
    if len(set(fixed)) >= max_groups or max(Counter(fixed).values()) >= max_traits:
        return  # no room left beside the identifiers: refused, tested below
    chunks = chunk_traits(traits, max_groups, max_traits, always=always)
    assert chunks
    for chunk in chunks:
        assert chunk[: len(always)] == always
        per_group = Counter(traits[i][0] for i in chunk)
        assert len(per_group) <= max_groups
        assert max(per_group.values()) <= max_traits
    rest = Counter(i for chunk in chunks for i in chunk if i not in always)
    assert sorted(rest) == sorted(set(range(len(traits))) - set(always))
    assert set(rest.values()) <= {1}


def test_identifiers_alone_filling_a_request_are_refused() -> None:
    """Identifier traits that leave no room for anything else cannot make a chunk."""
    with pytest.raises(ValueError, match="fill a request"):
        chunk_traits([("G", "a"), ("G", "b"), ("H", "c")], 2, 99, always=[0, 2])
