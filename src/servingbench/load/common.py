"""The load generator's pure parts (no gevent here, so the harness and unit tests import them freely):
merging the processes' windows exactly, by adding counts and HdrHistograms; users over time of a shape."""

from __future__ import annotations

from typing import Any


def merge_window(reports: list[dict], start: float, end: float) -> dict:
    """One window of the whole generator: counts summed, histograms added (exact: HdrHistograms merge)."""
    from servingbench.measure.stats import LatencyHistogram

    hist = LatencyHistogram()
    per_model: dict[str, Any] = {}
    count = errors = 0
    by_process = []
    for r in reports:
        w = r["window"]
        hist.merge(LatencyHistogram.from_dict(w["histogram"]))
        for m, h in w["per_model"].items():
            per_model.setdefault(m, LatencyHistogram()).merge(LatencyHistogram.from_dict(h))
        count += w["count"]
        errors += w["errors"]
        by_process.append({"index": r["index"], "count": w["count"], "errors": w["errors"],
                           "duration": w["duration"]})
    out = {"start": start, "end": end, "count": count, "errors": errors, "histogram": hist.to_dict(),
           "per_model": {m: h.to_dict() for m, h in per_model.items()}, "_hist": hist}
    if len(reports) > 1:
        out["processes"] = by_process
    return out


def shape_users(stages: list[dict], ramp: bool, start_users: int, t: float) -> int:
    """Users at ``t`` seconds into a shape: ``step`` holds each stage's users; ``ramp`` moves linearly from the
    previous stage's users (``start_users`` before the first).  Past the end: the last stage's users."""
    acc, prev = 0.0, start_users
    for st in stages:
        if t < acc + st["duration"]:
            if not ramp:
                return st["users"]
            return max(1, round(prev + (st["users"] - prev) * (t - acc) / st["duration"]))
        acc += st["duration"]
        prev = st["users"]
    return stages[-1]["users"]


def shape_cuts(stages: list[dict], window_s: float) -> list[tuple[float, int, bool]]:
    """Window ends of a shape run: (seconds from the start, stage, first window of a stage with several)."""
    cuts: list[tuple[float, int, bool]] = []
    acc = 0.0
    for i, st in enumerate(stages):
        k = max(1, round(st["duration"] / window_s))
        cuts += [(acc + st["duration"] * (j + 1) / k, i, j == 0 and k > 1) for j in range(k)]
        acc += st["duration"]
    return cuts
