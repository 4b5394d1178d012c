"""End to end through the CLI with a real LitServe server and real locust: run, interrupt, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

SUITE = """\
name: e2e
frameworks: [litserve]
models: [mlp]
deployments:
{deployments}
measurement:
  warmup: 0.5s
  window: 1s
  windows: 2
  max_duration: 3s
  min_requests: 20
workloads:
  - name: closed
    kind: closed_loop
    concurrency: [1, 4]
"""


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "servingbench.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def results_dir(stdout: str) -> Path:
    line = [l for l in stdout.splitlines() if l.startswith("results: ")][-1]
    return Path(line.split("results: ", 1)[1].strip())


def test_run_records_points(tmp_path, no_leftovers):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(deployments="  - label: default"))
    # a relative --out (cwd: tmp_path): the results land under it and the printed path is absolute
    p = cli("run", str(suite), "--out", "rel-results", env={**os.environ, "CI": "true"}, cwd=tmp_path)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    assert results_dir(stdout).is_absolute() and results_dir(stdout).is_relative_to(tmp_path / "rel-results")
    # Issue 19: through a pipe in CI the progress is plain lines: the plan, then after the cell how far the run is
    assert "\x1b[" not in stderr and "plan: 1 cell(s), 2 load point(s)" in stderr, stderr[-3000:]
    assert "progress: 2/2 points, 1/1 cells, elapsed" in stderr and "ETA 0s" in stderr, stderr[-3000:]
    assert "litserve/default" in stderr.split("summary", 1)[-1]  # the end-of-run summary table
    rd = results_dir(stdout)
    run = json.loads((rd / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["cells"]["litserve/default"]["status"] == "ok"
    assert run["environment"]["frameworks"]["litserve"]
    recs = [json.loads(l) for l in (rd / "records.jsonl").read_text().splitlines()]
    points = [r for r in recs if r["type"] == "point"]
    assert {r["model"] for r in recs if r["type"] == "inprocess"} == {"mlp"}  # inprocess_limit: true (default)
    assert sorted(r["load"]["concurrency"] for r in points) == [1, 4]
    for r in points:
        assert r["metrics"]["requests"] > 20 and r["metrics"]["errors"] == 0
        assert 0 < r["metrics"]["latency_s"]["p50"] <= r["metrics"]["latency_s"]["p99"]
        assert r["histogram"]["histogram"] and r["resources"]["samples"] > 0
    cell = [r for r in recs if r["type"] == "cell"][0]
    assert cell["status"] == "ok" and cell["cold_start_s"] > 0 and cell["verification"]["mlp"]["ok"]
    assert (rd / "manifests" / "litserve-default" / "deployment.json").is_file()
    assert any((rd / "logs" / "litserve-default").glob("litserve.log"))


def test_sigint_keeps_finished_cells_and_resume_finishes(tmp_path, no_leftovers):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(deployments="  - label: a\n  - label: b").replace(
        "measurement:", "inprocess_limit: false\nmeasurement:", 1))
    p = cli("run", str(suite), "--out", str(tmp_path / "results"), start_new_session=True)
    # Wait until cell a is finished and cell b is running, then Ctrl-C the harness.
    deadline = time.time() + 240
    run_json = None
    while time.time() < deadline:
        found = list((tmp_path / "results").glob("*/run.json"))
        if found:
            run_json = found[0]
            try:
                cells = json.loads(run_json.read_text()).get("cells", {})
            except ValueError:
                cells = {}
            if cells.get("litserve/a", {}).get("status") == "ok" and cells.get("litserve/b", {}).get("status") == "running":
                break
        assert p.poll() is None, p.communicate()[1][-2000:]
        time.sleep(0.2)
    else:
        pytest.fail("cell a never finished")
    time.sleep(3)  # mid-way through cell b
    t0 = time.time()
    os.kill(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert time.time() - t0 < 30
    assert p.returncode == 130, stderr[-2000:]
    run = json.loads(run_json.read_text())
    assert run["status"] == "interrupted"
    assert run["cells"]["litserve/a"]["status"] == "ok"
    assert run["cells"]["litserve/b"]["status"] == "interrupted"
    rd = run_json.parent
    # resume runs only the missing cell
    p2 = cli("run", str(suite), "--resume", str(rd))
    out2, err2 = p2.communicate(timeout=300)
    assert p2.returncode == 0, err2[-3000:]
    assert "litserve/a: already ok (resume)" in err2
    run = json.loads(run_json.read_text())
    assert run["status"] == "complete" and run["cells"]["litserve/b"]["status"] == "ok"
    recs = [json.loads(l) for l in (rd / "records.jsonl").read_text().splitlines() if l.strip()]
    cells_ok = {r["cell"] for r in recs if r["type"] == "cell" and r["status"] == "ok"}
    assert cells_ok == {"litserve/a", "litserve/b"}


def test_unknown_framework_suggests(tmp_path):
    p = cli("verify", "litserv")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "Did you mean 'litserve'" in err


def test_malformed_scenario_names_file_field_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.format(deployments="  - label: default\n    workers: -1"))
    p = cli("run", str(bad))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "bad.yaml" in err and "deployments.0.workers" in err and "-1" in err
