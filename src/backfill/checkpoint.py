"""The run's SQLite file in the output folder: lookup answers now, delivery state next.

One module owns ``sqlite3`` for the client side (ruff bans it elsewhere). The file holds customer
identifiers, so it is created owner-only; WAL with ``synchronous=FULL`` so that what was committed
survives ``kill -9`` and power loss alike.
"""

from __future__ import annotations

import json
import os
import sqlite3  # noqa: TID251 - this module is the client's one door to SQLite
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from backfill.errors import BackfillError

SCHEMA = """
CREATE TABLE IF NOT EXISTS lookups (
    store_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    profiles TEXT NOT NULL,          -- JSON list of canonical profile IDs, earliest first
    asked_at REAL NOT NULL,
    PRIMARY KEY (store_id, id_type, value)
) WITHOUT ROWID;
"""


def private_dir(path: Path) -> Path:
    """Create (if needed) a folder only its owner can enter: it will hold customer data."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create (if needed) a file only its owner can read, before anything is written to it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path


class RunDB:
    """The run's SQLite file; a context manager that closes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            private_file(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BackfillError(f"cannot open the run file {path}: {exc}") from exc

    def cached_lookups(
        self, store_id: str, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], list[str]]:
        """The cached answers among ``pairs`` of (id_type, normalized value)."""
        found: dict[tuple[str, str], list[str]] = {}
        wanted = list(pairs)
        for start in range(0, len(wanted), 400):
            chunk = wanted[start : start + 400]
            clause = " OR ".join(["(id_type = ? AND value = ?)"] * len(chunk))
            params = [store_id] + [x for pair in chunk for x in pair]
            for id_type, value, profiles in self._db.execute(
                f"SELECT id_type, value, profiles FROM lookups WHERE store_id = ? AND ({clause})",  # noqa: S608 - placeholders only
                params,
            ):
                found[(id_type, value)] = json.loads(profiles)
        return found

    def cache_lookups(self, store_id: str, answers: dict[tuple[str, str], list[str]]) -> None:
        """Keep answered lookups; committed at once, so a killed run keeps what it learned."""
        if not answers:
            return
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO lookups VALUES (?, ?, ?, ?, ?)",
                [(store_id, t, v, json.dumps(p), now) for (t, v), p in answers.items()],
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
