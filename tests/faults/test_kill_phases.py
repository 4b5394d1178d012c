"""kill -9 of the harness (a ``servingbench run`` process) in each phase of a cell -- while the load generator and
its locust workers run, during the in-process limit step (before the server starts), during a Ray Serve cell --
then ``servingbench cleanup --kill`` leaves no process, no /dev/shm entry and no temp dir of servingbench's.

Each phase is reached by waiting for its processes to appear (never a fixed sleep).  The harness and the cleanup
run with this test's ``SERVINGBENCH_MARKER_PREFIX`` (the cleanup sees only what this test caused) and a private
``TMPDIR`` (scratch and secrets dirs: nothing may be left there).  Ray's and MOSEC's dirs are in /tmp, named after
the marker (this test's prefix); /dev/shm is global and its names (MOSEC's ``sem.mp-*``) random: every entry the
harness's processes used must be gone, and no entry new since the start may be left that no process uses (other
runs on the machine may be using theirs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from servingbench.runtime import supervisor

pytestmark = [pytest.mark.server, pytest.mark.timeout(420)]

SUITE = """\
name: killphases
frameworks: [mosec, rayserve]
models: [mlp]
cpu_sets: none
startup_timeout: 240s
generator:
  workers: 2
deployments:
  - label: k
measurement:
  warmup: 0.5s
  window: 1s
  windows: 2
  max_duration: 60s
  min_requests: 20
workloads:
{workloads}
"""
WORKLOAD = """\
  - name: w{batch}
    kind: closed_loop
    batch: {batch}
    concurrency: [2]
"""
TEMP_PATTERNS = supervisor.TEMP_PREFIXES + supervisor.MARKER_DIR_PREFIXES


def _ours(harness: int) -> dict[int, tuple[str, str]]:
    """pid -> (role, command) of every live process carrying this harness's marks, and their children."""
    out: dict[int, tuple[str, str]] = {}
    for m in supervisor._scan_marked():
        if m.harness != harness:
            continue
        try:
            out[m.proc.pid] = (m.role, " ".join(m.proc.cmdline()))
            for c in m.proc.children(recursive=True):
                out.setdefault(c.pid, (m.role, " ".join(c.cmdline())))
        except psutil.Error:
            continue
    return out


def _alive(pids) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.Error:
            continue
    return left


def _listing(tmpdir: Path) -> dict[str, set[str]]:
    mine = os.environ["SERVINGBENCH_MARKER_PREFIX"][:12]  # marker[:12] of every deployment of this test
    return {
        "shm": set(os.listdir(supervisor.SHM)),
        "tmp": {n for n in os.listdir("/tmp") if n.startswith(tuple(p + mine for p in supervisor.MARKER_DIR_PREFIXES))},
        "TMPDIR": {n for n in os.listdir(tmpdir) if n.startswith(TEMP_PATTERNS)},
    }


def _generator_running(procs) -> bool:
    master = any("servingbench.load.generator" in cmd and "/gen-" in cmd for _, cmd in procs.values())
    workers = sum(1 for role, cmd in procs.values() if role == "generator" and "--worker" in cmd)
    return master and workers >= 2


def _inprocess_running(procs) -> bool:
    return any(role == "inprocess" and "servingbench.measure.inprocess" in cmd for role, cmd in procs.values())


def _ray_replica_running(procs) -> bool:
    return any(cmd.startswith("ray::ServeReplica") for _, cmd in procs.values())


PHASES = {
    # (framework, batches of the suite's workloads, the event to kill at, a role that must be among the killed)
    "generator": ("mosec", [1], _generator_running, "generator"),
    "inprocess": ("mosec", [1, 2, 4, 8], _inprocess_running, "inprocess"),
    "rayserve": ("rayserve", [1], _ray_replica_running, "server"),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_kill9_of_the_harness_then_cleanup_leaves_nothing(phase, tmp_path, no_leftovers):
    framework, batches, event, role = PHASES[phase]
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(workloads="".join(WORKLOAD.format(batch=b) for b in batches)))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}  # SERVINGBENCH_MARKER_PREFIX: from no_leftovers
    before = _listing(tmpdir)
    log = open(tmp_path / "harness.log", "wb")
    harness = subprocess.Popen([sys.executable, "-m", "servingbench.cli", "run", str(suite), "--out",
                                str(tmp_path / "results"), "-f", framework],
                               env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    ours: dict[int, tuple[str, str]] = {}
    try:
        deadline = time.time() + 300
        while True:
            procs = _ours(harness.pid)
            if event(procs):
                break
            assert harness.poll() is None, f"the harness exited ({harness.returncode}) before the {phase} phase:\n" \
                                           + (tmp_path / "harness.log").read_text()[-3000:]
            assert time.time() < deadline, f"no {phase} phase within 300 s; processes: {procs}"
            time.sleep(0.1)
        during = _listing(tmpdir)
        ours = _ours(harness.pid)
        used_shm = supervisor.shm_of_tree(psutil.Process(pid) for pid in _alive(ours))
        harness.kill()
        harness.wait()
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        log.close()
    ours.update(_ours(harness.pid))
    # The run had made its scratch and secrets dirs (removed below: the harness could not).
    made = during["TMPDIR"] - before["TMPDIR"]
    assert any(n.startswith("servingbench-scratch-") for n in made), made
    assert any(n.startswith("servingbench-secrets-") for n in made), made
    assert role in {r for r, _ in ours.values()}, ours
    if phase == "rayserve":
        assert {n for n in during["tmp"] - before["tmp"] if n.startswith("sb-ray-")}, during["tmp"]
    if phase == "generator":  # MOSEC is serving: its multiprocessing semaphores exist
        assert {n for n in used_shm if n.startswith("/dev/shm/sem.mp-")}, f"MOSEC's semaphores: {used_shm}"

    cleanup = subprocess.run([sys.executable, "-m", "servingbench.cli", "cleanup", "--kill"], env=env,
                             capture_output=True, text=True, timeout=120)
    report = f"cleanup rc {cleanup.returncode}:\n{cleanup.stdout}{cleanup.stderr}"
    print(report)
    assert cleanup.returncode == 0, report
    assert f"({role}," in cleanup.stdout, report
    end = time.time() + 15  # SIGKILLed: only the kernel's reaping is left
    while _alive(ours) and time.time() < end:
        time.sleep(0.1)
    left = {pid: ours[pid] for pid in _alive(ours)}
    assert not left, f"processes left: {left}\n{report}"
    after = _listing(tmpdir)
    assert not os.listdir(tmpdir), f"left in the run's TMPDIR: {os.listdir(tmpdir)}\n{report}"
    assert not after["tmp"] - before["tmp"], f"dirs left in /tmp: {after['tmp'] - before['tmp']}\n{report}"
    assert not {p for p in used_shm if os.path.lexists(p)}, f"/dev/shm entries of the run left\n{report}"
    leaked = {n for n in after["shm"] - before["shm"]} - {os.path.basename(p) for p in supervisor.shm_in_use()}
    assert not leaked, f"/dev/shm entries left: {leaked}\n{report}"
    again = subprocess.run([sys.executable, "-m", "servingbench.cli", "cleanup"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "no stale" in again.stdout, again.stdout
