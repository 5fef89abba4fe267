"""The emulator's state file across restarts, and the seed loader's errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import ConfigError

SEED = Path(__file__).parents[1] / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
A = "mem_profile_01jtest000000000000000000a"
B = "mem_profile_01jtest000000000000000000b"
C = "mem_profile_01jtest000000000000000000c"
D = "mem_profile_01jtest000000000000000000d"
CP = f"/v1/ControlPlane/Stores/{STORE}"
DP = f"/v1/Stores/{STORE}/Profiles"


def client(emu: EmulatorServer) -> httpx.Client:
    return httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def create(api: httpx.Client, contact: dict[str, Any]) -> str:
    profile_id: str = ok(api.post(DP, json={"traits": {"Contact": contact}}), 202)["id"]
    return profile_id


def snapshot(api: httpx.Client, profiles: list[str]) -> dict[str, Any]:
    """Everything a client can read about the store, the given profiles and the listing.

    The server's own address (a new port after each restart) is replaced by ``BASE``.
    """
    out: dict[str, Any] = {}
    for path in (
        CP,
        f"{CP}/IdentityResolutionSettings",
        f"{CP}/TraitGroups?includeTraits=true&orderBy=ASC",
        f"{CP}/TraitGroups/Contact",
        f"{CP}/TraitGroups/Loyalty",
        f"{CP}/TraitGroups/Extra",
        f"{DP}?pageSize=100&orderBy=ASC",
    ):
        response = api.get(path)
        out[path] = (response.status_code, response.headers.get("etag"), response.json())
    for profile_id in profiles:
        for suffix in ("", "/Traits?orderBy=ASC", "/Identifiers"):
            response = api.get(f"{DP}/{profile_id}{suffix}")
            out[profile_id + suffix] = (
                response.status_code,
                response.headers.get("location"),
                response.headers.get("canonical-profile-id"),
                response.json(),
            )
    base = str(api.base_url).rstrip("/")
    loaded: dict[str, Any] = json.loads(json.dumps(out).replace(base, "BASE"))
    return loaded


def write_seed(tmp_path: Path, doc: Any, name: str = "seed.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return path


def seed_doc(**store_overrides: Any) -> dict[str, Any]:
    """The test seed, with the first store's keys replaced by ``store_overrides``."""
    doc: dict[str, Any] = json.loads(SEED.read_text(encoding="utf-8"))
    doc["stores"][0].update(store_overrides)
    return doc


# ------------------------------------------------------------------------------ restarts


def test_writes_survive_a_restart(tmp_path: Path) -> None:
    """Store, settings, groups (versions), profiles, identifiers, merges, deletes persist."""
    state = tmp_path / "emu.sqlite"
    config = EmulatorConfig(seed=SEED, state=state, random_seed=7)
    with EmulatorServer(config) as emu, client(emu) as api:
        ok(api.patch(CP, json={"description": "Renamed between runs."}), 202)
        settings = ok(api.get(f"{CP}/IdentityResolutionSettings"))
        settings["identifierConfigs"][2]["limit"] = 5
        body = {k: settings[k] for k in ("identifierConfigs", "matchingRules")}
        ok(api.put(f"{CP}/IdentityResolutionSettings", json=body), 202)
        extra = {"displayName": "Extra", "traits": {"color": {"dataType": "STRING"}}}
        ok(api.post(f"{CP}/TraitGroups", json=extra), 202)
        ok(api.patch(f"{CP}/TraitGroups/Loyalty", json={"description": "v2"}), 202)
        ok(api.patch(f"{CP}/TraitGroups/Loyalty", json={"description": "v3"}), 202)
        patch = {"traits": {"Contact": {"lastName": "Lovelace"}, "Extra": {"color": "teal"}}}
        ok(api.patch(f"{DP}/{A}", json=patch), 202)
        ok(api.post(f"{DP}/{B}/Identifiers", json={"idType": "email", "value": "Bo@X.io"}), 202)
        new_id = create(api, {"email": "n@example.com"})
        later = create(api, {"phone": "317 555 0123"})
        # A live merge: the phone of `later` added to `new_id` merges them into `new_id`.
        merged = {"traits": {"Contact": {"email": "n@example.com", "phone": "3175550123"}}}
        assert ok(api.post(DP, json=merged), 202)["id"] == new_id
        ok(api.delete(f"{DP}/{C}"), 202)
        op_url = api.patch(CP, json={"displayName": "renamed-store"}).headers["location"]
        profiles = [A, B, C, D, new_id, later]
        before = snapshot(api, profiles)
    # sanity: the writes above did what the snapshot claims
    assert before[CP][2]["displayName"] == "renamed-store"
    assert before[CP][2]["version"] == 3
    assert before[f"{CP}/IdentityResolutionSettings"][2]["version"] == 2
    assert before[f"{CP}/TraitGroups/Loyalty"][2]["traitGroup"]["version"] == 3
    assert before[f"{CP}/TraitGroups/Extra"][0] == 200
    assert before[A][3]["traits"]["Extra"] == {"color": "teal"}
    assert before[later][0] == 301
    assert before[C][0] == 404

    with EmulatorServer(config) as emu, client(emu) as api:
        after = snapshot(api, profiles)
        assert after == before
        op = api.get(op_url.replace(op_url.split("/v1/")[0], emu.url))
        assert op.status_code == 200, op.text
        assert op.json()["status"] == "COMPLETED"
        # The restarted emulator keeps working on the restored state.
        found = ok(api.post(f"{DP}/Lookup", json={"idType": "email", "value": "bo@x.io"}))
        assert found["profiles"] == [B]
        found = ok(api.post(f"{DP}/Lookup", json={"idType": "phone", "value": "3175550123"}))
        assert found["profiles"] == [new_id]
        ok(api.patch(f"{DP}/{A}", json={"traits": {"Loyalty": {"points": 11}}}), 202)
        etag = before[f"{CP}/TraitGroups/Loyalty"][1]  # an ETag read before the restart
        ok(api.patch(f"{CP}/TraitGroups/Loyalty", json={}, headers={"If-Match": etag}), 202)


def test_state_file_is_private(tmp_path: Path) -> None:
    """The state file holds customer data: created (or tightened) to mode 0o600."""
    state = tmp_path / "emu.sqlite"
    with EmulatorServer(EmulatorConfig(seed=SEED, state=state)) as emu, client(emu) as api:
        ok(api.patch(f"{DP}/{A}", json={"traits": {"Contact": {"lastName": "L"}}}), 202)
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        for sidecar in (Path(f"{state}-wal"), Path(f"{state}-shm")):
            if sidecar.exists():
                assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600, sidecar
    loose = tmp_path / "loose.sqlite"
    loose.touch()
    os.chmod(loose, 0o644)
    with EmulatorServer(EmulatorConfig(seed=SEED, state=loose)):
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_seed_is_ignored_once_the_state_file_holds_data(tmp_path: Path) -> None:
    """A restart with a different seed keeps the stored state and does not load the seed."""
    state = tmp_path / "emu.sqlite"
    with (
        EmulatorServer(EmulatorConfig(seed=SEED, state=state)) as emu,
        client(emu) as api,
    ):
        ok(api.patch(f"{DP}/{A}", json={"traits": {"Contact": {"firstName": "Ada2"}}}), 202)
    other = seed_doc(
        id="mem_store_01jother000000000000000000",
        displayName="other-store",
        profiles=[],
    )
    with (
        EmulatorServer(EmulatorConfig(seed=write_seed(tmp_path, other), state=state)) as emu,
        client(emu) as api,
    ):
        assert ok(api.get("/v1/ControlPlane/Stores"))["stores"] == [STORE]
        assert ok(api.get(f"{DP}/{A}"))["traits"]["Contact"]["firstName"] == "Ada2"


def test_seeded_profiles_without_identifiers_survive_a_restart(tmp_path: Path) -> None:
    """Every seeded profile reaches the state file, even one with no promoted identifier."""
    doc = seed_doc()
    plain = "mem_profile_01jtest000000000000000000e"
    doc["stores"][0]["profiles"].append(
        {"id": plain, "traits": {"Contact": {"firstName": "Eve"}, "Loyalty": {"points": 3}}}
    )
    state = tmp_path / "emu.sqlite"
    config = EmulatorConfig(seed=write_seed(tmp_path, doc), state=state)
    with EmulatorServer(config) as emu, client(emu) as api:
        before = ok(api.get(f"{DP}/{plain}"))
        listed = ok(api.get(DP, params={"orderBy": "ASC"}))["profiles"]
        assert listed == [A, B, C, plain]
    with EmulatorServer(config) as emu, client(emu) as api:
        assert ok(api.get(f"{DP}/{plain}")) == before
        assert ok(api.get(DP, params={"orderBy": "ASC"}))["profiles"] == listed


# --------------------------------------------------------------------------- seed errors


def _config_error(seed: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        EmulatorServer(EmulatorConfig(seed=seed))
    return str(caught.value)


def test_seed_not_json(tmp_path: Path) -> None:
    """A seed that is not JSON is a ConfigError naming the file and the line."""
    path = write_seed(tmp_path, '{"stores": [\n  {"displayName": "x",}\n]}')
    message = _config_error(path)
    assert str(path) in message
    assert "not valid JSON" in message
    assert "line 2" in message


@pytest.mark.parametrize("doc", [{}, {"store": []}, {"stores": {}}, [], "null"])
def test_seed_without_stores_list(tmp_path: Path, doc: Any) -> None:
    """A seed without a top-level `stores` list is a ConfigError naming file and key."""
    path = write_seed(tmp_path, doc if isinstance(doc, str) else json.dumps(doc))
    message = _config_error(path)
    assert str(path) in message
    assert "'stores'" in message


def test_seed_missing_file(tmp_path: Path) -> None:
    """A seed path that does not exist is a ConfigError naming it."""
    path = tmp_path / "nope.json"
    message = _config_error(path)
    assert str(path) in message


def test_seed_bad_profile_id(tmp_path: Path) -> None:
    """A profile ID off the TTID pattern names the store, the profile index and the ID."""
    doc = seed_doc()
    doc["stores"][0]["profiles"][1]["id"] = "mem_profile_BAD"
    message = _config_error(write_seed(tmp_path, doc))
    assert str(tmp_path / "seed.json") in message
    assert "stores[0]" in message
    assert "profiles[1]" in message
    assert "mem_profile_BAD" in message


def test_seed_unknown_trait_group(tmp_path: Path) -> None:
    """A profile writing to an undefined trait group names its place and the group."""
    doc = seed_doc()
    doc["stores"][0]["profiles"][2]["traits"]["Billing"] = {"plan": "pro"}
    message = _config_error(write_seed(tmp_path, doc))
    assert str(tmp_path / "seed.json") in message
    assert "stores[0]" in message
    assert "profiles[2]" in message
    assert "Billing" in message


def test_seed_bad_store_id_in_second_store(tmp_path: Path) -> None:
    """The place names the right store index: an invalid store ID in stores[1]."""
    doc = seed_doc()
    doc["stores"].append({"id": "store-2", "displayName": "second"})
    message = _config_error(write_seed(tmp_path, doc))
    assert str(tmp_path / "seed.json") in message
    assert "stores[1]" in message
    assert "store-2" in message


def test_seed_merged_into_unknown_profile(tmp_path: Path) -> None:
    """mergedInto naming a profile the store lacks is a ConfigError naming both IDs."""
    doc = seed_doc()
    ghost = "mem_profile_01jtest00000000000000000zz"
    doc["stores"][0]["profiles"][3]["mergedInto"] = ghost
    message = _config_error(write_seed(tmp_path, doc))
    assert str(tmp_path / "seed.json") in message
    assert "stores[0]" in message
    assert D in message
    assert ghost in message
