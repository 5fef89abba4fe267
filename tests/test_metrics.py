"""`[metrics] textfile`: after real runs against the embedded emulator the file is Prometheus text
(read back with prometheus_client's own parser) holding the summary's numbers, owner-only,
replaced atomically, keeping the last success across a failing run and the job's other
commands' series; a bad `[metrics]` table fails at load naming the key."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backfill.cli import main
from backfill.config import load_job
from backfill.emulator import EmulatorConfig, EmulatorServer
from backfill.errors import ConfigError
from backfill.pipeline import retry, run
from backfill.reconcile import reconcile
from test_notify import LANDING, NOT_FOUND, SEED, SID, free_port, in_tmp, pid, write_job

__all__ = ["in_tmp"]  # the autouse fixture: each test in its own folder, with credentials

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def table(textfile: str = "metrics/backfill.prom") -> str:
    return f'[metrics]\ntextfile = "{textfile}"\n'


def read(path: Path) -> Samples:
    """Every sample of the file, by name and labels, through the official parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"{key} twice"
            samples[key] = s.value
    return samples


def of(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples, command: str) -> set[str]:
    return {name for name, labels in samples if ("command", command) in labels}


def test_a_run_writes_its_summary_owner_only_and_atomically(tmp_path: Path) -> None:
    """A failing run: rows, units, requests by status, rate, duration and exit code as the
    summary says; no last success yet; 0600; no temporary file left beside it."""
    (tmp_path / "metrics").mkdir()
    job = write_job(tmp_path, [*LANDING, NOT_FOUND], table())
    result = run(job, quiet=True)
    assert result.exit_code == 1
    s: dict[str, Any] = result.summary
    path = tmp_path / "metrics" / "backfill.prom"
    got = read(path)
    me = {"job": "nightly", "command": "run"}

    assert of(got, "backfill_exit_code", **me) == 1
    assert of(got, "backfill_rows_read", **me) == s["rows"]["read"] == 4
    for outcome in ("landed", "landed_in_part", "not_landed", "not_sent_yet"):
        assert of(got, "backfill_rows", **me, outcome=outcome) == s["rows"][outcome]
    assert of(got, "backfill_rows", **me, outcome="not_landed") == 1
    assert of(got, "backfill_units", **me, outcome="updated") == s["units"]["updated"] == 3
    assert of(got, "backfill_units", **me, outcome="profile_not_found") == 1
    by_status = s["requests"]["by_status"]
    assert {"202", "404"} <= set(by_status)  # and 200: the schema check's read
    for status, n in by_status.items():
        assert of(got, "backfill_requests", **me, status=status) == n
    assert of(got, "backfill_requests_sent", **me) == s["requests"]["sent"]
    assert of(got, "backfill_requests_throttled", **me) == s["requests"]["throttled"]
    assert of(got, "backfill_request_retries", **me) == s["requests"]["retries"]
    assert of(got, "backfill_rate_configured", **me) == 5000
    assert of(got, "backfill_rate_achieved", **me) == s["rate"]["achieved"]
    assert of(got, "backfill_duration_seconds", **me) == s["seconds"]
    assert "backfill_last_success_timestamp_seconds" not in names(got, "run")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["backfill.prom"]


def test_last_success_is_kept_across_a_failing_run_and_the_file_replaced_whole(
    tmp_path: Path,
) -> None:
    """Exit 0 sets the last success; a later failing run keeps that value (read back from the
    file), sets its own exit code, and replaces the file (a new inode; a stray line goes)."""
    (tmp_path / "metrics").mkdir()
    path = tmp_path / "metrics" / "backfill.prom"
    job = write_job(tmp_path, LANDING, table())
    assert run(job, quiet=True).exit_code == 0
    first = read(path)
    me = {"job": "nightly", "command": "run"}
    success = of(first, "backfill_last_success_timestamp_seconds", **me)
    assert success == of(first, "backfill_last_run_timestamp_seconds", **me)
    assert of(first, "backfill_exit_code", **me) == 0

    with path.open("a", encoding="utf-8") as f:  # someone else's line: not ours to keep
        f.write("# TYPE stray_metric gauge\nstray_metric 1\n")
    inode = path.stat().st_ino
    write_job(tmp_path, [*LANDING, NOT_FOUND], table())
    assert main(["run", str(job), "--quiet", "--restart"]) == 1
    second = read(path)
    assert of(second, "backfill_exit_code", **me) == 1
    assert of(second, "backfill_last_success_timestamp_seconds", **me) == success
    assert of(second, "backfill_last_run_timestamp_seconds", **me) >= success
    assert of(second, "backfill_rows", **me, outcome="not_landed") == 1
    assert not any(name.startswith("stray") for name, _ in second)
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["backfill.prom"]


def test_retry_and_reconcile_keep_each_others_series(tmp_path: Path) -> None:
    """run, retry and reconcile of one job share the file: each replaces only its own series;
    reconcile's hold its profile and trait counts."""
    job = write_job(tmp_path, [*LANDING, NOT_FOUND], table("nightly.prom"))
    path = tmp_path / "nightly.prom"
    assert run(job, quiet=True).exit_code == 1
    again = retry(job, not_found=True, quiet=True)
    assert again.exit_code == 1
    result = reconcile(job, quiet=True)
    got = read(path)

    assert of(got, "backfill_exit_code", job="nightly", command="run") == 1
    assert of(got, "backfill_exit_code", job="nightly", command="retry") == 1
    # The summary's figures: the whole run, its sessions added up (404 by the run and the retry).
    by_status = again.summary["requests"]["by_status"]
    assert by_status["404"] == 2
    for status, n in by_status.items():
        assert of(got, "backfill_requests", job="nightly", command="retry", status=status) == n
    me = {"job": "nightly", "command": "reconcile"}
    p, t = result.summary["profiles"], result.summary["traits"]
    for outcome in ("checked", "matching", "differing", "profile_not_found", "fetch_failed"):
        assert of(got, "backfill_reconcile_profiles", **me, outcome=outcome) == p[outcome]
    for outcome in ("checked", "matching", "differing", "missing_in_memory"):
        assert of(got, "backfill_reconcile_traits", **me, outcome=outcome) == t[outcome]
    assert of(got, "backfill_reconcile_profiles", **me, outcome="profile_not_found") == 1
    assert of(got, "backfill_reconcile_traits", **me, outcome="checked") == 9
    assert of(got, "backfill_exit_code", **me) == result.exit_code == 1
    assert of(got, "backfill_requests_sent", **me) == result.summary["requests"]["sent"]
    assert "backfill_rows" not in names(got, "reconcile")


def test_an_unwritable_textfile_warns_and_leaves_the_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, LANDING, table("no-such-folder/backfill.prom"))
    assert main(["run", str(job), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "backfill: warning: cannot write the metrics textfile no-such-folder/backfill.prom: " \
        "No such file or directory" in err  # fmt: skip


def test_the_plan_path_never_imports_prometheus_client(tmp_path: Path) -> None:
    """`plan` of a job with [metrics] pays nothing for it."""
    job = write_job(tmp_path, LANDING, table("x.prom"))
    code = (
        "import sys\nfrom backfill.pipeline import plan\n"
        f"plan({str(job)!r}, offline=True, quiet=True)\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env=os.environ, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("metrics_table", "key", "says"),
    [
        ('[metrics]\ntextfile = "backfill.txt"\n', "metrics.textfile", "must end in .prom"),
        ("[metrics]\n", "metrics.textfile", "is required"),
        ('[metrics]\ntextfile = "a.prom"\nport = 9100\n', "metrics.port", "unknown key"),
        ("[metrics]\ntextfile = 7\n", "metrics.textfile", "must be a non-empty string"),
    ],
)
def test_a_bad_metrics_table_fails_at_load_naming_the_key(
    tmp_path: Path, metrics_table: str, key: str, says: str
) -> None:
    job = write_job(tmp_path, LANDING, metrics_table)
    with pytest.raises(ConfigError) as caught:
        load_job(job)
    assert f"{job}: {key}: " in str(caught.value)
    assert says in str(caught.value)


def test_a_textfile_that_is_not_prometheus_text_is_written_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nightly.prom"
    path.write_text('backfill_exit_code{job="nightly",command="run" 1\n')  # cut short
    job = write_job(tmp_path, LANDING, table("nightly.prom"))
    assert main(["run", str(job), "--quiet"]) == 0
    assert f"backfill: warning: {path.name} is not Prometheus text" in capsys.readouterr().err
    assert of(read(path), "backfill_exit_code", job="nightly", command="run") == 0


def test_a_good_metrics_table_loads(tmp_path: Path) -> None:
    loaded = load_job(write_job(tmp_path, LANDING, table())).metrics
    assert loaded is not None and loaded.textfile == Path("metrics/backfill.prom")


# ------------------------------------------------------------------------- --metrics-port


def scrape(port: int) -> Samples | None:
    """The live figures, or None while nothing listens."""
    try:
        reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    except httpx.TransportError:
        return None
    assert reply.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def test_metrics_port_serves_live_figures_during_a_run_and_stops_after(tmp_path: Path) -> None:
    """`run --metrics-port N` against a slow emulator: scraped mid-delivery, units are finishing
    and the figures are the delivery's; when the command ends, nothing listens any more."""
    profiles = 40
    seed = json.loads(json.dumps(SEED))
    seed["stores"][0]["profiles"] = [{"id": pid(n), "traits": {}} for n in range(1, profiles + 1)]
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    port = free_port()
    with EmulatorServer(EmulatorConfig(seed=tmp_path / "seed.json", latency_ms=40)) as emu:
        job = write_job(tmp_path, [f"{pid(n)},Name{n},{n},gold" for n in range(1, profiles + 1)],
                        "", "live")  # fmt: skip
        text = job.read_text().replace('base_url = "emulator"', f'base_url = "{emu.url}"')
        text = text.replace('seed = "seed.json"\n', "")
        job.write_text(text.replace("concurrency = 4\nrate = 5000", "concurrency = 2\nrate = 20"))
        env = {**os.environ, "TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "emulator"}
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "backfill", "run", str(job), "--quiet",
             "--metrics-port", str(port)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            seen = None
            while proc.poll() is None:
                got = scrape(port)
                if got is not None and names(got, "run") and _finished(got) >= 5:
                    seen = got
                    break
                time.sleep(0.05)
            assert seen is not None, "the run ended before the live figures showed progress"
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            proc.stderr.close()
    assert "warning" not in err, err
    me = {"job": "live", "command": "run"}
    assert of(seen, "backfill_live_units_to_send", **me) == profiles
    assert 5 <= _finished(seen) < profiles
    assert of(seen, "backfill_live_units_finished", **me, outcome="updated") == _finished(seen)
    assert of(seen, "backfill_live_requests_sent", **me) >= _finished(seen)
    assert of(seen, "backfill_live_rate_configured", **me) == 20
    assert 0 < of(seen, "backfill_live_rate", **me) <= 20
    assert of(seen, "backfill_live_requests_throttled", **me) == 0
    assert scrape(port) is None  # stopped with the command


def _finished(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "backfill_live_units_finished")


def test_a_taken_metrics_port_warns_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        job = write_job(tmp_path, LANDING, "")
        assert main(["run", str(job), "--quiet", "--metrics-port", str(port)]) == 0
    err = capsys.readouterr().err
    assert f"backfill: warning: --metrics-port {port}: cannot listen on 127.0.0.1" in err
