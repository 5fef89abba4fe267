"""The run's SQLite file in the output folder: lookup answers, and every request unit's state.

One module owns ``sqlite3`` for the client side (ruff bans it elsewhere). The file holds customer
data, so it is created owner-only; WAL with ``synchronous=FULL`` so that what was committed
survives ``kill -9`` and power loss alike.

A unit moves ``pending -> in_flight -> done | failed``. A worker claims its next unit (in_flight)
in the same transaction that records its previous unit's result, and sends nothing before that
commit returns; so at any instant at most ``concurrency`` units are in flight, and a run killed
at any line re-sends at most those (``reset_in_flight`` puts them back to pending), which PATCH
tolerates. Commits are grouped across workers, so durability costs one fsync per batch.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3  # noqa: TID251 - this module is the client's one door to SQLite
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from backfill.errors import BackfillError, RunLocked
from backfill.files import private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS lookups (
    store_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    profiles TEXT NOT NULL,          -- JSON list of canonical profile IDs, earliest first
    asked_at REAL NOT NULL,
    PRIMARY KEY (store_id, id_type, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY,         -- delivery order
    key TEXT NOT NULL UNIQUE,        -- <target>#<chunk>, as in plan.parquet
    profile_id TEXT,                 -- null for a profile to create
    action TEXT NOT NULL,            -- patch | create
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    rows INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | in_flight | done | failed
    outcome TEXT,                    -- updated | created | profile_not_found | failed
    status INTEGER,                  -- last HTTP status (null: no response)
    code INTEGER,                    -- Twilio error code
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_to TEXT,                    -- the canonical profile after a 308, or the created one
    claims INTEGER NOT NULL DEFAULT 0,  -- times claimed for sending; > 1 means re-sent
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS units_by_state ON units (state, seq);
"""

PENDING, IN_FLIGHT, DONE, FAILED = "pending", "in_flight", "done", "failed"


@dataclass(frozen=True)
class Unit:
    seq: int
    key: str
    profile_id: str | None
    action: str
    body: str


@dataclass(frozen=True)
class Result:
    """How one unit ended: ``state`` is DONE or FAILED; the rest goes to the reports."""

    seq: int
    state: str
    outcome: str
    status: int | None
    code: int | None
    message: str | None
    attempts: int
    sent_to: str | None


class RunLock:
    """An exclusive, non-blocking lock on the output folder, released when the process dies
    (flock), so a crashed run never leaves a stale lock behind for cron to trip over."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "run.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(
                f"another backfill process (pid {holder}) is using {self.path.parent}; "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


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

    # ------------------------------------------------------------------------- run metadata

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, **values: Any) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # ---------------------------------------------------------------------------- units

    def replace_units(self, plan_path: Path) -> int:
        """Start delivery afresh from plan.parquet: every unit pending, in plan order."""
        count = 0
        with self._transaction():
            self._db.execute("DELETE FROM units")
            for frame in pl.scan_parquet(plan_path).collect_batches(chunk_size=50_000):
                rows = frame.select("key", "profile_id", "action", "body", "hash", "rows").rows()
                self._db.executemany(
                    "INSERT INTO units (key, profile_id, action, body, hash, rows) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                count += len(rows)
        return count

    def reset_in_flight(self) -> int:
        """After a crash: units that may or may not have been sent go back to pending."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE units SET state = ? WHERE state = ?", (PENDING, IN_FLIGHT)
            )
        return cursor.rowcount

    def pending(self, after_seq: int, limit: int) -> list[Unit]:
        rows = self._db.execute(
            "SELECT seq, key, profile_id, action, body FROM units "
            "WHERE state = ? AND seq > ? ORDER BY seq LIMIT ?",
            (PENDING, after_seq, limit),
        ).fetchall()
        return [Unit(*row) for row in rows]

    def record(self, results: list[Result], claims: list[int]) -> None:
        """One transaction: finished units get their results, claimed ones go in flight."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "UPDATE units SET state = ?, outcome = ?, status = ?, code = ?, message = ?, "
                "attempts = attempts + ?, sent_to = ?, finished_at = ? WHERE seq = ?",
                [
                    (
                        r.state,
                        r.outcome,
                        r.status,
                        r.code,
                        r.message,
                        r.attempts,
                        r.sent_to,
                        now,
                        r.seq,
                    )
                    for r in results
                ],
            )
            self._db.executemany(
                "UPDATE units SET state = ?, claims = claims + 1 WHERE seq = ?",
                [(IN_FLIGHT, seq) for seq in claims],
            )

    def counts(self) -> dict[str, int]:
        """Units per state, and per outcome of finished ones (``outcome:<name>``)."""
        counts: dict[str, int] = {PENDING: 0, IN_FLIGHT: 0, DONE: 0, FAILED: 0}
        for state, n in self._db.execute("SELECT state, count(*) FROM units GROUP BY state"):
            counts[state] = n
        for outcome, n in self._db.execute(
            "SELECT outcome, count(*) FROM units WHERE outcome IS NOT NULL GROUP BY outcome"
        ):
            counts[f"outcome:{outcome}"] = n
        resent = self._db.execute("SELECT count(*) FROM units WHERE claims > 1").fetchone()[0]
        counts["resent"] = resent
        return counts

    def failed_units(self) -> Iterator[tuple[Any, ...]]:
        """(key, profile_id, outcome, status, code, message, attempts, sent_to) of failures."""
        yield from self._db.execute(
            "SELECT key, profile_id, outcome, status, code, message, attempts, sent_to "
            "FROM units WHERE state = ? ORDER BY seq",
            (FAILED,),
        )

    def remaps(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM units WHERE action = 'patch' AND sent_to IS NOT NULL"
            ).fetchone()[0]
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
