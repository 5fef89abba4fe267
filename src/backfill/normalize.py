"""Identifier normalization, exactly as the Memory store applies it.

One implementation serves both sides: the emulator normalizes what it stores and looks up, and the
client normalizes before it looks up, so a value the client resolves is the value the store holds.
Rules from the Memory API's identity settings (see shared/memory-api.md):

- ``phone``: E.164. US numbers need 10 digits, with or without ``+1``; non-US numbers must carry a
  1-3 digit country code, ``+`` optional; national formats of other countries are read as US.
- ``email``: lower-cased, every space removed.
- ``trim``: white space stripped at both ends.
- ``none``: as is.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

import phonenumbers

from backfill.errors import InvalidIdentifierError

Normalization = Literal["phone", "email", "trim", "none"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)

_SPACES = re.compile(r"\s+")
_NON_DIGITS = re.compile(r"\D")


def normalize(value: str, normalization: str, default_region: str = "US") -> str:
    """Return ``value`` normalized; raise InvalidIdentifierError when the rule rejects it."""
    if normalization == "phone":
        return normalize_phone(value, default_region)
    if normalization == "email":
        out = _SPACES.sub("", value).lower()
    elif normalization == "trim":
        out = value.strip()
    elif normalization == "none":
        out = value
    else:
        raise InvalidIdentifierError(
            f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}"
        )
    if not out:
        raise InvalidIdentifierError(f"empty value after {normalization} normalization")
    return out


def normalize_phone(value: str, default_region: str = "US") -> str:
    """E.164 via libphonenumber; length rules as the store states them, not full validity.

    The store accepts any 10-digit US number (test data is full of 555 numbers that
    ``is_valid_number`` rejects), so only the length and a known country code are checked.
    """
    text = value.strip()
    if not text:
        raise InvalidIdentifierError("empty phone number")
    number = _parse(text, default_region)
    if number is not None and number.country_code == 1:
        if len(phonenumbers.national_significant_number(number)) == 10:
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        number = None
    elif number is not None and not phonenumbers.is_possible_number(number):
        number = None
    if number is None and not text.startswith("+"):
        # A country code written without "+": 44 20 7946 0958.
        number = _parse("+" + _NON_DIGITS.sub("", text), None)
        if number is not None and (
            number.country_code == 1 or not phonenumbers.is_possible_number(number)
        ):
            number = None
    if number is None:
        raise InvalidIdentifierError(f"not a valid phone number: {value!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
