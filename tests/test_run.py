"""`backfill run` end to end: the sample job delivered to an emulator, then checked against the
generator's oracle (sample_data/expected_plan.json) profile by profile, under faults and
throttling, SIGKILL at random points, 401s, Ctrl-C, the lock and a changed input."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import random
import re
import shutil
import signal
import sqlite3  # noqa: TID251 - the test reads the checkpoint the way an operator would
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backfill.cli import main
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.files import EMULATOR_STATE
from backfill.pipeline import plan as plan_job
from backfill.pipeline import run as run_job
from backfill.targets import memory_schema as schema
from store_reads import profile_ids

ROOT = Path(__file__).parents[1]
SAMPLE_JOB = ROOT / "jobs" / "sample_backfill.toml"
SAMPLE_CSV = ROOT / "sample_data" / "customers.csv"
SEED_PATH = ROOT / "sample_data" / "emulator_seed.json"
EXPECTED: dict[str, Any] = json.loads((ROOT / "sample_data" / "expected_plan.json").read_text())
SEED: dict[str, Any] = json.loads(SEED_PATH.read_text())

Traits = dict[str, dict[str, Any]]  # group -> trait -> value
State = dict[str, Traits]  # live profile ID -> traits
Allowed = dict[str, dict[str, dict[str, list[Any]]]]  # ... -> the values a trait may end with

STORE: str = SEED["stores"][0]["id"]
SEEDED: dict[str, dict[str, Any]] = {p["id"]: p for p in SEED["stores"][0]["profiles"]}
PROFILE_TRAITS: dict[str, Traits] = EXPECTED["profile_traits"]
MERGED, CANONICAL = next((pid, p["mergedInto"]) for pid, p in SEEDED.items() if "mergedInto" in p)
MISSING = sorted(set(PROFILE_TRAITS) - set(SEEDED))
UNITS = len(PROFILE_TRAITS)  # one unit per target profile
UPDATED = UNITS - len(MISSING)

SID, TOKEN = "AC00000000000000000000000000000000", "emulator"
CREDENTIAL_VARIABLES = ("TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID",
                        "TWILIO_AUTH_TOKEN")  # fmt: skip
FAST = "concurrency = 8\nrate = 5000\n"  # an unthrottled emulator: keep the test fast


# ------------------------------------------------------------------------------ helpers


def write_job(
    path: Path, out: Path, send: str, base_url: str = "emulator", source: Path | None = None
) -> Path:
    """The sample job with another target, [send] table and output folder (paths stay
    relative to the repo root, where every run of this module happens)."""
    text = SAMPLE_JOB.read_text()
    head, sep, _ = text.partition("\n[send]\n")
    assert sep, "the sample job has no [send] table at its end"
    if base_url != "emulator":
        head, n = re.subn(r'(?m)^base_url = "emulator".*$', f"base_url = {json.dumps(base_url)}",
                          head)  # fmt: skip
        assert n == 1
        head, n = re.subn(r"(?m)^seed = .*\n", "", head)
        assert n == 1
    if source is not None:
        head, n = re.subn(r"(?m)^paths = .*$", f"paths = [{json.dumps(str(source))}]", head)
        assert n == 1
    path.write_text(f"{head}\n[send]\n{send}\n[output]\ndir = {json.dumps(str(out))}\n")
    return path


def credentials(token: str = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    return env | {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": token}


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Job paths are relative to where backfill runs: the repo root; credentials are ours."""
    monkeypatch.chdir(ROOT)
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)


def start_run(
    job: Path, processes: list[subprocess.Popen[bytes]], log: Path
) -> subprocess.Popen[bytes]:
    """`backfill run JOB --quiet` as a process of its own, so it can be killed."""
    with log.open("ab") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
            cwd=ROOT,
            env=credentials(),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    processes.append(proc)
    return proc


@dataclass
class ExternalEmulator:
    """`backfill emulator` as a process of its own, its state in a file."""

    proc: subprocess.Popen[bytes]
    url: str
    state: Path

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/__emulator__/stats", timeout=30).json()
        return data


@contextmanager
def external_emulator(folder: Path, *options: str) -> Iterator[ExternalEmulator]:
    state = folder / "emulator-state.sqlite"
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "backfill", "emulator", "--port", "0", "--seed", str(SEED_PATH),
         "--state", str(state), *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\s*", line)
        assert match, f"the emulator did not start: {line!r}"
        yield ExternalEmulator(proc, match.group(1), state)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def fetch_state(url: str, auth: tuple[str, str]) -> State:
    """Every live profile of the sample store and its traits, over the API; the merged-away
    profile answers 301 to its canonical one, the IDs that never existed 404."""
    base = f"/v1/Stores/{STORE}/Profiles"
    with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
        ids = profile_ids(http, STORE)
        state: State = {}
        for pid in ids:
            reply = http.get(f"{base}/{pid}")
            assert reply.status_code == 200, reply.text
            state[pid] = reply.json()["traits"]
        moved = http.get(f"{base}/{MERGED}")
        assert moved.status_code == 301
        assert moved.headers["Canonical-Profile-Id"] == CANONICAL
        for pid in MISSING:
            assert http.get(f"{base}/{pid}").status_code == 404
    return state


def read_state_file(path: Path) -> State:
    """The store as an emulator state file holds it (the emulator that wrote it has stopped)."""
    with EmulatorServer(EmulatorConfig(state=path)) as emu:
        return fetch_state(emu.url, emu.auth)


def allowed_state(seed: State) -> Allowed:
    """The oracle: the seed, with every planned trait set on its target profile. The
    merged-away profile's traits land on its canonical one; where both units set a trait, the
    later row's value (the generator's ``after_merges``), whichever unit was sent first."""
    allowed: Allowed = {
        pid: {g: {t: [v] for t, v in traits.items()} for g, traits in groups.items()}
        for pid, groups in seed.items()
    }
    for pid, groups in PROFILE_TRAITS.items():
        if pid in seed:
            for group, traits in groups.items():
                for trait, value in traits.items():
                    allowed[pid].setdefault(group, {})[trait] = [value]
    for group, traits in EXPECTED["after_merges"][CANONICAL].items():
        for trait, value in traits.items():
            allowed[CANONICAL].setdefault(group, {})[trait] = [value]
    return allowed


def wrong_profiles(state: State, allowed: Allowed) -> list[str]:
    """Where ``state`` differs from the oracle (empty when every profile is as it must be)."""
    wrong = [f"{pid}: missing" for pid in sorted(set(allowed) - set(state))]
    wrong += [f"{pid}: unexpected" for pid in sorted(set(state) - set(allowed))]
    for pid in sorted(set(state) & set(allowed)):
        got, want = state[pid], allowed[pid]
        shape = {g: sorted(t) for g, t in got.items() if t}
        if shape != {g: sorted(t) for g, t in want.items() if t}:
            wrong.append(f"{pid}: traits {shape}, expected {want}")
            continue
        wrong += [
            f"{pid}: {g}.{t} = {v!r}, expected one of {want[g][t]!r}"
            for g, traits in got.items()
            for t, v in traits.items()
            if v not in want[g][t]
        ]
    return wrong


def assert_same_store(state: State, clean: State) -> None:
    """Profile by profile equal to the clean run's store, the merge's canonical profile too."""
    assert sorted(state) == sorted(clean)
    differ = [pid for pid in state if state[pid] != clean[pid]]
    assert differ == []


def units(out: Path) -> list[dict[str, Any]]:
    """The checkpoint's units, read as an operator would (the run may still hold it open)."""
    path = out / "run.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM units ORDER BY seq").fetchall()
        except sqlite3.OperationalError as exc:  # killed before the schema existed
            assert "no such table" in str(exc)
            return []
        return [dict(row) for row in rows]
    finally:
        db.close()


def states(out: Path) -> Counter[str]:
    return Counter(u["state"] for u in units(out))


def assert_all_delivered(out: Path) -> None:
    """Every unit done, but the two whose profile never existed: failed, profile_not_found."""
    got = units(out)
    assert len(got) == UNITS
    assert [u["key"] for u in got if u["state"] != "done"] == [f"{p}#0" for p in MISSING]
    assert {u["outcome"] for u in got if u["state"] == "done"} == {"updated"}
    assert {(u["state"], u["outcome"]) for u in got if u["state"] != "done"} == {
        ("failed", "profile_not_found")
    }


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def patch_answers(stats: dict[str, Any]) -> dict[str, int]:
    answers: dict[str, int] = stats["byOperation"].get("profiles.patch", {})
    return answers


def patches_202(emu: EmulatorServer) -> int:
    """PATCHes the emulator accepted so far."""
    return int(patch_answers(emu.stats()).get("202", 0))


def wait_until_delivering(emu: EmulatorServer, proc: subprocess.Popen[bytes], after: int) -> None:
    """Until the emulator accepts PATCHes beyond ``after`` (watched from outside: the run's
    checkpoint is the run's own business)."""
    deadline = time.monotonic() + 60
    while patches_202(emu) <= after:
        assert proc.poll() is None, "the run ended before it was interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def expected_errors() -> set[tuple[str, str]]:
    """(row, outcome) of every source row that cannot land, from the oracle and the extract."""
    rows = {(row, "invalid_row") for row in EXPECTED["invalid"]}
    rows |= {
        (row, outcome)
        for row, outcome in EXPECTED["row_outcomes"].items()
        if outcome in ("unresolved", "ambiguous", "conflict")
    }
    with SAMPLE_CSV.open(newline="", encoding="utf-8") as f:
        rows |= {
            (str(n), "profile_not_found")
            for n, record in enumerate(csv.DictReader(f), start=1)
            if record["profile_id"].strip() in MISSING
        }
    return rows


def plan_counts(run_summary: dict[str, Any]) -> dict[str, Any]:
    """The plan's outcome counts from a summary.json (not its timing or lookup cache hits)."""
    skip = {"seconds", "lookups_asked", "lookups_cached"}
    return {k: v for k, v in run_summary["plan"].items() if k not in skip}


def with_lookups(cache: Path, out: Path) -> Path:
    """A fresh output folder whose run.sqlite already holds every Lookup answer of the sample
    store, so a run's own plan asks none and its time goes to delivery (a plan's lookups are
    not rate-adaptive: against a slow service they crawl)."""
    out.mkdir(mode=0o700)
    shutil.copy2(cache, out / "run.sqlite")
    return out


# ----------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class CleanRun:
    job: Path
    out: Path
    exit_code: int
    summary: dict[str, Any]
    errors: list[dict[str, str]]
    modes: dict[str, int]
    state: State


@pytest.fixture(scope="module")
def seed_state() -> State:
    """The sample store before any run."""
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        return fetch_state(emu.url, emu.auth)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> CleanRun:
    """The sample job run once, in-process, against the embedded emulator, with no fault."""
    folder = tmp_path_factory.mktemp("clean")
    out = folder / "out"
    job = write_job(folder / "job.toml", out, FAST)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        result = run_job(job, quiet=True)
    with (out / "errors.csv").open(newline="", encoding="utf-8") as f:
        errors = list(csv.DictReader(f))
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.iterdir()]}
    return CleanRun(
        job,
        out,
        result.exit_code,
        summary(out),
        errors,
        modes,
        read_state_file(out / "emulator.sqlite"),
    )


@pytest.fixture(scope="module")
def lookup_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run.sqlite of a plan of the sample job against an emulator of the same store: the
    Lookup answers, and no unit."""
    folder = tmp_path_factory.mktemp("lookups")
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu, pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("TWILIO_ACCOUNT_SID", SID)
        mp.setenv("TWILIO_AUTH_TOKEN", TOKEN)
        job = write_job(folder / "job.toml", folder / "out", FAST, base_url=emu.url)
        result = plan_job(job, quiet=True)
    assert result.summary.lookups_failed == 0
    assert result.summary.requests == UNITS
    assert not (folder / "out" / "run.sqlite-wal").exists()
    return folder / "out" / "run.sqlite"


# -------------------------------------------------------------------------------- tests


def test_sample_run_lands_exactly_the_expected_profiles(
    clean_run: CleanRun, seed_state: State
) -> None:
    """A sample run leaves every profile as the oracle says and reports what did not land."""
    assert MERGED not in seed_state and CANONICAL in seed_state
    allowed = allowed_state(seed_state)
    assert len(wrong_profiles(seed_state, allowed)) > UPDATED // 2  # the plan changes things
    assert wrong_profiles(clean_run.state, allowed) == []
    assert_all_delivered(clean_run.out)

    s = clean_run.summary
    assert clean_run.exit_code == s["exit_code"] == 1
    assert s["units"] == {
        "total": UNITS,
        "sent_this_run": UNITS,
        "updated": UPDATED,
        "created": 0,
        "upserted": 0,
        "imported": 0,
        "profile_not_found": len(MISSING),
        "failed": 0,
        "verify_failed": 0,
        "skipped_unchanged": 0,
        "pending": 0,
        "in_flight": 0,
    }
    assert s["remaps"] == 1
    assert s["resumed"] == s["resent_units"] == 0

    errors = clean_run.errors
    lines = [(e["row"], e["outcome"]) for e in errors]
    assert len(lines) == len(set(lines)), "a (row, outcome) is listed twice"
    assert set(lines) == expected_errors()
    lost = {e["row"] for e in errors if e["outcome"] != "invalid_row"}
    in_part = {e["row"] for e in errors} - lost
    assert s["rows"]["not_landed"] == len(lost)
    assert s["rows"]["landed_in_part"] == len(in_part)
    assert s["rows"]["not_sent_yet"] == 0
    assert s["rows"]["landed"] + len(lost) + len(in_part) == s["rows"]["read"] == 2000
    assert s["rows"]["lines"] == dict(sorted(Counter(e["outcome"] for e in errors).items()))
    assert {e["file"] for e in errors} == {"sample_data/customers.csv"}
    not_found = [e for e in errors if e["outcome"] == "profile_not_found"]
    assert sorted(e["profile_id"] for e in not_found) == MISSING
    assert {(e["status"], e["code"]) for e in not_found} == {("404", "20404")}

    assert clean_run.modes.pop("out") == 0o700
    assert {"errors.csv", "summary.json", "report.md", "run.sqlite"} <= set(clean_run.modes)
    assert {name: mode for name, mode in clean_run.modes.items() if mode != 0o600} == {}


def test_faults_and_throttling_end_in_the_same_store(
    lookup_cache: Path, tmp_path: Path, clean_run: CleanRun, seed_state: State
) -> None:
    """500/503s, dropped connections, lost responses and 429s change nothing in the end state."""
    out = with_lookups(lookup_cache, tmp_path / "out")
    faults = ["--fault-rate", "0.1", "--drop-rate", "0.02", "--lost-response-rate", "0.02",
              "--rate", "150", "--random-seed", "1"]  # fmt: skip
    with external_emulator(tmp_path, *faults) as emu:
        send = "concurrency = 16\nrate = 400\nadaptive = true\n"  # faster than the service
        job = write_job(tmp_path / "job.toml", out, send, base_url=emu.url)
        assert main(["run", str(job), "--quiet"]) == 1
        stats = emu.stats()
    state = read_state_file(emu.state)

    assert stats["rateLimited"] > 0
    assert stats["faults"]["drop"] > 0 and stats["faults"]["lostResponse"] > 0
    assert wrong_profiles(state, allowed_state(seed_state)) == []
    assert_same_store(state, clean_run.state)
    assert_all_delivered(out)
    s = summary(out)
    assert s["exit_code"] == 1
    assert plan_counts(s) == plan_counts(clean_run.summary)
    assert (s["units"]["updated"], s["units"]["profile_not_found"]) == (UPDATED, len(MISSING))
    assert s["remaps"] == 1
    assert s["requests"]["retries"] > 0
    assert s["requests"]["throttled"] > 0
    assert s["requests"]["transport_errors"] > 0
    # What the throttle did: it met the 150/s limit and said so (summary and report). Not
    # the final rate: a run that ends after a clean plateau has probed back to its ceiling.
    throttle = s["throttle"]
    assert throttle["events"] >= 1
    assert throttle["concurrency"]["configured"] == 16
    assert 1 <= throttle["concurrency"]["final"] <= 16
    assert "| throttle | " in (out / "report.md").read_text()


def test_sigkill_at_random_points_loses_nothing(
    lookup_cache: Path,
    tmp_path: Path,
    clean_run: CleanRun,
    seed_state: State,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """kill -9 anywhere, then run again: the same store, and only in-flight units re-sent."""
    rng = random.Random(20250611)
    concurrency, kills, rate = 8, 4, 150
    out, log = with_lookups(lookup_cache, tmp_path / "out"), tmp_path / "runs.log"
    seen: list[tuple[str, Counter[str]]] = []
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        send = f"concurrency = {concurrency}\nrate = {rate}\n"  # delivery lasts a few seconds
        job = write_job(tmp_path / "job.toml", out, send, base_url=emu.url)
        # the first while starting or planning, the second while delivering, the others anywhere
        whens = [
            "from start",
            "delivering",
            *rng.choices(["from start", "delivering"], k=kills - 2),
        ]
        for when in whens:
            before = patches_202(emu)
            proc = start_run(job, processes, log)
            if when == "from start":  # before, during or just after planning
                time.sleep(rng.uniform(0.1, 1.0))
            else:  # while delivering: at most ~rate * 0.4 units a run, so none finishes
                wait_until_delivering(emu, proc, before)
                time.sleep(rng.uniform(0.05, 0.4))
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.kill()
            assert proc.wait(30) == -signal.SIGKILL
            now = states(out)  # the checkpoint as the killed run left it, before resuming
            assert now["in_flight"] <= concurrency, now
            seen.append((when, now))
        assert main(["run", str(job), "--quiet"]) == 1
        sent = patches_202(emu)
        state = fetch_state(emu.url, emu.auth)

    assert any(0 < s["done"] < UPDATED for _, s in seen), f"no kill landed mid-delivery: {seen}"
    assert_all_delivered(out)
    assert wrong_profiles(state, allowed_state(seed_state)) == []
    assert_same_store(state, clean_run.state)
    assert UPDATED <= sent <= UPDATED + kills * concurrency, seen
    assert sum(u["claims"] > 1 for u in units(out)) <= kills * concurrency
    assert summary(out)["exit_code"] == 1


def test_reading_the_checkpoint_during_a_run_keeps_it_durable(
    lookup_cache: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """An operator's query of run.sqlite mid-run must not cost the run its commits on kill -9."""
    concurrency = 8
    out = with_lookups(lookup_cache, tmp_path / "out")
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        send = f"concurrency = {concurrency}\nrate = 200\n"
        job = write_job(tmp_path / "job.toml", out, send, base_url=emu.url)
        proc = start_run(job, processes, tmp_path / "run.log")
        wait_until_delivering(emu, proc, 20)
        looked = states(out)  # e.g. sqlite3 out/run.sqlite 'select state, count(*) ...'
        wait_until_delivering(emu, proc, 150)
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        accepted = patches_202(emu)
        kept = states(out)
        assert main(["run", str(job), "--quiet"]) == 1
        sent = patches_202(emu)
    assert looked["done"] > 0
    assert kept["done"] >= accepted - concurrency, (looked, kept, accepted)
    assert sent <= UPDATED + concurrency


def tiers_job(tmp_path: Path, url: str, concurrency: int) -> Path:
    """200 existing profiles by profile ID, one trait each: no lookup needed."""
    ids = [pid for pid, p in SEEDED.items() if "mergedInto" not in p][:200]
    data = tmp_path / "tiers.csv"
    data.write_text("profile_id,tier\n" + "".join(f"{pid},gold\n" for pid in ids))
    job = tmp_path / "job.toml"
    job.write_text(
        f'name = "tiers"\n[connection]\nbase_url = "{url}"\nstore_id = "{STORE}"\n'
        f"[source]\npaths = [{json.dumps(str(data))}]\n"
        '[identity]\nprofile_id_column = "profile_id"\n'
        '[traits.Loyalty]\ntier = "tier"\n'
        f"[send]\nconcurrency = {concurrency}\nrate = 5000\n"
        f"[output]\ndir = {json.dumps(str(tmp_path / 'out'))}\n"
    )
    return job


def test_a_401_stops_the_run_before_any_write(tmp_path: Path) -> None:
    """Refused credentials meet the schema check, the request before the first write: exit 3,
    no PATCH sent, the token unprinted."""
    token = "wrong-token-d0-not-print-me"
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        job = tiers_job(tmp_path, emu.url, 8)
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
            cwd=ROOT,
            env=credentials(token),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        stats = emu.stats()
    assert set(stats["byOperation"]) == {"traitGroups.fetch"}
    assert set(stats["byOperation"]["traitGroups.fetch"]) == {"401"}
    assert token not in done.stdout + done.stderr
    assert "401" in done.stderr and "credentials" in done.stderr
    assert done.returncode == 3, done.stderr[-600:]


def test_a_401_while_sending_stops_the_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Credentials revoked mid-run (played by skipping the schema check, so the first refused
    request is a PATCH) stop the run after the requests in flight: exit 3, token unprinted."""
    concurrency, token = 8, "wrong-token-d0-not-print-me"

    async def no_check(job: Any, client: Any) -> None:
        return None

    monkeypatch.setattr(schema, "check", no_check)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", token)
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        code = main(["run", str(tiers_job(tmp_path, emu.url, concurrency)), "--quiet"])
        stats = emu.stats()
    printed = capsys.readouterr()
    assert set(stats["byOperation"]) == {"profiles.patch"}  # no lookup was needed
    assert set(patch_answers(stats)) == {"401"}
    assert 1 <= patch_answers(stats)["401"] <= concurrency
    assert token not in printed.out + printed.err
    assert "401" in printed.err and "credentials" in printed.err
    assert code == 3, printed.err[-600:]


def test_a_401_while_looking_up_stops_the_run_too(tmp_path: Path) -> None:
    """Refused credentials during the plan's lookups: exit 3 too, and no PATCH is sent."""
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        job = write_job(tmp_path / "job.toml", tmp_path / "out", FAST, base_url=emu.url)
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
            cwd=ROOT,
            env=credentials("wrong-token"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        stats = emu.stats()
    assert set(stats["byOperation"]) == {"profiles.lookup"}
    assert set(stats["byOperation"]["profiles.lookup"]) == {"401"}
    assert stats["byOperation"]["profiles.lookup"]["401"] <= 8  # the job's concurrency
    assert "401" in done.stderr
    assert done.returncode == 3, done.stderr[-600:]


def test_ctrl_c_drains_and_the_next_run_resends_nothing(
    lookup_cache: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """SIGINT mid-delivery: in-flight units finish, exit 130; the next run re-sends none."""
    out = with_lookups(lookup_cache, tmp_path / "out")
    with EmulatorServer(EmulatorConfig(seed=SEED_PATH)) as emu:
        job = write_job(tmp_path / "job.toml", out, "concurrency = 8\nrate = 200\n",
                        base_url=emu.url)  # fmt: skip
        proc = start_run(job, processes, tmp_path / "run.log")
        wait_until_delivering(emu, proc, 30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        stopped = states(out)
        interrupted = summary(out)
        assert main(["run", str(job), "--quiet"]) == 1
        sent = patches_202(emu)

    assert stopped["in_flight"] == 0
    assert stopped["pending"] > 0, "the run ended before it was interrupted"
    assert interrupted["exit_code"] == 130
    assert interrupted["units"]["in_flight"] == 0
    assert_all_delivered(out)
    assert max(u["claims"] for u in units(out)) == 1
    again = summary(out)
    assert (again["resumed"], again["resent_units"]) == (0, 0)
    assert again["units"]["sent_this_run"] == stopped["pending"]
    assert sent == UPDATED


def test_a_locked_job_refuses_to_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While another process holds the job's folder, `run` exits 2 naming it, writing nothing."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    job = write_job(tmp_path / "job.toml", out, FAST)
    fd = os.open(out / "run.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, str(os.getpid()).encode())
        assert main(["run", str(job), "--quiet"]) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert str(out) in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


def test_a_changed_input_needs_restart_which_starts_from_the_seed(
    lookup_cache: Path, tmp_path: Path, seed_state: State, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the extract changes, `run` refuses (exit 2, naming --restart); --restart plans and
    sends everything again against the emulator freshly seeded."""
    extract = tmp_path / "customers.csv"
    shutil.copyfile(SAMPLE_CSV, extract)
    out = with_lookups(lookup_cache, tmp_path / "out")
    job = write_job(tmp_path / "job.toml", out, FAST, source=extract)
    assert main(["run", str(job), "--quiet"]) == 1
    ada = "mem_profile_01jsamp1e0000000000000000a"  # not in the plan: only the seed sets it
    assert ada in seed_state and ada not in PROFILE_TRAITS
    with EmulatorServer(EmulatorConfig(state=out / EMULATOR_STATE)) as emu:
        reply = httpx.patch(
            f"{emu.url}/v1/Stores/{STORE}/Profiles/{ada}",
            json={"traits": {"Loyalty": {"tier": "gold"}}},
            auth=emu.auth,
        )
        assert reply.status_code == 202
    capsys.readouterr()

    mtime = extract.stat().st_mtime_ns
    os.utime(extract, ns=(mtime + 5 * 10**9, mtime + 5 * 10**9))
    assert main(["run", str(job), "--quiet"]) == 1  # touched, not changed: resumes (no-op)
    assert capsys.readouterr().out.startswith("Nothing to send")
    text = extract.read_bytes()
    extract.write_bytes(text.replace(b"gold", b"GOLD", 1))  # same size, other content
    assert main(["run", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--restart" in err
    assert f"input {extract} changed (same size, other content)" in err

    assert main(["run", str(job), "--quiet", "--restart"]) == 1
    s = summary(out)
    assert s["units"]["sent_this_run"] == UNITS
    assert (s["units"]["updated"], s["units"]["profile_not_found"]) == (UPDATED, len(MISSING))
    state = read_state_file(out / EMULATOR_STATE)
    assert state[ada] == seed_state[ada]
    assert wrong_profiles(state, allowed_state(seed_state)) == []


def test_rerunning_a_finished_run_sends_nothing(clean_run: CleanRun) -> None:
    """The same command again after a finished run sends no request and reports the same rows."""
    report = (clean_run.out / "report.md").read_text()
    result = run_job(clean_run.job, quiet=True)
    assert result.exit_code == 1
    assert result.text.startswith("Nothing to send")
    assert (clean_run.out / "report.md").read_text() == report  # the last report stands
    s = json.loads((clean_run.out / "summary.json").read_text())
    assert (s["units"]["updated"], s["units"]["profile_not_found"]) == (UPDATED, len(MISSING))
    with (clean_run.out / "errors.csv").open(newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == clean_run.errors
