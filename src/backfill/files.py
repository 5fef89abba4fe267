"""Files that hold customer data: created owner-only, before anything is written to them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from backfill.errors import ConfigError

# The output folder's SQLite files, named in one place: the run's checkpoint, and the embedded
# emulator's store (config refuses either as an incremental state file).
RUN_FILE: Final = "run.sqlite"
EMULATOR_STATE: Final = "emulator.sqlite"
VALUES_FILE: Final = "values.parquet"
ROWS_FILE: Final = "rows.parquet"


def private_dir(path: Path) -> Path:
    """Create (if needed) a folder only its owner can enter. Only the folders created here are
    made owner-only: an existing one keeps its mode (``[output] dir = "."`` may be a shared
    folder), and the customer data inside it is protected file by file (``private_file``)."""
    _make_private(path)
    return path


def _make_private(path: Path) -> Path | None:
    """Create ``path`` and its missing parents, each owner-only; return the topmost folder that
    was created (None when ``path`` existed)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        os.chmod(folder, 0o700)
    return missing[-1] if missing else None


@contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """The job's output folder for one command. If this command created it and then fails on its
    input, schema or missing credentials (``ConfigError``: raised before any write), the folder
    goes again: a job that fails its checks leaves nothing behind for ``status`` to misread."""
    created = _make_private(path)
    try:
        yield path
    except ConfigError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


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
