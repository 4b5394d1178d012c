"""Encoded-input payloads (issue 16): the preprocessing, the artifacts, the codecs, the request pool and the suite
schema, without servers (the contract suite serves ``cnn_image`` and ``encoder_text`` on every framework;
tests/e2e/test_payloads_live.py breaks a server's preprocessing on purpose)."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest

from servingbench.models import build_artifacts, get_model
from servingbench.models.preprocess import (
    FAULT_ENV, IMAGE_SIZE, PayloadError, Preprocessor, example_payloads, load_preprocessor, make_images,
)
from servingbench.models.zoo import payload_models


@pytest.fixture(scope="module")
def arts():
    return {s.name: build_artifacts(s) for s in payload_models()}


def test_images_are_distinct_deterministic_jpeg_files_larger_than_the_model():
    from PIL import Image

    a, b = make_images(4, seed=3), make_images(4, seed=3)
    assert a == b and len(set(a)) == 4 and make_images(1, seed=4)[0] not in a
    img = Image.open(io.BytesIO(a[0]))
    assert img.format == "JPEG" and img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"


def test_image_preprocessing_resizes_crops_and_normalises(arts):
    art = arts["cnn_image"]
    cfg = art.metadata()["preprocess"]
    assert cfg["kind"] == "image" and cfg["crop"] == 64 and cfg["resize"] == 73  # 64 * 256 / 224
    items = example_payloads("image", 3, seed=5)
    x = Preprocessor(cfg, art.dir)(items)
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.float32
    assert -2.5 < x.min() < 0 < x.max() < 2.7  # (pixel / 255 - mean) / std
    # raw JPEG bytes and their base64 text give the same tensor (JSON carries base64, binary wires raw bytes)
    b64 = [base64.b64encode(bytes(i)).decode() for i in items]
    assert np.array_equal(Preprocessor(cfg, art.dir)(b64), x)
    for fault in ("resize", "normalize"):  # what the deliberately broken servers do: visibly different inputs
        assert np.abs(Preprocessor(cfg, art.dir, fault=fault)(items) - x).max() > 0.1
    with pytest.raises(PayloadError, match="neither JPEG bytes nor base64"):
        Preprocessor(cfg, art.dir)(["not base64!"])
    with pytest.raises(PayloadError, match="not a decodable image"):
        Preprocessor(cfg, art.dir)([base64.b64encode(b"plain text").decode()])


def test_text_is_tokenised_padded_and_truncated_to_the_sequence_length(arts):
    art = arts["encoder_text"]
    cfg = art.metadata()["preprocess"]
    assert (art.dir / cfg["tokenizer"]).is_file() and cfg["seq_len"] == 32
    pre = Preprocessor(cfg, art.dir)
    ids = pre(["the model runs fast", " ".join(["cache"] * 100), "zzz-unknown-word"])
    assert ids.shape == (3, 32) and ids.dtype == np.int64
    assert (ids >= 0).all() and (ids < cfg["vocab_size"]).all()
    assert (ids[0, :4] > 1).all() and (ids[0, 4:] == 0).all()  # known words, then [PAD] = 0
    assert (ids[1] == ids[1, 0]).all() and ids[1, 0] > 1  # truncated to 32 tokens
    assert 1 in ids[2]  # [UNK]
    assert np.array_equal(pre([b"the model runs fast"]), ids[:1])  # UTF-8 bytes (V2 BYTES) read as text
    with pytest.raises(PayloadError, match="must be a string"):
        pre([3])


def test_artifacts_record_the_payload_and_references_come_from_the_servers_preprocessing(arts, monkeypatch):
    from servingbench.models.runtime import load_runtime

    monkeypatch.setenv(FAULT_ENV, "resize")  # servers only: references and expected outputs never read it
    for name, art in arts.items():
        meta = art.metadata()
        spec = art.spec()
        assert spec.name == name and spec.payload == meta["payload"] and spec.arch == name.split("_")[0]
        assert art.key != build_artifacts(get_model(spec.arch)).key
        inputs, outputs = art.reference()
        assert inputs.dtype.kind == ("S" if spec.payload == "image" else "U") and len(set(inputs.tolist())) == 8
        rt = load_runtime(art.dir)
        got = rt.predict(load_preprocessor(art.dir, server=False)(inputs))
        assert np.allclose(got, outputs, rtol=spec.rtol, atol=spec.atol)
        assert not np.allclose(outputs[0], outputs[1], atol=1e-3)  # distinct inputs, distinct answers
    assert load_preprocessor(arts["cnn_image"].dir).fault == "resize"
    assert load_preprocessor(arts["cnn_image"].dir, server=False).fault is None
    assert load_preprocessor(build_artifacts(get_model("mlp")).dir) is None


def test_zoo_refuses_a_payload_the_model_cannot_take():
    with pytest.raises(ValueError, match=r"payload 'image' needs an image model .*'mlp' takes float32\[64\]"):
        get_model("mlp", payload="image")
    with pytest.raises(ValueError, match=r"payload 'text' needs a token-id model"):
        get_model("cnn", payload="text")
    with pytest.raises(ValueError, match="not one of tensor, image, text"):
        get_model("cnn", payload="jpeg")
    assert get_model("resnet50", payload="image").preprocess_config()["resize"] == 256
    assert get_model("bert_base", payload="text").preprocess_config()["seq_len"] == 128


def test_codecs_carry_base64_json_raw_msgpack_and_v2_bytes_or_padded_rows():
    import msgpack

    from servingbench.adapters import v2
    from servingbench.adapters.mosec import MsgpackCodec
    from servingbench.contract import JsonCodec

    spec = get_model("cnn", payload="image", served_as="cnn_image")
    x = spec.example_inputs(2, seed=1)
    files = [bytes(b) for b in x]
    body = json.loads(JsonCodec().request(spec, x).body)
    assert [base64.b64decode(s) for s in body["inputs"]] == files
    assert msgpack.unpackb(MsgpackCodec().request(spec, x).body)["inputs"] == files
    req = json.loads(v2.V2Codec().request(spec, x).body)["inputs"][0]
    assert req["datatype"] == "BYTES" and req["shape"] == [2, 1] and [base64.b64decode(s) for s in req["data"]] == files
    raw = v2.V2Codec(binary=True).request(spec, x)
    n = int(raw.headers[v2.HEADER_LENGTH])
    assert struct.unpack_from("<I", raw.body, n)[0] == len(files[0]) and raw.body[n + 4:n + 4 + len(files[0])] == files[0]
    # one header length for every body of a pool (it sends them all with one set of headers)
    lengths = {v2.V2Codec(binary=True, payload_datatype=p).request(spec, spec.example_inputs(2, seed=s)).headers[
        v2.HEADER_LENGTH] for p in ("BYTES", "UINT8") for s in range(4)}
    assert lengths == {str(v2.HEADER_WIDTH)}
    padded = json.loads(v2.V2Codec(payload_datatype="UINT8").request(spec, x).body)["inputs"][0]
    rows = np.asarray(padded["data"], dtype=np.uint8).reshape(padded["shape"])
    assert padded["datatype"] == "UINT8" and [r.tobytes().rstrip(b"\0") for r in rows] == files
    text = get_model("encoder", payload="text", served_as="encoder_text")
    t = text.example_inputs(2, seed=1)
    assert json.loads(JsonCodec().request(text, t).body)["inputs"] == t.tolist()


def test_request_pool_holds_distinct_payloads_and_expects_the_in_process_pipeline(arts, tmp_path):
    from servingbench.contract import JsonCodec
    from servingbench.load.pool import InputPool
    from servingbench.models.runtime import load_runtime

    class Live:  # what InputPool reads of a live deployment: its codec, secrets and URL
        codec, secrets = JsonCodec(), None

        @staticmethod
        def url(req):
            return f"http://127.0.0.1:1{req.path}"

    art = arts["cnn_image"]
    bodies, exp_path, info = InputPool(Live()).get(art, batch=2, pool=4, workdir=tmp_path)
    files = [[base64.b64decode(s) for s in json.loads(base64.b64decode(b))["inputs"]] for b in bodies]
    assert len({f for fs in files for f in fs}) == 8  # 4 bodies x 2 distinct JPEG files
    expected = np.load(exp_path)
    rt, pre = load_runtime(art.dir), load_preprocessor(art.dir, server=False)
    assert expected.shape == (4, 2, 10) and info["url"].endswith("/predict/cnn_image")
    for fs, exp in zip(files, expected):
        assert np.allclose(rt.predict(pre(fs)), exp, rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected[0], expected[1])


@pytest.mark.parametrize("entry, match", [
    ("{name: cnn, payload: jpeg}", r"models\.0\.payload: unknown payload 'jpeg'.*Use one of: tensor .*image .*text"),
    ("{name: cnn, payload: imag}", r"Did you mean 'image'\?"),
    ("{name: mlp, payload: image}", r"payload 'image' needs an image model .*use it with cnn or resnet50"),
    ("{name: encoder, payload: image}", r"'encoder' takes int64\[32\]"),
    ("{name: mine, torchscript: m.pt, input: {shape: [4]}, payload: text}", r"applies to zoo models"),
])
def test_bad_payloads_name_the_file_field_value_and_fix(tmp_path, entry, match):
    from servingbench.scenarios.loader import ScenarioError, load_suite

    (tmp_path / "m.pt").write_bytes(b"")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: p\nframeworks: [litserve]\nmodels:\n  - {entry}\n"
                     "workloads:\n  - {name: c, kind: closed_loop, concurrency: [1]}\n")
    with pytest.raises(ScenarioError, match=match) as e:
        load_suite(suite)
    assert str(suite) in str(e.value)


def test_payload_in_a_suite_reaches_the_artifacts(tmp_path):
    from servingbench.scenarios.loader import ScenarioError, load_suite
    from servingbench.suite import build_artifacts_for

    suite = tmp_path / "s.yaml"
    suite.write_text("name: p\nframeworks: [litserve]\nmodels:\n  - mlp\n  - {name: encoder, payload: text}\n"
                     "workloads:\n  - {name: c, kind: closed_loop, concurrency: [1]}\n")
    s = load_suite(suite)
    assert [m.payload for m in s.models] == ["tensor", "text"]
    arts = build_artifacts_for(s)
    assert arts["encoder"].spec().payload == "text" and arts["mlp"].spec().payload == "tensor"
    suite.write_text(suite.read_text().replace("- mlp", "- encoder"))
    with pytest.raises(ScenarioError, match="models lists 'encoder' more than once"):
        load_suite(suite)



def test_models_lists_the_payloads_each_model_takes():
    from typer.testing import CliRunner

    from servingbench.cli import app
    from servingbench.models import list_models

    takes = {m.name: m.payloads() for m in list_models(real_size=True, generative=True)}
    assert takes == {"mlp": ["tensor"], "cnn": ["tensor", "image"], "resnet50": ["tensor", "image"],
                     "encoder": ["tensor", "text"], "bert_base": ["tensor", "text"], "gpt": ["tensor"]}
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "payloads" in r.output, r.output
