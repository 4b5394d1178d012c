"""Fault injection with real servers: every fault is recorded, finished results are kept, nothing is left running."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from servingbench.contract import Adapter, JsonCodec, LaunchSpec, ReadyProbe, Secrets
from servingbench.deploy.live import LiveDeployment, VerificationError, make_deployment
from servingbench.load.plan import PointPlan
from servingbench.load.point import run_point
from servingbench.load.pool import InputPool
from servingbench.suite import run_suite
from servingbench.runtime.supervisor import PortInUse, ServerProcess
from servingbench.scenarios.loader import load_suite
from servingbench.scenarios.schema import ClosedLoop, DeploymentConfig, Measurement

pytestmark = pytest.mark.server
HERE = Path(__file__).parent

SUITE = """\
name: faults
frameworks: [litserve]
models: [mlp]
cpu_sets: none
startup_timeout: {startup}
inprocess_limit: false
deployments:
  - label: a
  - label: b
measurement:
  warmup: 0.5s
  window: 1s
  windows: 2
  max_duration: {maxdur}
  min_requests: 20
workloads:
  - name: closed
    kind: closed_loop
    concurrency: [2]
"""


def suite_file(tmp_path: Path, startup: str = "120s", maxdur: str = "2s") -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(SUITE.format(startup=startup, maxdur=maxdur))
    return p


def run(tmp_path: Path, path: Path):
    return run_suite(load_suite(path), suite_path=path, out=tmp_path / "results", progress=lambda m: None)


def records(outcome) -> list[dict]:
    return outcome.results.records()


def test_kill9_of_a_server_under_load(tmp_path, no_leftovers):
    path = suite_file(tmp_path, maxdur="8s")
    killed = {}

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            gens = [p for p in psutil.process_iter(["cmdline"]) if "servingbench.load.generator" in " ".join(p.info["cmdline"] or [])]
            if gens:
                time.sleep(1.0)  # under load
                for p in psutil.process_iter(["cmdline"]):
                    cmd = " ".join(p.info["cmdline"] or [])
                    if "manifests/litserve-a/litserve_server.py" in cmd and p.ppid() != 0 and \
                            "litserve_server.py" not in " ".join(psutil.Process(p.ppid()).cmdline()):
                        os.kill(p.pid, signal.SIGKILL)
                        killed["pid"] = p.pid
                        return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    outcome = run(tmp_path, path)
    t.join()
    assert killed, "the test never found the server to kill"
    assert outcome.statuses == {"litserve/a": "failed", "litserve/b": "ok"}
    cell = [r for r in records(outcome) if r["type"] == "cell" and r["cell"] == "litserve/a"][0]
    assert "exited" in cell["reason"] or "crashed" in cell["reason"] or "-9" in cell["reason"], cell["reason"]
    assert "log_tail" in cell
    run_json = outcome.results.read_run()
    assert run_json["status"] == "failed_cells"
    assert [r for r in records(outcome) if r["type"] == "point" and r["cell"] == "litserve/b"]


def test_server_that_never_becomes_ready(tmp_path, no_leftovers):
    path = suite_file(tmp_path, startup="1s")  # LitServe needs several seconds
    outcome = run(tmp_path, path)
    assert set(outcome.statuses.values()) == {"failed"}
    for cell in (r for r in records(outcome) if r["type"] == "cell"):
        assert "not ready after" in cell["reason"] or "deadline" in cell["reason"], cell["reason"]
        assert not [r for r in records(outcome) if r["type"] == "point"]


def test_port_taken_is_a_clear_error(tmp_path, no_leftovers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = LaunchSpec(argv=[sys.executable, "-c", "pass"], env=dict(os.environ), cwd=tmp_path,
                          ready=ReadyProbe(), name="x")
        server = ServerProcess(spec, marker="m", ports={"http": port}, log_path=tmp_path / "x.log")
        with pytest.raises(PortInUse, match=rf"127.0.0.1:{port} is already in use by pid {os.getpid()}"):
            server.start()


class GarbageAdapter(Adapter):
    """Speaks LitServe's JSON shape to a server that answers garbage."""

    name = "garbage"
    distribution = "uvicorn"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def prepare(self, deployment, ctx) -> None:
        pass

    def launch(self, deployment, ctx):
        return [LaunchSpec(argv=[sys.executable, str(HERE / "garbage_server.py"), str(ctx.ports["http"]), self.mode],
                           env=ctx.base_env(), cwd=ctx.workdir, ready=ReadyProbe(path="/health"), name="garbage")]

    def codec(self, deployment):
        return JsonCodec(path="/predict")


@pytest.mark.parametrize("mode,kind", [("notjson", "malformed"), ("shape", "shape"), ("nan", "nan"),
                                       ("truncated", "malformed")])
def test_garbage_fails_verification(tmp_path, zoo_artifacts, mode, kind, no_leftovers):
    dep = make_deployment("garbage", DeploymentConfig(), [zoo_artifacts["mlp"]], "cpu")
    with pytest.raises(VerificationError, match="undecodable"):
        with LiveDeployment(GarbageAdapter(mode), dep, tmp_path / "d", tmp_path / "logs", Secrets(),
                            startup_timeout=30):
            pass


def test_garbage_under_load_is_counted_by_kind(tmp_path, zoo_artifacts, no_leftovers, monkeypatch):
    dep = make_deployment("garbage", DeploymentConfig(), [zoo_artifacts["mlp"]], "cpu")
    live = LiveDeployment(MixedGarbageAdapter(), dep, tmp_path / "d", tmp_path / "logs", Secrets(),
                          startup_timeout=30)
    monkeypatch.setattr(live, "verify", lambda deadline=None: {"_first_correct_s": 0.0})  # skip to the load
    # the generator process resolves the adapter by name: register the test adapter through an env hook
    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", "garbage=test_faults:MixedGarbageAdapter")
    monkeypatch.setenv("PYTHONPATH", str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with live:
        w = ClosedLoop(name="g", kind="closed_loop", concurrency=[2], input_pool=2)
        m = Measurement(warmup="0.2s", window="1s", windows=1, max_duration="1s", min_requests=1, sample_every=1)
        point = run_point(live, PointPlan(w, {"concurrency": 2}, m, 0, ["mlp"]), InputPool(live), None, tmp_path,
                          tmp_path)
    kinds = point["metrics"]["errors_by_kind"]
    assert set(kinds) == {"malformed", "shape", "nan"}, kinds
    assert point["metrics"]["errors"] == point["metrics"]["requests"] > 10
    assert "errors" in point["validity"]["flags"]


class MixedGarbageAdapter(GarbageAdapter):
    def __init__(self) -> None:
        super().__init__("mixed")


def test_secrets_never_reach_results(tmp_path, no_leftovers, monkeypatch):
    from servingbench.runtime import secrets as security

    stores = []
    orig = security.SecretStore.__init__

    def capture(self):
        orig(self)
        stores.append(self)

    monkeypatch.setattr(security.SecretStore, "__init__", capture)
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(startup="120s", maxdur="2s").replace(
        "  - label: a\n  - label: b", "  - label: secure\n    auth: true\n    tls: true"))
    outcome = run(tmp_path, path)
    assert outcome.statuses == {"litserve/secure": "ok"}, outcome.results.records("cell")
    store = stores[0]
    secrets = [store.token]
    key_dir = store.dir
    assert not key_dir.exists(), "the private key directory must be removed after the run"
    # keys were generated: their bodies must appear nowhere either (collected before removal by the redactor)
    secrets += [s for s in outcome.results._redact if s != store.token]
    assert len(secrets) > 2
    for f in outcome.results.path.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"secret found in {f}"


def test_stale_server_from_a_dead_harness_is_found_and_cleaned(tmp_path):
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a harness PID that no longer exists
    env = {**os.environ, "SERVINGBENCH_MARKER": "stale-test", "SERVINGBENCH_HARNESS_PID": str(dead.pid)}
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env, start_new_session=True)
    try:
        from servingbench.runtime.supervisor import stale_servers

        deadline = time.time() + 10
        while orphan.pid not in {p.pid for p, _ in stale_servers()} and time.time() < deadline:
            time.sleep(0.1)
        assert orphan.pid in {p.pid for p, _ in stale_servers()}
        cli = [sys.executable, "-m", "servingbench.cli", "cleanup"]
        listed = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 1 and f"stale: {orphan.pid}" in listed.stdout
        killed = subprocess.run(cli + ["--kill"], capture_output=True, text=True, timeout=60)
        assert killed.returncode == 0
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
