"""Comparing what Memory holds with what the plan sends, one profile at a time.

The pieces ``reconcile`` is made of, apart from planning and reporting: ``expected_frame`` (per
profile and trait, the value the plan sends and the row that supplied it), ``same_value`` (the
store's notion of equal), and ``check_all``, which fetches every profile ``send.concurrency``
at a time under the job's token bucket, compares, and writes what does not match as it goes,
so memory stays bounded whatever the number of profiles.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import polars as pl
from anyio.abc import ObjectReceiveStream
from tqdm import tqdm

from backfill.aio import run_async
from backfill.config import DataType, Job
from backfill.errors import InvalidIdentifierError
from backfill.files import VALUES_FILE, private_dir, private_file
from backfill.plan.mapping import ORDER, present_column, value_column
from backfill.plan.normalize import normalize
from backfill.plan.resolve import NEW, TARGET
from backfill.plan.source import FILE, ROW
from backfill.plan.units import BUCKET_ROWS
from backfill.targets.memory_patch import PROFILE_ID, profile_path
from backfill.verify.segment import MAX_PAGES, TRAITS_PAGE, include, traits_path

if TYPE_CHECKING:
    from backfill.transport.client import ClientStats, MemoryClient, Reply

# Trait outcomes (``kind`` in reconcile.csv) and profile outcomes (profiles.csv).
MATCHES: Final = "matches"
DIFFERS: Final = "differs"
MISSING: Final = "missing_in_memory"
NOT_FOUND: Final = "profile_not_found"
FETCH_FAILED: Final = "fetch_failed"
FOUND: Final = "found"

# ``updated_at``: when the store's value was written, where the store says (Segment's verbose
# traits; empty for Memory): a value written after the run was changed since by someone else.
TRAIT_COLUMNS: Final = ("profile_id", "group", "trait", "expected", "actual", "file", "row", "kind",
                        "updated_at")  # fmt: skip
PROFILE_COLUMNS: Final = ("profile_id", "canonical_profile_id", "outcome", "differing",
                          "missing_in_memory", "detail")  # fmt: skip
MAX_TRAIT_GROUPS_PARAM: Final = 256  # Memory API: traitGroups is 1-256 characters
BATCH: Final = 10_000  # profiles read from the expected values at a time


# ---------------------------------------------------------------------------------- equality


def same_value(
    expected: Any,
    actual: Any,
    data_type: DataType,
    normalization: str | None = None,
    region: str = "US",
) -> bool:
    """Whether Memory's ``actual`` is the ``expected`` value as the store would hold it.

    NUMBER compares numerically (1 == 1.0), BOOLEAN as booleans, ARRAY item by item under the
    same rules, STRING exactly, except that with an identifier's ``normalization`` (``email``,
    ``phone``) both sides are compared in their normalized forms.
    """
    if data_type == "ARRAY":
        if not isinstance(expected, list) or not isinstance(actual, list):
            return False
        return len(expected) == len(actual) and all(
            _same_item(e, a, normalization, region) for e, a in zip(expected, actual, strict=True)
        )
    if data_type == "NUMBER":
        return _is_number(expected) and _is_number(actual) and float(expected) == float(actual)
    if data_type == "BOOLEAN":
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return _same_string(expected, actual, normalization, region)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_item(expected: Any, actual: Any, normalization: str | None, region: str) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if _is_number(expected) or _is_number(actual):
        return _is_number(expected) and _is_number(actual) and float(expected) == float(actual)
    return _same_string(expected, actual, normalization, region)


def _same_string(expected: Any, actual: Any, normalization: str | None, region: str) -> bool:
    if not isinstance(expected, str) or not isinstance(actual, str):
        return False
    if expected == actual:
        return True
    if normalization not in ("email", "phone"):
        return False
    try:
        ours = normalize(expected, normalization, region)
        theirs = normalize(actual, normalization, region)
    except InvalidIdentifierError:
        return False
    return ours == theirs


def _text(value: Any) -> str:
    """A value as reconcile.csv shows it: strings as they are, the rest as JSON, absent empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # as plan.py encodes a whole NUMBER
    return json.dumps(value, ensure_ascii=False)


# -------------------------------------------------------------------------- expected values


def file_column(j: int) -> str:
    return f"__ef_{j}"


def row_column(j: int) -> str:
    return f"__er_{j}"


def expected_frame(job: Job, values: pl.LazyFrame) -> pl.LazyFrame:
    """Per target: each trait's expected value and the source row that supplied it.

    plan.py's rule: rows sorted by (target, order, file, row); per trait, the last row that
    sends it wins (``__p_j``: a value, or a blank under ``nulls = "delete"``, whose expected
    value is null: the trait must be absent). ``__ef_j``/``__er_j`` are null where no row sends
    trait ``j``: nothing is expected of it. Targets that expect nothing are left out.
    """
    aggs: list[pl.Expr] = []
    for j in range(len(job.traits)):
        sent = pl.col(present_column(j))
        aggs += [
            pl.col(value_column(j)).filter(sent).last(),
            pl.col(FILE).filter(sent).last().alias(file_column(j)),
            pl.col(ROW).filter(sent).last().alias(row_column(j)),
        ]
    expects = pl.any_horizontal(pl.col(file_column(j)).is_not_null()
                                for j in range(len(job.traits)))  # fmt: skip
    return (
        values.sort([TARGET, ORDER, FILE, ROW], nulls_last=False)
        .group_by(TARGET, maintain_order=True)
        .agg(aggs)
        .filter(expects)
    )


def write_expected(
    job: Job,
    folder: Path,
    created: Mapping[str, str],
    into: Path | None = None,
    *,
    profiles: pl.DataFrame | None = None,
) -> list[Path]:
    """expected_frame of the plan's values.parquet, in bounded memory as plan.write_units does:
    above BUCKET_ROWS rows, one bucket of targets at a time. ``created`` maps ``new:...``
    targets to the profiles a run created for them. The parts go to ``into`` (default:
    ``folder``).

    ``profiles`` (``TARGET`` -> ``profile``: where the store put each target, for bulk and
    import) keeps only those targets and merges, before the latest row is chosen, the rows of
    targets the store put in one profile: what that profile should hold is what PATCH mode
    would have sent it.
    """
    values = pl.scan_parquet(folder / VALUES_FILE)
    into = folder if into is None else into
    if profiles is not None:
        values = (
            values.join(profiles.lazy(), on=TARGET, how="inner")
            .with_columns(pl.col("profile").alias(TARGET))
            .drop("profile")
        )
    rows = values.select(pl.len()).collect().item()
    buckets = max(1, -(-rows // BUCKET_ROWS))
    parts = []
    for b in range(buckets):
        part = into / f"expected-{b:04d}.parquet"
        mine = values if buckets == 1 else values.filter(pl.col(TARGET).hash(seed=7) % buckets == b)
        expected = expected_frame(job, mine)
        if created:
            expected = expected.with_columns(
                pl.col(TARGET).replace(pl.Series(list(created)), pl.Series(list(created.values())))
            )
        expected.sink_parquet(part)
        part.chmod(0o600)
        parts.append(part)
    return parts


@dataclass(frozen=True)
class _Trait:
    """Trait ``j`` of the job as the comparison needs it, with its places in an expected row."""

    j: int
    group: str
    trait: str
    type: DataType
    normalization: str | None  # email/phone when the trait's column is such an identifier
    region: str

    @property
    def value(self) -> int:
        return 1 + 3 * self.j

    @property
    def file(self) -> int:
        return 2 + 3 * self.j

    @property
    def row(self) -> int:
        return 3 + 3 * self.j


def _traits(job: Job) -> list[_Trait]:
    normalized = {
        i.column: (i.normalization, i.default_region)
        for i in reversed(job.identity.identifiers)  # the first identifier of a column wins
        if i.normalization in ("email", "phone")
    }
    return [
        _Trait(j, t.group, t.trait, t.type, *normalized.get(t.column, (None, "US")))
        for j, t in enumerate(job.traits)
    ]


# ----------------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class _Fetched:
    outcome: str  # FOUND, NOT_FOUND or FETCH_FAILED
    traits: dict[str, Any]
    canonical: str | None  # the profile it was merged into, when the GET answered 301
    detail: str = ""
    updated: dict[str, str] = field(default_factory=dict)  # trait -> when the store wrote it


async def _fetch(
    client: MemoryClient, store: str, profile_id: str, params: dict[str, str] | None
) -> _Fetched:
    """GET one profile, following one merge redirect (301 + Canonical-Profile-Id)."""
    reply = await client.request("GET", profile_path(store, profile_id), params=params)
    canonical = None
    if reply.status == 301:
        canonical = reply.headers.get("canonical-profile-id", "")
        if not PROFILE_ID.match(canonical):
            return _Fetched(FETCH_FAILED, {}, None, "301 without a usable Canonical-Profile-Id")
        reply = await client.request("GET", profile_path(store, canonical), params=params)
        if reply.status == 301:
            return _Fetched(FETCH_FAILED, {}, canonical, f"{canonical} moved again")
    if reply.status == 200 and isinstance(reply.body, dict):
        traits = reply.body.get("traits")
        return _Fetched(FOUND, traits if isinstance(traits, dict) else {}, canonical)
    if reply.status == 404:
        return _Fetched(NOT_FOUND, {}, canonical)
    return _Fetched(FETCH_FAILED, {}, canonical, _failure(reply))


async def _fetch_segment(client: MemoryClient, job: Job, person: str) -> _Fetched:
    """GET the traits of ``person`` (``type:value``) from the Profile API, every page, as one
    group named ``""`` (Segment's traits are flat: ``verify.segment``)."""
    params: dict[str, str] = {"limit": str(TRAITS_PAGE), "verbose": "true"}
    wanted = include(job)
    if wanted is not None:
        params["include"] = wanted
    path = traits_path(job.connection.space_id, person)
    traits: dict[str, Any] = {}
    updated: dict[str, str] = {}
    for _ in range(MAX_PAGES):
        reply = await client.request("GET", path, params=params)
        if reply.status == 404:
            return _Fetched(NOT_FOUND, {}, None)
        body = reply.body
        page = body.get("traits") if isinstance(body, dict) else None
        if not reply.ok or not isinstance(page, dict):
            return _Fetched(FETCH_FAILED, {}, None, _failure(reply))
        for name, verbose in page.items():  # verbose: {value, source_id, updated_at}
            if isinstance(verbose, dict) and "value" in verbose:
                traits[name] = verbose["value"]
                updated[name] = str(verbose.get("updated_at") or "")
            else:  # a service that ignored verbose=true: the value itself
                traits[name] = verbose
        cursor = body.get("cursor") if isinstance(body, dict) else None
        after = cursor.get("next") if isinstance(cursor, dict) else None
        if not (isinstance(cursor, dict) and cursor.get("has_more") is True and after):
            return _Fetched(FOUND, {"": traits}, None, updated=updated)
        params["next"] = str(after)
    return _Fetched(FETCH_FAILED, {}, None, f"the traits did not end after {MAX_PAGES} pages")


def _failure(reply: Reply) -> str:
    what = f"HTTP {reply.status}" if reply.status else "no response"
    detail = f"{what} after {reply.attempts} attempt(s)"
    if reply.code is not None:
        detail += f", Twilio error {reply.code}"
    if reply.message:
        detail += f": {reply.message}"
    return detail


def _trait_groups(job: Job) -> dict[str, str] | None:
    """``traitGroups`` limited to the job's groups; when they do not fit the parameter's 256
    characters, every group is fetched and the others ignored."""
    joined = ",".join(dict.fromkeys(t.group for t in job.traits))
    return {"traitGroups": joined} if len(joined) <= MAX_TRAIT_GROUPS_PARAM else None


# --------------------------------------------------------------------------------- compare


@dataclass
class Tally:
    """Profiles per outcome (and ``remapped``), traits per (group, outcome)."""

    profiles: Counter[str] = field(default_factory=Counter)
    traits: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, outcome: str, traits: list[tuple[str, str]], remapped: bool) -> None:
        """One profile: its outcome, and (group, outcome) per trait checked."""
        self.profiles[outcome] += 1
        if remapped:
            self.profiles["remapped"] += 1
        for key in traits:
            self.traits[key] += 1

    def add(self, other: Tally, sign: int = 1) -> None:
        for key, n in other.profiles.items():
            self.profiles[key] += sign * n
        for tkey, n in other.traits.items():
            self.traits[tkey] += sign * n


class _Pass:
    """One pass over some expected profiles: what each fetch shows, written as it comes.

    ``traits.csv`` has reconcile.csv's columns plus ``j`` (the trait's index, for sorting and
    for --fix); ``profiles.csv`` one line per profile that did not match or was merged.
    ``dirty`` counts what the profiles that did not match contributed, so a re-check can
    replace exactly that.
    """

    def __init__(self, traits: list[_Trait], names: dict[int, str], folder: Path) -> None:
        self.traits = traits
        self.names = names
        shutil.rmtree(folder, ignore_errors=True)
        private_dir(folder)
        self.traits_path = private_file(folder / "traits.csv")
        self.profiles_path = private_file(folder / "profiles.csv")
        self._traits_file = self.traits_path.open("w", newline="", encoding="utf-8")
        self._profiles_file = self.profiles_path.open("w", newline="", encoding="utf-8")
        self._trait_lines = csv.writer(self._traits_file)
        self._profile_lines = csv.writer(self._profiles_file)
        self._trait_lines.writerow([*TRAIT_COLUMNS, "j"])
        self._profile_lines.writerow(PROFILE_COLUMNS)
        self.all = Tally()
        self.dirty = Tally()
        self.last_dirty: float | None = None  # time.monotonic() of the last profile not matching

    def record(self, row: tuple[Any, ...], fetched: _Fetched) -> None:
        profile_id = row[0]
        counts: list[tuple[str, str]] = []
        lines: list[list[Any]] = []
        if fetched.outcome == FOUND:
            for t in self.traits:
                if row[t.file] is None:
                    continue  # no row sends this trait
                expected = row[t.value]
                group = fetched.traits.get(t.group)
                actual = group.get(t.trait) if isinstance(group, dict) else None
                if actual is None:
                    kind = MATCHES if expected is None else MISSING
                elif expected is None:  # nulls = "delete": the trait must be absent
                    kind = DIFFERS
                else:
                    same = same_value(expected, actual, t.type, t.normalization, t.region)
                    kind = MATCHES if same else DIFFERS
                counts.append((t.group, kind))
                if kind != MATCHES:
                    source = self.names.get(row[t.file], "")
                    lines.append(
                        [profile_id, t.group, t.trait, _text(expected), _text(actual), source,
                         row[t.row], kind, fetched.updated.get(t.trait, ""), t.j]
                    )  # fmt: skip
            outcome = DIFFERS if lines else MATCHES
        else:
            outcome = fetched.outcome
        remapped = fetched.canonical is not None
        self.all.count(outcome, counts, remapped)
        if outcome != MATCHES:
            self.dirty.count(outcome, counts, remapped)
            self.last_dirty = time.monotonic()
            self._trait_lines.writerows(lines)
        if outcome != MATCHES or fetched.canonical:
            missing = sum(1 for line in lines if line[7] == MISSING)
            differing = len(lines) - missing
            canonical = fetched.canonical or ""
            self._profile_lines.writerow(
                [profile_id, canonical, outcome, differing, missing, fetched.detail]
            )

    def __enter__(self) -> _Pass:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._traits_file.close()
        self._profiles_file.close()


def _frames(parts: list[Path], only: pl.LazyFrame | None = None) -> Iterator[pl.DataFrame]:
    """The expected rows of existing profiles (not those to create), BATCH at a time."""
    frame = pl.scan_parquet(parts).filter(~pl.col(TARGET).str.starts_with(NEW))
    if only is not None:
        frame = frame.join(only, on=TARGET, how="semi")
    yield from frame.collect_batches(chunk_size=BATCH)


async def _check(
    job: Job,
    client: MemoryClient,
    frames: Iterator[pl.DataFrame],
    into: _Pass,
    progress: Callable[[int], object],
) -> None:
    """Fetch and compare every profile of ``frames``, ``send.concurrency`` at a time; the
    expected rows are read as the workers need them, so memory stays bounded."""
    store, params = job.connection.store_id, _trait_groups(job)
    send, receive = anyio.create_memory_object_stream[tuple[Any, ...]](
        max(64, 2 * job.send.concurrency)
    )

    async def feed() -> None:
        async with send:
            for frame in frames:
                for row in frame.iter_rows():
                    await send.send(row)

    async def worker(rows: ObjectReceiveStream[tuple[Any, ...]]) -> None:
        async with rows:
            async for row in rows:
                if job.connection.segment:
                    fetched = await _fetch_segment(client, job, row[0])
                else:
                    fetched = await _fetch(client, store, row[0], params)
                into.record(row, fetched)
                progress(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        for _ in range(job.send.concurrency):
            tg.start_soon(worker, receive.clone())
        receive.close()


@dataclass
class Checked:
    """What ``check_all`` found: the counts after any re-check, and where its lines are."""

    tally: Tally
    traits_path: Path  # the findings to report, with the ``j`` column
    profile_paths: list[tuple[Path, bool]]  # (profiles.csv of a pass, only its "matches" lines)
    rechecked: int
    settled: int
    waited: float
    stats: ClientStats


def _bar(quiet: bool, **kwargs: Any) -> tqdm[Any]:
    return tqdm(disable=quiet or not sys.stderr.isatty(), leave=False, **kwargs)


def check_all(
    job: Job, parts: list[Path], names: dict[int, str], rec: Path, profiles: int,
    settle: float, quiet: bool,
) -> Checked:  # fmt: skip
    """``check_profiles`` with a client of its own (``reconcile``)."""
    from backfill.transport.connection import open_target

    async def main() -> Checked:
        with open_target(job) as target:
            reader = target.reader(job) if job.connection.segment else target.client(job)
            async with reader as client:
                return await check_profiles(job, client, parts, names, rec, profiles, settle,
                                            quiet)  # fmt: skip

    return run_async(main)


async def check_profiles(
    job: Job, client: MemoryClient, parts: list[Path], names: dict[int, str], rec: Path,
    profiles: int, settle: float, quiet: bool,
) -> Checked:  # fmt: skip
    """Check every profile of the expected ``parts`` (``write_expected``); with ``settle``,
    fetch again the profiles that did not match, each at least ``settle`` seconds after it was
    seen, and keep only what persists. ``names`` maps a file index to its path; the passes
    write under ``rec``; ``profiles`` is the number to check (for the progress bar)."""
    traits = _traits(job)
    bar = _bar(quiet, desc="checking", unit=" profiles", total=profiles)
    with _Pass(traits, names, rec / ".pass1") as first, bar:
        await _check(job, client, _frames(parts), first, bar.update)
    tally = Tally()
    tally.add(first.all)
    if settle <= 0 or first.last_dirty is None:
        return Checked(tally, first.traits_path, [(first.profiles_path, False)],
                       0, 0, 0.0, client.stats)  # fmt: skip
    waited = max(0.0, first.last_dirty + settle - time.monotonic())
    await anyio.sleep(waited)
    again = (
        pl.scan_csv(first.profiles_path, infer_schema=False)
        .filter(pl.col("outcome") != MATCHES)
        .select(pl.col("profile_id").alias(TARGET))
    )
    rechecked = sum(n for k, n in first.dirty.profiles.items() if k != "remapped")
    bar = _bar(quiet, desc="re-checking", unit=" profiles", total=rechecked)
    with _Pass(traits, names, rec / ".pass2") as second, bar:
        await _check(job, client, _frames(parts, again), second, bar.update)
    tally.add(first.dirty, -1)
    tally.add(second.all)
    settled = second.all.profiles[MATCHES]
    paths = [(first.profiles_path, True), (second.profiles_path, False)]
    return Checked(tally, second.traits_path, paths, rechecked, settled,
                   round(waited, 3), client.stats)  # fmt: skip
