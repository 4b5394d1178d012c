"""Load one run's results into tidy pandas tables (one row per record), metrics computed by the registry."""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servingbench.report.metrics import dig, load_kind, load_label, load_value, metrics_for
from servingbench.results import ResultsError, RunResults

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
    torn_lines: int = 0
    torn_line_numbers: list[int] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.meta.get("run_id") or self.path.name)

    @classmethod
    def load(cls, path: Path) -> "RunData":
        """Read and check ``path`` (read-only: no lock, nothing written).

        Raises:
            ResultsError: not a results directory, or run.json / records.jsonl are not servingbench's shape (the
                message names the file, the line or field, the problem and the fix), or records.jsonl has lines
                but none of them is a record.
        """
        path = Path(path)
        results = RunResults.open(path, readonly=True)
        meta = results.read_run()
        check_meta(meta, results.run_json)
        numbered = results.numbered_records()  # warns about torn lines (the CLI shows the warning)
        if results.torn_lines and not numbered:
            raise ResultsError(
                f"{results.records_path}: none of its {results.torn_lines} non-empty line(s) is a readable record "
                f"(line {results.torn_line_numbers[0]} is not JSON): this is not a servingbench records file. "
                "If the run crashed while writing its first record, remove records.jsonl and resume the run")
        for n, r in numbered:
            check_record(r, results.records_path, n)
        records = [r for _, r in numbered]
        by_type: dict[str, list[dict]] = {}
        for r in records:
            by_type.setdefault(r.get("type", "?"), []).append(r)
        d = cls(path=path, meta=meta, cells=by_type.get("cell", []), points=by_type.get("point", []),
                slos=by_type.get("slo", []), inprocess=by_type.get("inprocess", []), probes=by_type.get("probe", []),
                torn_lines=results.torn_lines, torn_line_numbers=list(results.torn_line_numbers))
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


# ---- shape checks: what the report reads from run.json and records, with the types it needs ---------------------
class _Spec:
    name = "a value"
    nullable = True  # null (None) accepted where the spec applies: a field that is null counts as absent

    def matches(self, v: Any) -> bool:  # pragma: no cover - overridden
        return True

    def children(self, v: Any) -> list[tuple[str, Any, "_Spec"]]:
        return []


class _Type(_Spec):
    def __init__(self, types: tuple[type, ...], name: str, nullable: bool = True) -> None:
        self.types, self.name, self.nullable = types, name, nullable

    def matches(self, v: Any) -> bool:
        if isinstance(v, bool) and bool not in self.types:
            return False
        return isinstance(v, self.types)


def _num(nullable: bool = True) -> _Type:
    return _Type((int, float), "a number", nullable)


_STR, _INT, _BOOL, _NUM = _Type((str,), "a string"), _Type((int,), "an integer"), _Type((bool,), "true or false"), \
    _num()


class _Obj(_Spec):
    """A mapping; the listed keys, when present and not null, must match their spec (other keys are free)."""

    name = "an object"

    def __init__(self, fields: dict[str, _Spec] | None = None) -> None:
        self.fields = fields or {}

    def matches(self, v: Any) -> bool:
        return isinstance(v, dict)

    def children(self, v: dict) -> list[tuple[str, Any, _Spec]]:
        return [(f".{k}", v[k], s) for k, s in self.fields.items() if k in v]


class _NotNull(_Spec):
    """``spec``, where null is not accepted either (list items, mapping values the report indexes)."""

    nullable = False

    def __init__(self, spec: _Spec) -> None:
        self.spec, self.name = spec, spec.name

    def matches(self, v: Any) -> bool:
        return self.spec.matches(v)

    def children(self, v: Any) -> list[tuple[str, Any, _Spec]]:
        return self.spec.children(v)


class _List(_Spec):
    """A list; its items match ``item`` and are not null unless ``nullable_items``."""

    def __init__(self, item: _Spec, nullable_items: bool = False) -> None:
        self.item = item if nullable_items else _NotNull(item)
        self.name = f"a list of {item.name.removeprefix('a ').removeprefix('an ')}s"

    def matches(self, v: Any) -> bool:
        return isinstance(v, list)

    def children(self, v: list) -> list[tuple[str, Any, _Spec]]:
        return [(f"[{i}]", x, self.item) for i, x in enumerate(v)]


class _Map(_Spec):
    """A mapping whose every value matches ``value`` (not null unless ``nullable_values``)."""

    name = "an object"

    def __init__(self, value: _Spec, nullable_values: bool = False) -> None:
        self.value = value if nullable_values else _NotNull(value)

    def matches(self, v: Any) -> bool:
        return isinstance(v, dict)

    def children(self, v: dict) -> list[tuple[str, Any, _Spec]]:
        return [(f".{k}", x, self.value) for k, x in v.items()]


class _OneOf(_Spec):
    def __init__(self, *options: _Spec) -> None:
        self.options, self.name = options, " or ".join(o.name for o in options)

    def _match(self, v: Any) -> _Spec | None:
        return next((o for o in self.options if o.matches(v)), None)

    def matches(self, v: Any) -> bool:
        return self._match(v) is not None

    def children(self, v: Any) -> list[tuple[str, Any, _Spec]]:
        m = self._match(v)
        return m.children(v) if m is not None else []


def _problem(value: Any, spec: _Spec, where: str) -> str | None:
    """The first place where ``value`` does not match ``spec``: ``field 'a.b[2]' is a string ('x'), expected …``."""
    stack = [(where, value, spec)]
    while stack:
        at, v, s = stack.pop()
        if v is None:
            if s.nullable:
                continue
        elif s.matches(v):
            stack.extend((at + sub, x, ss) for sub, x, ss in reversed(s.children(v)))
            continue
        text = repr(v)
        text = text if len(text) <= 60 else text[:57] + "..."
        kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)
        shown = "" if v is None else f" ({text})"
        return f"field {at.lstrip('.')!r} is {kind}{shown}, expected {s.name}"
    return None


_LATENCY = _Map(_NUM, nullable_values=True)  # a percentile is null when a point had no successful request
_HISTOGRAM = _Obj()  # contents checked when decoded (a damaged histogram counts as missing)
RECORD_SPECS: dict[str, _Obj] = {
    "point": _Obj({
        "cell": _STR, "framework": _STR, "deployment": _STR, "workload": _STR, "kind": _STR, "model": _STR,
        "models": _List(_STR), "batch": _INT, "repeat": _INT, "step": _INT,
        "load": _Obj({"concurrency": _NUM, "rate": _NUM, "from_concurrency": _NUM}),
        "metrics": _Obj({"requests": _NUM, "errors": _NUM, "duration_s": _NUM, "throughput_rps": _NUM,
                         "error_rate": _NUM, "latency_s": _LATENCY}),
        "histogram": _HISTOGRAM,
        "windows": _List(_Obj({"start": _NUM, "end": _NUM, "count": _num(False), "errors": _num(False),
                               "histogram": _HISTOGRAM})),
        "resources": _Obj(), "generator": _Obj(),
        "validity": _Obj({"valid": _BOOL, "flags": _List(_STR)}),
    }),
    "cell": _Obj({
        "cell": _STR, "framework": _STR, "deployment": _STR, "status": _STR, "reason": _STR,
        "framework_version": _STR, "log_tail": _STR, "traceback": _STR, "config": _Obj(), "memory_idle": _Obj(),
        "cold_start_s": _NUM, "ready_s": _NUM,
    }),
    "slo": _Obj({
        "cell": _STR, "framework": _STR, "deployment": _STR, "workload": _STR, "model": _STR, "batch": _INT,
        "slo": _Obj({"p99_s": _NUM, "max_error_rate": _NUM}), "max_rate": _NUM, "reason": _STR,
        "points": _List(_Obj({"rate": _NUM, "p99_s": _NUM, "error_rate": _NUM, "ok": _BOOL})),
    }),
    "inprocess": _Obj({
        "model": _STR, "batch": _INT, "threads": _INT, "format": _STR, "device": _STR,
        "throughput_rps": _NUM, "samples_per_s": _NUM, "latency_s": _LATENCY, "histogram": _HISTOGRAM,
    }),
    "probe": _Obj({
        "framework": _STR, "feature": _STR, "verdict": _STR, "detail": _Obj(), "metrics": _Obj(),
    }),
}

_LIST_OF_INTS = _List(_INT)
META_SPEC = _Obj({
    "run_id": _STR, "status": _STR,
    "cells": _Map(_Obj({"status": _STR, "reason": _STR, "framework": _STR, "deployment": _STR, "probe": _STR})),
    "suite": _Obj({
        "name": _STR, "frameworks": _List(_STR), "models": _List(_OneOf(_STR, _Obj({"name": _STR}))),
        "deployments": _List(_Obj({"label": _STR, "threads": _INT, "model_format": _STR})),
        "generator": _Obj(),  # shown as text; workers may be "auto"
        "slo": _Obj({"p99": _NUM, "max_error_rate": _NUM}),
    }),
    "environment": _Obj({
        "gpus": _List(_Obj()), "memory_total_bytes": _NUM, "loadavg_at_start": _List(_NUM),
        "cpu_count_logical": _INT, "packages": _Obj(), "frameworks": _Obj(), "lock_sha256": _STR,
    }),
    "cpu_sets": _Obj({"server": _LIST_OF_INTS, "generator": _LIST_OF_INTS}),
    "calibration": _Obj({
        "ceiling_rps": _NUM, "floor_p50_s": _NUM, "floor_p99_s": _NUM,
        "points": _List(_Obj({"concurrency": _NUM, "throughput_rps": _NUM, "latency_s": _LATENCY,
                              "generator_processes": _NUM, "generator_cpu_pct": _NUM, "stable": _BOOL})),
    }),
    "command": _OneOf(_STR, _List(_STR)),
    "suite_file": _STR, "suite_text": _STR, "started": _STR, "ended": _STR,
})

_FIX = "the file is damaged or was not written by servingbench: restore it from a copy, or re-run the suite"


def check_meta(meta: Any, path: Path) -> None:
    """ResultsError naming ``path`` (a run.json), the field and the problem when the report cannot read ``meta``."""
    problem = _problem(meta, META_SPEC, "")
    if problem:
        raise ResultsError(f"{path}: {problem}: {_FIX}")


def check_record(rec: dict, path: Path, line: int) -> None:
    """ResultsError naming ``path``, ``line``, the field and the problem when the report cannot read ``rec``."""
    spec = RECORD_SPECS.get(rec.get("type"))
    problem = _problem(rec, spec, "") if spec is not None else None
    if problem:
        raise ResultsError(f"{path}: line {line}: {rec.get('type')} record {rec.get('id')!r}: {problem}: "
                           f"remove or repair that line ({_FIX})")


def deployment_cell(cid: Any) -> Any:
    """The deployment a cell id belongs to: ``litserve/default#r2`` (one server start of a repeated suite) ->
    ``litserve/default``; the report aggregates a deployment's repeats, compare pairs them as samples."""
    return re.sub(r"#r\d+$", "", cid) if isinstance(cid, str) else cid


def _point_frame(points: list[dict]) -> pd.DataFrame:
    rows = []
    for r in points:
        row = {
            "record_id": r.get("id"),
            "cell": deployment_cell(r.get("cell")),
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


def _per_deployment(df: pd.DataFrame) -> pd.DataFrame:
    """One row per deployment: its server starts (cells ``...#r<k>`` of a repeated suite) folded together, the
    metrics as the median over the starts that ended ok, the status the worst of them, ``starts`` their count."""
    if df.empty:
        return df.assign(starts=pd.Series(dtype=int))
    df = df.assign(cell=[deployment_cell(c) for c in df["cell"]])
    order = {"failed": 0, "interrupted": 1, "skipped": 2, "running": 3, "ok": 4}
    rows = []
    for _, g in df.groupby("cell", sort=False):
        worst = g.iloc[int(np.argmin([order.get(st, 3) for st in g["status"]]))]
        ok = g[g["status"] == "ok"]
        row = worst.to_dict()
        for m in metrics_for("cell"):
            vals = pd.to_numeric(ok[m.name], errors="coerce").dropna()
            row[m.name] = float(vals.median()) if len(vals) else None
        row["starts"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*df.columns, "starts"])


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
    df = _per_deployment(pd.DataFrame(rows, columns=cols))
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


__all__ = ["RunData", "check_meta", "check_record", "aggregate_repeats", "read_manifests", "framework_sort_key",
           "point_names", "probe_cells"]
