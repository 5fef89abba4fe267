"""The Lookup cache: answers are reused for ``identity.lookup_ttl`` ("no profile" for at most an
hour), ``run --restart`` / ``--full`` ask again, and only a 200 is ever cached.

The nightly case these guard: a person unresolved on night 1 who is created in Memory during the
day must be found on night 2, not reported unresolved night after night from a stale answer.
"""

from __future__ import annotations

import sqlite3  # noqa: TID251 - the test reads what the run file cached, as an operator would
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from backfill.checkpoint import RunDB
from backfill.config import NO_PROFILE_TTL, load_job
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import ConfigError
from backfill.pipeline import build_plan, run
from backfill.report import PlanResult

SEED = Path(__file__).parent / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
MISSING_STORE = "mem_store_01jnosuchstore000000000000"  # a valid ID the emulator does not hold
A = "mem_profile_01jtest000000000000000000a"  # ada@example.com
ADA, NEW = "ada@example.com", "new.person@example.com"
SID, TOKEN = "AC00000000000000000000000000000000", "emulator"
DAY = 24 * 3600.0


pytestmark = pytest.mark.usefixtures("emulator_credentials")


class Clock:
    """Wall time as the test sets it: the cache's ages without sleeping."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_job(
    tmp_path: Path,
    url: str,
    *,
    ttl: str | None = None,
    store: str = STORE,
    send: str = "",
) -> Path:
    extract = tmp_path / "extract.csv"
    pl.DataFrame({"email": [ADA, NEW], "tier": ["gold", "silver"]}).write_csv(extract)
    job = tmp_path / "job.toml"
    job.write_text(
        f"""name = "nightly"
[connection]
base_url = "{url}"
store_id = "{store}"
[source]
paths = ["{extract}"]
[identity]
{f"lookup_ttl = {ttl}" if ttl is not None else ""}
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[traits.Loyalty]
tier = "tier"
[send]
rate = 5000
{send}
[output]
dir = "{tmp_path / "out"}"
""",
        encoding="utf-8",
    )
    return job


def plan_at(job: Path, clock: Clock, **kwargs: Any) -> PlanResult:
    return build_plan(load_job(job), quiet=True, clock=clock, **kwargs)


def asked(result: PlanResult) -> tuple[int, int, int]:
    """(lookups asked, reused from the cache, failed) by one plan."""
    s = result.summary
    return s.lookups_asked, s.lookups_cached, s.lookups_failed


def unresolved(result: PlanResult) -> dict[str, str]:
    """identifiers -> reason of each row the plan could not resolve."""
    frame = pl.read_csv(result.rejects_path)
    return dict(zip(frame["identifiers"], frame["reason"], strict=True))


def create_person(emu: EmulatorServer, email: str) -> str:
    """What live traffic does during the day: a new profile holding ``email``."""
    reply = httpx.post(
        f"{emu.url}/v1/Stores/{STORE}/Profiles",
        json={"traits": {"Contact": {"email": email}}},
        auth=emu.auth,
    )
    reply.raise_for_status()
    profile_id: str = reply.json()["id"]
    return profile_id


def tier(emu: EmulatorServer, profile_id: str) -> Any:
    reply = httpx.get(f"{emu.url}/v1/Stores/{STORE}/Profiles/{profile_id}", auth=emu.auth)
    reply.raise_for_status()
    return reply.json()["traits"].get("Loyalty", {}).get("tier")


def cached_rows(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "out" / "run.sqlite") as raw:
        return list(raw.execute("SELECT id_type, value FROM lookups ORDER BY value"))


# --- The key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds", "no_profile"),
    [
        (None, DAY, NO_PROFILE_TTL),
        ('"24h"', DAY, NO_PROFILE_TTL),
        ('"7d"', 7 * DAY, NO_PROFILE_TTL),
        ('"30m"', 1800.0, 1800.0),
        ('"90s"', 90.0, 90.0),
        ('" 1.5h "', 5400.0, NO_PROFILE_TTL),
        ("600", 600.0, 600.0),
        ("12.5", 12.5, 12.5),
        ("0", 0.0, 0.0),
    ],
)
def test_lookup_ttl_reads_seconds_and_durations(
    tmp_path: Path, written: str | None, seconds: float, no_profile: float
) -> None:
    """Seconds or "90s"/"30m"/"24h"/"7d"; "no profile" answers never outlive the TTL."""
    identity = load_job(write_job(tmp_path, "emulator", ttl=written)).identity
    assert (identity.lookup_ttl, identity.no_profile_ttl) == (seconds, no_profile)


@pytest.mark.parametrize("written", ["-1", '"-5m"', '"1w"', '"24"', '"h"', '""', "true", "[1]"])
def test_a_bad_lookup_ttl_is_a_config_error_naming_the_key(tmp_path: Path, written: str) -> None:
    with pytest.raises(ConfigError, match=r"identity\.lookup_ttl"):
        load_job(write_job(tmp_path, "emulator", ttl=written))


# --- The cache itself ----------------------------------------------------------------------


def test_the_run_file_reuses_answers_only_while_they_are_fresh(tmp_path: Path) -> None:
    """An answer is reused up to max_age after it was asked ("no profile": max_age_empty);
    one dated in the future (the wall clock went back) is not trusted."""
    pairs = [("email", ADA), ("email", NEW)]
    with RunDB(tmp_path / "run.sqlite") as db:
        db.cache_lookups(STORE, {("email", ADA): [A], ("email", NEW): []}, now=1000.0)

        def fresh(now: float) -> dict[tuple[str, str], list[str]]:
            return db.cached_lookups(STORE, pairs, now=now, max_age=100.0, max_age_empty=10.0)

        assert fresh(1000.0) == fresh(1010.0) == {("email", ADA): [A], ("email", NEW): []}
        assert fresh(1010.5) == fresh(1100.0) == {("email", ADA): [A]}
        assert fresh(1100.5) == {}
        assert fresh(999.0) == {}
        assert db.cached_lookups("mem_store_01jother00000000000000000", pairs, now=1000.0,
                                 max_age=100.0, max_age_empty=10.0) == {}  # fmt: skip
        db.cache_lookups(STORE, {("email", NEW): [A]}, now=1200.0)  # asked again: replaced
        assert fresh(1250.0) == {("email", NEW): [A]}


# --- Against the emulator over HTTP ---------------------------------------------------------


def test_a_person_created_after_night_one_is_found_with_restart(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """The README's nightly recipe (`run --restart`): night 2 asks Lookup again even within the
    TTL, so the person created during the day gets their row; a plain `run` after a `plan`
    reuses the plan's answers."""
    job = write_job(tmp_path, emulator.url)
    first = build_plan(load_job(job), quiet=True)
    assert asked(first) == (2, 0, 0)
    night1 = run(job, quiet=True)
    assert night1.summary["plan"]["lookups_asked"] == 0  # the plan's answers, still fresh
    assert night1.summary["plan"]["lookups_cached"] == 2
    assert night1.summary["plan"]["unresolved"] == 1

    person = create_person(emulator, NEW)
    night2 = run(job, restart=True, quiet=True)
    assert night2.exit_code == 0
    assert (night2.summary["plan"]["lookups_asked"], night2.summary["plan"]["lookups_cached"]) == (
        2,
        0,
    )
    assert night2.summary["plan"]["unresolved"] == 0
    assert tier(emulator, person) == "silver"
    assert tier(emulator, A) == "gold"


def test_full_asks_again_too(emulator: EmulatorServer, tmp_path: Path) -> None:
    job = write_job(tmp_path, emulator.url)
    run(job, quiet=True)
    person = create_person(emulator, NEW)
    again = run(job, full=True, quiet=True)
    assert again.summary["plan"]["lookups_asked"] == 2
    assert again.summary["plan"]["unresolved"] == 0
    assert tier(emulator, person) == "silver"


def test_a_plain_plan_asks_again_only_after_the_ttl(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Without --restart, "no profile" is reused for an hour (the default TTL is 24 h) and then
    asked again; a found profile is reused for the whole TTL."""
    job = write_job(tmp_path, emulator.url)
    clock = Clock()
    start = clock.t
    assert unresolved(plan_at(job, clock)).keys() == {f"email={NEW}"}
    person = create_person(emulator, NEW)

    clock.t = start + NO_PROFILE_TTL  # not yet stale: the cached "no profile" still decides
    before = plan_at(job, clock)
    assert asked(before) == (0, 2, 0)
    assert unresolved(before).keys() == {f"email={NEW}"}

    clock.t = start + NO_PROFILE_TTL + 1  # stale: asked again, found; Ada's answer reused
    after = plan_at(job, clock)
    assert asked(after) == (1, 1, 0)
    assert unresolved(after) == {}
    assert after.summary.resolved_lookup == 2
    targets = set(pl.read_parquet(after.plan_path)["profile_id"])
    assert targets == {A, person}

    clock.t = start + DAY + 1  # Ada's answer is a day old; the new person's is not
    assert asked(plan_at(job, clock)) == (1, 1, 0)
    assert asked(plan_at(job, clock, refresh_lookups=True)) == (2, 0, 0)


def test_lookup_ttl_zero_never_reuses(emulator: EmulatorServer, tmp_path: Path) -> None:
    job = write_job(tmp_path, emulator.url, ttl="0")
    clock = Clock()
    assert asked(plan_at(job, clock)) == (2, 0, 0)
    assert asked(plan_at(job, clock)) == (2, 0, 0)


def test_a_404_is_reported_and_never_cached(emulator: EmulatorServer, tmp_path: Path) -> None:
    """The API answers 404 to a Lookup in a store that does not exist: that says nothing about
    the person, so it is a failed lookup on the rows, not "no profile", and nothing is kept."""
    job = write_job(tmp_path, emulator.url, store=MISSING_STORE)
    clock = Clock()
    result = plan_at(job, clock)
    assert asked(result) == (2, 0, 2)
    reasons = unresolved(result)
    assert reasons.keys() == {f"email={ADA}", f"email={NEW}"}
    for reason in reasons.values():
        assert "lookup failed after 1 attempt(s): HTTP 404 (code 20404: " in reason
        assert MISSING_STORE in reason
    assert cached_rows(tmp_path) == []
    assert asked(plan_at(job, clock)) == (2, 0, 2)


def test_failed_lookups_are_never_cached(tmp_path: Path) -> None:
    """A 5xx after every attempt is reported on the row and asked again by the next plan."""
    with EmulatorServer(EmulatorConfig(seed=SEED, fault_rate=1.0, random_seed=5)) as emu:
        job = write_job(tmp_path, emu.url, send="max_attempts = 1")
        clock = Clock()
        result = plan_at(job, clock)
        assert asked(result) == (2, 0, 2)
        assert all("lookup failed after 1 attempt(s): HTTP 5" in r
                   for r in unresolved(result).values())  # fmt: skip
        assert cached_rows(tmp_path) == []
        assert asked(plan_at(job, clock)) == (2, 0, 2)
