"""Issue 18 (metrics endpoint) against real servers: a "yes" (MOSEC's Prometheus /metrics: a counter moves by
exactly the requests sent) and a "no" (LitServe: no endpoint; GET /metrics answers 404)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server


def test_mosec_exposes_a_counter_that_matches_what_was_sent(probe_ctx, no_leftovers):
    from servingbench.probes.metrics import SENT, probe_metrics

    (v,) = probe_metrics(probe_ctx("mosec"))
    assert v.verdict == "supported", (v.reason, v.evidence)
    assert v.metrics["sent_ok"] == SENT and abs(v.metrics["counter_delta"] - SENT) <= 2
    assert v.metrics["request_counter"].startswith("mosec_")
    # mosec_service_process_duration_second; its batch-size histogram has samples only where a stage batches
    assert v.metrics["exposes_latency_histogram"], v.evidence
    assert v.metrics["scrape_under_load_status"] == 200


def test_litserve_has_no_metrics_endpoint(probe_ctx, no_leftovers):
    from servingbench.probes.metrics import probe_metrics

    (v,) = probe_metrics(probe_ctx("litserve"))
    assert v.verdict == "not_supported", (v.reason, v.evidence)
    assert "GET /metrics on port 'http' -> 404" in v.evidence[0]
