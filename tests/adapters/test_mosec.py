"""MOSEC adapter: msgpack encoding (pure), dynamic batching and the two-stage pipeline against a real server."""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from servingbench.adapters import registry
from servingbench.contract import DecodeError, Secrets, UnsupportedDeployment
from servingbench.deploy.live import LiveDeployment, make_deployment
from servingbench.runtime.supervisor import marked_processes
from servingbench.scenarios.schema import DeploymentConfig


def _deployment(zoo, models=None, **cfg):
    arts = [zoo[m] for m in (models or zoo)]
    return make_deployment("mosec", DeploymentConfig(**cfg), arts, "cpu")


def test_msgpack_request_decode_roundtrip(zoo_artifacts):
    import msgpack

    from servingbench.models import get_model

    adapter = registry.get("mosec")
    dep = _deployment(zoo_artifacts, options={"mosec": {"serialization": "msgpack"}})
    adapter.validate(dep)
    codec = adapter.codec(dep)
    spec = get_model("mlp")
    x = spec.example_inputs(3)
    req = codec.request(spec, x)
    assert req.headers["Content-Type"] == "application/msgpack"
    sent = msgpack.unpackb(req.body)
    assert np.array_equal(np.frombuffer(sent["inputs"], sent["dtype"]).reshape(sent["shape"]), x)
    y = np.arange(30, dtype=np.float32).reshape(3, 10)
    assert np.array_equal(codec.decode(spec, 200, msgpack.packb({"outputs": y.tobytes(), "shape": [3, 10]})), y)
    for status, body in [(500, b"boom"), (200, b"not msgpack"), (200, msgpack.packb({"outputs": b"\0" * 8}))]:
        with pytest.raises(DecodeError):
            codec.decode(spec, status, body)


def test_codec_is_the_deployments_own(zoo_artifacts):
    """A fresh adapter, never validated, gives the same codec from the configuration alone (as the generator,
    in its own process, rebuilds it from ``Deployment.describe()``)."""
    from servingbench.contract import Deployment
    from servingbench.models import get_model

    dep = _deployment(zoo_artifacts, options={"mosec": {"serialization": "msgpack"}})
    rebuilt = registry.get("mosec").codec(Deployment.from_description(dep.describe()))
    spec = get_model("mlp")
    x = spec.example_inputs(2)
    assert rebuilt.request(spec, x) == registry.get("mosec").codec(dep).request(spec, x)
    assert rebuilt.request(spec, x).headers["Content-Type"] == "application/msgpack"
    assert registry.get("mosec").codec(_deployment(zoo_artifacts)).request(spec, x).headers["Content-Type"] == \
        "application/json"


@pytest.mark.parametrize("options, words", [
    ({"serialization": "xml"}, ["serialization", "'xml'", "json", "msgpack"]),
    ({"capacity": "lots"}, ["capacity", "'lots'", "integer", ">= 1"]),
    ({"capcity": 3}, ["capcity", "Did you mean 'capacity'"]),
])
def test_rejects_bad_options_naming_option_and_value(zoo_artifacts, options, words):
    import dataclasses

    import pydantic

    with pytest.raises(pydantic.ValidationError) as e:  # at suite validation
        DeploymentConfig(options={"mosec": options})
    assert all(w in str(e.value) for w in ["mosec", *words]), str(e.value)
    raw = dataclasses.replace(_deployment(zoo_artifacts), options=options)  # and again before prepare
    with pytest.raises(UnsupportedDeployment) as e:
        registry.get("mosec").validate(raw)
    assert all(w in str(e.value) for w in ["mosec", *words]), str(e.value)


def test_validate_command_names_the_bad_option(tmp_path):
    """`servingbench validate` refuses a bad option value before anything runs, naming option, value and line."""
    import subprocess
    import sys

    suite = tmp_path / "s.yaml"
    suite.write_text("name: t\nframeworks: [mosec]\nmodels: [mlp]\ndeployments:\n  - label: d\n"
                     "    options: {mosec: {capacity: lots}}\n"
                     "workloads: [{name: c, kind: closed_loop, concurrency: [1]}]\n")
    p = subprocess.run([sys.executable, "-m", "servingbench.cli", "validate", str(suite)], capture_output=True,
                       text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "capacity" in out and "'lots'" in out and "line 6" in out and "s.yaml" in out, out


@pytest.mark.server
def test_run_point_with_msgpack_has_no_errors(zoo_artifacts, tmp_path):
    """The load generator decodes sampled answers with the deployment's codec: msgpack under load, 0 errors.

    (Before the per-deployment codec, the generator built a fresh adapter and decoded msgpack as JSON: every
    sampled answer was counted malformed.)"""
    from servingbench.load.plan import PointPlan
    from servingbench.load.point import run_point
    from servingbench.load.pool import InputPool
    from servingbench.scenarios.schema import ClosedLoop, Measurement

    dep = _deployment(zoo_artifacts, models=["mlp"], options={"mosec": {"serialization": "msgpack"}})
    adapter = registry.get("mosec")
    adapter.validate(dep)
    w = ClosedLoop(name="msgpack", kind="closed_loop", concurrency=[2], input_pool=4)
    m = Measurement(warmup="0.5s", window="1s", windows=2, max_duration="3s", min_requests=10, sample_every=2)
    with LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), startup_timeout=120) as live:
        point = run_point(live, PointPlan(w, {"concurrency": 2}, m, 0, ["mlp"]), InputPool(live), None, tmp_path,
                          tmp_path)
    mt = point["metrics"]
    assert mt["requests"] > 20
    assert mt["errors"] == 0, (mt["errors_by_kind"], point["error_examples"])


def _batch_sizes(live) -> tuple[float, float]:
    """(sum, count) of MOSEC's batch-size histogram from its Prometheus endpoint."""
    with urllib.request.urlopen(live.base_url() + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = sum(float(v) for v in re.findall(r"^mosec_service_batch_size_sum\S* (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(r"^mosec_service_batch_size_count\S* (\S+)$", text, re.M))
    return total, count


def _hammer(live, spec, n=64, users=16) -> None:
    x = spec.example_inputs(1)
    want = live.infer(spec, x)
    with ThreadPoolExecutor(users) as pool:
        outs = list(pool.map(lambda _: live.infer(spec, x), range(n)))
    assert all(np.allclose(o, want) for o in outs)


@pytest.mark.server
@pytest.mark.parametrize("options", [{}, {"pipeline": True}, {"pipeline": True, "serialization": "msgpack"}],
                         ids=["batched", "pipeline", "pipeline-msgpack"])
def test_batched_deployments_verify(zoo_artifacts, tmp_path, options):
    from servingbench.models import get_model

    dep = _deployment(zoo_artifacts, max_batch_size=8, batch_timeout="10ms", options={"mosec": options})
    adapter = registry.get("mosec")
    adapter.validate(dep)
    live = LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), startup_timeout=120)
    with live:
        assert set(live.verification) == set(zoo_artifacts)
        n_procs = len(live.processes())
        # leader + Rust front + one Infer per model (+ one Decode per model when pipelined)
        assert n_procs >= 2 + len(zoo_artifacts) * (2 if options.get("pipeline") else 1), n_procs
        _hammer(live, get_model("mlp"))
        total, count = _batch_sizes(live)
        assert count > 0 and total / count > 1.0, "no request was ever batched"
        command = (tmp_path / "deploy" / "command.txt").read_text()
        assert "--address 127.0.0.1" in command and "--path" in command
    assert not (tmp_path / "deploy" / "ipc").exists(), "MOSEC IPC dir left behind"
    assert not marked_processes(live.marker), "server processes survived the stop"
    for r in live.stop_reports:
        assert not r.survivors and not r.ports_held


@pytest.mark.server
def test_a_body_over_the_request_size_limit_fails_verification_at_once(zoo_artifacts, tmp_path):
    """MOSEC answers 413 above --max-request-size: verification stops with that status instead of retrying until
    the start-up timeout (a JSON batch of four ResNet-50 224 px tensors is over MOSEC's own 10 MiB)."""
    from servingbench.deploy.live import VerificationError

    dep = _deployment(zoo_artifacts, models=["mlp"], options={"mosec": {"max_request_size": 1024}})
    adapter = registry.get("mosec")
    adapter.validate(dep)
    live = LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(), startup_timeout=600)
    with pytest.raises(VerificationError, match=r"mlp: the server rejected a batch-1 request as too large \(HTTP 413\)"):
        with live:
            pass
    assert "--max-request-size 1024" in (tmp_path / "deploy" / "command.txt").read_text()
    assert not marked_processes(live.marker), "server processes survived the failed verification"
