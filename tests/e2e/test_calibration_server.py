"""The calibration server (``servingbench.testing.calibration``) behaves as its analytic model says, end to end.

One worker, FIFO, a deterministic service time S: at any closed-loop concurrency >= 2 the worker is never idle, so
the throughput is 1 / S.  With S = 5 ms a short closed-loop point at concurrency 4 through the real locust generator
must measure 200 rps (within 15 %) with no error.  This checks the test kit (the server and the harness's point
measurement together), not a speed of the project: 200 rps is far below what the generator can drive.
"""

from __future__ import annotations

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server

SERVICE_MS = 5.0


@pytest.fixture
def calibration_live(zoo_artifacts, tmp_path, monkeypatch):
    # The load generator (another process) finds the adapter by name in the registry: register it there too.
    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", REGISTRATION)
    monkeypatch.delenv("SERVINGBENCH_CALIBRATION_SLOWDOWN", raising=False)
    from servingbench.adapters import registry
    from servingbench.contract import Secrets
    from servingbench.deploy.live import LiveDeployment, make_deployment
    from servingbench.scenarios.schema import DeploymentConfig
    from servingbench.suite import cpu_sets

    server_cpus, _ = cpu_sets("auto")
    cfg = DeploymentConfig(options={"calibration": {"service_ms": SERVICE_MS}})
    dep = make_deployment("calibration", cfg, [zoo_artifacts["mlp"]], "cpu")
    adapter = registry.get("calibration")
    adapter.validate(dep)
    with LiveDeployment(adapter, dep, tmp_path / "deploy", tmp_path / "logs", Secrets(),
                        server_cpus=server_cpus) as live:
        yield live


def test_closed_loop_throughput_is_one_over_the_service_time(calibration_live, tmp_path):
    from servingbench.load.plan import PointPlan
    from servingbench.load.point import run_point
    from servingbench.load.pool import InputPool
    from servingbench.scenarios.schema import ClosedLoop, Measurement
    from servingbench.suite import cpu_sets

    _, gen_cpus = cpu_sets("auto")
    w = ClosedLoop(name="calibration", kind="closed_loop", concurrency=[4], input_pool=4)
    m = Measurement(warmup="0.5s", window="1s", windows=2, tolerance=0.2, max_duration="4s", min_requests=100,
                    sample_every=10)
    point = run_point(calibration_live, PointPlan(w, {"concurrency": 4}, m, 0, ["mlp"]),
                      InputPool(calibration_live), gen_cpus, tmp_path, tmp_path)
    mt = point["metrics"]
    expected = 1e3 / SERVICE_MS  # 200 rps
    print(f"calibration S={SERVICE_MS:g} ms, c=4: {mt['throughput_rps']:.1f} rps (expected {expected:.0f}), "
          f"p50 {mt['latency_s']['p50'] * 1e3:.2f} ms, {mt['requests']} requests, {mt['errors']} errors, "
          f"flags {point['validity']['flags']}")
    assert mt["errors"] == 0, point["error_examples"]
    assert mt["requests"] >= 100
    assert mt["throughput_rps"] == pytest.approx(expected, rel=0.15), (
        f"{mt['throughput_rps']:.1f} rps, expected {expected:.0f} (1 / {SERVICE_MS:g} ms)")
    # Each request waits for the 3 ahead of it: the median latency is about 4 service times (plus the round trip).
    assert mt["latency_s"]["p50"] == pytest.approx(4 * SERVICE_MS / 1e3, rel=0.25)


def test_planted_slowdown_option_lengthens_the_service_time(zoo_artifacts, tmp_path, monkeypatch):
    """``slowdown`` multiplies the service time: one request alone takes about service_ms x slowdown."""
    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", REGISTRATION)
    monkeypatch.delenv("SERVINGBENCH_CALIBRATION_SLOWDOWN", raising=False)
    import statistics

    from servingbench.adapters import registry
    from servingbench.contract import Secrets
    from servingbench.deploy.live import LiveDeployment, make_deployment
    from servingbench.scenarios.schema import DeploymentConfig

    cfg = DeploymentConfig(options={"calibration": {"service_ms": 10.0, "slowdown": 2.0}})
    dep = make_deployment("calibration", cfg, [zoo_artifacts["mlp"]], "cpu")
    with LiveDeployment(registry.get("calibration"), dep, tmp_path / "deploy", tmp_path / "logs", Secrets()) as live:
        spec = zoo_artifacts["mlp"].spec()
        x = spec.example_inputs(1)
        lat = [live.send(spec, x)[2] for _ in range(10)]
    assert 0.020 <= statistics.median(lat) < 0.030
