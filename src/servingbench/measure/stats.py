"""Statistics that make the numbers trustworthy: latency histograms, stability, SLO search, noise-aware comparison.

Latencies are kept as HdrHistograms (the ``hdrhistogram`` package) in integer microseconds with 2 significant
digits: every recorded value is represented within 1 % (HdrHistogram's sub-bucket resolution is 1/128 here), and
histograms merge exactly, so percentiles of merged windows or merged generator processes are exact merges, never
averages of percentiles.

Percentile definition: HdrHistogram returns, for percentile p, the (highest equivalent value of the) smallest
recorded value v such that at least p % of the samples are <= v: numpy's ``method="inverted_cdf"``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from hdrh.histogram import HdrHistogram

PERCENTILES = (50, 90, 95, 99, 99.9)


def _pkey(p: float) -> str:
    return f"p{p:g}"


class LatencyHistogram:
    """Latency distribution with bounded relative error (<= 1 %), recorded in microseconds, reported in seconds."""

    def __init__(self, lowest_us: int = 1, highest_us: int = 3_600_000_000, significant_digits: int = 2) -> None:
        self._h = HdrHistogram(lowest_us, highest_us, significant_digits)
        self._lo, self._hi = lowest_us, highest_us
        self.clamped = 0

    def record(self, seconds: float, count: int = 1) -> None:
        us = int(round(seconds * 1e6))
        if us < self._lo or us > self._hi:
            self.clamped += count
            us = min(max(us, self._lo), self._hi)
        self._h.record_value(us, count)

    def merge(self, other: "LatencyHistogram") -> None:
        self._h.add(other._h)
        self.clamped += other.clamped

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile(self, p: float) -> float:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is outside [0, 100]")
        return self._h.get_value_at_percentile(p) / 1e6

    def percentiles(self, ps: Sequence[float] = PERCENTILES) -> dict[str, float]:
        return {_pkey(p): self.percentile(p) for p in ps}

    def mean(self) -> float:
        return self._h.get_mean_value() / 1e6

    def min(self) -> float:
        return self._h.get_min_value() / 1e6

    def max(self) -> float:
        return self._h.get_max_value() / 1e6

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """(latency_s, fraction <= latency) at ``points`` percentiles spread towards the tail."""
        if not self.count:
            return []
        qs = 100.0 * (1.0 - np.logspace(0, -4, points))  # 0 .. 99.99, denser in the tail
        return [(self.percentile(float(q)), float(q) / 100.0) for q in qs] + [(self.max(), 1.0)]

    def encode(self) -> str:
        return self._h.encode().decode("ascii")

    @classmethod
    def decode(cls, s: str) -> "LatencyHistogram":
        h = cls()
        h._h = HdrHistogram.decode(s.encode("ascii"))
        return h

    def to_dict(self) -> dict:
        return {"encoding": "hdr-v2-base64", "unit": "us", "significant_digits": 2, "clamped": self.clamped,
                "histogram": self.encode() if self.count else ""}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyHistogram":
        if d.get("encoding") != "hdr-v2-base64":
            raise ValueError(f"unknown histogram encoding {d.get('encoding')!r}")
        h = cls.decode(d["histogram"]) if d.get("histogram") else cls()
        h.clamped = d.get("clamped", 0)
        return h


@dataclass
class StabilityRule:
    """A load point is stable when the last ``windows`` window values agree within ``tolerance`` (relative spread)."""

    windows: int = 3
    tolerance: float = 0.10

    def spread(self, values: Sequence[float]) -> float | None:
        """(max - min) / median of the last ``windows`` values; None if there are fewer."""
        if len(values) < self.windows:
            return None
        last = [float(v) for v in values[-self.windows:]]
        if any(math.isinf(v) or math.isnan(v) for v in last):
            return math.inf
        med = statistics.median(last)
        if med == 0:
            return 0.0 if max(last) == min(last) else math.inf
        return (max(last) - min(last)) / abs(med)

    def is_stable(self, values: Sequence[float]) -> bool:
        s = self.spread(values)
        return s is not None and s <= self.tolerance


@dataclass
class SloPoint:
    rate: float
    p99_s: float
    error_rate: float
    ok: bool


@dataclass
class SloResult:
    max_rate: float | None
    points: list[SloPoint] = field(default_factory=list)
    reason: str = ""


def slo_search(
    measure: Callable[[float], tuple[float, float]],
    p99_target_s: float,
    max_error_rate: float = 0.001,
    start_rate: float = 10.0,
    max_rate: float = 1e6,
    growth: float = 2.0,
    rel_precision: float = 0.05,
    max_steps: int = 20,
) -> SloResult:
    """Highest arrival rate whose p99 <= target and error rate <= max: exponential growth, then bisection.

    ``measure(rate) -> (p99_seconds, error_rate)``.  The answer is always a rate that was measured and passed
    (never an interpolation), so it errs low by at most ``rel_precision``.  Every measured point is kept.
    """
    res = SloResult(max_rate=None)

    def probe(rate: float) -> bool:
        p99, err = measure(rate)
        ok = p99 <= p99_target_s and err <= max_error_rate
        res.points.append(SloPoint(rate, p99, err, ok))
        return ok

    lo: float | None = None
    hi: float | None = None
    rate = start_rate
    steps = 0
    # Phase 1: find a passing rate (halve downward if the start fails) and a failing one above it.
    while steps < max_steps:
        steps += 1
        if probe(rate):
            lo = rate
            if hi is not None:
                break
            if rate >= max_rate:
                res.max_rate = rate
                res.reason = "upper bound not reached: max_rate passed"
                return res
            rate = min(rate * growth, max_rate)
        else:
            hi = rate
            if lo is not None:
                break
            rate = rate / growth
            if rate < start_rate / growth**4:
                res.reason = "no rate met the SLO"
                return res
    if lo is None:
        res.reason = "no rate met the SLO"
        return res
    if hi is None:
        res.max_rate = lo
        res.reason = "step limit reached before the SLO failed"
        return res
    # Phase 2: bisection between the last pass and the first failure.
    while (hi - lo) / lo > rel_precision and steps < max_steps:
        steps += 1
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    res.max_rate = lo
    converged = (hi - lo) / lo <= rel_precision
    res.reason = (f"bisection converged to {100 * rel_precision:g}%" if converged
                  else f"step limit reached; bracket [{lo:.1f}, {hi:.1f}]")
    return res


def summarize_repeats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median and spread of repeated measurements.

    ``ci95_low/high``: a distribution-free confidence interval of the median from order statistics (binomial);
    with fewer than 6 samples no 95 % interval exists, so it falls back to [min, max].
    """
    v = np.sort(np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float))
    n = len(v)
    if n == 0:
        return {"n": 0, "median": None, "min": None, "max": None, "mean": None, "stdev": None, "iqr": None,
                "ci95_low": None, "ci95_high": None}
    lo_i, hi_i = 0, n - 1
    if n >= 6:
        from scipy.stats import binom

        k = int(binom.ppf(0.025, n, 0.5))
        lo_i, hi_i = max(0, k - 1), min(n - 1, n - k)
    return {
        "n": n, "median": float(np.median(v)), "min": float(v[0]), "max": float(v[-1]), "mean": float(v.mean()),
        "stdev": float(v.std(ddof=1)) if n > 1 else 0.0,
        "iqr": float(np.percentile(v, 75) - np.percentile(v, 25)),
        "ci95_low": float(v[lo_i]), "ci95_high": float(v[hi_i]),
    }


def significant_change(a: Sequence[float], b: Sequence[float], threshold: float = 0.05,
                       alpha: float = 0.05) -> tuple[bool, float, str]:
    """Is ``b`` different from ``a`` beyond the noise of both?  Returns (significant, relative change, method).

    The change must exceed ``threshold`` (relative, medians) *and* be larger than the noise: with >= 3 samples per
    side a two-sided Mann-Whitney U test at ``alpha``; with fewer, the [min, max] ranges must not overlap.
    """
    a = [float(x) for x in a if x is not None and math.isfinite(x)]
    b = [float(x) for x in b if x is not None and math.isfinite(x)]
    if not a or not b:
        return False, float("nan"), "no data"
    ma, mb = statistics.median(a), statistics.median(b)
    rel = (mb - ma) / abs(ma) if ma else (0.0 if mb == ma else math.inf)
    if abs(rel) <= threshold:
        return False, rel, f"|change| <= {threshold:.0%}"
    if len(a) >= 3 and len(b) >= 3:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        return p < alpha, rel, f"Mann-Whitney U p={p:.3g} (n={len(a)},{len(b)})"
    overlap = not (max(a) < min(b) or max(b) < min(a))
    return (not overlap), rel, "ranges " + ("overlap" if overlap else "disjoint") + f" (n={len(a)},{len(b)})"


def intended_time_latencies(intended_s: np.ndarray, sent_s: np.ndarray,
                            done_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latency from the intended send time, latency from the actual send).  The first is coordinated-omission safe."""
    done = np.asarray(done_s, dtype=float)
    return done - np.asarray(intended_s, dtype=float), done - np.asarray(sent_s, dtype=float)


def poisson_schedule(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Sorted intended send offsets (s) in [0, duration) of a Poisson process at ``rate`` per second."""
    rng = np.random.default_rng(seed)
    n = max(16, int(rate * duration_s * 1.5) + 64)
    t = np.cumsum(rng.exponential(1.0 / rate, size=n))
    while t[-1] < duration_s:
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, size=n))])
    return t[t < duration_s]


def constant_schedule(rate: float, duration_s: float) -> np.ndarray:
    return np.arange(0.0, duration_s, 1.0 / rate)
