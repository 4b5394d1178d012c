"""Issue 18 (readiness) against real servers: a "yes" (LitServe: /health answers only once the model is loaded)
and a "no" (the calibration server with a planted window where /health says ok while inference answers 503)."""

from __future__ import annotations

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server


def test_litserve_is_ready_when_it_says_so(probe_ctx, no_leftovers):
    from servingbench.probes import probe_readiness

    (v,) = probe_readiness(probe_ctx("litserve"))
    assert v.verdict == "supported", (v.reason, v.evidence)
    assert v.metrics["health_ready_s"] is not None and v.metrics["false_ready_samples"] == 0
    assert v.metrics["samples"] > 10


def test_a_planted_false_ready_window_is_found(probe_ctx, no_leftovers, monkeypatch):
    from servingbench.probes import ProbeContext, probe_readiness

    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", REGISTRATION)
    calls = {}
    real_deploy = ProbeContext.deploy

    def deploy(self, *a, **kw):  # the probe's deployment, with the planted window
        calls["n"] = calls.get("n", 0) + 1
        kw.setdefault("options", {"calibration": {"unavailable_s": 1.5}})
        return real_deploy(self, *a, **kw)

    monkeypatch.setattr(ProbeContext, "deploy", deploy)
    (v,) = probe_readiness(probe_ctx("calibration"))
    assert calls["n"] == 1
    assert v.verdict == "partial", (v.reason, v.evidence)
    # the planted window is 1.5 s; polls on a busy machine stretch the measured span, never shorten it much
    assert v.metrics["false_ready_samples"] >= 10 and 0.8 < v.metrics["false_ready_span_s"] < 10
    assert "error: HTTP 503" in " ".join(map(str, v.evidence))
