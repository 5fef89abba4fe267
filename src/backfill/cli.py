"""The command line: parse, call one library function per command, map errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backfill import __version__
from backfill.errors import AuthError, BackfillError, ConfigError, RunLocked, reported

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130


def _auth(value: str) -> tuple[str, str]:
    sid, sep, secret = value.partition(":")
    if not sep or not sid or not secret:
        raise argparse.ArgumentTypeError("expected SID:SECRET")
    return sid, secret


def _rate(value: str) -> float:
    return _bounded(float, value, 0.0, None, inclusive_low=False)


def _seconds(value: str) -> float:
    return _bounded(float, value, 0.0, 86_400.0)


def _share(value: str) -> float:
    return _bounded(float, value, 0.0, 1.0)


def _port(value: str) -> int:
    return int(_bounded(int, value, 1, 65_535))


def _byte_count(value: str) -> int:
    return int(_bounded(int, value, 1, None))


def _limit_schedule(value: str) -> tuple[tuple[float, float], ...]:
    from backfill.emulator.config import parse_schedule

    try:
        return parse_schedule(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(
    kind: type[float] | type[int],
    value: str,
    lo: float,
    hi: float | None,
    *,
    inclusive_low: bool = True,
) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number != number:  # NaN compares false with everything
        raise argparse.ArgumentTypeError(f"not a number: {value!r}")
    if number < lo or (number == lo and not inclusive_low) or (hi is not None and number > hi):
        span = f"between {lo:g} and {hi:g}" if hi is not None else f"above {lo:g}"
        raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
    return number


def _job_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    *,
    quiet: bool = True,
) -> argparse.ArgumentParser:
    """A command that works on one job file, with --quiet when it shows progress."""
    command = commands.add_parser(name, help=summary, description=description)
    command.add_argument("job", type=Path, help="the job file (TOML)")
    if quiet:
        command.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    _json_switch(command)
    return command


def _json_switch(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print one JSON document with the "
                         "result on stdout and nothing else (README: --json)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill",
        description="Bulk-load customer traits into Twilio Conversation Memory.",
    )
    parser.add_argument("--version", action="version", version=f"backfill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of hints")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = _job_command(
        commands,
        "plan",
        "read, resolve and plan a job without writing any trait",
        "A dry run of a job: read the extract, resolve every row to a profile (lookups "
        "allowed), and write plan.parquet (the request units) and rejects.csv (rows that will "
        "not be sent) to the job's output folder. No trait is written.",
    )
    plan.add_argument("--offline", action="store_true", help="no lookups: resolve from the "
                      "profile ID column and the identity map only")  # fmt: skip

    run = _job_command(
        commands,
        "run",
        "plan a job and deliver it, resumably, with reports",
        "Plan the job (or resume the last run of it), send every request under the token "
        "bucket with retries, and write errors.csv, summary.json and report.md. Re-running the "
        "same command continues where it stopped.",
    )
    run.add_argument("--restart", action="store_true", help="ignore the checkpoint: plan and "
                     "send everything again (also when the job or its input changed)")  # fmt: skip
    run.add_argument("--full", action="store_true", help="plan afresh and send every unit, "
                     "even those the [incremental] state says already landed")  # fmt: skip
    run.add_argument("--metrics-port", type=_port, metavar="N", help="serve live figures "
                     "for Prometheus on 127.0.0.1:N while sending")  # fmt: skip

    retry = _job_command(
        commands,
        "retry",
        "send again the requests of the last run that failed",
        "Send again every request unit of the job's last run that ended 'failed' (after a "
        "schema fix, say), and finish any the run left unsent; then write the reports again. "
        "Nothing is re-planned: the checkpoint holds the requests.",
    )
    retry.add_argument("--not-found", action="store_true", help="also the units that ended "
                       "profile_not_found (after restoring those profiles)")  # fmt: skip
    retry.add_argument("--metrics-port", type=_port, metavar="N", help="serve live figures "
                       "for Prometheus on 127.0.0.1:N while sending")  # fmt: skip

    schema = _job_command(
        commands,
        "schema",
        "compare the store's trait groups with what the job writes; --apply fixes them",
        "Derive the trait groups and traits the job writes (dataType from the mapping, "
        "idTypePromotion for identifier columns written as traits), read the store's, and "
        "print the difference. --apply creates missing groups and adds missing traits "
        "(If-Match, re-read on 412), never overwriting a trait of another dataType.",
        quiet=False,
    )
    schema.add_argument("--apply", action="store_true", help="create the missing groups and "
                        "traits, and wait for the store to finish")  # fmt: skip
    schema.add_argument("--prune", action="store_true", help="with --apply: also delete traits "
                        "of the job's groups that the job does not map")  # fmt: skip

    reconcile = _job_command(
        commands,
        "reconcile",
        "compare what Memory holds with what the job would send; --fix sends the difference",
        "Plan the job (no writes), fetch every target profile's traits of the job's groups "
        "under the job's rate limit, and compare them trait by trait, normalization-aware. "
        "Writes reconcile.csv, profiles.csv, reconcile.json and reconcile.md to "
        "<output>/reconcile/; exit 0 when everything matches, 1 otherwise.",
    )
    reconcile.add_argument("--fix", action="store_true", help="send exactly the differing and "
                           "missing traits, through run's delivery path")  # fmt: skip
    reconcile.add_argument("--settle", type=_seconds, default=0.0, metavar="SECONDS",
                           help="re-check profiles that differ this long after first seeing "
                           "them; report only what persists (reads lag writes)")  # fmt: skip

    _job_command(
        commands,
        "status",
        "show the last or current run's progress",
        "Read the job's checkpoint and show the run's progress: running or not, units "
        "finished by outcome, rate and time left. Reads only: safe beside a running "
        "`backfill run`.",
        quiet=False,
    )

    emu = commands.add_parser(
        "emulator",
        help="serve a local emulator of the Memory API and a Segment Unify space",
        description="Serve a local emulator of the Twilio Memory API, and of a Segment Unify "
        "space (Tracking API at /v1/batch and /v1/identify, Profile API under /v1/spaces), "
        "on loopback. All test "
        "behaviours are off by default and reproducible with --random-seed.",
    )
    emu.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    emu.add_argument("--port", type=int, default=8787, help="0 picks a free port (default 8787)")
    emu.add_argument("--auth", type=_auth, metavar="SID:SECRET",
                     help="the one accepted credential pair "
                     "(default AC00000000000000000000000000000000:emulator)")  # fmt: skip
    emu.add_argument("--rate", type=_rate, help="requests/second for the account; over it: 429")
    emu.add_argument("--limiter", choices=["token", "gcra", "fixed", "sliding", "concurrency"],
                     help="the limit's shape (default token with --rate; concurrency takes "
                     "--max-in-flight instead of --rate)")  # fmt: skip
    emu.add_argument("--burst", type=int,
                     help="token/gcra: bucket depth (default rate/10, at least 1)")  # fmt: skip
    emu.add_argument("--window-s", type=_rate, metavar="SECONDS",
                     help="fixed/sliding: window length; rate x window per window "
                     "(default 1)")  # fmt: skip
    emu.add_argument("--max-in-flight", type=_byte_count, metavar="N",
                     help="concurrency: requests in flight at once; beyond it: 429")  # fmt: skip
    emu.add_argument("--retry-after", choices=["whole", "fraction", "none"], default="whole",
                     help="a 429's Retry-After: whole seconds (default, as Twilio), "
                     "fractional seconds, or no header")  # fmt: skip
    emu.add_argument("--limit-schedule", type=_limit_schedule, default=(), metavar="T:F,...",
                     help="at T seconds after start (or a DELETE of the stats), the limit is "
                     "F times the configured one, e.g. 20:0.5,40:1")  # fmt: skip
    emu.add_argument("--fault-rate", type=_share, default=0.0, help="share answered 500 or 503")
    emu.add_argument("--drop-rate", type=_share, default=0.0,
                     help="share whose connection is closed with no response")  # fmt: skip
    emu.add_argument("--lost-response-rate", type=_share, default=0.0,
                     help="share of writes applied, then the response lost")  # fmt: skip
    emu.add_argument("--latency-ms", type=float, default=0.0, help="added latency, +-50%% jitter")
    emu.add_argument("--write-lag-ms", type=float, default=0.0,
                     help="writes become visible to reads only after this delay")  # fmt: skip
    emu.add_argument("--upload-ttl-s", type=_rate, default=900.0,
                     help="an import's upload URL expires after this (default 900)")  # fmt: skip
    emu.add_argument("--import-delay-ms", type=float, default=0.0,
                     help="an uploaded import stays PROCESSING at least this long")  # fmt: skip
    emu.add_argument("--max-body-bytes", type=_byte_count, metavar="N",
                     help="answer 413 to an API request body over N bytes, before auth "
                     "and rate limit (default: no cap; never the import upload URL)")  # fmt: skip
    emu.add_argument("--write-key", metavar="KEY",
                     help="Segment Tracking API: the twilio-unified-profiles source's write key "
                     "(default emulator-write-key)")  # fmt: skip
    emu.add_argument("--access-token", metavar="TOKEN",
                     help="Segment Profile API: the accepted access token "
                     "(default emulator-access-token)")  # fmt: skip
    emu.add_argument(
        "--space-id",
        metavar="ID",
        help="Segment Profile API: the Unify space's id (default spa_emulator)",
    )
    emu.add_argument("--tracking-rate", type=_rate, metavar="EVENTS",
                     help="Segment Tracking API: events/second, a request weighing its events; "
                     "over it: 429 (default unlimited)")  # fmt: skip
    emu.add_argument(
        "--tracking-limiter",
        choices=["token", "gcra", "fixed", "sliding"],
        default="fixed",
        help="the tracking limit's shape; windows are 1 s (default fixed)",
    )
    emu.add_argument("--tracking-burst", type=int, metavar="EVENTS",
                     help="token/gcra tracking limit: bucket depth in events "
                     "(default tracking-rate/10, at least 1)")  # fmt: skip
    emu.add_argument("--profile-rate", type=_rate, metavar="REQUESTS",
                     help="Segment Profile API: requests/second per space; over it: 429 "
                     "(default unlimited)")  # fmt: skip
    emu.add_argument("--segment-lag-ms", type=float, default=0.0,
                     help="tracked events become visible to Profile API reads only after "
                     "this delay")  # fmt: skip
    _json_switch(emu)
    emu.add_argument("--random-seed", type=int, help="seed for every random decision")
    emu.add_argument("--state", type=Path, help="SQLite file that keeps state across restarts")
    emu.add_argument(
        "--seed", type=Path, help="JSON document of stores, settings, trait groups and profiles"
    )
    return parser


def _run_emulator(args: argparse.Namespace) -> int:
    from backfill.emulator import EmulatorConfig, serve

    kwargs = {}
    if args.auth is not None:
        kwargs["username"], kwargs["password"] = args.auth
    for flag, field in (("write_key", "segment_write_key"),
                        ("access_token", "segment_access_token"),
                        ("space_id", "segment_space_id")):  # fmt: skip
        if getattr(args, flag) is not None:
            kwargs[field] = getattr(args, flag)
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        rate=args.rate,
        burst=args.burst,
        limiter=args.limiter,
        window_s=args.window_s,
        max_in_flight=args.max_in_flight,
        retry_after=args.retry_after,
        limit_schedule=args.limit_schedule,
        fault_rate=args.fault_rate,
        drop_rate=args.drop_rate,
        lost_response_rate=args.lost_response_rate,
        latency_ms=args.latency_ms,
        write_lag_ms=args.write_lag_ms,
        upload_ttl_s=args.upload_ttl_s,
        import_delay_ms=args.import_delay_ms,
        max_body_bytes=args.max_body_bytes,
        random_seed=args.random_seed,
        state=args.state,
        seed=args.seed,
        tracking_rate=args.tracking_rate,
        tracking_limiter=args.tracking_limiter,
        tracking_burst=args.tracking_burst,
        profile_rate=args.profile_rate,
        segment_lag_ms=args.segment_lag_ms,
        **kwargs,
    )

    def ready(url: str) -> None:
        if args.json:
            _emit(args, {"url": url}, EXIT_OK)
        else:
            print(f"listening on {url}", flush=True)

    serve(config, on_ready=ready)
    return EXIT_OK


# The --json document's shape: bump on any change a reader could trip on (README: --json).
JSON_VERSION = 1


def _emit(args: argparse.Namespace, result: Any, exit_code: int, error: str | None = None) -> None:
    """The one JSON document ``--json`` prints on stdout: the command's result, or its error."""
    document: dict[str, Any] = {
        "backfill_json": JSON_VERSION,
        "command": args.command,
        "exit_code": exit_code,
        "result": result,
    }
    if error is not None:
        document["error"] = error
    print(json.dumps(document, default=str), flush=True)  # one line: no framing to parse


def _show(args: argparse.Namespace, result: Any, text: str, exit_code: int) -> int:
    """Print the text a person reads, or with ``--json`` the result as a document."""
    if getattr(args, "json", False):
        _emit(args, result, exit_code)
    else:
        print(text.rstrip("\n"))
    return exit_code


def _run_plan(args: argparse.Namespace) -> int:
    from backfill.pipeline import plan
    from backfill.report import format_plan

    result = plan(args.job, offline=args.offline, quiet=args.quiet or args.json)
    document = {
        "job": str(result.job.path),
        "plan_id": result.plan_id,
        "sources": result.sources,
        **asdict(result.summary),
        "files": {"plan": str(result.plan_path), "rejects": str(result.rejects_path)},
    }
    return _show(args, document, format_plan(result), EXIT_OK)


def _run_run(args: argparse.Namespace) -> int:
    from backfill.pipeline import run

    quiet = args.quiet or args.json
    result = run(args.job, restart=args.restart, full=args.full, quiet=quiet,
                 metrics_port=args.metrics_port)  # fmt: skip
    return _show(args, result.summary, result.line if args.quiet else result.text,
                 result.exit_code)  # fmt: skip


def _run_retry(args: argparse.Namespace) -> int:
    from backfill.pipeline import retry

    result = retry(args.job, not_found=args.not_found, quiet=args.quiet or args.json,
                   metrics_port=args.metrics_port)  # fmt: skip
    return _show(args, result.summary, result.line if args.quiet else result.text,
                 result.exit_code)  # fmt: skip


def _run_schema(args: argparse.Namespace) -> int:
    from backfill.targets.memory_schema import schema

    result = schema(args.job, apply=args.apply, prune=args.prune)
    document = {
        "job": str(result.job.path),
        "ready": result.exit_code == EXIT_OK,
        "diff": asdict(result.diff),
        "applied": None if result.applied is None else {
            "changes": [asdict(c) for c in result.applied.changes],
            "races": result.applied.races,
            "after": asdict(result.applied.after),
        },
    }  # fmt: skip
    return _show(args, document, result.text, result.exit_code)


def _run_reconcile(args: argparse.Namespace) -> int:
    from backfill.reconcile import reconcile

    quiet = args.quiet or args.json
    result = reconcile(args.job, fix=args.fix, settle=args.settle, quiet=quiet)
    return _show(args, result.summary, result.line if args.quiet else result.text,
                 result.exit_code)  # fmt: skip


def _run_status(args: argparse.Namespace) -> int:
    from backfill.pipeline import status

    result = status(args.job)
    return _show(args, result.summary, result.text, EXIT_OK)


_COMMANDS = {
    "emulator": _run_emulator,
    "plan": _run_plan,
    "run": _run_run,
    "retry": _run_retry,
    "status": _run_status,
    "schema": _run_schema,
    "reconcile": _run_reconcile,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``backfill`` command; returns the process exit code.

    The one place errors become exit codes: each ``BackfillError`` class has its code (see
    errors.py), an OS error is reported with its path, and anything else is a bug, shown as one
    line unless ``--debug`` asks for the traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        message = "interrupted; run the same command again to continue"
        print(f"backfill: {message}", file=sys.stderr)
        return _failed_json(args, EXIT_INTERRUPTED, message)
    except BaseExceptionGroup as group:  # concurrent work failing as a group
        if args.debug:
            raise
        return _failed_json(args, *_report(reported(group), args.command))
    except Exception as exc:
        if args.debug:
            raise
        return _failed_json(args, *_report(exc, args.command))


def _failed_json(args: argparse.Namespace, exit_code: int, message: str) -> int:
    """With ``--json``, a command that failed still prints its one document (no result); and
    a run, retry or reconcile that stopped tells its [notify] and [metrics] (pipeline.stopped)."""
    if getattr(args, "json", False):
        _emit(args, None, exit_code, message)
    if args.command in ("run", "retry", "reconcile"):
        from backfill.pipeline import stopped

        stopped(args.job, args.command, exit_code)
    return exit_code


def _report(exc: BaseException, command: str) -> tuple[int, str]:
    """Print one line for ``exc``; return its exit code and what ``--json`` says of it (the same
    words; for a bug only its type: its text is not ours)."""
    if isinstance(exc, BackfillError):
        print(f"backfill: error: {exc}", file=sys.stderr)
        if isinstance(exc, ConfigError | RunLocked):
            return EXIT_BAD_INPUT, str(exc)
        if isinstance(exc, AuthError):
            return EXIT_AUTH, str(exc)
        return EXIT_FAILED, str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"backfill: error: {exc.strerror}{where}", file=sys.stderr)
        return EXIT_FAILED, f"{exc.strerror}{where}"
    if isinstance(exc, KeyboardInterrupt):
        print("backfill: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED, "interrupted"
    text = str(exc).strip().splitlines()
    detail = f": {text[0]}" if text else ""
    print(
        f"backfill: internal error in {command}: {type(exc).__name__}{detail}; "
        "run with --debug for the traceback",
        file=sys.stderr,
    )
    return EXIT_FAILED, f"internal error: {type(exc).__name__}"
