"""Streaming measurements: time to first token, inter-token latency, tokens per second (issue 18).

A client records one :class:`StreamTrace` per request: when the request went out and when each token arrived
(``time.perf_counter`` on the client, after the token was parsed from the wire).  :func:`summarize_streams` turns
the traces of one load point into its figures:

* **TTFT**: first token's arrival minus the send time, per stream (HdrHistogram percentiles, as every latency).
* **ITL**: the gaps between consecutive tokens of a stream, pooled over the streams.
* **tokens/s**: every token received divided by the point's duration (what the server delivers), and per stream
  (tokens after the first over the time from the first to the last: the decoding speed a reader sees).
* **burst fraction**: the share of gaps under ``BURST_GAP_S``.  A server (or a proxy) that buffers the stream and
  sends it at the end shows a TTFT close to the whole response time and a burst fraction near 1: it does not
  stream, whatever its API is called.
* streams that failed, or ended with a token count other than the one asked for (``incomplete``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from servingbench.measure.stats import LatencyHistogram

#: Consecutive tokens closer than this arrived in one burst (one read of the socket), not one decoding step apart.
BURST_GAP_S = 1e-4


@dataclass
class StreamTrace:
    """One streamed request as the client saw it (``perf_counter`` seconds)."""

    sent_s: float
    token_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    error: str | None = None

    def add(self, token: int, at_s: float) -> None:
        self.tokens.append(int(token))
        self.token_s.append(float(at_s))

    @property
    def ttft_s(self) -> float | None:
        return self.token_s[0] - self.sent_s if self.token_s else None

    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_s, self.token_s[1:])]


def summarize_streams(traces: list[StreamTrace], duration_s: float, expected_tokens: int) -> dict[str, Any]:
    """The figures of one streaming load point (see the module docstring); ``duration_s`` is the measured span."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [t for t in traces if t.error is None and t.token_s]
    ttft, itl = LatencyHistogram(), LatencyHistogram()
    ttft.record_many([t.ttft_s for t in ok])
    gaps = [g for t in ok for g in t.gaps_s()]
    itl.record_many(gaps)
    per_stream = [(len(t.token_s) - 1) / (t.token_s[-1] - t.token_s[0]) for t in ok
                  if len(t.token_s) > 1 and t.token_s[-1] > t.token_s[0]]
    errors: dict[str, int] = {}
    for t in traces:
        if t.error is not None:
            errors[t.error] = errors.get(t.error, 0) + 1
    received = sum(len(t.tokens) for t in traces)
    return {
        "streams": len(traces),
        "completed": sum(1 for t in ok if len(t.tokens) == expected_tokens),
        "incomplete": sum(1 for t in ok if len(t.tokens) != expected_tokens),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "tokens": received,
        "tokens_per_s": received / duration_s,
        "stream_tokens_per_s_p50": statistics.median(per_stream) if per_stream else None,
        "ttft_s": ttft.percentiles() if ttft.count else None,
        "itl_s": itl.percentiles() if itl.count else None,
        "burst_fraction": (sum(1 for g in gaps if g < BURST_GAP_S) / len(gaps)) if gaps else None,
    }
