"""Issue 18 (overload) against real servers, with a shortened schedule (2 s at half capacity, 3 s at twice, 5 s at
half): a "yes" (MOSEC with a 32-request queue answers 429 for the excess and recovers) and a "no" (the calibration
server's single FIFO worker queues without bound: no request is refused, p99 grows)."""

from __future__ import annotations

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server


@pytest.fixture
def short(monkeypatch):
    from servingbench.probes import overload

    for name, value in (("CAPACITY_S", 1.0), ("BEFORE_S", 2.0), ("OVER_S", 3.0), ("AFTER_S", 5.0)):
        monkeypatch.setattr(overload, name, value)
    return overload


def _with_options(monkeypatch, options):
    from servingbench.probes import ProbeContext

    real_deploy = ProbeContext.deploy

    def deploy(self, *a, **kw):
        kw.setdefault("options", options)
        return real_deploy(self, *a, **kw)

    monkeypatch.setattr(ProbeContext, "deploy", deploy)


def test_mosec_with_a_short_queue_sheds_the_excess(short, probe_ctx, no_leftovers, monkeypatch):
    from servingbench.adapters.mosec import MosecAdapter

    monkeypatch.setattr(MosecAdapter, "overload_limits", lambda self: None)  # one run: the limited one
    _with_options(monkeypatch, {"mosec": {"capacity": 32}})
    (v,) = short.probe_overload(probe_ctx("mosec"))
    assert v.verdict == "supported", (v.reason, v.evidence)
    assert v.metrics["behaviour"] == "sheds" and v.metrics["shed_during"] > 0
    assert "http 429" in " ".join(v.evidence)


def test_a_single_fifo_worker_queues_without_bound(short, probe_ctx, no_leftovers, monkeypatch):
    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", REGISTRATION)

    (v,) = short.probe_overload(probe_ctx("calibration"))
    assert v.verdict in ("partial", "not_supported"), (v.reason, v.evidence)
    assert v.metrics["behaviour"] in ("queues", "times out") and not v.metrics["shed_during"]
    assert v.metrics["p99_during_s"] > 5 * v.metrics["p99_before_s"]
