"""Issue 19: a suite run in a terminal (a pty) shows progress bars with an ETA and the running point's live
numbers, and ends with a summary table.  (Through a pipe in CI: plain lines, checked by test_run_litserve.)"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server

SUITE = """\
name: progress
frameworks: [calibration]
models: [mlp]
deployments:
  - label: s2ms
    options: {calibration: {service_ms: 2}}
inprocess_limit: false
measurement: {warmup: 0.5s, window: 1s, windows: 2, max_duration: 4s, min_requests: 20, tolerance: 0.3}
workloads:
  - {name: closed, kind: closed_loop, concurrency: [2, 4]}
"""


def _env(prefix: str) -> dict[str, str]:
    env = {**os.environ, "SERVINGBENCH_ADAPTERS": REGISTRATION, "SERVINGBENCH_MARKER_PREFIX": prefix,
           "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    for k in ("SERVINGBENCH_CALIBRATION_SLOWDOWN", "NO_COLOR", "TTY_COMPATIBLE", "FORCE_TERMINAL", "FORCE_COLOR",
              "CI"):
        env.pop(k, None)
    return env


def test_in_a_terminal_the_run_shows_bars_eta_and_live_point_numbers(tmp_path, no_leftovers):
    (tmp_path / "suite.yaml").write_text(SUITE)
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "servingbench.cli", "run", str(tmp_path / "suite.yaml"),
                          "--out", str(tmp_path / "results")], stdin=slave, stdout=slave, stderr=slave,
                         env=_env(no_leftovers), start_new_session=True, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                break
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        os.close(master)
    raw = b"".join(chunks).decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # strip the terminal's control sequences
    assert p.returncode == 0, text[-3000:]
    assert re.search(r"suite\s+[━╸╺]+", text), "no progress bar was drawn:\n" + text[-3000:]
    assert re.search(r"suite .*ETA \d", text), text[-3000:]
    assert re.search(r"calibration/s2ms .*ETA \d", text), text[-3000:]
    assert re.search(r"window \d+: [\d,]+ rps, p99 [\d.]+ ms", text), "no live point numbers:\n" + text[-3000:]
    assert re.search(r"calibration/s2ms\s*│\s*ok\s*│\s*[0-2]/2", text), "no summary table:\n" + text[-3000:]


# Through a pipe with CI=true (plain lines, the summary table): tests/e2e/test_run_litserve.py::test_run_records_points.
