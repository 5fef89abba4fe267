"""The emulator over real HTTP: auth, errors, ETags, operations, redirects, 429s, lists, stats."""

from __future__ import annotations

import base64
import re
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
B = "mem_profile_01jtest000000000000000000b"
C = "mem_profile_01jtest000000000000000000c"
D = "mem_profile_01jtest000000000000000000d"  # merged into A by the seed
CP = f"/v1/ControlPlane/Stores/{STORE}"
DP = f"/v1/Stores/{STORE}/Profiles"
ERROR_KEYS = {"code", "message", "more_info", "status"}
ETAG = re.compile(r'^"[A-Za-z0-9_-]+"$')
OPERATION_ID = re.compile(r"^mem_operation_[0-7][0-9a-z]{25}$")
PROFILE_ID = re.compile(r"^mem_profile_[0-7][0-9a-z]{25}$")


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    """An authenticated client on a fresh seeded emulator (conftest's ``emulator``)."""
    with httpx.Client(base_url=emulator.url, auth=emulator.auth, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def shared() -> Iterator[EmulatorServer]:
    """One seeded emulator for the tests that change nothing (starting one costs ~0.2 s)."""
    with EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7)) as server:
        yield server


@pytest.fixture(scope="module")
def ro(shared: EmulatorServer) -> Iterator[httpx.Client]:
    """An authenticated client on ``shared``; tests using it must leave the state as found."""
    with httpx.Client(base_url=shared.url, auth=shared.auth, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def control() -> Iterator[httpx.Client]:
    """A client on one emulator for the ETag tests, which only compare before with after."""
    with (
        EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7)) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as client,
    ):
        yield client


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """Assert the exact TwilioError shape and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code
    assert body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/api/errors/{code}"
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def profile(api: httpx.Client, profile_id: str) -> dict[str, Any]:
    response = api.get(f"{DP}/{profile_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def create_profile(api: httpx.Client, contact: dict[str, Any]) -> str:
    response = api.post(DP, json={"traits": {"Contact": contact}})
    assert response.status_code == 202, response.text
    profile_id: str = response.json()["id"]
    assert PROFILE_ID.match(profile_id)
    return profile_id


# ----------------------------------------------------------------------------------- auth


def test_missing_credentials_are_401_with_challenge(shared: EmulatorServer) -> None:
    """A request without Authorization gets 401, code 20003 and a Basic challenge."""
    response = httpx.get(shared.url + CP)
    assert_error(response, 401, 20003)
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_wrong_password_is_401(shared: EmulatorServer) -> None:
    """The right account SID with the wrong secret is refused with 401/20003."""
    response = httpx.get(shared.url + CP, auth=(shared.auth[0], "not-the-secret"))
    assert_error(response, 401, 20003)
    assert response.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic =",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"AC00000000000000000000000000000000").decode(),
        "Bearer " + base64.b64encode(b"AC00000000000000000000000000000000:emulator").decode(),
        "AC00000000000000000000000000000000:emulator",
        basic("AC00000000000000000000000000000000", ""),
        basic("", "emulator"),
        basic("AC00000000000000000000000000000000", "emulator:extra"),
    ],
)
def test_malformed_authorization_is_401(shared: EmulatorServer, header: str) -> None:
    """Malformed or partial Authorization headers are 401/20003, never a crash or a pass."""
    response = httpx.get(shared.url + CP, headers={"Authorization": header})
    assert_error(response, 401, 20003)
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_right_pair_is_200_on_both_planes(shared: EmulatorServer) -> None:
    """The default pair opens both the control plane and the data plane."""
    auth = ("AC00000000000000000000000000000000", "emulator")
    assert shared.auth == auth
    assert httpx.get(shared.url + CP, auth=auth).status_code == 200
    assert httpx.get(shared.url + DP, auth=auth).status_code == 200


def test_auth_scheme_is_case_insensitive(shared: EmulatorServer) -> None:
    """RFC 7617: the scheme name is case-insensitive, so `basic <token>` is accepted."""
    header = basic(*shared.auth).replace("Basic", "basic", 1)
    response = httpx.get(shared.url + CP, headers={"Authorization": header})
    assert response.status_code == 200, response.text


def test_custom_credentials_replace_the_default_pair() -> None:
    """With username/password set (the CLI's --auth), only that pair is accepted."""
    config = EmulatorConfig(seed=SEED, username="SKcustom", password="s3cret")
    with EmulatorServer(config) as emu:
        assert emu.auth == ("SKcustom", "s3cret")
        assert httpx.get(emu.url + CP, auth=("SKcustom", "s3cret")).status_code == 200
        default = httpx.get(emu.url + CP, auth=("AC00000000000000000000000000000000", "emulator"))
        assert_error(default, 401, 20003)
        assert_error(httpx.get(emu.url + CP, auth=("SKcustom", "emulator")), 401, 20003)


# --------------------------------------------------------------------------- error shapes


def test_unknown_route_under_v1_is_json_404(ro: httpx.Client) -> None:
    """An unknown /v1 path answers 404 with the API's error body, code 20404."""
    assert_error(ro.get("/v1/NoSuchThing"), 404, 20404)
    assert_error(ro.get(f"/v1/Stores/{STORE}/Nope"), 404, 20404)


def test_wrong_method_is_json_405(ro: httpx.Client) -> None:
    """A known path with a method it lacks answers 405 in the API's error shape."""
    assert_error(ro.delete(CP), 405, 405)
    assert_error(ro.put(DP, json={}), 405, 405)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/ControlPlane/Stores/not-a-store", None, 400, 400),
        ("GET", "/v1/ControlPlane/Stores/mem_store_01jzzzz0000000000000000000", None, 404, 20404),
        ("GET", f"{DP}/not-a-profile", None, 400, 400),
        ("GET", f"{DP}/mem_profile_01jzzzz0000000000000000000", None, 404, 20404),
        ("PATCH", f"{DP}/{A}", {"traits": {"Nope": {"x": 1}}}, 400, 400),
        ("PATCH", f"{DP}/{A}", {"traits": {"Loyalty": {"points": -1}}}, 400, 400),
        ("POST", f"{DP}/Lookup", {"idType": "phone", "value": "12"}, 400, 21614),
        ("DELETE", f"{CP}/TraitGroups/Contact", None, 409, 20409),
        ("GET", "/v1/ControlPlane/Operations/nope", None, 404, 20404),
    ],
)
def test_every_error_body_has_exactly_the_twilio_keys(
    ro: httpx.Client, method: str, path: str, body: Any, status: int, code: int
) -> None:
    """Error bodies are exactly {code, message, more_info, status} with the documented code."""
    assert_error(ro.request(method, path, json=body), status, code)


# ---------------------------------------------------------------------- ETags / If-Match

ETAG_CASES = [
    pytest.param(CP, "PATCH", CP, {"description": "changed"}, id="store"),
    pytest.param(
        f"{CP}/IdentityResolutionSettings",
        "PUT",
        f"{CP}/IdentityResolutionSettings",
        None,  # the current settings, read back
        id="identity",
    ),
    pytest.param(
        f"{CP}/TraitGroups/Loyalty",
        "PATCH",
        f"{CP}/TraitGroups/Loyalty",
        {"description": "changed"},
        id="traitGroup",
    ),
]


def _version(body: dict[str, Any]) -> int:
    version: int = body["traitGroup"]["version"] if "traitGroup" in body else body["version"]
    return version


def _write_body(api: httpx.Client, fetch: str, body: dict[str, Any] | None) -> dict[str, Any]:
    if body is not None:
        return body
    current = api.get(fetch).json()
    return {k: current[k] for k in ("identifierConfigs", "matchingRules")}


@pytest.mark.parametrize(("fetch", "method", "write", "body"), ETAG_CASES)
def test_etag_is_quoted_and_changes_with_each_write(
    control: httpx.Client, fetch: str, method: str, write: str, body: dict[str, Any] | None
) -> None:
    """GET carries a quoted ETag; a write bumps the version and the ETag."""
    first = control.get(fetch)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert ETAG.match(tag), tag
    assert control.get(fetch).headers["etag"] == tag  # stable while unchanged
    response = control.request(method, write, json=_write_body(control, fetch, body))
    assert response.status_code == 202, response.text
    second = control.get(fetch)
    assert second.headers["etag"] != tag
    assert ETAG.match(second.headers["etag"])
    assert _version(second.json()) == _version(first.json()) + 1


@pytest.mark.parametrize(("fetch", "method", "write", "body"), ETAG_CASES)
def test_stale_if_match_is_412_and_changes_nothing(
    control: httpx.Client, fetch: str, method: str, write: str, body: dict[str, Any] | None
) -> None:
    """If-Match with an ETag from before the last write is 412/20412 and leaves the version."""
    stale = control.get(fetch).headers["etag"]
    payload = _write_body(control, fetch, body)
    assert control.request(method, write, json=payload).status_code == 202
    before = control.get(fetch)
    for header in (stale, stale.strip('"'), f'"nope", {stale}'):
        response = control.request(method, write, json=payload, headers={"If-Match": header})
        assert_error(response, 412, 20412)
    after = control.get(fetch)
    assert after.headers["etag"] == before.headers["etag"]
    assert after.json() == before.json()


@pytest.mark.parametrize(("fetch", "method", "write", "body"), ETAG_CASES)
def test_current_if_match_is_202(
    control: httpx.Client, fetch: str, method: str, write: str, body: dict[str, Any] | None
) -> None:
    """If-Match with the current ETag (quoted, bare, in a list) or `*` is accepted: 202."""
    payload = _write_body(control, fetch, body)
    for form in ("quoted", "bare", "star", "list"):
        tag = control.get(fetch).headers["etag"]
        header = {
            "quoted": tag,
            "bare": tag.strip('"'),
            "star": "*",
            "list": f'"someOtherTag", {tag}',
        }[form]
        response = control.request(method, write, json=payload, headers={"If-Match": header})
        assert response.status_code == 202, (form, response.text)
        assert control.get(fetch).headers["etag"] != tag, form


# ---------------------------------------------------------------- control-plane operations

# (label, method, path, body, the operation's result id; None = a new store's ID), in order.
OPERATION_CASES: list[tuple[str, str, str, dict[str, Any] | None, str | None]] = [
    ("create store", "POST", "/v1/ControlPlane/Stores", {"displayName": "second-store"}, None),
    ("patch store", "PATCH", CP, {"description": "changed"}, STORE),
    (
        "put identity",
        "PUT",
        f"{CP}/IdentityResolutionSettings",
        {
            "identifierConfigs": [{"idType": "email", "normalization": "email"}],
            "matchingRules": ["email"],
        },
        STORE,
    ),
    (
        "create group",
        "POST",
        f"{CP}/TraitGroups",
        {"displayName": "Extra", "traits": {"color": {"dataType": "STRING"}}},
        "Extra",
    ),
    ("patch group", "PATCH", f"{CP}/TraitGroups/Loyalty", {"description": "x"}, "Loyalty"),
    ("delete group", "DELETE", f"{CP}/TraitGroups/Loyalty", None, "Loyalty"),
]


def test_control_plane_202s_point_at_completed_operations(
    emulator: EmulatorServer, api: httpx.Client
) -> None:
    """Each control-plane 202 has Operation-Id, an absolute Location, Retry-After "0"."""
    for label, method, path, body, resource in OPERATION_CASES:
        response = api.request(method, path, json=body)
        assert response.status_code == 202, (label, response.text)
        op_id = response.headers["operation-id"]
        assert OPERATION_ID.match(op_id), (label, op_id)
        location = response.headers["location"]
        assert location == f"{emulator.url}/v1/ControlPlane/Operations/{op_id}", label
        assert response.headers["retry-after"] == "0", label
        reply = response.json()
        assert set(reply) == {"message", "statusUrl"}, label
        assert reply["statusUrl"] == location, label
        status = httpx.get(location, auth=emulator.auth)
        assert status.status_code == 200, (label, status.text)
        assert status.headers["operation-id"] == op_id, label
        assert status.headers["retry-after"] == "0", label
        op = status.json()
        assert op["operationId"] == op_id, label
        assert op["status"] == "COMPLETED", label
        assert op["statusUrl"] == location, label
        assert op["result"]["type"] == "RESOURCE_ID", label
        if resource is None:  # a new store: the result names it and it can be fetched
            new_store = op["result"]["id"]
            assert new_store != STORE
            assert api.get(f"/v1/ControlPlane/Stores/{new_store}").status_code == 200
        else:
            assert op["result"]["id"] == resource, label


def test_operation_status_needs_auth(api: httpx.Client, emulator: EmulatorServer) -> None:
    """The operation status URL is under /v1 and refuses anonymous reads."""
    location = api.patch(CP, json={"description": "x"}).headers["location"]
    assert_error(httpx.get(location), 401, 20003)


# ----------------------------------------------------------------- merged-profile redirects

REDIRECT_CASES = [
    pytest.param("PATCH", "", {"traits": {"Contact": {"lastName": "Lovelace"}}}, 308, id="patch"),
    pytest.param("DELETE", "", None, 308, id="delete"),
    pytest.param(
        "POST", "/Identifiers", {"idType": "email", "value": "new@example.com"}, 308, id="id+"
    ),
    pytest.param(
        "PATCH",
        "/Identifiers/email",
        {"idType": "email", "oldValue": "ada@example.com", "newValue": "n@example.com"},
        308,
        id="id~",
    ),
    pytest.param("DELETE", "/Identifiers/email", None, 308, id="id-"),
    pytest.param("GET", "", None, 301, id="get"),
    pytest.param("GET", "/Traits", None, 301, id="traits"),
    pytest.param("GET", "/Identifiers", None, 301, id="identifiers"),
    pytest.param("GET", "/Identifiers/email", None, 301, id="identifier"),
]


@pytest.mark.parametrize(("method", "suffix", "body", "status"), REDIRECT_CASES)
def test_merged_profile_redirects_to_canonical(
    shared: EmulatorServer,
    ro: httpx.Client,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    """A merged-away profile answers 308 to writes, 301 to reads, naming the canonical one."""
    before_a = profile(ro, A)
    before_ids = ro.get(f"{DP}/{A}/Identifiers").json()
    response = ro.request(method, f"{DP}/{D}{suffix}", json=body)
    assert response.status_code == status, response.text
    location = f"{shared.url}{DP}/{A}{suffix}"
    assert response.headers["location"] == location
    assert response.headers["canonical-profile-id"] == A
    assert response.json() == {"message": "This resource has moved.", "uri": location}
    # The redirect itself changed nothing on either profile.
    assert profile(ro, A) == before_a
    assert ro.get(f"{DP}/{A}/Identifiers").json() == before_ids
    assert ro.get(f"{DP}/{D}").status_code == 301


def test_resending_a_308_patch_to_location_lands_on_canonical(api: httpx.Client) -> None:
    """A client that re-sends the PATCH to Location gets 202 and the trait lands on A."""
    patch = {"traits": {"Contact": {"lastName": "Lovelace"}}}
    redirect = api.patch(f"{DP}/{D}", json=patch)
    assert redirect.status_code == 308
    again = api.patch(redirect.headers["location"], json=patch)
    assert again.status_code == 202, again.text
    assert profile(api, A)["traits"]["Contact"]["lastName"] == "Lovelace"
    assert profile(api, A)["traits"]["Contact"]["firstName"] == "Ada"


WORK_EMAIL_GROUP = {
    "displayName": "Work",
    "traits": {"workEmail": {"dataType": "STRING", "idTypePromotion": "email"}},
}


@pytest.mark.parametrize(
    "resolving_traits",
    [
        # The email names the new profile, the phone names A.
        pytest.param(
            {"Contact": {"email": "XU@example.com", "phone": "+1 317 555 0001"}}, id="phone"
        ),
        # Two traits promoted to email name both profiles: one matching rule, two matches.
        pytest.param(
            {"Contact": {"email": "xu@example.com"}, "Work": {"workEmail": "ADA@example.com"}},
            id="two-emails",
        ),
    ],
)
def test_live_merge_makes_the_later_profile_redirect(
    emulator: EmulatorServer, api: httpx.Client, resolving_traits: dict[str, Any]
) -> None:
    """POST /Profiles whose identifiers name two profiles merges them; the later redirects."""
    assert api.post(f"{CP}/TraitGroups", json=WORK_EMAIL_GROUP).status_code == 202
    later = create_profile(api, {"firstName": "Xu", "email": "xu@example.com"})
    assert later != A
    assert api.get(f"{DP}/{later}").status_code == 200
    merged = api.post(DP, json={"traits": resolving_traits})
    assert merged.status_code == 202, merged.text
    assert merged.json()["id"] == A  # the canonical profile is the earliest one
    response = api.get(f"{DP}/{later}")
    assert response.status_code == 301
    assert response.headers["canonical-profile-id"] == A
    assert response.headers["location"] == f"{emulator.url}{DP}/{A}"
    assert response.json() == {
        "message": "This resource has moved.",
        "uri": f"{emulator.url}{DP}/{A}",
    }
    patch = api.patch(f"{DP}/{later}", json={"traits": {"Contact": {"lastName": "Q"}}})
    assert patch.status_code == 308
    assert patch.headers["location"] == f"{emulator.url}{DP}/{A}"
    traits = profile(api, A)["traits"]["Contact"]
    assert traits["firstName"] == "Xu"  # per trait, the later write wins
    for id_type, value in (
        ("email", "xu@example.com"),
        ("email", "ada@example.com"),
        ("phone", "3175550001"),
    ):
        lookup = api.post(f"{DP}/Lookup", json={"idType": id_type, "value": value})
        assert lookup.json()["profiles"] == [A], value
    emails = api.get(f"{DP}/{A}/Identifiers/email").json()["values"]
    # d's email came to a when the seed merged d into a
    assert sorted(emails) == ["ada@example.com", "di.old@example.com", "xu@example.com"]
    listed = api.get(DP, params={"pageSize": 100}).json()["profiles"]
    assert later not in listed
    assert A in listed


# --------------------------------------------------------------------------------- 429


def test_429_retry_after_and_refill() -> None:
    """Over the bucket: 429/20429 with whole-second Retry-After; after waiting it, 200 again."""
    with (
        EmulatorServer(EmulatorConfig(seed=SEED, rate=5, burst=1)) as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api,
    ):
        httpx.delete(emu.url + "/__emulator__/stats")
        assert api.get(CP).status_code == 200
        limited = api.get(CP)
        assert_error(limited, 429, 20429)
        retry_after = limited.headers["retry-after"]
        assert re.fullmatch(r"[0-9]+", retry_after), retry_after
        assert int(retry_after) == 1
        time.sleep(int(retry_after))
        assert api.get(CP).status_code == 200
        stats = emu.stats()
        assert stats["rateLimited"] == 1
        assert stats["byOperation"]["stores.fetch"] == {"200": 2, "429": 1}


def test_429_retry_after_rounds_up_to_whole_seconds() -> None:
    """At 0.5 requests/s the wait for the next token is 2 s, sent as "2"; 401 comes before 429."""
    with (
        EmulatorServer(EmulatorConfig(seed=SEED, rate=0.5, burst=1)) as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api,
    ):
        assert api.get(f"{DP}/{A}").status_code == 200
        limited = api.post(f"{DP}/Lookup", json={"idType": "email", "value": "ada@example.com"})
        assert_error(limited, 429, 20429)
        assert limited.headers["retry-after"] == "2"
        assert_error(httpx.get(emu.url + CP), 401, 20003)  # auth is checked before the bucket
        assert emu.stats()["rateLimited"] == 1


# ----------------------------------------------------------------------- lookup via HTTP


@pytest.mark.parametrize(
    "raw",
    [
        "+13175550001",
        "13175550001",
        "3175550001",
        "(317) 555-0001",
        "317-555-0001",
        "317.555.0001",
        "1-317-555-0001",
        "+1 (317) 555-0001",
        "  317 555 0001  ",
    ],
)
def test_lookup_normalizes_phone_formats(ro: httpx.Client, raw: str) -> None:
    """Every US format of Ada's number normalizes to E.164 and finds her."""
    response = ro.post(f"{DP}/Lookup", json={"idType": "phone", "value": raw})
    assert response.status_code == 200, response.text
    assert response.json() == {"normalizedValue": "+13175550001", "profiles": [A]}


@pytest.mark.parametrize("raw", ["ADA@EXAMPLE.COM", "  ada@example.com  ", "Ada @ Example.com"])
def test_lookup_normalizes_email_case_and_spaces(ro: httpx.Client, raw: str) -> None:
    """Email lookups lower-case and drop every space before matching."""
    response = ro.post(f"{DP}/Lookup", json={"idType": "email", "value": raw})
    assert response.status_code == 200, response.text
    assert response.json() == {"normalizedValue": "ada@example.com", "profiles": [A]}


def test_lookup_trim_and_non_us_and_no_match(ro: httpx.Client) -> None:
    """trim strips ends (shared value lists both owners, oldest first); no match is 200 []."""
    shared = ro.post(f"{DP}/Lookup", json={"idType": "user_id", "value": "  shared-7 "})
    assert shared.json() == {"normalizedValue": "shared-7", "profiles": [B, C]}
    for raw in ("+44 20 7946 0958", "44 20 7946 0958"):
        uk = ro.post(f"{DP}/Lookup", json={"idType": "phone", "value": raw})
        assert uk.json() == {"normalizedValue": "+442079460958", "profiles": []}


@pytest.mark.parametrize("raw", ["555-0001", "not a phone", "+1 317 555", "12345678901234567"])
def test_lookup_invalid_phone_is_21614(ro: httpx.Client, raw: str) -> None:
    """A value the phone normalization rejects is 400 with Twilio's code 21614."""
    response = ro.post(f"{DP}/Lookup", json={"idType": "phone", "value": raw})
    assert_error(response, 400, 21614)


def test_lookup_unconfigured_id_type_is_400(ro: httpx.Client) -> None:
    """An idType the store's identity settings lack is a plain 400."""
    response = ro.post(f"{DP}/Lookup", json={"idType": "fax", "value": "123"})
    assert_error(response, 400, 400)


# ------------------------------------------------------------------------- pagination


def _walk(api: httpx.Client, order: str, size: int) -> list[str]:
    seen: list[str] = []
    token: str | None = None
    for _ in range(50):
        params: dict[str, str | int] = {"pageSize": size, "orderBy": order}
        if token is not None:
            params["pageToken"] = token
        response = api.get(DP, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["meta"]["key"] == "profiles"
        assert page["meta"]["pageSize"] == len(page["profiles"])
        assert 1 <= len(page["profiles"]) <= size
        seen += page["profiles"]
        token = page["meta"].get("nextToken")
        if token is None:
            return seen
    raise AssertionError("pagination did not end")


def test_profile_pages_walk_every_live_profile_once(api: httpx.Client) -> None:
    """ASC and DESC token walks list each live profile exactly once; merged/deleted never."""
    created = [create_profile(api, {"email": f"p{i}@example.com"}) for i in range(7)]
    assert api.delete(f"{DP}/{created[3]}").status_code == 202
    assert api.delete(f"{DP}/{C}").status_code == 202
    live = sorted({A, B, *created} - {created[3]})
    ascending = _walk(api, "ASC", 2)
    assert ascending == live
    descending = _walk(api, "DESC", 3)
    assert descending == live[::-1]
    default = api.get(DP, params={"pageSize": 4}).json()["profiles"]
    assert default == live[::-1][:4]  # newest first by default
    assert D not in ascending
    assert C not in ascending


@pytest.mark.parametrize(
    "params",
    [
        {"pageSize": "0"},
        {"pageSize": "1001"},
        {"pageSize": "-1"},
        {"pageSize": "ten"},
        {"orderBy": "UP"},
        {"pageToken": "garbage!!"},
        {"pageToken": base64.urlsafe_b64encode(b'{"a": "nope"}').decode()},
        {"pageToken": "x" * 501},
    ],
)
def test_bad_list_parameters_are_400(ro: httpx.Client, params: dict[str, str]) -> None:
    """pageSize outside 1..1000, unknown orderBy and foreign pageTokens are 400."""
    assert_error(ro.get(DP, params=params), 400, 400)


def test_page_size_1000_is_accepted_but_pages_hold_at_most_100(api: httpx.Client) -> None:
    """pageSize 1000 is valid, yet a page holds at most 100 IDs and says where the rest are."""
    bulk = [{"traits": {"Contact": {"email": f"bulk{i}@example.com"}}} for i in range(105)]
    assert api.put(f"{DP}/Bulk", json={"profiles": bulk}).status_code == 202
    first = api.get(DP, params={"pageSize": 1000, "orderBy": "ASC"})
    assert first.status_code == 200
    page = first.json()
    assert len(page["profiles"]) == 100
    assert page["meta"]["pageSize"] == 100
    rest = api.get(DP, params={"pageSize": 1000, "orderBy": "ASC",
                              "pageToken": page["meta"]["nextToken"]}).json()  # fmt: skip
    assert len(rest["profiles"]) == 108 - 100
    assert "nextToken" not in rest["meta"]
    assert sorted(page["profiles"] + rest["profiles"]) == page["profiles"] + rest["profiles"]


# ------------------------------------------------------------------------------ stats


def test_stats_count_by_operation_and_status(emulator: EmulatorServer, api: httpx.Client) -> None:
    """/__emulator__/stats needs no auth, counts per ROUTES name and status; DELETE resets."""
    reset = httpx.delete(emulator.url + "/__emulator__/stats")
    assert reset.status_code == 200
    assert reset.json()["requests"] == 0
    assert api.get(CP).status_code == 200
    assert api.get(CP).status_code == 200
    assert (
        api.get("/v1/ControlPlane/Stores/mem_store_01jzzzz0000000000000000000").status_code == 404
    )
    assert httpx.get(emulator.url + CP).status_code == 401
    assert api.patch(f"{DP}/{A}", json={"traits": {"Loyalty": {"points": 5}}}).status_code == 202
    assert api.get(f"{DP}/{D}").status_code == 301
    assert api.get("/v1/Nothing").status_code == 404
    stats = httpx.get(emulator.url + "/__emulator__/stats")
    assert stats.status_code == 200
    data = stats.json()
    assert data["requests"] == 7
    assert data["byOperation"] == {
        "stores.fetch": {"200": 2, "401": 1, "404": 1},
        "profiles.patch": {"202": 1},
        "profiles.fetch": {"301": 1},
        "unknown": {"404": 1},
    }
    assert data["byStatus"] == {"200": 2, "202": 1, "301": 1, "401": 1, "404": 2}
    assert data["rateLimited"] == 0
    assert data["faults"] == {"500": 0, "503": 0, "drop": 0, "lostResponse": 0}
    assert emulator.stats()["requests"] == 7  # reading stats is not counted
    cleared = httpx.delete(emulator.url + "/__emulator__/stats").json()
    assert cleared["requests"] == 0
    assert cleared["byOperation"] == {}
    assert emulator.stats()["byStatus"] == {}
