"""Plumbing shared by the benchmark scripts (``bench_slo_search.py``, ``bench_compare.py``, ``bench_canary.py``):
run ``servingbench`` as the CLI, behind an optional lock and a quiet gate that waits for the CPUs to be idle."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

QUIET = "--exec-when-quiet"
NOT_QUIET = 75  # exit status of the quiet gate when the machine stayed busy


def servingbench_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("servingbench")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from servingbench.cli import app; app()"]


def machine_busy(seconds: float) -> float:
    """Busy fraction of all CPUs over ``seconds`` (/proc/stat; steal counts as busy)."""
    def ticks() -> tuple[int, int]:
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(f[:8]), f[3] + f[4]  # total (guest is inside user), idle + iowait

    t0, i0 = ticks()
    time.sleep(seconds)
    t1, i1 = ticks()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def exec_when_quiet(argv: list[str]) -> None:
    """``--exec-when-quiet MAX_S BUSY -- CMD...`` (runs inside the lock): wait at most MAX_S until the CPUs are less
    than BUSY busy over 3 s (other users' work that does not take the lock), then exec CMD; still busy: exit
    ``NOT_QUIET`` (the lock is released and the caller tries again later)."""
    max_s, limit, cmd = float(argv[0]), float(argv[1]), argv[3:]
    t0 = time.perf_counter()
    busy = machine_busy(3.0)
    while busy >= limit and time.perf_counter() - t0 < max_s:
        busy = machine_busy(3.0)
    quiet = busy < limit
    print(f"quiet gate: CPUs {100 * busy:.0f} % busy after {time.perf_counter() - t0:.0f} s "
          f"({'quiet: starting' if quiet else 'NOT quiet: giving the lock back, trying later'})", flush=True)
    if not quiet:
        sys.exit(NOT_QUIET)
    os.execvp(cmd[0], cmd)


def run_gated(cmd: list[str], gate: list[str], wrap: list[str], log, env: dict | None = None,
              retry_s: float = 60.0, tries: int = 60) -> int:
    """``wrap + gate + cmd``; while the gate finds the machine busy, wait ``retry_s`` outside the lock and retry."""
    for _ in range(tries):
        log.write(f"$ {shlex.join([*wrap, *gate, *cmd])}\n")
        log.flush()
        rc = subprocess.run([*wrap, *gate, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != NOT_QUIET or not gate:
            return rc
        time.sleep(retry_s)
    return rc
