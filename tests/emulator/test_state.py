"""The emulated account's rules, in process with a controlled clock (HTTP is tested elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from backfill.emulator.apierror import ApiError
from backfill.emulator.state import Account, Redirect, Store


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_store(account: Account, **email: Any) -> Store:
    store = account.create_store({"displayName": "unit"})
    account.put_identity(
        store,
        {
            "identifierConfigs": [
                {"idType": "email", "normalization": "email", **email},
                {"idType": "phone", "normalization": "phone"},
                {"idType": "crm", "normalization": "trim", "enforceUnique": False},
            ],
            "matchingRules": ["email", "phone", "crm"],
        },
    )
    account.create_group(
        store,
        {
            "displayName": "Profile",
            "traits": {
                "email": {"dataType": "STRING", "idTypePromotion": "email"},
                "altEmail": {"dataType": "STRING", "idTypePromotion": "email"},
                "phone": {"dataType": "STRING", "idTypePromotion": "phone"},
                "crm": {"dataType": "STRING", "idTypePromotion": "crm"},
                "name": {"dataType": "STRING"},
                "score": {"dataType": "NUMBER"},
            },
        },
    )
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def account(clock: Clock) -> Account:
    return Account(clock=clock)


def create(account: Account, store: Store, **traits: Any) -> str:
    return account.create_profile(store, {"traits": {"Profile": traits}})


def traits_of(account: Account, store: Store, profile_id: str) -> dict[str, Any]:
    profile = account.profile(store, profile_id, write=False)
    body: dict[str, Any] = account.profile_json(profile, None)["traits"].get("Profile", {})
    return body


def test_create_resolves_by_matching_rules(account: Account, clock: Clock) -> None:
    """No match creates; a match (after normalization) updates the same profile."""
    store = make_store(account)
    first = create(account, store, email="Ann@Example.com", name="Ann")
    clock.now += 1
    again = create(account, store, email=" ann@example.COM", score=3)
    assert again == first
    assert traits_of(account, store, first) == {
        "email": " ann@example.COM",
        "name": "Ann",
        "score": 3,
    }
    assert len(store.live_ids) == 1


def test_rules_are_tried_in_priority_order(account: Account, clock: Clock) -> None:
    """The email rule picks the target; the unique phone it carries then merges its owner in."""
    store = make_store(account)
    by_email = create(account, store, email="a@x.io")
    clock.now += 1
    by_phone = create(account, store, phone="3175550001")
    clock.now += 1
    chosen = create(account, store, phone="3175550001", email="a@x.io")
    assert chosen == by_email
    assert store.live_ids == [by_email]
    assert store.profiles[by_phone].merged_into == by_email


def test_without_enforce_unique_the_first_rule_match_is_updated(account: Account) -> None:
    """A non-unique identifier never merges: the earliest profile holding it is updated."""
    store = make_store(account)
    one = create(account, store, crm="7", name="one")
    two = create(account, store, email="two@x.io")
    account.add_identifier(store, store.profiles[two], "crm", "7", 0.0)
    assert create(account, store, crm="7", score=9) == one
    assert traits_of(account, store, one)["score"] == 9
    assert store.live_ids == sorted([one, two])


def test_several_matches_merge_into_the_earliest(account: Account, clock: Clock) -> None:
    """One rule matching two profiles merges them into the earliest; latest write per trait wins."""
    store = make_store(account)
    older = create(account, store, email="a@x.io", name="old", score=1)
    clock.now += 1
    newer = create(account, store, email="b@x.io", name="new")
    clock.now += 1
    assert create(account, store, email="a@x.io", altEmail="B@x.io") == older
    assert store.profiles[newer].merged_into == older
    assert store.live_ids == [older]
    assert traits_of(account, store, older)["name"] == "new"
    assert traits_of(account, store, older)["score"] == 1
    with pytest.raises(Redirect) as moved:
        account.profile(store, newer, write=True)
    assert (moved.value.status, moved.value.canonical_id) == (308, older)
    with pytest.raises(Redirect) as read:
        account.profile(store, newer, write=False)
    assert read.value.status == 301
    assert account.lookup(store, {"idType": "email", "value": "b@x.io"})["profiles"] == [older]


def test_adding_a_unique_value_held_elsewhere_merges(account: Account, clock: Clock) -> None:
    """Attaching an enforceUnique value that another profile holds merges the two profiles."""
    store = make_store(account)
    older = create(account, store, email="a@x.io")
    clock.now += 1
    newer = create(account, store, email="b@x.io")
    canonical = account.add_identifier(store, store.profiles[newer], "email", "a@x.io", clock.now)
    assert canonical.id == older
    assert store.profiles[newer].merged_into == older
    assert store.profiles[older].identifiers["email"] == ["a@x.io", "b@x.io"]


def test_shared_identifier_without_enforce_unique_does_not_merge(account: Account) -> None:
    """enforceUnique=false lets two profiles share a value; lookup then returns both."""
    store = make_store(account)
    one = create(account, store, email="one@x.io", crm="42")
    two = create(account, store, email="two@x.io")
    account.add_identifier(store, store.profiles[two], "crm", "42", 0.0)
    found = account.lookup(store, {"idType": "crm", "value": " 42 "})
    assert found == {"normalizedValue": "42", "profiles": [one, two]}


@pytest.mark.parametrize(("policy", "kept"), [("fifo", ["b", "c"]), ("lifo", ["a", "c"])])
def test_identifier_limit_policy(account: Account, policy: str, kept: list[str]) -> None:
    """Past the limit, fifo drops the oldest value and lifo the newest before the one added."""
    store = make_store(account, limit=2, limitPolicy=policy)
    pid = create(account, store, email="a")
    for value in ("b", "c"):
        account.add_identifier(store, store.profiles[pid], "email", value, 0.0)
    assert store.profiles[pid].identifiers["email"] == kept
    dropped = ({"a", "b", "c"} - set(kept)).pop()
    assert account.lookup(store, {"idType": "email", "value": dropped})["profiles"] == []


def test_patch_merges_and_null_deletes(account: Account) -> None:
    """PATCH adds and replaces only the traits sent; null removes one."""
    store = make_store(account)
    pid = create(account, store, email="a@x.io", name="A", score=1)
    profile = store.profiles[pid]
    account.patch_profile(store, profile, {"traits": {"Profile": {"score": 2, "name": None}}})
    assert traits_of(account, store, pid) == {"email": "a@x.io", "score": 2}


def test_bulk_validates_every_profile_before_writing_any(account: Account) -> None:
    """One bad profile in a bulk request rejects the whole batch and writes nothing."""
    store = make_store(account)
    body = {
        "profiles": [
            {"traits": {"Profile": {"email": "ok@x.io"}}},
            {"traits": {"Profile": {"email": "bad@x.io", "score": "high"}}},
        ]
    }
    with pytest.raises(ApiError) as err:
        account.bulk_upsert(store, body)
    assert err.value.status == 400
    assert store.live_ids == []


def test_write_lag_hides_writes_until_it_passes(clock: Clock) -> None:
    """Reads see a write only write_lag seconds later; new profiles are 404 until then."""
    account = Account(clock=clock, write_lag=0.5)
    store = make_store(account)
    pid = create(account, store, email="a@x.io", score=1)
    profile = store.profiles[pid]
    with pytest.raises(ApiError) as err:
        account.profile_json(profile, None)
    assert err.value.status == 404
    assert account.lookup(store, {"idType": "email", "value": "a@x.io"})["profiles"] == []
    clock.now += 0.6
    assert traits_of(account, store, pid)["score"] == 1
    account.patch_profile(store, profile, {"traits": {"Profile": {"score": 2}}})
    assert traits_of(account, store, pid)["score"] == 1
    clock.now += 0.6
    assert traits_of(account, store, pid)["score"] == 2


def test_deleting_a_trait_definition_removes_its_values(account: Account) -> None:
    """dataType "" deletes the definition and the values profiles held for it."""
    store = make_store(account)
    pid = create(account, store, email="a@x.io", score=5)
    group = store.groups["Profile"]
    account.patch_group(store, group, {"traits": {"score": {"dataType": ""}}})
    assert "score" not in group.traits
    assert group.version == 2
    assert traits_of(account, store, pid) == {"email": "a@x.io"}


def test_profile_pages_walk_every_profile_once(account: Account, clock: Clock) -> None:
    """Keyset pages in both orders list each live profile exactly once, newest first by default."""
    store = make_store(account)
    ids = []
    for i in range(23):
        clock.now += 1
        ids.append(create(account, store, email=f"{i}@x.io"))
    for order, expected in (("ASC", ids), ("DESC", ids[::-1])):
        seen: list[str] = []
        token = None
        while True:
            page = account.profile_ids(store, 5, token, order)
            seen += page["profiles"]
            token = page["meta"].get("nextToken")
            if token is None:
                break
        assert seen == expected


def test_limits_on_a_patch_body(account: Account) -> None:
    """More than 50 trait groups, or more than 99 traits in one group, is a 400."""
    store = make_store(account)
    pid = create(account, store, email="a@x.io")
    profile = store.profiles[pid]
    too_many_groups: dict[str, dict[str, int]] = {f"G{i}": {} for i in range(51)}
    with pytest.raises(ApiError, match="At most 50 trait groups"):
        account.patch_profile(store, profile, {"traits": too_many_groups})
    too_many_traits = {"Profile": {f"t{i}": 1 for i in range(100)}}
    with pytest.raises(ApiError, match="At most 99 traits"):
        account.patch_profile(store, profile, {"traits": too_many_traits})
