"""Triton adapter: generated manifests, and with real servers the response cache, dynamic batching, the restricted
API (auth), gRPC TLS and the repository load/unload API.  Two server starts."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re

import numpy as np
import pytest
import requests

from servingbench.contract import Deployment, Ports, RunContext, Secrets, UnsupportedDeployment
from servingbench.adapters.tritonserver import INPUT, OUTPUT, TritonAdapter
from servingbench.models.artifacts import REF_BATCH
from servingbench.deploy.live import LiveDeployment
from servingbench.runtime.secrets import SecretStore


def _spec(name):
    from servingbench.models import get_model

    return get_model(name)


def _ctx(tmp_path, secrets=Secrets()):
    counter = iter(range(20000, 20100))
    return RunContext(workdir=tmp_path, ports=Ports(lambda: next(counter)), secrets=secrets, marker="feedbeef" * 4)


# ---- manifests (no server) -----------------------------------------------------------------------------------------
def test_config_pbtxt(zoo_artifacts, tmp_path):
    a = TritonAdapter()
    dep = Deployment("triton", list(zoo_artifacts.values()), workers=2, threads=2, max_batch_size=8,
                     batch_timeout_ms=2.5, cache=True)
    a.validate(dep)
    a.prepare(dep, _ctx(tmp_path))
    enc = (tmp_path / "model_repository" / "encoder" / "config.pbtxt").read_text()
    assert 'backend: "python"' in enc and "max_batch_size: 64" in enc
    assert f'name: "{INPUT}" data_type: TYPE_INT64 dims: [ 32 ]' in enc
    assert f'name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ 2 ]' in enc
    assert "instance_group [ { kind: KIND_CPU count: 2 } ]" in enc
    assert "preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 2500" in enc
    assert "response_cache { enable: true }" in enc
    assert (tmp_path / "model_repository" / "cnn" / "1" / "model.py").is_file()
    assert not any(p.name == "triton" for p in tmp_path.rglob("*"))
    cmd = (tmp_path / "command.txt").read_text()
    assert "--cache-config=local,size=104857600" in cmd and "--load-model=cnn" in cmd


def test_plain_deployment_has_no_batching_or_cache(zoo_artifacts, tmp_path):
    a = TritonAdapter()
    dep = Deployment("triton", [zoo_artifacts["mlp"]], options={"model_control_mode": "none"})
    a.prepare(dep, _ctx(tmp_path))
    cfg = (tmp_path / "model_repository" / "mlp" / "config.pbtxt").read_text()
    assert "dynamic_batching" not in cfg and "response_cache" not in cfg
    # the overload probe's limited variant: a bounded queue; batches capped at the reference batch (it must verify)
    limited = Deployment("triton", [zoo_artifacts["mlp"]], options=a.overload_limits())
    a.validate(limited)
    a.prepare(limited, _ctx(tmp_path / "limited"))
    cfg = (tmp_path / "limited" / "model_repository" / "mlp" / "config.pbtxt").read_text()
    assert f"max_batch_size: {REF_BATCH}\n" in cfg and "preferred_batch_size" not in cfg
    assert "dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy { max_queue_size: 32 } }" in cfg
    argv = a.launch(dep, _ctx(tmp_path))[0].argv
    assert not any(x.startswith(("--model-control-mode", "--cache-config", "--http-restricted")) for x in argv)


def test_auth_flags_and_token_redaction(zoo_artifacts, tmp_path):
    a = TritonAdapter()
    secrets = Secrets(token="s3cr3t-token")
    dep = Deployment("triton", [zoo_artifacts["mlp"]], auth=True)
    a.prepare(dep, _ctx(tmp_path, secrets))
    argv = a.launch(dep, _ctx(tmp_path, secrets))[0].argv
    assert any(x.startswith("--http-restricted-api=inference,model-repository")
               and x.endswith(":admin-key=s3cr3t-token") for x in argv)
    assert any(x.startswith("--grpc-restricted-protocol=") for x in argv)
    assert "s3cr3t-token" not in (tmp_path / "command.txt").read_text()
    assert a.codec(dep).request(_spec("mlp"), np.zeros((1, 64), np.float32), secrets).headers["admin-key"] == \
        "s3cr3t-token"


def test_unsupported_deployments(zoo_artifacts):
    a = TritonAdapter()
    with pytest.raises(UnsupportedDeployment, match="HTTPS"):
        a.validate(Deployment("triton", [zoo_artifacts["mlp"]], tls=True))
    a.validate(Deployment("triton", [zoo_artifacts["mlp"]], tls=True, protocol="grpc"))
    if not a.server().has_backend("pytorch"):
        with pytest.raises(UnsupportedDeployment, match="libtorch"):
            a.validate(Deployment("triton", [zoo_artifacts["mlp"]], options={"backend": "libtorch"}))
    with pytest.raises(UnsupportedDeployment):
        a.validate(Deployment("triton", [zoo_artifacts["mlp"]], options={"bogus": 1}))


def test_binary_inputs_by_default_json_on_request(zoo_artifacts):
    a = TritonAdapter()
    x = np.zeros((2, 64), np.float32)
    req = a.codec(Deployment("triton", [zoo_artifacts["mlp"]])).request(_spec("mlp"), x)
    assert int(req.headers["Inference-Header-Content-Length"]) == len(req.body) - x.nbytes
    json_dep = Deployment("triton", [zoo_artifacts["mlp"]], options={"binary_inputs": False})
    a.validate(json_dep)
    req = a.codec(json_dep).request(_spec("mlp"), x)
    assert "Inference-Header-Content-Length" not in req.headers
    assert json.loads(req.body)["inputs"][0]["data"] == [0.0] * 128


def test_probe_hooks(zoo_artifacts, tmp_path):
    a = TritonAdapter()
    body = json.dumps({"model_stats": [{"name": "mlp", "inference_stats": {
        "cache_hit": {"count": 7, "ns": 1}, "cache_miss": {"count": 2, "ns": 1}}}]}).encode()
    dep = Deployment("triton", [zoo_artifacts["mlp"]])
    c = a.codec(dep)
    assert c.parse_cache_stats("mlp", 200, body) == {"hits": 7, "misses": 2}
    assert c.parse_cache_stats("mlp", 403, b"forbidden") is None
    secrets = Secrets(token="t0k")
    assert c.cache_stats_request("mlp", secrets).headers == {"admin-key": "t0k"}
    assert c.repository_request("unload", "mlp", secrets).path == "/v2/repository/models/mlp/unload"
    ctx = _ctx(tmp_path)
    a.prepare(dep, ctx)
    cmd = a.manifest_command(dep, ctx)
    assert cmd == a.launch(dep, ctx)[0].argv and f"--model-repository={tmp_path / 'model_repository'}" in cmd
    assert list(tmp_path.glob(a.native_manifest[0]))


# ---- real servers --------------------------------------------------------------------------------------------------
def _send(live, req, **kw):
    return live.http.request(req.method, live.url(req), data=req.body, headers=dict(req.headers), timeout=30, **kw)


def _metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}{{model="{model}",version="1"}} ([0-9.e+]+)$', text, re.M)
    assert m, f"{name} for {model} not in metrics"
    return float(m.group(1))


@pytest.mark.server
def test_cache_and_dynamic_batching(zoo_artifacts, tmp_path, no_leftovers):
    """All three models behind dynamic batching and the response cache: verified, cache hits in Triton's metrics,
    concurrent requests merged into larger executions, every answer correct."""
    a = TritonAdapter()
    dep = Deployment("triton", list(zoo_artifacts.values()), max_batch_size=8, batch_timeout_ms=20, cache=True)
    a.validate(dep)
    with LiveDeployment(a, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), startup_timeout=240) as live:
        assert all(v["ok"] for v in live.verification.values()) and set(live.verification) == set(zoo_artifacts)
        spec = _spec("mlp")
        x = spec.example_inputs(1, seed=42)
        first = live.infer(spec, x)
        for _ in range(5):
            assert np.array_equal(live.infer(spec, x), first)
        metrics = requests.get(f"http://127.0.0.1:{live.ctx.ports['metrics']}/metrics", timeout=10).text
        assert _metric(metrics, "nv_cache_num_hits_per_model", "mlp") >= 5
        r = _send(live, live.codec.cache_stats_request("mlp"))
        counts = live.codec.parse_cache_stats("mlp", r.status_code, r.content)
        assert counts["hits"] >= 5 and counts["misses"] >= 1, counts

        # Distinct inputs (no cache hits) sent concurrently: the dynamic batcher merges them.
        from servingbench.models.runtime import load_runtime

        rt = load_runtime(zoo_artifacts["mlp"].dir, fmt="eager", device="cpu", threads=1)
        xs = [spec.example_inputs(1, seed=1000 + i) for i in range(48)]
        with cf.ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(lambda v: live.codec.decode(spec, *live.send(spec, v)[:2]), xs))
        for v, y in zip(xs, outs):
            assert np.allclose(y, rt.predict(v), rtol=spec.rtol, atol=spec.atol)
        s = _send(live, live.codec.cache_stats_request("mlp")).json()["model_stats"][0]
        assert max(b["batch_size"] for b in s["batch_stats"]) > 1, s["batch_stats"]


@pytest.mark.server
def test_auth_grpc_tls_and_load_unload(zoo_artifacts, tmp_path, no_leftovers):
    """Restricted API: 403 without the admin-key header, 200 with it, health open; gRPC with mutual TLS and the
    gRPC protocol key; explicit model control: unload -> inference fails, load -> works again."""
    a = TritonAdapter()
    dep = Deployment("triton", [zoo_artifacts["mlp"]], auth=True, tls="mutual", protocol="grpc")
    a.validate(dep)
    with SecretStore() as store:
        secrets = store.make(auth=True, tls=True)
        with LiveDeployment(a, dep, tmp_path / "deploy", tmp_path / "logs", secrets) as live:
            spec = _spec("mlp")
            x = spec.example_inputs(2)
            req = live.codec.request(spec, x, secrets)
            anon = {k: v for k, v in req.headers.items() if k != "admin-key"}
            r = live.http.post(live.url(req), data=req.body, headers=anon, timeout=30)
            assert r.status_code == 403, r.text
            r = live.http.post(live.url(req), data=req.body, headers=anon | {"admin-key": "wrong"}, timeout=30)
            assert r.status_code == 403
            r = _send(live, req)
            assert r.status_code == 200
            expected = live.codec.decode(spec, r.status_code, r.content)
            assert live.http.get(live.base_url() + "/v2/health/ready", timeout=10).status_code == 200
            assert store.token not in (live.workdir / "command.txt").read_text()

            # gRPC: TLS with a client certificate, and the restricted protocol's header.
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException

            client = a.grpc_client(dep, live.ctx)
            try:
                inp = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                with pytest.raises(InferenceServerException):
                    client.infer("mlp", [inp])
                res = client.infer("mlp", [inp], headers=a.grpc_headers(secrets))
                assert np.array_equal(res.as_numpy(OUTPUT), expected)
            finally:
                client.close()
            assert np.array_equal(a.grpc_infer(dep, live.ctx, spec, x), expected)  # the probe's helper
            plain = grpcclient.InferenceServerClient(f"127.0.0.1:{live.ctx.ports['grpc']}")
            try:
                with pytest.raises(InferenceServerException):
                    plain.is_server_live()  # no TLS: refused
            finally:
                plain.close()

            # Repository API (restricted too).
            unload = live.codec.repository_request("unload", "mlp", secrets)
            assert live.http.post(live.url(unload), data=unload.body, headers={}, timeout=30).status_code == 403
            assert _send(live, unload).status_code == 200
            r = _send(live, req)
            assert r.status_code in (400, 404, 503), r.text
            index = _send(live, live.codec.repository_request("index", secrets=secrets)).json()
            assert any(m["name"] == "mlp" and m.get("state") != "READY" for m in index), index
            assert _send(live, live.codec.repository_request("load", "mlp", secrets)).status_code == 200
            r = _send(live, req)
            assert r.status_code == 200 and np.array_equal(live.codec.decode(spec, r.status_code, r.content), expected)
