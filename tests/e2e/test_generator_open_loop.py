"""The open-loop generator against a real LitServe server: no connection churn at a low rate, and the generator's
new per-point fields (stable windows on throughput and p50, connections, event-loop lag, run-queue delay).

At 40 requests/s with a pool of 256 users, the old FIFO hand-off sent every request from a different user (each
idle 256 / 40 = 6.4 s, longer than uvicorn's 5 s keep-alive): one new connection per request, ~160 in this point.
Handing each send to the most recently freed user keeps about rate x latency users, and connections, in use.
"""

from __future__ import annotations

import pytest

from servingbench.load.plan import PointPlan
from servingbench.load.point import run_point
from servingbench.load.pool import InputPool
from servingbench.scenarios.schema import Generator, Measurement, OpenLoop

pytestmark = pytest.mark.server

RATE = 40.0
M = Measurement(warmup="1s", window="1s", windows=3, tolerance=1.0, max_duration="3s", min_requests=20,
                sample_every=10)


def _raw(point: dict, key: str):
    """A generator field as the harness passes it on (under ``generator``; top level where it is kept there)."""
    return point[key] if key in point else point["generator"][key]


def test_open_loop_at_a_low_rate_reuses_its_connections(litserve_live, tmp_path):
    w = OpenLoop(name="o", kind="open_loop", rates=[RATE], arrival="poisson", max_in_flight=256)
    point = run_point(litserve_live, PointPlan(w, {"rate": RATE}, M, 0, ["mlp"]), InputPool(litserve_live), None,
                      tmp_path, tmp_path)
    mt, gen = point["metrics"], point["generator"]
    assert mt["errors"] == 0 and mt["requests"] > 80, mt
    p99 = mt["latency_s"]["p99"]
    opened = _raw(point, "connections_opened")  # warm-up included
    # rate x latency users busy at once (x 2 for bursts), at least a few: not one connection per request.
    assert 1 <= opened <= max(4, RATE * p99 * 2), (opened, p99, mt["requests"])
    assert opened * 10 < mt["requests"], (opened, mt["requests"])
    assert gen["connections_opened_measured"] <= opened
    print(f"\nopen loop {RATE:g} rps: {mt['requests']} measured requests, {opened} connections opened "
          f"({gen['connections_opened_measured']} during the windows), p50 {1e3 * mt['latency_s']['p50']:.2f} ms, "
          f"p99 {1e3 * p99:.2f} ms, loop lag {gen['loop_lag_ms']}, run queue {gen['run_queue_delay_pct']}")
    # Per-window stability metrics, and where the reported windows begin.
    for win in point["windows"]:
        assert win["throughput_rps"] == pytest.approx(win["count"] / (win["end"] - win["start"]), rel=1e-6)
        assert 0 < win["p50_s"] < 0.5
    # Generator health over the measured windows.
    lag = gen["loop_lag_ms"]
    assert gen["processes"][0]["loop_lag_ms"]["samples"] > 100  # one probe every 10 ms over ~3 s
    assert 0 <= lag["p99"] <= lag["max"] < 1000
    assert gen["run_queue_delay_ms"] is None or 0 <= gen["run_queue_delay_pct"] < 100


def test_two_processes_report_their_health_and_constant_streams_add_up(litserve_live, tmp_path):
    w = OpenLoop(name="o", kind="open_loop", rates=[80], arrival="constant", max_in_flight=16)
    point = run_point(litserve_live, PointPlan(w, {"rate": 80}, M, 0, ["mlp"], Generator(workers=2)),
                      InputPool(litserve_live), None, tmp_path, tmp_path)
    mt, gen = point["metrics"], point["generator"]
    assert mt["errors"] == 0
    assert 70 < mt["throughput_rps"] < 90, mt["throughput_rps"]  # two constant streams at 40/s, interleaved
    procs = gen["processes"]
    assert len(procs) == 2
    assert gen["connections_opened"] == sum(p["connections_opened"] for p in procs) <= 8
    assert gen["loop_lag_ms"]["max"] == max(p["loop_lag_ms"]["max"] for p in procs)
    assert gen["loop_lag_ms"]["p99"] == max(p["loop_lag_ms"]["p99"] for p in procs)
    if gen["run_queue_delay_pct"] is not None:
        assert gen["run_queue_delay_pct"] == max(p["run_queue_delay_pct"] for p in procs)


def test_a_warm_spare_runs_the_next_point_and_is_gone_after_the_cell(litserve_live, tmp_path):
    """The next point's generator is started ahead (imports done) once a point's generator exited; it runs that
    point (same pid), the batch counts stay per point, a spare that died is not handed a plan (the point would start
    a fresh generator), and leaving the WarmGenerator leaves no process behind."""
    import psutil

    from servingbench.load.point import WarmGenerator
    from servingbench.scenarios.schema import ClosedLoop

    w = ClosedLoop(name="c", kind="closed_loop", concurrency=[2])
    m = Measurement(warmup="0.5s", window="1s", windows=2, tolerance=1.0, max_duration="2s", min_requests=20)
    pool = InputPool(litserve_live)
    with WarmGenerator() as warm:
        first = run_point(litserve_live, PointPlan(w, {"concurrency": 2}, m, 0, ["mlp"]), pool, None, tmp_path,
                          tmp_path, warm)
        spare = warm._spare
        assert spare is not None and spare.poll() is None  # started once the first generator exited
        second = run_point(litserve_live, PointPlan(w, {"concurrency": 2}, m, 0, ["mlp"]), pool, None, tmp_path,
                           tmp_path, warm)
        assert second["generator"]["pid"] == spare.pid != first["generator"]["pid"]
        last = warm._spare
        assert last is not None and last.pid != spare.pid  # the one after
        # A spare that died meanwhile is not used: the point runs on a fresh generator.
        last.kill()
        last.wait()
        assert warm.take(None, tmp_path / "unused.plan.json", tmp_path / "unused.log") is None
    assert last.poll() is not None and not psutil.pid_exists(last.pid)
    for p in (first, second):
        mt, b = p["metrics"], p["batch_sizes"]
        # every measured request was one model call of one row, and the calls are this point's only (warm-up
        # included), not the earlier points' again (the reused closing reading of the point before)
        assert mt["errors"] == 0 and b["histogram"] == {"1": b["calls"]}, b
        assert mt["requests"] <= b["calls"] <= 2 * mt["requests"], (mt["requests"], b)
    assert "spare generator exited" not in (tmp_path / "generator-spare.log").read_text()


def test_a_spare_ends_at_end_of_input(tmp_path):
    """If the harness goes away (its end of the pipe closes), a waiting spare exits by itself."""
    from servingbench.load.point import WarmGenerator

    warm = WarmGenerator()
    warm.prepare(None, tmp_path)
    proc = warm._spare
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    warm.close()
