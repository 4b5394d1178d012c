"""``compare`` flags a planted regression and stays quiet on a second run drawn from the same noise.

Runs used (all derived from the committed real sample ``results/sample/``: 3 frameworks × mlp, closed loop at
concurrency 1/4/16 with 2 repeats each):

* **regressed**: a copy whose measurements are 30 % worse: every window's request count × 0.7 and every latency
  histogram (the point's and each window's) stretched by 1/0.7, plus the harness's summary numbers.
* **same-noise**: a copy standing for a second run of the same configuration.  Each load point's two repeats are
  swapped and jittered by ±2 % (window counts and latencies): a resample of the observed run-to-run spread, so its
  repeats cover the same range as the original's.  We do not use the sample's two real repeats as "two runs": on
  the shared 2-core machine that recorded it, mosec at concurrency 1 gave 424 and 872 rps in its two repeats, a
  real run-to-run swing that a single run's windows cannot see (``test_single_repeat_runs_report_window_noise``
  shows compare says so instead of pretending).
* **single-repeat** variants of both (repeat 0 only), which exercise the per-window noise estimate.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from servingbench.measure.stats import LatencyHistogram
from servingbench.report.compare import compare_runs, render_compare_text, write_compare_html
from servingbench.report.metrics import window_throughputs

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "results" / "sample"
PLANTED = 0.30


# ---- run surgery -----------------------------------------------------------------------------------------------------
def _scaled_hist(d: dict, factor: float) -> dict:
    """The same histogram with every latency multiplied by ``factor``."""
    h = LatencyHistogram.from_dict(d)
    out = LatencyHistogram()
    for item in h._h.get_recorded_iterator():  # (value, count) pairs of the underlying HdrHistogram
        out.record(item.value_iterated_to / 1e6 * factor, item.count_added_in_this_iter_step)
    return out.to_dict()


def _scale_point(rec: dict, tput: float, lat: float, rng: random.Random | None = None, jitter: float = 0.0) -> None:
    """Throughput × ``tput``, latency × ``lat``; with ``jitter``, each window gets its own extra ± factor."""
    total_ok = 0
    for w in rec.get("windows") or []:
        j = 1.0 + (rng.uniform(-jitter, jitter) if rng else 0.0)
        w["count"] = max(1, round(w["count"] * tput * j))
        w["errors"] = round(w["errors"] * tput * j)
        if w.get("histogram", {}).get("histogram"):
            w["histogram"] = _scaled_hist(w["histogram"], lat / j)
        total_ok += w["count"] - w["errors"]
    if rec.get("histogram", {}).get("histogram"):
        rec["histogram"] = _scaled_hist(rec["histogram"], lat)
    m = rec["metrics"]
    m["requests"] = sum(w["count"] for w in rec.get("windows") or [])
    m["throughput_rps"] = total_ok / m["duration_s"]
    m["latency_s"] = {k: v * lat for k, v in m["latency_s"].items() if v is not None}


def _copy(tmp: Path, name: str, keep=lambda r: True, edit=lambda r: None) -> Path:
    dst = tmp / name
    shutil.copytree(SAMPLE, dst)
    out = []
    for line in (SAMPLE / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if not keep(rec):
            continue
        edit(rec)
        out.append(json.dumps(rec))
    (dst / "records.jsonl").write_text("\n".join(out) + "\n")
    return dst


def _regress(rec: dict) -> None:
    if rec["type"] == "point":
        _scale_point(rec, 1 - PLANTED, 1 / (1 - PLANTED))
    elif rec["type"] == "slo" and rec.get("max_rate"):
        rec["max_rate"] *= 1 - PLANTED


def _same_noise(seed: int = 7):
    rng = random.Random(seed)

    def edit(rec: dict) -> None:
        if rec["type"] != "point":
            return
        if rec["kind"] == "closed_loop":  # swap the two repeats (the key of a point ignores the record order)
            rec["repeat"] = 1 - rec["repeat"]
            rec["id"] = rec["id"].rsplit(":", 1)[0] + f":{rec['repeat']}"
        f = 1.0 + rng.uniform(-0.02, 0.02)
        _scale_point(rec, f, 1 / f, rng, jitter=0.02)

    return edit


def _first_repeat(rec: dict) -> bool:
    return not (rec.get("type") == "point" and rec.get("repeat", 0) > 0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("compare")

    def second_repeat_as_only(rec: dict) -> None:
        if rec.get("type") == "point" and rec["kind"] == "closed_loop":
            rec["repeat"] = 0

    return {
        "a": SAMPLE,
        "regressed": _copy(tmp, "regressed", edit=_regress),
        "same": _copy(tmp, "same", edit=_same_noise()),
        "a1": _copy(tmp, "a1", keep=_first_repeat),
        "a1_regressed": _copy(tmp, "a1-regressed", keep=_first_repeat, edit=_regress),
        "a1_same": _copy(tmp, "a1-same", keep=_first_repeat,
                         edit=lambda r: r["type"] == "point" and _scale_point(r, 1.0, 1.0, random.Random(r["id"]),
                                                                              jitter=0.02)),
        "r1_only": _copy(tmp, "r1-only", keep=lambda r: not (r.get("type") == "point" and r.get("repeat", 0) == 0
                                                            and r["kind"] == "closed_loop"),
                         edit=second_repeat_as_only),
    }


def _repeat_values(metric: str) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = {}
    for line in (SAMPLE / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "point" and r["kind"] == "closed_loop":
            v = r["metrics"]["throughput_rps"] if metric == "throughput_rps" else r["metrics"]["latency_s"]["p50"]
            out.setdefault((r["framework"], f"c={r['load']['concurrency']}"), []).append(v)
    return out


# ---- the planted regression ------------------------------------------------------------------------------------------
def test_planted_regression_is_flagged_with_repeats(runs):
    df = compare_runs(runs["a"], runs["regressed"])
    assert not (df["verdict"] == "improvement").any()
    for metric in ("throughput_rps", "latency_p50_s"):
        rows = df[df["metric"] == metric]
        assert len(rows) == 9
        spread = _repeat_values(metric)
        for r in rows.itertuples():
            assert r.samples == "repeats"
            assert r.change_pct == pytest.approx(-30.0 if metric == "throughput_rps" else 100 / 0.7 - 100, abs=3)
            vals = spread[(r.framework, r.load)]
            noise = max(vals) / min(vals) - 1
            if noise < 1 / (1 - PLANTED) - 1 - 0.02:
                # the planted change is larger than the spread of the repeats: it must be flagged
                assert r.regression and r.verdict == "regression", r
            else:
                # the two real repeats differ by more than 43 %: the change is inside the noise, correctly not flagged
                assert not r.significant, r
        assert rows["regression"].sum() >= 6
    text = render_compare_text(df)
    assert "REGRESSION" in text and "regression(s)" in text


def test_planted_regression_is_flagged_with_single_repeats(runs):
    """One repeat: the windows are the samples.  Flagged wherever the planted 30 % exceeds the spread of the
    point's own windows (some sample points swing by 2x between windows on the shared machine: not flagged)."""
    df = compare_runs(runs["a1"], runs["a1_regressed"])
    pts = df[df["metric"].isin(["throughput_rps", "latency_p50_s", "latency_p99_s"])]
    assert len(pts) == 27 and (pts["samples"] == "windows").all()
    assert all(m.startswith("window") for m in pts["method"])
    assert not (pts["verdict"] == "improvement").any()
    windows = {}
    for line in (runs["a1"] / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == "point" and r["kind"] == "closed_loop":
            windows[(r["framework"], f"c={r['load']['concurrency']}")] = window_throughputs(r)
    tput = pts[pts["metric"] == "throughput_rps"]
    for r in tput.itertuples():
        w = windows[(r.framework, r.load)]
        if max(w) / min(w) < 1 / (1 - PLANTED) - 0.02:
            assert r.regression, r
    assert tput["regression"].sum() >= 5
    assert pts["regression"].sum() >= 12


# ---- no false alarms -------------------------------------------------------------------------------------------------
def test_second_run_with_the_same_noise_is_not_flagged(runs):
    df = compare_runs(runs["a"], runs["same"])
    assert len(df[df["metric"] == "throughput_rps"]) == 9
    assert not df["significant"].any(), df[df["significant"]]
    assert "0 regression(s), 0 improvement(s)" in render_compare_text(df)


def test_single_repeat_with_window_jitter_is_not_flagged(runs):
    df = compare_runs(runs["a1"], runs["a1_same"])
    assert (df[df["metric"] == "throughput_rps"]["samples"] == "windows").all()
    assert not df["significant"].any(), df[df["significant"]]


def test_identical_runs(runs):
    df = compare_runs(runs["a"], runs["a"])
    assert not df["significant"].any()
    assert (df.loc[df["metric"] == "throughput_rps", "change_pct"] == 0).all()


def test_single_repeat_runs_report_window_noise(runs):
    """The sample's two real repeats as two single-repeat runs: whatever is flagged was decided on windows, and the
    text warns that windows see within-run noise only."""
    df = compare_runs(runs["a1"], runs["r1_only"])
    flagged = df[df["significant"]]
    assert all(m.startswith("window") for m in flagged["method"])
    assert "within-run noise only" in render_compare_text(df)


# ---- shape and outputs -----------------------------------------------------------------------------------------------
def test_frame_columns_and_start_up_rows(runs):
    df = compare_runs(runs["a"], runs["regressed"])
    for col in ("framework", "model", "metric", "a", "b", "change_pct", "significant", "method"):
        assert col in df.columns
    cold = df[df["metric"] == "cold_start_s"]
    assert len(cold) == 3 and (cold["verdict"] == "noise unknown").all() and not cold["significant"].any()


def test_failed_cell_is_reported(tmp_path, runs):
    def fail_mosec(rec: dict) -> None:
        if rec["type"] == "cell" and rec["framework"] == "mosec":
            rec.update(status="failed", reason="ServerError: mosec exited with code 1")

    b = _copy(tmp_path, "mosec-failed", keep=lambda r: not (r["type"] == "point" and r["framework"] == "mosec"),
              edit=fail_mosec)
    meta = json.loads((b / "run.json").read_text())
    meta["cells"]["mosec/default"]["status"] = "failed"
    (b / "run.json").write_text(json.dumps(meta))
    df = compare_runs(runs["a"], b)
    row = df[(df["framework"] == "mosec") & (df["metric"] == "status")]
    assert len(row) == 1 and bool(row["regression"].iloc[0]) and row["verdict"].iloc[0] == "ok → failed"
    gone = df[(df["framework"] == "mosec") & (df["metric"] == "throughput_rps")]
    assert len(gone) == 3 and gone["regression"].all() and (gone["verdict"] == "measured in A only").all()


def test_html_output(tmp_path, runs):
    df = compare_runs(runs["a"], runs["regressed"])
    path = write_compare_html(df, tmp_path / "cmp" / "compare.html")
    html = path.read_text()
    assert "<table>" in html and "<script" not in html and "http" not in html.split("<body>")[1]
    assert html.count('class="reg"') == int(df["regression"].sum())
    assert isinstance(df, pd.DataFrame)
