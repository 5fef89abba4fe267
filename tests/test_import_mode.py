"""`[send] mode = "import"` over HTTP against the emulator: what lands, what the store refuses,
kill -9 at each step of an import, faults and lost answers, and files over the size cap.

The oracle for "lands exactly" is the same job sent with mode = "bulk" to a second emulator:
both are identifier-keyed upserts of the same planned bodies, so the two stores must hold the
same profiles trait for trait.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import itertools
import json
import os
import signal
import sqlite3  # noqa: TID251 - the test reads the checkpoint the way an operator would
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response

from backfill import checkpoint
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.emulator import app as emulator_app
from backfill.emulator import imports as emulator_imports
from backfill.emulator.apierror import ApiError, bad_request
from backfill.emulator.faults import FaultPlan
from backfill.emulator.state import Account
from backfill.emulator.storage import load_seed
from backfill.pipeline import RunResult
from backfill.pipeline import run as run_job
from backfill.targets import memory_import
from backfill.targets.memory_import import IMPORTED
from backfill.transport import connection
from backfill.transport.client import RetryPolicy
from backfill.verify import landing
from store_reads import profile_ids

ROOT = Path(__file__).parents[1]
SEED = ROOT / "tests" / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
DP = f"/v1/Stores/{STORE}/Profiles"
SID, TOKEN = "AC00000000000000000000000000000000", "emulator"
HEADER = ["email", "phone", "first_name", "last_name", "points", "tier", "subscribed", "tags",
          "updated_at"]  # fmt: skip
# A messy extract: case and spaces around identifiers, one person on two rows (the later row
# wins per trait), a person known by phone only, a seeded person updated, cells with commas,
# quotes, line breaks, non-ASCII and a leading "=", arrays by split, booleans as words, a row
# with no identifier (rejected while planning).
MESSY = [
    [" ADA@Example.COM ", "", "Ada", "Lovelace, Countess", "12", "gold", "TRUE", "a;b",
     "2026-01-02"],
    ["bob@example.com", "+1 (317) 555-0002", "Bob", 'O"Neil', "2.5", "silver", "no", "x",
     "2026-01-01"],
    ["BOB@example.com", "", "Bobby", "", "", "", "", "q;r;s", "2026-01-03"],
    ["", "+13175550003", "Zoë", "multi\nline", "0", "bronze", "", "", "2026-01-01"],
    ["eve@example.com", "", "=cmd()", "Ünïcödé 名前", "7.25", "", "1", "solo", "2026-01-01"],
    ["", "", "Nobody", "", "", "", "", "", "2026-01-01"],
    ["fay@example.com", "+44 20 7946 0958", "Fay", "", "1000000", "gold", "false", "p",
     "2026-01-05"],
    ["gus@example.com", "", "Gus", "Tab\there", "3", "silver", "yes", "m;n", "2026-01-04"],
]  # fmt: skip


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, emulator_credentials: None) -> None:
    """Polls a few milliseconds apart instead of seconds; the emulator's credentials."""
    monkeypatch.setattr(memory_import, "POLL_FIRST_S", 0.01)
    monkeypatch.setattr(memory_import, "POLL_CAP_S", 0.05)


def write_job(folder: Path, url: str, rows: list[list[str]], send: str = "") -> Path:
    data = folder / "people.csv"
    with data.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(HEADER)
        writer.writerows(rows)
    job = folder / "job.toml"
    job.write_text(
        f'name = "imports"\n[connection]\nbase_url = "{url}"\nstore_id = "{STORE}"\n'
        f'[source]\npaths = [{json.dumps(str(data))}]\norder_by = "updated_at"\n'
        '[[identity.identifiers]]\ncolumn = "email"\nid_type = "email"\nnormalization = "email"\n'
        '[[identity.identifiers]]\ncolumn = "phone"\nid_type = "phone"\nnormalization = "phone"\n'
        '[traits.Contact]\nemail = "email"\nphone = "phone"\nfirstName = "first_name"\n'
        'lastName = "last_name"\n'
        '[traits.Loyalty]\npoints = { column = "points", type = "NUMBER" }\ntier = "tier"\n'
        'subscribed = { column = "subscribed", type = "BOOLEAN" }\n'
        'tags = { column = "tags", type = "ARRAY", split = ";" }\n'
        f'[send]\nmode = "import"\nrate = 5000\n{send}\n'
        f"[output]\ndir = {json.dumps(str(folder / 'out'))}\n"
    )
    return job


def emulator(**switches: Any) -> EmulatorServer:
    return EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7, **switches))


def store_state(url: str) -> list[str]:
    """Every live profile's traits, as sorted JSON texts (profile IDs differ between stores)."""
    with httpx.Client(base_url=url, auth=(SID, TOKEN), timeout=30) as http:
        found = [http.get(f"{DP}/{p}").json()["traits"] for p in profile_ids(http, STORE)]
    return sorted(json.dumps(traits, sort_keys=True) for traits in found)


def traits_of(url: str, id_type: str, value: str) -> dict[str, Any] | None:
    with httpx.Client(base_url=url, auth=(SID, TOKEN), timeout=30) as http:
        found = http.post(f"{DP}/Lookup", json={"idType": id_type, "value": value}).json()
        if not found["profiles"]:
            return None
        assert len(found["profiles"]) == 1, found
        traits: dict[str, Any] = http.get(f"{DP}/{found['profiles'][0]}").json()["traits"]
        return traits


def landed(url: str, people: range) -> list[int]:
    """Which of ``person(i)`` for i in ``people`` the store holds."""
    with httpx.Client(base_url=url, auth=(SID, TOKEN), timeout=30) as http:
        return [i for i in people if http.post(f"{DP}/Lookup", json={
            "idType": "email", "value": f"p{i:03d}@example.com"}).json()["profiles"]]  # fmt: skip


def imports(url: str) -> list[dict[str, Any]]:
    """Every import the store holds, oldest first."""
    with httpx.Client(base_url=url, auth=(SID, TOKEN), timeout=30) as http:
        ids = http.get(f"{DP}/Imports", params={"orderBy": "ASC", "pageSize": 100}).json()
        return [http.get(f"{DP}/Imports/{i}").json() for i in ids["imports"]]


def bulk_oracle(folder: Path, rows: list[list[str]]) -> list[str]:
    """The store after the same extract is sent with mode = "bulk" to a fresh emulator."""
    folder.mkdir()
    with emulator() as clean:
        job = write_job(folder, clean.url, rows)
        job.write_text(job.read_text().replace('mode = "import"', 'mode = "bulk"'))
        assert run_job(job, quiet=True).exit_code in (0, 1)
        return store_state(clean.url)


def units(out: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(out / "run.sqlite", timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM units ORDER BY seq")]
    finally:
        db.close()


def journals(out: Path) -> dict[int, dict[str, Any]]:
    db = sqlite3.connect(out / "run.sqlite", timeout=30)
    try:
        return {i: json.loads(s) for i, s in db.execute("SELECT id, state FROM batches")}
    finally:
        db.close()


def errors_csv(out: Path) -> list[dict[str, str]]:
    with (out / "errors.csv").open(newline="", encoding="utf-8") as source:
        return list(csv.DictReader(source))


def files_of(result: RunResult) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = result.summary["delivery"]["files"]
    return files


def person(i: int, tier: str = "gold") -> list[str]:
    """A dense row (every cell filled: the store warns about no blank cell)."""
    return [f"p{i:03d}@example.com", f"+1317555{i:04d}", f"P{i}", f"L{i}", str(i), tier,
            "true", "a;b", "2026-01-01"]  # fmt: skip


# ------------------------------------------------------------------------------- landing


def test_a_messy_extract_lands_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three profiles a file, two files at once: the store ends as bulk leaves it, every
    planned unit is `imported`, and the files are the owner's only."""
    monkeypatch.setattr(memory_import, "UNITS_PER_FILE", 3)
    with emulator() as emu:
        job = write_job(tmp_path, emu.url, MESSY, "concurrency = 2")
        result = run_job(job, quiet=True)
        landed = store_state(emu.url)
        ada = traits_of(emu.url, "email", "ada@example.com")
        bob = traits_of(emu.url, "email", "bob@example.com")
        zoe = traits_of(emu.url, "phone", "+13175550003")
        eve = traits_of(emu.url, "email", "eve@example.com")
        gus = traits_of(emu.url, "email", "gus@example.com")
        made = imports(emu.url)
    assert landed == bulk_oracle(tmp_path / "bulk", MESSY)
    assert ada == {
        "Contact": {"email": "ADA@Example.COM", "firstName": "Ada", "lastName":
                    "Lovelace, Countess", "phone": "+13175550001"},
        "Loyalty": {"points": 12, "tier": "gold", "subscribed": True, "tags": ["a", "b"]},
    }  # fmt: skip
    assert bob is not None and zoe is not None and eve is not None and gus is not None
    assert bob["Contact"]["firstName"] == "Bobby" and bob["Contact"]["lastName"] == 'O"Neil'
    assert bob["Loyalty"] == {"points": 2.5, "tier": "silver", "subscribed": False,
                              "tags": ["q", "r", "s"]}  # fmt: skip
    assert zoe["Contact"]["lastName"] == "multi\nline" and zoe["Loyalty"]["points"] == 0
    assert eve["Contact"]["firstName"] == "=cmd()" and eve["Loyalty"]["tags"] == ["solo"]
    assert eve["Contact"]["lastName"] == "Ünïcödé 名前"
    assert gus["Contact"]["lastName"] == "Tab\there"
    # The row without an identifier never reached a file; nothing else failed.
    assert result.exit_code == 1 and result.summary["rows"]["not_landed"] == 1
    assert {u["outcome"] for u in units(tmp_path / "out")} == {"imported"}
    files = files_of(result)
    assert len(files) == len(made) == 2 and {f["status"] for f in files} == {"COMPLETED"}
    assert sum(f["rows"] for f in files) == len(units(tmp_path / "out")) == 6
    assert all(f["errors"] == 0 and f["unnamed_errors"] == 0 for f in files)
    assert sorted(i["filename"] for i in made) == sorted(Path(f["file"]).name for f in files)
    for f in files:
        assert stat.S_IMODE(Path(f["file"]).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out" / "imports").stat().st_mode) == 0o700


def test_a_row_the_store_refuses_fails_alone_with_its_file_and_row(tmp_path: Path) -> None:
    """A tier outside the store's pattern and points below its minimum: those two source rows
    are in errors.csv, named by file and row, with the import and its row; the rest land."""
    rows = [person(1), person(2, tier="platinum"), person(3), person(4), person(5)]
    rows[3][4] = "-5"
    with emulator() as emu:
        job = write_job(tmp_path, emu.url, rows)
        result = run_job(job, quiet=True)
        found = {i: traits_of(emu.url, "email", f"p{i:03d}@example.com") for i in range(1, 6)}
        (made,) = imports(emu.url)
    assert result.exit_code == 1
    assert [i for i, t in found.items() if t is None] == [2, 4]
    assert found[5] is not None and found[5]["Loyalty"]["tier"] == "gold"
    errors = errors_csv(tmp_path / "out")
    assert [(e["file"], e["row"], e["outcome"]) for e in errors] == [
        (str(tmp_path / "people.csv"), "2", "failed"),
        (str(tmp_path / "people.csv"), "4", "failed"),
    ]
    assert made["importId"] in errors[0]["message"] and "row 2" in errors[0]["message"]
    assert "tier" in errors[0]["message"] and "row 4" in errors[1]["message"]
    outcomes = [u["outcome"] for u in units(tmp_path / "out")]
    assert outcomes == ["imported", "failed", "imported", "failed", "imported"]
    (file,) = files_of(result)
    assert (file["status"], file["rows"], file["errors"], file["unnamed_errors"]) == (
        "COMPLETED", 5, 2, 0)  # fmt: skip


UNNAMED = [person(i, tier="platinum" if i < 25 else "gold") for i in range(30)]


def test_errors_beyond_the_details_stay_imported_and_are_counted(tmp_path: Path) -> None:
    """The store names 20 rows at most: the 21st to 25th bad rows cannot be told apart, so
    the delivery keeps their units `imported` (no outcome is invented) and counts them."""
    with emulator() as emu:
        job = write_job(tmp_path, emu.url, UNNAMED, 'verify = "none"')
        result = run_job(job, quiet=True)
        kept = landed(emu.url, range(30))
    assert kept == list(range(25, 30))
    got = units(tmp_path / "out")
    assert [u["outcome"] for u in got] == ["failed"] * 20 + ["imported"] * 10
    (file,) = files_of(result)
    assert (file["errors"], file["unnamed_errors"]) == (25, 5)


def test_the_read_back_finds_the_rows_the_store_did_not_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `run` reads back after the delivery catches the unnamed errors, once `imported`
    counts as landed (checkpoint.LANDED, patched here as the change asked of that module)."""
    monkeypatch.setattr(checkpoint, "LANDED", (*checkpoint.LANDED, IMPORTED))
    defaults = landing.verify_landing.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "settle", 0.0)  # nothing the store may still be writing
    with emulator() as emu:
        result = run_job(write_job(tmp_path, emu.url, UNNAMED, 'verify = "all"'), quiet=True)
    got = [u["outcome"] for u in units(tmp_path / "out")]
    assert got == ["failed"] * 20 + ["verify_failed"] * 5 + ["imported"] * 5
    assert result.summary["delivery"]["verify"]["failed"] == 5
    assert [e["row"] for e in errors_csv(tmp_path / "out")] == [str(i) for i in range(1, 26)]


# ------------------------------------------------------------------------------- resuming


@dataclass
class Hold:
    """A request the emulator holds (``entered``) until the test says (``release``)."""

    count: int
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


Handler = Callable[[Any, Request], Awaitable[Response]]


def hold_uploads(monkeypatch: pytest.MonkeyPatch) -> Hold:
    """The first upload waits for ``release``, then answers 503 without taking the file
    (patched before the emulator binds its routes)."""
    held = Hold(1)
    original: Handler = emulator_app.upload_import

    async def holding(emu: Any, request: Request) -> Response:
        if held.count <= 0:
            return await original(emu, request)
        held.count -= 1
        held.entered.set()
        await asyncio.to_thread(held.release.wait)
        return emulator_app.respond(503, ApiError(503, "held by the test").body())

    monkeypatch.setattr(emulator_app, "upload_import", holding)
    return held


def start_run(job: Path, processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(proc)
    return proc


def by_operation(emu: EmulatorServer, op: str) -> dict[str, int]:
    counts: dict[str, int] = emu.stats()["byOperation"].get(op, {})
    return counts


def assert_imported_once(emu: EmulatorServer, result: RunResult, rows: list[list[str]]) -> None:
    (made,) = imports(emu.url)
    assert made["status"] == "COMPLETED" and made["summary"]["rows"] == len(rows)
    assert by_operation(emu, "imports.create") == {"201": 1}
    assert by_operation(emu, "imports.upload").get("200") == 1
    assert result.exit_code == 0
    assert landed(emu.url, range(len(rows))) == list(range(len(rows)))
    (file,) = files_of(result)
    assert (file["import_id"], file["status"]) == (made["importId"], "COMPLETED")


def test_kill_9_after_registration_uploads_to_the_same_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Killed while its upload is on the wire (the import registered, its URL journaled): the
    next run uploads the same file to the same import, and registers nothing."""
    held = hold_uploads(monkeypatch)
    rows = [person(i) for i in range(6)]
    with emulator() as emu:
        job = write_job(tmp_path, emu.url, rows)
        proc = start_run(job, processes)
        assert held.entered.wait(60), "the run never uploaded"
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        held.release.set()
        (journal,) = journals(tmp_path / "out").values()
        assert journal["parts"][0]["step"] == "registered"
        result = run_job(job, quiet=True)
        assert_imported_once(emu, result, rows)


def test_kill_9_before_a_registration_is_answered_finds_it_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Killed after the store registered the file but before its answer came: the next run
    lists the imports, finds that one by the file's name, still waiting for a file whose URL
    nobody kept, abandons it and registers the file again."""
    held = Hold(1)
    register = emulator_imports.register

    def registered_then_held(*args: Any) -> Any:
        made = register(*args)
        if held.count:  # the emulator stands still until the run is killed
            held.count -= 1
            held.entered.set()
            held.release.wait()
        return made

    monkeypatch.setattr(emulator_imports, "register", registered_then_held)
    rows = [person(i) for i in range(6)]
    with emulator() as emu:
        job = write_job(tmp_path, emu.url, rows)
        proc = start_run(job, processes)
        assert held.entered.wait(60), "the run never registered"
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        held.release.set()
        (journal,) = journals(tmp_path / "out").values()
        assert journal["parts"][0]["step"] == "written"
        assert journal["parts"][0]["registering_at"] is not None
        result = run_job(job, quiet=True)
        first, second = imports(emu.url)
        assert by_operation(emu, "imports.upload") == {"200": 1}
        assert landed(emu.url, range(6)) == list(range(6))
    assert result.exit_code == 0
    assert (first["status"], second["status"]) == ("PENDING", "COMPLETED")
    assert first["filename"] == second["filename"]
    (file,) = files_of(result)
    assert (file["import_id"], file["abandoned_imports"]) == (second["importId"],
                                                              [first["importId"]])  # fmt: skip


def test_kill_9_while_the_import_processes_polls_it_to_the_end(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Killed while the store holds the import PROCESSING: the next run polls the same
    import until it completes; nothing is registered or uploaded again."""
    rows = [person(i) for i in range(6)]
    with emulator(import_delay_ms=1500) as emu:
        job = write_job(tmp_path, emu.url, rows)
        proc = start_run(job, processes)
        deadline = time.monotonic() + 60
        while not by_operation(emu, "imports.fetch"):
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "the run never polled"
            time.sleep(0.01)
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        (journal,) = journals(tmp_path / "out").values()
        assert journal["parts"][0]["step"] == "uploaded"
        assert imports(emu.url)[0]["status"] == "PROCESSING"
        result = run_job(job, quiet=True)
        assert_imported_once(emu, result, rows)
    assert {u["claims"] for u in units(tmp_path / "out")} == {2}


def test_faults_and_lost_answers_end_in_the_exact_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500s, 503s, dropped connections and writes applied with their answer lost, on every
    register, upload and poll: each file is imported exactly once, and the store ends as a
    clean bulk run leaves it. A lost registration is found by its file name and abandoned."""
    monkeypatch.setattr(memory_import, "UNITS_PER_FILE", 2)
    monkeypatch.setattr(connection, "RetryPolicy", functools.partial(RetryPolicy, base=0.01,
                                                                     cap=0.05))  # fmt: skip
    rows = [person(i) for i in range(36)]
    faults: dict[str, Any] = {
        "fault_rate": 0.2,
        "drop_rate": 0.1,
        "lost_response_rate": 0.35,
        "random_seed": 5,
    }
    with EmulatorServer(EmulatorConfig(seed=SEED, **faults)) as emu:
        # 65 % of attempts fail here (0.2 + 0.1 + 0.35): 12 attempts ran out for some request in
        # about one run in ten (0.65^12 = 0.6 % a request, ~100 requests); 40 make it 3e-8.
        job = write_job(tmp_path, emu.url, rows, "concurrency = 4\nmax_attempts = 40")
        result = run_job(job, quiet=True)
        stats = emu.stats()["byOperation"]
        emu.emulator.faults = FaultPlan(EmulatorConfig(seed=SEED))  # read back without faults
        landed = store_state(emu.url)
        made = imports(emu.url)
    assert result.exit_code == 0
    assert landed == bulk_oracle(tmp_path / "bulk", rows)
    files = files_of(result)
    assert len(files) == 18 and {f["status"] for f in files} == {"COMPLETED"}
    taken = [i for i in made if i["status"] != "PENDING"]  # imports that received a file
    assert sorted(i["importId"] for i in taken) == sorted(f["import_id"] for f in files)
    assert {i["status"] for i in taken} == {"COMPLETED"}
    abandoned = {i["importId"] for i in made if i["status"] == "PENDING"}
    assert abandoned == {a for f in files for a in f["abandoned_imports"]}
    assert stats["imports.create"].get("lost", 0) > 0 and abandoned  # the paths were taken
    assert stats["imports.upload"].get("lost", 0) > 0
    assert {u["outcome"] for u in units(tmp_path / "out")} == {"imported"}


def test_an_expired_upload_url_registers_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload URL expires before the upload (the emulator's clock jumps past its TTL):
    403, so the file is registered again and uploaded there; the first import never gets it."""
    rows = [person(i) for i in range(4)]
    original: Handler = emulator_app.upload_import
    skew = [0.0]

    async def late(emu: Any, request: Request) -> Response:
        if not skew[0]:
            skew[0] = emu.config.upload_ttl_s + 1  # the URL expires; later ones are fresh
        return await original(emu, request)

    monkeypatch.setattr(emulator_app, "upload_import", late)
    with emulator() as emu:
        emu.emulator.account.clock = lambda: time.time() + skew[0]
        job = write_job(tmp_path, emu.url, rows)
        result = run_job(job, quiet=True)
        first, second = imports(emu.url)
        assert by_operation(emu, "imports.upload") == {"403": 1, "200": 1}
    assert result.exit_code == 0
    assert (first["status"], second["status"]) == ("PENDING", "COMPLETED")
    assert first["filename"] == second["filename"]
    (file,) = files_of(result)
    assert file["import_id"] == second["importId"]
    assert file["abandoned_imports"] == [first["importId"]]


# ------------------------------------------------------------------------------- failing


def test_a_failed_import_fails_every_unit_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: bytes) -> Any:
        raise emulator_imports._Failed("The disk is on fire.")

    monkeypatch.setattr(emulator_imports, "_reader", broken)
    rows = [person(i) for i in range(3)]
    with emulator() as emu:
        result = run_job(write_job(tmp_path, emu.url, rows), quiet=True)
        (made,) = imports(emu.url)
    assert result.exit_code == 1 and made["status"] == "FAILED"
    errors = errors_csv(tmp_path / "out")
    assert [e["row"] for e in errors] == ["1", "2", "3"]
    assert all(made["importId"] in e["message"] and "disk is on fire" in e["message"]
               for e in errors)  # fmt: skip
    assert files_of(result)[0]["status"] == "FAILED"


def test_a_refused_registration_fails_every_unit_with_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> Any:
        raise bad_request("columnMappings: not today.")

    monkeypatch.setattr(emulator_imports, "register", refuse)
    rows = [person(i) for i in range(3)]
    with emulator() as emu:
        result = run_job(write_job(tmp_path, emu.url, rows), quiet=True)
        assert imports(emu.url) == []
    assert result.exit_code == 1
    errors = errors_csv(tmp_path / "out")
    assert [(e["row"], e["status"]) for e in errors] == [("1", "400"), ("2", "400"), ("3", "400")]
    assert all("not today" in e["message"] for e in errors)
    (file,) = files_of(result)
    assert (file["status"], file["import_id"]) == ("NOT_IMPORTED", None)


# ------------------------------------------------------------------------------- the cap


def test_a_file_over_the_cap_is_split_in_halves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 300-byte cap, one batch becomes several files, none over it, journaled as parts
    of the batch; a profile whose row alone is over the cap fails alone, the rest land."""
    monkeypatch.setattr(memory_import, "MAX_FILE_BYTES", 300)
    rows = [person(i) for i in range(9)]
    rows[4][2] = "X" * 400  # p004's first name alone makes a row over 300 bytes
    with emulator() as emu:
        result = run_job(write_job(tmp_path, emu.url, rows), quiet=True)
        kept = landed(emu.url, range(9))
        made = imports(emu.url)
    assert kept == [0, 1, 2, 3, 5, 6, 7, 8]
    files = files_of(result)
    assert len(files) > 2 and {f["batch"] for f in files} == {1}
    sizes = [Path(f["file"]).stat().st_size for f in files if f["status"] == "COMPLETED"]
    assert len(sizes) == len(made) and max(sizes) <= 300
    assert sum(f["rows"] for f in files if f["rows"]) == 8
    (journal,) = journals(tmp_path / "out").values()
    ranges = [(p["start"], p["end"]) for p in journal["parts"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 9
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    (error,) = errors_csv(tmp_path / "out")
    assert error["row"] == "5" and "over the 300-byte cap" in error["message"]
    assert result.exit_code == 1


# ------------------------------------------------------------------------------- the cells

SCALARS = st.one_of(
    st.text(min_size=1).filter(lambda s: "\x00" not in s),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "firstName": st.text(min_size=1).filter(lambda s: "\x00" not in s),
                "points": st.integers(-(2**53), 2**53)
                | st.floats(allow_nan=False, allow_infinity=False),
                "subscribed": st.booleans(),
                "tags": st.lists(SCALARS, max_size=4),
            },
        ),
        min_size=1,
        max_size=8,
    )
)
def test_cells_read_back_as_the_values_written(tmp_path_factory: Any, rows: list[Any]) -> None:
    """What write_csv writes, the emulator's own CSV parser reads back as the same values."""
    groups = {"firstName": "Contact", "points": "Loyalty", "subscribed": "Loyalty",
              "tags": "Loyalty"}  # fmt: skip
    columns = [("Contact", "email"), *((g, t) for t, g in groups.items())]
    bodies = []
    for i, row in enumerate(rows):
        traits: dict[str, dict[str, Any]] = {"Contact": {"email": f"p{i}@example.com"}}
        for trait, value in row.items():
            traits.setdefault(groups[trait], {})[trait] = value
        bodies.append(json.dumps({"traits": traits}))
    path = tmp_path_factory.mktemp("cells") / "cells.csv"
    written = memory_import.write_csv(path, columns, bodies)
    data = path.read_bytes()
    assert written.size == len(data) and written.skipped == {}
    account = Account()
    load_seed(account, SEED)
    store = account.stores[STORE]
    reader = emulator_imports._reader(data)
    header = next(reader)
    assert header == [f"{g}.{t}" for g, t in columns]
    records = list(reader)
    assert len(records) == len(rows)
    for body, cells in zip(bodies, records, strict=True):
        expected = json.loads(body)["traits"]
        got: dict[str, dict[str, Any]] = {}
        for (group, trait), cell in zip(columns, cells, strict=True):
            if cell == "":
                continue
            mapping = emulator_imports.Mapping(f"{group}.{trait}", group, trait)
            got.setdefault(group, {})[trait] = emulator_imports._typed(store, mapping, cell)
        assert got == expected
        assert all(type(got[g][t]) is type(v) or isinstance(v, float)
                   for g, ts in expected.items() for t, v in ts.items())  # fmt: skip


def test_a_body_no_cell_can_carry_is_left_out_and_rows_still_count(tmp_path: Path) -> None:
    """A NUL would fail the whole file: that unit is named and left out, and the rows after
    it are numbered as the store will number them."""
    bodies = [
        json.dumps({"traits": {"Contact": {"email": "a@example.com"}}}),
        json.dumps({"traits": {"Contact": {"email": "b@example.com", "firstName": "x\x00y"}}}),
        json.dumps({"traits": {"Contact": {"email": "c@example.com"}}}),
    ]
    path = tmp_path / "f.csv"
    written = memory_import.write_csv(path, [("Contact", "email"), ("Contact", "firstName")],
                                      bodies)  # fmt: skip
    assert list(written.skipped) == [1] and "NUL" in written.skipped[1]
    records = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert records == [["Contact.email", "Contact.firstName"], ["a@example.com", ""],
                       ["c@example.com", ""]]  # fmt: skip
