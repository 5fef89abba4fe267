"""The emulator's Segment space over real HTTP: the official client's writes land as the facts say,
and every Tracking/Profile API shape, limit, error body, fault and restart a target will meet."""

from __future__ import annotations

import gzip
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

# analytics-python ships no type information (no py.typed).
from segment.analytics import Client  # type: ignore[import-untyped]

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator.faults import AccountLimit
from backfill.emulator.limits import make_limiter
from backfill.errors import ConfigError

KEY = "emulator-write-key"
TOKEN = "emulator-access-token"
SPACE = "spa_emulator"
BASE = f"/v1/spaces/{SPACE}/collections/users/profiles"


class Clock:
    """A fake clock for the space and the limiters: it moves only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(random_seed=7)) as server:
        yield server


def batch(
    emu: EmulatorServer, items: list[Any], key: str | None = KEY, **extra: Any
) -> httpx.Response:
    body: dict[str, Any] = {"batch": items, **extra}
    return httpx.post(emu.url + "/v1/batch", json=body, auth=(key, "") if key else None, timeout=10)


def ident(
    user: str | None, mid: str | None = None, traits: Any = None, **more: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "identify", **more}
    if user is not None:
        event["userId"] = user
    if mid is not None:
        event["messageId"] = mid
    if traits is not None:
        event["traits"] = traits
    return event


def read(emu: EmulatorServer, ref: str, route: str = "traits", token: str | None = TOKEN,
         space: str = SPACE, **params: Any) -> httpx.Response:  # fmt: skip
    url = f"{emu.url}/v1/spaces/{space}/collections/users/profiles/{ref}/{route}"
    auth = (token, "") if token is not None else None
    return httpx.get(url, params=params, auth=auth, timeout=10)


def traits(emu: EmulatorServer, ref: str) -> dict[str, Any]:
    response = read(emu, ref, limit=100)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["traits"]
    return found


def tracking(emu: EmulatorServer) -> dict[str, Any]:
    found: dict[str, Any] = emu.stats()["segment"]["tracking"]
    return found


def ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}


# --------------------------------------------------------------------- the official client


def official(emu: EmulatorServer, key: str = KEY, **kwargs: Any) -> tuple[Any, list[Exception]]:
    errors: list[Exception] = []
    client = Client(key, host=emu.url, upload_interval=0.05, max_retries=1,
                    on_error=lambda exc, _batch: errors.append(exc), **kwargs)  # fmt: skip
    return client, errors


def test_the_official_client_lands_identifies_gzipped(emu: EmulatorServer) -> None:
    """Traits with null, several in a batch, externalIds in context, gzip=True."""
    client, errors = official(emu, gzip=True)
    client.identify("c-1", {"tier": "gold", "nickname": "Bo", "email": "bo@x.io"})
    client.identify("c-1", {"nickname": None, "points": 0, "note": ""})
    context = {"externalIds": [{"id": "+4711", "type": "phone", "collection": "users",
                                "encoding": "none"}]}  # fmt: skip
    client.identify("c-2", {"tier": "silver"}, context=context)
    client.identify(anonymous_id="anon-9", traits={"seen": True})
    client.flush()
    client.shutdown()
    assert errors == []
    assert traits(emu, "user_id:c-1") == {"tier": "gold", "email": "bo@x.io", "points": 0,
                                          "note": ""}  # fmt: skip
    assert traits(emu, "email:bo%40x.io") == traits(emu, "user_id:c-1")
    assert traits(emu, "phone:%2B4711") == {"tier": "silver"}
    assert traits(emu, "anonymous_id:anon-9") == {"seen": True}
    stats = emu.stats()
    assert stats["segment"]["tracking"]["events_applied"] == 4
    assert stats["byOperation"]["segment.batch"] == {
        "200": stats["segment"]["tracking"]["requests"]
    }
    assert emu.emulator.segment.identity.priority("phone") >= 3  # the new type joined the table


def test_the_official_client_batches_many_messages(emu: EmulatorServer) -> None:
    client, errors = official(emu, upload_size=50)
    for i in range(120):
        client.identify(f"c-{i}", {"n": i})
    client.flush()
    client.shutdown()
    assert errors == []
    assert len(list(emu.emulator.segment.profiles())) == 120
    assert traits(emu, "user_id:c-119") == {"n": 119}
    assert tracking(emu)["requests"] >= 3


def test_a_wrong_write_key_lands_nothing(emu: EmulatorServer) -> None:
    logging.getLogger("segment").disabled = True  # the client logs the refusal as an error
    try:
        client, errors = official(emu, key="not-the-key")
        client.identify("c-1", {"tier": "gold"})
        client.flush()
        client.shutdown()
    finally:
        logging.getLogger("segment").disabled = False
    assert len(errors) == 1
    assert (errors[0].status, errors[0].code) == (401, "unauthorized")  # type: ignore[attr-defined]
    assert list(emu.emulator.segment.profiles()) == []
    assert read(emu, "user_id:c-1").status_code == 404


# ------------------------------------------------------------------------ Tracking API


def test_write_key_in_basic_with_or_without_colon_or_in_the_body(emu: EmulatorServer) -> None:
    url = emu.url + "/v1/batch"
    import base64

    bare = base64.b64encode(KEY.encode()).decode()
    ok(httpx.post(url, json={"batch": [ident("a", "m1")]}, auth=(KEY, "")))
    ok(
        httpx.post(
            url, json={"batch": [ident("b", "m2")]}, headers={"Authorization": f"Basic {bare}"}
        )
    )
    ok(httpx.post(url, json={"batch": [ident("c", "m3")], "writeKey": KEY}))
    ok(httpx.post(emu.url + "/v1/identify", json=ident("d", "m4", {"x": 1}) | {"writeKey": KEY}))
    for user in "abcd":
        assert emu.emulator.segment.profile("user_id", user) is not None
    for auth, body in (((KEY + "x", ""), {}), (None, {}), (None, {"writeKey": "nope"})):
        response = httpx.post(url, json={"batch": [ident("e", "m5")], **body}, auth=auth)
        assert response.status_code == 401
        assert response.json() == {
            "code": "unauthorized",
            "message": "Invalid or missing write key.",
        }
    assert emu.emulator.segment.profile("user_id", "e") is None


def test_bodies_the_api_cannot_read_are_400(emu: EmulatorServer) -> None:
    url = emu.url + "/v1/batch"
    auth = (KEY, "")
    text = httpx.post(
        url, content=b'{"batch": []}', auth=auth, headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 400 and text.json()["code"] == "invalid_request"
    bad = httpx.post(url, content=b"{nope", auth=auth, headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_json"
    assert set(bad.json()) == {"code", "message"}
    not_list = httpx.post(url, json={"batch": {"type": "identify"}}, auth=auth)
    assert not_list.status_code == 400 and not_list.json()["code"] == "invalid_request"
    assert tracking(emu)["events_received"] == 0


def test_size_limits_refuse_the_whole_request(emu: EmulatorServer) -> None:
    """An item over 32,768 bytes or a body over 500,000 bytes: 400 and nothing applied."""
    small = ident("small", "m1", {"x": 1})
    big = ident("big", "m2", {"blob": "x" * 32_800})
    response = batch(emu, [small, big])
    assert response.status_code == 400
    assert response.json()["code"] == "event_too_large"
    assert "batch[1]" in response.json()["message"]
    just = ident("just", "m3")
    just["traits"] = {"blob": ""}
    just["traits"]["blob"] = "x" * (32_768 - len(json.dumps(just).encode()))
    assert len(json.dumps(just).encode()) == 32_768
    ok(batch(emu, [just]))
    many = [ident(f"u{i}", f"n{i}", {"blob": "y" * 20_000}) for i in range(26)]
    response = batch(emu, many)
    assert response.status_code == 400 and response.json()["code"] == "request_too_large"
    single = httpx.post(emu.url + "/v1/identify", json=big, auth=(KEY, ""))
    assert single.status_code == 400 and single.json()["code"] == "event_too_large"
    segment = emu.emulator.segment
    assert [p["external_ids"] for p in segment.profiles()] == [[("user_id", "just")]]


def test_items_beyond_2500_are_discarded_with_200(emu: EmulatorServer) -> None:
    items = [ident(f"u{i}", f"m{i}") for i in range(2_501)]
    ok(batch(emu, items))
    stats = tracking(emu)
    assert stats["events_applied"] == 2_500
    assert stats["discarded"] == {"too_many_events": 1}
    assert emu.emulator.segment.profile("user_id", "u2499") is not None
    assert emu.emulator.segment.profile("user_id", "u2500") is None


def test_a_gzip_body_is_accepted_and_a_broken_one_refused(emu: EmulatorServer) -> None:
    raw = json.dumps({"batch": [ident("gz", "m1", {"z": 1})]}).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    url = emu.url + "/v1/batch"
    ok(httpx.post(url, content=gzip.compress(raw), headers=headers, auth=(KEY, "")))
    assert traits(emu, "user_id:gz") == {"z": 1}
    broken = httpx.post(url, content=gzip.compress(raw)[:-9], headers=headers, auth=(KEY, ""))
    assert broken.status_code == 400 and broken.json()["code"] == "invalid_request"


def test_discard_reasons_are_counted_and_answered_200(emu: EmulatorServer) -> None:
    items = [
        {"type": "identify", "traits": {"a": 1}},
        ident("u1", traits=["x"]),
        ident("u1", "m" * 101),
        ident("u1", traits={f"t{i}": i for i in range(300)}),
        ident("0"),
        ident(
            "u2",
            context={
                "externalIds": [
                    {"id": "x", "type": "Phone", "collection": "users", "encoding": "none"}
                ]
            },
        ),
        {"userId": "u3"},
        {"type": "track", "userId": "u4", "event": "Clicked"},
    ]
    ok(batch(emu, items))
    stats = tracking(emu)
    assert stats["discarded"] == {
        "no_user_anon_id": 1,
        "traits_not_object": 1,
        "message_id_too_long": 1,
        "too_many_traits": 1,
        "no_identifiers": 1,
        "invalid_external_id": 1,
        "missing_type": 1,
    }
    assert (stats["events_received"], stats["events_applied"], stats["ignored"]) == (8, 1, 1)
    assert [p["external_ids"] for p in emu.emulator.segment.profiles()] == [[("user_id", "u2")]]


def test_top_level_context_reaches_every_item(emu: EmulatorServer) -> None:
    context = {"externalIds": [{"id": "shared-crm", "type": "crm_id", "collection": "users",
                                "encoding": "none"}]}  # fmt: skip
    ok(batch(emu, [{"type": "identify", "anonymousId": "a1", "traits": {"x": 1}}], context=context))
    assert traits(emu, "crm_id:shared-crm") == {"x": 1}


def test_a_repeated_message_id_is_applied_once(emu: EmulatorServer) -> None:
    ok(batch(emu, [ident("u1", "m1", {"v": 1})]))
    ok(batch(emu, [ident("u1", "m1", {"v": 2})]))
    assert traits(emu, "user_id:u1") == {"v": 1}
    assert tracking(emu)["duplicates"] == 1


def test_identity_resolution_over_http(emu: EmulatorServer) -> None:
    """A new user_id with a known email, a merge through an anonymous id, blocked values."""
    ok(batch(emu, [ident("u1", "m1", {"email": "e@x.io", "a": 1}),
                   ident("u2", "m2", {"email": "e@x.io", "b": 2})]))  # fmt: skip
    assert traits(emu, "user_id:u2") == {"email": "e@x.io", "b": 2}
    assert traits(emu, "email:e%40x.io") == {"email": "e@x.io", "a": 1}
    ok(batch(emu, [{"type": "identify", "anonymousId": "anon", "messageId": "m3",
                    "traits": {"c": 3}},
                   ident("u3", "m4", {"d": 4}),
                   ident("u3", "m5", anonymousId="anon")]))  # fmt: skip
    merged = read(emu, "anonymous_id:anon", "external_ids").json()["data"]
    assert [(d["type"], d["id"]) for d in merged] == [("anonymous_id", "anon"), ("user_id", "u3")]
    assert traits(emu, "user_id:u3") == {"c": 3, "d": 4}
    ok(batch(emu, [ident("anonymous", "m6", {"e": 5}), ident("-1", "m7", anonymousId="null")]))
    assert read(emu, "user_id:anonymous").status_code == 404
    assert tracking(emu)["discarded"] == {"no_identifiers": 2}


# ------------------------------------------------------------------------- Profile API


def test_profile_api_shapes(emu: EmulatorServer) -> None:
    segment = emu.emulator.segment
    ok(batch(emu, [ident("c+1", "m1", {f"k{i:02}": i for i in range(25)} | {"email": "c@x.io"})]))
    ref = "user_id:" + quote("c+1", safe="")
    first = read(emu, ref)
    assert first.status_code == 200 and first.headers["Request-Id"]
    body = first.json()
    assert list(body["traits"]) == ["email"] + [f"k{i:02}" for i in range(9)]  # sorted by key
    assert body["cursor"]["has_more"] is True and body["cursor"]["limit"] == 10
    assert body["cursor"]["url"].endswith(f"/profiles/{ref.replace('%2B', '+')}/traits")
    seen = dict(body["traits"])
    nxt = body["cursor"]["next"]
    while nxt:
        page = read(emu, ref, limit=7, next=nxt).json()
        assert len(page["traits"]) <= 7
        seen.update(page["traits"])
        nxt = page["cursor"]["next"]
        assert page["cursor"]["has_more"] is bool(nxt)
    assert seen == segment.profile("user_id", "c+1")["traits"]  # type: ignore[index]
    assert read(emu, ref, limit=500).json()["cursor"]["limit"] == 100
    assert read(emu, ref, include="k03,email,nope").json()["traits"] == {
        "k03": 3,
        "email": "c@x.io",
    }
    verbose = read(emu, ref, include="k01", verbose="true").json()["traits"]["k01"]
    assert verbose["value"] == 1 and verbose["source_id"] == "src_twilio_unified_profiles"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", verbose["updated_at"])
    for params in ({"limit": "0"}, {"limit": "x"}, {"next": "garbage!"}):
        bad = read(emu, ref, **params)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "validation_error"
        assert bad.headers["Request-Id"]
    ids = read(emu, ref, "external_ids").json()
    assert ids["data"][0] == {
        "id": "c+1",
        "type": "user_id",
        "source_id": "src_twilio_unified_profiles",
        "collection": "users",
        "created_at": ids["data"][0]["created_at"],
        "encoding": "none",
        "first_message_id": "m1",
    }
    assert [d["type"] for d in ids["data"]] == ["user_id", "email"]
    assert set(ids["cursor"]) == {"url", "has_more", "next", "limit"}
    page = read(emu, ref, "external_ids", limit=1).json()
    assert page["cursor"]["has_more"] and len(page["data"]) == 1
    rest = read(emu, ref, "external_ids", limit=1, next=page["cursor"]["next"]).json()
    assert [d["id"] for d in rest["data"]] == ["c@x.io"] and rest["cursor"]["has_more"] is False
    assert [d["id"] for d in read(emu, ref, "external_ids", include="email").json()["data"]] == [
        "c@x.io"
    ]
    meta = read(emu, ref, "metadata").json()["metadata"]
    assert meta["first_message_id"] == meta["last_message_id"] == "m1"
    assert meta["first_source_id"] == "src_twilio_unified_profiles"
    assert set(meta) == {"created_at", "updated_at", "expires_at", "first_message_id",
                         "first_source_id", "last_message_id", "last_source_id"}  # fmt: skip
    events = read(emu, ref, "events").json()
    assert events["data"] == [] and events["cursor"]["has_more"] is False


def test_profile_api_errors(emu: EmulatorServer) -> None:
    ok(batch(emu, [ident("u1", "m1", {"a": 1})]))
    unauthorized = read(emu, "user_id:u1", token="wrong")
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "authentication_error"
    assert read(emu, "user_id:u1", token=None).status_code == 401
    not_found = {"error": {"code": "not_found", "message": "Profile was not found."}}
    for ref in ("u1", "user_id:U1", "email:u1", "user_id:", ":u1"):
        response = read(emu, ref)
        assert response.status_code == 404 and response.json() == not_found, ref
        assert response.headers["Request-Id"]
    space = read(emu, "user_id:u1", space="spa_other")
    assert space.status_code == 404 and space.json()["error"]["code"] == "not_found"
    accounts_url = f"{emu.url}/v1/spaces/{SPACE}/collections/accounts/profiles/group_id:g/traits"
    accounts = httpx.get(accounts_url, auth=(TOKEN, ""))
    assert accounts.status_code == 404 and accounts.json()["error"]["code"] == "not_found"


def test_a_value_with_a_slash_or_plus_is_found_url_encoded(emu: EmulatorServer) -> None:
    ok(batch(emu, [ident("a/b+c d", "m1", {"x": 1})]))
    assert traits(emu, "user_id:" + quote("a/b+c d", safe="")) == {"x": 1}


# ------------------------------------------------------------ delay, limits, faults


def test_tracked_writes_show_only_after_the_lag() -> None:
    with EmulatorServer(EmulatorConfig(segment_lag_ms=5_000)) as emu:
        clock = Clock()
        emu.emulator.segment_clock = clock
        ok(batch(emu, [ident("u1", "m1", {"v": 1})]))
        clock.now += 4.9
        assert read(emu, "user_id:u1").status_code == 404
        assert emu.emulator.segment.profile("user_id", "u1") is not None
        ok(batch(emu, [ident("u1", "m2", {"v": 2})]))
        clock.now += 0.1
        assert traits(emu, "user_id:u1") == {"v": 1}
        clock.now += 5
        assert traits(emu, "user_id:u1") == {"v": 2}


def _fake_limit(shape: str, clock: Clock, rate: float, burst: float | None = None) -> AccountLimit:
    limiter = make_limiter(shape, rate=rate, burst=burst, window_s=1.0, start=clock.now)  # type: ignore[arg-type]
    return AccountLimit(limiter, clock=clock)


def test_the_tracking_limit_weighs_events_and_answers_429() -> None:
    with EmulatorServer(EmulatorConfig(tracking_rate=10)) as emu:
        clock = Clock(0.0)
        emu.emulator.tracking_limit = _fake_limit("fixed", clock, 10)
        ok(batch(emu, [ident(f"u{i}", f"m{i}") for i in range(8)]))
        refused = batch(emu, [ident("x1", "x1"), ident("x2", "x2"), ident("x3", "x3")])
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1" and refused.headers["X-RateLimit-Reset"] == "1"
        assert refused.json()["code"] == "rate_limited"
        assert emu.emulator.segment.profile("user_id", "x1") is None
        ok(batch(emu, [ident("x1", "x1"), ident("x2", "x2")]))
        clock.now = 1.0
        ok(batch(emu, [ident("x3", "x3")]))
        stats = emu.stats()
        assert stats["segment"]["tracking_limiter"]["shape"] == "fixed"
        assert stats["byOperation"]["segment.batch"] == {"200": 3, "429": 1}


@pytest.mark.parametrize(("shape", "burst"), [("fixed", None), ("token", 10.0), ("gcra", 10.0)])
def test_a_request_heavier_than_the_limit_is_admitted_when_the_limiter_is_idle(
    shape: str, burst: float | None
) -> None:
    """25 events against a capacity of 10: charged 10, admitted into an idle limiter only."""
    config = EmulatorConfig(tracking_rate=10, tracking_limiter=shape,  # type: ignore[arg-type]
                            tracking_burst=int(burst) if burst else None)  # fmt: skip
    with EmulatorServer(config) as emu:
        clock = Clock(0.0)
        emu.emulator.tracking_limit = _fake_limit(shape, clock, 10, burst)
        heavy = [ident(f"u{i}", f"m{i}") for i in range(25)]
        ok(batch(emu, heavy[:1]))
        assert batch(emu, heavy).status_code == 429  # not idle: one event is in
        clock.now += 1.0
        ok(batch(emu, heavy))
        assert batch(emu, [ident("late", "late")]).status_code == 429
        assert tracking(emu)["events_applied"] == 25


def test_the_profile_api_limit_answers_429_with_retry_after() -> None:
    with EmulatorServer(EmulatorConfig(profile_rate=2)) as emu:
        clock = Clock(0.0)
        emu.emulator.profile_limit = _fake_limit("fixed", clock, 2)
        ok(batch(emu, [ident("u1", "m1", {"a": 1})]))
        assert read(emu, "user_id:u1").status_code == 200
        assert read(emu, "user_id:u1", "metadata").status_code == 200
        refused = read(emu, "user_id:u1")
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "rate_limit_error"
        assert refused.headers["Request-Id"]
        clock.now = 1.0
        assert read(emu, "user_id:u1").status_code == 200
        assert emu.stats()["segment"]["profile_limiter"]["refusedRequests"] == 1


def test_faulted_requests_change_nothing() -> None:
    with EmulatorServer(EmulatorConfig(fault_rate=1.0, random_seed=3)) as emu:
        statuses = set()
        for i in range(6):
            response = batch(emu, [ident(f"u{i}", f"m{i}")])
            statuses.add(response.status_code)
            assert response.json()["code"] in ("internal_error", "service_unavailable")
        profile = read(emu, "user_id:u1")
        assert profile.status_code in (500, 503) and "error" in profile.json()
        assert statuses == {500, 503}
        assert list(emu.emulator.segment.profiles()) == []
        assert tracking(emu)["requests"] == 0
    with EmulatorServer(EmulatorConfig(drop_rate=1.0)) as emu:
        with pytest.raises(httpx.RemoteProtocolError):
            batch(emu, [ident("u1", "m1")])
        assert list(emu.emulator.segment.profiles()) == []


def test_a_lost_response_was_applied_and_the_resend_is_a_duplicate() -> None:
    with EmulatorServer(EmulatorConfig(lost_response_rate=1.0)) as emu:
        for attempt in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                batch(emu, [ident("u1", "m1", {"attempt": attempt})])
        assert emu.emulator.segment.profile("user_id", "u1") == {
            "segment_id": emu.emulator.segment.profile("user_id", "u1")["segment_id"],  # type: ignore[index]
            "traits": {"attempt": 0},
            "external_ids": [("user_id", "u1")],
        }
        stats = emu.stats()
        assert stats["segment"]["tracking"]["duplicates"] == 1
        assert stats["byOperation"]["segment.batch"] == {"lost": 2}


def test_stats_delete_resets_the_segment_counters(emu: EmulatorServer) -> None:
    ok(batch(emu, [ident("u1", "m1")]))
    httpx.delete(emu.url + "/__emulator__/stats")
    segment = emu.stats()["segment"]
    assert segment["tracking"] == {"requests": 0, "events_received": 0, "events_applied": 0,
                                   "duplicates": 0, "ignored": 0, "discarded": {}}  # fmt: skip
    assert segment["profile_api"] == {"requests": 0}
    assert segment["profiles"] == 1


# ------------------------------------------------------------ state, seed, config, CLI


def test_the_space_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    config = EmulatorConfig(state=state)
    ext = {"externalIds": [{"id": "k-1", "type": "crm_id", "collection": "users",
                            "encoding": "none"}]}  # fmt: skip
    with EmulatorServer(config) as emu:
        ok(batch(emu, [ident("u1", "m1", {"a": {"deep": 1}, "b": ""}, context=ext),
                       {"type": "identify", "anonymousId": "an", "messageId": "m2",
                        "traits": {"c": 3}},
                       ident("u1", "m3", anonymousId="an")]))  # fmt: skip
        before = {suffix: read(emu, "user_id:u1", suffix, verbose="true").json()
                  for suffix in ("traits", "external_ids", "metadata")}  # fmt: skip
        oracle = list(emu.emulator.segment.profiles())
        priorities = emu.emulator.segment.identity.view()
    with EmulatorServer(config) as emu:
        after = {suffix: read(emu, "user_id:u1", suffix, verbose="true").json()
                 for suffix in ("traits", "external_ids", "metadata")}  # fmt: skip
        assert after == before
        assert list(emu.emulator.segment.profiles()) == oracle
        assert emu.emulator.segment.identity.view() == priorities
        ok(batch(emu, [ident("u1", "m1", {"a": "again"})]))
        assert tracking(emu)["duplicates"] == 1
        ok(batch(emu, [ident("u9", "m9")]))
        new = emu.emulator.segment.profile("user_id", "u9")
        assert new is not None and new["segment_id"] not in {p["segment_id"] for p in oracle}
    with EmulatorServer(config) as emu:
        assert len(list(emu.emulator.segment.profiles())) == 2


def write_seed(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_seeded_space_is_served_at_once(tmp_path: Path) -> None:
    seed = write_seed(tmp_path, {"segment": {
        "space_id": "spa_seeded",
        "identifiers": [{"type": "phone", "limit": 1, "trait_key": "phone"}],
        "blocked": ["void"],
        "profiles": [{"external_ids": [{"type": "user_id", "id": "c-1"}],
                      "traits": {"tier": "gold"}}],
    }})  # fmt: skip
    with EmulatorServer(EmulatorConfig(seed=seed, segment_lag_ms=60_000)) as emu:
        assert emu.config.segment_space_id == "spa_seeded"
        response = read(emu, "user_id:c-1", space="spa_seeded")
        assert response.status_code == 200 and response.json()["traits"] == {"tier": "gold"}
        ok(batch(emu, [ident("c-2", "m1", {"phone": "+4711"})]))
        assert emu.emulator.segment.profile("phone", "+4711") is not None
        ok(batch(emu, [ident("void", "m2")]))
        assert tracking(emu)["discarded"] == {"no_identifiers": 1}
    with pytest.raises(ConfigError, match="spa_seeded"):
        EmulatorServer(EmulatorConfig(seed=seed, segment_space_id="spa_chosen"))
    bad = write_seed(tmp_path, {"segment": {"identifiers": [{"type": "phone", "limit": -1}]}})
    with pytest.raises(ConfigError, match=r"seed\.json: segment\.identifiers\[0\]\.limit"):
        EmulatorServer(EmulatorConfig(seed=bad))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"segment_write_key": ""}, "segment-write-key"),
        ({"segment_access_token": "a:b"}, "segment-access-token"),
        ({"segment_space_id": "has space"}, "space-id"),
        ({"tracking_rate": 0}, "tracking-rate"),
        ({"tracking_rate": 0.5}, "tracking-rate 0.5"),
        ({"tracking_limiter": "concurrency"}, "tracking-limiter"),
        ({"tracking_burst": 5}, "tracking-burst needs"),
        ({"tracking_rate": 5, "tracking_burst": 5}, "tracking-burst needs"),
        ({"tracking_rate": 5, "tracking_limiter": "token", "tracking_burst": 0}, "at least 1"),
        ({"profile_rate": -1}, "profile-rate"),
        ({"segment_lag_ms": -1}, "segment-lag-ms"),
    ],
)
def test_config_refuses_bad_segment_switches(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        EmulatorConfig(**kwargs)


def _emulator(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and package, fixed arguments
        [sys.executable, "-m", "backfill", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_flags_configure_the_space() -> None:
    proc = _emulator("--write-key", "wk", "--access-token", "tok", "--space-id", "spa_cli",
                     "--tracking-rate", "50", "--tracking-limiter", "gcra", "--tracking-burst",
                     "20", "--profile-rate", "30", "--segment-lag-ms", "0")  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:[0-9]+)\n", line)
        assert match, line
        url = match.group(1)
        body = {"batch": [ident("u1", "m1", {"a": 1})]}
        assert httpx.post(url + "/v1/batch", json=body, auth=(KEY, "")).status_code == 401
        assert httpx.post(url + "/v1/batch", json=body, auth=("wk", "")).status_code == 200
        path = "/v1/spaces/spa_cli/collections/users/profiles/user_id:u1/traits"
        assert httpx.get(url + path, auth=(TOKEN, "")).status_code == 401
        assert httpx.get(url + path, auth=("tok", "")).json()["traits"] == {"a": 1}
        stats = httpx.get(url + "/__emulator__/stats").json()["segment"]
        assert stats["tracking_limiter"]["shape"] == "gcra"
        assert stats["profile_limiter"]["shape"] == "fixed"
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tracking-rate", "0"], "--tracking-rate"),
        (["--tracking-limiter", "concurrency"], "--tracking-limiter"),
        (["--tracking-burst", "3"], "tracking-burst needs"),
        (["--segment-lag-ms", "-1"], "segment-lag-ms"),
        (["--space-id", "a b"], "space-id"),
    ],
)
def test_cli_refuses_bad_segment_flags(args: list[str], needle: str) -> None:
    result = subprocess.run(  # noqa: S603 - our own interpreter and package, fixed arguments
        [sys.executable, "-m", "backfill", "emulator", "--port", "0", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr


def test_help_documents_the_segment_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backfill", "emulator", "--help"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    flags = "--write-key --access-token --space-id --tracking-rate --tracking-limiter " \
        "--tracking-burst --profile-rate --segment-lag-ms"  # fmt: skip
    for flag in flags.split():
        assert re.search(rf"^\s+{re.escape(flag)}\b", result.stdout, re.MULTILINE), flag
