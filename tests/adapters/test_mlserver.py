"""MLServer adapter: the generated serving directory, and with real servers parallel workers, the repository
load/unload API, adaptive batching and the response cache.  Two server starts."""

from __future__ import annotations

import concurrent.futures as cf
import json

import numpy as np
import pytest

from servingbench.contract import Deployment, Ports, RunContext, Secrets, UnsupportedDeployment
from servingbench.adapters.mlserver import IMPLEMENTATION, MLServerAdapter
from servingbench.deploy.live import LiveDeployment


def _spec(name):
    from servingbench.models import get_model

    return get_model(name)


def _ctx(tmp_path):
    counter = iter(range(21000, 21100))
    return RunContext(workdir=tmp_path, ports=Ports(lambda: next(counter)), marker="m")


# ---- manifests (no server) -----------------------------------------------------------------------------------------
def test_serving_directory(zoo_artifacts, tmp_path):
    a = MLServerAdapter()
    dep = Deployment("mlserver", list(zoo_artifacts.values()), workers=2, threads=2, max_batch_size=8,
                     batch_timeout_ms=4, cache=True)
    a.validate(dep)
    ctx = _ctx(tmp_path)
    a.prepare(dep, ctx)
    s = json.loads((tmp_path / "settings.json").read_text())
    assert s["host"] == "127.0.0.1" and s["parallel_workers"] == 2 and s["cache_enabled"] is True
    assert (s["http_port"], s["grpc_port"], s["metrics_port"]) == (ctx.ports["http"], ctx.ports["grpc"],
                                                                   ctx.ports["metrics"])
    assert s["metrics_dir"].startswith(str(tmp_path)) and s["environments_dir"].startswith(str(tmp_path))
    assert (tmp_path / "mlserver_runtime.py").is_file()
    ms = json.loads((tmp_path / "encoder" / "model-settings.json").read_text())
    assert ms["implementation"] == IMPLEMENTATION and ms["cache_enabled"] is True
    assert ms["max_batch_size"] == 8 and ms["max_batch_time"] == pytest.approx(0.004)
    assert ms["parameters"]["uri"] == str(zoo_artifacts["encoder"].dir.resolve())
    assert ms["parameters"]["extra"]["input_dtype"] == "int64" and ms["inputs"][0]["datatype"] == "INT64"
    argv = a.launch(dep, ctx)[0].argv
    assert argv[1:] == ["start", str(tmp_path.resolve())]
    assert (tmp_path / "command.txt").read_text().strip().endswith(f"start {tmp_path.resolve()}")


def test_parallel_workers_option_and_plain_settings(zoo_artifacts, tmp_path):
    a = MLServerAdapter()
    dep = Deployment("mlserver", [zoo_artifacts["mlp"]], options={"parallel_workers": 0})
    a.validate(dep)
    a.prepare(dep, _ctx(tmp_path))
    assert json.loads((tmp_path / "settings.json").read_text())["parallel_workers"] == 0
    ms = json.loads((tmp_path / "mlp" / "model-settings.json").read_text())
    assert "max_batch_size" not in ms and ms["cache_enabled"] is False
    with pytest.raises(UnsupportedDeployment):
        a.validate(Deployment("mlserver", [zoo_artifacts["mlp"]], options={"parallel_workers": -1}))
    for bad in ({"auth": True}, {"tls": True}):
        with pytest.raises(UnsupportedDeployment):
            a.validate(Deployment("mlserver", [zoo_artifacts["mlp"]], **bad))


def test_requests_are_plain_v2_json(zoo_artifacts):
    req = MLServerAdapter().codec(Deployment("mlserver", [zoo_artifacts["encoder"]])).request(
        _spec("encoder"), _spec("encoder").example_inputs(2))
    doc = json.loads(req.body)
    assert req.path == "/v2/models/encoder/infer" and doc["inputs"][0]["datatype"] == "INT64"
    assert "Inference-Header-Content-Length" not in req.headers and "parameters" not in doc["outputs"][0]


# ---- real servers --------------------------------------------------------------------------------------------------
def _send(live, req):
    return live.http.request(req.method, live.url(req), data=req.body, headers=dict(req.headers), timeout=30)


@pytest.mark.server
def test_parallel_workers_and_load_unload(zoo_artifacts, tmp_path, no_leftovers):
    """parallel_workers=2 serves every model correctly; unload -> 404, load -> correct again."""
    a = MLServerAdapter()
    dep = Deployment("mlserver", list(zoo_artifacts.values()), workers=2)
    a.validate(dep)
    with LiveDeployment(a, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), startup_timeout=240) as live:
        assert set(live.verification) == set(zoo_artifacts) and all(v["ok"] for v in live.verification.values())
        # two inference workers besides the main process
        assert len(live.processes()) >= 3
        spec = _spec("mlp")
        x = spec.example_inputs(4)
        expected = live.infer(spec, x)
        assert np.array_equal(a.grpc_infer(dep, live.ctx, spec, x), expected)  # V2 gRPC endpoint

        index = _send(live, live.codec.repository_request("index", None)).json()
        assert {m["name"]: m["state"] for m in index} == {n: "READY" for n in zoo_artifacts}
        assert _send(live, live.codec.repository_request("unload", "mlp")).status_code == 200
        status, body, _ = live.send(spec, x)
        assert status == 404, body
        assert live.infer(_spec("cnn"), _spec("cnn").example_inputs(1)).shape == (1, 10)  # others unaffected
        assert _send(live, live.codec.repository_request("load", "mlp")).status_code == 200
        assert np.array_equal(live.infer(spec, x), expected)


@pytest.mark.server
def test_adaptive_batching_and_cache(zoo_artifacts, tmp_path, no_leftovers):
    """Adaptive batching with the response cache, inference in the main process (parallel_workers 0):
    concurrent distinct requests are all answered correctly; repeated ones too."""
    a = MLServerAdapter()
    dep = Deployment("mlserver", [zoo_artifacts["mlp"], zoo_artifacts["encoder"]], max_batch_size=8,
                     batch_timeout_ms=20, cache=True, options={"parallel_workers": 0})
    a.validate(dep)
    with LiveDeployment(a, dep, tmp_path / "deploy", tmp_path / "logs", Secrets()) as live:
        from servingbench.models.runtime import load_runtime

        for name in ("mlp", "encoder"):
            spec = _spec(name)
            rt = load_runtime(zoo_artifacts[name].dir, fmt="eager", device="cpu", threads=1)
            xs = [spec.example_inputs(1 + i % 3, seed=2000 + i) for i in range(32)]
            with cf.ThreadPoolExecutor(16) as pool:
                outs = list(pool.map(lambda v: live.codec.decode(spec, *live.send(spec, v)[:2]), xs))
            for v, y in zip(xs, outs):
                assert np.allclose(y, rt.predict(v), rtol=spec.rtol, atol=spec.atol)
            x = xs[0]
            assert all(np.array_equal(live.infer(spec, x), outs[0]) for _ in range(3))
        log = "\n".join(s.log_tail(400) for s in live.servers)
        assert f"HTTP server running on http://127.0.0.1:{live.ctx.ports['http']}" in log
