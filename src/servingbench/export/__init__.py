"""Export a run where ML teams keep experiments: tidy Parquet tables and MLflow tracking runs (docs/export.md).

* :func:`tidy_tables` / :func:`write_parquet`: ``points`` (one row per load point: the report's
  ``tables/points.csv`` columns, plus ``load_level``), ``windows`` (one row per measurement window of every point),
  ``probes`` (one row per feature probe) and ``cells`` (one row per deployment, repeats folded: the report's
  ``cells.csv``).
* :func:`export_mlflow`: one MLflow run per cell (performance cells and feature probes), tagged with the
  servingbench run id and cell, so exporting twice adds nothing.  Default store: ``sqlite:///<results root>/mlflow.db``
  (MLflow's local database store; its file store is in maintenance mode), artifacts beside it in ``mlartifacts/``.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from servingbench.measure.stats import slo_machine_limited
from servingbench.report.data import RunData, deployment_cell
from servingbench.report.metrics import dig

#: the MLflow tags that identify an exported cell (a second export of the same run skips it)
RUN_TAG, CELL_TAG = "servingbench.run_id", "servingbench.cell"
#: per point, the metrics logged to MLflow (record path -> metric name suffix)
POINT_METRICS = {
    ("metrics", "throughput_rps"): "throughput_rps",
    ("metrics", "samples_per_s"): "samples_per_s",
    ("metrics", "error_rate"): "error_rate",
    ("metrics", "errors"): "errors",
    ("metrics", "requests"): "requests",
    ("metrics", "latency_s", "p50"): "latency_p50_s",
    ("metrics", "latency_s", "p90"): "latency_p90_s",
    ("metrics", "latency_s", "p99"): "latency_p99_s",
    ("metrics", "latency_s", "p99.9"): "latency_p99_9_s",
    ("resources", "server_cpu_pct_mean"): "server_cpu_pct",
    ("resources", "server_pss_bytes_max"): "server_pss_bytes_max",
    ("resources", "server_rss_bytes_max"): "server_rss_bytes_max",
    ("resources", "generator_cpu_pct_mean"): "generator_cpu_pct",
    ("resources", "gpu_mem_bytes_max"): "gpu_mem_bytes_max",
}
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


class ExportError(RuntimeError):
    """An export that cannot be done, with the fix."""


def _to_float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# ---- tidy tables -----------------------------------------------------------------------------------------------------
def tidy_tables(d: RunData) -> dict[str, pd.DataFrame]:
    """The run as tidy tables (one row per observation; columns documented in docs/export.md)."""
    points = d.point_df.copy()
    by_id = {p.get("id"): p for p in d.points}
    points["load_level"] = [_number((by_id.get(i) or {}).get("load_level")) for i in points["record_id"]]
    windows = []
    for p in d.points:
        start = p.get("reported_from")
        for i, w in enumerate(p.get("windows") or []):
            if not isinstance(w, dict):
                continue
            windows.append({
                "record_id": p.get("id"), "cell": deployment_cell(p.get("cell")), "framework": p.get("framework"),
                "deployment": p.get("deployment"), "workload": p.get("workload"), "model": p.get("model"),
                "load_kind": p.get("load_kind"), "load_level": _number(p.get("load_level")),
                "repeat": p.get("repeat"), "window": i, "start_s": _number(w.get("start")),
                "end_s": _number(w.get("end")), "count": w.get("count"), "errors": w.get("errors"),
                "throughput_rps": _number(w.get("throughput_rps")), "p50_s": _number(w.get("p50_s")),
                "stage": w.get("stage"),
                "reported": isinstance(start, int) and i >= start,  # the point's metrics come from these windows
            })
    probes = []
    for r in d.probes:
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        probes.append({
            "framework": r.get("framework"), "probe": r.get("probe"), "feature": r.get("feature"),
            "verdict": r.get("verdict"),
            "claimed": None if r.get("claimed") is None else str(r.get("claimed")), "reason": r.get("reason"),
            "evidence": json.dumps(r.get("evidence"), default=str) if r.get("evidence") is not None else None,
            "metrics": json.dumps(metrics, sort_keys=True, default=str) if metrics else None,
        })
    cells = d.cell_df.drop(columns=["log_tail", "fw_order"], errors="ignore").copy()
    return {
        "points": points,
        "windows": pd.DataFrame(windows, columns=[
            "record_id", "cell", "framework", "deployment", "workload", "model", "load_kind", "load_level", "repeat",
            "window", "start_s", "end_s", "count", "errors", "throughput_rps", "p50_s", "stage", "reported"]),
        "probes": pd.DataFrame(probes, columns=["framework", "probe", "feature", "verdict", "claimed", "reason",
                                                 "evidence", "metrics"]),
        "cells": cells,
    }


def write_parquet(d: RunData, out_dir: Path) -> dict[str, Path]:
    """``<out_dir>/<table>.parquet`` for every tidy table; the paths by table name."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--parquet {out_dir}: exists and is not a directory: give a directory to write the "
                          "tables into")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in tidy_tables(d).items():
        df = df.copy()
        for col in df.columns:  # object columns of mixed types (None + str) as strings, as the CSVs have them
            if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (list, dict))).any():
                df[col] = df[col].map(lambda v: None if v is None else json.dumps(v, default=str))
        tmp = out_dir / f".{name}.parquet.tmp"
        df.to_parquet(tmp, index=False)
        tmp.replace(out_dir / f"{name}.parquet")
        paths[name] = out_dir / f"{name}.parquet"
    return paths


# ---- MLflow ----------------------------------------------------------------------------------------------------------
def default_tracking_uri(run_dir: Path) -> str:
    """MLflow's local database store beside the results: ``sqlite:///<results root>/mlflow.db``."""
    return f"sqlite:///{Path(run_dir).absolute().parent / 'mlflow.db'}"


def metric_key(*parts: Any) -> str:
    """An MLflow metric/param key from parts (characters MLflow refuses become ``_``)."""
    return _KEY_BAD.sub("_", "/".join(str(p) for p in parts if p not in (None, "")))[:250]


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif value is not None:
        out[metric_key(prefix)] = str(value)[:6000]


def _cell_params(d: RunData, cell: dict[str, Any]) -> dict[str, str]:
    env = d.meta.get("environment") or {}
    params: dict[str, str] = {}
    _flat("", {"framework": cell.get("framework"), "deployment": cell.get("deployment"),
               "repeat": cell.get("repeat"), "framework_version": cell.get("framework_version")}, params)
    _flat("config", cell.get("config") if isinstance(cell.get("config"), dict) else {}, params)
    _flat("env", {k: env.get(k) for k in ("cpu_model", "cpu_count_logical", "memory_total_bytes", "os", "python")},
          params)
    _flat("env.packages", env.get("packages") or {}, params)
    _flat("cpu_sets", d.meta.get("cpu_sets") or {}, params)
    return params


def _point_metrics(points: list[dict[str, Any]]) -> tuple[list[tuple[str, float, int]], dict[str, str]]:
    """(key, value, step) for every point's metrics, the load level as the step (SLO probes: the probe's index);
    tags with every flagged point's flags."""
    metrics, tags = [], {}
    for p in points:
        level = _number(p.get("load_level"))
        step = int(p["step"]) if isinstance(p.get("step"), int) else int(round(level)) if level is not None else 0
        base = (p.get("workload"), p.get("model"))
        for path, name in POINT_METRICS.items():
            v = _number(dig(p, *path))
            if v is not None and math.isfinite(v):
                metrics.append((metric_key(*base, name), v, step))
        metrics.append((metric_key(*base, "valid"), 1.0 if dig(p, "validity", "valid") else 0.0, step))
        if p.get("step") is not None and level is not None:
            metrics.append((metric_key(*base, "offered_rate"), level, step))
        flags = dig(p, "validity", "flags") or []
        if flags:
            tags[metric_key("flags", *base, p.get("load_kind"), f"{level:g}" if level is not None else "",
                            f"r{p.get('repeat', 0)}", f"step{p['step']}" if p.get("step") is not None else "")] = \
                ",".join(map(str, flags))
    return metrics, tags


def _client(tracking_uri: str):
    try:
        from mlflow import MlflowClient
    except ImportError as e:  # pragma: no cover - mlflow is in the lock
        raise ExportError(f"--mlflow needs the mlflow package ({e}): pip install 'servingbench[mlflow]'") from None
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment(client, name: str, artifact_root: Path | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    loc = None if artifact_root is None else (artifact_root / name).absolute().as_uri()
    return client.create_experiment(name, artifact_location=loc)


def export_mlflow(d: RunData, tracking_uri: str | None = None, experiment: str | None = None,
                  report_dir: Path | None = None) -> list[dict[str, Any]]:
    """One MLflow run per cell of ``d`` (see the module doc); returns ``{cell, run_id, status}`` per cell, status
    ``exported`` or ``already exported`` (a run with the same servingbench run id and cell exists)."""
    from mlflow.entities import Metric, Param, RunTag

    local = tracking_uri is None
    uri = tracking_uri or default_tracking_uri(d.path)
    client = _client(uri)
    name = experiment or (d.meta.get("suite") or {}).get("name") or "servingbench"
    exp_id = _experiment(client, str(name), d.path.absolute().parent / "mlartifacts" if local else None)
    existing = {}
    for r in client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{d.run_id}'", max_results=5000):
        if r.info.status in ("FINISHED", "FAILED"):
            existing[r.data.tags.get(CELL_TAG)] = r.info.run_id
        else:  # an export that died half-way: redo that cell
            client.delete_run(r.info.run_id)
    now_ms = int(time.time() * 1000)
    out = []
    cells = {c.get("cell"): c for c in d.cells if c.get("cell")}
    for cid, info in (d.meta.get("cells") or {}).items():
        if cid in existing:
            out.append({"cell": cid, "run_id": existing[cid], "status": "already exported"})
            continue
        cell = {**info, **cells.get(cid, {})}
        run = client.create_run(exp_id, run_name=cid, tags={RUN_TAG: d.run_id, CELL_TAG: cid,
                                                             "servingbench.status": str(cell.get("status"))})
        rid = run.info.run_id
        tags = {"servingbench.suite": str((d.meta.get("suite") or {}).get("name")),
                "servingbench.schema": str(d.meta.get("schema"))}
        if cell.get("reason"):
            tags["servingbench.reason"] = str(cell["reason"])[:5000]
        metrics: list[tuple[str, float, int]] = []
        for k in ("ready_s", "cold_start_s"):
            if _number(cell.get(k)) is not None:
                metrics.append((k, float(cell[k]), 0))
        pts, flag_tags = _point_metrics([p for p in d.points if p.get("cell") == cid])
        metrics += pts
        tags.update(flag_tags)
        for s in (x for x in d.slos if x.get("cell") == cid):
            if _number(s.get("max_rate")) is not None:
                metrics.append((metric_key(s.get("workload"), s.get("model"), "slo_max_rate"), float(s["max_rate"]),
                                0))
            machine = slo_machine_limited(s)  # a lower bound or nothing measured: say so beside the number
            if machine:
                tags[metric_key(s.get("workload"), s.get("model"), "slo_machine_limited")] = machine[:5000]
        probes = [p for p in d.probes if f"{p.get('framework')}/probe:{p.get('probe')}" == cid]
        for pr in probes:
            feat = metric_key(pr.get("feature"))
            tags.update({f"probe.{feat}.verdict": str(pr.get("verdict")),
                         f"probe.{feat}.reason": str(pr.get("reason") or "")[:5000],
                         f"probe.{feat}.claimed": str(pr.get("claimed"))})
            flat: dict[str, str] = {}
            _flat("", pr.get("metrics") if isinstance(pr.get("metrics"), dict) else {}, flat)
            metrics += [(metric_key("probe", feat, k), x, 0) for k, v in flat.items()
                        if (x := _to_float(v)) is not None and math.isfinite(x)]
        params = _cell_params(d, cell)
        items = [Metric(k, v, now_ms, s) for k, v, s in metrics]
        for i in range(0, max(len(items), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(rid, metrics=items[i:i + 1000],
                             params=[Param(k, v) for k, v in params.items()] if i == 0 else [],
                             tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [])
        man = d.path / "manifests" / cid.replace("/", "-").replace("#", "-").replace(":", "-")
        if man.is_dir():
            client.log_artifacts(rid, str(man), "manifests")
        if report_dir is not None and Path(report_dir).is_dir():
            client.log_artifacts(rid, str(report_dir), "report")
        client.set_terminated(rid, "FINISHED" if cell.get("status") == "ok" else "FAILED")
        out.append({"cell": cid, "run_id": rid, "status": "exported"})
    return out
