"""Nightly runs: `[incremental]` sends only what changed, `--full` everything, `retry` only the
failed units, and `status` reads a checkpoint without touching it. Against a real emulator over
HTTP whose state outlives each run, as a real store's does."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3  # noqa: TID251 - the test plays a crash by editing the checkpoint
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from backfill.checkpoint import RunDB, RunLock, read_progress
from backfill.cli import main
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import BackfillError, RunLocked
from backfill.pipeline import retry, run, status

STORE = "mem_store_01jincr0000000000000000000"
PROFILES = 500
SID, TOKEN = "AC00000000000000000000000000000000", "emulator"
TIERS = ("bronze", "silver", "gold")


def profile_id(i: int) -> str:
    return f"mem_profile_01jincr{i:019d}"


def write_seed(path: Path) -> Path:
    groups = [
        {
            "displayName": "Loyalty",
            "traits": {"points": {"dataType": "NUMBER"}, "tier": {"dataType": "STRING"}},
        },
        {"displayName": "Contact", "traits": {"email": {"dataType": "STRING"}}},
    ]
    store = {
        "id": STORE,
        "displayName": "incremental",
        "traitGroups": groups,
        "profiles": [{"id": profile_id(i), "traits": {}} for i in range(PROFILES)],
    }
    path.write_text(json.dumps({"stores": [store]}))
    return path


def write_extract(path: Path, points: list[int]) -> Path:
    pl.DataFrame(
        {
            "profile_id": [profile_id(i) for i in range(PROFILES)],
            "points": points,
            "tier": [TIERS[i % 3] for i in range(PROFILES)],
            "email": [f"u{i}@example.com" for i in range(PROFILES)],
        }
    ).write_csv(path)
    return path


def write_job(folder: Path, url: str, extract: Path, *, incremental: bool = True) -> Path:
    state = f'[incremental]\nstate = "{folder / "state" / "nightly.sqlite"}"\n'
    job = folder / "job.toml"
    job.write_text(
        f"""name = "nightly"
[connection]
base_url = "{url}"
store_id = "{STORE}"
[source]
paths = ["{extract}"]
[identity]
profile_id_column = "profile_id"
lookup = false
[traits.Loyalty]
points = {{ column = "points", type = "NUMBER" }}
tier = "tier"
[traits.Contact]
email = "email"
[send]
concurrency = 8
rate = 5000
max_attempts = 2
[output]
dir = "{folder / "out"}"
{state if incremental else ""}"""
    )
    return job


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorServer]:
    seed = write_seed(tmp_path / "seed.json")
    with EmulatorServer(EmulatorConfig(seed=seed, random_seed=3)) as server:
        yield server


pytestmark = pytest.mark.usefixtures("emulator_credentials")


def patches(emu: EmulatorServer) -> int:
    stats = httpx.get(emu.url + "/__emulator__/stats").json()
    return int(sum(stats["byOperation"].get("profiles.patch", {}).values()))


def total_requests(emu: EmulatorServer) -> int:
    stats = httpx.get(emu.url + "/__emulator__/stats").json()
    return int(sum(sum(answers.values()) for answers in stats["byOperation"].values()))


def reset_stats(emu: EmulatorServer) -> None:
    httpx.delete(emu.url + "/__emulator__/stats").raise_for_status()


def points_of(emu: EmulatorServer, i: int) -> Any:
    reply = httpx.get(
        f"{emu.url}/v1/Stores/{STORE}/Profiles/{profile_id(i)}",
        params={"traitGroups": "Loyalty"},
        auth=emu.auth,
    )
    return reply.json()["traits"]["Loyalty"]["points"]


def test_a_second_run_sends_only_the_changed_rows(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Night 1 sends every profile; night 2, with 1 % of the rows changed, sends exactly those
    and skips the rest; a night with nothing changed sends nothing; --full sends everything."""
    points = list(range(PROFILES))
    extract = write_extract(tmp_path / "extract.csv", points)
    job = write_job(tmp_path, emulator.url, extract)

    first = run(job, quiet=True)
    assert first.exit_code == 0
    assert first.summary["units"]["updated"] == PROFILES
    assert first.summary["units"]["skipped_unchanged"] == 0
    assert patches(emulator) == PROFILES
    assert (tmp_path / "state" / "nightly.sqlite").stat().st_mode & 0o777 == 0o600

    changed = random.Random(5).sample(range(PROFILES), PROFILES // 100)
    for i in changed:
        points[i] += 1000
    write_extract(extract, points)
    reset_stats(emulator)
    second = run(job, restart=True, quiet=True)  # a new extract: a new run (as cron does)
    assert second.exit_code == 0
    units = second.summary["units"]
    assert (units["updated"], units["skipped_unchanged"]) == (len(changed), PROFILES - len(changed))
    assert len(changed) == patches(emulator)
    assert second.summary["requests"]["sent"] == len(changed) + 2  # + the schema check's GETs
    assert all(points_of(emulator, i) == points[i] for i in changed)
    assert "unchanged since they last landed" in second.text

    reset_stats(emulator)
    third = run(job, restart=True, quiet=True)
    assert third.summary["units"]["skipped_unchanged"] == PROFILES
    assert third.summary["requests"]["sent"] == 0 == total_requests(emulator)  # not even a GET

    full = run(job, full=True, quiet=True)
    assert full.summary["units"]["updated"] == PROFILES
    assert patches(emulator) == PROFILES


def test_a_unit_that_did_not_land_is_sent_again_next_night(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A unit that failed (here: a value the store rejects) is not remembered, so the next run
    sends it although its content did not change."""
    points = list(range(PROFILES))
    extract = write_extract(tmp_path / "extract.csv", points)
    job = write_job(tmp_path, emulator.url, extract)
    assert run(job, quiet=True).exit_code == 0

    # The store loses one profile; PATCH answers 404 and the unit is forgotten.
    gone = 7
    httpx.delete(
        f"{emulator.url}/v1/Stores/{STORE}/Profiles/{profile_id(gone)}", auth=emulator.auth
    ).raise_for_status()
    points[1] += 1
    write_extract(extract, points)
    second = run(job, restart=True, quiet=True)
    assert second.summary["units"]["updated"] == 1
    assert second.summary["units"]["skipped_unchanged"] == PROFILES - 1  # 7 unchanged: skipped

    # Force it through: --full sends 7 (404 now) and forgets it; the next run sends it again.
    reset_stats(emulator)
    assert run(job, full=True, quiet=True).summary["units"]["profile_not_found"] == 1
    reset_stats(emulator)
    fourth = run(job, restart=True, quiet=True)
    assert fourth.summary["units"]["profile_not_found"] == 1
    assert fourth.summary["units"]["skipped_unchanged"] == PROFILES - 1
    assert patches(emulator) == 1


def test_a_killed_run_is_remembered_by_the_next_plan(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Whatever a run landed before it died counts: a new plan copies it into the state first."""
    extract = write_extract(tmp_path / "extract.csv", list(range(PROFILES)))
    job = write_job(tmp_path, emulator.url, extract)
    assert run(job, quiet=True).exit_code == 0
    # Simulate a kill -9 after delivery but before the state was written: empty the state.
    state = tmp_path / "state" / "nightly.sqlite"
    state.unlink()
    reset_stats(emulator)
    again = run(job, restart=True, quiet=True)
    assert again.summary["units"]["skipped_unchanged"] == PROFILES
    assert patches(emulator) == 0


def test_retry_sends_only_the_failed_units(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Values the store's schema rejects fail (400); after the schema is fixed, `retry` sends
    those units and nothing else."""
    # Loyalty.tier only accepts bronze/silver/gold: 5 rows carry "platinum".
    bad = [3, 50, 120, 260, 499]
    extract = tmp_path / "extract.csv"
    write_extract(extract, list(range(PROFILES)))
    frame = pl.read_csv(extract).with_row_index()
    frame = frame.with_columns(
        pl.when(pl.col("index").is_in(bad)).then(pl.lit("platinum")).otherwise("tier").alias("tier")
    ).drop("index")
    frame.write_csv(extract)
    job = write_job(tmp_path, emulator.url, extract, incremental=False)
    group = f"{emulator.url}/v1/ControlPlane/Stores/{STORE}/TraitGroups/Loyalty"
    rule = {"dataType": "STRING", "validationRule": {"ruleType": "STRING", "pattern": "^[a-z]+$"}}
    narrow = {"dataType": "STRING", "validationRule": {"ruleType": "STRING",
              "pattern": "^(bronze|silver|gold)$"}}  # fmt: skip
    httpx.patch(group, json={"traits": {"tier": narrow}}, auth=emulator.auth).raise_for_status()

    first = run(job, quiet=True)
    assert first.exit_code == 1
    assert first.summary["units"]["failed"] == len(bad)
    errors = pl.read_csv(tmp_path / "out" / "errors.csv")
    assert sorted(errors["row"].to_list()) == [i + 1 for i in bad]  # data rows, 1-based

    httpx.patch(group, json={"traits": {"tier": rule}}, auth=emulator.auth).raise_for_status()
    reset_stats(emulator)
    again = retry(job, quiet=True)
    assert again.exit_code == 0
    assert again.summary["units"]["sent_this_run"] == len(bad) == patches(emulator)
    assert again.summary["units"]["failed"] == 0
    assert pl.read_csv(tmp_path / "out" / "errors.csv").height == 0

    reset_stats(emulator)
    report = (tmp_path / "out" / "report.md").read_text()
    empty = retry(job, quiet=True)  # nothing left: says so, and the last report stands
    assert empty.text.startswith("Nothing to send")
    assert empty.exit_code == 0
    assert patches(emulator) == 0
    assert (tmp_path / "out" / "report.md").read_text() == report


def test_retry_without_a_run_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extract = write_extract(tmp_path / "extract.csv", list(range(PROFILES)))
    job = write_job(tmp_path, "http://127.0.0.1:9", extract)
    assert main(["retry", str(job), "--quiet"]) == 2
    assert "nothing to retry" in capsys.readouterr().err
    assert main(["status", str(job)]) == 2


def test_status_reads_a_running_checkpoint_without_touching_it(tmp_path: Path) -> None:
    """While a run sends, `status` reports it running with a rate and time left; the run is
    not disturbed (it finishes with exit 0) and status leaves no file behind. The run is
    stopped (SIGSTOP) while status reads, so what status sees does not race the sending;
    how the rate is figured is test_status_rates_the_last_minute_of_sending's."""
    seed = write_seed(tmp_path / "seed.json")
    with EmulatorServer(EmulatorConfig(seed=seed, random_seed=3)) as emu:
        extract = write_extract(tmp_path / "extract.csv", list(range(PROFILES)))
        job = write_job(tmp_path, emu.url, extract)
        text = job.read_text().replace("rate = 5000", "rate = 100")
        job.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
        env |= {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN}
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        out = tmp_path / "out"
        try:
            for _ in range(600):  # a hang guard, not a speed limit: the run is throttled
                assert proc.poll() is None
                if finished(out) >= 100:
                    break
                time.sleep(0.1)
            proc.send_signal(signal.SIGSTOP)
            before = sorted(p.name for p in out.iterdir())
            seen = status(job)
            assert sorted(p.name for p in out.iterdir()) == before
            s = seen.summary
            assert s["state"] == "running" and s["pid"] == proc.pid
            assert 100 <= s["units"]["finished"] < PROFILES
            assert s["units"]["total"] == PROFILES
            unfinished = s["units"]["pending"] + s["units"]["in_flight"]
            assert s["units"]["finished"] + unfinished == PROFILES
            assert s["rate_last_minute"] > 0
            assert abs(s["seconds_left"] - unfinished / s["rate_last_minute"]) <= 1
            assert f"running (pid {proc.pid})" in seen.text
            proc.send_signal(signal.SIGCONT)
            assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()

    done = status(job).summary
    assert (done["state"], done["exit_code"], done["pid"]) == ("finished", 0, None)
    assert done["units"]["finished"] == done["units"]["updated"] == PROFILES
    assert done["seconds_left"] is None


def plan_units(path: Path, count: int) -> None:
    """A plan.parquet of ``count`` empty patches, to build a checkpoint from."""
    pl.DataFrame(
        {
            "key": [f"{profile_id(i)}#0" for i in range(count)],
            "profile_id": [profile_id(i) for i in range(count)],
            "action": ["patch"] * count,
            "body": ['{"traits":{}}'] * count,
            "hash": ["h"] * count,
            "rows": [1] * count,
        }
    ).write_parquet(path)


def finished(out: Path) -> int:
    """Units the run in ``out`` has finished; 0 while its run file is still being made."""
    try:
        progress = read_progress(out / "run.sqlite")
    except BackfillError:  # created, but its tables not yet
        return 0
    return progress.counts["done"] + progress.counts["failed"]


def test_status_rates_the_last_minute_of_sending(tmp_path: Path) -> None:
    """Units a second over the last minute of finishing times, and the time left at that rate:
    20 units long before, then 130 at 100/s; 350 left; this process holds the run's lock."""
    extract = write_extract(tmp_path / "extract.csv", list(range(PROFILES)))
    job = write_job(tmp_path, "http://127.0.0.1:9", extract)
    out = tmp_path / "out"
    out.mkdir()
    plan_units(tmp_path / "plan.parquet", PROFILES)
    with RunDB(out / "run.sqlite") as db:
        db.replace_units(tmp_path / "plan.parquet")
        db.set_meta(plan={"rows": PROFILES})
    with sqlite3.connect(out / "run.sqlite") as raw:
        raw.execute(  # 20 units of an earlier minute, then 130 at 100/s
            "UPDATE units SET state = 'done', outcome = 'updated', finished_at = "
            "CASE WHEN seq <= 20 THEN 1000.0 + seq ELSE 1100.0 + (seq - 21) * 0.01 END "
            "WHERE seq <= 150"
        )
    with RunLock(out, "run"):
        s = status(job).summary
    # first to last finish is 100.29 s, so the window is the last 60 s, holding the 130
    assert s["state"] == "running" and s["pid"] == os.getpid()
    assert s["rate_last_minute"] == round(130 / 60.0, 3)
    assert s["seconds_left"] == round(350 / (130 / 60.0))


def test_status_names_an_interrupted_run(emulator: EmulatorServer, tmp_path: Path) -> None:
    extract = write_extract(tmp_path / "extract.csv", list(range(PROFILES)))
    job = write_job(tmp_path, emulator.url, extract)
    assert run(job, quiet=True).exit_code == 0
    checkpoint = tmp_path / "out" / "run.sqlite"
    with sqlite3.connect(checkpoint) as raw:  # as if killed with 10 units unsent
        raw.execute("UPDATE units SET state = 'pending', outcome = NULL WHERE seq <= 10")
    s = status(job).summary
    assert (s["state"], s["units"]["pending"]) == ("interrupted", 10)
    assert main(["status", str(job)]) == 0


def test_status_and_the_lock_name_what_holds_the_folder(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A reconcile (or schema, plan) holding the job's folder is not a running delivery:
    status says which command holds it, and a second command's refusal names it too."""
    extract = write_extract(tmp_path / "extract.csv", list(range(PROFILES)))
    job = write_job(tmp_path, emulator.url, extract)
    assert run(job, quiet=True).exit_code == 0
    with RunLock(tmp_path / "out", "reconcile"):
        s = status(job)
        assert (s.summary["state"], s.summary["busy"]) == ("finished", "backfill reconcile")
        assert f"backfill reconcile (pid {os.getpid()}) is using" in s.text
        with pytest.raises(RunLocked, match=rf"backfill reconcile \(pid {os.getpid()}\)"):
            run(job, quiet=True)
    assert status(job).summary["busy"] is None


def test_status_rates_only_what_was_sent(tmp_path: Path) -> None:
    """Units an incremental plan skipped all finish at once; they are no sending rate."""
    out = tmp_path / "out"
    out.mkdir()
    plan_units(tmp_path / "plan.parquet", 1010)
    with RunDB(out / "run.sqlite") as db:
        db.replace_units(tmp_path / "plan.parquet")
    with sqlite3.connect(out / "run.sqlite") as raw:
        raw.execute(  # 1,000 skipped at t=100, then 10 sent at t=101..110
            "UPDATE units SET state = 'done', outcome = CASE WHEN seq <= 1000 THEN "
            "'skipped_unchanged' ELSE 'updated' END, "
            "finished_at = CASE WHEN seq <= 1000 THEN 100.0 ELSE 100.0 + seq - 1000 END"
        )
    progress = read_progress(out / "run.sqlite")
    assert (progress.first_finished, progress.last_finished) == (101.0, 110.0)
    assert progress.recent == 10
