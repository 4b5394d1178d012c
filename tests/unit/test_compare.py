"""``compare`` flags a planted regression that repeated runs show, and says "inconclusive" instead of guessing.

Runs used:

* **the real sample** ``results/sample/`` (3 frameworks × mlp, closed loop at concurrency 1/4/16, 2 repeats each,
  the server restarted per repeat; some points flagged ``unstable`` or ``generator_bound`` on the shared 2-core
  machine that recorded it; an SLO search met by litserve and mosec, not by mlserver; a machine canary in
  ``run.json``) and copies of it: ``regressed``
  (every window's request count × 0.7, every latency histogram stretched by 1/0.7) and single-repeat variants.
  Two repeats (or one, whose windows are no longer samples) are too few for a verdict: these rows must all be
  inconclusive, whatever the planted change.
* **six repeats built from the sample**: each point's repeat-0 record (its real window counts and latency histogram) copied into
  six repeats, each scaled by its own lognormal run-to-run factor (σ = 3 %, seeded) plus ±2 % per-window jitter,
  validity set to valid (the window histograms are dropped: compare never reads them).  The sample's own two
  repeats are too few to resample real run-to-run noise from (litserve at concurrency 1 gave 658 and 830 rps in
  them), so the spread between restarts is synthetic here.  ``six`` and
  ``six_same`` are independent draws of the same thing, ``six_regressed`` is a draw 30 % worse.
* **small synthetic runs** (no windows, no histograms: the metrics registry then reads the harness's summary
  numbers), for the pairing, flagged-point, canary and sample-size rules.
* a **simulation** of the decision rule alone: its false-alarm rate on A/A pairs and its power.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servingbench.measure.stats import LatencyHistogram
from servingbench.report.compare import (
    MIN_SAMPLES,
    canary_check,
    compare_runs,
    decide_change,
    render_compare_text,
    write_compare_html,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "results" / "sample"
PLANTED = 0.30
POINT_METRICS = ["throughput_rps", "latency_p50_s", "latency_p99_s"]


# ---- run surgery on the real sample ----------------------------------------------------------------------------------
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


def _sample_records() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "records.jsonl").read_text().splitlines()]


def _write(tmp: Path, name: str, records: list[dict], meta_edit=lambda m: None) -> Path:
    dst = tmp / name
    shutil.copytree(SAMPLE, dst)
    (dst / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    meta = json.loads((dst / "run.json").read_text())
    meta_edit(meta)
    (dst / "run.json").write_text(json.dumps(meta))
    return dst


def _copy(tmp: Path, name: str, keep=lambda r: True, edit=lambda r: None) -> Path:
    out = []
    for rec in _sample_records():
        if keep(rec):
            edit(rec)
            out.append(rec)
    return _write(tmp, name, out)


def _regress(rec: dict) -> None:
    if rec["type"] == "point":
        _scale_point(rec, 1 - PLANTED, 1 / (1 - PLANTED))
    elif rec["type"] == "slo" and rec.get("max_rate"):
        rec["max_rate"] *= 1 - PLANTED


def _first_repeat(rec: dict) -> bool:
    return not (rec.get("type") == "point" and rec.get("repeat", 0) > 0)


def _six_repeats(tmp: Path, name: str, seed: int, shift: float = 1.0, repeats: int = 6) -> Path:
    """The sample with each closed-loop point as ``repeats`` valid repeats (see the module docstring)."""
    rng = random.Random(seed)
    out = []
    for rec in _sample_records():
        if rec["type"] == "point" and rec["kind"] == "closed_loop":
            if rec["repeat"] != 0:
                continue
            for rep in range(repeats):
                r = copy.deepcopy(rec)
                r["repeat"] = rep
                r["id"] = rec["id"].rsplit(":", 1)[0] + f":{rep}"
                r["validity"] = {"valid": True, "flags": []}
                for w in r.get("windows") or []:
                    w.pop("histogram", None)  # compare reads window counts, never window histograms: saves time
                f = math.exp(rng.gauss(0.0, 0.03)) * shift
                _scale_point(r, f, 1 / f, rng, jitter=0.02)
                out.append(r)
        else:
            out.append(rec)
    return _write(tmp, name, out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("compare")
    return {
        "a": SAMPLE,
        "regressed": _copy(tmp, "regressed", edit=_regress),
        "a1": _copy(tmp, "a1", keep=_first_repeat),
        "a1_regressed": _copy(tmp, "a1-regressed", keep=_first_repeat, edit=_regress),
        "six": _six_repeats(tmp, "six", seed=1),
        "six_same": _six_repeats(tmp, "six-same", seed=2),
        "six_regressed": _six_repeats(tmp, "six-regressed", seed=3, shift=1 - PLANTED),
    }


def _perf(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["metric"].isin(POINT_METRICS)]


# ---- the planted regression ------------------------------------------------------------------------------------------
def test_planted_regression_is_flagged_with_six_repeats(runs):
    df = compare_runs(runs["six"], runs["six_regressed"])
    assert not (df["verdict"] == "improvement").any()
    for metric in POINT_METRICS:
        rows = df[df["metric"] == metric]
        assert len(rows) == 9
        for r in rows.itertuples():
            assert r.samples == "repeats" and r.n_a == 6 and r.n_b == 6
            planted = 1 - PLANTED if metric == "throughput_rps" else 1 / (1 - PLANTED)
            # each side's median carries its own ~1.5 % of run-to-run noise
            assert (1 + r.change_pct / 100) / planted == pytest.approx(1.0, abs=0.07)
            assert r.regression and r.verdict == "regression", r
            assert r.p_value < 0.05 and "Mann-Whitney" in r.method and "bootstrap" in r.method
            if metric == "throughput_rps":
                assert r.ci_high_pct < -5  # the whole interval of the ratio is below 1 − 5 %
            else:
                assert r.ci_low_pct > 5
    text = render_compare_text(df)
    assert "REGRESSION" in text and "27 regression(s)" in text
    assert "canary: the machines agree" in text  # the sample's run.json carries a canary (both sides: the same one)


def test_planted_regression_with_two_repeats_is_inconclusive(runs):
    """The real sample's two repeats (many flagged): a 30 % regression cannot be called from so few samples."""
    df = compare_runs(runs["a"], runs["regressed"])
    pts = _perf(df)
    assert len(pts) == 27
    assert not pts["significant"].any() and not pts["regression"].any()
    assert all(v.startswith("inconclusive") for v in pts["verdict"]), pts["verdict"].tolist()
    both_valid = pts[(pts["flagged_a"] == 0) & (pts["flagged_b"] == 0)]
    assert len(both_valid) and (both_valid["verdict"] == "inconclusive: 2 vs 2 repeats (need 5 per side)").all()
    flagged = pts[pts["flagged_a"] + pts["flagged_b"] > 0]
    assert len(flagged) and all("flagged points left out" in v for v in flagged["verdict"])
    tput = both_valid[both_valid["metric"] == "throughput_rps"]
    assert tput["change_pct"].tolist() == pytest.approx([-30.0] * len(tput), abs=2)  # shown, not judged
    assert "0 regression(s), 0 improvement(s)" in render_compare_text(df)


def test_single_repeat_windows_are_not_samples(runs):
    """One repeat per run: the measurement windows are not independent samples, so nothing is flagged."""
    df = compare_runs(runs["a1"], runs["a1_regressed"])
    pts = _perf(df)
    assert len(pts) == 27
    assert not pts["significant"].any()
    # 1 vs 1, or 0 vs 1 where the single repeat is flagged
    assert all(re.fullmatch(r"inconclusive: [01] vs [01] repeats \(need 5 per side\)(; flagged points left out: \d)?",
                            v) for v in pts["verdict"]), pts["verdict"].tolist()
    assert not any("window" in m for m in pts["method"])


# ---- no false alarms -------------------------------------------------------------------------------------------------
def test_second_run_with_the_same_noise_is_not_flagged(runs):
    df = compare_runs(runs["six"], runs["six_same"])
    pts = _perf(df)
    assert len(pts) == 27 and pts["p_value"].notna().all()
    assert not df["significant"].any(), df[df["significant"]]
    assert set(pts["verdict"]) <= {"within noise", "not beyond threshold"}
    text = render_compare_text(df)
    assert "0 regression(s), 0 improvement(s)" in text
    assert "27 row(s) tested" in text and "up to 1.4 false alarm(s)" in text


def test_identical_runs(runs):
    for run in ("a", "six"):
        df = compare_runs(runs[run], runs[run])
        assert not df["significant"].any()
        assert (df.loc[df["metric"] == "throughput_rps", "change_pct"] == 0).all()
    assert (_perf(df)["p_value"] == 1.0).all() and (_perf(df)["verdict"] == "within noise").all()


# ---- shape and outputs -----------------------------------------------------------------------------------------------
def test_frame_columns_and_start_up_rows(runs):
    df = compare_runs(runs["a"], runs["regressed"])
    for col in ("framework", "deployment", "deployment_b", "model", "metric", "a", "b", "change_pct", "significant",
                "method", "n_a", "n_b", "flagged_a", "flagged_b", "p_value", "ci_low_pct", "ci_high_pct"):
        assert col in df.columns
    cold = df[df["metric"] == "cold_start_s"]
    assert len(cold) == 3 and not cold["significant"].any()
    # one start-up per repeat: the sample restarts the server for each of its 2 repeats
    assert (cold["verdict"] == "inconclusive: 2 vs 2 start-ups (need 5 per side)").all()
    slo = df[df["metric"] == "slo_max_rate_rps"].set_index("framework")
    assert len(slo) == 3 and not slo["significant"].any() and not slo["regression"].any()
    # litserve and mosec met the SLO in the sample: the planted -30 % is shown, not judged from one search a side
    for fw in ("litserve", "mosec"):
        assert slo.loc[fw, "verdict"] == "inconclusive: 1 vs 1 searches (need 5 per side)"
        assert slo.loc[fw, "change_pct"] == pytest.approx(-30.0)
    assert slo.loc["mlserver", "verdict"] == "SLO met in neither run"  # no rate met it in the sample


def test_failed_cell_is_reported(tmp_path, runs):
    def fail_mosec(rec: dict) -> None:
        if rec["type"] == "cell" and rec["framework"] == "mosec":
            rec.update(status="failed", reason="ServerError: mosec exited with code 1")

    b = _copy(tmp_path, "mosec-failed", keep=lambda r: not (r["type"] == "point" and r["framework"] == "mosec"),
              edit=fail_mosec)
    meta = json.loads((b / "run.json").read_text())
    mosec_cells = [c for c in meta["cells"].values() if c.get("framework") == "mosec"]
    assert len(mosec_cells) == 2  # mosec/default#r0 and #r1: one server per repeat
    for c in mosec_cells:
        c["status"] = "failed"
    (b / "run.json").write_text(json.dumps(meta))
    df = compare_runs(runs["a"], b)
    row = df[(df["framework"] == "mosec") & (df["metric"] == "status")]
    assert len(row) == 1 and bool(row["regression"].iloc[0]) and row["verdict"].iloc[0] == "ok → failed"
    gone = df[(df["framework"] == "mosec") & (df["metric"] == "throughput_rps")]
    assert len(gone) == 3 and gone["regression"].all() and (gone["verdict"] == "measured in A only").all()


def test_html_output(tmp_path, runs):
    df = compare_runs(runs["six"], runs["six_regressed"])
    path = write_compare_html(df, tmp_path / "cmp" / "compare.html")
    html = path.read_text()
    assert "<table>" in html and "<script" not in html and "http" not in html.split("<body>")[1]
    assert html.count('class="reg"') == int(df["regression"].sum()) == 27
    assert "canary: the machines agree" in html and "false alarm" in html
    assert isinstance(df, pd.DataFrame)


# ---- synthetic runs --------------------------------------------------------------------------------------------------
def _config(framework: str = "litserve", label: str = "default", **over) -> dict:
    c = {"framework": framework, "label": label,
         "models": [{"name": "mlp", "key": "8356192590a7",
                     "sha256": {"model.ts": "ab" * 32, "state_dict.pt": "cd" * 32}}],
         "device": "cpu", "workers": 1, "threads": 1, "max_batch_size": 1, "batch_timeout_ms": 5.0,
         "model_format": "eager", "cache": False, "auth": False, "tls": False, "protocol": "http", "options": {}}
    c.update(over)
    return c


def _draw(seed: int, n: int, median: float = 200.0, sigma: float = 0.03) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).lognormal(math.log(median), sigma, n)]


def _point(cid: str, fw: str, label: str, rep: int, tput: float, flags: tuple[str, ...] = ()) -> dict:
    lat = 4 / tput  # Little's law at concurrency 4
    return {"schema": 1, "type": "point", "cell": cid, "framework": fw, "deployment": label,
            "id": f'point:{cid}:closed:mlp:{{"concurrency": 4}}:{rep}', "workload": "closed", "kind": "closed_loop",
            "models": ["mlp"], "model": "mlp", "batch": 1, "load": {"concurrency": 4}, "repeat": rep,
            "metrics": {"requests": round(tput * 10), "errors": 0, "error_rate": 0.0, "duration_s": 10.0,
                        "throughput_rps": tput, "latency_s": {"p50": lat, "p99": 2 * lat}},
            "validity": {"valid": not flags, "flags": list(flags)}}


def _run(tmp: Path, name: str, cells: list[tuple[dict, list]], canary: dict | None = None,
         cold_starts: int = 1, slo: list[float | None] | None = None) -> Path:
    """A results directory: one deployment per ``(config, values)``; a value is a throughput (one repeat each) or
    ``(throughput, flag)`` for a flagged repeat; ``cold_starts`` cell records per deployment; ``slo``: one SLO
    search per value (its max rate)."""
    path = tmp / name
    path.mkdir()
    meta: dict = {"schema": 1, "run_id": name, "status": "done", "cells": {}, "environment": {}}
    if canary is not None:
        meta["canary"] = canary
    recs = []
    for cfg, values in cells:
        fw, label = cfg["framework"], cfg["label"]
        cid = f"{fw}/{label}"
        meta["cells"][cid] = {"status": "ok", "cell": cid, "framework": fw, "deployment": label}
        for i in range(cold_starts):
            recs.append({"schema": 1, "type": "cell", "id": f"cell:{cid}" + (f":{i}" if i else ""), "cell": cid,
                         "framework": fw, "deployment": label, "config": cfg, "status": "ok", "repeat": i,
                         "cold_start_s": 2.0 + 0.01 * i, "memory_idle": {"pss_bytes": 2.5e8}})
        for rep, v in enumerate(values):
            tput, flags = (v[0], (v[1],)) if isinstance(v, tuple) else (v, ())
            recs.append(_point(cid, fw, label, rep, tput, flags))
        for rep, rate in enumerate(slo or []):
            search = rate if isinstance(rate, dict) else {"max_rate": rate, "points": []}  # a dict: a whole search
            recs.append({"schema": 1, "type": "slo", "cell": cid, "framework": fw, "deployment": label,
                         "id": f"slo:{cid}:slo:mlp:{rep}", "workload": "slo", "models": ["mlp"], "model": "mlp",
                         "batch": 1, "repeat": rep, **search})
    (path / "run.json").write_text(json.dumps(meta))
    (path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


@pytest.mark.parametrize("change, field", [
    ({"workers": 2}, "workers: 1 → 2"),
    ({"max_batch_size": 8, "batch_timeout_ms": 10.0}, "max_batch_size: 1 → 8"),
    ({"models": [{"name": "mlp", "key": "8356192590a7",
                  "sha256": {"model.ts": "ef" * 32, "state_dict.pt": "cd" * 32}}]}, "models.mlp.sha256.model.ts"),
    ({"options": {"fast_api": True}}, "options.fast_api: absent → True"),
])
def test_same_label_with_a_different_configuration_is_not_compared(tmp_path, change, field):
    a = _run(tmp_path, "a", [(_config(), _draw(1, 6))])
    b = _run(tmp_path, "b", [(_config(**change), _draw(2, 6, median=100.0))])  # half the throughput
    df = compare_runs(a, b)
    assert len(df) and not df["significant"].any() and not df["regression"].any()
    pts = _perf(df)
    assert len(pts) == 3 and pts["p_value"].isna().all()
    assert all(v.startswith("not comparable: configuration differs (") and field in v for v in pts["verdict"]), \
        pts["verdict"].tolist()
    assert pts["change_pct"].iloc[0] == pytest.approx(-50, abs=5)  # shown, not judged
    cold = df[df["metric"] == "cold_start_s"]
    assert cold["verdict"].iloc[0].startswith("not comparable")
    text = render_compare_text(df)
    head = text.split("framework")[0]
    assert "not comparable: litserve/default has a different configuration" in head and field in head
    assert "0 regression(s)" in text and "5 not comparable" in text  # 3 point rows, cold start, idle memory
    html = write_compare_html(df, tmp_path / "c.html").read_text()
    assert 'class="nc"' in html and "not comparable" in html and 'class="reg"' not in html


def test_same_configuration_under_different_labels_is_paired(tmp_path):
    a = _run(tmp_path, "a", [(_config(label="default"), _draw(1, 6)), (_config("mosec"), _draw(3, 6))])
    b = _run(tmp_path, "b", [(_config(label="renamed"), _draw(2, 6, median=140.0)), (_config("mosec"), _draw(4, 6))])
    df = compare_runs(a, b)
    lit = df[df["framework"] == "litserve"]
    assert not lit["verdict"].str.startswith("measured in").any() and "status" not in set(lit["metric"])
    tput = lit[lit["metric"] == "throughput_rps"].iloc[0]
    assert (tput.deployment, tput.deployment_b) == ("default", "renamed")
    assert tput.verdict == "regression" and "paired by configuration (default = renamed)" in tput.method
    assert not df[df["framework"] == "mosec"]["significant"].any()
    text = render_compare_text(df)
    assert "paired by configuration under different labels: litserve/default (A) = litserve/renamed (B)" in text
    assert "litserve/default→renamed" in text


def test_a_relabelled_deployment_beside_a_reused_label(tmp_path):
    """A's ``fast`` (4 workers) is B's ``default``; B's ``fast`` has 8 workers: config decides, not the label."""
    a = _run(tmp_path, "a", [(_config(label="fast", workers=4), _draw(1, 6))])
    b = _run(tmp_path, "b", [(_config(label="default", workers=4), _draw(2, 6)),
                             (_config(label="fast", workers=8), _draw(3, 6, median=400.0))])
    df = compare_runs(a, b)
    paired = df[(df["deployment"] == "fast") & (df["deployment_b"] == "default") & (df["metric"] == "throughput_rps")]
    assert len(paired) == 1 and paired["p_value"].notna().all() and not paired["significant"].any()
    new = df[(df["deployment_b"] == "fast") & (df["metric"] == "throughput_rps")]
    assert (new["verdict"] == "measured in B only").all() and not new["regression"].any()


def test_deployment_without_a_recorded_configuration_is_matched_by_label(tmp_path):
    a = _run(tmp_path, "a", [(_config(), _draw(1, 6))])
    b = _run(tmp_path, "b", [(_config(), _draw(2, 6, median=140.0))])
    recs = [json.loads(line) for line in (a / "records.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("config", None)  # e.g. a run written before cell records carried the configuration
    (a / "records.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    df = compare_runs(a, b)
    tput = df.query("metric == 'throughput_rps'").iloc[0]
    assert tput.verdict == "regression" and "matched by label (configuration not recorded)" in tput.method
    assert "configuration not recorded in run A: matched by label" in render_compare_text(df)


def test_flagged_points_are_left_out(tmp_path):
    base = _draw(1, 6)
    a = _run(tmp_path, "a", [(_config(), base)])
    # B: the same four valid repeats plus two flagged ones that are terrible
    b_vals = [*_draw(2, 4), (60.0, "unstable"), (50.0, "errors")]
    df = compare_runs(a, _run(tmp_path, "b", [(_config(), b_vals)]))
    tput = df[df["metric"] == "throughput_rps"].iloc[0]
    assert tput.verdict == "inconclusive (flagged points left out: 2): 6 vs 4 valid repeats, need 5 per side"
    assert (tput.n_a, tput.n_b, tput.flagged_b) == (6, 4, 2) and not tput.regression
    assert tput.b == pytest.approx(np.median(_draw(2, 4)))  # the flagged values are not in the median either
    # seven repeats, two flagged: five samples are left, tested without the flagged ones
    b7 = _run(tmp_path, "b7", [(_config(), [*_draw(2, 5), (60.0, "unstable"), (50.0, "unstable")])])
    df = compare_runs(a, b7)
    pts = _perf(df)
    assert (pts["n_b"] == 5).all() and pts["p_value"].notna().all() and not pts["significant"].any()
    assert all("flagged points left out: 2" in m for m in pts["method"])
    # fewer than five repeats to begin with: the sample size is the reason, the flags are mentioned
    b3 = _run(tmp_path, "b3", [(_config(), [*_draw(2, 3), (60.0, "unstable")])])
    v = compare_runs(a, b3).query("metric == 'throughput_rps'")["verdict"].iloc[0]
    assert v == "inconclusive: 6 vs 3 repeats (need 5 per side); flagged points left out: 1"


def test_fewer_than_five_repeats_is_inconclusive(tmp_path):
    a4 = _run(tmp_path, "a4", [(_config(), _draw(1, 4))])
    b = _run(tmp_path, "b", [(_config(), _draw(2, 6, median=100.0))])  # 50 % worse
    df = compare_runs(a4, b)
    pts = _perf(df)
    assert (pts["verdict"] == "inconclusive: 4 vs 6 repeats (need 5 per side)").all()
    assert not pts["regression"].any() and pts["p_value"].isna().all()
    assert "0 regression(s)" in render_compare_text(df)
    a5 = _run(tmp_path, "a5", [(_config(), _draw(1, MIN_SAMPLES))])
    df = compare_runs(a5, b)
    assert (_perf(df)["verdict"] == "regression").all()


def test_canary_disagreement_makes_timing_rows_inconclusive(tmp_path):
    cells_a = [(_config(), _draw(1, 6))]
    cells_b = [(_config(), _draw(2, 6, median=140.0))]  # a planted 30 % regression
    a = _run(tmp_path, "a", cells_a, canary={"median_s": 1.00, "rel_spread": 0.01})
    b = _run(tmp_path, "b", cells_b, canary={"median_s": 1.20, "rel_spread": 0.01})
    df = compare_runs(a, b)
    assert df.attrs["canary"]["status"] == "differ"
    pts = _perf(df)
    assert (pts["verdict"] == "inconclusive: the machines differed by +20.0 %").all()
    assert not df["regression"].any() and all("without the canary: regression" in m for m in pts["method"])
    assert df.attrs["tested_rows"] == 0  # nothing was judged, so no false alarm is possible
    cold = df[df["metric"] == "cold_start_s"]["verdict"].iloc[0]
    assert cold == "inconclusive: 1 vs 1 start-ups (need 5 per side)"  # already inconclusive: its own reason stays
    mem = df[df["metric"] == "idle_pss_bytes"]["verdict"].iloc[0]
    assert not mem.startswith("inconclusive: the machines")  # memory does not depend on the machine's speed
    text = render_compare_text(df)
    assert text.splitlines()[2].startswith("note: WARNING: the machines differed")
    html = write_compare_html(df, tmp_path / "c.html").read_text()
    assert '<p class="warn">WARNING: the machines differed' in html
    # within the canary's own noise: compared as usual
    b_ok = _run(tmp_path, "b-ok", cells_b, canary={"median_s": 1.02, "rel_spread": 0.01})
    df = compare_runs(a, b_ok)
    assert df.attrs["canary"]["status"] == "agree" and (_perf(df)["verdict"] == "regression").all()
    assert "canary: the machines agree" in render_compare_text(df)
    # no canary on one side: unchanged behaviour, and the output says the machines were not checked
    df = compare_runs(a, _run(tmp_path, "b-none", cells_b))
    assert (_perf(df)["verdict"] == "regression").all() and "canary in run A only" in render_compare_text(df)


def test_canary_limit():
    """Runs recorded before the canary kept its repetitions: medians against 3 × the larger spread, at least 5 %."""
    def c(m, s):
        return {"canary": {"median_s": m, "rel_spread": s}}

    assert canary_check(c(1.0, 0.0), c(1.049, 0.0))["status"] == "agree"  # the 5 % floor
    assert canary_check(c(1.0, 0.0), c(1.051, 0.0))["status"] == "differ"
    assert canary_check(c(1.0, 0.05), c(1.14, 0.01))["status"] == "agree"  # 3 × the larger spread = 15 %
    assert canary_check(c(1.0, 0.05), c(0.84, 0.01))["status"] == "differ"
    assert canary_check({}, {})["status"] == "none"
    assert canary_check(c(1.0, 0.01), {"canary": {"median_s": None}})["status"] == "one"


def _canary_reps(seed: int, per_iteration_s: float, iterations: int, cells: int = 7, cv: float = 0.10,
                 moment_cv: float = 0.0) -> dict:
    """A run's canary as the harness records it: 2 measurements per cell of 7 repetitions each, lognormal noise
    (``cv`` per repetition) around each measurement's own speed (``moment_cv``: the machine's state at that moment,
    shared by the measurement's repetitions)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(2 * cells):
        moment = per_iteration_s * rng.lognormal(0, moment_cv) if moment_cv else per_iteration_s
        samples.append({"iterations": iterations, "times_s": list(moment * iterations * rng.lognormal(0, cv, 7)),
                        "median_s": moment * iterations, "rel_spread": 2 * cv})
    return {"canary": {"median_s": per_iteration_s * iterations, "rel_spread": 2 * cv, "samples": samples}}


def test_canary_compares_measurements_per_iteration():
    # the same speed with different iteration counts (the old calibrated canary): per iteration they agree
    chk = canary_check(_canary_reps(1, 140e-6, 525), _canary_reps(2, 140e-6, 880))
    assert chk["status"] == "agree" and abs(chk["diff"]) < 0.05 and chk["p_value"] > 0.01
    assert "per iteration" in chk["note"] and "14 vs 14 measurements" in chk["note"]
    # 15 % slower, 10 % noise per repetition: over 14 measurements a side, the difference is found
    chk = canary_check(_canary_reps(3, 140e-6, 700), _canary_reps(4, 161e-6, 700))
    assert chk["status"] == "differ" and chk["diff"] > 0.05 and chk["p_value"] < 0.01
    # significant but small: not a machine difference worth a verdict
    chk = canary_check(_canary_reps(5, 140e-6, 700, cv=0.01), _canary_reps(6, 143e-6, 700, cv=0.01))
    assert chk["p_value"] < 0.01 and chk["status"] == "agree"
    # A/A: 200 pairs of one speed; the rule (p < 0.01 and > 5 %) calls almost none of them different
    differ = sum(canary_check(_canary_reps(100 + 2 * i, 140e-6, 700), _canary_reps(101 + 2 * i, 140e-6, 700))
                 ["status"] == "differ" for i in range(200))
    assert differ <= 2


def test_canary_repetitions_of_one_measurement_are_not_independent():
    """As on the development VM: each measurement has its own speed (the machine's moment, 10 % between
    measurements) and its repetitions scatter 3 % around it.  Pooling the 98 repetitions a side as independent
    samples called the machines different in most A/A pairs; one value per measurement keeps the test's size."""
    from scipy.stats import mannwhitneyu

    from servingbench.measure.canary import per_iteration_times

    pooled = tested = 0
    for i in range(100):
        a = _canary_reps(300 + 2 * i, 140e-6, 700, cv=0.03, moment_cv=0.10)["canary"]
        b = _canary_reps(301 + 2 * i, 140e-6, 700, cv=0.03, moment_cv=0.10)["canary"]
        pooled += mannwhitneyu(per_iteration_times(a["samples"]), per_iteration_times(b["samples"])).pvalue < 0.01
        tested += canary_check({"canary": a}, {"canary": b})["p_value"] < 0.01
    assert pooled >= 20 and tested <= 3


def test_canary_difference_keeps_only_changes_against_it(tmp_path):
    """A regression measured on a faster machine cannot be the machine's doing: it stands; one on a slower machine
    is inconclusive; so is "within noise" on a faster machine (it could hide a regression)."""
    cells_a = [(_config(), _draw(1, 6))]
    worse = [(_config(), _draw(2, 6, median=140.0))]  # a planted 30 % regression (latency; throughput down)
    same = [(_config(), _draw(3, 6))]
    a = _run(tmp_path, "a", cells_a, canary=_canary_reps(7, 140e-6, 700)["canary"])
    fast = _canary_reps(8, 120e-6, 700)["canary"]
    slow = _canary_reps(9, 165e-6, 700)["canary"]
    df = compare_runs(a, _run(tmp_path, "worse-fast", worse, canary=fast))
    assert df.attrs["canary"]["status"] == "differ" and df.attrs["canary"]["diff"] < 0
    pts = _perf(df)
    assert (pts["verdict"] == "regression").all() and all("cannot explain" in m for m in pts["method"])
    assert "B's machine was faster" in render_compare_text(df)
    df = compare_runs(a, _run(tmp_path, "worse-slow", worse, canary=slow))
    assert _perf(df)["verdict"].str.startswith("inconclusive: the machines differed by +").all()
    df = compare_runs(a, _run(tmp_path, "same-fast", same, canary=fast))
    assert _perf(df)["verdict"].str.startswith("inconclusive: the machines differed by -").all()
    assert not df["regression"].any()


def test_slo_and_cold_start_need_five_per_side(tmp_path):
    a = _run(tmp_path, "a", [(_config(), _draw(1, 6))], slo=[100.0])
    b = _run(tmp_path, "b", [(_config(), _draw(2, 6))], slo=[None])
    row = compare_runs(a, b).query("metric == 'slo_max_rate_rps'").iloc[0]
    assert row.verdict == "inconclusive: 1 vs 1 searches (need 5 per side); SLO met in A only"
    assert not row.regression
    a = _run(tmp_path, "a5", [(_config(), _draw(1, 6))], slo=[100.0, 104.0, 98.0, 101.0, 99.0], cold_starts=5)
    b = _run(tmp_path, "b5", [(_config(), _draw(2, 6))], slo=[70.0, 72.0, 69.0, 71.0, 68.0], cold_starts=5)
    df = compare_runs(a, b)
    slo = df.query("metric == 'slo_max_rate_rps'").iloc[0]
    assert slo.verdict == "regression" and slo.n_a == 5
    cold = df.query("metric == 'cold_start_s'").iloc[0]
    assert cold.n_a == 5 and cold.verdict == "within noise"


def test_searches_the_machine_decided_are_left_out(tmp_path):
    """A search whose rates passed but whose confirmations failed for steal is no 0 rps: it is left out like a
    flagged point, so five of them leave B without a sample instead of making a 100 % regression."""
    steal = {"max_rate": None, "reason": "not confirmed", "points": [
        {"rate": 100.0, "verdict": "pass", "flags": []},
        {"rate": 100.0, "verdict": "fail", "flags": ["interference"], "confirm": True}]}
    a = _run(tmp_path, "a", [(_config(), _draw(1, 6))], slo=[100.0, 104.0, 98.0, 101.0, 99.0])
    b = _run(tmp_path, "b", [(_config(), _draw(2, 6))], slo=[steal] * 5)
    row = compare_runs(a, b).query("metric == 'slo_max_rate_rps'").iloc[0]
    assert not row.regression and row.flagged_b == 5 and row.n_b == 0
    assert row.verdict.startswith("inconclusive"), row.verdict
    # a clean failure at the lowest rate is the server's answer: it counts as 0 rps, a regression
    clean = {"max_rate": None, "reason": "no rate met", "points": [{"rate": 100.0, "verdict": "fail", "flags": []}]}
    b2 = _run(tmp_path, "b2", [(_config(), _draw(2, 6))], slo=[clean] * 5)
    row = compare_runs(a, b2).query("metric == 'slo_max_rate_rps'").iloc[0]
    assert row.regression and row.flagged_b == 0


# ---- the decision rule -----------------------------------------------------------------------------------------------
def test_decision_rule_directions_and_threshold():
    base = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2]
    assert decide_change(base, [x * 1.3 for x in base], "lower").verdict == "regression"
    assert decide_change(base, [x * 1.3 for x in base], "higher").verdict == "improvement"
    small = decide_change(base, [x * 1.03 for x in base], "higher")  # consistent but under the 5 % threshold
    assert small.verdict == "not beyond threshold" and small.p_value < 0.05 and not small.significant
    few = decide_change(base[:4], [x * 2 for x in base], "higher")
    assert few.verdict == "inconclusive: 4 vs 6 repeats (need 5 per side)" and few.p_value is None
    assert decide_change([1.0] * 5, [1.0] * 5, "higher").verdict == "within noise"
    assert decide_change([1.0, None, math.nan, 1, 1, 1, 1], [1.0] * 5, "higher").p_value == 1.0


def test_simulated_false_alarm_rate_and_power():
    """200 A/A pairs from one lognormal distribution (5 vs 5): at most ~alpha flagged (0.05 + slack); a 20 % shift
    with 8 repeats a side at 5 % run-to-run noise: flagged in most pairs.  Seeded: the counts are fixed."""
    rng = np.random.default_rng(20261124)
    false_alarms = sum(
        decide_change(rng.lognormal(0.0, 0.1, 5), rng.lognormal(0.0, 0.1, 5), "higher").significant
        for _ in range(200))
    assert false_alarms <= 20
    hits = sum(
        decide_change(rng.lognormal(0.0, 0.05, 8), rng.lognormal(math.log(0.8), 0.05, 8), "higher").regression
        for _ in range(200))
    assert hits >= 160


def _with_cold_starts(path: Path, values: list[float]) -> Path:
    recs = [json.loads(line) for line in (path / "records.jsonl").read_text().splitlines()]
    cells = iter(values)
    for r in recs:
        if r["type"] == "cell":
            r["cold_start_s"] = next(cells)
    (path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


def test_cold_start_is_judged_against_its_wider_threshold(tmp_path):
    """Seven start-ups a side: the 20 % an unchanged server moved between two runs on the VM is not flagged; a
    doubling is."""
    base = [2.00, 2.02, 1.98, 2.01, 2.03, 1.99, 2.00]
    a = _with_cold_starts(_run(tmp_path, "a", [(_config(), _draw(1, 7))], cold_starts=7), base)
    faster = _with_cold_starts(_run(tmp_path, "b", [(_config(), _draw(1, 7))], cold_starts=7),
                               [0.8 * v for v in base])
    slower = _with_cold_starts(_run(tmp_path, "c", [(_config(), _draw(1, 7))], cold_starts=7),
                               [2.0 * v for v in base])
    row = compare_runs(a, faster).query("metric == 'cold_start_s'").iloc[0]
    assert not row["significant"] and row["verdict"] == "not beyond threshold", row["verdict"]
    row = compare_runs(a, slower).query("metric == 'cold_start_s'").iloc[0]
    assert row["regression"] and row["verdict"] == "regression"
