"""`backfill schema`: the diff between a job's traits and the store's trait groups, and applying
it, against the emulator over real HTTP. Races are forced deterministically by a transport that
lets another writer change the group just before our write goes out."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from backfill.config import Job, load_job
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import ConfigError, SchemaError, SchemaMismatch
from backfill.targets.memory_schema import (
    ApplyResult,
    Conflict,
    Promotion,
    SchemaDiff,
    apply,
    check,
    fetch_diff,
    format_diff,
    required,
    schema,
)
from backfill.transport.client import Credentials, MemoryClient

STORE = "mem_store_01jschema00000000000000000"
GROUPS = "/v1/ControlPlane/Stores/" + STORE + "/TraitGroups"

# The store as found: Contact lacks crmId's idTypePromotion and has two traits the job does not
# map (one promoting an identifier, which even prune keeps),
# Loyalty types `points` as STRING (the job writes NUMBER) and lacks `visits`, Orders is missing,
# Marketing is not the job's business at all.
STORE_GROUPS: dict[str, dict[str, Any]] = {
    "Contact": {
        "firstName": {"dataType": "STRING"},
        "email": {"dataType": "STRING", "idTypePromotion": "email"},
        "crmId": {"dataType": "STRING"},
        "phone": {"dataType": "STRING", "idTypePromotion": "phone"},
        "nickname": {"dataType": "STRING"},
    },
    "Loyalty": {
        "points": {"dataType": "STRING"},
        "tier": {"dataType": "STRING"},
        "legacyCode": {"dataType": "STRING"},
    },
    "Marketing": {"segment": {"dataType": "STRING"}},
}

TRAITS = """
[traits.Contact]
firstName = "first_name"
email = "email"
crmId = "crm_id"

[traits.Loyalty]
points = { column = "points", type = "NUMBER" }
tier = "tier"
visits = { column = "visits", type = "NUMBER" }

[traits.Orders]
total = { column = "total", type = "NUMBER" }
lastSku = "last_sku"
"""

# The same job without the conflicting mapping: apply can make the store ready for it.
CLEAN_TRAITS = TRAITS.replace('points = { column = "points", type = "NUMBER" }\n', "")


def write_seed(path: Path, groups: dict[str, dict[str, Any]] = STORE_GROUPS) -> Path:
    doc = {
        "stores": [
            {
                "id": STORE,
                "displayName": "schema-store",
                "traitGroups": [{"displayName": g, "traits": t} for g, t in groups.items()],
            }
        ]
    }
    path.write_text(json.dumps(doc))
    return path


def write_job(
    tmp: Path, base_url: str, traits: str = TRAITS, store: str = STORE, seed: Path | None = None
) -> Path:
    """A job with identifiers email and crm_id, both also written as traits."""
    path = tmp / "job.toml"
    seed_line = f"seed = {json.dumps(str(seed))}\n" if seed else ""
    path.write_text(
        f"""name = "schema-test"
[connection]
base_url = {json.dumps(base_url)}
store_id = "{store}"
{seed_line}
[source]
paths = ["customers.csv"]

[[identity.identifiers]]
column = "email"
id_type = "email"
normalization = "email"

[[identity.identifiers]]
column = "crm_id"
id_type = "crm_id"

{traits}
[output]
dir = {json.dumps(str(tmp / "out"))}
"""
    )
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(seed=write_seed(tmp_path / "seed.json"))) as emu:
        yield emu


@pytest.fixture
def credentials(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment `schema()` reads credentials from, when the job names a URL."""
    for name in ("TWILIO_API_KEY", "TWILIO_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", server.auth[0])
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", server.auth[1])


Hook = Callable[[httpx.Request], Awaitable[None]]
Rewrite = Callable[[httpx.Request, httpx.Response], Awaitable[httpx.Response]]


class Spy(httpx.AsyncBaseTransport):
    """Real HTTP, with a hook before each request goes out and a log of what came back."""

    def __init__(self, before: Hook | None = None, rewrite: Rewrite | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.before = before
        self.rewrite = rewrite
        self.log: list[tuple[str, str, int, Any]] = []  # method, path, status, body sent

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.before is not None:
            await self.before(request)
        response = await self.inner.handle_async_request(request)
        if self.rewrite is not None:
            response = await self.rewrite(request, response)
        sent = json.loads(request.content) if request.content else None
        self.log.append((request.method, request.url.path, response.status_code, sent))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def writes(self) -> list[tuple[str, str, int, Any]]:
        return [entry for entry in self.log if entry[0] in ("POST", "PATCH", "DELETE")]


def client(
    server: EmulatorServer, transport: httpx.AsyncBaseTransport | None = None
) -> MemoryClient:
    return MemoryClient(
        server.url, Credentials(*server.auth), transport=transport or httpx.AsyncHTTPTransport()
    )


def run(
    server: EmulatorServer,
    job: Job,
    fn: Callable[..., Awaitable[Any]],
    transport: Spy | None = None,
    **kw: Any,
) -> Any:
    """``fn(job, client, **kw)`` with a client of the emulator (through ``transport``)."""

    async def main() -> Any:
        async with client(server, transport) as c:
            return await fn(job, c, **kw)

    return anyio.run(main)


def store_groups(server: EmulatorServer) -> dict[str, dict[str, Any]]:
    """Every trait group of the store and its trait definitions, read past our client."""
    reply = httpx.get(
        server.url + GROUPS, params={"includeTraits": "true"}, auth=server.auth
    ).json()
    return {g["displayName"]: g["traits"] for g in reply["traitGroups"]}


async def other_writer(server: EmulatorServer, method: str, path: str, body: Any) -> None:
    """Another process changing the store, without If-Match."""
    async with httpx.AsyncClient(base_url=server.url, auth=server.auth) as other:
        reply = await other.request(method, path, json=body)
        assert reply.status_code == 202, reply.text


class FakeClock:
    """Time that passes only when slept through; remembers every sleep."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


# ----------------------------------------------------------------------------------- diff


def test_required_types_from_the_mapping_and_promotion_from_identifier_columns(
    tmp_path: Path,
) -> None:
    """An identifier column written as a trait needs idTypePromotion, or writing it would not
    attach the identifier; other traits need only their dataType."""
    job = load_job(write_job(tmp_path, "emulator"))
    assert required(job) == {
        "Contact": {
            "firstName": {"dataType": "STRING"},
            "email": {"dataType": "STRING", "idTypePromotion": "email"},
            "crmId": {"dataType": "STRING", "idTypePromotion": "crm_id"},
        },
        "Loyalty": {
            "points": {"dataType": "NUMBER"},
            "tier": {"dataType": "STRING"},
            "visits": {"dataType": "NUMBER"},
        },
        "Orders": {"total": {"dataType": "NUMBER"}, "lastSku": {"dataType": "STRING"}},
    }


def test_diff_names_missing_groups_traits_conflicts_promotions_and_extras(
    server: EmulatorServer, tmp_path: Path
) -> None:
    """One read per group; the diff says what a run would trip over, and what it would not."""
    job = load_job(write_job(tmp_path, server.url))
    diff = run(server, job, fetch_diff)
    assert diff == SchemaDiff(
        create={"Orders": {"total": {"dataType": "NUMBER"}, "lastSku": {"dataType": "STRING"}}},
        add={"Loyalty": {"visits": {"dataType": "NUMBER"}}},
        conflicts=(Conflict("Loyalty", "points", "STRING", "NUMBER"),),
        promotions=(Promotion("Contact", "crmId", None, "crm_id"),),
        extra={"Contact": ("nickname",), "Loyalty": ("legacyCode",)},
        kept={"Contact": ("phone",)},
    )
    assert diff.blocking
    assert format_diff(diff) == (
        "Trait groups to create:\n"
        "  + Orders\n"
        "      total (NUMBER)\n"
        "      lastSku (STRING)\n"
        "Traits to add:\n"
        "  + Loyalty.visits (NUMBER)\n"
        "Type conflicts (never changed by --apply: change the job or the store):\n"
        "  ! Loyalty.points: the store has STRING, the job writes NUMBER\n"
        "idTypePromotion differences (reported, not changed):\n"
        "  ~ Contact.crmId: the store has none, the job's identifier is crm_id\n"
        "Traits the job does not map (deleted only with --prune):\n"
        "  - Contact.nickname\n"
        "  - Loyalty.legacyCode\n"
        "Traits the job does not map that promote an identifier (never deleted):\n"
        "  = Contact.phone"
    )
    # Orders' 404 makes it check that the store itself exists.
    assert server.stats()["byOperation"] == {
        "traitGroups.fetch": {"200": 2, "404": 1},
        "stores.fetch": {"200": 1},
    }


def test_promotion_that_differs_is_reported(server: EmulatorServer, tmp_path: Path) -> None:
    """A trait promoting another idType than the job's identifier is a note, not a blocker."""
    traits = '[traits.Contact]\nphone = "crm_id"\n'
    job = load_job(write_job(tmp_path, server.url, traits))
    diff = run(server, job, fetch_diff)
    assert diff.promotions == (Promotion("Contact", "phone", "phone", "crm_id"),)
    assert not diff.blocking
    assert format_diff(diff).splitlines()[0] == (
        "The store defines every trait group and trait the job writes."
    )


def test_check_refuses_a_run_with_the_diff(server: EmulatorServer, tmp_path: Path) -> None:
    """`run` stops before its first row (a ConfigError: exit 2) and shows what is missing."""
    job = load_job(write_job(tmp_path, server.url))
    with pytest.raises(SchemaMismatch) as caught:
        run(server, job, check)
    assert isinstance(caught.value, ConfigError)
    assert caught.value.diff == format_diff(run(server, job, fetch_diff))
    message = str(caught.value)
    assert message.startswith(f"store {STORE} is not ready for job schema-test (`backfill schema ")
    assert "a type conflict needs the job's type or the store's definition changed" in message
    assert message.endswith(caught.value.diff)


def test_check_passes_a_ready_store(server: EmulatorServer, tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, server.url, '[traits.Contact]\nfirstName = "first"\n'))
    assert run(server, job, check) is None


def test_a_missing_store_is_named(server: EmulatorServer, tmp_path: Path) -> None:
    """Not "create every group": the store itself is not there."""
    other = "mem_store_01jnothere0000000000000000"
    job = load_job(write_job(tmp_path, server.url, store=other))
    with pytest.raises(ConfigError, match=f"store {other} not found"):
        run(server, job, fetch_diff)


# ---------------------------------------------------------------------------------- apply


def test_apply_creates_and_adds_but_leaves_conflicts_promotions_and_extras(
    server: EmulatorServer, tmp_path: Path
) -> None:
    """Only what is missing is written; every write's Operation is read until COMPLETED."""
    job = load_job(write_job(tmp_path, server.url))
    spy = Spy()
    result: ApplyResult = run(server, job, apply, spy)

    assert [(c.group, c.action, c.traits) for c in result.changes] == [
        ("Loyalty", "add", ("visits",)),
        ("Orders", "create", ("total", "lastSku")),
    ]
    assert all(
        c.operation_id and c.operation_id.startswith("mem_operation") for c in result.changes
    )
    assert result.races == 0
    assert result.before.blocking
    assert result.after == SchemaDiff(
        conflicts=(Conflict("Loyalty", "points", "STRING", "NUMBER"),),
        promotions=(Promotion("Contact", "crmId", None, "crm_id"),),
        extra={"Contact": ("nickname",), "Loyalty": ("legacyCode",)},
        kept={"Contact": ("phone",)},
    )
    groups = store_groups(server)
    assert groups["Loyalty"] == {
        "points": {"dataType": "STRING"},  # the conflict, untouched
        "tier": {"dataType": "STRING"},
        "legacyCode": {"dataType": "STRING"},
        "visits": {"dataType": "NUMBER"},
    }
    assert groups["Orders"] == {"total": {"dataType": "NUMBER"}, "lastSku": {"dataType": "STRING"}}
    assert groups["Contact"] == STORE_GROUPS["Contact"]
    assert groups["Marketing"] == STORE_GROUPS["Marketing"]
    patch = next(body for m, _, _, body in spy.writes() if m == "PATCH")
    assert patch == {"traits": {"visits": {"dataType": "NUMBER"}}}  # points never sent
    polled = [path for m, path, status, _ in spy.log if "/Operations/" in path and status == 200]
    assert sorted(p.rsplit("/", 1)[1] for p in polled) == sorted(
        c.operation_id for c in result.changes if c.operation_id
    )
    # A second look finds nothing left to create or add.
    again = run(server, job, fetch_diff)
    assert not again.create and not again.add


def test_schema_command_exit_codes(
    server: EmulatorServer, tmp_path: Path, credentials: None
) -> None:
    """0 when nothing blocks a run (after --apply, if given); 1 while something does."""
    clean = write_job(tmp_path, server.url, CLEAN_TRAITS)
    first = schema(clean)
    assert first.exit_code == 1 and first.applied is None
    assert first.text == format_diff(first.diff)

    fixed = schema(clean, apply=True)
    assert fixed.exit_code == 0 and fixed.applied is not None
    assert fixed.text == (
        "Added to Loyalty: visits\n"
        "Created trait group Orders: total, lastSku\n" + format_diff(fixed.remaining)
    )
    assert fixed.text.splitlines()[2:4] == [
        "The store defines every trait group and trait the job writes.",
        "idTypePromotion differences (reported, not changed):",
    ]
    assert not fixed.remaining.blocking

    again = schema(clean)
    assert again.exit_code == 0
    assert again.diff.create == {} and again.diff.add == {}

    conflicted = schema(write_job(tmp_path, server.url), apply=True)
    assert conflicted.exit_code == 1  # apply cannot fix a type conflict
    assert conflicted.text == ("Nothing changed.\n" + format_diff(conflicted.remaining))
    assert conflicted.remaining.conflicts == (Conflict("Loyalty", "points", "STRING", "NUMBER"),)

    with pytest.raises(ConfigError, match="--prune"):
        schema(clean, prune=True)


def test_schema_against_the_embedded_emulator_keeps_what_it_applied(tmp_path: Path) -> None:
    """The embedded emulator's state lives in the output folder: a later run sees the groups."""
    job = write_job(tmp_path, "emulator", CLEAN_TRAITS, seed=write_seed(tmp_path / "seed.json"))
    assert schema(job).exit_code == 1
    assert schema(job, apply=True).exit_code == 0
    assert schema(job).exit_code == 0


def test_prune_deletes_only_unmapped_traits_of_the_jobs_groups(
    server: EmulatorServer, tmp_path: Path
) -> None:
    """Only with prune; never a group, a trait of another group, a conflict, or a trait that
    promotes an identifier."""
    job = load_job(write_job(tmp_path, server.url))
    run(server, job, apply)
    assert "nickname" in store_groups(server)["Contact"]

    result = run(server, job, apply, prune=True)
    assert sorted((c.group, c.action, c.traits) for c in result.changes) == [
        ("Contact", "delete", ("nickname",)),
        ("Loyalty", "delete", ("legacyCode",)),
    ]
    groups = store_groups(server)
    assert set(groups) == {"Contact", "Loyalty", "Marketing", "Orders"}
    assert set(groups["Contact"]) == {"firstName", "email", "crmId", "phone"}
    assert groups["Loyalty"]["points"] == {"dataType": "STRING"}
    assert set(groups["Loyalty"]) == {"points", "tier", "visits"}
    assert groups["Marketing"] == STORE_GROUPS["Marketing"]
    assert result.after.extra == {}
    assert result.after.kept == {"Contact": ("phone",)}


# ---------------------------------------------------------------------------------- races


def test_412_race_rereads_and_never_overwrites_the_other_writers_trait(
    server: EmulatorServer, tmp_path: Path
) -> None:
    """Between our read of Loyalty and our PATCH, another writer defines `visits` as STRING.
    Our stale If-Match meets a 412; the fresh diff shows `visits` as a conflict, so the retry
    sends only `streak`, and `visits` keeps the other writer's type."""
    traits = TRAITS.replace("tier = ", 'streak = { column = "streak", type = "NUMBER" }\ntier = ')
    job = load_job(write_job(tmp_path, server.url, traits))
    raced = False

    async def before(request: httpx.Request) -> None:
        nonlocal raced
        if request.method == "PATCH" and request.url.path.endswith("/Loyalty") and not raced:
            raced = True
            body = {"traits": {"visits": {"dataType": "STRING"}}}
            await other_writer(server, "PATCH", GROUPS + "/Loyalty", body)

    spy = Spy(before)
    result: ApplyResult = run(server, job, apply, spy)

    patches = [(status, body) for m, path, status, body in spy.writes() if m == "PATCH"]
    assert patches == [
        (412, {"traits": {"visits": {"dataType": "NUMBER"}, "streak": {"dataType": "NUMBER"}}}),
        (202, {"traits": {"streak": {"dataType": "NUMBER"}}}),
    ]
    assert result.races == 1
    loyalty = store_groups(server)["Loyalty"]
    assert loyalty["visits"] == {"dataType": "STRING"}
    assert loyalty["streak"] == {"dataType": "NUMBER"}
    assert Conflict("Loyalty", "visits", "STRING", "NUMBER") in result.after.conflicts
    assert [(c.group, c.action, c.traits) for c in result.changes] == [
        ("Loyalty", "add", ("streak",)),
        ("Orders", "create", ("total", "lastSku")),
    ]


def test_409_race_on_create_turns_into_adding_what_is_still_missing(
    server: EmulatorServer, tmp_path: Path
) -> None:
    """Another writer creates Orders first (with `total` only): we add `lastSku` to it."""
    job = load_job(write_job(tmp_path, server.url, CLEAN_TRAITS))

    async def before(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path == GROUPS:
            body = {"displayName": "Orders", "traits": {"total": {"dataType": "NUMBER"}}}
            await other_writer(server, "POST", GROUPS, body)

    result: ApplyResult = run(server, job, apply, Spy(before))
    assert result.races == 1
    assert [(c.group, c.action, c.traits) for c in result.changes] == [
        ("Loyalty", "add", ("visits",)),
        ("Orders", "add", ("lastSku",)),
    ]
    assert store_groups(server)["Orders"] == {
        "total": {"dataType": "NUMBER"},
        "lastSku": {"dataType": "STRING"},
    }


def test_a_group_that_keeps_changing_is_given_up_on(server: EmulatorServer, tmp_path: Path) -> None:
    """A 412 on every attempt: a bounded number of tries, then a clear error."""
    job = load_job(write_job(tmp_path, server.url, CLEAN_TRAITS))

    async def before(request: httpx.Request) -> None:
        if request.method == "PATCH" and request.url.path.endswith("/Loyalty"):
            await other_writer(server, "PATCH", GROUPS + "/Loyalty", {})

    spy = Spy(before)
    with pytest.raises(SchemaError, match="'Loyalty' changed under each of 5 attempts"):
        run(server, job, apply, spy)
    assert [status for m, path, status, _ in spy.writes() if path.endswith("/Loyalty")] == [412] * 5
    assert "visits" not in store_groups(server)["Loyalty"]


# ----------------------------------------------------------------------------- operations


def operation_states(*states: tuple[str, str | None]) -> Rewrite:
    """Answer the first polls of an Operation with these (status, Retry-After) instead."""
    queue = list(states)

    async def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if "/Operations/" not in request.url.path or not queue:
            return response
        await response.aread()
        status, retry_after = queue.pop(0)
        body = response.json() | {"status": status}
        if status != "COMPLETED":
            body.pop("completedAt", None)
        if status == "FAILED":
            body["error"] = {"code": 20500, "message": "trait store unavailable"}
        headers = {"Content-Type": "application/json"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return httpx.Response(200, headers=headers, json=body)

    return rewrite


def test_operations_are_polled_until_completed_honouring_retry_after(
    server: EmulatorServer, tmp_path: Path
) -> None:
    job = load_job(write_job(tmp_path, server.url, '[traits.Orders]\ntotal = "total"\n'))
    clock = FakeClock()
    spy = Spy(rewrite=operation_states(("PENDING", "3"), ("RUNNING", None), ("RUNNING", "1")))
    result: ApplyResult = run(server, job, apply, spy, clock=clock)
    assert [c.action for c in result.changes] == ["create"]
    # The 202's Retry-After is 0: poll at once; then 3 s as told, backoff when told nothing.
    assert clock.sleeps == [0.0, 3.0, 1.0, 1.0]
    assert [p for m, p, _, _ in spy.log if "/Operations/" in p] == [
        f"/v1/ControlPlane/Operations/{result.changes[0].operation_id}"
    ] * 4


def test_a_failed_operation_is_an_error(server: EmulatorServer, tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, server.url, '[traits.Orders]\ntotal = "total"\n'))
    spy = Spy(rewrite=operation_states(("RUNNING", "1"), ("FAILED", None)))
    with pytest.raises(SchemaError, match="ended FAILED: trait store unavailable"):
        run(server, job, apply, spy, clock=FakeClock())


def test_traits_read_across_pages(server: EmulatorServer, tmp_path: Path) -> None:
    """A group whose traits come in pages is read whole: a trait on page 2 is not "missing"."""

    class SmallPages(Spy):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and "/TraitGroups/" in request.url.path:
                url = request.url.copy_merge_params({"pageSize": "2"})
                request = httpx.Request("GET", url, headers=request.headers)
            return await super().handle_async_request(request)

    job = load_job(write_job(tmp_path, server.url))
    spy = SmallPages()
    assert run(server, job, fetch_diff, spy) == run(server, job, fetch_diff)
    contact_reads = [p for m, p, _, _ in spy.log if m == "GET" and p.endswith("/Contact")]
    assert len(contact_reads) == 3  # 5 traits, 2 a page
