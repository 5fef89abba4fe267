"""One messy identifier-keyed extract, the store it must leave behind, and a reader that checks.

``write_extract`` writes the CSV; ``oracle`` says, from that CSV alone, what every person's
profile must hold once any mode (patch with creates, bulk, import) has delivered it;
``store_differences`` reads the store over HTTP (Lookup, then GET) and lists what is not so.

The oracle shares no code with backfill: emails are lower-cased with white space removed,
phones go through ``phonenumbers`` under the rules the API documents (a US number has 10
digits; others carry a country code), trait cells are coerced by the README's rules, and per
person and trait the row with the latest ``updated_at`` that carries a usable value wins
(no ``updated_at`` is oldest; a tie goes to the later row).

In ``write_extract``'s extracts every person's rows carry the same email, or reach one that
does through a phone they share in the extract (only for people the seed holds, whom Lookup
finds by that phone): so each person is one key for the store, and bulk resolves them exactly
as patch does. The oracle also joins a row to a person through a phone the store already
gives them, which only the store knows (tests/test_bulk_mode.py plants one such row).
"""

from __future__ import annotations

import copy
import csv
import json
import random
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
import phonenumbers

from store_reads import profile_ids

Traits = dict[str, dict[str, Any]]  # group -> trait -> value

STORE: Final = "mem_store_01jbulkmode000000000000000"
HEADER: Final = (
    "email",
    "phone",
    "first_name",
    "points",
    "tier",
    "subscribed",
    "tags",
    "updated_at",
)
# column -> (group, trait, type), as the job files of tests/test_bulk_mode.py map them
TRAITS: Final = {
    "email": ("Contact", "email", "STRING"),
    "phone": ("Contact", "phone", "STRING"),
    "first_name": ("Contact", "firstName", "STRING"),
    "points": ("Loyalty", "points", "NUMBER"),
    "tier": ("Loyalty", "tier", "STRING"),
    "subscribed": ("Loyalty", "subscribed", "BOOLEAN"),
    "tags": ("Loyalty", "tags", "ARRAY"),
}
SPLIT: Final = ";"
MAX_POINTS: Final = 1_000_000  # the seed's validationRule on Loyalty.points
TRUE: Final = ("true", "yes", "y", "t", "1")
FALSE: Final = ("false", "no", "n", "f", "0")


def profile_id(n: int) -> str:
    return f"mem_profile_01jbulkmode{n:015d}"


# People the seed holds: (email, phone, traits). The first two get rows in the extract (one
# of them also a row with only its phone, in another format); the third gets none.
SEEDED: Final[list[tuple[str, str, Traits]]] = [
    (
        "sam.seed@example.com",
        "+13175559001",
        {
            "Contact": {"firstName": "Sam", "lastName": "Seed"},
            "Loyalty": {"points": 5.0, "tier": "bronze"},
        },
    ),
    (
        "tia.seed@example.com",
        "+13175559002",
        {"Contact": {"firstName": "Tia"}, "Loyalty": {"tags": ["old"], "subscribed": False}},
    ),
    ("uma.seed@example.com", "+13175559003", {"Contact": {"firstName": "Uma"}}),
]


def seed_document() -> dict[str, Any]:
    """The emulator's seed: the store (email, then phone, both unique) and the seeded people."""
    profiles = []
    for n, (email, phone, traits) in enumerate(SEEDED):
        held = copy.deepcopy(traits)
        held["Contact"] |= {"email": email, "phone": phone}
        profiles.append({"id": profile_id(n + 1), "traits": held})
    return {
        "stores": [
            {
                "id": STORE,
                "displayName": "bulk-mode",
                "description": "Identifier-keyed extracts in every mode.",
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
                        "description": "Who.",
                        "traits": {
                            "firstName": {"dataType": "STRING"},
                            "lastName": {"dataType": "STRING"},
                            "email": {"dataType": "STRING", "idTypePromotion": "email"},
                            "phone": {"dataType": "STRING", "idTypePromotion": "phone"},
                        },
                    },
                    {
                        "displayName": "Loyalty",
                        "description": "Programme.",
                        "traits": {
                            "points": {
                                "dataType": "NUMBER",
                                "validationRule": {
                                    "ruleType": "NUMBER",
                                    "min": 0,
                                    "max": MAX_POINTS,
                                },
                            },
                            "tier": {
                                "dataType": "STRING",
                                "validationRule": {
                                    "ruleType": "STRING",
                                    "pattern": "^(bronze|silver|gold)$",
                                },
                            },
                            "subscribed": {"dataType": "BOOLEAN"},
                            "tags": {"dataType": "ARRAY"},
                        },
                    },
                ],
                "profiles": profiles,
            }
        ]
    }


def seeded_traits() -> dict[str, Traits]:
    """What the seed holds per person, by email: the base the extract's traits go over."""
    document = seed_document()
    return {
        p["traits"]["Contact"]["email"]: copy.deepcopy(p["traits"])
        for p in document["stores"][0]["profiles"]
    }


# ------------------------------------------------------------------------------ generator

NAMES: Final = ("Ada", " Bo", "Cy ", "Dee", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo")
POINTS: Final = ("12", "12.5", "1e3", " 40 ", "0", "7.25", "300")
TIERS: Final = ("bronze", "silver", "gold")
BOOLEANS: Final = ("yes", "No", "TRUE", "f", "1", "0", "y", "N", "false")
TAGS: Final = ("vip", "early", "web", "store")
BLANKS: Final = ("", "   ")


def _email_cell(email: str, rng: random.Random) -> str:
    """The same address as people type it: any case, spaces around or inside."""
    local, _, domain = email.partition("@")
    form = rng.randrange(5)
    if form == 0:
        return email
    if form == 1:
        return email.upper()
    if form == 2:
        return f"  {local.capitalize()}@{domain.capitalize()} "
    if form == 3:
        return f"{local[:3]} {local[3:]}@{domain}"  # a space inside: the store removes it
    return f"{local.title()}@{domain.upper()}"


def _phone_cell(e164: str, rng: random.Random) -> str:
    """The same number in one of the formats extracts hold."""
    if e164.startswith("+44"):
        national = e164[3:]
        return rng.choice(
            [e164, f"+44 {national[:2]} {national[2:6]} {national[6:]}", f"+44-{national}"]
        )
    digits = e164[2:]  # +1 and ten digits
    area, exchange, line = digits[:3], digits[3:6], digits[6:]
    return rng.choice(
        [
            f"({area}) {exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"+1 {area} {exchange} {line}",
            f"1-{area}-{exchange}-{line}",
            digits,
            e164,
        ]
    )


def _tags(rng: random.Random) -> str:
    items = rng.sample(TAGS, rng.randint(1, 3))
    form = rng.randrange(3)
    if form == 0:
        return SPLIT.join(items)
    if form == 1:
        return " " + " ; ".join(items) + " ;"  # spaces and an empty item
    return f"{SPLIT};".join(items)  # an empty item between


def _maybe(value: str, rng: random.Random, blank: float = 0.25) -> str:
    return rng.choice(BLANKS) if rng.random() < blank else value


@dataclass(frozen=True)
class Extract:
    """What the generator wrote, for the tests' own bookkeeping (the oracle reads the file)."""

    path: Path
    rows: int
    people: int  # distinct people with at least one usable identifier
    invalid_phone_rows: tuple[int, ...]  # 1-based data rows with a phone cell, not a phone
    no_identifier_rows: tuple[int, ...]


def write_extract(
    path: Path, *, people: int = 40, seed: int = 0, bad_cells: bool = True, refused: int = 0
) -> Extract:
    """A messy extract of ``people`` new people (1 to 4 rows each, in no order) and two of the
    seeded ones. Cells vary in case and spacing, phones in format (US and +44), traits are often
    blank; one row has no updated_at. With ``bad_cells``: one person's latest phone cell is
    invalid, another's only one is, and two rows have no usable identifier. ``refused`` more
    people have points beyond the store's validation rule: the store refuses their profile."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    stamp = 0

    def when() -> str:
        nonlocal stamp
        stamp += 1
        minutes = rng.randrange(5_000_000)  # distinct stamps, in an order the file hides
        return (
            f"{2020 + minutes // 525_600}-{(minutes // 43_800) % 12 + 1:02d}-"
            f"{(minutes // 1_440) % 28 + 1:02d}T{(minutes // 60) % 24:02d}:"
            f"{minutes % 60:02d}:{stamp % 60:02d}Z"
        )

    def traits_row(email: str, phone: str) -> list[str]:
        return [
            email,
            phone,
            _maybe(rng.choice(NAMES), rng),
            _maybe(rng.choice(POINTS), rng),
            _maybe(rng.choice(TIERS), rng),
            _maybe(rng.choice(BOOLEANS), rng),
            _maybe(_tags(rng), rng),
            when(),
        ]

    for i in range(people):
        email = f"person{i:05d}@example.com"
        phone = f"+44207946{i:04d}" if i % 5 == 0 else f"+1317{6_000_000 + i:07d}"
        for _ in range(rng.randint(1, 4)):
            phone_cell = _maybe(_phone_cell(phone, rng), rng, blank=0.3)
            rows.append(traits_row(_email_cell(email, rng), phone_cell))
    if bad_cells and people >= 2:  # person 0: the latest phone is invalid; 1: the only one
        late = traits_row(_email_cell("person00000@example.com", rng), "555-0123")
        late[-1] = "2031-01-01T00:00:00Z"
        rows.append(late)
        rows = [r for r in rows if _norm_email(r[0]) != "person00001@example.com"]
        rows.append(traits_row("person00001@example.com", "12345"))
    for email, phone, _ in SEEDED[:2]:
        for _ in range(2):
            rows.append(traits_row(_email_cell(email, rng), _maybe(_phone_cell(phone, rng), rng)))
    # Sam's row with only a phone: linked to Sam through the extract, found by Lookup.
    rows.append(traits_row(" ", _phone_cell(SEEDED[0][1], rng)))
    if bad_cells:
        rows.append(traits_row("", "  "))  # no usable identifier
        rows.append(traits_row("  ", "not a phone"))  # nor here
    for i in range(refused):
        row = traits_row(f"refused{i:03d}@example.com", "")
        row[HEADER.index("points")] = str(MAX_POINTS * 2)
        rows.append(row)
    rng.shuffle(rows)
    rows[rng.randrange(len(rows))][-1] = ""  # one row without updated_at: the oldest
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    invalid = tuple(n for n, r in enumerate(rows, 1) if r[1].strip() and _norm_phone(r[1]) is None)
    no_id = tuple(
        n for n, r in enumerate(rows, 1) if not _norm_email(r[0]) and _norm_phone(r[1]) is None
    )
    return Extract(path, len(rows), people + 2 + refused, invalid, no_id)


# --------------------------------------------------------------------------------- oracle


def _norm_email(cell: str) -> str:
    return re.sub(r"\s+", "", cell).lower()


def _norm_phone(cell: str) -> str | None:
    """E.164 as the API documents it, or None: a US number needs 10 digits (with or without
    +1); others need their country code."""
    text = cell.strip()
    if not text:
        return None
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return None
    if number.country_code == 1:
        if len(phonenumbers.national_significant_number(number)) != 10:
            return None
    elif not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _value(column: str, cell: str) -> Any:
    """The typed value a cell sends, or None when it sends nothing (blank or unusable)."""
    text = cell.strip()
    if not text:
        return None
    kind = TRAITS[column][2]
    if column == "phone" and _norm_phone(text) is None:
        return None  # an identifier the store would refuse is left out
    if kind == "NUMBER":
        try:
            return float(text)
        except ValueError:
            return None
    if kind == "BOOLEAN":
        low = text.lower()
        return True if low in TRUE else False if low in FALSE else None
    if kind == "ARRAY":
        items = [item.strip() for item in text.split(SPLIT)]
        return [item for item in items if item] or None
    return text


@dataclass(frozen=True)
class Person:
    email: str  # normalized
    phones: tuple[str, ...]  # normalized, every one the extract gives them
    traits: Traits  # what the profile must hold
    rows: dict[str, int]  # "group.trait" -> the data row (1-based) whose value wins
    refused: bool = False  # the store refuses the profile: it must hold what it held before


def _refused(traits: Traits) -> bool:
    """The seed's validation rules: the store refuses a body that breaks one, whole."""
    loyalty = traits.get("Loyalty", {})
    points, tier = loyalty.get("points"), loyalty.get("tier")
    return (points is not None and not 0 <= points <= MAX_POINTS) or (
        tier is not None and tier not in TIERS
    )


def oracle(path: Path, held: dict[str, str] | None = None) -> dict[str, Person]:
    """Per person (by normalized email), what the extract makes their profile hold. ``held``:
    phones the store already gives a person (normalized phone -> email), which make a row
    with only that phone theirs."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row_keys = []
    for row in rows:
        keys = [f"e:{e}" for e in [_norm_email(row["email"])] if e]
        keys += [f"p:{p}" for p in [_norm_phone(row["phone"])] if p]
        keys += [f"e:{(held or {})[k[2:]]}" for k in keys if k[2:] in (held or {})]
        row_keys.append(keys)  # none: no usable identifier, reported, never written
    people: dict[str, Person] = {}
    for members in components(row_keys):
        phones = sorted({p for i in members if (p := _norm_phone(rows[i]["phone"]))})
        emails = {_norm_email(rows[i]["email"]) for i in members} - {""}
        emails |= {(held or {})[p] for p in phones if p in (held or {})}
        assert len(emails) == 1, f"the extract's rows {members} are not one email's"
        (email,) = emails
        traits: Traits = {}
        winners: dict[str, int] = {}
        for column, (group, trait, _) in TRAITS.items():
            carrying = [
                (_order(rows[i]["updated_at"]), i)
                for i in members
                if _value(column, rows[i][column]) is not None
            ]
            if carrying:
                _, latest = max(carrying)
                traits.setdefault(group, {})[trait] = _value(column, rows[latest][column])
                winners[f"{group}.{trait}"] = latest + 1
        people[email] = Person(email, tuple(phones), traits, winners, _refused(traits))
    return people


def components(row_keys: Sequence[Iterable[Hashable]]) -> list[list[int]]:
    """The rows (indices) that share a key, directly or through other rows, one list per
    person, in the order of their first row; rows without a key belong to nobody."""
    parent = list(range(len(row_keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Hashable, int] = {}
    usable = []
    for i, keys in enumerate(row_keys):
        mine = list(keys)
        if mine:
            usable.append(i)
        for key in mine:
            parent[find(i)] = find(first.setdefault(key, i))
    groups: dict[int, list[int]] = {}
    for i in usable:
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _order(cell: str) -> tuple[bool, datetime | None]:
    text = cell.strip()
    if not text:
        return (False, None)
    return (True, datetime.fromisoformat(text.replace("Z", "+00:00")))


def expected_profiles(path: Path, base: dict[str, Traits] | None = None) -> dict[str, Person]:
    """``oracle`` over ``base`` (what the store held before, by email, phones included): a
    trait the extract does not set keeps its old value, and a refused body changes nothing."""
    phones = {
        phone: email
        for email, traits in (base or {}).items()
        if (phone := _norm_phone(str(traits.get("Contact", {}).get("phone", ""))))
    }
    people = oracle(path, phones)
    for email, held in (base or {}).items():
        person = people.get(email)
        merged = copy.deepcopy(held)
        if person is not None and not person.refused:
            for group, values in person.traits.items():
                merged.setdefault(group, {}).update(values)
        own, rows = (person.phones, person.rows) if person else ((), {})
        people[email] = Person(email, own, merged, rows)
    return people


# --------------------------------------------------------------------------- the store


def _same(a: Any, b: Any) -> bool:
    """Equal and of one kind (True is not 1; 3 and 3.0 are one number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _differences(email: str, expected: Traits, held: Traits) -> list[str]:
    found = []
    for group in sorted(set(expected) | set(held)):
        want, have = expected.get(group, {}), held.get(group, {})
        for trait in sorted(set(want) | set(have)):
            if trait not in have:
                found.append(f"{email}: {group}.{trait} missing (expected {want[trait]!r})")
            elif trait not in want:
                found.append(f"{email}: {group}.{trait} = {have[trait]!r} is not expected")
            elif not _same(want[trait], have[trait]):
                found.append(
                    f"{email}: {group}.{trait} = {have[trait]!r}, expected {want[trait]!r}"
                )
    return found


def store_differences(
    url: str,
    auth: tuple[str, str],
    people: dict[str, Person],
    *,
    store: str = STORE,
    lookup: bool = True,
) -> list[str]:
    """Everything the store holds otherwise than ``people`` say, read over the API, and no
    profile beyond theirs. With ``lookup``, each person is found by Lookup of their email as
    exactly one profile, which each of their phones finds alone too (a refused new person by
    none); without (for thousands of people: a third of the requests), every profile is
    listed and read, and each person must be the one profile whose email trait is theirs."""
    expected = {e: p for e, p in people.items() if p.traits and not p.refused}
    absent = {e for e, p in people.items() if p.refused and not p.traits}
    found: list[str] = []
    base = f"/v1/Stores/{store}/Profiles"
    with httpx.Client(base_url=url, auth=auth, timeout=30) as http:
        listed = profile_ids(http, store)
        held: dict[str, list[tuple[str, Traits]]] = {}
        if lookup:
            for email in sorted(expected.keys() | absent):
                ids = _lookup(http, base, "email", email)
                for pid in ids:
                    held.setdefault(email, []).append((pid, _traits(http, base, pid)))
                for phone in expected[email].phones if email in expected else ():
                    if len(ids) != 1 or _lookup(http, base, "phone", phone) != ids:
                        found.append(f"{email}: phone {phone} does not find their profile alone")
        else:
            for pid in listed:
                traits = _traits(http, base, pid)
                email = _norm_email(str(traits.get("Contact", {}).get("email", "")))
                held.setdefault(email, []).append((pid, traits))
    for email in sorted(absent):
        if held.get(email):
            found.append(f"{email}: refused by the store, yet held by {held[email][0][0]}")
    seen: set[str] = set()
    for email, person in sorted(expected.items()):
        profiles = held.get(email, [])
        if len(profiles) != 1:
            found.append(f"{email}: {len(profiles)} profiles {[p for p, _ in profiles]}")
            continue
        ((pid, traits),) = profiles
        seen.add(pid)
        found += _differences(email, person.traits, traits)
    extra = sorted(set(listed) - seen)
    if extra:
        found.append(f"{len(extra)} profiles beyond the expected people: {extra[:5]}")
    return found


def _traits(http: httpx.Client, base: str, pid: str) -> Traits:
    reply = http.get(f"{base}/{pid}")
    assert reply.status_code == 200, reply.text
    traits: Traits = reply.json()["traits"]
    return traits


def _lookup(http: httpx.Client, base: str, id_type: str, value: str) -> list[str]:
    reply = http.post(f"{base}/Lookup", json={"idType": id_type, "value": value})
    assert reply.status_code == 200, reply.text
    ids: list[str] = reply.json()["profiles"]
    return ids


def write_seed(path: Path) -> Path:
    path.write_text(json.dumps(seed_document()), encoding="utf-8")
    return path


def simple_extract(path: Path, emails: Iterable[str], **columns: str) -> Path:
    """One row per email with the same cells in ``columns`` (a column not given is blank)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for n, email in enumerate(emails):
            writer.writerow(
                [email if c == "email" else columns.get(c, "") for c in HEADER[:-1]]
                + [f"2026-01-01T00:00:{n % 60:02d}Z"]
            )
    return path
