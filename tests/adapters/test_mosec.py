"""MOSEC adapter: msgpack encoding (pure), dynamic batching and the two-stage pipeline against a real server."""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from servingbench.adapters import registry
from servingbench.adapters.base import DecodeError, Secrets, UnsupportedDeployment
from servingbench.harness import LiveDeployment, make_deployment
from servingbench.measure.supervisor import marked_processes
from servingbench.scenarios.schema import DeploymentConfig


def _deployment(zoo, models=None, **cfg):
    arts = [zoo[m] for m in (models or zoo)]
    return make_deployment("mosec", DeploymentConfig(**cfg), arts, "cpu")


def test_msgpack_request_decode_roundtrip(zoo_artifacts):
    import msgpack

    from servingbench.models import get_model

    adapter = registry.get("mosec")
    adapter.validate(_deployment(zoo_artifacts, options={"mosec": {"serialization": "msgpack"}}))
    spec = get_model("mlp")
    x = spec.example_inputs(3)
    req = adapter.request(spec, x)
    assert req.headers["Content-Type"] == "application/msgpack"
    sent = msgpack.unpackb(req.body)
    assert np.array_equal(np.frombuffer(sent["inputs"], sent["dtype"]).reshape(sent["shape"]), x)
    y = np.arange(30, dtype=np.float32).reshape(3, 10)
    assert np.array_equal(adapter.decode(spec, 200, msgpack.packb({"outputs": y.tobytes(), "shape": [3, 10]})), y)
    for status, body in [(500, b"boom"), (200, b"not msgpack"), (200, msgpack.packb({"outputs": b"\0" * 8}))]:
        with pytest.raises(DecodeError):
            adapter.decode(spec, status, body)


def test_rejects_unknown_serialization(zoo_artifacts):
    with pytest.raises(UnsupportedDeployment, match="serialization"):
        registry.get("mosec").validate(_deployment(zoo_artifacts, options={"mosec": {"serialization": "xml"}}))


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
