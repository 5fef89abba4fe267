"""Creates happen once: lost responses, kill -9 mid-create and creates split in chunks never
make a second profile for one person, counted over the API.

The store here matches profiles by phone only, so a POST re-sent for an email-only person
makes a second profile (``test_the_store_would_duplicate_a_resent_create`` shows it): the
only thing between a lost response and a duplicate is delivery asking Lookup first.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3  # noqa: TID251 - the test reads the checkpoint the way an operator would
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.pipeline import run as run_job
from backfill.plan import units as plan_module

ROOT = Path(__file__).parents[1]
STORE = "mem_store_01jcreate00000000000000000"
SID, TOKEN = "AC00000000000000000000000000000000", "emulator"
CREDENTIAL_VARIABLES = ("TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID",
                        "TWILIO_AUTH_TOKEN")  # fmt: skip
SEED: dict[str, Any] = {
    "stores": [
        {
            "id": STORE,
            "displayName": "creates",
            "description": "Matches by phone only: an email-only create re-sent is a duplicate.",
            "identityResolutionSettings": {
                "identifierConfigs": [
                    {"idType": "email", "normalization": "email", "enforceUnique": False},
                    {"idType": "phone", "normalization": "phone"},
                ],
                "matchingRules": ["phone"],
            },
            "traitGroups": [
                {
                    "displayName": "Contact",
                    "description": "Who.",
                    "traits": {
                        "email": {"dataType": "STRING", "idTypePromotion": "email"},
                        "firstName": {"dataType": "STRING"},
                    },
                },
                {
                    "displayName": "Loyalty",
                    "description": "Tiers.",
                    "traits": {"tier": {"dataType": "STRING"}},
                },
            ],
            "profiles": [],
        }
    ]
}


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)


def people(n: int) -> dict[str, tuple[str, str]]:
    """n people the store does not know: email -> (first name, tier)."""
    tiers = ("bronze", "silver", "gold")
    return {f"person{i:03d}@example.com": (f"P{i}", tiers[i % 3]) for i in range(n)}


def write_job(folder: Path, url: str, who: dict[str, tuple[str, str]], send: str) -> Path:
    seed = folder / "seed.json"
    seed.write_text(json.dumps(SEED))
    data = folder / "people.csv"
    data.write_text(
        "email,first_name,tier,updated_at\n"
        + "".join(f"{e.upper()},{n},{t},2026-01-01\n" for e, (n, t) in who.items())
    )
    job = folder / "job.toml"
    job.write_text(
        f'name = "creates"\n[connection]\nbase_url = "{url}"\nstore_id = "{STORE}"\n'
        f'[source]\npaths = [{json.dumps(str(data))}]\norder_by = "updated_at"\n'
        '[identity]\nlookup = true\non_unresolved = "create"\n'
        '[[identity.identifiers]]\ncolumn = "email"\nid_type = "email"\nnormalization = "email"\n'
        '[traits.Contact]\nemail = "email"\nfirstName = "first_name"\n'
        '[traits.Loyalty]\ntier = "tier"\n'
        f"[send]\n{send}\n[output]\ndir = {json.dumps(str(folder / 'out'))}\n"
    )
    return job


def emulator(folder: Path, **faults: Any) -> EmulatorServer:
    seed = folder / "seed.json"
    seed.write_text(json.dumps(SEED))
    return EmulatorServer(EmulatorConfig(seed=seed, username=SID, password=TOKEN, **faults))


def profiles_by_email(url: str, emails: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per email, every profile holding it (Lookup answers them all: email is not unique
    here), with its traits."""
    found: dict[str, list[dict[str, Any]]] = {}
    base = f"/v1/Stores/{STORE}/Profiles"
    with httpx.Client(base_url=url, auth=(SID, TOKEN), timeout=30) as http:
        for email in emails:
            reply = http.post(f"{base}/Lookup", json={"idType": "email", "value": email})
            assert reply.status_code == 200, reply.text
            found[email] = [http.get(f"{base}/{p}").json()["traits"] for p in
                            reply.json()["profiles"]]  # fmt: skip
    return found


def assert_each_person_once(url: str, who: dict[str, tuple[str, str]]) -> None:
    found = profiles_by_email(url, sorted(who))
    duplicated = {e: len(p) for e, p in found.items() if len(p) != 1}
    assert duplicated == {}, f"profiles per email: {duplicated}"
    for email, (name, tier) in who.items():
        (traits,) = found[email]
        assert traits == {
            "Contact": {"email": email.upper(), "firstName": name},
            "Loyalty": {"tier": tier},
        }


def units(out: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(out / "run.sqlite", timeout=30)
    try:
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM units ORDER BY seq")]
        except sqlite3.OperationalError as exc:  # killed before the schema existed
            assert "no such table" in str(exc)
            return []
    finally:
        db.close()


def test_the_store_would_duplicate_a_resent_create(tmp_path: Path) -> None:
    """The premise: this store makes a second profile when the same create is POSTed twice,
    so the tests below would see any create sent twice."""
    with emulator(tmp_path) as emu:
        body = {"traits": {"Contact": {"email": "twice@example.com"}}}
        with httpx.Client(base_url=emu.url, auth=(SID, TOKEN)) as http:
            ids = {http.post(f"/v1/Stores/{STORE}/Profiles", json=body).json()["id"]
                   for _ in range(2)}  # fmt: skip
        assert len(ids) == 2
        assert len(profiles_by_email(emu.url, ["twice@example.com"])["twice@example.com"]) == 2


def test_lost_create_responses_make_no_second_profile(tmp_path: Path) -> None:
    """A third of the writes are applied and their answer lost: every person still ends with
    exactly one profile, and every create unit is reported created."""
    who = people(40)
    with emulator(tmp_path, lost_response_rate=0.35, random_seed=3) as emu:
        job = write_job(tmp_path, emu.url, who, "concurrency = 8\nrate = 5000\n")
        result = run_job(job, quiet=True)
        stats = emu.stats()
        assert_each_person_once(emu.url, who)
    assert stats["byOperation"]["profiles.create"].get("lost", 0) > 5, stats["byOperation"]
    assert result.exit_code == 0
    assert result.summary["units"]["created"] == len(who)
    got = units(tmp_path / "out")
    assert len({u["sent_to"] for u in got}) == len(who)


def test_creates_split_in_chunks_land_on_one_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one trait group a request, each person is two units: the first creates, the second
    PATCHes the profile it made (alone, a POST of Loyalty.tier would not even be accepted: it
    promotes no identifier). Lost responses change nothing."""
    chunk_traits = plan_module.chunk_traits
    monkeypatch.setattr(plan_module, "chunk_traits",
                        lambda traits, **kw: chunk_traits(traits, max_groups=1, **kw))  # fmt: skip
    who = people(20)
    with emulator(tmp_path, lost_response_rate=0.3, random_seed=5) as emu:
        job = write_job(tmp_path, emu.url, who, "concurrency = 8\nrate = 5000\n")
        result = run_job(job, quiet=True)
        assert_each_person_once(emu.url, who)
    assert result.exit_code == 0
    got = units(tmp_path / "out")
    assert len(got) == 2 * len(who)
    by_target: dict[str, list[dict[str, Any]]] = {}
    for unit in got:
        by_target.setdefault(unit["key"].rpartition("#")[0], []).append(unit)
    for target, (first, second) in by_target.items():
        assert (first["outcome"], second["outcome"]) == ("created", "updated"), target
        assert first["sent_to"] == second["sent_to"] is not None


def test_kill_9_during_creates_makes_no_second_profile(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """`backfill run` killed -9 again and again while it creates people (the service slow
    enough that creates are in flight), then run to the end: one profile per person."""
    rng = random.Random(20261202)
    who = people(120)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env |= {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
    with emulator(tmp_path, latency_ms=40.0) as emu:
        job = write_job(tmp_path, emu.url, who, "concurrency = 8\nrate = 60\n")
        for _ in range(4):
            before = emu.stats()["byOperation"].get("profiles.create", {}).get("202", 0)
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(proc)
            deadline = time.monotonic() + 60
            while emu.stats()["byOperation"].get("profiles.create", {}).get("202", 0) <= before:
                assert proc.poll() is None, "the run ended before it was killed"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(rng.uniform(0.05, 0.4))
            assert proc.poll() is None, "the run ended before it was killed"
            proc.kill()
            assert proc.wait(30) == -signal.SIGKILL
        assert run_job(job, quiet=True).exit_code == 0
        assert_each_person_once(emu.url, who)
    got = units(tmp_path / "out")
    assert {u["outcome"] for u in got} == {"created"}
    assert any(u["claims"] > 1 for u in got), "no create was in flight at a kill"
