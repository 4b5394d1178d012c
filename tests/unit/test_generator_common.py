"""Pure parts of the load generator: exact merging of processes' windows, shapes, saturation, the schema."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from servingbench.harness import generator_plan, generator_saturated
from servingbench.measure.stats import LatencyHistogram
from servingbench.scenarios.loader import ScenarioError, apply_overrides, load_suite
from servingbench.scenarios.schema import Generator, Shape
from servingbench.workloads.common import merge_window, shape_cuts, shape_users


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
