"""Coordinated omission, shown against a real server: a 1 s stall (SIGSTOP of the whole LitServe tree).

Closed loop: the users wait with the server, so only a handful of requests see the stall and p99 stays low.
Open loop: requests keep their intended send times, so everything scheduled during the stall is late and p99
shows the backlog.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from servingbench.deploy.live import LiveDeployment
from servingbench.load.plan import PointPlan
from servingbench.load.point import run_point
from servingbench.load.pool import InputPool
from servingbench.scenarios.schema import ClosedLoop, Measurement, OpenLoop

pytestmark = pytest.mark.server

M = Measurement(warmup="0.5s", window="4s", windows=1, max_duration="4s", min_requests=50, sample_every=10)


def stall_later(live: LiveDeployment, after: float, seconds: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after)
        procs = live.processes()
        for p in procs:
            os.kill(p.pid, signal.SIGSTOP)
        time.sleep(seconds)
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def measure(live, workload, load, tmp_path, stall: bool) -> dict:
    t = stall_later(live, after=M.warmup + 1.5, seconds=1.0) if stall else None
    point = run_point(live, PointPlan(workload, load, M, 0, ["mlp"]), InputPool(live), None, tmp_path, tmp_path)
    if t:
        t.join()
    return point["metrics"]


def test_open_loop_shows_the_stall_closed_loop_hides_it(litserve_live, tmp_path):
    closed = ClosedLoop(name="c", kind="closed_loop", concurrency=[2])
    opened = OpenLoop(name="o", kind="open_loop", rates=[150], arrival="constant", max_in_flight=64)
    base_closed = measure(litserve_live, closed, {"concurrency": 2}, tmp_path, stall=False)
    stalled_closed = measure(litserve_live, closed, {"concurrency": 2}, tmp_path, stall=True)
    stalled_open = measure(litserve_live, opened, {"rate": 150}, tmp_path, stall=True)

    # Closed loop: 2 users -> at most ~2 requests wait out the stall among hundreds; p99 barely moves.
    assert stalled_closed["latency_s"]["p99"] < 0.25, stalled_closed["latency_s"]
    assert stalled_closed["latency_s"]["max"] > 0.9  # the stall happened
    # Open loop: ~150 requests were due during the 1 s stall; latencies from intended times expose it.
    assert stalled_open["latency_s"]["p99"] > 0.6, stalled_open["latency_s"]
    assert stalled_open["latency_s"]["p90"] > 5 * base_closed["latency_s"]["p90"]
    assert stalled_open["errors"] == 0
