"""``[send] mode = "import"``: each batch of profile bodies becomes one CSV file, imported with
``POST /v1/Stores/{storeId}/Profiles/Imports`` (register), a PUT of the bytes to the upload URL
it answers (no Twilio auth: a pre-signed URL), and ``GET .../Imports/{importId}`` until the
import is ``COMPLETED`` or ``FAILED``.

The CSV has one column per trait the job maps (``Group.trait``, identifiers included), in job
order; a trait a body does not carry is a blank cell, which the store leaves alone. Cells are
written as the store parses them: NUMBER as a decimal number, BOOLEAN as ``true``/``false``,
ARRAY as a JSON array, STRING as it is (an empty string is a blank cell). A body no cell can
carry (a NUL, which would fail the whole file) fails alone and is left out. Row ``i`` of a file
is the ``i``-th unit written to it, which is how the store's per-row errors come back to units.
Files live in ``<output>/imports/`` (owner-only), named by job, plan, batch and unit range.

An import runs for minutes and a run may be killed at any line, so every step is journaled in
the run file (``RunDB.note_batch``) before the next one starts, and a resumed batch (the same
units under the same ``Batch.id``) picks up where it stood:

- ``new``: nothing sent. The file is (re)written; if it is over the API's 100 MiB it is split
  in halves, recorded as parts of the batch, until every part fits;
- ``written``: about to register. If an earlier attempt may have registered (its answer lost,
  or a kill), the store's imports are listed and matched by file name first: an import that
  already received a file is adopted and polled; one still waiting for its file is abandoned
  (its upload URL was never learned, so nothing will ever apply it) and the file registered
  again;
- ``registered``: the import ID and upload URL are known; the file is uploaded. A 409 means an
  earlier upload got through (polled); a 403 (the URL expired) or 404 registers again;
- ``uploaded``: polled, with backoff; uploaded again only if the store still says PENDING
  (it never got the file), registered again if it no longer knows the import (404);
- ``finished``: the outcome is in the journal; the units' results are built from it.

``COMPLETED``: each unit ``imported``, except the rows ``summary.details`` names as errors,
whose units fail with the store's message. The store names at most 20 details (warnings
included): errors beyond those cannot be told apart, so their units stay ``imported`` and
``summary()`` counts them as ``unnamed_errors`` (the read-back verification finds them).
``FAILED``: every unit of the file fails with the store's reason.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx

from backfill.checkpoint import DONE, FAILED, Result, RunDB, Unit
from backfill.config import Job
from backfill.deliver.interface import Batch, Checkpoint, Limits, Run
from backfill.errors import BackfillError, StorageError
from backfill.files import private_dir, private_file
from backfill.plan.units import job_chunks
from backfill.transport.client import USER_AGENT, MemoryClient, Reply
from backfill.transport.throttle import Clock, SystemClock

IMPORTED: Final = "imported"
FAILED_OUTCOME: Final = "failed"
# Profiles per file. Each file costs a registration, an upload and a few polls, and a FAILED
# import fails all of its units at once: 100,000 keeps a 5M-row nightly extract to ~50 imports
# while one bad file never costs more than a small share of the run; at the few hundred bytes
# a profile takes in practice, such a file is 20-60 MiB, under the cap below.
UNITS_PER_FILE = 100_000
MAX_FILE_BYTES = 100 * 1024 * 1024  # Memory API: fileSize of one import, at most
# JSON bodies per file, at most (the loop's budget). A CSV row is usually smaller than its JSON
# body (no group or trait names), but an ARRAY cell doubles its quotes and a sparse row is all
# commas, so the file's real size is checked after writing and a file over MAX_FILE_BYTES split.
MAX_BODY_BYTES = 64 * 1024 * 1024
# Files being written, uploaded or processed at once, whatever send.concurrency says: each holds
# its units in memory (up to UNITS_PER_FILE bodies), and the store processes imports on its own
# time, so more in flight adds memory more than speed.
FILES_IN_FLIGHT: Final = 4
POLL_FIRST_S = 1.0  # seconds before the second GET of an import, doubling up to POLL_CAP_S
POLL_CAP_S = 30.0
POLL_FAILURES: Final = 10  # failed GETs in a row (each after the client's retries) = give up
LIST_PAGES: Final = 20  # pages of 100 imports read while looking for a lost registration
CLOCK_SKEW_S: Final = 600.0  # an import created this long before we registered is not ours
CHUNK_BYTES: Final = 1 << 20  # uploads are streamed from the file in pieces this large
# Answers after which an upload is tried again (with the client's backoff). An upload that
# landed but whose answer was lost is harmless to repeat: the store answers 409.
UPLOAD_RETRY: Final = frozenset({429, 500, 502, 503, 504})
FINAL: Final = ("COMPLETED", "FAILED")
NOT_IMPORTED: Final = "NOT_IMPORTED"  # summary status of a file no import took


def imports_path(store_id: str) -> str:
    return f"/v1/Stores/{quote(store_id, safe='')}/Profiles/Imports"


class _Unwritable(ValueError):
    """A body that no CSV cell can carry as the store would read it."""


def _cell(value: Any) -> str:
    """One value as the store parses its trait's dataType from text (emulator/imports.py)."""
    if isinstance(value, str):
        if "\x00" in value:  # a NUL fails the whole file ("not a CSV file")
            raise _Unwritable("a NUL character cannot travel in a CSV import")
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # shortest text that reads back as the same number
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if value is None:
        return ""
    raise _Unwritable(f"a {type(value).__name__} value cannot be a CSV cell")


@dataclass(frozen=True)
class Written:
    """What writing a file gave: its size, and the units left out of it (index -> why)."""

    size: int
    skipped: dict[int, str]


def write_csv(path: Path, columns: Sequence[tuple[str, str]], bodies: Sequence[str]) -> Written:
    """Write ``bodies`` as one CSV file at ``path`` (owner-only), a row at a time.

    A body that cannot be written (see ``_cell``) is left out and named in ``skipped``, so the
    store's row numbers still count the units that were written."""
    index = {column: j for j, column in enumerate(columns)}
    skipped: dict[int, str] = {}
    line = io.StringIO()
    # RFC 4180 line ends: the writer quotes a cell holding any character of its terminator,
    # and the store's reader ends a record at a bare "\r" as at "\n".
    writer = csv.writer(line, lineterminator="\r\n")
    try:
        private_file(path)
        with path.open("wb") as out:
            writer.writerow([f"{group}.{trait}" for group, trait in columns])
            out.write(line.getvalue().encode())
            for i, body in enumerate(bodies):
                line.seek(0)
                line.truncate()
                try:
                    cells = [""] * len(columns)
                    for group, traits in json.loads(body)["traits"].items():
                        for trait, value in traits.items():
                            j = index.get((group, trait))
                            if j is None:
                                raise _Unwritable(f"{group}.{trait} is not a column of the file")
                            cells[j] = _cell(value)
                    writer.writerow(cells)
                    out.write(line.getvalue().encode())
                except (_Unwritable, UnicodeEncodeError) as exc:
                    skipped[i] = f"not written to the import file: {exc}"
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    skipped[i] = f"not written to the import file: not a profile body ({exc!r})"
            size = out.tell()
    except OSError as exc:
        raise StorageError(f"cannot write the import file {path}: {exc}") from exc
    return Written(size, skipped)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk


def _created(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 ``createdAt`` (None when it is not one)."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


Part = dict[str, Any]  # one file of a batch, as journaled (see MemoryImport._new_part)


class MemoryImport:
    """The import delivery (see the module docstring)."""

    def __init__(
        self, job: Job, client: MemoryClient, run: Run, *, clock: Clock | None = None
    ) -> None:
        self.job = job
        self.client = client
        self.checkpoint: Checkpoint | None = run.checkpoint
        self.clock: Clock = clock if clock is not None else SystemClock()
        # A person is one unit unless the job needs several requests (chunks): then their
        # units must not be in two files in flight at once. The per-person locks cost ~88 MiB
        # a file in flight (BENCHMARKS.md, "Delivery: import mode, 1M profiles").
        one_chunk = len(job_chunks(job)) == 1
        self.limits = Limits(UNITS_PER_FILE, MAX_BODY_BYTES, in_flight=FILES_IN_FLIGHT,
                             per_target=not one_chunk)  # fmt: skip
        self.path = imports_path(job.connection.store_id)
        self.columns = [(t.group, t.trait) for t in job.traits]
        db = run.checkpoint.db.path if run.checkpoint is not None else None
        self.folder = (Path(db).parent if db is not None else job.output_dir) / "imports"
        self.run_id = ""  # names this run's files: the plan's id (see start)
        self.journals: dict[int, dict[str, Any]] = {}  # batch -> journal, for summary()
        self.rng = random.Random()

    # ----------------------------------------------------------------------- the interface

    async def start(self) -> None:
        if self.checkpoint is not None:
            self.run_id = await self.checkpoint.call(self.checkpoint.db.meta, "plan_id") or ""
            self.journals = await self.checkpoint.call(_journals, self.checkpoint.db)
        self.run_id = self.run_id or uuid.uuid4().hex  # reconcile --fix plans have no id

    async def send(self, batch: Batch) -> list[Result]:
        journal = await self._journal(batch)
        i = 0
        while i < len(journal["parts"]):  # a part split in two is replaced by its halves
            if await self._deliver(batch, journal, journal["parts"][i]):
                i += 1
        return [r for part in journal["parts"] for r in _results(batch.units, part)]

    def summary(self) -> dict[str, Any]:
        files = []
        for batch, journal in sorted(self.journals.items()):
            for part in journal["parts"]:
                files.append(
                    {
                        "batch": batch,
                        "import_id": part["import_id"],
                        "status": part["status"] or (NOT_IMPORTED if part["error"] else None),
                        "rows": part["rows"],
                        "errors": part["errors"],
                        "warnings": part["warnings"],
                        "unnamed_errors": part["unnamed_errors"],
                        "file": str(self.folder / part["name"]),
                        "abandoned_imports": part["abandoned"],
                        "error": part["error"]["message"] if part["error"] else None,
                    }
                )
        return {"mode": "import", "files": files}

    # ------------------------------------------------------------------------------ journal

    async def _journal(self, batch: Batch) -> dict[str, Any]:
        units = batch.units
        found: dict[str, Any] | None = None
        if self.checkpoint is not None:
            found = await self.checkpoint.call(self.checkpoint.db.batch_state, batch.id)
        if found is not None:
            if (found["units"], found["first"]) != (len(units), units[0].seq):
                raise BackfillError(
                    f"the run file's journal of import batch {batch.id} names "
                    f"{found['units']} units from #{found['first']}, but the batch holds "
                    f"{len(units)} from #{units[0].seq}; run with --restart"
                )
            self.journals[batch.id] = found
            return found
        journal: dict[str, Any] = {"units": len(units), "first": units[0].seq,
                                   "run": self.run_id, "parts": []}  # fmt: skip
        journal["parts"].append(self._new_part(batch.id, journal, 0, len(units)))
        await self._note(batch.id, journal)
        return journal

    def _new_part(self, batch: int, journal: dict[str, Any], start: int, end: int) -> Part:
        """A file of units ``start:end`` of the batch; its name is unique to the run, the
        batch and the range, so a registration whose answer was lost can be found by it."""
        name = f"{self.job.name}-{journal['run']}-b{batch:06d}-{start}-{end}.csv"
        return {
            "start": start,
            "end": end,
            "name": name,
            "step": "new",
            "size": None,
            "skipped": {},
            "registering_at": None,
            "registrations": 0,
            "uploads": 0,
            "import_id": None,
            "url": None,
            "abandoned": [],
            "status": None,
            "rows": None,
            "errors": None,
            "warnings": None,
            "details": [],
            "failure": None,
            "unnamed_errors": 0,
            "error": None,
        }

    async def _note(self, batch: int, journal: dict[str, Any]) -> None:
        """Make the journal durable before the step it records is acted on."""
        self.journals[batch] = journal
        if self.checkpoint is not None:
            await self.checkpoint.call(self.checkpoint.db.note_batch, batch, journal)

    # ----------------------------------------------------------------------------- the steps

    async def _deliver(self, batch: Batch, journal: dict[str, Any], part: Part) -> bool:
        """Take ``part`` to ``finished``; False when it was split instead (see ``send``)."""

        async def note() -> None:
            await self._note(batch.id, journal)

        while part["step"] != "finished":
            step = part["step"]
            if step in ("new", "written", "registered") and not self._file_ready(part):
                if not await self._write(batch, journal, part):
                    return False
            elif step == "written":
                await self._register(part, note)
            elif step == "registered":
                await self._upload(part)
            elif step == "uploaded":
                await self._poll(part)
            await note()
        return True

    def _file_ready(self, part: Part) -> bool:
        if part["step"] == "new":
            return False
        try:
            return bool((self.folder / part["name"]).stat().st_size == part["size"])
        except OSError:
            return False

    async def _write(self, batch: Batch, journal: dict[str, Any], part: Part) -> bool:
        """(Re)write the part's file; split it in two (journaled) when it is over the cap."""
        start, end = part["start"], part["end"]
        bodies = [unit.body for unit in batch.units[start:end]]
        path = private_dir(self.folder) / part["name"]
        written = await anyio.to_thread.run_sync(write_csv, path, self.columns, bodies)
        if written.size > MAX_FILE_BYTES and end - start > 1:
            path.unlink(missing_ok=True)
            middle = (start + end) // 2
            parts = journal["parts"]
            at = parts.index(part)
            parts[at : at + 1] = [
                self._new_part(batch.id, journal, start, middle),
                self._new_part(batch.id, journal, middle, end),
            ]
            await self._note(batch.id, journal)
            return False
        part["skipped"] = {str(i): why for i, why in written.skipped.items()}
        if written.size > MAX_FILE_BYTES:
            part["skipped"] = {"0": f"its CSV row alone is over the {MAX_FILE_BYTES}-byte cap of "
                                    "an import file"}  # fmt: skip
            part["step"] = "finished"
            return True
        if len(part["skipped"]) == end - start:
            part["step"] = "finished"  # nothing to import
            return True
        if part["step"] == "registered" and written.size != part["size"]:
            _abandon(part)  # registered for other bytes: register these
        part["size"] = written.size
        if part["step"] == "new":
            part["step"] = "written"
        return True

    async def _register(self, part: Part, note: Callable[[], Awaitable[None]]) -> None:
        if part["registrations"] >= self.client.retry.max_attempts:
            part["error"] = {"status": None, "code": None, "message": (
                f"gave up on {part['name']} after {part['registrations']} registrations whose "
                "upload URL could not be used")}  # fmt: skip
            part["step"] = "finished"
            return
        if part["registering_at"] is not None:  # registered before, answer never kept
            found = await self._find(part)
            if found is not None:
                part["import_id"], part["step"] = found, "uploaded"
                return
        part["registering_at"] = time.time()  # wall clock: compared with createdAt
        part["registrations"] += 1
        await note()
        body = {
            "filename": part["name"],
            "fileSize": part["size"],
            "columnMappings": [
                {"columnName": f"{group}.{trait}", "traitGroup": group, "traitName": trait}
                for group, trait in self.columns
            ],
        }

        adopted: list[str] = []

        async def lost() -> Reply | None:
            found = await self._find(part)
            if found is None:
                return None  # not registered, or waiting for a file we cannot send: again
            adopted.append(found)
            return Reply(200, None, {}, 0, None, None, 0)

        reply = await self.client.request("POST", self.path, json=body, unknown=lost)
        part["registering_at"] = None  # the answer is known: nothing to look for after a kill
        answer = reply.body if isinstance(reply.body, dict) else {}
        import_id, url = answer.get("importId"), answer.get("url")
        if adopted:
            part["import_id"], part["step"] = adopted[0], "uploaded"
        elif reply.ok and isinstance(import_id, str) and isinstance(url, str):
            part["import_id"], part["url"], part["step"] = import_id, url, "registered"
        else:
            detail = reply.message or (f"HTTP {reply.status}" if reply.status else "no answer")
            if reply.ok:
                detail = f"HTTP {reply.status} without an importId and url"
            part["error"] = {"status": reply.status, "code": reply.code,
                             "message": f"registering import file {part['name']} failed: "
                                        f"{detail}"}  # fmt: skip
            part["step"] = "finished"

    async def _find(self, part: Part) -> str | None:
        """The import an earlier registration of ``part`` made, if it already received its file
        (adopt it). Imports still waiting for it are abandoned: their URL was never kept."""
        cutoff = part["registering_at"] - CLOCK_SKEW_S
        params = {"pageSize": "100", "orderBy": "DESC"}
        for _ in range(LIST_PAGES):
            page = await self.client.request("GET", self.path, params=params)
            body = page.body if isinstance(page.body, dict) else {}
            ids = body.get("imports")
            if not page.ok or not isinstance(ids, list):
                return None
            for import_id in ids:
                if not isinstance(import_id, str) or import_id in part["abandoned"]:
                    continue
                got = await self.client.request("GET", f"{self.path}/{quote(import_id, safe='')}")
                info = got.body if got.ok and isinstance(got.body, dict) else {}
                if info.get("filename") == part["name"]:
                    if info.get("status") == "PENDING":
                        part["abandoned"].append(import_id)
                        continue
                    return import_id
                created = _created(info.get("createdAt"))
                if created is not None and created < cutoff:
                    return None  # newest first: the rest are older still
            meta = body.get("meta")
            token = meta.get("nextToken") if isinstance(meta, dict) else None
            if not isinstance(token, str) or not token:
                return None
            params = {**params, "pageToken": token}
        return None

    async def _upload(self, part: Part) -> None:
        part["uploads"] += 1
        if part["uploads"] > self.client.retry.max_attempts:  # a store that says PENDING after
            part["error"] = {"status": None, "code": None, "message": (  # every upload
                f"import {part['import_id']} of {part['name']} never showed the file "
                f"uploaded {part['uploads'] - 1} times")}  # fmt: skip
            part["step"] = "finished"
            return
        url, size = part["url"], part["size"]
        if url.startswith("http://") and self.client.base_url.startswith("https://"):
            part["error"] = {"status": None, "code": None, "message": (
                f"import {part['import_id']} answered an upload URL without TLS ({url}); "
                "the file was not sent")}  # fmt: skip
            part["step"] = "finished"
            return
        status, message = await self._put(self.folder / part["name"], url, size)
        if status is not None and (200 <= status < 300 or status == 409):
            part["step"] = "uploaded"  # 409: an earlier attempt got the file there
        elif status in (403, 404):  # expired, or unknown: that import never gets a file
            _abandon(part)
        elif await self._received(part):  # no usable answer, but the file may be there
            part["step"] = "uploaded"
        else:
            where = f"HTTP {status}" if status is not None else "no answer"
            part["error"] = {"status": status, "code": None, "message": (
                f"uploading {part['name']} for import {part['import_id']} failed ({where}): "
                f"{message}")}  # fmt: skip
            part["step"] = "finished"

    async def _put(self, path: Path, url: str, size: int) -> tuple[int | None, str]:
        """PUT the file to the upload URL, retrying transient failures; (status, message)."""
        retry = self.client.retry
        timeout = httpx.Timeout(self.job.send.timeout)
        headers = {"Content-Length": str(size), "User-Agent": USER_AGENT}
        status: int | None = None
        message = ""
        async with httpx.AsyncClient(timeout=timeout, verify=True, trust_env=False,
                                     follow_redirects=False) as http:  # fmt: skip
            for attempt in range(1, retry.max_attempts + 1):
                retry_after = None
                try:
                    response = await http.put(url, content=_chunks(path), headers=headers)
                except httpx.TransportError as exc:
                    status, message = None, f"{type(exc).__name__}: {exc}"
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    return None, f"cannot send to {url}: {type(exc).__name__}: {exc}"
                else:
                    status, message = response.status_code, _message(response)
                    retry_after = response.headers.get("retry-after")
                    if status not in UPLOAD_RETRY:
                        return status, message
                if attempt < retry.max_attempts:
                    await self.clock.sleep(retry.delay(attempt, retry_after, self.rng))
        return status, message

    async def _received(self, part: Part) -> bool:
        """Whether the import got its file although no upload said so (lost answers)."""
        reply = await self.client.request("GET", f"{self.path}/{part['import_id']}")
        body = reply.body if reply.ok and isinstance(reply.body, dict) else {}
        return body.get("status") not in (None, "PENDING")

    async def _poll(self, part: Part) -> None:
        """GET the import until it ends, backing off from POLL_FIRST_S to POLL_CAP_S."""
        path = f"{self.path}/{quote(part['import_id'], safe='')}"
        delay = POLL_FIRST_S
        failures = 0
        while True:
            reply = await self.client.request("GET", path)
            body = reply.body if isinstance(reply.body, dict) else {}
            status = body.get("status")
            if reply.ok and status in FINAL:
                _finish(part, status, body.get("summary"))
                return
            if reply.ok and status == "PENDING":  # the upload did not get through after all
                if part["url"] is None:  # adopted, so it had a file: cannot happen
                    _abandon(part)
                else:
                    part["step"] = "registered"
                return
            if reply.status == 404:  # the store lost the import: register the file again
                _abandon(part)
                return
            failures = 0 if reply.ok else failures + 1
            if failures >= POLL_FAILURES:
                detail = reply.message or (f"HTTP {reply.status}" if reply.status else "no answer")
                part["error"] = {"status": reply.status, "code": reply.code, "message": (
                    f"could not learn how import {part['import_id']} of {part['name']} ended "
                    f"({detail}); it may still complete: read the profiles back before "
                    "retrying")}  # fmt: skip
                part["step"] = "finished"
                return
            await self.clock.sleep(delay)
            delay = min(delay * 2, POLL_CAP_S)


def _abandon(part: Part) -> None:
    """Leave the part's import unused (it never gets a file) and register the file again."""
    part["abandoned"].append(part["import_id"])
    part["import_id"], part["url"], part["step"] = None, None, "written"


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else response.text[:200]


def _finish(part: Part, status: str, summary: Any) -> None:
    """Keep what the store said about a finished import."""
    summary = summary if isinstance(summary, dict) else {}
    details = summary.get("details")
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    written = part["end"] - part["start"] - len(part["skipped"])
    named = {d.get("row") for d in details if d.get("level") == "error"}
    named = {r for r in named if isinstance(r, int) and 1 <= r <= written}
    errors = summary.get("errors")
    part["status"] = status
    part["rows"] = summary.get("rows")
    part["errors"] = errors
    part["warnings"] = summary.get("warnings")
    part["details"] = details
    part["failure"] = summary.get("failure")
    if status == "COMPLETED" and isinstance(errors, int):
        part["unnamed_errors"] = max(0, errors - len(named))
    part["step"] = "finished"


def _results(units: Sequence[Unit], part: Part) -> list[Result]:
    """One result per unit of a finished part (see the module docstring)."""
    mine = units[part["start"] : part["end"]]
    skipped: dict[str, str] = part["skipped"]
    written = [u for i, u in enumerate(mine) if str(i) not in skipped]
    results = [
        Result(u.seq, FAILED, FAILED_OUTCOME, None, None, skipped[str(i)], 0, None)
        for i, u in enumerate(mine)
        if str(i) in skipped
    ]
    error = part["error"]
    name, import_id = part["name"], part["import_id"]
    if error is not None:
        status, code, message = error["status"], error["code"], error["message"]
        results += [
            Result(u.seq, FAILED, FAILED_OUTCOME, status, code, message, 1, None) for u in written
        ]
        return results
    if part["status"] == "FAILED":
        message = f"import {import_id} of {name} failed: {part['failure'] or 'no reason given'}"
        results += [
            Result(u.seq, FAILED, FAILED_OUTCOME, None, None, message, 1, None) for u in written
        ]
        return results
    refused: dict[int, str] = {}
    for detail in part["details"]:
        row = detail.get("row")
        if detail.get("level") == "error" and isinstance(row, int) and 1 <= row <= len(written):
            refused.setdefault(row, str(detail.get("message")))
    for row, unit in enumerate(written, start=1):
        if row in refused:
            message = f"import {import_id} ({name}) refused row {row}: {refused[row]}"
            results.append(Result(unit.seq, FAILED, FAILED_OUTCOME, None, None, message, 1, None))
        else:
            results.append(Result(unit.seq, DONE, IMPORTED, None, None, None, 1, None))
    return results


def _journals(db: RunDB) -> dict[int, dict[str, Any]]:
    """Every batch journal of the run file (read in the checkpoint's thread)."""
    return {
        batch: state
        for batch, state in db.batch_states().items()
        if isinstance(state, dict) and "parts" in state
    }
