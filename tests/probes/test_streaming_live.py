"""Issue 18 (streaming) against real servers.  "Yes": LitServe's ``LitAPI(stream=True)`` and the FastAPI
baseline's StreamingResponse: the zoo gpt's tokens arrive as they are decoded and equal the in-process decoding.
"No": the blocking FastAPI baseline decodes inside the event loop, so uvicorn (uvloop) flushes every token at the
end: right tokens, buffered (partial); and an adapter that names no streaming request (MLflow): not_supported."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server


@pytest.fixture(autouse=True)
def _short_load(monkeypatch):
    from servingbench.probes import streaming

    monkeypatch.setattr(streaming, "LOAD_S", 2.0)  # the mechanism, not the figures: 2 s of 4 streams at once


@pytest.mark.parametrize("framework", ["fastapi", "litserve"])
def test_the_in_process_tokens_stream_as_they_are_decoded(framework, probe_ctx, no_leftovers):
    from servingbench.probes import probe_streaming

    (v,) = probe_streaming(probe_ctx(framework))
    assert v.verdict == "supported", (v.reason, v.evidence)
    alone, load = v.metrics["alone"], v.metrics["load"]
    n = v.metrics["new_tokens"]
    assert alone["completed"] == 4 and alone["tokens"] == 4 * n and v.metrics["wrong_under_load"] == 0
    assert v.metrics["ttft_share_alone"] < 0.5  # the first of 32 tokens long before the last
    assert load["completed"] >= 4 and load["errors"] == 0 and load["tokens_per_s"] > 0
    assert 0 < load["ttft_s"]["p50"] <= load["ttft_s"]["p99"]
    assert "TTFT p50" in v.evidence[0] and "streams at once" in v.evidence[1]


def test_mosec_server_sent_events_carry_the_in_process_tokens(probe_ctx, no_leftovers):
    """MOSEC's SSEWorker: the right tokens, alone and under load.  (Whether a lone stream arrives token by token
    depends on the TCP stack: on this VM its events come out together after ~40 ms, a delayed-ACK interval.)"""
    from servingbench.probes import probe_streaming

    (v,) = probe_streaming(probe_ctx("mosec"))
    assert v.verdict in ("supported", "partial"), (v.reason, v.evidence)
    assert v.metrics["alone"]["completed"] == 4 and v.metrics["wrong_under_load"] == 0
    assert v.metrics["load"]["completed"] >= 4 and v.metrics["load"]["errors"] == 0


def test_decoding_inside_the_event_loop_buffers_the_stream(probe_ctx, no_leftovers):
    from servingbench.probes import probe_streaming

    (v,) = probe_streaming(probe_ctx("fastapi-blocking"))
    assert v.verdict == "partial" and "buffered" in v.reason, (v.reason, v.evidence)
    assert v.metrics["ttft_share_alone"] > 0.5 and v.metrics["alone"]["completed"] == 4
    assert v.metrics["alone"]["burst_fraction"] > 0.5


def test_an_adapter_without_a_streaming_request_is_not_supported(probe_ctx):
    from servingbench.probes import probe_streaming

    (v,) = probe_streaming(probe_ctx("mlflow"))  # returns before deploying anything
    assert v.verdict == "not_supported" and "the framework has none" in v.reason
    assert v.evidence and v.evidence[0].startswith("docs: no:")
