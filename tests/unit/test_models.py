"""The model zoo, its artifacts and the server-side runtime (CPU only, no downloads)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from servingbench.models import (
    ModelArtifacts, ModelSpec, TensorSpec, build_artifacts, default_cache_dir, get_model, list_models, load_artifacts,
)
from servingbench.models.artifacts import FILES, REF_BATCH
from servingbench.models.runtime import load_runtime

NAMES = ["mlp", "cnn", "encoder"]
SMALL = {"mlp": {}, "cnn": {"resolution": 32, "width": 16}, "encoder": {}}  # cheap variants for model-level tests


def _small(name: str) -> ModelSpec:
    return get_model(name, **SMALL[name])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="module")
def artifacts(cache) -> dict[str, ModelArtifacts]:
    """The default zoo, built once for this module."""
    return {m.name: build_artifacts(m, cache) for m in list_models()}


# ---- zoo ----------------------------------------------------------------------------------------------------------
def test_list_models_defaults():
    specs = {m.name: m for m in list_models()}
    assert list(specs) == NAMES
    assert specs["mlp"].input.shape == (64,) and specs["mlp"].output.shape == (10,)
    assert specs["cnn"].input.shape == (3, 64, 64) and specs["cnn"].output.shape == (10,)
    assert dict(specs["cnn"].params) == {"resolution": 64, "num_classes": 10, "width": 64}
    enc = specs["encoder"]
    assert enc.input == TensorSpec("input", (32,), "int64", 0, 1000) and enc.output.shape == (2,)
    for m in specs.values():
        json.dumps(m.to_dict())  # params etc. are JSON-serialisable
        assert m.output.dtype == "float32" and m.seed == 0 and m.cost and m.description
        assert 0 < m.rtol <= 1e-3 and 0 < m.atol <= 1e-3
    assert (specs["mlp"].rtol, specs["mlp"].atol) == (1e-4, 1e-4)


def test_key_is_stable_and_tracks_params():
    assert get_model("cnn").key() == get_model("cnn", resolution=64).key()
    assert len(get_model("cnn").key()) == 12
    keys = {get_model("cnn").key(), get_model("cnn", resolution=32).key(), get_model("mlp").key()}
    assert len(keys) == 3
    spec = get_model("cnn", resolution=48)
    assert spec.input.shape == (3, 48, 48) and spec.params["resolution"] == 48


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic_and_leaves_global_rng_alone(name):
    spec = _small(name)
    state = torch.random.get_rng_state()
    a, b = spec.build().state_dict(), spec.build().state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = dataclasses.replace(spec, seed=1).build().state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_example_inputs(name):
    spec = _small(name)
    for batch in (1, 8):
        x = spec.example_inputs(batch, seed=3)
        assert x.shape == (batch, *spec.input.shape) and x.dtype == np.dtype(spec.input.dtype)
        assert x.min() >= spec.input.low and x.max() < spec.input.high
        np.testing.assert_array_equal(x, spec.example_inputs(batch, seed=3))
    assert not np.array_equal(spec.example_inputs(8, seed=0), spec.example_inputs(8, seed=1))
    with pytest.raises(ValueError):
        spec.example_inputs(0)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_shape_scale_and_batch_consistency(name):
    spec = _small(name)
    module = spec.build()
    assert not module.training
    x = spec.example_inputs(8, seed=5)
    with torch.inference_mode():
        y8 = module(torch.from_numpy(x)).numpy()
        y1 = module(torch.from_numpy(x[:1])).numpy()
    assert y8.shape == (8, *spec.output.shape) and y1.shape == (1, *spec.output.shape)
    assert y8.dtype == np.float32 and np.isfinite(y8).all()
    assert 0.1 < y8.std() < 10 and np.abs(y8).max() < 20  # O(1), not saturated
    assert y8.std(axis=0).min() > 1e-2  # outputs depend on the input
    np.testing.assert_allclose(y1, y8[:1], rtol=spec.rtol, atol=spec.atol)


def test_encoder_traces_and_agrees_with_eager():
    spec = get_model("encoder")
    module = spec.build()
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.from_numpy(spec.example_inputs(2, seed=1)), check_trace=False)
    for batch in (1, 8):
        x = torch.from_numpy(spec.example_inputs(batch, seed=9))
        with torch.inference_mode():
            eager, ts = module(x).numpy(), traced(x).numpy()
        np.testing.assert_allclose(ts, eager, rtol=1e-5, atol=1e-5)
    x8 = torch.from_numpy(spec.example_inputs(8, seed=9))
    with torch.inference_mode():
        np.testing.assert_allclose(module(x8[:1]).numpy(), module(x8).numpy()[:1], rtol=1e-5, atol=1e-5)


def test_unknown_model_suggests_close_name():
    with pytest.raises(ValueError, match="mlp") as e:
        get_model("mpl")
    msg = str(e.value)
    assert "did you mean 'mlp'" in msg and all(n in msg for n in NAMES)
    with pytest.raises(ValueError, match="known models"):
        get_model("resnet50-imagenet")


def test_unknown_or_invalid_params():
    with pytest.raises(ValueError) as e:
        get_model("cnn", resolutoin=32)
    msg = str(e.value)
    assert "'resolutoin'" in msg and "did you mean 'resolution'" in msg
    assert all(p in msg for p in ("num_classes", "resolution", "width"))
    with pytest.raises(ValueError, match="seq_len"):
        get_model("mlp", seq_len=8)
    for bad in (0, -1, "64", 64.0, True):
        with pytest.raises(ValueError, match="positive int"):
            get_model("cnn", resolution=bad)
    with pytest.raises(ValueError, match="divisible"):
        get_model("encoder", d_model=30, n_heads=4)


# ---- artifacts ----------------------------------------------------------------------------------------------------
def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVINGBENCH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SERVINGBENCH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "servingbench" / "artifacts"


@pytest.mark.parametrize("name", NAMES)
def test_artifacts_layout_and_meta(artifacts, cache, name):
    art = artifacts[name]
    spec = get_model(name)
    assert art.dir.parent == cache and art.dir.name.startswith(f"{name}-{spec.key()}-torch")
    assert art.name == name and art.key == spec.key()
    meta = json.loads(art.meta.read_text())
    assert meta["name"] == name and meta["params"] == dict(spec.params) and meta["seed"] == spec.seed
    assert meta["key"] == spec.key() and meta["torch"] == torch.__version__
    assert (meta["rtol"], meta["atol"]) == (spec.rtol, spec.atol)
    assert meta["input"]["shape"] == list(spec.input.shape) and meta["output"]["dtype"] == "float32"
    assert set(meta["sha256"]) == set(FILES)
    assert art.sha256() == {f: hashlib.sha256((art.dir / f).read_bytes()).hexdigest() for f in FILES}
    x, y = art.reference()
    assert x.shape == (REF_BATCH, *spec.input.shape) and x.dtype == np.dtype(spec.input.dtype)
    assert y.shape == (REF_BATCH, *spec.output.shape) and y.dtype == np.float32
    np.testing.assert_array_equal(x, spec.example_inputs(REF_BATCH, seed=0))
    assert load_artifacts(art.dir) == art and art.spec() == spec
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_artifacts_reused_then_rebuilt_when_corrupt(tmp_path):
    spec = get_model("mlp")
    art = build_artifacts(spec, tmp_path)
    mtimes = {f: (art.dir / f).stat().st_mtime_ns for f in (*FILES, "meta.json")}
    again = build_artifacts(spec, tmp_path)
    assert again == art
    assert {f: (art.dir / f).stat().st_mtime_ns for f in mtimes} == mtimes  # reused, not rewritten

    good = art.ref_outputs.read_bytes()
    art.ref_outputs.write_bytes(good[:-4] + b"\0\0\0\0")
    assert not art.intact()
    rebuilt = build_artifacts(spec, tmp_path)
    assert rebuilt.intact() and rebuilt.ref_outputs.read_bytes() == good
    art.torchscript.unlink()
    assert build_artifacts(spec, tmp_path).torchscript.exists()
    art.meta.write_text("{not json")
    assert build_artifacts(spec, tmp_path).intact()
    assert [p.name for p in tmp_path.iterdir()] == [art.dir.name]


def test_concurrent_builders(tmp_path):
    spec = get_model("mlp")
    with ThreadPoolExecutor(4) as pool:
        arts = list(pool.map(lambda _: build_artifacts(spec, tmp_path), range(4)))
    assert len({a.dir for a in arts}) == 1 and arts[0].intact()
    assert [p.name for p in tmp_path.iterdir()] == [arts[0].dir.name]


def test_load_artifacts_rejects_non_artifact_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_artifacts(tmp_path)


# ---- runtime ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["eager", "torchscript"])
@pytest.mark.parametrize("name", NAMES)
def test_runtime_reproduces_reference(artifacts, name, fmt):
    art = artifacts[name]
    rt = load_runtime(art.dir, fmt=fmt, device="cpu", threads=1)
    assert rt.spec == get_model(name) and rt.device == "cpu" and not rt.module.training
    x, ref = art.reference()
    out = rt.predict(x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=rt.spec.rtol, atol=rt.spec.atol)
    np.testing.assert_allclose(rt.predict(x[:1]), ref[:1], rtol=rt.spec.rtol, atol=rt.spec.atol)
    t = rt.predict_tensor(torch.from_numpy(x[:3]))
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (3, *rt.spec.output.shape)


def test_runtime_casts_inputs_and_sets_threads(artifacts):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rt = load_runtime(artifacts["mlp"].dir, threads=None)  # None: leave the thread count alone
        assert torch.get_num_threads() == 2
        x, ref = artifacts["mlp"].reference()
        np.testing.assert_allclose(rt.predict(x.astype(np.float64)), ref, rtol=rt.spec.rtol, atol=rt.spec.atol)
        frozen = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(x.shape)  # read-only, as from a request
        np.testing.assert_allclose(rt.predict(frozen), ref, rtol=rt.spec.rtol, atol=rt.spec.atol)
        rt = load_runtime(artifacts["encoder"].dir, fmt="torchscript", threads=1)
        assert torch.get_num_threads() == 1
        x, ref = artifacts["encoder"].reference()
        np.testing.assert_allclose(rt.predict(x.astype(np.int32)), ref, rtol=rt.spec.rtol, atol=rt.spec.atol)
    finally:
        torch.set_num_threads(before)


def test_runtime_rejects_bad_format_and_device(artifacts):
    d = artifacts["mlp"].dir
    with pytest.raises(ValueError, match="'onnx'.*eager, torchscript"):
        load_runtime(d, fmt="onnx")
    with pytest.raises(ValueError, match="'tpu'.*'cpu', 'cuda', 'cuda:N'"):
        load_runtime(d, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        load_runtime(d, threads=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_runtime(d, device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["eager", "torchscript"])
@pytest.mark.parametrize("name", NAMES)
def test_runtime_cuda_matches_cpu_reference(artifacts, name, fmt):
    rt = load_runtime(artifacts[name].dir, fmt=fmt, device="cuda")
    x, ref = artifacts[name].reference()
    np.testing.assert_allclose(rt.predict(x), ref, rtol=rt.spec.rtol, atol=rt.spec.atol)


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, servingbench.models as m; m.get_model('cnn'); m.list_models(); "
            "assert 'torch' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_real_size_entries_have_the_published_sizes_and_are_not_built_by_default():
    """Issue 16: ResNet-50 at 224 px and a BERT-base-sized encoder, built locally (nothing downloaded)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    assert [m.name for m in list_models()] == NAMES  # tests and verify build only the small ones
    assert {"resnet50", "bert_base"} <= {m.name for m in list_models(real_size=True)}
    r50 = get_model("resnet50").build(init=False).eval()
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032  # torchvision's resnet50
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        r50(torch.zeros(1, 3, 224, 224))
    assert "4.09G MACs" in get_model("resnet50").cost and abs(fc.get_total_flops() / 2 / 4.089e9 - 1) < 0.01
    bert = get_model("bert_base").build(init=False)
    n = sum(p.numel() for p in bert.parameters())
    assert 105e6 < n < 112e6  # BERT-base: ~110M
    assert get_model("bert_base").input.shape == (128,)
