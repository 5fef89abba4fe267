"""`backfill reconcile` against the emulator over real HTTP: a small store and extract made here,
delivered with `run`, then edited through the API so that reconcile must find exactly the
planted differences; --fix, --settle under write lag, and the comparison rules on their own."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from backfill.config import load_job
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import ConfigError, RunLocked
from backfill.files import EMULATOR_STATE
from backfill.pipeline import build_plan, run
from backfill.reconcile import expected_frame, reconcile, same_value

ROOT = Path(__file__).parents[1]
STORE = "mem_store_01jrecon" + "0" * 18
SID = "AC00000000000000000000000000000000"
SECRET = "s3cret-never-printed"
CREDENTIAL_VARIABLES = ("TWILIO_API_KEY", "TWILIO_API_SECRET", "TWILIO_ACCOUNT_SID",
                        "TWILIO_AUTH_TOKEN")  # fmt: skip


def pid(n: int) -> str:
    return f"mem_profile_01jrecon{n:018d}"


SEED = {
    "stores": [
        {
            "id": STORE,
            "displayName": "reconcile",
            "identityResolutionSettings": {
                "identifierConfigs": [
                    {"idType": "email", "normalization": "email"},
                    {"idType": "phone", "normalization": "phone"},
                ],
                "matchingRules": ["email", "phone"],
            },
            "traitGroups": [
                {
                    "displayName": "Contact",
                    "traits": {
                        name: {"dataType": "STRING"}
                        for name in ("firstName", "lastName", "email", "phone")
                    },
                },
                {
                    "displayName": "Loyalty",
                    "traits": {
                        "points": {"dataType": "NUMBER"},
                        "tier": {"dataType": "STRING"},
                        "optIn": {"dataType": "BOOLEAN"},
                        "tags": {"dataType": "ARRAY"},
                        "code": {"dataType": "STRING"},
                    },
                },
            ],
            "profiles": [
                *(
                    {"id": pid(n), "traits": {"Contact": {"firstName": "Seed"}}}
                    for n in (1, 2, 3, 4, 6, 7, 10)
                ),
                {"id": pid(5), "traits": {"Loyalty": {"code": "OLD"}}},  # deleted by the run
                {"id": pid(9), "traits": {}, "mergedInto": pid(10)},
            ],
        }
    ]
}

HEADER = "profile_id,first_name,email,phone,points,tier,opt_in,tags,code,updated_at\n"
ROWS = [  # data row numbers start at 1
    f"{pid(1)},Ada, Ada@Example.com ,(317) 555-0101,5,gold,yes,a;b,X1,2025-01-01",
    f"{pid(1)},Ada, Ada@Example.com ,(317) 555-0101,7,gold,yes,a;b,X1,2025-03-01",  # wins
    f"{pid(2)},Bo,bo@example.com,3175550102,10,gold,no,c,X2,2025-01-01",
    f"{pid(3)},Cy,cy@example.com,3175550103,11,bronze,no,c,X3,2025-01-01",
    f"{pid(4)},Di,di@example.com,3175550104,4,silver,yes,a;c,X4,2025-01-01",
    f"{pid(5)},Ed,ed@example.com,3175550105,5,silver,no,e,,2025-01-01",  # code: delete it
    f"{pid(6)},Flo,Flo@Example.com,317-555-0106,12,silver,true,x,X6,2025-01-01",
    f"{pid(7)},Gus,gus@example.com,3175550107,1.5,gold,false,y;z,X7,2025-01-01",
    f"{pid(9)},Hal,hal@example.com,3175550109,9,gold,t,h,X9,2025-01-01",  # merged into 10
    f"{pid(2)},Bo,bo@example.com,3175550102,10,silver,no,c,X2,2024-06-01",  # older: loses
]
PLANNED = 8  # profiles 1-7 and 9


def write_job(
    folder: Path,
    base_url: str = "emulator",
    rows: list[str] = ROWS,
    name: str = "recon",
    identity: str = "",
) -> Path:
    """The job over ``rows``, delivering to ``base_url`` (the embedded emulator by default).
    Its paths are relative to ``folder``, where every test runs, so a copy of the folder is a
    copy of the job and of its output (the checkpoint's fingerprint included)."""
    (folder / "seed.json").write_text(json.dumps(SEED))
    (folder / f"{name}.csv").write_text(HEADER + "".join(row + "\n" for row in rows))
    connection = f'base_url = "{base_url}"\nstore_id = "{STORE}"\n'
    if base_url == "emulator":
        connection += 'seed = "seed.json"\n'
    job = folder / f"{name}.toml"
    job.write_text(
        f'name = "{name}"\n[connection]\n{connection}'
        f'[source]\npaths = ["{name}.csv"]\norder_by = "updated_at"\n'
        f'[identity]\nprofile_id_column = "profile_id"\n{identity}'
        '[[identity.identifiers]]\ncolumn = "email"\nid_type = "email"\nnormalization = "email"\n'
        '[[identity.identifiers]]\ncolumn = "phone"\nid_type = "phone"\nnormalization = "phone"\n'
        '[traits.Contact]\nfirstName = "first_name"\nemail = "email"\nphone = "phone"\n'
        '[traits.Loyalty]\npoints = { column = "points", type = "NUMBER" }\ntier = "tier"\n'
        'optIn = { column = "opt_in", type = "BOOLEAN" }\n'
        'tags = { column = "tags", type = "ARRAY", split = ";" }\n'
        'code = { column = "code", nulls = "delete" }\n'
        "[send]\nconcurrency = 4\nrate = 5000\n"
        f'[output]\ndir = "out-{name}"\n'
    )
    return job


def out(job: Path) -> Path:
    return job.parent / f"out-{job.stem}"


@contextmanager
def api(job: Path) -> Iterator[httpx.Client]:
    """The embedded emulator's store after a run, through the API, as another client would
    see it (the job's own commands are not running meanwhile)."""
    with (
        EmulatorServer(EmulatorConfig(state=out(job) / EMULATOR_STATE)) as emu,
        httpx.Client(base_url=f"{emu.url}/v1/Stores/{STORE}/Profiles", auth=emu.auth) as http,
    ):
        yield http


def patch(http: httpx.Client, n: int, traits: dict[str, dict[str, Any]]) -> None:
    assert http.patch(f"/{pid(n)}", json={"traits": traits}).status_code == 202


def lines(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def found(job: Path) -> set[tuple[str, ...]]:
    """reconcile.csv as a set of lines, without ``updated_at`` (Memory never says it)."""
    rows = lines(out(job) / "reconcile" / "reconcile.csv")
    assert all(line["updated_at"] == "" for line in rows)
    return {tuple(v for k, v in line.items() if k != "updated_at") for line in rows}


def units(folder: Path) -> list[dict[str, Any]]:
    """The request units of a plan.parquet."""
    return pl.read_parquet(folder / "plan.parquet").to_dicts()


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test works in its own folder (job paths are relative), with our credentials."""
    monkeypatch.chdir(tmp_path)
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", SECRET)


@pytest.fixture(scope="module")
def delivered_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job run once against the embedded emulator: every row lands."""
    folder = tmp_path_factory.mktemp("delivered")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = run(write_job(folder), quiet=True)
    assert result.exit_code == 0, result.text
    return folder


@pytest.fixture
def delivered(delivered_once: Path, tmp_path: Path) -> Path:
    """A copy of the delivered job and its output (store, checkpoint) for one test."""
    shutil.copytree(delivered_once, tmp_path, dirs_exist_ok=True)
    return tmp_path / "recon.toml"


# -------------------------------------------------------------------------------- tests


def test_a_clean_run_reconciles(delivered: Path) -> None:
    """Right after a run, Memory holds exactly the plan: exit 0, no difference, one merge."""
    result = reconcile(delivered, quiet=True)
    s = result.summary
    assert result.exit_code == s["exit_code"] == 0, result.text
    assert s["profiles"] == {"checked": PLANNED, "matching": PLANNED, "differing": 0,
                             "profile_not_found": 0, "fetch_failed": 0, "remapped": 1,
                             "to_create": 0, "merged_together": 0}  # fmt: skip
    assert s["traits"] == {"checked": 64, "matching": 64, "differing": 0, "missing_in_memory": 0}
    assert s["groups"]["Contact"]["checked"] == 3 * PLANNED
    assert found(delivered) == set()
    header = (out(delivered) / "reconcile" / "reconcile.csv").read_text()
    assert header == "profile_id,group,trait,expected,actual,file,row,kind,updated_at\n"
    assert lines(out(delivered) / "reconcile" / "profiles.csv") == [
        {"profile_id": pid(9), "canonical_profile_id": pid(10), "outcome": "matches",
         "differing": "0", "missing_in_memory": "0", "detail": ""}
    ]  # fmt: skip
    assert "Memory matches the plan: 8 profiles checked." in result.text
    assert (out(delivered) / "reconcile" / "reconcile.md").read_text() == result.text
    assert json.loads((out(delivered) / "reconcile" / "reconcile.json").read_text()) == s
    folder = out(delivered) / "reconcile"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    assert {name for name, mode in modes.items() if mode not in (0o600, 0o700)} == set()
    assert modes["reconcile"] == modes["plan"] == 0o700
    assert {"reconcile.csv", "profiles.csv", "reconcile.json", "reconcile.md"} <= set(modes)


def test_reconcile_finds_exactly_the_planted_differences(delivered: Path) -> None:
    """Edits made through the API after the run are found, with the row behind each expected
    value; edits that equal the plan once normalized, or touch unmapped traits, are not."""
    csv_path = "recon.csv"
    with api(delivered) as http:
        patch(http, 1, {"Loyalty": {"points": 8}})
        patch(http, 2, {"Loyalty": {"tier": None}})
        assert http.delete(f"/{pid(3)}").status_code == 202
        patch(http, 4, {"Loyalty": {"tags": ["a", "b"]}})
        patch(http, 5, {"Loyalty": {"code": "ZZZ"}})
        patch(http, 6, {"Contact": {"email": "flo@example.com", "phone": "+13175550106",
                                    "lastName": "Unmapped"},
                        "Loyalty": {"points": 12.0}})  # fmt: skip
        patch(http, 10, {"Contact": {"firstName": "Changed"}})  # 9 was merged into 10
    result = reconcile(delivered, quiet=True)

    assert result.exit_code == 1
    assert found(delivered) == {
        (pid(1), "Loyalty", "points", "7", "8", csv_path, "2", "differs"),
        (pid(2), "Loyalty", "tier", "gold", "", csv_path, "3", "missing_in_memory"),
        (pid(4), "Loyalty", "tags", '["a", "c"]', '["a", "b"]', csv_path, "5", "differs"),
        (pid(5), "Loyalty", "code", "", "ZZZ", csv_path, "6", "differs"),
        (pid(9), "Contact", "firstName", "Hal", "Changed", csv_path, "9", "differs"),
    }
    s = result.summary
    assert s["profiles"] == {"checked": PLANNED, "matching": 2, "differing": 5,
                             "profile_not_found": 1, "fetch_failed": 0, "remapped": 1,
                             "to_create": 0, "merged_together": 0}  # fmt: skip
    assert s["groups"]["Loyalty"] == {"checked": 35, "matching": 31, "differing": 3,
                                      "missing_in_memory": 1}  # fmt: skip
    assert s["groups"]["Contact"]["differing"] == 1
    profiles = {p["profile_id"]: p for p in lines(out(delivered) / "reconcile" / "profiles.csv")}
    assert profiles[pid(3)]["outcome"] == "profile_not_found"
    assert profiles[pid(9)]["canonical_profile_id"] == pid(10)
    assert "5 profiles differ; 1 profile was not found. Differences: " in result.text


def test_fix_sends_exactly_the_differences_and_a_second_reconcile_is_clean(
    delivered: Path,
) -> None:
    """--fix patches only the differing and missing traits through run's delivery path (a
    merged profile through its 308); the next reconcile finds nothing."""
    with api(delivered) as http:
        patch(http, 1, {"Loyalty": {"points": 8}, "Contact": {"lastName": "Unmapped"}})
        patch(http, 2, {"Loyalty": {"tier": None}})
        patch(http, 5, {"Loyalty": {"code": "ZZZ"}})
        patch(http, 10, {"Contact": {"firstName": "Changed"}})
    first = reconcile(delivered, fix=True, quiet=True)
    assert first.exit_code == 1  # what it found; the fix is checked by the next reconcile
    fix = first.summary["fix"]
    assert fix["exit_code"] == 0
    assert (fix["profiles"], fix["units"]["updated"], fix["units"]["failed"]) == (4, 4, 0)
    assert fix["remaps"] == 1
    folder = out(delivered) / "reconcile" / "fix"
    bodies = {u["key"]: json.loads(u["body"]) for u in units(folder)}
    assert bodies == {
        f"{pid(1)}#0": {"traits": {"Loyalty": {"points": 7}}},
        f"{pid(2)}#0": {"traits": {"Loyalty": {"tier": "gold"}}},
        f"{pid(5)}#0": {"traits": {"Loyalty": {"code": None}}},
        f"{pid(9)}#0": {"traits": {"Contact": {"firstName": "Hal"}}},
    }
    assert "Fix: 4 requests for 4 profiles: 4 accepted" in first.text

    second = reconcile(delivered, quiet=True)
    assert second.exit_code == 0, second.text
    assert found(delivered) == set()
    with api(delivered) as http:  # the unmapped trait was left alone
        assert http.get(f"/{pid(1)}").json()["traits"]["Contact"]["lastName"] == "Unmapped"


def test_profiles_merged_into_one_are_reported_and_never_fixed(tmp_path: Path) -> None:
    """Two planned profiles that Memory merged into one compete for its traits: reconcile
    reports the loser's differences, and --fix leaves them alone (it would never settle)."""
    rows = [ROWS[8], f"{pid(10)},Ivy,ivy@example.com,3175550110,10,gold,t,i,X10,2025-01-01"]
    job = write_job(tmp_path, rows=rows, name="merged")
    assert run(job, quiet=True).exit_code == 0
    result = reconcile(job, fix=True, quiet=True)
    assert result.exit_code == 1
    assert result.summary["profiles"]["merged_together"] == 2
    assert result.summary["profiles"]["differing"] == 1  # one of the two lost every trait
    loser = {line[0] for line in found(job)}  # which one depends on the order writes landed
    assert loser in ({pid(9)}, {pid(10)})
    assert {line[2] for line in found(job)} == {"firstName", "email", "phone", "points", "tags",
                                                "code"}  # fmt: skip
    assert result.summary["fix"]["units"] is None
    assert "Fix: nothing to send (profiles merged into one are never fixed)." in result.text
    assert not (out(job) / "reconcile" / "fix").exists()


def test_reconcile_leaves_the_runs_files_alone(
    delivered: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's plan files (read again by a resumed run or a retry) are byte for byte as the
    run left them after a reconcile, which plans into reconcile/plan; a re-run sends nothing."""
    names = ("plan.parquet", "rows.parquet", "rejects.csv", "plan.json", "errors.csv")
    before = {name: (out(delivered) / name).read_bytes() for name in names}
    assert reconcile(delivered, quiet=True).exit_code == 0
    assert {name: (out(delivered) / name).read_bytes() for name in names} == before

    assert run(delivered, quiet=True).text.startswith("Nothing to send")


def test_expected_values_are_what_the_plan_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the sample extract (several rows per profile, order_by, bad cells; offline, so the
    rows resolved by profile ID and identity map), the expected value of every trait is the one
    plan.parquet's bodies carry, and nothing else."""
    monkeypatch.chdir(ROOT)
    job = replace(load_job(ROOT / "jobs" / "sample_backfill.toml"), output_dir=tmp_path)
    result = build_plan(job, offline=True, quiet=True, keep_values=True)
    sent: dict[str, dict[tuple[str, str], Any]] = {}
    for unit in pl.read_parquet(result.plan_path).iter_rows(named=True):
        for group, traits in json.loads(unit["body"])["traits"].items():
            for trait, value in traits.items():
                sent.setdefault(unit["key"].rsplit("#", 1)[0], {})[(group, trait)] = value
    expected = expected_frame(job, pl.scan_parquet(tmp_path / "values.parquet")).collect()
    derived = {
        row["__target"]: {
            (t.group, t.trait): row[f"__v_{j}"]
            for j, t in enumerate(job.traits)
            if row[f"__ef_{j}"] is not None
        }
        for row in expected.iter_rows(named=True)
    }
    assert len(derived) == result.summary.profiles > 100
    assert derived == sent


def test_large_plans_are_read_in_buckets(delivered: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above BUCKET_ROWS rows, expected values are derived one bucket of profiles at a time,
    with the same outcome."""
    from backfill.verify import compare

    monkeypatch.setattr(compare, "BUCKET_ROWS", 3)
    result = reconcile(delivered, quiet=True)
    assert result.exit_code == 0, result.text
    assert result.summary["profiles"]["matching"] == PLANNED
    assert len(list((out(delivered) / "reconcile" / "plan").glob("expected-*.parquet"))) == 4


@pytest.mark.parametrize("settle", [-1.0, float("nan"), float("inf")])
def test_settle_must_be_seconds(delivered: Path, settle: float) -> None:
    """--settle takes a finite number of seconds, at least 0; nothing is planned otherwise."""
    with pytest.raises(ConfigError, match="--settle"):
        reconcile(delivered, settle=settle, quiet=True)
    assert not (out(delivered) / "reconcile").exists()


def test_profiles_a_run_created_are_checked(tmp_path: Path) -> None:
    """Once a run has created a profile, reconcile checks it: the plan still resolves its row
    as a create (the run's cached lookup said not found), so the target is mapped to the
    profile that create made, and everything matches."""
    rows = [ROWS[2], ",New,new@example.com,,1,gold,no,n,N1,2025-01-01"]
    (tmp_path / "seed.json").write_text(json.dumps(SEED))
    config = EmulatorConfig(seed=tmp_path / "seed.json", username=SID, password=SECRET)
    with EmulatorServer(config) as emu:
        promoted = {"dataType": "STRING", "idTypePromotion": "email"}  # creates need one
        httpx.patch(
            f"{emu.url}/v1/ControlPlane/Stores/{STORE}/TraitGroups/Contact",
            json={"traits": {"email": promoted}},
            auth=emu.auth,
        ).raise_for_status()
        job = write_job(tmp_path, emu.url, rows=rows, name="creates",
                        identity='on_unresolved = "create"\n')  # fmt: skip
        assert run(job, quiet=True).summary["units"]["created"] == 1
        result = reconcile(job, quiet=True)
    profiles = result.summary["profiles"]
    assert profiles["to_create"] == 0
    assert profiles["checked"] == profiles["matching"] == 2
    assert result.exit_code == 0, result.text


def test_a_locked_job_is_not_reconciled(delivered: Path) -> None:
    """reconcile takes the job's lock: it never races a run."""
    from backfill.checkpoint import RunLock

    with RunLock(out(delivered), "run"), pytest.raises(RunLocked):
        reconcile(delivered, quiet=True)


def test_planned_creates_and_unresolved_rows_are_reported_not_hidden(tmp_path: Path) -> None:
    """Rows that resolve to no profile, and profiles the plan would create, cannot be
    checked: they are counted and reconcile exits 1."""
    rows = [ROWS[2], ",New,new@example.com,,1,gold,no,n,N1,2025-01-01"]
    create = write_job(tmp_path, rows=rows, name="creates", identity='on_unresolved = "create"\n')
    result = reconcile(create, quiet=True)
    assert (result.exit_code, result.summary["profiles"]["to_create"]) == (1, 1)
    assert result.summary["profiles"]["checked"] == 1

    report = write_job(tmp_path, rows=rows, name="unresolved")
    result = reconcile(report, quiet=True)
    assert result.exit_code == 1
    assert result.summary["rows"]["not_resolved"] == 1
    assert result.summary["profiles"]["to_create"] == 0
    assert "1 source row resolves to no profile" in result.text


@contextmanager
def lagging_emulator(folder: Path, lag_ms: int) -> Iterator[str]:
    """`backfill emulator --write-lag-ms` as a process of its own, seeded with SEED."""
    seed = folder / "seed.json"
    seed.write_text(json.dumps(SEED))
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "backfill", "emulator", "--port", "0", "--seed", str(seed),
         "--auth", f"{SID}:{SECRET}", "--write-lag-ms", str(lag_ms)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\s*", line)
        assert match, f"the emulator did not start: {line!r}"
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


def test_settle_rechecks_what_reads_have_not_caught_up_with(tmp_path: Path) -> None:
    """Writes show in reads only after a lag: right after a run, reconcile sees the old values;
    with --settle longer than the lag, the profiles are re-checked and nothing is reported."""
    first = [row.replace(",gold,", ",silver,") for row in ROWS]
    with lagging_emulator(tmp_path, 1500) as url:
        job = write_job(tmp_path, url, rows=first, name="before")
        assert run(job, quiet=True).exit_code == 0
        hasty = reconcile(job, quiet=True)
        assert hasty.exit_code == 1
        assert hasty.summary["profiles"]["differing"] > 0

        job = write_job(tmp_path, url, name="after")
        assert run(job, quiet=True).exit_code == 0
        patient = reconcile(job, settle=2.0, quiet=True)
    assert patient.exit_code == 0, patient.text
    settle = patient.summary["settle"]
    assert settle["rechecked"] > 0
    assert settle["settled"] == settle["rechecked"]
    assert found(job) == set()
    assert "re-checked after 2 s" in patient.text
    for path in (out(job) / "reconcile").rglob("*"):
        if path.is_file() and path.suffix in (".csv", ".json", ".md"):
            assert SECRET not in path.read_text(), path


@pytest.mark.parametrize(
    ("expected", "actual", "data_type", "normalization", "same"),
    [
        (1.0, 1, "NUMBER", None, True),
        (1.5, 1.5, "NUMBER", None, True),
        (1.0, 1.01, "NUMBER", None, False),
        (1.0, "1", "NUMBER", None, False),
        (1.0, True, "NUMBER", None, False),
        (True, True, "BOOLEAN", None, True),
        (False, 0, "BOOLEAN", None, False),
        (["a", "b"], ["a", "b"], "ARRAY", None, True),
        (["a", "b"], ["b", "a"], "ARRAY", None, False),
        (["a"], ["a", "a"], "ARRAY", None, False),
        ([1.0, True], [1, True], "ARRAY", None, True),
        (["1"], [1], "ARRAY", None, False),
        (["(317) 555-0101"], ["+13175550101"], "ARRAY", "phone", True),
        ("gold", "gold", "STRING", None, True),
        ("gold", "Gold", "STRING", None, False),
        ("Ada@Example.com", "ada@example.com", "STRING", None, False),
        ("Ada@Example.com", "ada@example.com", "STRING", "email", True),
        ("(317) 555-0101", "+13175550101", "STRING", "phone", True),
        ("317.555.0101", "1-317-555-0101", "STRING", "phone", True),
        ("+44 20 7946 0958", "442079460958", "STRING", "phone", True),
        ("(317) 555-0101", "+13175550102", "STRING", "phone", False),
        ("555-0101", "+13175550101", "STRING", "phone", False),  # not a number either way
        ("a", 1, "STRING", None, False),
    ],
)
def test_equality_is_normalization_aware(
    expected: Any, actual: Any, data_type: Any, normalization: str | None, same: bool
) -> None:
    """Numbers numerically, booleans as booleans, arrays item by item, strings exactly unless
    they are identifiers the store normalizes (email, phone)."""
    assert same_value(expected, actual, data_type, normalization) is same
