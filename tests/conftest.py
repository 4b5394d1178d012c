"""Shared fixtures.  Server tests start real frameworks; they are marked ``server``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _artifact_cache(tmp_path_factory):
    """Model artifacts go to a per-session cache unless SERVINGBENCH_CACHE is set; the generator's calibration is
    measured by the session's first run and reused by the others (``SERVINGBENCH_CALIBRATION_CACHE``)."""
    if "SERVINGBENCH_CACHE" not in os.environ:
        os.environ["SERVINGBENCH_CACHE"] = str(tmp_path_factory.mktemp("artifact-cache"))
    if "SERVINGBENCH_CALIBRATION_CACHE" not in os.environ:
        os.environ["SERVINGBENCH_CALIBRATION_CACHE"] = str(tmp_path_factory.mktemp("calibration") / "calibration.json")
    yield


@pytest.fixture(scope="session")
def zoo_artifacts(_artifact_cache):
    from servingbench.models import build_artifacts, list_models

    return {m.name: build_artifacts(m) for m in list_models()}


@pytest.fixture(scope="module")
def litserve_live(zoo_artifacts, tmp_path_factory):
    """A real LitServe server with the mlp model (one per test module), stopped after the module."""
    from servingbench.adapters import registry
    from servingbench.contract import Secrets
    from servingbench.deploy.live import LiveDeployment, make_deployment
    from servingbench.scenarios.schema import DeploymentConfig

    tmp = tmp_path_factory.mktemp("litserve-mlp")
    dep = make_deployment("litserve", DeploymentConfig(), [zoo_artifacts["mlp"]], "cpu")
    with LiveDeployment(registry.get("litserve"), dep, tmp / "d", tmp / "logs", Secrets()) as ld:
        yield ld


def marked_leftovers(marker: str) -> list:
    from servingbench.runtime.supervisor import marked_processes

    return marked_processes(marker)


def all_marked_pids(prefix: str = "") -> set[int]:
    """PIDs of every process whose SERVINGBENCH_MARKER starts with ``prefix``."""
    needle = f"SERVINGBENCH_MARKER={prefix}".encode()
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read():
                    pids.add(int(d))
        except OSError:
            continue
    pids.discard(os.getpid())
    return pids


@pytest.fixture
def no_leftovers(monkeypatch):
    """Fails the test if any server it caused (directly or through a CLI subprocess) is still alive afterwards."""
    import time
    import uuid

    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("SERVINGBENCH_MARKER_PREFIX", prefix)
    yield prefix
    deadline = time.time() + 10
    left = all_marked_pids(prefix)
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = all_marked_pids(prefix)
    assert not left, f"server processes left behind: {sorted(left)}"


@pytest.fixture
def interrupted_cli():
    """``run(args, ready, what, sig=SIGINT, ...)``: start ``python -m servingbench.cli ARGS`` in its own session
    (stdout and stderr merged into a list of lines), wait until ``ready(lines)`` (at most ``start_timeout`` s, failing
    with ``what`` if it exits or times out first), send ``sig``, wait for the exit; the session is killed if anything
    fails.  Returns ``(returncode, lines)``."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    def run(args, ready, what, sig=signal.SIGINT, env=None, preexec_fn=None, start_timeout=240.0,
            stop_timeout=60.0):
        p = subprocess.Popen([sys.executable, "-m", "servingbench.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
                             preexec_fn=preexec_fn, start_new_session=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, "")), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + start_timeout
            while not ready(lines):
                assert p.poll() is None, "".join(lines)[-3000:]
                assert time.monotonic() < deadline, f"{what}:\n" + "".join(lines)[-3000:]
                time.sleep(0.1)
            os.kill(p.pid, sig)
            p.wait(timeout=stop_timeout)
        finally:
            if p.poll() is None:  # the signal was ignored or the wait failed: kill the session, servers included
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
            reader.join(10)
        return p.returncode, lines

    return run
