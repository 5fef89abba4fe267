"""The fuzz test's oracle: what a messy extract must do to the store, computed row by row.

Independent of the pipeline on purpose: plain Python per row, written from the rules in README
("How rows become requests"), ../shared/memory-api.md and issue 9, never from ``backfill``'s
polars code. The only code it shares is ``backfill.plan.normalize.normalize``, the trusted slow path
that the store itself normalizes identifiers with.

A source row is given as its cells after reading: ``None`` for a blank cell, ``BAD`` for a cell the
source could not read faithfully (invalid bytes), or text. A row that the source must refuse whole
(a ragged line) is ``RAGGED``. The oracle says, per row, which outcome lines errors.csv must hold,
and per live profile, which traits it must end with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from backfill.errors import InvalidIdentifierError
from backfill.plan.normalize import normalize

BAD: Final = object()  # a cell the source could not read faithfully: dropped and reported
RAGGED: Final = "ragged"  # a row the source refuses whole (wrong number of fields)
BLANK: Final = "blank"  # a line with no value in any column: the source leaves it out

Cell = str | None | object
Row = Mapping[str, Cell] | str  # cells by column, RAGGED or BLANK

MAX_STRING = 1024  # memory-api.md: trait string values up to 1,024 characters
MAX_ITEMS = 100  # memory-api.md: arrays up to 100 items
MAX_EXACT = 2**53  # JSON numbers are doubles: a whole number beyond this would land changed
PROFILE_ID = re.compile(r"^mem_profile_[0-7][0-9a-z]{25}$")
NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
TRUE = ("true", "yes", "y", "t", "1")
FALSE = ("false", "no", "n", "f", "0")
ORDER_FORMATS = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
UNSET: Final = object()  # a trait a row does not carry


@dataclass(frozen=True)
class Trait:
    group: str
    name: str
    column: str
    type: str = "STRING"  # STRING | NUMBER | BOOLEAN | ARRAY
    split: str | None = None
    delete_blanks: bool = False  # nulls = "delete"


@dataclass(frozen=True)
class IdRule:
    column: str
    id_type: str
    normalization: str
    default_region: str = "US"


@dataclass(frozen=True)
class JobSpec:
    """What the oracle needs of the job: the same facts the test writes into its TOML."""

    profile_id_column: str
    order_by: str
    identifiers: tuple[IdRule, ...]
    traits: tuple[Trait, ...]
    check_limits: bool  # strings > 1,024 characters and arrays > 100 items are bad cells
    # The identity map as (id_type, value, profile_id) lines, as written in its file.
    identity_map: tuple[tuple[str, str, str], ...] = ()
    ambiguous_first: bool = False  # on_ambiguous = "first": the earliest candidate is the target

    def map_index(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """id_type -> normalized value -> profiles, from the identity map: values normalized
        like the extract's (unreadable ones dropped), malformed profile IDs ignored."""
        rules = {r.id_type: r for r in self.identifiers}
        index: dict[str, dict[str, list[str]]] = {}
        for id_type, raw, pid in self.identity_map:
            rule = rules.get(id_type.strip())
            if rule is None or not PROFILE_ID.match(pid.strip()):
                continue
            try:
                value = normalize(raw, rule.normalization, rule.default_region)
            except InvalidIdentifierError:
                continue
            owners = index.setdefault(rule.id_type, {}).setdefault(value, [])
            if pid.strip() not in owners:
                owners.append(pid.strip())
        return {t: {v: tuple(p) for v, p in values.items()} for t, values in index.items()}


@dataclass(frozen=True)
class Store:
    """The seeded store as the oracle knows it: live profiles, merges, identifier index."""

    live: frozenset[str]
    merged_into: Mapping[str, str]  # merged-away profile -> its canonical profile
    index: Mapping[str, Mapping[str, tuple[str, ...]]]  # id_type -> normalized value -> profiles

    def canonical(self, pid: str) -> str:
        while pid in self.merged_into:
            pid = self.merged_into[pid]
        return pid


@dataclass
class RowVerdict:
    """What the oracle expects of one source row."""

    file: int
    row: int
    outcomes: set[str] = field(default_factory=set)  # errors.csv outcomes for this row
    bad_columns: list[str] = field(default_factory=list)  # named in its invalid_row message
    target: str | None = None
    values: dict[int, Any] = field(default_factory=dict)  # trait index -> value (None: delete)
    order: datetime | None = None

    @property
    def landing(self) -> str:
        """team.md's rule: not_landed with any line besides invalid_row, landed_in_part when
        its only lines are invalid_row, landed otherwise."""
        if self.outcomes - {"invalid_row"}:
            return "not_landed"
        return "landed_in_part" if self.outcomes else "landed"


@dataclass
class Expected:
    rows: list[RowVerdict]
    state: dict[str, dict[str, dict[str, Any]]]  # live profile -> group -> trait -> value
    not_found: set[str]  # targets whose unit answers 404


def seed_store(seed: Mapping[str, Any], promoted: Mapping[tuple[str, str], str]) -> Store:
    """Index the seed's profiles by their promoted traits (``promoted``: (group, trait) ->
    id_type); a merged-away profile's identifiers answer with its canonical profile."""
    store = seed["stores"][0]
    norms = {
        c["idType"]: c.get("normalization", "none")
        for c in store["identityResolutionSettings"]["identifierConfigs"]
    }
    merged = {p["id"]: p["mergedInto"] for p in store["profiles"] if "mergedInto" in p}
    found = Store(frozenset(p["id"] for p in store["profiles"]) - set(merged), merged, {})
    index: dict[str, dict[str, list[str]]] = {}
    for profile in store["profiles"]:
        for group, traits in profile.get("traits", {}).items():
            for trait, value in traits.items():
                id_type = promoted.get((group, trait))
                if id_type is None:
                    continue
                key = normalize(str(value), norms[id_type])
                owners = index.setdefault(id_type, {}).setdefault(key, [])
                owner = found.canonical(profile["id"])
                if owner not in owners:
                    owners.append(owner)
    frozen = {t: {v: tuple(p) for v, p in values.items()} for t, values in index.items()}
    return Store(found.live, merged, frozen)


def _text(cell: Cell) -> str | None:
    """A readable cell stripped, None when blank (or unreadable)."""
    if not isinstance(cell, str):
        return None
    text = cell.strip()
    return text or None


def _order(cell: Cell) -> datetime | None:
    if isinstance(cell, datetime):  # a typed Parquet column
        return cell if cell.tzinfo is not None else cell.replace(tzinfo=UTC)
    text = _text(cell)
    if text is None:
        return None
    for fmt in ORDER_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None  # unreadable order counts as oldest, like a blank one


def coerce(trait: Trait, text: str, check_limits: bool) -> tuple[bool, Any]:
    """(ok, value) of a non-blank cell for ``trait``; ok is False for a bad cell. A value of
    UNSET means the cell carries nothing (an ARRAY cell of separators only)."""
    if trait.type == "NUMBER":
        if not NUMBER.match(text):
            return False, None
        if check_limits and text.lstrip("+-").isdigit() and abs(int(text)) > MAX_EXACT:
            return False, None
        number = float(text)
        if not math.isfinite(number):
            return False, None
        return True, int(number) if number.is_integer() and abs(number) < 2**53 else number
    if trait.type == "BOOLEAN":
        word = text.lower()
        if word in TRUE:
            return True, True
        if word in FALSE:
            return True, False
        return False, None
    if trait.type == "ARRAY":
        parts = text.split(trait.split) if trait.split is not None else [text]
        items = [p.strip() for p in parts if p.strip()]
        if not items:
            return True, UNSET
        if check_limits and (len(items) > MAX_ITEMS or any(len(i) > MAX_STRING for i in items)):
            return False, None
        return True, items
    if check_limits and len(text) > MAX_STRING:
        return False, None
    return True, text


def coerce_typed(trait: Trait, cell: Any, check_limits: bool) -> tuple[bool, Any]:
    """``coerce`` for a typed Parquet cell: a float, a bool or a list of strings."""
    if trait.type == "ARRAY" and isinstance(cell, list):
        return coerce(Trait(trait.group, trait.name, trait.column, "ARRAY", "\0"),
                      "\0".join(cell) if cell else "", check_limits)  # fmt: skip
    if trait.type == "NUMBER" and isinstance(cell, int | float) and not isinstance(cell, bool):
        if not math.isfinite(cell):
            return False, None
        number = float(cell)
        return True, int(number) if number.is_integer() and abs(number) < 2**53 else number
    if trait.type == "BOOLEAN" and isinstance(cell, bool):
        return True, cell
    raise AssertionError(f"the fuzz test writes no {type(cell).__name__} for a {trait.type}")


def judge_row(spec: JobSpec, store: Store, file: int, number: int, row: Row) -> RowVerdict:
    """The oracle for one row: its problems, target and trait values."""
    verdict = RowVerdict(file, number)
    if isinstance(row, str):  # RAGGED: reported, not used; with no identifier, unresolved
        verdict.outcomes |= {"invalid_row", "unresolved"}
        return verdict

    def bad(column: str) -> None:
        verdict.outcomes.add("invalid_row")
        verdict.bad_columns.append(column)

    for column, cell in row.items():
        if cell is BAD:
            bad(column)
    verdict.order = _order(row.get(spec.order_by))
    pid = _text(row.get(spec.profile_id_column))
    if pid is not None and not PROFILE_ID.match(pid):
        bad(spec.profile_id_column)
        pid = None
    if pid is not None:
        verdict.target = pid
    else:
        verdict.target = _resolve(spec, store, row, verdict, bad)
    for j, trait in enumerate(spec.traits):
        cell = row.get(trait.column)
        if cell is BAD:
            continue
        if isinstance(cell, bool | int | float | list):  # a typed Parquet cell
            ok, value = coerce_typed(trait, cell, spec.check_limits)
        else:
            text = _text(cell)
            if text is None:
                if trait.delete_blanks:
                    verdict.values[j] = None
                continue
            ok, value = coerce(trait, text, spec.check_limits)
        if not ok:
            bad(trait.column)
        elif value is not UNSET:
            verdict.values[j] = value
    return verdict


def _resolve(
    spec: JobSpec,
    store: Store,
    row: Mapping[str, Cell],
    verdict: RowVerdict,
    bad: Callable[[str], None],
) -> str | None:
    """README step 3 without a profile ID: each identifier's candidates come from the identity
    map when it knows the value, else from Lookup (the store); the first with candidates
    decides."""
    known = spec.map_index()
    found: list[tuple[str, ...]] = []
    for rule in spec.identifiers:
        text = _text(row.get(rule.column))
        if text is None:
            found.append(())
            continue
        try:
            value = normalize(text, rule.normalization, rule.default_region)
        except InvalidIdentifierError:
            bad(rule.column)
            found.append(())
            continue
        mapped = known.get(rule.id_type, {})
        if value in mapped:
            found.append(mapped[value])
        else:
            found.append(store.index.get(rule.id_type, {}).get(value, ()))
    decider = next((c for c in found if c), None)
    if decider is None:
        verdict.outcomes.add("unresolved")
        return None
    if len(decider) > 1 and not spec.ambiguous_first:
        verdict.outcomes.add("ambiguous")
        return None
    target = decider[0]
    if any(c and target not in c for c in found):
        verdict.outcomes.add("conflict")
        return None
    return target


def expect(
    spec: JobSpec,
    store: Store,
    files: Sequence[Sequence[Row]],
    baseline: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> Expected:
    """Every row's verdict and the store's final state.

    Rows meet at their canonical profile (a merged-away target lands on its canonical one);
    per trait the latest row by order_by (blank or unreadable: oldest), then file, then row,
    among the rows that carry the trait, wins. A target the store does not hold answers 404 to
    its unit, which every row behind it reports as profile_not_found; a target with no trait
    to send has no unit and so no answer.
    """
    rows = [
        judge_row(spec, store, f, n, row)
        for f, rows_of_file in enumerate(files)
        for n, row in enumerate(rows_of_file, start=1)
        if row != BLANK  # not a row at all, but it keeps its number
    ]
    state = {pid: {g: dict(t) for g, t in groups.items()} for pid, groups in baseline.items()}
    by_target: dict[str, list[RowVerdict]] = {}
    for verdict in rows:
        if verdict.target is not None:
            by_target.setdefault(verdict.target, []).append(verdict)
    not_found: set[str] = set()
    winners: dict[str, dict[int, tuple[tuple[Any, ...], Any]]] = {}
    for target, members in by_target.items():
        if not any(v.values for v in members):
            continue  # nothing to send: no unit
        home = store.canonical(target)
        if home not in store.live:
            not_found.add(target)
            for v in members:
                v.outcomes.add("profile_not_found")
            continue
        best = winners.setdefault(home, {})
        for v in members:
            key = (v.order is not None, v.order or datetime.min.replace(tzinfo=UTC), v.file, v.row)
            for j, value in v.values.items():
                if j not in best or best[j][0] < key:
                    best[j] = (key, value)
    for home, best in winners.items():
        for j, (_, value) in best.items():
            trait = spec.traits[j]
            group = state.setdefault(home, {}).setdefault(trait.group, {})
            if value is None:
                group.pop(trait.name, None)
            else:
                group[trait.name] = value
    for groups in state.values():
        for name in [g for g, t in groups.items() if not t]:
            del groups[name]
    return Expected(rows, state, not_found)
