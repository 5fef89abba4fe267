"""Twilio Type IDs (``mem_profile_01h...``): a prefix and a UUIDv7 in 26 lower-case base32 digits.

Minted IDs increase with time, so listing by ID is listing by creation, as on the real service.
"""

from __future__ import annotations

import random
import re
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # TypeID's Crockford base32, lower case

STORE_ID = re.compile(r"^mem_(store|service)_[0-7][0-9a-z]{25}$")
PROFILE_ID = re.compile(r"^mem_profile_[0-7][0-9a-z]{25}$")
OPERATION_ID = re.compile(r"^mem_operation_[0-7][0-9a-z]{25}$")


class IdMinter:
    """Mints strictly increasing TypeIDs; seeded for reproducible test runs."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._last = 0

    def mint(self, prefix: str) -> str:
        millis = int(time.time() * 1000)
        value = (millis << 80) | (0x7 << 76) | self._rng.getrandbits(76)
        if value <= self._last:
            value = self._last + 1
        self._last = value
        return f"{prefix}_{_encode(value)}"


def _encode(value: int) -> str:
    digits = []
    for _ in range(26):
        digits.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(digits))
