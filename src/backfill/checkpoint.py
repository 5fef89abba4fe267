"""The run's SQLite file in the output folder: lookup answers, and every request unit's state.

One module owns ``sqlite3`` for the client side (ruff bans it elsewhere). The file holds customer
data, so it is created owner-only; WAL with ``synchronous=FULL`` so that what was committed
survives ``kill -9`` and power loss alike.

A unit moves ``pending -> in_flight -> done | failed``. A worker claims its next unit (in_flight)
in the same transaction that records its previous unit's result, and sends nothing before that
commit returns; so at any instant at most ``concurrency`` units are in flight, and a run killed
at any line re-sends at most those (``reset_in_flight`` puts them back to pending), which PATCH
tolerates. Commits are grouped across workers, so durability costs one fsync per batch.

A create (POST) does not tolerate it: a unit read back with ``claims`` > 0 may have reached the
service before, so delivery asks Lookup before creating again (``send``). What a create made is
its unit's ``sent_to``, which later chunks of the same person PATCH.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3  # noqa: TID251 - this module is the client's one door to SQLite
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import polars as pl

from backfill.errors import BackfillError, RunLocked, StorageError
from backfill.files import private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS lookups (
    store_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    value TEXT NOT NULL,
    profiles TEXT NOT NULL,          -- JSON list of canonical profile IDs, earliest first
    asked_at REAL NOT NULL,          -- time.time() of the answer; older than the TTL = ask again
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
    finished_at REAL,
    orders TEXT,                     -- per trait, the winning row's sort key (plan.unit_orders)
    batch INTEGER                    -- the batch it was last claimed in (deliver.interface.Batch)
);
CREATE INDEX IF NOT EXISTS units_by_state ON units (state, seq);
CREATE TABLE IF NOT EXISTS batches (  -- what a delivery must remember about a batch it started
    id INTEGER PRIMARY KEY,          -- Batch.id
    state TEXT NOT NULL              -- JSON, the delivery's own (an import's ID and status)
);
"""

PENDING, IN_FLIGHT, DONE, FAILED = "pending", "in_flight", "done", "failed"
SKIPPED_UNCHANGED = "skipped_unchanged"  # outcome of a unit an incremental run did not send
# Outcomes after which Memory holds (or has accepted) the unit's body; bulk's "upserted" and
# import's "imported" are proven by the read-back that follows them (``verify``).
LANDED = ("updated", "created", "upserted", "imported")

# The incremental state (``[incremental] state``): one row per unit that landed, by store, with
# the hash scheme its hashes were made under. It outlives runs; a run attaches it as ``inc``.
STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS inc.landed (
    store_id TEXT NOT NULL,
    key TEXT NOT NULL,               -- <target>#<chunk>, as in plan.parquet
    hash TEXT NOT NULL,              -- content hash of the body that landed
    landed_at REAL NOT NULL,
    PRIMARY KEY (store_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inc.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Unit(NamedTuple):
    """One request unit as delivery reads it (a tuple: a bulk run makes one per profile)."""

    seq: int
    key: str
    profile_id: str | None
    action: str
    body: str
    claims: int = 0  # times claimed before: > 0 means it may have been sent already
    orders: str | None = None  # plan.unit_orders' JSON
    batch: int | None = None  # the batch it was claimed in before, until that batch finished

    @property
    def target(self) -> str:
        """The profile ID, or the ``new:...`` target of a profile to create."""
        return self.profile_id if self.profile_id is not None else self.key.rpartition("#")[0]


class Result(NamedTuple):
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

    def __init__(self, folder: Path, command: str) -> None:
        self.path = folder / "run.lock"
        self.command = command  # written next to the pid: what `backfill status` names
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, command = os.read(fd, 64).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            who = f"backfill {command}" if command else "another backfill process"
            raise RunLocked(
                f"{who} (pid {pid or '?'}) is using {self.path.parent}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.command}".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no pid: `backfill status` reads "not running"
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def lock_holder(folder: Path) -> tuple[int, str] | None:
    """(pid, command) of a live process that holds ``folder``'s RunLock, or None.

    For ``backfill status`` only: it must not take the lock itself (a cron run starting at
    that instant would refuse), so it reads the pid the holder wrote and asks whether that
    process is alive. A stale pid reused by another process reads as running: the safe error.
    """
    try:
        text = (folder / "run.lock").read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    number, _, command = text.partition(" ")
    if not number.isdigit():
        return None
    pid = int(number)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's
        pass
    return pid, command or "run"


class _Connection(sqlite3.Connection):
    """A connection whose failures name its file: a full disk or a read-only folder during
    delivery must reach the user as one line about that file, not as a sqlite3 traceback from
    the checkpoint thread."""

    path = "?"

    @contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"cannot use {self.path}: {exc}") from exc

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        with self._named():
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        with self._named():
            return super().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        with self._named():
            return super().executescript(sql_script)


class RunDB:
    """The run's SQLite file; a context manager that closes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            private_file(path)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, factory=_Connection
            )
            self._db.path = str(path)
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(units)")}
            if "orders" not in columns:  # a run file from before orders were planned
                self._db.execute("ALTER TABLE units ADD COLUMN orders TEXT")
            if "batch" not in columns:  # a run file from before batches
                self._db.execute("ALTER TABLE units ADD COLUMN batch INTEGER")
        except (OSError, sqlite3.Error, StorageError) as exc:
            raise StorageError(f"cannot open the run file {path}: {exc}") from exc

    def cached_lookups(
        self,
        store_id: str,
        pairs: Iterable[tuple[str, str]],
        *,
        now: float,
        max_age: float,
        max_age_empty: float,
    ) -> dict[tuple[str, str], list[str]]:
        """The cached answers among ``pairs`` of (id_type, normalized value) asked at most
        ``max_age`` seconds before ``now`` (``max_age_empty`` for "no profile" answers). An
        answer dated after ``now`` (the clock went back) is not trusted either."""
        found: dict[tuple[str, str], list[str]] = {}
        wanted = list(pairs)
        for start in range(0, len(wanted), 400):
            chunk = wanted[start : start + 400]
            clause = " OR ".join(["(id_type = ? AND value = ?)"] * len(chunk))
            params = [store_id] + [x for pair in chunk for x in pair]
            for id_type, value, profiles, asked_at in self._db.execute(
                "SELECT id_type, value, profiles, asked_at FROM lookups "  # noqa: S608 - placeholders only
                f"WHERE store_id = ? AND ({clause})",
                params,
            ):
                answer = json.loads(profiles)
                if 0.0 <= now - asked_at <= (max_age if answer else max_age_empty):
                    found[(id_type, value)] = answer
        return found

    def cache_lookups(
        self, store_id: str, answers: dict[tuple[str, str], list[str]], *, now: float
    ) -> None:
        """Keep answered lookups, dated ``now``; committed at once, so a killed run keeps what
        it learned. Only answers about the person belong here, never a failed request."""
        if not answers:
            return
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
            self._db.execute("DELETE FROM batches")
            plan = pl.scan_parquet(plan_path)
            if "orders" not in plan.collect_schema():  # planned without (reconcile --fix)
                plan = plan.with_columns(pl.lit(None, pl.String).alias("orders"))
            for frame in plan.collect_batches(chunk_size=50_000):
                columns = ("key", "profile_id", "action", "body", "hash", "rows", "orders")
                rows = frame.select(columns).rows()
                self._db.executemany(
                    "INSERT INTO units (key, profile_id, action, body, hash, rows, orders) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            "SELECT seq, key, profile_id, action, body, claims, orders, batch FROM units "
            "WHERE state = ? AND seq > ? ORDER BY seq LIMIT ?",
            (PENDING, after_seq, limit),
        ).fetchall()
        return list(map(Unit._make, rows))

    def record(self, results: list[Result], claims: list[tuple[int, list[int]]]) -> None:
        """One transaction: finished units get their results, claimed ones ((batch, seqs) per
        batch) go in flight under their batch."""
        now = time.time()
        # Results that say the same (a bulk batch: 1,000 units "upserted") and claims of one
        # batch go in one statement each: per-unit statements were most of bulk's CPU a unit.
        alike: dict[tuple[Any, ...], list[int]] = {}
        for r in results:
            alike.setdefault(r[1:], []).append(r.seq)
        finish = ("UPDATE units SET state = ?, outcome = ?, status = ?, code = ?, message = ?, "
                  "attempts = attempts + ?, sent_to = ?, finished_at = ? WHERE ")  # fmt: skip
        claim = "UPDATE units SET state = ?, claims = claims + 1, batch = ? WHERE "
        with self._transaction():
            for same, seqs in alike.items():
                self._db.execute(finish + _seqs(seqs), (*same, now, *_seq_args(seqs)))
            for batch, seqs in claims:
                self._db.execute(claim + _seqs(seqs), (IN_FLIGHT, batch, *_seq_args(seqs)))

    def last_batch(self) -> int:
        """The highest batch ID used so far in this run file (0 before any)."""
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(batch) FROM units), 0), "
            "coalesce((SELECT max(id) FROM batches), 0))"
        ).fetchone()
        return int(row[0])

    def batch_state(self, batch: int) -> Any:
        """What a delivery noted about ``batch`` (None: nothing yet)."""
        row = self._db.execute("SELECT state FROM batches WHERE id = ?", (batch,)).fetchone()
        return json.loads(row[0]) if row else None

    def batch_states(self) -> dict[int, Any]:
        """Every batch a delivery noted something about, by ID."""
        rows = self._db.execute("SELECT id, state FROM batches ORDER BY id")
        return {batch: json.loads(state) for batch, state in rows}

    def note_batch(self, batch: int, state: Any) -> None:
        """Keep ``state`` for ``batch``, durable before this returns (a kill -9 right after
        finds it)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?, ?)", (batch, json.dumps(state))
            )

    def counts(self) -> dict[str, int]:
        """Units per state, and per outcome of finished ones (``outcome:<name>``)."""
        return _counts(self._db)

    def failed_units(self) -> Iterator[tuple[Any, ...]]:
        """(key, profile_id, outcome, status, code, message, attempts, sent_to) of failures."""
        yield from self._db.execute(
            "SELECT key, profile_id, outcome, status, code, message, attempts, sent_to "
            "FROM units WHERE state = ? ORDER BY seq",
            (FAILED,),
        )

    def unfinished_targets(self) -> list[str]:
        """The targets (``<target>`` of ``<target>#<chunk>``) with a unit still to send: the
        rows behind them have not landed yet."""
        rows = self._db.execute(  # rtrim drops the chunk number; substr, its '#'
            "SELECT DISTINCT substr(t, 1, length(t) - 1) FROM "
            "(SELECT rtrim(key, '0123456789') AS t FROM units WHERE state IN (?, ?))",
            (PENDING, IN_FLIGHT),
        )
        return [target for (target,) in rows]

    def created(self) -> dict[str, str]:
        """The profile each ``new:...`` target's create made (``reconcile`` checks those; a
        plan resolves them as creates again while the run's cached lookups say not found)."""
        rows = self._db.execute(
            "SELECT key, sent_to FROM units WHERE outcome = 'created' AND sent_to IS NOT NULL "
            "ORDER BY seq"
        )
        return {key.rpartition("#")[0]: sent_to for key, sent_to in rows}

    def landed_remaps(self) -> dict[str, list[str | None]]:
        """Per canonical profile, the ``orders`` of units that a 308 sent there and that
        landed: what a later send to that profile must not overwrite with older rows."""
        found: dict[str, list[str | None]] = {}
        for sent_to, orders in self._db.execute(
            "SELECT sent_to, orders FROM units WHERE action = 'patch' AND sent_to IS NOT NULL "
            "AND state = ? ORDER BY seq",
            (DONE,),
        ):
            found.setdefault(sent_to, []).append(orders)
        return found

    def planned_orders(self, profile_id: str) -> list[str | None]:
        """The ``orders`` of the units planned for ``profile_id`` itself (its chunks), read by
        the unique key index (``<profile>#<chunk>``)."""
        rows = self._db.execute(
            "SELECT orders FROM units WHERE key > ? AND key < ? AND profile_id = ?",
            (profile_id + "#", profile_id + "$", profile_id),
        )
        return [orders for (orders,) in rows]

    def landed_targets(self) -> list[str]:
        """The targets (profile IDs, and ``new:...`` people the store resolves) whose every unit
        landed: what a read-back can prove."""
        rows = self._db.execute(  # rtrim drops the chunk number; substr, its '#'
            "SELECT substr(t, 1, length(t) - 1) FROM (SELECT rtrim(key, '0123456789') AS t, "
            "state = ? AND outcome IN (SELECT value FROM json_each(?)) AS ok "
            "FROM units) GROUP BY t HAVING min(ok) = 1 ORDER BY t",
            (DONE, json.dumps(LANDED)),
        )
        return [target for (target,) in rows]

    def fail_targets(self, outcome: str, messages: dict[str, str]) -> int:
        """Every unit of each target in ``messages`` becomes FAILED with ``outcome`` and its
        message (a read-back found the profile does not hold what was sent)."""
        count = 0
        with self._transaction():
            for target, message in messages.items():
                cursor = self._db.execute(
                    "UPDATE units SET state = ?, outcome = ?, message = ?, status = NULL, "
                    "code = NULL WHERE key > ? AND key < ? "
                    # only <target>#<chunk>: a target may itself hold '#' (cust#42)
                    "AND rtrim(substr(key, ?), '0123456789') = ''",
                    (FAILED, outcome, message, target + "#", target + "$", len(target) + 2),
                )
                count += cursor.rowcount
        return count

    def remaps(self) -> int:
        return int(
            self._db.execute(
                "SELECT count(*) FROM units WHERE action = 'patch' AND sent_to IS NOT NULL"
            ).fetchone()[0]
        )

    def requeue_failed(self, outcomes: Iterable[str]) -> int:
        """``backfill retry``: failed units with these outcomes go back to pending."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE units SET state = ?, outcome = NULL, status = NULL, code = NULL, "
                "message = NULL, finished_at = NULL, batch = NULL "
                "WHERE state = ? AND outcome IN (SELECT value FROM json_each(?))",
                (PENDING, FAILED, json.dumps(list(outcomes))),
            )
        return cursor.rowcount

    def skip_unchanged(self, state: Path, store_id: str, scheme: str) -> int:
        """Incremental runs: pending units whose body already landed (same key, same hash, same
        hash scheme) are finished as ``skipped_unchanged`` without being sent."""
        with self._attached(state, scheme), self._transaction():
            cursor = self._db.execute(
                "UPDATE units SET state = ?, outcome = ?, finished_at = ? "
                "WHERE state = ? AND EXISTS (SELECT 1 FROM inc.landed AS l "
                "WHERE l.store_id = ? AND l.key = units.key AND l.hash = units.hash)",
                (DONE, SKIPPED_UNCHANGED, time.time(), PENDING, store_id),
            )
        return cursor.rowcount

    def remember_landed(self, state: Path, store_id: str, scheme: str) -> int:
        """Copy this run's outcomes into the incremental state: units that landed are
        remembered with their hash; units that failed are forgotten (what Memory holds for them
        is no longer known, so the next run sends them whatever their hash)."""
        with self._attached(state, scheme), self._transaction():
            landed = self._db.execute(
                "INSERT INTO inc.landed (store_id, key, hash, landed_at) "
                "SELECT ?, key, hash, finished_at FROM units "
                "WHERE outcome IN (SELECT value FROM json_each(?)) "
                "ON CONFLICT (store_id, key) DO UPDATE "
                "SET hash = excluded.hash, landed_at = excluded.landed_at",
                (store_id, json.dumps(LANDED)),
            ).rowcount
            self._db.execute(
                "DELETE FROM inc.landed WHERE store_id = ? AND key IN "
                "(SELECT key FROM units WHERE state = ?)",
                (store_id, FAILED),
            )
        return landed

    def forget_landed(self, state: Path, store_id: str, scheme: str) -> None:
        """The store was reset (``--restart`` on the embedded emulator): nothing has landed."""
        with self._attached(state, scheme), self._transaction():
            self._db.execute("DELETE FROM inc.landed WHERE store_id = ?", (store_id,))

    @contextmanager
    def _attached(self, state: Path, scheme: str) -> Iterator[None]:
        """Attach the incremental state file as ``inc``. Hashes made under another scheme
        (another polars version) cannot be compared, so they are dropped: a resend, never a
        wrong skip."""
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
            private_file(state)
            self._db.execute("ATTACH DATABASE ? AS inc", (str(state),))
        except (OSError, sqlite3.Error, StorageError) as exc:
            raise StorageError(f"cannot open the incremental state {state}: {exc}") from exc
        try:
            self._db.execute("PRAGMA inc.journal_mode=WAL")
            self._db.execute("PRAGMA inc.synchronous=FULL")
            self._db.executescript(STATE_SCHEMA)
            row = self._db.execute(
                "SELECT value FROM inc.meta WHERE key = 'hash_scheme'"
            ).fetchone()
            if row is None or json.loads(row[0]) != scheme:
                with self._transaction():
                    self._db.execute("DELETE FROM inc.landed")
                    self._db.execute(
                        "INSERT OR REPLACE INTO inc.meta VALUES ('hash_scheme', ?)",
                        (json.dumps(scheme),),
                    )
            yield
        except (sqlite3.Error, StorageError) as exc:
            raise StorageError(f"cannot use the incremental state {state}: {exc}") from exc
        finally:
            self._db.execute("DETACH DATABASE inc")

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


def _seqs(seqs: list[int]) -> str:
    """The WHERE clause for units ``seqs``: one seq bound as is, several as a JSON list."""
    return "seq = ?" if len(seqs) == 1 else "seq IN (SELECT value FROM json_each(?))"


def _seq_args(seqs: list[int]) -> tuple[Any, ...]:
    return (seqs[0],) if len(seqs) == 1 else (json.dumps(seqs),)


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    counts: dict[str, int] = {PENDING: 0, IN_FLIGHT: 0, DONE: 0, FAILED: 0}
    for state, n in db.execute("SELECT state, count(*) FROM units GROUP BY state"):
        counts[state] = n
    for outcome, n in db.execute(
        "SELECT outcome, count(*) FROM units WHERE outcome IS NOT NULL GROUP BY outcome"
    ):
        counts[f"outcome:{outcome}"] = n
    counts["resent"] = db.execute("SELECT count(*) FROM units WHERE claims > 1").fetchone()[0]
    return counts


@dataclass(frozen=True)
class Progress:
    """What ``backfill status`` reads from a run file, without writing to it."""

    counts: dict[str, int]
    meta: dict[str, Any]
    first_finished: float | None  # epoch seconds; units that were sent (not skipped) only
    last_finished: float | None
    recent: int  # units sent and finished in the minute before last_finished


def read_progress(path: Path) -> Progress:
    """Read a run file that a ``backfill run`` may be writing right now: a read-only
    connection (``mode=ro``) takes no write lock and never creates or changes anything."""
    if not path.is_file():
        raise BackfillError(f"no run file at {path}")
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("BEGIN")  # one read transaction: every figure from the same moment
            counts = _counts(db)
            meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            # Sending only: skipped units all finish at the plan's end, and would read as a
            # burst of thousands a second.
            first, last = db.execute(
                "SELECT min(finished_at), max(finished_at) FROM units WHERE outcome IS NOT ?",
                (SKIPPED_UNCHANGED,),
            ).fetchone()
            recent = 0
            if last is not None:
                recent = db.execute(
                    "SELECT count(*) FROM units WHERE finished_at > ? AND outcome IS NOT ?",
                    (last - 60.0, SKIPPED_UNCHANGED),
                ).fetchone()[0]
            db.execute("ROLLBACK")
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read the run file {path}: {exc}") from exc
    return Progress(counts, meta, first, last, recent)


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
