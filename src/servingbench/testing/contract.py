"""The adapter contract suite: real servers, every zoo model, for any registered adapter.

An adapter passes when:

1. it declares itself: the entry-point name equals ``Adapter.name``, its capabilities are
   :class:`~servingbench.contract.Capability` members, its ``Options`` is an
   :class:`~servingbench.contract.AdapterOptions` whose fields all have a description, and the framework is
   installed (``framework_version()``);
2. its codec is pure: the same request twice is the same bytes; a codec rebuilt from ``Deployment.describe()``
   encodes the same; ``decode`` raises :class:`~servingbench.contract.DecodeError` for a 500, for a body that is not
   an answer, for an empty object and for a ragged array;
3. its server starts and becomes ready, and every zoo model answers with the reference outputs at batch 1 and 8
   (cold start recorded, ready before the first correct answer), the encoded-payload models too (``cnn_image``:
   JPEG files, ``encoder_text``: strings; decoded, transformed or tokenised by the server with
   ``servingbench.models.preprocess``);
4. a request with the wrong input shape is answered with an error (non-2xx, or a body ``decode`` rejects) while the
   server survives and keeps answering correctly;
5. a short closed-loop load through the real locust generator (tensor, image and text requests) has no errors and
   no wrong sampled answers;
6. the stop leaves no process, no held port and none of the spec's ``cleanup_globs``;
7. a ``METRICS`` claim comes with ``metrics_request`` (and no request without the claim); ``overload_limits``, when
   given, are valid options.

Run it: ``servingbench contract NAME`` (or ``pytest --pyargs servingbench.testing.contract`` with
``SERVINGBENCH_CONTRACT=NAME``; unset: every registered adapter).  An adapter that is not packaged yet is
registered for the run with ``SERVINGBENCH_ADAPTERS="NAME=module:Class"`` (the module must be importable).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from servingbench.adapters import registry
from servingbench.contract import Adapter, AdapterOptions, Capability, DecodeError, Deployment, RequestSpec, Secrets

#: Environment variable naming the adapters to test (comma-separated); unset: every registered adapter.
SELECT = "SERVINGBENCH_CONTRACT"


def adapters_under_test() -> list[str]:
    chosen = [n.strip() for n in os.environ.get(SELECT, "").split(",") if n.strip()]
    return chosen or registry.names()


def pytest_generate_tests(metafunc):
    if "adapter_name" in metafunc.fixturenames:
        metafunc.parametrize("adapter_name", adapters_under_test(), scope="module")


@pytest.fixture(scope="session")
def zoo_artifacts():
    from servingbench.models import build_artifacts, list_models
    from servingbench.models.zoo import payload_models

    return {m.name: build_artifacts(m) for m in [*list_models(), *payload_models()]}


def _deployment(name: str, zoo: dict) -> Deployment:
    from servingbench.deploy.live import make_deployment
    from servingbench.scenarios.schema import DeploymentConfig

    return make_deployment(name, DeploymentConfig(), list(zoo.values()), "cpu")


def test_declares_itself(adapter_name):
    cls = registry.get_class(adapter_name)
    assert issubclass(cls, Adapter)
    assert cls.name == adapter_name, f"entry point {adapter_name!r} names an adapter called {cls.name!r}"
    assert all(isinstance(c, Capability) for c in cls.capabilities)
    assert issubclass(cls.Options, AdapterOptions)
    undocumented = [n for n, f in cls.Options.model_fields.items() if not f.description]
    assert not undocumented, f"options without a description: {undocumented}"
    assert cls().framework_version(), f"{adapter_name}: the distribution {cls.distribution!r} is not installed"
    limits = cls().overload_limits()
    if limits is not None:  # the overload probe merges them into the deployment's options: they must validate
        cls.parse_options(limits)


def test_metrics_claim_names_an_endpoint(adapter_name, zoo_artifacts):
    """An adapter that claims ``METRICS`` names its endpoint (``metrics_request``); one that does not, names none."""
    adapter = registry.get(adapter_name)
    req = adapter.metrics_request(_deployment(adapter_name, zoo_artifacts))
    if Capability.METRICS in adapter.capabilities:
        assert isinstance(req, RequestSpec) and req.path.startswith("/"), f"{adapter_name}: metrics_request -> {req!r}"
    else:
        assert req is None, f"{adapter_name}: metrics_request names {req.path} but METRICS is not claimed"


def test_codec_is_pure_and_decode_rejects_garbage(adapter_name, zoo_artifacts):
    from servingbench.models import get_model

    adapter = registry.get(adapter_name)
    dep = _deployment(adapter_name, zoo_artifacts)
    codec = adapter.codec(dep)
    rebuilt = registry.get(adapter_name).codec(Deployment.from_description(dep.describe()))
    spec = get_model("mlp")
    x = spec.example_inputs(2)
    a, b = codec.request(spec, x), codec.request(spec, x)
    assert a == b and isinstance(a.body, bytes) and a.method in ("POST", "PUT")
    assert rebuilt.request(spec, x) == a, "the codec must be a function of the deployment's configuration"
    for status, body in [(500, b"boom"), (200, b"not json"), (200, b"{}"), (200, b"[[1,2],[3]]")]:
        with pytest.raises(DecodeError):
            codec.decode(spec, status, body)


@pytest.fixture(scope="module")
def live(adapter_name, zoo_artifacts, tmp_path_factory):
    from servingbench.deploy.live import LiveDeployment
    from servingbench.runtime.supervisor import is_listening, marked_processes

    adapter = registry.get(adapter_name)
    try:
        adapter.check_available()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{adapter_name} is registered but cannot run here: {e}")
    dep = _deployment(adapter_name, zoo_artifacts)
    adapter.validate(dep)
    tmp = tmp_path_factory.mktemp(adapter_name)
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
        live.codec.decode(spec, status, body)
    live.check_alive()
    assert np.allclose(live.infer(spec, spec.example_inputs(1)), live.infer(spec, spec.example_inputs(1)))


@pytest.mark.server
def test_short_closed_loop_load(live, tmp_path):
    from servingbench.load.plan import PointPlan
    from servingbench.load.point import run_point
    from servingbench.load.pool import InputPool
    from servingbench.scenarios.schema import ClosedLoop, Measurement

    w = ClosedLoop(name="smoke", kind="closed_loop", concurrency=[2], input_pool=4)
    m = Measurement(warmup="0.5s", window="1s", windows=2, max_duration="2s", min_requests=10, sample_every=5)
    models = ["mlp", "cnn_image", "encoder_text"]  # tensors, JPEG files, strings
    point = run_point(live, PointPlan(w, {"concurrency": 2}, m, 0, models), InputPool(live), None, tmp_path, tmp_path)
    mt = point["metrics"]
    assert mt["requests"] > 10
    assert mt["errors"] == 0, point["error_examples"]
    assert mt["latency_s"]["p50"] > 0
    assert point["resources"]["samples"] >= 1
    assert point["resources"]["server_pss_bytes_max"] > 10e6
