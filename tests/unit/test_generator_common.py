"""Pure parts of the load generator: exact merging of processes' windows, shapes, saturation, the schema."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pydantic import ValidationError

from servingbench.load.point import generator_plan, generator_saturated
from servingbench.measure.stats import LatencyHistogram, stable_tail
from servingbench.scenarios.loader import ScenarioError, apply_overrides, load_suite
from servingbench.scenarios.schema import Generator, Shape
from servingbench.load.common import (
    HandOff,
    Schedule,
    merge_health,
    merge_window,
    read_run_delay_ns,
    schedule_offset,
    shape_cuts,
    shape_users,
    stability_series,
)


def _report(index: int, samples: np.ndarray, errors: int = 0, model: str = "mlp") -> dict:
    h = LatencyHistogram()
    h.record_many(samples)
    return {"index": index, "window": {"duration": 1.0, "count": len(samples) + errors, "errors": errors,
                                       "histogram": h.to_dict(), "per_model": {model: h.to_dict()}}}


def test_merged_window_equals_one_histogram_of_all_samples():
    rng = np.random.default_rng(7)
    a = rng.lognormal(np.log(2e-3), 0.4, 4000)  # a fast process
    b = rng.lognormal(np.log(9e-3), 0.8, 1000)  # a slow one: averaging percentiles would be badly wrong
    merged = merge_window([_report(0, a, errors=3), _report(1, b)], 0.0, 1.0)
    assert merged["count"] == 5003 and merged["errors"] == 3
    assert [p["count"] for p in merged["processes"]] == [4003, 1000]
    whole = LatencyHistogram()
    whole.record_many(np.concatenate([a, b]))
    got = LatencyHistogram.from_dict(merged["histogram"])
    assert got.count == 5000
    assert got.percentiles() == whole.percentiles()  # bucket for bucket the same histogram
    assert LatencyHistogram.from_dict(merged["per_model"]["mlp"]).percentiles() == whole.percentiles()
    # and within the histogram's 1 % of the exact order statistic
    exact = float(np.quantile(np.concatenate([a, b]), 0.99, method="inverted_cdf"))
    assert got.percentile(99) == pytest.approx(exact, rel=0.01)
    exact50 = float(np.quantile(np.concatenate([a, b]), 0.5, method="inverted_cdf"))
    assert got.percentile(50) == pytest.approx(exact50, rel=0.01)
    naive50 = (np.quantile(a, 0.5) + np.quantile(b, 0.5)) / 2
    assert abs(naive50 - exact50) / exact50 > 0.5  # what averaging the processes' medians would report


def test_single_process_window_has_no_process_breakdown():
    w = merge_window([_report(0, np.full(10, 1e-3))], 0.0, 1.0)
    assert "processes" not in w and w["count"] == 10


def test_step_and_ramp_users():
    stages = [{"users": 2, "duration": 10.0}, {"users": 8, "duration": 10.0}]
    assert [shape_users(stages, False, 1, t) for t in (0, 9.9, 10, 19.9, 30)] == [2, 2, 8, 8, 8]
    ramp = [shape_users(stages, True, 1, t) for t in np.arange(0, 20, 0.5)]
    assert ramp[0] == 1 and ramp == sorted(ramp) and ramp[-1] in (7, 8)
    assert shape_users(stages, True, 1, 5.0) == 2 or shape_users(stages, True, 1, 5.0) == 1  # halfway 1 -> 2
    assert shape_users(stages, True, 1, 15.0) == 5  # halfway 2 -> 8


def test_shape_windows_are_cut_at_stage_boundaries():
    cuts = shape_cuts([{"users": 1, "duration": 3.0}, {"users": 4, "duration": 1.0}], 1.0)
    assert cuts == [(1.0, 0, True), (2.0, 0, False), (3.0, 0, False), (4.0, 1, False)]
    assert shape_cuts([{"users": 1, "duration": 5.0}], 2.0) == [(2.5, 0, True), (5.0, 0, False)]


def test_saturation_per_process_and_per_host():
    one = {"cpu_pct": 95.0, "processes": [{"host": "a", "cpu_pct": 95.0, "cpus": [1]}]}
    assert generator_saturated(one)
    shared_core = {"cpu_pct": 48.0, "processes": [{"host": "a", "cpu_pct": 48.0, "cpus": [1]},
                                                  {"host": "a", "cpu_pct": 47.0, "cpus": [1]}]}
    assert generator_saturated(shared_core)  # two workers on one core: 95 % of it
    own_cores = {"cpu_pct": 48.0, "processes": [{"host": "a", "cpu_pct": 48.0, "cpus": [0]},
                                                {"host": "a", "cpu_pct": 47.0, "cpus": [1]}]}
    assert not generator_saturated(own_cores)
    assert not generator_saturated({"cpu_pct": 40.0})  # a record from before processes were kept


def test_generator_schema_and_plan():
    with pytest.raises(ValidationError, match="master_port"):
        Generator(remote_workers=2)
    assert generator_plan(None) == {"workers": 0} and generator_plan(Generator()) == {"workers": 0}
    p = generator_plan(Generator(workers=2))
    assert p["workers"] == 2 and p["master_bind"] == "127.0.0.1" and 0 < p["master_port"] < 65536
    assert generator_plan(Generator(remote_workers=1, master_port=5599))["master_port"] == 5599


def test_shape_schema():
    s = Shape(name="s", kind="shape", stages=[{"users": 1, "duration": "2s"}, {"users": 4, "duration": "500ms"}])
    assert s.total_duration() == pytest.approx(2.5) and s.shape == "step"
    with pytest.raises(ValidationError):
        Shape(name="s", kind="shape", stages=[])
    with pytest.raises(ValidationError, match="unit"):
        Shape(name="s", kind="shape", stages=[{"users": 1, "duration": 2}])


def test_command_line_overrides(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: t\nframeworks: [litserve]\nmodels: [mlp]\n"
                 "workloads: [{name: c, kind: closed_loop, concurrency: [1]}]\n"
                 "generator: {connect_timeout: 5s}\n")
    suite = load_suite(f)
    two = apply_overrides(suite, f, generator_workers=2, runtime="docker")
    assert two.generator.workers == 2 and two.generator.connect_timeout == 5.0 and two.runtime == "docker"
    assert apply_overrides(suite, f) is suite
    with pytest.raises(ScenarioError, match="--runtime: 'podman'"):
        apply_overrides(suite, f, runtime="podman")
    with pytest.raises(ScenarioError, match="--generator-workers 99"):
        apply_overrides(suite, f, generator_workers=99)
    with pytest.raises(ScenarioError, match="--generator-workers many: .* or auto"):
        apply_overrides(suite, f, generator_workers="many")
    assert apply_overrides(suite, f, generator_workers="3").generator.workers == 3
    auto = apply_overrides(suite, f, generator_workers="auto").generator
    assert auto.local_workers({1}) == 0 and auto.local_workers({2, 3, 4}) == 3  # one core: a single process


def test_shape_in_a_suite_file_reports_line_and_field(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: t\nframeworks: [litserve]\nmodels: [mlp]\nworkloads:\n"
                 "  - name: steps\n    kind: shape\n    stages:\n      - {users: 0, duration: 2s}\n")
    with pytest.raises(ScenarioError) as e:
        load_suite(f)
    assert "workloads.0.stages.0.users" in str(e.value) and "line 8" in str(e.value)


def test_report_names_the_generator_processes():
    from servingbench.report.build import _generator_text

    assert _generator_text({}) == "one locust process" == _generator_text({"workers": 0, "remote_workers": 0})
    assert _generator_text({"workers": 2}) == "locust master/worker: 2 local worker(s)"
    assert _generator_text({"workers": "auto", "remote_workers": 3}) == \
        "locust master/worker: auto local worker(s) + 3 remote worker(s)"


# ---- stability on throughput and p50, per window ----------------------------------------------------------------
def test_merged_window_carries_its_throughput_and_median():
    w = merge_window([_report(0, np.full(30, 2e-3), errors=2), _report(1, np.full(10, 4e-3))], 1.0, 1.5)
    assert w["throughput_rps"] == pytest.approx(40 / 0.5)  # successful answers per second of the window
    assert w["p50_s"] == pytest.approx(2e-3, rel=0.01)
    empty = merge_window([{"index": 0, "window": {"duration": 1.0, "count": 3, "errors": 3,
                                                  "histogram": LatencyHistogram().to_dict(), "per_model": {}}}],
                         0.0, 1.0)
    assert empty["throughput_rps"] == 0.0 and empty["p50_s"] is None
    tput, p50 = stability_series([w, empty])
    assert tput == [w["throughput_rps"], 0.0] and p50[0] == w["p50_s"] and p50[1] == float("inf")


def _window(start: float, tput: float, p50: float) -> dict:
    n = int(round(tput))
    return merge_window([_report(0, np.full(n, p50))], start, start + 1.0)


def test_stability_needs_throughput_and_p50_to_agree():
    # 4 slow windows then 3 stable ones: the stable tail starts at window 4, earlier windows are not reported.
    ws = [_window(i, 100, 2e-3) for i in range(4)] + [_window(4 + i, 200, 2e-3) for i in range(3)]
    assert stable_tail(*stability_series(ws[:6]), 3, 0.1) is None
    assert stable_tail(*stability_series(ws), 3, 0.1) == 4
    # Throughput agrees, the median does not (a server slowing down under a fixed rate): not stable.
    drifting = [_window(i, 200, d) for i, d in enumerate((2e-3, 3e-3, 4e-3))]
    assert stable_tail(*stability_series(drifting), 3, 0.1) is None
    # A window without one successful answer never agrees.
    dead = [_window(0, 200, 2e-3), _window(1, 200, 2e-3), merge_window([_report(0, np.array([]), errors=5)], 2, 3)]
    assert stable_tail(*stability_series(dead), 3, 0.1) is None


# ---- open loop: LIFO hand-off -------------------------------------------------------------------------------------
def _simulate(handoff: HandOff, pool: int, arrivals: np.ndarray, service: np.ndarray, keepalive: float = 5.0):
    """A fake pool of users behind ``handoff``: each arrival goes to ``handoff.take()``; a user is busy for its
    service time, then freed (in completion order).  A user's connection is (re)opened on its first send and
    whenever it idled longer than ``keepalive``.  Returns (users that sent, connections opened)."""
    for u in range(pool):
        handoff.free(u)
    busy: list[tuple[float, int]] = []  # (done, user)
    last_done: dict[int, float] = {}
    used, opened = set(), 0
    for t, s in zip(arrivals, service):
        for done, u in sorted(x for x in busy if x[0] <= t):
            busy.remove((done, u))
            handoff.free(u)
        u = handoff.take()
        assert u is not None  # the pool is far larger than rate x latency here
        if u not in last_done or t - last_done[u] > keepalive:
            opened += 1
        used.add(u)
        busy.append((t + s, u))
        last_done[u] = t + s
    return used, opened


def test_lifo_hand_off_keeps_the_connections_in_use_at_rate_times_latency():
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(1 / 40, 800))  # 40 rps, Poisson, 20 s
    service = rng.lognormal(np.log(2.4e-3), 0.3, len(arrivals))
    used, opened = _simulate(HandOff(), 256, arrivals, service)
    assert len(used) <= 3 and opened == len(used)  # rate x latency ~ 0.1: a user or two, connections kept alive
    # The old FIFO order: every user of the pool takes its turn, each idles 256/40 = 6.4 s > keep-alive (5 s),
    # so every request opens a connection (the "517 requests on 517 connections").
    used_fifo, opened_fifo = _simulate(HandOff(lifo=False), 256, arrivals, service)
    assert len(used_fifo) == 256 and opened_fifo == len(arrivals)
    # At a higher rate LIFO still uses about as many users as are busy at once, not the pool.
    arrivals = np.cumsum(rng.exponential(1 / 400, 4000))
    service = rng.lognormal(np.log(5e-3), 0.5, len(arrivals))
    used, opened = _simulate(HandOff(), 256, arrivals, service)
    assert len(used) <= 20 and opened == len(used)


def test_hand_off_order_and_discard():
    h = HandOff()
    for u in "abc":
        h.free(u)
    h.discard("b")
    h.discard("zz")  # not idle: nothing happens
    assert len(h) == 2 and h.take() == "c" and h.take() == "a" and h.take() is None
    f = HandOff(lifo=False)
    for u in "abc":
        f.free(u)
    assert [f.take(), f.take(), f.take()] == ["a", "b", "c"]


# ---- phase offsets of constant streams across processes ----------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_constant_streams_of_n_processes_interleave_evenly(n):
    rate, t0 = 90.0, 100.0
    sends = []
    for i in range(n):
        s = Schedule(rate / n, "constant", None, schedule_offset(i, n, rate, "constant"))
        s.start(t0)
        sends += [s.next() for _ in range(50)]
    gaps = np.diff(np.sort(sends))
    assert len(sends) == 50 * n
    assert np.allclose(gaps, 1 / rate, rtol=1e-6, atol=1e-9), (gaps.min(), gaps.max())  # no clumps
    assert [schedule_offset(i, n, rate, "constant") for i in range(n)] == pytest.approx([i / rate for i in range(n)])
    # in phase (the old behaviour) n processes send together: gaps of 0 and n / rate
    if n > 1:
        inphase = np.sort([t0 + k * n / rate for _ in range(n) for k in range(1, 51)])
        assert np.diff(inphase).min() == 0


def test_poisson_streams_have_no_offset():
    assert all(schedule_offset(i, 4, 100.0, "poisson") == 0.0 for i in range(4))
    s = Schedule(50.0, "poisson", np.random.default_rng(0))
    s.start(10.0)
    t = [s.next() for _ in range(5000)]
    assert np.all(np.diff(t) > 0) and (t[-1] - 10.0) / 5000 == pytest.approx(1 / 50, rel=0.05)


# ---- generator health: merge over processes, schedstat ------------------------------------------------------------
def test_merge_of_the_health_fields():
    procs = [
        {"connections_opened": 3, "connections_opened_measured": 0, "loop_lag_ms": {"p99": 0.4, "max": 7.5},
         "run_queue_delay_ms": 12.0, "run_queue_delay_pct": 0.4},
        {"connections_opened": 5, "connections_opened_measured": 2, "loop_lag_ms": {"p99": 1.2, "max": 3.0},
         "run_queue_delay_ms": 90.0, "run_queue_delay_pct": 3.0},
        {"connections_opened": 1, "connections_opened_measured": None, "loop_lag_ms": {"p99": None, "max": None},
         "run_queue_delay_ms": None, "run_queue_delay_pct": None},  # a process that measured nothing
    ]
    m = merge_health(procs)
    assert m["connections_opened"] == 9 and m["connections_opened_measured"] == 2  # summed
    assert m["loop_lag_ms"] == {"p99": 1.2, "max": 7.5}  # the worst process's, each separately
    assert m["run_queue_delay_ms"] == 90.0 and m["run_queue_delay_pct"] == 3.0
    none = merge_health([{}])
    assert none == {"connections_opened": 0, "connections_opened_measured": 0,
                    "loop_lag_ms": {"p99": None, "max": None}, "run_queue_delay_ms": None, "run_queue_delay_pct": None}


def test_run_queue_delay_from_schedstat(tmp_path):
    f = tmp_path / "schedstat"
    f.write_text("116404 1137997 2\n")
    assert read_run_delay_ns(str(f)) == 1137997
    assert read_run_delay_ns(str(tmp_path / "missing")) is None
    f.write_text("garbage\n")
    assert read_run_delay_ns(str(f)) is None
    if os.path.exists("/proc/self/schedstat"):
        assert read_run_delay_ns() >= 0
