"""Issue 17: the batches a server really formed, per load point.  MOSEC under 8 concurrent clients: with dynamic
batching on (max_batch_size 8) it runs batches of more than one request; with it off, exactly one per call."""

from __future__ import annotations

import pytest

from servingbench.contract import Secrets
from servingbench.deploy.live import LiveDeployment, make_deployment
from servingbench.load.plan import PointPlan
from servingbench.load.point import run_point
from servingbench.load.pool import InputPool
from servingbench.scenarios.schema import ClosedLoop, DeploymentConfig, Measurement

pytestmark = pytest.mark.server


def _point(tmp_path, zoo_artifacts, label: str, **cfg):
    from servingbench.adapters import registry

    dep = make_deployment("mosec", DeploymentConfig(label=label, **cfg), [zoo_artifacts["mlp"]], "cpu")
    with LiveDeployment(registry.get("mosec"), dep, tmp_path / label, tmp_path / "logs" / label, Secrets(),
                        startup_timeout=120) as live:
        w = ClosedLoop(name="closed", kind="closed_loop", concurrency=[8])
        m = Measurement(warmup="0.5s", window="1s", windows=2, max_duration="3s", min_requests=20)
        return run_point(live, PointPlan(w, {"concurrency": 8}, m, 0, ["mlp"]), InputPool(live), None, tmp_path,
                         tmp_path)


def test_batches_form_where_batching_is_on_and_not_where_it_is_off(tmp_path, zoo_artifacts, no_leftovers):
    batched = _point(tmp_path, zoo_artifacts, "batched", max_batch_size=8, batch_timeout="10ms")["batch_sizes"]
    point = _point(tmp_path, zoo_artifacts, "single")
    single = point["batch_sizes"]
    assert batched["max_rows"] > 1 and batched["mean_requests"] > 1.0, batched
    # the verification requests (batch 1 and 8) came before the point: none of them is counted in it
    assert single["histogram"].keys() == {"1"} and single["mean_requests"] == 1.0, single
    assert single["calls"] >= point["metrics"]["requests"]  # every request one model call (warm-up included)
