"""A command's figures in the Prometheus text format, for the dashboards a team already has.

``write_textfile(job, command, summary, exit_code)`` is the stage's one entry, called once at
the end of ``run``, ``retry`` and ``reconcile`` for a job with ``[metrics] textfile``. It writes
the file the way node_exporter's textfile collector expects: the whole text into a temporary
file beside it (not ending in ``.prom``, so never read half-written), fsync, ``os.replace``.
Every series carries ``job`` (the job's name) and ``command``; the series of the job's other
commands, and of other jobs sharing the file, are read back and kept, and so is this
command's ``backfill_last_success_timestamp_seconds`` when it failed. A file that cannot be
written is one warning on stderr: the figures are a side channel and never change the exit
code.

``serve_live(port, live)`` serves a delivery's ``LiveFigures`` while it runs
(``--metrics-port``).

prometheus_client is imported inside the functions: ~75-100 ms of imports that a plan, or a
job without metrics, never pays.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from backfill.config import Job

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

PREFIX: Final = "backfill_"
LAST_SUCCESS: Final = "backfill_last_success_timestamp_seconds"
ROW_OUTCOMES: Final = ("landed", "landed_in_part", "not_landed", "not_sent_yet")
UNIT_OUTCOMES: Final = ("updated", "created", "upserted", "imported", "profile_not_found",
                        "failed", "verify_failed", "skipped_unchanged", "pending",
                        "in_flight")  # fmt: skip
PROFILE_OUTCOMES: Final = ("checked", "matching", "differing", "profile_not_found",
                           "fetch_failed")  # fmt: skip
TRAIT_OUTCOMES: Final = ("checked", "matching", "differing", "missing_in_memory")

Labels = dict[str, str]


@dataclass
class _Family:
    name: str
    help: str
    samples: list[tuple[Labels, float]]


class _Figures:
    """The families of one command, in order, each sample labelled with job and command."""

    def __init__(self, job: str, command: str) -> None:
        self.base = {"job": job, "command": command}
        self.families: dict[str, _Family] = {}

    def add(self, name: str, help: str, value: float, **labels: str) -> None:
        family = self.families.setdefault(name, _Family(name, help, []))
        family.samples.append(({**self.base, **labels}, float(value)))


def figures(
    job: Job, command: str, summary: dict[str, Any], exit_code: int, now: float
) -> _Figures:
    """The summary's numbers as gauges (the last command's values, not counters: a textfile is
    a snapshot)."""
    f = _Figures(job.name, command)
    f.add("backfill_exit_code", "Exit code of the command's last invocation.", exit_code)
    f.add("backfill_last_run_timestamp_seconds", "When the command last ended (Unix time).", now)
    f.add("backfill_duration_seconds", "Seconds the command's last run took (a resumed run: "
          "all its sessions).", summary.get("seconds", 0.0))  # fmt: skip
    if command == "reconcile":
        profiles, traits = summary.get("profiles", {}), summary.get("traits", {})
        for outcome in PROFILE_OUTCOMES:
            f.add("backfill_reconcile_profiles", "Profiles compared by reconcile, by outcome.",
                  profiles.get(outcome, 0), outcome=outcome)  # fmt: skip
        for outcome in TRAIT_OUTCOMES:
            f.add("backfill_reconcile_traits", "Traits compared by reconcile, by outcome.",
                  traits.get(outcome, 0), outcome=outcome)  # fmt: skip
    else:
        rows, units = summary.get("rows", {}), summary.get("units", {})
        f.add("backfill_rows_read", "Source rows the run read.", rows.get("read", 0))
        for outcome in ROW_OUTCOMES:
            f.add("backfill_rows", "Source rows by outcome (each row counted once).",
                  rows.get(outcome, 0), outcome=outcome)  # fmt: skip
        for outcome in UNIT_OUTCOMES:
            f.add("backfill_units", "Request units (one profile's body) by outcome.",
                  units.get(outcome, 0), outcome=outcome)  # fmt: skip
        rate = summary.get("rate", {})
        f.add("backfill_rate_configured", "The job's [send] rate (requests, or Segment events, "
              "a second).", rate.get("configured", job.send.rate))  # fmt: skip
        f.add("backfill_rate_achieved", "Accepted units a second over the delivery.",
              rate.get("achieved", 0.0))  # fmt: skip
        f.add("backfill_rate_final", "The throttle's rate when the delivery ended.",
              rate.get("final", 0.0))  # fmt: skip
    requests = summary.get("requests", {})
    f.add("backfill_requests_sent", "HTTP requests sent, retries included.",
          requests.get("sent", 0))  # fmt: skip
    for status, n in sorted((requests.get("by_status") or {}).items()):
        f.add("backfill_requests", "HTTP answers by status.", n, status=str(status))
    f.add("backfill_requests_throttled", "Requests answered 429.", requests.get("throttled", 0))
    f.add("backfill_request_retries", "Requests sent again.", requests.get("retries", 0))
    f.add("backfill_request_transport_errors", "Requests that got no HTTP answer.",
          requests.get("transport_errors", 0))  # fmt: skip
    return f


def write_textfile(job: Job, command: str, summary: dict[str, Any], exit_code: int) -> None:
    """Write the job's ``[metrics] textfile`` (see the module docstring)."""
    if job.metrics is None:
        return
    path = job.metrics.textfile
    try:
        _write(path, job, command, summary, exit_code, time.time())
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        print(f"backfill: warning: cannot write the metrics textfile {path}: {why}",
              file=sys.stderr, flush=True)  # fmt: skip


def _write(
    path: Path, job: Job, command: str, summary: dict[str, Any], exit_code: int, now: float
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    ours = figures(job, command, summary, exit_code, now)
    kept, last_success = _read_back(path, ours.base)
    if exit_code == 0:
        last_success = now
    if last_success is not None:
        ours.add(LAST_SUCCESS, "When the command last ended with exit 0 (Unix time).",
                 last_success)  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(_merge(kept, ours.families)))
    _replace(path, generate_latest(registry))


def _read_back(path: Path, base: Labels) -> tuple[list[Metric], float | None]:
    """The existing file's families without this job's and command's samples, and this
    command's last success time."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], None
    kept: list[Metric] = []
    last_success = None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:  # not Prometheus text (cut short by a full disk?): start afresh
        print(f"backfill: warning: {path} is not Prometheus text; writing it afresh",
              file=sys.stderr, flush=True)  # fmt: skip
        return [], None
    for family in families:
        if not family.name.startswith(PREFIX):
            continue
        mine = [s for s in family.samples if all(s.labels.get(k) == v for k, v in base.items())]
        if family.name == LAST_SUCCESS and mine:
            last_success = mine[0].value
        family.samples = [s for s in family.samples if s not in mine]
        if family.samples:
            kept.append(family)
    return kept, last_success


def _merge(kept: list[Metric], ours: dict[str, _Family]) -> list[Metric]:
    from prometheus_client.metrics_core import Metric

    merged: dict[str, Metric] = {m.name: m for m in kept}
    for family in ours.values():
        metric = merged.setdefault(family.name, Metric(family.name, family.help, "gauge"))
        for labels, value in family.samples:
            metric.add_sample(family.name, labels, value)
    return list(merged.values())


class _Snapshot:
    """A collector of fixed families (prometheus_client's custom-collector interface)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _replace(path: Path, data: bytes) -> None:
    """node_exporter's convention: a temporary file in the same folder (owner-only, as
    mkstemp makes it), fsync, rename over the old one, fsync the folder."""
    folder = path.parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ------------------------------------------------------------------------- --metrics-port


class LiveFigures:
    """What a delivery has done so far, read by the scrape thread while the delivery writes it
    (single int and float reads: no lock needed). ``client``: the delivery's HTTP client once it
    exists, whose ``stats`` and bucket are read as they are."""

    def __init__(self, job: str, command: str, total: int, configured_rate: float) -> None:
        self.labels = {"job": job, "command": command}
        self.total = total
        self.configured_rate = configured_rate
        self.finished: Counter[str] = Counter()
        self.client: Any = None
        self.started = time.monotonic()

    def finish(self, outcome: str) -> None:
        self.finished[outcome] += 1

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.metrics_core import Metric

        def one(name: str, help: str, *samples: tuple[Labels, float]) -> Metric:
            metric = Metric(name, help, "gauge")
            for labels, value in samples:
                metric.add_sample(name, {**self.labels, **labels}, value)
            return metric

        client = self.client
        stats = client.stats if client is not None else None
        bucket = client.bucket if client is not None else None
        finished = dict(self.finished)  # one copy: the delivery may add an outcome meanwhile
        done = sum(finished.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return [
            one("backfill_live_units_to_send", "Units this delivery set out to send.",
                ({}, self.total)),
            one("backfill_live_units_finished", "Units finished so far, by outcome.",
                *(({"outcome": o}, n) for o, n in sorted(finished.items()))),
            one("backfill_live_requests_sent", "HTTP requests sent so far, retries included.",
                ({}, stats.sent if stats else 0)),
            one("backfill_live_requests_throttled", "Requests answered 429 so far.",
                ({}, stats.throttled if stats else 0)),
            one("backfill_live_request_retries", "Requests sent again so far.",
                ({}, stats.retries if stats else 0)),
            one("backfill_live_rate", "The throttle's rate now (a second).",
                ({}, bucket.rate if bucket is not None else self.configured_rate)),
            one("backfill_live_rate_configured", "The job's [send] rate.",
                ({}, self.configured_rate)),
            one("backfill_live_rate_achieved", "Units finished a second since the delivery "
                "started.", ({}, done / elapsed)),
        ]  # fmt: skip


@contextmanager
def serve_live(port: int | None, live: LiveFigures) -> Iterator[None]:
    """Serve ``live``'s figures on ``127.0.0.1:port`` until the block ends (nothing when
    ``port`` is None). A port that cannot be bound is a warning: figures never stop a
    delivery."""
    if port is None:
        yield
        return
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(live)
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        print(f"backfill: warning: --metrics-port {port}: cannot listen on 127.0.0.1: "
              f"{exc.strerror or type(exc).__name__}", file=sys.stderr, flush=True)  # fmt: skip
        yield
        return
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
