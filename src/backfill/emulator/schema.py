"""Request validation, where the real service validates: one place, one 400 message per rule.

Shapes and limits follow the Memory API's OpenAPI description (shared/memory-api.md). One
deliberate leniency: a property sent as ``null`` counts as absent, because the official ``twilio``
package serializes every unset optional field of its model classes as ``null``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from backfill.emulator.apierror import bad_request
from backfill.plan.normalize import NORMALIZATIONS

TRAIT_NAME = re.compile(r"^[a-z][a-zA-Z0-9_\-\.]*$")
GROUP_NAME = re.compile(r"^[a-zA-Z0-9_\-\.]+$")
STORE_NAME = re.compile(r"^[a-zA-Z0-9-]+$")
DATA_TYPES = ("STRING", "NUMBER", "BOOLEAN", "ARRAY")

MAX_GROUPS_PER_REQUEST = 50
MAX_TRAITS_PER_GROUP_IN_REQUEST = 99
MAX_TRAITS_PER_GROUP = 95
MAX_GROUPS_PER_STORE = 50
MAX_STRING = 1024
MAX_ARRAY = 100
MAX_EXACT_INTEGER = 2**53
MAX_IDENTIFIER_CONFIGS = 15
MAX_BULK = 1000

_RULE_KEYS = {
    "STRING": {"ruleType", "pattern", "minLength", "maxLength"},
    "NUMBER": {"ruleType", "min", "max"},
    "BOOLEAN": {"ruleType"},
    "ARRAY": {"ruleType", "minItems", "maxItems"},
}


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise bad_request("A request body is required.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None


def obj(
    value: Any, where: str, allowed: frozenset[str] | set[str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A JSON object with only ``allowed`` keys; null-valued keys are dropped as absent."""
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be a JSON object.")
    out = {k: v for k, v in value.items() if v is not None}
    extra = sorted(set(out) - set(allowed))
    if extra:
        raise bad_request(f"{where} has unknown property {extra[0]!r}.")
    for key in required:
        if key not in out:
            raise bad_request(f"{where} is missing required property {key!r}.")
    return out


def string(value: Any, where: str, *, max_len: int, min_len: int = 0) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{where} must be a string.")
    if not min_len <= len(value) <= max_len:
        raise bad_request(f"{where} must be {min_len} to {max_len} characters long.")
    return value


def integer(value: Any, where: str, *, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{where} must be an integer.")
    if value < lo or (hi is not None and value > hi):
        raise bad_request(f"{where} must be between {lo} and {hi}." if hi else f"{where} >= {lo}.")
    return value


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"{where} must be a number.")
    return float(value)


def name(value: Any, where: str, pattern: re.Pattern[str], what: str) -> str:
    text = string(value, where, max_len=64, min_len=1)
    if not pattern.match(text):
        raise bad_request(f"{where} {text!r} is not a valid {what} (pattern {pattern.pattern}).")
    return text


@dataclass(frozen=True, slots=True)
class TraitDef:
    """One trait definition of a trait group, with its validation rule pre-compiled."""

    data_type: str
    description: str | None = None
    rule: dict[str, Any] | None = None
    id_type_promotion: str | None = None
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dataType": self.data_type}
        if self.description is not None:
            out["description"] = self.description
        if self.rule is not None:
            out["validationRule"] = dict(self.rule)
        if self.id_type_promotion is not None:
            out["idTypePromotion"] = self.id_type_promotion
        return out


_TRAIT_DEF_KEYS = frozenset({"dataType", "description", "validationRule", "idTypePromotion"})


def trait_definition(trait: str, raw: Any, *, allow_delete: bool) -> TraitDef | None:
    """Parse one TraitDefinition; None is the ``{"dataType": ""}`` deletion marker of a PATCH."""
    name(trait, f"trait name {trait!r}", TRAIT_NAME, "trait name (lowerCamelCase)")
    where = f"traits.{trait}"
    body = obj(raw, where, _TRAIT_DEF_KEYS, ("dataType",))
    data_type = body["dataType"]
    if data_type == "" and allow_delete:
        return None
    if data_type not in DATA_TYPES:
        raise bad_request(f"{where}.dataType must be one of {', '.join(DATA_TYPES)}.")
    description = body.get("description")
    if description is not None:
        string(description, f"{where}.description", max_len=1024)
    promotion = body.get("idTypePromotion")
    if promotion is not None:
        string(promotion, f"{where}.idTypePromotion", max_len=30, min_len=2)
    rule, pattern = _validation_rule(body.get("validationRule"), data_type, where)
    return TraitDef(data_type, description, rule, promotion, pattern)


def _validation_rule(
    raw: Any, data_type: str, where: str
) -> tuple[dict[str, Any] | None, re.Pattern[str] | None]:
    if raw is None:
        return None, None
    where = f"{where}.validationRule"
    if not isinstance(raw, dict) or raw.get("ruleType") not in _RULE_KEYS:
        raise bad_request(f"{where}.ruleType must be one of {', '.join(_RULE_KEYS)}.")
    rule_type = raw["ruleType"]
    if rule_type != data_type:
        raise bad_request(f"{where}.ruleType {rule_type} does not fit dataType {data_type}.")
    rule = obj(raw, where, _RULE_KEYS[rule_type], ("ruleType",))
    pattern = None
    if "pattern" in rule:
        string(rule["pattern"], f"{where}.pattern", max_len=1000)
        try:
            pattern = re.compile(rule["pattern"])
        except re.error as exc:
            raise bad_request(f"{where}.pattern is not a valid regular expression: {exc}") from None
    for key, lo in (("minLength", 0), ("maxLength", 1), ("minItems", 0), ("maxItems", 0)):
        if key in rule:
            integer(rule[key], f"{where}.{key}", lo=lo)
    for key in ("min", "max"):
        if key in rule:
            number(rule[key], f"{where}.{key}")
    for lo_key, hi_key in (("minLength", "maxLength"), ("min", "max"), ("minItems", "maxItems")):
        if lo_key in rule and hi_key in rule and rule[lo_key] > rule[hi_key]:
            raise bad_request(f"{where}.{lo_key} must not exceed {hi_key}.")
    return rule, pattern


def trait_definitions(raw: Any, *, allow_delete: bool) -> dict[str, TraitDef | None]:
    if not isinstance(raw, dict):
        raise bad_request("traits must be a JSON object keyed by trait name.")
    if len(raw) > MAX_TRAITS_PER_GROUP:
        raise bad_request(f"A trait group holds at most {MAX_TRAITS_PER_GROUP} traits.")
    return {k: trait_definition(k, v, allow_delete=allow_delete) for k, v in raw.items()}


@dataclass(frozen=True, slots=True)
class IdentifierConfig:
    """An identifier type's resolution settings, defaults as the API documents them."""

    id_type: str
    matching_algo: str = "exact"
    matching_threshold: int = 75
    limit: int = 100
    limit_policy: str = "fifo"
    enforce_unique: bool = True
    normalization: str = "trim"

    def to_json(self) -> dict[str, Any]:
        return {
            "idType": self.id_type,
            "matchingAlgo": self.matching_algo,
            "matchingThreshold": self.matching_threshold,
            "limit": self.limit,
            "limitPolicy": self.limit_policy,
            "enforceUnique": self.enforce_unique,
            "normalization": self.normalization,
        }


_CONFIG_KEYS = frozenset(
    {"idType", "matchingAlgo", "matchingThreshold", "limit", "limitPolicy", "enforceUnique",
     "normalization"}
)  # fmt: skip


def identity_settings(raw: Any) -> tuple[list[IdentifierConfig], list[str]]:
    body = obj(raw, "request body", {"identifierConfigs", "matchingRules"},
               ("identifierConfigs", "matchingRules"))  # fmt: skip
    configs_raw, rules_raw = body["identifierConfigs"], body["matchingRules"]
    if not isinstance(configs_raw, list) or not 1 <= len(configs_raw) <= MAX_IDENTIFIER_CONFIGS:
        raise bad_request("identifierConfigs must be a list of 1 to 15 identifier configs.")
    configs: list[IdentifierConfig] = []
    for i, item in enumerate(configs_raw):
        where = f"identifierConfigs[{i}]"
        c = obj(item, where, _CONFIG_KEYS, ("idType",))
        id_type = string(c["idType"], f"{where}.idType", max_len=30, min_len=2)
        if any(x.id_type == id_type for x in configs):
            raise bad_request(f"{where}.idType {id_type!r} is configured twice.")
        config = IdentifierConfig(
            id_type,
            _enum(c.get("matchingAlgo", "exact"), f"{where}.matchingAlgo", ("exact", "fuzzy")),
            integer(c.get("matchingThreshold", 75), f"{where}.matchingThreshold", lo=50, hi=99),
            integer(c.get("limit", 100), f"{where}.limit", lo=1, hi=100),
            _enum(c.get("limitPolicy", "fifo"), f"{where}.limitPolicy", ("fifo", "lifo")),
            _boolean(c.get("enforceUnique", True), f"{where}.enforceUnique"),
            _enum(c.get("normalization", "trim"), f"{where}.normalization", NORMALIZATIONS),
        )
        configs.append(config)
    if not isinstance(rules_raw, list) or not 1 <= len(rules_raw) <= MAX_IDENTIFIER_CONFIGS:
        raise bad_request("matchingRules must be a list of 1 to 15 identifier types.")
    known = {c.id_type for c in configs}
    rules: list[str] = []
    for i, rule in enumerate(rules_raw):
        string(rule, f"matchingRules[{i}]", max_len=30, min_len=2)
        if rule not in known:
            raise bad_request(
                f"matchingRules[{i}] {rule!r} is not a configured idType; compound rules are "
                "not supported."
            )
        rules.append(rule)
    return configs, rules


def _enum(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise bad_request(f"{where} must be one of {', '.join(allowed)}.")
    return str(value)


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{where} must be a boolean.")
    return value


def trait_value(group: str, trait: str, definition: TraitDef, value: Any) -> None:
    """Raise a 400 when ``value`` does not fit the trait's dataType or validation rule."""
    where = f"{group}.{trait}"
    kind = definition.data_type
    rule = definition.rule
    if kind == "STRING":
        if not isinstance(value, str):
            raise bad_request(f"{where}: expected a STRING, got {_json_type(value)}.")
        if len(value) > MAX_STRING:
            raise bad_request(f"{where}: strings hold at most {MAX_STRING} characters.")
        if rule is not None:
            if definition.pattern is not None and not definition.pattern.search(value):
                raise bad_request(f"{where}: {value!r} does not match pattern {rule['pattern']}.")
            _bounds(where, "length", len(value), rule.get("minLength"), rule.get("maxLength"))
    elif kind == "NUMBER":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"{where}: expected a NUMBER, got {_json_type(value)}.")
        _exact(where, value)
        if rule is not None:
            _bounds(where, "value", value, rule.get("min"), rule.get("max"))
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad_request(f"{where}: expected a BOOLEAN, got {_json_type(value)}.")
    else:  # ARRAY
        if not isinstance(value, list):
            raise bad_request(f"{where}: expected an ARRAY, got {_json_type(value)}.")
        if len(value) > MAX_ARRAY:
            raise bad_request(f"{where}: arrays hold at most {MAX_ARRAY} items.")
        for item in value:
            if isinstance(item, list):
                raise bad_request(f"{where}: nested arrays are not allowed.")
            if not isinstance(item, str | int | float):  # bool is an int
                raise bad_request(f"{where}: array items must be strings, numbers or booleans.")
            if isinstance(item, int | float) and not isinstance(item, bool):
                _exact(where, item)
        if rule is not None:
            _bounds(where, "item count", len(value), rule.get("minItems"), rule.get("maxItems"))


def _exact(where: str, value: float) -> None:
    """A JSON number the service stores as it was sent: finite (Python's json reads NaN,
    Infinity and overflowing literals like 1e400 as non-finite floats) and, when whole, within
    2^53, where a double stops holding every integer (Twilio's published limits page states a
    narrower integer range still; memory-api.md states none)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"{where}: numbers must be finite.")
    if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
        raise bad_request(f"{where}: {value} is beyond the integers a NUMBER holds exactly.")


def _bounds(where: str, what: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise bad_request(f"{where}: {what} {value} is below the minimum {lo}.")
    if hi is not None and value > hi:
        raise bad_request(f"{where}: {what} {value} is above the maximum {hi}.")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
