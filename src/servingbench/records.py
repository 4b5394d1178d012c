"""Typed builders of the records a run appends to ``records.jsonl`` (one place decides each record's shape).

Record types: ``cell`` (one server lifetime), ``point`` (one load point, or one stage of a shape), ``slo`` (a
throughput-at-SLO search), ``probe`` (a feature verdict, built by :mod:`servingbench.probes`), ``inprocess`` (the
model alone, no server).  Every record carries ``type`` and a unique ``id``.
"""

from __future__ import annotations

import json
from typing import Any

from servingbench.results import point_load


def cell_base(cell_id: str, framework: str, deployment: str) -> dict[str, Any]:
    """The keys every record of a cell starts with."""
    return {"cell": cell_id, "framework": framework, "deployment": deployment}


def cell_record(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"type": "cell", "id": f"cell:{base['cell']}", **base, **fields}


def point_record(base: dict[str, Any], workload: Any, group: list[str], load: dict[str, Any], repeat: int,
                 point: dict[str, Any], *, step: int | None = None, **extra: Any) -> dict[str, Any]:
    """One measured load point (``point`` is :func:`servingbench.load.point.summarize_point`'s result).

    SLO-search probes carry their ``step`` (their id counts steps; the load is the probed rate).
    """
    models = "+".join(group)
    suffix = f"step{step}" if step is not None else f"{json.dumps(load)}:{repeat}"
    rec = {
        "type": "point", **base, "id": f"point:{base['cell']}:{workload.name}:{models}:{suffix}",
        "workload": workload.name, "kind": workload.kind, **extra, "models": group,
        "model": group[0] if len(group) == 1 else models, "batch": workload.batch, "load": load, "repeat": repeat,
    }
    rec["load_kind"], rec["load_level"] = point_load(load)
    if step is not None:
        rec["step"] = step
    rec.update(point)
    return rec


def slo_record(base: dict[str, Any], workload: Any, group: list[str], slo: Any, result: Any) -> dict[str, Any]:
    """The outcome of one throughput-at-SLO search (:class:`servingbench.measure.stats.SloResult`)."""
    models = "+".join(group)
    return {
        "type": "slo", **base, "id": f"slo:{base['cell']}:{workload.name}:{models}", "workload": workload.name,
        "models": group, "model": models, "batch": workload.batch,
        "slo": {"p99_s": slo.p99, "max_error_rate": slo.max_error_rate},
        "max_rate": result.max_rate, "reason": result.reason,
        "points": [p.__dict__ for p in result.points],
    }


def inprocess_record(r: dict[str, Any]) -> dict[str, Any]:
    return {"type": "inprocess", "id": f"inprocess:{r['model']}:b{r['batch']}:t{r['threads']}:{r['format']}", **r}


def point_line(cid: str, wname: str, group: list[str], load: dict, rep: int, point: dict) -> str:
    """The progress line of one point (no square brackets: the CLI's console would take them for markup)."""
    mt = point["metrics"]
    p99 = mt["latency_s"].get("p99")
    flags = point["validity"]["flags"]
    return (f"{cid} {wname} {'+'.join(group)} {load} r{rep}: {mt['throughput_rps'] or 0:.0f} rps, "
            f"p99 {(p99 or float('nan')) * 1e3:.1f} ms, errors {mt['errors']}" + (f"; flagged: {', '.join(flags)}" if flags else ""))
