"""Shared fixtures: a real emulator over real HTTP on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backfill.emulator import EmulatorConfig, EmulatorServer

SEED = Path(__file__).parent / "data" / "emulator_seed.json"


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh emulator per test, seeded with the test store (tests/data/emulator_seed.json)."""
    with EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7)) as server:
        yield server


@pytest.fixture
def store_id() -> str:
    return STORE_ID


STORE_ID = "mem_store_01jtest0000000000000000000"
