"""`backfill emulator` as a user runs it: a real process, its stdout, exit codes and --help."""

from __future__ import annotations

import asyncio
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backfill.cli import build_parser
from backfill.emulator.limits import RETRY_AFTER_STYLES, SHAPES

SEED = Path(__file__).parents[1] / "data" / "emulator_seed.json"
STORE = "mem_store_01jtest0000000000000000000"
DEFAULT_AUTH = ("AC00000000000000000000000000000000", "emulator")
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - the address the emulator must refuse
READY = re.compile(r"listening on http://127\.0\.0\.1:([0-9]+)")
SWITCHES = [
    "--host",
    "--port",
    "--auth",
    "--rate",
    "--limiter",
    "--burst",
    "--window-s",
    "--max-in-flight",
    "--retry-after",
    "--limit-schedule",
    "--fault-rate",
    "--drop-rate",
    "--lost-response-rate",
    "--latency-ms",
    "--write-lag-ms",
    "--upload-ttl-s",
    "--import-delay-ms",
    "--max-body-bytes",
    "--write-key",
    "--access-token",
    "--space-id",
    "--tracking-rate",
    "--tracking-limiter",
    "--tracking-burst",
    "--profile-rate",
    "--segment-lag-ms",
    "--random-seed",
    "--state",
    "--seed",
]


def backfill(*args: str) -> list[str]:
    """The command line for this venv's interpreter running the package."""
    return [sys.executable, "-m", "backfill", *args]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command that is expected to exit on its own (bad input, --help)."""
    return subprocess.run(  # noqa: S603 - our own interpreter and package, fixed arguments
        backfill(*args), capture_output=True, text=True, timeout=30, check=False
    )


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, or fail after ``timeout`` seconds (the process may hang)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sel.select(timeout=0.05):
                return proc.stdout.readline()
            if proc.poll() is not None:
                break
    raise AssertionError(f"no 'listening on' line; exit code {proc.poll()}")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; each is terminated (then killed) however the test ends."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def start(spawn: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and package, fixed arguments
        backfill("emulator", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    spawn.append(proc)
    return proc


def test_port_0_prints_the_url_then_serves(spawn: list[subprocess.Popen[str]]) -> None:
    """`--port 0` prints exactly `listening on http://127.0.0.1:PORT`, then answers there."""
    proc = start(spawn, "--port", "0", "--seed", str(SEED))
    line = read_line(proc, timeout=20)
    match = READY.fullmatch(line.rstrip("\n"))
    assert match, repr(line)
    assert line.endswith("\n")
    url = f"http://127.0.0.1:{match.group(1)}"
    assert int(match.group(1)) != 0
    stores = httpx.get(f"{url}/v1/ControlPlane/Stores", auth=DEFAULT_AUTH, timeout=10)
    assert stores.status_code == 200, stores.text
    assert stores.json()["stores"] == [STORE]
    assert httpx.get(f"{url}/v1/ControlPlane/Stores", timeout=10).status_code == 401
    proc.terminate()
    proc.wait(timeout=10)
    assert proc.stdout is not None
    assert proc.stdout.read() == ""  # nothing else on stdout


def test_auth_switch_sets_the_credentials(spawn: list[subprocess.Popen[str]]) -> None:
    """`--auth SID:SECRET` replaces the default pair."""
    proc = start(spawn, "--port", "0", "--auth", "SKtest:pa:ss")
    match = READY.fullmatch(read_line(proc, timeout=20).rstrip("\n"))
    assert match
    url = f"http://127.0.0.1:{match.group(1)}/v1/ControlPlane/Stores"
    assert httpx.get(url, auth=("SKtest", "pa:ss"), timeout=10).status_code == 200
    assert httpx.get(url, auth=DEFAULT_AUTH, timeout=10).status_code == 401


def test_non_loopback_host_is_refused() -> None:
    """`--host 0.0.0.0` exits 2 saying the emulator binds to loopback only."""
    result = run("emulator", "--host", ALL_INTERFACES, "--port", "0")
    assert result.returncode == 2
    assert "loopback only" in result.stderr
    assert ALL_INTERFACES in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fault-rate", "2"], "--fault-rate"),
        (["--drop-rate", "-0.1"], "--drop-rate"),
        (["--lost-response-rate", "x"], "--lost-response-rate"),
        (["--rate", "0"], "--rate"),
        (["--auth", "nocolon"], "SID:SECRET"),
        (["--auth", ":secret"], "SID:SECRET"),
        (["--port", "http"], "--port"),
        (["--upload-ttl-s", "0"], "--upload-ttl-s"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
        (["--max-body-bytes", "1.5"], "--max-body-bytes"),
        (["--limiter", "leaky"], "--limiter"),
        (["--retry-after", "sometimes"], "--retry-after"),
        (["--window-s", "0"], "--window-s"),
        (["--max-in-flight", "0"], "--max-in-flight"),
        (["--limit-schedule", "20"], "SECONDS:FACTOR"),
        (["--limit-schedule", "20:0"], "factor must be a positive number"),
        (["--limit-schedule", "40:1,20:0.5"], "must increase"),
    ],
)
def test_bad_switch_values_exit_2(args: list[str], needle: str) -> None:
    """argparse rejects out-of-range or malformed switch values with exit code 2."""
    result = run("emulator", "--port", "0", *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--burst", "5"], "burst"),  # --burst needs --rate
        (["--fault-rate", "0.6", "--drop-rate", "0.6"], "must not exceed 1"),
        (["--port", "70000"], "port"),
        (["--latency-ms", "-5"], "latency-ms"),
        (["--import-delay-ms", "-5"], "import-delay-ms"),
        (["--limiter", "gcra"], "limiter gcra needs --rate"),
        (["--limiter", "concurrency"], "needs --max-in-flight"),
        (["--max-in-flight", "4"], "max-in-flight needs --limiter concurrency"),
        (["--limiter", "concurrency", "--max-in-flight", "2", "--rate", "5"], "drop --rate"),
        (["--limiter", "fixed", "--rate", "5", "--burst", "2"], "burst applies to"),
        (["--rate", "5", "--window-s", "2"], "window-s applies to"),
        (["--limiter", "sliding", "--rate", "0.5"], "at least one request"),
        (["--limit-schedule", "20:0.5"], "limit-schedule needs a limit"),
    ],
)
def test_inconsistent_switches_exit_2(args: list[str], needle: str) -> None:
    """Combinations the config refuses exit 2 with `backfill: error:` and the reason."""
    result = run("emulator", "--port", "0", *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("backfill: error:")
    assert needle in result.stderr


def test_max_body_bytes_caps_request_bodies(spawn: list[subprocess.Popen[str]]) -> None:
    """`--max-body-bytes N`: a /v1 body over N bytes is 413 with a Twilio error body."""
    proc = start(spawn, "--port", "0", "--seed", str(SEED), "--max-body-bytes", "100")
    match = READY.fullmatch(read_line(proc, timeout=20).rstrip("\n"))
    assert match
    bulk = f"http://127.0.0.1:{match.group(1)}/v1/Stores/{STORE}/Profiles/Bulk"
    body = {"profiles": [{"traits": {"Contact": {"email": "x" * 100 + "@example.com"}}}]}
    refused = httpx.put(bulk, json=body, auth=DEFAULT_AUTH, timeout=10)
    assert refused.status_code == 413
    assert refused.json()["code"] == 413


def test_limiter_switches_shape_the_429(spawn: list[subprocess.Popen[str]]) -> None:
    """`--limiter sliding --rate 1 --window-s 4 --limit-schedule 0:0.5,3600:1 --retry-after
    fraction`: the window holds 4 x 0.5 = 2 requests, then a 429 with a fractional wait."""
    proc = start(spawn, "--port", "0", "--seed", str(SEED), "--limiter", "sliding", "--rate", "1",
                 "--window-s", "4", "--limit-schedule", "0:0.5,3600:1",
                 "--retry-after", "fraction")  # fmt: skip
    match = READY.fullmatch(read_line(proc, timeout=20).rstrip("\n"))
    assert match
    url = f"http://127.0.0.1:{match.group(1)}"
    with httpx.Client(base_url=url, auth=DEFAULT_AUTH, timeout=10) as api:
        assert [api.get("/v1/ControlPlane/Stores").status_code for _ in range(2)] == [200, 200]
        refused = api.get("/v1/ControlPlane/Stores")
    assert refused.status_code == 429
    assert refused.json()["code"] == 20429
    assert re.fullmatch(r"[0-9]\.[0-9]{3}", refused.headers["retry-after"])
    assert 3.0 < float(refused.headers["retry-after"]) <= 4.0
    view = httpx.get(url + "/__emulator__/stats", timeout=10).json()["limiter"]
    assert (view["shape"], view["factor"], view["admitted"], view["refusedRequests"]) == (
        "sliding", 0.5, 2, 1)  # fmt: skip


def test_max_in_flight_limits_concurrent_requests(spawn: list[subprocess.Popen[str]]) -> None:
    """`--limiter concurrency --max-in-flight 1 --retry-after none`, each request held >= 0.4 s
    by `--latency-ms 800`: of two sent at once, one is answered and one is 429 with no wait."""
    proc = start(spawn, "--port", "0", "--seed", str(SEED), "--limiter", "concurrency",
                 "--max-in-flight", "1", "--latency-ms", "800", "--retry-after", "none",
                 "--random-seed", "1")  # fmt: skip
    match = READY.fullmatch(read_line(proc, timeout=20).rstrip("\n"))
    assert match
    url = f"http://127.0.0.1:{match.group(1)}"

    async def two() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH, timeout=10) as api:
            return await asyncio.gather(*(api.get("/v1/ControlPlane/Stores") for _ in range(2)))

    responses = asyncio.run(two())
    assert sorted(r.status_code for r in responses) == [200, 429]
    assert all("retry-after" not in r.headers for r in responses)
    view = httpx.get(url + "/__emulator__/stats", timeout=10).json()["limiter"]
    assert (view["shape"], view["inFlight"], view["inFlightPeak"]) == ("concurrency", 0, 1)


def test_limiter_choices_are_the_shapes_the_emulator_has() -> None:
    """The CLI lists its choices literally (it imports lazily); they must match the library's."""
    parser = build_parser()
    emulator = next(
        action.choices["emulator"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "emulator" in action.choices
    )
    choices = {action.dest: action.choices for action in emulator._actions}
    assert tuple(choices["limiter"]) == SHAPES
    assert tuple(choices["retry_after"]) == RETRY_AFTER_STYLES


def test_missing_seed_file_exits_2(tmp_path: Path) -> None:
    """`--seed missing.json` exits 2 naming the file."""
    missing = tmp_path / "missing.json"
    result = run("emulator", "--port", "0", "--seed", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert result.stdout == ""


def test_help_lists_every_switch() -> None:
    """`backfill emulator --help` (the installed console script) documents every switch."""
    script = Path(sys.executable).parent / "backfill"
    result = subprocess.run(  # noqa: S603 - the venv's own entry point
        [str(script), "emulator", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    for switch in SWITCHES:
        assert re.search(rf"^\s+{re.escape(switch)}\b", result.stdout, re.MULTILINE), switch
