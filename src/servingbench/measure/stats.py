"""Statistics that make the benchmark numbers trustworthy.

Everything here is pure (no I/O, no clocks): latency histograms, the stability rule for measurement windows, the
early-stopping bound of a p99 claim, the SLO search, noise-aware comparison of repeated runs,
coordinated-omission-safe latency, send schedules, and the M/D/1 queue (the analytic answer of the calibration
server, ``servingbench.measure.calibration_server``).

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
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Callable, Sequence

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
    "NON_FAILING_FLAGS",
    "INSUFFICIENT_FLAGS",
    "GENERATOR_FLAG",
    "OFFERED_RATE_MIN_FRACTION",
    "VERDICTS",
    "ProbeOutcome",
    "probe_verdict",
    "slo_search",
    "stable_tail",
    "p99_early_stopping",
    "early_stopping_max_over",
    "min_requests_for_p99",
    "md1_wait_cdf",
    "md1_p99_s",
    "md1_max_rate_for_p99",
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

    def count_above(self, seconds: float) -> int:
        """How many recorded samples may exceed ``seconds``: those in buckets whose upper edge is above it.

        Conservative by at most one bucket width (< 1 %: a sample just below ``seconds`` can be counted, one above
        never missed) and consistent with :meth:`percentile`: ``percentile(p) <= seconds`` iff
        ``count_above(seconds) <= N - max(1, ceil(p / 100 * N))``.  Meant for :class:`ProbeOutcome.over_target`.
        """
        c = self._counts()
        return int(c[self._layout.highest / _US_PER_S > float(seconds)].sum())

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
    ``tolerance`` (e.g. 0.10 = 10 %).  :meth:`is_stable` judges one metric; the measurement rule (DESIGN.md,
    "Measurement rules") needs throughput *and* latency to agree: :meth:`both` and :meth:`stable_tail` (or the
    module function :func:`stable_tail`).
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

    def both(self, tput: Sequence[float], p50: Sequence[float], counts: Sequence[int] | None = None) -> bool:
        """True iff the last ``windows`` windows agree on throughput *and* on p50 latency (each spread <=
        ``tolerance``).  The two series are per window, in the same order (ValueError if their lengths differ).

        ``counts`` (open loop): the windows' request counts.  Arrivals of an open loop are random, so a window of N
        requests varies by about sqrt(N) on its own; the throughput tolerance is then at least
        ``POISSON_RANGE_Z / sqrt(min N)`` (the 95th percentile of the range of three normal draws, in standard
        deviations): a low-rate point is not called unstable for the noise its own arrivals put in it."""
        if len(tput) != len(p50):
            raise ValueError(f"{len(tput)} throughput values but {len(p50)} p50 values: one of each per window")
        tput_rule = self
        if counts is not None and len(counts) >= self.windows:
            n = min(counts[-self.windows:])
            if n > 0:
                tput_rule = StabilityRule(self.windows, max(self.tolerance, POISSON_RANGE_Z / math.sqrt(n)))
        return tput_rule.is_stable(tput) and self.is_stable(p50)

    def stable_tail(self, tput: Sequence[float], p50: Sequence[float],
                    counts: Sequence[int] | None = None) -> int | None:
        """Index of the first reported window: ``len - windows`` when :meth:`both` holds, else None (unstable)."""
        return len(tput) - self.windows if self.both(tput, p50, counts) else None


#: Open-loop throughput noise allowance: the 95th percentile of the range of 3 standard normal draws.
POISSON_RANGE_Z = 3.3


def stable_tail(tput: Sequence[float], p50: Sequence[float], windows: int, tolerance: float,
                counts: Sequence[int] | None = None) -> int | None:
    """Where the reported (stable) windows begin, or None when the point is unstable.

    ``tput[i]`` and ``p50[i]`` are window ``i``'s throughput (requests/s) and median latency (s).  The point is
    stable when its last ``windows`` windows agree on *both* metrics: each has relative spread
    ``(max - min) / |median|`` <= ``tolerance`` over those windows (see :class:`StabilityRule`; a non-finite value,
    e.g. the ``inf`` p50 of a window without answers, never agrees).  Returns ``len(tput) - windows``: report
    metrics from ``windows[start:]`` only (the earlier windows stay in the timeline).  None when there are fewer
    than ``windows`` windows or the last ``windows`` disagree: flag the point ``unstable``.

    Only the last ``windows`` windows are reported, never a longer agreeing run: a generator that stops at the
    first agreement (as servingbench's does) never has a longer one, since the run one window longer contains the
    ``windows`` windows that disagreed at the previous check.
    """
    return StabilityRule(windows=windows, tolerance=tolerance).stable_tail(tput, p50, counts)


# ---- early stopping (how many requests a p99 claim needs) ------------------------------------------------------------
def _check_claim_args(confidence: float, percentile: float, dispersion: float = 1.0) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0 < percentile < 1:
        raise ValueError(f"percentile must be in (0, 1), got {percentile}")
    if not (dispersion >= 1 and math.isfinite(dispersion)):
        raise ValueError(f"dispersion must be a finite number >= 1, got {dispersion}")


def _tail_cdf(n: int, over: int, q: float, dispersion: float) -> float:
    """``P(X <= over)`` for ``X ~ Binomial(n, q)``; with ``dispersion`` d > 1, the same at ``n / d`` trials and
    ``over / d`` successes, continued to real arguments by the regularized incomplete beta function
    (``binom.cdf(k, n, q) = I_{1-q}(n - k, k + 1)``, exact at d = 1)."""
    if dispersion == 1:
        from scipy.stats import binom

        return float(binom.cdf(over, n, q))
    from scipy.special import betainc

    if over >= n:
        return 1.0
    return float(betainc((n - over) / dispersion, over / dispersion + 1, 1.0 - q))


def p99_early_stopping(n: int, over: int, confidence: float = 0.95, percentile: float = 0.99,
                       dispersion: float = 1.0) -> bool:
    """Do ``n`` requests, ``over`` of them slower than the latency target, show at ``confidence`` that the true
    fraction of requests slower than the target is at most ``1 - percentile`` (1 % for the p99)?

    One-sided binomial test, in the manner of MLPerf Inference LoadGen's *early stopping* (mlcommons/inference,
    ``loadgen/early_stopping.cc``, ``MinPassingQueriesFinder``; LoadGen uses ``confidence = 0.99``).  Null
    hypothesis: each request is over the target independently with probability exactly ``q = 1 - percentile``
    (a larger ``q`` only makes few overs less likely).  The claim "``P(latency > target) <= q``" is supported iff
    observing ``over`` or fewer overs would be unlikely under the null::

        P(X <= over) <= 1 - confidence,   X ~ Binomial(n, q),   i.e.  scipy.stats.binom.cdf(over, n, q) <= 1 - c

    (LoadGen writes it as ``I_percentile(h, over + 1) <= 1 - c`` with ``h = n - over`` requests under the
    target: the same number.)  With no overs this is ``percentile ** n <= 1 - confidence``: n >= 299 for the p99 at
    95 % (459 at 99 %); with 1 over n >= 473; see :func:`min_requests_for_p99` and :func:`early_stopping_max_over`.

    ``dispersion`` (default 1: the test above, exactly): the binomial test assumes independent requests, but the
    latencies of a queue are positively correlated: overs come in bursts, and the over count of a probe varies far
    more than a binomial one (its variance-to-mean ratio, for an M/D/1 queue at its p99 limit, is about 7 for a
    target of 5 service times, 30 for 10 and 200 for 25; tests/unit/test_slo_search_sim.py).  Then the test is
    optimistic: a short probe at or above the limit often sees no over at all and "passes".  ``dispersion = d``
    makes the test count every ``d`` requests as one independent observation: it is evaluated at ``n / d``
    requests with ``over / d`` overs (effective sample size; the binomial cdf continued to real arguments), so a
    claim needs ``d`` times as many requests.  ``n = 0`` never supports the claim.
    """
    _check_claim_args(confidence, percentile, dispersion)
    n, over = int(n), int(over)
    if n < 0 or not 0 <= over <= n:
        raise ValueError(f"need 0 <= over <= n, got n={n}, over={over}")
    if n == 0:
        return False
    return _tail_cdf(n, over, 1.0 - percentile, float(dispersion)) <= 1.0 - confidence


def early_stopping_max_over(n: int, confidence: float = 0.95, percentile: float = 0.99,
                            dispersion: float = 1.0) -> int:
    """The largest ``over`` for which :func:`p99_early_stopping` ``(n, over, ...)`` holds; -1 when even 0 does
    not (too few requests for any claim).  E.g. 0 for 299..472 requests, 1 for 473..627, 20 for 3000."""
    _check_claim_args(confidence, percentile, dispersion)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not p99_early_stopping(n, 0, confidence, percentile, dispersion):
        return -1
    lo, hi = 0, n  # the test holds at lo; P(X <= over) grows with over, so bisect for the last k where it holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if p99_early_stopping(n, mid, confidence, percentile, dispersion):
            lo = mid
        else:
            hi = mid - 1
    return lo


def min_requests_for_p99(confidence: float = 0.95, percentile: float = 0.99, over: int = 0,
                         dispersion: float = 1.0) -> int:
    """The smallest ``n`` for which ``over`` overs in ``n`` requests support the p99 claim
    (:func:`p99_early_stopping`): 299 for 0 overs at 95 % (``ceil(ln(0.05) / ln(0.99))``), 473 for 1, 628 for 2;
    about ``dispersion`` times as many with a ``dispersion`` > 1.

    ``P(X <= over)`` decreases as ``n`` grows, so the answer is found by doubling and bisection.  A probe needs at
    least this many requests *at the over count it actually sees*; plan probes of ``min_requests_for_p99() / rate``
    seconds or more (several times more near the limit, where overs occur).
    """
    _check_claim_args(confidence, percentile, dispersion)
    if over < 0:
        raise ValueError(f"over must be >= 0, got {over}")
    return _min_requests(float(confidence), float(percentile), int(over), float(dispersion))


@functools.lru_cache(maxsize=1024)
def _min_requests(confidence: float, percentile: float, over: int, dispersion: float) -> int:
    lo, hi = over, max(over + 1, 2)  # p99_early_stopping(over, over) is False (P(X <= n) == 1)
    while not p99_early_stopping(hi, over, confidence, percentile, dispersion):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if p99_early_stopping(mid, over, confidence, percentile, dispersion):
            hi = mid
        else:
            lo = mid
    return hi


# ---- SLO search ----------------------------------------------------------------------------------------------------
#: Validity flags that do not fail an SLO probe.  ``late_sends``: in an open loop latency is measured from the
#: *intended* send time, so a late send's delay is already inside the p99 the probe is judged by; a generator that
#: is late because it is saturated is caught by ``generator_bound`` (and a short offered rate by ``offered_rps``).
#: Every other flag (``too_short``, ``unstable``, ``stalled``, ``errors``, ``interference``, ...) fails the probe.
NON_FAILING_FLAGS: tuple[str, ...] = ("late_sends",)

#: Flags that mean "not enough data" rather than "too slow": a probe whose only problems are these and the
#: early-stopping bound is ``insufficient``, not ``fail``.
INSUFFICIENT_FLAGS: tuple[str, ...] = ("too_few_requests",)

#: The flag of a probe the load generator could not drive: its rate cannot be judged and the search stops there.
GENERATOR_FLAG = "generator_bound"

#: A probe whose offered rate (``ProbeOutcome.offered_rps``) is below this fraction of the asked rate fails: it
#: was judged at a lighter load than claimed (Poisson noise of a 1 s probe at 100 rps is 10 %: 0.8 is 2 sigma there,
#: far more at higher rates).
OFFERED_RATE_MIN_FRACTION = 0.8

#: How many halvings below ``start_rate`` slo_search tries before it reports that nothing meets the SLO.
SLO_DOWNWARD_HALVINGS = 4


@dataclass
class ProbeOutcome:
    """What ``measure(rate)`` returns to :func:`slo_search` for one probe (one open-loop load point).

    ``p99_s``: p99 latency (s) of the measured requests, from the intended send time (None: nothing answered).
    ``error_rate``: failed / measured requests, 0..1 (None: nothing measured).
    ``requests``: requests measured (the reported windows only, errors included).
    ``over_target``: of those, how many were slower than the SLO's p99 target *or failed* (an error is not an
    answer within the target); e.g. ``LatencyHistogram.count_above(target) + errors``.
    ``flags``: the point's validity flags (see :data:`NON_FAILING_FLAGS`, :data:`INSUFFICIENT_FLAGS`,
    :data:`GENERATOR_FLAG`).  ``goodput_rps``: answers within the target per second; ``offered_rps``: the
    arrival rate the generator actually offered (sends / measured s); both are recorded, and a short
    ``offered_rps`` fails the probe (:data:`OFFERED_RATE_MIN_FRACTION`).
    """

    p99_s: float | None
    error_rate: float | None
    requests: int
    over_target: int
    flags: list[str] = field(default_factory=list)
    goodput_rps: float | None = None
    offered_rps: float | None = None


#: Verdicts of an SLO probe.
VERDICTS = ("pass", "fail", "insufficient", "generator_limited")


@dataclass
class SloPoint:
    """One probe of :func:`slo_search`: the asked ``rate`` (requests/s), what was measured (see
    :class:`ProbeOutcome`), the ``verdict`` (one of :data:`VERDICTS`) and its ``reason``.  ``confirm``: a
    re-measurement of the answer after the search.  ``ok`` is ``verdict == "pass"`` (kept for the report)."""

    rate: float
    p99_s: float | None
    error_rate: float | None
    requests: int | None = None
    over_target: int | None = None
    flags: list[str] = field(default_factory=list)
    verdict: str = "fail"
    reason: str = ""
    goodput_rps: float | None = None
    offered_rps: float | None = None
    confirm: bool = False
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        self.ok = self.verdict == "pass"


@dataclass
class SloResult:
    """Outcome of :func:`slo_search`.

    ``max_rate``: the highest *measured* rate that passed (and, with ``confirm``, passed again when re-measured);
    None if none did.  ``points``: every probe in order (confirmations with ``confirm=True``).  ``reason``: why the
    search stopped, and what the confirmation found.  ``first_failing_rate``: the lowest rate above ``max_rate``
    that failed or was insufficient (None if none), so ``[max_rate, first_failing_rate]`` brackets the true answer.
    ``confirmed``: the answer passed its confirmation probe.  ``generator_limited``: the search stopped because
    the generator could not drive a rate: ``max_rate`` is then only a lower bound of the server's limit.
    """

    max_rate: float | None
    points: list[SloPoint] = field(default_factory=list)
    reason: str = ""
    first_failing_rate: float | None = None
    confirmed: bool = False
    generator_limited: bool = False


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def probe_verdict(
    outcome: ProbeOutcome,
    rate: float,
    p99_target_s: float,
    max_error_rate: float = 0.001,
    confidence: float = 0.95,
    percentile: float = 0.99,
    dispersion: float = 1.0,
) -> tuple[str, str]:
    """``(verdict, reason)`` of one probe at ``rate``; the rules of :func:`slo_search`, in this order:

    1. ``generator_bound`` in the flags: ``"generator_limited"`` (the rate cannot be judged, the search stops);
       but with ``interference`` too, ``"fail"``: the generator lagged because steal or other work held its core,
       not at its own ceiling (on this VM, steal bursts of 10-35 % pushed the event-loop lag past 5 ms at 100
       rps), so the search goes on and the answer is marked by :func:`slo_machine_limited`.
    2. any other flag not in :data:`NON_FAILING_FLAGS` / :data:`INSUFFICIENT_FLAGS`: ``"fail"``.
    3. nothing measured, ``error_rate`` missing / NaN / above ``max_error_rate``: ``"fail"``.
    4. ``offered_rps`` below ``OFFERED_RATE_MIN_FRACTION * rate``: ``"fail"``.
    5. ``p99_s`` missing / NaN / above the target, or ``over_target`` more than ``(1 - percentile) * requests``
       (the point estimate of the tail already exceeds it): ``"fail"``.
    6. the point estimate passes, but :func:`p99_early_stopping` (with ``dispersion``) does not hold or an
       insufficiency flag is set:
       ``"insufficient"`` (too few requests to *claim* the p99; a longer probe might pass).
    7. otherwise ``"pass"``.
    """
    flags = list(outcome.flags or [])
    if GENERATOR_FLAG in flags and "interference" not in flags:
        return "generator_limited", f"generator-limited at {rate:g} rps (flag {GENERATOR_FLAG})"
    failing = [f for f in flags if f not in NON_FAILING_FLAGS and f not in INSUFFICIENT_FLAGS]
    if failing:
        return "fail", f"flagged: {', '.join(failing)}"
    n, over = int(outcome.requests), int(outcome.over_target)
    if n <= 0:
        return "fail", "no request measured"
    if not 0 <= over <= n:
        raise ValueError(f"over_target must be in [0, requests], got {over} of {n}")
    err = _finite_or_none(outcome.error_rate)
    if err is None:
        return "fail", "no error rate"
    if err > max_error_rate:
        return "fail", f"error rate {err:.3g} > {max_error_rate:g}"
    offered = _finite_or_none(outcome.offered_rps)
    if offered is not None and offered < OFFERED_RATE_MIN_FRACTION * rate:
        return "fail", (f"offered {offered:.4g} rps, below {OFFERED_RATE_MIN_FRACTION:.0%} of the asked "
                        f"{rate:g} rps")
    p99 = None if outcome.p99_s is None or math.isnan(float(outcome.p99_s)) else float(outcome.p99_s)
    if p99 is None:
        return "fail", "no p99"
    if p99 > p99_target_s:
        return "fail", f"p99 {p99 * 1e3:.4g} ms > target {p99_target_s * 1e3:.4g} ms"
    allowed = n - math.ceil(Fraction(repr(float(percentile))) * n)  # overs a passing point estimate can have
    if over > allowed:
        return "fail", f"{over} of {n} requests over the target (more than {1 - percentile:.2%})"
    short = [f for f in flags if f in INSUFFICIENT_FLAGS]
    claim = p99_early_stopping(n, over, confidence, percentile, dispersion)
    if not claim or short:
        why = (f"flagged {', '.join(short)}; " if short else "")
        if not claim:
            need = min_requests_for_p99(confidence, percentile, over, dispersion)
            why += (f"{over} of {n} requests over the target cannot support the p99 claim at {confidence:.0%} "
                    f"confidence (needs >= {need} requests at {over} over"
                    + (f", dispersion {dispersion:g})" if dispersion != 1 else ")"))
        return "insufficient", f"insufficient: p99 {p99 * 1e3:.4g} ms <= target but {why.rstrip('; ')}"
    return "pass", (f"p99 {p99 * 1e3:.4g} ms <= target; {over} of {n} over the target supports the claim at "
                    f"{confidence:.0%}")


def _too_few_at_any_count(p: SloPoint, confidence: float, dispersion: float) -> bool:
    """An insufficient probe with fewer requests than the claim needs even with no request over the target."""
    return (p.verdict == "insufficient" and p.requests is not None
            and p.requests < min_requests_for_p99(confidence, dispersion=dispersion))


def _legacy_verdict(p99: float, err: float, p99_target_s: float, max_error_rate: float) -> tuple[str, str]:
    ok = p99 <= p99_target_s and err <= max_error_rate  # NaN fails
    return ("pass" if ok else "fail"), (f"legacy (p99, error_rate) probe: p99 {p99 * 1e3:.4g} ms, error rate "
                                        f"{err:.3g}; no request counts, so no early-stopping check")


class _Search:
    """The state and steps of one :func:`slo_search`: bracket, bisect, explain, confirm, finish."""

    def __init__(self, measure: Callable[[float], ProbeOutcome], p99_target_s: float, max_error_rate: float,
                 start_rate: float, max_rate: float, growth: float, rel_precision: float, max_steps: int,
                 confidence: float, dispersion: float, min_rate: float | None = None) -> None:
        self.measure = measure
        self.p99_target_s, self.max_error_rate = p99_target_s, max_error_rate
        self.start_rate, self.max_rate, self.growth = start_rate, max_rate, growth
        self.rel_precision, self.max_steps = rel_precision, max_steps
        self.confidence, self.dispersion = confidence, dispersion
        self.min_rate = min_rate
        self.floor_hit = False  # the downward search stopped at min_rate
        self.res = SloResult(max_rate=None)
        self.lo: float | None = None  # highest passing rate so far
        self.hi: float | None = None  # lowest non-passing rate above lo
        self.gen_at: float | None = None  # rate of a generator-limited probe
        self.too_few = False  # the downward search stopped: a probe was too short for the claim even without overs

    def probe(self, rate: float, is_confirm: bool = False) -> SloPoint:
        out = self.measure(rate)
        if isinstance(out, tuple):  # deprecated (p99_s, error_rate)
            p99, err = float(out[0]), float(out[1])
            verdict, reason = _legacy_verdict(p99, err, self.p99_target_s, self.max_error_rate)
            pt = SloPoint(rate=rate, p99_s=p99, error_rate=err, verdict=verdict, reason=reason, confirm=is_confirm)
        else:
            verdict, reason = probe_verdict(out, rate, self.p99_target_s, self.max_error_rate, self.confidence,
                                            dispersion=self.dispersion)
            pt = SloPoint(
                rate=rate, p99_s=None if out.p99_s is None else float(out.p99_s),
                error_rate=None if out.error_rate is None else float(out.error_rate),
                requests=int(out.requests), over_target=int(out.over_target), flags=list(out.flags or []),
                verdict=verdict, reason=reason, goodput_rps=out.goodput_rps, offered_rps=out.offered_rps,
                confirm=is_confirm,
            )
        self.res.points.append(pt)
        return pt

    def bracket(self) -> None:
        """Phase 1: grow from ``start_rate`` (or halve downward) until the limit is bracketed."""
        rate = self.start_rate
        halvings = 0
        while len(self.res.points) < self.max_steps:
            v = self.probe(rate).verdict
            if v == "generator_limited":
                self.gen_at = rate
                break
            if v == "pass":
                self.lo = rate
                if self.hi is not None or rate >= self.max_rate:
                    break  # a pass below a failure (downward search), or the upper bound passed
                rate = min(rate * self.growth, self.max_rate)
            else:
                self.hi = rate
                if self.lo is not None or halvings >= SLO_DOWNWARD_HALVINGS:
                    break  # a failure above a pass (growth), or nothing passes
                if _too_few_at_any_count(self.res.points[-1], self.confidence, self.dispersion):
                    self.too_few = True
                    break  # a lower rate gives a probe of the same length even fewer requests
                if self.min_rate is not None and rate / 2 < self.min_rate * (1 - 1e-9):
                    self.floor_hit = True
                    break  # the suite does not look below min_rate
                halvings += 1
                rate = rate / 2

    def bisect(self) -> None:
        """Phase 2: bisect between ``lo`` and ``hi`` until ``rel_precision`` or the step limit."""
        if self.gen_at is not None or self.lo is None or self.hi is None:
            return
        lo, hi = self.lo, self.hi
        while (hi - lo) / lo > self.rel_precision and len(self.res.points) < self.max_steps:
            mid = (lo + hi) / 2
            v = self.probe(mid).verdict
            if v == "generator_limited":
                self.gen_at = mid
                break
            if v == "pass":
                lo = mid
            else:
                hi = mid
        self.lo, self.hi = lo, hi

    def explain(self) -> None:
        """Why phases 1-2 stopped; the answer before confirmation."""
        res, lo, hi = self.res, self.lo, self.hi
        if self.gen_at is not None:
            res.generator_limited = True
            res.reason = (f"generator-limited at {self.gen_at:g} rps: the server's limit is >= {lo:g} rps"
                          if lo is not None
                          else f"generator-limited at {self.gen_at:g} rps before any rate passed: the server's "
                               "limit is not known")
        elif lo is None:
            res.reason = "no rate met the SLO"
            if self.floor_hit:
                res.reason += f" (none at or above {hi:g} rps: the search's min_rate is {self.min_rate:g} rps)"
            if self.too_few:
                res.reason += (f" (the probe at {hi:g} rps had {res.points[-1].requests} requests, fewer than the "
                               f"{min_requests_for_p99(self.confidence, dispersion=self.dispersion)} a p99 claim "
                               "needs even with none over the target: "
                               "halving the rate would not help; lengthen the probes or start higher)")
        elif hi is None:
            res.reason = ("upper bound not reached: " + (f"max_rate {self.max_rate:g}/s passed"
                                                         if lo >= self.max_rate
                                                         else f"step limit ({self.max_steps}) hit while growing"))
        elif (hi - lo) / lo <= self.rel_precision:
            res.reason = f"bisection converged to {100 * self.rel_precision:g}%"
        else:
            res.reason = f"step limit ({self.max_steps}) reached before convergence; bracket [{lo:g}, {hi:g}]/s"
        res.max_rate = lo

    def _next_below(self, top: float) -> float | None:
        """The next lower rate that passed (and whose confirmation has not failed) below ``top``."""
        pts = self.res.points
        below = [p.rate for p in pts if p.ok and p.rate < top
                 and not any(c.confirm and not c.ok and c.rate == p.rate for c in pts)]
        return max(below) if below else None

    def _step_down(self, top: float) -> float | None:
        """No lower rate passed: halve below ``top`` (not below ``min_rate``, one probe kept to confirm) until a rate
        passes.  A confirmation that fails at the search's first rate is not evidence that nothing lower holds
        (session 11: Ray Serve's defaults passed 100 rps, its confirmation was flagged unstable, and the answer was
        "none" without a probe below it)."""
        rate = top / 2
        while len(self.res.points) < self.max_steps + 1:
            if self.min_rate is not None and rate < self.min_rate * (1 - 1e-9):
                return None
            if any(p.rate == rate and not p.ok for p in self.res.points):
                return None  # already failed there: nothing lower was tried above it
            v = self.probe(rate).verdict
            if v == "pass":
                return rate
            if v == "generator_limited":
                return None
            rate /= 2
        return None

    def _rebisect(self, cand: float | None, top: float) -> float | None:
        """Bisect up from ``cand`` towards the failed ``top`` while probes are left (one kept to confirm)."""
        while (cand is not None and (top - cand) / cand > self.rel_precision
               and len(self.res.points) < self.max_steps + 1):
            mid = (cand + top) / 2
            v = self.probe(mid).verdict
            if v == "generator_limited":
                break
            if v == "pass":
                cand = mid
            else:
                top = mid
        return cand

    def confirm(self) -> None:
        """Phase 3: re-probe the answer; on failure step down and bisect again, within ``max_steps + 2``."""
        if self.lo is None:
            return
        res = self.res
        notes: list[str] = []
        answer: float | None = None
        cand: float | None = self.lo
        while cand is not None:
            if len(res.points) >= self.max_steps + 2:
                notes.append(f"no probe left to confirm {cand:g} rps")
                break
            pt = self.probe(cand, is_confirm=True)
            if pt.ok:
                answer = cand
                break
            notes.append(f"confirmation of {cand:g} rps failed ({pt.reason})")
            # The failed rate is the new upper bound: step down to the next lower rate that passed (and whose
            # confirmation has not failed; none: halve until one passes), and bisect up from it again while probes
            # are left (one is kept for the confirmation).
            below = self._next_below(cand)
            cand = self._rebisect(below if below is not None else self._step_down(cand), cand)
        res.max_rate, res.confirmed = answer, answer is not None
        if answer is None:
            res.reason += "; not confirmed: " + "; ".join(notes or ["no passing rate left"])
        else:
            res.reason += "".join(f"; {n}" for n in notes) + f"; confirmed at {answer:g} rps"

    def finish(self) -> SloResult:
        """The first failing rate above the answer, and the count of insufficient probes."""
        res = self.res
        failing = [p.rate for p in res.points if p.verdict in ("fail", "insufficient")
                   and (res.max_rate is None or p.rate > res.max_rate)]
        res.first_failing_rate = min(failing) if failing else None
        short = sum(p.verdict == "insufficient" for p in res.points)
        if short:
            res.reason += (f"; {short} probe(s) insufficient: too few requests for the p99 claim at "
                           f"{self.confidence:.0%} confidence (counted as failures; lengthen the probes)")
        return res


def slo_search(
    measure: Callable[[float], ProbeOutcome],
    p99_target_s: float,
    max_error_rate: float = 0.001,
    start_rate: float = 10.0,
    max_rate: float = 1e6,
    growth: float = 2.0,
    rel_precision: float = 0.05,
    max_steps: int = 20,
    confidence: float = 0.95,
    confirm: bool = True,
    dispersion: float = 1.0,
    min_rate: float | None = None,
) -> SloResult:
    """Highest arrival rate (requests/s) whose p99 latency is <= ``p99_target_s`` (claimed at ``confidence``) and
    error rate <= ``max_error_rate``.

    ``measure(rate) -> ProbeOutcome`` runs one probe (an open-loop point at ``rate``, the server drained before
    it).  Each probe gets a verdict (:func:`probe_verdict`): ``"pass"`` needs no failing flag, the error rate
    within bounds, and enough requests for the p99 claim (:func:`p99_early_stopping`); a probe whose point
    estimate passes but whose requests are too few for the claim is ``"insufficient"``, which brackets like a
    failure (its reason says so, and so does the result's).  (Deprecated: ``measure`` may still return a
    ``(p99_s, error_rate)`` tuple; such a probe is judged by those two numbers only, without the early-stopping
    check, and its reason says so.)

    1. Growth: probe ``start_rate``, ``start_rate * growth``, ... (capped at ``max_rate``) until a rate does not
       pass.  If ``start_rate`` itself does not pass, halve downward (at most ``SLO_DOWNWARD_HALVINGS`` times)
       until one passes; but not below an ``"insufficient"`` probe that had fewer requests than the claim needs
       even with none over the target (:func:`min_requests_for_p99`): a lower rate would have even fewer; and
       not below ``min_rate`` (each probe lasts about ``min_requests / rate`` seconds, so the low rates are the
       long ones): a server that misses the SLO at ``min_rate`` has "no rate met the SLO (none at or above
       <min_rate> rps)".
    2. Bisection between the last passing rate ``lo`` and the lowest non-passing rate ``hi`` until
       ``(hi - lo) / lo <= rel_precision``.
    ``max_steps`` bounds the probes of steps 1-2.  A ``"generator_limited"`` probe stops the search at once:
    ``generator_limited=True``, reason ``"generator-limited at X rps: the server's limit is >= <lo> rps"``.
    3. Confirmation (``confirm=True``): the answer ``lo`` is probed once more (a point with ``confirm=True``).
       If that fails, the failed rate becomes the upper bound and the answer steps down to the next lower rate
       that passed; while probes are left, the bisection resumes between the two (near the limit a probe passes
       only by chance, so the next lower pass can be far below: after the growth phase, half the rate), and
       the new answer is confirmed the same way.  At most ``max_steps + 2`` probes in all: an answer that could
       not be confirmed within them is None, with the reason saying so.

    The answer is always a rate that was measured and passed (never interpolated), so under a monotone latency
    curve it is at most the true limit and, on convergence, within ``rel_precision`` below it.  ``reason`` starts
    with ``"bisection converged to 5%"``, ``"no rate met the SLO"``, ``"upper bound not reached: ..."`` (max_rate
    passed, or the step limit hit while growing), ``"step limit reached before convergence ..."`` or
    ``"generator-limited at ..."``, followed by what the confirmation found and how many probes were insufficient.
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
    if min_rate is not None and not 0 < min_rate <= start_rate:
        raise ValueError(f"min_rate must be > 0 and <= start_rate ({start_rate}), got {min_rate}")
    _check_claim_args(confidence, 0.99, dispersion)

    search = _Search(measure, p99_target_s, max_error_rate, start_rate, max_rate, growth, rel_precision, max_steps,
                     confidence, dispersion, min_rate)
    search.bracket()
    search.bisect()
    search.explain()
    if confirm:
        search.confirm()
    return search.finish()


#: probe flags about the machine, not the rate: other work or steal on the cores, a change of the machine's speed,
#: the generator at its limit.  Not ``unstable``: a probe retried and still unsettled is mostly a queue growing at
#: an overloading rate (the server's answer); in the quick suite every failing probe above the answer was
#: ``unstable``, so counting it would have made every answer a lower bound.
MACHINE_FLAGS = frozenset({"interference", "machine_speed_changed", "generator_bound"})


def slo_unbounded(slo: dict[str, Any]) -> bool:
    """Whether an SLO search's answer (an ``slo`` record: ``max_rate`` and ``points`` with ``rate`` and ``verdict``) is
    only a lower bound because no probe above it failed: the search stopped growing at its step limit or at
    ``max_rate`` while every rate still passed.  Computed from the probes, so older records get it too."""
    rate = slo.get("max_rate")
    if not isinstance(rate, (int, float)) or math.isnan(rate):
        return False
    return not any(p.get("verdict") in ("fail", "insufficient") and isinstance(p.get("rate"), (int, float))
                   and p["rate"] > rate for p in slo.get("points") or [])


def slo_machine_limited(slo: dict[str, Any]) -> str | None:
    """Why an SLO search's answer (an ``slo`` record: ``max_rate``, ``generator_limited``, ``reason``, ``points``
    with ``rate``, ``verdict`` and ``flags``) says more about the machine than about the server, or None when it is
    the server's answer.

    * It met a rate, and every probe that failed above it failed for the machine (:data:`MACHINE_FLAGS`), or the
      generator could not offer more: the rate is only a lower bound.  One clean failure above it decides the
      bracket: an answer is an answer.
    * It met no rate: that is the server's answer ("none") only when a probe failed cleanly at a rate no higher than
      every rate that passed once (the server missed the SLO there, e.g. at the lowest rate).  Otherwise the rates
      that passed went unconfirmed because their confirmations failed for the machine, or every failure was the
      machine's: nothing was measured (not a 0).
    """
    points = slo.get("points") or []

    def machine(p: dict[str, Any]) -> set[str]:
        return set(p.get("flags") or ()) & MACHINE_FLAGS

    met = slo.get("max_rate")
    failed = [p for p in points if p.get("verdict") == "fail"]
    flags = sorted(set().union(*(machine(p) for p in failed)) if failed else set())
    if met is None:
        passed = [float(p.get("rate") or 0) for p in points if p.get("verdict") == "pass"]
        clean = [float(p.get("rate") or 0) for p in failed if not machine(p)]
        if clean and (not passed or min(clean) <= min(passed)):
            return None
        if not (slo.get("generator_limited") or flags):
            return None
        unconfirmed = f" ({max(passed):g} rps passed but was not confirmed)" if passed else ""
        return (f"the machine limited the probes ({', '.join(flags) or 'generator-limited'}){unconfirmed}: "
                f"{slo.get('reason')}")
    above = [p for p in failed if float(p.get("rate") or 0) > float(met)]
    if slo.get("generator_limited"):
        return f"the machine limited the probes (generator-limited): only a lower bound of {met:g} rps"
    if above and all(machine(p) for p in above):
        flags = sorted(set().union(*(machine(p) for p in above)))
        return (f"the machine limited the probes above {met:g} rps ({', '.join(flags)}): only a lower bound of "
                f"{met:g} rps")
    return None


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


# ---- the M/D/1 queue (analytic answer of the calibration server) ---------------------------------------------------
def md1_wait_cdf(t: float, rate: float, service_s: float) -> float:
    """``P(W <= t)`` for the stationary FIFO waiting time ``W`` (before service) of an M/D/1 queue: Poisson
    arrivals of ``rate`` per s, one server, deterministic service time ``service_s``, ``rho = rate * service_s < 1``.

    Exact, by Erlang's formula (Erlang 1909; e.g. Franx, "A simple solution for the M/D/c waiting time
    distribution", Oper. Res. Lett. 29, 2001, with c = 1)::

        P(W <= t) = (1 - rho) * sum_{k=0}^{floor(t / D)} (rate * (k D - t))**k / k! * exp(rate * (t - k D))

    The terms alternate in sign and grow like ``exp(rate * t)``, so the sum is evaluated in ``decimal`` with
    ``2 * rate * t / ln 10 + 30`` significant digits (no cancellation error in the result's 15 digits); far in the
    tail (Kingman's bound ``P(W > t) <= exp(-theta t)`` below 5e-18) it is 1.0 without the sum.  The atom at 0 is
    ``P(W = 0) = 1 - rho``.  0 for ``t < 0``; for ``rho >= 1`` there is no stationary distribution (0).
    """
    rate, D, t = float(rate), float(service_s), float(t)
    if not (rate >= 0 and D > 0):
        raise ValueError(f"need rate >= 0 and service_s > 0, got {rate}, {service_s}")
    rho = rate * D
    if t < 0 or rho >= 1:
        return 0.0
    if rate == 0 or not math.isfinite(t):
        return 1.0
    m = int(math.floor(t / D))
    if m > 50 and _kingman_theta(rate, D) * t > 40:
        return 1.0  # Kingman's bound: P(W > t) <= exp(-theta t) < 5e-18, below a double's resolution near 1
    with localcontext() as ctx:
        ctx.prec = int(2 * rate * t / math.log(10)) + 30
        lam, T, Dd = Decimal(rate), Decimal(t), Decimal(D)
        e0 = (lam * T).exp()  # exp(rate * t)
        q = (-(lam * Dd)).exp()  # exp(-rate * D): exp(rate * (t - k D)) = e0 * q**k
        total = Decimal(0)
        fact = Decimal(1)
        for k in range(m + 1):
            if k:
                fact *= k
                total += (lam * (k * Dd - T) * q) ** k / fact
            else:
                total += 1
        val = (1 - lam * Dd) * total * e0
    return min(1.0, max(0.0, float(val)))


def _kingman_theta(rate: float, service_s: float) -> float:
    """The decay rate ``theta > 0`` of Kingman's bound ``P(W > t) <= exp(-theta t)`` for M/D/1: the root of
    ``E[exp(theta (S - A))] = 1``, i.e. ``rate * (exp(theta S) - 1) = theta`` (needs ``rate * S < 1``)."""

    def f(th: float) -> float:  # f(0) = 0, f'(0) = rate * S - 1 < 0, convex: one positive root
        return rate * math.expm1(th * service_s) - th

    lo, hi = 0.0, 1.0 / service_s
    while f(hi) <= 0:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) <= 0:
            lo = mid
        else:
            hi = mid
    return lo


def md1_p99_s(rate: float, service_s: float, percentile: float = 0.99) -> float:
    """p99 (by default) of the M/D/1 *sojourn* time (wait + service) in s: ``service_s + w`` with ``w`` the
    smallest wait such that ``md1_wait_cdf(w) >= percentile`` (found by bisection to 1e-12 relative).

    ``inf`` when ``rate * service_s >= 1`` (no steady state); ``service_s`` when ``1 - rho >= percentile`` (99 %
    of arrivals find the server idle).  For the calibration server: capacity ``1 / service_s``, and with Poisson
    arrivals its latency is this queue's (plus the HTTP round trip).
    """
    if not 0 < percentile < 1:
        raise ValueError(f"percentile must be in (0, 1), got {percentile}")
    if not (rate >= 0 and service_s > 0):
        raise ValueError(f"need rate >= 0 and service_s > 0, got {rate}, {service_s}")
    if rate * service_s >= 1:
        return math.inf
    if md1_wait_cdf(0.0, rate, service_s) >= percentile:
        return float(service_s)
    lo, hi = 0.0, float(service_s)
    while md1_wait_cdf(hi, rate, service_s) < percentile:
        lo, hi = hi, hi * 2
    _, hi = _bisect(lambda t: md1_wait_cdf(t, rate, service_s) >= percentile, lo, hi, 1e-12)
    return float(service_s) + hi


def _bisect(above: Callable[[float], bool], lo: float, hi: float, rel: float) -> tuple[float, float]:
    """Narrow ``[lo, hi]`` to ``rel`` (relative to ``hi``) around the edge where ``above(x)`` becomes true."""
    while hi - lo > rel * hi:
        mid = (lo + hi) / 2
        if above(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def md1_max_rate_for_p99(target_s: float, service_s: float, percentile: float = 0.99) -> float:
    """The highest Poisson arrival rate (per s) at which the M/D/1 sojourn-time p99 is <= ``target_s``: the
    supremum of ``{rate : md1_wait_cdf(target_s - service_s, rate) >= percentile}`` (the waiting time grows
    stochastically with the rate), by bisection on the rate to 1e-10 relative.  0 when ``target_s < service_s``;
    always below the capacity ``1 / service_s``."""
    if not 0 < percentile < 1:
        raise ValueError(f"percentile must be in (0, 1), got {percentile}")
    if not service_s > 0:
        raise ValueError(f"service_s must be > 0, got {service_s}")
    w = float(target_s) - float(service_s)
    if w < 0:
        return 0.0
    lo, _ = _bisect(lambda r: md1_wait_cdf(w, r, service_s) < percentile, 0.0, 1.0 / service_s, 1e-10)
    return lo
