"""Conformance of the emulator with the official ``twilio`` client (``twilio.rest.memory.v1``).

Request bodies are built with the package's own model classes. Only what those cannot express is
sent by hand with httpx: a ``null`` trait value (the client drops nulls from every body), an extra
property, a body that is not JSON, or a header read on an error.

Tests that write start from a fresh emulator seeded with tests/data/emulator_seed.json (the
``emulator`` fixture of tests/conftest.py). Tests that only read (GETs and lookups) share one
seeded emulator per module (``reader``), and the pagination tests share one emulator that holds
126 profiles (``paged``): every emulator costs a fixed shutdown pause, and reads cannot change
what the next test sees.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client
from twilio.rest.memory.v1.bulk import BulkList
from twilio.rest.memory.v1.identifier import IdentifierList
from twilio.rest.memory.v1.identity_resolution_setting import IdentityResolutionSettingList
from twilio.rest.memory.v1.import_ import ImportList
from twilio.rest.memory.v1.lookup import LookupList
from twilio.rest.memory.v1.profile import ProfileList
from twilio.rest.memory.v1.store import StoreList
from twilio.rest.memory.v1.trait_group import TraitGroupList

from backfill.emulator import EmulatorConfig, EmulatorServer

SEED = Path(__file__).resolve().parents[1] / "data" / "emulator_seed.json"
SEED_STORE: str = json.loads(SEED.read_text(encoding="utf-8"))["stores"][0]["id"]
PROFILE_A = "mem_profile_01jtest000000000000000000a"
PROFILE_B = "mem_profile_01jtest000000000000000000b"
PROFILE_C = "mem_profile_01jtest000000000000000000c"
PROFILE_D = "mem_profile_01jtest000000000000000000d"  # seeded as merged into PROFILE_A
LIVE_SEEDED = [PROFILE_A, PROFILE_B, PROFILE_C]
UNKNOWN_STORE = "mem_store_0" + "z" * 25
UNKNOWN_PROFILE = "mem_profile_0" + "z" * 25
UNKNOWN_OPERATION = "mem_operation_0" + "0" * 25
PROFILE_ID = re.compile(r"^mem_profile_[0-7][0-9a-z]{25}$")
STORE_ID = re.compile(r"^mem_(store|service)_[0-7][0-9a-z]{25}$")
SEEDED_A_TRAITS = {
    "Contact": {"firstName": "Ada", "email": "ada@example.com", "phone": "+13175550001"},
    "Loyalty": {"points": 10, "tier": "gold"},
}
IRS_DEFAULTS = {
    "matchingAlgo": "exact",
    "matchingThreshold": 75,
    "limit": 100,
    "limitPolicy": "fifo",
    "enforceUnique": True,
}
PAGED_TOTAL = 126  # 3 live seeded profiles + 120 bulk + 3 created one by one

IRS = IdentityResolutionSettingList


# ----------------------------------------------------------------------------------- fixtures


def connect(server: EmulatorServer) -> Any:
    """``client.memory.v1`` of an official client pointed at ``server``."""
    twilio = Client(*server.auth)
    twilio.memory.base_url = server.url
    return twilio.memory.v1


@pytest.fixture
def v1(emulator: EmulatorServer) -> Any:
    """The official client on this test's own fresh, seeded emulator."""
    return connect(emulator)


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """A plain HTTP client on this test's emulator, for what the model classes cannot express."""
    with httpx.Client(base_url=emulator.url, auth=emulator.auth, timeout=10) as plain:
        yield plain


@pytest.fixture(scope="module")
def reader() -> Iterator[Any]:
    """The official client on one seeded emulator shared by tests that only read."""
    with EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7)) as server:
        yield connect(server)


@pytest.fixture(scope="module")
def paged() -> Iterator[tuple[Any, list[str]]]:
    """A shared emulator with 120 bulk-upserted and then 3 single profiles; those 3 IDs in order."""
    with EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7)) as server:
        client = connect(server)
        bulk = BulkList.UpdateProfilesBulkRequest(
            {
                "profiles": [
                    {"traits": contact(email=f"bulk{i:03d}@example.com")} for i in range(120)
                ]
            }
        )
        client.bulk(SEED_STORE).update(bulk)
        late = [create(client, SEED_STORE, contact(email=f"late{i}@example.com")) for i in range(3)]
        yield client, late


# ------------------------------------------------------------------------------------ helpers


def contact(**traits: Any) -> dict[str, Any]:
    """A TraitGroups payload holding Contact traits only."""
    return {"Contact": traits}


@contextmanager
def rejected(status: int, code: int) -> Iterator[None]:
    """The block must raise TwilioRestException with exactly this HTTP status and Twilio code."""
    with pytest.raises(TwilioRestException) as info:
        yield
    assert (info.value.status, info.value.code) == (status, code), info.value.msg


@contextmanager
def page_rejected(status: int, code: int) -> Iterator[None]:
    """Like ``rejected`` for list calls, where the client raises a bare TwilioException."""
    with pytest.raises(TwilioException) as info:
        yield
    exc = info.value
    if isinstance(exc, TwilioRestException):
        actual = (exc.status, exc.code)
    else:
        response = exc.args[1]
        actual = (response.status_code, json.loads(response.text)["code"])
    assert actual == (status, code)


def header(response: Any, name: str) -> str | None:
    """A header of an ApiResponse, looked up case-insensitively."""
    for key, value in response.headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def raw(
    http: httpx.Client,
    method: str,
    path: str,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> httpx.Response:
    """One hand-made request; ``body`` is sent as JSON verbatim, nulls included."""
    if content is None and body is not None:
        content = json.dumps(body).encode()
    return http.request(
        method,
        path,
        content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
        auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
    )


def assert_api_error(response: httpx.Response, status: int, code: int, case: str = "") -> None:
    """The response is a TwilioError body with exactly this status and code."""
    assert response.status_code == status, f"{case}: {response.text}"
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}, case
    assert (body["status"], body["code"]) == (status, code), case
    assert isinstance(body["message"], str), case
    assert body["message"], case
    assert body["more_info"].startswith("https://"), case


def assert_operation(v1: Any, emulator: EmulatorServer, response: Any, resource_id: str) -> None:
    """A control-plane 202: operation headers, {message, statusUrl}, and a COMPLETED operation."""
    assert response.status_code == 202
    op_id = header(response, "Operation-Id")
    assert op_id
    location = f"{emulator.url}/v1/ControlPlane/Operations/{op_id}"
    assert header(response, "Location") == location
    assert header(response, "Retry-After") == "0"
    data = response.data
    if isinstance(data, dict):  # delete_with_http_info hands back the parsed body
        message, status_url = data.get("message"), data.get("statusUrl")
    else:
        message, status_url = data.message, data.status_url
    assert isinstance(message, str)
    assert message
    assert status_url == location
    operation = v1.operations(op_id).fetch()
    assert operation.operation_id == op_id
    assert operation.status == "COMPLETED"
    assert operation.result == {"type": "RESOURCE_ID", "id": resource_id}


def etag_of(response: Any) -> str:
    """The ETag header of an ApiResponse, which must be a quoted string."""
    tag = header(response, "ETag")
    assert tag is not None
    assert len(tag) > 2
    assert tag.startswith('"')
    assert tag.endswith('"')
    return tag


def lookup(v1: Any, store_id: str, id_type: str, value: str) -> Any:
    return v1.lookup(store_id).create(LookupList.Identifier({"idType": id_type, "value": value}))


def create(v1: Any, store_id: str, traits: dict[str, Any]) -> str:
    """Create (or resolve) a profile from a TraitGroups payload; the canonical ID."""
    profile_id: str = v1.profiles(store_id).create(ProfileList.ProfileData({"traits": traits})).id
    return profile_id


def patch(v1: Any, store_id: str, profile_id: str, traits: dict[str, Any]) -> Any:
    return v1.profiles(store_id, profile_id).patch_with_http_info(
        ProfileList.ProfilePatch({"traits": traits})
    )


def traits_of(v1: Any, store_id: str, profile_id: str) -> dict[str, Any]:
    found: dict[str, Any] = v1.profiles(store_id, profile_id).fetch().traits
    return found


def group_request(name: str, traits: dict[str, Any], description: str | None = None) -> Any:
    payload: dict[str, Any] = {"displayName": name, "traits": traits}
    if description is not None:
        payload["description"] = description
    return TraitGroupList.TraitGroupRequest(payload)


def identity_settings(rules: list[str], *configs: dict[str, Any]) -> Any:
    return IRS.IdentityResolutionSettingsCore(
        {"identifierConfigs": [IRS.IdentifierConfig(c) for c in configs], "matchingRules": rules}
    )


# ------------------------------------------------------------------------------------- stores


def test_store_fetch_returns_seeded_store_with_quoted_etag(reader: Any, store_id: str) -> None:
    """Fetching the seeded store gives its fields, status ACTIVE, version 1 and a quoted ETag."""
    response = reader.stores(store_id).fetch_with_http_info()
    assert response.status_code == 200
    etag_of(response)
    store = response.data
    assert (store.id, store.display_name, store.status, store.version) == (
        store_id,
        "test-store",
        "ACTIVE",
        1,
    )
    assert store.description == "The store every emulator test starts from."


def test_store_create_is_202_with_a_completed_operation(
    v1: Any, emulator: EmulatorServer, store_id: str
) -> None:
    """Creating a store answers 202 with operation headers; the operation names the new store."""
    request = StoreList.ServiceRequest({"displayName": "second-store", "description": "Another."})
    response = v1.stores.create_with_http_info(request)
    new_id = v1.operations(header(response, "Operation-Id")).fetch().result["id"]
    assert STORE_ID.match(new_id)
    assert_operation(v1, emulator, response, new_id)
    store = v1.stores(new_id).fetch()
    assert (store.display_name, store.description, store.status) == (
        "second-store",
        "Another.",
        "ACTIVE",
    )
    assert sorted(v1.stores.list()) == sorted([store_id, new_id])


def test_store_patch_with_if_match_increments_version_and_stale_tag_is_412(
    v1: Any, emulator: EmulatorServer, store_id: str
) -> None:
    """A store PATCH with the current ETag is applied (version 2); the old ETag then gets 412."""
    tag = etag_of(v1.stores(store_id).fetch_with_http_info())
    request = StoreList.PatchStoreRequest({"description": "Renovated."})
    response = v1.stores(store_id).patch_with_http_info(request, if_match=tag)
    assert_operation(v1, emulator, response, store_id)
    store = v1.stores(store_id).fetch()
    assert (store.display_name, store.description, store.version) == ("test-store", "Renovated.", 2)
    with rejected(412, 20412):
        v1.stores(store_id).patch(
            StoreList.PatchStoreRequest({"description": "Lost."}), if_match=tag
        )
    assert v1.stores(store_id).fetch().description == "Renovated."


def test_unknown_store_and_operation_are_404(reader: Any) -> None:
    """A well-formed but unknown store ID (either prefix) or operation ID is 404/20404."""
    with rejected(404, 20404):
        reader.stores(UNKNOWN_STORE).fetch()
    with rejected(404, 20404):
        reader.stores("mem_service_0" + "0" * 25).fetch()
    with rejected(404, 20404):
        reader.identity_resolution_settings(UNKNOWN_STORE).fetch()
    with rejected(404, 20404):
        reader.trait_groups(UNKNOWN_STORE, "Contact").fetch()
    with rejected(404, 20404):
        reader.profiles(UNKNOWN_STORE, PROFILE_A).fetch()
    with rejected(404, 20404):
        reader.operations(UNKNOWN_OPERATION).fetch()


# ------------------------------------------------------------------------------- trait groups


def test_trait_group_fetch_returns_definitions_version_and_quoted_etag(
    reader: Any, store_id: str
) -> None:
    """Fetching Loyalty gives the seeded definitions, version 1 and a quoted ETag."""
    response = reader.trait_groups(store_id, "Loyalty").fetch_with_http_info()
    assert response.status_code == 200
    etag_of(response)
    group = response.data.trait_group
    assert (group["displayName"], group["description"], group["version"]) == (
        "Loyalty",
        "Loyalty programme.",
        1,
    )
    assert group["traits"] == {
        "points": {
            "dataType": "NUMBER",
            "validationRule": {"ruleType": "NUMBER", "min": 0, "max": 1000000},
        },
        "tier": {
            "dataType": "STRING",
            "validationRule": {"ruleType": "STRING", "pattern": "^(bronze|silver|gold)$"},
        },
        "code": {
            "dataType": "STRING",
            "validationRule": {"ruleType": "STRING", "minLength": 3, "maxLength": 8},
        },
        "subscribed": {"dataType": "BOOLEAN"},
        "tags": {
            "dataType": "ARRAY",
            "validationRule": {"ruleType": "ARRAY", "minItems": 1, "maxItems": 3},
        },
    }


def test_trait_group_list_names_every_group(reader: Any, store_id: str) -> None:
    """Listing trait groups yields Contact and Loyalty, with traits only when asked for."""
    groups = reader.trait_groups(store_id).list()
    assert sorted(g.display_name for g in groups) == ["Contact", "Loyalty"]
    assert all(g.traits is None for g in groups)
    with_traits = reader.trait_groups(store_id).list(include_traits=True)
    assert {g.display_name: sorted(g.traits) for g in with_traits} == {
        "Contact": ["email", "firstName", "lastName", "phone", "userId"],
        "Loyalty": ["code", "points", "subscribed", "tags", "tier"],
    }


def test_unknown_trait_group_is_404(v1: Any, store_id: str) -> None:
    """Fetching, patching or deleting a trait group that does not exist is 404/20404."""
    with rejected(404, 20404):
        v1.trait_groups(store_id, "Nope").fetch()
    with rejected(404, 20404):
        v1.trait_groups(store_id, "Nope").patch(
            TraitGroupList.PatchTraitGroupRequest({"description": "x"})
        )
    with rejected(404, 20404):
        v1.trait_groups(store_id, "Nope").delete()


def test_trait_group_create_is_202_and_stores_the_definitions(
    v1: Any, emulator: EmulatorServer, store_id: str
) -> None:
    """Creating a trait group from model classes is 202; fetch returns exactly what was defined."""
    traits = {
        "nickname": {"dataType": "STRING", "description": "What friends say."},
        "visits": {
            "dataType": "NUMBER",
            "validationRule": {"ruleType": "NUMBER", "min": 0, "max": 10},
        },
        "workEmail": {"dataType": "STRING", "idTypePromotion": "email"},
    }
    response = v1.trait_groups(store_id).create_with_http_info(
        group_request("Work", traits, "Work facts.")
    )
    assert_operation(v1, emulator, response, "Work")
    group = v1.trait_groups(store_id, "Work").fetch().trait_group
    assert group == {
        "displayName": "Work",
        "description": "Work facts.",
        "traits": traits,
        "version": 1,
    }
    with rejected(409, 20409):
        v1.trait_groups(store_id).create(group_request("Work", {}))


def test_trait_group_create_with_invalid_definition_is_400(v1: Any, store_id: str) -> None:
    """Bad group names, trait names, dataTypes and validation rules are each 400."""
    cases: list[tuple[str, str, dict[str, Any], str | None]] = [
        ("bad displayName", "Bad Name", {}, None),
        ("displayName over 64", "G" * 65, {}, None),
        ("description over 1024", "Ok", {}, "d" * 1025),
        ("trait name not lowerCamelCase", "Ok", {"BadName": {"dataType": "STRING"}}, None),
        ("unknown dataType", "Ok", {"t": {"dataType": "DATE"}}, None),
        ("empty dataType on create", "Ok", {"t": {"dataType": ""}}, None),
        (
            "ruleType not matching dataType",
            "Ok",
            {"t": {"dataType": "STRING", "validationRule": {"ruleType": "NUMBER", "min": 1}}},
            None,
        ),
        (
            "pattern over 1000 characters",
            "Ok",
            {
                "t": {
                    "dataType": "STRING",
                    "validationRule": {"ruleType": "STRING", "pattern": "a" * 1001},
                }
            },
            None,
        ),
    ]
    for case, name, traits, description in cases:
        with rejected(400, 400):
            v1.trait_groups(store_id).create(group_request(name, traits, description))
            pytest.fail(f"{case} was accepted")
    assert sorted(g.display_name for g in v1.trait_groups(store_id).list()) == [
        "Contact",
        "Loyalty",
    ]


def test_trait_group_patch_with_etag_increments_version_each_time(
    v1: Any, emulator: EmulatorServer, store_id: str
) -> None:
    """PATCH with the ETag as given is 202 and bumps the version by one on every PATCH."""
    context = v1.trait_groups(store_id, "Loyalty")
    tag1 = etag_of(context.fetch_with_http_info())
    request = TraitGroupList.PatchTraitGroupRequest({"description": "Points and perks."})
    assert_operation(v1, emulator, context.patch_with_http_info(request, if_match=tag1), "Loyalty")
    second = context.fetch_with_http_info()
    tag2 = etag_of(second)
    assert tag2 != tag1
    assert second.data.trait_group["version"] == 2
    assert second.data.trait_group["description"] == "Points and perks."
    context.patch(TraitGroupList.PatchTraitGroupRequest({"description": "Again."}), if_match=tag2)
    assert context.fetch().trait_group["version"] == 3
    context.patch(TraitGroupList.PatchTraitGroupRequest({"description": "No tag."}))
    assert context.fetch().trait_group["version"] == 4


def test_trait_group_patch_with_stale_etag_is_412_and_changes_nothing(
    v1: Any, store_id: str
) -> None:
    """A PATCH carrying the ETag from before the last PATCH is 412/20412 and is not applied."""
    context = v1.trait_groups(store_id, "Loyalty")
    stale = etag_of(context.fetch_with_http_info())
    context.patch(TraitGroupList.PatchTraitGroupRequest({"description": "First."}), if_match=stale)
    late = TraitGroupList.PatchTraitGroupRequest({"traits": {"extra": {"dataType": "STRING"}}})
    with rejected(412, 20412):
        context.patch(late, if_match=stale)
    group = context.fetch().trait_group
    assert group["version"] == 2
    assert "extra" not in group["traits"]


def test_trait_group_patch_replaces_matching_trait_and_adds_new_one(v1: Any, store_id: str) -> None:
    """PATCH traits: a matching key is replaced whole, a new key is added, the rest stay."""
    new_code = {
        "dataType": "STRING",
        "validationRule": {"ruleType": "STRING", "minLength": 2, "maxLength": 4},
    }
    request = TraitGroupList.PatchTraitGroupRequest(
        {"traits": {"code": new_code, "nickname": {"dataType": "STRING"}}}
    )
    v1.trait_groups(store_id, "Loyalty").patch(request)
    traits = v1.trait_groups(store_id, "Loyalty").fetch().trait_group["traits"]
    assert traits["code"] == new_code
    assert traits["nickname"] == {"dataType": "STRING"}
    assert set(traits) == {"points", "tier", "code", "subscribed", "tags", "nickname"}
    patch(v1, store_id, PROFILE_A, {"Loyalty": {"code": "ab", "nickname": "Countess"}})
    assert traits_of(v1, store_id, PROFILE_A)["Loyalty"]["nickname"] == "Countess"


def test_trait_group_patch_empty_data_type_deletes_the_trait(v1: Any, store_id: str) -> None:
    """``{"dataType": ""}`` deletes a trait: gone from the group, from profiles, and unwritable."""
    request = TraitGroupList.PatchTraitGroupRequest({"traits": {"tier": {"dataType": ""}}})
    v1.trait_groups(store_id, "Loyalty").patch(request)
    group = v1.trait_groups(store_id, "Loyalty").fetch().trait_group
    assert "tier" not in group["traits"]
    assert group["version"] == 2
    assert traits_of(v1, store_id, PROFILE_A)["Loyalty"] == {"points": 10}
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, {"Loyalty": {"tier": "gold"}})


def test_trait_group_with_95_traits_is_accepted_and_96_is_400(v1: Any, store_id: str) -> None:
    """A group holds 95 traits: 96 in a create or PATCH body, or as a PATCH result, is 400."""
    wide = {f"t{i:02d}": {"dataType": "STRING"} for i in range(95)}
    response = v1.trait_groups(store_id).create_with_http_info(group_request("Wide", wide))
    assert response.status_code == 202
    assert len(v1.trait_groups(store_id, "Wide").fetch().trait_group["traits"]) == 95
    too_wide = {f"t{i:02d}": {"dataType": "STRING"} for i in range(96)}
    with rejected(400, 400):
        v1.trait_groups(store_id).create(group_request("Wider", too_wide))
    with rejected(400, 400):
        v1.trait_groups(store_id, "Loyalty").patch(
            TraitGroupList.PatchTraitGroupRequest({"traits": too_wide})
        )
    # 91 more would leave Loyalty (5 traits) holding 96.
    more = {f"x{i:02d}": {"dataType": "BOOLEAN"} for i in range(91)}
    with rejected(400, 400):
        v1.trait_groups(store_id, "Loyalty").patch(
            TraitGroupList.PatchTraitGroupRequest({"traits": more})
        )
    group = v1.trait_groups(store_id, "Loyalty").fetch().trait_group
    assert (len(group["traits"]), group["version"]) == (5, 1)


def test_deleting_contact_group_is_409(v1: Any, store_id: str) -> None:
    """The out-of-the-box Contact group cannot be deleted: 409/20409, and it is still there."""
    with rejected(409, 20409):
        v1.trait_groups(store_id, "Contact").delete()
    assert v1.trait_groups(store_id, "Contact").fetch().trait_group["displayName"] == "Contact"
    assert traits_of(v1, store_id, PROFILE_A) == SEEDED_A_TRAITS


def test_deleting_a_trait_group_is_202_and_removes_it_everywhere(
    v1: Any, emulator: EmulatorServer, store_id: str
) -> None:
    """Deleting Loyalty is 202 with an operation; the group and its profile values are gone."""
    response = v1.trait_groups(store_id, "Loyalty").delete_with_http_info()
    assert_operation(v1, emulator, response, "Loyalty")
    with rejected(404, 20404):
        v1.trait_groups(store_id, "Loyalty").fetch()
    assert traits_of(v1, store_id, PROFILE_A) == {"Contact": SEEDED_A_TRAITS["Contact"]}
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, {"Loyalty": {"points": 1}})


# --------------------------------------------------------------------- identity resolution


def test_identity_settings_fetch_has_etag_and_seeded_settings(reader: Any, store_id: str) -> None:
    """GET identity settings: the seeded configs with documented defaults, rules, version 1."""
    response = reader.identity_resolution_settings(store_id).fetch_with_http_info()
    assert response.status_code == 200
    etag_of(response)
    assert response.data.identifier_configs == [
        {"idType": "email", **IRS_DEFAULTS, "normalization": "email"},
        {"idType": "phone", **IRS_DEFAULTS, "normalization": "phone"},
        {"idType": "user_id", **IRS_DEFAULTS, "enforceUnique": False, "normalization": "trim"},
    ]
    assert response.data.matching_rules == ["email", "phone", "user_id"]
    assert response.data.version == 1


def test_identity_settings_put_with_if_match_replaces_and_increments_version(
    v1: Any, emulator: EmulatorServer, store_id: str
) -> None:
    """PUT with the current ETag is 202, replaces configs and rules, and bumps the version."""
    settings_api = v1.identity_resolution_settings(store_id)
    tag = etag_of(settings_api.fetch_with_http_info())
    body = identity_settings(
        ["phone", "crm"],
        {"idType": "phone", "normalization": "phone", "limit": 5, "limitPolicy": "lifo"},
        {"idType": "crm"},
    )
    response = settings_api.update_with_http_info(body, if_match=tag)
    assert_operation(v1, emulator, response, store_id)
    fetched = settings_api.fetch_with_http_info()
    assert etag_of(fetched) != tag
    assert fetched.data.version == 2
    assert fetched.data.matching_rules == ["phone", "crm"]
    assert fetched.data.identifier_configs == [
        {
            "idType": "phone",
            **IRS_DEFAULTS,
            "limit": 5,
            "limitPolicy": "lifo",
            "normalization": "phone",
        },
        {"idType": "crm", **IRS_DEFAULTS, "normalization": "trim"},
    ]
    with rejected(400, 400):  # email is no longer a configured idType
        lookup(v1, store_id, "email", "ada@example.com")


def test_identity_settings_put_with_stale_etag_is_412(v1: Any, store_id: str) -> None:
    """A second PUT with the ETag the first one consumed is 412/20412 and is not applied."""
    settings_api = v1.identity_resolution_settings(store_id)
    tag = etag_of(settings_api.fetch_with_http_info())
    settings_api.update(identity_settings(["email"], {"idType": "email"}), if_match=tag)
    with rejected(412, 20412):
        settings_api.update(identity_settings(["phone"], {"idType": "phone"}), if_match=tag)
    current = settings_api.fetch()
    assert (current.matching_rules, current.version) == (["email"], 2)


def test_matching_rule_naming_unconfigured_id_type_is_400(v1: Any, store_id: str) -> None:
    """A matching rule for an idType with no identifier config is 400, and nothing changes."""
    body = identity_settings(["email", "fax"], {"idType": "email", "normalization": "email"})
    with rejected(400, 400):
        v1.identity_resolution_settings(store_id).update(body)
    current = v1.identity_resolution_settings(store_id).fetch()
    assert (current.matching_rules, current.version) == (["email", "phone", "user_id"], 1)


def test_matching_rules_are_tried_in_priority_order(v1: Any, store_id: str) -> None:
    """With one candidate by email and another by phone, the first matching rule picks."""
    configs = (
        {"idType": "email", "normalization": "email", "enforceUnique": False},
        {"idType": "phone", "normalization": "phone", "enforceUnique": False},
    )
    settings_api = v1.identity_resolution_settings(store_id)
    settings_api.update(identity_settings(["phone", "email"], *configs))
    create(v1, store_id, contact(email="order1@example.com"))
    by_phone = create(v1, store_id, contact(phone="+13175557001"))
    assert create(v1, store_id, contact(email="order1@example.com", phone="+13175557001")) == (
        by_phone
    )
    settings_api.update(identity_settings(["email", "phone"], *configs))
    by_email = create(v1, store_id, contact(email="order2@example.com"))
    create(v1, store_id, contact(phone="+13175557002"))
    assert create(v1, store_id, contact(email="order2@example.com", phone="+13175557002")) == (
        by_email
    )


# ------------------------------------------------------------------------------------ profiles


def test_profile_fetch_returns_seeded_profile(reader: Any, store_id: str) -> None:
    """Fetching profile a returns its ID, creation time and every seeded trait."""
    profile = reader.profiles(store_id, PROFILE_A).fetch()
    assert profile.id == PROFILE_A
    assert profile.created_at is not None
    assert profile.traits == SEEDED_A_TRAITS


def test_profile_fetch_filters_trait_groups(reader: Any, store_id: str) -> None:
    """``traitGroups`` limits the fetched groups to those named; an unknown name is 400."""
    only = reader.profiles(store_id, PROFILE_A).fetch(trait_groups="Loyalty")
    assert only.traits == {"Loyalty": SEEDED_A_TRAITS["Loyalty"]}
    both = reader.profiles(store_id, PROFILE_A).fetch(trait_groups="Contact,Loyalty")
    assert both.traits == SEEDED_A_TRAITS
    with rejected(400, 400):
        reader.profiles(store_id, PROFILE_A).fetch(trait_groups="Loyalty,Nope")


def test_profile_create_without_promoted_trait_is_400(v1: Any, store_id: str) -> None:
    """A create whose traits promote no identifier is 400, and no profile is created."""
    with rejected(400, 400):
        create(v1, store_id, {"Contact": {"firstName": "Nobody"}, "Loyalty": {"points": 1}})
    with rejected(400, 400):
        create(v1, store_id, {})
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED


def test_profile_create_new_is_202_with_a_fresh_id(v1: Any, store_id: str) -> None:
    """A create with an unknown email is 202 {message, id}; the new profile holds the traits."""
    data = ProfileList.ProfileData(
        {"traits": contact(email="Grace@Example.com", firstName="Grace")}
    )
    response = v1.profiles(store_id).create_with_http_info(data)
    assert response.status_code == 202
    new_id = response.data.id
    assert PROFILE_ID.match(new_id)
    assert new_id not in (PROFILE_A, PROFILE_B, PROFILE_C, PROFILE_D)
    assert response.data.message
    assert traits_of(v1, store_id, new_id) == contact(email="Grace@Example.com", firstName="Grace")
    assert lookup(v1, store_id, "email", "grace@example.com").profiles == [new_id]
    assert v1.profiles(store_id).list()[0] == new_id


def test_profile_create_matching_an_email_updates_that_profile(v1: Any, store_id: str) -> None:
    """A create whose email normalizes to profile a's returns a's ID and merges traits into a."""
    assert create(v1, store_id, contact(email=" ADA@Example.com", lastName="Lovelace")) == PROFILE_A
    traits = traits_of(v1, store_id, PROFILE_A)
    assert traits["Contact"]["lastName"] == "Lovelace"
    assert traits["Contact"]["firstName"] == "Ada"
    assert traits["Loyalty"] == SEEDED_A_TRAITS["Loyalty"]
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED


def test_profile_create_matching_a_phone_updates_that_profile(v1: Any, store_id: str) -> None:
    """With no email match the phone rule applies: a national-format phone resolves to a."""
    found = create(v1, store_id, contact(email="new-ada@example.com", phone="(317) 555-0001"))
    assert found == PROFILE_A
    emails = v1.identifiers(store_id, PROFILE_A)("email").fetch().values
    assert emails == ["ada@example.com", "di.old@example.com", "new-ada@example.com"]
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED


def test_profile_create_with_emails_of_two_profiles_merges_into_earliest(
    v1: Any, store_id: str
) -> None:
    """Two emails owned by two profiles merge them into the earliest, which the create returns."""
    v1.trait_groups(store_id).create(
        group_request("Work", {"workEmail": {"dataType": "STRING", "idTypePromotion": "email"}})
    )
    pat = create(v1, store_id, contact(email="pat@example.com", lastName="Ng"))
    assert pat not in LIVE_SEEDED
    merged = create(
        v1,
        store_id,
        {"Contact": {"email": "pat@example.com"}, "Work": {"workEmail": "ada@example.com"}},
    )
    assert merged == PROFILE_A
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED
    assert lookup(v1, store_id, "email", "pat@example.com").profiles == [PROFILE_A]
    traits = traits_of(v1, store_id, PROFILE_A)
    assert (traits["Contact"]["firstName"], traits["Contact"]["lastName"]) == ("Ada", "Ng")
    emails = v1.identifiers(store_id, PROFILE_A)("email").fetch().values
    assert sorted(emails) == ["ada@example.com", "di.old@example.com", "pat@example.com"]


def test_profile_patch_merges_traits(v1: Any, store_id: str) -> None:
    """PATCH is 202 {message}; sent traits are added or replaced, all others stay."""
    response = patch(v1, store_id, PROFILE_A, {"Loyalty": {"points": 20, "subscribed": True}})
    assert response.status_code == 202
    assert response.data.message
    assert traits_of(v1, store_id, PROFILE_A) == {
        "Contact": SEEDED_A_TRAITS["Contact"],
        "Loyalty": {"points": 20, "tier": "gold", "subscribed": True},
    }


def test_profile_patch_null_removes_a_trait(v1: Any, http: httpx.Client, store_id: str) -> None:
    """A trait sent as null is removed (sent raw: the client drops nulls from bodies)."""
    body = ProfileList.ProfilePatch({"traits": {"Loyalty": {"tier": None, "code": "abcd"}}})
    response = raw(http, "PATCH", f"/v1/Stores/{store_id}/Profiles/{PROFILE_A}", body.to_dict())
    assert response.status_code == 202
    assert traits_of(v1, store_id, PROFILE_A)["Loyalty"] == {"points": 10, "code": "abcd"}


def test_profile_delete_is_202_and_the_profile_is_gone(v1: Any, store_id: str) -> None:
    """After DELETE (202) the profile is 404, unlisted, and its identifiers no longer match."""
    response = v1.profiles(store_id, PROFILE_A).delete_with_http_info()
    assert response.status_code == 202
    with rejected(404, 20404):
        v1.profiles(store_id, PROFILE_A).fetch()
    assert sorted(v1.profiles(store_id).list()) == [PROFILE_B, PROFILE_C]
    assert lookup(v1, store_id, "email", "ada@example.com").profiles == []


# -------------------------------------------------------------------------------------- lookup


def test_lookup_normalizes_phone_numbers(reader: Any, store_id: str) -> None:
    """Phone lookups normalize US formats to E.164 (the documented example too)."""
    for raw_phone in ["1-317-555-0001", "+1 317 555 0001", "(317) 555-0001", "317.555.0001"]:
        found = reader.lookup(store_id).create_with_http_info(
            LookupList.Identifier({"idType": "phone", "value": raw_phone})
        )
        assert found.status_code == 200
        assert (found.data.normalized_value, found.data.profiles) == (
            "+13175550001",
            [PROFILE_A],
        ), raw_phone
    example = lookup(reader, store_id, "phone", "1-317-555-6789")
    assert (example.normalized_value, example.profiles) == ("+13175556789", [])


@settings(max_examples=30, deadline=None)
@given(
    upper=st.lists(st.booleans(), min_size=15, max_size=15),
    gaps=st.lists(st.sampled_from(["", "", " ", "  "]), min_size=16, max_size=16),
)
def test_email_lookup_ignores_case_and_spaces(
    reader: Any, upper: list[bool], gaps: list[str]
) -> None:
    """Any casing and spacing of ada@example.com looks up profile a by its normalized email."""
    email = "ada@example.com"
    chars = [c.upper() if up else c for c, up in zip(email, upper, strict=True)]
    value = gaps[0] + "".join(c + gap for c, gap in zip(chars, gaps[1:], strict=True))
    found = lookup(reader, SEED_STORE, "email", value)
    assert (found.normalized_value, found.profiles) == (email, [PROFILE_A])


def test_lookup_without_match_is_200_with_empty_profiles(reader: Any, store_id: str) -> None:
    """A lookup that matches nothing is 200 with ``profiles: []``, not an error."""
    identifier = LookupList.Identifier({"idType": "email", "value": "Nobody@Example.com"})
    response = reader.lookup(store_id).create_with_http_info(identifier)
    assert response.status_code == 200
    assert (response.data.normalized_value, response.data.profiles) == ("nobody@example.com", [])


def test_lookup_of_a_shared_non_unique_identifier_returns_every_owner(
    reader: Any, store_id: str
) -> None:
    """user_id is not unique (trim normalization): both profiles holding ``shared-7`` match."""
    found = lookup(reader, store_id, "user_id", "  shared-7 ")
    assert found.normalized_value == "shared-7"
    assert sorted(found.profiles) == [PROFILE_B, PROFILE_C]


def test_lookup_of_merged_profiles_email_returns_canonical_id(reader: Any, store_id: str) -> None:
    """Profile d was merged into a, so d's email resolves to the canonical ID a."""
    found = lookup(reader, store_id, "email", "di.old@example.com")
    assert (found.normalized_value, found.profiles) == ("di.old@example.com", [PROFILE_A])


def test_lookup_rejections(reader: Any, store_id: str) -> None:
    """An unconfigured idType is 400/400; a value that is not a phone number is 400/21614."""
    with rejected(400, 400):
        lookup(reader, store_id, "fax", "12345")
    with rejected(400, 400):
        lookup(reader, store_id, "x", "12345")  # idType shorter than 2
    for bad_phone in ["555-01", "12", "not a phone"]:
        with rejected(400, 21614):
            lookup(reader, store_id, "phone", bad_phone)


def test_promoted_invalid_phone_is_21614(v1: Any, store_id: str) -> None:
    """An invalid phone in a promoted trait is 400/21614, on create, patch and bulk."""
    with rejected(400, 21614):
        create(v1, store_id, contact(email="x@example.com", phone="12"))
    with rejected(400, 21614):
        patch(v1, store_id, PROFILE_A, contact(phone="not a phone"))
    bulk = BulkList.UpdateProfilesBulkRequest({"profiles": [{"traits": contact(phone="555")}]})
    with rejected(400, 21614):
        v1.bulk(store_id).update(bulk)
    assert lookup(v1, store_id, "email", "x@example.com").profiles == []
    assert traits_of(v1, store_id, PROFILE_A) == SEEDED_A_TRAITS


# ---------------------------------------------------------------------------------------- bulk


def test_bulk_upsert_updates_existing_and_creates_new(v1: Any, store_id: str) -> None:
    """Bulk PUT is 202 {message}: a known email updates a, an unknown one creates a profile."""
    request = BulkList.UpdateProfilesBulkRequest(
        {
            "profiles": [
                {"traits": contact(email="ADA@example.com", lastName="Lovelace")},
                {"traits": contact(email="linus@example.com", firstName="Linus")},
            ]
        }
    )
    response = v1.bulk(store_id).update_with_http_info(request)
    assert response.status_code == 202
    assert response.data.message
    assert traits_of(v1, store_id, PROFILE_A)["Contact"]["lastName"] == "Lovelace"
    linus = lookup(v1, store_id, "email", "linus@example.com").profiles
    assert len(linus) == 1
    assert traits_of(v1, store_id, linus[0]) == contact(
        email="linus@example.com", firstName="Linus"
    )
    assert len(v1.profiles(store_id).list()) == 4


def test_bulk_size_limits(v1: Any, store_id: str) -> None:
    """A bulk upsert of 0 or 1001 profiles is 400 and creates nothing; 1000 is accepted."""

    def batch(count: int) -> Any:
        profiles = [{"traits": contact(email=f"k{i}@example.com")} for i in range(count)]
        return BulkList.UpdateProfilesBulkRequest({"profiles": profiles})

    for count in (0, 1001):
        with rejected(400, 400):
            v1.bulk(store_id).update(batch(count))
        assert len(v1.profiles(store_id).list(page_size=100)) == 3, count
    assert v1.bulk(store_id).update_with_http_info(batch(1000)).status_code == 202
    assert len(set(v1.profiles(store_id).list(page_size=100))) == 1003


def test_bulk_with_several_matches_merges_them_and_non_unique_updates_the_earliest(
    v1: Any, store_id: str
) -> None:
    """A bulk profile whose emails belong to two profiles merges them into the earliest; one
    whose user_id (enforceUnique false) two profiles share updates the earliest of them."""
    v1.trait_groups(store_id).create(
        group_request("Work", {"workEmail": {"dataType": "STRING", "idTypePromotion": "email"}})
    )
    first = BulkList.UpdateProfilesBulkRequest(
        {"profiles": [{"traits": contact(email="pat@example.com", lastName="Ng")}]}
    )
    v1.bulk(store_id).update(first)
    (pat,) = lookup(v1, store_id, "email", "pat@example.com").profiles
    both = {"Contact": {"email": "pat@example.com"}, "Work": {"workEmail": "ada@example.com"}}
    shared = contact(userId="shared-7", lastName="Shared")
    second = BulkList.UpdateProfilesBulkRequest(
        {"profiles": [{"traits": both}, {"traits": shared}]}
    )
    assert v1.bulk(store_id).update_with_http_info(second).status_code == 202
    assert pat not in LIVE_SEEDED
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED
    assert lookup(v1, store_id, "email", "pat@example.com").profiles == [PROFILE_A]
    traits = traits_of(v1, store_id, PROFILE_A)
    assert (traits["Contact"]["firstName"], traits["Contact"]["lastName"]) == ("Ada", "Ng")
    assert traits["Work"] == {"workEmail": "ada@example.com"}
    assert traits_of(v1, store_id, PROFILE_B)["Contact"]["lastName"] == "Shared"
    assert "lastName" not in traits_of(v1, store_id, PROFILE_C)["Contact"]


BULK_REFUSALS: list[tuple[str, dict[str, Any], int, str]] = [
    ("no promoted trait", contact(firstName="Anonymous"), 400, "no trait is promoted"),
    ("unknown group", {"Nope": {"x": 1}}, 400, "Unknown trait group 'Nope'"),
    ("wrong type", {**contact(email="x@example.com"), "Loyalty": {"points": "many"}}, 400,
     "expected a NUMBER"),
    ("validation rule", {**contact(email="x@example.com"), "Loyalty": {"tier": "tin"}}, 400,
     "does not match pattern"),
    ("invalid phone", contact(phone="555"), 21614, "Contact.phone"),
    ("100 traits in a group", contact(**{f"t{k}": "x" for k in range(100)}), 400,
     "At most 99 traits per group"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("traits", "code", "says"),
    [case[1:] for case in BULK_REFUSALS],
    ids=[case[0] for case in BULK_REFUSALS],
)
def test_bulk_refusal_names_the_profile_and_writes_nothing(
    v1: Any, store_id: str, traits: dict[str, Any], code: int, says: str
) -> None:
    """One refused profile fails the batch with TwilioRestException 400 (21614 for a phone)
    whose message names it ("profiles[i]: "); the good profiles around it are not written."""
    request = BulkList.UpdateProfilesBulkRequest(
        {
            "profiles": [
                {"traits": contact(email="ok@example.com")},
                {"traits": contact(email="ADA@example.com", lastName="Lovelace")},
                {"traits": traits},
                {"traits": contact(email="ok2@example.com")},
            ]
        }
    )
    with pytest.raises(TwilioRestException) as info:
        v1.bulk(store_id).update(request)
    assert (info.value.status, info.value.code) == (400, code)
    message = info.value.msg.removeprefix("Unable to update record: ")  # the client's prefix
    assert message.startswith("profiles[2]: "), info.value.msg
    assert says in message
    assert lookup(v1, store_id, "email", "ok@example.com").profiles == []
    assert lookup(v1, store_id, "email", "ok2@example.com").profiles == []
    assert traits_of(v1, store_id, PROFILE_A) == SEEDED_A_TRAITS
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED


def test_bulk_body_over_the_emulator_cap_is_413_and_its_halves_land() -> None:
    """With max_body_bytes the client sees TwilioRestException 413 for the whole batch, the
    answer the bulk client splits on; each half of it fits."""
    profiles = [{"traits": contact(email=f"cap{i}@example.com")} for i in range(40)]
    with EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7, max_body_bytes=2_000)) as emu:
        v1 = connect(emu)
        with rejected(413, 413):
            v1.bulk(SEED_STORE).update(BulkList.UpdateProfilesBulkRequest({"profiles": profiles}))
        assert sorted(v1.profiles(SEED_STORE).list()) == LIVE_SEEDED
        for half in (profiles[:20], profiles[20:]):
            request = BulkList.UpdateProfilesBulkRequest({"profiles": half})
            assert v1.bulk(SEED_STORE).update_with_http_info(request).status_code == 202
        assert len(v1.profiles(SEED_STORE).list()) == len(LIVE_SEEDED) + 40


# ------------------------------------------------------------------------------------- imports

IMPORT_CSV = b"email,first\nimp1@example.com,Imp\nimp2@example.com,\nADA@example.com,Augusta\n"
IMPORT_MAPPINGS = [
    {"columnName": "email", "traitGroup": "Contact", "traitName": "email"},
    {"columnName": "first", "traitGroup": "Contact", "traitName": "firstName"},
]


def import_request(size: int, mappings: list[dict[str, str]] | None = None) -> Any:
    return ImportList.CreateProfilesImportV2Request(
        {
            "filename": "extract.csv",
            "fileSize": size,
            "columnMappings": mappings or IMPORT_MAPPINGS,
        }
    )


def test_import_create_upload_fetch_and_list(v1: Any, store_id: str) -> None:
    """create is 201 {importId, url}; fetch reads status/filename/createdAt/summary; list IDs."""
    response = v1.imports(store_id).create_with_http_info(import_request(len(IMPORT_CSV)))
    assert response.status_code == 201
    created = response.data
    assert re.match(r"^mem_import_[0-7][0-9a-z]{25}$", created.import_id)
    pending = v1.imports(store_id, created.import_id).fetch()
    assert (pending.status, pending.filename, pending.file_size) == (
        "PENDING", "extract.csv", len(IMPORT_CSV))  # fmt: skip
    assert pending.created_at is not None and pending.updated_at is not None
    assert pending.summary["errors"] == 0 and pending.summary["warnings"] == 0
    assert httpx.put(created.url, content=IMPORT_CSV).status_code == 200  # no Twilio auth
    for _ in range(500):  # bounded by a count, not a time
        done = v1.imports(store_id, created.import_id).fetch()
        if done.status not in ("PENDING", "PROCESSING"):
            break
    assert done.status == "COMPLETED"
    assert (done.summary["errors"], done.summary["warnings"]) == (0, 1)  # imp2's blank first
    assert done.column_mappings == IMPORT_MAPPINGS
    assert done.summary["rows"] == 3
    imp1 = lookup(v1, store_id, "email", "imp1@example.com").profiles
    assert traits_of(v1, store_id, imp1[0]) == contact(email="imp1@example.com", firstName="Imp")
    # A row keyed by a known identifier merges into that profile, as a bulk profile does.
    assert lookup(v1, store_id, "email", "ada@example.com").profiles == [PROFILE_A]
    ada = traits_of(v1, store_id, PROFILE_A)
    assert ada["Contact"]["firstName"] == "Augusta"
    assert ada["Loyalty"] == SEEDED_A_TRAITS["Loyalty"]
    assert len(v1.profiles(store_id).list()) == len(LIVE_SEEDED) + 2
    second = v1.imports(store_id).create(import_request(len(IMPORT_CSV))).import_id
    assert v1.imports(store_id).list() == [second, created.import_id]
    assert v1.imports(store_id).list(order_by="ASC", page_size=1) == [created.import_id, second]


def test_import_rejections(v1: Any, store_id: str) -> None:
    """Bad registrations are 400/400; an unknown import is 404/20404; a bad ID 400."""
    with rejected(400, 400):
        v1.imports(store_id).create(import_request(0))
    with rejected(400, 400):
        v1.imports(store_id).create(import_request(10, IMPORT_MAPPINGS[:1]))
    unknown_group = [IMPORT_MAPPINGS[0], {**IMPORT_MAPPINGS[1], "traitGroup": "Nope"}]
    with rejected(400, 400):
        v1.imports(store_id).create(import_request(10, unknown_group))
    with rejected(404, 20404):
        v1.imports(store_id, "mem_import_0" + "z" * 25).fetch()
    with rejected(400, 400):
        v1.imports(store_id, "not-an-import").fetch()
    with rejected(404, 20404):
        v1.imports(UNKNOWN_STORE).create(import_request(10))
    assert v1.imports(store_id).list() == []


# ---------------------------------------------------------------------------------- pagination


def test_profile_list_defaults_to_newest_first(paged: tuple[Any, list[str]]) -> None:
    """list() with defaults walks every page newest first: each live ID exactly once."""
    client, late = paged
    ids = client.profiles(SEED_STORE).list()
    assert len(ids) == PAGED_TOTAL
    assert len(set(ids)) == PAGED_TOTAL
    assert ids[:3] == late[::-1]
    assert set(LIVE_SEEDED) <= set(ids)
    assert PROFILE_D not in ids
    assert all(PROFILE_ID.match(i) for i in ids)


def test_profile_list_asc_is_the_exact_reverse_of_desc(paged: tuple[Any, list[str]]) -> None:
    """orderBy=ASC lists the DESC IDs in reverse; bulk items keep their request order."""
    client, late = paged
    desc = client.profiles(SEED_STORE).list(order_by="DESC", page_size=100)
    asc = client.profiles(SEED_STORE).list(order_by="ASC", page_size=100)
    assert len(asc) == PAGED_TOTAL
    assert asc == desc[::-1]
    assert asc[-3:] == late
    first = lookup(client, SEED_STORE, "email", "bulk000@example.com").profiles[0]
    last = lookup(client, SEED_STORE, "email", "bulk119@example.com").profiles[0]
    assert asc.index(first) < asc.index(last) < asc.index(late[0])


def test_profile_stream_follows_next_token_through_small_pages(
    paged: tuple[Any, list[str]],
) -> None:
    """stream() with 7 per page follows nextToken over 18 pages and yields each ID once."""
    client, _ = paged
    for order in ("ASC", "DESC"):
        ids = list(client.profiles(SEED_STORE).stream(order_by=order, page_size=7))
        assert len(ids) == PAGED_TOTAL, order
        assert len(set(ids)) == PAGED_TOTAL, order
        assert ids == client.profiles(SEED_STORE).list(order_by=order, page_size=100), order


def test_profile_page_size_is_honoured_up_to_100(paged: tuple[Any, list[str]]) -> None:
    """A page holds pageSize IDs, at most 100; the last page has no nextToken."""
    client, _ = paged
    profiles = client.profiles(SEED_STORE)
    assert len(list(profiles.page(page_size=37))) == 37
    first = profiles.page(page_size=100)
    assert first.next_token
    first_ids = list(first)
    assert len(first_ids) == 100
    second = first.next_page()
    second_ids = list(second)
    assert len(second_ids) == PAGED_TOTAL - 100
    assert second.next_token is None
    assert second.next_page() is None
    assert not set(first_ids) & set(second_ids)
    capped = profiles.page(page_size=1000)
    assert len(list(capped)) == 100
    assert capped.next_token


def test_profile_list_limit_stops_early(paged: tuple[Any, list[str]]) -> None:
    """list(limit=10) returns the 10 newest profiles."""
    client, late = paged
    newest = client.profiles(SEED_STORE).list(limit=10)
    assert newest == client.profiles(SEED_STORE).list(page_size=100)[:10]
    assert newest[:3] == late[::-1]


def test_profile_list_with_bad_paging_parameters_is_400(paged: tuple[Any, list[str]]) -> None:
    """pageSize outside 1..1000, an unknown orderBy or a foreign pageToken is 400."""
    client, _ = paged
    queries: list[dict[str, Any]] = [
        {"page_size": 0},
        {"page_size": 1001},
        {"order_by": "SIDEWAYS"},
        {"page_token": "garbage!"},
    ]
    for query in queries:
        with page_rejected(400, 400):
            client.profiles(SEED_STORE).page(**query)
            pytest.fail(f"{query} was accepted")


# -------------------------------------------------------------------------- traits, identifiers


def test_traits_list_returns_every_trait_flattened(reader: Any, store_id: str) -> None:
    """The Traits list gives one {name, value, traitGroup, timestamp} per trait of the profile."""
    traits = reader.traits(store_id, PROFILE_A).list()
    assert {(t.trait_group, t.name): t.value for t in traits} == {
        ("Contact", "firstName"): "Ada",
        ("Contact", "email"): "ada@example.com",
        ("Contact", "phone"): "+13175550001",
        ("Loyalty", "points"): 10,
        ("Loyalty", "tier"): "gold",
    }
    assert len(traits) == 5
    assert all(t.timestamp is not None for t in traits)


def test_traits_list_filters_groups_and_pages(reader: Any, store_id: str) -> None:
    """The Traits list honours ``traitGroups`` (unknown: 400) and pages of 2 lose nothing."""
    loyalty = reader.traits(store_id, PROFILE_A).list(trait_groups="Loyalty")
    assert sorted(t.name for t in loyalty) == ["points", "tier"]
    paged = reader.traits(store_id, PROFILE_A).list(page_size=2)
    assert sorted((t.trait_group, t.name) for t in paged) == [
        ("Contact", "email"),
        ("Contact", "firstName"),
        ("Contact", "phone"),
        ("Loyalty", "points"),
        ("Loyalty", "tier"),
    ]
    with page_rejected(400, 400):
        reader.traits(store_id, PROFILE_A).list(trait_groups="Nope")


def test_identifiers_list_and_fetch(reader: Any, store_id: str) -> None:
    """Identifiers list and fetch give each idType's normalized values; a missing type is 404."""
    sets = reader.identifiers(store_id, PROFILE_A).list()
    assert {s.id_type: s.values for s in sets} == {
        "email": ["ada@example.com", "di.old@example.com"],  # d's, moved by its merge into a
        "phone": ["+13175550001"],
    }
    phone = reader.identifiers(store_id, PROFILE_A)("phone").fetch()
    assert (phone.id_type, phone.values) == ("phone", ["+13175550001"])
    assert reader.identifiers(store_id, PROFILE_B)("user_id").fetch().values == ["shared-7"]
    with rejected(404, 20404):
        reader.identifiers(store_id, PROFILE_A)("user_id").fetch()


def test_identifier_create_patch_and_delete(v1: Any, store_id: str) -> None:
    """Identifiers can be added (normalized), replaced and removed, and lookups follow."""
    ids = v1.identifiers(store_id, PROFILE_A)
    added = ids.create_with_http_info(
        IdentifierList.Identifier({"idType": "email", "value": " Ada.Work@Example.COM"})
    )
    assert added.status_code == 202
    old = "di.old@example.com"  # d's email, moved to a when d merged into a
    assert ids("email").fetch().values == ["ada@example.com", old, "ada.work@example.com"]
    assert lookup(v1, store_id, "email", "ada.work@example.com").profiles == [PROFILE_A]
    update = IdentifierList.IdentifierUpdate(
        {"idType": "email", "oldValue": "ada.work@example.com", "newValue": "ADA.HOME@example.com"}
    )
    assert ids("email").patch_with_http_info(update).status_code == 202
    assert ids("email").fetch().values == ["ada@example.com", old, "ada.home@example.com"]
    assert lookup(v1, store_id, "email", "ada.work@example.com").profiles == []
    assert ids("email").delete_with_http_info(remove_all=True).status_code == 202
    with rejected(404, 20404):
        ids("email").fetch()
    assert lookup(v1, store_id, "email", "ada@example.com").profiles == []


# ---------------------------------------------------------------------------------- rejections


def test_invalid_store_id_is_400(reader: Any) -> None:
    """A store ID that does not match the TTID pattern is 400 on control and data plane."""
    for bad in [
        "mem_store_short",
        "mem_store_8" + "0" * 25,
        "mem_store_0" + "A" * 25,
        "s_" + "0" * 26,
    ]:
        with rejected(400, 400):
            reader.stores(bad).fetch()
        with rejected(400, 400):
            reader.trait_groups(bad, "Contact").fetch()
        with rejected(400, 400):
            reader.profiles(bad, PROFILE_A).fetch()
        with rejected(400, 400):
            create(reader, bad, contact(email="x@example.com"))


def test_invalid_profile_id_is_400(v1: Any, store_id: str) -> None:
    """A profile ID that does not match the TTID pattern is 400 on fetch, patch and delete."""
    for bad in ["mem_profile_short", "mem_profile_9" + "0" * 25, "mem_profile_0" + "Z" * 25, "p_a"]:
        with rejected(400, 400):
            v1.profiles(store_id, bad).fetch()
        with rejected(400, 400):
            patch(v1, store_id, bad, {"Loyalty": {"points": 1}})
        with rejected(400, 400):
            v1.profiles(store_id, bad).delete()
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED


def test_unknown_profile_is_404(v1: Any, store_id: str) -> None:
    """A well-formed but unknown profile ID is 404/20404 on every profile operation."""
    with rejected(404, 20404):
        v1.profiles(store_id, UNKNOWN_PROFILE).fetch()
    with rejected(404, 20404):
        patch(v1, store_id, UNKNOWN_PROFILE, {"Loyalty": {"points": 1}})
    with rejected(404, 20404):
        v1.profiles(store_id, UNKNOWN_PROFILE).delete()
    with rejected(404, 20404):
        v1.identifiers(store_id, UNKNOWN_PROFILE).list()
    with page_rejected(404, 20404):
        v1.traits(store_id, UNKNOWN_PROFILE).list()
    assert sorted(v1.profiles(store_id).list()) == LIVE_SEEDED


def test_patch_with_50_trait_groups_is_accepted_and_51_is_400(v1: Any, store_id: str) -> None:
    """A profile PATCH may carry 50 trait groups; 51 is 400."""
    for i in range(48):
        v1.trait_groups(store_id).create(
            group_request(f"G{i:02d}", {"flag": {"dataType": "BOOLEAN"}})
        )
    groups: dict[str, Any] = {f"G{i:02d}": {"flag": True} for i in range(48)}
    groups |= {"Contact": {"lastName": "L"}, "Loyalty": {"points": 1}}
    assert patch(v1, store_id, PROFILE_A, groups).status_code == 202
    assert traits_of(v1, store_id, PROFILE_A)["G47"] == {"flag": True}
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, {**groups, "G48": {"flag": False}})


def test_patch_with_more_than_99_traits_in_a_group_is_400(v1: Any, store_id: str) -> None:
    """95 traits of one group in a PATCH are accepted; 100 in one group is 400."""
    wide = {f"t{i:02d}": {"dataType": "NUMBER"} for i in range(95)}
    v1.trait_groups(store_id).create(group_request("Wide", wide))
    values = {f"t{i:02d}": i for i in range(95)}
    assert patch(v1, store_id, PROFILE_A, {"Wide": values}).status_code == 202
    assert len(traits_of(v1, store_id, PROFILE_A)["Wide"]) == 95
    too_many = {**values, **{f"u{i}": i for i in range(5)}}
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, {"Wide": too_many})


def test_unknown_group_or_trait_is_400(v1: Any, store_id: str) -> None:
    """Writing a trait group or a trait the store does not define is 400, and nothing changes."""
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, {"Loyalty": {"points": 5}, "Nope": {"x": 1}})
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, {"Loyalty": {"points": 5, "karma": 1}})
    with rejected(400, 400):
        create(v1, store_id, contact(email="z@example.com", middleName="Q"))
    assert traits_of(v1, store_id, PROFILE_A) == SEEDED_A_TRAITS
    assert lookup(v1, store_id, "email", "z@example.com").profiles == []


WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("STRING", "code", 1234),
    ("STRING", "code", 12.5),
    ("STRING", "code", True),
    ("STRING", "code", ["abcd"]),
    ("STRING", "code", {"a": "bcd"}),
    ("NUMBER", "points", "10"),
    ("NUMBER", "points", True),
    ("NUMBER", "points", [1]),
    ("NUMBER", "points", {"n": 1}),
    ("BOOLEAN", "subscribed", "true"),
    ("BOOLEAN", "subscribed", 1),
    ("BOOLEAN", "subscribed", 0),
    ("BOOLEAN", "subscribed", [True]),
    ("BOOLEAN", "subscribed", {"b": True}),
    ("ARRAY", "tags", "vip"),
    ("ARRAY", "tags", 3),
    ("ARRAY", "tags", False),
    ("ARRAY", "tags", {"a": 1}),
]


def test_wrong_data_type_is_400(v1: Any, store_id: str) -> None:
    """A value of the wrong JSON type for a STRING/NUMBER/BOOLEAN/ARRAY trait is 400."""
    for data_type, trait, value in WRONG_TYPES:
        with rejected(400, 400):
            patch(v1, store_id, PROFILE_A, {"Loyalty": {trait: value}})
            pytest.fail(f"{data_type} trait {trait} accepted {value!r}")
    assert traits_of(v1, store_id, PROFILE_A) == SEEDED_A_TRAITS


RULE_VIOLATIONS: list[tuple[str, str, Any]] = [
    ("pattern", "tier", "platinum"),
    ("pattern", "tier", "Gold"),
    ("pattern", "tier", "gold "),
    ("min", "points", -1),
    ("min", "points", -0.5),
    ("max", "points", 1000000.5),
    ("max", "points", 10**7),
    ("minLength", "code", "ab"),
    ("minLength", "code", ""),
    ("maxLength", "code", "abcdefghi"),
    ("minItems", "tags", []),
    ("maxItems", "tags", ["a", "b", "c", "d"]),
    ("nested array", "tags", [["a"]]),
    ("nested array", "tags", ["a", ["b", "c"]]),
    ("array item type", "tags", [{"a": 1}]),
    ("array item type", "tags", [None]),
]


def test_validation_rule_violation_is_400(v1: Any, store_id: str) -> None:
    """Values breaking pattern, min/max, min/maxLength, min/maxItems, or nesting arrays: 400."""
    for rule, trait, value in RULE_VIOLATIONS:
        with rejected(400, 400):
            patch(v1, store_id, PROFILE_A, {"Loyalty": {trait: value}})
            pytest.fail(f"{rule}: {trait} accepted {value!r}")
    assert traits_of(v1, store_id, PROFILE_A) == SEEDED_A_TRAITS


def test_validation_rule_boundaries_are_accepted(v1: Any, store_id: str) -> None:
    """Values on the edge of each validation rule are accepted and stored as sent."""
    accepted: list[tuple[str, Any]] = [
        ("tier", "bronze"),
        ("points", 0),
        ("points", 1000000),
        ("points", 12.5),
        ("code", "abc"),
        ("code", "abcdefgh"),
        ("tags", ["a"]),
        ("tags", ["a", 2, True]),
        ("subscribed", False),
    ]
    for trait, value in accepted:
        assert patch(v1, store_id, PROFILE_A, {"Loyalty": {trait: value}}).status_code == 202
        assert traits_of(v1, store_id, PROFILE_A)["Loyalty"][trait] == value, (trait, value)


def test_string_values_hold_at_most_1024_characters(v1: Any, store_id: str) -> None:
    """A trait string of 1024 characters is stored; 1025 is 400."""
    assert patch(v1, store_id, PROFILE_A, contact(lastName="x" * 1024)).status_code == 202
    with rejected(400, 400):
        patch(v1, store_id, PROFILE_A, contact(lastName="y" * 1025))
    assert traits_of(v1, store_id, PROFILE_A)["Contact"]["lastName"] == "x" * 1024


def test_extra_top_level_property_is_400(http: httpx.Client, store_id: str) -> None:
    """A body with a property its schema does not define is 400 on every endpoint that has one."""
    dp = f"/v1/Stores/{store_id}/Profiles"
    cp = f"/v1/ControlPlane/Stores/{store_id}"
    email = contact(email="e@example.com")
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", dp, {"traits": email, "id": "x"}),
        ("PATCH", f"{dp}/{PROFILE_A}", {"traits": {"Loyalty": {"points": 1}}, "extra": 1}),
        ("PUT", f"{dp}/Bulk", {"profiles": [{"traits": email}], "extra": True}),
        ("PUT", f"{dp}/Bulk", {"profiles": [{"traits": email, "id": "x"}]}),
        ("POST", f"{dp}/Lookup", {"idType": "email", "value": "a@example.com", "x": 1}),
        ("POST", f"{cp}/TraitGroups", {"displayName": "X", "traits": {}, "version": 1}),
        ("PATCH", f"{cp}/TraitGroups/Loyalty", {"displayName": "Renamed"}),
        ("PATCH", f"{cp}/TraitGroups/Loyalty", {"traits": {"t": {"dataType": "STRING", "x": 1}}}),
        ("POST", "/v1/ControlPlane/Stores", {"displayName": "extra-store", "status": "ACTIVE"}),
    ]
    for method, path, body in cases:
        assert_api_error(raw(http, method, path, body), 400, 400, f"{method} {path} {body}")
    assert http.get(dp).json()["profiles"] == [
        PROFILE_C,
        PROFILE_B,
        PROFILE_A,
    ]


def test_body_that_is_not_a_json_object_is_400(http: httpx.Client, store_id: str) -> None:
    """Malformed JSON, or JSON that is not an object, is 400 on every write that takes a body."""
    dp = f"/v1/Stores/{store_id}/Profiles"
    cp = f"/v1/ControlPlane/Stores/{store_id}"
    not_objects = [b"{not json", b"traits=1", b"[]", b'"text"', b"false", b"0"]
    cases = [
        (method, path, content)
        for method, path in [
            ("POST", dp),
            ("PATCH", f"{dp}/{PROFILE_A}"),
            ("PUT", f"{dp}/Bulk"),
            ("POST", f"{dp}/Lookup"),
            ("POST", f"{cp}/TraitGroups"),
            ("PUT", f"{cp}/IdentityResolutionSettings"),
            ("POST", "/v1/ControlPlane/Stores"),
        ]
        for content in [b"", *not_objects]  # these bodies are required
    ] + [
        (method, path, content)
        for method, path in [("PATCH", f"{cp}/TraitGroups/Loyalty"), ("PATCH", cp)]
        for content in not_objects  # these bodies are optional: no empty-body case
    ]
    accepted = []
    for method, path, content in cases:
        response = raw(http, method, path, content=content)
        if response.status_code != 400:
            accepted.append(f"{method} {path} {content!r} -> {response.status_code}")
            continue
        assert_api_error(response, 400, 400, f"{method} {path} {content!r}")
    assert not accepted, "accepted:\n" + "\n".join(accepted)


def test_wrong_credentials_are_401(emulator: EmulatorServer, store_id: str) -> None:
    """A wrong password or an unknown username is 401/20003 on control and data plane."""
    username, password = emulator.auth
    for intruder_auth in [(username, password + "-wrong"), ("AC" + "1" * 32, password)]:
        intruder = Client(*intruder_auth)
        intruder.memory.base_url = emulator.url
        with rejected(401, 20003):
            intruder.memory.v1.stores(store_id).fetch()
        with rejected(401, 20003):
            intruder.memory.v1.profiles(store_id, PROFILE_A).fetch()
        with rejected(401, 20003):
            intruder.memory.v1.profiles(store_id).create(
                ProfileList.ProfileData({"traits": contact(email="intruder@example.com")})
            )
    assert sorted(connect(emulator).profiles(store_id).list()) == LIVE_SEEDED


def test_error_bodies_are_twilio_errors(
    http: httpx.Client, emulator: EmulatorServer, store_id: str
) -> None:
    """400, 401, 404, 409 and 412 bodies are exactly {code, message, more_info, status}."""
    cp = f"/v1/ControlPlane/Stores/{store_id}"
    assert_api_error(raw(http, "GET", "/v1/ControlPlane/Stores/mem_store_bad"), 400, 400)
    assert_api_error(raw(http, "GET", cp, auth=("nobody", "nothing")), 401, 20003)
    with httpx.Client(base_url=emulator.url, timeout=10) as anonymous:
        assert_api_error(anonymous.get(cp), 401, 20003)
    assert_api_error(raw(http, "GET", f"/v1/ControlPlane/Stores/{UNKNOWN_STORE}"), 404, 20404)
    assert_api_error(raw(http, "DELETE", f"{cp}/TraitGroups/Contact"), 409, 20409)
    stale = raw(
        http,
        "PATCH",
        f"{cp}/TraitGroups/Loyalty",
        {"description": "x"},
        headers={"If-Match": '"c3RhbGU"'},
    )
    assert_api_error(stale, 412, 20412)


def test_throttled_request_is_429_with_retry_after() -> None:
    """Past the account's rate the emulator answers 429/20429 with a whole-seconds Retry-After."""
    with (
        EmulatorServer(EmulatorConfig(rate=0.001, burst=1)) as throttled,
        httpx.Client(base_url=throttled.url, auth=throttled.auth, timeout=10) as http,
    ):
        assert http.get("/v1/ControlPlane/Stores").status_code == 200
        response = http.get("/v1/ControlPlane/Stores")
        assert_api_error(response, 429, 20429)
        retry_after = response.headers.get("Retry-After")
        assert retry_after is not None
        assert re.fullmatch(r"[0-9]+", retry_after)
        assert int(retry_after) >= 1
        with rejected(429, 20429):
            connect(throttled).operations(UNKNOWN_OPERATION).fetch()


# ------------------------------------------------------------- model bodies with null fields


def test_model_bodies_with_null_fields_are_accepted_by_trait_groups(
    v1: Any, http: httpx.Client, store_id: str
) -> None:
    """Model ``to_dict()`` output, nulls and all, creates and patches trait groups correctly."""
    cp = f"/v1/ControlPlane/Stores/{store_id}/TraitGroups"
    definitions = {
        "note": {"dataType": "STRING"},
        "score": {"dataType": "NUMBER", "validationRule": {"ruleType": "NUMBER", "min": 0}},
    }
    body = group_request("Nulls", definitions).to_dict()
    assert body["description"] is None
    assert body["traits"]["score"]["validationRule"]["maxLength"] is None
    assert raw(http, "POST", cp, body).status_code == 202
    assert v1.trait_groups(store_id, "Nulls").fetch().trait_group == {
        "displayName": "Nulls",
        "traits": definitions,
        "version": 1,
    }
    patch_body = TraitGroupList.PatchTraitGroupRequest(
        {"traits": {"nickname": {"dataType": "STRING"}}}
    ).to_dict()
    assert patch_body["description"] is None
    assert raw(http, "PATCH", f"{cp}/Loyalty", patch_body).status_code == 202
    group = v1.trait_groups(store_id, "Loyalty").fetch().trait_group
    assert group["description"] == "Loyalty programme."
    assert group["traits"]["nickname"] == {"dataType": "STRING"}


def test_model_bodies_with_null_fields_are_accepted_by_stores_and_settings(
    v1: Any, http: httpx.Client, store_id: str
) -> None:
    """Store and identity-settings model bodies with null fields are accepted; null means unset."""
    cp = "/v1/ControlPlane/Stores"
    create_body = StoreList.ServiceRequest({"displayName": "null-store"}).to_dict()
    assert create_body == {"displayName": "null-store", "description": None}
    assert raw(http, "POST", cp, create_body).status_code == 202
    patch_body = StoreList.PatchStoreRequest({"description": "Patched."}).to_dict()
    assert raw(http, "PATCH", f"{cp}/{store_id}", patch_body).status_code == 202
    store = v1.stores(store_id).fetch()
    assert (store.display_name, store.description) == ("test-store", "Patched.")
    settings_body = identity_settings(["email"], {"idType": "email", "normalization": "email"})
    as_json = settings_body.to_dict()
    assert as_json["identifierConfigs"][0]["limit"] is None
    path = f"{cp}/{store_id}/IdentityResolutionSettings"
    assert raw(http, "PUT", path, as_json).status_code == 202
    assert v1.identity_resolution_settings(store_id).fetch().identifier_configs == [
        {"idType": "email", **IRS_DEFAULTS, "normalization": "email"}
    ]
