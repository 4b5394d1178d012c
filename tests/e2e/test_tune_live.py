"""``servingbench tune`` end to end against the calibration server (a real server whose answer is known): the
profiles run first, every trial is a full run, Ctrl-C keeps finished trials and ``--resume`` runs only what is left.

The calibration adapter marks its ``service_ms`` option for tuning (1-4 ms; "framework default" 3 ms, the suite's
2 ms): the throughput at the SLO of an M/D/1 queue grows as the service time shrinks, so the profile at 3 ms must
reach a lower rate than the one at 2 ms (probes at 200 and 400 rps: at 3 ms, 400 rps is beyond capacity)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server

SUITE = """
name: tune-calibration
frameworks: [calibration]
models: [mlp]
deployments: [{label: default, options: {calibration: {service_ms: 2.0}}}]
inprocess_limit: false
measurement: {warmup: 0.5s, window: 1s, windows: 2, tolerance: 0.3, max_duration: 4s, min_requests: 50}
workloads:
  - name: slo
    kind: slo_search
    start_rate: 200
    max_rate: 400
    max_steps: 2
    confirm: false
    measurement: {warmup: 0.5s, window: 1s, windows: 2, tolerance: 0.3, max_duration: 4s, min_requests: 300}
slo: {p99: 100ms, max_error_rate: 0.01}
"""


def _trials(path: Path) -> list[dict]:
    f = path / "trials.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def test_tune_profiles_interrupt_and_resume(tmp_path, no_leftovers, interrupted_cli):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    env = {**os.environ, "SERVINGBENCH_ADAPTERS": REGISTRATION}
    env.pop("SERVINGBENCH_CALIBRATION_SLOWDOWN", None)
    args = [str(suite), "--out", str(tmp_path / "tune"), "--max-trials", "2"]

    def tuning_dir(lines: list[str]) -> Path | None:
        found = [x for x in lines if x.startswith("tuning: ")]
        return Path(found[0].split("tuning: ", 1)[1].strip()) if found else None

    def second_trial_running(lines: list[str]) -> bool:  # the first trial finished, the second one running
        path = tuning_dir(lines)
        return bool(path and _trials(path) and any(" trial 1 (" in x for x in lines))

    rc, lines = interrupted_cli(["tune", *args], second_trial_running, "no trial finished", env=env,
                                start_timeout=300, stop_timeout=90)
    path = tuning_dir(lines)
    text = "".join(lines)
    assert rc == 130, text[-3000:]
    assert "interrupted: finished trials are kept" in text and "Traceback" not in text
    first = _trials(path)
    assert [t["trial"] for t in first] == [0] and first[0]["profile"] == "framework-default"
    assert first[0]["params"] == {"workers": 1, "options.service_ms": 3.0}

    r = subprocess.run([sys.executable, "-m", "servingbench.cli", "tune", *args, "--resume", str(path)],
                       capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "1 interrupted trial(s) will run again with the same knobs" in r.stdout
    trials = _trials(path)
    numbers = [t["trial"] for t in trials]
    assert numbers[0] == 0 and len(set(numbers)) == len(numbers) == 2  # trial 0 kept, not repeated; trial 1 re-run
    assert trials[1]["params"] == {"workers": 1, "options.service_ms": 2.0 if first[0]["status"] == "ok" else 3.0}
    summary = json.loads((path / "summary.json").read_text())["calibration-mlp"]
    assert summary["n_trials"] == 2
    fd, sd = summary["profiles"]["framework-default"], summary["profiles"]["servingbench-default"]
    if fd and sd and fd["status"] == sd["status"] == "ok":
        assert fd["max_rate"] < sd["max_rate"], (fd, sd)  # 3 ms cannot hold 400 rps; 2 ms can
        assert summary["tuned"]["max_rate"] == sd["max_rate"]
    else:  # steal or other work failed the probes: the trial says so instead of reading 0 rps
        odd = [t for t in trials if t["status"] != "ok"]
        assert odd and all(t["status"] == "unmeasured" and "machine" in t["reason"] for t in odd), trials
    md = (path / "summary.md").read_text()
    assert "| calibration-mlp |" in md and re.search(r"\| \d+ %( \(a rate is a lower bound\))? \|", md), md
    assert (path / "pareto-calibration-mlp.png").is_file()
    assert re.search(r"framework-default: \d+ %( \(a rate is a lower bound\))? of tuned", r.stdout), r.stdout
