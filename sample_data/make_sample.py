"""Generate the sample extract behind jobs/sample_backfill.toml, and the plan it must produce.

Run from the project root (``python sample_data/make_sample.py``); the output is the same on
every run (``random.Random(2026)``). It writes, next to this file:

- ``customers.csv`` and ``customers.parquet``: the legacy CRM's loyalty extract, about 2,000 rows,
  the same rows in both (the Parquet file is a raw landing-zone export: every column a String,
  an empty CSV cell a null).
- ``identity_map.parquet``: known identifiers (``id_type``, ``value``, ``profile_id``) for part of
  the customers, values written as the old system wrote them (padded, mixed case, formatted).
- ``emulator_seed.json``: the sample store with its profiles (see backfill.emulator.storage).
- ``expected_plan.json``: what planning the job must report, computed here from the generated
  data by an oracle that is independent of the planner (it shares only ``normalize``).

The extract holds what real extracts hold: several rows per person, not in time order; phones in
mixed formats; upper-case, padded and inner-spaced emails; blank cells; values of the wrong type;
people the store does not know; a crm_id shared by two profiles; a profile that was merged.
"""

from __future__ import annotations

import csv
import json
import random
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from backfill.errors import InvalidIdentifierError
from backfill.plan.normalize import normalize

HERE = Path(__file__).resolve().parent
SEED = 2026
TOTAL_ROWS = 2000
IN_STORE = 360  # people of the extract that the store knows
MOVED = 25  # ... whose store profile holds only an old email: found through the identity map
MAP_EMAIL = 8  # ... whose new email the identity map knows
OUTSIDE = 85  # people the store does not know
STORE_ONLY = 15  # profiles of the store with no row in the extract

STORE_ID = "mem_store_01jsamp1e00000000000000000"
PROFILE_PREFIX = "mem_profile_01jsamp1e"
ADA = "mem_profile_01jsamp1e0000000000000000a"
PROFILE_ID = re.compile(r"^mem_profile_[0-7][0-9a-z]{25}$")
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
BOOLEANS = {"true": True, "t": True, "yes": True, "y": True, "1": True,
            "false": False, "f": False, "no": False, "n": False, "0": False}  # fmt: skip

COLUMNS = ["profile_id", "crm_id", "email", "phone", "first_name", "last_name", "points", "tier",
           "tags", "opt_in", "updated_at"]  # fmt: skip
IDENTIFIERS = [
    ("email", "email", "email"),
    ("phone", "phone", "phone"),
    ("crm_id", "crm_id", "trim"),
]
# (group, trait, column, type), as jobs/sample_backfill.toml maps them
TRAITS = [("Contact", "firstName", "first_name", "STRING"),
          ("Contact", "lastName", "last_name", "STRING"),
          ("Loyalty", "points", "points", "NUMBER"),
          ("Loyalty", "tier", "tier", "STRING"),
          ("Loyalty", "tags", "tags", "ARRAY"),
          ("Loyalty", "optIn", "opt_in", "BOOLEAN")]  # fmt: skip

# The store as it was written by hand: kept exactly, only the profiles are generated.
STORE_HEADER: dict[str, Any] = {
    "id": STORE_ID,
    "displayName": "sample",
    "description": "The store behind jobs/sample_backfill.toml and the embedded emulator.",
    "identityResolutionSettings": {
        "identifierConfigs": [
            {"idType": "email", "normalization": "email", "enforceUnique": True},
            {"idType": "phone", "normalization": "phone", "enforceUnique": True},
            {"idType": "crm_id", "normalization": "trim", "enforceUnique": False},
        ],
        "matchingRules": ["email", "phone", "crm_id"],
    },
    "traitGroups": [
        {
            "displayName": "Contact",
            "description": "Who the customer is.",
            "traits": {
                "firstName": {"dataType": "STRING"},
                "lastName": {"dataType": "STRING"},
                "email": {"dataType": "STRING", "idTypePromotion": "email"},
                "phone": {"dataType": "STRING", "idTypePromotion": "phone"},
                "crmId": {"dataType": "STRING", "idTypePromotion": "crm_id"},
            },
        },
        {
            "displayName": "Loyalty",
            "description": "The loyalty programme, migrated from the legacy CRM.",
            "traits": {
                "points": {
                    "dataType": "NUMBER",
                    "validationRule": {"ruleType": "NUMBER", "min": 0},
                },
                "tier": {
                    "dataType": "STRING",
                    "validationRule": {
                        "ruleType": "STRING",
                        "pattern": "^(bronze|silver|gold|platinum)$",
                    },
                },
                "tags": {
                    "dataType": "ARRAY",
                    "validationRule": {"ruleType": "ARRAY", "maxItems": 20},
                },
                "optIn": {"dataType": "BOOLEAN"},
            },
        },
    ],
}

FIRST = ["Ann", "James", "Maria", "Wei", "Priya", "Olivia", "Liam", "Noah", "Emma", "Ava",
         "Sophia", "Mia", "Lucas", "Ethan", "Mateo", "Chloe", "Zoë", "José", "Amélie", "Björn",
         "Fatima", "Omar", "Yuki", "Hiroshi", "Aisha", "Kwame", "Grace", "Henry", "Jack", "Leo",
         "Nora", "Ruby", "Isla", "Ivy", "Hana", "Sofia", "Elena", "Diego", "Luca", "Marco",
         "Sara", "David", "Daniel", "Samuel", "Rachel", "Leah", "Hannah", "Kevin", "Brian",
         "Laura", "Julia", "Peter", "Paul", "Tom", "Kate", "Claire", "Nina", "Oscar", "Felix",
         "Ingrid"]  # fmt: skip
LAST = ["Lee", "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
        "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas",
        "Taylor", "Moore", "Jackson", "Martin", "Thompson", "White", "Harris", "Clark", "Lewis",
        "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
        "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell",
        "Mitchell", "Carter", "Roberts", "Müller", "O'Brien", "Østergaard", "Núñez", "Kowalski",
        "Patel", "Singh", "Kim", "Park", "Chen", "Wang", "Okafor", "Mensah"]  # fmt: skip
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com", "corp.example"]
AREA_CODES = ["317", "463", "312", "415", "212", "646", "617", "303", "206", "512", "702", "404",
              "305", "614", "919", "615", "503", "612", "816", "480"]  # fmt: skip
TIERS = ["bronze", "silver", "gold", "platinum"]
TAGS = ["vip", "newsletter", "early-adopter", "in-store", "online", "returns", "gift-card",
        "birthday-club", "referral", "app-user"]  # fmt: skip
BOOL_WORDS = {True: ["true", "TRUE", "True", "yes", "Yes", "Y", "1", "t"],
              False: ["false", "FALSE", "False", "no", "No", "N", "0", "f"]}  # fmt: skip
BAD_POINTS = ["1,200", "abc", "n/a", "12 pts", "1.200,50", "-", "ten", "0x1F", "1 000", "NaN",
              "12..5", "€40", "TBD", "1e", "#VALUE!"]  # fmt: skip
BAD_OPT_IN = ["maybe", "si", "2", "unknown", "yes please", "opt-in", "N/A", "-1", "ja", "x"]
BAD_PHONES = ["555-0123", "n/a", "12345", "call me", "0", "555 0199", "ext. 42", "000",
              "(555) 01", "none"]  # fmt: skip
START = datetime(2024, 6, 1, tzinfo=UTC)
END = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


@dataclass
class Person:
    key: int
    first: str
    last: str
    email: str  # as the extract holds it, normalized
    phone: str  # E.164
    crm_id: str
    kind: str  # normal | moved | map_email | outside
    profile_id: str | None = None
    store_email: str | None = None
    store_phone: str | None = None
    store_crm: str | None = None
    rows: int = 0


@dataclass
class Row:
    person: Person
    cells: dict[str, str]
    planted: list[str] = field(default_factory=list)


def ascii_name(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.replace("ø", "o").replace("Ø", "O"))
    return re.sub(r"[^a-z]", "", folded.encode("ascii", "ignore").decode().lower())


def email_variant(rng: random.Random, email: str) -> str:
    """The same address as a person or an old system typed it."""
    local, domain = email.split("@")
    roll = rng.random()
    if roll < 0.50:
        out = email
    elif roll < 0.65:
        out = ".".join(p.capitalize() for p in local.split(".")) + "@" + domain.capitalize()
    elif roll < 0.73:
        out = email.upper()
    elif roll < 0.85:
        out = rng.choice([" ", "  ", ""]) + email + rng.choice([" ", "   "])
    elif roll < 0.92:
        cut = rng.randrange(1, len(local))
        out = rng.choice([local[:cut] + " " + local[cut:] + "@" + domain, local + " @" + domain])
    else:
        out = " " + ".".join(p.capitalize() for p in local.split(".")) + "@"
        out += domain.split(".")[0].capitalize() + "." + domain.split(".", 1)[1].upper() + " "
    assert normalize(out, "email") == email, out
    return out


def phone_variant(rng: random.Random, e164: str) -> str:
    if e164.startswith("+44"):
        n = e164[3:]
        out = rng.choice([f"+44 {n[:2]} {n[2:6]} {n[6:]}", f"44 {n[:2]} {n[2:6]} {n[6:]}", e164])
    else:
        a, b, c = e164[2:5], e164[5:8], e164[8:]
        out = rng.choice([f"({a}) {b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"1{a}{b}{c}",
                          f"{a}-{b}-{c}", f"{a}{b}{c}", e164, f"1-{a}-{b}-{c}",
                          f" ({a}){b}-{c} "])  # fmt: skip
    assert normalize(out, "phone") == e164, out
    return out


def crm_variant(rng: random.Random, crm: str) -> str:
    return rng.choice([crm] * 7 + [" " + crm, crm + " ", "  " + crm + "  "])


def blank(rng: random.Random) -> str:
    return rng.choice(["", "", "", " ", "  "])


def maybe(rng: random.Random, p: float, value: str) -> str:
    return value if rng.random() < p else blank(rng)


def timestamp(rng: random.Random) -> str:
    seconds = rng.randrange(int((END - START).total_seconds()))
    return (START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def points_cell(rng: random.Random) -> str:
    value = rng.choice([rng.randrange(0, 500), rng.randrange(0, 5000), rng.randrange(0, 25000)])
    roll = rng.random()
    if roll < 0.80:
        return str(value)
    if roll < 0.88:
        return rng.choice([" ", "  "]) + str(value) + rng.choice(["", " "])
    if roll < 0.93:
        return f"{value}.0"
    if roll < 0.97:
        return f"{value}.{rng.randrange(1, 10)}"
    return rng.choice([f"+{value}", f"{value / 1000:g}e3", f"{value}E0"])


def tags_cell(rng: random.Random) -> str:
    chosen = rng.sample(TAGS, rng.choice([1, 1, 2, 2, 3, 4]))
    seps = [";", "; ", " ;", " ; "]
    out = chosen[0]
    for tag in chosen[1:]:
        out += rng.choice(seps) + tag
    roll = rng.random()
    if roll < 0.08:
        out += ";"
    elif roll < 0.12:
        out = " " + out + " "
    elif roll < 0.15:
        out = out.replace(";", ";;", 1) if ";" in out else ";" + out
    return out


def opt_in_cell(rng: random.Random) -> str:
    word = rng.choice(BOOL_WORDS[rng.random() < 0.6])
    return word if rng.random() < 0.9 else f" {word} "


def tier_cell(rng: random.Random, tier: str) -> str:
    return tier if rng.random() < 0.9 else rng.choice([f" {tier}", f"{tier} ", f"  {tier}  "])


def name_cell(rng: random.Random, name: str) -> str:
    roll = rng.random()
    if roll < 0.85:
        return name
    if roll < 0.95:
        return rng.choice([f" {name}", f"{name} ", f"  {name}  "])
    return name.upper()


# ----------------------------------------------------------------------------- the people


def make_people(rng: random.Random) -> list[Person]:
    total = IN_STORE + OUTSIDE
    phones = rng.sample(
        [
            f"+1{a}5550{n:03d}"
            for a in AREA_CODES
            for n in range(100, 200)
            if a + str(n) != "317100"
        ],
        total + 40,
    )
    uk = [f"+44207946{n:04d}" for n in rng.sample(range(0, 1000), 8)]
    crm_numbers = rng.sample(range(100_000, 1_000_000), total + 40)
    people: list[Person] = []
    emails: set[str] = {"ada@example.com"}
    for key in range(total):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if key == 3:
            last = "Smith, Jr."  # a comma inside a quoted CSV cell
        base = f"{ascii_name(first)}.{ascii_name(last.split(',')[0])}"
        domain = rng.choice(DOMAINS)
        email, n = f"{base}@{domain}", 1
        while email in emails:
            n += 1
            email = f"{base}{n}@{domain}"
        emails.add(email)
        phone = uk[key // 60] if key % 60 == 7 and key // 60 < len(uk) else phones[key]
        people.append(Person(key, first, last, email, phone, f"CRM-{crm_numbers[key]}", "normal"))
    order = list(range(total))
    rng.shuffle(order)
    for rank, key in enumerate(order):
        if rank >= IN_STORE:
            people[key].kind = "outside"
        elif rank < MOVED:
            people[key].kind = "moved"
        elif rank < MOVED + MAP_EMAIL:
            people[key].kind = "map_email"
    return people


def profile_ids(rng: random.Random, count: int, avoid: set[str]) -> list[str]:
    """Random, distinct and sorted: seed order is ID order, so Lookup's order is seed order."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    out: set[str] = set()
    while len(out) < count:
        suffix = rng.choice("123456789") + "".join(rng.choice(alphabet) for _ in range(16))
        pid = PROFILE_PREFIX + suffix
        if pid not in avoid:
            out.add(pid)
    ids = sorted(out)
    assert all(PROFILE_ID.match(p) and p > ADA for p in ids)
    return ids


@dataclass
class World:
    people: list[Person]
    seed_profiles: list[dict[str, Any]]
    id_map: list[tuple[str, str, str]]
    specials: dict[str, Any]


def make_world(rng: random.Random, people: list[Person]) -> World:
    in_store = [p for p in people if p.kind != "outside"]
    rng.shuffle(in_store)  # creation order in the store
    normal = [p for p in in_store if p.kind == "normal"]
    picks = rng.sample(normal, 8)
    shared_s, shared_t, merged, conflict_p, conflict_q, conflict_r, conflict_u, no_traits = picks
    ids = profile_ids(rng, len(in_store) + 1 + STORE_ONLY + 2, {ADA})
    unknown_ids = [ids.pop(rng.randrange(len(ids))) for _ in range(2)]  # deleted long ago
    seed: list[dict[str, Any]] = [{"id": ADA, "traits": {"Contact": {
        "firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com",
        "phone": "+13175550100"}}}]  # fmt: skip
    it = iter(ids)
    old_email_b = ""
    for person in in_store:
        person.profile_id = next(it)
        contact: dict[str, Any] = {"firstName": person.first, "lastName": person.last}
        if person.kind == "normal":
            person.store_email = person.email
            if rng.random() < 0.8 or person in picks:
                person.store_phone = person.phone
            if rng.random() < 0.75 or person in picks:
                person.store_crm = person.crm_id
        else:  # moved / map_email: the store knows an address they no longer use
            person.store_email = f"{ascii_name(person.first)}{person.key}@oldmail.example"
        if person is shared_t:
            person.crm_id = shared_s.crm_id  # the legacy CRM gave two customers one number
            person.store_crm = shared_s.crm_id
        contact["email"] = person.store_email
        if person.store_phone:
            contact["phone"] = (
                person.store_phone if rng.random() < 0.7 else phone_variant(rng, person.store_phone)
            )
        if person.store_crm:
            contact["crmId"] = person.store_crm
        traits: dict[str, Any] = {"Contact": contact}
        if rng.random() < 0.3:
            traits["Loyalty"] = {"points": rng.randrange(0, 3000), "tier": rng.choice(TIERS)}
        seed.append({"id": person.profile_id, "traits": traits})
        if person is merged:
            # A duplicate made from a second address, merged into the real profile since.
            old_email_b = f"{ascii_name(person.first)}.{person.key}@webmail.example"
            seed.append({"id": next(it), "traits": {"Contact": {
                "firstName": person.first, "lastName": person.last, "email": old_email_b}},
                "mergedInto": person.profile_id})  # fmt: skip
    extra_crm = rng.sample(range(100, 1000), STORE_ONLY)
    store_only: list[tuple[str, str]] = []
    for i in range(STORE_ONLY):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        pid = next(it)
        crm = f"CRM-{extra_crm[i]:06d}"
        store_only.append((pid, crm))
        email = f"{ascii_name(first)}.{ascii_name(last)}.{i}@example.org"
        seed.append({"id": pid, "traits": {"Contact": {
            "firstName": first, "lastName": last, "email": email, "crmId": crm}}})  # fmt: skip
    merged_b = seed[[s["id"] for s in seed].index(merged.profile_id) + 1]["id"]

    # The identity map: an export of the previous migration's crm_id -> profile links.
    id_map: list[tuple[str, str, str]] = []
    for person in in_store:
        own = person.profile_id
        assert own is not None
        if person in (shared_s, shared_t):
            continue
        if person.kind == "moved":
            id_map.append(("crm_id", crm_variant(rng, person.crm_id), own))
            if rng.random() < 0.2:
                id_map.append(("phone", phone_variant(rng, person.phone), own))
        elif person.kind == "map_email":
            id_map.append(("email", email_variant(rng, person.email), own))
        elif person is conflict_u or rng.random() < 0.3:  # with or without a crmId in the store
            id_map.append(("crm_id", crm_variant(rng, person.crm_id), own))
    for pid, crm in store_only[:5]:
        id_map.append(("crm_id", crm, pid))
    dup = next(e for e in id_map if e[0] == "crm_id")
    id_map.append(("crm_id", "  " + dup[1].strip() + " ", dup[2]))  # the same link twice
    rng.shuffle(id_map)
    specials: dict[str, Any] = {
        "shared": (shared_s, shared_t), "merged": merged, "merged_b": merged_b,
        "old_email_b": old_email_b, "conflict": (conflict_p, conflict_q, conflict_r, conflict_u),
        "no_traits": no_traits, "unknown_ids": unknown_ids,
    }  # fmt: skip
    return World(people, seed, id_map, specials)


# ------------------------------------------------------------------------------- the rows


def row_counts(rng: random.Random, world: World) -> None:
    sp = world.specials
    weights = [8, 12, 15, 15, 14, 12, 9, 7, 4, 4]
    for p in world.people:
        if p.kind == "outside":
            p.rows = 2 if rng.random() < 0.08 else 1
        else:
            p.rows = rng.choices(range(1, 11), weights)[0]
    minimum = {id(p): 6 for p in (*sp["shared"], sp["merged"], *sp["conflict"])}
    for p in world.people:
        p.rows = max(p.rows, minimum.get(id(p), 1))
    sp["no_traits"].rows = 1
    adjustable = [p for p in world.people if p.kind != "outside" and p is not sp["no_traits"]]
    total = sum(p.rows for p in world.people)
    while total != TOTAL_ROWS:
        p = rng.choice(adjustable)
        if total < TOTAL_ROWS and p.rows < 12:
            p.rows += 1
            total += 1
        elif total > TOTAL_ROWS and p.rows > minimum.get(id(p), 1):
            p.rows -= 1
            total -= 1


def base_row(rng: random.Random, p: Person, in_map: set[tuple[str, str]]) -> dict[str, str]:
    c = {k: "" for k in COLUMNS}
    if p.kind == "normal":
        e, ph, cr = rng.random() < 0.85, rng.random() < 0.65, rng.random() < 0.6
        resolvable = e or (ph and p.store_phone) or (cr and (p.store_crm or ("crm_id", p.crm_id)
                                                              in in_map))  # fmt: skip
        if not resolvable:
            e = True
    elif p.kind == "moved":
        e, ph, cr = rng.random() < 0.7, rng.random() < 0.5, True
    elif p.kind == "map_email":
        e, ph, cr = True, rng.random() < 0.4, rng.random() < 0.4
    else:
        e, ph, cr = rng.random() < 0.8, rng.random() < 0.5, rng.random() < 0.4
        if not (e or ph or cr):
            e = True
    c["email"] = email_variant(rng, p.email) if e else blank(rng)
    c["phone"] = phone_variant(rng, p.phone) if ph else blank(rng)
    c["crm_id"] = crm_variant(rng, p.crm_id) if cr else blank(rng)
    c["first_name"] = maybe(rng, 0.85, name_cell(rng, p.first))
    c["last_name"] = maybe(rng, 0.85, name_cell(rng, p.last))
    c["points"] = maybe(rng, 0.75, points_cell(rng))
    c["tier"] = maybe(rng, 0.7, tier_cell(rng, rng.choice(TIERS)))
    c["tags"] = maybe(rng, 0.5, tags_cell(rng))
    c["opt_in"] = maybe(rng, 0.7, opt_in_cell(rng))
    c["updated_at"] = timestamp(rng)
    c["profile_id"] = blank(rng) if rng.random() < 0.1 else ""
    return c


def make_rows(rng: random.Random, world: World) -> list[Row]:
    in_map = {(t, normalize(v, n)) for t, v, _ in world.id_map
              for _, t2, n in IDENTIFIERS if t2 == t}  # fmt: skip
    rows: list[Row] = []
    by_person: dict[int, list[Row]] = defaultdict(list)
    for p in world.people:
        for _ in range(p.rows):
            row = Row(p, base_row(rng, p, in_map))
            rows.append(row)
            by_person[p.key].append(row)
    plant(rng, world, rows, by_person)
    rng.shuffle(rows)
    return rows


def plant(rng: random.Random, world: World, rows: list[Row], by: dict[int, list[Row]]) -> None:
    """The deliberate mess, each on rows no other planting touches."""
    sp = world.specials
    used: set[int] = set()
    special_keys = {p.key for p in (*sp["shared"], sp["merged"], *sp["conflict"], sp["no_traits"])}

    def take(person: Person, label: str) -> dict[str, str]:
        free = [r for r in by[person.key] if id(r) not in used]
        row = rng.choice(free)
        used.add(id(row))
        row.planted.append(label)
        return row.cells

    def anyone(kinds: tuple[str, ...], label: str) -> tuple[Person, dict[str, str]]:
        while True:
            p = rng.choice(world.people)
            if (
                p.kind in kinds
                and p.key not in special_keys
                and any(id(r) not in used for r in by[p.key])
            ):
                return p, take(p, label)

    s, t = sp["shared"]
    m = sp["merged"]
    cp, cq, cr, cu = sp["conflict"]
    # Rows that carry a profile ID: valid ones (some padded), the merged-away one, unknown ones.
    for i in range(20):
        p, c = anyone(("normal", "moved", "map_email"), "profile_id")
        assert p.profile_id is not None
        c["profile_id"] = p.profile_id if i % 4 else f" {p.profile_id} "
        if i < 3:
            c["email"] = c["phone"] = c["crm_id"] = ""
    for i in range(3):
        c = take(m, "profile_id_merged")
        c["profile_id"] = sp["merged_b"] if i else f"{sp['merged_b']}  "
    for pid in sp["unknown_ids"]:
        _, c = anyone(("outside",), "profile_id_unknown")
        c["profile_id"] = pid
    p, c = anyone(("normal",), "profile_id_other_email")
    other = rng.choice([q for q in world.people if q.kind == "normal" and q is not p])
    assert p.profile_id is not None
    c["profile_id"], c["email"] = p.profile_id, email_variant(rng, other.email)
    # Malformed profile IDs: invalid cells; the row goes on to its identifiers.
    for i in range(5):
        p, c = anyone(("normal",), "profile_id_malformed")
        assert p.profile_id is not None
        suffix = p.profile_id[len(PROFILE_PREFIX) :]
        bad = [
            p.profile_id.upper(),  # upper-cased by a spreadsheet
            p.profile_id[:-1],  # truncated
            f"mem_profile_81jsamp1e{suffix}",  # first character out of [0-7]
            f"profile_01jsamp1e{suffix}",  # prefix lost
            f"mem_profile_01jSamp1e{suffix}",  # one capital
        ][i]
        assert not PROFILE_ID.match(bad.strip())
        c["profile_id"] = bad
        if i == 4:
            c["email"] = c["phone"] = c["crm_id"] = ""  # nothing else to go on: unresolved
    # The crm_id two profiles hold: rows with nothing better to go on are ambiguous.
    for person, n in ((s, 3), (t, 2)):
        for j in range(n):
            c = take(person, "ambiguous")
            c["email"] = "" if j else f"{person.email.split('@')[0]}@typo.example"
            c["phone"] = blank(rng)
            c["crm_id"] = crm_variant(rng, person.crm_id)
    for person in (s, t):  # the others name them by email
        for r in by[person.key]:
            if id(r) not in used and not r.cells["email"].strip():
                r.cells["email"] = email_variant(rng, person.email)
    # Conflicts: one profile's email with another's phone; a phone against the identity map.
    for _ in range(2):
        c = take(cp, "conflict_email_phone")
        c["email"], c["phone"] = email_variant(rng, cp.email), phone_variant(rng, cq.phone)
        c = take(cq, "conflict_email_phone")
        c["email"], c["phone"] = email_variant(rng, cq.email), phone_variant(rng, cr.phone)
    c = take(cr, "conflict_phone_map")
    c["email"], c["phone"], c["crm_id"] = "", phone_variant(rng, cr.phone), cu.crm_id
    mover = next(p for p in world.people if p.kind == "map_email" and p.key not in special_keys)
    c = take(mover, "conflict_map_email_phone")
    c["email"], c["phone"] = email_variant(rng, mover.email), phone_variant(rng, cu.phone)
    # The merged-away profile's own address: Lookup finds the profile it was merged into.
    c = take(m, "merged_old_email")
    c["email"], c["phone"], c["crm_id"] = sp["old_email_b"].upper(), phone_variant(rng, m.phone), ""
    c = take(m, "merged_old_email_only")
    c["email"], c["phone"], c["crm_id"] = f" {sp['old_email_b']}", "", ""
    # Known people with no usable identifier.
    for _ in range(3):
        _, c = anyone(("normal",), "no_identifiers")
        c["email"], c["phone"], c["crm_id"] = blank(rng), blank(rng), blank(rng)
    for _ in range(2):
        _, c = anyone(("normal",), "only_invalid_phone")
        c["email"], c["crm_id"] = "", ""
        c["phone"] = rng.choice(BAD_PHONES)
    p = next(q for q in world.people if q.kind == "normal" and q.store_crm
             and q.key not in special_keys)  # fmt: skip
    c = take(p, "crm_id_lower_case")
    c["email"], c["phone"], c["crm_id"] = "", "", p.crm_id.lower()
    # Values of the wrong type, and phones no rule can read (rows with other identifiers).
    for bad in BAD_POINTS:
        _, c = anyone(("normal", "moved", "map_email", "outside"), "invalid_points")
        c["points"] = bad
    for bad in BAD_OPT_IN:
        _, c = anyone(("normal", "moved", "map_email", "outside"), "invalid_opt_in")
        c["opt_in"] = bad
    for bad in BAD_PHONES:
        try:
            normalize(bad, "phone")
        except InvalidIdentifierError:
            pass
        else:
            raise AssertionError(f"{bad!r} was meant to be an unreadable phone")
        p, c = anyone(("normal",), "invalid_phone")
        c["phone"] = bad
        c["email"] = email_variant(rng, p.email)
    # Cells that look filled but hold nothing: a tags cell of separators only.
    for bad in (";;", " ; ", ";"):
        _, c = anyone(("normal",), "tags_separators_only")
        c["tags"] = bad
    # Two rows of one person with the same timestamp: the later row in the file wins.
    for _ in range(3):
        while True:
            p = rng.choice(world.people)
            free = [r for r in by[p.key] if id(r) not in used]
            if p.kind == "normal" and p.key not in special_keys and len(free) >= 2:
                break
        a, b = rng.sample(free, 2)
        for r in (a, b):
            used.add(id(r))
            r.planted.append("same_updated_at")
            r.cells["points"] = str(rng.randrange(0, 5000))
        b.cells["updated_at"] = a.cells["updated_at"]
    # Rows with no timestamp: they lose to every timestamped row of their profile.
    for _ in range(15):
        _, c = anyone(("normal", "moved", "map_email"), "blank_updated_at")
        c["updated_at"] = blank(rng)
    # A profile whose only row has nothing to send.
    c = take(sp["no_traits"], "nothing_to_send")
    for k in ("first_name", "last_name", "points", "tier", "tags", "opt_in"):
        c[k] = blank(rng)
    c["email"] = email_variant(rng, sp["no_traits"].email)


# ----------------------------------------------------------------------------- the oracle


def is_blank(cell: str | None) -> bool:
    return cell is None or not cell.strip()


def typed(cell: str, kind: str) -> tuple[bool, Any]:
    """(valid, value); value None means blank."""
    text = cell.strip()
    if kind == "STRING":
        return True, text
    if kind == "NUMBER":
        if not NUMBER.match(text):
            return False, None
        number = float(text)
        return True, int(number) if number.is_integer() else number
    if kind == "BOOLEAN":
        value = BOOLEANS.get(text.lower())
        return (value is not None), value
    items = [item.strip() for item in text.split(";")]
    items = [item for item in items if item]
    return True, items or None


def oracle(rows: list[dict[str, str]], world: World) -> dict[str, Any]:
    configs = {t: n for _, t, n in IDENTIFIERS}
    promoted = {"email": "email", "phone": "phone", "crmId": "crm_id"}
    index: dict[tuple[str, str], list[str]] = defaultdict(list)
    # A merged-away profile's identifiers belong to the profile it was merged into, so Lookup
    # finds the canonical profile by them; merged profiles come after their canonical one.
    ordered = [p for p in world.seed_profiles if "mergedInto" not in p]
    ordered += [p for p in world.seed_profiles if "mergedInto" in p]
    for profile in ordered:
        owner = profile.get("mergedInto", profile["id"])
        for trait, value in profile["traits"].get("Contact", {}).items():
            if trait in promoted:
                id_type = promoted[trait]
                key = (id_type, normalize(value, configs[id_type]))
                if owner not in index[key]:
                    index[key].append(owner)
    id_map: dict[tuple[str, str], list[str]] = defaultdict(list)
    for id_type, value, pid in world.id_map:
        key = (id_type, normalize(value, configs[id_type]))
        if pid not in id_map[key]:
            id_map[key].append(pid)

    outcomes: dict[str, str] = {}
    invalid: dict[str, list[str]] = {}
    best: dict[tuple[str, str, str], tuple[tuple[int, str, int], Any]] = {}
    for number, cells in enumerate(rows, start=1):
        bad: set[str] = set()
        values: dict[tuple[str, str], Any] = {}
        for group, trait, column, kind in TRAITS:
            if is_blank(cells[column]):
                continue
            ok, value = typed(cells[column], kind)
            if not ok:
                bad.add(column)
            elif value is not None:
                values[(group, trait)] = value
        target: str | None = None
        pid = cells["profile_id"]
        if not is_blank(pid):
            if PROFILE_ID.match(pid.strip()):
                target, outcome = pid.strip(), "profile_id"
            else:
                bad.add("profile_id")
        candidates: list[tuple[list[str], str]] = []
        for column, id_type, normalization in IDENTIFIERS:
            if is_blank(cells[column]):
                continue
            try:
                value = normalize(cells[column], normalization)
            except InvalidIdentifierError:
                bad.add(column)
                continue
            if target is None:
                if (id_type, value) in id_map:
                    candidates.append((id_map[(id_type, value)], "identity_map"))
                else:
                    candidates.append((index.get((id_type, value), []), "lookup"))
        if target is None:
            found = [(c, src) for c, src in candidates if c]
            if not found:
                outcome = "unresolved"
            elif len(found[0][0]) > 1:
                outcome = "ambiguous"
            else:
                target = found[0][0][0]
                outcome = found[0][1]
                if any(target not in c for c, _ in found[1:]):
                    target, outcome = None, "conflict"
        outcomes[str(number)] = outcome
        if bad:
            invalid[str(number)] = sorted(bad)
        if target is None:
            continue
        stamp = cells["updated_at"]
        order = (1, stamp.strip(), number) if TIMESTAMP.match(stamp.strip()) else (0, "", number)
        for (group, trait), value in values.items():
            slot = (target, group, trait)
            if slot not in best or best[slot][0] < order:
                best[slot] = (order, value)

    traits: dict[str, dict[str, dict[str, Any]]] = {}
    for (target, group, trait), (_, value) in sorted(best.items()):
        traits.setdefault(target, {}).setdefault(group, {})[trait] = value
    # What a canonical profile holds once the units of profiles merged into it have landed too:
    # per trait, the later row's value, whichever unit was sent first.
    merged_into = {p["id"]: p["mergedInto"] for p in world.seed_profiles if "mergedInto" in p}
    landed: dict[tuple[str, str, str], tuple[tuple[int, str, int], Any]] = {}
    for (target, group, trait), (order, value) in best.items():
        canonical = merged_into.get(target)
        if canonical is None and target not in merged_into.values():
            continue
        slot = (canonical or target, group, trait)
        if slot not in landed or landed[slot][0] < order:
            landed[slot] = (order, value)
    after_merges: dict[str, dict[str, dict[str, Any]]] = {}
    for (target, group, trait), (_, value) in sorted(landed.items()):
        after_merges.setdefault(target, {}).setdefault(group, {})[trait] = value
    counts = {k: 0 for k in ("profile_id", "identity_map", "lookup", "unresolved", "ambiguous",
                             "conflict")}  # fmt: skip
    for outcome in outcomes.values():
        counts[outcome] += 1
    rejects = len(invalid) + counts["unresolved"] + counts["ambiguous"] + counts["conflict"]
    return {
        "rows": len(rows),
        "invalid_rows": len(invalid),
        "resolved_profile_id": counts["profile_id"],
        "resolved_identity_map": counts["identity_map"],
        "resolved_lookup": counts["lookup"],
        "unresolved": counts["unresolved"],
        "ambiguous": counts["ambiguous"],
        "conflict": counts["conflict"],
        "profiles": len(traits),
        "requests": len(traits),
        "rejects": rejects,
        "row_outcomes": outcomes,
        "invalid": invalid,
        "profile_traits": traits,
        "after_merges": after_merges,
    }


# ------------------------------------------------------------------------------- writing


def write_seed(path: Path, profiles: list[dict[str, Any]]) -> None:
    """The store as indented JSON, one line per profile so the file stays readable."""
    store = dict(STORE_HEADER, profiles=["@PROFILES@"])
    text = json.dumps({"stores": [store]}, indent=2, ensure_ascii=False)
    lines = ",\n".join("        " + json.dumps(p, ensure_ascii=False) for p in profiles)
    text = text.replace('        "@PROFILES@"', lines)
    path.write_text(text + "\n", encoding="utf-8")


def write_extract(rows: list[dict[str, str]]) -> None:
    with (HERE / "customers.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([r[k] for k in COLUMNS] for r in rows)
    frame = pl.DataFrame(
        {k: [r[k] or None for r in rows] for k in COLUMNS}, schema=dict.fromkeys(COLUMNS, pl.String)
    )
    frame.write_parquet(HERE / "customers.parquet")


def main() -> None:
    rng = random.Random(SEED)
    people = make_people(rng)
    world = make_world(rng, people)
    row_counts(rng, world)
    rows = make_rows(rng, world)
    cells = [r.cells for r in rows]
    write_extract(cells)
    pl.DataFrame(
        {
            "id_type": [e[0] for e in world.id_map],
            "value": [e[1] for e in world.id_map],
            "profile_id": [e[2] for e in world.id_map],
        },
        schema=dict.fromkeys(("id_type", "value", "profile_id"), pl.String),
    ).write_parquet(HERE / "identity_map.parquet")
    write_seed(HERE / "emulator_seed.json", world.seed_profiles)
    expected = oracle(cells, world)
    (HERE / "expected_plan.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False)
                                             + "\n", encoding="utf-8")  # fmt: skip

    planted: dict[str, list[int]] = defaultdict(list)
    for number, row in enumerate(rows, start=1):
        for label in row.planted:
            planted[label].append(number)
    summary = {k: v for k, v in expected.items() if isinstance(v, int)}
    print(json.dumps(summary))
    print(f"seed profiles: {len(world.seed_profiles)}, identity map rows: {len(world.id_map)}")
    for label, numbers in planted.items():
        outcomes = sorted({expected["row_outcomes"][str(n)] for n in numbers})
        print(f"{label}: rows {numbers[:8]}{' ...' if len(numbers) > 8 else ''} -> {outcomes}")


if __name__ == "__main__":
    main()
