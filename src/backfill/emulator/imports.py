"""CSV imports: register a file, upload it to a URL the emulator serves, process it in background.

``POST /Profiles/Imports`` registers ``{filename, fileSize, columnMappings}`` and answers an upload
URL on the emulator's own port (``/__uploads__/<token>``: no Twilio auth, an unguessable token
that expires). The accepted upload moves the import ``PENDING -> PROCESSING``; a background task
then applies each CSV row as one identifier-keyed upsert, exactly as ``PUT /Profiles/Bulk`` does
for one profile, and ends ``COMPLETED`` (bad rows counted in ``summary.errors``) or ``FAILED``
(not a CSV, or no mapped column in its header).

Cells are text; a cell becomes its trait's dataType: NUMBER from a decimal number, BOOLEAN from
``true``/``false`` (any case), ARRAY from a JSON array (``["a","b"]``), STRING as written. A
blank cell writes nothing and is a warning, as are header columns no mapping names and mapped
columns the header lacks. Row numbers count data records: row 1 is the first after the header.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from backfill.emulator import schema
from backfill.emulator.apierror import ApiError, bad_request, not_found
from backfill.emulator.state import Account, Store, iso

IMPORT_ID = re.compile(r"^mem_import_[0-7][0-9a-z]{25}$")
MAX_FILE_SIZE = 100 * 1024 * 1024
MIN_MAPPINGS, MAX_MAPPINGS = 2, 100
MAX_DETAILS = 20  # examples kept in summary.details; the counts are always complete
CHUNK_ROWS = 500  # rows applied between yields to the event loop (and storage commits)
UPLOADS = "/__uploads__/"
STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "FAILED")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass
class Mapping:
    column: str
    group: str
    trait: str

    def to_json(self) -> dict[str, str]:
        return {"columnName": self.column, "traitGroup": self.group, "traitName": self.trait}


@dataclass
class ImportJob:
    """One registered import; ``token`` and ``expires_at`` guard its single upload."""

    id: str
    store_id: str
    filename: str
    file_size: int
    mappings: list[Mapping]
    created_at: float
    token: str
    expires_at: float
    status: str = "PENDING"
    updated_at: float = 0.0
    rows: int = 0
    errors: int = 0
    warnings: int = 0
    details: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "errors": self.errors,
            "warnings": self.warnings,
            "rows": self.rows,
            "details": list(self.details),
        }
        if self.failure is not None:
            summary["failure"] = self.failure
        return {
            "importId": self.id,
            "status": self.status,
            "filename": self.filename,
            "fileSize": self.file_size,
            "columnMappings": [m.to_json() for m in self.mappings],
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at or self.created_at),
            "summary": summary,
        }

    def to_doc(self) -> dict[str, Any]:
        """What storage keeps (everything but the uploaded bytes)."""
        return {
            "id": self.id,
            "storeId": self.store_id,
            "filename": self.filename,
            "fileSize": self.file_size,
            "mappings": [m.to_json() for m in self.mappings],
            "createdAt": self.created_at,
            "token": self.token,
            "expiresAt": self.expires_at,
            "status": self.status,
            "updatedAt": self.updated_at,
            "rows": self.rows,
            "errors": self.errors,
            "warnings": self.warnings,
            "details": self.details,
            "failure": self.failure,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> ImportJob:
        mappings = [Mapping(m["columnName"], m["traitGroup"], m["traitName"])
                    for m in d["mappings"]]  # fmt: skip
        job = cls(d["id"], d["storeId"], d["filename"], d["fileSize"], mappings, d["createdAt"],
                  d["token"], d["expiresAt"], d["status"], d["updatedAt"], d["rows"], d["errors"],
                  d["warnings"], d["details"], d["failure"])  # fmt: skip
        if job.status == "PROCESSING":  # the uploaded bytes lived in memory only
            job.status = "FAILED"
            job.failure = "The emulator restarted while this import was processing."
        return job

    def note(self, level: str, row: int, message: str) -> None:
        """Count an error or warning; keep the first few as examples."""
        if level == "error":
            self.errors += 1
        else:
            self.warnings += 1
        if len(self.details) < MAX_DETAILS:
            self.details.append({"row": row, "level": level, "message": message})


# ------------------------------------------------------------------------------ registration


def register(account: Account, store: Store, body: Any, ttl: float) -> ImportJob:
    """Validate a create body like the rest of the API (a 400 names the field) and keep it."""
    data = schema.obj(body, "request body", {"filename", "fileSize", "columnMappings"},
                      ("filename", "fileSize", "columnMappings"))  # fmt: skip
    filename = schema.string(data["filename"], "filename", max_len=255, min_len=1)
    size = schema.integer(data["fileSize"], "fileSize", lo=1, hi=MAX_FILE_SIZE)
    raw = data["columnMappings"]
    if not isinstance(raw, list) or not MIN_MAPPINGS <= len(raw) <= MAX_MAPPINGS:
        raise bad_request(
            f"columnMappings must be a list of {MIN_MAPPINGS} to {MAX_MAPPINGS} mappings."
        )
    mappings: list[Mapping] = []
    columns: set[str] = set()
    targets: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        where = f"columnMappings[{i}]"
        m = schema.obj(item, where, {"columnName", "traitGroup", "traitName"},
                       ("columnName", "traitGroup", "traitName"))  # fmt: skip
        column = schema.string(m["columnName"], f"{where}.columnName", max_len=255, min_len=1)
        group = schema.string(m["traitGroup"], f"{where}.traitGroup", max_len=64, min_len=1)
        trait = schema.string(m["traitName"], f"{where}.traitName", max_len=64, min_len=1)
        if group not in store.groups:
            raise bad_request(f"{where}.traitGroup: unknown trait group {group!r}.")
        if trait not in store.groups[group].traits:
            raise bad_request(f"{where}.traitName: unknown trait {trait!r} in {group!r}.")
        if column in columns:
            raise bad_request(f"{where}.columnName: column {column!r} is mapped twice.")
        if (group, trait) in targets:
            raise bad_request(f"{where}: {group}.{trait} is the target of two columns.")
        columns.add(column)
        targets.add((group, trait))
        mappings.append(Mapping(column, group, trait))
    now = account.clock()
    job = ImportJob(account.minter.mint("mem_import"), store.id, filename, size, mappings, now,
                    secrets.token_urlsafe(32), now + ttl, updated_at=now)  # fmt: skip
    account.imports[job.id] = job
    account.dirty.add(("import", job.id))
    return job


def find(account: Account, store: Store, import_id: str) -> ImportJob:
    if not IMPORT_ID.match(import_id):
        raise bad_request(f"Invalid import ID {import_id!r}.")
    job = account.imports.get(import_id)
    if job is None or job.store_id != store.id:
        raise not_found(f"Import {import_id} not found in store {store.id}.")
    return job


def ids(account: Account, store: Store) -> list[str]:
    """The store's import IDs, oldest first (IDs grow with time)."""
    return sorted(i for i, job in account.imports.items() if job.store_id == store.id)


def accept_upload(account: Account, token: str, content_length: int | None) -> ImportJob:
    """The checks an upload passes before its bytes are read: known, unused, unexpired, sized."""
    job = next((j for j in account.imports.values() if secrets.compare_digest(j.token, token)),
               None)  # fmt: skip
    if job is None:
        raise ApiError(404, "No upload URL with this token.")
    if job.status != "PENDING":
        raise ApiError(409, f"Import {job.id} has already received its file.")
    if account.clock() >= job.expires_at:
        raise ApiError(403, f"This upload URL expired at {iso(job.expires_at)}; register the "
                            "file again for a new one.")  # fmt: skip
    if content_length is not None and content_length != job.file_size:
        raise _size_mismatch(job, content_length)
    return job


def _size_mismatch(job: ImportJob, got: int) -> ApiError:
    return bad_request(f"The upload is {got} bytes; import {job.id} registered fileSize "
                       f"{job.file_size}.")  # fmt: skip


def received(account: Account, job: ImportJob, data: bytes) -> None:
    """Take the file: after this a second upload is a 409 and processing may start."""
    if len(data) != job.file_size:
        raise _size_mismatch(job, len(data))
    job.status = "PROCESSING"
    job.updated_at = account.clock()
    account.dirty.add(("import", job.id))


# -------------------------------------------------------------------------------- processing


class _Failed(Exception):
    """The file as a whole cannot be imported."""


async def process(
    account: Account,
    job: ImportJob,
    data: bytes,
    delay: float,
    commit: Callable[[], Awaitable[None]],
) -> None:
    """Apply the file row by row, yielding to the event loop every ``CHUNK_ROWS`` rows."""
    if delay:
        await asyncio.sleep(delay)
    try:
        store = account.stores.get(job.store_id)
        if store is None:
            raise _Failed(f"Store {job.store_id} no longer exists.")
        await _apply(account, store, job, _reader(data))
        job.status = "COMPLETED"
    except _Failed as exc:
        job.status = "FAILED"
        job.failure = str(exc)
    except Exception as exc:  # a bug must not leave the import PROCESSING forever
        job.status = "FAILED"
        job.failure = f"Emulator bug: {type(exc).__name__}: {exc}"
    job.updated_at = account.clock()
    account.dirty.add(("import", job.id))
    await commit()  # in line with the requests' writes (Emulator.commit_async)


def _reader(data: bytes) -> Any:
    """A CSV reader decoding as it goes: a 100 MiB file is not held again as one ``str``."""
    try:
        data.decode("utf-8-sig")  # validate up front so a bad file applies no row at all
    except UnicodeDecodeError as exc:
        raise _Failed(f"The file is not UTF-8 text (byte {exc.start}); not a CSV file.") from None
    if b"\x00" in data:
        raise _Failed("The file holds NUL bytes; not a CSV file.")
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    return csv.reader(text, strict=True)


async def _apply(account: Account, store: Store, job: ImportJob, reader: Any) -> None:
    try:
        header: list[str] = next(reader)
    except StopIteration:
        raise _Failed("The file has no header line.") from None
    except csv.Error as exc:
        raise _Failed(f"The header line is not CSV: {exc}.") from None
    position = {name: i for i, name in enumerate(header)}
    wanted = [(position[m.column], m) for m in job.mappings if m.column in position]
    if not wanted:
        raise _Failed("No column of the header is named in columnMappings.")
    mapped = {m.column for m in job.mappings}
    for name in header:
        if name not in mapped:
            job.note("warning", 0, f"Column {name!r} is not mapped; its cells are ignored.")
    for m in job.mappings:
        if m.column not in position:
            job.note("warning", 0, f"Mapped column {m.column!r} is not in the header.")
    row = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            row += 1
            job.note("error", row, f"Not a CSV record: {exc}.")
            continue
        if not cells:
            continue  # a blank line holds no record
        row += 1
        _apply_row(account, store, job, row, len(header), wanted, cells)
        if row % CHUNK_ROWS == 0:
            job.rows = row
            account.dirty.add(("import", job.id))
            await asyncio.sleep(0)
    job.rows = row


def _apply_row(
    account: Account,
    store: Store,
    job: ImportJob,
    row: int,
    width: int,
    wanted: list[tuple[int, Mapping]],
    cells: list[str],
) -> None:
    if len(cells) > width:
        job.note("error", row, f"The record has {len(cells)} cells; the header names {width} "
                               "columns.")  # fmt: skip
        return
    traits: dict[str, dict[str, Any]] = {}
    for index, m in wanted:
        cell = cells[index] if index < len(cells) else ""
        if cell == "":
            job.note("warning", row, f"Column {m.column!r} is blank; nothing written to it.")
            continue
        try:
            value = _typed(store, m, cell)
        except ValueError as exc:
            job.note("error", row, f"Column {m.column!r}: {exc}")
            return
        traits.setdefault(m.group, {})[m.trait] = value
    try:
        checked, promoted = account.check_traits(store, traits)
    except ApiError as exc:
        job.note("error", row, exc.message)
        return
    if not promoted:
        job.note("error", row, "No cell holds a trait promoted to an identifier.")
        return
    account._upsert(store, checked, promoted)


def _typed(store: Store, m: Mapping, cell: str) -> Any:
    """A cell's text as its trait's dataType; ValueError says why it cannot be."""
    group = store.groups.get(m.group)
    definition = group.traits.get(m.trait) if group is not None else None
    kind = definition.data_type if definition is not None else "STRING"
    if kind == "NUMBER":
        text = cell.strip()
        if not _NUMBER.match(text):
            raise ValueError(f"{cell!r} is not a NUMBER.")
        return int(text) if _INTEGER.match(text) else float(text)
    if kind == "BOOLEAN":
        lowered = cell.strip().lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"{cell!r} is not a BOOLEAN (true or false).")
        return lowered == "true"
    if kind == "ARRAY":
        try:
            value = json.loads(cell)
        except ValueError:
            value = None
        if not isinstance(value, list):
            raise ValueError(f'{cell!r} is not an ARRAY (a JSON array such as ["a","b"]).')
        return value
    return cell
