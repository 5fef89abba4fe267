"""The Segment space model on a fake clock: identity resolution, traits, dedupe, lag, the seed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.emulator.segment import (
    DEDUPE_WINDOW_S,
    Identity,
    IdType,
    Replica,
    Space,
    SpaceConfigError,
    merge_batch_context,
)
from backfill.emulator.segment_seed import seed_space

T0 = 1_700_000_000.0


def identify(user: str | None = None, anon: str | None = None, mid: str | None = None,
             traits: Any = None, context: Any = None) -> dict[str, Any]:  # fmt: skip
    event: dict[str, Any] = {"type": "identify"}
    if user is not None:
        event["userId"] = user
    if anon is not None:
        event["anonymousId"] = anon
    if mid is not None:
        event["messageId"] = mid
    if traits is not None:
        event["traits"] = traits
    if context is not None:
        event["context"] = context
    return event


def ext(id_type: str, value: str, **over: Any) -> dict[str, Any]:
    return {"id": value, "type": id_type, "collection": "users", "encoding": "none", **over}


def traits_of(space: Space, id_type: str, value: str) -> dict[str, Any]:
    profile = space.profile(id_type, value)
    assert profile is not None, (id_type, value)
    found: dict[str, Any] = profile["traits"]
    return found


def test_an_identify_creates_a_profile_with_its_identifiers_and_traits() -> None:
    space = Space()
    outcome = space.ingest(identify("u1", "a1", "m1", {"email": "e@x.io", "tier": "gold"}), T0)
    assert outcome == "applied"
    profile = space.profile("email", "e@x.io")
    assert profile is not None
    assert profile["traits"] == {"email": "e@x.io", "tier": "gold"}
    assert profile["external_ids"] == [("user_id", "u1"), ("anonymous_id", "a1"),
                                       ("email", "e@x.io")]  # fmt: skip
    assert space.profile("user_id", "u1") == space.profile("anonymous_id", "a1") == profile
    assert profile["segment_id"].startswith("use_")


def test_traits_upsert_per_key_null_deletes_empty_string_stays_objects_replace_whole() -> None:
    space = Space()
    first = {"a": 1, "b": "x", "addr": {"city": "Oslo", "zip": "0150"}, "keep": True}
    space.ingest(identify("u1", mid="m1", traits=first), T0)
    space.ingest(identify("u1", mid="m2", traits={"a": None, "b": "", "addr": {"city": "Rome"}}),
                 T0 + 1)  # fmt: skip
    assert traits_of(space, "user_id", "u1") == {"b": "", "addr": {"city": "Rome"}, "keep": True}


def test_the_last_processed_identify_wins_whatever_its_timestamp() -> None:
    space = Space()
    later = identify("u1", mid="m1", traits={"tier": "new"}) | {"timestamp": "2030-01-01T00:00:00Z"}
    older = identify("u1", mid="m2", traits={"tier": "old"}) | {"timestamp": "2001-01-01T00:00:00Z"}
    space.ingest(later, T0)
    space.ingest(older, T0 + 1)
    assert traits_of(space, "user_id", "u1") == {"tier": "old"}


def test_a_new_user_id_with_a_known_email_becomes_a_new_profile() -> None:
    """The documented example: user_id's limit of 1 drops the event's email (priority 2)."""
    space = Space()
    space.ingest(identify("u1", mid="m1", traits={"email": "e@x.io", "n": 1}), T0)
    space.ingest(identify("u2", mid="m2", traits={"email": "e@x.io", "n": 2}), T0 + 1)
    one, two = space.profile("user_id", "u1"), space.profile("user_id", "u2")
    assert one is not None and two is not None and one != two
    assert two["external_ids"] == [("user_id", "u2")]
    assert space.profile("email", "e@x.io") == one
    assert one["traits"]["n"] == 1 and two["traits"]["n"] == 2


def test_an_event_joining_two_profiles_merges_them_into_the_oldest() -> None:
    space = Space()
    space.ingest(identify(anon="a1", mid="m1", traits={"x": "anon-old", "y": "anon"}), T0)
    space.ingest(identify("u1", mid="m2", traits={"x": "user-new", "z": "user"}), T0 + 1)
    oldest = space.profile("anonymous_id", "a1")
    assert oldest is not None
    space.ingest(identify("u1", "a1", "m3", {"w": 1}), T0 + 2)
    merged = space.profile("user_id", "u1")
    assert merged == space.profile("anonymous_id", "a1")
    assert merged is not None and merged["segment_id"] == oldest["segment_id"]
    assert merged["traits"] == {"x": "user-new", "y": "anon", "z": "user", "w": 1}
    assert len(list(space.profiles())) == 1


def test_over_a_limit_the_events_lowest_priority_identifier_is_dropped() -> None:
    space = Space()
    for i in range(5):
        space.ingest(identify("u1", f"a{i}", f"m{i}"), T0 + i)
    space.ingest(identify("u1", "a5", "m5", {"t": 1}), T0 + 10)
    profile = space.profile("user_id", "u1")
    assert profile is not None
    assert [v for t, v in profile["external_ids"] if t == "anonymous_id"] == [f"a{i}" for i in
                                                                              range(5)]  # fmt: skip
    assert profile["traits"] == {"t": 1}  # matched again with user_id only
    assert space.profile("anonymous_id", "a5") is None


def test_a_configured_limit_and_priority_decide_which_identifier_goes() -> None:
    identity = Identity([IdType("phone", limit=1, priority=1, trait_key="phone"),
                         IdType("user_id", limit=2, priority=9)])  # fmt: skip
    space = Space(identity=identity)
    space.ingest(identify("u1", mid="m1", traits={"phone": "+4711"}), T0)
    # A second phone on u1's profile is over phone's limit of 1; the event's lowest priority is
    # now user_id (9), so user_id is dropped and the phone alone makes a new profile.
    space.ingest(identify("u1", mid="m2", traits={"phone": "+4722"}), T0 + 1)
    first, second = space.profile("phone", "+4711"), space.profile("phone", "+4722")
    assert first is not None and second is not None and first != second
    assert second["external_ids"] == [("phone", "+4722")]


def test_blocked_values_are_never_identifiers() -> None:
    space = Space(identity=Identity(blocked=["regex:^test-", "void"]))
    for value in ("0", "000", "-", "-1", "null", "anonymous", "test-7", "void"):
        assert space.ingest(identify(value, mid=f"m-{value}"), T0) == "no_identifiers"
    assert space.counters.discarded["no_identifiers"] == 8
    event = identify("anonymous", mid="m9", traits={"email": "e@x.io"})
    assert space.ingest(event, T0) == "applied"
    profile = space.profile("email", "e@x.io")
    assert profile is not None and profile["external_ids"] == [("email", "e@x.io")]
    assert list(space.profiles()) == [profile]


def test_values_match_case_sensitively_as_sent() -> None:
    space = Space()
    space.ingest(identify("U1", mid="m1"), T0)
    assert space.profile("user_id", "u1") is None
    assert space.profile("user_id", "U1") is not None


def test_external_ids_feed_identity_and_new_types_join_the_table() -> None:
    space = Space()
    assert space.identity.priority("anonymous_id") == 3
    bad = [
        ext("Phone", "+4799"),
        ext("phone", "+4788", collection="accounts"),
        ext("phone", "+4777", encoding="base64"),
        {"id": "1", "type": "phone", "collection": "users"},
        "junk",
    ]
    context = {"externalIds": [ext("phone", "+4711"), ext("aaa", "x1"), *bad]}
    assert space.ingest(identify("u1", mid="m1", context=context), T0) == "applied"
    assert space.counters.discarded["invalid_external_id"] == 5
    profile = space.profile("phone", "+4711")
    assert profile is not None and profile == space.profile("aaa", "x1")
    assert ("phone", "+4799") not in profile["external_ids"]
    assert space.identity.limit("phone") == 5
    assert [space.identity.priority(t) for t in ("user_id", "email", "aaa", "anonymous_id",
                                                 "phone")] == [1, 2, 3, 4, 5]  # fmt: skip


def test_trait_keyed_custom_types_read_traits_and_context_traits_in_both_spellings() -> None:
    space = Space(identity=Identity([IdType("phone", trait_key="phone_number")]))
    space.ingest(identify("u1", mid="m1", traits={"phoneNumber": "+4711"}), T0)
    space.ingest(identify("u2", mid="m2", context={"traits": {"phone_number": "+4722",
                                                             "email": "b@x.io"}}), T0)  # fmt: skip
    assert space.profile("phone", "+4711") == space.profile("user_id", "u1")
    two = space.profile("phone", "+4722")
    assert two is not None and two == space.profile("email", "b@x.io")
    assert two["traits"] == {}  # context.traits feed identifiers, not profile traits


def test_a_message_id_is_applied_once_within_a_day() -> None:
    space = Space()
    assert space.ingest(identify("u1", mid="m1", traits={"n": 1}), T0) == "applied"
    assert space.ingest(identify("u1", mid="m1", traits={"n": 2}), T0 + 60) == "duplicate"
    assert traits_of(space, "user_id", "u1") == {"n": 1}
    assert space.counters.duplicates == 1
    later = T0 + DEDUPE_WINDOW_S + 1
    assert space.ingest(identify("u1", mid="m1", traits={"n": 3}), later) == "applied"
    assert traits_of(space, "user_id", "u1") == {"n": 3}


def test_missing_message_ids_are_assigned_and_long_ones_dropped() -> None:
    space = Space()
    assert space.ingest(identify("u1", traits={"n": 1}), T0) == "applied"
    assert space.ingest(identify("u1", traits={"n": 2}), T0) == "applied"
    assert space.ingest(identify("u1", mid="m" * 100, traits={"n": 3}), T0) == "applied"
    assert space.ingest(identify("u1", mid="m" * 101, traits={"n": 4}), T0) == (
        "message_id_too_long"
    )
    assert traits_of(space, "user_id", "u1") == {"n": 3}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"type": "identify", "traits": {"a": 1}}, "no_user_anon_id"),
        ({"type": "identify", "userId": "", "anonymousId": None}, "no_user_anon_id"),
        (identify("u1", traits=["a"]), "traits_not_object"),
        (identify("u1", traits="a"), "traits_not_object"),
        (identify("u1", traits={f"t{i}": i for i in range(300)}), "too_many_traits"),
        ({"userId": "u1"}, "missing_type"),
        ({"type": "shout", "userId": "u1"}, "missing_type"),
        ("not an object", "missing_type"),
    ],
)
def test_discard_reasons(event: Any, reason: str) -> None:
    space = Space()
    assert space.ingest(event, T0) == reason
    assert space.counters.discarded == {reason: 1}
    assert list(space.profiles()) == []


def test_299_traits_pass_and_other_event_types_store_nothing() -> None:
    space = Space()
    assert space.ingest(identify("u1", traits={f"t{i}": i for i in range(299)}), T0) == "applied"
    assert space.ingest({"type": "track", "userId": "u9", "event": "E"}, T0) == "ignored"
    assert space.profile("user_id", "u9") is None
    assert space.counters.ignored == 1 and space.counters.events_applied == 1


def test_top_level_context_merges_under_each_items_own() -> None:
    item = {"type": "identify", "context": {"ip": "1.1.1.1"}}
    merged = merge_batch_context(item, {"ip": "9.9.9.9", "library": {"name": "x"}}, {"All": True})
    assert merged["context"] == {"ip": "1.1.1.1", "library": {"name": "x"}}
    assert merged["integrations"] == {"All": True}


def test_writes_become_visible_only_after_the_lag() -> None:
    space = Space(lag=10.0)
    space.ingest(identify("u1", mid="m1", traits={"n": 1}), T0)
    space.ingest(identify("u1", mid="m2", traits={"n": 2}), T0 + 5)
    assert space.profile("user_id", "u1") is not None  # the oracle ignores the delay
    assert space.read(T0 + 9.9).lookup("user_id", "u1") is None
    seen = space.read(T0 + 10).lookup("user_id", "u1")
    assert seen is not None and seen.traits["n"].value == 1
    seen = space.read(T0 + 15).lookup("user_id", "u1")
    assert seen is not None and seen.traits["n"].value == 2


def _docs(replica: Replica) -> list[dict[str, Any]]:
    return [p.to_doc() for p in sorted(replica.profiles.values(), key=lambda p: p.seq)]


def test_state_round_trips_through_docs_and_rows() -> None:
    space = Space(identity=Identity([IdType("phone", trait_key="phone")], ["void"]))
    space.ingest(identify("u1", "a1", "m1", {"phone": "+4711", "x": {"y": 1}}), T0)
    space.ingest(identify("u2", "a1", "m2"), T0 + 1)
    doc, written, removed, seen, _ = space.take_rows()
    assert doc is not None and removed == []
    assert {m for m, _ in seen} == {"m1", "m2"}
    again = Space.from_docs(json.loads(json.dumps(doc)),
                            iter([json.loads(json.dumps(p.to_doc())) for p in written]),
                            iter(seen), 0.0)  # fmt: skip
    assert _docs(again.current) == _docs(space.current)
    assert again.identity.to_doc() == space.identity.to_doc()
    assert again.ingest(identify("u1", mid="m1"), T0 + 2) == "duplicate"
    assert space.take_rows() == (None, [], [], [], None)


def test_the_seed_configures_identity_and_places_profiles() -> None:
    raw = {
        "space_id": "spa_seeded",
        "identifiers": [{"type": "phone", "limit": 2, "priority": 1, "trait_key": "phone"}],
        "blocked": ["regex:^dummy", "void"],
        "profiles": [
            {"external_ids": [{"type": "user_id", "id": "c-1"}], "traits": {"tier": "gold"}},
            {"external_ids": [{"type": "phone", "id": "+4711"}, {"type": "email", "id": "e@x"}]},
        ],
    }
    space = seed_space(raw, "spa_emulator", 5.0, T0)
    assert space.space_id == "spa_seeded"
    assert space.identity.priority("phone") == 1 and space.identity.limit("phone") == 2
    assert space.identity.blocked("dummy-1") and space.identity.blocked("void")
    assert space.read(T0).lookup("user_id", "c-1") is not None  # seeded: visible at once
    assert traits_of(space, "email", "e@x") == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "segment: expected an object"),
        ({"spaces": 1}, "segment: unknown key 'spaces'"),
        ({"identifiers": [{"type": "Phone"}]}, "segment.identifiers[0].type"),
        ({"identifiers": [{"type": "phone", "limit": 0}]}, "segment.identifiers[0].limit"),
        ({"blocked": ["regex:("]}, "blocked rule"),
        ({"profiles": [{"traits": {}}]}, "segment.profiles[0]: 'external_ids' is required"),
        ({"profiles": [{"external_ids": [{"type": "user_id", "id": "-1"}]}]},
         "segment.profiles[0].external_ids[0]: '-1' is a blocked value"),
        ({"profiles": [{"external_ids": []}]}, "segment.profiles[0]: a seeded profile needs"),
    ],
)  # fmt: skip
def test_seed_errors_name_the_place(raw: Any, message: str) -> None:
    with pytest.raises(SpaceConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        seed_space(raw, "spa_emulator", 0.0, T0)


# ------------------------------------------------------------------------ the invariant


EVENTS = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.none() | st.sampled_from(["u1", "u2", "u3"]),
            "anon": st.none() | st.sampled_from([f"a{i}" for i in range(8)]),
            "email": st.none() | st.sampled_from(["e1", "e2", "e3"]),
            "phones": st.lists(st.sampled_from([f"p{i}" for i in range(9)]), max_size=4),
            "n": st.integers(0, 3),
        }
    ),
    min_size=1,
    max_size=25,
)


def _event(i: int, e: dict[str, Any]) -> dict[str, Any]:
    traits: dict[str, Any] = {"n": e["n"]}
    if e["email"]:
        traits["email"] = e["email"]
    context = {"externalIds": [ext("phone", p) for p in e["phones"]]}
    return identify(e["user"] or None, e["anon"] or ("anon-fallback" if not e["user"] else None),
                    f"m{i}", traits, context)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.randoms(use_true_random=False))
def test_no_profile_exceeds_a_limit_and_no_identifier_is_shared(
    events: list[dict[str, Any]], rnd: Any
) -> None:
    """Whatever order the identifies come in; and the lagged replica replays to the same state."""
    order = list(enumerate(events))
    rnd.shuffle(order)
    identity = Identity([IdType("phone", limit=2)])
    space = Space(identity=identity, lag=1.0)
    for step, (i, e) in enumerate(order):
        space.ingest(_event(i, e), T0 + step)
    owners: dict[tuple[str, str], str] = {}
    for profile in space.profiles():
        counts: dict[str, int] = {}
        for id_type, value in profile["external_ids"]:
            counts[id_type] = counts.get(id_type, 0) + 1
            assert (id_type, value) not in owners
            owners[(id_type, value)] = profile["segment_id"]
        for id_type, n in counts.items():
            assert n <= space.identity.limit(id_type), (id_type, profile)
    assert {k: v for k, v in space.current.index.items()} == owners
    assert _docs(space.read(T0 + len(order) + 1)) == _docs(space.current)
