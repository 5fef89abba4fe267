"""How many ``PATCH /Profiles/{id}`` requests the emulator answers a second on one core.

The emulator must never be the bottleneck when the backfill client is measured, so this measures
the emulator alone: the server is pinned to one core (``taskset -c 0``) with limits and faults
off, and ``wrk`` - a C load generator much faster than a Python server - drives it from the other
core over keep-alive connections. The rate is the server's own count of 202 answers (from
``/__emulator__/stats``) over the measured wall time; the server's CPU time over the same window
shows whether its core was saturated. Needs ``wrk`` on PATH (Debian: ``apt-get install wrk``)::

    python bench/emulator_patch.py      # 3 s warm-up, 10 s measured, 32 connections, 1,000 profiles
    python bench/emulator_patch.py --duration 20 --connections 64 --profiles 5000

Exits 1 if any request was answered with anything but 202 (or wrk saw an error), 2 if the
benchmark could not run. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STORE_ID = "mem_store_01jbench000000000000000000"
USERNAME = "AC00000000000000000000000000000000"
PASSWORD = "emulator"  # noqa: S105 - the emulator's documented public credential
TIERS = ("bronze", "silver", "gold")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# One wrk thread, one Lua state: a table of ready-made PATCH requests, served round-robin over
# the profiles. done() prints one JSON line so wrk's own figures need no text scraping.
LUA = r"""
local requests = {}
local n = 0
local tiers = {"bronze", "silver", "gold"}

function init(args)
  local store, count, auth = args[1], tonumber(args[2]), args[3]
  local headers = {["Authorization"] = "Basic " .. auth,
                   ["Content-Type"] = "application/json"}
  for i = 0, count - 1 do
    local path = string.format("/v1/Stores/%s/Profiles/mem_profile_01%024d", store, i)
    local body = string.format('{"traits":{"Loyalty":{"points":%d,"tier":"%s"}}}',
                               (i * 7) % 100000, tiers[i % 3 + 1])
    requests[i + 1] = wrk.format("PATCH", path, headers, body)
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"status":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and the server misbehaved)."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float  # user + system time of the wrk process

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def profile_id(i: int) -> str:
    """``mem_profile_01`` + 24 digits: matches ``^mem_profile_[0-7][0-9a-z]{25}$``, as in Lua."""
    return f"mem_profile_01{i:024d}"


def write_seed(path: Path, profiles: int) -> None:
    """One store, a Loyalty trait group of a few validated traits, ``profiles`` profiles."""
    group = {
        "displayName": "Loyalty",
        "description": "Loyalty programme.",
        "traits": {
            "points": {
                "dataType": "NUMBER",
                "validationRule": {"ruleType": "NUMBER", "min": 0, "max": 1000000},
            },
            "tier": {
                "dataType": "STRING",
                "validationRule": {"ruleType": "STRING", "pattern": "^(bronze|silver|gold)$"},
            },
            "code": {
                "dataType": "STRING",
                "validationRule": {"ruleType": "STRING", "minLength": 3, "maxLength": 8},
            },
            "subscribed": {"dataType": "BOOLEAN"},
        },
    }
    people = [
        {
            "id": profile_id(i),
            "traits": {"Loyalty": {"points": i, "tier": TIERS[i % 3], "subscribed": i % 2 == 0}},
        }
        for i in range(profiles)
    ]
    store = {
        "id": STORE_ID,
        "displayName": "bench",
        "description": "PATCH throughput benchmark.",
        "traitGroups": [group],
        "profiles": people,
    }
    path.write_text(json.dumps({"stores": [store]}), encoding="utf-8")


def start_emulator(seed: Path, cpu: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``backfill emulator`` pinned to ``cpu``; return it and its URL once it listens."""
    emulator = [sys.executable, "-m", "backfill", "emulator", "--port", "0", "--seed", str(seed)]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *emulator], stdout=subprocess.PIPE, stderr=err
        )
    try:
        return proc, _wait_listening(proc, log)
    except BaseException:
        stop(proc)
        raise


def _wait_listening(proc: subprocess.Popen[bytes], log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60.0
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break  # exited
            buffer += chunk
            match = re.search(rb"listening on (http://\S+)", buffer)
            if match:
                return match.group(1).decode()
        elif proc.poll() is not None:
            break
    stop(proc)
    raise BenchError(
        f"emulator did not start (exit {proc.returncode}):\n"
        f"{buffer.decode(errors='replace')}{log.read_text(errors='replace')}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def core_times(cpu: int) -> tuple[int, int]:
    """(busy, steal) jiffies of one core from /proc/stat; busy excludes idle and iowait."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == f"cpu{cpu}":
            v = [int(x) for x in values]
            steal = v[7] if len(v) > 7 else 0
            return v[0] + v[1] + v[2] + v[5] + v[6], steal
    raise BenchError(f"no cpu{cpu} in /proc/stat")


def run_wrk(url: str, script: Path, cpu: int, args: argparse.Namespace, seconds: int) -> WrkResult:
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    load = f"--threads {args.threads} --connections {args.connections} --duration {seconds}s"
    lua = ["--script", str(script), url, "--", STORE_ID, str(args.profiles), token]
    cmd = ["taskset", "-c", str(cpu), "wrk", *load.split(), "--timeout", "10s", *lua]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    raw: dict[str, int] = json.loads(match.group(1))
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        errors={k: raw[k] for k in ("connect", "read", "write", "timeout", "status")},
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        cpu_s=cpu_s,
    )


def stats(client: httpx.Client, url: str, reset: bool = False) -> dict[str, Any]:
    response = client.request("DELETE" if reset else "GET", url + "/__emulator__/stats")
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def smoke_test(client: httpx.Client, url: str) -> None:
    """One PATCH by hand, so a wrong seed or route fails loudly before any load."""
    response = client.patch(
        f"{url}/v1/Stores/{STORE_ID}/Profiles/{profile_id(0)}",
        json={"traits": {"Loyalty": {"points": 1, "tier": "gold"}}},
        auth=(USERNAME, PASSWORD),
    )
    if response.status_code != 202:
        raise BenchError(f"smoke PATCH answered {response.status_code}: {response.text}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from common import add_cores, check_cores  # common imports this module: not at load time

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds (default 3)")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections (default 32)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--profiles",
        type=int,
        default=1000,
        help="profiles seeded and PATCHed round-robin (default 1000)",
    )
    add_cores(parser, "wrk")
    parser.add_argument(
        "--target",
        type=float,
        default=2000.0,
        help="PATCH/s the emulator should reach (default 2000); reported, not enforced",
    )
    args = parser.parse_args(argv)
    check_cores(parser, args)
    if min(args.duration, args.connections, args.threads, args.profiles) < 1:
        parser.error("--duration, --connections, --threads and --profiles must be positive")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    return args


def bench(args: argparse.Namespace, work: Path) -> int:
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found on PATH; on Debian: apt-get install wrk")
    seed, script = work / "seed.json", work / "patch.lua"
    write_seed(seed, args.profiles)
    script.write_text(LUA, encoding="utf-8")
    os.sched_setaffinity(0, {args.client_cpu})  # keep this script off the server's core too
    proc, url = start_emulator(seed, args.server_cpu, work / "emulator.log")
    try:
        with httpx.Client(timeout=30.0) as client:
            smoke_test(client, url)
            if args.warmup:
                run_wrk(url, script, args.client_cpu, args, args.warmup)
            stats(client, url, reset=True)
            cpu0, (busy0, steal0) = process_cpu(proc.pid), core_times(args.server_cpu)
            t0 = time.perf_counter()
            wrk = run_wrk(url, script, args.client_cpu, args, args.duration)
            wall = time.perf_counter() - t0
            cpu1, (busy1, steal1) = process_cpu(proc.pid), core_times(args.server_cpu)
            seen = stats(client, url)
    finally:
        stop(proc)

    patches = seen["byOperation"].get("profiles.patch", {})
    ok = patches.get("202", 0)
    not_ok = seen["requests"] - ok  # every /v1/ request counts; only PATCH 202s were sent
    rate = ok / wall
    server_cpu = (cpu1 - cpu0) / wall
    core_busy = (busy1 - busy0) / CLOCK_TICKS / wall
    core_steal = (steal1 - steal0) / CLOCK_TICKS / wall

    rows = [
        ("emulator PATCH 202/s (server count / wall)", f"{rate:,.0f}"),
        ("PATCH answered 202", f"{ok:,}"),
        ("requests not answered 202", f"{not_ok:,}" + (f"  {seen['byStatus']}" if not_ok else "")),
        ("measured wall time", f"{wall:.2f} s"),
        (f"emulator CPU (pinned to core {args.server_cpu})", f"{server_cpu:.0%} of one core"),
        (f"core {args.server_cpu} busy / steal", f"{core_busy:.0%} / {core_steal:.0%}"),
        ("wrk requests/s (its own count)", f"{wrk.rate:,.0f}"),
        (
            "wrk latency p50 / p99 / max",
            f"{wrk.p50_ms:.1f} / {wrk.p99_ms:.1f} / {wrk.max_ms:.1f} ms",
        ),
        ("wrk errors", ", ".join(f"{k} {v}" for k, v in wrk.errors.items())),
        (f"wrk CPU (core {args.client_cpu})", f"{wrk.cpu_s / wall:.0%} of one core"),
        (f"target {args.target:,.0f}/s", "met" if rate >= args.target else "NOT met"),
    ]
    print(
        f"emulator PATCH throughput: {args.connections} connections, {args.threads} wrk "
        f"thread(s), {args.profiles:,} profiles, {args.warmup} s warm-up + "
        f"{args.duration} s measured"
    )
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if not_ok or ok == 0 or any(wrk.errors.values()):
        print("FAIL: not every PATCH was answered 202 (see the table)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="emulator-bench-") as tmp:
            return bench(args, Path(tmp))
    except BenchError as exc:
        print(f"emulator_patch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
