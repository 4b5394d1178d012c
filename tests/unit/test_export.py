"""Issue 19: export a run into a local MLflow store (read back with MLflow's own client) and as Parquet tables
(read back with pandas: they match the report's CSVs).  Uses the committed schema-1 results (a real quick-suite
run), copied, so the export also covers a migrated run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from servingbench.cli import app
from servingbench.export import CELL_TAG, RUN_TAG, default_tracking_uri, tidy_tables
from servingbench.report.data import RunData

FIXTURE = Path(__file__).parent.parent / "fixtures" / "results-schema1"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    dst = tmp_path / "results" / "quick-sample"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_parquet_tables_read_back_match_the_report_csvs(run_dir, tmp_path):
    r = CliRunner().invoke(app, ["export", str(run_dir), "--parquet", str(tmp_path / "pq")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "reports")])
    assert r.exit_code == 0, r.output
    tables = next((tmp_path / "reports").iterdir()) / "tables"
    for name, csv in (("points", "points.csv"), ("cells", "cells.csv")):
        pq = pd.read_parquet(tmp_path / "pq" / f"{name}.parquet")
        want = pd.read_csv(tables / csv)
        assert len(pq) == len(want) > 0
        common = [c for c in want.columns]
        assert set(common) <= set(pq.columns), set(common) - set(pq.columns)
        # through CSV both become the same text/numbers: compare the parquet table the same way
        got = pd.read_csv(pd.io.common.StringIO(pq[common].to_csv(index=False)))
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    pts = pd.read_parquet(tmp_path / "pq" / "points.parquet")
    assert pts["load_level"].notna().all()
    win = pd.read_parquet(tmp_path / "pq" / "windows.parquet")
    d = RunData.load(run_dir)
    assert len(win) == sum(len(p["windows"]) for p in d.points)
    assert set(win["record_id"]) == set(pts["record_id"])
    # the reported windows are the stable tail the point's metrics come from
    for p in d.points:
        rep = win[(win["record_id"] == p["id"]) & win["reported"]]
        assert list(rep["window"]) == list(range(p["reported_from"], len(p["windows"])))


def test_mlflow_export_into_a_local_store_reads_back_with_mlflows_client(run_dir):
    import json

    from mlflow import MlflowClient

    from servingbench.measure.stats import slo_machine_limited

    # LitServe's search failed above its answer only for steal: its rate is a lower bound, tagged as such
    lines = []
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        rec = json.loads(line) if line.strip() else None
        if rec and rec.get("type") == "slo" and rec["framework"] == "litserve":
            for pt in rec["points"]:
                if pt["verdict"] == "fail":
                    pt["flags"] = ["interference"]
            line = json.dumps(rec)
        lines.append(line)
    (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["export", str(run_dir), "--mlflow", "--experiment", "sb-test"])
    assert r.exit_code == 0, r.output
    d = RunData.load(run_dir)
    client = MlflowClient(tracking_uri=default_tracking_uri(run_dir))
    exp = client.get_experiment_by_name("sb-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_cell = {x.data.tags[CELL_TAG]: x for x in runs}
    assert set(by_cell) == set(d.meta["cells"]) and all(x.data.tags[RUN_TAG] == d.run_id for x in runs)
    tagged = 0
    for cid, x in by_cell.items():
        pts = [p for p in d.points if p["cell"] == cid]
        assert x.data.params["framework"] == d.meta["cells"][cid]["framework"]
        assert x.data.params["env.python"] == d.meta["environment"]["python"]
        for p in pts:  # every point's throughput, with its load level as the step (SLO probes: the probe index)
            key = f"{p['workload']}/{p['model']}/throughput_rps"
            hist = {m.step: m.value for m in client.get_metric_history(x.info.run_id, key)}
            step = p["step"] if p.get("step") is not None else int(p["load_level"])
            assert hist[step] == pytest.approx(p["metrics"]["throughput_rps"])
        flagged = [p for p in pts if p["validity"]["flags"]]
        assert len([k for k in x.data.tags if k.startswith("flags/")]) == len(flagged)
        machine = {f"{s['workload']}/{s['model']}/slo_machine_limited" for s in d.slos
                   if s.get("cell") == cid and slo_machine_limited(s)}
        assert {k for k in x.data.tags if k.endswith("/slo_machine_limited")} == machine
        tagged += len(machine)
        arts = [a.path for a in client.list_artifacts(x.info.run_id, "report")]
        assert "report/index.html" in arts
    assert tagged == 1  # LitServe's search (one repeat has it)
    # a second export adds nothing
    r = CliRunner().invoke(app, ["export", str(run_dir), "--mlflow", "--experiment", "sb-test"])
    assert r.exit_code == 0 and r.output.count("already exported") == len(d.meta["cells"]), r.output
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == len(runs)


def test_export_needs_something_to_do_and_a_results_directory(tmp_path, run_dir):
    r = CliRunner().invoke(app, ["export", str(run_dir)])
    assert r.exit_code != 0 and "--mlflow and/or --parquet" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--parquet", str(tmp_path / "pq")])
    assert r.exit_code != 0 and "nope" in r.output
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(app, ["export", str(run_dir), "--parquet", str(tmp_path / "file")])
    assert r.exit_code != 0 and "not a directory" in r.output


def test_tidy_tables_have_one_row_per_observation(run_dir):
    t = tidy_tables(RunData.load(run_dir))
    assert t["points"]["record_id"].is_unique
    assert not t["windows"].duplicated(["record_id", "window"]).any()
    assert t["cells"]["cell"].is_unique
