"""Build a run's report: ``reports/<run-id>/{index.html, report.md, figures/*.png, tables/*.csv}``.

The HTML is self-contained (CSS inline, figures as base64 PNG data URIs, no scripts, no external URLs) and opens
from disk; the Markdown shows the same content with figures linked from ``figures/`` and probe evidence as
footnotes.  Every number is recomputed from the raw records through :mod:`servingbench.report.metrics`; table
cells carry the id of the record behind them (HTML tooltip, ``record_id`` column in the CSVs).

Usage::

    from servingbench.report.build import write_report
    index = write_report(Path("results/20250101-120000-quick-ab12"))      # -> reports/<run-id>/index.html
"""

from __future__ import annotations

import base64
import math
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from servingbench.report import analysis as an
from servingbench.report import figures as fg
from servingbench.report.data import RunData, probe_cells, read_manifests
from servingbench.report.metrics import METRICS, Metric, _num, dig, format_value

TEMPLATES = Path(__file__).parent / "templates"
VERDICT_TEXT = {
    "supported": "✔ supported",
    "partial": "◐ partial",
    "not_supported": "✘ not supported",
    "failed": "⚠ probe failed",
    "not_run": "– not run",
}


# ---- presentation structures -------------------------------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    title: str = ""  # tooltip: the record id(s) behind the number
    cls: str = ""
    sub: str = ""  # a second, smaller line (e.g. the min–max range of repeats)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    csv: str | None = None  # tables/<name>.csv
    note: str = ""
    numeric: list[bool] = field(default_factory=list)


@dataclass
class Figure:
    id: str
    title: str
    file: str  # relative to the report directory
    data_uri: str
    caption: str = ""


class _Builder:
    def __init__(self, d: RunData, out: Path, threshold: float) -> None:
        self.d = d
        self.out = out
        self.threshold = threshold
        self.figures: list[Figure] = []
        self.styler = fg.Styler(d.cell_df)

    # -- outputs -----------------------------------------------------------------------------------------------------
    def figure(self, fig, fid: str, title: str, caption: str = "") -> Figure:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in fid)
        path = self.out / "figures" / f"{safe}.png"
        fg.save(fig, path)
        data = base64.b64encode(path.read_bytes()).decode()
        f = Figure(safe, title, f"figures/{safe}.png", f"data:image/png;base64,{data}", caption)
        self.figures.append(f)
        return f

    def csv(self, df: pd.DataFrame, name: str) -> str:
        rel = f"tables/{name}.csv"
        df.to_csv(self.out / rel, index=False)
        return rel


def _derived(name: str, title: str, unit: str, better: str) -> Metric:
    """A metric computed from tables rather than records (overheads, ratios, probe numbers): for labels/format."""
    return Metric(name, title, unit, better, "derived", lambda r: None)  # type: ignore[arg-type]


def _fmt(v: Any, unit: str) -> str:
    return format_value(v, unit)


def _text(v: Any) -> str:
    """A possibly missing (None / NaN from pandas) text field."""
    return "" if _nan(v) else str(v)


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _range_text(row: pd.Series | dict, m: str, unit: str) -> str:
    """Median, plus [min–max] when repeats > 1."""
    v = row[m]
    if _nan(v):
        return "–"
    text = _fmt(v, unit)
    rng = _range_sub(row, m, unit)
    return f"{text} [{rng}]" if rng else text


def _range_sub(row: pd.Series | dict, m: str, unit: str) -> str:
    if int(row.get("repeats", 1) or 1) > 1 and not _nan(row.get(f"{m}_min")):
        return f"{_fmt(row[f'{m}_min'], unit)}–{_fmt(row[f'{m}_max'], unit)}"
    return ""


def _ranged(row: pd.Series, m: str, unit: str, ids: str) -> Cell:
    return Cell(_fmt(row[m], unit), ids, "num", _range_sub(row, m, unit))


# ---- sections ------------------------------------------------------------------------------------------------------------
def _summary(b: _Builder, levels: pd.DataFrame) -> dict[str, Any]:
    verdicts = an.summary(b.d, levels, threshold=b.threshold)
    b.csv(an.summary_frame(verdicts), "summary")
    by_model: dict[str, list[dict[str, Any]]] = {}
    for v in verdicts:
        m = METRICS[v.metric]
        if v.best is None:
            none = "no data"
            if v.metric == "slo_max_rate_rps" and v.note:
                none = ("none met the SLO" if v.note.startswith("no rate met")
                        else "unmeasured (the machine limited the probes)")
            entry = {"criterion": v.criterion, "winners": none, "value": "–", "margin": "–",
                     "noise": "", "noise_cls": "", "basis": v.basis, "note": v.note, "ranking": "", "ids": ""}
        else:
            sig_cls = {True: "sig", False: "tie", None: "unknown"}[v.significant] if v.runner_up else ""
            entry = {
                "criterion": v.criterion,
                "winners": " = ".join(v.winners),
                "value": m.format(v.best.value) + (f" ({v.best.basis})" if v.best.basis else ""),
                "margin": v.margin_text(),
                "noise": v.noise_text,
                "noise_cls": sig_cls,
                "basis": v.basis,
                "note": v.note,
                "ranking": " › ".join(f"{c.name} {m.format(c.value)}" for c in v.candidates),
                "ids": " ".join(v.best.record_ids[:4]),
            }
        by_model.setdefault(v.model, []).append(entry)
    # A model with no measurement at all (e.g. a features-only run) gets no cards of "no data".
    by_model = {k: v for k, v in by_model.items() if any(e["winners"] != "no data" for e in v)}
    repeats = int(b.d.point_df["repeat"].max() + 1) if not b.d.point_df.empty else 0
    return {"models": by_model, "repeats": repeats, "threshold": b.threshold}


def _published(b: _Builder) -> Table | None:
    """The suite's published figures beside ours (``published:`` of the suite), or None."""
    pub = an.published_results(b.d)
    if pub.empty:
        return None
    b.csv(pub, "published")
    t = Table("Published results, reproduced", ["claim", "source", "published", "ours", "verdict"], [],
              csv="tables/published.csv",
              note="Ours: the median over repeats of valid points (a ratio of two such medians for a ratio claim), "
                   "measured on this machine under this run's conditions (section 2).")
    for r in pub.itertuples():
        unit = "" if r.ratio else r.metric
        fmt = (lambda v: f"{v:.2f}") if r.ratio else (lambda v: _fmt(v, "s" if unit.startswith("latency_") else "rps"))
        published = (f"{fmt(r.published_range[0])} – {fmt(r.published_range[1])}" if r.published_range
                     else fmt(r.published))
        t.rows.append([Cell(r.claim), Cell(r.source), Cell(published + (" (ratio)" if r.ratio else "")),
                       Cell("–" if r.ours is None or _nan(r.ours) else fmt(r.ours), r.record_ids),
                       Cell(r.verdict, cls="flag" if r.verdict.startswith("differs") else "")])
    return t


def _environment(b: _Builder) -> dict[str, Any]:
    d, meta = b.d, b.d.meta
    env = meta.get("environment") or {}
    gpus = env.get("gpus") or []
    gpu_text = "; ".join(
        f"{g.get('name')} ({g.get('memory_mib') or g.get('memory')} MiB, driver {g.get('driver')})" for g in gpus
    ) or "none"
    mem = env.get("memory_total_bytes")
    la = env.get("loadavg_at_start")
    cpus = meta.get("cpu_sets") or {}
    rows = [
        ("Run", f"{d.run_id} ({meta.get('status', '?')})"),
        ("Suite", f"{(meta.get('suite') or {}).get('name', '?')} — {meta.get('suite_file') or ''}"),
        ("Started / ended", f"{meta.get('started', '?')} / {meta.get('ended', '–')}"),
        ("CPU", f"{env.get('cpu_model', '?')}: {env.get('cpu_count_logical', '?')} logical, "
                f"{env.get('cpu_count_physical', '?')} physical cores"),
        ("Memory", format_value(mem, "bytes") if mem else "?"),
        ("GPUs", gpu_text),
        ("OS", f"{env.get('os', '?')}"),
        ("Python", f"{env.get('python', '?')}"),
        ("Packages", ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)),
        ("Lock sha256", (env.get("lock_sha256") or "–")[:16]),
        ("Load average at start", ", ".join(f"{x:.2f}" for x in la) if la else "–"),
        ("CPU sets", f"server {_cpus(cpus.get('server'))}; generator {_cpus(cpus.get('generator'))}"),
        ("Load generator", _generator_text((meta.get("suite") or {}).get("generator") or {})),
    ]
    fw = [(k, str(v) + (" (baseline: a plain web server, no serving framework)" if _is_baseline(k) else ""))
          for k, v in (env.get("frameworks") or {}).items()]
    baselines = [f for f in d.frameworks if _is_baseline(f)]
    if baselines:
        rows.append(("Baselines", ", ".join(baselines) + ": no serving framework (docs/frameworks.md)"))
    cal = meta.get("calibration") or {}
    cal_rows = []
    if cal:
        cal_rows.append(("Generator ceiling", format_value(cal.get("ceiling_rps"), "rps")))
        cal_rows.append(("Latency floor p50 / p99", f"{format_value(cal.get('floor_p50_s'), 's')} / "
                                                     f"{format_value(cal.get('floor_p99_s'), 's')}"))
        for p in cal.get("points") or []:
            lat = p.get("latency_s") or {}
            cal_rows.append((f"  concurrency {p.get('concurrency')}",
                             f"{format_value(p.get('throughput_rps'), 'rps')}, p50 {format_value(lat.get('p50'), 's')}, "
                             f"p99 {format_value(lat.get('p99'), 's')}, generator CPU "
                             f"{format_value(p.get('generator_cpu_pct'), '%')}"
                             + (f" (busiest of {p['generator_processes']} processes)"
                                if (p.get("generator_processes") or 1) > 1 else "")
                             + ("" if p.get("stable", True) else " (unstable)")))
    warnings = []
    n = env.get("cpu_count_logical") or 1
    if la and la[0] > 0.5 * n:
        warnings.append(f"The machine was busy when the run started (load average {la[0]:.1f} on {n} logical CPUs): "
                        "other work competed with the servers and the load generator.")
    if n < 4:
        warnings.append(f"Only {n} logical CPUs: server and load generator share a small machine, so the numbers "
                        "show orders of magnitude rather than a ranking.")
    warnings += _run_warnings(meta)
    return {"rows": rows, "frameworks": fw, "calibration": cal_rows, "warnings": warnings}


def _run_warnings(meta: dict[str, Any]) -> list[str]:
    """What run.json says about how the run went: other work on the machine, cells never run, resumes."""
    out = []
    for a in meta.get("concurrent_activity") or []:
        if isinstance(a, dict) and a.get("text"):
            out.append(f"During the run: {a['text']}. Measurements may be distorted (see the validity flags).")
    missing = [c for c in meta.get("missing_cells") or [] if isinstance(c, str)]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        out.append(f"The run is partial: {len(missing)} planned cell(s) have no result ({shown}). Comparisons and "
                   "winners below cover only the cells that ran.")
    resumes = [r for r in meta.get("resumes") or [] if isinstance(r, dict)]
    if resumes:
        forced = [r for r in resumes if r.get("forced")]
        torn = sum(len(r.get("torn_lines") or []) for r in resumes)
        text = f"The run was resumed {len(resumes)} time(s) (at {', '.join(str(r.get('at')) for r in resumes[:5])})"
        if forced:
            diffs = "; ".join(str(x) for r in forced for x in (r.get("differences") or r.get("left_out") or []))[:400]
            text += f"; {len(forced)} resume(s) forced past a changed suite or left-out cells ({diffs or 'see run.json'})"
        if torn:
            text += f"; {torn} torn record line(s) from a crash were skipped"
        out.append(text + ": cells measured in different sessions may differ by the machine's drift.")
    if meta.get("schema_migrated_from"):
        out.append(f"These results were written with result schema {meta['schema_migrated_from']} and read through "
                   "its migration (docs/export.md).")
    return out


def _is_baseline(framework: str) -> bool:
    """A no-framework baseline adapter (``Adapter.baseline``); unknown names are not."""
    from servingbench.adapters import registry

    try:
        return bool(getattr(registry.get_class(framework), "baseline", False))
    except Exception:  # noqa: BLE001 - an adapter not installed here: reported without the mark
        return False


def _generator_text(g: dict) -> str:
    """The suite's generator processes, as run (locust master/worker mode or a single process)."""
    local, remote = g.get("workers", 0), g.get("remote_workers", 0)
    if not local and not remote:
        return "one locust process"
    parts = [f"{local} local worker(s)" if local else "", f"{remote} remote worker(s)" if remote else ""]
    return "locust master/worker: " + " + ".join(p for p in parts if p)


def _cpus(v: Any) -> str:
    if not v:
        return "not pinned"
    v = sorted(v)
    # compress runs: 0,1,2,5 -> 0-2,5
    parts, start, prev = [], v[0], v[0]
    for x in v[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        if x is not None:
            start = prev = x
    return ",".join(parts)


def _validity(b: _Builder) -> dict[str, Any]:
    d = b.d
    flagged = an.flagged_points(d)
    b.csv(flagged, "flagged_points")
    ft = Table("Flagged points", ["framework", "model", "workload", "load", "repeat", "flags", "throughput",
                                  "p99", "error rate", "generator CPU"], [], csv="tables/flagged_points.csv")
    for r in flagged.itertuples():
        ft.rows.append([Cell(r.name), Cell(r.model), Cell(r.workload), Cell(r.load_label), Cell(str(r.repeat)),
                        Cell(r.flags.replace(",", ", "), cls="flag"),
                        Cell(_fmt(r.throughput_rps, "rps"), r.record_id), Cell(_fmt(r.latency_p99_s, "s"), r.record_id),
                        Cell(_fmt(r.error_rate, "fraction")), Cell(_fmt(r.generator_cpu_pct, "%"))])
    problems = []
    for c in an.problem_cells(d).itertuples():
        problems.append({"name": c.cell, "status": _text(c.status), "reason": _text(c.reason),
                         "log_tail": _text(c.log_tail)})
    for p in probe_cells(d.meta):
        if p["status"] != "ok":
            problems.append({"name": p["cell"], "status": _text(p["status"]), "reason": _text(p["reason"]),
                             "log_tail": ""})
    n_points = len(d.point_df)
    return {"flagged": ft, "n_flagged": len(flagged), "n_points": n_points, "problems": problems}


def _features(b: _Builder) -> dict[str, Any]:
    fws, feats, cells = an.feature_matrix(b.d)
    rows = []
    footnotes = []
    for fw in fws:
        row = []
        for feat in feats:
            mc = cells.get((fw, feat))
            if mc is None:
                row.append(None)
                continue
            n = len(footnotes) + 1
            evidence = [e if isinstance(e, str) else an_dumps(e) for e in mc.evidence]
            detail = [f"{k}: {v}" for k, v in mc.detail.items()]
            if mc.reason:
                detail.insert(0, f"reason: {mc.reason}")
            footnotes.append({"n": n, "key": f"{fw}-{feat}", "evidence": evidence, "detail": detail,
                              "docs": mc.docs_claim, "survey": mc.survey_claim, "verdict": mc.verdict})
            row.append({"mc": mc, "text": VERDICT_TEXT.get(mc.verdict, mc.verdict), "evidence": evidence,
                        "detail": detail, "n": n, "cls": f"v-{mc.verdict}" + (" disagree" if mc.disagreement else "")})
        rows.append((fw, row))
    disagreements = [mc for mc in cells.values() if mc.disagreement]
    tidy = pd.DataFrame([{"framework": mc.framework, "feature": mc.feature, "verdict": mc.verdict,
                          "docs_claim": mc.docs_claim, "survey_claim": mc.survey_claim,
                          "disagrees_with_docs": mc.disagree_docs, "disagrees_with_survey": mc.disagree_survey,
                          "evidence_items": len(mc.evidence), "record_id": mc.record_id} for mc in cells.values()],
                        columns=["framework", "feature", "verdict", "docs_claim", "survey_claim",
                                 "disagrees_with_docs", "disagrees_with_survey", "evidence_items", "record_id"])
    if cells:
        b.csv(tidy, "features")
    return {"present": bool(cells), "features": feats, "rows": rows, "footnotes": footnotes,
            "disagreements": disagreements}


def an_dumps(v: Any) -> str:
    if isinstance(v, dict):
        return "; ".join(f"{k}={v2}" for k, v2 in v.items())
    return str(v)


def _performance(b: _Builder, levels: pd.DataFrame) -> dict[str, Any]:
    d = b.d
    out: dict[str, Any] = dict.fromkeys(
        ["slo_table", "slo_fig", "max_tp_table", "cells_table", "cold_fig", "mem_fig", "overhead_table",
         "overhead_fig", "ratio_fig", "gpu_fig", "gpu_util_fig"])
    out["slo_search_figs"] = []
    slo_p99 = (d.slo or {}).get("p99")
    if isinstance(slo_p99, str):
        slo_p99 = None
    _perf_slo(b, levels, out, slo_p99)
    _perf_levels(b, levels, out, slo_p99)
    _perf_cells(b, levels, out, slo_p99)
    _perf_overhead(b, levels, out, slo_p99)
    _perf_probes(b, levels, out, slo_p99)
    _perf_gpu(b, levels, out, slo_p99)
    return out


def _slo_rate_text(r: Any) -> str:
    """The answer of a search: a generator-limited one is a lower bound of the server's capacity, never the capacity."""
    machine = _machine(r)
    if _nan(r.max_rate_rps):
        if r.generator_limited:
            return "generator-limited before any rate passed"
        if machine:
            return "unmeasured (the machine limited the probes)"
        low = getattr(r, "lowest_rate_rps", None)
        return "none met the SLO" if _nan(low) else f"< {_fmt(low, 'rps')} (none met the SLO)"
    text = _fmt(r.max_rate_rps, "rps")
    if r.generator_limited:
        return f"≥ {text} (generator-limited)"
    if machine:
        return f"≥ {text} (machine-limited)"
    return f"≥ {text} (no rate above it failed)" if getattr(r, "unbounded", False) is True else text


def _machine(r: Any) -> str | None:
    """A search's ``machine_limited`` text (a table row: a missing one is None or NaN)."""
    m = getattr(r, "machine_limited", None)
    return m if isinstance(m, str) and m else None


def _slo_reason_text(r: Any) -> str:
    reason, machine = (r.reason if isinstance(r.reason, str) else ""), _machine(r)
    return f"{reason}; {machine}" if machine and reason not in machine else (machine or reason)


def _perf_slo(b: _Builder, levels: pd.DataFrame, out: dict[str, Any], slo_p99: Any) -> None:
    """The report's throughput at the SLO part of the performance section (fills ``out``)."""
    d = b.d
    slo = an.slo_table(d)
    if not slo.empty:
        b.csv(slo, "slo")
        t = Table("Throughput at the SLO", ["framework", "model", "SLO", "max rate", "steps", "reason"], [],
                  csv="tables/slo.csv")
        for r in slo.itertuples():
            t.rows.append([Cell(r.name), Cell(r.model),
                           Cell(f"p99 ≤ {_fmt(r.slo_p99_s, 's')}, errors ≤ {_fmt(r.slo_max_error_rate, 'fraction')}"),
                           Cell(_slo_rate_text(r), r.record_id, "num"),
                           Cell(str(r.steps)), Cell(_slo_reason_text(r))])
        out["slo_table"] = t
        plot = slo.copy()
        if plot["max_rate_rps"].notna().any():
            out["slo_fig"] = b.figure(fg.grouped_bars(plot, b.styler, "max_rate_rps", METRICS["slo_max_rate_rps"],
                                                      "Throughput at the SLO (higher is better)"),
                                      "slo_throughput", "Throughput at the SLO")
        steps = an.slo_steps(d)
        b.csv(steps, "slo_steps")
        out["slo_search_figs"] = []
        p99_target = slo_p99 or (float(slo["slo_p99_s"].dropna().iloc[0]) if slo["slo_p99_s"].notna().any()
                                 else None)
        for model in d.models:
            s = steps[steps["model"] == model]
            if not s.empty and p99_target:
                out["slo_search_figs"].append(b.figure(fg.slo_search(s, b.styler, model, p99_target),
                                                       f"slo_search_{model}", f"SLO search: {model}"))
    else:
        out["slo_table"] = None
        # fall back: max valid closed-loop throughput
        cl = levels[(levels["kind"] == "closed_loop") & levels["valid"]] if not levels.empty else levels
        if not cl.empty:
            best = cl.loc[cl.groupby(["name", "model"])["throughput_rps"].idxmax()]
            allcl = levels[levels["kind"] == "closed_loop"]
            gb = allcl[allcl["flags"].str.contains("generator_bound", na=False)]
            t = Table("Max valid closed-loop throughput", ["framework", "model", "throughput", "at load", "p99"], [],
                      note="≥ X (generator-limited): a higher load level was limited by the load generator, so the "
                           "server's capacity is at least X, not X")
            for r in best.itertuples():
                text = _range_text(r._asdict(), "throughput_rps", "rps")
                lim = gb[(gb["name"] == r.name) & (gb["model"] == r.model)]["throughput_rps"].max()
                if not _nan(lim) and lim >= (r.throughput_rps or 0):
                    text = f"≥ {_fmt(lim, 'rps')} (generator-limited)"
                t.rows.append([Cell(r.name), Cell(r.model), Cell(text, r.record_ids, "num"),
                               Cell(r.load_label), Cell(_fmt(r.latency_p99_s, "s"), r.record_ids, "num")])
            out["max_tp_table"] = t


def _perf_levels(b: _Builder, levels: pd.DataFrame, out: dict[str, Any], slo_p99: Any) -> None:
    """The report's latency vs throughput, per model part of the performance section (fills ``out``)."""
    d = b.d
    ip = an.inprocess_table(d)
    out["curves"] = []
    out["level_tables"] = []
    out["cdfs"] = []
    if not levels.empty:
        b.csv(levels.drop(columns=["fw_order"], errors="ignore"), "load_levels")
    for model in d.models:
        lv = levels[levels["model"] == model] if not levels.empty else levels
        if lv.empty:
            continue
        ref = None
        ipm = ip[(ip["model"] == model) & (ip["batch"] == int(lv["batch"].iloc[0]))] if not ip.empty else ip
        if not ipm.empty:
            r0 = ipm.sort_values("threads").iloc[0]
            ref = {"throughput_rps": r0["throughput_rps"], "p50": r0["latency_p50_s"], "p99": r0["latency_p99_s"]}
        out["curves"].append(b.figure(
            fg.latency_vs_throughput(lv, b.styler, model, slo_p99, ref), f"latency_vs_throughput_{model}",
            f"Latency vs throughput: {model}",
            "Median over repeats; bars span min–max of repeats." if (lv["repeats"] > 1).any() else ""))
        cols = ["framework", "workload", "load", "throughput", "p50", "p90", "p99", "p99.9", "errors", "server CPU",
                "peak PSS", "batch (mean / max)", "mean: model / client floor / queue + framework", "repeats", "flags"]
        floor = _num(dig(d.meta, "calibration", "floor_p50_s"))
        t = Table(f"{model}: latency per load level", cols, [], csv="tables/load_levels.csv",
                  note=("median over repeats, [min–max] when repeated; " if (lv["repeats"] > 1).any() else "")
                  + "where the mean latency goes: the model calls (timed in the server), the client and loopback "
                    "floor (the generator against a trivial endpoint), and the rest: queueing and the framework")
        for _, r in lv.iterrows():
            ids = r["record_ids"]
            t.rows.append([Cell(r["name"]), Cell(r["workload"]), Cell(r["load_label"]),
                           _ranged(r, "throughput_rps", "rps", ids),
                           _ranged(r, "latency_p50_s", "s", ids),
                           _ranged(r, "latency_p90_s", "s", ids),
                           _ranged(r, "latency_p99_s", "s", ids),
                           Cell(_fmt(r["latency_p999_s"], "s"), ids, "num"),
                           Cell(_fmt(r["error_rate"], "fraction"), ids, "num"),
                           Cell(_fmt(r["server_cpu_pct"], "%"), ids, "num"),
                           Cell(_fmt(r["server_pss_bytes"], "bytes"), ids, "num"),
                           Cell(_batch_text(r), ids, "num"),
                           Cell(_time_text(r, floor), ids, "num"),
                           Cell(str(r["repeats"]), "", "num"),
                           Cell(r["flags"].replace(",", ", ") or "ok", "", "flag" if r["flags"] else "")])
        out["level_tables"].append(t)
        choice = an.cdf_choice(d, levels, model)
        if choice:
            workload, load, label = choice
            curves = an.cdf_curves(d, model, workload, load)
            if curves:
                out["cdfs"].append(b.figure(fg.latency_cdf(curves, b.styler, model, f"{label} ({workload})", slo_p99),
                                            f"latency_cdf_{model}", f"Latency CDF: {model} at {label}",
                                            "From the full latency histograms (merged over repeats)."))


def _time_text(r: Any, floor: float | None) -> str:
    """Where a point's mean latency goes: model compute / client + loopback floor / the rest (queue + framework),
    in ms; – when the server did not time its model calls."""
    mean, comp = _num(r.get("latency_mean_s")), _num(r.get("compute_mean_s"))
    if mean is None or comp is None:
        return "–"
    fl = floor or 0.0
    rest = max(0.0, mean - comp - fl)
    return f"{comp * 1e3:.2f} / {fl * 1e3:.2f} / {rest * 1e3:.2f} ms" if floor is not None else \
        f"{comp * 1e3:.2f} / – / {(mean - comp) * 1e3:.2f} ms"


def _batch_text(r: Any) -> str:
    """Requests per model call (mean) and the largest batch in rows, as the server formed them; – when unknown."""
    mean, top = r.get("batch_mean_requests"), r.get("batch_max_rows")
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "–"
    return f"{mean:.2f} / {int(top)}" if top is not None and not (isinstance(top, float) and np.isnan(top)) \
        else f"{mean:.2f}"


def _perf_cells(b: _Builder, levels: pd.DataFrame, out: dict[str, Any], slo_p99: Any) -> None:
    """The report's cold start and memory part of the performance section (fills ``out``)."""
    d = b.d
    cells = d.cell_df[d.cell_df["status"] == "ok"] if not d.cell_df.empty else d.cell_df
    peak = d.point_df.groupby(["framework", "deployment"])["server_pss_bytes"].max() if not d.point_df.empty else None
    if not cells.empty:
        cells = cells.copy()
        cells["peak_pss_bytes"] = [peak.get((f, dep), np.nan) if peak is not None else np.nan
                                   for f, dep in zip(cells["framework"], cells["deployment"])]
        b.csv(d.cell_df.drop(columns=["log_tail", "fw_order"], errors="ignore"), "cells")
        t = Table("Start-up and memory per deployment", ["framework", "version", "ready", "cold start", "idle PSS",
                                                         "idle RSS", "peak PSS under load"], [], csv="tables/cells.csv")
        for r in cells.sort_values(["fw_order", "deployment"]).itertuples():
            t.rows.append([Cell(r.name), Cell(str(r.framework_version or "?")),
                           Cell(_fmt(r.ready_s, "s"), r.record_id, "num"),
                           Cell(_fmt(r.cold_start_s, "s"), r.record_id, "num"),
                           Cell(_fmt(r.idle_pss_bytes, "bytes"), r.record_id, "num"),
                           Cell(_fmt(r.idle_rss_bytes, "bytes"), r.record_id, "num"),
                           Cell(_fmt(r.peak_pss_bytes, "bytes"), "", "num")])
        out["cells_table"] = t
        if cells["cold_start_s"].notna().any():
            out["cold_fig"] = b.figure(fg.paired_bars(cells, b.styler, [("cold_start_s", "cold start (first correct answer)"),
                                                                        ("ready_s", "readiness probe")],
                                                      METRICS["cold_start_s"], "Cold start (lower is better)"),
                                       "cold_start", "Cold start")
        if cells["idle_pss_bytes"].notna().any():
            out["mem_fig"] = b.figure(fg.paired_bars(cells, b.styler, [("idle_pss_bytes", "idle PSS"),
                                                                       ("peak_pss_bytes", "peak PSS under load")],
                                                     METRICS["idle_pss_bytes"],
                                                     "Server memory, whole process tree (lower is better)"),
                                      "memory", "Memory")


def _perf_overhead(b: _Builder, levels: pd.DataFrame, out: dict[str, Any], slo_p99: Any) -> None:
    """The report's overhead vs the in-process limit part of the performance section (fills ``out``)."""
    d = b.d
    ip = an.inprocess_table(d)
    if not ip.empty:
        b.csv(ip, "inprocess")
    oh = an.overhead(d, levels)
    out["inprocess_present"] = not ip.empty
    if not oh.empty:
        b.csv(oh, "overhead")
        t = Table("Overhead against the in-process limit", ["framework", "model", "batch", "server p50 (c=1)",
                                                            "in-process p50", "latency overhead", "server max throughput",
                                                            "in-process throughput", "share of limit"], [],
                  csv="tables/overhead.csv")
        for r in oh.itertuples():
            t.rows.append([Cell(r.name), Cell(r.model), Cell(str(r.batch)), Cell(_fmt(r.server_p50_s, "s"), "", "num"),
                           Cell(_fmt(r.inprocess_p50_s, "s"), "", "num"),
                           Cell(("+" if (r.latency_overhead_s or 0) >= 0 else "") + _fmt(r.latency_overhead_s, "s"),
                                "", "num"),
                           Cell(_fmt(r.server_throughput_rps, "rps") + (f" ({r.server_load})" if r.server_load else ""),
                                "", "num"),
                           Cell(_fmt(r.inprocess_throughput_rps, "rps"), "", "num"),
                           Cell(_fmt(r.throughput_ratio, "fraction"), "", "num")])
        out["overhead_table"] = t
        if oh["latency_overhead_s"].notna().any():
            m_oh = _derived("latency_overhead_s", "p50 overhead vs in-process", "s", "lower")
            out["overhead_fig"] = b.figure(
                fg.grouped_bars(oh, b.styler, "latency_overhead_s", m_oh, "p50 latency overhead at concurrency 1"),
                "overhead_latency", "Latency overhead")
        if oh["throughput_ratio"].notna().any():
            m_ratio = _derived("throughput_ratio", "Share of in-process throughput", "fraction", "higher")
            out["ratio_fig"] = b.figure(
                fg.grouped_bars(oh, b.styler, "throughput_ratio", m_ratio,
                                "Best valid throughput as a share of the in-process limit",
                                ref_line=100.0 if oh["throughput_ratio"].max() > 0.5 else None,
                                ref_label="in-process limit"),
                "overhead_throughput_ratio", "Throughput ratio")


def _perf_probes(b: _Builder, levels: pd.DataFrame, out: dict[str, Any], slo_p99: Any) -> None:
    """The report's probe-derived costs and benefits part of the performance section (fills ``out``)."""
    d = b.d
    pm = an.probe_metrics(d)
    out["probe_tables"] = []
    out["probe_figs"] = []
    if not pm.empty:
        b.csv(pm, "probe_metrics")
        for feat, g in pm.groupby("feature", sort=False):
            t = Table(f"{feat}: measured by the probes", ["framework", "metric", "value"], [],
                      csv="tables/probe_metrics.csv")
            for r in g.itertuples():
                t.rows.append([Cell(r.framework), Cell(r.metric),
                               Cell(_fmt(r.value, r.unit) if r.unit != "ms" else f"{r.value:.3g} ms", r.record_id,
                                    "num")])
            out["probe_tables"].append(t)
            # a figure only where it compares: metrics that at least two frameworks report
            keys = [k for k in dict.fromkeys(g["metric"]) if g[g["metric"] == k]["framework"].nunique() >= 2][:4]
            for k in keys:
                gk = g[g["metric"] == k].copy()
                gk["name"] = gk["framework"]
                gk["group"] = ""
                unit = gk["unit"].iloc[0]
                metric = _derived(k, k, unit if unit != "ms" else "", "higher")
                out["probe_figs"].append(b.figure(fg.grouped_bars(gk, b.styler, "value", metric, f"{feat}: {k}",
                                                                  group="group"),
                                                  f"probe_{feat}_{k}", f"{feat}: {k}"))


def _perf_gpu(b: _Builder, levels: pd.DataFrame, out: dict[str, Any], slo_p99: Any) -> None:
    """The report's GPU part of the performance section (fills ``out``)."""
    d = b.d
    pdf = d.point_df
    if not pdf.empty and pdf["gpu_mem_bytes"].notna().any():
        g = levels.dropna(subset=["gpu_mem_bytes"])
        gpeak = g.groupby(["name", "model"], as_index=False)["gpu_mem_bytes"].max()
        out["gpu_fig"] = b.figure(fg.grouped_bars(gpeak, b.styler, "gpu_mem_bytes", METRICS["gpu_mem_bytes"],
                                                  "Peak GPU memory while serving (lower is better)"),
                                  "gpu_memory", "GPU memory")
        if levels["gpu_util_pct"].notna().any():
            gu = levels.dropna(subset=["gpu_util_pct"]).groupby(["name", "model"], as_index=False)["gpu_util_pct"].max()
            out["gpu_util_fig"] = b.figure(fg.grouped_bars(gu, b.styler, "gpu_util_pct", METRICS["gpu_util_pct"],
                                                           "Highest mean GPU utilisation over load levels"),
                                           "gpu_utilisation", "GPU utilisation")


def _reproduce(b: _Builder) -> dict[str, Any]:
    meta = b.d.meta
    cmd = meta.get("command")
    if isinstance(cmd, list):
        argv = list(cmd)
        if argv and argv[0].endswith("servingbench"):
            argv[0] = "servingbench"
        cmd = shlex.join(argv)
    return {"command": cmd or "–", "suite_file": meta.get("suite_file") or "–",
            "suite_text": meta.get("suite_text") or "", "manifests": read_manifests(b.d.path),
            "lock": ((meta.get("environment") or {}).get("lock_sha256") or "")}


# ---- rendering -----------------------------------------------------------------------------------------------------------
def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=autoescape,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["md"] = _md_cell
    env.filters["fmt"] = format_value
    return env


def build_context(d: RunData, out: Path, threshold: float = 0.05) -> dict[str, Any]:
    b = _Builder(d, out, threshold)
    levels = an.load_levels(d)
    b.csv(d.point_df, "points")
    ctx = {
        "run_id": d.run_id,
        "title": f"servingbench report: {d.run_id}",
        "status": d.meta.get("status", "?"),
        "frameworks": d.frameworks,
        "models": d.models,
        "cells": d.cell_names(),
        "slo": d.slo,
        "summary": _summary(b, levels),
        "published": _published(b),
        "environment": _environment(b),
        "validity": _validity(b),
        "features": _features(b),
        "perf": _performance(b, levels),
        "reproduce": _reproduce(b),
        "legend": [(n, b.styler(n), fg.MARKER_SYMBOL.get(b.styler(n).marker, b.styler(n).marker))
                   for n in d.cell_names()],
    }
    ctx["figures"] = b.figures
    return ctx


REPORT_MARKER = ".servingbench-report"
"""File the report writer creates first in every report directory: only such a directory is ever replaced."""
_LEGACY_REPORT = {"index.html", "report.md", "figures", "tables"}  # reports written before the marker existed


def _looks_like_report(path: Path) -> bool:
    marker = path / REPORT_MARKER
    if marker.is_file() and not marker.is_symlink():
        return True
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        return False
    return {"index.html", "report.md"} <= names <= _LEGACY_REPORT


def report_dir(out_root: Path, run_id: object, run_json: Path) -> Path:
    """``<out_root>/<run_id>`` after checking that ``run_id`` is a safe directory name; ResultsError naming the
    run.json, the field, the value and the fix otherwise.  ``out_root`` is created if missing."""
    from servingbench.results import RUN_ID_CHARS, RUN_ID_MAX, ResultsError, run_id_problem, sanitise_name

    problem = run_id_problem(run_id)
    if problem:
        shown = repr(run_id) if len(repr(run_id)) <= 80 else repr(run_id)[:77] + "..."
        raise ResultsError(
            f"{run_json}: field 'run_id' {shown} {problem}, so it cannot name a report directory (results are data, "
            f"never paths): a run id is 1-{RUN_ID_MAX} of {RUN_ID_CHARS}. Set 'run_id' in that run.json to a safe "
            f"name such as {sanitise_name(str(run_id), RUN_ID_MAX)!r}")
    out_root = Path(out_root)
    if os.path.lexists(out_root) and not out_root.is_dir():
        raise ResultsError(f"--out {out_root} exists and is not a directory: give a directory for the reports")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"cannot create the reports directory --out {out_root}: {e.strerror or e}; "
                           "choose a writable --out directory") from e
    return out_root.resolve() / str(run_id)


def _clear_report_dir(out: Path, results_dir: Path) -> None:
    """Remove an earlier report at ``out`` (strictly inside --out, a real directory that looks like a report)."""
    from servingbench.results import ResultsError

    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise ResultsError(f"{out} exists and is not a report directory (a link or a file): servingbench only "
                           "replaces reports it wrote; move it away or choose another --out")
    res = results_dir.resolve()
    if res == out or out in res.parents:
        raise ResultsError(f"the results directory {results_dir} lies inside the report directory {out}: "
                           "choose another --out")
    if not _looks_like_report(out):
        raise ResultsError(f"{out} exists and is not a servingbench report (no {REPORT_MARKER} file): servingbench "
                           "only replaces reports it wrote; move that directory away or choose another --out")
    shutil.rmtree(out)


def write_report(results_dir: Path, out_root: Path = Path("reports"), beside: bool = False) -> Path:
    """Write ``<out_root>/<run-id>/`` (index.html, report.md, figures/, tables/) and return index.html's path.

    The directory name comes only from ``out_root`` and run.json's ``run_id`` once checked as a safe name (no
    path separators, no leading dot, at most 120 characters); an existing directory there is replaced only when
    it is a servingbench report (it holds the :data:`REPORT_MARKER` file).  Nothing outside ``out_root`` is
    created or removed.

    Args:
        results_dir: a results directory (``run.json`` + ``records.jsonl``), complete or not.
        out_root: where reports go (created if missing); an earlier report of the same run is replaced.
        beside: write it into ``<results_dir>/report/`` instead (what ``run --report`` does: the report travels
            with its results); ``out_root`` is then ignored.
    Raises:
        servingbench.results.ResultsError: ``results_dir`` is not a results directory, its files are damaged or
            not servingbench's, its run id is not a safe name, or the report cannot be written there.
    """
    import json

    from servingbench.results import ResultsError

    results_dir = Path(results_dir)
    d = RunData.load(results_dir)
    out = (results_dir / "report") if beside else report_dir(Path(out_root), d.meta.get("run_id"),
                                                             results_dir / "run.json")
    try:
        _clear_report_dir(out, results_dir)
        out.mkdir()
        (out / REPORT_MARKER).write_text(json.dumps({"servingbench_report": 1, "run_id": d.run_id}) + "\n")
        (out / "figures").mkdir()
        (out / "tables").mkdir()
    except OSError as e:
        raise ResultsError(f"cannot write the report to {out}: {e.strerror or e}; choose a writable --out") from e
    try:
        ctx = build_context(d, out)
        html = _env(True).get_template("report.html.j2").render(**ctx)
        md = _env(False).get_template("report.md.j2").render(**ctx)
    except OSError as e:
        raise ResultsError(f"cannot write the report to {out}: {e.strerror or e}; choose a writable --out") from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ResultsError(
            f"cannot build a report from {results_dir}: {type(e).__name__}: {e}. Its run.json and records.jsonl "
            "passed the shape checks; if nobody edited them, this is a servingbench bug: please report it") from e
    try:
        (out / "index.html").write_text(html)
        (out / "report.md").write_text(md)
    except OSError as e:
        raise ResultsError(f"cannot write the report to {out}: {e.strerror or e}; choose a writable --out") from e
    return out / "index.html"


__all__ = ["write_report", "build_context", "report_dir", "REPORT_MARKER"]
