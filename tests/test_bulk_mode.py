"""`[send] mode = "bulk"` over real HTTP against the emulator: the messy extract of
tests/mode_oracle.py lands exactly as its oracle says (in every mode the oracle serves), a refused
profile is found by bisection, kill -9 and faults change nothing, the read-back tells lag from
difference, reconcile and --fix work on bulk jobs, the job check refuses what bulk cannot do,
and a batch cut off by a crash comes back whole under its ID."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3  # noqa: TID251 - the test reads the checkpoint the way an operator would
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest

import mode_oracle as oracle
from backfill.checkpoint import DONE, IN_FLIGHT, PENDING, Result, RunDB
from backfill.cli import main
from backfill.config import Job, load_job
from backfill.deliver.interface import Batch, Limits
from backfill.deliver.loop import deliver
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.pipeline import retry
from backfill.pipeline import run as run_job
from backfill.reconcile import reconcile
from backfill.verify import landing

# The modes the oracle must hold for.
MODES = ["patch", "bulk", "import"]
# Modes known to break a claim, with the reason (each test says which claim).
BAD_IDENTIFIER_CELL_BUG: dict[str, str] = {}

ROOT = Path(__file__).parents[1]
SID, TOKEN = "AC00000000000000000000000000000000", "emulator"
CREDENTIAL_VARIABLES = (
    "TWILIO_API_KEY",
    "TWILIO_API_SECRET",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
)
TRAITS = """[traits.Contact]
email = "email"
phone = "phone"
firstName = "first_name"
[traits.Loyalty]
points = { column = "points", type = "NUMBER" }
tier = "tier"
subscribed = { column = "subscribed", type = "BOOLEAN" }
tags = { column = "tags", type = "ARRAY", split = ";" }
"""
IDENTIFIERS = """[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[[identity.identifiers]]
column = "phone"
id_type = "phone"
normalization = "phone"
"""
FAST = "concurrency = 4\nrate = 5000\n"


def modes(bugs: dict[str, str]) -> list[Any]:
    """MODES as parameters, those in ``bugs`` expected to fail for the reason given."""
    return [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=bugs[m])) if m in bugs else m
        for m in MODES
    ]


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)


def settle(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The read-back's wait before a difference counts."""
    monkeypatch.setattr(landing, "SETTLE", seconds)


@pytest.fixture(autouse=True)
def short_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """No lag unless a test asks for it: a real difference need not wait 10 s to count."""
    settle(monkeypatch, 0.2)


def emulator(folder: Path, **switches: Any) -> EmulatorServer:
    seed = oracle.write_seed(folder / "seed.json")
    switches.setdefault("random_seed", 7)
    return EmulatorServer(EmulatorConfig(seed=seed, username=SID, password=TOKEN, **switches))


def write_job(
    folder: Path,
    url: str,
    extract: Path,
    *,
    mode: str = "bulk",
    send: str = FAST,
    identity: str = "",
    traits: str = TRAITS,
    source: str = "",
    identifiers: str = IDENTIFIERS,
) -> Path:
    """The job over ``extract``: email, then phone; the seed store's traits; ``mode``."""
    if mode == "patch":
        identity += 'on_unresolved = "create"\n'
    job = folder / "job.toml"
    job.write_text(
        f'name = "bulk-mode"\n[connection]\nbase_url = "{url}"\nstore_id = "{oracle.STORE}"\n'
        f'[source]\npaths = [{json.dumps(str(extract))}]\norder_by = "updated_at"\n{source}'
        f"[identity]\n{identity}{identifiers}{traits}"
        f'[send]\nmode = "{mode}"\n{send}\n'
        f"[output]\ndir = {json.dumps(str(folder / 'out'))}\n"
    )
    return job


def errors(folder: Path) -> list[dict[str, str]]:
    with (folder / "out" / "errors.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def units(out: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(out / "run.sqlite", timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM units ORDER BY seq")]
    finally:
        db.close()


def bulk_requests(emu: EmulatorServer) -> int:
    return sum(emu.stats()["byOperation"].get("profiles.bulk", {}).values())


def expected(extract: Path) -> dict[str, oracle.Person]:
    return oracle.expected_profiles(extract, oracle.seeded_traits())


# ------------------------------------------------------------------------- the oracle holds


@pytest.mark.parametrize("mode", modes(BAD_IDENTIFIER_CELL_BUG))
def test_the_messy_extract_lands_exactly(tmp_path: Path, mode: str) -> None:
    """Duplicate rows per person in no order, any case and spacing, phones in several formats,
    blanks, an invalid phone cell, rows with no usable identifier, one row linked to a seeded
    person only by its phone: the store ends exactly as the oracle says, and errors.csv names
    exactly the bad cells and the unusable rows."""
    extract = oracle.write_extract(tmp_path / "extract.csv", people=40)
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract.path, mode=mode, send=FAST + 'verify = "all"\n')
        result = run_job(job, quiet=True)
        assert oracle.store_differences(emu.url, emu.auth, expected(extract.path)) == []
    lines = {(int(e["row"]), e["outcome"]) for e in errors(tmp_path)}
    assert lines == {(r, "invalid_row") for r in extract.invalid_phone_rows} | {
        (r, "unresolved") for r in extract.no_identifier_rows
    }
    assert result.exit_code == 1  # the rows with no usable identifier did not land
    assert result.summary["units"]["verify_failed"] == 0


@pytest.mark.parametrize("mode", modes({}))
def test_the_extract_without_bad_cells_lands_exactly(tmp_path: Path, mode: str) -> None:
    """The same extract less its bad identifier cells: every mode lands it exactly, exit 0."""
    extract = oracle.write_extract(tmp_path / "extract.csv", people=40, seed=1, bad_cells=False)
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract.path, mode=mode)
        result = run_job(job, quiet=True)
        assert oracle.store_differences(emu.url, emu.auth, expected(extract.path)) == []
    assert result.exit_code == 0, result.text
    assert errors(tmp_path) == []


@pytest.mark.parametrize("mode", modes({}))
def test_a_new_person_linked_only_by_a_phone_in_the_extract(tmp_path: Path, mode: str) -> None:
    """Rows of a person nobody holds yet, keyed by different first identifiers that share a
    phone in the extract, are planned as one person: the latest row wins (Lookup has no
    answer to join them by; link_new_people does)."""
    extract = tmp_path / "extract.csv"
    extract.write_text(
        ",".join(oracle.HEADER) + "\n"
        "nia@example.com,(317) 555-7001,Nia,1,gold,,,2026-02-01T00:00:00Z\n"
        ",317-555-7001,Nina,2,silver,,,2026-01-01T00:00:00Z\n"
    )
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract, mode=mode, send=FAST + 'verify = "all"\n')
        result = run_job(job, quiet=True)
        assert oracle.store_differences(emu.url, emu.auth, expected(extract)) == []
    assert result.exit_code == 0


# -------------------------------------------------------------------- bisection of a refusal


def test_a_batch_over_the_servers_body_cap_is_split_until_it_fits(tmp_path: Path) -> None:
    """A server that caps request bodies (413) below what a full batch weighs: the batch is
    split in halves until each part fits, and every person lands."""
    extract = oracle.write_extract(tmp_path / "extract.csv", people=300, seed=3, bad_cells=False)
    with emulator(tmp_path, max_body_bytes=12_000) as emu:
        job = write_job(tmp_path, emu.url, extract.path)
        result = run_job(job, quiet=True)
        assert oracle.store_differences(emu.url, emu.auth, expected(extract.path)) == []
        bulk = emu.stats()["byOperation"]["profiles.bulk"]
    assert result.exit_code == 0, result.text
    assert bulk.get("413", 0) >= 1 and bulk["202"] >= 2
    assert result.summary["delivery"]["split_requests"] == bulk["413"]


def test_one_refused_profile_among_1000_is_found_by_bisection(tmp_path: Path) -> None:
    """1,000 people in one batch, one with points beyond the store's validationRule: 999
    land, the one is in errors.csv with its file, row and the store's own message, and the
    batch took about 2*log2(1000) bulk requests to find it (counted by the server), not 1,000."""
    emails = [f"p{i:04d}@example.com" for i in range(1000)]
    bad = emails[617]
    extract = tmp_path / "extract.csv"
    with extract.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(oracle.HEADER)
        for n, email in enumerate(emails):
            points = str(oracle.MAX_POINTS + 1) if email == bad else str(n)
            writer.writerow(
                [
                    email,
                    "",
                    f"N{n}",
                    points,
                    "gold",
                    "yes",
                    "a;b",
                    f"2026-01-01T00:00:{n % 60:02d}Z",
                ]
            )
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract, send=FAST + 'verify = "none"\n')
        result = run_job(job, quiet=True)
        requests = bulk_requests(emu)
        people = expected(extract)
        assert people[bad].refused
        assert oracle.store_differences(emu.url, emu.auth, people, lookup=False) == []
        alone = {
            "profiles": [
                {
                    "traits": {
                        "Contact": {"email": bad},
                        "Loyalty": {"points": oracle.MAX_POINTS + 1},
                    }
                }
            ]
        }
        with httpx.Client(base_url=emu.url, auth=emu.auth) as http:
            refusal = http.put(f"/v1/Stores/{oracle.STORE}/Profiles/Bulk", json=alone)
    assert refusal.status_code == 400
    # One batch; each split sends both halves, and the refused profile sits 9 or 10 halvings
    # deep in 1,000.
    depth = math.log2(1000)
    assert 2 * math.floor(depth) + 1 <= requests <= 2 * math.ceil(depth) + 1
    assert result.summary["delivery"]["batches"] == 1
    assert 2 * result.summary["delivery"]["split_requests"] + 1 == requests
    (line,) = errors(tmp_path)
    assert (line["file"], line["row"], line["outcome"], line["status"]) == (
        str(extract),
        "618",
        "failed",
        "400",
    )
    assert refusal.json()["message"] in line["message"]
    assert result.summary["units"]["upserted"] == 999
    assert result.exit_code == 1


# ------------------------------------------------------------------------- kill -9 and faults


def test_kill_9_during_bulk_then_resume_lands_exactly(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """`backfill run` killed -9 while bulk batches are in flight (a slow service, three batches,
    two workers), then run again: the store is exactly the oracle's, exit 0, and only the
    units of the batches in flight at the kill were sent twice."""
    extract = oracle.write_extract(tmp_path / "extract.csv", people=2100, seed=2, bad_cells=False)
    state = tmp_path / "emulator.sqlite"
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env |= {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
    with emulator(tmp_path, latency_ms=300.0, state=state) as emu:
        job = write_job(
            tmp_path, emu.url, extract.path, send='concurrency = 2\nrate = 5000\nverify = "none"\n'
        )
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(proc)
        deadline = time.monotonic() + 60
        while emu.stats()["byOperation"].get("profiles.bulk", {}).get("202", 0) < 1:
            assert proc.poll() is None, "the run ended before a batch landed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)  # the next batch is on its way (300 ms of latency a request)
        assert proc.poll() is None, "the run ended before it was killed"
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        at_kill = units(tmp_path / "out")
        in_flight = [u for u in at_kill if u["state"] == IN_FLIGHT]
        assert in_flight, "no batch was in flight at the kill"
        assert len({u["batch"] for u in in_flight}) <= 2  # one batch per worker
        result = run_job(job, quiet=True)
    assert result.exit_code == 0, result.text
    assert result.summary["resumed"] == len(in_flight)
    assert 0 < result.summary["resent_units"] <= len(in_flight)
    resent = {u["key"] for u in units(tmp_path / "out") if u["claims"] > 1}
    assert resent <= {u["key"] for u in in_flight}
    with EmulatorServer(EmulatorConfig(state=state)) as reader:  # no latency, same store
        people = expected(extract.path)
        assert oracle.store_differences(reader.url, reader.auth, people, lookup=False) == []


def test_faults_change_nothing(tmp_path: Path) -> None:
    """500s, 503s, dropped connections and lost responses (writes applied, answers lost) on
    every request, bisection included: the store ends exactly as the oracle says."""
    extract = oracle.write_extract(
        tmp_path / "extract.csv", people=300, seed=3, bad_cells=False, refused=1
    )
    state = tmp_path / "emulator.sqlite"
    faults = {"fault_rate": 0.1, "drop_rate": 0.08, "lost_response_rate": 0.12}
    with emulator(tmp_path, state=state, random_seed=16, **faults) as emu:
        job = write_job(
            tmp_path,
            emu.url,
            extract.path,
            send='concurrency = 2\nrate = 5000\nmax_attempts = 20\nverify = "none"\n',
        )
        result = run_job(job, quiet=True)
        bulk = emu.stats()["byOperation"]["profiles.bulk"]
    # One batch, bisected one request at a time: with this seed, the bulk requests meet every
    # kind of fault (the emulator's draws repeat; the lookups before take theirs first).
    assert {"500", "503", "dropped", "lost"} <= set(bulk), bulk
    (line,) = errors(tmp_path)
    assert (line["outcome"], line["status"]) == ("failed", "400")
    assert result.exit_code == 1
    with EmulatorServer(EmulatorConfig(state=state)) as reader:  # no faults, same store
        assert oracle.store_differences(reader.url, reader.auth, expected(extract.path)) == []


# ----------------------------------------------------------------------------- the read-back


def simple(folder: Path, n: int) -> Path:
    return oracle.simple_extract(
        folder / "extract.csv",
        [f"s{i:03d}@example.com" for i in range(n)],
        first_name="Sol",
        tier="silver",
    )


@pytest.mark.parametrize(
    ("lag_ms", "wait", "failed"),
    [(300.0, 1.0, 0), (5_000.0, 0.0, 30)],
    ids=["settled", "read-too-soon"],
)
def test_write_lag_is_not_a_difference_once_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lag_ms: float, wait: float, failed: int
) -> None:
    """Writes that show only after a lag are read again after the settle time and match (no
    false verify_failed); read before they show and never again, every person fails."""
    settle(monkeypatch, wait)
    extract = simple(tmp_path, 30)
    with emulator(tmp_path, write_lag_ms=lag_ms) as emu:
        job = write_job(tmp_path, emu.url, extract, send=FAST + 'verify = "all"\n')
        result = run_job(job, quiet=True)
    verify = result.summary["delivery"]["verify"]
    assert (verify["checked"], verify["failed"], verify["unverified"]) == (30, failed, 0)
    assert result.summary["units"]["verify_failed"] == failed
    assert result.exit_code == (1 if failed else 0)


def test_a_store_linked_person_is_verify_failed_and_retried(tmp_path: Path) -> None:
    """The seed holds Tia with her email and phone; one row names her by email (later, gold),
    one by phone (earlier, silver). Only the store knows they are one person, so the body sent
    last wins: the read-back reports exactly those two rows as verify_failed, `retry` sends
    exactly their units again, and reconcile --fix repairs the profile."""
    email, phone, _ = oracle.SEEDED[1]
    extract = tmp_path / "extract.csv"
    rows = [f"s{i:03d}@example.com,,Sol,1,silver,,,2026-01-01T00:00:00Z" for i in range(20)]
    rows += [
        f"{email.upper()},,Tia,3,gold,,,2026-03-01T00:00:00Z",
        f",{phone},Tee,2,silver,,,2026-02-01T00:00:00Z",
    ]
    extract.write_text(",".join(oracle.HEADER) + "\n" + "\n".join(rows) + "\n")
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract, send=FAST + 'verify = "all"\n')
        first = run_job(job, quiet=True)
        failed = {(e["row"], e["outcome"]) for e in errors(tmp_path)}
        assert failed == {("21", "verify_failed"), ("22", "verify_failed")}
        assert "Loyalty.tier is silver (latest row: gold)" in errors(tmp_path)[0]["message"]
        assert first.exit_code == 1

        before = bulk_requests(emu)
        again = retry(job, quiet=True)
        assert bulk_requests(emu) == before + 1
        assert again.summary["units"]["sent_this_run"] == 2
        sent_twice = {u["key"] for u in units(tmp_path / "out") if u["claims"] == 2}
        assert sent_twice == {f"new:email {email}#0", f"new:phone {phone}#0"}
        assert again.summary["units"]["verify_failed"] == 2  # the same order, the same winner

        people = expected(extract)
        assert people[email].traits["Loyalty"]["tier"] == "gold"
        assert oracle.store_differences(emu.url, emu.auth, people) == [
            f"{email}: Contact.firstName = 'Tee', expected 'Tia'",
            f"{email}: Loyalty.points = 2, expected 3.0",
            f"{email}: Loyalty.tier = 'silver', expected 'gold'",
        ]
        fixed = reconcile(job, fix=True, quiet=True)
        assert fixed.summary["fix"]["units"]["updated"] == 1, fixed.text
        assert reconcile(job, quiet=True).exit_code == 0
        assert oracle.store_differences(emu.url, emu.auth, people) == []


@pytest.mark.parametrize(("verify", "read"), [("none", 0), ("sample", 100), ("all", 150)])
def test_verify_reads_back_none_a_sample_or_all(tmp_path: Path, verify: str, read: int) -> None:
    """The read-back's cost in requests: a Lookup and a GET per person read; none at all after
    the bulk requests with verify = "none" (no other step of this job reads profiles)."""
    extract = simple(tmp_path, 150)
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract, send=FAST + f'verify = "{verify}"\n')
        result = run_job(job, quiet=True)
        ops = emu.stats()["byOperation"]
    assert result.exit_code == 0
    assert sum(ops["profiles.bulk"].values()) == 1
    assert ops.get("profiles.lookup", {}).get("200", 0) == read
    assert ops.get("profiles.fetch", {}).get("200", 0) == read
    assert set(ops) <= {"profiles.bulk", "profiles.lookup", "profiles.fetch", "traitGroups.fetch"}


# --------------------------------------------------------------------------------- reconcile


def test_reconcile_of_a_bulk_job_finds_exact_differences_and_fix_repairs(tmp_path: Path) -> None:
    """Edits made through the API after a bulk run are found exactly, each with the source row
    behind the expected value; --fix sends them and the next reconcile is clean."""
    extract = oracle.write_extract(tmp_path / "extract.csv", people=30, seed=4, bad_cells=False)
    people = expected(extract.path)
    with_tier = sorted(e for e, p in people.items() if "tier" in p.traits.get("Loyalty", {}))
    with_name = sorted(e for e, p in people.items() if "firstName" in p.traits.get("Contact", {}))
    changed, emptied = with_tier[0], next(e for e in with_name if e != with_tier[0])
    other_tier = next(t for t in oracle.TIERS if t != people[changed].traits["Loyalty"]["tier"])
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract.path)
        assert run_job(job, quiet=True).exit_code == 0
        base = f"/v1/Stores/{oracle.STORE}/Profiles"
        ids: dict[str, str] = {}
        with httpx.Client(base_url=emu.url, auth=emu.auth) as http:
            for email in (changed, emptied):
                (ids[email],) = http.post(
                    f"{base}/Lookup", json={"idType": "email", "value": email}
                ).json()["profiles"]
            edits = {
                changed: {"Loyalty": {"tier": other_tier}},
                emptied: {"Contact": {"firstName": None}},
            }
            for email, traits in edits.items():
                assert (
                    http.patch(f"{base}/{ids[email]}", json={"traits": traits}).status_code == 202
                )

        found = reconcile(job, quiet=True)
        reported = pl.read_csv(tmp_path / "out" / "reconcile" / "reconcile.csv", infer_schema=False)
        assert found.exit_code == 1
        assert set(
            reported.select("profile_id", "group", "trait", "actual", "row", "kind").iter_rows()
        ) == {
            (
                ids[changed],
                "Loyalty",
                "tier",
                other_tier,
                str(people[changed].rows["Loyalty.tier"]),
                "differs",
            ),
            (
                ids[emptied],
                "Contact",
                "firstName",
                None,
                str(people[emptied].rows["Contact.firstName"]),
                "missing_in_memory",
            ),
        }
        assert set(reported.get_column("file")) == {str(extract.path)}

        fixed = reconcile(job, fix=True, quiet=True)
        assert fixed.summary["fix"]["units"]["updated"] == 2
        clean = reconcile(job, quiet=True)
        assert clean.exit_code == 0, clean.text
        assert oracle.store_differences(emu.url, emu.auth, people) == []


# ---------------------------------------------------------------------------- the job check


EMAIL_ONLY = IDENTIFIERS.split("[[identity.identifiers]]")[1]
EXTRA_TRAITS = "".join(  # 94 more traits: 101 with the job's 7
    f"[traits.G{g}]\n" + "".join(f't{i} = "first_name"\n' for i in range(47)) for g in range(2)
)
REFUSALS = {  # name: (mode, write_job's changes, the key the message must name)
    "profile_id_column": (
        "bulk",
        {"identity": 'profile_id_column = "email"\n'},
        "identity.profile_id_column",
    ),
    "identity_map": ("bulk", {"identity": 'identity_map = "map.csv"\n'}, "identity.identity_map"),
    "on_unresolved_report": (
        "bulk",
        {"identity": 'on_unresolved = "report"\n'},
        "identity.on_unresolved",
    ),
    "on_ambiguous_report": (
        "bulk",
        {"identity": 'on_ambiguous = "report"\n'},
        "identity.on_ambiguous",
    ),
    "identifier_not_a_trait": (
        "bulk",
        {"traits": TRAITS.replace('phone = "phone"\n', "")},
        "column 'phone'",
    ),
    "source_nulls_delete": ("bulk", {"source": 'nulls = "delete"\n'}, "source.nulls"),
    "trait_nulls_delete": (
        "bulk",
        {"traits": TRAITS.replace('tier = "tier"', 'tier = { column = "tier", nulls = "delete" }')},
        "traits.Loyalty.tier",
    ),
    "import_1_trait": (
        "import",
        {
            "traits": '[traits.Contact]\nemail = "email"\n',
            "identifiers": "[[identity.identifiers]]" + EMAIL_ONLY,
        },
        "traits: ",
    ),
    "import_101_traits": ("import", {"traits": TRAITS + EXTRA_TRAITS}, "traits: "),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_job_check_refuses_what_the_store_cannot_resolve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Each refusal names the key, exits 2 before any request, and leaves no output folder."""
    mode, change, key = REFUSALS[name]
    extract = simple(tmp_path, 3)
    with emulator(tmp_path) as emu:
        job = write_job(tmp_path, emu.url, extract, mode=mode, **change)
        assert main(["run", str(job)]) == 2
        requests = emu.stats()["requests"]
    err = capsys.readouterr().err
    assert err.startswith(f"backfill: error: {job}: "), err
    assert key in err, err
    assert requests == 0
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ the loop


class _Recording:
    """A delivery of three units a batch that records what it is handed; ``crash`` makes the
    second batch it is handed fail while the first hangs, as a process killed mid-send."""

    limits = Limits(units=3)

    def __init__(self, crash: bool) -> None:
        self.crash = crash
        self.batches: list[Batch] = []

    async def start(self) -> None:
        pass

    async def send(self, batch: Batch) -> list[Result]:
        self.batches.append(batch)
        if self.crash:
            if len(self.batches) == 2:
                raise _Crash
            await anyio.sleep_forever()
        return [Result(u.seq, DONE, "upserted", 202, None, None, 1, None) for u in batch.units]

    def summary(self) -> dict[str, Any]:
        return {}


class _Crash(Exception):
    """The process dying between a claim and its answer."""


def _claims(batches: Sequence[Batch]) -> dict[int, list[int]]:
    return {b.id: [u.seq for u in b.units] for b in batches}


def _planned(folder: Path, keys: list[str]) -> Path:
    """plan.parquet with a unit per key, each a person for the store to resolve."""
    path = folder / "plan.parquet"
    n = len(keys)
    pl.DataFrame(
        {
            "key": keys,
            "profile_id": pl.Series([None] * n, dtype=pl.String),
            "action": ["upsert"] * n,
            "body": ['{"traits":{}}'] * n,
            "hash": ["h"] * n,
            "rows": [1] * n,
        }
    ).write_parquet(path)
    return path


def _two_workers(folder: Path) -> Job:
    return load_job(
        write_job(folder, "http://127.0.0.1:9", folder / "x.csv", send="concurrency = 2\n")
    )


@pytest.mark.anyio
async def test_a_batch_cut_off_by_a_crash_comes_back_whole_under_its_id(tmp_path: Path) -> None:
    """Two workers claim two batches of three; the session dies with both in flight. After
    reset_in_flight, the next session is handed exactly those units again, under the same
    Batch.id each, before any fresh batch, whose IDs follow the old ones."""
    db = RunDB(tmp_path / "run.sqlite")
    db.replace_units(_planned(tmp_path, [f"new:email u{i}@example.com#0" for i in range(10)]))
    job = _two_workers(tmp_path)
    crashing = _Recording(crash=True)
    with pytest.raises(ExceptionGroup) as caught:  # the loop's task groups wrap it
        await deliver(job, db, lambda run: crashing, stop=anyio.Event())
    assert caught.group_contains(_Crash)
    cut_off = _claims(crashing.batches)
    assert sorted(cut_off) == [1, 2]
    assert sorted(s for seqs in cut_off.values() for s in seqs) == [1, 2, 3, 4, 5, 6]
    assert db.counts()[IN_FLIGHT] == 6

    assert db.reset_in_flight() == 6
    assert (db.counts()[PENDING], db.counts()[IN_FLIGHT]) == (10, 0)
    resumed = _Recording(crash=False)
    await deliver(job, db, lambda run: resumed, stop=anyio.Event())
    handed = _claims(resumed.batches)
    assert {i: handed[i] for i in cut_off} == cut_off
    assert [b.id for b in resumed.batches[:2]] in ([1, 2], [2, 1])
    assert sorted(handed) == [1, 2, 3, 4]  # then 7-9 and 10, as fresh batches
    assert sorted(s for i in (3, 4) for s in handed[i]) == [7, 8, 9, 10]
    assert all(u.batch == b.id for b in resumed.batches[:2] for u in b.units)
    assert db.counts()[DONE] == 10
    assert db.counts()["resent"] == 6
    db.close()


def test_a_failed_read_back_fails_that_persons_units_only(tmp_path: Path) -> None:
    """A trim identifier may hold '#' (customer numbers like cust#42); the read-back failing
    one person must not fail another whose key starts with theirs and a '#'."""
    with RunDB(tmp_path / "run.sqlite") as db:
        db.replace_units(_planned(tmp_path, ["new:user_id cust#0", "new:user_id cust#42#0"]))
        db.record([], [(1, [1, 2])])
        db.record([Result(seq, DONE, "upserted", 202, None, None, 1, None) for seq in (1, 2)], [])
        assert db.landed_targets() == ["new:user_id cust", "new:user_id cust#42"]
        assert db.fail_targets("verify_failed", {"new:user_id cust": "read back: differs"}) == 1
        assert (db.counts()["outcome:verify_failed"], db.counts()["outcome:upserted"]) == (1, 1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
