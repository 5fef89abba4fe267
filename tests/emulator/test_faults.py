"""The emulator's fault switches over real HTTP: each forced (or seeded) to prove its path."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer

SEED = Path(__file__).parents[1] / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
A = "mem_profile_01jtest000000000000000000a"
CP = f"/v1/ControlPlane/Stores/{STORE}"
DP = f"/v1/Stores/{STORE}/Profiles"
ERROR_KEYS = {"code", "message", "more_info", "status"}
DISCONNECT = "disconnect"


def serve(**switches: Any) -> EmulatorServer:
    """A seeded emulator with the given EmulatorConfig switches."""
    return EmulatorServer(EmulatorConfig(seed=SEED, **switches))


def client(emu: EmulatorServer) -> httpx.Client:
    return httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10)


def patch_name(name: str) -> dict[str, Any]:
    return {"traits": {"Contact": {"firstName": name}}}


def outcome(api: httpx.Client, method: str, path: str, body: Any = None) -> int | str:
    """The status code, or "disconnect" when the connection ended without an answer."""
    try:
        return api.request(method, path, json=body).status_code
    except httpx.TransportError:  # RemoteProtocolError, or ReadError on a reset (see below)
        return DISCONNECT


def read_until_ok(api: httpx.Client, path: str) -> dict[str, Any]:
    """GET through faults: retry until a 200 (the seeded fault plan makes this terminate)."""
    for _ in range(100):
        try:
            response = api.get(path)
        except httpx.TransportError:
            continue
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code in (500, 503), response.text
    raise AssertionError(f"GET {path} never succeeded")


def first_name(api: httpx.Client) -> str:
    name: str = read_until_ok(api, f"{DP}/{A}")["traits"]["Contact"]["firstName"]
    return name


# ------------------------------------------------------------------------------ 500/503


def test_fault_rate_1_fails_every_request_with_500_or_503() -> None:
    """At fault_rate=1.0 every /v1 request is 500/20500 or 503/20503, and both occur."""
    with serve(fault_rate=1.0, random_seed=11) as emu, client(emu) as api:
        seen: list[int] = []
        for i in range(40):
            if i % 2:
                response = api.patch(f"{DP}/{A}", json=patch_name(f"n{i}"))
            else:
                response = api.get(f"{DP}/{A}")
            assert response.status_code in (500, 503), response.text
            body = response.json()
            assert set(body) == ERROR_KEYS
            assert body["status"] == response.status_code
            assert body["code"] == {500: 20500, 503: 20503}[response.status_code]
            assert body["more_info"] == f"https://www.twilio.com/docs/api/errors/{body['code']}"
            seen.append(response.status_code)
        assert set(seen) == {500, 503}
        stats = emu.stats()  # /__emulator__ is outside /v1, so never faulted
        assert stats["faults"]["500"] == seen.count(500)
        assert stats["faults"]["503"] == seen.count(503)
        assert stats["byOperation"]["profiles.patch"] == {
            "500": seen[1::2].count(500),
            "503": seen[1::2].count(503),
        }


def test_faulted_patch_changes_nothing() -> None:
    """A PATCH answered 500/503 left no trace: the profile holds the last 202'd value."""
    with serve(fault_rate=0.5, random_seed=3) as emu, client(emu) as api:
        expected = "Ada"
        statuses: list[int] = []
        for i in range(12):
            response = api.patch(f"{DP}/{A}", json=patch_name(f"try{i}"))
            statuses.append(response.status_code)
            assert response.status_code in (202, 500, 503), response.text
            if response.status_code == 202:
                expected = f"try{i}"
            assert first_name(api) == expected, (i, statuses)
        assert 202 in statuses
        assert {500, 503} & set(statuses)


# -------------------------------------------------------------------------------- drops


def test_drop_rate_1_closes_reads_without_response() -> None:
    """At drop_rate=1.0 every GET ends in RemoteProtocolError; the client still reaches stats."""
    with serve(drop_rate=1.0, random_seed=1) as emu, client(emu) as api:
        for path in (CP, f"{DP}/{A}", f"{DP}/{A}/Traits"):
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                api.get(path)
        stats = api.get("/__emulator__/stats")  # the same client still talks to the server
        assert stats.status_code == 200
        assert stats.json()["faults"]["drop"] == 3
        assert stats.json()["byOperation"]["profiles.fetch"] == {"dropped": 1}


def _body_in_two_parts(gap: float) -> Iterator[bytes]:
    """A PATCH body whose second half follows the headers after ``gap`` seconds."""
    yield b'{"traits": {"Contact": '
    time.sleep(gap)
    yield b'{"firstName": "Dropped"}}}'


def test_drop_rate_1_closes_writes_without_response() -> None:
    """Dropped writes end in RemoteProtocolError (a clean close), never a connection reset.

    Whether the server has read the body when it closes is a race, so the PATCH is sent 400
    times with its body whole and split by gaps of 0.1-0.3 ms (where resets were seen).
    """
    with serve(drop_rate=1.0, random_seed=1) as emu, client(emu) as api:
        errors: dict[str, int] = {}
        for gap in (None, 0.0001, 0.0002, 0.0003):
            for _ in range(100):
                try:
                    if gap is None:
                        api.patch(f"{DP}/{A}", json=patch_name("Dropped"))
                    else:
                        api.patch(
                            f"{DP}/{A}",
                            content=_body_in_two_parts(gap),
                            headers={"Content-Type": "application/json"},
                        )
                except httpx.TransportError as exc:
                    name = f"{type(exc).__name__} (gap {gap})"
                    errors[name] = errors.get(name, 0) + 1
                else:
                    raise AssertionError("a dropped request got a response")
        assert errors == {f"RemoteProtocolError (gap {g})": 100 for g in (None, 1e-4, 2e-4, 3e-4)}
        assert emu.stats()["byOperation"]["profiles.patch"] == {"dropped": 400}


def test_dropped_patch_changes_nothing_and_client_recovers() -> None:
    """A dropped PATCH is not applied, and the same client keeps working after drops."""
    with serve(drop_rate=0.5, random_seed=5) as emu, client(emu) as api:
        expected = "Ada"
        outcomes: list[int | str] = []
        for i in range(12):
            result = outcome(api, "PATCH", f"{DP}/{A}", patch_name(f"try{i}"))
            outcomes.append(result)
            assert result in (202, DISCONNECT)
            if result == 202:
                expected = f"try{i}"
            assert first_name(api) == expected, (i, outcomes)
        assert DISCONNECT in outcomes
        # a success right after a drop: the pool replaced the dead connection
        assert any(a == DISCONNECT and b == 202 for a, b in itertools.pairwise(outcomes)), outcomes


# ------------------------------------------------------------------------ lost responses


def test_lost_response_applies_the_write() -> None:
    """lost_response_rate=1.0: the PATCH disconnects yet lands; re-sending it is harmless."""
    with serve(lost_response_rate=1.0, random_seed=2) as emu, client(emu) as api:
        patch = {"traits": {"Contact": {"lastName": "Lovelace"}, "Loyalty": {"points": 42}}}
        with pytest.raises(httpx.RemoteProtocolError):
            api.patch(f"{DP}/{A}", json=patch)
        after_first = api.get(f"{DP}/{A}")  # reads never lose their response
        assert after_first.status_code == 200
        traits = after_first.json()["traits"]
        assert traits["Contact"]["lastName"] == "Lovelace"
        assert traits["Loyalty"]["points"] == 42
        assert traits["Contact"]["firstName"] == "Ada"
        with pytest.raises(httpx.RemoteProtocolError):
            api.patch(f"{DP}/{A}", json=patch)
        assert api.get(f"{DP}/{A}").json()["traits"] == traits
        stats = emu.stats()
        assert stats["faults"]["lostResponse"] == 2
        assert stats["byOperation"]["profiles.patch"] == {"lost": 2}
        assert stats["byOperation"]["profiles.fetch"] == {"200": 2}


def test_lost_response_on_create_resolves_to_one_profile() -> None:
    """A POST /Profiles whose answer is lost still creates; re-sending resolves to it."""
    with serve(lost_response_rate=1.0, random_seed=2) as emu, client(emu) as api:
        body = {"traits": {"Contact": {"email": "lost@example.com", "firstName": "Lo"}}}
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                api.post(DP, json=body)
        listed = api.get(DP, params={"pageSize": 100}).json()["profiles"]
        assert len(listed) == 4  # the three seeded live profiles and one new one
        new_id = listed[0]  # newest first
        assert api.get(f"{DP}/{new_id}").json()["traits"]["Contact"] == {
            "email": "lost@example.com",
            "firstName": "Lo",
        }
        assert emu.stats()["faults"]["lostResponse"] == 2


def test_lost_response_spares_lookup() -> None:
    """Lookup is a POST but writes nothing, so lost_response_rate does not swallow its answer."""
    with serve(lost_response_rate=1.0, random_seed=2) as emu, client(emu) as api:
        found = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "ada@example.com"})
        assert found.status_code == 200
        assert found.json() == {"normalizedValue": "ada@example.com", "profiles": [A]}
        assert emu.stats()["faults"]["lostResponse"] == 0


# ------------------------------------------------------------------------------ latency


def test_latency_delays_every_request() -> None:
    """latency_ms=200 (+-50% jitter) makes each request take at least ~100 ms."""
    with serve(latency_ms=200, random_seed=4) as emu, client(emu) as api:
        for path in (CP, f"{DP}/{A}", "/v1/Nowhere"):
            start = time.perf_counter()
            api.get(path)
            assert time.perf_counter() - start >= 0.095, path


# ------------------------------------------------------------------------ reproducibility


def _fault_sequence(seed: int) -> list[int | str]:
    switches = {"fault_rate": 0.3, "drop_rate": 0.2, "lost_response_rate": 0.2}
    with serve(random_seed=seed, **switches) as emu, client(emu) as api:
        seq: list[int | str] = []
        for i in range(30):
            if i % 2:
                seq.append(outcome(api, "PATCH", f"{DP}/{A}", patch_name(f"n{i}")))
            else:
                seq.append(outcome(api, "GET", f"{DP}/{A}"))
        return seq


def test_same_random_seed_repeats_fault_decisions() -> None:
    """Two servers with the same seed and requests fault identically; another seed differs."""
    first = _fault_sequence(42)
    assert _fault_sequence(42) == first
    assert {500, 503, DISCONNECT, 200, 202} <= set(first), first
    assert _fault_sequence(43) != first


# ----------------------------------------------------------------------------- write lag


def test_write_lag_does_not_hide_seeded_data() -> None:
    """Seeded profiles are the starting state, not writes: visible at once under write lag."""
    with serve(write_lag_ms=500) as emu, client(emu) as api:
        fetched = api.get(f"{DP}/{A}")
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["traits"]["Contact"]["firstName"] == "Ada"
        found = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "ada@example.com"})
        assert found.json()["profiles"] == [A]
        assert len(api.get(DP).json()["profiles"]) == 3


def test_write_lag_hides_a_patch_until_the_lag_passes() -> None:
    """With write_lag_ms, reads show the old traits right after a PATCH, the new ones later."""
    with serve(write_lag_ms=500) as emu, client(emu) as api:
        time.sleep(0.55)  # let the seed itself settle (see the test above)
        assert api.patch(f"{DP}/{A}", json=patch_name("Lagged")).status_code == 202
        assert api.get(f"{DP}/{A}").json()["traits"]["Contact"]["firstName"] == "Ada"
        names = {t["name"]: t["value"] for t in api.get(f"{DP}/{A}/Traits").json()["traits"]}
        assert names["firstName"] == "Ada"
        time.sleep(0.55)
        assert api.get(f"{DP}/{A}").json()["traits"]["Contact"]["firstName"] == "Lagged"
        names = {t["name"]: t["value"] for t in api.get(f"{DP}/{A}/Traits").json()["traits"]}
        assert names["firstName"] == "Lagged"


def test_write_lag_hides_new_profiles_and_identifiers() -> None:
    """A profile created within the lag is 404 but patchable; Lookup sees it after the lag."""
    with serve(write_lag_ms=500) as emu, client(emu) as api:
        created = api.post(DP, json={"traits": {"Contact": {"email": "new@example.com"}}})
        assert created.status_code == 202, created.text
        new_id = created.json()["id"]
        added = api.post(
            f"{DP}/{A}/Identifiers", json={"idType": "email", "value": "ada2@example.com"}
        )
        assert added.status_code == 202, added.text
        missing = api.get(f"{DP}/{new_id}")
        assert missing.status_code == 404
        assert missing.json()["code"] == 20404
        assert api.patch(f"{DP}/{new_id}", json=patch_name("Nu")).status_code == 202
        lookup = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "new@example.com"})
        assert lookup.json()["profiles"] == []
        lookup = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "ada2@example.com"})
        assert lookup.json()["profiles"] == []
        assert new_id not in api.get(DP).json()["profiles"]
        time.sleep(0.55)
        fetched = api.get(f"{DP}/{new_id}")
        assert fetched.status_code == 200
        assert fetched.json()["traits"]["Contact"] == {
            "email": "new@example.com",
            "firstName": "Nu",
        }
        lookup = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "new@example.com"})
        assert lookup.json()["profiles"] == [new_id]
        lookup = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "ada2@example.com"})
        assert lookup.json()["profiles"] == [A]
        assert api.get(DP).json()["profiles"][0] == new_id
