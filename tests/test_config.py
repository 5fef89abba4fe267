"""The job file: a bad one fails before anything is read, naming the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.config import load_job
from backfill.errors import ConfigError

GOOD = """
name = "t"
[connection]
base_url = "emulator"
store_id = "mem_store_01jtest0000000000000000000"
[source]
paths = ["x.csv"]
[identity]
profile_id_column = "profile_id"
[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"
[traits.Contact]
firstName = "first_name"
[traits.Loyalty]
points = { column = "points", type = "NUMBER" }
tags = { column = "tags", type = "ARRAY", split = ";", nulls = "delete" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_sample_job_loads() -> None:
    """The shipped sample job is valid and reads the columns its mapping names."""
    job = load_job(Path(__file__).parents[1] / "jobs" / "sample_backfill.toml")
    assert job.connection.embedded
    assert [i.id_type for i in job.identity.identifiers] == ["email", "phone", "crm_id"]
    assert job.columns[:4] == ["profile_id", "email", "phone", "crm_id"]
    assert job.output_dir == Path("out/sample-backfill")


def test_defaults_and_mapping_forms(tmp_path: Path) -> None:
    """A bare column name is a STRING trait; tables set type, split and nulls."""
    job = load_job(write(tmp_path, GOOD))
    first, points, tags = job.traits
    assert (first.group, first.trait, first.column, first.type) == (
        "Contact",
        "firstName",
        "first_name",
        "STRING",
    )
    assert (points.type, points.nulls) == ("NUMBER", "skip")
    assert (tags.type, tags.split, tags.nulls) == ("ARRAY", ";", "delete")
    assert job.send.effective_burst == 5
    assert job.identity.lookup is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name = "t"', 'name = "a b"'), "name: use letters"),
        (('base_url = "emulator"', 'base_url = "http://example.com"'), "connection.base_url"),
        (("mem_store_01jtest0000000000000000000", "store_1"), "connection.store_id"),
        (('paths = ["x.csv"]', 'paths = ["x.xlsx"]'), "source.paths"),
        (('paths = ["x.csv"]', "paths = []"), "source.paths"),
        (('firstName = "first_name"', 'FirstName = "first_name"'), "traits.Contact.FirstName"),
        (("[traits.Loyalty]", "[traits.'Loyalty Points']"), "traits.Loyalty Points"),
        (('type = "NUMBER"', 'type = "INT"'), "traits.Loyalty.points.type"),
        (('split = ";", nulls', 'split = ";", nulls = "drop", x'), "traits.Loyalty.tags"),
        (('normalization = "email"', 'normalization = "lower"'), "normalization"),
        (("[traits.Contact]", '[traits.Contact]\nfirstname = { colum = "x" }'), "unknown key"),
        (('name = "t"', 'name = "t"\nnmae = "typo"'), "nmae: unknown key"),
        (("[[identity.identifiers]]", "[send]\nrate = 0\n[[identity.identifiers]]"), "send.rate"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """Each mistake fails with the file, the dotted key and what is wrong."""
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, text))
    assert str(err.value).startswith(str(tmp_path / "job.toml"))
    assert message in str(err.value)


def test_split_only_for_arrays(tmp_path: Path) -> None:
    """split on a non-ARRAY trait is a mistake, not silently ignored."""
    text = GOOD.replace('firstName = "first_name"', 'firstName = { column = "f", split = "," }')
    with pytest.raises(ConfigError, match=r"traits\.Contact\.firstName\.split"):
        load_job(write(tmp_path, text))


def test_identity_needs_a_way_to_resolve(tmp_path: Path) -> None:
    """Without a profile ID column or an identifier, no row could ever resolve."""
    text = GOOD.replace('profile_id_column = "profile_id"', "").split("[[identity")[0]
    text += "[traits.Contact]\nfirstName = 'f'\n"
    with pytest.raises(ConfigError, match="identity: set profile_id_column"):
        load_job(write(tmp_path, text))


def test_missing_and_unparseable_files(tmp_path: Path) -> None:
    """A missing file and broken TOML are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(write(tmp_path, "name = "))


def test_seed_only_with_the_emulator(tmp_path: Path) -> None:
    """A seed file means nothing to the real service; saying so beats ignoring it."""
    text = GOOD.replace(
        'base_url = "emulator"', 'base_url = "https://memory.twilio.com"\nseed = "s.json"'
    )
    with pytest.raises(ConfigError, match=r"connection\.seed"):
        load_job(write(tmp_path, text))


def test_incremental_state(tmp_path: Path) -> None:
    """[incremental] names a SQLite file kept across runs; not one of the run's own files."""
    job = load_job(write(tmp_path, GOOD + '[incremental]\nstate = "state/t.sqlite"\n'))
    assert job.incremental is not None and job.incremental.state == Path("state/t.sqlite")
    assert load_job(write(tmp_path, GOOD)).incremental is None
    for table, message in [
        ('state = "state/t.json"', r"incremental\.state: must name a SQLite file"),
        ('state = "out/t/run.sqlite"', r"incremental\.state: .* one of the run's own files"),
        ('stat = "t.sqlite"', r"incremental\.stat: unknown key"),
        ("", r"incremental\.state: is required"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_job(write(tmp_path, GOOD + f"[incremental]\n{table}\n"))


def test_create_needs_every_identifier_written_as_a_trait(tmp_path: Path) -> None:
    """A created profile must carry the identifier it is keyed on, or a lost create could not
    be found by Lookup and would be sent twice: refused at job load, naming the column."""
    text = GOOD.replace("[identity]\n", '[identity]\non_unresolved = "create"\n')
    with pytest.raises(ConfigError, match=r"identity\.on_unresolved: .* map column 'email'") as e:
        load_job(write(tmp_path, text))
    assert '[traits.Contact] email = "email"' in str(e.value)
    fixed = text.replace('firstName = "first_name"', 'firstName = "first_name"\nemail = "email"')
    assert load_job(write(tmp_path, fixed)).identity.on_unresolved == "create"
