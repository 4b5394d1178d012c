"""Issue 18 (graceful drain) against real servers: a "yes" (the FastAPI baseline under uvicorn: SIGTERM lets the
requests in flight finish) and a "no" (the calibration server exits on SIGTERM at once: its in-flight requests are
reset)."""

from __future__ import annotations

import pytest

from servingbench.testing.calibration import REGISTRATION

pytestmark = pytest.mark.server


def test_uvicorn_drains_the_requests_in_flight(probe_ctx, no_leftovers):
    from servingbench.probes.drain import probe_drain

    (v,) = probe_drain(probe_ctx("fastapi"))
    assert v.verdict == "supported", (v.reason, v.evidence)
    m = v.metrics
    assert m["in_flight_at_signal"] >= 1 and m["in_flight_completed"] == m["in_flight_at_signal"]
    assert v.metrics["graceful_exit"] is True and v.metrics["stop_signal"] == "SIGTERM"


def test_a_server_that_exits_at_once_drops_them(probe_ctx, no_leftovers, monkeypatch):
    from servingbench.probes.drain import probe_drain

    monkeypatch.setenv("SERVINGBENCH_ADAPTERS", REGISTRATION)
    (v,) = probe_drain(probe_ctx("calibration"))
    assert v.verdict in ("not_supported", "partial"), (v.reason, v.evidence)
    assert v.metrics["in_flight_at_signal"] >= 2  # one worker, 8 clients: a queue
    assert v.metrics["in_flight_completed"] < v.metrics["in_flight_at_signal"]
    assert "failed or were reset" in v.reason
