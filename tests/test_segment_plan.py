"""A Segment job: its file, and the identify events its plan builds (offline, no emulator).

What the events must say comes from ../shared/segment-api.md: userId for user_id, the email
trait (lower-cased), every other identifier in context.externalIds, E.164 phones, ``timestamp``
from order_by with a zone, ``null`` to unset a trait; and what must never be sent: a blocked
value as an identifier, a person whose rows break an identifier limit.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from backfill.checkpoint import Unit
from backfill.config import load_job
from backfill.errors import ConfigError, CredentialsMissing
from backfill.pipeline import plan
from backfill.targets.segment import anonymous_id, event, message_id
from backfill.transport.connection import ACCESS_TOKEN, WRITE_KEY, segment_credentials

JOB = """
name = "seg"
[connection]
kind = "segment"
space_id = "spa_test"
tracking_url = "emulator"
profiles_url = "emulator"
[source]
paths = ["{csv}"]
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
tier = "tier"
points = {{ column = "points", type = "NUMBER" }}
note = {{ column = "note", nulls = "delete" }}
[output]
dir = "{out}"
"""


def write_job(tmp_path: Path, csv: str, text: str = JOB) -> Path:
    data = tmp_path / "in.csv"
    data.write_text(csv, encoding="utf-8")
    job = tmp_path / "job.toml"
    job.write_text(text.format(csv=data, out=tmp_path / "out"), encoding="utf-8")
    return job


def bodies(tmp_path: Path, csv: str, text: str = JOB) -> dict[str, dict[str, Any]]:
    """Plan offline; each unit's event by its key."""
    result = plan(write_job(tmp_path, csv, text), offline=True, quiet=True)
    units = pl.read_parquet(result.plan_path)
    return {key: json.loads(body) for key, body in units.select("key", "body").iter_rows()}


def rejects(tmp_path: Path) -> list[dict[str, str]]:
    return pl.read_csv(tmp_path / "out" / "plan" / "rejects.csv", infer_schema=False).to_dicts()


# --------------------------------------------------------------------------------- job file


def test_the_sample_segment_job_loads() -> None:
    job = load_job(Path(__file__).parents[1] / "jobs" / "sample_segment.toml")
    c = job.connection
    assert (c.kind, c.space_id, c.embedded, c.destination) == (
        "segment", "spa_emulator", True, "segment:spa_emulator"
    )  # fmt: skip
    assert [(i.id_type, i.normalization, i.limit) for i in job.identity.identifiers] == [
        ("user_id", "trim", 1), ("email", "email", 5), ("phone", "phone", 5)
    ]  # fmt: skip
    assert {t.group for t in job.traits} == {""}
    assert (job.send.mode, job.send.rate, job.send.store_resolves) == ("identify", 1000.0, True)
    assert job.identity.lookup is False


@pytest.mark.parametrize(
    ("region", "tracking", "profiles"),
    [
        ("us", "https://api.segment.io", "https://profiles.segment.com"),
        ("eu", "https://events.eu1.segmentapis.com", "https://profiles.euw1.segment.com"),
    ],
)
def test_the_region_picks_the_documented_hosts(
    tmp_path: Path, region: str, tracking: str, profiles: str
) -> None:
    text = JOB.replace(
        'tracking_url = "emulator"\nprofiles_url = "emulator"', f'region = "{region}"'
    )
    job = load_job(write_job(tmp_path, "uid,email,phone,tier,points,note,updated_at\n", text))
    assert (job.connection.base_url, job.connection.profiles_url) == (tracking, profiles)
    assert not job.connection.embedded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "segment"', 'kind = "segmnt"'), "connection.kind: must be one of memory"),
        (('space_id = "spa_test"', 'space_id = "a b"'), "connection.space_id"),
        (('space_id = "spa_test"\n', ""), "connection.space_id: is required"),
        (('profiles_url = "emulator"', 'profiles_url = "emulator"\nregion = "asia"'),
         "connection.region"),
        (('tracking_url = "emulator"\nprofiles_url = "emulator"',
          'tracking_url = "http://api.example.com"\nprofiles_url = "https://p.example.com"'),
         "connection.tracking_url: must be 'emulator' or an https:// URL"),
        (('profiles_url = "emulator"', 'profiles_url = "https://p.example.com"'),
         "connection.tracking_url: the embedded emulator serves both APIs"),
        (('space_id = "spa_test"', 'space_id = "spa_test"\nstore_id = "mem_store_x"'),
         "connection.store_id: unknown key"),
        (('[source]', '[send]\nmode = "bulk"\n[source]'), 'send.mode: connection.kind = "segment"'),
        (('[[identity.identifiers]]\ncolumn = "uid"',
          '[identity]\nprofile_id_column = "pid"\n[[identity.identifiers]]\ncolumn = "uid"'),
         "identity.profile_id_column: connection.kind = \"segment\""),
        (('[[identity.identifiers]]\ncolumn = "uid"',
          '[identity]\non_unresolved = "report"\n[[identity.identifiers]]\ncolumn = "uid"'),
         "identity.on_unresolved"),
        (('id_type = "phone"', 'id_type = "phone"\nnormalization = "trim"'),
         "identity.identifiers[2].normalization: id_type phone needs \"phone\""),
        (('id_type = "email"', 'id_type = "email"\nnormalization = "none"'),
         "identity.identifiers[1].normalization"),
        (('id_type = "user_id"', 'id_type = "User_ID"'), "identity.identifiers[0].id_type"),
        (('id_type = "user_id"', 'id_type = "user_id"\nlimit = 0'),
         "identity.identifiers[0].limit: must be at least 1"),
        (('tier = "tier"', '[traits.Contact]\ntier = "tier"'), "traits.Contact: Segment"),
        (('tier = "tier"', 'email = "other_email"'),
         "traits.email: the email identifier (column 'email') is sent as the email trait"),
        (('tier = "tier"', '" tier" = "tier"'), "traits. tier: trait names"),
    ],
)  # fmt: skip
def test_a_bad_segment_job_names_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in JOB
    path = write_job(tmp_path, "", JOB.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_credentials_come_from_the_environment_only() -> None:
    write = segment_credentials(WRITE_KEY, {WRITE_KEY: " wk-secret \n"})
    assert (write.username, write.password, write.secret) == ("wk-secret", "", "wk-secret")
    assert "wk-secret" not in repr(write)
    assert "SEGMENT_WRITE_KEY" in write.check
    with pytest.raises(CredentialsMissing, match="SEGMENT_ACCESS_TOKEN is not set"):
        segment_credentials(ACCESS_TOKEN, {WRITE_KEY: "wk"})


# -------------------------------------------------------------------------------- the events

HEADER = "uid,email,phone,tier,points,note,updated_at\n"


def test_events_carry_every_identifier_in_segments_fields(tmp_path: Path) -> None:
    csv = HEADER + (
        "c-1, Ada@Example.COM ,(415) 555-0100,gold,12,hi,2024-05-01T10:00:00Z\n"
        ",bob@example.com,,silver,,,2024-05-02T00:00:00+02:00\n"
    )
    events = bodies(tmp_path, csv)
    ada = events["new:user_id c-1#0"]
    assert ada == {
        "type": "identify",
        "userId": "c-1",
        "traits": {"tier": "gold", "points": 12, "note": "hi", "email": "ada@example.com"},
        "context": {"externalIds": [
            {"id": "ada@example.com", "type": "email", "collection": "users", "encoding": "none"},
            {"id": "+14155550100", "type": "phone", "collection": "users", "encoding": "none"},
        ]},
        "timestamp": "2024-05-01T10:00:00.000Z",
    }  # fmt: skip
    bob = events["new:email bob@example.com#0"]
    assert "userId" not in bob and "anonymousId" not in bob  # the delivery adds one
    assert bob["timestamp"] == "2024-05-01T22:00:00.000Z"  # UTC, with a zone
    # note maps nulls = "delete": its blank cell unsets the trait (JSON null).
    assert bob["traits"] == {"tier": "silver", "note": None, "email": "bob@example.com"}


def test_the_latest_row_wins_and_a_blank_deletes_where_asked(tmp_path: Path) -> None:
    csv = HEADER + (
        "c-1,a@x.io,,gold,1,first,2024-01-02T00:00:00Z\n"
        "c-1,,+14155550100,,,,2024-01-03T00:00:00Z\n"  # later: note blank -> null (delete)
        "c-1,a2@x.io,,silver,,,2024-01-01T00:00:00Z\n"  # older: loses tier, adds an email
    )
    event_ = bodies(tmp_path, csv)["new:user_id c-1#0"]
    assert event_["traits"] == {"tier": "gold", "points": 1, "note": None, "email": "a@x.io"}
    ids = [(i["type"], i["id"]) for i in event_["context"]["externalIds"]]
    assert ids == [("email", "a2@x.io"), ("email", "a@x.io"), ("phone", "+14155550100")]
    assert event_["timestamp"] == "2024-01-03T00:00:00.000Z"


def test_blocked_values_are_reported_never_sent(tmp_path: Path) -> None:
    csv = HEADER + (
        "0000,a@x.io,,gold,,,\n"  # user_id blocked: the row goes by its email
        "-1,,,gold,,,\n"  # nothing usable left: unresolved
        "anonymous,b@x.io,,gold,,,\n"
    )
    events = bodies(tmp_path, csv)
    assert set(events) == {"new:email a@x.io#0", "new:email b@x.io#0"}
    assert all("userId" not in e for e in events.values())
    found = {(r["row"], r["outcome"]) for r in rejects(tmp_path)}
    assert found == {("1", "invalid_row"), ("2", "invalid_row"), ("2", "unresolved"),
                     ("3", "invalid_row")}  # fmt: skip
    reasons = [r["reason"] for r in rejects(tmp_path) if r["outcome"] == "invalid_row"]
    assert all("uid: " in r and "Segment blocks as an identifier" in r for r in reasons)


def test_a_person_over_an_identifier_limit_is_reported_whole(tmp_path: Path) -> None:
    """Two user_ids on one person (linked through a shared phone): Segment would drop one and
    put the traits on another profile; every row of them is reported, nothing sent."""
    csv = HEADER + (
        "c-1,,+14155550100,gold,,,\nc-2,,+14155550100,silver,,,\nc-3,c@x.io,,bronze,,,\n"
    )
    events = bodies(tmp_path, csv)
    assert set(events) == {"new:user_id c-3#0"}
    lines = [r for r in rejects(tmp_path) if r["outcome"] == "conflict"]
    assert [r["row"] for r in lines] == ["1", "2"]
    assert (
        "2 user_id values (c-1, c-2), where a Segment profile holds at most 1" in lines[0]["reason"]
    )


def test_wide_jobs_split_into_events_of_at_most_298_traits(tmp_path: Path) -> None:
    names = [f"t{i}" for i in range(300)]
    header = "uid," + ",".join(names) + "\n"
    csv = header + "c-1," + ",".join("v" for _ in names) + "\n"
    traits = "\n".join(f'{n} = "{n}"' for n in names)
    text = (JOB.split("[[identity.identifiers]]")[0].replace('order_by = "updated_at"\n', "")
            + '[[identity.identifiers]]\ncolumn = "uid"\nid_type = "user_id"\n[traits]\n'
            + traits + '\n[output]\ndir = "{out}"\n')  # fmt: skip
    events = bodies(tmp_path, csv, text)
    assert sorted(events) == ["new:user_id c-1#0", "new:user_id c-1#1"]
    sizes = [len(e["traits"]) for e in events.values()]
    assert sorted(sizes) == [2, 298]
    assert all(e["userId"] == "c-1" for e in events.values())


def test_long_strings_fit_segment_not_memorys_cap(tmp_path: Path) -> None:
    long = "x" * 5_000  # over Memory's 1,024, far under Segment's 32 KB event
    events = bodies(tmp_path, HEADER + f"c-1,,,{long},,,\n")
    assert events["new:user_id c-1#0"]["traits"]["tier"] == long


# ------------------------------------------------------------------------- ids on the wire


def unit(key: str, body: str) -> Unit:
    return Unit(seq=1, key=key, profile_id=None, action="upsert", body=body)


def test_message_ids_are_deterministic_and_change_with_the_content() -> None:
    a = unit("new:user_id c-1#0", '{"type":"identify","userId":"c-1","traits":{"t":1}}')
    same = message_id("spa", "job", a)
    assert same == message_id("spa", "job", a._replace(seq=99))  # a resend: the same ID
    assert len(same) <= 100 and uuid.UUID(same).version == 5
    changed = a._replace(body=a.body.replace("1}", "2}"))
    others = {
        message_id("spa", "job", changed),
        message_id("spa2", "job", a),
        message_id("spa", "job2", a),
        message_id("spa", "job", a._replace(key="k#1")),
    }
    assert same not in others and len(others) == 4


def test_the_event_on_the_wire() -> None:
    with_user = unit("new:user_id c-1#0", '{"type":"identify","userId":"c-1","traits":{"t":1}}')
    sent = json.loads(event("spa", "job", with_user))
    assert sent["messageId"] == message_id("spa", "job", with_user)
    assert "anonymousId" not in sent and sent["traits"] == {"t": 1}
    # No user_id: an anonymousId the same on every run, and the same from reconcile's address.
    by_email = unit("new:email a@x.io#0", '{"type":"identify","traits":{"userId":"trait"}}')
    sent = json.loads(event("spa", "job", by_email))
    assert sent["anonymousId"] == anonymous_id("spa", "new:email a@x.io")
    assert sent["anonymousId"] == anonymous_id("spa", "email:a@x.io")
    assert sent["traits"] == {"userId": "trait"}  # a trait's name is not an id field
