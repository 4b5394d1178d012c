"""The graceful-drain probe's classification, on synthetic timelines (times relative to the signal at t=10)."""

from __future__ import annotations

import pytest
import requests

from servingbench.probes import drain as d

T = 10.0


def test_requests_are_split_around_the_signal():
    load = [(9.0, 9.5, "ok"), (9.6, 9.9, "ok"),            # before
            (9.8, 10.2, "ok"), (9.9, 10.3, "reset"), (9.95, None, "reset"),  # in flight
            (10.4, 10.5, "refused")]                         # after, existing connection
    probes = [(9.9, 9.91, "ok"), (10.05, 10.06, "ok"), (10.2, 10.2, "refused"), (10.3, 10.3, "refused")]
    s = d.drain_summary(load, probes, T, 12.0)
    assert s["completed_before_signal"] == 2
    assert s["in_flight_at_signal"] == 3 and s["in_flight_completed"] == 1 and s["in_flight_reset"] == 2
    assert s["after_signal_existing"] == {"refused": 1}
    assert s["after_signal_new_connections"] == {"ok": 1, "refused": 2}
    assert s["new_connections_refused_after_s"] == pytest.approx(0.2)
    assert s["new_connections_answered_after_signal"] == 1
    assert s["exit_s"] == pytest.approx(2.0)


def _s(n, ok, graceful=True, before=10):
    return {"in_flight_at_signal": n, "in_flight_completed": ok, "completed_before_signal": before,
            "graceful_exit": graceful, "stop_signal": "SIGTERM"}


@pytest.mark.parametrize("summary,verdict", [
    (_s(8, 8), "supported"),
    (_s(8, 5), "partial"),
    (_s(8, 0), "not_supported"),
    (_s(8, 8, graceful=False), "not_supported"),
    (_s(0, 0), "partial"),
    (_s(8, 8, before=0), "failed"),
])
def test_verdicts(summary, verdict):
    assert d.drain_verdict(summary)[0] == verdict


def test_outcomes_of_errors():
    assert d.outcome_of(None, 200) == "ok" and d.outcome_of(None, 503) == "http 503"
    refused = requests.ConnectionError("HTTPConnectionPool: [Errno 111] Connection refused")
    assert d.outcome_of(refused, None) == "refused"
    assert d.outcome_of(requests.ConnectionError("Connection reset by peer"), None) == "reset"
    assert d.outcome_of(requests.exceptions.ChunkedEncodingError("x"), None) == "reset"
    assert d.outcome_of(ValueError("x"), None) == "error ValueError"
