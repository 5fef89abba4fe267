"""A Segment job over real HTTP against the emulator's Unify space: a messy extract lands exactly
as an oracle of its own says (read back through the Profile API too); faults, 429s, lost
responses and kill -9 end in the same space with no event applied twice; a bad event in a batch
lands the rest; reconcile finds planted edits and --fix repairs them; the credentials never show.

The oracle shares no code with backfill: user ids trimmed, emails lower-cased with white space
removed, phones through ``phonenumbers`` (mode_oracle's rules), rows joined into people through
any identifier value they share, a person with two user ids left out (reported), and per trait
the row with the latest ``updated_at`` that carries a value wins.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest

import mode_oracle as mo
from backfill.checkpoint import DONE, FAILED, Unit
from backfill.cli import main
from backfill.config import load_job
from backfill.deliver.interface import Batch, Locks, Run
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.pipeline import run as run_job
from backfill.reconcile import reconcile
from backfill.targets.segment import SegmentIdentify
from backfill.transport.client import Credentials, MemoryClient
from backfill.transport.throttle import TokenBucket

ROOT = Path(__file__).parents[1]
WRITE_KEY, ACCESS_TOKEN = "emulator-write-key", "emulator-access-token"
SPACE = "spa_emulator"
HEADER = ("uid", "email", "phone", "first_name", "points", "tier", "subscribed", "tags",
          "updated_at")  # fmt: skip
# column -> (trait, type): the job's flat traits
TRAITS = {
    "first_name": ("firstName", "STRING"),
    "points": ("points", "NUMBER"),
    "tier": ("tier", "STRING"),
    "subscribed": ("subscribed", "BOOLEAN"),
    "tags": ("tags", "ARRAY"),
}
JOB = """name = "seg-run"
[connection]
kind = "segment"
space_id = "spa_emulator"
tracking_url = "{url}"
profiles_url = "{url}"
[source]
paths = ["{extract}"]
order_by = "updated_at"
[[identity.identifiers]]
column = "uid"
id_type = "user_id"
[[identity.identifiers]]
column = "email"
id_type = "email"
[[identity.identifiers]]
column = "phone"
id_type = "phone"
[traits]
firstName = "first_name"
points = {{ column = "points", type = "NUMBER" }}
tier = "tier"
subscribed = {{ column = "subscribed", type = "BOOLEAN" }}
tags = {{ column = "tags", type = "ARRAY", split = ";" }}
[send]
{send}
[output]
dir = "{out}"
"""


@pytest.fixture(autouse=True)
def segment_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("SEGMENT_ACCESS_TOKEN", ACCESS_TOKEN)


def write_job(tmp_path: Path, url: str, extract: Path, send: str = "") -> Path:
    path = tmp_path / "job.toml"
    text = JOB.format(url=url, extract=extract, out=tmp_path / "out", send=send)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ the extract


def write_extract(path: Path, people: int, seed: int) -> None:
    """People with a user id (most), an email (most) and a phone (some), 1-3 rows each in no
    order, cells messy; plus the cases Segment must not get: a person whose rows carry two
    user ids (joined by a phone), blocked user ids, a row with no identifier."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    stamp = 0

    def when() -> str:
        nonlocal stamp
        stamp += 1
        minutes = rng.randrange(4_000_000)
        return (f"{2020 + minutes // 525_600}-{(minutes // 43_800) % 12 + 1:02d}-"
                f"{(minutes // 1_440) % 28 + 1:02d}T{(minutes // 60) % 24:02d}:"
                f"{minutes % 60:02d}:{stamp % 60:02d}Z")  # fmt: skip

    def row(uid: str, email: str, phone: str) -> list[str]:
        traits = [mo._maybe(rng.choice(mo.NAMES), rng), mo._maybe(rng.choice(mo.POINTS), rng),
                  mo._maybe(rng.choice(mo.TIERS), rng), mo._maybe(rng.choice(mo.BOOLEANS), rng),
                  mo._maybe(mo._tags(rng), rng)]  # fmt: skip
        return [uid, email, phone, *traits, when()]

    for i in range(people):
        uid = f"c-{i:05d}" if i % 4 else ""
        email = f"person{i:05d}@example.com" if i % 7 else ""
        phone = f"+1317{6_000_000 + i:07d}" if (i % 3 == 0 or (not uid and not email)) else ""
        for n in range(rng.randint(1, 3)):
            cells = [uid if n == 0 or rng.random() < 0.5 else "",
                     mo._email_cell(email, rng) if email else "",
                     mo._phone_cell(phone, rng) if phone else ""]  # fmt: skip
            if not any(c.strip() for c in cells):
                cells[0 if uid else 1 if email else 2] = uid or email or phone
            if not cells[0].strip() and not cells[1].strip() and phone:
                cells[2] = phone  # the phone alone carries this row: keep it usable
            rows.append(row(*cells))
    rows.append(row("x-1", "", "+13175550001"))  # two user ids, one phone: a conflict
    rows.append(row("x-2", "", "+13175550001"))
    rows.append(row("0000", "blocked@example.com", ""))  # blocked user id: goes by email
    rows.append(row("null", "", ""))  # only a blocked value: nothing usable
    rows.append(row("", "", ""))  # nothing at all
    rng.shuffle(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)


@dataclass
class Person:
    ids: set[tuple[str, str]] = field(default_factory=set)
    traits: dict[str, Any] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)


BLOCKED = ("-1", "null", "anonymous")


def _uid(cell: str) -> str | None:
    text = cell.strip()
    if not text or text in BLOCKED or set(text) <= {"0", "-"}:
        return None
    return text


def oracle(path: Path) -> tuple[list[Person], list[int]]:
    """The people the extract makes (their ids and traits), and the rows of people over a
    limit (two user ids), which must not be sent."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids: list[set[tuple[str, str]]] = []
    for r in rows:
        mine = set()
        if uid := _uid(r["uid"]):
            mine.add(("user_id", uid))
        if email := mo._norm_email(r["email"]):
            mine.add(("email", email))
        if phone := mo._norm_phone(r["phone"]):
            mine.add(("phone", phone))
        ids.append(mine)
    groups = mo.components(ids)
    people, over = [], []
    for members in groups:
        person = Person(set().union(*(ids[i] for i in members)), rows=members)
        if sum(1 for t, _ in person.ids if t == "user_id") > 1:
            over += members
            continue
        for column, (trait, kind) in TRAITS.items():
            carrying = [(mo._order(rows[i]["updated_at"]), i) for i in members
                        if _value(kind, rows[i][column]) is not None]  # fmt: skip
            if carrying:
                person.traits[trait] = _value(kind, rows[max(carrying)[1]][column])
        emails = [(mo._order(rows[i]["updated_at"]), i) for i in members
                  if mo._norm_email(rows[i]["email"])]  # fmt: skip
        if emails:
            person.traits["email"] = mo._norm_email(rows[max(emails)[1]]["email"])
        people.append(person)
    return people, sorted(i + 1 for i in over)


def _value(kind: str, cell: str) -> Any:
    text = cell.strip()
    if not text:
        return None
    if kind == "NUMBER":
        try:
            return float(text)
        except ValueError:
            return None
    if kind == "BOOLEAN":
        low = text.lower()
        return True if low in mo.TRUE else False if low in mo.FALSE else None
    if kind == "ARRAY":
        return [item.strip() for item in text.split(";") if item.strip()] or None
    return text


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return bool(a == b)


def space_differences(space: Any, people: list[Person]) -> list[str]:
    """What the emulator's space holds that the oracle does not say, person by person: one
    profile each, holding their ids (and an anonymous_id only when they have no user id) and
    exactly their traits; no other profile."""
    found: list[str] = []
    profiles = list(space.profiles())
    owner = {tuple(e): p["segment_id"] for p in profiles for e in p["external_ids"]}
    seen: set[str] = set()
    for person in people:
        where = {owner.get(i) for i in person.ids}
        if len(where) != 1 or None in where:
            found.append(f"{sorted(person.ids)}: in {sorted(map(str, where))}")
            continue
        (sid,) = where
        seen.add(str(sid))
        held = next(p for p in profiles if p["segment_id"] == sid)
        theirs = {tuple(e) for e in held["external_ids"]}
        anonymous = {e for e in theirs if e[0] == "anonymous_id"}
        wants_anonymous = not any(t == "user_id" for t, _ in person.ids)
        if theirs - anonymous != person.ids or len(anonymous) != int(wants_anonymous):
            found.append(f"{sorted(person.ids)}: holds ids {sorted(theirs)}")
        traits = held["traits"]
        if set(traits) != set(person.traits) or not all(
            same(traits[k], v) for k, v in person.traits.items()
        ):
            found.append(f"{sorted(person.ids)}: holds {traits}, expected {person.traits}")
    extra = [p["segment_id"] for p in profiles if p["segment_id"] not in seen]
    if extra:
        found.append(f"profiles nobody expects: {extra}")
    return found


def segment_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(url + "/__emulator__/stats").json()["segment"]
    return stats


def summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def errors(out: Path) -> list[dict[str, str]]:
    with (out / "errors.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------- the tests


def test_a_messy_extract_lands_exactly(tmp_path: Path) -> None:
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=300, seed=1)
    people, over = oracle(extract)
    with EmulatorServer(EmulatorConfig()) as emu:
        job = write_job(tmp_path, emu.url, extract, 'verify = "all"\nrate = 20000\n')
        result = run_job(job, quiet=True)
        stats = segment_stats(emu.url)
        assert space_differences(emu.emulator.segment, people) == []
    s = result.summary
    out = tmp_path / "out"
    assert result.exit_code == 1  # the conflict and the unusable rows
    units = s["units"]["upserted"]
    assert units == len(people) == s["units"]["total"]
    tracking = stats["tracking"]
    assert (tracking["events_applied"], tracking["duplicates"]) == (units, 0)
    assert tracking["discarded"] == {}
    # Every person read back through the Profile API holds their latest rows.
    check = s["delivery"]["verify"]
    assert (check["checked"], check["matched"], check["failed"]) == (units, units, 0)
    lines = errors(out)
    assert sorted(int(e["row"]) for e in lines if e["outcome"] == "conflict") == over
    assert all("2 user_id values (x-1, x-2)" in e["message"] for e in lines
               if e["outcome"] == "conflict")  # fmt: skip
    blocked = [e for e in lines if "Segment blocks as an identifier" in e["message"]]
    assert len(blocked) == 2
    assert {e["outcome"] for e in lines} == {"conflict", "invalid_row", "unresolved"}
    # Every row is accounted for: landed, or named in errors.csv.
    rows = s["rows"]
    assert rows["landed"] + rows["landed_in_part"] + rows["not_landed"] == rows["read"]


def test_faults_429s_and_lost_responses_end_in_the_same_space(tmp_path: Path) -> None:
    """500/503s, dropped connections, lost responses (applied, answer lost) and a tracking
    limit: the space ends as the oracle says, and no event is applied twice (the re-sent ones
    are deduplicated by their messageId)."""
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=400, seed=2)
    people, _ = oracle(extract)
    config = EmulatorConfig(fault_rate=0.1, drop_rate=0.05, lost_response_rate=0.1,
                            tracking_rate=100.0, random_seed=7)  # fmt: skip
    with EmulatorServer(config) as emu:
        send = 'verify = "none"\nrate = 4000\nburst = 40\nconcurrency = 4\nmax_attempts = 30\n'
        result = run_job(write_job(tmp_path, emu.url, extract, send), quiet=True)
        stats = segment_stats(emu.url)
        whole = httpx.get(emu.url + "/__emulator__/stats").json()
        assert space_differences(emu.emulator.segment, people) == []
    s = result.summary
    assert s["units"]["upserted"] == len(people) and s["units"]["failed"] == 0
    tracking = stats["tracking"]
    assert tracking["events_applied"] == len(people)  # each once
    assert tracking["duplicates"] > 0  # lost responses were re-sent and dropped by Segment
    assert whole["faults"]["lostResponse"] > 0 and whole["faults"]["drop"] > 0
    assert s["requests"]["throttled"] > 0  # the tracking limit answered 429s
    assert s["throttle"]["events"] >= 1
    # The timeline (for the report's chart): every answer in one second of it, by kind.
    (timeline,) = s["timeline"]
    answers = sum(timeline["accepted"]) + sum(timeline["throttled"]) + sum(timeline["errors"])
    assert answers == s["requests"]["sent"]
    assert sum(timeline["throttled"]) == s["requests"]["throttled"]
    assert sum(timeline["retries"]) == s["requests"]["retries"]
    assert timeline["second"] == sorted(set(timeline["second"]))
    assert all(0 < rate <= 4000 for rate in timeline["rate"])


def test_kill_9_then_resume_lands_exactly_once(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """`backfill run` killed -9 with batches in flight (a slow service), then run again: the
    space is exactly the oracle's and no event was applied twice, although the batches in
    flight at the kill were sent again."""
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=300, seed=3)
    people, _ = oracle(extract)
    state = tmp_path / "emulator.sqlite"
    env = {**os.environ, "SEGMENT_WRITE_KEY": WRITE_KEY, "SEGMENT_ACCESS_TOKEN": ACCESS_TOKEN}
    with EmulatorServer(EmulatorConfig(latency_ms=200.0, state=state)) as emu:
        send = 'verify = "none"\nrate = 5000\nburst = 20\nconcurrency = 2\n'
        job = write_job(tmp_path, emu.url, extract, send)
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(proc)
        deadline = time.monotonic() + 60
        while segment_stats(emu.url)["tracking"]["events_applied"] < 40:
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
        assert proc.wait(30) == -signal.SIGKILL
        applied_at_kill = segment_stats(emu.url)["tracking"]["events_applied"]
        assert applied_at_kill < len(people)
        result = run_job(job, quiet=True)
        stats = segment_stats(emu.url)
        assert space_differences(emu.emulator.segment, people) == []
    assert result.summary["resumed"] > 0  # the batches in flight at the kill, sent again
    assert stats["tracking"]["events_applied"] == len(people)
    assert result.summary["units"]["upserted"] == len(people)


def test_an_oversize_event_is_reported_and_the_rest_lands(tmp_path: Path) -> None:
    """An event over Segment's 32 KB (as its client measures it: ``\\u`` escapes) is never sent;
    errors.csv names its row; every other person lands."""
    extract = tmp_path / "extract.csv"
    big = "é" * 6_000  # 12,000 bytes of UTF-8, 36,000 as Segment's client counts it
    with extract.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerow(["c-1", "", "", "Ada", "", "", "", "", ""])
        writer.writerow(["c-2", "", "", big, "", "", "", "", ""])
        writer.writerow(["c-3", "", "", "Cy", "", "", "", "", ""])
    with EmulatorServer(EmulatorConfig()) as emu:
        result = run_job(write_job(tmp_path, emu.url, extract, 'verify = "all"'), quiet=True)
        space = emu.emulator.segment
        held = {uid: space.profile("user_id", uid) for uid in ("c-1", "c-2", "c-3")}
        assert {uid: p and p["traits"] for uid, p in held.items()} == {
            "c-1": {"firstName": "Ada"}, "c-2": None, "c-3": {"firstName": "Cy"}
        }  # fmt: skip
    assert result.exit_code == 1
    (line,) = errors(tmp_path / "out")
    assert (line["row"], line["outcome"]) == ("2", "failed")
    assert "Segment refuses events over 32,768" in line["message"]


def test_a_refused_batch_is_bisected_to_the_bad_event() -> None:
    """A narrow unit test (mock transport: the emulator refuses a batch only for sizes, which
    the delivery checks first): a 400 for any batch holding the bad event is split until that
    event is alone; it fails with Segment's message, every other lands."""
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["batch"]
        requests.append(len(events))
        if any(e["traits"].get("bad") for e in events):
            return httpx.Response(400, json={"code": "invalid_request", "message": "bad event"})
        return httpx.Response(200, json={"success": True})

    job = load_job(ROOT / "jobs" / "sample_segment.toml")
    units = [
        Unit(n, f"new:user_id c-{n}#0", None, "upsert",
             json.dumps({"type": "identify", "userId": f"c-{n}", "traits": {"bad": n == 5}}))
        for n in range(8)
    ]  # fmt: skip

    async def main() -> list[Any]:
        bucket = TokenBucket(10_000, 1_000)
        client = MemoryClient("https://api.segment.io", Credentials(WRITE_KEY, ""),
                              bucket=bucket, transport=httpx.MockTransport(handler))  # fmt: skip
        async with client:
            delivery = SegmentIdentify(job, client, Run(None, Locks()))
            results = await delivery.send(Batch(1, units))
            assert delivery.summary()["split_requests"] == 3  # 8 -> 4 -> 2 -> 1
            return results

    results = anyio.run(main)
    by_seq = {r.seq: r for r in results}
    assert {s for s, r in by_seq.items() if r.state == FAILED} == {5}
    assert all(by_seq[s].state == DONE for s in by_seq if s != 5)
    assert by_seq[5].status == 400 and "invalid_request: bad event" in (by_seq[5].message or "")
    assert requests == [8, 4, 4, 2, 1, 1, 2]  # the bad half split, the good sent whole


def test_reconcile_finds_planted_edits_and_fix_repairs_them(tmp_path: Path) -> None:
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=80, seed=4)
    people, _ = oracle(extract)
    with EmulatorServer(EmulatorConfig()) as emu:
        job = write_job(tmp_path, emu.url, extract, 'verify = "none"')
        assert run_job(job, quiet=True).summary["units"]["upserted"] == len(people)
        assert reconcile(job, quiet=True).summary["profiles"]["differing"] == 0
        # Someone else edits three people: a changed tier, a removed name, a changed name.
        with_uid = [p for p in people if any(t == "user_id" for t, _ in p.ids)]
        edited = [p for p in with_uid if {"firstName", "tier"} <= set(p.traits)][:3]
        uids = [next(v for t, v in p.ids if t == "user_id") for p in edited]
        plant = [
            {"type": "identify", "userId": uids[0], "traits": {"tier": "planted"}},
            {"type": "identify", "userId": uids[1], "traits": {"firstName": None}},
            {"type": "identify", "userId": uids[2], "traits": {"firstName": "Someone Else"}},
        ]
        httpx.post(emu.url + "/v1/batch", json={"batch": plant}, auth=(WRITE_KEY, ""))
        found = reconcile(job, quiet=True)
        assert found.exit_code == 1, found.text
        differences = pl.read_csv(tmp_path / "out" / "reconcile" / "reconcile.csv",
                                  infer_schema=False)  # fmt: skip
        assert sorted(differences["profile_id"].to_list()) == sorted(f"user_id:{u}" for u in uids)
        kinds = dict(zip(differences["trait"], differences["kind"], strict=True))
        assert kinds["firstName"] in ("differs", "missing_in_memory")
        assert all(differences["row"].is_not_null())  # each names the row behind the value
        # When Segment wrote what it holds (verbose traits): after the run, so changed since.
        assert differences.filter(pl.col("kind") == "differs")["updated_at"].is_not_null().all()
        fixed = reconcile(job, fix=True, quiet=True)
        assert fixed.summary["fix"]["exit_code"] == 0
        again = reconcile(job, quiet=True)
        assert again.summary["profiles"]["differing"] == 0, again.text
        assert space_differences(emu.emulator.segment, people) == []


def test_a_wrong_write_key_stops_the_run_and_never_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "wk-not-the-right-one-123"
    monkeypatch.setenv("SEGMENT_WRITE_KEY", secret)
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=5, seed=5)
    with EmulatorServer(EmulatorConfig()) as emu:
        code = main(["run", str(write_job(tmp_path, emu.url, extract)), "--quiet"])
        assert emu.emulator.segment.counters.view()["tracking"]["events_applied"] == 0
    err = capsys.readouterr().err
    assert code == 3 and "SEGMENT_WRITE_KEY" in err and "Segment Tracking API" in err
    for path in [*(tmp_path / "out").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in err


def test_missing_credentials_fail_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SEGMENT_ACCESS_TOKEN")
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=5, seed=6)
    job = write_job(tmp_path, "https://api.segment.io", extract)
    text = job.read_text().replace('profiles_url = "https://api.segment.io"',
                                   'profiles_url = "https://profiles.segment.com"')  # fmt: skip
    job.write_text(text)
    assert main(["run", str(job), "--quiet"]) != 0
    assert "SEGMENT_ACCESS_TOKEN is not set" in capsys.readouterr().err


def test_an_incremental_rerun_sends_only_what_changed(tmp_path: Path) -> None:
    """Nightly runs into a space: the second run of an unchanged extract sends nothing; a
    changed cell sends that one person again (a new event, so a new messageId)."""
    extract = tmp_path / "extract.csv"
    write_extract(extract, people=30, seed=8)
    people, _ = oracle(extract)
    with EmulatorServer(EmulatorConfig()) as emu:
        job = write_job(tmp_path, emu.url, extract, 'verify = "none"')
        state = tmp_path / "landed.sqlite"
        job.write_text(job.read_text() + f'[incremental]\nstate = "{state}"\n')
        first = run_job(job, quiet=True)
        assert first.summary["units"]["upserted"] == len(people)
        again = run_job(job, restart=True, quiet=True)
        assert again.summary["units"]["skipped_unchanged"] == len(people)
        assert again.summary["requests"]["sent"] == 0
        with extract.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        target = next(r for r in rows[1:] if r[0].startswith("c-") and r[3].strip())
        target[3] = "Renamed"
        target[-1] = "2039-01-01T00:00:00Z"  # the latest row: its name wins
        with extract.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
        third = run_job(job, restart=True, quiet=True)
        assert third.summary["units"]["upserted"] == 1
        assert (
            emu.emulator.segment.profile("user_id", target[0].strip())["traits"][  # type: ignore[index]
                "firstName"
            ]
            == "Renamed"
        )
        assert segment_stats(emu.url)["tracking"]["duplicates"] == 0
