"""servingbench.measure.stats: histogram error bound and percentile definition against numpy, exact merges,
serialization, stability rule (throughput and latency), early stopping against scipy, SLO search on an analytic queue
(verdicts, confirmation, generator limits, insufficient probes), M/D/1 against a Lindley simulation, coordinated
omission, schedules, noise tests."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest

from servingbench.measure.stats import (
    NON_FAILING_FLAGS,
    SLO_DOWNWARD_HALVINGS,
    LatencyHistogram,
    ProbeOutcome,
    SloPoint,
    StabilityRule,
    constant_schedule,
    early_stopping_max_over,
    intended_time_latencies,
    md1_max_rate_for_p99,
    md1_p99_s,
    md1_wait_cdf,
    min_requests_for_p99,
    p99_early_stopping,
    poisson_schedule,
    probe_verdict,
    significant_change,
    slo_search,
    stable_tail,
    summarize_repeats,
)

PS = (50, 90, 95, 99, 99.9)


def _samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    n = 100_001  # odd on purpose: p50 is a single order statistic
    return {
        "lognormal": rng.lognormal(mean=np.log(2e-3), sigma=0.8, size=n),
        "uniform": rng.uniform(1e-4, 5e-2, size=n),
        "bimodal": np.concatenate([rng.normal(1e-3, 1e-4, 80_001), rng.normal(0.2, 0.01, 20_000)]).clip(1e-4),
    }


SAMPLES = _samples()


def hist_of(xs, **kw) -> LatencyHistogram:
    h = LatencyHistogram(**kw)
    h.record_many(xs)
    return h


# ---- LatencyHistogram: accuracy ------------------------------------------------------------------------------------
def test_default_configuration_bounds_the_relative_error_below_one_percent():
    h = LatencyHistogram()
    assert h.significant_digits == 2 and h.relative_error == pytest.approx(1 / 128)
    assert LatencyHistogram(significant_digits=1).relative_error > 0.01  # 1 digit would not do
    assert LatencyHistogram(significant_digits=3).relative_error < 0.001


@pytest.mark.parametrize("name", SAMPLES)
def test_percentiles_within_one_percent_of_numpy_inverted_cdf(name):
    xs = SAMPLES[name]
    h = hist_of(xs)
    assert h.count == len(xs) and h.clamped == 0
    got = h.percentiles((1, 10, 25, *PS, 99.99))
    for p in (1, 10, 25, *PS, 99.99):
        exact = float(np.percentile(xs, p, method="inverted_cdf"))
        v = got[f"p{p:g}"]
        assert v == pytest.approx(exact, rel=0.01), (name, p)
        # One-sided: the bucket's upper edge is reported, so never below the sample (but for the us rounding).
        assert exact - 0.5e-6 <= v <= exact * (1 + h.relative_error) + 0.5e-6, (name, p)
    assert h.mean() == pytest.approx(xs.mean(), rel=0.01)
    assert h.min() == pytest.approx(xs.min(), rel=0.01) and h.max() == pytest.approx(xs.max(), rel=0.01)


def test_percentile_definition_is_numpy_inverted_cdf_exactly():
    """Below 256 us buckets are 1 us wide: integer-microsecond samples are stored exactly and the rank rule shows."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 10, 1000, 1001):
        us = rng.integers(1, 256, size=n)
        h = hist_of(us / 1e6)
        for p in (0, 0.1, 1, 10, 12, 25, 33.3, 50, 66.7, 75, 90, 99, 99.9, 100):
            assert h.percentile(p) * 1e6 == pytest.approx(np.percentile(us, p, method="inverted_cdf")), (n, p)
    # HdrHistogram_py's own get_value_at_percentile rounds the rank half-up instead: for 10 samples, p12 is rank 1
    # there (int(1.2 + 0.5)) but rank 2 = ceil(1.2) in numpy / Java HdrHistogram.  That is why the rank is ours.
    h = hist_of(np.arange(1, 11) * 1e-4)
    assert h._h.get_value_at_percentile(12) == 100 and h.percentile(12) == pytest.approx(200e-6)
    # Exact decimal rank: p99.9 of 1000 samples is the 999th.  numpy says the 1000th here, because in floating
    # point 0.999 * 1000 is just above 999 (Java HdrHistogram guards against this with Math.nextAfter).
    h = hist_of(np.arange(1, 1001) * 1e-6)
    assert h.percentile(99.9) == pytest.approx(999e-6)
    assert np.percentile(np.arange(1, 1001), 99.9, method="inverted_cdf") == 1000


def test_percentile_arguments_and_empty_histogram():
    h = LatencyHistogram()
    assert h.count == 0 and math.isnan(h.percentile(99)) and math.isnan(h.mean())
    assert math.isnan(h.min()) and math.isnan(h.max()) and h.cdf() == []
    assert set(h.percentiles()) == {"p50", "p90", "p95", "p99", "p99.9"}
    for bad in (-1, 100.5, float("nan")):
        with pytest.raises(ValueError):
            h.percentile(bad)


def test_record_and_record_many_build_the_same_histogram():
    xs = np.concatenate([SAMPLES["lognormal"][:3000], [0.0, -1.0, 1e9, float("inf")]])
    one = LatencyHistogram()
    for x in xs:
        one.record(float(x))
    many = hist_of(xs)
    assert one.count == many.count == len(xs) and one.clamped == many.clamped == 4
    assert np.array_equal(one._counts(), many._counts())
    assert one.percentiles((0, *PS, 100)) == many.percentiles((0, *PS, 100))


def test_clamping():
    h = LatencyHistogram(highest_us=1_000_000)
    h.record(5.0)  # 5 s > 1 s
    h.record(0.0)  # below 1 us
    h.record(-0.2)  # a clock problem: counted, not dropped
    h.record(float("inf"), count=3)
    assert h.count == 6 and h.clamped == 6
    assert h.max() == pytest.approx(1.0, rel=0.01) and h.min() == pytest.approx(1e-6)
    h.record(0.5, count=0)
    assert h.count == 6
    with pytest.raises(ValueError):
        h.record(float("nan"))
    with pytest.raises(ValueError):
        h.record_many([0.1, float("nan")])
    with pytest.raises(ValueError):
        h.record(0.1, count=-1)
    with pytest.raises(ValueError):
        LatencyHistogram(lowest_us=0)
    with pytest.raises(ValueError):
        LatencyHistogram(significant_digits=6)


# ---- LatencyHistogram: merge and serialization ---------------------------------------------------------------------
def test_merge_equals_histogram_of_concatenation():
    a, b = SAMPLES["lognormal"][:40_000], SAMPLES["bimodal"][-40_000:]
    ha, hb = hist_of(a), hist_of(b)
    ha.merge(hb)
    whole = hist_of(np.concatenate([a, b]))
    assert ha.count == whole.count == 80_000
    grid = tuple(np.linspace(0, 100, 201)) + PS + (99.99,)
    assert ha.percentiles(grid) == whole.percentiles(grid)
    assert (ha.min(), ha.max(), ha.mean()) == (whole.min(), whole.max(), whole.mean())
    assert ha.encode() == whole.encode()


def test_merge_with_an_empty_histogram_keeps_min():
    """HdrHistogram_py's add() of an empty histogram resets the tracked minimum to 0; merge must not."""
    h = hist_of([0.010, 0.020])
    h.merge(LatencyHistogram())
    assert h.count == 2 and h.min() == pytest.approx(0.010, rel=0.01)
    e = LatencyHistogram()
    e.merge(h)
    assert e.percentiles() == h.percentiles() and e.min() == h.min()


def test_merge_across_configurations_and_clamped_counts():
    fine = hist_of(SAMPLES["uniform"][:5000], significant_digits=3)
    fine.record(1e9)  # clamped in fine
    h = LatencyHistogram()
    h.merge(fine)
    assert h.count == 5001 and h.clamped == 1
    for p in PS:
        assert h.percentile(p) == pytest.approx(fine.percentile(p), rel=0.01)


def test_encode_decode_roundtrip_and_dict():
    h = hist_of(SAMPLES["uniform"][:5000])
    h.record(1e9)
    s = h.encode()
    assert isinstance(s, str) and s.isascii() and len(s) < 5000
    back = LatencyHistogram.decode(s)
    assert back.count == h.count and back.percentiles() == h.percentiles() and back.max() == h.max()

    d = h.to_dict()
    assert d == {"encoding": "hdr-v2-base64", "unit": "us", "significant_digits": 2, "clamped": 1, "histogram": s}
    again = LatencyHistogram.from_dict(d)
    assert again.count == h.count and again.clamped == 1 and again.percentiles() == h.percentiles()
    again.record(0.5)  # a decoded histogram is an ordinary, writable one
    again.merge(back)
    assert again.count == 2 * h.count + 1

    fine = LatencyHistogram.from_dict(hist_of([0.001], significant_digits=3).to_dict())
    assert fine.significant_digits == 3
    assert LatencyHistogram.from_dict(LatencyHistogram().to_dict()).count == 0
    assert LatencyHistogram.from_dict({"encoding": "hdr-v2-base64", "histogram": ""}).count == 0  # older records
    with pytest.raises(ValueError, match="encoding"):
        LatencyHistogram.from_dict({"encoding": "csv"})
    with pytest.raises(ValueError, match="unit"):
        LatencyHistogram.from_dict({**d, "unit": "ms"})


def test_cdf_is_exact_monotone_and_ends_at_one():
    xs = SAMPLES["lognormal"][:20_000]
    cdf = hist_of(xs).cdf(50)
    lat, frac = map(np.array, zip(*cdf))
    assert 10 <= len(cdf) <= 52
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(frac) > 0) and frac[-1] == 1.0
    assert lat[-1] == pytest.approx(xs.max(), rel=0.01)
    us = np.rint(xs * 1e6)
    for x, f in cdf:  # exact for the bucketed samples: every sample in a bucket is <= its upper edge
        assert f == pytest.approx(np.mean(us <= round(x * 1e6)))
    assert max(frac[:-1]) > 0.999  # the tail is sampled
    small = hist_of([0.001, 0.002, 0.002]).cdf()  # latencies are bucket upper edges (1003 us, 2007 us)
    assert small == [(pytest.approx(0.001, rel=0.01), pytest.approx(1 / 3)), (pytest.approx(0.002, rel=0.01), 1.0)]


# ---- stability -----------------------------------------------------------------------------------------------------
def test_stability_rule():
    rule = StabilityRule(windows=3, tolerance=0.10)
    assert rule.is_stable([50, 100, 101, 99])  # only the last 3 windows count
    assert not rule.is_stable([100, 120, 100])
    assert not rule.is_stable([100, 100])  # too few windows
    assert rule.spread([100, 100]) is None
    assert rule.spread([90, 100, 110]) == pytest.approx(0.2)
    assert rule.spread([95, 100, 105]) == pytest.approx(0.1) and rule.is_stable([95, 100, 105])
    assert rule.spread([1, float("inf"), 1]) == math.inf and not rule.is_stable([1, float("nan"), 1])
    assert rule.spread([0, 0, 0]) == 0.0 and rule.spread([0, 0, 1]) == math.inf
    assert StabilityRule(windows=5, tolerance=0.05).is_stable(np.array([1000, 1010, 1000, 990, 1005]))
    with pytest.raises(ValueError):
        StabilityRule(windows=0)


def test_stable_tail_needs_throughput_and_latency_to_agree():
    tput = [50, 80, 100, 101, 99]
    p50 = [0.010, 0.009, 0.0050, 0.0051, 0.0049]
    assert stable_tail(tput, p50, windows=3, tolerance=0.10) == 2  # report windows[2:]
    assert StabilityRule(3, 0.10).stable_tail(tput, p50) == 2 and StabilityRule(3, 0.10).both(tput, p50)
    assert stable_tail(tput, p50, windows=5, tolerance=0.10) is None  # the warm-up windows disagree
    # Throughput agrees but latency still drifts (a queue building up at a fixed arrival rate): unstable.
    assert stable_tail([100, 100, 100, 100], [0.005, 0.006, 0.008, 0.012], 3, 0.10) is None
    # Latency agrees but throughput does not: unstable.
    assert stable_tail([100, 60, 100, 140], [0.005] * 4, 3, 0.10) is None
    assert stable_tail([100, 100], [0.005, 0.005], 3, 0.10) is None  # too few windows
    assert stable_tail([100, 100, 100], [0.005, math.inf, 0.005], 3, 0.10) is None  # a window with no answer
    assert stable_tail(np.array([100.0, 105.0, 95.0]), np.array([0.005, 0.0052, 0.0048]), 3, 0.10) == 0
    assert stable_tail([100, 100, 100], [0.005] * 3, 1, 0.0) == 2  # windows=1: the last window alone
    with pytest.raises(ValueError, match="one of each per window"):
        stable_tail([100, 100, 100], [0.005, 0.005], 2, 0.10)
    with pytest.raises(ValueError):
        stable_tail([1.0], [1.0], 0, 0.1)


# ---- early stopping ------------------------------------------------------------------------------------------------
def test_p99_early_stopping_is_the_one_sided_binomial_test():
    from scipy.stats import binom

    for n in (1, 100, 298, 299, 300, 472, 473, 1000, 3000, 10_000):
        for over in sorted({0, 1, 2, 5, 20, 60, n // 100, n}):
            if over <= n:
                want = binom.cdf(over, n, 0.01) <= 0.05
                assert p99_early_stopping(n, over) == want, (n, over)
    # Exact boundaries: 0.99**299 = 0.0495 <= 0.05 < 0.99**298 = 0.0500.
    assert p99_early_stopping(299, 0) and not p99_early_stopping(298, 0)
    assert p99_early_stopping(473, 1) and not p99_early_stopping(472, 1)
    assert not p99_early_stopping(0, 0)
    assert p99_early_stopping(459, 0, confidence=0.99) and not p99_early_stopping(458, 0, confidence=0.99)
    assert p99_early_stopping(59, 0, percentile=0.95) and not p99_early_stopping(58, 0, percentile=0.95)
    for bad in ((10, 11), (10, -1), (-1, 0)):
        with pytest.raises(ValueError):
            p99_early_stopping(*bad)
    with pytest.raises(ValueError):
        p99_early_stopping(100, 0, confidence=1.0)
    with pytest.raises(ValueError):
        p99_early_stopping(100, 0, percentile=0.0)


def test_min_requests_and_max_over_match_a_brute_force_scipy_search():
    from scipy.stats import binom

    def brute_min(over, c=0.95, q=0.01):
        n = over + 1
        while binom.cdf(over, n, q) > 1 - c:
            n += 1
        return n

    assert min_requests_for_p99() == 299 == math.ceil(math.log(0.05) / math.log(0.99))
    assert min_requests_for_p99(confidence=0.99) == 459 == brute_min(0, c=0.99)
    for over in (0, 1, 2, 3, 10):
        assert min_requests_for_p99(over=over) == brute_min(over)
    assert [min_requests_for_p99(over=k) for k in (1, 2)] == [473, 628]
    assert min_requests_for_p99(percentile=0.999) == brute_min(0, q=0.001) == 2995
    for n in (0, 298, 299, 472, 473, 1000, 3000, 10_000):
        k = early_stopping_max_over(n)
        brute = max([o for o in range(min(n, 200) + 1) if binom.cdf(o, n, 0.01) <= 0.05], default=-1)
        assert k == brute, n
    assert [early_stopping_max_over(n) for n in (298, 299, 473, 1000, 3000)] == [-1, 0, 1, 4, 20]
    with pytest.raises(ValueError):
        min_requests_for_p99(over=-1)


def test_dispersion_scales_the_effective_sample_size():
    from scipy.stats import binom

    assert p99_early_stopping(1000, 3, dispersion=1.0) == p99_early_stopping(1000, 3)
    # At multiples of the dispersion the test is the binomial one on n/d requests with over/d overs.
    for n, over, d in ((600, 2, 2.0), (3000, 10, 5.0), (4000, 40, 10.0)):
        assert p99_early_stopping(n, over, dispersion=d) == (binom.cdf(over / d, n / d, 0.01) <= 0.05)
    assert min_requests_for_p99(dispersion=2) in (597, 598)  # 2 x 299, up to the continuous extension
    assert min_requests_for_p99(dispersion=5) == pytest.approx(5 * 299, rel=0.01)
    assert early_stopping_max_over(3000, dispersion=5) < early_stopping_max_over(3000)
    # More dispersion never makes a claim easier.
    for n, over in ((700, 0), (2000, 5), (5000, 30)):
        verdicts = [p99_early_stopping(n, over, dispersion=d) for d in (1, 1.5, 2, 3, 5, 10)]
        assert verdicts == sorted(verdicts, reverse=True)
    with pytest.raises(ValueError):
        p99_early_stopping(100, 0, dispersion=0.5)


# ---- SLO search ----------------------------------------------------------------------------------------------------
def mm1_p99(rate: float, capacity: float = 1000.0) -> float:
    """p99 of the sojourn time of an M/M/1 queue (exponential with rate capacity - rate): ln(100) / (mu - lambda)."""
    return math.log(100) / (capacity - rate) if rate < capacity else float("inf")


def exact(p99_of: Callable[[float], float], target: float, requests: int = 10_000, err: float = 0.0):
    """A noiseless ``measure``: p99 from ``p99_of(rate)``; no over when it meets ``target``, 5 % over when not."""

    def measure(rate: float) -> ProbeOutcome:
        p99 = p99_of(rate)
        over = 0 if p99 <= target else requests // 20
        return ProbeOutcome(p99_s=p99, error_rate=err, requests=requests, over_target=over, flags=[],
                            goodput_rps=rate * (1 - over / requests), offered_rps=rate)

    return measure


@pytest.mark.parametrize("target,precision", [(0.005, 0.05), (0.020, 0.02), (0.1, 0.01), (0.0047, 0.05)])
def test_slo_search_finds_the_analytic_rate_from_below(target, precision):
    truth = 1000.0 - math.log(100) / target  # mm1_p99(truth) == target
    res = slo_search(exact(mm1_p99, target), target, start_rate=10, rel_precision=precision, max_steps=40)
    assert res.max_rate is not None and res.confirmed
    assert truth * (1 - precision) <= res.max_rate <= truth
    assert res.first_failing_rate is not None and res.first_failing_rate > truth
    assert (res.first_failing_rate - res.max_rate) / res.max_rate <= precision
    assert res.reason == f"bisection converged to {100 * precision:g}%; confirmed at {res.max_rate:g} rps"
    assert all(p.ok == (p.p99_s <= target) for p in res.points)
    search = [p for p in res.points if not p.confirm]
    assert max(p.rate for p in search if p.ok) == res.max_rate  # the answer was measured, not interpolated
    assert [(p.rate, p.confirm, p.verdict) for p in res.points[-1:]] == [(res.max_rate, True, "pass")]
    rates = [p.rate for p in search]
    assert rates[:3] == [10, 20, 40]  # exponential growth first
    assert len(set(rates)) == len(rates)
    p = res.points[0]
    assert (p.requests, p.over_target, p.flags, p.offered_rps, p.goodput_rps) == (10_000, 0, [], 10, 10)
    assert "supports the claim" in p.reason


def test_slo_search_without_confirmation_keeps_the_old_sequence():
    target = 0.020
    res = slo_search(exact(mm1_p99, target), target, start_rate=10, confirm=False)
    assert not res.confirmed and not any(p.confirm for p in res.points)
    assert res.reason == "bisection converged to 5%"


def test_slo_search_errors_count_as_failures():
    def measure(r):
        return ProbeOutcome(0.001, 0.01 if r > 300 else 0.0, 10_000, 0, [])

    res = slo_search(measure, 0.005, start_rate=10, rel_precision=0.05)
    assert res.max_rate is not None and 300 * 0.95 <= res.max_rate <= 300
    assert any("error rate 0.01 > 0.001" in p.reason for p in res.points)
    res = slo_search(exact(lambda r: float("nan") if r > 300 else 0.001, 0.005), 0.005, start_rate=10)
    assert res.max_rate is not None and res.max_rate <= 300
    assert any(p.reason == "no p99" for p in res.points)


def test_slo_search_nothing_passes():
    res = slo_search(exact(lambda r: 1.0, 0.005), 0.005, start_rate=10)
    assert res.max_rate is None and res.reason == "no rate met the SLO" and not res.confirmed
    assert [p.rate for p in res.points] == [10 / 2**i for i in range(SLO_DOWNWARD_HALVINGS + 1)]
    assert not any(p.ok for p in res.points) and res.first_failing_rate == 10 / 2**SLO_DOWNWARD_HALVINGS


def test_slo_search_stops_at_min_rate():
    """min_rate bounds the downward halving (the long probes): nothing at or above it passes -> none, said so; a rate
    that passes above it is found as without the bound."""
    res = slo_search(exact(lambda r: 1.0, 0.005), 0.005, start_rate=200, min_rate=50)
    assert [p.rate for p in res.points] == [200, 100, 50]
    assert res.max_rate is None and res.reason.startswith(
        "no rate met the SLO (none at or above 50 rps: the search's min_rate is 50 rps)"), res.reason
    res = slo_search(exact(lambda r: 1.0, 0.005), 0.005, start_rate=200, min_rate=40)
    assert [p.rate for p in res.points] == [200, 100, 50]  # 25 would be below 40
    slow = exact(lambda r: mm1_p99(r, capacity=80.0), 0.2)
    assert slo_search(slow, 0.2, start_rate=200, min_rate=50).max_rate == slo_search(slow, 0.2, start_rate=200).max_rate
    with pytest.raises(ValueError, match="min_rate must be > 0 and <= start_rate"):
        slo_search(slow, 0.2, start_rate=200, min_rate=300)


def test_slo_search_below_the_start_rate():
    """start_rate already fails: halve until a rate passes, then bisect upward."""
    res = slo_search(exact(lambda r: mm1_p99(r, capacity=8.0), 1.0), 1.0, start_rate=10, rel_precision=0.05)
    truth = 8.0 - math.log(100) / 1.0
    assert [p.rate for p in res.points][:3] == [10, 5, 2.5]
    assert res.max_rate is not None and truth * 0.95 <= res.max_rate <= truth and "converged" in res.reason


def test_slo_search_upper_bound_and_step_limits():
    fast = exact(lambda r: 0.001, 0.005)
    res = slo_search(fast, 0.005, start_rate=10, max_rate=100)
    assert res.max_rate == 100 and res.reason == "upper bound not reached: max_rate 100/s passed; confirmed at 100 rps"
    assert [p.rate for p in res.points] == [10, 20, 40, 80, 100, 100] and res.points[-1].confirm
    res = slo_search(fast, 0.005, start_rate=10, max_steps=3)
    assert res.max_rate == 40 and res.reason.startswith("upper bound not reached: step limit (3) hit while growing")
    assert len(res.points) == 4  # 3 search steps and the confirmation
    # Growth takes 8 steps (10 ... 1280, which fails); one bisection step is left.
    res = slo_search(exact(mm1_p99, 0.020), 0.020, start_rate=10, max_steps=9)
    assert len(res.points) == 10 and res.reason.startswith("step limit") and res.max_rate == 640
    assert res.first_failing_rate == 960  # the bisection probe (640 + 1280) / 2 failed
    with pytest.raises(ValueError):
        slo_search(fast, 0.005, growth=1.0)
    with pytest.raises(ValueError):
        slo_search(fast, 0.005, dispersion=0.0)


def test_slo_search_accepts_the_deprecated_tuple_measure():
    res = slo_search(lambda r: (mm1_p99(r), 0.0), 0.020, start_rate=10, confirm=False)
    truth = 1000.0 - math.log(100) / 0.020
    assert res.max_rate is not None and truth * 0.95 <= res.max_rate <= truth
    assert all(p.requests is None and "no early-stopping check" in p.reason for p in res.points)
    assert res.points[0].__dict__["ok"] is True  # the report reads "ok" from the recorded points


class FlakyAt:
    """Exact M/M/1 probes, except that the given rates fail on their 2nd, 3rd, ... measurement."""

    def __init__(self, target: float, flaky: set[float] = frozenset(), always: bool = False):
        self.inner, self.target, self.flaky, self.always = exact(mm1_p99, target), target, flaky, always
        self.seen: dict[float, int] = {}

    def __call__(self, rate: float) -> ProbeOutcome:
        self.seen[rate] = self.seen.get(rate, 0) + 1
        out = self.inner(rate)
        if (self.always and self.seen[rate] > 1) or (rate in self.flaky and self.seen[rate] > 1):
            out.p99_s, out.over_target = 2 * self.target, out.requests // 20
        return out


def test_slo_search_failed_confirmation_steps_down_and_bisects_again():
    target = 0.020
    first = slo_search(exact(mm1_p99, target), target, start_rate=10, confirm=False).max_rate
    res = slo_search(FlakyAt(target, {first}), target, start_rate=10)
    assert res.confirmed and res.max_rate is not None and res.max_rate < first
    confirms = [p for p in res.points if p.confirm]
    assert [(p.rate, p.verdict) for p in confirms] == [(first, "fail"), (res.max_rate, "pass")]
    assert f"confirmation of {first:g} rps failed" in res.reason and res.reason.endswith(
        f"confirmed at {res.max_rate:g} rps")
    assert res.first_failing_rate == first  # the failed confirmation now bounds the answer from above
    # The step-down resumed bisection: the answer is within the precision of the failed rate, not the next
    # lower rate of the growth ladder.
    assert (first - res.max_rate) / res.max_rate <= 0.05
    assert len(res.points) <= 20 + 2


def test_slo_search_unconfirmable_answer_is_none():
    target = 0.020
    res = slo_search(FlakyAt(target, always=True), target, start_rate=10, max_steps=12)
    assert res.max_rate is None and not res.confirmed and "not confirmed" in res.reason
    assert len(res.points) <= 12 + 2
    assert all(not p.ok for p in res.points if p.confirm)


def test_slo_search_generator_limited_stops_with_a_lower_bound():
    def measure(rate):
        flags = ["generator_bound"] if rate > 100 else ["late_sends"]  # late sends alone do not fail a probe
        return ProbeOutcome(0.001, 0.0, 10_000, 0, flags)

    res = slo_search(measure, 0.005, start_rate=10)
    assert res.generator_limited and res.confirmed and res.max_rate == 80
    assert res.reason == ("generator-limited at 160 rps: the server's limit is >= 80 rps; confirmed at 80 rps")
    assert [(p.rate, p.verdict) for p in res.points] == [
        (10, "pass"), (20, "pass"), (40, "pass"), (80, "pass"), (160, "generator_limited"), (80, "pass")]
    assert res.first_failing_rate is None  # a generator limit is not a failure of the server
    res = slo_search(lambda r: ProbeOutcome(0.001, 0.0, 10_000, 0, ["generator_bound"]), 0.005, start_rate=10)
    assert res.max_rate is None and res.generator_limited and "before any rate passed" in res.reason


def test_a_generator_that_lagged_under_steal_is_a_machine_failure_not_a_limit():
    """generator_bound together with interference: the generator lagged because the machine was busy (the quick
    suite's Triton search stopped at 100 rps, "generator-limited before any rate passed", at 12-16 % steal): the
    probe fails, the search goes on, and the answer is marked as the machine's."""
    from servingbench.measure.stats import slo_machine_limited

    def measure(rate):
        flags = ["generator_bound", "interference"] if rate > 300 else []
        return ProbeOutcome(0.001, 0.0, 10_000, 0, flags)

    res = slo_search(measure, 0.005, start_rate=100, rel_precision=0.25)
    assert not res.generator_limited and res.confirmed and 300 * 0.75 <= res.max_rate <= 300, res.reason
    assert {p.verdict for p in res.points if p.rate > 300} == {"fail"}
    rec = {"max_rate": res.max_rate, "generator_limited": False, "reason": res.reason,
           "points": [{"rate": p.rate, "verdict": p.verdict, "flags": p.flags} for p in res.points]}
    assert slo_machine_limited(rec) is not None  # every failure above the answer was the machine's: a lower bound


def test_slo_search_insufficient_probes():
    """A 1 s probe at 100 rps has 100 requests: its p99 meets the target, but a p99 claim needs 299 requests."""

    def one_second(rate):
        n = int(rate)
        return ProbeOutcome(0.001, 0.0, n, 0, [], offered_rps=rate)

    res = slo_search(one_second, 0.005, start_rate=100)
    assert res.max_rate is None and [p.verdict for p in res.points] == ["insufficient"]  # halving cannot help
    assert "had 100 requests, fewer than the 299" in res.reason and "insufficient" in res.reason
    assert "needs >= 299 requests at 0 over" in res.points[0].reason
    # Above 299 rps the probes are long enough; the search brackets like with failures below that.
    res = slo_search(one_second, 0.005, start_rate=400, max_rate=1000)
    assert res.max_rate == 1000 and res.confirmed


def test_probe_verdict_rules():
    t = 0.010

    def v(**kw):
        base = dict(p99_s=0.005, error_rate=0.0, requests=1000, over_target=0, flags=[])
        return probe_verdict(ProbeOutcome(**{**base, **kw}), 100.0, t)

    assert v()[0] == "pass"
    assert v(flags=["late_sends"])[0] == "pass" and "late_sends" in NON_FAILING_FLAGS
    assert v(flags=["generator_bound", "unstable"])[0] == "generator_limited"
    assert v(flags=["unstable", "late_sends"]) == ("fail", "flagged: unstable")
    assert v(flags=["interference"])[0] == "fail"
    assert v(flags=["too_few_requests"])[0] == "insufficient"
    assert v(error_rate=0.002) == ("fail", "error rate 0.002 > 0.001")
    assert v(error_rate=None)[0] == "fail" and v(requests=0, over_target=0)[0] == "fail"
    assert v(offered_rps=70.0)[0] == "fail" and v(offered_rps=90.0)[0] == "pass"
    assert v(p99_s=0.011)[0] == "fail" and v(p99_s=None)[0] == "fail" and v(p99_s=float("nan"))[0] == "fail"
    assert v(over_target=11)[0] == "fail"  # more than 1 % over: the point estimate fails whatever p99_s says
    assert v(over_target=10)[0] == "insufficient"  # <= 1 %, but 10 of 1000 cannot support the claim
    assert v(over_target=4)[0] == "pass" and v(over_target=5)[0] == "insufficient"  # max over at n=1000 is 4
    assert v(requests=200)[0] == "insufficient" and "needs >= 299" in v(requests=200)[1]
    assert v(requests=1000, over_target=0)[0] == "pass"
    assert probe_verdict(ProbeOutcome(0.005, 0.0, 1000, 0, []), 100.0, t, dispersion=5)[0] == "insufficient"
    with pytest.raises(ValueError):
        v(over_target=1001)
    with pytest.raises(ValueError):
        SloPoint(rate=1.0, p99_s=0.1, error_rate=0.0, verdict="maybe")


# ---- M/D/1 (the calibration server's analytic answer) --------------------------------------------------------------
def lindley_sojourns(rate: float, service_s: float, n: int, seed: int) -> np.ndarray:
    """Direct simulation: W_1 = 0, W_{k+1} = max(0, W_k + S - A_{k+1}) with exponential gaps A; sojourn W + S."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    w = [0.0] * n
    s_minus_a = (service_s - gaps).tolist()
    acc = 0.0
    for k in range(1, n):  # the recursion itself, step by step
        acc = max(0.0, acc + s_minus_a[k])
        w[k] = acc
    return np.array(w) + service_s


def test_md1_against_a_lindley_simulation():
    s = 0.002
    for rho, tol in ((0.3, 0.01), (0.6, 0.02), (0.85, 0.04)):
        x = lindley_sojourns(rho / s, s, 1_000_000, seed=int(rho * 100))
        sim = float(np.percentile(x, 99, method="inverted_cdf"))
        assert md1_p99_s(rho / s, s) == pytest.approx(sim, rel=tol), rho
        for t in (0.0, s / 2, 3 * s, 10 * s):  # the whole waiting-time distribution, not just the p99
            assert md1_wait_cdf(t, rho / s, s) == pytest.approx(np.mean(x - s <= t), abs=0.01)


def test_md1_exact_properties():
    s, lam = 0.002, 300.0
    rho = lam * s
    assert md1_wait_cdf(0.0, lam, s) == pytest.approx(1 - rho)  # P(no wait) = 1 - rho
    assert md1_wait_cdf(0.001, lam, s) == pytest.approx((1 - rho) * math.exp(lam * 0.001))  # t < S: one term
    assert md1_wait_cdf(-1.0, lam, s) == 0.0 and md1_wait_cdf(10.0, lam, s) == pytest.approx(1.0)
    # Mean wait from the distribution equals Pollaczek-Khinchine's rho * S / (2 (1 - rho)).
    ts = np.linspace(0.0, 0.06, 601)  # P(W > 0.06 s) < 1e-9
    tail = np.array([1 - md1_wait_cdf(t, lam, s) for t in ts])
    assert tail[-1] < 1e-9
    assert float(np.sum((tail[1:] + tail[:-1]) / 2 * np.diff(ts))) == pytest.approx(rho * s / (2 * (1 - rho)),
                                                                                    rel=1e-3)
    assert md1_p99_s(1.0, s) == s  # 99 % of arrivals find the server idle
    assert md1_p99_s(500.0, s) == math.inf and md1_p99_s(600.0, s) == math.inf
    assert md1_wait_cdf(md1_p99_s(lam, s) - s, lam, s) == pytest.approx(0.99, abs=1e-9)
    ps = [md1_p99_s(r, s) for r in (50, 150, 250, 350, 450)]
    assert ps == sorted(ps)
    for target in (0.005, 0.010, 0.020, 0.050):
        r = md1_max_rate_for_p99(target, s)
        assert 0 < r < 1 / s and md1_p99_s(r, s) == pytest.approx(target, rel=1e-6)
        assert md1_p99_s(r * 1.001, s) > target
    assert md1_max_rate_for_p99(0.001, s) == 0.0
    assert md1_max_rate_for_p99(0.020, s) == pytest.approx(386.74, abs=0.01)
    assert md1_wait_cdf(0.5, 499.0, s) < 1  # near saturation the high-precision sum still works
    # Far in the tail the sum is skipped by Kingman's bound P(W > t) <= exp(-theta t); the bound holds everywhere.
    from servingbench.measure.stats import _kingman_theta

    theta = _kingman_theta(lam, s)
    assert lam * math.expm1(theta * s) == pytest.approx(theta)
    for t in (0.002, 0.01, 0.05, 0.1):
        assert 1 - md1_wait_cdf(t, lam, s) <= math.exp(-theta * t) + 1e-12
    assert md1_wait_cdf(41 / theta, lam, s) == 1.0


def test_count_above_is_consistent_with_percentile():
    h = hist_of(SAMPLES["lognormal"][:20_000])
    n = h.count
    for target in (0.001, 0.002, 0.005, 0.010, 0.050):
        over = h.count_above(target)
        assert over >= int(np.sum(SAMPLES["lognormal"][:20_000] > target * 1.01))  # conservative, within a bucket
        assert over <= int(np.sum(SAMPLES["lognormal"][:20_000] > target * 0.99))
        for p in (50, 90, 99, 99.9):
            rank = max(1, math.ceil(p / 100 * n))
            assert (h.percentile(p) <= target) == (over <= n - rank), (target, p)
    assert LatencyHistogram().count_above(0.001) == 0


# ---- coordinated omission ------------------------------------------------------------------------------------------
def test_intended_time_latency_reveals_a_stall():
    """100 rps schedule, sequential 2 ms service, the server stalls 1 s once at t = 2 s.

    The client sends each request at its intended time or, if the previous answer is not back yet, as soon as it
    is (one connection, like a closed loop).  Timed from the send, only the stalled request is slow; timed from the
    intended send, the ~100 requests that queued up behind the stall are too.
    """
    intended = constant_schedule(100, 10.0)
    sent, done = [], []
    free_at = 0.0
    stalled = False
    for t in intended:
        start = max(t, free_at)
        service = 0.002
        if start >= 2.0 and not stalled:
            service, stalled = 1.002, True
        sent.append(start)
        free_at = start + service
        done.append(free_at)
    from_intended, from_sent = intended_time_latencies(intended, np.array(sent), np.array(done))
    h_int, h_sent = hist_of(from_intended), hist_of(from_sent)
    assert h_sent.percentile(99) < 0.01  # the closed-loop view hides the stall: one slow request in 1000
    assert h_sent.max() == pytest.approx(1.002, rel=0.01)
    assert h_int.percentile(99) > 0.5  # the backlog shows from the intended send times
    assert from_intended.max() == pytest.approx(1.002, abs=0.01)
    assert 100 <= int(np.sum(from_intended > 0.1)) <= 130  # 1 s of arrivals at 100 rps, plus the drain
    assert np.all(from_intended >= from_sent)
    with pytest.raises(ValueError):
        intended_time_latencies(np.zeros(3), np.zeros(2), np.zeros(3))


# ---- schedules -----------------------------------------------------------------------------------------------------
def test_poisson_schedule():
    t = poisson_schedule(200.0, 500.0, seed=1)
    assert len(t) / 500.0 == pytest.approx(200.0, rel=0.02)
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 500.0
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential gaps: coefficient of variation 1
    assert np.array_equal(t, poisson_schedule(200.0, 500.0, seed=1))
    assert not np.array_equal(t[:100], poisson_schedule(200.0, 500.0, seed=2)[:100])
    short = poisson_schedule(1000.0, 1.0, seed=5)
    assert len(short) == pytest.approx(1000, rel=0.1) and short[-1] < 1.0
    assert len(poisson_schedule(10.0, 0.0, seed=1)) == 0
    with pytest.raises(ValueError):
        poisson_schedule(0.0, 1.0, seed=1)


def test_constant_schedule():
    assert len(constant_schedule(10, 2.0)) == 20
    assert len(constant_schedule(10, 0.3)) == 3  # 10 * 0.3 is 3.0000000000000004 in floating point
    assert np.allclose(constant_schedule(3, 1.0), [0, 1 / 3, 2 / 3])
    assert np.allclose(np.diff(constant_schedule(100, 5.0)), 0.01)
    with pytest.raises(ValueError):
        constant_schedule(0, 1.0)


# ---- repeats and comparisons ---------------------------------------------------------------------------------------
def test_significant_change_planted_shift_and_null():
    flagged_shift = flagged_null = 0
    for seed in range(20):
        r = np.random.default_rng(seed)
        base = 1000 * (1 + 0.05 * r.standard_normal(5))
        same = 1000 * (1 + 0.05 * r.standard_normal(5))
        worse = 700 * (1 + 0.05 * r.standard_normal(5))
        sig, rel, method = significant_change(base, worse)
        assert rel == pytest.approx(-0.3, abs=0.08) and "Mann-Whitney" in method
        flagged_shift += sig
        flagged_null += significant_change(base, same)[0]
    assert flagged_shift == 20
    # Same distribution: a false positive needs |change| > 5 % *and* p < 0.05, so at most ~5 % of pairs.
    assert flagged_null <= 1


def test_significant_change_small_samples_and_threshold():
    assert significant_change([100], [70])[0]  # disjoint ranges
    assert not significant_change([100, 110], [105])[0]  # overlap
    # 3 vs 3: an exact two-sided Mann-Whitney cannot go below p = 0.1, so the range rule decides.
    sig, rel, method = significant_change([100, 101, 99], [130, 131, 129])
    assert sig and rel == pytest.approx(0.3) and "ranges disjoint" in method and "cannot reach" in method
    assert not significant_change([100, 120, 99], [118, 131, 129])[0]
    # 4 vs 4 can reach p < 0.05: Mann-Whitney.
    sig, _, method = significant_change([100, 101, 99, 100], [130, 131, 129, 130])
    assert sig and "Mann-Whitney U p=" in method
    # Consistent but below the threshold: never flagged.
    sig, rel, method = significant_change([100.0] * 6, [103.0] * 6)
    assert not sig and rel == pytest.approx(0.03) and "threshold" in method
    sig, rel, method = significant_change([], [1.0])
    assert not sig and math.isnan(rel) and method == "no data"
    assert significant_change([100, None, float("nan"), 100], [50, 50])[0]  # non-finite dropped


def test_summarize_repeats():
    s = summarize_repeats([10, 12, 11, 13, 9, 10, 11, 12])
    assert s["n"] == 8 and s["median"] == 11 and s["min"] == 9 and s["max"] == 13
    assert s["mean"] == pytest.approx(11.0)
    assert s["stdev"] == pytest.approx(np.std([10, 12, 11, 13, 9, 10, 11, 12], ddof=1))
    assert s["ci95_low"] <= 11 <= s["ci95_high"] and s["ci_coverage"] >= 0.95
    # n = 20: [x_(6), x_(15)] is the tightest order-statistic interval with >= 95 % coverage (95.9 %).
    s = summarize_repeats(list(range(20, 0, -1)))
    assert (s["ci95_low"], s["ci95_high"]) == (6, 15) and s["ci_coverage"] == pytest.approx(0.9586, abs=1e-4)
    s = summarize_repeats([3.0, 1.0, 2.0])
    assert (s["ci95_low"], s["ci95_high"]) == (1.0, 3.0) and s["ci_coverage"] == pytest.approx(0.75)
    assert summarize_repeats([5.0])["stdev"] == 0.0
    assert summarize_repeats([1.0, None, float("nan"), 3.0])["n"] == 2
    empty = summarize_repeats([])
    assert empty["n"] == 0 and empty["median"] is None and empty["ci95_low"] is None


def test_summarize_repeats_ci_covers_the_median_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    true_median = 1.0  # lognormal(0, s) has median exp(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        s = summarize_repeats(rng.lognormal(0.0, 0.5, size=15))
        covered += s["ci95_low"] <= true_median <= s["ci95_high"]
    assert covered / trials >= 0.95 - 0.01  # nominal coverage for n = 15 is 96.5 %


def test_open_loop_throughput_tolerance_allows_for_poisson_noise():
    """40 rps windows of ~40 requests: 39 / 27 / 42 is arrival noise (sd ~ 6), not instability; with closed-loop
    counts absent the plain 10 % tolerance applies."""
    from servingbench.measure.stats import stable_tail

    tput, p50 = [39.0, 27.0, 42.0], [0.004, 0.0041, 0.0039]
    assert stable_tail(tput, p50, 3, 0.10) is None
    assert stable_tail(tput, p50, 3, 0.10, counts=[39, 27, 42]) == 0
    # at 4000 requests a window the allowance (3.3 / sqrt(N) ~ 5 %) is below the tolerance: a real drift still fails
    assert stable_tail([4000.0, 3000.0, 4100.0], p50, 3, 0.10, counts=[4000, 3000, 4100]) is None


def test_a_failed_confirmation_at_the_first_rate_halves_below_it():
    """Session 11's tune: Ray Serve's defaults passed 100 rps (the start rate), failed everything above, and the
    confirmation of 100 rps was flagged; with no lower rate probed the answer was "none".  The search now halves below
    the failed confirmation until a rate passes, bisects back up, and confirms."""
    target = 0.100
    capacity = 145.0
    truth = capacity - math.log(100) / target  # ~ 99 rps: 100 passes only by luck, never twice

    class LuckyOnce:
        def __init__(self):
            self.inner, self.seen = exact(lambda r: mm1_p99(r, capacity=capacity), target), 0

        def __call__(self, rate):
            self.seen += 1
            out = self.inner(rate)
            if rate == 100 and self.seen == 1:  # the first probe passes, just under the target
                out.p99_s, out.over_target = 0.9 * target, 0
            return out

    res = slo_search(LuckyOnce(), target, start_rate=100, rel_precision=0.25, max_steps=6, min_rate=12.5)
    search = [(p.rate, p.confirm, p.verdict) for p in res.points]
    assert search[0] == (100, False, "pass") and (100, True, "fail") in search
    assert (50, False, "pass") in search  # the step down below the failed confirmation
    assert res.confirmed and res.max_rate is not None and 50 <= res.max_rate <= truth, search
    assert "confirmation of 100 rps failed" in res.reason and len(res.points) <= 6 + 2
    # the step down stops at min_rate: nothing below it is probed
    res = slo_search(LuckyOnce(), target, start_rate=100, rel_precision=0.25, max_steps=6, min_rate=60)
    assert res.max_rate is None and all(p.rate >= 60 for p in res.points)


def test_an_answer_no_failed_probe_bounds_is_a_lower_bound():
    """Session 11: MOSEC's and Triton's mlp searches grew 100 ... 3,200 rps in their six steps and every rate passed;
    the answer is a lower bound, read from the probes (the report and the tune summary show "≥")."""
    from servingbench.measure.stats import slo_unbounded

    grew = {"max_rate": 3200.0, "points": [{"rate": 100 * 2**i, "verdict": "pass"} for i in range(6)]}
    assert slo_unbounded(grew)
    bounded = {**grew, "points": [*grew["points"], {"rate": 6400.0, "verdict": "fail"}]}
    assert not slo_unbounded(bounded)
    assert not slo_unbounded({**grew, "points": [*grew["points"], {"rate": 4800.0, "verdict": "insufficient"}]})
    assert not slo_unbounded({"max_rate": None, "points": []}) and not slo_unbounded({"max_rate": float("nan")})
    res = slo_search(exact(lambda r: 0.001, 0.005), 0.005, start_rate=10, max_steps=3)  # grows, never fails
    assert slo_unbounded({"max_rate": res.max_rate, "points": [p.__dict__ for p in res.points]})
    res = slo_search(exact(mm1_p99, 0.020), 0.020, start_rate=10)
    assert not slo_unbounded({"max_rate": res.max_rate, "points": [p.__dict__ for p in res.points]})
