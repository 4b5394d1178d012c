"""Load from several locust processes (locust's master/worker mode) and load shapes, against a real LitServe server.

* two local worker processes: the merged window counts are the sums of the processes' counts, the merged
  histogram holds exactly the successful requests and gives the record's percentiles, both processes carried load;
* open loop with two workers: each follows its own schedule at half the rate, together the rate asked for;
* a "remote" worker (really `servingbench generator-worker` started separately on loopback, as on another host)
  connects to the master's fixed port and does all the sending;
* a step shape (1 then 4 users) through locust's LoadTestShape: one record per stage, users as planned.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from servingbench.load.plan import PointPlan
from servingbench.load.point import run_point
from servingbench.load.pool import InputPool
from servingbench.measure.stats import LatencyHistogram
from servingbench.runtime.supervisor import free_port
from servingbench.scenarios.schema import ClosedLoop, Generator, Measurement, OpenLoop, Shape

pytestmark = pytest.mark.server

M = Measurement(warmup="0.5s", window="1s", windows=2, tolerance=1.0, max_duration="3s", min_requests=20,
                sample_every=5)


def test_two_local_workers_merge_exactly(litserve_live, tmp_path):
    w = ClosedLoop(name="c", kind="closed_loop", concurrency=[4])
    before = set(p.pid for p in psutil.process_iter())
    point = run_point(litserve_live, PointPlan(w, {"concurrency": 4}, M, 0, ["mlp"], Generator(workers=2)),
                      InputPool(litserve_live), None, tmp_path, tmp_path)
    gen = point["generator"]
    assert len(gen["processes"]) == 2 and gen["workers"] == 2
    assert len({p["pid"] for p in gen["processes"]}) == 2 and gen["pid"] not in {p["pid"] for p in gen["processes"]}
    for win in point["windows"]:
        assert win["count"] == sum(p["count"] for p in win["processes"])
        assert win["errors"] == sum(p["errors"] for p in win["processes"])
    assert all(sum(win["processes"][i]["count"] for win in point["windows"]) > 0 for i in (0, 1))  # both sent
    mt = point["metrics"]
    assert mt["errors"] == 0 and mt["requests"] == sum(win["count"] for win in point["windows"]) > 50
    merged = LatencyHistogram()
    for win in point["windows"]:
        merged.merge(LatencyHistogram.from_dict(win["histogram"]))
    assert merged.count == LatencyHistogram.from_dict(point["histogram"]).count == mt["requests"] - mt["errors"]
    assert all(mt["latency_s"][k] == v for k, v in merged.percentiles().items())
    assert 0 < mt["latency_s"]["p50"] <= mt["latency_s"]["p99"] < 1.0
    # Workers sampled and verified responses too (sample_every=5): no wrong outputs among them.
    assert "wrong_output" not in mt["errors_by_kind"]
    # The generator's workers are gone with it.
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
                 and "servingbench.load.generator" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, leftovers


def test_open_loop_rate_is_split_over_workers(litserve_live, tmp_path):
    w = OpenLoop(name="o", kind="open_loop", rates=[120], arrival="poisson", max_in_flight=16)
    point = run_point(litserve_live, PointPlan(w, {"rate": 120}, M, 0, ["mlp"], Generator(workers=2)),
                      InputPool(litserve_live), None, tmp_path, tmp_path)
    mt = point["metrics"]
    # Two independent Poisson streams at 60/s add up to 120/s (within noise of ~240-360 arrivals).
    assert 85 < mt["throughput_rps"] < 155, mt["throughput_rps"]
    per_proc = [sum(win["processes"][i]["count"] for win in point["windows"]) for i in (0, 1)]
    assert min(per_proc) > 0.5 * max(per_proc), per_proc


def test_remote_worker_serves_consecutive_points_over_loopback(litserve_live, tmp_path):
    """The multi-host recipe on loopback: `servingbench generator-worker` started on its own (as on another host)
    connects to the master's fixed port for every load point of a run, then leaves when no master comes."""
    port = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "servingbench.cli", "generator-worker", "--master-host",
                               "127.0.0.1", "--master-port", str(port), "--connect-timeout", "8"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        g = Generator(remote_workers=1, master_port=port, connect_timeout="60s")
        pids = []
        for users in (2, 1):
            w = ClosedLoop(name="c", kind="closed_loop", concurrency=[users])
            point = run_point(litserve_live, PointPlan(w, {"concurrency": users}, M, 0, ["mlp"], g),
                              InputPool(litserve_live), None, tmp_path, tmp_path)
            procs = point["generator"]["processes"]
            assert len(procs) == 1 and procs[0]["pid"] != point["generator"]["pid"]
            pids.append(procs[0]["pid"])
            assert point["metrics"]["requests"] > 50 and point["metrics"]["errors"] == 0
        assert pids[0] != pids[1]  # a fresh worker process per load point, both from the one command
        assert worker.wait(timeout=40) == 0, worker.stdout.read().decode()[-2000:]  # no third master: done
        assert b"after 2 load point(s)" in worker.stdout.read()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, 9)
            worker.wait()


def test_step_shape_one_record_per_stage(litserve_live, tmp_path):
    w = Shape(name="steps", kind="shape", stages=[{"users": 1, "duration": "2s"}, {"users": 4, "duration": "2s"}])
    out = run_point(litserve_live, PointPlan(w, {"stages": 2}, M, 0, ["mlp"]), InputPool(litserve_live), None,
                    tmp_path, tmp_path)
    stages = out["stages"]
    assert [s["stage"] for s in stages] == [0, 1] and [s["users"] for s in stages] == [1, 4]
    for s in stages:
        assert [x["users"] for x in s["timeline"] if not x["transition"]] == [s["users"]]
        assert s["metrics"]["requests"] > 20 and s["metrics"]["errors"] == 0
        assert s["resources"]["samples"] >= 1  # sampled while this stage ran
    # One user waits for each answer; four keep the server's queue non-empty: never slower per request served.
    assert stages[1]["metrics"]["throughput_rps"] > 0.8 * stages[0]["metrics"]["throughput_rps"]


def test_a_worker_killed_mid_point_fails_the_point_and_leaves_no_process(litserve_live, tmp_path):
    import threading
    import time

    w = ClosedLoop(name="c", kind="closed_loop", concurrency=[2])
    m = Measurement(warmup="0.5s", window="1s", windows=3, tolerance=0.01, max_duration="8s", min_requests=20)
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.time() + 20
        while time.time() < deadline and not killed:
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "servingbench.load.generator --worker" in cmd:
                    time.sleep(2.0)  # well into the measurement
                    p.kill()
                    killed.append(p.pid)
                    return
            time.sleep(0.1)

    t = threading.Thread(target=kill_a_worker, daemon=True)
    t.start()
    with pytest.raises(RuntimeError, match="(?s)load generator failed .*worker [0-9]+ exited with -9"):
        run_point(litserve_live, PointPlan(w, {"concurrency": 2}, m, 0, ["mlp"], Generator(workers=2)),
                  InputPool(litserve_live), None, tmp_path, tmp_path)
    t.join()
    assert killed
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline"])
            if "servingbench.load.generator" in " ".join(p.info["cmdline"] or [])]
    assert not left, left
    litserve_live.check_alive()  # the server is unharmed
