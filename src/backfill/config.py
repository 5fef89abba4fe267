"""The job file: one TOML document, read and checked completely before anything is read or sent.

``load_job(path)`` is the stage's one entry. Every problem is a ``ConfigError`` naming the file,
the key (``traits.Loyalty.points.type``) and what is wrong, so a cron job fails at once with a
message a person can act on. Unknown keys are errors too: a typo must not silently do nothing.
"""

from __future__ import annotations

import codecs
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from backfill.errors import ConfigError
from backfill.files import EMULATOR_STATE, RUN_FILE
from backfill.plan.normalize import NORMALIZATIONS
from backfill.transport.throttle import default_burst

STORE_ID = re.compile(r"^mem_(store|service)_[0-7][0-9a-z]{25}$")
GROUP_NAME = re.compile(r"^[a-zA-Z0-9_\-\.]{1,64}$")
TRAIT_NAME = re.compile(r"^[a-z][a-zA-Z0-9_\-\.]{0,63}$")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-\.]{0,99}$")
DATA_TYPES = ("STRING", "NUMBER", "BOOLEAN", "ARRAY")
EMULATOR = "emulator"

DataType = Literal["STRING", "NUMBER", "BOOLEAN", "ARRAY"]
Nulls = Literal["skip", "delete"]


Kind = Literal["memory", "segment"]
KINDS: Final = ("memory", "segment")
Region = Literal["us", "eu"]
# Segment's documented hosts per region (../shared/segment-api.md, sections 1 and 2).
TRACKING_HOSTS: Final = {"us": "https://api.segment.io", "eu": "https://events.eu1.segmentapis.com"}
PROFILES_HOSTS: Final = {"us": "https://profiles.segment.com",
                         "eu": "https://profiles.euw1.segment.com"}  # fmt: skip
SPACE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True)
class Connection:
    """Where the job writes. ``memory``: a Conversation Memory store at ``base_url``.
    ``segment``: a Unify space (Unified Profiles), written through the Tracking API at
    ``base_url`` (the tracking URL) and read through the Profile API at ``profiles_url``."""

    base_url: str  # "emulator" or an https URL; for segment, the tracking URL
    store_id: str  # memory: the store; segment: "" (see ``destination``)
    seed: Path | None = None  # emulator only
    kind: Kind = "memory"
    space_id: str = ""
    region: Region = "us"
    profiles_url: str = ""
    profiles_rate: float = 100.0  # Profile API requests/s: its own limit (100 a space)

    @property
    def embedded(self) -> bool:
        return self.base_url == EMULATOR

    @property
    def segment(self) -> bool:
        return self.kind == "segment"

    @property
    def destination(self) -> str:
        """What names the place written to, in the incremental state and caches: the store, or
        the space (``segment:<space id>``, never equal to a store ID)."""
        return f"segment:{self.space_id}" if self.segment else self.store_id


@dataclass(frozen=True)
class Source:
    paths: tuple[str, ...]  # files or globs, as written
    order_by: str | None = None
    nulls: Nulls = "skip"
    delimiter: str = ","
    batch_rows: int = 100_000
    encoding: str = "utf-8"  # CSV only; Python's codec name (codecs.lookup(...).name)


@dataclass(frozen=True)
class Identifier:
    column: str
    id_type: str
    normalization: str
    default_region: str = "US"
    # Segment: how many values of this type one profile may hold (the space's identifier
    # limit). Rows that would give a person more are reported, not sent blind.
    limit: int | None = None


# Segment's default identifier limits: user_id 1, every other type 5 (segment-api.md, 3).
SEGMENT_LIMITS: Final = {"user_id": 1}
SEGMENT_DEFAULT_LIMIT: Final = 5
# Segment identifier types an identify event carries in fields of its own; every other type
# goes in context.externalIds (and email in traits.email too).
SEGMENT_FIELDS: Final = {"user_id": "userId", "anonymous_id": "anonymousId"}
SEGMENT_ID_TYPE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
# What Segment's blocked-value guidance lists for every identifier (segment-api.md, 3):
# values made of only 0s and dashes, and these exact values. Never promoted to identifiers.
SEGMENT_BLOCKED: Final = ("-1", "null", "anonymous")
SEGMENT_BLOCKED_PATTERN: Final = r"^[0-]*$"


NO_PROFILE_TTL = 3600.0


@dataclass(frozen=True)
class Identity:
    identifiers: tuple[Identifier, ...] = ()
    profile_id_column: str | None = None
    identity_map: Path | None = None
    lookup: bool = True
    on_unresolved: Literal["report", "create"] = "report"
    on_ambiguous: Literal["report", "first"] = "report"
    # Seconds a plan reuses a cached Lookup answer (0: never); "no profile" answers at most
    # NO_PROFILE_TTL of them (see ``no_profile_ttl``).
    lookup_ttl: float = 24 * 3600.0
    # Segment: values the space blocks beyond SEGMENT_BLOCKED (exact, compared as sent).
    blocked_values: tuple[str, ...] = ()

    @property
    def no_profile_ttl(self) -> float:
        """How long a "no profile" answer is reused: the person may be created in Memory at any
        time (by live traffic), and a stale "no profile" loses their rows, while a stale "this
        profile" is still the person (a merge answers 308 with the canonical one). An hour keeps
        a plan and its run, or a run and its reconcile, from asking twice, and a nightly job
        asks again every night."""
        return min(self.lookup_ttl, NO_PROFILE_TTL)


@dataclass(frozen=True)
class TraitMapping:
    group: str  # "" for Segment, whose traits are flat
    trait: str
    column: str
    type: DataType = "STRING"
    split: str | None = None  # ARRAY: the separator inside one cell
    nulls: Nulls = "skip"  # what a blank cell means: leave the trait alone, or delete it

    @property
    def name(self) -> str:
        """``Group.trait`` as messages name it (Segment's flat traits: ``trait``)."""
        return dotted(self.group, self.trait)


def dotted(group: str | None, trait: str) -> str:
    return f"{group}.{trait}" if group else trait


MODES: Final = ("patch", "bulk", "import")
# A Segment job's one way of writing (Tracking API batches of identify events): set by
# ``connection.kind``, never by ``send.mode``.
IDENTIFY: Final = "identify"
Mode = Literal["patch", "bulk", "import", "identify"]
VERIFY: Final = ("sample", "all", "none")
Verify = Literal["sample", "all", "none"]
MAX_IMPORT_COLUMNS: Final = 100  # Memory API: columnMappings of one import, 2..100


@dataclass(frozen=True)
class Send:
    concurrency: int = 16
    rate: float = 50.0
    burst: int | None = None  # default: a tenth of a second's worth, at least 1
    max_attempts: int = 6
    adaptive: bool = True
    timeout: float = 30.0
    mode: Mode = "patch"
    verify: Verify = "sample"

    @property
    def store_resolves(self) -> bool:
        """Bulk and import send identifiers and let the store find (or make) the profile."""
        return self.mode != "patch"

    @property
    def effective_burst(self) -> int:
        return self.burst if self.burst is not None else default_burst(self.rate)


@dataclass(frozen=True)
class Incremental:
    """What a nightly job remembers between runs: each landed unit's content hash."""

    state: Path  # SQLite file, kept across runs (unlike the output folder's run.sqlite)


NOTIFY_ON: Final = ("failure", "success", "always")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Notify:
    """Where to say how a command ended. The job file names only the environment variable:
    a webhook URL is a credential (Slack's carry their token in the path)."""

    webhook_env: str
    on: tuple[str, ...] = ("failure",)


@dataclass(frozen=True)
class Metrics:
    """The node_exporter textfile the command's figures go to."""

    textfile: Path


@dataclass(frozen=True)
class Job:
    path: Path
    name: str
    connection: Connection
    source: Source
    identity: Identity
    traits: tuple[TraitMapping, ...]
    send: Send = field(default_factory=Send)
    output_dir: Path = Path("out")
    incremental: Incremental | None = None
    notify: Notify | None = None
    metrics: Metrics | None = None

    @property
    def columns(self) -> list[str]:
        """Every source column the job reads, each once, in a stable order."""
        wanted: list[str] = []
        if self.identity.profile_id_column:
            wanted.append(self.identity.profile_id_column)
        wanted += [i.column for i in self.identity.identifiers]
        if self.source.order_by:
            wanted.append(self.source.order_by)
        wanted += [t.column for t in self.traits]
        return list(dict.fromkeys(wanted))


class _Reader:
    """Walks one TOML table, remembering the key path for messages and refusing unknown keys."""

    def __init__(self, file: Path, table: dict[str, Any], where: str) -> None:
        self.file = file
        self.table = table
        self.where = where

    def error(self, key: str, message: str) -> ConfigError:
        name = f"{self.where}.{key}" if self.where else key
        return ConfigError(f"{self.file}: {name}: {message}")

    def only(self, *allowed: str) -> None:
        for key in self.table:
            if key not in allowed:
                hint = f" (known keys: {', '.join(allowed)})" if allowed else ""
                raise self.error(key, f"unknown key{hint}")

    def sub(self, key: str, required: bool = False) -> _Reader:
        value = self.table.get(key, None)
        if value is None:
            if required:
                raise self.error(key, "is required")
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return _Reader(self.file, value, f"{self.where}.{key}" if self.where else key)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.table.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value

    def req(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in options:
            raise self.error(key, f"must be one of {', '.join(options)} (got {value!r})")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def number(self, key: str, default: float, *, lo: float, integer: bool = False) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, "must be a number")
        if integer and not isinstance(value, int):
            raise self.error(key, "must be a whole number")
        if value < lo:
            raise self.error(key, f"must be at least {lo:g} (got {value})")
        return value


def load_job(path: Path | str) -> Job:
    """Read and check a job file; raise ConfigError naming the key on the first problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    top = _Reader(path, raw, "")
    top.only("name", "connection", "source", "identity", "traits", "send", "output", "incremental",
             "notify", "metrics")  # fmt: skip
    name = top.req("name")
    if not JOB_NAME.match(name):
        raise top.error("name", "use letters, digits, '-', '_' or '.' (it names the output folder)")
    connection = _connection(top.sub("connection", required=True))
    source = _source(top.sub("source", required=True))
    identity = _identity(top.sub("identity"), connection.segment)
    if connection.segment:
        traits = _flat_traits(top.sub("traits", required=True), source.nulls, identity)
    else:
        traits = _traits(top.sub("traits", required=True), source.nulls)
    send = _send(top.sub("send"), connection.segment)
    output = top.sub("output")
    output.only("dir")
    out_dir = Path(output.string("dir") or f"out/{name}")
    incremental = _incremental(top.sub("incremental"), out_dir) if "incremental" in raw else None
    notify = _notify(top.sub("notify")) if "notify" in raw else None
    metrics = _metrics(top.sub("metrics")) if "metrics" in raw else None

    if identity.profile_id_column is None and not identity.identifiers:
        raise top.error(
            "identity", "set profile_id_column or at least one [[identity.identifiers]]"
        )
    if connection.segment:
        _check_segment(top, raw)
    elif send.store_resolves:
        _check_store_resolves(top, raw, identity, traits, send.mode)
    elif identity.on_unresolved == "create":
        # A create is keyed on the person's first identifier: the profile it makes must carry
        # that identifier, both for the store to accept it (a create needs a promoted trait)
        # and for a create whose answer was lost to be found by Lookup instead of being sent
        # twice.
        _identifiers_written(top, identity, traits, "identity.on_unresolved", '"create"')
    return Job(path, name, connection, source, identity, traits, send, out_dir, incremental,
               notify, metrics)  # fmt: skip


def _check_store_resolves(
    top: _Reader,
    raw: dict[str, Any],
    identity: Identity,
    traits: tuple[TraitMapping, ...],
    mode: str,
) -> None:
    """What bulk and import need: the store resolves identity from promoted traits in the
    body, so every row must carry its identifiers as traits; nothing can address a profile ID;
    and nothing documents a delete through them (Memory's facts give ``null`` removes a trait
    under Patch semantics only; Create/bulk semantics say merge)."""
    where = f'send.mode = "{mode}"'
    if identity.profile_id_column is not None:
        raise top.error(
            "identity.profile_id_column",
            f"{where} cannot address profile IDs: the store finds each profile by its "
            'identifiers; use mode = "patch"',
        )
    if identity.identity_map is not None:
        raise top.error("identity.identity_map", f"{where} resolves identity in the store, not "
                        'through a map of profile IDs; use mode = "patch"')  # fmt: skip
    table = raw.get("identity", {}) if isinstance(raw.get("identity"), dict) else {}
    if table.get("on_unresolved") == "report":
        raise top.error(
            "identity.on_unresolved",
            f"{where}: the store creates every person it cannot match; remove the key, or use "
            'mode = "patch" to report them',
        )
    if table.get("on_ambiguous") == "report":
        raise top.error("identity.on_ambiguous", f"{where}: the store merges the profiles an "
                        'identifier matches; remove the key, or use mode = "patch"')  # fmt: skip
    _identifiers_written(top, identity, traits, "send.mode", where)
    source = raw.get("source", {}) if isinstance(raw.get("source"), dict) else {}
    if source.get("nulls") == "delete":
        raise top.error("source.nulls", '"delete" needs mode = "patch": the Memory API documents '
                        "removing a trait by null only for PATCH; bulk and import merge what "
                        "they are sent")  # fmt: skip
    for mapping in traits:
        if mapping.nulls == "delete":
            raise top.error(
                f"traits.{mapping.name}",
                'nulls = "delete" needs mode = "patch": the Memory API documents removing a '
                "trait by null only for PATCH; bulk and import merge what they are sent",
            )
    if mode == "import" and not 2 <= len(traits) <= MAX_IMPORT_COLUMNS:
        raise top.error(
            "traits",
            f"{where} writes one CSV column per trait, and an import takes 2 to "
            f"{MAX_IMPORT_COLUMNS} columns; this job maps {len(traits)}",
        )


def _identifiers_written(
    top: _Reader, identity: Identity, traits: tuple[TraitMapping, ...], key: str, what: str
) -> None:
    """Refuse, naming ``key``, a job whose identifier columns are not all written as traits:
    what creates and store-resolved bodies need, since the store finds people by them."""
    written = {t.column for t in traits}
    for identifier in identity.identifiers:
        if identifier.column not in written:
            raise top.error(
                key,
                f"{what} needs every identifier written as a trait the store promotes: map "
                f"column {identifier.column!r} (id_type {identifier.id_type}), e.g. "
                f'[traits.Contact] {_camel(identifier.id_type)} = "{identifier.column}"',
            )


def _camel(name: str) -> str:
    """A lowerCamelCase trait name for an id_type (for the hint in a message)."""
    head, *rest = re.split(r"[^A-Za-z0-9]+", name) or [name]
    return head[:1].lower() + head[1:] + "".join(w[:1].upper() + w[1:] for w in rest)


def _check_segment(top: _Reader, raw: dict[str, Any]) -> None:
    """What a Segment job cannot say: Segment resolves identity from the identifiers each event
    carries, so nothing addresses a profile directly, and every person it cannot match it
    creates (as bulk and import into Memory)."""
    table = raw.get("identity", {}) if isinstance(raw.get("identity"), dict) else {}
    why = {
        "profile_id_column": "Segment finds each profile by the identifiers an event carries; "
        "there are no profile IDs to address",
        "identity_map": "Segment resolves identity itself, not through a map of profile IDs",
        "lookup": "a Segment job looks nothing up before sending: Segment resolves identity",
        "lookup_ttl": "a Segment job looks nothing up before sending: Segment resolves identity",
        "on_unresolved": "Segment creates every person it cannot match; remove the key",
        "on_ambiguous": "Segment merges the profiles an event's identifiers match, within the "
        "identifier limits; remove the key",
    }
    for key, message in why.items():
        if key in table:
            raise top.error(f"identity.{key}", f'connection.kind = "segment": {message}')


def _connection(r: _Reader) -> Connection:
    kind = r.choice("kind", KINDS, "memory")
    if kind == "segment":
        return _segment_connection(r)
    r.only("kind", "base_url", "store_id", "seed")
    base_url = r.req("base_url").rstrip("/")
    if base_url != EMULATOR and not (
        base_url.startswith("https://") or _is_loopback_http(base_url)
    ):
        raise r.error("base_url", "must be 'emulator' or an https:// URL (TLS stays on)")
    store_id = r.req("store_id")
    if not STORE_ID.match(store_id):
        raise r.error("store_id", f"{store_id!r} does not look like mem_store_<26 characters>")
    seed = r.string("seed")
    if seed is not None and base_url != EMULATOR:
        raise r.error("seed", "only applies when base_url = 'emulator'")
    return Connection(base_url, store_id, Path(seed) if seed else None)


def _segment_connection(r: _Reader) -> Connection:
    r.only("kind", "space_id", "region", "tracking_url", "profiles_url", "profiles_rate", "seed")
    space_id = r.req("space_id")
    if not SPACE_ID.match(space_id):
        raise r.error("space_id", f"{space_id!r} does not look like a Unify space ID "
                      "(Unify settings > API access shows it)")  # fmt: skip
    region = r.choice("region", ("us", "eu"), "us")
    tracking = _url(r, "tracking_url", TRACKING_HOSTS[region])
    profiles = _url(r, "profiles_url", PROFILES_HOSTS[region])
    if (tracking == EMULATOR) != (profiles == EMULATOR):
        which = "tracking_url" if tracking == EMULATOR else "profiles_url"
        raise r.error(which, "the embedded emulator serves both APIs: set tracking_url and "
                      'profiles_url both to "emulator", or neither')  # fmt: skip
    seed = r.string("seed")
    if seed is not None and tracking != EMULATOR:
        raise r.error("seed", "only applies when tracking_url = 'emulator'")
    rate = float(r.number("profiles_rate", 100.0, lo=0.001))
    return Connection(tracking, "", Path(seed) if seed else None, "segment", space_id,
                      region, profiles, rate)  # type: ignore[arg-type]  # fmt: skip


def _url(r: _Reader, key: str, default: str) -> str:
    url = (r.string(key, default) or default).rstrip("/")
    if url != EMULATOR and not (url.startswith("https://") or _is_loopback_http(url)):
        raise r.error(key, "must be 'emulator' or an https:// URL (TLS stays on)")
    return url


def _is_loopback_http(url: str) -> bool:
    """Plain http is allowed only to a local emulator started by hand."""
    return re.match(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$", url) is not None


def _source(r: _Reader) -> Source:
    r.only("paths", "order_by", "nulls", "delimiter", "batch_rows", "encoding")
    paths = r.table.get("paths")
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths:
        raise r.error("paths", "must be a non-empty list of files or globs")
    for p in paths:
        if not isinstance(p, str) or not p.strip():
            raise r.error("paths", "every entry must be a non-empty string")
        if not p.endswith((".csv", ".csv.gz", ".parquet")):
            raise r.error("paths", f"{p!r}: only .csv, .csv.gz and .parquet files are read")
    delimiter = r.table.get("delimiter", ",")  # not r.string: a tab is a delimiter too
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        raise r.error("delimiter", "must be a single character other than a quote or newline")
    batch = int(r.number("batch_rows", 100_000, lo=1_000, integer=True))
    nulls = r.choice("nulls", ("skip", "delete"), "skip")
    encoding = _encoding(r, r.string("encoding", "utf-8") or "utf-8")
    return Source(tuple(paths), r.string("order_by"), nulls, delimiter, batch, encoding)  # type: ignore[arg-type]


def _encoding(r: _Reader, name: str) -> str:
    """Any text codec Python knows, by its canonical name ("latin1" -> "iso8859-1"), so the
    reader compares one spelling; refused at load rather than at the first file."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise r.error("encoding", f"{name!r} is not an encoding Python knows") from None
    if not info._is_text_encoding:  # e.g. "base64": bytes to bytes, not text
        raise r.error("encoding", f"{name!r} is not a text encoding")
    return info.name


def _identity(r: _Reader, segment: bool = False) -> Identity:
    keys = ["profile_id_column", "identity_map", "lookup", "on_unresolved", "on_ambiguous",
            "identifiers", "lookup_ttl"]  # fmt: skip
    r.only(*keys, *(["blocked_values"] if segment else []))
    raw = r.table.get("identifiers", [])
    if not isinstance(raw, list):
        raise r.error("identifiers", "must be an array of tables ([[identity.identifiers]])")
    identifiers = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise r.error(f"identifiers[{i}]", "must be a table")
        ir = _Reader(r.file, item, f"{r.where}.identifiers[{i}]")
        ir.only("column", "id_type", "normalization", "default_region",
                *(["limit"] if segment else []))  # fmt: skip
        id_type = ir.req("id_type")
        if not 2 <= len(id_type) <= 30:
            raise ir.error("id_type", "must be 2 to 30 characters, as the store's idType")
        region = ir.string("default_region", "US")
        assert region is not None
        if not re.match(r"^[A-Z]{2}$", region):
            raise ir.error("default_region", "must be a two-letter region code such as US")
        if segment:
            identifiers.append(_segment_identifier(ir, id_type, region))
            continue
        identifiers.append(
            Identifier(
                ir.req("column"),
                id_type,
                ir.choice("normalization", NORMALIZATIONS, "trim"),
                region,
            )
        )
    seen = [i.id_type for i in identifiers]
    if len(seen) != len(set(seen)):
        raise r.error("identifiers", "each id_type may appear once (priority order is by position)")
    id_map = r.string("identity_map")
    if id_map is not None and not id_map.endswith((".csv", ".parquet")):
        raise r.error("identity_map", "must be a .csv or .parquet file")
    if segment:  # Segment resolves identity itself: nothing is looked up, every person sent
        if not identifiers:
            raise r.error("identifiers", 'connection.kind = "segment" needs at least one '
                          "[[identity.identifiers]]: Segment finds people by them")  # fmt: skip
        return Identity(tuple(identifiers), lookup=False, on_unresolved="create",
                        on_ambiguous="first", blocked_values=_blocked(r))  # fmt: skip
    return Identity(
        tuple(identifiers),
        r.string("profile_id_column"),
        Path(id_map) if id_map else None,
        r.boolean("lookup", True),
        r.choice("on_unresolved", ("report", "create"), "report"),  # type: ignore[arg-type]
        r.choice("on_ambiguous", ("report", "first"), "report"),  # type: ignore[arg-type]
        _duration(r, "lookup_ttl", 24 * 3600.0),
    )


# The normalization each Segment identifier type must have: Unified Profiles matches only
# E.164 phones, and the Profile API is queried with lower-case emails.
SEGMENT_NORMALIZATION: Final = {"phone": "phone", "email": "email"}


def _segment_identifier(ir: _Reader, id_type: str, region: str) -> Identifier:
    if not SEGMENT_ID_TYPE.match(id_type):
        raise ir.error("id_type", f"{id_type!r}: Segment identifier types are lower case "
                       "(user_id, anonymous_id, email, phone, or a custom type)")  # fmt: skip
    required = SEGMENT_NORMALIZATION.get(id_type)
    normalization = ir.choice("normalization", NORMALIZATIONS, required or "trim")
    if required is not None and normalization != required:
        why = ("Unified Profiles matches only E.164 phones" if required == "phone"
               else "the Profile API finds emails only in lower case")  # fmt: skip
        raise ir.error("normalization", f'id_type {id_type} needs "{required}": {why}')
    default = SEGMENT_LIMITS.get(id_type, SEGMENT_DEFAULT_LIMIT)
    limit = int(ir.number("limit", default, lo=1, integer=True))
    return Identifier(ir.req("column"), id_type, normalization, region, limit)


def _blocked(r: _Reader) -> tuple[str, ...]:
    raw = r.table.get("blocked_values", [])
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise r.error("blocked_values", "must be a list of non-empty strings (values the "
                      "space blocks as identifiers, e.g. [\"void\", \"abc123\"])")  # fmt: skip
    return tuple(raw)


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(r: _Reader, key: str, default: float) -> float:
    """Seconds, from a number of seconds or a string such as "90s", "30m", "24h", "7d"."""
    value = r.table.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := DURATION.match(value)):
        seconds = float(match[1]) * DURATION_UNITS[match[2]]
    else:
        raise r.error(key, f'must be seconds or a duration such as "90s", "30m", "24h", "7d" '
                           f"(got {value!r})")  # fmt: skip
    if not 0 <= seconds < float("inf"):
        raise r.error(key, f"must be 0 (never reuse) or more (got {value!r})")
    return seconds


def _traits(r: _Reader, default_nulls: str) -> tuple[TraitMapping, ...]:
    mappings: list[TraitMapping] = []
    if not r.table:
        raise r.error("", 'map at least one trait: [traits.Group] trait = "column"')
    for group, table in r.table.items():
        if not GROUP_NAME.match(group):
            raise r.error(group, "trait group names are 1-64 of letters, digits, '_', '-', '.'")
        if not isinstance(table, dict) or not table:
            raise r.error(group, "must be a table of trait = column")
        gr = _Reader(r.file, table, f"{r.where}.{group}")
        for trait, spec in table.items():
            if not TRAIT_NAME.match(trait):
                raise gr.error(trait, "trait names are lowerCamelCase: start with a-z, then "
                               "letters, digits, '_', '-', '.' (at most 64)")  # fmt: skip
            mappings.append(_trait(gr, group, trait, spec, default_nulls))
    return tuple(mappings)


SEGMENT_TRAIT = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


def _flat_traits(r: _Reader, default_nulls: str, identity: Identity) -> tuple[TraitMapping, ...]:
    """Segment's traits are flat: ``[traits] name = "column"`` (or ``{ column = ..., type =
    ... }``), any key Segment takes. The email identifier is sent as the ``email`` trait
    (lower-cased), so a mapping of that name must read the same column."""
    if not r.table:
        raise r.error("", 'map at least one trait: [traits] name = "column"')
    emails = {i.column for i in identity.identifiers if i.id_type == "email"}
    mappings = []
    for trait, spec in r.table.items():
        if not SEGMENT_TRAIT.match(trait) or trait != trait.strip():
            raise r.error(trait, "trait names are 1-255 characters, no control characters and "
                          "no white space at either end")  # fmt: skip
        if isinstance(spec, dict) and "column" not in spec:
            raise r.error(trait, 'Segment traits are flat: write [traits] name = "column", '
                          "not groups of traits")  # fmt: skip
        mapping = _trait(r, "", trait, spec, default_nulls)
        if trait == "email" and emails and mapping.column not in emails:
            raise r.error(trait, f"the email identifier (column {sorted(emails)[0]!r}) is sent "
                          "as the email trait; map this column under another name")  # fmt: skip
        mappings.append(mapping)
    return tuple(mappings)


def _trait(gr: _Reader, group: str, trait: str, spec: Any, default_nulls: str) -> TraitMapping:
    if isinstance(spec, str):
        if not spec.strip():
            raise gr.error(trait, "the column name is empty")
        return TraitMapping(group, trait, spec, nulls=default_nulls)  # type: ignore[arg-type]
    if not isinstance(spec, dict):
        raise gr.error(trait, 'must be a column name or a table like { column = "..." }')
    tr = _Reader(gr.file, spec, f"{gr.where}.{trait}")
    tr.only("column", "type", "split", "nulls")
    kind = tr.choice("type", DATA_TYPES, "STRING")
    split = tr.string("split")
    if split is not None and kind != "ARRAY":
        raise tr.error("split", 'only applies to type = "ARRAY"')
    nulls = tr.choice("nulls", ("skip", "delete"), default_nulls)
    return TraitMapping(group, trait, tr.req("column"), kind, split, nulls)  # type: ignore[arg-type]


def _incremental(r: _Reader, out_dir: Path) -> Incremental:
    r.only("state")
    state = r.req("state")
    if not state.endswith((".sqlite", ".db")):
        raise r.error("state", "must name a SQLite file ending in .sqlite or .db")
    path = Path(state)
    if path.resolve() in {(out_dir / name).resolve() for name in (RUN_FILE, EMULATOR_STATE)}:
        raise r.error("state", f"{state} is one of the run's own files; name another file")
    return Incremental(path)


def _notify(r: _Reader) -> Notify:
    r.only("webhook_env", "on")
    name = r.req("webhook_env")
    if not ENV_NAME.match(name):
        # Never echo the value: a URL written here by mistake is a secret in a log.
        raise r.error("webhook_env", "must name an environment variable (letters, digits, "
                      "'_'), e.g. BACKFILL_WEBHOOK; the URL itself goes in the environment, "
                      "never in the job file")  # fmt: skip
    on = r.table.get("on", ["failure"])
    if not isinstance(on, list) or not on or not all(isinstance(v, str) for v in on):
        raise r.error("on", f"must be a non-empty list of {', '.join(NOTIFY_ON)}")
    for value in on:
        if value not in NOTIFY_ON:
            raise r.error("on", f"must hold only {', '.join(NOTIFY_ON)} (got {value!r})")
    return Notify(name, tuple(dict.fromkeys(on)))


def _metrics(r: _Reader) -> Metrics:
    r.only("textfile")
    textfile = r.req("textfile")
    if not textfile.endswith(".prom"):
        raise r.error("textfile", "must end in .prom (node_exporter's textfile collector reads "
                      "only those)")  # fmt: skip
    return Metrics(Path(textfile))


# Segment: the Tracking API's budget is 1,000 events/s a workspace (segment-api.md, 1), shared
# with live traffic; ``rate`` counts events there, and the throttle finds what is left.
SEGMENT_RATE: Final = 1000.0
SEGMENT_CONCURRENCY: Final = 8


def _send(r: _Reader, segment: bool = False) -> Send:
    r.only("concurrency", "rate", "burst", "max_attempts", "adaptive", "timeout", "mode", "verify")
    if segment and "mode" in r.table:
        raise r.error("mode", 'connection.kind = "segment" has one way of writing (batches of '
                      "identify events through the Tracking API); remove the key")  # fmt: skip
    burst = r.table.get("burst")
    if burst is not None:
        burst = int(r.number("burst", 1, lo=1, integer=True))
    concurrency = SEGMENT_CONCURRENCY if segment else 16
    return Send(
        concurrency=int(r.number("concurrency", concurrency, lo=1, integer=True)),
        rate=float(r.number("rate", SEGMENT_RATE if segment else 50.0, lo=0.001)),
        burst=burst,
        max_attempts=int(r.number("max_attempts", 6, lo=1, integer=True)),
        adaptive=r.boolean("adaptive", True),
        timeout=float(r.number("timeout", 30.0, lo=0.1)),
        mode=IDENTIFY if segment else r.choice("mode", MODES, "patch"),  # type: ignore[arg-type]
        verify=r.choice("verify", VERIFY, "sample"),  # type: ignore[arg-type]
    )
