"""Statistics: histogram error bound, percentiles vs numpy, merging, stability, SLO search, intended-time latency."""

from __future__ import annotations

import numpy as np
import pytest

from servingbench.measure.stats import (
    LatencyHistogram,
    StabilityRule,
    constant_schedule,
    intended_time_latencies,
    poisson_schedule,
    significant_change,
    slo_search,
    summarize_repeats,
)

rng = np.random.default_rng(42)
SAMPLES = {
    "lognormal": rng.lognormal(mean=np.log(2e-3), sigma=0.8, size=50_000),
    "uniform": rng.uniform(1e-4, 5e-2, size=50_000),
    "bimodal": np.concatenate([rng.normal(1e-3, 1e-4, 40_000), rng.normal(0.2, 0.01, 10_000)]).clip(1e-5),
}


def hist_of(xs) -> LatencyHistogram:
    h = LatencyHistogram()
    for x in xs:
        h.record(float(x))
    return h


@pytest.mark.parametrize("name", SAMPLES)
def test_percentiles_within_one_percent_of_numpy(name):
    xs = SAMPLES[name]
    h = hist_of(xs)
    assert h.count == len(xs)
    for p in (50, 90, 95, 99, 99.9):
        # HdrHistogram's definition is numpy's inverted_cdf (on microsecond-rounded values).
        exact = np.percentile(np.round(xs * 1e6) / 1e6, p, method="inverted_cdf")
        assert h.percentile(p) == pytest.approx(exact, rel=0.01), (name, p)
    assert h.mean() == pytest.approx(xs.mean(), rel=0.01)


def test_merge_equals_histogram_of_concatenation():
    a, b = SAMPLES["lognormal"][:20_000], SAMPLES["bimodal"][:20_000]
    ha, hb = hist_of(a), hist_of(b)
    ha.merge(hb)
    whole = hist_of(np.concatenate([a, b]))
    assert ha.count == whole.count
    assert ha.percentiles() == whole.percentiles()


def test_encode_roundtrip_and_dict():
    h = hist_of(SAMPLES["uniform"][:5000])
    again = LatencyHistogram.from_dict(h.to_dict())
    assert again.count == h.count and again.percentiles() == h.percentiles()
    assert LatencyHistogram.from_dict(LatencyHistogram().to_dict()).count == 0
    with pytest.raises(ValueError, match="encoding"):
        LatencyHistogram.from_dict({"encoding": "csv"})


def test_clamping_counts_out_of_range_values():
    h = LatencyHistogram(highest_us=1_000_000)
    h.record(5.0)  # 5 s > 1 s
    h.record(0.0)  # below 1 us
    assert h.count == 2 and h.clamped == 2
    assert h.max() == pytest.approx(1.0, rel=0.01)


def test_cdf_is_monotone_and_ends_at_one():
    cdf = hist_of(SAMPLES["lognormal"][:10_000]).cdf(50)
    xs, fs = zip(*cdf)
    assert list(xs) == sorted(xs) and list(fs) == sorted(fs) and fs[-1] == 1.0


def test_stability_rule():
    rule = StabilityRule(windows=3, tolerance=0.10)
    assert rule.is_stable([50, 100, 101, 99])
    assert not rule.is_stable([100, 120, 100])
    assert not rule.is_stable([100, 100])  # too few windows
    assert rule.spread([100, 100]) is None
    assert rule.spread([90, 100, 110]) == pytest.approx(0.2)


def mm1_p99(rate: float, capacity: float = 1000.0, base: float = 0.001) -> float:
    return base / (1 - rate / capacity) if rate < capacity else float("inf")


def test_slo_search_finds_the_known_rate_from_below():
    target = 0.005  # p99 <= 5 ms  <=> rate <= 800 for capacity 1000
    truth = 1000.0 * (1 - 0.001 / target)
    res = slo_search(lambda r: (mm1_p99(r), 0.0), target, start_rate=10, rel_precision=0.02, max_steps=30)
    assert res.max_rate is not None
    assert truth * (1 - 0.02) <= res.max_rate <= truth
    assert all(p.ok == (p.p99_s <= target) for p in res.points)
    assert "converged" in res.reason


def test_slo_search_errors_count_as_failures():
    res = slo_search(lambda r: (0.001, 0.01 if r > 300 else 0.0), 0.005, start_rate=10, rel_precision=0.05)
    assert res.max_rate is not None and 300 * 0.95 <= res.max_rate <= 300


def test_slo_search_nothing_passes():
    res = slo_search(lambda r: (1.0, 0.0), 0.005, start_rate=10)
    assert res.max_rate is None and res.reason == "no rate met the SLO"
    assert len(res.points) >= 2


def test_intended_time_latency_reveals_a_stall():
    """100 rps schedule, sequential 2 ms service, the server stalls 1 s once at t=2 s."""
    intended = constant_schedule(100, 5.0)
    sent, done = [], []
    free_at = 0.0
    for t in intended:
        start = max(t, free_at)  # a closed-loop client sends only when the previous answer is back
        service = 0.002 + (1.0 if 2.0 <= start < 2.01 else 0.0)
        sent.append(start)
        free_at = start + service
        done.append(free_at)
    from_intended, from_sent = intended_time_latencies(intended, np.array(sent), np.array(done))
    assert np.percentile(from_sent, 99) < 0.01  # the closed-loop view hides the stall (one slow request)
    assert np.percentile(from_intended, 99) > 0.5  # the backlog shows from the intended send times
    assert from_intended.max() == pytest.approx(1.002, abs=0.02)


def test_schedules():
    t = poisson_schedule(200.0, 50.0, seed=1)
    assert len(t) / 50.0 == pytest.approx(200.0, rel=0.05)
    assert np.all(np.diff(t) >= 0) and t[-1] < 50.0
    assert len(constant_schedule(10, 2.0)) == 20


def test_significant_change():
    r = np.random.default_rng(7)
    base = 1000 * (1 + 0.05 * r.standard_normal(5))
    same = 1000 * (1 + 0.05 * r.standard_normal(5))
    worse = 700 * (1 + 0.05 * r.standard_normal(5))
    sig, rel, method = significant_change(base, worse)
    assert sig and rel == pytest.approx(-0.3, abs=0.06) and "Mann-Whitney" in method
    assert not significant_change(base, same)[0]
    assert significant_change([100], [70])[0] and not significant_change([100, 110], [105])[0]


def test_summarize_repeats():
    s = summarize_repeats([10, 12, 11, 13, 9, 10, 11, 12])
    assert s["n"] == 8 and s["median"] == 11 and s["min"] == 9 and s["ci95_low"] <= 11 <= s["ci95_high"]
    assert summarize_repeats([])["median"] is None
