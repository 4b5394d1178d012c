"""The streaming probe: does the framework stream a generative model's tokens as they are decoded, and how fast?

The deployment serves the zoo's tiny GPT (``gpt``: greedy decoding of ``new_tokens`` tokens per request) and the
adapter names the streaming request (:meth:`servingbench.contract.Adapter.stream_request`) and parses its wire
format (:meth:`~servingbench.contract.Adapter.stream_tokens`).  The probe

1. streams each of :data:`PROMPTS` reference prompts alone and compares the tokens with the same greedy decoding
   run in-process on the artifacts (:mod:`servingbench.models.generate`);
2. streams from :data:`STREAMS` client threads for :data:`LOAD_S` seconds: time to first token, inter-token latency
   and tokens/s under load (:func:`servingbench.measure.streaming.summarize_streams`), tokens verified again.

Verdicts:

* ``supported``: the tokens are right and arrive as they are decoded: alone, the first token arrives in less than
  :data:`STREAMED_RATIO` of the whole response time (median over the prompts);
* ``partial``: the tokens are right but arrive at the end (a buffered "stream");
* ``failed``: wrong tokens, errors, or fewer tokens than asked for;
* ``not_supported``: the adapter names no streaming request and its ``docs_claims["streaming"]`` (the evidence)
  says the framework has none; ``not_run`` when the framework streams but the adapter does not drive it yet.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from servingbench.measure.streaming import StreamTrace, summarize_streams
from servingbench.models.generate import first_divergence, greedy

PROMPTS = 4  #: reference prompts streamed alone (their greedy decoding has a measured argmax margin)
STREAMS = 4  #: client threads streaming at once under load
LOAD_S = 5.0  #: seconds of load
STREAMED_RATIO = 0.5  #: first token before this share of the whole response time: streamed, not buffered


def stream_once(live: Any, http: Any, req: Any) -> StreamTrace:
    """One streamed request (built once per prompt by the adapter); every token's arrival time is taken when the
    adapter's parser yields it."""
    adapter = live.adapter
    trace = StreamTrace(sent_s=time.perf_counter())
    try:
        with http.request(req.method, live.base_url(req.port) + req.path, data=req.body, headers=dict(req.headers),
                          stream=True, timeout=30) as r:
            if r.status_code >= 400:
                trace.error = f"HTTP {r.status_code}"
                return trace
            for tok in adapter.stream_tokens(r.iter_content(chunk_size=None)):
                trace.add(tok, time.perf_counter())
    except Exception as e:  # noqa: BLE001 - a failed stream is a result
        trace.error = type(e).__name__
    return trace


def _reference(model: Any, artifacts: Any, prompts: Any, n: int) -> Any:
    from servingbench.models.runtime import load_runtime

    return greedy(load_runtime(artifacts.dir, fmt="eager", threads=1).predict, prompts, n)


def probe_streaming(ctx: Any) -> list[Any]:
    from servingbench.contract import Adapter
    from servingbench.models import build_artifacts, get_model
    from servingbench.probes import Verdict

    v = Verdict("streaming", "not_run")
    adapter = ctx.adapter
    if type(adapter).stream_request is Adapter.stream_request:
        claim = adapter.docs_claims.get("streaming") or "no streaming endpoint documented"
        v.evidence.append(f"docs: {claim}")
        if claim.startswith("no"):
            v.verdict, v.reason = "not_supported", "the adapter names no streaming request: the framework has none"
        else:  # the framework streams, servingbench's adapter does not drive it yet: nothing was measured
            v.reason = "the adapter does not implement stream_request yet"
        return [v]
    model = get_model("gpt")
    n = int(model.params["new_tokens"])
    if "gpt" not in ctx.artifacts:
        ctx.artifacts["gpt"] = build_artifacts(model)
    prompts = model.example_inputs(PROMPTS, seed=0)
    expected = _reference(model, ctx.artifacts["gpt"], prompts, n)
    with ctx.deploy(models=["gpt"]) as live:
        if live.remote is not None:
            v.reason = "a remote target: the probe deploys the zoo's gpt itself"
            return [v]
        reqs = [adapter.stream_request(live.deployment, model, p, n, live.secrets) for p in prompts]
        if reqs[0] is None:
            v.verdict, v.reason = "not_supported", "this deployment cannot stream (the adapter returned no request)"
            return [v]
        http = live.new_session()
        try:
            alone = [stream_once(live, http, r) for r in reqs]
        finally:
            http.close()
        loaded, elapsed = _under_load(live, reqs)
    wrong = [(i % PROMPTS, first_divergence(t.tokens, expected[i % PROMPTS]))
             for i, t in enumerate(alone) if t.error is None]
    wrong = [(i, at) for i, at in wrong if at is not None]
    wrong_load = sum(1 for i, t in loaded if t.error is None and first_divergence(t.tokens, expected[i]) is not None)
    s_alone = summarize_streams(alone, sum(t.token_s[-1] - t.sent_s for t in alone if t.token_s) or 1.0, n)
    s_load = summarize_streams([t for _, t in loaded], elapsed, n)
    ratios = [t.ttft_s / (t.token_s[-1] - t.sent_s) for t in alone if t.token_s and t.token_s[-1] > t.sent_s]
    ratio = statistics.median(ratios) if ratios else None
    v.metrics = {"alone": s_alone, "load": {**s_load, "streams_at_once": STREAMS, "seconds": elapsed},
                 "ttft_share_alone": ratio, "wrong_under_load": wrong_load, "new_tokens": n}
    v.evidence.append(_describe("alone", s_alone, n) + (f"; first token after {ratio:.0%} of the response time"
                                                       if ratio is not None else ""))
    v.evidence.append(_describe(f"{STREAMS} streams at once for {elapsed:.1f} s", s_load, n))
    errors = s_alone["errors"] + s_load["errors"]
    if errors or s_alone["incomplete"] or s_load["incomplete"]:
        kinds = {**s_alone["error_kinds"], **s_load["error_kinds"]}
        v.verdict = "failed"
        v.reason = (f"{errors} stream(s) failed {kinds}" if errors else
                    f"{s_alone['incomplete'] + s_load['incomplete']} stream(s) ended with other than {n} tokens")
    elif wrong or wrong_load:
        v.verdict = "failed"
        v.reason = (f"wrong tokens: prompt {wrong[0][0]} differs from the in-process decoding at token {wrong[0][1]}"
                    if wrong else f"{wrong_load} stream(s) under load differ from the in-process decoding")
    elif ratio is None or ratio >= STREAMED_RATIO:
        v.verdict = "partial"
        v.reason = ("the tokens are right but arrive together at the end of the response (buffered, not streamed"
                    + (f"; first token after {ratio:.0%} of the response time" if ratio is not None else "") + ")")
        if (s_load["burst_fraction"] or 1.0) < STREAMED_RATIO:
            v.reason += (f"; with {STREAMS} streams at once they do arrive apart (burst fraction "
                         f"{s_load['burst_fraction']:.2f}): something holds back a lone stream's small writes")
    else:
        v.verdict = "supported"
        v.evidence.append(f"all {len(alone) + len(loaded)} streams decoded the in-process tokens")
    return [v]


def _under_load(live: Any, reqs: list[Any]) -> tuple[list[tuple[int, StreamTrace]], float]:
    out: list[tuple[int, StreamTrace]] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    deadline = t0 + LOAD_S

    def client(k: int) -> None:
        http = live.new_session()
        i = k
        try:
            while time.perf_counter() < deadline:
                t = stream_once(live, http, reqs[i % PROMPTS])
                with lock:
                    out.append((i % PROMPTS, t))
                i += 1
        finally:
            http.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_S + 60)
    return out, time.perf_counter() - t0


def _describe(what: str, s: dict[str, Any], n: int) -> str:
    def ms(d: dict | None, key: str) -> str:
        return "-" if not d else f"{d[key] * 1e3:.2f} ms"

    burst = "-" if s["burst_fraction"] is None else f"{s['burst_fraction']:.2f}"
    return (f"{what}: {s['streams']} streams of {n} tokens, TTFT p50 {ms(s['ttft_s'], 'p50')} p99 "
            f"{ms(s['ttft_s'], 'p99')}, inter-token p50 {ms(s['itl_s'], 'p50')} p99 {ms(s['itl_s'], 'p99')}, "
            f"{s['tokens_per_s']:.0f} tokens/s, burst fraction {burst}")
