"""Generate ``new_customers.csv``, the extract behind jobs/sample_bulk.toml: a web shop's customer
export to migrate into the sample store, people the store does not hold yet.

Run from the project root (``python sample_data/make_new_customers.py``); the output is the same
on every run (``random.Random(2027)``). 5,000 people in about 6,000 rows: some people appear
twice (an older and a newer row, the newer one must win), emails in mixed case and padded,
phones in several formats (US and UK), blank cells, a few invalid phones and a few rows with no
usable identifier, so the bulk sample shows its reports as well as its speed.
"""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEOPLE = 5_000
FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivo", "Jia", "Kofi", "Lena")
LAST = ("Abbott", "Baker", "Costa", "Dube", "Evans", "Fischer", "Gray", "Hughes", "Ito", "Jones")
TIERS = ("bronze", "silver", "gold", "platinum")
TAGS = ("newsletter", "app-user", "vip", "returns", "gift-card")
COLUMNS = ("email", "phone", "crm_id", "first_name", "last_name", "points", "tier", "tags",
           "opt_in", "updated_at")  # fmt: skip


def phone(rng: random.Random, i: int) -> str:
    """A unique phone number of person ``i``, written one of the ways exports write them."""
    if i % 10 == 0:  # a UK number
        number = f"7700 9{i:05d}"
        return rng.choice([f"+44 {number}", f"+44{number.replace(' ', '')}"])
    line = f"{i % 10_000:04d}"
    area = 201 + i // 10_000
    return rng.choice([f"({area}) 555-{line}", f"{area}-555-{line}", f"+1 {area} 555 {line}",
                       f"1{area}555{line}"])  # fmt: skip


def row(rng: random.Random, i: int, when: datetime) -> dict[str, str]:
    first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
    email = f"{first}.{last}.{i}@shop.example"
    email = rng.choice([email, email.lower(), f" {email.upper()} ", email.lower()])
    return {
        "email": email,
        "phone": phone(rng, i) if rng.random() < 0.8 else "",
        "crm_id": f"WEB-{i:06d}",
        "first_name": first,
        "last_name": last,
        "points": str(rng.randrange(0, 50_000)) if rng.random() < 0.9 else "",
        "tier": rng.choice(TIERS),
        "tags": ";".join(rng.sample(TAGS, rng.randrange(0, 3))),
        "opt_in": rng.choice(["true", "false", "yes", "no", ""]),
        "updated_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main() -> None:
    rng = random.Random(2027)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(PEOPLE):
        when = start + timedelta(minutes=rng.randrange(0, 400_000))
        rows.append(row(rng, i, when))
        if rng.random() < 0.2:  # a second, newer row for the same person
            newer = row(rng, i, when + timedelta(days=rng.randrange(1, 90)))
            rows.append(newer)
    for r in rng.sample(rows, 8):  # typed by hand
        r["phone"] = rng.choice(["555-0123", "12345", "n/a"])
    for r in rng.sample(rows, 4):  # nothing to find the person by
        r["email"], r["phone"], r["crm_id"] = "", "", ""
    rng.shuffle(rows)
    with (HERE / "new_customers.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.DictWriter(f, fieldnames=COLUMNS)
        out.writeheader()
        out.writerows(rows)


if __name__ == "__main__":
    main()
