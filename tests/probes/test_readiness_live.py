"""Issue 18 (readiness) against real servers: a "yes" (LitServe: /health answers only once the model is loaded)
and a "no" (the calibration server with a planted window where /health says ok while inference answers 503)."""

from __future__ import annotations

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server


def _ctx(framework, zoo_artifacts, tmp_path, store):
    from servingbench.probes import ProbeContext
    from servingbench.suite import cpu_sets

    return ProbeContext(framework, zoo_artifacts, store, tmp_path / "work", tmp_path / "logs", cpu_sets("auto")[0])


def test_litserve_is_ready_when_it_says_so(zoo_artifacts, tmp_path, no_leftovers):
    from servingbench.probes import probe_readiness
    from servingbench.runtime.secrets import SecretStore

    with SecretStore() as store:
        (v,) = probe_readiness(_ctx("litserve", zoo_artifacts, tmp_path, store))
    assert v.verdict == "supported", (v.reason, v.evidence)
    assert v.metrics["health_ready_s"] is not None and v.metrics["false_ready_samples"] == 0
    assert v.metrics["samples"] > 10


def test_a_planted_false_ready_window_is_found(zoo_artifacts, tmp_path, no_leftovers, monkeypatch):
    from servingbench.probes import ProbeContext, probe_readiness
    from servingbench.runtime.secrets import SecretStore

    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", REGISTRATION)
    calls = {}
    real_deploy = ProbeContext.deploy

    def deploy(self, *a, **kw):  # the probe's deployment, with the planted window
        calls["n"] = calls.get("n", 0) + 1
        kw.setdefault("options", {"calibration": {"unavailable_s": 1.5}})
        return real_deploy(self, *a, **kw)

    monkeypatch.setattr(ProbeContext, "deploy", deploy)
    with SecretStore() as store:
        (v,) = probe_readiness(_ctx("calibration", zoo_artifacts, tmp_path, store))
    assert calls["n"] == 1
    assert v.verdict == "partial", (v.reason, v.evidence)
    # the planted window is 1.5 s; polls on a busy machine stretch the measured span, never shorten it much
    assert v.metrics["false_ready_samples"] >= 10 and 0.8 < v.metrics["false_ready_span_s"] < 10
    assert "error: HTTP 503" in " ".join(map(str, v.evidence))
