"""Issue 15, defect 12: a harness started with SIGINT (or SIGHUP) ignored, as ``nohup``, ``cmd &`` in a script, CI
runners and service managers start it, still stops on SIGINT / SIGHUP: the CLI installs its own handlers for
``run``, the servers are stopped, the run is marked interrupted and exits 130, and no server process survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

SUITE = """\
name: signals
frameworks: [litserve]
models: [mlp]
inprocess_limit: false
measurement:
  warmup: 0.5s
  window: 1s
  windows: 2
  max_duration: 3s
  min_requests: 20
workloads:
  - name: closed
    kind: closed_loop
    concurrency: [1, 2, 4, 8, 16, 32]
"""


def _ignoring(*sigs: signal.Signals):
    def preexec() -> None:  # as `trap '' INT` / nohup leave it: the disposition survives exec
        for sig in sigs:
            signal.signal(sig, signal.SIG_IGN)
    return preexec


POINT_LINE = "litserve/default closed mlp {'concurrency': "


# SIGHUP takes SIGTERM's handler (tests/unit/test_safety_resume.py::test_stop_signals_work_whatever_was_inherited
# covers each signal against every inherited disposition); end to end, the two that differ in path: SIGINT (the CLI's
# KeyboardInterrupt) and SIGTERM (sent while INT and HUP are ignored, as `nohup cmd &` leaves them).
@pytest.mark.parametrize("sent,ignored", [
    (signal.SIGINT, (signal.SIGINT,)),                  # `trap '' INT`, `cmd &` in a script
    (signal.SIGTERM, (signal.SIGINT, signal.SIGHUP)),   # `nohup cmd &`, then a service manager's stop
], ids=["SIGINT", "SIGTERM"])
def test_run_started_with_signals_ignored_still_stops_cleanly(tmp_path, no_leftovers, sent, ignored):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "results"
    p = subprocess.Popen([sys.executable, "-m", "servingbench.cli", "run", str(suite), "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                         preexec_fn=_ignoring(*ignored), start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        # mid-run: the server is up, the first load point is measured, the second is running
        deadline = time.monotonic() + 240
        while not any(POINT_LINE in line for line in lines):
            assert p.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the run never measured a load point:\n" + "".join(lines)[-3000:]
            time.sleep(0.1)
        t0 = time.monotonic()
        os.kill(p.pid, sent)
        p.wait(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:  # the harness ignored the signal: kill its whole session (servers included)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        reader.join(10)
        stdout = p.stdout.read()
    stderr = "".join(lines)
    assert p.returncode == 130, f"exit {p.returncode}\n{stderr[-3000:]}"
    assert elapsed < 45, f"took {elapsed:.1f} s to stop"
    run_dir = Path(stdout.split("results: ", 1)[1].split()[0])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "interrupted", run["status"]
    assert run["cells"]["litserve/default"]["status"] == "interrupted"
    assert "interrupted: finished cells are kept" in stderr
    assert "Traceback" not in stderr
    assert sum(POINT_LINE in line for line in lines) < 6  # stopped mid-run, not after the last point
    # no_leftovers (teardown) checks that no server process survived


def test_serve_started_with_sigint_ignored_stops_on_sigint(no_leftovers, interrupted_cli):
    """Issue 15, defect 12, for ``serve``: LitServe's server used to outlive a ``serve`` started with SIGINT ignored."""
    rc, lines = interrupted_cli(["serve", "litserve"], lambda lines: any("Ctrl-C to stop" in x for x in lines),
                                "serve never came up", preexec_fn=_ignoring(signal.SIGINT))
    assert rc == 0, "".join(lines)[-3000:]
    assert any("stopping" in line for line in lines)
