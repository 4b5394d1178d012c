"""Issue 18 (streaming), the pure parts: the zoo's tiny GPT, greedy decoding, and the streaming figures."""

from __future__ import annotations

import numpy as np
import pytest

from servingbench.measure.streaming import BURST_GAP_S, StreamTrace, summarize_streams
from servingbench.models import get_model, list_models
from servingbench.models.generate import first_divergence, greedy, iter_greedy, min_margin
from servingbench.models.zoo import is_generative


def _plus_one(vocab: int):
    """A step whose next token is always (last token + 1) mod vocab."""
    def step(window: np.ndarray) -> np.ndarray:
        logits = np.zeros((window.shape[0], vocab), dtype=np.float32)
        logits[np.arange(window.shape[0]), (window[:, -1] + 1) % vocab] = 1.0
        return logits
    return step


def test_greedy_slides_the_window_and_yields_each_step():
    prompt = np.array([[1, 2, 3], [7, 8, 9]], dtype=np.int64)
    steps = list(iter_greedy(_plus_one(10), prompt, 4))
    assert [s.tolist() for s in steps] == [[4, 0], [5, 1], [6, 2], [7, 3]]
    assert greedy(_plus_one(10), prompt, 4).tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]

    seen = []

    def recording(window):  # the window keeps its length and ends with the newest token
        seen.append(window.copy())
        return _plus_one(10)(window)

    greedy(recording, prompt[:1], 3)
    assert [w.tolist() for w in seen] == [[[1, 2, 3]], [[2, 3, 4]], [[3, 4, 5]]]


def test_bad_prompts_and_steps_are_clear_errors():
    with pytest.raises(ValueError, match="integer token ids"):
        greedy(_plus_one(10), np.zeros((1, 3), dtype=np.float32), 2)
    with pytest.raises(ValueError, match=">= 1"):
        greedy(_plus_one(10), np.zeros((1, 3), dtype=np.int64), 0)
    with pytest.raises(ValueError, match=r"\(batch, vocab\) logits"):
        greedy(lambda w: np.zeros(10), np.zeros((1, 3), dtype=np.int64), 2)


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 5, 3], [1, 2, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # a token missing at the end
    assert first_divergence(np.array([1, 2, 3, 4]), [1, 2, 3]) == 3


def test_the_zoo_gpt_is_generative_and_out_of_the_default_lists():
    spec = get_model("gpt")
    assert is_generative("gpt") and not is_generative("mlp") and not is_generative("nope")
    assert "gpt" not in {m.name for m in list_models()} | {m.name for m in list_models(real_size=True)}
    assert "gpt" in {m.name for m in list_models(generative=True)}
    assert spec.input.dtype == "int64" and spec.input.shape == (16,) and spec.output.shape == (256,)
    with pytest.raises(ValueError, match="model 'gpt': d_model .* divisible by n_heads"):
        get_model("gpt", n_heads=5)


def test_gpt_decodes_the_same_tokens_in_every_format_with_a_wide_margin(_artifact_cache):
    from servingbench.models import build_artifacts
    from servingbench.models.runtime import FORMATS, load_runtime

    spec = get_model("gpt")
    artifacts = build_artifacts(spec)  # what every server loads: eager state_dict and the TorchScript trace
    # servers learn "generative" from the artifacts (meta.json), not from a zoo lookup of their own
    assert artifacts.generative and artifacts.metadata()["generative"] is True
    from servingbench.contract import model_entry

    assert model_entry(artifacts)["generative"] is True
    assert model_entry(build_artifacts(get_model("mlp")))["generative"] is False
    prompts = spec.example_inputs(4, seed=0)
    n = spec.params["new_tokens"]
    runtimes = {fmt: load_runtime(artifacts.dir, fmt=fmt, threads=1) for fmt in FORMATS}
    tokens = {fmt: greedy(rt.predict, prompts, n) for fmt, rt in runtimes.items()}
    a = tokens["eager"]
    assert a.shape == (4, n) and all((t == a).all() for t in tokens.values())
    # one prompt alone (batch 1, as a streaming server decodes it) gives its row of the batched decoding
    assert (greedy(runtimes["torchscript"].predict, prompts[2:3], n)[0] == a[2]).all()
    assert len({tuple(r) for r in a.tolist()}) == 4 and len(set(a[0].tolist())) > 4  # varied, not one token
    # the argmax cannot flip between runtimes: every step's top-two gap is far above the runtimes' differences
    windows = []

    def recording(window):
        windows.append(window.copy())
        return runtimes["eager"].predict(window)

    greedy(recording, prompts, n)
    diff = max(float(np.abs(runtimes["eager"].predict(w)[:1] - runtimes["torchscript"].predict(w[:1])).max())
               for w in windows[:: max(1, len(windows) // 8)])
    margin = min_margin(runtimes["eager"].predict, prompts, n)
    assert margin > spec.atol and margin > 100 * diff, (margin, diff)


def test_streaming_figures_from_synthetic_traces():
    t = [StreamTrace(sent_s=0.0), StreamTrace(sent_s=1.0), StreamTrace(sent_s=2.0, error="HTTP 503")]
    for i in range(4):  # a streaming server: first token after 50 ms, then every 10 ms
        t[0].add(i, 0.05 + 0.01 * i)
    for i in range(4):  # a buffering one: everything at the end, in one burst
        t[1].add(i, 1.2 + 1e-6 * i)
    s = summarize_streams(t, duration_s=2.0, expected_tokens=4)
    assert (s["streams"], s["completed"], s["incomplete"], s["errors"]) == (3, 2, 0, 1)
    assert s["error_kinds"] == {"HTTP 503": 1} and s["tokens"] == 8 and s["tokens_per_s"] == 4.0
    assert s["ttft_s"]["p50"] == pytest.approx(0.05, rel=0.01) and s["ttft_s"]["p99"] == pytest.approx(0.2, rel=0.01)
    assert s["burst_fraction"] == pytest.approx(0.5)  # 3 of the 6 gaps are the buffered stream's
    assert s["itl_s"]["p99"] == pytest.approx(0.01, rel=0.01)
    assert s["stream_tokens_per_s_p50"] > 100
    short = StreamTrace(sent_s=0.0)
    short.add(1, 0.1)
    assert summarize_streams([short], 1.0, expected_tokens=4)["incomplete"] == 1
    assert 1e-6 < BURST_GAP_S < 1e-3
    with pytest.raises(ValueError, match="duration_s"):
        summarize_streams([], 0.0, 4)


def test_ndjson_and_sse_parsers_take_any_chunking():
    from servingbench.contract.streaming import ndjson_tokens, sse_tokens

    body = b'{"token": 5}\n{"token": 7}\n{"tokens": [1, 2]}\n'
    for size in (1, 3, len(body)):  # byte by byte, odd splits, all at once
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert list(ndjson_tokens(chunks)) == [5, 7, 1, 2]
    sse = b': comment\nevent: token\ndata: {"token": 3}\n\ndata:{"token": 4}\r\n\r\ndata: [DONE]\n\ndata: {"token": 9}\n\n'
    for size in (1, 5, len(sse)):
        chunks = [sse[i:i + size] for i in range(0, len(sse), size)]
        assert list(sse_tokens(chunks)) == [3, 4]  # nothing after [DONE]
    assert list(sse_tokens([b'data: {"text_output": 8}\n\n'], extract=lambda r: [r["text_output"]])) == [8]
    with pytest.raises(ValueError, match="without 'token'"):
        list(ndjson_tokens([b'{"text": "a"}\n']))


def test_an_adapter_that_does_not_drive_its_frameworks_streaming_is_not_run():
    from types import SimpleNamespace

    from servingbench.contract import Adapter
    from servingbench.probes import probe_streaming

    class Streams(Adapter):  # claims the framework streams, but names no request: nothing was measured
        name = "x"
        docs_claims = {"streaming": "yes: server-sent events"}

        def prepare(self, deployment, ctx): ...

        def launch(self, deployment, ctx): ...

        def codec(self, deployment): ...

    (v,) = probe_streaming(SimpleNamespace(adapter=Streams()))
    assert v.verdict == "not_run" and "does not implement stream_request yet" in v.reason
    Streams.docs_claims = {"streaming": "no: one buffered response"}
    (v,) = probe_streaming(SimpleNamespace(adapter=Streams()))
    assert v.verdict == "not_supported" and v.evidence == ["docs: no: one buffered response"]
