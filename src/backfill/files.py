"""Files that hold customer data: created owner-only, before anything is written to them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

# The output folder's SQLite files, named in one place: the run's checkpoint, and the embedded
# emulator's store (config refuses either as an incremental state file).
RUN_FILE: Final = "run.sqlite"
EMULATOR_STATE: Final = "emulator.sqlite"


def private_dir(path: Path) -> Path:
    """Create (if needed) a folder only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create (if needed) a file only its owner can read.

    An existing file is only chmod-ed, never opened: closing any descriptor of a file drops
    every POSIX lock this process holds on it, and SQLite relies on those locks to keep its WAL
    while a connection is open (another reader would otherwise delete it under us).
    """
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    os.chmod(path, 0o600)
    return path
