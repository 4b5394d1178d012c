"""Planning a suite: repeats restart the server and interleave the frameworks; the canary's verdict; an SLO probe
seen from a point record."""

from __future__ import annotations

import pytest

from servingbench.load.kinds import probe_outcome
from servingbench.measure import canary
from servingbench.measure.stats import LatencyHistogram
from servingbench.scenarios.schema import Suite
from servingbench.suite import plan_cells

SUITE = {
    "name": "t", "frameworks": ["litserve", "mosec"], "models": ["mlp"],
    "workloads": [{"name": "c", "kind": "closed_loop", "concurrency": [1]}],
}


def test_repeats_are_fresh_cells_interleaved_across_frameworks():
    suite = Suite.model_validate({**SUITE, "measurement": {"repeats": 3}})
    cells = plan_cells(suite)
    assert [c.id for c in cells] == ["litserve/default#r0", "mosec/default#r0", "litserve/default#r1",
                                     "mosec/default#r1", "litserve/default#r2", "mosec/default#r2"]
    assert [c.repeat for c in cells] == [0, 0, 1, 1, 2, 2]


def test_a_single_repeat_keeps_the_plain_cell_ids():
    assert [c.id for c in plan_cells(Suite.model_validate(SUITE))] == ["litserve/default", "mosec/default"]


def test_a_workload_may_ask_for_more_repeats_than_the_suite():
    wl = {"name": "c", "kind": "closed_loop", "concurrency": [1], "measurement": {"repeats": 2}}
    suite = Suite.model_validate({**SUITE, "workloads": [wl]})
    assert len(plan_cells(suite, ["mosec"])) == 2


@pytest.mark.parametrize("before, after, changed", [
    ((0.100, 0.01), (0.101, 0.01), False),   # 1 % apart, noise 1 %: same speed
    ((0.100, 0.01), (0.120, 0.01), True),    # 20 % slower
    ((0.100, 0.10), (0.115, 0.10), False),   # 15 % apart but the canary itself is 10 % noisy
    ((0.100, 0.00), (0.104, 0.00), True),    # beyond the 3 % floor
])
def test_canary_change_is_judged_against_its_own_noise(before, after, changed):
    b = {"median_s": before[0], "rel_spread": before[1]}
    a = {"median_s": after[0], "rel_spread": after[1]}
    out = canary.compare(b, a)
    assert out["changed"] is changed
    assert out["drift"] == pytest.approx(after[0] / before[0] - 1)


def test_probe_outcome_counts_errors_and_slow_requests_as_over_the_target():
    h = LatencyHistogram()
    for _ in range(900):
        h.record(0.010)
    for _ in range(90):
        h.record(0.200)
    point = {"metrics": {"duration_s": 10.0, "errors": 10, "requests": 1000, "error_rate": 0.01,
                         "latency_s": {"p99": 0.2}},
             "histogram": h.to_dict(), "validity": {"flags": ["errors"]}}
    o = probe_outcome(point, 0.050)
    assert o.over_target == 100 and o.requests == 1000 and o.flags == ["errors"]
    assert o.goodput_rps == pytest.approx(90.0) and o.offered_rps == pytest.approx(100.0)


def test_a_kept_calibration_is_reused_only_for_the_same_cpus_and_generator(tmp_path, monkeypatch):
    from servingbench import suite as s

    monkeypatch.setenv(s.CALIBRATION_CACHE_ENV, str(tmp_path / "cal.json"))
    a = {"cpus": [[0], [1]], "generator": {"workers": 1}}
    b = {"cpus": [None, None], "generator": {"workers": 1}}
    assert s._cached_calibration(a) is None
    s._keep_calibration(a, {"ceiling_rps": 1000.0})
    s._keep_calibration(b, {"ceiling_rps": 2000.0})
    assert s._cached_calibration(a)["ceiling_rps"] == 1000.0 and s._cached_calibration(a)["reused_from"]
    assert s._cached_calibration(b)["ceiling_rps"] == 2000.0
    assert s._cached_calibration({**a, "generator": {"workers": 2}}) is None
    (tmp_path / "cal.json").write_text("not json")
    assert s._cached_calibration(a) is None  # a damaged cache is measured again, not an error
    monkeypatch.delenv(s.CALIBRATION_CACHE_ENV)
    assert s._cached_calibration(a) is None
