"""CSV imports over real HTTP: register, upload to the emulator's own URL, poll, and what lands."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator.faults import FaultPlan

SEED = Path(__file__).parents[1] / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
DP = f"/v1/Stores/{STORE}/Profiles"
ERROR_KEYS = {"code", "message", "more_info", "status"}
MAPPINGS = [
    {"columnName": "email", "traitGroup": "Contact", "traitName": "email"},
    {"columnName": "first", "traitGroup": "Contact", "traitName": "firstName"},
    {"columnName": "points", "traitGroup": "Loyalty", "traitName": "points"},
    {"columnName": "tier", "traitGroup": "Loyalty", "traitName": "tier"},
    {"columnName": "subscribed", "traitGroup": "Loyalty", "traitName": "subscribed"},
    {"columnName": "tags", "traitGroup": "Loyalty", "traitName": "tags"},
]
GOOD = (
    b"email,first,points,tier,subscribed,tags\n"
    b'ann@example.com,Ann,10,gold,true,"[""a"",""b""]"\n'
    b'bob@example.com,"Bob, Jr.",2.5,silver,FALSE,["x"]\n'
)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, auth=emulator.auth, timeout=10) as client:
        yield client


def register(api: httpx.Client, data: bytes, mappings: list[dict[str, str]] | None = None,
             **extra: Any) -> dict[str, Any]:  # fmt: skip
    body = {"filename": "extract.csv", "fileSize": len(data),
            "columnMappings": mappings or MAPPINGS, **extra}  # fmt: skip
    response = api.post(DP + "/Imports", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def fetch(api: httpx.Client, import_id: str) -> dict[str, Any]:
    response = api.get(f"{DP}/Imports/{import_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def settle(api: httpx.Client, import_id: str) -> dict[str, Any]:
    """Poll until the import leaves PENDING/PROCESSING (bounded by a count, not a time)."""
    for _ in range(500):
        body = fetch(api, import_id)
        if body["status"] in ("COMPLETED", "FAILED"):
            return body
        time.sleep(0.01)
    raise AssertionError(f"import {import_id} never finished: {body}")


def run(api: httpx.Client, data: bytes, mappings: list[dict[str, str]] | None = None) -> Any:
    created = register(api, data, mappings)
    assert httpx.put(created["url"], content=data).status_code == 200
    return settle(api, created["importId"])


def traits_of(api: httpx.Client, email: str) -> dict[str, Any]:
    found = api.post(DP + "/Lookup", json={"idType": "email", "value": email}).json()
    assert len(found["profiles"]) == 1, found
    traits: dict[str, Any] = api.get(f"{DP}/{found['profiles'][0]}").json()["traits"]
    return traits


def test_register_upload_and_rows_land(api: httpx.Client) -> None:
    created = register(api, GOOD)
    assert created["importId"].startswith("mem_import_")
    assert "/__uploads__/" in created["url"] and created["url"].startswith(str(api.base_url))
    pending = fetch(api, created["importId"])
    assert pending["status"] == "PENDING"
    assert pending["filename"] == "extract.csv" and pending["fileSize"] == len(GOOD)
    assert pending["summary"]["errors"] == 0 and pending["columnMappings"] == MAPPINGS
    # No Twilio auth on the upload; a stray Authorization header is ignored, not checked.
    upload = httpx.put(created["url"], content=GOOD, headers={"Authorization": "Bearer junk"})
    assert upload.status_code == 200, upload.text
    done = settle(api, created["importId"])
    assert done["status"] == "COMPLETED"
    assert done["summary"] == {"errors": 0, "warnings": 0, "rows": 2, "details": []}
    ann = traits_of(api, "ann@example.com")
    assert ann["Contact"] == {"email": "ann@example.com", "firstName": "Ann"}
    assert ann["Loyalty"] == {"points": 10, "tier": "gold", "subscribed": True,
                              "tags": ["a", "b"]}  # fmt: skip
    bob = traits_of(api, "bob@example.com")
    assert bob["Contact"]["firstName"] == "Bob, Jr."
    assert bob["Loyalty"] == {"points": 2.5, "tier": "silver", "subscribed": False,
                              "tags": ["x"]}  # fmt: skip


def test_rows_merge_into_existing_profiles_like_bulk(api: httpx.Client) -> None:
    """An import upserts by promoted identifier: the seeded profile is updated, not duplicated."""
    data = b"email,points\nADA@example.com,7\nada@example.com,8\n"
    assert run(api, data, [MAPPINGS[0], MAPPINGS[2]])["summary"]["errors"] == 0
    found = api.post(DP + "/Lookup", json={"idType": "email", "value": "ada@example.com"}).json()
    assert found["profiles"] == ["mem_profile_01jtest000000000000000000a"]
    traits = traits_of(api, "ada@example.com")
    assert traits["Loyalty"] == {"points": 8, "tier": "gold"}  # the later row wins; merge keeps
    assert traits["Contact"]["firstName"] == "Ada"


def test_rows_in_error_and_warnings_are_counted(api: httpx.Client) -> None:
    data = (
        b"email,first,points,tier,subscribed,tags,notes\n"
        b'ok@example.com,Ok,1,gold,true,["a"],n\n'  # 1: fine (unmapped 'notes' is a warning)
        b'bad1@example.com,X,lots,gold,true,["a"],n\n'  # 2: NUMBER fails
        b'bad2@example.com,X,1,platinum,true,["a"],n\n'  # 3: validationRule pattern fails
        b',NoId,1,gold,true,["a"],n\n'  # 4: no identifier
        b'bad3@example.com,X,1,gold,true,["a"],n,extra\n'  # 5: a cell beyond the header
        b'bad4@example.com,X,1,gold,maybe,["a"],n\n'  # 6: BOOLEAN fails
        b'bad5@example.com,X,1,gold,true,"[""a"",""b"",""c"",""d""]",n\n'  # 7: maxItems fails
        b"blank@example.com,,,,,,\n"  # 8: lands the email; 5 blank mapped cells warn
    )
    done = run(api, data)
    assert done["status"] == "COMPLETED"
    summary = done["summary"]
    assert summary["rows"] == 8
    assert summary["errors"] == 6
    assert summary["warnings"] == 1 + 5 + 1  # header 'notes', row 8's blanks, row 4's email
    rows = {(d["row"], d["level"]) for d in summary["details"]}
    assert {(2, "error"), (3, "error"), (4, "error"), (5, "error"), (6, "error"),
            (7, "error"), (0, "warning")} <= rows  # fmt: skip
    assert "tags" in " ".join(d["message"] for d in summary["details"] if d["row"] == 7)
    assert traits_of(api, "ok@example.com")["Loyalty"]["points"] == 1
    assert traits_of(api, "blank@example.com") == {"Contact": {"email": "blank@example.com"}}
    for email in ("bad1", "bad2", "bad3", "bad4", "bad5"):
        found = api.post(DP + "/Lookup", json={"idType": "email", "value": f"{email}@example.com"})
        assert found.json()["profiles"] == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
        (b"a,b\x00,c\n1,2,3\n", "NUL"),
        (b"name,city\nAnn,Paris\n", "No column of the header"),
        (b'"unterminated,header\n', "header line is not CSV"),
    ],
)
def test_a_file_that_is_not_a_csv_or_has_no_mapped_header_fails(
    api: httpx.Client, data: bytes, reason: str
) -> None:
    done = run(api, data, MAPPINGS[:2])
    assert done["status"] == "FAILED"
    assert reason in done["summary"]["failure"]


def test_upload_of_another_size_is_refused_and_the_url_stays_usable(api: httpx.Client) -> None:
    created = register(api, GOOD)
    short = httpx.put(created["url"], content=GOOD[:-1])
    assert short.status_code == 400 and set(short.json()) >= ERROR_KEYS
    assert "fileSize" in short.json()["message"]
    assert fetch(api, created["importId"])["status"] == "PENDING"
    assert httpx.put(created["url"], content=GOOD + b"x").status_code == 400
    assert httpx.put(created["url"], content=GOOD).status_code == 200


def test_a_second_upload_is_refused(api: httpx.Client) -> None:
    created = register(api, GOOD)
    assert httpx.put(created["url"], content=GOOD).status_code == 200
    again = httpx.put(created["url"], content=GOOD)
    assert again.status_code == 409 and "already received" in again.json()["message"]
    assert settle(api, created["importId"])["summary"]["rows"] == 2


def test_the_upload_url_expires(emulator: EmulatorServer, api: httpx.Client) -> None:
    clock = Clock()
    emulator.emulator.account.clock = clock
    created = register(api, GOOD)
    clock.now += emulator.config.upload_ttl_s  # the TTL defaults to 15 minutes
    late = httpx.put(created["url"], content=GOOD)
    assert late.status_code == 403 and "expired" in late.json()["message"]
    assert fetch(api, created["importId"])["status"] == "PENDING"
    clock.now -= 1  # just inside the window
    assert httpx.put(created["url"], content=GOOD).status_code == 200


def test_an_unknown_upload_token_is_404(emulator: EmulatorServer) -> None:
    response = httpx.put(emulator.url + "/__uploads__/not-a-token", content=b"a,b\n")
    assert response.status_code == 404 and set(response.json()) >= ERROR_KEYS


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fileSize": 0}, "fileSize"),
        ({"fileSize": 100 * 1024 * 1024 + 1}, "fileSize"),
        ({"fileSize": "12"}, "fileSize"),
        ({"filename": ""}, "filename"),
        ({"columnMappings": MAPPINGS[:1]}, "columnMappings"),
        ({"columnMappings": [*MAPPINGS[:1], *MAPPINGS[:1]]}, "mapped twice"),
        (
            {"columnMappings": [MAPPINGS[0], {**MAPPINGS[1], "traitGroup": "Nope"}]},
            "columnMappings[1].traitGroup",
        ),
        (
            {"columnMappings": [MAPPINGS[0], {**MAPPINGS[1], "traitName": "nope"}]},
            "columnMappings[1].traitName",
        ),
        (
            {"columnMappings": [MAPPINGS[0], {"columnName": "x", "traitGroup": "Contact"}]},
            "traitName",
        ),
        (
            {"columnMappings": [MAPPINGS[0], {**MAPPINGS[0], "columnName": "mail2"}]},
            "target of two columns",
        ),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_registrations_are_400_naming_the_field(
    api: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = {"filename": "x.csv", "fileSize": 10, "columnMappings": MAPPINGS, **change}
    response = api.post(DP + "/Imports", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) >= ERROR_KEYS and field in response.json()["message"]
    assert api.get(DP + "/Imports").json()["imports"] == []


def test_a_hundred_mappings_are_allowed_and_101_are_not(api: httpx.Client) -> None:
    wide = {f"t{i}": {"dataType": "STRING"} for i in range(95)}
    made = api.post(f"/v1/ControlPlane/Stores/{STORE}/TraitGroups",
                    json={"displayName": "Wide", "traits": wide})  # fmt: skip
    assert made.status_code == 202, made.text
    many = MAPPINGS[:5] + [
        {"columnName": f"c{i}", "traitGroup": "Wide", "traitName": f"t{i}"} for i in range(95)
    ]
    body = {"filename": "x.csv", "fileSize": 10, "columnMappings": many}
    assert api.post(DP + "/Imports", json=body).status_code == 201
    body["columnMappings"] = [*many, {"columnName": "x", "traitGroup": "Contact",
                                      "traitName": "lastName"}]  # fmt: skip
    too_many = api.post(DP + "/Imports", json=body)
    assert too_many.status_code == 400 and "2 to 100" in too_many.json()["message"]


def test_fetch_checks_the_id_and_the_store(api: httpx.Client) -> None:
    assert api.get(DP + "/Imports/imp_1").status_code == 400
    missing = api.get(DP + "/Imports/mem_import_01jtest000000000000000000a")
    assert missing.status_code == 404 and set(missing.json()) >= ERROR_KEYS
    other = api.get("/v1/Stores/mem_store_01jtest000000000000000000z/Profiles/Imports")
    assert other.status_code == 404


def test_imports_need_twilio_auth(emulator: EmulatorServer) -> None:
    response = httpx.get(emulator.url + DP + "/Imports")
    assert response.status_code == 401


def test_list_pages_newest_first(api: httpx.Client) -> None:
    made = [register(api, GOOD)["importId"] for _ in range(5)]
    first = api.get(DP + "/Imports", params={"pageSize": 2}).json()
    assert first["imports"] == made[::-1][:2] and first["meta"]["key"] == "imports"
    seen = list(first["imports"])
    token = first["meta"].get("nextToken")
    while token:
        page = api.get(DP + "/Imports", params={"pageSize": 2, "pageToken": token}).json()
        seen += page["imports"]
        token = page["meta"].get("nextToken")
    assert seen == made[::-1]
    assert api.get(DP + "/Imports", params={"orderBy": "ASC"}).json()["imports"] == made


def test_processing_is_observable_and_asynchronous() -> None:
    config = EmulatorConfig(seed=SEED, random_seed=7, import_delay_ms=60_000)
    with (
        EmulatorServer(config) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        created = register(api, GOOD)
        assert httpx.put(created["url"], content=GOOD).status_code == 200
        assert fetch(api, created["importId"])["status"] == "PROCESSING"
        found = api.post(DP + "/Lookup", json={"idType": "email", "value": "bob@example.com"})
        assert found.json()["profiles"] == []  # nothing applied yet


def test_write_lag_applies_to_what_an_import_writes() -> None:
    clock = Clock()
    config = EmulatorConfig(seed=SEED, random_seed=7, write_lag_ms=5_000)
    with (
        EmulatorServer(config) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        server.emulator.account.clock = clock
        assert run(api, GOOD)["status"] == "COMPLETED"
        lookup = {"idType": "email", "value": "bob@example.com"}
        assert api.post(DP + "/Lookup", json=lookup).json()["profiles"] == []
        clock.now += 5
        assert len(api.post(DP + "/Lookup", json=lookup).json()["profiles"]) == 1


def test_imports_survive_a_restart_with_state(tmp_path: Path) -> None:
    state = tmp_path / "emu.sqlite"
    config = EmulatorConfig(seed=SEED, random_seed=7, state=state)
    with (
        EmulatorServer(config) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        done = run(api, GOOD)["importId"]
        pending = register(api, GOOD)
    slow = EmulatorConfig(seed=SEED, random_seed=7, state=state, import_delay_ms=60_000)
    with (
        EmulatorServer(slow) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        assert fetch(api, done)["status"] == "COMPLETED"
        assert fetch(api, done)["summary"]["rows"] == 2
        assert fetch(api, pending["importId"])["status"] == "PENDING"
        # The token survives; the URL is the new server's own.
        token = pending["url"].rsplit("/", 1)[1]
        assert httpx.put(f"{server.url}/__uploads__/{token}", content=GOOD).status_code == 200
        assert fetch(api, pending["importId"])["status"] == "PROCESSING"
        assert len(traits_of(api, "bob@example.com")) == 2  # the first import's rows persisted
    with (
        EmulatorServer(config) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        interrupted = fetch(api, pending["importId"])
        assert (
            interrupted["status"] == "FAILED" and "restarted" in interrupted["summary"]["failure"]
        )
        assert api.get(DP + "/Imports", params={"orderBy": "ASC"}).json()["imports"] == [
            done,
            pending["importId"],
        ]


def test_faults_apply_to_registration_and_upload() -> None:
    config = EmulatorConfig(seed=SEED, random_seed=7)
    failing = EmulatorConfig(seed=SEED, random_seed=7, fault_rate=1.0)
    with (
        EmulatorServer(config) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        created = register(api, GOOD)
        server.emulator.faults = FaultPlan(failing)
        body = {"filename": "x.csv", "fileSize": len(GOOD), "columnMappings": MAPPINGS}
        assert api.post(DP + "/Imports", json=body).status_code in (500, 503)
        assert httpx.put(created["url"], content=GOOD).status_code in (500, 503)
        server.emulator.faults = FaultPlan(config)
        assert api.get(DP + "/Imports").json()["imports"] == [created["importId"]]
        assert fetch(api, created["importId"])["status"] == "PENDING"  # a fault changes nothing
        assert httpx.put(created["url"], content=GOOD).status_code == 200
        upload = server.stats()["byOperation"]["imports.upload"]
        assert upload.get("500", 0) + upload.get("503", 0) == 1 and upload["200"] == 1


def test_a_lost_upload_response_was_applied_and_the_retry_is_409() -> None:
    config = EmulatorConfig(seed=SEED, random_seed=7)
    lost = EmulatorConfig(seed=SEED, random_seed=7, lost_response_rate=1.0)
    with (
        EmulatorServer(config) as server,
        httpx.Client(base_url=server.url, auth=server.auth, timeout=10) as api,
    ):
        created = register(api, GOOD)
        server.emulator.faults = FaultPlan(lost)
        with pytest.raises(httpx.TransportError):
            httpx.put(created["url"], content=GOOD)
        with pytest.raises(httpx.TransportError):
            api.post(DP + "/Imports", json={"filename": "y.csv", "fileSize": 3,
                                           "columnMappings": MAPPINGS})  # fmt: skip
        server.emulator.faults = FaultPlan(config)
        assert httpx.put(created["url"], content=GOOD).status_code == 409
        assert settle(api, created["importId"])["status"] == "COMPLETED"
        assert len(api.get(DP + "/Imports").json()["imports"]) == 2  # the lost create was kept


def test_rows_are_numbered_by_record_not_by_line(api: httpx.Client) -> None:
    """A quoted cell may span lines; the error names the record, and blank lines are skipped."""
    data = b'email,first\n"multi@example.com","two\nlines"\n\nbad@example.com,x,y\n'
    done = run(api, data, MAPPINGS[:2])
    assert (done["summary"]["rows"], done["summary"]["errors"]) == (2, 1)
    assert [d["row"] for d in done["summary"]["details"]] == [2]
    assert traits_of(api, "multi@example.com")["Contact"]["firstName"] == "two\nlines"
