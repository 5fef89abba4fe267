"""Shared fixtures: a real emulator over real HTTP on a free loopback port."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from backfill.emulator import EmulatorConfig, EmulatorServer

SEED = Path(__file__).parent / "data" / "emulator_seed.json"

# CI replays the same examples every run (a red CI must be reproducible, not a dice roll);
# a developer's run draws fresh ones, which is where new counterexamples come from.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh emulator per test, seeded with the test store (tests/data/emulator_seed.json)."""
    with EmulatorServer(EmulatorConfig(seed=SEED, random_seed=7)) as server:
        yield server


@pytest.fixture
def store_id() -> str:
    return STORE_ID


STORE_ID = "mem_store_01jtest0000000000000000000"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Subprocesses a test starts; whatever is still alive at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.fixture
def emulator_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's default credential pair as the environment's only Twilio credentials."""
    for name in ("TWILIO_API_KEY", "TWILIO_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "emulator")
