"""Compare two runs: a regression table that flags a change only when repeated measurements show it.

Rows: framework × deployment × model × workload × load × metric, with the value in each run (median of its
samples), the change in percent, the test's p-value and confidence interval, and a verdict: ``regression`` /
``improvement`` / ``within noise`` / ``not beyond threshold`` / ``inconclusive: …`` / ``not comparable: …`` /
a presence change (``measured in A only``, ``ok → failed``).

**Which deployments are compared.**  Deployments are matched by their full recorded configuration (the ``config``
of the run's ``type: "cell"`` record, i.e. ``Deployment.describe()``: framework, models with their key and artifact
sha256, device, workers, threads, batching, model format, cache, auth, TLS, protocol, options), with only the
``label`` left out.  The same configuration under two labels is paired (the output says so); the same label with a
different configuration is *not* compared: its rows say ``not comparable: configuration differs (<fields>)``.  A
deployment whose configuration was not recorded is matched by label, and the method column says so.

**What a sample is.**  One repeat of a load point (point records of the same deployment, model, workload and load
with different ``repeat``).  The measurement windows of one run are *not* samples: they share one server start and
one stretch of machine time, so they miss run-to-run noise.  A point record that is invalid (``validity.valid`` false
or any validity flag) is not a sample; the row says how many were left out.

**The test.**  With at least ``MIN_SAMPLES`` (5) samples on each side a row is flagged only when both agree:

* a two-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, exact for small samples without ties) gives
  ``p < alpha`` (default 0.05); and
* the bootstrap 95 % confidence interval of the ratio of medians B / A (``BOOTSTRAP_RESAMPLES`` percentile resamples,
  fixed seed, so the table is reproducible) lies entirely outside ``1 ± threshold`` (default 5 %).

With fewer samples on a side the verdict is ``inconclusive: N_a vs N_b repeats (need 5 per side)`` (or
``inconclusive (flagged points left out: k)`` when the flagged points are what left fewer than 5), never a
regression.

**False-alarm rate.**  When A and B are drawn from one distribution, a row is flagged with probability at most
``alpha`` (the Mann-Whitney test alone has that size; requiring the interval as well only lowers it; at 5 vs 5 the
exact test's largest p-value below 0.05 is 0.032).  The rate is *per row*: a table of N tested rows has up to
``alpha × N`` false alarms expected when nothing changed (rows of one point share its repeats, so they are not
independent).  The text and HTML outputs print that bound.

**The machines.**  When both runs' ``run.json`` carry the machine canary (a fixed CPU workload timed before and
after every cell, ``servingbench.measure.canary``), its measurements are compared as time per iteration (each
measurement's median over its repetitions: the repetitions of one measurement are taken back to back and share the
machine's state of that moment, so pooling them as independent samples made the test far too sure; see
``canary.per_measurement_times``): the machines *differed* when a two-sided Mann-Whitney test of A's measurements
against B's gives p < ``CANARY_ALPHA`` (0.01) and their medians differ by more than ``CANARY_MIN_DIFF`` (5 %).
Measured with ``scripts/bench_compare.py`` (an unchanged calibration server, runs minutes apart): testing the 140
pooled repetitions called the machines different in 8 of 8 A/A pairs (by 6-14 %, p down to 1e-22) while the
throughputs agreed within 0.4 %; the 20 measurements per run did so in 1 of 8.  Then a timing row (throughput, latency,
throughput at the SLO, cold start) keeps its verdict only when the change goes *against* the machines' difference
(a regression although B's machine was faster, an improvement although it was slower: the machine cannot have
caused it); every other timing row becomes ``inconclusive: the machines differed by X %`` (a "within noise" too: a
faster machine can hide a regression; a row already inconclusive for its own reason keeps it), and the output says
so at the top.  Runs recorded before the canary kept its
repetitions are compared by their medians against ``max(3 × max(rel_spread_a, rel_spread_b), CANARY_MIN_DIFF)``.
Runs without a canary are compared as before, and the output notes ``no canary``.

**Other rows.**  Throughput at the SLO: one value per search; tested like a point (``None``, no rate met, counts
as 0) with ``threshold`` widened by both searches' resolution, and inconclusive with fewer than 5 searches a side.
A search the machine decided (``measure.stats.slo_machine_limited``) is left out like a flagged point.
Cold start and idle memory: one value per server start (each ok cell record; ``repeats`` restart the server);
inconclusive with fewer than 5 a side.  Cold start is judged against ``max(threshold,
METRIC_THRESHOLDS["cold_start_s"])`` (50 %): its start-ups share their run's page cache and CPU speed, so within-run
repeats understate how much it moves between runs.  Presence changes (a point measured in
one run only, a deployment ``ok → failed``) are facts, not samples, and count as regressions when something that
worked is gone.

Example::

    df = compare_runs(Path("results/run-a"), Path("results/run-b"))
    print(render_compare_text(df))
    write_compare_html(df, Path("reports/compare.html"))
"""

from __future__ import annotations

import html
import json
import math
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from servingbench.measure.stats import slo_machine_limited
from servingbench.report.data import RunData, framework_sort_key
from servingbench.report.metrics import METRICS, dig, format_value, load_label

POINT_METRICS = ["throughput_rps", "latency_p50_s", "latency_p99_s"]
#: metrics whose value depends on the machine's speed: the canary can make them inconclusive
TIMING_METRICS = {*POINT_METRICS, "slo_max_rate_rps", "cold_start_s"}
COLUMNS = ["framework", "deployment", "deployment_b", "model", "workload", "load", "metric", "unit", "better", "a",
           "b", "change_pct", "significant", "regression", "verdict", "method", "samples", "n_a", "n_b",
           "flagged_a", "flagged_b", "p_value", "ci_low_pct", "ci_high_pct"]
MIN_SAMPLES = 5
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: the machines differ when the canaries' measurements differ by more than this (median ratio) at p < CANARY_ALPHA
CANARY_MIN_DIFF = 0.05
CANARY_ALPHA = 0.01
#: Cold start is judged against a wider threshold: its start-ups share their run's machine state (page cache, CPU
#: speed), so repeats within a run understate how much it moves between runs.  Measured on the 2-core VM: two runs
#: of an unchanged calibration server, seven start-ups each, differed by 20 % (p = 0.0006; docs/methodology.md).
METRIC_THRESHOLDS = {"cold_start_s": 0.5}
CANARY_SPREADS = 3.0


def _finite(xs: Iterable[Any]) -> list[float]:
    return [float(x) for x in xs
            if x is not None and not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(float(x))]


def _rel(ma: float, mb: float) -> float:
    return (mb - ma) / abs(ma) if ma else (0.0 if mb == ma else math.inf)


# ---- the test ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide_change` for one row.

    Attributes:
        verdict: ``regression`` | ``improvement`` | ``within noise`` | ``not beyond threshold`` |
            ``inconclusive: …``.
        significant: True for ``regression`` and ``improvement`` only.
        regression: True when significant in the worse direction.
        change: relative change of the medians, (median(b) − median(a)) / |median(a)| (nan without data).
        p_value: two-sided Mann-Whitney U p-value (None when not tested).
        ci: bootstrap 95 % interval of median(b) / median(a) (None when not tested).
        method: how it was decided, for the table.
    """

    verdict: str
    significant: bool
    regression: bool
    change: float
    p_value: float | None
    ci: tuple[float, float] | None
    method: str


def _bootstrap_ratio_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of median(b) / median(a); fixed seed: the same data give the same interval."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ma = np.median(a[rng.integers(0, len(a), (BOOTSTRAP_RESAMPLES, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((ma == 0) & (mb == 0), 1.0, mb / ma)
    ratio = ratio[~np.isnan(ratio)]
    if not len(ratio):
        return math.nan, math.nan
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(ratio, [tail, 100 - tail])
    return float(lo), float(hi)


def _mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    if np.all(a == a[0]) and np.all(b == a[0]):
        return 1.0  # every value equal: no evidence of anything (scipy's normal approximation divides by zero)
    from scipy.stats import mannwhitneyu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def decide_change(a: Iterable[float], b: Iterable[float], better: str, threshold: float = 0.05,
                  alpha: float = 0.05, min_samples: int = MIN_SAMPLES, unit_name: str = "repeats") -> Decision:
    """Did a metric change from ``a`` to ``b`` (one value per independent sample, e.g. per repeat)?

    Flagged (``regression``/``improvement``) only when a two-sided Mann-Whitney U test gives ``p < alpha`` *and* the
    bootstrap 95 % interval of median(b)/median(a) lies entirely outside ``[1 − threshold, 1 + threshold]``.  With
    fewer than ``min_samples`` finite values on a side: ``inconclusive``, never flagged.  Per-row false-alarm rate
    when both sides come from one distribution: at most ``alpha``.

    Args:
        a: baseline samples (None / non-finite dropped).
        b: candidate samples.
        better: ``higher`` or ``lower``: which direction is an improvement.
        threshold: smallest relative change worth flagging.
        alpha: size of the Mann-Whitney test.
        min_samples: fewest samples per side for any verdict.
        unit_name: what one sample is, for the messages (``repeats``, ``searches``, ``start-ups``).
    """
    xa, xb = _finite(a), _finite(b)
    rel = _rel(statistics.median(xa), statistics.median(xb)) if xa and xb else math.nan
    sizes = f"{len(xa)} vs {len(xb)} {unit_name}"
    if len(xa) < min_samples or len(xb) < min_samples:
        return Decision(f"inconclusive: {sizes} (need {min_samples} per side)", False, False, rel, None, None,
                        f"not tested: {sizes}")
    va, vb = np.asarray(xa), np.asarray(xb)
    p = _mann_whitney_p(va, vb)
    lo, hi = _bootstrap_ratio_ci(va, vb)
    outside = lo > 1 + threshold or hi < 1 - threshold
    method = (f"Mann-Whitney U p={p:.3g}, bootstrap 95 % CI of B/A medians [{lo:.3f}, {hi:.3f}] "
              f"vs 1 ± {threshold:.0%} ({sizes})")
    if p < alpha and outside:
        worse = rel < 0 if better == "higher" else rel > 0
        verdict = "regression" if worse else "improvement"
        return Decision(verdict, True, worse, rel, p, (lo, hi), method)
    verdict = "within noise" if p >= alpha else "not beyond threshold"
    return Decision(verdict, False, False, rel, p, (lo, hi), method)


# ---- deployments and their pairing -----------------------------------------------------------------------------------
@dataclass
class _Dep:
    framework: str
    label: str
    config: dict | None = None
    status: str | None = None

    @property
    def key(self) -> str | None:
        if self.config is None:
            return None
        return json.dumps({k: v for k, v in self.config.items() if k != "label"}, sort_keys=True, default=str)

    @property
    def name(self) -> str:
        return f"{self.framework}/{self.label}"


@dataclass
class _Pair:
    a: _Dep | None
    b: _Dep | None
    relation: str  # same | relabelled | config unknown | differs | a only | b only
    differs: str = ""

    @property
    def framework(self) -> str:
        return (self.a or self.b).framework  # type: ignore[union-attr]

    @property
    def label_a(self) -> str | None:
        return self.a.label if self.a else None

    @property
    def label_b(self) -> str | None:
        return self.b.label if self.b else None

    @property
    def sort_key(self) -> tuple:
        return framework_sort_key(self.framework), self.label_a or self.label_b or ""


def _dep_label(v: Any) -> str:
    return str(v) if v else "default"


def _deployments(d: RunData) -> dict[tuple[str, str], _Dep]:
    deps: dict[tuple[str, str], _Dep] = {}

    def get(fw: Any, label: Any) -> _Dep:
        k = (str(fw), _dep_label(label))
        if k not in deps:
            deps[k] = _Dep(*k)
        return deps[k]

    for c in d.cell_df.itertuples():
        get(c.framework, c.deployment).status = c.status
    for r in d.cells:
        if isinstance(r.get("config"), dict):
            get(r.get("framework"), r.get("deployment")).config = r["config"]
    for r in [*d.points, *d.slos]:
        get(r.get("framework"), r.get("deployment"))
    return deps


def _flatten(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(x, list) and x and all(isinstance(m, dict) and "name" in m for m in x):
        return _flatten({str(m["name"]): {k: v for k, v in m.items() if k != "name"} for m in x}, prefix)
    return {prefix: x}


def config_differences(a: dict, b: dict, limit: int = 4) -> str:
    """The fields two configurations differ in (``label`` ignored), e.g. ``workers: 1 → 2, models.mlp.key``."""
    fa = _flatten({k: v for k, v in a.items() if k != "label"})
    fb = _flatten({k: v for k, v in b.items() if k != "label"})
    diffs = []
    for k in sorted(set(fa) | set(fb)):
        if k in fa and k in fb and fa[k] == fb[k]:
            continue
        va, vb = fa.get(k, "absent"), fb.get(k, "absent")
        short = all(not isinstance(v, (dict, list)) and len(str(v)) <= 20 for v in (va, vb))
        diffs.append(f"{k}: {va} → {vb}" if short else k)
    if len(diffs) > limit:
        diffs = diffs[:limit] + [f"{len(diffs) - limit} more"]
    return ", ".join(diffs) or "?"


def pair_deployments(da: RunData, db: RunData) -> list[_Pair]:
    """Deployments of A and B paired by configuration (label ignored), then same label without a recorded
    configuration, then same label with a different configuration (not comparable); the rest are in one run only."""
    ua, ub = _deployments(da), _deployments(db)
    pairs: list[_Pair] = []

    def take(match, relation: str) -> None:
        for ka in sorted(ua, key=lambda k: (framework_sort_key(k[0]), k[1])):
            if ka not in ua:
                continue
            for kb in sorted(ub, key=lambda k: (framework_sort_key(k[0]), k[1])):
                x, y = ua[ka], ub[kb]
                if x.framework == y.framework and match(x, y):
                    differs = config_differences(x.config, y.config) if relation == "differs" else ""
                    pairs.append(_Pair(ua.pop(ka), ub.pop(kb), relation, differs))
                    break

    take(lambda x, y: x.key is not None and x.key == y.key and x.label == y.label, "same")
    take(lambda x, y: x.key is not None and x.key == y.key, "relabelled")
    take(lambda x, y: x.label == y.label and (x.key is None or y.key is None), "config unknown")
    take(lambda x, y: x.label == y.label, "differs")
    pairs += [_Pair(x, None, "a only") for x in ua.values()] + [_Pair(None, y, "b only") for y in ub.values()]
    return sorted(pairs, key=lambda p: p.sort_key)


def _pairing_notes(pairs: list[_Pair]) -> list[str]:
    notes = []
    for p in pairs:
        if p.relation == "relabelled":
            notes.append(f"paired by configuration under different labels: {p.a.name} (A) = {p.b.name} (B)")
        elif p.relation == "differs":
            notes.append(f"not comparable: {p.a.name} has a different configuration in A and B ({p.differs}): "
                         "its rows are shown, not judged")
        elif p.relation == "config unknown":
            side = "A" if p.a.config is None else "B"
            notes.append(f"{p.a.name}: configuration not recorded in run {side}: matched by label")
    return notes


# ---- the machines --------------------------------------------------------------------------------------------------
def canary_check(a: dict, b: dict) -> dict[str, Any]:
    """Compare the two runs' machine canaries (``run.json`` ``canary``).

    Returns ``{"status": "differ" | "agree" | "none" | "one", "diff": relative difference B/A − 1 of the canary's
    time (> 0: B's machine was slower) or None, "limit": the smallest difference that counts, "p_value": the
    Mann-Whitney p of the measurements, one value each (None for the median rule), "note": one line for the
    output}``.
    """
    from servingbench.measure.canary import per_measurement_times

    def read(meta: dict) -> dict | None:
        c = meta.get("canary")
        if not isinstance(c, dict):
            return None
        reps = per_measurement_times(c.get("samples"))
        m, s = _finite([c.get("median_s")]), _finite([c.get("rel_spread")])
        if len(reps) >= MIN_SAMPLES:
            return {"reps": np.asarray(reps), "spread": max(0.0, s[0]) if s else 0.0}
        return {"median": m[0], "spread": max(0.0, s[0])} if m and m[0] > 0 and s else None

    ca, cb = read(a), read(b)
    if ca is None and cb is None:
        return {"status": "none", "diff": None, "limit": None, "p_value": None,
                "note": "no canary in either run: whether the machines performed alike was not checked"}
    if ca is None or cb is None:
        return {"status": "one", "diff": None, "limit": None, "p_value": None,
                "note": f"canary in run {'A' if ca else 'B'} only: "
                        "whether the machines performed alike was not checked"}
    limit = CANARY_MIN_DIFF
    if "reps" in ca and "reps" in cb:
        ma, mb = float(np.median(ca["reps"])), float(np.median(cb["reps"]))
        p = _mann_whitney_p(ca["reps"], cb["reps"])
        diff = mb / ma - 1.0
        differ = p < CANARY_ALPHA and abs(diff) > limit
        how = (f"{ma * 1e6:.4g} µs → {mb * 1e6:.4g} µs per iteration, {diff * 100:+.1f} %, "
               f"p = {p:.2g} over {len(ca['reps'])} vs {len(cb['reps'])} measurements")
        rule = f"differ when p < {CANARY_ALPHA} and more than {limit * 100:.0f} %"
    else:  # a run recorded before the canary kept its repetitions: medians against the canaries' own noise
        ma = float(np.median(ca["reps"])) if "reps" in ca else ca["median"]
        mb = float(np.median(cb["reps"])) if "reps" in cb else cb["median"]
        p = None
        diff = mb / ma - 1.0
        limit = max(CANARY_SPREADS * max(ca["spread"], cb["spread"]), CANARY_MIN_DIFF)
        differ = abs(diff) > limit
        how = f"{ma * 1e3:.4g} ms → {mb * 1e3:.4g} ms, {diff * 100:+.1f} %"
        rule = f"medians only: differ beyond {limit * 100:.1f} %"
    if differ:
        faster = "slower" if diff > 0 else "faster"
        return {"status": "differ", "diff": diff, "limit": limit, "p_value": p,
                "note": f"the machines differed: canary {how} ({rule}); B's machine was {faster}: a timing row keeps "
                        f"its verdict only if B changed against that, every other one is inconclusive"}
    return {"status": "agree", "diff": diff, "limit": limit, "p_value": p,
            "note": f"canary: the machines agree ({how}; {rule})"}


# ---- samples -------------------------------------------------------------------------------------------------------
def _flagged(rec: dict) -> bool:
    return dig(rec, "validity", "valid") is False or bool(dig(rec, "validity", "flags"))


def _load_key(rec: dict) -> str:
    label = load_label(rec)
    stage = (rec.get("load") or {}).get("stage")
    return f"{label} (stage {stage})" if stage is not None else label


def _point_groups(d: RunData) -> dict[tuple, list[dict]]:
    """(framework, deployment, model, workload, load) -> the records of that load point (SLO-search steps
    excluded), one per repeat (a later record of the same repeat replaces an earlier one)."""
    out: dict[tuple, dict[int, dict]] = {}
    for r in d.points:
        if r.get("kind") == "slo_search":
            continue
        key = (r.get("framework"), _dep_label(r.get("deployment")), r.get("model"), r.get("workload"), _load_key(r))
        out.setdefault(key, {})[int(r.get("repeat") or 0)] = r
    return {k: [v[rep] for rep in sorted(v)] for k, v in out.items()}


@dataclass
class _Side:
    samples: list[float]  # one per valid repeat
    flagged: int  # repeats left out for validity flags
    shown: float  # the value displayed (median of samples; of the flagged values when no sample is left)


def _side(recs: list[dict], metric: str) -> _Side:
    m = METRICS[metric]
    good = _finite(m.extract(r) for r in recs if not _flagged(r))
    bad = _finite(m.extract(r) for r in recs if _flagged(r))
    flagged = sum(_flagged(r) for r in recs)
    vals = good or bad
    return _Side(good, flagged, statistics.median(vals) if vals else math.nan)


# ---- rows ----------------------------------------------------------------------------------------------------------
def _base_row(pair: _Pair, model: Any, workload: Any, load: Any, metric: str) -> dict[str, Any]:
    m = METRICS.get(metric)
    return {"framework": pair.framework, "deployment": pair.label_a or pair.label_b,
            "deployment_b": pair.label_b or pair.label_a, "model": model, "workload": workload, "load": load,
            "metric": metric, "unit": m.unit if m else "", "better": m.better if m else "higher",
            "a": np.nan, "b": np.nan, "change_pct": np.nan, "significant": False, "regression": False,
            "verdict": "", "method": "", "samples": "", "n_a": 0, "n_b": 0, "flagged_a": 0, "flagged_b": 0,
            "p_value": np.nan, "ci_low_pct": np.nan, "ci_high_pct": np.nan}


def _apply(row: dict[str, Any], dec: Decision) -> None:
    row.update(significant=dec.significant, regression=dec.regression, verdict=dec.verdict, method=dec.method,
               change_pct=dec.change * 100 if math.isfinite(dec.change) else np.nan,
               p_value=np.nan if dec.p_value is None else dec.p_value)
    if dec.ci is not None:
        row.update(ci_low_pct=(dec.ci[0] - 1) * 100, ci_high_pct=(dec.ci[1] - 1) * 100)


def _judge(row: dict[str, Any], pair: _Pair, sa: _Side, sb: _Side, threshold: float, alpha: float,
           unit_name: str) -> dict[str, Any]:
    """Fill a row that has values on both sides: not comparable, inconclusive, or the test's verdict."""
    row.update(a=sa.shown, b=sb.shown, n_a=len(sa.samples), n_b=len(sb.samples), flagged_a=sa.flagged,
               flagged_b=sb.flagged, samples=unit_name)
    if math.isfinite(sa.shown) and math.isfinite(sb.shown):
        rel = _rel(sa.shown, sb.shown)
        row["change_pct"] = rel * 100 if math.isfinite(rel) else np.nan
    if pair.relation == "differs":
        row.update(verdict=f"not comparable: configuration differs ({pair.differs})",
                   method="deployments matched by label only")
        return row
    dec = decide_change(sa.samples, sb.samples, row["better"], threshold, alpha, unit_name=unit_name)
    _apply(row, dec)
    if math.isnan(row["change_pct"]) and math.isfinite(sa.shown) and math.isfinite(sb.shown):
        row["change_pct"] = _rel(sa.shown, sb.shown) * 100
    k = sa.flagged + sb.flagged
    if dec.p_value is None and k:
        if min(len(sa.samples) + sa.flagged, len(sb.samples) + sb.flagged) >= MIN_SAMPLES:
            row["verdict"] = (f"inconclusive (flagged points left out: {k}): {len(sa.samples)} vs "
                              f"{len(sb.samples)} valid {unit_name}, need {MIN_SAMPLES} per side")
        else:
            row["verdict"] = f"{dec.verdict}; flagged points left out: {k}"
        if not sa.samples or not sb.samples:
            row["method"] += "; shown values include flagged points"
    elif k:
        row["method"] += f"; flagged points left out: {k}"
    if pair.relation == "relabelled":
        row["method"] += f"; paired by configuration ({pair.label_a} = {pair.label_b})"
    elif pair.relation == "config unknown":
        row["method"] += "; matched by label (configuration not recorded)"
    return row


def _machines_differ(row: dict[str, Any], canary: dict[str, Any]) -> None:
    """When the machines differed, a timing row keeps its verdict only if the change goes against the machines'
    difference (a regression although B's machine was faster, an improvement although it was slower)."""
    if canary["status"] != "differ" or row["metric"] not in TIMING_METRICS or row["verdict"].startswith("not comp"):
        return
    if row["verdict"].startswith(("measured in", "SLO met in neither", "inconclusive")):
        return  # a fact, or already inconclusive for its own reason (too few samples, flagged points): that stays
    b_slower = canary["diff"] > 0
    if (row["verdict"] == "regression" and not b_slower) or (row["verdict"] == "improvement" and b_slower):
        row["method"] += (f"; kept although the machines differed by {canary['diff'] * 100:+.1f} %: B's machine was "
                          f"{'slower' if b_slower else 'faster'}, so it cannot explain this")
        return
    before = row["verdict"]
    row.update(significant=False, regression=False,
               verdict=f"inconclusive: the machines differed by {canary['diff'] * 100:+.1f} %",
               method=f"{row['method']}; without the canary: {before}")


def _slo_resolution(rec: dict) -> float:
    """Relative width of the search's final bracket (0 when it has no failing rate above the answer)."""
    mr = rec.get("max_rate")
    if not mr:
        return 0.0
    above = [p.get("rate") for p in rec.get("points") or [] if not p.get("ok") and (p.get("rate") or 0) > mr]
    return (min(above) / mr - 1.0) if above else 0.0


def _slo_groups(d: RunData) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for s in d.slos:
        out.setdefault((s.get("framework"), _dep_label(s.get("deployment")), s.get("model"), s.get("workload")),
                       []).append(s)
    return out


def _slo_row(pair: _Pair, model: Any, workload: Any, xa: list[dict], xb: list[dict], threshold: float,
             alpha: float) -> dict[str, Any]:
    row = _base_row(pair, model, workload, "SLO", "slo_max_rate_rps")
    met_a = [float(s["max_rate"]) for s in xa if _finite([s.get("max_rate")])]
    met_b = [float(s["max_rate"]) for s in xb if _finite([s.get("max_rate")])]
    # A search the machine decided (slo_machine_limited: a lower bound, or nothing measured) is left out like a
    # flagged point; a search that met the SLO at no rate counts as 0 rps: a (bad) outcome, not a missing value.
    ga = [s for s in xa if not slo_machine_limited(s)]
    gb = [s for s in xb if not slo_machine_limited(s)]
    va = [float(s["max_rate"]) if _finite([s.get("max_rate")]) else 0.0 for s in ga]
    vb = [float(s["max_rate"]) if _finite([s.get("max_rate")]) else 0.0 for s in gb]
    res = (statistics.median([_slo_resolution(s) for s in xa]) + statistics.median([_slo_resolution(s) for s in xb])
           if xa and xb else 0.0)
    if not xa or not xb:
        vals = met_a or met_b
        row.update(a=met_a[0] if met_a else np.nan, b=met_b[0] if met_b else np.nan, n_a=len(xa), n_b=len(xb),
                   samples="searches", significant=bool(vals), regression=bool(xa and met_a),
                   verdict=f"measured in {'A' if xa else 'B'} only", method="one run only")
        return row
    side_a = _Side(va, len(xa) - len(ga), statistics.median(met_a) if met_a else math.nan)
    side_b = _Side(vb, len(xb) - len(gb), statistics.median(met_b) if met_b else math.nan)
    row = _judge(row, pair, side_a, side_b, threshold + res, alpha, "searches")
    row["method"] += f"; threshold {threshold:.0%} + search resolution {res:.0%}"
    if pair.relation == "differs":
        return row
    if not met_a and not met_b:
        row.update(verdict="SLO met in neither run", significant=False, regression=False, change_pct=np.nan)
    elif (not met_a or not met_b) and not row["significant"] and row["verdict"].startswith("inconclusive"):
        row["verdict"] = f"{row['verdict']}; SLO met in {'A' if met_a else 'B'} only"
    return row


def _cell_values(d: RunData, dep: _Dep, metric: str) -> list[float]:
    """One value per server start of a deployment: every ok cell record of it (today one per run)."""
    m = METRICS[metric]
    return _finite(m.extract(r) for r in d.cells
                   if r.get("framework") == dep.framework and _dep_label(r.get("deployment")) == dep.label
                   and r.get("status") == "ok")


def _load_sort(label: str) -> tuple[int, float, str]:
    num = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", label or "")
    kind = 0 if (label or "").startswith("c=") else 1 if num else 2
    return kind, float(num.group()) if num else 0.0, label or ""


def _point_rows(pair: _Pair, ga: dict, gb: dict, threshold: float, alpha: float) -> list[dict[str, Any]]:
    """Rows of one deployment pair's load points: one per (model, workload, load, metric) measured in either run."""
    rows: list[dict[str, Any]] = []
    ka = (pair.framework, pair.label_a)
    kb = (pair.framework, pair.label_b)
    points = {k[2:] for k in ga if pair.a and k[:2] == ka} | {k[2:] for k in gb if pair.b and k[:2] == kb}
    for model, workload, load in sorted(points, key=lambda k: (k[0] or "", k[1] or "", _load_sort(k[2]))):
        ra = ga.get((*ka, model, workload, load), []) if pair.a else []
        rb = gb.get((*kb, model, workload, load), []) if pair.b else []
        for metric in POINT_METRICS:
            sa, sb = _side(ra, metric), _side(rb, metric)
            if math.isnan(sa.shown) and math.isnan(sb.shown):
                continue
            row = _base_row(pair, model, workload, load, metric)
            if not ra or not rb or math.isnan(sa.shown) or math.isnan(sb.shown):
                only = "A" if ra and not math.isnan(sa.shown) else "B"
                row.update(a=sa.shown, b=sb.shown, n_a=len(sa.samples), n_b=len(sb.samples),
                           flagged_a=sa.flagged, flagged_b=sb.flagged, samples="repeats", significant=True,
                           regression=only == "A", verdict=f"measured in {only} only", method="one run only")
                if pair.relation == "differs":
                    row.update(significant=False, regression=False,
                               verdict=f"measured in {only} only (not comparable: configuration differs "
                                       f"({pair.differs}))")
            else:
                _judge(row, pair, sa, sb, threshold, alpha, "repeats")
            rows.append(row)
    return rows


def _slo_rows(pair: _Pair, sa_: dict, sb_: dict, threshold: float, alpha: float) -> list[dict[str, Any]]:
    """Rows of one deployment pair's throughput at the SLO: one per (model, workload) searched in either run."""
    rows: list[dict[str, Any]] = []
    ka = (pair.framework, pair.label_a)
    kb = (pair.framework, pair.label_b)
    slos = {k[2:] for k in sa_ if pair.a and k[:2] == ka} | {k[2:] for k in sb_ if pair.b and k[:2] == kb}
    for model, workload in sorted(slos, key=lambda k: (k[0] or "", k[1] or "")):
        xa = sa_.get((*ka, model, workload), []) if pair.a else []
        xb = sb_.get((*kb, model, workload), []) if pair.b else []
        if not any(_finite([s.get("max_rate")]) for s in [*xa, *xb]) and not (xa and xb):
            continue  # in one run only and met nowhere: nothing to show
        rows.append(_slo_row(pair, model, workload, xa, xb, threshold, alpha))
    return rows


def _deployment_rows(pair: _Pair, da: RunData, db: RunData, threshold: float, alpha: float) -> list[dict[str, Any]]:
    """Per deployment: cold start and idle memory (one value per server start), and a status change."""
    rows: list[dict[str, Any]] = []
    if pair.a and pair.b and pair.a.status == "ok" and pair.b.status == "ok":
        for metric in ("cold_start_s", "idle_pss_bytes"):
            va, vb = _cell_values(da, pair.a, metric), _cell_values(db, pair.b, metric)
            if va and vb:
                row = _base_row(pair, "(all)", "start-up", "–", metric)
                rows.append(_judge(row, pair, _Side(va, 0, statistics.median(va)),
                                   _Side(vb, 0, statistics.median(vb)),
                                   max(threshold, METRIC_THRESHOLDS.get(metric, 0.0)), alpha, "start-ups"))
    # deployments ok in one run and failed / skipped / absent in the other
    st_a = pair.a.status if pair.a else None
    st_b = pair.b.status if pair.b else None
    if (st_a == "ok") != (st_b == "ok"):
        row = _base_row(pair, "(all)", "status", "–", "status")
        row.update(significant=True, regression=st_a == "ok", verdict=f"{st_a or 'absent'} → {st_b or 'absent'}",
                   method="cell status", n_a=int(st_a == "ok"), n_b=int(st_b == "ok"))
        if pair.relation == "differs":
            row.update(significant=False, regression=False,
                       verdict=f"{row['verdict']} (not comparable: configuration differs ({pair.differs}))")
        rows.append(row)
    return rows


def compare_runs(a: Path, b: Path, threshold: float = 0.05, alpha: float = 0.05) -> pd.DataFrame:
    """Regression table of run ``b`` against run ``a`` (the rules are in the module docstring).

    Args:
        a: the baseline results directory.
        b: the candidate results directory.
        threshold: smallest relative change of the medians worth flagging (the bootstrap interval of the ratio of
            medians must lie outside ``1 ± threshold``).
        alpha: size of the two-sided Mann-Whitney U test (per-row false-alarm rate).
    Returns:
        One row per (framework, deployment pair, model, workload, load, metric) present in either run, columns
        ``COLUMNS``; ``change_pct`` is (b − a) / a × 100 of the medians; ``regression`` is True for tested changes
        in the worse direction and for things that worked in A and are gone in B.  ``df.attrs`` carries
        ``canary`` (see :func:`canary_check`), ``pairing_notes``, ``environment_notes``, ``tested_rows``,
        ``threshold``, ``alpha`` and the run ids and paths.
    """
    da, db = RunData.load(Path(a)), RunData.load(Path(b))
    pairs = pair_deployments(da, db)
    canary = canary_check(da.meta, db.meta)
    rows: list[dict[str, Any]] = []
    ga, gb = _point_groups(da), _point_groups(db)
    sa_, sb_ = _slo_groups(da), _slo_groups(db)
    for pair in pairs:
        rows += _point_rows(pair, ga, gb, threshold, alpha)
        rows += _slo_rows(pair, sa_, sb_, threshold, alpha)  # throughput at the SLO
        rows += _deployment_rows(pair, da, db, threshold, alpha)
    for row in rows:
        _machines_differ(row, canary)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["environment_notes"] = environment_diff(da.meta, db.meta)
    df.attrs.update(run_a=da.run_id, run_b=db.run_id, path_a=str(a), path_b=str(b), threshold=threshold,
                    alpha=alpha, canary=canary, pairing_notes=_pairing_notes(pairs),
                    tested_rows=int((df["p_value"].notna() & ~df["verdict"].str.startswith(
                        "inconclusive: the machines")).sum()) if not df.empty else 0)
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


# ---- rendering ---------------------------------------------------------------------------------------------------
SHORT = {"throughput_rps": "throughput", "latency_p50_s": "p50", "latency_p99_s": "p99",
         "slo_max_rate_rps": "rate at SLO", "cold_start_s": "cold start", "idle_pss_bytes": "idle PSS",
         "status": "status"}
_MARK = {"regression": "▼ REGRESSION", "improvement": "▲ improvement", "within noise": "= within noise",
         "not beyond threshold": "= not beyond threshold"}


def _val(v: Any, unit: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format_value(v, unit)


def _chg(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.1f} %"


def _run_label(df: pd.DataFrame, side: str) -> str:
    run, path = df.attrs.get(f"run_{side}", side.upper()), df.attrs.get(f"path_{side}")
    return f"{run} ({path})" if path and Path(path).name != run else str(run)


def _name(r: Any) -> str:
    dep_a, dep_b = r.deployment, getattr(r, "deployment_b", r.deployment)
    if dep_b not in (None, dep_a) and not (isinstance(dep_b, float) and math.isnan(dep_b)):
        return f"{r.framework}/{dep_a}→{dep_b}"
    return r.framework if dep_a in (None, "default") else f"{r.framework}/{dep_a}"


def _counts(df: pd.DataFrame) -> dict[str, int]:
    v = df["verdict"].astype(str)
    return {"reg": int(df["regression"].sum()), "imp": int((v == "improvement").sum()),
            "inc": int(v.str.startswith("inconclusive").sum()), "nc": int(v.str.contains("not comparable").sum())}


def _header_notes(df: pd.DataFrame) -> list[str]:
    canary = df.attrs.get("canary") or {}
    out = []
    if canary.get("note"):
        out.append(("WARNING: " if canary.get("status") == "differ" else "") + canary["note"])
    out += df.attrs.get("pairing_notes") or []
    return out


def _false_alarm_note(df: pd.DataFrame) -> str:
    n, alpha = df.attrs.get("tested_rows", 0), df.attrs.get("alpha", 0.05)
    return (f"{n} row(s) tested (Mann-Whitney U at α = {alpha:g} and a bootstrap 95 % CI of the ratio of medians, "
            f"≥ {MIN_SAMPLES} repeats a side): when nothing changed, up to {alpha * n:.1f} false alarm(s) are "
            "expected (α per row).")


def render_compare_text(df: pd.DataFrame, only_changes: bool = False) -> str:
    """A plain-text table for the terminal (regressions first in the tally); ``only_changes``: flagged rows only."""
    if df.empty:
        return "no comparable measurements in the two runs\n"
    view = df[df["significant"]] if only_changes else df
    headers = ["framework", "model", "workload", "load", "metric", "A", "B", "change", "verdict", "method"]
    body = []
    for r in view.itertuples():
        body.append([_name(r), str(r.model), str(r.workload), str(r.load), SHORT.get(r.metric, r.metric),
                     _val(r.a, r.unit), _val(r.b, r.unit), _chg(r.change_pct), _MARK.get(r.verdict, r.verdict),
                     str(r.method)])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(headers)]
    right = {5, 6, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"A = {_run_label(df, 'a')}", f"B = {_run_label(df, 'b')}"]
    out += [f"note: {n}" for n in _header_notes(df)]
    out.append(line(headers))
    out.append(line(["-" * w for w in widths]))
    out += [line(row) for row in body]
    c = _counts(df)
    out.append("")
    out.append(f"{c['reg']} regression(s), {c['imp']} improvement(s) beyond the noise "
               f"(threshold {df.attrs.get('threshold', 0.05):.0%}); {c['inc']} inconclusive, "
               f"{c['nc']} not comparable, {len(df) - c['reg'] - c['imp'] - c['inc'] - c['nc']} other row(s).")
    out.append(_false_alarm_note(df))
    for note in df.attrs.get("environment_notes") or []:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


def _css_class(r: Any) -> str:
    v = str(r.verdict)
    if r.regression:
        return "reg"
    if v == "improvement":
        return "imp"
    if v in ("within noise", "not beyond threshold"):
        return "same"
    return "nc" if "not comparable" in v else "unk"


def write_compare_html(df: pd.DataFrame, path: Path) -> Path:
    """A self-contained HTML page with the regression table (no scripts, no external resources)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = df.attrs.get("run_a", "A"), df.attrs.get("run_b", "B")
    rows = []
    for r in df.itertuples():
        cells = [_name(r), r.model, r.workload, r.load, SHORT.get(r.metric, r.metric), _val(r.a, r.unit),
                 _val(r.b, r.unit), _chg(r.change_pct), _MARK.get(r.verdict, r.verdict), r.method]
        tds = "".join(f'<td class="{"num" if i in (5, 6, 7) else ""}">{html.escape(str(c))}</td>'
                      for i, c in enumerate(cells))
        rows.append(f'<tr class="{_css_class(r)}">{tds}</tr>')
    c = _counts(df) if not df.empty else {"reg": 0, "imp": 0, "inc": 0, "nc": 0}
    canary = df.attrs.get("canary") or {}
    top = "".join(
        f'<p class="{"warn" if i == 0 and canary.get("status") == "differ" else "env"}">{html.escape(n)}</p>'
        for i, n in enumerate(_header_notes(df)))
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
tr.nc td {{ color: #5c6670; background: #f6f8fa; font-style: italic; }}
.note {{ color: #5c6670; font-size: 12px; }}
.env {{ color: #9a6700; font-size: 13px; margin: 2px 0; }}
.warn {{ color: #cf222e; font-weight: 600; margin: 2px 0; }}
</style></head><body>
<h1>servingbench compare</h1>
<p>A = <code>{html.escape(_run_label(df, "a"))}</code><br>B = <code>{html.escape(_run_label(df, "b"))}</code></p>
{top}
<p><strong>{c["reg"]} regression(s)</strong>, {c["imp"]} improvement(s) beyond the noise
(threshold {df.attrs.get("threshold", 0.05):.0%}, α = {df.attrs.get("alpha", 0.05)}); {c["inc"]} inconclusive,
{c["nc"]} not comparable. Change = (B − A) / A of the medians.</p>
<table><thead><tr><th>framework</th><th>model</th><th>workload</th><th>load</th><th>metric</th><th>A</th><th>B</th>
<th>change</th><th>verdict</th><th>method</th></tr></thead>
<tbody>
{chr(10).join(rows) if rows else '<tr><td colspan="10">no comparable measurements</td></tr>'}
</tbody></table>
{"".join(f'<p class="env">note: {html.escape(n)}</p>' for n in df.attrs.get("environment_notes") or [])}
<p class="note">{html.escape(_false_alarm_note(df))} A sample is one repeat of a point (a server start for cold
start and memory, one search for the rate at the SLO); measurement windows of one run are not samples; flagged
points are left out; deployments are matched by configuration, not label.</p>
</body></html>
"""
    path.write_text(page)
    return path


__all__ = ["compare_runs", "render_compare_text", "write_compare_html", "decide_change", "canary_check",
           "pair_deployments", "config_differences", "Decision", "COLUMNS", "MIN_SAMPLES"]
