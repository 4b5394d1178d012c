"""The adapter contract suite: every registered adapter, real server, every zoo model.

An adapter passes when: it declares itself, its server starts and becomes ready, every zoo model answers with the
reference outputs (batch 1 and 8), the cold start is recorded, a short locust load runs without errors or wrong
answers, and the stop leaves no process, no held port and none of its leftovers.
"""

from __future__ import annotations

import glob

import numpy as np
import pytest

from servingbench.adapters import registry
from servingbench.adapters.base import Adapter, Capability, DecodeError
from servingbench.harness import InputPool, LiveDeployment, PointPlan, make_deployment, run_point
from servingbench.measure.supervisor import is_listening, marked_processes
from servingbench.scenarios.schema import ClosedLoop, DeploymentConfig, Measurement

ADAPTERS = registry.names()


def _available(name: str) -> bool:
    try:
        registry.get(name).check_available()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.parametrize("name", ADAPTERS)
def test_declares_itself(name):
    cls = registry.get_class(name)
    assert issubclass(cls, Adapter)
    assert cls.name == name
    assert all(isinstance(c, Capability) for c in cls.capabilities)
    assert cls().framework_version(), f"{name} is not installed in the benchmark environment"


@pytest.mark.parametrize("name", ADAPTERS)
def test_request_is_pure_and_decode_rejects_garbage(name, zoo_artifacts):
    from servingbench.models import get_model

    adapter = registry.get(name)
    spec = get_model("mlp")
    x = spec.example_inputs(2)
    a, b = adapter.request(spec, x), adapter.request(spec, x)
    assert a == b and isinstance(a.body, bytes) and a.method in ("POST", "PUT")
    for status, body in [(500, b"boom"), (200, b"not json"), (200, b"{}"), (200, b"[[1,2],[3]]")]:
        with pytest.raises(DecodeError):
            adapter.decode(spec, status, body)


@pytest.fixture(scope="module", params=ADAPTERS)
def live(request, zoo_artifacts, tmp_path_factory):
    name = request.param
    if not _available(name):
        pytest.fail(f"{name} is registered but not installed: the benchmark environment must have it")
    adapter = registry.get(name)
    dep = make_deployment(name, DeploymentConfig(), list(zoo_artifacts.values()), "cpu")
    tmp = tmp_path_factory.mktemp(name)
    from servingbench.adapters.base import Secrets

    ld = LiveDeployment(adapter, dep, tmp / "deploy", tmp / "logs", Secrets(), startup_timeout=240)
    with ld:
        yield ld
    # after the stop
    assert not marked_processes(ld.marker), "processes survived the stop"
    for r in ld.stop_reports:
        assert not r.survivors and not r.ports_held, r
    for port in ld.ctx.ports.assigned().values():
        assert not is_listening(port), f"port {port} still held"
    for s in ld.servers:
        for pattern in s.spec.cleanup_globs:
            assert not glob.glob(pattern), f"left behind: {pattern}"


@pytest.mark.server
def test_verifies_every_model(live, zoo_artifacts):
    assert set(live.verification) == set(zoo_artifacts)
    for name, v in live.verification.items():
        assert v["ok"] and v["max_abs_err"] <= v["atol"] + v["rtol"], (name, v)
    assert 0 < live.ready_s <= live.cold_start_s < 240


@pytest.mark.server
def test_wrong_model_input_is_an_error_not_a_crash(live):
    from servingbench.models import get_model

    spec = get_model("mlp")
    bad = np.zeros((1, 3), dtype=np.float32)  # wrong feature size
    status, body, _ = live.send(spec, bad)
    with pytest.raises(DecodeError):
        live.adapter.decode(spec, status, body)
    live.check_alive()
    assert np.allclose(live.infer(spec, spec.example_inputs(1)), live.infer(spec, spec.example_inputs(1)))


@pytest.mark.server
def test_short_closed_loop_load(live, tmp_path):
    w = ClosedLoop(name="smoke", kind="closed_loop", concurrency=[2], input_pool=4)
    m = Measurement(warmup="0.5s", window="1s", windows=2, max_duration="2s", min_requests=10, sample_every=5)
    plan = PointPlan(w, {"concurrency": 2}, m, 0, ["mlp"])
    point = run_point(live, plan, InputPool(live), None, tmp_path, tmp_path)
    mt = point["metrics"]
    assert mt["requests"] > 10
    assert mt["errors"] == 0, point["error_examples"]
    assert mt["latency_s"]["p50"] > 0
    assert point["resources"]["samples"] >= 1
    assert point["resources"]["server_pss_bytes_max"] > 10e6
