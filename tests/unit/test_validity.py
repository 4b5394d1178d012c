"""Validity flags and the stable-window rule of one load point, on synthetic windows and histograms
(``servingbench.load.point.summarize_point``): every flag can be raised, and only the stable windows are reported."""

from __future__ import annotations

import pytest

from servingbench.load.point import generator_limits, reported_windows, summarize_point
from servingbench.measure.stats import LatencyHistogram
from servingbench.scenarios.schema import Measurement

M = Measurement(warmup="0s", window="1s", windows=3, tolerance=0.1, max_duration="10s",
                min_requests=100)


def _window(i: int, rps: float, latency_s: float, errors: int = 0) -> dict:
    h = LatencyHistogram()
    n = int(rps)
    for _ in range(n - errors):
        h.record(latency_s)
    return {"start": float(i), "end": float(i + 1), "count": n, "errors": errors, "histogram": h.to_dict(),
            "per_model": {"mlp": h.to_dict()}}


def _raw(windows: list[dict], *, stable_from: int | None, mode: str = "closed", gen: dict | None = None,
         late: int = 0) -> dict:
    return {"mode": mode, "stable": stable_from is not None, "stable_from": stable_from, "windows": windows,
            "measured_s": float(len(windows)), "window_metric": [w["count"] for w in windows],
            "errors_by_kind": {}, "late_sends": late, "max_lateness_s": 0.0,
            "generator": gen or {"cpu_pct": 30.0, "cpus": [1], "processes": []}}


def _flags(point: dict) -> list[str]:
    return point["validity"]["flags"]


def test_only_the_stable_windows_are_reported():
    """4 slow windows at 100 rps then 3 stable at 200 rps: the point reports 200 rps, not the 143 of all 7."""
    ws = [_window(i, 100, 0.02) for i in range(4)] + [_window(4 + i, 200, 0.01) for i in range(3)]
    p = summarize_point(_raw(ws, stable_from=4), {}, M)
    assert p["metrics"]["throughput_rps"] == pytest.approx(200)
    assert p["metrics"]["latency_s"]["p50"] == pytest.approx(0.01, rel=0.01)
    assert p["metrics"]["duration_s"] == pytest.approx(3.0)
    assert p["reported_from"] == 4 and len(p["windows"]) == 7  # the timeline keeps every window
    assert p["validity"]["valid"], _flags(p)


def test_an_unstable_point_reports_its_last_windows_and_is_flagged():
    ws = [_window(i, 100 + 50 * i, 0.01) for i in range(6)]
    p = summarize_point(_raw(ws, stable_from=None), {}, M)
    assert "unstable" in _flags(p)
    assert p["reported_from"] == 3
    assert p["metrics"]["requests"] == 250 + 300 + 350


def test_reported_windows_without_a_stable_from_uses_the_last_windows():
    ws = [_window(i, 100, 0.01) for i in range(5)]
    raw = _raw(ws, stable_from=None)
    raw.pop("stable_from")
    assert reported_windows(raw, M) == 2


@pytest.mark.parametrize("flag, kwargs", [
    ("too_short", {"n": 2}),
    ("too_few_requests", {"rps": 20}),
    ("stalled", {"zero": True}),
    ("errors", {"errors": 5}),
    ("late_sends", {"late": 50, "mode": "open"}),
    ("generator_bound", {"gen": {"cpu_pct": 97.0, "cpus": [1], "processes": []}}),
    ("generator_bound", {"gen": {"cpu_pct": 60.0, "cpus": [1], "processes": [], "loop_lag_ms": {"p99": 12.0}}}),
    ("generator_bound", {"gen": {"cpu_pct": 40.0, "cpus": [1], "processes": [], "run_queue_delay_pct": 25.0}}),
    ("generator_bound", {"ceiling": 210.0}),
])
def test_every_flag(flag, kwargs):
    n, rps = kwargs.get("n", 3), kwargs.get("rps", 200)
    ws = [_window(i, rps, 0.01, errors=kwargs.get("errors", 0)) for i in range(n)]
    if kwargs.get("zero"):
        ws[-1] = _window(n - 1, 0, 0.01)
    raw = _raw(ws, stable_from=0, mode=kwargs.get("mode", "closed"), gen=kwargs.get("gen"), late=kwargs.get("late", 0))
    p = summarize_point(raw, {}, M, ceiling_rps=kwargs.get("ceiling"))
    assert flag in _flags(p) and not p["validity"]["valid"]
    if flag in ("generator_bound", "stalled"):
        assert p["validity"]["reasons"][flag]


def test_a_clean_point_has_no_flag():
    p = summarize_point(_raw([_window(i, 200, 0.01) for i in range(3)], stable_from=0), {}, M, ceiling_rps=5000.0)
    assert p["validity"] == {"valid": True, "flags": [], "reasons": {}}
    assert p["generator"]["limits"]["factors"] == []


@pytest.mark.parametrize("foreign, steal, flagged", [(62.0, 0.0, True), (0.5, 0.0, False), (0.0, 9.0, True)])
def test_interference_from_the_sampler_flags_the_point(foreign, steal, flagged):
    """The resource summary's interference part (measure/interference.py) decides the flag, with its reason."""
    def cpu_set(f, st):
        return {"cpus": [0], "foreign_cpu_pct": f, "steal_pct": {0: st}, "steal_pct_max": st}

    summary = {"interval_s": 3.0, "server_set": cpu_set(foreign, steal), "generator_set": cpu_set(0.0, 0.0),
               "server_run_delay_pct": 140.0, "generator_run_delay_pct": 1.0}
    p = summarize_point(_raw([_window(i, 200, 0.01) for i in range(3)], stable_from=0), {"interference": summary}, M)
    assert ("interference" in _flags(p)) is flagged
    if flagged:
        assert "CPU" in p["validity"]["reasons"]["interference"] or "steal" in p["validity"]["reasons"]["interference"]


def test_event_loop_lag_of_an_idle_generator_is_the_machines():
    """Lag p99 7 ms at 10 % generator CPU (steal bursts): interference with that reason, not generator_bound (the
    SLO search would stop at the first such probe, "generator-limited at 100 rps"); busy, the same lag is the
    generator's."""
    gen = {"cpu_pct": 10.0, "cpus": [1], "processes": [], "loop_lag_ms": {"p99": 7.0}}
    p = summarize_point(_raw([_window(i, 200, 0.01) for i in range(3)], stable_from=0, gen=gen), {}, M)
    assert _flags(p) == ["interference"], _flags(p)
    assert "event-loop lag p99 7.0 ms at 10 % generator CPU" in p["validity"]["reasons"]["interference"]
    assert p["generator"]["limits"]["factors"] == []
    busy = generator_limits({**gen, "cpu_pct": 70.0}, 200.0, None, "open")
    assert busy["factors"] == ["event-loop lag p99 7.0 ms"] and busy["machine_lag"] is None


def test_generator_limits_name_the_factor():
    lim = generator_limits({"cpu_pct": 95.0, "processes": []}, 1000.0, 1050.0, "closed")
    assert any(f.startswith("cpu") for f in lim["factors"]) and any("ceiling" in f for f in lim["factors"])
    assert generator_limits({"cpu_pct": 10.0, "processes": []}, 1000.0, 1050.0, "open")["factors"] == []


def test_the_report_recomputes_from_the_same_stable_windows():
    """Metrics are recomputed at report time from the raw windows: only from ``reported_from`` on."""
    from servingbench.report.metrics import point_error_rate, point_throughput

    ws = [_window(i, 100, 0.02, errors=10) for i in range(4)] + [_window(4 + i, 200, 0.01) for i in range(3)]
    p = summarize_point(_raw(ws, stable_from=4), {}, M)
    assert point_throughput(p) == pytest.approx(p["metrics"]["throughput_rps"]) == pytest.approx(200)
    assert point_error_rate(p) == 0.0
