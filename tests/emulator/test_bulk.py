"""Bulk upserts and CSV imports under the emulator's faults, write lag and body size cap.

``PUT /Profiles/Bulk`` and ``POST /Profiles/Imports`` pass the same gate as a PATCH, so each
fault is forced here (set to 1.0) on each of them and the state read back afterwards with the
fault switched off: a 500/503, a drop or a 429 wrote nothing, a lost response wrote everything.
The upload URL stands for a storage service, not the API: faults reach it, the account's rate
limit and the body cap do not (app.py's docstring says why). Faults are swapped on a running
emulator (``set_faults``) so one server serves a whole test.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator.faults import FaultPlan
from backfill.errors import ConfigError

SEED = Path(__file__).parents[1] / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
A = "mem_profile_01jtest000000000000000000a"
LIVE_SEEDED = 3
DP = f"/v1/Stores/{STORE}/Profiles"
BULK = f"{DP}/Bulk"
IMPORTS = f"{DP}/Imports"
ERROR_KEYS = {"code", "message", "more_info", "status"}
SEEDED_A = {
    "Contact": {"firstName": "Ada", "email": "ada@example.com", "phone": "+13175550001"},
    "Loyalty": {"points": 10, "tier": "gold"},
}
MAPPINGS = [
    {"columnName": "email", "traitGroup": "Contact", "traitName": "email"},
    {"columnName": "last", "traitGroup": "Contact", "traitName": "lastName"},
]
CSV = b"email,last\nADA@example.com,Lovelace\nnew@example.com,Nu\n"


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def serve(**switches: Any) -> EmulatorServer:
    return EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7, **switches))


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, auth=emulator.auth, timeout=10) as client:
        yield client


def set_faults(server: EmulatorServer, **switches: Any) -> None:
    """Replace the running emulator's fault plan (and token bucket); no switches: none."""
    server.emulator.faults = FaultPlan(EmulatorConfig(random_seed=11, **switches))


def bulk_body(*emails: str, last: str = "Bulk") -> dict[str, Any]:
    """One profile per email, each with a lastName; ADA@example.com updates the seeded A."""
    return {"profiles": [{"traits": {"Contact": {"email": e, "lastName": last}}} for e in emails]}


def import_body(size: int = len(CSV)) -> dict[str, Any]:
    return {"filename": "x.csv", "fileSize": size, "columnMappings": MAPPINGS}


def owners(api: httpx.Client, email: str) -> list[str]:
    found = api.post(f"{DP}/Lookup", json={"idType": "email", "value": email})
    assert found.status_code == 200, found.text
    ids: list[str] = found.json()["profiles"]
    return ids


def traits(api: httpx.Client, profile_id: str) -> dict[str, Any]:
    response = api.get(f"{DP}/{profile_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["traits"]
    return found


def live_count(api: httpx.Client) -> int:
    return len(api.get(DP, params={"pageSize": 100}).json()["profiles"])


def import_ids(api: httpx.Client) -> list[str]:
    ids: list[str] = api.get(IMPORTS).json()["imports"]
    return ids


def assert_error(response: httpx.Response, status: int, code: int) -> str:
    """The exact TwilioError shape; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert (body["status"], body["code"]) == (status, code)
    assert body["more_info"] == f"https://www.twilio.com/docs/api/errors/{code}"
    message: str = body["message"]
    return message


def assert_untouched(api: httpx.Client, *emails: str) -> None:
    """No bulk profile was written: A as seeded, no new email known, no new profile."""
    assert traits(api, A) == SEEDED_A
    for email in emails:
        assert owners(api, email) == [], email
    assert live_count(api) == LIVE_SEEDED


def settle(api: httpx.Client, import_id: str) -> dict[str, Any]:
    """Poll until the import leaves PENDING/PROCESSING (bounded by a count, not a time)."""
    for _ in range(500):
        body: dict[str, Any] = api.get(f"{IMPORTS}/{import_id}").json()
        if body["status"] in ("COMPLETED", "FAILED"):
            return body
        time.sleep(0.01)
    raise AssertionError(f"import {import_id} never finished")


# ------------------------------------------------------------------------- 500 and 503


def test_faulted_bulk_and_import_registration_write_nothing(
    emulator: EmulatorServer, api: httpx.Client
) -> None:
    """fault_rate=1: every bulk PUT and import POST is 500/20500 or 503/20503; none applied."""
    set_faults(emulator, fault_rate=1.0)
    seen: list[int] = []
    for i in range(8):
        bulk = api.put(BULK, json=bulk_body("ADA@example.com", f"f{i}@example.com"))
        made = api.post(IMPORTS, json=import_body())
        for response in (bulk, made):
            status = response.status_code
            assert status in (500, 503), response.text
            assert_error(response, status, {500: 20500, 503: 20503}[status])
            seen.append(status)
    assert set(seen) == {500, 503}
    stats = emulator.stats()["byOperation"]
    assert sum(stats["profiles.bulk"].values()) == sum(stats["imports.create"].values()) == 8
    assert set(stats["profiles.bulk"]) <= {"500", "503"}
    set_faults(emulator)
    assert_untouched(api, *(f"f{i}@example.com" for i in range(8)))
    assert import_ids(api) == []


def test_faulted_upload_leaves_the_import_pending(
    emulator: EmulatorServer, api: httpx.Client
) -> None:
    """A 500/503 on the upload URL applies nothing: the import waits, the same URL works."""
    created = api.post(IMPORTS, json=import_body()).json()
    set_faults(emulator, fault_rate=1.0)
    assert httpx.put(created["url"], content=CSV).status_code in (500, 503)
    set_faults(emulator)
    assert api.get(f"{IMPORTS}/{created['importId']}").json()["status"] == "PENDING"
    assert owners(api, "new@example.com") == []
    assert httpx.put(created["url"], content=CSV).status_code == 200
    assert settle(api, created["importId"])["status"] == "COMPLETED"


# -------------------------------------------------------------------------------- drops


def test_dropped_bulk_and_import_registration_write_nothing(
    emulator: EmulatorServer, api: httpx.Client
) -> None:
    """drop_rate=1: the connection closes with no answer, a 1,000-profile body included."""
    set_faults(emulator, drop_rate=1.0)
    big = bulk_body(*(f"d{i}@example.com" for i in range(1000)))
    for body in (bulk_body("ADA@example.com", "d@example.com"), big):
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            api.put(BULK, json=body)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        api.post(IMPORTS, json=import_body())
    assert emulator.stats()["byOperation"]["profiles.bulk"] == {"dropped": 2}
    assert emulator.stats()["byOperation"]["imports.create"] == {"dropped": 1}
    set_faults(emulator)
    assert_untouched(api, "d@example.com", "d0@example.com", "d999@example.com")
    assert import_ids(api) == []


def test_dropped_upload_leaves_the_import_pending(
    emulator: EmulatorServer, api: httpx.Client
) -> None:
    created = api.post(IMPORTS, json=import_body()).json()
    set_faults(emulator, drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.put(created["url"], content=CSV)
    set_faults(emulator)
    assert api.get(f"{IMPORTS}/{created['importId']}").json()["status"] == "PENDING"
    assert httpx.put(created["url"], content=CSV).status_code == 200
    assert emulator.stats()["byOperation"]["imports.upload"] == {"dropped": 1, "200": 1}


# ------------------------------------------------------------------------ lost responses


def test_lost_bulk_response_was_applied_and_resending_is_harmless(
    emulator: EmulatorServer, api: httpx.Client
) -> None:
    """lost_response_rate=1: the batch lands though no answer came; the re-send merges into
    the same profiles (one per email, nothing doubled), as the client's re-send assumes."""
    set_faults(emulator, lost_response_rate=1.0)
    body = bulk_body("ADA@example.com", "lost1@example.com", "lost2@example.com", last="Lost")
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            api.put(BULK, json=body)
    assert emulator.stats()["byOperation"]["profiles.bulk"] == {"lost": 2}
    set_faults(emulator)
    assert traits(api, A)["Contact"]["lastName"] == "Lost"
    for email in ("lost1@example.com", "lost2@example.com"):
        (only,) = owners(api, email)
        assert traits(api, only) == {"Contact": {"email": email, "lastName": "Lost"}}
    assert live_count(api) == LIVE_SEEDED + 2


def test_lost_import_registration_was_kept(emulator: EmulatorServer, api: httpx.Client) -> None:
    """A registration whose 201 was lost exists; registering again is a second import (a POST
    that creates is not idempotent), each with its own working upload URL."""
    set_faults(emulator, lost_response_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(IMPORTS, json=import_body())
    set_faults(emulator)
    (lost,) = import_ids(api)
    again = api.post(IMPORTS, json=import_body()).json()
    assert import_ids(api) == [again["importId"], lost]
    assert httpx.put(again["url"], content=CSV).status_code == 200
    assert settle(api, again["importId"])["status"] == "COMPLETED"
    assert api.get(f"{IMPORTS}/{lost}").json()["status"] == "PENDING"


# ------------------------------------------------------------------------------ latency


def test_latency_delays_bulk_imports_and_the_upload_url(emulator: EmulatorServer) -> None:
    """latency_ms reaches every bulk PUT, import POST/GET and upload (the server's own count),
    and each waited at least what the server drew for it."""
    with httpx.Client(base_url=emulator.url, auth=emulator.auth, timeout=10) as api:
        created = api.post(IMPORTS, json=import_body()).json()
        set_faults(emulator, latency_ms=40)
        httpx.delete(emulator.url + "/__emulator__/stats")
        start = time.perf_counter()
        for i in range(3):
            assert api.put(BULK, json=bulk_body(f"l{i}@example.com")).status_code == 202
            assert api.post(IMPORTS, json=import_body()).status_code == 201
        assert httpx.put(created["url"], content=CSV).status_code == 200
        assert api.get(f"{IMPORTS}/{created['importId']}").status_code == 200
        elapsed = time.perf_counter() - start
    latency = emulator.stats()["latency"]
    assert latency["byOperation"] == {
        "profiles.bulk": 3,
        "imports.create": 3,
        "imports.upload": 1,
        "imports.fetch": 1,
    }
    assert latency["seconds"] >= 8 * 0.040 * 0.5  # each draw is 50-150 % of latency_ms
    # Slept it: a lower bound, less 2 ms a request for timers that round to whole ms.
    assert elapsed >= latency["seconds"] - 8 * 0.002


# ------------------------------------------------------------------------- rate limit


def test_rate_limit_throttles_bulk_and_imports_not_the_upload_url() -> None:
    """One token for the account: the first bulk PUT takes it; the next bulk and the import
    registration are 429/20429 with Retry-After and write nothing; the upload URL still works."""
    with (
        serve() as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api,
    ):
        created = api.post(IMPORTS, json=import_body()).json()
        emu.emulator.faults = FaultPlan(EmulatorConfig(rate=0.001, burst=1))
        assert api.put(BULK, json=bulk_body("first@example.com")).status_code == 202
        for response in (
            api.put(BULK, json=bulk_body("ADA@example.com", "second@example.com")),
            api.post(IMPORTS, json=import_body()),
            api.get(f"{IMPORTS}/{created['importId']}"),
        ):
            assert_error(response, 429, 20429)
            assert re.fullmatch(r"[0-9]+", response.headers["retry-after"])
            assert int(response.headers["retry-after"]) >= 1
        upload = httpx.put(created["url"], content=CSV)  # a storage service: not throttled
        assert upload.status_code == 200, upload.text
        stats = emu.stats()
        assert stats["rateLimited"] == 3
        assert stats["byOperation"]["profiles.bulk"] == {"202": 1, "429": 1}
        assert stats["byOperation"]["imports.create"] == {"201": 1, "429": 1}
        emu.emulator.faults = FaultPlan(EmulatorConfig())
        assert len(owners(api, "first@example.com")) == 1
        assert owners(api, "second@example.com") == []
        assert len(import_ids(api)) == 1
        assert settle(api, created["importId"])["status"] == "COMPLETED"


# ----------------------------------------------------------------------------- write lag


def test_write_lag_hides_what_a_bulk_wrote_until_it_passes() -> None:
    """Right after a bulk 202 reads show the old profile and no new one; after the lag, both."""
    clock = Clock()
    with (
        serve(write_lag_ms=5_000) as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api,
    ):
        emu.emulator.account.clock = clock
        body = bulk_body("ADA@example.com", "lagged@example.com", last="Lagged")
        assert api.put(BULK, json=body).status_code == 202
        index = emu.emulator.account.stores[STORE].index  # reads cannot tell the new ID yet
        (new_id,) = index[("email", "lagged@example.com")]
        assert traits(api, A) == SEEDED_A
        names = {t["name"] for t in api.get(f"{DP}/{A}/Traits").json()["traits"]}
        assert "lastName" not in names
        assert owners(api, "lagged@example.com") == []
        assert api.get(f"{DP}/{new_id}").status_code == 404
        assert live_count(api) == LIVE_SEEDED
        clock.now += 5
        assert traits(api, A)["Contact"]["lastName"] == "Lagged"
        assert owners(api, "lagged@example.com") == [new_id]
        assert traits(api, new_id) == {
            "Contact": {"email": "lagged@example.com", "lastName": "Lagged"}
        }
        assert live_count(api) == LIVE_SEEDED + 1


def test_write_lag_hides_what_an_import_wrote_until_it_passes() -> None:
    """An import that is COMPLETED already wrote its rows, but reads lag them like any write."""
    clock = Clock()
    with (
        serve(write_lag_ms=5_000) as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api,
    ):
        emu.emulator.account.clock = clock
        created = api.post(IMPORTS, json=import_body()).json()
        assert httpx.put(created["url"], content=CSV).status_code == 200
        assert settle(api, created["importId"])["summary"]["errors"] == 0
        assert traits(api, A) == SEEDED_A
        assert owners(api, "new@example.com") == []
        assert live_count(api) == LIVE_SEEDED
        clock.now += 5
        assert traits(api, A)["Contact"]["lastName"] == "Lovelace"
        (new_id,) = owners(api, "new@example.com")
        assert traits(api, new_id) == {"Contact": {"email": "new@example.com", "lastName": "Nu"}}
        assert live_count(api) == LIVE_SEEDED + 1


# ------------------------------------------------------------- a 400 names the profile

BAD_PROFILES: list[tuple[str, Any, int, str]] = [
    ("unknown group", {"traits": {"Nope": {"x": 1}}}, 400, "Unknown trait group 'Nope'"),
    ("unknown trait", {"traits": {"Contact": {"email": "u@x.io", "nickname": "U"}}}, 400,
     "Unknown trait 'nickname'"),
    ("bad value type", {"traits": {"Contact": {"email": "u@x.io"}, "Loyalty": {"points": "lots"}}},
     400, "Loyalty.points: expected a NUMBER"),
    ("pattern rule", {"traits": {"Contact": {"email": "u@x.io"}, "Loyalty": {"tier": "tin"}}},
     400, "does not match pattern"),
    ("minLength rule", {"traits": {"Contact": {"email": "u@x.io"}, "Loyalty": {"code": "ab"}}},
     400, "Loyalty.code: length 2 is below the minimum 3"),
    ("maxItems rule",
     {"traits": {"Contact": {"email": "u@x.io"}, "Loyalty": {"tags": ["a", "b", "c", "d"]}}},
     400, "Loyalty.tags: item count 4 is above the maximum 3"),
    ("nested array", {"traits": {"Contact": {"email": "u@x.io"}, "Loyalty": {"tags": [["a"]]}}},
     400, "nested arrays"),
    ("no promoted identifier", {"traits": {"Contact": {"firstName": "Anon"}}}, 400,
     "no trait is promoted to an identifier"),
    ("no traits at all", {}, 400, "no trait is promoted to an identifier"),
    ("bad phone", {"traits": {"Contact": {"phone": "12"}}}, 21614, "Contact.phone"),
    ("blank identifier", {"traits": {"Contact": {"userId": "  "}}}, 400,
     "Contact.userId: empty value"),
    ("100 traits in a group", {"traits": {"Contact": {f"t{k}": "x" for k in range(100)}}}, 400,
     "At most 99 traits per group"),
    ("51 groups", {"traits": {f"G{k}": {} for k in range(51)}}, 400, "At most 50 trait groups"),
    ("traits not an object", {"traits": ["Contact"]}, 400, "traits must be a JSON object"),
    ("unknown property", {"traits": {"Contact": {"email": "u@x.io"}}, "id": "p"}, 400,
     "unknown property 'id'"),
    ("not an object", "u@x.io", 400, "must be a JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "code", "says"),
    [case[1:] for case in BAD_PROFILES],
    ids=[case[0] for case in BAD_PROFILES],
)
def test_a_refused_profile_is_named_by_index_and_nothing_is_written(
    api: httpx.Client, bad: Any, code: int, says: str
) -> None:
    """Any refusal of one profile fails the whole batch with "profiles[i]: ..."; the other
    profiles (an update of A and new ones, before and after it) are not written either."""
    good = bulk_body("ADA@example.com", "g1@example.com", "g2@example.com", "g3@example.com")
    body = {"profiles": [*good["profiles"][:2], bad, *good["profiles"][2:]]}
    message = assert_error(api.put(BULK, json=body), 400, code)
    assert message.startswith("profiles[2]: "), message
    assert says in message, message
    assert_untouched(api, "g1@example.com", "g2@example.com", "g3@example.com", "u@x.io")


def test_the_last_of_a_thousand_profiles_is_named(api: httpx.Client) -> None:
    body = bulk_body(*(f"k{i}@example.com" for i in range(999)))
    body["profiles"].append({"traits": {"Contact": {"firstName": "Anon"}}})
    message = assert_error(api.put(BULK, json=body), 400, 400)
    assert message.startswith("profiles[999]: no trait is promoted"), message
    assert_untouched(api, "k0@example.com", "k998@example.com")


def test_a_bad_batch_itself_names_no_profile(api: httpx.Client) -> None:
    """Refusals of the request as a whole say so, not a profile index."""
    for body, says in (
        ({"profiles": []}, "1 to 1000 profiles"),
        ({"profiles": {"a": 1}}, "1 to 1000 profiles"),
        ({}, "missing required property 'profiles'"),
    ):
        message = assert_error(api.put(BULK, json=body), 400, 400)
        assert says in message and "profiles[" not in message, message


# ------------------------------------------------------------------------ body size cap

CAP = 2_000


@pytest.fixture(scope="module")
def capped() -> Iterator[EmulatorServer]:
    """One emulator with max_body_bytes=CAP for the cap tests (each writes new emails only)."""
    with serve(max_body_bytes=CAP) as server:
        yield server


def sized(size: int, prefix: str) -> bytes:
    """A bulk body of exactly ``size`` bytes: new profiles, the last lastName padded out."""
    count = size // 120 or 1
    raw = bulk_body(*(f"{prefix}{i}@example.com" for i in range(count)))
    text = httpx.Request("PUT", "http://x", json=raw).content
    pad = size - len(text)
    assert pad >= 0, (size, len(text))
    raw["profiles"][-1]["traits"]["Contact"]["lastName"] += "x" * pad
    content = httpx.Request("PUT", "http://x", json=raw).content
    assert len(content) == size
    return content


def test_a_body_over_the_cap_is_413_and_one_at_it_is_accepted(capped: EmulatorServer) -> None:
    """max_body_bytes: CAP + 1 bytes is 413 with a Twilio error body and writes nothing; CAP
    bytes are a 202; the connection stays usable after the 413."""
    with httpx.Client(base_url=capped.url, auth=capped.auth, timeout=10) as api:
        over = api.put(BULK, content=sized(CAP + 1, "over"),
                       headers={"Content-Type": "application/json"})  # fmt: skip
        assert str(CAP) in assert_error(over, 413, 413)
        assert owners(api, "over0@example.com") == []
        at = api.put(BULK, content=sized(CAP, "at"), headers={"Content-Type": "application/json"})
        assert at.status_code == 202, at.text
        assert len(owners(api, "at0@example.com")) == 1
        assert capped.stats()["byOperation"]["profiles.bulk"]["413"] >= 1


def test_a_chunked_body_over_the_cap_is_413(capped: EmulatorServer) -> None:
    """Without a Content-Length the emulator counts what arrives."""

    def chunks(content: bytes) -> Iterator[bytes]:
        for i in range(0, len(content), 500):
            yield content[i : i + 500]

    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=capped.url, auth=capped.auth, timeout=10) as api:
        over = api.put(BULK, content=chunks(sized(CAP + 1, "chunkover")), headers=headers)
        assert over.request.headers.get("transfer-encoding") == "chunked"
        assert_error(over, 413, 413)
        at = api.put(BULK, content=chunks(sized(CAP, "chunkat")), headers=headers)
        assert at.status_code == 202, at.text
        assert owners(api, "chunkover0@example.com") == []
        assert len(owners(api, "chunkat0@example.com")) == 1


def test_a_batch_over_the_cap_lands_when_split_in_halves(capped: EmulatorServer) -> None:
    """What the bulk client does on a 413: each half of the refused batch fits and lands."""
    emails = [f"half{i}@example.com" for i in range(40)]
    whole = bulk_body(*emails)
    with httpx.Client(base_url=capped.url, auth=capped.auth, timeout=10) as api:
        assert len(httpx.Request("PUT", "http://x", json=whole).content) > CAP
        assert api.put(BULK, json=whole).status_code == 413
        assert api.put(BULK, json=bulk_body(*emails[:20])).status_code == 202
        assert api.put(BULK, json=bulk_body(*emails[20:])).status_code == 202
        assert all(len(owners(api, e)) == 1 for e in emails)


def test_the_cap_applies_to_every_api_endpoint_before_auth_and_the_rate_limit() -> None:
    """PATCH and import registration are capped too; a 413 comes before the 401 and takes no
    token from the account's bucket. The upload URL (a storage service) is not capped."""
    with (
        serve(max_body_bytes=CAP) as emu,
        httpx.Client(base_url=emu.url, auth=emu.auth, timeout=10) as api,
    ):
        created = api.post(IMPORTS, json=import_body(CAP * 2)).json()
        emu.emulator.faults = FaultPlan(EmulatorConfig(rate=0.001, burst=1))
        long_name = {"traits": {"Contact": {"lastName": "x" * CAP}}}
        assert_error(api.patch(f"{DP}/{A}", json=long_name), 413, 413)
        big_import = {**import_body(), "filename": "x" * CAP}
        assert_error(api.post(IMPORTS, json=big_import), 413, 413)
        assert_error(httpx.patch(emu.url + f"{DP}/{A}", json=long_name), 413, 413)
        assert api.get(f"{DP}/{A}").status_code == 200  # the one token is still there
        data = (b"email,last\n" + b"up@example.com,Up\n" * CAP)[: CAP * 2]
        assert httpx.put(created["url"], content=data).status_code == 200
        stats = emu.stats()
        assert stats["byOperation"]["profiles.patch"] == {"413": 2}
        assert stats["byOperation"]["imports.create"] == {"201": 1, "413": 1}
        assert stats["rateLimited"] == 0


def test_max_body_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max-body-bytes"):
        EmulatorConfig(max_body_bytes=0)
    assert EmulatorConfig().max_body_bytes is None
