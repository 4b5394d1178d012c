"""The report of the committed sample run (``results/sample/``): content, numbers, figures, missing pieces.

The sample is a real run (litserve, mosec, mlserver × mlp; closed loop with 2 repeats; an SLO search).  Feature-probe
records are synthetic and exist only in a copy made by a fixture: the committed sample stays a real run.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from servingbench.measure.stats import LatencyHistogram
from servingbench.report.build import write_report
from servingbench.report.metrics import METRICS, format_value
from servingbench.results import RunResults

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "results" / "sample"

PROBES = [
    {"framework": "litserve", "feature": "response_cache", "verdict": "not_supported",
     "evidence": ["POST /predict twice with the same body: 200, 200; model calls 2 -> 2 (no hit)",
                  {"request": "GET /metrics", "status": 404}],
     "docs_claim": "no built-in response cache", "survey_claim": "yes", "detail": {"speedup": 1.02}},
    {"framework": "mosec", "feature": "response_cache", "verdict": "not_supported",
     "evidence": ["same body twice: model calls 2 -> 2"], "docs_claim": "no", "survey_claim": "no",
     "detail": {"speedup": 0.98}},
    {"framework": "mosec", "feature": "batching", "verdict": "supported",
     "evidence": ["max_batch_size=8: batch sizes seen by the model {1: 3, 8: 412}"],
     "docs_claim": "supported (dynamic batching)", "survey_claim": "supported",
     "metrics": {"speedup": 3.1, "p50_s": 0.0042}},
    {"framework": "mlserver", "feature": "auth", "verdict": "partial",
     "evidence": ["no token: 200 (expected 401)", "wrong token: 200"], "docs_claim": "yes", "survey_claim": None,
     "detail": {"overhead_p50_s": 0.0012}},
    {"framework": "litserve", "feature": "tls", "verdict": "failed", "evidence": ["ssl handshake: EOF"],
     "docs_claim": "yes", "survey_claim": "yes"},
    {"framework": "mosec", "feature": "multi_model", "verdict": "supported", "evidence": [],
     "docs_claim": "partial: one pipeline per process", "survey_claim": "yes",
     "metrics": {"pss_bytes_one_model": 250 * 2**20, "pss_bytes_three_models": 270 * 2**20}},
]


def _records(path: Path, type_: str | None = None) -> list[dict]:
    return RunResults.open(path, readonly=True).records(type_)


def _copy(tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLE, dst)
    return dst


def _append(path: Path, *records: dict) -> None:
    with open(path / "records.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps({"schema": 1, **r}) + "\n")


def _rewrite(path: Path, keep) -> None:
    lines = [l for l in (path / "records.jsonl").read_text().splitlines() if l.strip() and keep(json.loads(l))]
    (path / "records.jsonl").write_text("\n".join(lines) + "\n")


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            v = a.get(k) or ""
            if re.match(r"^(https?:)?//", v):
                self.external.append(v)


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    return write_report(SAMPLE, tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def probe_report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("probe-run")
    run = _copy(tmp)
    _append(run, *({"type": "probe", "id": f"probe:{p['framework']}:{p['feature']}", **p} for p in PROBES))
    meta = json.loads((run / "run.json").read_text())  # probe runs are run.json cells too, not deployments
    meta["cells"]["litserve/probe:response_cache"] = {"status": "ok", "framework": "litserve",
                                                      "probe": "response_cache"}
    meta["cells"]["mlserver/probe:grpc"] = {"status": "failed", "framework": "mlserver", "probe": "grpc",
                                            "reason": "ImportError: grpcio missing-in-this-env"}
    (run / "run.json").write_text(json.dumps(meta))
    return write_report(run, tmp / "reports")


# ---- structure -----------------------------------------------------------------------------------------------
def test_sample_is_small_and_real():
    size = sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file())
    assert size < 1_000_000
    assert not (SAMPLE / "logs").exists()
    assert not _records(SAMPLE, "probe"), "the committed sample must not carry synthetic probe records"
    assert _records(SAMPLE, "point") and _records(SAMPLE, "cell")


def test_report_files(sample_report: Path):
    out = sample_report.parent
    assert sample_report.name == "index.html" and sample_report.is_file()
    assert out.name == RunResults.open(SAMPLE, readonly=True).read_run()["run_id"]
    assert (out / "report.md").is_file()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) >= 5
    for f in figures:
        data = f.read_bytes()
        assert len(data) > 2000 and data[:8] == b"\x89PNG\r\n\x1a\n", f
    tables = {t.name for t in (out / "tables").glob("*.csv")}
    assert {"points.csv", "load_levels.csv", "summary.csv", "cells.csv", "slo.csv"} <= tables
    for t in (out / "tables").glob("*.csv"):
        assert t.stat().st_size > 0


def test_html_is_self_contained(sample_report: Path):
    html = sample_report.read_text()
    p = _Imgs()
    p.feed(html)
    assert p.scripts == 0
    assert p.external == []
    assert p.imgs, "no figures embedded"
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,") and len(src) > 2000
    # every figure file is embedded once
    assert len(p.imgs) == len(list((sample_report.parent / "figures").glob("*.png")))


def test_sections_in_order(sample_report: Path):
    html = sample_report.read_text()
    pos = [html.index(f'<section id="{s}">') for s in ("summary", "environment", "features", "performance",
                                                       "reproduce")]
    assert pos == sorted(pos)
    md = (sample_report.parent / "report.md").read_text()
    heads = [md.index(h) for h in ("## 1. Summary", "## 2. Environment", "## 3. Feature matrix", "## 4. Performance",
                                   "## 5. Reproduce")]
    assert heads == sorted(heads)


def test_every_framework_and_model_appears(sample_report: Path):
    html = sample_report.read_text()
    md = (sample_report.parent / "report.md").read_text()
    cells = _records(SAMPLE, "cell")
    points = _records(SAMPLE, "point")
    frameworks = {c["framework"] for c in cells}
    models = {p["model"] for p in points}
    assert frameworks == {"litserve", "mosec", "mlserver"} and models == {"mlp"}
    for name in frameworks | models:
        assert name in html and name in md
    for c in cells:  # versions from the cell records
        assert c["framework_version"] in html


# ---- numbers match the records -----------------------------------------------------------------------------------
def test_point_table_matches_records(sample_report: Path):
    df = pd.read_csv(sample_report.parent / "tables" / "points.csv")
    recs = {r["id"]: r for r in _records(SAMPLE, "point")}
    assert set(df["record_id"]) == set(recs)
    for row in df.itertuples():
        r = recs[row.record_id]
        assert row.throughput_rps == pytest.approx(r["metrics"]["throughput_rps"], rel=1e-9)
        # latency is recomputed from the raw histogram at report time (the stored summary may predate a change
        # of the percentile definition; it agrees within a histogram bucket)
        h = LatencyHistogram.from_dict(r["histogram"])
        assert row.latency_p99_s == pytest.approx(h.percentile(99), rel=1e-12)
        assert row.latency_p50_s == pytest.approx(h.percentile(50), rel=1e-12)
        assert row.latency_p50_s == pytest.approx(r["metrics"]["latency_s"]["p50"], rel=0.05)
        assert row.requests == r["metrics"]["requests"]
        assert bool(row.valid) == r["validity"]["valid"]


def test_load_level_numbers_in_html(sample_report: Path):
    html = sample_report.read_text()
    md = (sample_report.parent / "report.md").read_text()
    groups: dict[tuple, list[dict]] = {}
    for r in _records(SAMPLE, "point"):
        if r["kind"] == "closed_loop":
            groups.setdefault((r["framework"], r["load"]["concurrency"]), []).append(r)
    assert groups
    for (_fw, _c), recs in groups.items():
        med = statistics.median(r["metrics"]["throughput_rps"] for r in recs)
        text = format_value(med, "rps")
        assert text in html and text in md
        lo = min(r["metrics"]["throughput_rps"] for r in recs)
        assert format_value(lo, "rps") in html  # the min–max range of the repeats


def test_cells_table_matches_records(sample_report: Path):
    """One row per deployment: its server starts (one cell record per repeat) as the median over the starts."""
    import statistics

    from servingbench.report.data import deployment_cell

    df = pd.read_csv(sample_report.parent / "tables" / "cells.csv")
    html = sample_report.read_text()
    starts: dict[str, list[dict]] = {}
    for c in _records(SAMPLE, "cell"):
        starts.setdefault(deployment_cell(c["cell"]), []).append(c)
    assert len(df) == len(starts) and all(len(v) == 2 for v in starts.values())  # 2 repeats = 2 server starts
    for cid, cs in starts.items():
        row = df[df["cell"] == cid].iloc[0]
        cold = statistics.median(c["cold_start_s"] for c in cs)
        assert row.cold_start_s == pytest.approx(cold) and row.starts == len(cs)
        assert row.idle_pss_bytes == pytest.approx(statistics.median(c["memory_idle"]["pss_bytes"] for c in cs))
        assert format_value(cold, "s") in html


def test_summary_recommendations(sample_report: Path):
    s = pd.read_csv(sample_report.parent / "tables" / "summary.csv")
    assert set(s["criterion"]) >= {"Latency at low load", "Memory", "Cold start", "Max throughput (closed loop)"}
    cold = s[(s["criterion"] == "Cold start") & (s["rank"] == 1)].iloc[0]
    best = min(_records(SAMPLE, "cell"), key=lambda c: c["cold_start_s"])
    assert cold["name"] == best["framework"]
    html = sample_report.read_text()
    assert "single run: noise unknown" in html  # throughput at the SLO: one search per deployment (repeat 0 only)
    assert "exceeds the noise" in html or "within the noise" in html  # repeats were used elsewhere


def test_validity_section_lists_flagged_points(sample_report: Path):
    html = sample_report.read_text()
    flagged = [p for p in _records(SAMPLE, "point") if p["validity"]["flags"]]
    assert flagged
    df = pd.read_csv(sample_report.parent / "tables" / "flagged_points.csv")
    assert set(df["record_id"]) == {p["id"] for p in flagged}
    for flag in {f for p in flagged for f in p["validity"]["flags"]}:
        assert flag in html
    cal = RunResults.open(SAMPLE, readonly=True).read_run()["calibration"]
    assert format_value(cal["ceiling_rps"], "rps") in html


def test_reproduce_section(sample_report: Path):
    html = sample_report.read_text()
    run = RunResults.open(SAMPLE, readonly=True).read_run()
    assert "name: sample" in html and "slo_search" in html  # the suite text
    for f in (SAMPLE / "manifests").rglob("*"):
        if f.is_file():
            assert str(f.relative_to(SAMPLE)) in html
    assert run["command"][1] in html


def test_no_probe_records_says_so(sample_report: Path):
    assert "No feature probes in this run" in sample_report.read_text()


# ---- feature matrix (synthetic probes in a copy) ----------------------------------------------------------------
def test_feature_matrix(probe_report: Path):
    html = probe_report.read_text()
    md = (probe_report.parent / "report.md").read_text()
    assert "No feature probes" not in html
    for p in PROBES:
        cell = re.search(rf'<td id="probe-{p["framework"]}-{p["feature"]}" class="([^"]+)"', html)
        assert cell, (p["framework"], p["feature"])
        assert f"v-{p['verdict']}" in cell.group(1)
        for e in p["evidence"]:
            if isinstance(e, str):
                assert e.split(":")[0] in html and e.split(":")[0] in md
    # disagreements: litserve/response_cache (survey says yes), mlserver/auth (docs say yes), mosec/multi_model
    # (docs say partial); not mosec/batching (agrees) nor litserve/tls (a failed probe proves nothing)
    dis = set(re.findall(r'<td id="probe-([a-z]+-[a-z_]+)" class="[^"]*disagree', html))
    assert dis == {"litserve-response_cache", "mlserver-auth", "mosec-multi_model"}
    assert "✘ not supported" in html and "◐ partial" in html and "⚠ probe failed" in html
    assert "<details>" in html
    # Markdown: evidence as footnotes
    assert re.search(r"\[\^1\]:", md) and "≠" in md
    assert "grpcio missing-in-this-env" in html  # a failed probe run is listed with the failed deployments
    summary = pd.read_csv(probe_report.parent / "tables" / "summary.csv")
    assert set(summary["name"]) == {"litserve", "mosec", "mlserver"}  # probe cells are not deployments
    feats = pd.read_csv(probe_report.parent / "tables" / "features.csv")
    assert len(feats) == len(PROBES)
    pm = pd.read_csv(probe_report.parent / "tables" / "probe_metrics.csv")
    assert set(pm["metric"]) >= {"speedup", "overhead_p50_s", "pss_bytes_three_models"}
    # a figure where two frameworks report the same probe metric (response_cache speed-up), not for one-offs
    figs = {f.name for f in (probe_report.parent / "figures").glob("probe_*.png")}
    assert figs == {"probe_response_cache_speedup.png"}


# ---- missing pieces ----------------------------------------------------------------------------------------------
def test_failed_cell_single_framework_no_slo_no_inprocess(tmp_path: Path):
    run = _copy(tmp_path)
    # keep litserve only, drop the SLO search and the in-process limit, and fail mosec with a log tail
    _rewrite(run, lambda r: r.get("type") not in ("slo", "inprocess") and r.get("kind") != "slo_search"
             and r.get("framework") in (None, "litserve"))
    _append(run, {"type": "cell", "id": "cell:mosec/default", "cell": "mosec/default", "framework": "mosec",
                  "deployment": "default", "status": "failed",
                  "reason": "VerificationError: mlp: outputs differ from the reference at batch 1",
                  "log_tail": "Traceback (most recent call last):\nRuntimeError: boom-in-the-log"})
    meta = json.loads((run / "run.json").read_text())
    meta["cells"]["triton/default"] = {"status": "skipped", "reason": "tritonserver binary not found"}
    (run / "run.json").write_text(json.dumps(meta))
    index = write_report(run, tmp_path / "reports")
    html = index.read_text()
    assert "outputs differ from the reference" in html and "boom-in-the-log" in html
    assert "tritonserver binary not found" in html
    assert "No in-process (<code>inprocess</code>) records" in html
    assert "no <code>slo_search</code> workload" in html
    assert "only one framework measured" in html
    for f in (index.parent / "figures").glob("*.png"):
        assert f.stat().st_size > 2000


def test_slo_answers_the_machine_decided_are_marked(tmp_path: Path):
    """Searches whose failures were the machine's: a lower bound for LitServe (the probes above 800 rps failed for
    steal), nothing measured for MLServer (its confirmations failed for steal); neither is ranked."""
    run = _copy(tmp_path)
    lines = []
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line) if line.strip() else None
        if r and r.get("type") == "slo" and r["framework"] in ("litserve", "mlserver"):
            for p in r["points"]:
                if p["verdict"] == "fail" and (r["framework"] == "litserve" or p.get("confirm")):
                    p["flags"] = ["interference"]
            line = json.dumps(r)
        lines.append(line)
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    index = write_report(run, tmp_path / "reports")
    html = index.read_text()
    assert "≥ 800 rps (machine-limited)" in html
    assert "unmeasured (the machine limited the probes)" in html
    assert "left out, the machine limited their probes: " in html
    slo = pd.read_csv(index.parent / "tables" / "slo.csv")
    assert slo.set_index("framework")["machine_limited"].notna().to_dict() == {
        "litserve": True, "mosec": False, "mlserver": True}


def _rewrite_slo(run: Path, framework: str, change) -> None:
    """Apply ``change`` to ``framework``'s slo record in the run's records.jsonl."""
    lines = []
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line) if line.strip() else None
        if r and r.get("type") == "slo" and r["framework"] == framework:
            change(r)
            line = json.dumps(r)
        lines.append(line)
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")


def test_a_search_that_met_no_rate_says_below_its_lowest_probe(tmp_path: Path):
    """No rate met the SLO: the answer is "< the lowest rate probed", not only "none" (a min_rate of 50 rps)."""
    run = _copy(tmp_path)

    def none_met(r):
        r["max_rate"], r["confirmed"], r["generator_limited"] = None, None, False
        r["reason"] = "no rate met the SLO (none at or above 50 rps: the search's min_rate is 50 rps)"
        r["points"] = [{**p, "verdict": "fail", "rate": rate, "confirm": False, "flags": []}
                       for p, rate in zip(r["points"], [200.0, 100.0, 50.0])]

    _rewrite_slo(run, "mosec", none_met)
    index = write_report(run, tmp_path / "reports")
    html = index.read_text()
    assert re.search(r"&lt; 50(\.0)? rps \(none met the SLO\)", html), re.findall(r".{80}none met the SLO.{20}", html)
    slo = pd.read_csv(index.parent / "tables" / "slo.csv").set_index("framework")
    assert slo.loc["mosec", "lowest_rate_rps"] == 50.0 and pd.isna(slo.loc["mosec", "max_rate_rps"])


def test_two_deployments_and_gpu(tmp_path: Path):
    """A framework with two deployments is named framework/label everywhere; GPU numbers get their figures."""
    run = _copy(tmp_path)
    extra = []
    for r in _records(SAMPLE):
        if r.get("framework") == "litserve" and r["type"] in ("cell", "point"):
            r = json.loads(json.dumps(r).replace("litserve/default", "litserve/batched"))
            r["deployment"] = "batched"
            extra.append(r)
    _append(run, *extra)
    lines = []
    for line in (run / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "point":
            r["resources"]["gpu_mem_bytes_max"] = 512 * 2**20
            r["resources"]["gpu_util_pct_mean"] = 40.0
        lines.append(json.dumps(r))
    (run / "records.jsonl").write_text("\n".join(lines) + "\n")
    index = write_report(run, tmp_path / "reports")
    html = index.read_text()
    assert "litserve/default" in html and "litserve/batched" in html
    summary = pd.read_csv(index.parent / "tables" / "summary.csv")
    assert {"litserve/default", "litserve/batched", "mosec/default"} <= set(summary["name"])
    assert (index.parent / "figures" / "gpu_memory.png").stat().st_size > 2000
    assert (index.parent / "figures" / "gpu_utilisation.png").stat().st_size > 2000


def test_torn_last_line_and_unknown_fields(tmp_path: Path):
    run = _copy(tmp_path)
    with open(run / "records.jsonl", "a") as f:
        f.write('{"schema": 1, "type": "point", "id": "torn", "metr')
    index = write_report(run, tmp_path / "reports")
    assert "litserve" in index.read_text()


def test_empty_run(tmp_path: Path):
    run = _copy(tmp_path)
    (run / "records.jsonl").write_text("")
    meta = json.loads((run / "run.json").read_text())
    meta["cells"] = {}
    meta["status"] = "interrupted"
    (run / "run.json").write_text(json.dumps(meta))
    html = write_report(run, tmp_path / "reports").read_text()
    assert "interrupted" in html and "No closed- or open-loop points" in html


def test_metric_registry_formats():
    assert METRICS["throughput_rps"].better == "higher"
    assert METRICS["latency_p99_s"].better == "lower"
    assert format_value(0.0123, "s") == "12.3 ms"
    assert format_value(2.5, "s") == "2.50 s"
    assert format_value(300 * 2**20, "bytes") == "300 MiB"
    assert format_value(None, "s") == "–"
    assert METRICS["latency_p50_s"].label == "p50 latency (ms)"


def test_report_shows_how_the_run_went(tmp_path: Path):
    """Issue 15: other work on the machine, a partial run and its resumes are stated in the report."""
    run = _copy(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["concurrent_activity"] = [{"kind": "servingbench_run", "pid": 4242,
                                    "text": "another servingbench run is active: pid 4242 (servingbench run x.yaml)"}]
    meta["missing_cells"] = ["mlflow/default#r0", "ray/default#r0"]
    meta["status"] = "partial"
    meta["resumes"] = [{"at": "2026-12-02T10:00:00", "forced": True, "differences": ["workloads.0.concurrency"],
                        "left_out": [], "torn_lines": [53]}]
    (run / "run.json").write_text(json.dumps(meta))
    html = write_report(run, tmp_path / "reports").read_text()
    assert "another servingbench run is active: pid 4242" in html
    assert "partial: 2 planned cell(s) have no result (mlflow/default#r0, ray/default#r0)" in html
    assert "resumed 1 time(s)" in html and "workloads.0.concurrency" in html and "1 torn record line" in html
    md = (tmp_path / "reports" / meta["run_id"] / "report.md").read_text()
    assert "another servingbench run is active" in md and "partial" in md


def test_published_results_are_shown_beside_ours(tmp_path: Path):
    """Issue 16: a suite's published figures (scenarios/published/) appear with their source, ours and a verdict."""
    from servingbench.report.analysis import published_results
    from servingbench.report.data import RunData

    run = _copy(tmp_path)
    d0 = RunData.load(run)
    df = d0.point_df[d0.point_df["valid"] & (d0.point_df["workload"] == "closed")]

    def med(fw: str, load: float) -> float:
        return float(df[(df["framework"] == fw) & (df["load"] == load)]["throughput_rps"].median())

    ratio = med("mlserver", 16.0) / med("mosec", 16.0)
    meta = json.loads((run / "run.json").read_text())
    side = lambda fw, load: {"framework": fw, "deployment": "default", "workload": "closed", "load": load}  # noqa: E731
    meta["suite"]["published"] = [
        {"claim": "MLServer reaches X of MOSEC", "source": "a paper, table 3", "metric": "throughput_rps",
         "of": side("mlserver", 16.0), "over": side("mosec", 16.0), "value": round(ratio * 1.1, 4), "tolerance": 0.15},
        {"claim": "MOSEC p50 at c=1 is 1-2 ms", "source": "a blog", "metric": "latency_p50_s",
         "of": side("mosec", 1.0), "range": [1.0, 2.0], "tolerance": 0.25},
        {"claim": "a point never measured", "source": "x", "metric": "throughput_rps", "of": side("mosec", 999.0),
         "value": 10.0, "tolerance": 0.25},
    ]
    (run / "run.json").write_text(json.dumps(meta))
    pub = published_results(RunData.load(run))
    assert list(pub["verdict"].str.split(" ").str[0]) == ["agrees", "differs", "not"]
    assert pub.loc[0, "ours"] == pytest.approx(ratio)
    assert "-9%" in pub.loc[0, "verdict"]  # ours / published - 1 = 1 / 1.1 - 1
    html = write_report(run, tmp_path / "reports").read_text()
    assert "Published results, reproduced" in html and "a paper, table 3" in html and "differs (outside the range)" in html
    assert (tmp_path / "reports" / meta["run_id"] / "tables" / "published.csv").exists()


def test_a_search_no_failed_probe_bounds_reads_as_a_lower_bound(tmp_path: Path):
    """Every rate probed passed (the search stopped growing at its step limit): the report says "≥ X (no rate above
    it failed)" and slo.csv marks it ``unbounded``; a search with a failure above its answer is unchanged."""
    run = _copy(tmp_path)

    def every_rate_passed(r):
        r["max_rate"], r["confirmed"], r["generator_limited"] = 400.0, True, False
        r["reason"] = "upper bound not reached: step limit (3) hit while growing; confirmed at 400 rps"
        r["points"] = [{**r["points"][0], "verdict": "pass", "rate": rate, "confirm": False, "flags": []}
                       for rate in (100.0, 200.0, 400.0)]

    _rewrite_slo(run, "mosec", every_rate_passed)
    index = write_report(run, tmp_path / "reports")
    html = index.read_text()
    assert re.search(r"≥ 400(\.0)? rps \(no rate above it failed\)", html), re.findall(r".{60}no rate above.{20}", html)
    slo = pd.read_csv(index.parent / "tables" / "slo.csv").set_index("framework")
    assert bool(slo.loc["mosec", "unbounded"]) and not slo.drop(index="mosec")["unbounded"].astype(bool).any()


def test_slo_verdict_takes_each_deployments_repeats_as_its_samples():
    """Session 12: with repeats, every search was its own candidate, so the runner-up of triton/tuned was another
    repeat of triton/tuned ("0.0 % higher than triton/triton-tuned", "single run: noise unknown")."""
    from servingbench.report.analysis import _throughput_verdicts

    rows = []
    for name, rates in (("triton/tuned", [500.0, 600.0, 600.0]), ("triton/default", [125.0, 100.0, 100.0]),
                        ("litserve/default", [None, None, None]), ("mlflow/default", [80.0, 90.0, 85.0])):
        for i, r in enumerate(rates):
            rows.append({"name": name, "model": "cnn", "max_rate_rps": r, "record_id": f"slo:{name}#r{i}",
                         "slo_p99_s": 0.1, "generator_limited": False,
                         "machine_limited": "interference" if name == "mlflow/default" and i else None})
    v = _throughput_verdicts("cnn", pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(), 0.05)[0]
    assert [c.name for c in v.candidates] == ["triton/tuned", "triton/default", "mlflow/default"]
    best, second = v.candidates[0], v.candidates[1]
    assert best.value == 600.0 and best.samples == [500.0, 600.0, 600.0] and second.value == 100.0
    assert v.margin_text().startswith("500.0 % higher than triton/default (100 rps)")
    assert v.significant is not None  # three searches a side: a noise test, not "noise unknown"
    assert "no rate met the SLO: litserve/default" in v.note
    assert "mlflow/default (2 of 3 searches)" in v.note and v.candidates[2].samples == [80.0]
