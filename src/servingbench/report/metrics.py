"""The metrics registry: every number in a report is computed here, at report time, from raw records.

A :class:`Metric` names a quantity, its unit and which direction is better, and knows how to pull it out of one
record (``extract``) and, where the record holds several independent sub-measurements, how to get those as samples
(``window_samples``: one value per measurement window, used as a noise estimate when a run has a single repeat).

Throughput is recomputed from the raw windows (successful requests / measured time), latency percentiles from the
stored latency histogram (falling back to the summary the harness wrote when a record has no histogram), so a
change in how a metric is defined changes every report consistently, old runs included.

Example::

    from servingbench.report.metrics import METRICS
    m = METRICS["latency_p99_s"]
    m.extract(point_record)        # 0.0123 (seconds)
    m.format(0.0123)               # '12.3 ms'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Record = dict[str, Any]
Better = Literal["higher", "lower"]


# ---- raw-record helpers ----------------------------------------------------------------------------------------------
def histogram(data: dict | None):
    """A :class:`LatencyHistogram` from its ``to_dict()`` form, or ``None`` (missing/empty/unreadable)."""
    if not data:
        return None
    from servingbench.measure.stats import LatencyHistogram

    try:
        h = LatencyHistogram.from_dict(data)
    except Exception:  # noqa: BLE001 - a damaged histogram must not kill the report
        return None
    return h if getattr(h, "count", 0) else None


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def dig(rec: Record, *path: str) -> Any:
    cur: Any = rec
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def window_duration(w: dict) -> float | None:
    s, e = _num(w.get("start")), _num(w.get("end"))
    if s is None or e is None:
        return None
    return e - s if e > s else None


def reported_windows(rec: Record) -> list[dict]:
    """The windows a point's metrics come from: from ``reported_from`` on (the stable tail), every window for
    records written before the stable-window rule.  Earlier windows are the point's timeline only."""
    ws = rec.get("windows") or []
    start = rec.get("reported_from")
    if isinstance(start, int) and not isinstance(start, bool) and 0 <= start < len(ws):
        return ws[start:]
    return ws


def window_throughputs(rec: Record) -> list[float]:
    """Successful requests per second in each measurement window of a point."""
    out = []
    for w in reported_windows(rec):
        d = window_duration(w)
        if d:
            out.append((w.get("count", 0) - w.get("errors", 0)) / d)
    return out


def point_throughput(rec: Record) -> float | None:
    """Successful requests / measured seconds: requests counted from the raw windows, over the measured duration
    (``metrics.duration_s``, else the windows' total length); the harness summary when windows are missing."""
    ws = reported_windows(rec)
    if ws:
        dur = _num(dig(rec, "metrics", "duration_s")) or sum(window_duration(w) or 0.0 for w in ws)
        ok = sum(w.get("count", 0) - w.get("errors", 0) for w in ws)
        if dur > 0:
            return ok / dur
    return _num(dig(rec, "metrics", "throughput_rps"))


def point_samples_per_s(rec: Record) -> float | None:
    t = point_throughput(rec)
    return None if t is None else t * int(rec.get("batch") or 1)


def point_error_rate(rec: Record) -> float | None:
    ws = reported_windows(rec)
    if ws:
        n = sum(w.get("count", 0) for w in ws)
        return sum(w.get("errors", 0) for w in ws) / n if n else None
    return _num(dig(rec, "metrics", "error_rate"))


_SUMMARY_KEY = {50: "p50", 90: "p90", 95: "p95", 99: "p99", 99.9: "p99.9"}


def point_percentile(rec: Record, q: float) -> float | None:
    """Latency percentile ``q`` (0-100) in seconds, from the stored histogram."""
    h = histogram(rec.get("histogram"))
    if h is not None:
        return _num(h.percentile(q))
    key = _SUMMARY_KEY.get(q)
    return _num(dig(rec, "metrics", "latency_s", key)) if key else None


def window_percentiles(rec: Record, q: float) -> list[float]:
    out = []
    for w in reported_windows(rec):
        h = histogram(w.get("histogram"))
        if h is not None:
            v = _num(h.percentile(q))
            if v is not None:
                out.append(v)
    return out


def point_mean_latency(rec: Record) -> float | None:
    h = histogram(rec.get("histogram"))
    if h is not None and hasattr(h, "mean"):
        return _num(h.mean())
    return _num(dig(rec, "metrics", "latency_s", "mean"))


def load_value(rec: Record) -> float | None:
    load = rec.get("load") or {}
    return _num(load.get("concurrency", load.get("rate")))


def load_kind(rec: Record) -> str:
    load = rec.get("load") or {}
    return "concurrency" if "concurrency" in load else "rate" if "rate" in load else ""


def load_label(rec: Record) -> str:
    v, k = load_value(rec), load_kind(rec)
    if v is None:
        return "-"
    start = (rec.get("load") or {}).get("from_concurrency")
    if k == "concurrency" and start is not None and start != v:  # a ramp stage of a shape workload
        return f"c={start:g}→{v:g}"
    return f"c={v:g}" if k == "concurrency" else f"{v:g} rps"


# ---- formatting ----------------------------------------------------------------------------------------------------
def _sig(v: float, digits: int = 3) -> str:
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    dec = max(0, digits - 1 - mag)
    return f"{v:.{dec}f}"


def format_value(v: Any, unit: str) -> str:
    """Human text for a value in ``unit`` (seconds shown as ms/µs/s, bytes as MiB/GiB, ratios as ×)."""
    f = _num(v)
    if f is None:
        return "–"
    if unit == "s":
        a = abs(f)
        if a >= 1:
            return f"{_sig(f)} s"
        if a >= 1e-3 or a == 0:
            return f"{_sig(f * 1e3)} ms"
        return f"{_sig(f * 1e6)} µs"
    if unit == "bytes":
        if abs(f) >= 2**30:
            return f"{f / 2**30:.2f} GiB"
        return f"{f / 2**20:.0f} MiB" if abs(f) >= 100 * 2**20 else f"{f / 2**20:.1f} MiB"
    if unit in ("rps", "samples/s"):
        return f"{f:,.0f} {unit}" if abs(f) >= 100 else f"{_sig(f)} {unit}"
    if unit == "%":
        return f"{f:.1f} %"
    if unit == "fraction":
        return f"{f * 100:.2f} %"
    if unit == "ratio":
        return f"{f:.2f}×"
    return _sig(f) + (f" {unit}" if unit else "")


_AXIS_SCALE = {("s", "ms"): 1e3, ("s", "µs"): 1e6, ("bytes", "MiB"): 1 / 2**20, ("bytes", "GiB"): 1 / 2**30,
               ("fraction", "%"): 100.0}


# ---- the registry --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One reported quantity.

    Attributes:
        name: registry key, also the column name in tables.
        title: human label (axis labels and table headers add the unit).
        unit: ``s`` | ``bytes`` | ``rps`` | ``samples/s`` | ``%`` | ``fraction`` | ``ratio`` | ``""``.
        better: ``higher`` or ``lower``: which direction is an improvement (compare flags the other).
        record_type: which records it is extracted from (``point``, ``cell``, ``slo``, ``inprocess``).
        extract: record -> value (``None`` when the record does not carry it).
        window_samples: record -> per-window values (a single point's own noise), or ``None``.
    """

    name: str
    title: str
    unit: str
    better: Better
    record_type: str
    extract: Callable[[Record], float | None]
    window_samples: Callable[[Record], list[float]] | None = field(default=None, compare=False)
    axis: str | None = None  # unit figures use; default: ms for seconds, MiB for bytes, % for fractions
    short: str | None = None  # short axis title

    def format(self, v: Any) -> str:
        return format_value(v, self.unit)

    @property
    def axis_unit(self) -> str:
        if self.axis:
            return self.axis
        return {"s": "ms", "bytes": "MiB", "fraction": "%"}.get(self.unit, self.unit)

    def axis_value(self, v: float | None) -> float | None:
        """The value in the unit figures use (ms, MiB, %)."""
        if v is None:
            return None
        return v * _AXIS_SCALE.get((self.unit, self.axis_unit), 1.0)

    @property
    def label(self) -> str:
        t = self.short or self.title
        return f"{t} ({self.axis_unit})" if self.axis_unit else t


def _pct(q: float) -> Callable[[Record], float | None]:
    return lambda r: point_percentile(r, q)


def _wpct(q: float) -> Callable[[Record], list[float]]:
    return lambda r: window_percentiles(r, q)


def _res(key: str) -> Callable[[Record], float | None]:
    return lambda r: _num(dig(r, "resources", key))


_ALL = [
    # point records (one load level of one workload on one cell)
    Metric("throughput_rps", "Throughput", "rps", "higher", "point", point_throughput, window_throughputs),
    Metric("samples_per_s", "Samples/s", "samples/s", "higher", "point", point_samples_per_s,
           lambda r: [t * int(r.get("batch") or 1) for t in window_throughputs(r)]),
    Metric("latency_p50_s", "p50 latency", "s", "lower", "point", _pct(50), _wpct(50)),
    Metric("latency_p90_s", "p90 latency", "s", "lower", "point", _pct(90), _wpct(90)),
    Metric("latency_p99_s", "p99 latency", "s", "lower", "point", _pct(99), _wpct(99)),
    Metric("latency_p999_s", "p99.9 latency", "s", "lower", "point", _pct(99.9), None),
    Metric("latency_mean_s", "Mean latency", "s", "lower", "point", point_mean_latency, None),
    Metric("error_rate", "Error rate", "fraction", "lower", "point", point_error_rate, None),
    Metric("server_cpu_pct", "Server CPU", "%", "lower", "point", _res("server_cpu_pct_mean")),
    Metric("server_pss_bytes", "Server peak PSS", "bytes", "lower", "point", _res("server_pss_bytes_max")),
    Metric("server_rss_bytes", "Server peak RSS", "bytes", "lower", "point", _res("server_rss_bytes_max")),
    Metric("generator_cpu_pct", "Generator CPU", "%", "lower", "point",
           lambda r: _num(dig(r, "generator", "cpu_pct")) if dig(r, "generator", "cpu_pct") is not None
           else _num(dig(r, "resources", "generator_cpu_pct_mean"))),
    Metric("gpu_mem_bytes", "GPU memory (peak)", "bytes", "lower", "point", _res("gpu_mem_bytes_max")),
    Metric("gpu_util_pct", "GPU utilisation", "%", "higher", "point", _res("gpu_util_pct_mean")),
    # the batches the server formed (servingbench.models.runtime.BatchLog): requests per model call, mean and max
    Metric("batch_mean_requests", "Requests per model call (mean)", "requests", "higher", "point",
           lambda r: _num(dig(r, "batch_sizes", "mean_requests"))),
    Metric("batch_max_rows", "Largest batch formed (rows)", "rows", "higher", "point",
           lambda r: _num(dig(r, "batch_sizes", "max_rows"))),
    # the model's share of a request's latency: mean time its rows spent in their model call (BatchLog)
    Metric("compute_mean_s", "Model compute per request (mean)", "s", "lower", "point",
           lambda r: _num(dig(r, "batch_sizes", "compute_s"))),
    # cell records (one server lifetime)
    Metric("cold_start_s", "Cold start (spawn → first correct answer)", "s", "lower", "cell",
           lambda r: _num(r.get("cold_start_s")), axis="s", short="Time from spawn"),
    Metric("ready_s", "Ready (spawn → readiness probe)", "s", "lower", "cell", lambda r: _num(r.get("ready_s")),
           axis="s", short="Time from spawn"),
    Metric("idle_pss_bytes", "Idle PSS", "bytes", "lower", "cell", lambda r: _num(dig(r, "memory_idle", "pss_bytes")),
           short="PSS"),
    Metric("idle_rss_bytes", "Idle RSS", "bytes", "lower", "cell", lambda r: _num(dig(r, "memory_idle", "rss_bytes"))),
    # slo records
    Metric("slo_max_rate_rps", "Throughput at SLO", "rps", "higher", "slo", lambda r: _num(r.get("max_rate"))),
    # in-process limit
    Metric("inprocess_throughput_rps", "In-process throughput", "rps", "higher", "inprocess",
           lambda r: _num(r.get("throughput_rps"))),
    Metric("inprocess_latency_p50_s", "In-process p50 latency", "s", "lower", "inprocess", _pct(50)),
]

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}


def metrics_for(record_type: str) -> list[Metric]:
    return [m for m in _ALL if m.record_type == record_type]


def relative_advantage(winner: float, other: float, better: Better) -> float | None:
    """How much better ``winner`` is than ``other`` as a positive fraction (0.2 = 20 % better)."""
    if winner is None or other is None or other == 0:
        return None
    return winner / other - 1.0 if better == "higher" else 1.0 - winner / other
