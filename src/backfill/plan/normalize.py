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

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

import phonenumbers
from phonenumbers.phonemetadata import PhoneMetadata

from backfill.errors import InvalidIdentifierError

Normalization = Literal["phone", "email", "trim", "none"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)

_SPACES = re.compile(r"\s+")
# What ``str.strip()`` and ``re``'s ``\s`` treat as white space (``str.isspace``), spelled out so
# the vectorized path can strip exactly these: Rust's White_Space (polars' ``\s`` and default
# ``strip_chars``) lacks U+001C..U+001F. tests/test_normalize.py checks it against the runtime.
SPACE_CHARS: Final = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
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


@dataclass(frozen=True)
class PhoneCountries:
    """What ``normalize_phone`` decides for ``+<country code><digits>``, as data a vectorized
    rule can use (see mapping.normalize_column): taken from phonenumbers' own metadata, so the
    fast path follows the library when its metadata changes.

    - ``codes``: every country calling code phonenumbers knows, as text ("1", "44", "800").
    - ``lengths``: ``"<code>:<length>"`` for every national number length the code accepts
      (``is_possible_number``; 10 only for code 1).
    - ``prefixes``: code -> national_prefix_for_parsing, for the codes that have one. A national
      number that starts with a match may be rewritten by phonenumbers (the "0" of "+44 020..."),
      so a fast path must leave it to ``normalize``.
    """

    codes: frozenset[str]
    lengths: frozenset[str]
    prefixes: dict[str, str]


@functools.cache
def phone_countries() -> PhoneCountries:
    """The per-country rules, computed once (a few ms) from phonenumbers' metadata."""
    codes: set[str] = set()
    lengths: set[str] = set()
    prefixes: dict[str, str] = {}
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        region = phonenumbers.region_code_for_country_code(code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None:
            continue  # phonenumbers cannot parse these either: left to normalize()
        codes.add(str(code))
        if metadata.national_prefix_for_parsing:
            prefixes[str(code)] = metadata.national_prefix_for_parsing
        # phonenumbers refuses national numbers shorter than 2 or longer than 17 digits.
        for length in range(2, 18):
            if code == 1:
                possible = length == 10
            else:
                number = phonenumbers.PhoneNumber(
                    country_code=code, national_number=int("5" * length)
                )
                possible = phonenumbers.is_possible_number(number)
            if possible:
                lengths.add(f"{code}:{length}")
    return PhoneCountries(frozenset(codes), frozenset(lengths), prefixes)


def reads_national_as_nanp(region: str) -> bool:
    """True when ``region`` reads numbers without ``+`` exactly as the US does: country code 1,
    national prefix 1 with no rewriting, international prefix 011 (US, CA, PR, ...; not the
    Caribbean regions that prepend their area code to 7-digit numbers)."""
    metadata = PhoneMetadata.metadata_for_region(region)
    return (
        metadata is not None
        and metadata.country_code == 1
        and metadata.national_prefix_for_parsing == "1"
        and not metadata.national_prefix_transform_rule
        and metadata.international_prefix == "011"
    )
