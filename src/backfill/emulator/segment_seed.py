"""The Segment space's part of the seed document: the top-level ``"segment"`` object.

::

    {"segment": {"space_id": "spa_x",
                 "identifiers": [{"type": "phone", "limit": 3, "trait_key": "phone"}],
                 "blocked": ["regex:^test-", "void"],
                 "profiles": [{"external_ids": [{"type": "user_id", "id": "c-1"}],
                               "traits": {"tier": "gold"}}]}}

Seeded profiles go through identity resolution as an identify carrying those identifiers would
(so two seeded profiles sharing an identifier merge), and are visible at once.
"""

from __future__ import annotations

from typing import Any

from backfill.emulator.segment import (
    DEFAULT_LIMIT,
    Ident,
    Identity,
    IdType,
    Space,
    SpaceConfigError,
    as_id,
)


def _seed_obj(
    raw: Any, where: str, keys: set[str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpaceConfigError(f"{where}: expected an object")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise SpaceConfigError(f"{where}: unknown key {unknown[0]!r}")
    for key in required:
        if key not in raw:
            raise SpaceConfigError(f"{where}: {key!r} is required")
    return raw


def _seed_list(raw: Any, where: str) -> list[Any]:
    if not isinstance(raw, list):
        raise SpaceConfigError(f"{where}: expected a list")
    return raw


def _seed_type(raw: Any, where: str) -> IdType:
    d = _seed_obj(raw, where, {"type", "limit", "priority", "trait_key"}, ("type",))
    name = d["type"]
    if not isinstance(name, str) or not name or name != name.lower():
        raise SpaceConfigError(f"{where}.type: expected a non-empty lowercase string")
    t = IdType(name, 1 if name == "user_id" else DEFAULT_LIMIT)
    for key in ("limit", "priority"):
        if key in d:
            value = d[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpaceConfigError(f"{where}.{key}: expected a whole number of at least 1")
            setattr(t, key, value)
    if "trait_key" in d:
        if not isinstance(d["trait_key"], str) or not d["trait_key"]:
            raise SpaceConfigError(f"{where}.trait_key: expected a non-empty string")
        t.trait_key = d["trait_key"]
    return t


def seed_space(raw: Any, space_id: str, lag: float, now: float) -> Space:
    """A space from the seed's ``segment`` object; SpaceConfigError names the place in it."""
    d = _seed_obj(raw, "segment", {"space_id", "identifiers", "blocked", "profiles"})
    if "space_id" in d:
        space_id = d["space_id"]
    types = [
        _seed_type(t, f"segment.identifiers[{i}]")
        for i, t in enumerate(_seed_list(d.get("identifiers", []), "segment.identifiers"))
    ]
    blocked = _seed_list(d.get("blocked", []), "segment.blocked")
    for i, rule in enumerate(blocked):
        if not isinstance(rule, str) or not rule:
            raise SpaceConfigError(f"segment.blocked[{i}]: expected a non-empty string")
    try:
        identity = Identity(types, blocked)
    except SpaceConfigError as exc:
        raise SpaceConfigError(f"segment: {exc}") from None
    space = Space(space_id, identity, lag)
    for i, p in enumerate(_seed_list(d.get("profiles", []), "segment.profiles")):
        where = f"segment.profiles[{i}]"
        pd = _seed_obj(p, where, {"external_ids", "traits"}, ("external_ids",))
        ids: list[Ident] = []
        for j, e in enumerate(_seed_list(pd["external_ids"], f"{where}.external_ids")):
            ed = _seed_obj(e, f"{where}.external_ids[{j}]", {"type", "id"}, ("type", "id"))
            value = as_id(ed["id"])
            if not isinstance(ed["type"], str) or not ed["type"] or value is None:
                raise SpaceConfigError(f"{where}.external_ids[{j}]: type and id must be strings")
            if identity.blocked(value) or not value:
                raise SpaceConfigError(f"{where}.external_ids[{j}]: {value!r} is a blocked value")
            ids.append((ed["type"], value))
        traits = pd.get("traits", {})
        if not isinstance(traits, dict):
            raise SpaceConfigError(f"{where}.traits: expected an object")
        try:
            space.seed_profile(ids, traits, now)
        except SpaceConfigError as exc:
            raise SpaceConfigError(f"{where}: {exc}") from None
    return space
