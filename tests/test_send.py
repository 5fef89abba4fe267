"""Delivery in isolation: how each answer is classified, and what the checkpoint can promise."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import polars as pl
import pytest

from backfill.checkpoint import DONE, FAILED, IN_FLIGHT, PENDING, Result, RunDB, Unit
from backfill.config import load_job
from backfill.deliver import loop
from backfill.deliver.interface import Batch, Limits
from backfill.deliver.loop import deliver
from backfill.errors import BackfillError
from backfill.targets import delivery_for
from backfill.targets.memory_patch import send_unit
from backfill.transport.client import Credentials, MemoryClient, RetryPolicy

STORE = "mem_store_01jtest0000000000000000000"
OLD = "mem_profile_01jtest000000000000000000d"
NEW = "mem_profile_01jtest000000000000000000a"
JOB = Path(__file__).parents[1] / "jobs" / "sample_backfill.toml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def job_with(concurrency: int = 4) -> Any:

    job = load_job(JOB)
    connection = replace(job.connection, store_id=STORE)
    return replace(job, connection=connection, send=replace(job.send, concurrency=concurrency))


def client_for(handler: Any) -> MemoryClient:
    return MemoryClient(
        "http://127.0.0.1:9",
        Credentials("AC00000000000000000000000000000000", "secret"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    )


async def send_one(handler: Any, unit: Unit) -> tuple[Result, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response: httpx.Response = handler(request)
        return response

    async with client_for(record) as client:
        return await send_unit(job_with(), client, unit), seen


PATCH = Unit(1, f"{OLD}#0", OLD, "patch", '{"traits":{"Loyalty":{"points":1}}}')


@pytest.mark.anyio
async def test_a_merged_profile_is_followed_once_to_its_canonical_id() -> None:
    """308 re-sends the same body to Canonical-Profile-Id (not the malformed Location)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(OLD):
            return httpx.Response(
                308,
                headers={"Canonical-Profile-Id": NEW, "Location": "https:///broken"},
                json={"message": "This resource has moved.", "uri": "https:///broken"},
            )
        return httpx.Response(202, json={"message": "accepted"})

    result, seen = await send_one(handler, PATCH)
    assert (result.state, result.outcome, result.status, result.sent_to) == (
        DONE,
        "updated",
        202,
        NEW,
    )
    assert [r.url.path.rsplit("/", 1)[1] for r in seen] == [OLD, NEW]
    assert [r.content for r in seen] == [PATCH.body.encode()] * 2  # the planned bytes, as is
    assert result.attempts == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answers", "outcome", "status", "message"),
    [
        ([(404, {"code": 20404, "message": "Not Found"})], "profile_not_found", 404, "Not Found"),
        ([(400, {"code": 400, "message": "Unknown trait"})], "failed", 400, "Unknown trait"),
        ([(308, {})], "failed", 308, "308 without a usable Canonical-Profile-Id header"),
        ([(308, {"canonical": NEW}), (308, {"canonical": OLD})], "failed", 308, "moved again"),
        ([(503, {"code": 20503, "message": "Service Unavailable"})], "failed", 503, None),
    ],
)
async def test_final_answers_are_classified(
    answers: list[tuple[int, dict[str, Any]]], outcome: str, status: int, message: str | None
) -> None:
    """404 is profile_not_found; a 400, a broken redirect or exhausted retries are failed."""
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        code, body = queue.pop(0)
        headers = {"Canonical-Profile-Id": body.pop("canonical")} if "canonical" in body else {}
        return httpx.Response(code, headers=headers, json=body)

    result, _ = await send_one(handler, PATCH)
    assert (result.state, result.outcome, result.status) == (FAILED, outcome, status)
    if message is not None:
        assert message in (result.message or "")


@pytest.mark.anyio
async def test_a_create_unit_posts_and_keeps_the_new_id() -> None:
    """A profile to create is a POST /Profiles; the ID it answers is recorded."""
    unit = Unit(2, "new:email a@b.c#0", None, "create", '{"traits":{"Contact":{"email":"a@b.c"}}}')

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == f"/v1/Stores/{STORE}/Profiles"
        return httpx.Response(202, json={"id": NEW, "message": "ok"})

    result, seen = await send_one(handler, unit)
    assert (result.outcome, result.sent_to) == ("created", NEW)
    assert seen[0].content == unit.body.encode()
    assert seen[0].headers["content-type"] == "application/json"


def plan_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "plan.parquet"
    pl.DataFrame(
        {
            "key": [f"p{i:05d}#0" for i in range(n)],
            "profile_id": [f"p{i:05d}" for i in range(n)],
            "action": ["patch"] * n,
            "body": ["{}"] * n,
            "hash": ["h"] * n,
            "rows": [1] * n,
        }
    ).write_parquet(path)
    return path


class _OneByOne:
    """A delivery around a per-unit send function, for loop tests that need no server."""

    limits = Limits(units=1)

    def __init__(self, send: Callable[[Any, Any, Unit], Awaitable[Result]]) -> None:
        self._send = send

    async def start(self) -> None:
        pass

    async def send(self, batch: Batch) -> list[Result]:
        return [await self._send(None, None, unit) for unit in batch.units]

    def summary(self) -> dict[str, Any]:
        return {}


def one_by_one(send: Callable[[Any, Any, Unit], Awaitable[Result]]) -> Callable[[Any], _OneByOne]:
    return lambda run: _OneByOne(send)


@pytest.mark.anyio
async def test_never_more_than_concurrency_units_in_flight(tmp_path: Path) -> None:
    """While units are being sent, the checkpoint never shows more of them in flight than
    there are workers, and each unit is claimed and finished exactly once."""
    concurrency = 4
    db = RunDB(tmp_path / "run.sqlite")
    db.replace_units(plan_file(tmp_path, 300))
    watcher = RunDB(tmp_path / "run.sqlite")
    peak = 0

    async def fake_send(job: Any, client: Any, unit: Unit) -> Result:
        nonlocal peak
        peak = max(peak, watcher.counts()[IN_FLIGHT])
        await anyio.sleep(0.001)
        return Result(unit.seq, DONE, "updated", 202, None, None, 1, None)

    await deliver(job_with(concurrency), db, one_by_one(fake_send), stop=anyio.Event())
    counts = db.counts()
    assert (counts[DONE], counts[PENDING], counts[IN_FLIGHT], counts["resent"]) == (300, 0, 0, 0)
    assert 1 <= peak <= concurrency


@pytest.mark.anyio
async def test_stopping_drains_and_leaves_nothing_in_flight(tmp_path: Path) -> None:
    """After stop is set, no new unit is claimed; the ones in flight finish and are recorded."""
    db = RunDB(tmp_path / "run.sqlite")
    db.replace_units(plan_file(tmp_path, 200))
    stop = anyio.Event()
    sent = 0

    async def fake_send(job: Any, client: Any, unit: Unit) -> Result:
        nonlocal sent
        sent += 1
        if sent == 20:
            stop.set()
        await anyio.sleep(0.001)
        return Result(unit.seq, DONE, "updated", 202, None, None, 1, None)

    await deliver(job_with(4), db, one_by_one(fake_send), stop=stop)
    counts = db.counts()
    assert counts[IN_FLIGHT] == 0
    assert counts[DONE] == sent
    assert counts[PENDING] == 200 - sent
    assert sent < 30


@pytest.mark.anyio
async def test_units_are_read_a_page_at_a_time_and_each_sent_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pages much smaller than the plan, every unit is still claimed and sent exactly once,
    in plan order per worker, and never more than ``concurrency`` are in flight."""
    monkeypatch.setattr(loop, "PAGE", 7)
    concurrency = 3
    db = RunDB(tmp_path / "run.sqlite")
    db.replace_units(plan_file(tmp_path, 100))
    watcher = RunDB(tmp_path / "run.sqlite")
    sent: list[int] = []
    peak = 0

    async def fake_send(job: Any, client: Any, unit: Unit) -> Result:
        nonlocal peak
        peak = max(peak, watcher.counts()[IN_FLIGHT])
        sent.append(unit.seq)
        await anyio.lowlevel.checkpoint()
        return Result(unit.seq, DONE, "updated", 202, None, None, 1, None)

    await deliver(job_with(concurrency), db, one_by_one(fake_send), stop=anyio.Event())
    assert sorted(sent) == list(range(1, 101))
    counts = db.counts()
    assert (counts[DONE], counts[IN_FLIGHT], counts["resent"]) == (100, 0, 0)
    assert 1 <= peak <= concurrency


@pytest.mark.anyio
async def test_a_checkpoint_that_cannot_be_written_stops_delivery(tmp_path: Path) -> None:
    """If recording a batch fails (a full disk), deliver raises that error instead of sending
    units it could not claim; nothing is left half-written."""

    class Full(RunDB):
        calls = 0

        def record(self, results: list[Result], claims: list[tuple[int, list[int]]]) -> None:
            Full.calls += 1
            if Full.calls == 3:
                raise BackfillError("database or disk is full")
            super().record(results, claims)

    db = Full(tmp_path / "run.sqlite")
    db.replace_units(plan_file(tmp_path, 50))
    sent = 0

    async def fake_send(job: Any, client: Any, unit: Unit) -> Result:
        nonlocal sent
        sent += 1
        await anyio.sleep(0.001)
        return Result(unit.seq, DONE, "updated", 202, None, None, 1, None)

    with pytest.raises(BaseExceptionGroup) as caught:
        await deliver(job_with(2), db, one_by_one(fake_send), stop=anyio.Event())
    assert caught.group_contains(BackfillError, match="disk is full")
    counts = db.counts()
    assert counts[IN_FLIGHT] + counts[DONE] == sent <= 4


# ------------------------------------------------------------- merged profiles, exact order

A = "mem_profile_01jtest000000000000000000a"  # canonical
D = "mem_profile_01jtest000000000000000000d"  # merged into A in the test seed


def merge_plan(tmp_path: Path, url: str) -> Path:
    """A's own unit and D's (merged into A) each hold one trait with the later row: tier is
    later in D's, points in A's."""
    from backfill.pipeline import plan

    (tmp_path / "rows.csv").write_text(
        "profile_id,updated_at,tier,points\n"
        f"{A},2026-01-02,bronze,5\n{D},2026-01-03,silver,\n{D},2026-01-01,,7\n"
    )
    job = tmp_path / "job.toml"
    job.write_text(
        f'name = "merge"\n[connection]\nbase_url = "{url}"\nstore_id = "{STORE}"\n'
        '[source]\npaths = ["rows.csv"]\norder_by = "updated_at"\n'
        '[identity]\nprofile_id_column = "profile_id"\n'
        '[traits.Loyalty]\ntier = "tier"\npoints = { column = "points", type = "NUMBER" }\n'
        '[output]\ndir = "out"\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        plan(job, offline=True, quiet=True)
    return job


@pytest.mark.anyio
@pytest.mark.parametrize("first", [A, D])
async def test_a_redirected_unit_keeps_the_later_row_per_trait(
    emulator: Any, tmp_path: Path, first: str
) -> None:
    """Whichever unit goes first (and with both workers free to send at once), the canonical
    profile ends with the later row's value per trait; a resumed delivery decides the same."""
    job_path = merge_plan(tmp_path, emulator.url)
    plan_path = tmp_path / "out" / "plan" / "plan.parquet"  # where `backfill plan` writes
    units = pl.read_parquet(plan_path)
    ordered = units.sort(pl.col("profile_id") != first)  # `first` leads the plan
    ordered.write_parquet(tmp_path / "ordered.parquet")
    db = RunDB(tmp_path / "run.sqlite")
    db.replace_units(tmp_path / "ordered.parquet")
    job = load_job(job_path)
    user, password = emulator.auth
    async with MemoryClient(emulator.url, Credentials(user, password), concurrency=2) as client:
        await deliver(job, db, delivery_for(job, client), stop=anyio.Event())
        assert db.counts()[DONE] == 2
        # Both sent again over what landed (as if both were in flight at a kill -9 before
        # anything was recorded): the same end state.
        db.replace_units(tmp_path / "ordered.parquet")
        await deliver(job, db, delivery_for(job, client), stop=anyio.Event())
        reply = await client.request("GET", f"/v1/Stores/{STORE}/Profiles/{A}")
    assert reply.body["traits"]["Loyalty"] == {"tier": "silver", "points": 5}


def test_without_older_drops_only_traits_a_later_row_holds() -> None:
    """Per trait, the unit's value goes unless another unit holds a later (order, file, row)."""
    from backfill.plan.units import unit_orders
    from backfill.targets.memory_patch import without_older

    job = job_with()
    names = [(t.group, t.trait) for t in job.traits]
    tier, points = names.index(("Loyalty", "tier")), names.index(("Loyalty", "points"))
    body = '{"traits":{"Loyalty":{"tier":"gold","points":3}}}'
    mine = unit_orders(json.dumps({f"o{tier}": 5, f"p{tier}": 9, f"o{points}": 5,
                                   f"p{points}": 9}))  # fmt: skip
    later_tier = unit_orders(json.dumps({f"o{tier}": 5, f"p{tier}": 10}))  # same time, later row
    older = unit_orders(json.dumps({f"o{tier}": 4, f"p{tier}": 99, f"o{points}": None,
                                    f"p{points}": 1}))  # fmt: skip
    assert without_older(job, body, mine, [older]) == body
    assert json.loads(without_older(job, body, mine, [later_tier]) or "") == {
        "traits": {"Loyalty": {"points": 3}}
    }
    every = unit_orders(json.dumps({f"o{tier}": 6, f"p{tier}": 0, f"o{points}": 6,
                                    f"p{points}": 0}))  # fmt: skip
    assert without_older(job, body, mine, [every]) is None


# -------------------------------------------------------------------- creates, in isolation

CREATE = Unit(3, "new:email a@b.c#0", None, "create", '{"traits":{"Contact":{"email":"a@b.c"}}}')


@pytest.mark.anyio
@pytest.mark.parametrize("found", [[NEW], []])
async def test_a_create_whose_answer_was_lost_asks_lookup_before_posting_again(
    found: list[str],
) -> None:
    """No answer to the POST: the client does not re-send it blindly; Lookup by the keyed
    identifier decides: the profile found is PATCHed, none found is POSTed again."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path.rsplit('/', 1)[1]}")
        if request.url.path.endswith("Lookup"):
            assert json.loads(request.content) == {"idType": "email", "value": "a@b.c"}
            return httpx.Response(200, json={"normalizedValue": "a@b.c", "profiles": found})
        if request.method == "POST" and seen.count("POST Profiles") == 1:
            raise httpx.ReadTimeout("lost")
        return httpx.Response(202, json={"id": NEW, "message": "ok"})

    async with MemoryClient(
        "http://127.0.0.1:9",
        Credentials("AC00000000000000000000000000000000", "secret"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=3, base=0.001, cap=0.001),
    ) as client:
        result = await send_unit(job_with(), client, CREATE)
    again = f"PATCH {NEW}" if found else "POST Profiles"
    assert seen == ["POST Profiles", "POST Lookup", again]
    assert (result.state, result.outcome, result.sent_to) == (DONE, "created", NEW)


@pytest.mark.anyio
async def test_a_create_claimed_before_asks_lookup_first() -> None:
    """A create unit in flight when a run was killed may have landed: Lookup before any POST;
    when Lookup cannot answer, nothing is POSTed and the unit fails with the reason."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path.rsplit('/', 1)[1]}")
        return httpx.Response(503, json={"code": 20503, "message": "Service Unavailable"})

    result, _ = await send_one(handler, CREATE._replace(claims=1))
    assert seen == ["POST Lookup"]
    assert (result.state, result.outcome) == (FAILED, "failed")
    assert "cannot tell whether an earlier attempt created" in (result.message or "")
