"""Per-framework interpreters: a LitServe-only venv built from the lock serves a deployment through the harness.

The venv is created fresh for this module (about 30 s here: pip takes every pin from the lock, torch from the local
wheel, servingbench through a .pth to this checkout), so the test exercises the helper users run, not a cached copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import docker_standin
import numpy as np
import psutil
import pytest
from conftest import all_marked_pids

from servingbench.runtime import isolation
from servingbench.adapters import registry
from servingbench.contract import Deployment, Secrets
from servingbench.deploy.live import LiveDeployment, make_deployment
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
inprocess_limit: false
measurement: {{warmup: 0.5s, window: 1s, windows: 2, max_duration: 3s, min_requests: 20}}
workloads:
  - name: closed
    kind: closed_loop
    concurrency: [2]
"""


def test_suite_interpreters_reach_the_cells(litserve_venv, tmp_path, no_leftovers):
    from servingbench.suite import run_suite
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


# ---- the CLI and the probes on the isolated venv (the module's venv: no second build) ----------------------------
def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "servingbench.cli", *args], capture_output=True, text=True, **kw)


def test_isolate_command_reuses_the_venv_and_prints_its_interpreter(litserve_venv):
    python, venv = litserve_venv
    t0 = time.perf_counter()
    p = cli("isolate", "litserve", "--venv", str(venv), "--lock", str(ROOT / "requirements.lock"), timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{python}\n"  # stdout is the path alone: `interpreters: {litserve: $(servingbench isolate ...)}`
    assert f"reusing {venv}" in p.stderr and f"litserve: {python}" in p.stderr
    assert time.perf_counter() - t0 < 15
    p = cli("isolate", "litserve", "--venv", str(venv), "--lock", str(ROOT / "requirements.lock"), "--source",
            "instal", timeout=60)
    assert p.returncode == 2 and "Did you mean 'install'" in p.stderr and (venv / isolation.STAMP).is_file()


def test_verify_python_runs_the_server_from_the_venv(litserve_venv, no_leftovers):
    python, _ = litserve_venv
    p = cli("verify", "litserve", "-m", "mlp", "--python", str(python), timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert f"server from {python} as local processes: {python} " in p.stdout  # the leader's argv
    assert "litserve: verify passed" in p.stdout and "stop: graceful" in p.stdout


def fake_docker(tmp_path: Path, venv: Path) -> tuple[Path, Path]:
    """(bin dir holding a stand-in `docker` whose /opt/venv is ``venv``, its log)."""
    log, bin_dir = tmp_path / "docker.log", tmp_path / "fakebin"
    docker_standin.write(bin_dir, log, prefix=str(venv))
    return bin_dir, log


docker_log = docker_standin.read_log


def test_serve_python_with_runtime_docker(litserve_venv, zoo_artifacts, tmp_path, no_leftovers):
    """`serve --python VENV --runtime docker`: the default image, the venv's python as the container's /opt/venv
    python, a correct answer on the printed URL, Ctrl-C stops it and removes the container."""
    import queue
    import signal
    import threading

    import requests

    from servingbench.models import get_model

    python, venv = litserve_venv
    bin_dir, log = fake_docker(tmp_path, venv)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    p = subprocess.Popen([sys.executable, "-m", "servingbench.cli", "serve", "litserve", "--python", str(python),
                          "--runtime", "docker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in p.stdout], daemon=True).start()
    try:
        url, workdir, deadline = None, None, time.time() + 180
        while time.time() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert p.poll() is None, p.stderr.read()[-3000:]
                continue
            if line.startswith("mlp: POST "):
                url = line.split()[-1]
            if "Ctrl-C to stop" in line:
                workdir = Path(line.split()[1].rstrip(";"))
                break
        assert url and workdir, "serve printed no URL or workdir"
        # The image's /opt/venv stands for the venv --python named (the harness's .venv would map there too).
        launch = json.loads((workdir / "deploy" / "launch.json").read_text())
        assert launch["python"] == str(python) and launch["venv_prefix"] == str(venv)
        [run] = docker_log(log)[0]
        assert run == {"image": "servingbench/litserve:cpu", "argv0": "/opt/venv/bin/python"}  # translated prefix
        procs = [psutil.Process(pid) for pid in all_marked_pids(no_leftovers)]
        assert procs and all(proc.cmdline()[0] == str(python) for proc in procs
                             if "python" in Path(proc.cmdline()[0]).name)
        libtorch = {m.path for proc in procs for m in _maps(proc) if "libtorch_cpu" in m.path}
        assert libtorch and all(path.startswith(str(venv)) for path in libtorch), libtorch
        spec = get_model("mlp")
        inputs, expected = zoo_artifacts["mlp"].reference()
        codec = registry.get("litserve").codec(Deployment("litserve", []))
        req = codec.request(spec, inputs[:1], Secrets())
        r = requests.post(url, data=req.body, headers=dict(req.headers), timeout=30)
        got = codec.decode(spec, r.status_code, r.content)
        assert np.allclose(got, expected[:1], rtol=spec.rtol, atol=spec.atol)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it ignored SIGINT: kill its session (servers included), then fail
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate(timeout=30)
            err = "serve did not stop on SIGINT within 60 s\n" + err
    assert p.returncode == 0, err[-3000:]
    runs, removals = docker_log(log)
    assert len(runs) == 1 and len(removals) == 1 and removals[0][:2] == ["rm", "-f"]


FEATURES_SUITE = """\
name: isolation-probes
frameworks: [litserve]
models: [mlp]
features: [auth]
runtime: docker
interpreters:
  litserve: {python}
"""


def test_probes_start_from_the_cells_interpreter_and_runtime(litserve_venv, tmp_path, monkeypatch, no_leftovers):
    """A feature probe's deployments go through the suite's interpreters: and runtime: docker, as run_cell's do."""
    from servingbench.suite import run_suite
    from servingbench.scenarios.loader import load_suite

    python, venv = litserve_venv
    bin_dir, log = fake_docker(tmp_path, venv)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = tmp_path / "features.yaml"
    path.write_text(FEATURES_SUITE.format(python=python))
    out = run_suite(load_suite(path), suite_path=path, out=tmp_path / "results", progress=print)
    assert out.statuses == {"litserve/probe:auth": "ok"}
    [rec] = out.results.records("probe")
    assert rec["verdict"] == "supported", rec
    assert rec["runtime"] == {"kind": "docker", "python": str(python), "image": "servingbench/litserve:cpu"}
    runs, removals = docker_log(log)
    assert len(runs) >= 2 and len(removals) == len(runs)  # the auth deployment and the plain baseline
    assert all(r == {"image": "servingbench/litserve:cpu", "argv0": "/opt/venv/bin/python"} for r in runs)
    launches = sorted(out.results.manifests.glob("*/*/launch.json"))
    assert launches and all(json.loads(f.read_text())["python"] == str(python) for f in launches)
