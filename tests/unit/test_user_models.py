"""Issue 16: bring your own model.  A suite names a TorchScript file, a torch.export program, a module:factory with
a state_dict, or a Hugging Face directory; servingbench checks it before any server starts, builds artifacts from
it, and computes the reference outputs in-process from the same file.  Bad input is a clear error naming the
model, the field and the fix.  (Servers serving such a model: tests/e2e/test_user_model_live.py.)"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from servingbench.models.runtime import load_runtime
from servingbench.models.user import UserModelError, check_user_model, parse_entry
from servingbench.scenarios.loader import ScenarioError, load_suite
from servingbench.suite import build_artifacts_for


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.lin = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(4, 16, generator=g) * 0.3)
            self.lin.bias.copy_(torch.randn(4, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x)) * 2


def _suite(tmp_path: Path, model_yaml: str) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text("name: byo\nframeworks: [litserve]\nmodels:\n" + textwrap.indent(textwrap.dedent(model_yaml), "  ")
                 + "workloads:\n  - {name: c, kind: closed_loop, concurrency: [1]}\n")
    return p


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVINGBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _check_artifacts(art, net: torch.nn.Module, formats: tuple[str, ...]) -> None:
    x, expected = art.reference()
    with torch.no_grad():
        assert np.allclose(expected, net(torch.from_numpy(x)).numpy(), atol=1e-6)  # computed from the same weights
    assert art.formats == formats
    for fmt in formats:
        rt = load_runtime(art.dir, fmt=fmt)
        assert np.allclose(rt.predict(x), expected, atol=1e-5), fmt


def test_torchscript_file_relative_to_the_suite(tmp_path, cache):
    net = Net().eval()
    (tmp_path / "models").mkdir()
    torch.jit.save(torch.jit.script(net), tmp_path / "models" / "net.pt")
    suite = load_suite(_suite(tmp_path, """\
        - name: mynet
          torchscript: models/net.pt
          input: {shape: [16], dtype: float32, low: -1, high: 1}
        """))
    arts = build_artifacts_for(suite)
    art = arts["mynet"]
    meta = art.metadata()
    assert meta["source"]["kind"] == "torchscript" and meta["output"]["shape"] == [4]
    _check_artifacts(art, net, ("eager", "torchscript"))
    # the artifact holds its own copy: the server does not depend on the user's file
    (tmp_path / "models" / "net.pt").unlink()
    assert np.allclose(load_runtime(art.dir).predict(art.reference()[0]), art.reference()[1], atol=1e-5)


def test_torch_export_program_with_a_dynamic_batch(tmp_path, cache):
    net = Net().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    prog = torch.export.export(net, (torch.randn(2, 16),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(prog, tmp_path / "net.pt2")
    suite = load_suite(_suite(tmp_path, """\
        - name: exported
          export: net.pt2
          input: {shape: [16]}
        """))
    art = build_artifacts_for(suite)["exported"]
    assert art.metadata()["source"]["kind"] == "export"
    x, expected = art.reference()
    assert np.allclose(load_runtime(art.dir, fmt="eager").predict(x), expected, atol=1e-5)


def test_export_without_a_dynamic_batch_is_refused_before_any_server(tmp_path, cache):
    prog = torch.export.export(Net().eval(), (torch.randn(1, 16),))  # batch specialised to 1
    torch.export.save(prog, tmp_path / "net.pt2")
    suite = load_suite(_suite(tmp_path, "- {name: exported, export: net.pt2, input: {shape: [16]}}\n"))
    with pytest.raises(UserModelError, match=r"model 'exported': the first call with input float32\[2, 16\].*input\.shape"):
        build_artifacts_for(suite)


def test_factory_with_a_state_dict_and_an_example_file(tmp_path, cache, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent("""\
        import torch
        def build():
            return torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from mypkg.nets import build

    net = build().eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "ex.npy", np.random.default_rng(0).uniform(-2, 2, (4, 16)).astype("float32"))
    suite = load_suite(_suite(tmp_path, """\
        - {name: fromcode, factory: "mypkg.nets:build", state_dict: w.pt, example: ex.npy, rtol: 1e-4, atol: 1e-4}
        """))
    spec, info = check_user_model(parse_entry(suite.models[0].user_entry(), tmp_path))
    assert info["input"].startswith("float32[16] in [-1.9") and info["output"].startswith("float32[3]")
    assert info["parameters"] == 16 * 8 + 8 + 8 * 3 + 3
    art = build_artifacts_for(suite)["fromcode"]
    _check_artifacts(art, net, ("eager", "torchscript"))  # a factory's module is traced too


def test_hugging_face_directory(tmp_path, cache):
    import transformers  # in requirements.lock (the hf extra)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path / "tinybert")
    suite = load_suite(_suite(tmp_path, """\
        - name: tinybert
          hf: tinybert
          input: {shape: [12], dtype: int64, low: 0, high: 100}
        """))
    art = build_artifacts_for(suite)["tinybert"]
    x, expected = art.reference()
    with torch.no_grad():
        assert np.allclose(model(torch.from_numpy(x)).logits.numpy(), expected, atol=1e-5)
    assert expected.shape == (8, 3)
    assert np.allclose(load_runtime(art.dir).predict(x), expected, atol=1e-5)


@pytest.mark.parametrize("entry,match", [
    ("{name: m, torchscript: nope.pt, input: {shape: [16]}}", r"model 'm': torchscript: .*nope\.pt does not exist"),
    ("{name: m, torchscript: notes.txt, input: {shape: [16]}}", None),  # loads at build: see below
    ("{name: m, torchscript: net.pt}", r"model 'm': no input spec: give input: \{shape"),
    ("{name: m, torchscript: net.pt, export: net.pt, input: {shape: [16]}}", r"exactly one source"),
    ("{name: mlp, torchscript: net.pt, input: {shape: [16]}}", r"'mlp' is a zoo model's name"),
    ("{name: m, torchscript: net.pt, state_dict: net.pt, input: {shape: [16]}}", r"state_dict only goes with factory"),
    ("{name: mlp, input: {shape: [16]}}", r"input only apply to a user model"),
    ("{name: m, torchscript: net.pt, input: {shape: [0]}}", r"models\.0\.input.*greater than or equal to 1"),
    ("{name: m, factory: nocolon, input: {shape: [16]}}", None),
])
def test_bad_entries_name_the_model_field_and_fix(tmp_path, cache, entry, match):
    torch.jit.save(torch.jit.script(Net()), tmp_path / "net.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    path = _suite(tmp_path, f"- {entry}\n")
    if match is not None:
        with pytest.raises(ScenarioError, match=match) as e:
            load_suite(path)
        assert str(path) in str(e.value)
        return
    suite = load_suite(path)  # well-formed; the model itself fails when loaded, before any server
    with pytest.raises(UserModelError, match=r"model 'm': (torchscript: .*notes\.txt could not be loaded as a "
                                             r"TorchScript file|factory 'nocolon' is not 'module:callable')"):
        build_artifacts_for(suite)


def test_wrong_input_shape_is_caught_by_the_first_call(tmp_path, cache):
    torch.jit.save(torch.jit.script(Net()), tmp_path / "net.pt")
    suite = load_suite(_suite(tmp_path, "- {name: m, torchscript: net.pt, input: {shape: [3, 8]}}\n"))
    with pytest.raises(UserModelError, match=r"model 'm': the first call with input float32\[2, 3, 8\] .* failed"):
        build_artifacts_for(suite)


def test_an_output_without_the_batch_dimension_is_refused(tmp_path, cache):
    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    torch.jit.save(torch.jit.script(Sum()), tmp_path / "sum.pt")
    suite = load_suite(_suite(tmp_path, "- {name: s, torchscript: sum.pt, input: {shape: [4]}}\n"))
    with pytest.raises(UserModelError, match=r"model 's': the output has shape \(\) for a batch of 2"):
        build_artifacts_for(suite)


def test_models_check_shows_what_it_understood(tmp_path, cache):
    from typer.testing import CliRunner

    from servingbench.cli import app

    torch.jit.save(torch.jit.script(Net()), tmp_path / "net.pt")
    r = CliRunner().invoke(app, ["models", "--check", str(tmp_path / "net.pt"), "--input-shape", "16"])
    assert r.exit_code == 0, r.output
    assert "torchscript" in r.output and "float32[16]" in r.output and "float32[4]" in r.output and "68" in r.output
    suite = _suite(tmp_path, "- {name: m, torchscript: net.pt, input: {shape: [3]}}\n")
    r = CliRunner().invoke(app, ["models", "--check", str(suite)])
    assert r.exit_code == 2 and "model 'm': the first call with input float32[2, 3]" in r.output
    r = CliRunner().invoke(app, ["models", "--check", str(tmp_path / "net.pt")])
    assert r.exit_code != 0 and "--input-shape" in r.output


def test_a_model_returning_a_tuple_is_served_by_its_first_tensor(tmp_path, cache):
    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.net(x)
            return y, y.sum(dim=1)

    torch.jit.save(torch.jit.script(Pair().eval()), tmp_path / "pair.pt")
    suite = load_suite(_suite(tmp_path, "- {name: pair, torchscript: pair.pt, input: {shape: [16]}}\n"))
    art = build_artifacts_for(suite)["pair"]
    x, expected = art.reference()
    assert expected.shape == (8, 4)
    for fmt in art.formats:
        assert np.allclose(load_runtime(art.dir, fmt=fmt).predict(x), expected, atol=1e-5), fmt


def test_a_factory_without_weights_is_served_with_the_weights_drawn_at_build(tmp_path, cache, monkeypatch):
    (tmp_path / "randnet.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(16, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = load_suite(_suite(tmp_path, "- {name: rnd, factory: 'randnet:build', input: {shape: [16]}}\n"))
    art = build_artifacts_for(suite)["rnd"]
    x, expected = art.reference()
    for _ in range(2):  # each load calls the factory again (new random init): the saved weights win
        assert np.allclose(load_runtime(art.dir, fmt="eager").predict(x), expected, atol=1e-6)


@pytest.mark.parametrize("args,match", [
    (["-m", "nope.pt", "--input-shape", "16"], r"--model nope\.pt: model 'nope': torchscript: .*nope\.pt does not exist"),
    (["-m", "net.pt"], r"--model net\.pt: give --input-shape"),
    (["-m", "net.pt", "--input-shape", "3"], r"--model net\.pt: model 'net': the first call with input float32\[2, 3\]"),
    (["-m", "net.pt", "-m", "sub/net.pt", "--input-shape", "16"], r"two models named net: .*rename one file"),
    (["--suite", "missing.yaml"], r"missing\.yaml"),
])
def test_verify_refuses_bad_model_files_before_any_server(tmp_path, cache, monkeypatch, args, match):
    from typer.testing import CliRunner

    from servingbench.cli import app

    torch.jit.save(torch.jit.script(Net()), tmp_path / "net.pt")
    (tmp_path / "sub").mkdir()
    torch.jit.save(torch.jit.script(Net()), tmp_path / "sub" / "net.pt")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["verify", "litserve", *args])
    assert r.exit_code == 2, r.output
    assert re.search(match, " ".join(r.output.split())), r.output
