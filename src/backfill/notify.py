"""Tell a webhook how a command ended (``[notify]``): what happened, the counts, where the reports
are; never a customer's identifier, value or error message.

``notify(job, command, summary, exit_code)`` is the one entry, called once at the end of ``run``,
``retry`` and ``reconcile``. The message is JSON with a Slack-compatible ``text`` field and the
same facts as fields of their own. A notification is a side channel: whatever goes wrong
(variable unset, URL refused, receiver down) is one ``backfill: warning:`` line on stderr, and
the command's exit code stays what the work made it. The URL is a secret (Slack's carry their
token in the path): messages name its host only.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from backfill import __version__
from backfill.config import Job

EXIT_OK, EXIT_INTERRUPTED = 0, 130
TIMEOUT: Final = 10.0
ATTEMPTS: Final = 2  # one retry, on a network error or a 5xx

# The counts a message may carry, per command: numbers only, read from the summary.
RUN_COUNTS: Final = ("read", "landed", "landed_in_part", "not_landed", "not_sent_yet")
PROFILE_COUNTS: Final = ("checked", "matching", "differing", "profile_not_found", "fetch_failed")
TRAIT_COUNTS: Final = ("checked", "differing", "missing_in_memory")


def notify(job: Job, command: str, summary: dict[str, Any], exit_code: int) -> None:
    """POST the end of ``command`` to the job's webhook, if ``[notify] on`` asks for it."""
    if job.notify is None or not _wanted(job.notify.on, exit_code):
        return
    try:
        url = os.environ.get(job.notify.webhook_env, "").strip()
        if not url:
            _warn(f"[notify] webhook_env: {job.notify.webhook_env} is not set; no notification "
                  "sent")  # fmt: skip
            return
        if not _allowed(url):
            _warn(f"[notify] webhook_env: the URL in {job.notify.webhook_env} must be https:// "
                  "(plain http only to loopback); no notification sent")  # fmt: skip
            return
        _post(url, message(job, command, summary, exit_code))
    except Exception as exc:  # a bug here must not turn a finished run into a failed one
        _warn(f"notification failed: {type(exc).__name__}")


def _wanted(on: tuple[str, ...], exit_code: int) -> bool:
    if "always" in on:
        return True
    return ("success" in on) if exit_code == EXIT_OK else ("failure" in on)


def _allowed(url: str) -> bool:
    """https, or plain http to a receiver on this machine (a test or a local relay), as
    connection URLs are allowed."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:  # a name: not provably local
        return False


def outcome(exit_code: int) -> str:
    if exit_code == EXIT_OK:
        return "succeeded"
    return "interrupted" if exit_code == EXIT_INTERRUPTED else "failed"


def message(job: Job, command: str, summary: dict[str, Any], exit_code: int) -> dict[str, Any]:
    """The JSON body. Built from counts and our own file paths only: nothing read from the
    extract or from the store (identifiers, values, the store's error messages) goes in."""
    if "stopped" in summary:  # pipeline.stopped: no counts, only why
        counts: dict[str, Any] = {}
        said = str(summary["stopped"])
    elif command == "reconcile":
        profiles, traits = summary.get("profiles", {}), summary.get("traits", {})
        counts = {
            "profiles": {k: int(profiles.get(k, 0)) for k in PROFILE_COUNTS},
            "traits": {k: int(traits.get(k, 0)) for k in TRAIT_COUNTS},
        }
        p, t = counts["profiles"], counts["traits"]
        said = (f"{p['checked']:,} profiles checked, {p['differing']:,} differing, "
                f"{p['profile_not_found']:,} not found; {t['differing']:,} traits differing, "
                f"{t['missing_in_memory']:,} missing")  # fmt: skip
    else:
        rows = summary.get("rows", {})
        counts = {"rows": {k: int(rows.get(k, 0)) for k in RUN_COUNTS}}
        r = counts["rows"]
        said = (f"{r['read']:,} rows read, {r['landed']:,} landed, {r['landed_in_part']:,} "
                f"landed in part, {r['not_landed']:,} not landed")  # fmt: skip
        if r["not_sent_yet"]:
            said += f", {r['not_sent_yet']:,} not sent yet"
    reports = {str(k): str(v) for k, v in (summary.get("files") or {}).items()}
    host = socket.gethostname()
    text = (f"backfill {command} of job {job.name} {outcome(exit_code)} (exit {exit_code}) "
            f"on {host}: {said}.")  # fmt: skip
    if reports:
        text += f" Reports: {', '.join(reports.values())}"
    return {
        "text": text,
        "job": job.name,
        "job_file": str(job.path),
        "command": command,
        "outcome": outcome(exit_code),
        "exit_code": exit_code,
        "host": host,
        "counts": counts,
        "reports": reports,
        "version": __version__,
    }


def _post(url: str, body: dict[str, Any]) -> None:
    host = urlsplit(url).hostname or "?"
    problem = ""
    with httpx.Client(timeout=TIMEOUT, follow_redirects=False) as client:
        for _ in range(ATTEMPTS):
            try:
                reply = client.post(url, json=body)
            except httpx.TransportError as exc:  # its text may hold the URL: the class only
                problem = type(exc).__name__
                continue
            if reply.is_success:
                return
            problem = f"HTTP {reply.status_code}"
            if reply.status_code < 500:  # the receiver refuses it: sending again cannot help
                break
    _warn(f"notification to {host} failed: {problem}; the exit code is unchanged")


def _warn(text: str) -> None:
    print(f"backfill: warning: {text}", file=sys.stderr, flush=True)
