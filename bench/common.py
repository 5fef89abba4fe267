"""What more than one benchmark runs its client processes with: the environment and the meter.

bench/run_throughput.py and bench/delivery_modes.py run ``backfill run`` (and other clients) as
pinned subprocesses and measure them the same way; bench/incremental_rerun.py shares the
environment. The emulator's launcher lives in bench/transport.py, its seed and stats helpers in
bench/emulator_patch.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from emulator_patch import CLOCK_TICKS, PASSWORD, USERNAME, core_times


def child_env() -> dict[str, str]:
    """This environment with the emulator's credentials as the only TWILIO_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}
    env.update(TWILIO_ACCOUNT_SID=USERNAME, TWILIO_AUTH_TOKEN=PASSWORD)
    return env


@dataclass(frozen=True)
class Process:
    """A finished client process: its wall and CPU time, and how busy both cores were."""

    done: subprocess.CompletedProcess[str]
    wall: float  # start to exit
    cpu: float  # user + system
    core_busy: tuple[float, float]  # the emulator's core, the client's core: anyone's work


def run_process(cmd: list[str], cwd: Path, cores: tuple[int, int]) -> Process:
    """Run ``cmd`` to its end, measuring it (its CPU from the children's rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = [core_times(c)[0] for c in cores]
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=child_env(), cwd=cwd, timeout=3600
    )
    wall = time.perf_counter() - t0
    busy1 = [core_times(c)[0] for c in cores]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    busy = ((busy1[0] - busy0[0]) / CLOCK_TICKS / wall, (busy1[1] - busy0[1]) / CLOCK_TICKS / wall)
    return Process(done, wall, cpu, busy)


def pct(x: float) -> str:
    return f"{x:.2%}"


def add_cores(parser: argparse.ArgumentParser, client: str) -> None:
    """``--server-cpu`` (the emulator's core) and ``--client-cpu`` (``client``'s): every
    benchmark pins the two sides apart on these 2-core machines."""
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the emulator (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help=f"core for {client} (1)")


def check_cores(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.server_cpu == args.client_cpu:
        parser.error("--server-cpu and --client-cpu must differ")
