"""Proof of landing for bulk and import: a 202 for a batch, or a completed import, says nothing
about each profile, so ``run`` reads some back.

``verify_landing(job, client, db, out)`` is the stage's one entry, called by ``run`` after a
delivery that finished. It takes the people whose every unit landed (``new:<idType> <value>``
targets, which the store resolved, and the profiles the plan resolved itself), chooses
``[send] verify`` of them (``sample``: up to ``SAMPLE`` spread evenly by a hash of their
target, the same ones on every run of the same plan; ``all``: every one), finds each
person's profile through Lookup by their identifier,
fetches the traits the plan sent and compares them as ``reconcile`` does (``verify.compare``).
Writes are asynchronous, so what is missing or different is looked up and fetched again after
``SETTLE`` seconds (as ``reconcile --settle``), and only what persists counts.

A person whose profile cannot be found, or does not hold what the latest row sent, has their
units marked failed (outcome ``verify_failed``, with what was read), so the rows behind them go to
errors.csv like any other failure, ``backfill retry`` sends them again, and an incremental run
does not remember them as landed. A read that fails (no answer) proves nothing either way: it
is counted as unverified, never turned into an outcome.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
import polars as pl

from backfill.checkpoint import RunDB
from backfill.config import Job, dotted
from backfill.files import private_dir
from backfill.plan.resolve import NEW, TARGET, lookup_candidates
from backfill.verify.compare import (
    DIFFERS,
    FETCH_FAILED,
    MATCHES,
    MISSING,
    NOT_FOUND,
    check_profiles,
    write_expected,
)
from backfill.verify.segment import address

if TYPE_CHECKING:
    from backfill.transport.client import MemoryClient

VERIFY_FAILED: Final = "verify_failed"
# People read back with verify = "sample": each costs two requests (Lookup, then the profile),
# as much as 2,000 profiles sent in bulk. 100 of them find a fault that hits 3 % of people with
# 95 % probability (1 - 0.97^100), and one that hits 1 % with 63 %; verify = "all" proves every one.
SAMPLE: Final = 100
SETTLE: Final = 10.0  # seconds a write may take to show before a difference counts
VERIFY_DIR: Final = "verify"
TRAITS_NAMED: Final = 3  # traits named in a verify_failed message; the rest are counted


def choose(targets: list[str], how: str, size: int = SAMPLE) -> list[str]:
    """The people to read back: all, or ``size`` of them by the order of a hash of their
    target (stable for a given target, spread over the whole plan)."""
    if how == "all" or len(targets) <= size:
        return targets
    series = pl.Series(TARGET, targets)
    order = series.hash(seed=29).arg_sort()
    return series.gather(order.head(size)).sort().to_list()


def _pairs(job: Job, targets: list[str]) -> pl.DataFrame:
    """(k, value) to ask Lookup for each ``new:<idType> <value>`` target."""
    index = {identifier.id_type: k for k, identifier in enumerate(job.identity.identifiers)}
    rows = []
    for target in targets:
        id_type, _, value = target.removeprefix(NEW).partition(" ")
        rows.append((index[id_type], value))
    return pl.DataFrame(rows, schema={"k": pl.UInt8, "value": pl.String}, orient="row")


async def _locate(
    job: Job, client: MemoryClient, db: RunDB, targets: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Each target's profile (the earliest when several), and why the rest have none: an empty
    answer ("not found") or a failed lookup (its reason)."""
    if not targets:
        return {}, {}
    if job.connection.segment:  # read by the identifier itself: nothing to look up
        return {target: address(target) for target in targets}, {}
    id_types = [i.id_type for i in job.identity.identifiers]
    found, _ = await lookup_candidates(job, _pairs(job, targets), client, db)
    answers = {
        f"{NEW}{id_types[k]} {value}": (profiles, error)
        for k, value, _, profiles, error in found.iter_rows()
    }
    located: dict[str, str] = {}
    missing: dict[str, str] = {}
    for target in targets:
        profiles, error = answers.get(target, ([], "not asked"))
        if profiles:
            located[target] = profiles[0]
        else:
            missing[target] = error or ""
    return located, missing


def locate_all(job: Job, targets: list[str], out: Path) -> pl.DataFrame:
    """``TARGET`` -> ``profile`` for every target (``reconcile`` of a bulk or import job):
    people through Lookup, a person the store does not hold mapped to themselves (still to
    create), a profile ID to itself. One client of its own, under the job's token bucket."""
    from backfill.aio import run_async
    from backfill.files import RUN_FILE
    from backfill.transport.connection import open_target

    people = [t for t in targets if t.startswith(NEW)]
    if job.connection.segment:
        addresses = [address(t) if t.startswith(NEW) else t for t in targets]
        return pl.DataFrame({TARGET: targets, "profile": addresses},
                            schema={TARGET: pl.String, "profile": pl.String})  # fmt: skip

    async def main() -> dict[str, str]:
        with open_target(job) as target, RunDB(out / RUN_FILE) as db:
            async with target.client(job) as client:
                located, _ = await _locate(job, client, db, people)
                return located

    located = run_async(main) if people else {}
    return pl.DataFrame(
        {TARGET: targets, "profile": [located.get(t, t) for t in targets]},
        schema={TARGET: pl.String, "profile": pl.String},
    )


def _messages(checked_profiles: Path, checked_traits: Path) -> dict[str, tuple[str, str]]:
    """Per profile that did not match after settling: (its outcome, what was read)."""
    profiles = pl.read_csv(checked_profiles, infer_schema=False).filter(
        pl.col("outcome") != MATCHES
    )
    traits = pl.read_csv(checked_traits, infer_schema=False)
    named: dict[str, list[str]] = defaultdict(list)
    for profile_id, group, trait, expected, actual, kind in traits.select(
        "profile_id", "group", "trait", "expected", "actual", "kind"
    ).iter_rows():
        if kind == MISSING:
            named[profile_id].append(f"{dotted(group, trait)} is missing (latest row: {expected})")
        elif kind == DIFFERS:
            named[profile_id].append(f"{dotted(group, trait)} is {actual} (latest row: {expected})")
    found: dict[str, tuple[str, str]] = {}
    for profile_id, outcome, detail in profiles.select(
        "profile_id", "outcome", "detail"
    ).iter_rows():
        lines = named.get(profile_id, [])
        text = "; ".join(lines[:TRAITS_NAMED])
        if len(lines) > TRAITS_NAMED:
            text += f"; and {len(lines) - TRAITS_NAMED} more"
        found[profile_id] = (outcome, text or (detail or outcome))
    return found


async def verify_landing(
    job: Job, client: MemoryClient, db: RunDB, out: Path, *, quiet: bool = True,
    settle: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Read back what the delivery landed (see the module docstring); the summary's
    ``verify`` section. ``settle``: seconds to wait out write lag (default ``SETTLE``)."""
    settle = SETTLE if settle is None else settle
    started = time.monotonic()
    landed = db.landed_targets()
    chosen = choose(landed, job.send.verify)
    summary: dict[str, Any] = {
        "how": job.send.verify,
        "landed_people": len(landed),
        "checked": len(chosen),
        "matched": 0,
        "failed": 0,
        "unverified": 0,
        "seconds": 0.0,
    }
    if not chosen:
        return summary
    folder = out / VERIFY_DIR
    shutil.rmtree(folder, ignore_errors=True)
    private_dir(folder)
    try:
        people = [t for t in chosen if t.startswith(NEW)]
        located, missing = await _locate(job, client, db, people)
        located.update((t, t) for t in chosen if not t.startswith(NEW))  # a profile ID already
        not_found = [t for t, error in missing.items() if not error]
        if not_found and settle > 0:  # a profile the store just made may not show yet
            await anyio.sleep(settle)
            more, missing_again = await _locate(job, client, db, not_found)
            located.update(more)
            for target in not_found:
                missing.pop(target, None)
            missing.update(missing_again)
        failures: dict[str, str] = {}
        unverified = 0
        for target, error in missing.items():
            if error:
                unverified += 1  # the lookup failed: nothing is proven either way
            else:
                failures[target] = f"read back: no profile found by {target.removeprefix(NEW)}"
        if located:
            sources = list(db.meta("sources") or [])
            checked = await _check(job, client, out, folder, located, settle, quiet, sources)
            for target, (outcome, text) in checked.items():
                if outcome == FETCH_FAILED:
                    unverified += 1
                elif outcome == NOT_FOUND:
                    failures[target] = f"read back: {located[target]} was not found"
                else:
                    failures[target] = f"read back from {located[target]}: {text}"
        db.fail_targets(VERIFY_FAILED, failures)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary.update(
        matched=len(chosen) - len(failures) - unverified,
        failed=len(failures),
        unverified=unverified,
        seconds=round(time.monotonic() - started, 3),
    )
    return summary


async def _check(
    job: Job,
    client: MemoryClient,
    out: Path,
    folder: Path,
    located: dict[str, str],
    settle: float,
    quiet: bool,
    sources: list[str],
) -> dict[str, tuple[str, str]]:
    """Compare the located people's profiles with the plan's values (merged per profile, see
    ``write_expected``); per target whose profile did not match after settling, (outcome,
    what was read)."""
    where = pl.DataFrame(
        {TARGET: list(located), "profile": list(located.values())},
        schema={TARGET: pl.String, "profile": pl.String},
    )
    parts = write_expected(job, out, {}, into=folder, profiles=where)
    profiles = len(set(located.values()))
    checked = await check_profiles(
        job, client, parts, dict(enumerate(sources)), folder, profiles, settle, quiet
    )
    by_profile = _messages(checked.profile_paths[-1][0], checked.traits_path)
    keys: dict[str, list[str]] = defaultdict(list)
    for target, profile_id in located.items():
        keys[profile_id].append(target.removeprefix(NEW))
    found: dict[str, tuple[str, str]] = {}
    for target, profile_id in located.items():
        if profile_id in by_profile:
            outcome, text = by_profile[profile_id]
            if len(keys[profile_id]) > 1:
                text += (f" [the store put the rows of {', '.join(keys[profile_id])} in this one "
                         "profile]")  # fmt: skip
            found[target] = (outcome, text)
    return found
