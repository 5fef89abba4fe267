"""The emulated account: stores, identity settings, trait groups, profiles and their identifiers.

Plain synchronous Python, no HTTP: ``app.py`` translates requests into these calls and
``ApiError`` into responses. Every mutation records what it touched in ``dirty`` so the optional
SQLite storage can write exactly that after the request.
"""

from __future__ import annotations

import base64
import bisect
import gc
import json
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backfill.emulator import schema
from backfill.emulator.apierror import ApiError, bad_request, not_found
from backfill.emulator.ids import PROFILE_ID, STORE_ID, IdMinter
from backfill.emulator.schema import IdentifierConfig, TraitDef
from backfill.errors import InvalidIdentifierError
from backfill.plan.normalize import normalize

if TYPE_CHECKING:
    from backfill.emulator.imports import ImportJob

Traits = dict[str, dict[str, tuple[Any, float]]]  # group -> trait -> (value, written at)
DirtyKey = tuple[str, ...]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


BULK_STEP = 100  # profiles of a bulk request validated or applied between yields


class Redirect(ApiError):
    """A merged-away profile: 308 for writes, 301 for reads; the app fills in ``Location``."""

    def __init__(self, status: int, old_id: str, canonical_id: str) -> None:
        super().__init__(status, "This resource has moved.", code=status)
        self.old_id = old_id
        self.canonical_id = canonical_id


@dataclass
class TraitGroup:
    name: str
    description: str | None
    traits: dict[str, TraitDef]
    version: int = 1

    def to_json(self, include_traits: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"displayName": self.name}
        if self.description is not None:
            out["description"] = self.description
        if include_traits:
            out["traits"] = {k: d.to_json() for k, d in self.traits.items()}
        out["version"] = self.version
        return out


@dataclass
class Profile:
    id: str
    created_at: float
    traits: Traits = field(default_factory=dict)  # replaced, never mutated: history keeps refs
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    merged_into: str | None = None
    deleted: bool = False
    history: list[tuple[float, Traits]] = field(default_factory=list)  # only under write lag


@dataclass
class Operation:
    id: str
    created_at: float
    resource_id: str

    def to_json(self, status_url: str) -> dict[str, Any]:
        return {
            "operationId": self.id,
            "status": "COMPLETED",
            "createdAt": iso(self.created_at),
            "completedAt": iso(self.created_at),
            "statusUrl": status_url,
            "result": {"type": "RESOURCE_ID", "id": self.resource_id},
        }


DEFAULT_CONTACT_TRAITS: dict[str, TraitDef] = {
    "firstName": TraitDef("STRING"),
    "lastName": TraitDef("STRING"),
    "email": TraitDef("STRING", id_type_promotion="email"),
    "phone": TraitDef("STRING", id_type_promotion="phone"),
    "street": TraitDef("STRING"),
    "city": TraitDef("STRING"),
    "state": TraitDef("STRING"),
    "postalCode": TraitDef("STRING"),
    "country": TraitDef("STRING"),
    "preferredLanguage": TraitDef("STRING"),
}


@dataclass
class Store:
    id: str
    display_name: str
    description: str | None
    created_at: float
    version: int = 1
    configs: dict[str, IdentifierConfig] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)
    identity_version: int = 1
    groups: dict[str, TraitGroup] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    live_ids: list[str] = field(default_factory=list)  # sorted IDs of canonical, undeleted
    index: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    @classmethod
    def new(cls, store_id: str, display_name: str, description: str | None, now: float) -> Store:
        """A store as the service provisions one: email/phone identity and a Contact group."""
        store = cls(store_id, display_name, description, now)
        store.configs = {
            "email": IdentifierConfig("email", normalization="email"),
            "phone": IdentifierConfig("phone", normalization="phone"),
        }
        store.rules = ["email", "phone"]
        store.groups["Contact"] = TraitGroup("Contact", "Out-of-the-box contact traits.",
                                             dict(DEFAULT_CONTACT_TRAITS))  # fmt: skip
        return store

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "displayName": self.display_name}
        if self.description is not None:
            out["description"] = self.description
        out.update(status="ACTIVE", intelligenceServiceId=None, version=self.version)
        return out

    def identity_json(self) -> dict[str, Any]:
        return {
            "identifierConfigs": [c.to_json() for c in self.configs.values()],
            "matchingRules": list(self.rules),
            "version": self.identity_version,
        }

    def config(self, id_type: str) -> IdentifierConfig:
        return self.configs.get(id_type) or IdentifierConfig(id_type)


def etag(kind: str, ident: str, version: int) -> str:
    """Opaque, quoted: base64url of {"id", "v"} as in the API description's example."""
    raw = json.dumps({"id": f"{kind}:{ident}", "v": version}, separators=(",", ":"))
    return '"' + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=") + '"'


def check_if_match(header: str | None, current: str) -> None:
    if header is None or header.strip() == "*":
        return
    wanted = {t.strip().removeprefix("W/") for t in header.split(",")}
    bare = current.strip('"')
    if current not in wanted and bare not in wanted:
        raise ApiError(412, "The resource has changed since it was fetched (If-Match failed).")


def _token(key: str, value: object) -> str:
    """An opaque page token: base64url of a one-key JSON object."""
    return base64.urlsafe_b64encode(json.dumps({key: value}).encode()).decode().rstrip("=")


def _token_value(token: str, key: str) -> object:
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(base64.urlsafe_b64decode(padded))[key]
    except (ValueError, KeyError, TypeError):
        raise bad_request("pageToken is not a token this API issued.") from None


def page_offset(token: str | None) -> int:
    if not token:
        return 0
    offset = _token_value(token, "o")
    if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
        return offset
    raise bad_request("pageToken is not a token this API issued.")


def paginate(
    items: list[Any], key: str, page_size: int, token: str | None, max_items: int
) -> dict[str, Any]:
    """One page of ``items`` with the API's ``meta`` block (nextToken only while more remain)."""
    start = page_offset(token)
    size = min(page_size, max_items)
    chunk = items[start : start + size]
    meta: dict[str, Any] = {"key": key, "pageSize": len(chunk)}
    if start + size < len(items):
        meta["nextToken"] = _token("o", start + size)
    if start > 0:
        meta["previousToken"] = _token("o", max(0, start - size))
    return {key: chunk, "meta": meta}


class Account:
    """Everything one account holds. Not thread-safe: the app serves it from one event loop."""

    def __init__(
        self,
        minter: IdMinter | None = None,
        write_lag: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.minter = minter or IdMinter()
        self.write_lag = write_lag
        self.clock = clock
        self.stores: dict[str, Store] = {}
        self.operations: dict[str, Operation] = {}
        self.imports: dict[str, ImportJob] = {}  # CSV imports, all stores (see imports.py)
        self.dirty: set[DirtyKey] = set()

    # ----------------------------------------------------------------- stores and operations

    def store(self, store_id: str) -> Store:
        if not STORE_ID.match(store_id):
            raise bad_request(f"Invalid store ID {store_id!r}.")
        store = self.stores.get(store_id)
        if store is None:
            raise not_found(f"Store {store_id} not found.")
        return store

    def operation(self, resource_id: str) -> Operation:
        op_id = self.minter.mint("mem_operation")
        op = Operation(op_id, self.clock(), resource_id)
        self.operations[op_id] = op
        self.dirty.add(("op", op_id))
        return op

    def create_store(self, body: Any) -> Store:
        data = schema.obj(body, "request body", {"displayName", "description"}, ("displayName",))
        display = schema.string(data["displayName"], "displayName", max_len=64, min_len=1)
        if not schema.STORE_NAME.match(display):
            raise bad_request(f"displayName {display!r} must match {schema.STORE_NAME.pattern}.")
        if any(s.display_name == display for s in self.stores.values()):
            raise ApiError(409, f"A store named {display!r} already exists.")
        description = data.get("description")
        if description is not None:
            schema.string(description, "description", max_len=128, min_len=1)
        store = Store.new(self.minter.mint("mem_store"), display, description, self.clock())
        self.stores[store.id] = store
        self.dirty.add(("store", store.id))
        return store

    def patch_store(self, store: Store, body: Any) -> None:
        data = schema.obj(body, "request body", {"displayName", "description"})
        if "displayName" in data:
            display = schema.string(data["displayName"], "displayName", max_len=64, min_len=1)
            if not schema.STORE_NAME.match(display):
                raise bad_request(f"displayName must match {schema.STORE_NAME.pattern}.")
            store.display_name = display
        if "description" in data:
            store.description = schema.string(
                data["description"], "description", max_len=128, min_len=1
            )
        store.version += 1
        self.dirty.add(("store", store.id))

    def put_identity(self, store: Store, body: Any) -> None:
        configs, rules = schema.identity_settings(body)
        store.configs = {c.id_type: c for c in configs}
        store.rules = rules
        store.identity_version += 1
        self.dirty.add(("store", store.id))

    # ----------------------------------------------------------------------- trait groups

    def group(self, store: Store, name: str) -> TraitGroup:
        group = store.groups.get(name)
        if group is None:
            raise not_found(f"Trait group {name!r} not found in store {store.id}.")
        return group

    def create_group(self, store: Store, body: Any) -> TraitGroup:
        data = schema.obj(body, "request body", {"displayName", "description", "traits"},
                          ("displayName",))  # fmt: skip
        name = schema.name(data["displayName"], "displayName", schema.GROUP_NAME, "group name")
        if name in store.groups:
            raise ApiError(409, f"Trait group {name!r} already exists.")
        if len(store.groups) >= schema.MAX_GROUPS_PER_STORE:
            raise bad_request(f"A store holds at most {schema.MAX_GROUPS_PER_STORE} trait groups.")
        description = data.get("description")
        if description is not None:
            schema.string(description, "description", max_len=1024)
        defs = schema.trait_definitions(data.get("traits", {}), allow_delete=False)
        group = TraitGroup(name, description, {k: d for k, d in defs.items() if d is not None})
        store.groups[name] = group
        self.dirty.add(("store", store.id))
        return group

    def patch_group(self, store: Store, group: TraitGroup, body: Any) -> None:
        data = schema.obj(body, "request body", {"description", "traits"})
        if "description" in data:
            group.description = schema.string(data["description"], "description", max_len=1024)
        changes = schema.trait_definitions(data.get("traits", {}), allow_delete=True)
        traits = dict(group.traits)
        removed = []
        for trait, definition in changes.items():
            if definition is None:
                if traits.pop(trait, None) is not None:
                    removed.append(trait)
            else:
                traits[trait] = definition
        if len(traits) > schema.MAX_TRAITS_PER_GROUP:
            raise bad_request(f"A trait group holds at most {schema.MAX_TRAITS_PER_GROUP} traits.")
        group.traits = traits
        group.version += 1
        self.dirty.add(("store", store.id))
        if removed:
            self._drop_traits(store, group.name, set(removed))

    def delete_group(self, store: Store, group: TraitGroup) -> None:
        if group.name == "Contact":
            raise ApiError(409, "The out-of-the-box Contact trait group cannot be deleted.")
        del store.groups[group.name]
        self.dirty.add(("store", store.id))
        self._drop_traits(store, group.name, None)

    def _drop_traits(self, store: Store, group: str, traits: set[str] | None) -> None:
        """Remove a deleted group's (or deleted traits') values from every profile."""
        now = self.clock()
        for profile in store.profiles.values():
            if group in profile.traits:
                kept = {} if traits is None else {
                    k: v for k, v in profile.traits[group].items() if k not in traits
                }  # fmt: skip
                self._set_traits(store, profile, {**profile.traits, group: kept}, now)

    # --------------------------------------------------------------------------- profiles

    def profile(self, store: Store, profile_id: str, *, write: bool) -> Profile:
        """The live profile ``profile_id``; a merged-away one redirects (308 write, 301 read)."""
        if not PROFILE_ID.match(profile_id):
            raise bad_request(f"Invalid profile ID {profile_id!r}.")
        profile = store.profiles.get(profile_id)
        if profile is None or profile.deleted:
            raise not_found(f"Profile {profile_id} not found.")
        if profile.merged_into is None:
            return profile
        canonical = profile
        while canonical.merged_into is not None:
            canonical = store.profiles[canonical.merged_into]
        if canonical.deleted:
            raise not_found(f"Profile {profile_id} not found.")
        raise Redirect(308 if write else 301, profile_id, canonical.id)

    def visible(self, profile: Profile) -> Traits | None:
        """The traits a read sees now: writes show only after ``write_lag`` seconds."""
        if not self.write_lag:
            return profile.traits
        horizon = self.clock() - self.write_lag
        if profile.created_at > horizon:
            return None
        if not profile.history:
            return profile.traits
        seen: Traits = {}
        for at, snapshot in profile.history:
            if at > horizon:
                break
            seen = snapshot
        return seen

    def check_traits(
        self, store: Store, raw: Any
    ) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
        """Validate a TraitGroups payload; return it and the identifiers its traits promote."""
        if not isinstance(raw, dict):
            raise bad_request("traits must be a JSON object keyed by trait group.")
        if len(raw) > schema.MAX_GROUPS_PER_REQUEST:
            raise bad_request(
                f"At most {schema.MAX_GROUPS_PER_REQUEST} trait groups per request, got {len(raw)}."
            )
        promoted: list[tuple[str, str]] = []
        for group_name, values in raw.items():
            group = store.groups.get(group_name)
            if group is None:
                raise bad_request(f"Unknown trait group {group_name!r}.")
            if not isinstance(values, dict):
                raise bad_request(f"{group_name} must be a JSON object keyed by trait name.")
            if len(values) > schema.MAX_TRAITS_PER_GROUP_IN_REQUEST:
                raise bad_request(
                    f"At most {schema.MAX_TRAITS_PER_GROUP_IN_REQUEST} traits per group in a "
                    f"request; {group_name} has {len(values)}."
                )
            for trait, value in values.items():
                definition = group.traits.get(trait)
                if definition is None:
                    raise bad_request(f"Unknown trait {trait!r} in trait group {group_name!r}.")
                if value is None:
                    continue
                schema.trait_value(group_name, trait, definition, value)
                if definition.id_type_promotion is not None:
                    id_type = definition.id_type_promotion
                    where = f"{group_name}.{trait}"
                    for item in value if isinstance(value, list) else [value]:
                        normalized = self._normalized(store, id_type, str(item), where)
                        promoted.append((id_type, normalized))
        return raw, promoted

    def _normalized(self, store: Store, id_type: str, value: str, where: str) -> str:
        config = store.config(id_type)
        try:
            return normalize(value, config.normalization)
        except InvalidIdentifierError as exc:
            code = 21614 if config.normalization == "phone" else 400
            raise ApiError(400, f"{where}: {exc}", code=code) from None

    def create_profile(self, store: Store, body: Any) -> str:
        data = schema.obj(body, "request body", {"traits"})
        traits, promoted = self.check_traits(store, data.get("traits", {}))
        if not promoted:
            raise bad_request(
                "A profile needs at least one trait promoted to an identifier (idTypePromotion)."
            )
        return self._upsert(store, traits, promoted)

    def bulk_upsert(self, store: Store, body: Any) -> int:
        """The whole of ``bulk_steps`` at once (tests, in-process callers)."""
        steps = self.bulk_steps(store, body)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return int(done.value)

    def bulk_steps(self, store: Store, body: Any) -> Generator[None, None, int]:
        """Validate every profile, then apply them, pausing every ``BULK_STEP`` profiles: the
        server yields to its event loop there, so a 1,000-profile batch does not hold back the
        requests arriving meanwhile (its rate limiter would judge them late, bunched). Returns
        how many profiles were applied."""
        data = schema.obj(body, "request body", {"profiles"}, ("profiles",))
        items = data["profiles"]
        if not isinstance(items, list) or not 1 <= len(items) <= schema.MAX_BULK:
            raise bad_request(f"profiles must be a list of 1 to {schema.MAX_BULK} profiles.")
        checked = []
        for i, item in enumerate(items):
            # The whole batch fails on one bad profile, so the message must say which one:
            # "profiles[i]: ..." for every refusal, keeping its code (21614 for a bad phone).
            try:
                profile = schema.obj(item, "the profile", {"traits"})
                traits, promoted = self.check_traits(store, profile.get("traits", {}))
                if not promoted:
                    raise bad_request("no trait is promoted to an identifier (idTypePromotion).")
            except ApiError as exc:
                raise ApiError(exc.status, f"profiles[{i}]: {exc.message}", code=exc.code) from None
            checked.append((traits, promoted))
            if i % BULK_STEP == BULK_STEP - 1:
                yield
        for i, (traits, promoted) in enumerate(checked):
            self._upsert(store, traits, promoted)
            if i % BULK_STEP == BULK_STEP - 1:
                yield
        # The profiles just stored live as long as the store: out of the collector's sight, or
        # its full passes over a growing heap stall the event loop for 100 ms and more, and
        # the rate limiter judges the requests that queued meanwhile late and bunched (at 10
        # bulk requests/s and burst 1, 15-20 % of an even pace was refused; 0 % without).
        gc.freeze()
        return len(checked)

    def _upsert(
        self, store: Store, traits: dict[str, dict[str, Any]], promoted: list[tuple[str, str]]
    ) -> str:
        """Identity resolution: matching rules in priority order; none creates, several merge."""
        target: Profile | None = None
        for rule in store.rules:
            found: dict[str, None] = {}
            for id_type, value in promoted:
                if id_type == rule:
                    found.update(dict.fromkeys(store.index.get((id_type, value), ())))
            if not found:
                continue
            candidates = sorted((store.profiles[p] for p in found), key=_age)
            if len(candidates) > 1 and store.config(rule).enforce_unique:
                target = self._merge(store, candidates)
            else:
                target = candidates[0]
            break
        now = self.clock()
        if target is None:
            target = Profile(self.minter.mint("mem_profile"), now)
            store.profiles[target.id] = target
            bisect.insort(store.live_ids, target.id)
        self._write(store, target, traits, promoted, now)
        return self._canonical(store, target).id

    def patch_profile(self, store: Store, profile: Profile, body: Any) -> None:
        data = schema.obj(body, "request body", {"traits"})
        traits, promoted = self.check_traits(store, data.get("traits", {}))
        self._write(store, profile, traits, promoted, self.clock())

    def _write(
        self,
        store: Store,
        profile: Profile,
        traits: dict[str, dict[str, Any]],
        promoted: list[tuple[str, str]],
        now: float,
    ) -> None:
        """Merge ``traits`` into the profile (null deletes), then attach promoted identifiers."""
        new = dict(profile.traits)
        for group, values in traits.items():
            merged = dict(new.get(group, ()))
            for trait, value in values.items():
                if value is None:
                    merged.pop(trait, None)
                else:
                    merged[trait] = (value, now)
            if merged:
                new[group] = merged
            else:
                new.pop(group, None)
        self._set_traits(store, profile, new, now)
        for id_type, value in promoted:
            profile = self._canonical(store, profile)
            self.add_identifier(store, profile, id_type, value, now)

    def _set_traits(self, store: Store, profile: Profile, traits: Traits, now: float) -> None:
        if self.write_lag and not profile.history:
            profile.history.append((float("-inf"), profile.traits))  # what reads saw so far
        profile.traits = {g: t for g, t in traits.items() if t}
        if self.write_lag:
            profile.history.append((now, profile.traits))
            horizon = now - self.write_lag
            while len(profile.history) > 1 and profile.history[1][0] <= horizon:
                profile.history.pop(0)
        self.dirty.add(("profile", store.id, profile.id))

    def delete_profile(self, store: Store, profile: Profile) -> None:
        for id_type, values in profile.identifiers.items():
            for value in values:
                self._unindex(store, id_type, value, profile.id)
        profile.identifiers = {}
        profile.deleted = True
        self._set_traits(store, profile, {}, self.clock())
        _remove_sorted(store.live_ids, profile.id)

    def _canonical(self, store: Store, profile: Profile) -> Profile:
        while profile.merged_into is not None:
            profile = store.profiles[profile.merged_into]
        return profile

    def _merge(self, store: Store, profiles: list[Profile]) -> Profile:
        """Merge into the earliest profile; per trait the latest write wins."""
        canonical, *others = sorted(profiles, key=_age)
        now = self.clock()
        traits = {g: dict(t) for g, t in canonical.traits.items()}
        for other in others:
            for group, values in other.traits.items():
                mine = traits.setdefault(group, {})
                for trait, (value, at) in values.items():
                    if trait not in mine or mine[trait][1] < at:
                        mine[trait] = (value, at)
            moved = other.identifiers
            for id_type, values_list in moved.items():
                for value in values_list:
                    self._unindex(store, id_type, value, other.id)
            other.identifiers = {}
            other.merged_into = canonical.id
            self._set_traits(store, other, {}, now)
            _remove_sorted(store.live_ids, other.id)
            for id_type, values_list in moved.items():
                for value in values_list:
                    self._attach(store, canonical, id_type, value, now)
        self._set_traits(store, canonical, traits, now)
        return canonical

    # ------------------------------------------------------------------------ identifiers

    def add_identifier(
        self, store: Store, profile: Profile, id_type: str, value: str, now: float
    ) -> Profile:
        """Attach a normalized value; with enforceUnique, another owner merges with this one."""
        owners = [p for p in store.index.get((id_type, value), ()) if p != profile.id]
        if owners and store.config(id_type).enforce_unique:
            profile = self._merge(store, [profile, *(store.profiles[p] for p in owners)])
        self._attach(store, profile, id_type, value, now)
        return profile

    def _attach(self, store: Store, profile: Profile, id_type: str, value: str, now: float) -> None:
        values = profile.identifiers.setdefault(id_type, [])
        if value in values:
            return
        values.append(value)
        store.index.setdefault((id_type, value), {})[profile.id] = now
        config = store.config(id_type)
        if len(values) > config.limit:
            # fifo drops the oldest value; lifo the newest one before this one.
            dropped = values.pop(0) if config.limit_policy == "fifo" else values.pop(-2)
            self._unindex(store, id_type, dropped, profile.id)
        self.dirty.add(("profile", store.id, profile.id))

    def _unindex(self, store: Store, id_type: str, value: str, profile_id: str) -> None:
        owners = store.index.get((id_type, value))
        if owners is not None:
            owners.pop(profile_id, None)
            if not owners:
                del store.index[(id_type, value)]

    def lookup(self, store: Store, body: Any) -> dict[str, Any]:
        data = schema.obj(body, "request body", {"idType", "value"}, ("idType", "value"))
        id_type = schema.string(data["idType"], "idType", max_len=30, min_len=2)
        value = schema.string(data["value"], "value", max_len=255)
        if id_type not in store.configs:
            raise bad_request(f"idType {id_type!r} is not configured for store {store.id}.")
        normalized = self._normalized(store, id_type, value, "value")
        owners = store.index.get((id_type, normalized), {})
        if self.write_lag:
            horizon = self.clock() - self.write_lag
            owners = {p: at for p, at in owners.items() if at <= horizon}
        ids = sorted(owners, key=lambda p: _age(store.profiles[p]))[:100]
        return {"normalizedValue": normalized, "profiles": ids}

    def identifier_body(self, store: Store, body: Any) -> tuple[str, str]:
        data = schema.obj(body, "request body", {"idType", "value"}, ("idType", "value"))
        id_type = schema.string(data["idType"], "idType", max_len=30, min_len=2)
        value = schema.string(data["value"], "value", max_len=255)
        return id_type, self._normalized(store, id_type, value, "value")

    def replace_identifier(self, store: Store, profile: Profile, id_type: str, body: Any) -> None:
        data = schema.obj(body, "request body", {"idType", "oldValue", "newValue"},
                          ("idType", "oldValue", "newValue"))  # fmt: skip
        if data["idType"] != id_type:
            raise bad_request("idType in the body must match the idType in the path.")
        old = schema.string(data["oldValue"], "oldValue", max_len=255)
        new = self._normalized(
            store, id_type, schema.string(data["newValue"], "newValue", max_len=255), "newValue"
        )
        values = profile.identifiers.get(id_type, [])
        if old not in values:
            raise not_found(f"Profile {profile.id} has no {id_type} value {old!r}.")
        owners = [p for p in store.index.get((id_type, new), ()) if p != profile.id]
        if owners and store.config(id_type).enforce_unique:
            raise ApiError(409, f"{id_type} {new!r} belongs to another profile.")
        values.remove(old)
        self._unindex(store, id_type, old, profile.id)
        self._attach(store, profile, id_type, new, self.clock())
        self.dirty.add(("profile", store.id, profile.id))

    def remove_identifier(
        self, store: Store, profile: Profile, id_type: str, remove_all: bool
    ) -> None:
        values = profile.identifiers.get(id_type)
        if not values:
            raise not_found(f"Profile {profile.id} has no {id_type} identifier.")
        if remove_all:
            drop = list(values)
        elif store.config(id_type).limit_policy == "fifo":
            drop = [values[0]]
        else:
            drop = [values[-1]]
        for value in drop:
            values.remove(value)
            self._unindex(store, id_type, value, profile.id)
        if not values:
            del profile.identifiers[id_type]
        self.dirty.add(("profile", store.id, profile.id))

    # ----------------------------------------------------------------------------- reads

    def profile_json(self, profile: Profile, groups: Iterable[str] | None) -> dict[str, Any]:
        traits = self.visible(profile)
        if traits is None:
            raise not_found(f"Profile {profile.id} not found.")
        wanted = set(groups) if groups is not None else None
        return {
            "id": profile.id,
            "createdAt": iso(profile.created_at),
            "traits": {
                g: {k: v for k, (v, _) in t.items()}
                for g, t in traits.items()
                if wanted is None or g in wanted
            },
        }

    def trait_list(self, profile: Profile, groups: Iterable[str] | None, order: str) -> list[Any]:
        traits = self.visible(profile)
        if traits is None:
            raise not_found(f"Profile {profile.id} not found.")
        wanted = set(groups) if groups is not None else None
        rows = [
            {"name": k, "value": v, "traitGroup": g, "timestamp": iso(at)}
            for g, t in traits.items()
            if wanted is None or g in wanted
            for k, (v, at) in t.items()
        ]
        rows.sort(key=lambda r: (r["timestamp"], r["traitGroup"], r["name"]),
                  reverse=order == "DESC")  # fmt: skip
        return rows

    def profile_ids(
        self, store: Store, page_size: int, token: str | None, order: str
    ) -> dict[str, Any]:
        """Keyset pagination over the sorted live IDs, which are sorted by creation time."""
        ids = store.live_ids
        if self.write_lag:
            horizon = self.clock() - self.write_lag
            ids = [p for p in ids if store.profiles[p].created_at <= horizon]
        after = _decode_after(token)
        if order == "ASC":
            start = bisect.bisect_right(ids, after) if after else 0
            chunk = ids[start : start + page_size]
            more = start + page_size < len(ids)
        else:
            end = bisect.bisect_left(ids, after) if after else len(ids)
            chunk = ids[max(0, end - page_size) : end][::-1]
            more = end - page_size > 0
        meta: dict[str, Any] = {"key": "profiles", "pageSize": len(chunk)}
        if more and chunk:
            meta["nextToken"] = _token("a", chunk[-1])
        return {"profiles": chunk, "meta": meta}


def _age(profile: Profile) -> tuple[float, str]:
    return (profile.created_at, profile.id)


def _remove_sorted(ids: list[str], item: str) -> None:
    i = bisect.bisect_left(ids, item)
    if i < len(ids) and ids[i] == item:
        del ids[i]


def _decode_after(token: str | None) -> str | None:
    if not token:
        return None
    after = _token_value(token, "a")
    if isinstance(after, str) and PROFILE_ID.match(after):
        return after
    raise bad_request("pageToken is not a token this API issued.")
