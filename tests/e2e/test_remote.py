"""A 'remote' target that is really a LitServe server started separately on loopback, with auth."""

from __future__ import annotations

import pytest

from servingbench.adapters import registry
from servingbench.deploy.live import LiveDeployment, make_deployment
from servingbench.suite import run_suite
from servingbench.runtime.secrets import SecretStore
from servingbench.scenarios.loader import load_suite
from servingbench.scenarios.schema import DeploymentConfig

pytestmark = pytest.mark.server

SUITE = """\
name: remote
frameworks: [litserve]
models: [mlp]
cpu_sets: none
targets:
  litserve:
    url: {url}
    token_env: SB_TEST_TOKEN
measurement: {{warmup: 0.5s, window: 1s, windows: 2, max_duration: 2s, min_requests: 20}}
workloads:
  - {{name: closed, kind: closed_loop, concurrency: [2]}}
"""


def test_remote_target_with_auth(tmp_path, zoo_artifacts, monkeypatch, no_leftovers):
    dep = make_deployment("litserve", DeploymentConfig(auth=True), [zoo_artifacts["mlp"]], "cpu")
    with SecretStore() as store:
        secrets = store.make(auth=True, tls=False)
        with LiveDeployment(registry.get("litserve"), dep, tmp_path / "srv", tmp_path / "srvlogs", secrets) as srv:
            path = tmp_path / "suite.yaml"
            path.write_text(SUITE.format(url=srv.base_url()))
            suite = load_suite(path)
            # without the token: the server refuses, verification fails, the cell says why
            monkeypatch.setenv("SB_TEST_TOKEN", "not-the-token-xxxxxxxx")
            bad = run_suite(suite, suite_path=path, out=tmp_path / "r1", progress=lambda m: None)
            assert bad.statuses == {"litserve/default": "failed"}
            monkeypatch.setenv("SB_TEST_TOKEN", secrets.token)
            out = run_suite(suite, suite_path=path, out=tmp_path / "r2", progress=lambda m: None)
            assert srv.servers[0].exited() is None, "the harness must not stop a remote server"
    assert out.statuses == {"litserve/default": "ok"}
    [cell] = out.results.records("cell")
    assert cell["remote"]["url"].startswith("http://127.0.0.1:") and cell["verification"]["mlp"]["ok"]
    [point] = out.results.records("point")
    assert point["metrics"]["requests"] > 20 and point["metrics"]["errors"] == 0
    for f in out.results.path.rglob("*"):
        if f.is_file():
            assert secrets.token.encode() not in f.read_bytes(), f


def test_non_loopback_target_needs_the_flag(tmp_path, zoo_artifacts):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(url="http://192.0.2.10:8000"))  # TEST-NET-1: never contacted
    out = run_suite(load_suite(path), suite_path=path, out=tmp_path / "r", progress=lambda m: None)
    assert out.statuses == {"litserve/default": "skipped"}
    assert "--allow-remote" in out.results.read_run()["cells"]["litserve/default"]["reason"]
