"""Identifier normalization: the one implementation both the emulator and the client use."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backfill.errors import InvalidIdentifierError
from backfill.plan.normalize import SPACE_CHARS, normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1-317-555-6789", "+13175556789"),
        ("(317) 555-6789", "+13175556789"),
        ("317.555.6789", "+13175556789"),
        (" +1 317 555 6789 ", "+13175556789"),
        ("13175556789", "+13175556789"),
        ("+1 555 555 0100", "+15555550100"),
        ("+44 20 7946 0958", "+442079460958"),
        ("442079460958", "+442079460958"),
        ("+33 1 42 68 53 00", "+33142685300"),
    ],
)
def test_phone_to_e164(raw: str, expected: str) -> None:
    """US numbers with or without +1, and country codes with or without '+', become E.164."""
    assert normalize(raw, "phone") == expected


@pytest.mark.parametrize("raw", ["555-1234", "020 7946 0958", "12345", "", "   ", "not a phone"])
def test_phone_rejects_what_the_store_rejects(raw: str) -> None:
    """Short US numbers and other countries' national formats (read as US) are invalid."""
    with pytest.raises(InvalidIdentifierError):
        normalize(raw, "phone")


def test_email_lowercases_and_removes_every_space() -> None:
    """Email normalization lower-cases and removes spaces anywhere, not only at the ends."""
    assert normalize("  Ann.Lee @Example.COM ", "email") == "ann.lee@example.com"


def test_trim_and_none() -> None:
    """trim strips both ends only; none keeps the value exactly."""
    assert normalize("  A b  ", "trim") == "A b"
    assert normalize("  A b  ", "none") == "  A b  "


def test_unknown_normalization_is_an_error() -> None:
    """A misspelled normalization names the valid ones rather than passing values through."""
    with pytest.raises(InvalidIdentifierError, match="phone, email, trim, none"):
        normalize("x", "lowercase")


def test_empty_after_normalization_is_rejected() -> None:
    """A value that normalizes to nothing cannot identify anyone."""
    with pytest.raises(InvalidIdentifierError):
        normalize("   ", "email")


@given(st.integers(min_value=200, max_value=999), st.integers(min_value=0, max_value=9_999_999))
def test_us_phone_formats_agree(area: int, line: int) -> None:
    """Every common way of writing one US number normalizes to the same E.164 string."""
    digits = f"{area}{line:07d}"
    expected = "+1" + digits
    spellings = [
        digits,
        "1" + digits,
        "+1" + digits,
        f"({digits[:3]}) {digits[3:6]}-{digits[6:]}",
        f"1-{digits[:3]}-{digits[3:6]}-{digits[6:]}",
    ]
    assert {normalize(s, "phone") for s in spellings} == {expected}


@given(st.text(min_size=1).filter(lambda s: s.strip() != ""))
def test_email_normalization_is_idempotent(value: str) -> None:
    """Normalizing twice changes nothing: the store and the client can both apply it."""
    try:
        once = normalize(value, "email")
    except InvalidIdentifierError:
        return
    assert normalize(once, "email") == once


def test_space_chars_are_what_str_strip_removes() -> None:
    """SPACE_CHARS (what the vectorized path strips) is exactly str.isspace() on this runtime."""
    spaces = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
    assert spaces == SPACE_CHARS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+6591234567", "+6591234567"), ("+45 32 12 34 56", "+4532123456"), ("+1 (317) 555-6789",
     "+13175556789")],
)  # fmt: skip
def test_plus_keeps_its_country_code(raw: str, expected: str) -> None:
    """A "+" and a country code other than 1 is that country's number (issue 9)."""
    assert normalize(raw, "phone") == expected


def test_plus_with_a_code_too_short_for_its_country_is_rejected() -> None:
    """+212 is Morocco, whose numbers have 9 digits: +2125551234 is no one's, not a US number."""
    with pytest.raises(InvalidIdentifierError):
        normalize("+2125551234", "phone")
