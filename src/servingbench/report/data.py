"""Load one run's results into tidy pandas tables (one row per record), metrics computed by the registry."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servingbench.report.metrics import dig, load_kind, load_label, load_value, metrics_for
from servingbench.results import RunResults

FRAMEWORK_ORDER = ["litserve", "mosec", "mlserver", "triton", "rayserve", "mlflow"]


def framework_sort_key(name: str) -> tuple[int, str]:
    return (FRAMEWORK_ORDER.index(name) if name in FRAMEWORK_ORDER else len(FRAMEWORK_ORDER), name)


@dataclass
class RunData:
    """Everything a report needs from ``results/<run-id>/``.

    Attributes:
        path: the results directory.
        meta: run.json.
        cells / points / slos / inprocess / probes: the raw records of each type (resumed duplicates resolved).
        point_df: one row per point record: identity columns, ``load_kind``/``load``/``load_label``, every
            point metric of the registry, ``valid``/``flags``, ``record_id``.
        cell_df: one row per cell (records, plus run.json cells that never wrote a record).
    """

    path: Path
    meta: dict[str, Any]
    cells: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    slos: list[dict] = field(default_factory=list)
    inprocess: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    point_df: pd.DataFrame = field(default_factory=pd.DataFrame)
    cell_df: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @classmethod
    def load(cls, path: Path) -> "RunData":
        path = Path(path)
        results = RunResults.open(path)
        meta = results.read_run()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn last line is reported in the validity section instead
            records = results.records()
        by_type: dict[str, list[dict]] = {}
        for r in records:
            by_type.setdefault(r.get("type", "?"), []).append(r)
        d = cls(path=path, meta=meta, cells=by_type.get("cell", []), points=by_type.get("point", []),
                slos=by_type.get("slo", []), inprocess=by_type.get("inprocess", []), probes=by_type.get("probe", []))
        d.point_df = _point_frame(d.points)
        d.cell_df = _cell_frame(d.cells, meta)
        return d

    # ---- naming ----------------------------------------------------------------------------------------------
    @property
    def multi_deployment(self) -> bool:
        """True when some framework runs more than one deployment (then names carry the deployment label)."""
        seen: dict[str, set[str]] = {}
        for c in self.cell_df.itertuples():
            seen.setdefault(c.framework, set()).add(c.deployment)
        return any(len(v) > 1 for v in seen.values())

    def name(self, framework: str, deployment: str | None) -> str:
        """Display name of a cell: the framework, plus ``/label`` when a framework has several deployments."""
        if self.multi_deployment and deployment:
            return f"{framework}/{deployment}"
        return framework

    @property
    def frameworks(self) -> list[str]:
        names = set(self.cell_df["framework"]) if not self.cell_df.empty else set()
        names |= {p.get("framework") for p in self.probes if p.get("framework")}
        return sorted(names, key=framework_sort_key)

    @property
    def models(self) -> list[str]:
        names: list[str] = []
        for m in (self.meta.get("suite") or {}).get("models") or []:
            n = m if isinstance(m, str) else m.get("name")
            if n and n not in names:
                names.append(n)
        for p in self.points:
            if p.get("model") and p["model"] not in names:
                names.append(p["model"])
        for s in self.slos:
            if s.get("model") and s["model"] not in names:
                names.append(s["model"])
        return names

    @property
    def slo(self) -> dict | None:
        return (self.meta.get("suite") or {}).get("slo")

    def cell_names(self) -> list[str]:
        """Display names of all cells, framework order."""
        if self.cell_df.empty:
            return []
        df = self.cell_df.sort_values(["fw_order", "deployment"])
        return list(dict.fromkeys(df["name"]))


def _point_frame(points: list[dict]) -> pd.DataFrame:
    rows = []
    for r in points:
        row = {
            "record_id": r.get("id"),
            "cell": r.get("cell"),
            "framework": r.get("framework"),
            "deployment": r.get("deployment"),
            "workload": r.get("workload"),
            "kind": r.get("kind"),
            "model": r.get("model"),
            "batch": int(r.get("batch") or 1),
            "load_kind": load_kind(r),
            "load": load_value(r),
            "load_label": load_label(r),
            "repeat": int(r.get("repeat") or 0),
            "step": r.get("step"),
            "requests": dig(r, "metrics", "requests"),
            "errors": dig(r, "metrics", "errors"),
            "duration_s": dig(r, "metrics", "duration_s"),
            "valid": bool(dig(r, "validity", "valid")) if dig(r, "validity", "valid") is not None else True,
            "flags": ",".join(dig(r, "validity", "flags") or []),
        }
        for m in metrics_for("point"):
            row[m.name] = m.extract(r)
        rows.append(row)
    cols = ["record_id", "cell", "framework", "deployment", "workload", "kind", "model", "batch", "load_kind", "load",
            "load_label", "repeat", "step", "requests", "errors", "duration_s", "valid", "flags"] + [
        m.name for m in metrics_for("point")]
    df = pd.DataFrame(rows, columns=cols)
    for m in metrics_for("point"):
        df[m.name] = pd.to_numeric(df[m.name], errors="coerce")
    df["load"] = pd.to_numeric(df["load"], errors="coerce")
    return df


def _cell_frame(cells: list[dict], meta: dict) -> pd.DataFrame:
    rows = []
    seen = set()
    for r in cells:
        cid = r.get("cell") or f"{r.get('framework')}/{r.get('deployment')}"
        seen.add(cid)
        row = {
            "cell": cid, "framework": r.get("framework"), "deployment": r.get("deployment") or "default",
            "status": r.get("status"), "reason": r.get("reason"), "framework_version": r.get("framework_version"),
            "log_tail": r.get("log_tail") or r.get("traceback"), "record_id": r.get("id"),
        }
        for m in metrics_for("cell"):
            row[m.name] = m.extract(r)
        rows.append(row)
    # Cells run.json knows about but no record was written for (interrupted, or crashed before recording).
    for cid, info in (meta.get("cells") or {}).items():
        if cid in seen or is_probe_cell(cid, info):
            continue
        fw, _, dep = cid.partition("/")
        rows.append({"cell": cid, "framework": info.get("framework", fw), "deployment": info.get("deployment", dep),
                     "status": info.get("status"), "reason": info.get("reason") or "no cell record was written",
                     "framework_version": None, "log_tail": None, "record_id": None,
                     **{m.name: None for m in metrics_for("cell")}})
    cols = ["cell", "framework", "deployment", "status", "reason", "framework_version", "log_tail", "record_id"] + [
        m.name for m in metrics_for("cell")]
    df = pd.DataFrame(rows, columns=cols)
    df["fw_order"] = [framework_sort_key(f or "")[0] for f in df["framework"]]
    # name filled below (needs the whole frame)
    multi = df.groupby("framework")["deployment"].nunique().gt(1).any() if not df.empty else False
    df["name"] = [f"{f}/{d}" if multi else f for f, d in zip(df["framework"], df["deployment"])]
    return df


def is_probe_cell(cid: str, info: dict) -> bool:
    """run.json entries of feature-probe runs (``<framework>/probe:<feature>``): not deployments."""
    return bool(info.get("probe")) or "/probe:" in cid


def probe_cells(meta: dict) -> list[dict[str, Any]]:
    """Feature-probe runs from run.json: cell id, framework, probe, status, reason."""
    return [{"cell": cid, "framework": info.get("framework", cid.split("/")[0]), "probe": info.get("probe"),
             "status": info.get("status"), "reason": info.get("reason")}
            for cid, info in (meta.get("cells") or {}).items() if is_probe_cell(cid, info)]


def point_names(d: RunData, df: pd.DataFrame) -> pd.Series:
    return pd.Series([d.name(f, dep) for f, dep in zip(df["framework"], df["deployment"])], index=df.index,
                     dtype=object)


def aggregate_repeats(df: pd.DataFrame, metric_names: list[str]) -> pd.DataFrame:
    """Median over repeats per (cell, workload, model, batch, load), with min/max/n for spread."""
    keys = ["cell", "framework", "deployment", "workload", "kind", "model", "batch", "load_kind", "load", "load_label"]
    if df.empty:
        return pd.DataFrame(columns=keys + ["repeats", "valid", "flags"] + [
            f"{m}{s}" for m in metric_names for s in ("", "_min", "_max")])
    rows = []
    for key, g in df.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, key))
        row["repeats"] = len(g)
        row["valid"] = bool(g["valid"].all())
        row["flags"] = ",".join(sorted({f for fl in g["flags"] for f in fl.split(",") if f}))
        row["record_ids"] = " ".join(g["record_id"].astype(str))
        for m in metric_names:
            vals = g[m].dropna().to_numpy(dtype=float)
            row[m] = float(np.median(vals)) if len(vals) else np.nan
            row[f"{m}_min"] = float(vals.min()) if len(vals) else np.nan
            row[f"{m}_max"] = float(vals.max()) if len(vals) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def read_manifests(path: Path, max_embed: int = 6000, max_files: int = 60) -> list[dict[str, Any]]:
    """Files under ``manifests/``: path, size, and the text of small text files (for embedding)."""
    root = path / "manifests"
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for f in sorted(root.rglob("*")):
        if not f.is_file() or len(out) >= max_files:
            continue
        size = f.stat().st_size
        text = None
        if size <= max_embed and f.suffix not in (".pt", ".pth", ".npy", ".npz", ".pkl", ".bin", ".onnx", ".so"):
            try:
                text = f.read_text()
            except (UnicodeDecodeError, OSError):
                text = None
        out.append({"path": str(f.relative_to(path)), "size": size, "text": text})
    return out


__all__ = ["RunData", "aggregate_repeats", "read_manifests", "framework_sort_key", "point_names", "probe_cells"]
