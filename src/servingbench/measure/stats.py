"""Statistics that make the benchmark numbers trustworthy.

Everything here is pure (no I/O, no clocks): latency histograms, the stability rule for measurement windows, the
SLO search, noise-aware comparison of repeated runs, coordinated-omission-safe latency, and send schedules.

Latency histograms
    Latencies are kept in an HdrHistogram (the ``hdrhistogram`` package, HdrHistogram_py) of integer microseconds.
    With ``significant_digits=2`` the histogram has 256 sub-buckets per power of two, so a bucket is at most 1/128
    of its values wide: a reported value is within ``max(0.79 %, 0.5 us)`` of the true sample (the 0.5 us is the
    rounding to whole microseconds; values below 256 us are kept exactly to the microsecond).  For latencies of
    50 us and more that is within 1 %.  Histograms with the same configuration merge exactly (bucket counts add),
    so percentiles over merged windows or merged load-generator processes are percentiles of all samples, never
    averages of percentiles.

Percentile definition
    ``percentile(p)`` is the smallest recorded sample ``x`` such that at least ``p`` % of the samples are ``<= x``:
    the sample of rank ``k = max(1, ceil(p / 100 * N))`` in ascending order.  This is numpy's
    ``np.percentile(..., method="inverted_cdf")`` (Hyndman & Fan type 1) and the definition of the reference Java
    HdrHistogram (``getValueAtPercentile`` rounds the count up).  HdrHistogram_py's own ``get_value_at_percentile``
    rounds the rank half-up instead (``int(p / 100 * N + 0.5)``), which matches no numpy method exactly, so the rank
    is computed here from the library's bucket counts (with exact decimal arithmetic, so ``p = 99.9`` of 1000
    samples is rank 999, not 1000 through floating-point error).  As in HdrHistogram, the value reported for a rank
    is the *upper* edge of its bucket: percentiles are never under-reported by more than the 0.5 us rounding.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

__all__ = [
    "PERCENTILES",
    "LatencyHistogram",
    "StabilityRule",
    "SloPoint",
    "SloResult",
    "SLO_DOWNWARD_HALVINGS",
    "slo_search",
    "summarize_repeats",
    "significant_change",
    "intended_time_latencies",
    "poisson_schedule",
    "constant_schedule",
]

#: The percentiles reported by default (keys ``"p50"`` ... ``"p99.9"``).
PERCENTILES: tuple[float, ...] = (50, 90, 95, 99, 99.9)

HISTOGRAM_ENCODING = "hdr-v2-base64"
_US_PER_S = 1_000_000


def _pkey(p: float) -> str:
    """Dictionary key of percentile ``p``: 50 -> ``"p50"``, 99.9 -> ``"p99.9"``."""
    return f"p{p:g}"


@dataclass(frozen=True)
class _Layout:
    """Per-bucket values (integer us) of one histogram configuration, indexed like HdrHistogram's counts array."""

    lowest: np.ndarray  # lowest value that lands in the bucket
    highest: np.ndarray  # highest value that lands in the bucket
    median: np.ndarray  # HdrHistogram's "median equivalent value" (used for the mean)


@functools.lru_cache(maxsize=16)
def _layout(lowest_us: int, highest_us: int, significant_digits: int) -> _Layout:
    h = HdrHistogram(lowest_us, highest_us, significant_digits)
    low = np.array([h.get_value_from_index(i) for i in range(h.counts_len)], dtype=np.int64)
    high = np.array([h.get_highest_equivalent_value(int(v)) for v in low], dtype=np.int64)
    if not (np.all(np.diff(low) > 0) and np.all(high >= low)):  # searchsorted below relies on this
        raise AssertionError("unexpected HdrHistogram bucket layout")
    return _Layout(lowest=low, highest=high, median=low + ((high - low + 1) >> 1))


class LatencyHistogram:
    """Latency distribution with bounded relative error (<= 1 %), recorded in microseconds, reported in seconds.

    A thin wrapper around an ``hdrh.histogram.HdrHistogram`` of integer microseconds (see the module docstring for
    the error bound and the percentile definition).  Values outside ``[lowest_us, highest_us]`` (including zero
    and negative latencies) are clamped to the nearest end of the range and counted in :attr:`clamped`.

    Args:
        lowest_us: lowest distinguishable value in microseconds (>= 1).
        highest_us: highest trackable value in microseconds (default one hour).
        significant_digits: decimal digits of value resolution, 1..5; 2 gives a relative error below 1 %.
    """

    def __init__(self, lowest_us: int = 1, highest_us: int = 3_600_000_000, significant_digits: int = 2) -> None:
        if int(lowest_us) < 1:
            raise ValueError(f"lowest_us must be >= 1, got {lowest_us}")
        if int(highest_us) < 2 * int(lowest_us):
            raise ValueError(f"highest_us ({highest_us}) must be >= 2 * lowest_us ({lowest_us})")
        if not 1 <= int(significant_digits) <= 5:
            raise ValueError(f"significant_digits must be in 1..5, got {significant_digits}")
        self._lo, self._hi, self._digits = int(lowest_us), int(highest_us), int(significant_digits)
        self._h = HdrHistogram(self._lo, self._hi, self._digits)
        self._layout = _layout(self._lo, self._hi, self._digits)
        #: Number of recorded values that were outside the trackable range and clamped into it.
        self.clamped: int = 0

    # ---- configuration ---------------------------------------------------------------------------------------
    @property
    def lowest_us(self) -> int:
        return self._lo

    @property
    def highest_us(self) -> int:
        return self._hi

    @property
    def significant_digits(self) -> int:
        return self._digits

    @property
    def relative_error(self) -> float:
        """Upper bound of a bucket's width relative to its values (1/128 for 2 significant digits)."""
        return 2.0 / self._h.sub_bucket_count

    def _same_config(self, other: LatencyHistogram) -> bool:
        return (self._lo, self._hi, self._digits) == (other._lo, other._hi, other._digits)

    # ---- recording -------------------------------------------------------------------------------------------
    def _to_us(self, seconds: float) -> tuple[int, bool]:
        """(microseconds clamped into range, whether it was clamped)."""
        x = float(seconds)
        if math.isnan(x):
            raise ValueError("cannot record a NaN latency")
        us = round(x * _US_PER_S) if math.isfinite(x) else (self._hi + 1 if x > 0 else self._lo - 1)
        if us < self._lo:
            return self._lo, True
        if us > self._hi:
            return self._hi, True
        return us, False

    def record(self, seconds: float, count: int = 1) -> None:
        """Record ``count`` occurrences of a latency of ``seconds`` (rounded to the microsecond).

        Out-of-range values (below ``lowest_us``, above ``highest_us``, negative, infinite) are clamped into the
        range and added to :attr:`clamped`; NaN raises ``ValueError``.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0:
            return
        us, was_clamped = self._to_us(seconds)
        if was_clamped:
            self.clamped += count
        self._h.record_value(us, count)

    def record_many(self, seconds: npt.ArrayLike) -> None:
        """Record many latencies (seconds) at once; same rounding and clamping as :meth:`record`, but vectorized."""
        x = np.asarray(seconds, dtype=float).ravel()
        if x.size == 0:
            return
        if np.isnan(x).any():
            raise ValueError("cannot record a NaN latency")
        with np.errstate(over="ignore", invalid="ignore"):
            us = np.rint(x * _US_PER_S)
        out = (us < self._lo) | (us > self._hi)
        self.clamped += int(out.sum())
        us = np.clip(us, self._lo, self._hi).astype(np.int64)
        # One record_value per bucket (its lowest value is equivalent to every value in the bucket).
        idx = np.searchsorted(self._layout.lowest, us, side="right") - 1
        per_bucket = np.bincount(idx, minlength=len(self._layout.lowest))
        for i in np.flatnonzero(per_bucket):
            self._h.record_value(int(self._layout.lowest[i]), int(per_bucket[i]))

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this histogram (in place).

        Exact when both have the same configuration (the usual case: windows, generator processes); otherwise each
        of ``other``'s buckets is re-recorded at its lowest value (clamped into this histogram's range).
        """
        self.clamped += other.clamped
        if other.count == 0:
            return  # HdrHistogram's add() would reset the tracked minimum to 0 here
        if self._same_config(other):
            self._h.add(other._h)
            return
        counts = other._counts()
        for i in np.flatnonzero(counts):
            us, was_clamped = self._to_us(other._layout.lowest[i] / _US_PER_S)
            if was_clamped:
                self.clamped += int(counts[i])
            self._h.record_value(us, int(counts[i]))

    # ---- queries ---------------------------------------------------------------------------------------------
    def _counts(self) -> np.ndarray:
        """A view (no copy) of HdrHistogram's bucket counts."""
        return np.ctypeslib.as_array(self._h.counts)[: self._h.counts_len]

    @property
    def count(self) -> int:
        """Total number of recorded values (clamped ones included)."""
        return int(self._h.get_total_count())

    def _rank(self, p: float, n: int) -> int:
        if not 0 <= p <= 100:  # also rejects NaN
            raise ValueError(f"percentile {p} is outside [0, 100]")
        return max(1, math.ceil(Fraction(repr(float(p))) * n / 100))

    def percentile(self, p: float) -> float:
        """Latency (s) at percentile ``p`` in [0, 100]: the upper edge of the bucket holding the sample of rank
        ``max(1, ceil(p/100 * N))`` (numpy ``method="inverted_cdf"``).  ``p = 0`` gives :meth:`min`.
        NaN when the histogram is empty."""
        return self.percentiles((p,))[_pkey(p)]

    def percentiles(self, ps: Sequence[float] = PERCENTILES) -> dict[str, float]:
        """Several percentiles (s) at once, keyed ``"p50"``, ``"p99.9"``, ...; see :meth:`percentile`."""
        n = self.count
        ranks = [self._rank(p, n) for p in ps]
        if n == 0:
            return {_pkey(p): math.nan for p in ps}
        cum = np.cumsum(self._counts())
        out: dict[str, float] = {}
        for p, k in zip(ps, ranks):
            if p == 0:
                out[_pkey(p)] = self.min()
            else:
                i = int(np.searchsorted(cum, k, side="left"))
                out[_pkey(p)] = int(self._layout.highest[i]) / _US_PER_S
        return out

    def mean(self) -> float:
        """Mean latency (s), each sample counted at the middle of its bucket (as HdrHistogram does); NaN if empty."""
        c = self._counts()
        n = int(c.sum())
        if n == 0:
            return math.nan
        nz = np.flatnonzero(c)
        return float(np.dot(c[nz].astype(float), self._layout.median[nz].astype(float))) / n / _US_PER_S

    def min(self) -> float:
        """Smallest recorded latency (s), as the lower edge of its bucket; NaN if empty."""
        nz = np.flatnonzero(self._counts())
        return int(self._layout.lowest[nz[0]]) / _US_PER_S if nz.size else math.nan

    def max(self) -> float:
        """Largest recorded latency (s), as the upper edge of its bucket; NaN if empty."""
        nz = np.flatnonzero(self._counts())
        return int(self._layout.highest[nz[-1]]) / _US_PER_S if nz.size else math.nan

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """Empirical CDF for plotting: ``[(latency_s, fraction of samples <= latency_s), ...]``, ascending.

        The latencies are bucket upper edges, so each fraction is exact for the recorded (bucketed) samples.  At
        most about ``points`` pairs: half spread evenly over the fraction axis, half log-spaced in the tail
        (fractions 0.9, 0.99, 0.999, ...), always ending with ``(max(), 1.0)``.  Empty list when empty.
        """
        c = self._counts()
        nz = np.flatnonzero(c)
        if nz.size == 0:
            return []
        xs = self._layout.highest[nz] / _US_PER_S
        frac = np.cumsum(c[nz]) / float(c[nz].sum())
        if nz.size > points:
            n = int(c.sum())
            half = max(1, points // 2)
            tail = 1.0 - np.logspace(-1.0, -max(1.0, math.log10(n)), max(1, points - half))
            targets = np.concatenate([np.linspace(0.0, 1.0, half), tail])
            sel = np.unique(np.searchsorted(frac, targets, side="left").clip(0, nz.size - 1))
            sel = np.union1d(sel, [nz.size - 1])
            xs, frac = xs[sel], frac[sel]
        frac[-1] = 1.0
        return [(float(x), float(f)) for x, f in zip(xs, frac)]

    # ---- serialization ---------------------------------------------------------------------------------------
    def encode(self) -> str:
        """HdrHistogram's V2 compressed, base64 encoding (ASCII text; carries the configuration and the counts)."""
        return self._h.encode().decode("ascii")

    @classmethod
    def decode(cls, s: str) -> LatencyHistogram:
        """Inverse of :meth:`encode` (the configuration comes from the encoding; :attr:`clamped` is not encoded)."""
        raw = HdrHistogram.decode(s.encode("ascii") if isinstance(s, str) else s)
        h = cls(raw.lowest_trackable_value, raw.highest_trackable_value, raw.significant_figures)
        if raw.get_total_count():
            h._h.add(raw)  # copy into a histogram we own (same layout: a plain array addition)
        return h

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"encoding": "hdr-v2-base64", "unit": "us", "significant_digits", "clamped",
        "histogram"}``, where ``histogram`` is :meth:`encode`."""
        return {
            "encoding": HISTOGRAM_ENCODING,
            "unit": "us",
            "significant_digits": self._digits,
            "clamped": self.clamped,
            "histogram": self.encode(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatencyHistogram:
        """Inverse of :meth:`to_dict`; an empty ``histogram`` string gives an empty histogram."""
        if d.get("encoding") != HISTOGRAM_ENCODING:
            raise ValueError(f"unknown histogram encoding {d.get('encoding')!r}")
        if d.get("unit", "us") != "us":
            raise ValueError(f"unknown histogram unit {d.get('unit')!r}")
        blob = d.get("histogram")
        h = cls.decode(blob) if blob else cls(significant_digits=int(d.get("significant_digits", 2)))
        h.clamped = int(d.get("clamped", 0))
        return h

    def __repr__(self) -> str:
        if not self.count:
            return "LatencyHistogram(count=0)"
        ps = ", ".join(f"{k}={v * 1e3:.3g}ms" for k, v in self.percentiles((50, 99)).items())
        return f"LatencyHistogram(count={self.count}, {ps}, max={self.max() * 1e3:.3g}ms)"


# ---- stability -----------------------------------------------------------------------------------------------------
@dataclass
class StabilityRule:
    """A load point is stable when its last ``windows`` measurement windows agree.

    Agreement: the relative spread ``(max - min) / |median|`` of the metric over those windows is at most
    ``tolerance`` (e.g. 0.10 = 10 %).  The metric is whatever the caller measures per window (throughput in a
    closed loop, median latency in an open loop).
    """

    windows: int = 3
    tolerance: float = 0.10

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1, got {self.windows}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def spread(self, values: Sequence[float]) -> float | None:
        """Relative spread of the last ``windows`` values; ``None`` if there are fewer.

        ``inf`` if any of them is not finite, or if their median is 0 and they differ; 0 if they are all 0.
        """
        if len(values) < self.windows:
            return None
        last = [float(v) for v in list(values)[-self.windows:]]
        if not all(math.isfinite(v) for v in last):
            return math.inf
        lo, hi, med = min(last), max(last), statistics.median(last)
        if med == 0:
            return 0.0 if hi == lo else math.inf
        return (hi - lo) / abs(med)

    def is_stable(self, values: Sequence[float]) -> bool:
        """True iff the last ``windows`` values exist and their spread is <= ``tolerance``."""
        s = self.spread(values)
        return s is not None and s <= self.tolerance


# ---- SLO search ----------------------------------------------------------------------------------------------------
@dataclass
class SloPoint:
    """One measured load level: offered ``rate`` (requests/s), its p99 latency (s), error rate (0..1), verdict."""

    rate: float
    p99_s: float
    error_rate: float
    ok: bool


@dataclass
class SloResult:
    """Outcome of :func:`slo_search`.

    ``max_rate``: the highest *measured* rate that met the SLO (None if none did); ``points``: every measurement in
    order; ``reason``: why the search stopped; ``first_failing_rate``: the lowest rate above ``max_rate`` that
    failed (None if none), so ``[max_rate, first_failing_rate]`` brackets the true answer.
    """

    max_rate: float | None
    points: list[SloPoint] = field(default_factory=list)
    reason: str = ""
    first_failing_rate: float | None = None


#: How many halvings below ``start_rate`` slo_search tries before it reports that nothing meets the SLO.
SLO_DOWNWARD_HALVINGS = 4


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
    """Highest arrival rate (requests/s) with p99 latency <= ``p99_target_s`` and error rate <= ``max_error_rate``.

    ``measure(rate) -> (p99_seconds, error_rate)`` runs one load point.  A point passes iff
    ``p99 <= p99_target_s and error_rate <= max_error_rate`` (NaN fails).

    1. Growth: measure ``start_rate``, ``start_rate * growth``, ... (capped at ``max_rate``) until a rate fails.
       If ``start_rate`` itself fails, halve downward (at most ``SLO_DOWNWARD_HALVINGS`` times) until one passes.
    2. Bisection between the last passing rate ``lo`` and the first failing rate ``hi`` until
       ``(hi - lo) / lo <= rel_precision``.

    ``max_steps`` bounds the number of measurements in total.  The answer is always a rate that was measured and
    passed (never interpolated), so under a monotone latency curve it is at most the true limit and, on
    convergence, within ``rel_precision`` below it.  ``reason`` is one of ``"bisection converged to 5%"``,
    ``"no rate met the SLO"``, ``"upper bound not reached: ..."`` (max_rate passed, or the step limit hit while
    growing) or ``"step limit reached before convergence ..."``.
    """
    if not start_rate > 0:
        raise ValueError(f"start_rate must be > 0, got {start_rate}")
    if not max_rate >= start_rate:
        raise ValueError(f"max_rate ({max_rate}) must be >= start_rate ({start_rate})")
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    if not rel_precision > 0:
        raise ValueError(f"rel_precision must be > 0, got {rel_precision}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")

    res = SloResult(max_rate=None)

    def probe(rate: float) -> bool:
        p99, err = measure(rate)
        p99, err = float(p99), float(err)
        ok = p99 <= p99_target_s and err <= max_error_rate
        res.points.append(SloPoint(rate=rate, p99_s=p99, error_rate=err, ok=ok))
        return ok

    lo: float | None = None  # highest passing rate so far
    hi: float | None = None  # lowest failing rate above lo
    rate = start_rate
    halvings = 0
    # Phase 1: bracket the limit.
    while len(res.points) < max_steps:
        if probe(rate):
            lo = rate
            if hi is not None:
                break  # a pass below a failure (downward search)
            if rate >= max_rate:
                res.max_rate = lo
                res.reason = f"upper bound not reached: max_rate {max_rate:g}/s passed"
                return res
            rate = min(rate * growth, max_rate)
        else:
            hi = rate
            if lo is not None:
                break  # a failure above a pass (growth)
            if halvings >= SLO_DOWNWARD_HALVINGS:
                break
            halvings += 1
            rate = rate / 2
    if lo is None:
        res.reason = "no rate met the SLO"
        res.first_failing_rate = hi
        return res
    if hi is None:
        res.max_rate = lo
        res.reason = f"upper bound not reached: step limit ({max_steps}) hit while growing"
        return res
    # Phase 2: bisection.
    while (hi - lo) / lo > rel_precision and len(res.points) < max_steps:
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    res.max_rate, res.first_failing_rate = lo, hi
    if (hi - lo) / lo <= rel_precision:
        res.reason = f"bisection converged to {100 * rel_precision:g}%"
    else:
        res.reason = f"step limit ({max_steps}) reached before convergence; bracket [{lo:g}, {hi:g}]/s"
    return res


# ---- repeats and comparisons ---------------------------------------------------------------------------------------
def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(x) for x in values if x is not None and math.isfinite(float(x))]


@functools.lru_cache(maxsize=256)
def _median_ci_order(n: int, level: float = 0.95) -> tuple[int, float]:
    """(j, coverage): ``[x_(j), x_(n+1-j)]`` is the narrowest order-statistic interval of the median of ``n``
    samples with coverage >= ``level`` (j = 1, i.e. [min, max], with its lower coverage when none reaches it)."""
    from scipy.stats import binom

    def coverage(j: int) -> float:
        return 1.0 - 2.0 * float(binom.cdf(j - 1, n, 0.5))

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= level:
        j += 1
    return j, coverage(j)


def summarize_repeats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of repeated measurements of one metric (any unit; the output is in the same unit).

    Returns ``{"n", "median", "min", "max", "mean", "stdev", "iqr", "ci95_low", "ci95_high", "ci_coverage"}``.
    ``None`` and non-finite values are dropped first (``n`` counts what is left; all statistics are ``None`` when
    nothing is).  ``stdev`` is the sample standard deviation (ddof=1; 0 for one value); ``iqr`` is
    ``p75 - p25`` with numpy's default linear interpolation.

    ``ci95_low/high`` is a distribution-free confidence interval of the median from order statistics:
    ``[x_(j), x_(n+1-j)]`` covers the true median with probability ``1 - 2 * P(B <= j - 1)``,
    ``B ~ Binomial(n, 1/2)``; ``j`` is the largest index with coverage >= 95 %.  For ``n <= 5`` no such interval
    exists and it is ``[min, max]``; ``ci_coverage`` gives the actual coverage in every case (e.g. 0.9375 for
    n = 5, 0.75 for n = 3).
    """
    v = np.sort(np.asarray(_finite(values), dtype=float))
    n = len(v)
    if n == 0:
        return {k: (0 if k == "n" else None) for k in
                ("n", "median", "min", "max", "mean", "stdev", "iqr", "ci95_low", "ci95_high", "ci_coverage")}
    j, cover = _median_ci_order(n)
    return {
        "n": n,
        "median": float(np.median(v)),
        "min": float(v[0]),
        "max": float(v[-1]),
        "mean": float(v.mean()),
        "stdev": float(v.std(ddof=1)) if n > 1 else 0.0,
        "iqr": float(np.percentile(v, 75) - np.percentile(v, 25)),
        "ci95_low": float(v[j - 1]),
        "ci95_high": float(v[n - j]),
        "ci_coverage": cover,
    }


def _mwu_min_p(n: int, m: int) -> float:
    """Smallest two-sided p-value an exact Mann-Whitney U test can give for samples of sizes n and m."""
    return min(1.0, 2.0 / math.comb(n + m, n))


def significant_change(
    a: Sequence[float], b: Sequence[float], threshold: float = 0.05, alpha: float = 0.05
) -> tuple[bool, float, str]:
    """Did a metric change from run ``a`` to run ``b`` by more than the noise?  -> (significant, rel_change, method).

    ``rel_change = (median(b) - median(a)) / |median(a)|`` (``inf`` if ``median(a)`` is 0 and they differ;
    ``nan`` if a side has no finite value).  A change is significant only when both hold:

    * ``|rel_change| > threshold`` (e.g. 5 %): smaller changes are never flagged, however consistent; and
    * the two sample sets differ beyond their noise: with >= 3 samples a side, a two-sided Mann-Whitney U test
      (``scipy.stats.mannwhitneyu``) at ``p < alpha``; with fewer samples, the ``[min, max]`` ranges of the two
      sides must not overlap.  The range rule is also used when an exact Mann-Whitney test *cannot* reach
      ``alpha`` at these sizes (3 vs 3 and 3 vs 4 at alpha = 0.05: its smallest p is 0.1 / 0.057), since the
      test would then never flag anything; disjoint ranges are the most extreme outcome such samples can show.

    ``method`` says which rule decided (and the p-value when Mann-Whitney did).  None / non-finite values are
    dropped.
    """
    xa, xb = _finite(a), _finite(b)
    if not xa or not xb:
        return False, math.nan, "no data"
    ma, mb = statistics.median(xa), statistics.median(xb)
    rel = (mb - ma) / abs(ma) if ma else (0.0 if mb == ma else math.inf)
    sizes = f"n={len(xa)},{len(xb)}"
    if abs(rel) <= threshold:
        return False, rel, f"|change| {abs(rel):.1%} <= threshold {threshold:.0%} ({sizes})"
    if min(len(xa), len(xb)) >= 3 and _mwu_min_p(len(xa), len(xb)) < alpha:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
        return p < alpha, rel, f"Mann-Whitney U p={p:.3g} ({sizes})"
    disjoint = max(xa) < min(xb) or max(xb) < min(xa)
    note = "" if min(len(xa), len(xb)) < 3 else f"; Mann-Whitney cannot reach p<{alpha:g} at these sizes"
    return disjoint, rel, f"[min, max] ranges {'disjoint' if disjoint else 'overlap'} ({sizes}{note})"


# ---- coordinated omission and schedules ----------------------------------------------------------------------------
def intended_time_latencies(
    intended_s: npt.ArrayLike, sent_s: npt.ArrayLike, done_s: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Per-request latencies (s) measured from the intended and from the actual send time.

    ``intended_s``: when the schedule said the request should be sent; ``sent_s``: when it was actually sent;
    ``done_s``: when its response completed (all on one clock, same length).  Returns
    ``(done - intended, done - sent)``.

    The first is the coordinated-omission-safe latency: if the server stalls and the client (or a full connection
    pool) sends late, the waiting a real user would have experienced is counted, as in wrk2 / MLPerf LoadGen's
    server scenario.  The second is what a closed-loop client observes; it hides any backlog because requests
    that should have been sent during a stall are only timed once they are sent.
    """
    intended = np.asarray(intended_s, dtype=float)
    sent = np.asarray(sent_s, dtype=float)
    done = np.asarray(done_s, dtype=float)
    if not intended.shape == sent.shape == done.shape:
        raise ValueError(f"shapes differ: intended {intended.shape}, sent {sent.shape}, done {done.shape}")
    return done - intended, done - sent


def poisson_schedule(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Intended send offsets (s, sorted, in ``[0, duration_s)``) of a Poisson process of ``rate`` requests/s.

    Inter-arrival gaps are i.i.d. exponential with mean ``1 / rate`` (``numpy.random.default_rng(seed)``), so the
    same seed gives the same schedule; the expected number of sends is ``rate * duration_s``.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    rng = np.random.default_rng(seed)
    chunk = max(16, int(rate * duration_s * 1.1) + 64)
    parts: list[np.ndarray] = []
    t0 = 0.0
    while t0 < duration_s:
        t = t0 + np.cumsum(rng.exponential(1.0 / rate, size=chunk))
        parts.append(t)
        t0 = float(t[-1])
    out = np.concatenate(parts) if parts else np.empty(0)
    return out[out < duration_s]


def constant_schedule(rate: float, duration_s: float) -> np.ndarray:
    """Intended send offsets (s) at a constant rate: ``i / rate`` for each ``i >= 0`` with ``i / rate < duration_s``."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    n = max(0, math.ceil(rate * duration_s))
    t = np.arange(n, dtype=float) / rate
    return t[t < duration_s]
