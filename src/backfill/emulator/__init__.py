"""A local emulator of the Twilio Memory API and a Segment Unify space, for tests and samples."""

from backfill.emulator.app import Emulator
from backfill.emulator.config import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_SECRET, EmulatorConfig
from backfill.emulator.server import EmulatorServer, serve

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_SECRET",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "serve",
]
