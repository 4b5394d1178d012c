"""Compare two runs: a regression table that flags only differences larger than the noise.

Rows: framework × deployment × model × workload × load × metric, with the value in each run (median), the change
in percent, whether it is significant, the method that decided it, and a verdict (regression / improvement /
within noise / noise unknown).

Samples, i.e. what "noise" means for each row (the choice, documented):

* **Repeats** (``measurement.repeats`` ≥ 2 in *both* runs): one value per repeat, passed to
  :func:`servingbench.measure.stats.significant_change` (two-sided Mann-Whitney U with ≥ 3 repeats a side,
  disjoint [min, max] ranges with 2).  Run-to-run noise: the trustworthy case.
* **Windows** (a single repeat): the measurement windows of the point are the samples: per-window throughput
  (successful requests / window length) and per-window p50 / p99 from each window's own latency histogram, passed
  to ``significant_change`` like repeats (Mann-Whitney where it can reach ``alpha`` at these sizes, otherwise
  disjoint [min, max] ranges: a point typically has 3-5 windows).  This captures within-run noise only (a drift
  between runs, or a server that settles differently after each start, is not in it), so the text output says so.
* **Single values** (cold start, idle memory): noise unknown; the change is shown, never flagged.
* **Throughput at the SLO**: one search per run; a change counts only when it exceeds the threshold plus both
  searches' resolution (the bracket between the last passing and the first failing rate).

Every flagged change must also exceed ``threshold`` (relative change of the medians, default 5 %).

Example::

    df = compare_runs(Path("results/run-a"), Path("results/run-b"))
    print(render_compare_text(df))
    write_compare_html(df, Path("reports/compare.html"))
"""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servingbench.report.data import RunData, framework_sort_key
from servingbench.report.metrics import METRICS, format_value, load_label

POINT_METRICS = ["throughput_rps", "latency_p50_s", "latency_p99_s"]
COLUMNS = ["framework", "deployment", "model", "workload", "load", "metric", "unit", "better", "a", "b",
           "change_pct", "significant", "regression", "verdict", "method", "samples", "n_a", "n_b"]


def _finite(xs: list[Any]) -> list[float]:
    return [float(x) for x in xs if x is not None and isinstance(x, (int, float)) and math.isfinite(float(x))]


def _point_groups(d: RunData) -> dict[tuple, list[dict]]:
    """(framework, deployment, model, workload, load) -> the repeats of that load point (SLO-search steps excluded)."""
    out: dict[tuple, list[dict]] = {}
    for r in d.points:
        if r.get("kind") == "slo_search":
            continue
        key = (r.get("framework"), r.get("deployment"), r.get("model"), r.get("workload"), load_label(r))
        out.setdefault(key, []).append(r)
    for v in out.values():
        v.sort(key=lambda r: int(r.get("repeat") or 0))
    return out


def _samples(recs: list[dict], metric: str) -> tuple[list[float], str]:
    m = METRICS[metric]
    if len(recs) >= 2:
        return _finite([m.extract(r) for r in recs]), "repeats"
    if recs and m.window_samples is not None:
        ws = _finite(m.window_samples(recs[0]))
        if ws:
            return ws, "windows"
    return _finite([m.extract(r) for r in recs]), "single"


def _decide(a: list[float], b: list[float], source: str, threshold: float, alpha: float) -> tuple[bool | None, float, str]:
    """(significant or None when noise is unknown, relative change b vs a, method)."""
    from servingbench.measure.stats import significant_change

    if not a or not b:
        return None, float("nan"), "missing in one run"
    ma, mb = statistics.median(a), statistics.median(b)
    rel = (mb - ma) / abs(ma) if ma else (0.0 if mb == ma else math.inf)
    if source == "single" or len(a) < 2 or len(b) < 2:
        return None, rel, "single value: noise unknown"
    sig, rel2, method = significant_change(a, b, threshold=threshold, alpha=alpha)
    prefix = "repeats: " if source == "repeats" else "windows: "
    return bool(sig), (rel2 if rel2 is not None and not (isinstance(rel2, float) and math.isnan(rel2)) else rel), \
        prefix + method


def _verdict(sig: bool | None, rel: float, better: str) -> tuple[bool, str]:
    if sig is None:
        return False, "noise unknown"
    if not sig:
        return False, "within noise"
    worse = rel < 0 if better == "higher" else rel > 0
    return worse, "regression" if worse else "improvement"


def _row(key: tuple, metric: str, a: list[float], b: list[float], src_a: str, src_b: str, threshold: float,
         alpha: float) -> dict[str, Any]:
    m = METRICS[metric]
    source = src_a if src_a == src_b else "single" if "single" in (src_a, src_b) else "windows"
    sig, rel, method = _decide(a, b, source, threshold, alpha)
    regression, verdict = _verdict(sig, rel, m.better)
    fw, dep, model, workload, load = key
    return {
        "framework": fw, "deployment": dep, "model": model, "workload": workload, "load": load,
        "metric": metric, "unit": m.unit, "better": m.better,
        "a": statistics.median(a) if a else np.nan, "b": statistics.median(b) if b else np.nan,
        "change_pct": rel * 100 if rel is not None and math.isfinite(rel) else np.nan,
        "significant": bool(sig), "regression": regression, "verdict": verdict, "method": method,
        "samples": source, "n_a": len(a), "n_b": len(b),
    }


def _slo_resolution(rec: dict) -> float:
    """Relative width of the search's final bracket (0 when it has no failing rate above the answer)."""
    mr = rec.get("max_rate")
    if not mr:
        return 0.0
    above = [p.get("rate") for p in rec.get("points") or [] if not p.get("ok") and (p.get("rate") or 0) > mr]
    return (min(above) / mr - 1.0) if above else 0.0


def compare_runs(a: Path, b: Path, threshold: float = 0.05, alpha: float = 0.05) -> pd.DataFrame:
    """Regression table of run ``b`` against run ``a`` (see the module docstring for how noise is estimated).

    Args:
        a: the baseline results directory.
        b: the candidate results directory.
        threshold: smallest relative change of the medians worth flagging.
        alpha: significance level of the Mann-Whitney test.
    Returns:
        One row per (framework, deployment, model, workload, load, metric) present in either run, columns
        ``COLUMNS``; ``change_pct`` is (b − a) / a × 100; ``regression`` is True for significant changes in the
        worse direction.
    """
    da, db = RunData.load(Path(a)), RunData.load(Path(b))
    rows: list[dict[str, Any]] = []
    ga, gb = _point_groups(da), _point_groups(db)
    for key in sorted(set(ga) | set(gb), key=lambda k: (k[2] or "", framework_sort_key(k[0] or ""), k[1] or "",
                                                          k[3] or "", _load_sort(k[4]))):
        ra, rb = ga.get(key, []), gb.get(key, [])
        for metric in POINT_METRICS:
            sa, src_a = _samples(ra, metric)
            sb, src_b = _samples(rb, metric)
            if src_a != src_b and ra and rb:
                # Unequal designs (repeats in one run only): use windows on both sides for a like-for-like test.
                sa = _finite([x for r in ra for x in (METRICS[metric].window_samples or (lambda r: []))(r)]) or sa
                sb = _finite([x for r in rb for x in (METRICS[metric].window_samples or (lambda r: []))(r)]) or sb
                src_a = src_b = "windows"
            if not sa and not sb:
                continue
            row = _row(key, metric, sa, sb, src_a, src_b, threshold, alpha)
            if not ra or not rb:
                row.update(significant=True, regression=not rb, verdict=f"measured in {'A' if ra else 'B'} only")
            rows.append(row)
    # throughput at the SLO
    sa_ = {(s.get("framework"), s.get("deployment"), s.get("model"), s.get("workload")): s for s in da.slos}
    sb_ = {(s.get("framework"), s.get("deployment"), s.get("model"), s.get("workload")): s for s in db.slos}
    for key in sorted(set(sa_) | set(sb_), key=lambda k: (k[2] or "", framework_sort_key(k[0] or ""), k[1] or "")):
        x, y = sa_.get(key), sb_.get(key)
        va = _finite([x.get("max_rate")]) if x else []
        vb = _finite([y.get("max_rate")]) if y else []
        full = (*key, "SLO")
        if not va and not vb and x and y:
            rows.append({**_row(full, "slo_max_rate_rps", [], [], "single", "single", threshold, alpha),
                         "verdict": "SLO met in neither run", "method": "one search each", "samples": "search"})
            continue
        if not va or not vb:
            if va or vb:
                rows.append({**_row(full, "slo_max_rate_rps", va, vb, "single", "single", threshold, alpha),
                             "verdict": "SLO met in one run only", "regression": bool(va and not vb),
                             "significant": True})
            continue
        ma, mb = va[0], vb[0]
        rel = (mb - ma) / ma if ma else 0.0
        res = _slo_resolution(x) + _slo_resolution(y)
        sig = abs(rel) > threshold + res
        row = _row(full, "slo_max_rate_rps", va, vb, "single", "single", threshold, alpha)
        regression, verdict = _verdict(sig, rel, "higher")
        row.update(significant=sig, regression=regression, verdict=verdict, samples="search",
                   method=f"one search each: |change| vs {threshold:.0%} + search resolution {res:.0%}")
        rows.append(row)
    # per deployment: cold start and idle memory (single values)
    ca = {(c.framework, c.deployment): c for c in da.cell_df.itertuples() if c.status == "ok"}
    cb = {(c.framework, c.deployment): c for c in db.cell_df.itertuples() if c.status == "ok"}
    for key in sorted(set(ca) & set(cb), key=lambda k: (framework_sort_key(k[0] or ""), k[1] or "")):
        for metric in ("cold_start_s", "idle_pss_bytes"):
            va = _finite([getattr(ca[key], metric)])
            vb = _finite([getattr(cb[key], metric)])
            if va and vb:
                rows.append(_row((*key, "(all)", "start-up", "–"), metric, va, vb, "single", "single", threshold,
                                 alpha))
    # deployments ok in one run and failed / skipped / absent in the other
    sta = {(c.framework, c.deployment): c.status for c in da.cell_df.itertuples()}
    stb = {(c.framework, c.deployment): c.status for c in db.cell_df.itertuples()}
    for key in sorted(set(sta) | set(stb), key=lambda k: (framework_sort_key(k[0] or ""), k[1] or "")):
        a_ok, b_ok = sta.get(key) == "ok", stb.get(key) == "ok"
        if a_ok == b_ok:
            continue
        rows.append({"framework": key[0], "deployment": key[1], "model": "(all)", "workload": "status", "load": "–",
                     "metric": "status", "unit": "", "better": "higher", "a": np.nan, "b": np.nan,
                     "change_pct": np.nan, "significant": True, "regression": a_ok,
                     "verdict": f"{sta.get(key) or 'absent'} → {stb.get(key) or 'absent'}", "method": "cell status",
                     "samples": "", "n_a": int(a_ok), "n_b": int(b_ok)})
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["environment_notes"] = environment_diff(da.meta, db.meta)
    df.attrs.update(run_a=da.run_id, run_b=db.run_id, path_a=str(a), path_b=str(b), threshold=threshold,
                    alpha=alpha)
    return df


def environment_diff(a: dict, b: dict) -> list[str]:
    """What differs between the two runs' machines and software, and load that makes either run suspect."""
    ea, eb = a.get("environment") or {}, b.get("environment") or {}
    notes = []
    for key, label in (("cpu_model", "CPU"), ("cpu_count_logical", "logical CPUs"), ("memory_total_bytes", "memory"),
                       ("os", "OS"), ("python", "Python"), ("lock_sha256", "lock file")):
        if ea.get(key) != eb.get(key):
            notes.append(f"{label} differs: {ea.get(key)} → {eb.get(key)}")
    if [g.get("name") for g in ea.get("gpus") or []] != [g.get("name") for g in eb.get("gpus") or []]:
        notes.append("GPUs differ")
    for group in ("packages", "frameworks"):
        pa, pb = ea.get(group) or {}, eb.get(group) or {}
        for name in sorted(set(pa) & set(pb)):
            if pa[name] != pb[name]:
                notes.append(f"{name} {pa[name]} → {pb[name]}")
    if (a.get("cpu_sets") or {}) != (b.get("cpu_sets") or {}):
        notes.append(f"CPU sets differ: {a.get('cpu_sets')} → {b.get('cpu_sets')}")
    for side, e in (("A", ea), ("B", eb)):
        la, n = (e.get("loadavg_at_start") or [None])[0], e.get("cpu_count_logical") or 1
        if la is not None and la > 0.5 * n:
            notes.append(f"run {side} started on a busy machine (load average {la:.1f} on {n} CPUs): "
                         "its numbers include other work")
    ca, cb = (a.get("calibration") or {}).get("ceiling_rps"), (b.get("calibration") or {}).get("ceiling_rps")
    if ca and cb and abs(cb / ca - 1) > 0.10:
        notes.append(f"load-generator ceiling changed {ca:,.0f} → {cb:,.0f} rps ({(cb / ca - 1) * 100:+.0f} %): "
                     "the machine itself performed differently")
    return notes


def _load_sort(label: str) -> tuple[int, float]:
    try:
        if label.startswith("c="):
            return 0, float(label[2:])
        return 1, float(label.split()[0])
    except (ValueError, IndexError):
        return 2, 0.0


# ---- rendering ---------------------------------------------------------------------------------------------------
SHORT = {"throughput_rps": "throughput", "latency_p50_s": "p50", "latency_p99_s": "p99",
         "slo_max_rate_rps": "rate at SLO", "cold_start_s": "cold start", "idle_pss_bytes": "idle PSS",
         "status": "status"}
_MARK = {"regression": "▼ REGRESSION", "improvement": "▲ improvement", "within noise": "= within noise",
         "noise unknown": "? noise unknown"}


def _val(v: Any, unit: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format_value(v, unit)


def _chg(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f} %"


def _run_label(df: pd.DataFrame, side: str) -> str:
    run, path = df.attrs.get(f"run_{side}", side.upper()), df.attrs.get(f"path_{side}")
    return f"{run} ({path})" if path and Path(path).name != run else str(run)


def render_compare_text(df: pd.DataFrame, only_changes: bool = False) -> str:
    """A plain-text table for the terminal (regressions first in the tally); ``only_changes``: flagged rows only."""
    if df.empty:
        return "no comparable measurements in the two runs\n"
    view = df[df["significant"]] if only_changes else df
    headers = ["framework", "model", "workload", "load", "metric", "A", "B", "change", "verdict", "method"]
    body = []
    for r in view.itertuples():
        name = r.framework if r.deployment in (None, "default") else f"{r.framework}/{r.deployment}"
        body.append([name, str(r.model), str(r.workload), str(r.load), SHORT.get(r.metric, r.metric), _val(r.a, r.unit),
                     _val(r.b, r.unit), _chg(r.change_pct), _MARK.get(r.verdict, r.verdict), str(r.method)])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(headers)]
    right = {5, 6, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"A = {_run_label(df, 'a')}", f"B = {_run_label(df, 'b')}"]
    out.append(line(headers))
    out.append(line(["-" * w for w in widths]))
    out += [line(row) for row in body]
    n_reg = int(df["regression"].sum())
    n_imp = int((df["verdict"] == "improvement").sum())
    n_unk = int((df["verdict"] == "noise unknown").sum())
    out.append("")
    out.append(f"{n_reg} regression(s), {n_imp} improvement(s) beyond the noise "
               f"(threshold {df.attrs.get('threshold', 0.05):.0%}); {len(df) - n_reg - n_imp} row(s) unchanged or "
               f"inconclusive{f', {n_unk} with unknown noise' if n_unk else ''}.")
    for note in df.attrs.get("environment_notes") or []:
        out.append(f"note: {note}")
    if (df["samples"] == "windows").any():
        out.append("Rows tested on measurement windows (single repeat) capture within-run noise only; "
                   "use measurement.repeats >= 3 for run-to-run noise.")
    return "\n".join(out) + "\n"


def write_compare_html(df: pd.DataFrame, path: Path) -> Path:
    """A self-contained HTML page with the regression table (no scripts, no external resources)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = df.attrs.get("run_a", "A"), df.attrs.get("run_b", "B")
    rows = []
    for r in df.itertuples():
        name = r.framework if r.deployment in (None, "default") else f"{r.framework}/{r.deployment}"
        cls = {"regression": "reg", "improvement": "imp", "within noise": "same", "noise unknown": "unk"}.get(
            r.verdict, "reg" if r.regression else "unk")
        cells = [name, r.model, r.workload, r.load, SHORT.get(r.metric, r.metric), _val(r.a, r.unit), _val(r.b, r.unit),
                 _chg(r.change_pct), _MARK.get(r.verdict, r.verdict), r.method]
        tds = "".join(f'<td class="{"num" if i in (5, 6, 7) else ""}">{html.escape(str(c))}</td>'
                      for i, c in enumerate(cells))
        rows.append(f'<tr class="{cls}">{tds}</tr>')
    n_reg = int(df["regression"].sum()) if not df.empty else 0
    n_imp = int((df["verdict"] == "improvement").sum()) if not df.empty else 0
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>servingbench compare: {html.escape(str(a))} vs {html.escape(str(b))}</title>
<style>
body {{ font: 14px/1.5 -apple-system, "Segoe UI", Roboto, Arial, sans-serif; margin: 24px 32px; color: #1b1f24; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #d8dee4; padding: 4px 8px; text-align: left; }}
th {{ background: #f6f8fa; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
tr.reg td {{ background: #ffebe9; font-weight: 600; }}
tr.imp td {{ background: #dafbe1; }}
tr.unk td {{ color: #5c6670; }}
.note {{ color: #5c6670; font-size: 12px; }}
.env {{ color: #9a6700; font-size: 13px; margin: 2px 0; }}
</style></head><body>
<h1>servingbench compare</h1>
<p>A = <code>{html.escape(_run_label(df, "a"))}</code><br>B = <code>{html.escape(_run_label(df, "b"))}</code></p>
<p><strong>{n_reg} regression(s)</strong>, {n_imp} improvement(s) beyond the noise
(threshold {df.attrs.get("threshold", 0.05):.0%}, α = {df.attrs.get("alpha", 0.05)}). Change = (B − A) / A.</p>
<table><thead><tr><th>framework</th><th>model</th><th>workload</th><th>load</th><th>metric</th><th>A</th><th>B</th>
<th>change</th><th>verdict</th><th>method</th></tr></thead>
<tbody>
{chr(10).join(rows) if rows else '<tr><td colspan="10">no comparable measurements</td></tr>'}
</tbody></table>
{"".join(f'<p class="env">note: {html.escape(n)}</p>' for n in df.attrs.get("environment_notes") or [])}
<p class="note">Noise: per-repeat values when both runs have repeats (Mann-Whitney U with ≥ 3, disjoint ranges with 2);
otherwise the measurement windows of each point (within-run noise only). Single values (cold start, idle memory)
are shown but never flagged.</p>
</body></html>
"""
    path.write_text(page)
    return path


__all__ = ["compare_runs", "render_compare_text", "write_compare_html", "COLUMNS"]
