"""An emulated Segment Unify space: identity resolution, traits and dedupe, no HTTP, time passed in.

Facts from /work/shared/segment-api.md; where they are [I] or [?], the choices made here:

- Identifier values match case-sensitively, exactly as sent ([I]: the docs say to query and send
  lowercase, but do not confirm the service lowercases on ingest; an emulator that did would hide
  a client that forgot to).
- Trait order is processing order (last processed wins, [I] from "last seen"); an event's
  ``timestamp`` is not consulted. Nested objects are replaced whole ([I]).
- ``traits`` of an identify are stored; ``context.traits`` only feeds identifiers (email and
  trait-keyed custom types), as Segment documents it for identity, not as profile traits.
- ``too_many_traits`` discards at 300 traits or more ([?]: Engage "rejects >=300" vs Unify "drops
  >300"; the stricter reading, so a client that passes here passes there).
- A batch item whose ``type`` is missing or not one of the Tracking API's methods is discarded as
  ``missing_type``; a ``context.externalIds`` item that is not exactly ``{id, type (lowercase),
  collection: "users", encoding: "none"}`` is ignored and counted as ``invalid_external_id`` (the
  event itself goes on).
- Priorities: an explicitly configured priority is kept as given; otherwise ``user_id`` is 1,
  ``email`` 2 and every other type is numbered alphabetically from 3. Ties (possible only with
  explicit numbers) rank by name. A larger number is a lower priority.
- Over a limit, the incoming event's lowest-priority identifier (the last sent, among several of
  that type) is dropped and the event matched again, until the union fits. With every limit at
  least 1 this always ends with an identifier left; ``no_identifiers`` covers the impossible rest.
- A merge keeps the oldest profile (first created) with its ``segment_id``; per trait the most
  recently updated value wins (ties: the kept profile's).
- Visibility delay: events are applied at once to ``current`` (what identity resolution, dedupe
  and the test oracle see) and replayed into ``visible`` (what the Profile API reads) once
  ``lag`` has passed, each with its own acceptance time, so ``visible`` is exactly ``current`` as
  it was ``lag`` seconds ago. Pending replays are not persisted: after a restart everything
  stored is visible.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SOURCE_NAME = "twilio-unified-profiles"
SOURCE_ID = "src_twilio_unified_profiles"  # fixed: the emulated space has this one source
DEFAULT_SPACE_ID = "spa_emulator"
DEDUPE_WINDOW_S = 24 * 3600.0
MAX_MESSAGE_ID = 100
MAX_TRAITS = 300  # this many traits or more: discarded
DEFAULT_LIMIT = 5
DEFAULT_BLOCKED = ("regex:^[0-]*$", "-1", "null", "anonymous")
EVENT_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
DISCARD_REASONS = (
    "no_user_anon_id",
    "traits_not_object",
    "message_id_too_long",
    "too_many_events",
    "too_many_traits",
    "no_identifiers",
    "invalid_external_id",
    "missing_type",
)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

Ident = tuple[str, str]  # (type, value)


class SpaceConfigError(ValueError):
    """Identity settings or a seeded profile that cannot be served; the message names where."""


# ---------------------------------------------------------------------------- identity settings


@dataclass
class IdType:
    name: str
    limit: int = DEFAULT_LIMIT
    priority: int | None = None  # None: the default rank (user_id 1, email 2, others from 3)
    trait_key: str | None = None  # a custom type fed by traits.<key> / context.traits.<key>


class Blocked:
    """Values never promoted to identifiers: ``regex:<pattern>`` (searched) or an exact value."""

    def __init__(self, rules: list[str]) -> None:
        self.rules = list(rules)
        self._exact: set[str] = set()
        self._patterns: list[re.Pattern[str]] = []
        for rule in self.rules:
            if rule.startswith("regex:"):
                try:
                    self._patterns.append(re.compile(rule.removeprefix("regex:")))
                except re.error as exc:
                    raise SpaceConfigError(f"blocked rule {rule!r} is not a regex: {exc}") from None
            else:
                self._exact.add(rule)

    def __call__(self, value: str) -> bool:
        return value in self._exact or any(p.search(value) for p in self._patterns)


class Identity:
    """Per identifier type a limit and a priority, plus the blocked values."""

    def __init__(self, types: list[IdType] | None = None, blocked: list[str] | None = None) -> None:
        self.types: dict[str, IdType] = {}
        for name in ("user_id", "email", "anonymous_id"):
            self.types[name] = IdType(name, 1 if name == "user_id" else DEFAULT_LIMIT)
        for t in types or []:
            if t.limit < 1:
                raise SpaceConfigError(f"identifier {t.name!r}: limit must be at least 1")
            self.types[t.name] = t
        self.blocked = Blocked(list(DEFAULT_BLOCKED) + list(blocked or []))
        self._ranks: dict[str, int] = {}
        self._rerank()

    def _rerank(self) -> None:
        ranks = {n: t.priority for n, t in self.types.items() if t.priority is not None}
        ranks.setdefault("user_id", 1)
        ranks.setdefault("email", 2)
        rest = sorted(n for n in self.types if n not in ranks)
        ranks.update({n: 3 + i for i, n in enumerate(rest)})
        self._ranks = ranks

    def ensure(self, name: str) -> bool:
        """Add a type seen for the first time with the defaults; True when it was new."""
        if name in self.types:
            return False
        self.types[name] = IdType(name)
        self._rerank()
        return True

    def priority(self, name: str) -> int:
        return self._ranks[name]

    def limit(self, name: str) -> int:
        return self.types[name].limit

    def trait_keyed(self) -> list[tuple[str, str]]:
        return [(t.name, t.trait_key) for t in self.types.values() if t.trait_key]

    def to_doc(self) -> dict[str, Any]:
        return {
            "identifiers": [
                {"type": t.name, "limit": t.limit, "priority": t.priority, "trait_key": t.trait_key}
                for t in self.types.values()
            ],
            "blocked": self.blocked.rules[len(DEFAULT_BLOCKED) :],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Identity:
        types = [
            IdType(d["type"], d["limit"], d.get("priority"), d.get("trait_key"))
            for d in doc["identifiers"]
        ]
        return cls(types, doc["blocked"])

    def view(self) -> dict[str, Any]:
        """As stats show it: type -> limit and effective priority."""
        return {
            n: {"limit": t.limit, "priority": self._ranks[n], "trait_key": t.trait_key}
            for n, t in sorted(self.types.items(), key=lambda kv: (self._ranks[kv[0]], kv[0]))
        }


# ---------------------------------------------------------------------------------- profiles


@dataclass
class Trait:
    value: Any
    updated_at: float
    source_id: str


@dataclass
class ExternalId:
    type: str
    id: str
    created_at: float
    source_id: str
    first_message_id: str


@dataclass
class Profile:
    segment_id: str
    seq: int  # creation order: a merge keeps the lowest
    created_at: float
    updated_at: float
    first_message_id: str
    first_source_id: str
    last_message_id: str
    last_source_id: str
    traits: dict[str, Trait] = field(default_factory=dict)
    external_ids: list[ExternalId] = field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "seq": self.seq,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "first_message_id": self.first_message_id,
            "first_source_id": self.first_source_id,
            "last_message_id": self.last_message_id,
            "last_source_id": self.last_source_id,
            "traits": {k: [t.value, t.updated_at, t.source_id] for k, t in self.traits.items()},
            "external_ids": [
                [e.type, e.id, e.created_at, e.source_id, e.first_message_id]
                for e in self.external_ids
            ],
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Profile:
        p = cls(
            d["segment_id"],
            d["seq"],
            d["created_at"],
            d["updated_at"],
            d["first_message_id"],
            d["first_source_id"],
            d["last_message_id"],
            d["last_source_id"],
        )
        p.traits = {k: Trait(v, at, src) for k, (v, at, src) in d["traits"].items()}
        p.external_ids = [ExternalId(*e) for e in d["external_ids"]]
        return p

    def oracle(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "traits": {k: t.value for k, t in self.traits.items()},
            "external_ids": [(e.type, e.id) for e in self.external_ids],
        }


@dataclass(frozen=True)
class Message:
    """An identify that passed validation: what identity resolution and the trait merge need."""

    message_id: str
    identifiers: tuple[Ident, ...]
    traits: dict[str, Any]
    source_id: str = SOURCE_ID


def segment_id(space_id: str, seq: int) -> str:
    """Deterministic, so the visible replica mints the same ids as the current one."""
    n = int.from_bytes(hashlib.sha256(f"{space_id}/{seq}".encode()).digest()[:20], "big")
    chars = []
    for _ in range(27):
        n, r = divmod(n, 62)
        chars.append(_BASE62[r])
    return "use_" + "".join(chars)


class Replica:
    """Profiles, their index and the identity settings; applying the same messages at the same
    times in the same order gives the same state (``visible`` relies on it)."""

    def __init__(self, space_id: str, identity: Identity, next_seq: int = 0) -> None:
        self.space_id = space_id
        self.identity = identity
        self.next_seq = next_seq
        self.profiles: dict[str, Profile] = {}
        self.index: dict[Ident, str] = {}
        self.dirty: set[str] = set()  # segment_ids written since the last commit
        self.removed: set[str] = set()  # merged away since the last commit
        self.settings_dirty = False

    def copy(self) -> Replica:
        other = Replica(self.space_id, Identity.from_doc(self.identity.to_doc()), self.next_seq)
        for p in self.profiles.values():
            other.add(Profile.from_doc(p.to_doc()))
        return other

    def add(self, profile: Profile) -> None:
        self.profiles[profile.segment_id] = profile
        for e in profile.external_ids:
            self.index[(e.type, e.id)] = profile.segment_id
        self.next_seq = max(self.next_seq, profile.seq + 1)

    def lookup(self, id_type: str, value: str) -> Profile | None:
        sid = self.index.get((id_type, value))
        return self.profiles[sid] if sid is not None else None

    def _fit(self, ids: list[Ident]) -> list[Ident]:
        """Drop the event's lowest-priority identifier until attaching/merging fits the limits."""
        identity = self.identity
        while ids:
            matched = {self.index[i] for i in ids if i in self.index}
            union = set(ids)
            for sid in matched:
                union.update((e.type, e.id) for e in self.profiles[sid].external_ids)
            counts = Counter(t for t, _ in union)
            if all(n <= identity.limit(t) for t, n in counts.items()):
                return ids
            worst = max(range(len(ids)), key=lambda i: (identity.priority(ids[i][0]), i))
            ids = ids[:worst] + ids[worst + 1 :]
        return ids

    def apply(self, msg: Message, now: float) -> Profile | None:
        """Resolve and write one identify; None when no identifier was left to hold it."""
        for t, _ in msg.identifiers:
            if self.identity.ensure(t):
                self.settings_dirty = True
        ids = self._fit(list(msg.identifiers))
        if not ids:
            return None
        found = {self.index[i]: self.profiles[self.index[i]] for i in ids if i in self.index}
        matched = sorted(found.values(), key=lambda p: p.seq)
        if not matched:
            seq = self.next_seq
            self.next_seq += 1
            target = Profile(segment_id(self.space_id, seq), seq, now, now, msg.message_id,
                             msg.source_id, msg.message_id, msg.source_id)  # fmt: skip
            self.profiles[target.segment_id] = target
        else:
            target = matched[0]
            for other in matched[1:]:
                self._merge(target, other)
        held = {(e.type, e.id) for e in target.external_ids}
        for t, v in ids:
            if (t, v) not in held:
                target.external_ids.append(ExternalId(t, v, now, msg.source_id, msg.message_id))
                self.index[(t, v)] = target.segment_id
                held.add((t, v))
        for key, value in msg.traits.items():
            if value is None:
                target.traits.pop(key, None)
            else:
                target.traits[key] = Trait(value, now, msg.source_id)
        target.updated_at = now
        target.last_message_id = msg.message_id
        target.last_source_id = msg.source_id
        self.dirty.add(target.segment_id)
        return target

    def _merge(self, target: Profile, other: Profile) -> None:
        for key, trait in other.traits.items():
            mine = target.traits.get(key)
            if mine is None or trait.updated_at > mine.updated_at:
                target.traits[key] = trait
        for e in other.external_ids:
            target.external_ids.append(e)
            self.index[(e.type, e.id)] = target.segment_id
        target.updated_at = max(target.updated_at, other.updated_at)
        del self.profiles[other.segment_id]
        self.dirty.discard(other.segment_id)
        self.removed.add(other.segment_id)


# ------------------------------------------------------------------------------------ the space


@dataclass
class Counters:
    """The Tracking and Profile API's own account; stats show it, a stats DELETE clears it."""

    requests: int = 0
    events_received: int = 0
    events_applied: int = 0
    duplicates: int = 0
    ignored: int = 0  # accepted events of other types: nothing stored
    discarded: Counter[str] = field(default_factory=Counter)
    profile_requests: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "tracking": {
                "requests": self.requests,
                "events_received": self.events_received,
                "events_applied": self.events_applied,
                "duplicates": self.duplicates,
                "ignored": self.ignored,
                "discarded": dict(sorted(self.discarded.items())),
            },
            "profile_api": {"requests": self.profile_requests},
        }


def as_id(value: Any) -> str | None:
    """An identifier's value as a string: strings as sent, whole numbers as their digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _variants(key: str) -> tuple[str, ...]:
    """A configured trait key in its camelCase and snake_case spellings."""
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
    head, *rest = snake.split("_")
    camel = head + "".join(w.capitalize() for w in rest)
    return tuple(dict.fromkeys((key, snake, camel)))


def merge_batch_context(item: Any, context: Any, integrations: Any) -> Any:
    """The batch's top-level ``context``/``integrations`` under each item's own (the item wins)."""
    if not isinstance(item, dict):
        return item
    out = dict(item)
    for name, top in (("context", context), ("integrations", integrations)):
        if isinstance(top, dict):
            own = item.get(name)
            out[name] = {**top, **own} if isinstance(own, dict) else dict(top)
    return out


class Space:
    """One Unify space with the ``twilio-unified-profiles`` source. Not thread-safe."""

    def __init__(
        self, space_id: str = DEFAULT_SPACE_ID, identity: Identity | None = None, lag: float = 0.0
    ) -> None:
        self.space_id = space_id
        self.lag = lag
        self.current = Replica(space_id, identity or Identity())
        self.current.settings_dirty = True
        self.visible = self.current.copy() if lag > 0 else self.current
        self.pending: deque[tuple[float, Message]] = deque()
        self.seen: dict[str, float] = {}  # messageId -> when accepted, within the dedupe window
        self._seen_order: deque[tuple[float, str]] = deque()
        self.new_seen: list[tuple[str, float]] = []  # for storage, since the last commit
        self.expired_before: float | None = None
        self.counters = Counters()

    @property
    def identity(self) -> Identity:
        return self.current.identity

    def restart_visible(self) -> None:
        """``visible`` from ``current`` as it now is: after a load, or when the lag is set."""
        self.pending.clear()
        self.visible = self.current.copy() if self.lag > 0 else self.current

    # ------------------------------------------------------------------- what the oracle reads

    def profile(self, id_type: str, value: str) -> dict[str, Any] | None:
        """As stored, ignoring the visibility delay."""
        p = self.current.lookup(id_type, value)
        return p.oracle() if p is not None else None

    def profiles(self) -> Iterator[dict[str, Any]]:
        for p in sorted(self.current.profiles.values(), key=lambda p: p.seq):
            yield p.oracle()

    # -------------------------------------------------------------------------- the read side

    def read(self, now: float) -> Replica:
        """The replica the Profile API answers from at ``now``."""
        horizon = now - self.lag
        while self.pending and self.pending[0][0] <= horizon:
            at, msg = self.pending.popleft()
            self.visible.apply(msg, at)
        if self.visible is not self.current:
            self.visible.dirty.clear()
            self.visible.removed.clear()
        return self.visible

    # ------------------------------------------------------------------------- the write side

    def seed_profile(self, ids: list[Ident], traits: dict[str, Any], now: float) -> Profile:
        """A seeded profile: applied to both replicas at once (visible immediately)."""
        msg = Message(f"seed-{uuid.uuid4()}", tuple(dict.fromkeys(ids)), traits)
        profile = self.current.apply(msg, now)
        if profile is None:
            raise SpaceConfigError("a seeded profile needs an identifier that is not blocked")
        if self.visible is not self.current:
            self.visible.apply(msg, now)
        return profile

    def _discard(self, reason: str) -> str:
        self.counters.discarded[reason] += 1
        return reason

    def _expire(self, now: float) -> None:
        cutoff = now - DEDUPE_WINDOW_S
        while self._seen_order and self._seen_order[0][0] < cutoff:
            at, mid = self._seen_order.popleft()
            if self.seen.get(mid) == at:
                del self.seen[mid]
            self.expired_before = cutoff

    def remember(self, message_id: str, at: float) -> None:
        self.seen[message_id] = at
        self._seen_order.append((at, message_id))

    def discard_beyond(self, count: int) -> None:
        """Events past a batch's 2,500th: received, then rejected."""
        self.counters.events_received += count
        self.counters.discarded["too_many_events"] += count

    def ingest(self, event: Any, now: float, implied_type: str | None = None) -> str:
        """One Tracking API message: ``applied``, ``duplicate``, ``ignored`` or a discard reason."""
        c = self.counters
        c.events_received += 1
        if not isinstance(event, dict):
            return self._discard("missing_type")
        kind = implied_type or event.get("type")
        if kind not in EVENT_TYPES:
            return self._discard("missing_type")
        raw_mid = event.get("messageId")
        if raw_mid is None:
            mid = f"emulator-{uuid.uuid4()}"
        else:
            mid = raw_mid if isinstance(raw_mid, str) else json.dumps(raw_mid)
            if len(mid) > MAX_MESSAGE_ID:
                return self._discard("message_id_too_long")
        user = as_id(event.get("userId"))
        anon = as_id(event.get("anonymousId"))
        if not user and not anon:
            return self._discard("no_user_anon_id")
        traits = event.get("traits")
        if kind == "identify":
            if traits is None:
                traits = {}
            if not isinstance(traits, dict):
                return self._discard("traits_not_object")
            if len(traits) >= MAX_TRAITS:
                return self._discard("too_many_traits")
        self._expire(now)
        if mid in self.seen:
            c.duplicates += 1
            return "duplicate"
        if kind != "identify":
            self.remember(mid, now)
            self.new_seen.append((mid, now))
            c.ignored += 1
            return "ignored"
        assert isinstance(traits, dict)
        ids = self._identifiers(event, user, anon, traits)
        if not ids:
            return self._discard("no_identifiers")
        msg = Message(mid, tuple(ids), traits)
        if self.current.apply(msg, now) is None:
            return self._discard("no_identifiers")
        self.remember(mid, now)
        self.new_seen.append((mid, now))
        if self.visible is not self.current:
            self.pending.append((now, msg))
            self.read(now)  # replay what is due, so the queue holds at most ``lag`` of events
        c.events_applied += 1
        return "applied"

    def _identifiers(
        self, event: dict[str, Any], user: str | None, anon: str | None, traits: dict[str, Any]
    ) -> list[Ident]:
        context = event.get("context")
        context = context if isinstance(context, dict) else {}
        ctx_traits = context.get("traits")
        ctx_traits = ctx_traits if isinstance(ctx_traits, dict) else {}
        found: list[Ident] = []
        if user:
            found.append(("user_id", user))
        if anon:
            found.append(("anonymous_id", anon))
        for source in (traits, ctx_traits):
            email = source.get("email")
            if isinstance(email, str):
                found.append(("email", email))
        for id_type, key in self.identity.trait_keyed():
            for source in (traits, ctx_traits):
                for k in _variants(key):
                    value = as_id(source.get(k))
                    if value is not None:
                        found.append((id_type, value))
        if "externalIds" in context:
            found.extend(self._external_ids(context["externalIds"]))
        blocked = self.identity.blocked
        return [i for i in dict.fromkeys(found) if i[1] and not blocked(i[1])]

    def _external_ids(self, items: Any) -> list[Ident]:
        if not isinstance(items, list):
            self._discard("invalid_external_id")
            return []
        out: list[Ident] = []
        for item in items:
            ok = isinstance(item, dict) and set(item) >= {"id", "type", "collection", "encoding"}
            if ok:
                value, id_type = as_id(item["id"]), item["type"]
                ok = (
                    value is not None
                    and isinstance(id_type, str)
                    and bool(id_type)
                    and id_type == id_type.lower()
                    and item["collection"] == "users"
                    and item["encoding"] == "none"
                )
            if not ok:
                self._discard("invalid_external_id")
                continue
            out.append((item["type"], as_id(item["id"]) or ""))
        return out

    # --------------------------------------------------------------------------------- storage

    def to_doc(self) -> dict[str, Any]:
        return {
            "space_id": self.space_id,
            "next_seq": self.current.next_seq,
            "identity": self.identity.to_doc(),
        }

    @classmethod
    def from_docs(
        cls,
        doc: dict[str, Any],
        profiles: Iterator[dict[str, Any]],
        seen: Iterator[tuple[str, float]],
        lag: float,
    ) -> Space:
        """The space a state file kept: everything in it visible at once."""
        space = cls(doc["space_id"], Identity.from_doc(doc["identity"]), 0.0)
        for p in profiles:
            space.current.add(Profile.from_doc(p))
        space.current.next_seq = max(space.current.next_seq, doc["next_seq"])
        for mid, at in sorted(seen, key=lambda row: row[1]):
            space.remember(mid, at)
        space.current.settings_dirty = False
        space.lag = lag
        space.restart_visible()
        return space

    def take_rows(self) -> tuple[dict[str, Any] | None, list[Profile], list[str],
                                 list[tuple[str, float]], float | None]:  # fmt: skip
        """What changed since the last call: (space doc or None, profiles written, profiles
        merged away, messageIds remembered, forget messageIds accepted before this time)."""
        cur = self.current
        changed = cur.settings_dirty or bool(cur.dirty) or bool(cur.removed)
        doc = self.to_doc() if changed else None
        written = [cur.profiles[sid] for sid in cur.dirty if sid in cur.profiles]
        removed = sorted(cur.removed)
        seen, expired = self.new_seen, self.expired_before
        cur.settings_dirty = False
        cur.dirty, cur.removed = set(), set()
        self.new_seen, self.expired_before = [], None
        return doc, written, removed, seen, expired
