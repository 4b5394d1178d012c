"""Tidy tables a report is built from: load levels, SLO results, the summary with its noise verdicts, overhead
against the in-process limit, validity, the feature matrix and probe metrics.  Pure functions of :class:`RunData`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from servingbench.contract.features import FEATURES as CONTRACT_FEATURES
from servingbench.measure.stats import slo_machine_limited, slo_unbounded
from servingbench.report.data import RunData, aggregate_repeats, framework_sort_key, point_names
from servingbench.report.metrics import METRICS, dig, histogram, load_value, relative_advantage

LEVEL_METRICS = ["throughput_rps", "samples_per_s", "latency_p50_s", "latency_p90_s", "latency_p99_s",
                 "latency_p999_s", "error_rate", "server_cpu_pct", "server_pss_bytes", "generator_cpu_pct",
                 "gpu_mem_bytes", "gpu_util_pct", "batch_mean_requests", "batch_max_rows", "latency_mean_s",
                 "compute_mean_s"]
#: the feature columns in the contract's order (``servingbench.contract.features.CATALOG``): one list, not a copy
FEATURES = list(CONTRACT_FEATURES)
VERDICTS = ["supported", "partial", "not_supported", "failed", "not_run"]
NOISE_UNKNOWN = "single run: noise unknown"


# ---- noise ---------------------------------------------------------------------------------------------------------
def noise_test(a: list[float], b: list[float], threshold: float = 0.05, alpha: float = 0.05
               ) -> tuple[bool | None, float | None, str]:
    """``significant_change`` on two sample sets; ``(None, None, reason)`` when either side has one sample."""
    a = [float(x) for x in a if x is not None and math.isfinite(float(x))]
    b = [float(x) for x in b if x is not None and math.isfinite(float(x))]
    if len(a) < 2 or len(b) < 2:
        return None, None, NOISE_UNKNOWN
    from servingbench.measure.stats import significant_change

    sig, rel, method = significant_change(a, b, threshold=threshold, alpha=alpha)
    return bool(sig), (None if rel is None else float(rel)), str(method)


# ---- load levels -----------------------------------------------------------------------------------------------------
def load_levels(d: RunData) -> pd.DataFrame:
    """Closed- and open-loop points aggregated over repeats (median, min, max), one row per load level."""
    df = d.point_df
    df = df[df["kind"] != "slo_search"] if not df.empty else df
    agg = aggregate_repeats(df, LEVEL_METRICS)
    if agg.empty:
        agg["name"] = []
        return agg
    agg["name"] = point_names(d, agg)
    agg["fw_order"] = [framework_sort_key(f)[0] for f in agg["framework"]]
    return agg.sort_values(["model", "workload", "fw_order", "deployment", "load"]).reset_index(drop=True)


# ---- SLO -------------------------------------------------------------------------------------------------------------
def slo_table(d: RunData) -> pd.DataFrame:
    rows = []
    for s in d.slos:
        rows.append({
            "name": d.name(s.get("framework"), s.get("deployment")), "framework": s.get("framework"),
            "deployment": s.get("deployment"), "model": s.get("model"), "workload": s.get("workload"),
            "batch": s.get("batch"), "slo_p99_s": dig(s, "slo", "p99_s"),
            "slo_max_error_rate": dig(s, "slo", "max_error_rate"),
            "max_rate_rps": METRICS["slo_max_rate_rps"].extract(s), "reason": s.get("reason"),
            "steps": len(s.get("points") or []), "record_id": s.get("id"),
            # the lowest rate probed: a search that met no rate says "< this" (the server's rate is below it)
            "lowest_rate_rps": min((p["rate"] for p in s.get("points") or [] if isinstance(p.get("rate"), (int, float))),
                                   default=None),
            "generator_limited": bool(s.get("generator_limited")), "confirmed": s.get("confirmed"),
            # computed from the probes (records before it was recorded get it too)
            "machine_limited": slo_machine_limited(s),
            # no probe above the answer failed (step limit or max_rate while growing): a lower bound
            "unbounded": slo_unbounded(s),
        })
    cols = ["name", "framework", "deployment", "model", "workload", "batch", "slo_p99_s", "slo_max_error_rate",
            "max_rate_rps", "reason", "steps", "lowest_rate_rps", "record_id", "generator_limited", "confirmed",
            "machine_limited", "unbounded"]
    df = pd.DataFrame(rows, columns=cols)
    if not df.empty:
        df["fw_order"] = [framework_sort_key(f)[0] for f in df["framework"]]
        df = df.sort_values(["model", "fw_order", "deployment"]).drop(columns="fw_order").reset_index(drop=True)
    return df


def slo_steps(d: RunData) -> pd.DataFrame:
    rows = []
    for s in d.slos:
        for i, p in enumerate(s.get("points") or []):
            rows.append({"name": d.name(s.get("framework"), s.get("deployment")), "model": s.get("model"),
                         "step": i, "rate": p.get("rate"), "p99_s": p.get("p99_s"), "error_rate": p.get("error_rate"),
                         "ok": bool(p.get("ok"))})
    return pd.DataFrame(rows, columns=["name", "model", "step", "rate", "p99_s", "error_rate", "ok"])


# ---- summary ---------------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    value: float
    samples: list[float]
    basis: str = ""
    record_ids: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """One summary line: the best cell(s) for ``model`` by ``criterion``."""

    model: str
    criterion: str
    metric: str
    basis: str
    candidates: list[Candidate]  # best first
    winners: list[str] = field(default_factory=list)
    margin: float | None = None  # relative advantage of the best over the runner-up (0.2 = 20 % better)
    significant: bool | None = None  # None: noise unknown
    method: str = ""
    note: str = ""

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def runner_up(self) -> Candidate | None:
        return self.candidates[1] if len(self.candidates) > 1 else None

    @property
    def noise_text(self) -> str:
        if self.runner_up is None:
            return "only one framework measured"
        if self.significant is None:
            return NOISE_UNKNOWN
        return (f"exceeds the noise ({self.method})" if self.significant
                else f"within the noise ({self.method}): treat as a tie")

    def margin_text(self) -> str:
        m = METRICS[self.metric]
        if self.runner_up is None or self.margin is None:
            return "–"
        word = ("higher" if m.better == "higher" else "lower")
        return f"{abs(self.margin) * 100:.1f} % {word} than {self.runner_up.name} ({m.format(self.runner_up.value)})"


def _rank(cands: list[Candidate], better: str) -> list[Candidate]:
    cands = [c for c in cands if c.value is not None and math.isfinite(c.value)]
    return sorted(cands, key=lambda c: -c.value if better == "higher" else c.value)


def _verdict(model: str, criterion: str, metric: str, basis: str, cands: list[Candidate], threshold: float,
             note: str = "") -> Verdict:
    m = METRICS[metric]
    ranked = _rank(cands, m.better)
    v = Verdict(model, criterion, metric, basis, ranked, note=note)
    if not ranked:
        return v
    v.winners = [ranked[0].name]
    if len(ranked) > 1:
        best, second = ranked[0], ranked[1]
        v.margin = relative_advantage(best.value, second.value, m.better)
        sig, _rel, method = noise_test(second.samples, best.samples, threshold=threshold)
        v.significant, v.method = sig, method
        if sig is False:
            # Everything within the noise of the best shares the recommendation.
            for c in ranked[1:]:
                s2, _, _ = noise_test(c.samples, best.samples, threshold=threshold)
                if s2 is False:
                    v.winners.append(c.name)
    return v


def _throughput_verdicts(model: str, slo: pd.DataFrame, levels: pd.DataFrame, pdf: pd.DataFrame,
                         threshold: float) -> list[Verdict]:
    """Throughput at the SLO (if searched) and max valid closed-loop throughput (if measured, or no SLO search)."""
    out: list[Verdict] = []
    s = slo[slo["model"] == model] if not slo.empty else slo
    if not s.empty:
        # a search the machine decided (its probes failed for other work, steal or the generator) is no candidate:
        # its rate is only a lower bound, or nothing was measured
        # One candidate per deployment: its repeats' searches are its samples (median as the value), so the runner-up
        # is another deployment, not another repeat of the winner.  A search that met no rate counts as 0 rps.
        cands, missed, machine = [], [], []
        for name, g in s.groupby("name", sort=False):
            rows = [r for r in g.itertuples() if not (isinstance(r.machine_limited, str) and not r.generator_limited)]
            if len(rows) < len(g):
                machine.append(name if not rows else f"{name} ({len(g) - len(rows)} of {len(g)} searches)")
            if not rows:
                continue
            vals = [0.0 if r.max_rate_rps is None or pd.isna(r.max_rate_rps) else float(r.max_rate_rps) for r in rows]
            if not any(vals):
                missed.append(name)
                continue
            cands.append(Candidate(name, float(np.median(vals)), vals, record_ids=[r.record_id for r in rows]))
        note = "; ".join(x for x in (f"no rate met the SLO: {', '.join(missed)}" if missed else "",
                                     f"left out, the machine limited their probes: {', '.join(machine)}"
                                     if machine else "") if x)
        p99 = s["slo_p99_s"].dropna()
        basis = f"highest arrival rate with p99 ≤ {METRICS['latency_p99_s'].format(p99.iloc[0])}" if len(p99) else ""
        out.append(_verdict(model, "Throughput at the SLO", "slo_max_rate_rps", basis, cands, threshold, note))
    lv = levels[(levels["model"] == model) & (levels["kind"] == "closed_loop")] if not levels.empty else levels
    if not lv.empty or s.empty:
        cands = []
        flagged = []
        for name, g in (lv.groupby("name", sort=False) if not lv.empty else []):
            gv = g[g["valid"]]
            if gv.empty:
                flagged.append(name)
                continue
            row = gv.loc[gv["throughput_rps"].idxmax()]
            reps = pdf[(pdf["name"] == name) & (pdf["model"] == model) & (pdf["workload"] == row["workload"])
                       & (pdf["load"] == row["load"])]
            cands.append(Candidate(name, row["throughput_rps"], list(reps["throughput_rps"].dropna()),
                                   basis=row["load_label"], record_ids=list(reps["record_id"])))
        note = "" if not s.empty else "no slo_search workload in this suite"
        if flagged:
            note += ("; " if note else "") + f"no valid point for {', '.join(flagged)} (excluded)"
        out.append(_verdict(model, "Max throughput (closed loop)", "throughput_rps",
                            "highest valid closed-loop load level (median of repeats)", cands, threshold, note))
    return out


def _latency_verdict(model: str, pdf: pd.DataFrame, threshold: float) -> Verdict:
    """p50 latency at concurrency 1 (else the lowest closed-loop concurrency measured)."""
    lv = pdf[(pdf["model"] == model) & (pdf["kind"] == "closed_loop")] if not pdf.empty else pdf
    cands, note = [], ""
    if not lv.empty:
        lowest = 1.0 if (lv["load"] == 1).any() else float(lv["load"].min())
        if lowest != 1.0:
            note = f"no concurrency-1 point; using concurrency {lowest:g}"
        for name, g in lv[lv["load"] == lowest].groupby("name", sort=False):
            use = g[g["valid"]] if g["valid"].any() else g
            samples = list(use["latency_p50_s"].dropna())
            if samples:
                cands.append(Candidate(name, float(np.median(samples)), samples, basis=f"c={lowest:g}",
                                       record_ids=list(use["record_id"])))
                if not g["valid"].any():
                    note = (note + "; " if note else "") + f"{name}: only flagged points"
        basis = f"p50 latency at concurrency {lowest:g}"
    else:
        basis = "p50 latency at concurrency 1"
        note = "no closed-loop points"
    return _verdict(model, "Latency at low load", "latency_p50_s", basis, cands, threshold, note)


def _memory_verdict(d: RunData, model: str, pdf: pd.DataFrame, threshold: float) -> Verdict:
    """Peak PSS of the server tree while serving this model (per repeat: max over load levels), else idle PSS."""
    mv = pdf[pdf["model"] == model] if not pdf.empty else pdf
    cands = []
    note = ""
    if not mv.empty and mv["server_pss_bytes"].notna().any():
        for name, g in mv.groupby("name", sort=False):
            per_rep = g.groupby("repeat")["server_pss_bytes"].max().dropna()
            if len(per_rep):
                cands.append(Candidate(name, float(np.median(per_rep)), list(per_rep),
                                       record_ids=list(g["record_id"])))
        basis = ("peak PSS of the server process tree while serving the model, median over repeats "
                 "(all suite models loaded)")
    else:
        for c in d.cell_df.itertuples():
            if c.idle_pss_bytes is not None and not pd.isna(c.idle_pss_bytes):
                cands.append(Candidate(c.name, c.idle_pss_bytes, [c.idle_pss_bytes], record_ids=[c.record_id]))
        basis = "idle PSS after start-up (no load measurements)"
    return _verdict(model, "Memory", "server_pss_bytes" if "peak" in basis else "idle_pss_bytes", basis,
                    cands, threshold, note)


def _cold_start_verdict(d: RunData, model: str, threshold: float) -> Verdict:
    """Cold start: a property of the deployment, one sample per cell."""
    cands = [Candidate(c.name, c.cold_start_s, [c.cold_start_s], record_ids=[c.record_id])
             for c in d.cell_df.itertuples() if c.status == "ok" and c.cold_start_s is not None
             and not pd.isna(c.cold_start_s)]
    return _verdict(model, "Cold start", "cold_start_s", "spawn → first verified answer (all suite models)",
                    cands, threshold)


def summary(d: RunData, levels: pd.DataFrame | None = None, threshold: float = 0.05) -> list[Verdict]:
    """Per model: best by throughput at the SLO (else max valid closed-loop throughput), by p50 at concurrency 1,
    by memory (peak PSS while serving the model), by cold start."""
    levels = load_levels(d) if levels is None else levels
    pdf = d.point_df.copy()
    if not pdf.empty:
        pdf["name"] = point_names(d, pdf)
    out: list[Verdict] = []
    slo = slo_table(d)
    for model in d.models:
        out.extend(_throughput_verdicts(model, slo, levels, pdf, threshold))  # 1) throughput
        out.append(_latency_verdict(model, pdf, threshold))  # 2) latency at low load
        out.append(_memory_verdict(d, model, pdf, threshold))  # 3) memory
        out.append(_cold_start_verdict(d, model, threshold))  # 4) cold start
    return out


def summary_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    rows = []
    for v in verdicts:
        for rank, c in enumerate(v.candidates, 1):
            rows.append({"model": v.model, "criterion": v.criterion, "metric": v.metric, "unit": METRICS[v.metric].unit,
                         "better": METRICS[v.metric].better, "rank": rank, "name": c.name, "value": c.value,
                         "samples": len(c.samples), "recommended": c.name in v.winners,
                         "margin_to_runner_up": v.margin if rank == 1 else None,
                         "significant": v.significant if rank == 1 else None,
                         "method": v.method if rank == 1 else None, "basis": v.basis, "note": v.note})
    return pd.DataFrame(rows, columns=["model", "criterion", "metric", "unit", "better", "rank", "name", "value",
                                       "samples", "recommended", "margin_to_runner_up", "significant", "method",
                                       "basis", "note"])


# ---- in-process overhead ---------------------------------------------------------------------------------------------
def inprocess_table(d: RunData) -> pd.DataFrame:
    rows = []
    for r in d.inprocess:
        h = histogram(r.get("histogram"))
        lat = r.get("latency_s") or {}
        rows.append({"model": r.get("model"), "batch": int(r.get("batch") or 1), "threads": r.get("threads"),
                     "format": r.get("format"), "device": r.get("device"),
                     "throughput_rps": METRICS["inprocess_throughput_rps"].extract(r),
                     "samples_per_s": r.get("samples_per_s"),
                     "latency_p50_s": h.percentile(50) if h is not None else lat.get("p50"),
                     "latency_p99_s": h.percentile(99) if h is not None else lat.get("p99"),
                     "cell": r.get("cell"), "workers": r.get("workers", 1), "record_id": r.get("id")})
    return pd.DataFrame(rows, columns=["model", "batch", "threads", "format", "device", "throughput_rps",
                                       "samples_per_s", "latency_p50_s", "latency_p99_s", "cell", "workers",
                                       "record_id"])


def _cell_config(d: RunData, cell: str) -> dict:
    for c in d.cells:
        if c.get("cell") == cell:
            return c.get("config") or {}
    return {}


def _deployment_knobs(d: RunData, cell: str, deployment: str) -> tuple[Any, Any]:
    cfg = _cell_config(d, cell)
    threads, fmt = cfg.get("threads"), cfg.get("model_format") or cfg.get("format")
    if threads is None or fmt is None:
        for dep in (d.meta.get("suite") or {}).get("deployments") or []:
            if dep.get("label") == deployment:
                threads = threads if threads is not None else dep.get("threads")
                fmt = fmt or dep.get("model_format")
    return threads, fmt


def overhead(d: RunData, levels: pd.DataFrame) -> pd.DataFrame:
    """Per cell x model x batch: p50 at concurrency 1 minus the in-process p50 (same model/batch/threads/format),
    and the best valid closed-loop throughput as a ratio to the in-process throughput."""
    ip = inprocess_table(d)
    cols = ["name", "framework", "deployment", "model", "batch", "threads", "format", "server_p50_s",
            "inprocess_p50_s", "latency_overhead_s", "server_throughput_rps", "inprocess_throughput_rps",
            "throughput_ratio", "server_load"]
    if ip.empty or levels.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    cl = levels[levels["kind"] == "closed_loop"]
    for (name, cell, fw, dep, model, batch), g in cl.groupby(["name", "cell", "framework", "deployment", "model",
                                                              "batch"], sort=False):
        threads, fmt = _deployment_knobs(d, cell, dep)
        cand = ip[(ip["model"] == model) & (ip["batch"] == batch)]
        own = cand[cand["cell"] == cell]  # measured for this cell, on its cores, just before its server started
        cand = own if not own.empty else cand[cand["cell"].isna()] if cand["cell"].isna().any() else cand
        exact = cand
        if threads is not None:
            exact = exact[exact["threads"] == threads]
        if fmt is not None:
            exact = exact[exact["format"] == fmt]
        ref = exact if not exact.empty else cand
        if ref.empty:
            continue
        ref = ref.iloc[0]
        c1 = g[g["load"] == 1]
        server_p50 = float(c1["latency_p50_s"].iloc[0]) if not c1.empty else np.nan
        gv = g[g["valid"]]
        best = gv.loc[gv["throughput_rps"].idxmax()] if not gv.empty else None
        rows.append({
            "name": name, "framework": fw, "deployment": dep, "model": model, "batch": batch,
            "threads": ref["threads"], "format": ref["format"], "server_p50_s": server_p50,
            "inprocess_p50_s": ref["latency_p50_s"],
            "latency_overhead_s": server_p50 - ref["latency_p50_s"] if not np.isnan(server_p50) else np.nan,
            "server_throughput_rps": best["throughput_rps"] if best is not None else np.nan,
            "inprocess_throughput_rps": ref["throughput_rps"],
            "throughput_ratio": (best["throughput_rps"] / ref["throughput_rps"]) if best is not None and
            ref["throughput_rps"] else np.nan,
            "server_load": best["load_label"] if best is not None else None,
        })
    return pd.DataFrame(rows, columns=cols)


# ---- validity --------------------------------------------------------------------------------------------------------
def flagged_points(d: RunData) -> pd.DataFrame:
    df = d.point_df
    cols = ["name", "model", "workload", "load_label", "repeat", "flags", "throughput_rps", "latency_p99_s",
            "error_rate", "generator_cpu_pct", "record_id"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    bad = df[~df["valid"] | (df["flags"] != "")].copy()
    bad["name"] = point_names(d, bad)
    return bad[cols].reset_index(drop=True)


def problem_cells(d: RunData) -> pd.DataFrame:
    c = d.cell_df
    return c[c["status"] != "ok"].reset_index(drop=True) if not c.empty else c


# ---- feature matrix --------------------------------------------------------------------------------------------------
_CLAIM_PATTERNS = [
    ("not_supported", r"^(no\b|not\b|none\b|unsupported|false\b|n/a|✗|✘|❌)"),
    ("partial", r"^(partial|partly|limited|some\b|experimental|via\b|with\b|plugin|workaround|~)"),
    ("supported", r"^(yes\b|supported|full|native|true\b|builtin|built-in|✓|✔|✅)"),
]


def normalize_claim(claim: Any) -> str | None:
    """A docs/survey claim as a verdict (supported | partial | not_supported), or ``None`` when unclear/absent."""
    if claim is None:
        return None
    if isinstance(claim, bool):
        return "supported" if claim else "not_supported"
    text = str(claim).strip().lower().replace("_", " ").replace("-", " ")
    if not text:
        return None
    if text.startswith("not supported") or text.startswith("not_supported"):
        return "not_supported"
    for verdict, pat in _CLAIM_PATTERNS:
        if re.match(pat, text):
            return verdict
    return None


def disagrees(verdict: str | None, claim: Any) -> bool:
    """A measured verdict contradicts a claim (only conclusive verdicts can disagree)."""
    norm = normalize_claim(claim)
    if verdict not in ("supported", "partial", "not_supported") or norm is None:
        return False
    return norm != verdict


@dataclass
class MatrixCell:
    framework: str
    feature: str
    verdict: str
    evidence: list[Any]
    docs_claim: str | None
    survey_claim: str | None
    detail: dict
    record_id: str | None
    reason: str = ""
    disagree_docs: bool = False
    disagree_survey: bool = False

    @property
    def disagreement(self) -> bool:
        return self.disagree_docs or self.disagree_survey

    @property
    def anchor(self) -> str:
        return f"probe-{self.framework}-{self.feature}".replace("/", "-")


def feature_matrix(d: RunData) -> tuple[list[str], list[str], dict[tuple[str, str], MatrixCell]]:
    """(frameworks, features, {(framework, feature): MatrixCell}) from probe records."""
    cells: dict[tuple[str, str], MatrixCell] = {}
    for p in d.probes:
        fw, feat = p.get("framework"), p.get("feature")
        if not fw or not feat:
            continue
        ev = p.get("evidence")
        ev = ev if isinstance(ev, list) else ([] if ev is None else [ev])
        detail = {}
        for key in ("detail", "metrics"):
            if isinstance(p.get(key), dict):
                detail.update(p[key])
        verdict = str(p.get("verdict") or "not_run")
        mc = MatrixCell(fw, feat, verdict, ev, p.get("docs_claim"), p.get("survey_claim"), detail, p.get("id"),
                        reason=str(p.get("reason") or ""))
        mc.disagree_docs = disagrees(verdict, mc.docs_claim)
        mc.disagree_survey = disagrees(verdict, mc.survey_claim)
        cells[(fw, feat)] = mc
    fws = sorted({k[0] for k in cells}, key=framework_sort_key)
    feats = [f for f in FEATURES if any(k[1] == f for k in cells)] + sorted(
        {k[1] for k in cells} - set(FEATURES))
    return fws, feats, cells


def _flatten(prefix: str, v: Any, out: dict[str, float]) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), x, out)
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        out[prefix] = float(v)


def guess_unit(key: str) -> str:
    k = key.lower()
    if "bytes" in k:
        return "bytes"
    if "speedup" in k or "speed_up" in k or "ratio" in k or k.endswith("_x"):
        return "ratio"
    if "pct" in k or "percent" in k:
        return "%"
    if "rps" in k or "throughput" in k:
        return "rps"
    if k.endswith("_s") or "latency" in k or "seconds" in k or k.endswith("_sec"):
        return "s"
    if k.endswith("_ms"):
        return "ms"
    return ""


def probe_metrics(d: RunData) -> pd.DataFrame:
    """Numeric detail/metrics of probe records, tidy: framework, feature, metric, value, unit."""
    rows = []
    for p in d.probes:
        flat: dict[str, float] = {}
        for key in ("metrics", "detail"):
            if isinstance(p.get(key), dict):
                _flatten("", p[key], flat)
        for k, v in flat.items():
            rows.append({"framework": p.get("framework"), "feature": p.get("feature"), "metric": k, "value": v,
                         "unit": guess_unit(k), "verdict": p.get("verdict"), "record_id": p.get("id")})
    df = pd.DataFrame(rows, columns=["framework", "feature", "metric", "value", "unit", "verdict", "record_id"])
    if not df.empty:
        df = df.drop_duplicates(["framework", "feature", "metric"], keep="last")
    return df


# ---- CDF -------------------------------------------------------------------------------------------------------------
def cdf_choice(d: RunData, levels: pd.DataFrame, model: str) -> tuple[str, float, str] | None:
    """(workload, load, label) for the CDF figure: the highest closed-loop load level every cell measured
    (any cell's highest when there is no common one)."""
    lv = levels[(levels["model"] == model) & (levels["kind"] == "closed_loop")] if not levels.empty else levels
    if lv.empty:
        lv = levels[levels["model"] == model] if not levels.empty else levels
        if lv.empty:
            return None
    for workload, g in lv.groupby("workload", sort=False):
        sets = [set(x["load"]) for _, x in g.groupby("name")]
        common = set.intersection(*sets) if sets else set()
        if common:
            load = max(common)
            label = g[g["load"] == load]["load_label"].iloc[0]
            return workload, load, label
    row = lv.iloc[-1]
    return row["workload"], row["load"], row["load_label"]


def cdf_curves(d: RunData, model: str, workload: str, load: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per cell: the merged (over repeats) histogram of the chosen point as (latency_s, cumulative fraction)."""
    from servingbench.measure.stats import LatencyHistogram

    merged: dict[str, Any] = {}
    for r in d.points:
        if r.get("model") != model or r.get("workload") != workload:
            continue
        if load_value(r) != load:
            continue
        h = histogram(r.get("histogram"))
        if h is None:
            continue
        name = d.name(r.get("framework"), r.get("deployment"))
        if name not in merged:
            merged[name] = LatencyHistogram()
        merged[name].merge(h)
    out = []
    order = d.cell_names()
    for name in sorted(merged, key=lambda n: order.index(n) if n in order else 99):
        xs, ps = histogram_cdf(merged[name])
        if len(xs):
            out.append((name, xs, ps))
    return out


def histogram_cdf(h) -> tuple[np.ndarray, np.ndarray]:
    """(values ascending, cumulative fraction) of a LatencyHistogram."""
    pts = h.cdf()
    if isinstance(pts, tuple) and len(pts) == 2:
        xs, ps = pts
    else:
        pts = list(pts)
        xs = [p[0] for p in pts]
        ps = [p[1] for p in pts]
    xs, ps = np.asarray(xs, dtype=float), np.asarray(ps, dtype=float)
    if len(ps) and ps.max() > 1.5:  # percent, not fraction
        ps = ps / 100.0
    return xs, ps


# ---- published results ---------------------------------------------------------------------------------------------
def _published_point(d: RunData, side: dict[str, Any], metric: str) -> tuple[float | None, list[str]]:
    """Median of ``metric`` over the valid points of one deployment at one workload and load (all repeats), with
    the record ids it came from."""
    df = d.point_df
    if df.empty or metric not in df:
        return None, []
    model = side.get("model") or (d.models[0] if d.models else None)
    sel = df[(df["framework"] == side.get("framework")) & (df["deployment"] == side.get("deployment", "default"))
             & (df["workload"] == side.get("workload")) & (df["model"] == model) & df["valid"]
             & ((df["load"] - float(side.get("load") or 0)).abs() < 1e-9)]
    vals = pd.to_numeric(sel[metric], errors="coerce").dropna()
    return (float(vals.median()) if len(vals) else None), list(sel["record_id"])


def published_results(d: RunData) -> pd.DataFrame:
    """One row per published figure of the suite (``published:``): the figure, its source, ours (a median over
    the repeats of valid points, or a ratio of two such medians) and whether they agree within the tolerance."""
    rows = []
    for pub in (d.meta.get("suite") or {}).get("published") or []:
        metric = pub.get("metric")
        ours, ids = _published_point(d, pub.get("of") or {}, metric)
        if pub.get("over"):
            den, ids2 = _published_point(d, pub["over"], metric)
            ours = ours / den if ours is not None and den else None
            ids = ids + ids2
        value, rng, tol = pub.get("value"), pub.get("range"), float(pub.get("tolerance") or 0.25)
        if ours is None:
            verdict = "not measured (no valid point)"
        elif rng:
            verdict = "agrees (inside the range)" if rng[0] <= ours <= rng[1] else "differs (outside the range)"
        else:
            rel = ours / value - 1 if value else float("inf")
            verdict = (f"agrees ({rel:+.0%})" if abs(rel) <= tol else f"differs ({rel:+.0%}, tolerance ±{tol:.0%})")
        rows.append({"claim": pub.get("claim"), "source": pub.get("source"), "metric": metric,
                     "ratio": bool(pub.get("over")), "published": value, "published_range": rng, "ours": ours,
                     "verdict": verdict, "record_ids": " ".join(ids)})
    return pd.DataFrame(rows, columns=["claim", "source", "metric", "ratio", "published", "published_range", "ours",
                                       "verdict", "record_ids"])
