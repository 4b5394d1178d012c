"""Issue 17: the batches a server really formed, per load point.  MOSEC under 8 concurrent clients: with dynamic
batching on (max_batch_size 8) it runs batches of more than one request; with it off, exactly one per call."""

from __future__ import annotations

import pytest

from servingbench.scenarios.loader import load_suite
from servingbench.suite import run_suite

pytestmark = pytest.mark.server

SUITE = """\
name: batches
frameworks: [mosec]
models: [mlp]
deployments:
  - {label: batched, max_batch_size: 8, batch_timeout: 10ms}
  - {label: single}
measurement: {warmup: 0.5s, window: 1s, windows: 2, max_duration: 3s, min_requests: 20}
workloads:
  - {name: closed, kind: closed_loop, concurrency: [8]}
"""


def test_batches_form_where_batching_is_on_and_not_where_it_is_off(tmp_path, no_leftovers):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    out = run_suite(load_suite(path), suite_path=path, out=tmp_path / "results", progress=lambda m: None)
    assert set(out.statuses.values()) == {"ok"}, out.statuses
    points = {r["deployment"]: r for r in out.results.records("point")}
    batched, single = points["batched"]["batch_sizes"], points["single"]["batch_sizes"]
    assert batched["max_rows"] > 1 and batched["mean_requests"] > 1.0, batched
    assert single["histogram"].keys() == {"1"} and single["mean_requests"] == 1.0, single
    assert single["calls"] >= points["single"]["metrics"]["requests"]  # every request was one model call
