"""Per-framework interpreters: a LitServe-only venv built from the lock serves a deployment through the harness.

The venv is created fresh for this module (about 30 s here: pip takes every pin from the lock, torch from the local
wheel, servingbench through a .pth to this checkout), so the test exercises the helper users run, not a cached copy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from servingbench import isolation
from servingbench.adapters import registry
from servingbench.adapters.base import Secrets
from servingbench.harness import LiveDeployment, make_deployment
from servingbench.scenarios.schema import DeploymentConfig

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def litserve_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("venvs") / "litserve"
    t0 = time.perf_counter()
    python = isolation.create_venv("litserve", venv, lock=ROOT / "requirements.lock", reuse=False, log=print)
    seconds = time.perf_counter() - t0
    print(f"isolated litserve venv created in {seconds:.0f} s")
    return python, venv


def run_in(python: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)


def test_venv_holds_the_framework_at_the_lock_versions_and_nothing_else(litserve_venv):
    python, venv = litserve_venv
    pins = isolation.read_lock(ROOT / "requirements.lock")
    p = run_in(python, "import importlib.metadata as m, json, servingbench.models.runtime as r, servingbench, sys; "
                       "print(json.dumps({d: m.version(d) for d in ('litserve', 'torch', 'numpy', 'fastapi')} | "
                       "{'servingbench': servingbench.__file__, 'prefix': sys.prefix}))")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    for dist in ("litserve", "torch", "numpy", "fastapi"):
        assert pins[dist] == f"{pins[dist].split('==')[0]}=={got[dist].split('+')[0]}", (dist, got[dist])
    assert got["prefix"] == str(venv)
    assert got["servingbench"] == str(ROOT / "src" / "servingbench" / "__init__.py")  # the harness's own code
    for absent in ("mosec", "mlserver", "ray", "mlflow", "pandas", "locust"):  # other frameworks, harness deps
        assert run_in(python, f"import {absent}").returncode != 0, f"{absent} leaked into the isolated venv"
    stamp = json.loads((venv / isolation.STAMP).read_text())
    assert stamp["lock_sha256"] == isolation.lock_hash(ROOT / "requirements.lock") and stamp["framework"] == "litserve"
    t0 = time.perf_counter()
    assert isolation.create_venv("litserve", venv, lock=ROOT / "requirements.lock", log=print) == python  # reused
    assert time.perf_counter() - t0 < 10
    assert isolation.check_interpreter(str(python), "litserve") == got["litserve"]
    with pytest.raises(isolation.IsolationError, match="mosec is not installed"):
        isolation.check_interpreter(str(python), "mosec")


def test_live_deployment_serves_from_the_isolated_interpreter(litserve_venv, zoo_artifacts, tmp_path, no_leftovers):
    python, venv = litserve_venv
    dep = make_deployment("litserve", DeploymentConfig(), [zoo_artifacts["mlp"]], "cpu")
    live = LiveDeployment(registry.get("litserve"), dep, tmp_path / "deploy", tmp_path / "logs", Secrets(),
                          python=str(python))
    with live:
        assert live.verification["mlp"]["ok"]
        leader = psutil.Process(live.servers[0].pid)
        assert leader.cmdline()[0] == str(python)  # (exe() resolves the venv's symlink to the base interpreter)
        assert live.servers[0].spec.env["PATH"].split(":")[0] == str(python.parent)
        libtorch = {m.path for p in live.processes() for m in _maps(p) if "libtorch_cpu" in m.path}
        assert libtorch and all(path.startswith(str(venv)) for path in libtorch), libtorch
        assert not any(path.startswith(sys.prefix) for path in libtorch)
    for r in live.stop_reports:
        assert r.graceful and not r.survivors and not r.ports_held, r


def _maps(p: psutil.Process):
    try:
        return p.memory_maps(grouped=True)
    except psutil.Error:
        return []


SUITE = """\
name: isolation
frameworks: [litserve, mosec]
models: [mlp]
interpreters:
  litserve: {python}
  mosec: {python}
measurement: {{warmup: 0.5s, window: 1s, windows: 2, max_duration: 3s, min_requests: 20}}
workloads:
  - name: closed
    kind: closed_loop
    concurrency: [2]
"""


def test_suite_interpreters_reach_the_cells(litserve_venv, tmp_path, no_leftovers):
    from servingbench.harness import run_suite
    from servingbench.scenarios.loader import load_suite

    python, _ = litserve_venv
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(python=python))
    out = run_suite(load_suite(path), suite_path=path, out=tmp_path / "results", progress=print)
    assert out.statuses == {"litserve/default": "ok", "mosec/default": "skipped"}
    cells = {c["cell"]: c for c in out.results.records("cell")}
    ok = cells["litserve/default"]
    assert ok["runtime"] == {"kind": "local", "python": str(python), "image": None}
    assert ok["argv"][0][0] == str(python) and ok["framework_version"]
    assert "mosec is not installed for interpreter" in cells["mosec/default"]["reason"]
    [point] = out.results.records("point")
    assert point["metrics"]["requests"] > 20 and point["metrics"]["errors"] == 0
    launch = json.loads((out.results.manifests / "litserve-default" / "launch.json").read_text())
    assert launch["python"] == str(python) and launch["servers"][0]["argv"][0] == str(python)
