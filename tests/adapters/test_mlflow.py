"""MLflow adapter: one server per model (pure request routing), a 2-model deployment, and TLS over uvicorn."""

from __future__ import annotations

import pytest
import requests

from servingbench.adapters import registry
from servingbench.contract import Capability, Deployment, Secrets
from servingbench.deploy.live import LiveDeployment, make_deployment
from servingbench.runtime.supervisor import marked_processes
from servingbench.scenarios.schema import DeploymentConfig


def _deployment(zoo, models, **cfg):
    return make_deployment("mlflow", DeploymentConfig(**cfg), [zoo[m] for m in models], "cpu")


def test_one_port_per_model_and_no_multi_model_claim():
    from servingbench.models import get_model

    adapter = registry.get("mlflow")
    assert Capability.MULTI_MODEL not in adapter.capabilities
    assert "not native" in adapter.docs_claims["multi_model"]
    for name in ("mlp", "encoder"):
        req = adapter.codec(Deployment("mlflow", [])).request(get_model(name), get_model(name).example_inputs(2))
        assert (req.path, req.port) == ("/invocations", f"http-{name}")


@pytest.mark.server
def test_two_models_run_two_servers(zoo_artifacts, tmp_path):
    adapter = registry.get("mlflow")
    dep = _deployment(zoo_artifacts, ["mlp", "encoder"])
    live = LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), startup_timeout=240)
    with live:
        assert [s.spec.name for s in live.servers] == ["mlflow-mlp", "mlflow-encoder"]
        assert set(live.verification) == {"mlp", "encoder"}
        assert live.ctx.ports["http-mlp"] != live.ctx.ports["http-encoder"]
        for m in ("mlp", "encoder"):
            assert (tmp_path / "deploy" / m / "MLmodel").is_file()
        assert (tmp_path / "deploy" / "command.txt").read_text().count("mlflow models serve") == 2
    assert not marked_processes(live.marker), "server processes survived the stop"
    for r in live.stop_reports:
        assert not r.survivors and not r.ports_held, r


@pytest.mark.server
def test_tls_verifies_over_https(zoo_artifacts, tmp_path):
    from servingbench.runtime.secrets import SecretStore

    adapter = registry.get("mlflow")
    dep = _deployment(zoo_artifacts, ["mlp"], tls=True)
    adapter.validate(dep)
    with SecretStore() as store:
        secrets = store.make(auth=False, tls=True)
        live = LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", secrets, startup_timeout=240)
        with live:
            assert live.base_url("http-mlp").startswith("https://")
            assert live.verification["mlp"]["ok"]
            with pytest.raises(requests.exceptions.SSLError):  # the per-run CA is really needed
                requests.get(live.base_url("http-mlp") + "/ping", timeout=5)
            with pytest.raises(requests.exceptions.ConnectionError):  # and plain HTTP is not served
                requests.get(live.base_url("http-mlp").replace("https", "http") + "/ping", timeout=5)
    assert not marked_processes(live.marker), "server processes survived the stop"
    for r in live.stop_reports:
        assert not r.survivors and not r.ports_held, r
