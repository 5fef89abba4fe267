"""The emulator's state outside memory: a seed document in, an optional SQLite file across restarts.

The seed is one JSON document written in the API's own shapes, so a person can write it by hand::

    {"stores": [{"id": "mem_store_...", "displayName": "sample", "description": "...",
                 "identityResolutionSettings": {"identifierConfigs": [...], "matchingRules": [...]},
                 "traitGroups": [{"displayName": "Loyalty", "traits": {"points": {...}}}],
                 "profiles": [{"id": "mem_profile_...", "traits": {"Contact": {...}},
                               "identifiers": [{"idType": "email", "values": ["a@x.io"]}],
                               "mergedInto": "mem_profile_..."}]}]}

Profiles with an ``id`` are placed as written (identifiers from ``identifiers``, else promoted
from their traits), which is how a seed holds what the live API would refuse to build: an
identifier shared by two profiles, or a profile already merged into another. Profiles without an
``id`` go through identity resolution like ``POST /Profiles``.
"""

from __future__ import annotations

import bisect
import json
import sqlite3  # noqa: TID251 - this module is the emulator's one door to SQLite
from pathlib import Path
from typing import Any

from backfill.emulator import schema
from backfill.emulator.apierror import ApiError
from backfill.emulator.ids import PROFILE_ID, STORE_ID
from backfill.emulator.imports import ImportJob
from backfill.emulator.segment import Space
from backfill.emulator.state import Account, Operation, Profile, Store, TraitGroup
from backfill.errors import ConfigError, EmulatorError
from backfill.files import private_file


def load_seed(account: Account, path: Path) -> dict[str, Any]:
    """Load a seed document into ``account``; a ConfigError names the file and the place.

    Returns the document, whose optional ``segment`` object the caller seeds the Segment space
    from (see ``segment.seed_space``); a document with ``segment`` may leave out ``stores``.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"seed file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"seed file {path} is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and "segment" in doc and "stores" not in doc:
        return doc
    if not isinstance(doc, dict) or not isinstance(doc.get("stores"), list):
        raise ConfigError(f"seed file {path}: expected an object with a 'stores' list")
    clock, lag = account.clock, account.write_lag
    account.clock = lambda: clock() - lag  # seeded data is already visible when serving starts
    try:
        for i, raw in enumerate(doc["stores"]):
            try:
                _seed_store(account, raw)
            except ApiError as exc:
                raise ConfigError(f"seed file {path}: stores[{i}]: {exc.message}") from None
    finally:
        account.clock = clock
    account.dirty.update(("store", s) for s in account.stores)
    return doc


def _seed_store(account: Account, raw: Any) -> None:
    keys = {"id", "displayName", "description", "identityResolutionSettings", "traitGroups",
            "profiles"}  # fmt: skip
    data = schema.obj(raw, "store", keys, ("displayName",))
    store = account.create_store({k: data[k] for k in ("displayName", "description") if k in data})
    if "id" in data:
        if not isinstance(data["id"], str) or not STORE_ID.match(data["id"]):
            raise ApiError(400, f"store id {data['id']!r} does not match {STORE_ID.pattern}")
        del account.stores[store.id]
        account.dirty.discard(("store", store.id))
        store.id = data["id"]
        account.stores[store.id] = store
    if "identityResolutionSettings" in data:
        account.put_identity(store, data["identityResolutionSettings"])
        store.identity_version = 1
    for j, group in enumerate(data.get("traitGroups", [])):
        where = f"traitGroups[{j}]"
        name = group.get("displayName") if isinstance(group, dict) else None
        if name in store.groups:
            del store.groups[name]  # a seed may redefine the out-of-the-box Contact group
        try:
            account.create_group(store, group)
        except ApiError as exc:
            raise ApiError(400, f"{where}: {exc.message}") from None
    merges: list[tuple[Profile, str]] = []
    for j, item in enumerate(data.get("profiles", [])):
        try:
            merged_into = _seed_profile(account, store, item)
        except ApiError as exc:
            raise ApiError(400, f"profiles[{j}]: {exc.message}") from None
        if merged_into is not None:
            merges.append(merged_into)
    for profile, target in merges:
        if target not in store.profiles:
            raise ApiError(400, f"profile {profile.id} is mergedInto unknown profile {target}")
        # As a live merge does: the identifiers move to the canonical profile, the traits stay
        # behind (the seed says what the canonical profile holds), and the old ID redirects.
        canonical = store.profiles[target]
        moved = profile.identifiers
        for id_type, values in moved.items():
            for value in values:
                account._unindex(store, id_type, value, profile.id)
        profile.identifiers = {}
        profile.merged_into = target
        for id_type, values in moved.items():
            for value in values:
                account._attach(store, canonical, id_type, value, canonical.created_at)
        i = bisect.bisect_left(store.live_ids, profile.id)
        if i < len(store.live_ids) and store.live_ids[i] == profile.id:
            del store.live_ids[i]


def _seed_profile(account: Account, store: Store, raw: Any) -> tuple[Profile, str] | None:
    data = schema.obj(raw, "profile", {"id", "traits", "identifiers", "mergedInto", "createdAt"})
    if "id" not in data:
        account.create_profile(store, {"traits": data.get("traits", {})})
        return None
    profile_id = data["id"]
    if not isinstance(profile_id, str) or not PROFILE_ID.match(profile_id):
        raise ApiError(400, f"profile id {profile_id!r} does not match {PROFILE_ID.pattern}")
    if profile_id in store.profiles:
        raise ApiError(400, f"profile id {profile_id} appears twice")
    traits, promoted = account.check_traits(store, data.get("traits", {}))
    now = account.clock()
    profile = Profile(profile_id, now)
    store.profiles[profile_id] = profile
    bisect.insort(store.live_ids, profile_id)
    account.dirty.add(("profile", store.id, profile_id))
    profile.traits = {
        g: {k: (v, now) for k, v in t.items() if v is not None} for g, t in traits.items()
    }
    explicit = data.get("identifiers")
    if explicit is not None:
        promoted = []
        for k, entry in enumerate(explicit):
            item = schema.obj(
                entry, f"identifiers[{k}]", {"idType", "values"}, ("idType", "values")
            )
            for value in item["values"]:
                id_type, normalized = account.identifier_body(
                    store, {"idType": item["idType"], "value": value}
                )
                promoted.append((id_type, normalized))
    for id_type, value in promoted:
        account._attach(store, profile, id_type, value, now)
    target = data.get("mergedInto")
    return (profile, target) if isinstance(target, str) else None


# ------------------------------------------------------------------------ SQLite persistence


def _store_doc(store: Store) -> dict[str, Any]:
    return {
        "id": store.id,
        "displayName": store.display_name,
        "description": store.description,
        "createdAt": store.created_at,
        "version": store.version,
        "identity": store.identity_json(),
        "traitGroups": [g.to_json() for g in store.groups.values()],
    }


def _profile_doc(profile: Profile) -> dict[str, Any]:
    return {
        "createdAt": profile.created_at,
        "traits": {g: {k: [v, at] for k, (v, at) in t.items()} for g, t in profile.traits.items()},
        "identifiers": profile.identifiers,
        "mergedInto": profile.merged_into,
        "deleted": profile.deleted,
    }


_SEG_SPACE = "INSERT OR REPLACE INTO segment_space VALUES (1, ?)"
_SEG_PROFILE = "INSERT OR REPLACE INTO segment_profiles VALUES (?, ?)"
_SEG_GONE = "DELETE FROM segment_profiles WHERE segment_id = ?"
_SEG_SEEN = "INSERT OR REPLACE INTO segment_messages VALUES (?, ?)"
_SEG_EXPIRE = "DELETE FROM segment_messages WHERE at < ?"
Row = tuple[str, tuple[str | float, ...]]
_STORE = "INSERT OR REPLACE INTO stores VALUES (?, ?)"
_PROFILE = "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)"
_IMPORT = "INSERT OR REPLACE INTO imports VALUES (?, ?)"
_OPERATION = "INSERT OR REPLACE INTO operations VALUES (?, ?)"


class SqliteStorage:
    """Write-through persistence: after each request, the rows it dirtied; WAL, one commit."""

    def __init__(self, path: Path) -> None:
        try:
            private_file(path)  # it holds customer data
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS stores (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS profiles (
                    store_id TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
                    PRIMARY KEY (store_id, id));
                CREATE TABLE IF NOT EXISTS operations (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS imports (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS segment_space (
                    id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS segment_profiles (
                    segment_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS segment_messages (
                    message_id TEXT PRIMARY KEY, at REAL NOT NULL);
                """
            )
        except (OSError, sqlite3.Error) as exc:
            raise EmulatorError(f"cannot open emulator state file {path}: {exc}") from exc
        self.path = path

    def is_empty(self) -> bool:
        """Nothing kept: no store, no Segment profile, no remembered messageId."""
        for table in ("stores", "segment_profiles", "segment_messages"):
            count: int = self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed names
            if count:
                return False
        return True

    def load_segment(self, lag: float) -> Space | None:
        """The Segment space the file keeps, or None when it keeps none."""
        row = self._db.execute("SELECT doc FROM segment_space WHERE id = 1").fetchone()
        if row is None:
            return None
        db = self._db
        profiles = (json.loads(d) for (d,) in db.execute("SELECT doc FROM segment_profiles"))
        seen = ((m, at) for m, at in db.execute("SELECT message_id, at FROM segment_messages"))
        return Space.from_docs(json.loads(row[0]), profiles, seen, lag)

    def segment_rows(self, space: Space) -> list[Row]:
        """What the Segment space changed, as rows; taken in the event loop like ``rows``."""
        doc, written, removed, seen, expired = space.take_rows()
        rows: list[Row] = []
        if doc is not None:
            rows.append((_SEG_SPACE, (json.dumps(doc),)))
        rows += [(_SEG_PROFILE, (p.segment_id, json.dumps(p.to_doc()))) for p in written]
        rows += [(_SEG_GONE, (sid,)) for sid in removed]
        if expired is not None:
            rows.append((_SEG_EXPIRE, (expired,)))
        rows += [(_SEG_SEEN, (mid, at)) for mid, at in seen]
        return rows

    def load(self, account: Account) -> None:
        for (doc,) in self._db.execute("SELECT doc FROM stores"):
            d = json.loads(doc)
            store = Store(d["id"], d["displayName"], d["description"], d["createdAt"], d["version"])
            configs, rules = schema.identity_settings(
                {k: d["identity"][k] for k in ("identifierConfigs", "matchingRules")}
            )
            store.configs = {c.id_type: c for c in configs}
            store.rules = rules
            store.identity_version = d["identity"]["version"]
            for g in d["traitGroups"]:
                defs = schema.trait_definitions(g.get("traits", {}), allow_delete=False)
                store.groups[g["displayName"]] = TraitGroup(
                    g["displayName"],
                    g.get("description"),
                    {k: v for k, v in defs.items() if v is not None},
                    g["version"],
                )
            account.stores[store.id] = store
        for store_id, profile_id, doc in self._db.execute(
            "SELECT store_id, id, doc FROM profiles ORDER BY store_id, id"
        ):
            d = json.loads(doc)
            store = account.stores[store_id]
            profile = Profile(profile_id, d["createdAt"])
            profile.traits = {
                g: {k: (v, at) for k, (v, at) in t.items()} for g, t in d["traits"].items()
            }
            profile.identifiers = d["identifiers"]
            profile.merged_into = d["mergedInto"]
            profile.deleted = d["deleted"]
            store.profiles[profile_id] = profile
            if profile.merged_into is None and not profile.deleted:
                store.live_ids.append(profile_id)  # rows come sorted by id
            for id_type, values in profile.identifiers.items():
                for value in values:
                    store.index.setdefault((id_type, value), {})[profile_id] = profile.created_at
        for (doc,) in self._db.execute("SELECT doc FROM operations"):
            d = json.loads(doc)
            account.operations[d["id"]] = Operation(d["id"], d["createdAt"], d["resourceId"])
        for (doc,) in self._db.execute("SELECT doc FROM imports"):
            job = ImportJob.from_doc(json.loads(doc))
            account.imports[job.id] = job
        account.dirty.clear()

    def flush(self, account: Account, space: Space | None = None) -> None:
        self.write(self.rows(account) + (self.segment_rows(space) if space is not None else []))

    def rows(self, account: Account) -> list[Row]:
        """What the last requests dirtied, as (statement, parameters), and clean again: taken
        in the event loop, where the state is changed, so ``write`` can run in a thread."""
        if not account.dirty:
            return []
        dirty, account.dirty = account.dirty, set()
        rows: list[Row] = []
        for key in dirty:
            if key[0] == "store":
                store = account.stores.get(key[1])
                if store is not None:
                    rows.append((_STORE, (store.id, json.dumps(_store_doc(store)))))
            elif key[0] == "profile":
                profile = account.stores[key[1]].profiles[key[2]]
                rows.append((_PROFILE, (key[1], key[2], json.dumps(_profile_doc(profile)))))
            elif key[0] == "import":
                job = account.imports[key[1]]
                rows.append((_IMPORT, (job.id, json.dumps(job.to_doc()))))
            else:
                op = account.operations[key[1]]
                doc = {"id": op.id, "createdAt": op.created_at, "resourceId": op.resource_id}
                rows.append((_OPERATION, (op.id, json.dumps(doc))))
        return rows

    def write(self, rows: list[Row]) -> None:
        """One transaction. Safe in a worker thread (the connection allows it); callers keep
        writes in the order their ``rows`` were taken."""
        if not rows:
            return
        try:
            self._db.execute("BEGIN")
            for statement, params in rows:
                self._db.execute(statement, params)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise EmulatorError(f"cannot write emulator state file {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()
