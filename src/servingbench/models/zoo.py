"""The model zoo: PyTorch models defined in this project, weights drawn from a seed, nothing downloaded.

Three cost profiles:

* ``mlp``: ``Linear(64,256)-ReLU-Linear(256,10)``; tiny, so the serving framework's own overhead dominates.
* ``cnn``: ResNet-18 (BasicBlock, [2,2,2,2]) image classifier; compute-bound.
* ``encoder``: small Transformer text classifier over int64 token ids; attention, embeddings, integer inputs.

Importing this module does not import torch; :meth:`ModelSpec.build` does.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["ZOO_VERSION", "TensorSpec", "ModelSpec", "get_model", "list_models", "payload_models"]

#: Bump when an architecture, its state_dict layout or the initialisation changes: it is part of every
#: :meth:`ModelSpec.key`, so stale cached artifacts are never reused.  (2: torchvision-style names, calibration.)
ZOO_VERSION = 2
#: Inputs that :meth:`ModelSpec.build` calibrates on (seeds far from those of references and request pools).
CALIBRATION_BATCH = 32
CALIBRATION_SEED = 1_000_003


@dataclass(frozen=True)
class TensorSpec:
    """A per-sample tensor (``shape`` excludes the batch dimension).  Example values lie in ``[low, high)``."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "int64"
    low: float = 0.0
    high: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "low": self.low,
                "high": self.high}


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model with every constructor parameter filled in.  :meth:`build` is deterministic in ``seed``."""

    name: str
    description: str
    cost: str
    input: TensorSpec
    output: TensorSpec
    params: Mapping[str, Any] = field(hash=False)
    seed: int
    rtol: float
    atol: float
    #: what requests carry (``servingbench.models.preprocess``): ``tensor`` (the input tensor), ``image`` (JPEG files
    #: the server decodes and transforms into ``input``) or ``text`` (strings the server tokenises into ``input``)
    payload: str = "tensor"
    #: the zoo entry this model is built from, when it is served under another name (default: ``name``)
    arch: str = ""

    def build(self, *, init: bool = True) -> torch.nn.Module:
        """The module on CPU in eval mode, weights drawn from ``torch.Generator().manual_seed(seed)``.

        Weights are then calibrated on ``CALIBRATION_BATCH`` example inputs (BatchNorm statistics, output scale):
        see :func:`servingbench.models.nets.calibrate`.  Two calls give identical state_dicts (bitwise on one
        machine and thread count); the global RNG is left untouched.  ``init=False`` skips all of this and
        returns the bare architecture, for loading a saved state_dict into.
        """
        import torch

        from servingbench.models import nets

        with torch.random.fork_rng(devices=[]):  # the constructors' default init draws from the global RNG
            module = _ENTRIES[self.arch or self.name].factory(**self.params)
        if init:
            nets.init_weights(module, self.seed)
            x = self.tensor_inputs(CALIBRATION_BATCH, seed=CALIBRATION_SEED + self.seed)
            nets.calibrate(module, torch.from_numpy(x))
        return module.eval()

    def example_inputs(self, batch: int, seed: int = 0) -> np.ndarray:
        """What ``batch`` requests' samples carry, deterministic in ``seed``: the input tensor
        (:meth:`tensor_inputs`) for a ``tensor`` payload; ``batch`` distinct JPEG files (``bytes_`` array) or
        strings (``str_`` array) for an ``image`` or ``text`` payload (:func:`servingbench.models.preprocess.
        example_payloads`), which the server turns into the input tensor."""
        if self.payload != "tensor":
            from servingbench.models.preprocess import example_payloads

            if batch < 1:
                raise ValueError(f"batch must be >= 1, got {batch}")
            return example_payloads(self.payload, batch, seed)
        return self.tensor_inputs(batch, seed)

    def tensor_inputs(self, batch: int, seed: int = 0) -> np.ndarray:
        """``(batch, *input.shape)`` values of ``input.dtype`` in ``[low, high)``, deterministic in ``seed``."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        rng = np.random.default_rng(seed)
        shape = (batch, *self.input.shape)
        if np.dtype(self.input.dtype).kind in "iu":
            return rng.integers(int(self.input.low), int(self.input.high), size=shape, dtype=self.input.dtype)
        return rng.uniform(self.input.low, self.input.high, size=shape).astype(self.input.dtype)

    def key(self) -> str:
        """Short stable hash of (name, params, seed, zoo version): the artifact cache key."""
        key = {"name": self.name, "params": dict(self.params), "seed": self.seed, "zoo": ZOO_VERSION}
        if self.payload != "tensor" or (self.arch and self.arch != self.name):  # tensor zoo keys stay as they were
            key.update(payload=self.payload, arch=self.arch or self.name)
        blob = json.dumps(key, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (everything but the architecture)."""
        return {"name": self.name, "description": self.description, "cost": self.cost,
                "input": self.input.to_dict(), "output": self.output.to_dict(), "params": dict(self.params),
                "seed": self.seed, "rtol": self.rtol, "atol": self.atol, "key": self.key(), "zoo_version": ZOO_VERSION,
                "generative": is_generative(self.arch or self.name), "payload": self.payload,
                "arch": self.arch or self.name, "preprocess": self.preprocess_config()}

    def payloads(self) -> list[str]:
        """The payloads this model can take (``tensor`` always; ``image`` or ``text`` by its input)."""
        from servingbench.models.preprocess import PAYLOADS, payload_problem

        arch = self.arch or self.name
        return [p for p in PAYLOADS if p == "tensor" or not (
            arch not in _ENTRIES or is_generative(arch) or payload_problem(p, arch, self.input.dtype, self.input.shape))]

    def preprocess_config(self) -> dict[str, Any]:
        """What the server does to a request's items before the model (``servingbench.models.preprocess``)."""
        from servingbench.models.preprocess import config_for

        return config_for(self.payload, self.input.dtype, self.input.shape, self.input.high)


# ---- the zoo ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Any]            # params -> nn.Module (imports torch)
    defaults: Mapping[str, int]
    describe: Callable[[Mapping[str, int]], tuple[str, str, TensorSpec, TensorSpec]]  # description, cost, in, out
    rtol: float
    atol: float
    check: Callable[[Mapping[str, int]], None] = lambda p: None
    real_size: bool = False  # large: listed, built only when a suite names it
    generative: bool = False  # a next-token model that servers decode greedily (streaming): only when named


def _mlp(**p: int) -> Any:
    from servingbench.models.nets import MLP

    return MLP(p["in_features"], p["hidden"], p["num_classes"])


def _cnn(**p: int) -> Any:
    from servingbench.models.nets import ResNet18

    return ResNet18(p["num_classes"], p["width"])


def _resnet50(**p: int) -> Any:
    from servingbench.models.nets import ResNet50

    return ResNet50(p["num_classes"], p["width"])


def _resnet50_macs(res: int, width: int, num_classes: int) -> int:
    out = _out
    macs, n = _resnet_stem(res, width)
    cin = width
    for i, (mid, blocks) in enumerate(((width, 3), (2 * width, 4), (4 * width, 6), (8 * width, 3))):
        for b in range(blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            m = out(n, 3, stride, 1)
            macs += n * n * mid * cin + m * m * mid * mid * 9 + m * m * 4 * mid * mid
            if b == 0:
                macs += m * m * 4 * mid * cin
            n, cin = m, 4 * mid
    return macs + cin * num_classes


def _describe_resnet50(p: Mapping[str, int]) -> tuple[str, str, TensorSpec, TensorSpec]:
    return _describe_resnet("ResNet-50", _resnet50_macs, "compute-bound, real size", p)


def _encoder(**p: int) -> Any:
    from servingbench.models.nets import TextEncoder

    return TextEncoder(p["vocab_size"], p["seq_len"], p["d_model"], p["n_heads"], p["n_layers"], p["num_classes"])


def _gpt(**p: int) -> Any:
    from servingbench.models.nets import TinyGPT

    return TinyGPT(p["vocab_size"], p["context"], p["d_model"], p["n_heads"], p["n_layers"])


def _describe_gpt(p: Mapping[str, int]) -> tuple[str, str, TensorSpec, TensorSpec]:
    return _describe_transformer(
        p, p["context"], p["vocab_size"],
        f"decoder-only Transformer (d_model {p['d_model']}, {p['n_heads']} heads, window of {p['context']} int64 "
        f"token ids, vocab {p['vocab_size']}); greedy decoding of {p['new_tokens']} tokens per request",
        lambda macs: f"per token: {macs[1:].replace('/sample', '')}")


def _check_gpt(p: Mapping[str, int]) -> None:
    _check_encoder(p)


def _fmt_macs(macs: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if macs >= scale:
            return f"~{macs / scale:.3g}{unit} MACs/sample"
    return f"~{macs:.0f} MACs/sample"


def _describe_mlp(p: Mapping[str, int]) -> tuple[str, str, TensorSpec, TensorSpec]:
    macs = p["in_features"] * p["hidden"] + p["hidden"] * p["num_classes"]
    return (f"MLP Linear({p['in_features']},{p['hidden']})-ReLU-Linear({p['hidden']},{p['num_classes']})",
            f"overhead-bound ({_fmt_macs(macs)})",
            TensorSpec("input", (p["in_features"],), "float32", -1.0, 1.0),
            TensorSpec("output", (p["num_classes"],), "float32"))


def _out(n: int, k: int, s: int, pad: int) -> int:
    """Output size of a convolution or pool: input n, kernel k, stride s, padding pad."""
    return (n + 2 * pad - k) // s + 1


def _resnet_stem(res: int, width: int) -> tuple[int, int]:
    """(MACs of the 7x7/2 stem convolution, feature size after the 3x3/2 max pool)."""
    n = _out(res, 7, 2, 3)
    return n * n * 3 * width * 49, _out(n, 3, 2, 1)


def _resnet18_macs(res: int, width: int, num_classes: int) -> int:
    out = _out
    macs, n = _resnet_stem(res, width)
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for b in range(2):
            stride = 2 if (i > 0 and b == 0) else 1
            m = out(n, 3, stride, 1)
            macs += m * m * cout * (cin * 9 + cout * 9)
            if stride != 1 or cin != cout:
                macs += m * m * cout * cin
            n, cin = m, cout
    return macs + cin * num_classes


def _describe_resnet(arch: str, macs_of: Callable[[int, int, int], int], kind: str,
                     p: Mapping[str, int]) -> tuple[str, str, TensorSpec, TensorSpec]:
    r = p["resolution"]
    macs = macs_of(r, p["width"], p["num_classes"])
    return (f"{arch} image classifier ({r}x{r} RGB, width {p['width']}, {p['num_classes']} classes)",
            f"{kind} ({_fmt_macs(macs)})",
            TensorSpec("input", (3, r, r), "float32", -1.0, 1.0),
            TensorSpec("output", (p["num_classes"],), "float32"))


def _describe_cnn(p: Mapping[str, int]) -> tuple[str, str, TensorSpec, TensorSpec]:
    return _describe_resnet("ResNet-18", _resnet18_macs, "compute-bound", p)


def _describe_encoder(p: Mapping[str, int]) -> tuple[str, str, TensorSpec, TensorSpec]:
    return _describe_transformer(
        p, p["seq_len"], p["num_classes"],
        f"Transformer text classifier (d_model {p['d_model']}, {p['n_heads']} heads, {p['seq_len']} int64 token "
        f"ids, vocab {p['vocab_size']})", lambda macs: f"mixed: attention + embeddings ({macs})")


def _describe_transformer(p: Mapping[str, int], seq: int, outputs: int, what: str,
                          cost: Callable[[str], str]) -> tuple[str, str, TensorSpec, TensorSpec]:
    d = p["d_model"]
    macs = p["n_layers"] * (12 * seq * d * d + 2 * seq * seq * d) + d * outputs
    return (f"{p['n_layers']}-layer {what}", cost(_fmt_macs(macs)),
            TensorSpec("input", (seq,), "int64", 0, p["vocab_size"]), TensorSpec("output", (outputs,), "float32"))


def _check_encoder(p: Mapping[str, int]) -> None:
    if p["d_model"] % p["n_heads"]:
        raise ValueError(f"d_model ({p['d_model']}) must be divisible by n_heads ({p['n_heads']})")


# Verification tolerances: |server - reference| <= atol + rtol * |reference| elementwise, for float32 outputs of
# O(1) scale, where the reference is eager on CPU at batch 8 with one thread.  Batch size (1..32, reference rows
# placed inside larger batches as dynamic batching does), thread count (1..8) and format (eager / TorchScript)
# change summation order; the worst absolute differences measured on x86 CPU, torch 2.13, are noted per model.
# Each tolerance leaves >= ~75x headroom for other CPUs, BLAS/oneDNN versions and CUDA kernels (TF32 is off in
# the runtime), while a wrong answer (another sample's output, a dropped batch row) is off by O(1).
_ENTRIES: dict[str, _Entry] = {
    "mlp": _Entry(
        factory=_mlp, defaults={"in_features": 64, "hidden": 256, "num_classes": 10}, describe=_describe_mlp,
        rtol=1e-4, atol=1e-4,  # measured <= 1e-6: two small GEMMs
    ),
    "cnn": _Entry(
        factory=_cnn, defaults={"resolution": 64, "num_classes": 10, "width": 64}, describe=_describe_cnn,
        # measured <= 1.4e-5 (batch 1 vs 8: oneDNN picks convolution algorithms by batch size and thread count);
        # 20 convolutions deep, and cuDNN's fp32 algorithms differ from oneDNN's more than CPU builds do.
        rtol=1e-3, atol=1e-3,
    ),
    # Real-size entries: what production models cost (ResNet-50 at 224 px: ~4.1 GMACs; a BERT-base-sized encoder:
    # 12 layers, 768 hidden, 12 heads, 128 tokens, ~85M parameters outside the embeddings).  Not in the quick suite.
    "resnet50": _Entry(
        factory=_resnet50, defaults={"resolution": 224, "num_classes": 1000, "width": 64},
        describe=_describe_resnet50, rtol=1e-3, atol=1e-3, real_size=True,  # 53 convolutions: as cnn
    ),
    "bert_base": _Entry(
        factory=_encoder, check=_check_encoder, describe=_describe_encoder,
        defaults={"vocab_size": 30522, "seq_len": 128, "d_model": 768, "n_heads": 12, "n_layers": 12,
                  "num_classes": 2},
        rtol=1e-3, atol=1e-3, real_size=True,
    ),
    "encoder": _Entry(
        factory=_encoder, check=_check_encoder, describe=_describe_encoder,
        defaults={"vocab_size": 1000, "seq_len": 32, "d_model": 64, "n_heads": 4, "n_layers": 2, "num_classes": 2},
        # measured <= 7e-7, also vs the non-fast-path (grad-enabled) Transformer kernels; rtol leaves room for
        # fused attention kernels on accelerators.
        rtol=1e-3, atol=1e-4,
    ),
    # Streaming (issue 18): a tiny GPT-style next-token model.  Servers decode greedily and stream one token per
    # step; the tokens are verified against the same decoding in-process (servingbench.models.generate).  On the
    # reference prompts every step's top-two logit gap is >= 5e-3 (measured: 4 prompts x 32 tokens), above atol
    # and > 100x the eager/TorchScript/batch-size differences (<= 1e-5), so an argmax cannot flip.
    "gpt": _Entry(
        factory=_gpt, check=_check_gpt, describe=_describe_gpt,
        defaults={"vocab_size": 256, "context": 16, "d_model": 64, "n_heads": 4, "n_layers": 2, "new_tokens": 32},
        rtol=1e-3, atol=1e-4, generative=True,
    ),
}


def get_model(name: str, payload: str = "tensor", served_as: str | None = None, **params: Any) -> ModelSpec:
    """The spec of zoo model ``name`` with ``params`` over its defaults (seed 0), whose requests carry ``payload``
    (``tensor``, ``image`` or ``text``: :mod:`servingbench.models.preprocess`), served under ``served_as`` (default
    ``name``; e.g. to serve ``cnn`` with tensors and with images side by side).

    Raises ValueError for an unknown name (with a "did you mean"), an unknown parameter (naming the valid ones),
    an invalid value (every parameter is a positive int) or a payload the model cannot take.
    """
    entry = _ENTRIES.get(name)
    if entry is None:
        close = difflib.get_close_matches(str(name), list(_ENTRIES), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (known models: {', '.join(_ENTRIES)})")
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        hints = [m for u in unknown for m in difflib.get_close_matches(u, list(entry.defaults), n=1, cutoff=0.6)]
        hint = f"; did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
        raise ValueError(f"unknown parameter(s) {', '.join(repr(u) for u in unknown)} for model {name!r}{hint} "
                         f"(valid parameters: {', '.join(sorted(entry.defaults))})")
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"model {name!r}: parameter {k!r} must be a positive int, got {v!r}")
    p = {k: int(params.get(k, d)) for k, d in entry.defaults.items()}
    try:
        entry.check(p)
    except ValueError as e:
        raise ValueError(f"model {name!r}: {e}") from None
    description, cost, inp, out = entry.describe(p)
    from servingbench.models.preprocess import payload_problem

    problem = payload_problem(payload, name, inp.dtype, inp.shape) or (
        f"payload {payload!r} does not apply to the generative model {name!r}" if entry.generative and
        payload != "tensor" else None)
    if problem:
        raise ValueError(problem)
    if payload != "tensor":
        description += f"; requests carry {'JPEG images' if payload == 'image' else 'text'} preprocessed on the server"
    return ModelSpec(name=served_as or name, description=description, cost=cost, input=inp, output=out, params=p,
                     seed=0, rtol=entry.rtol, atol=entry.atol, payload=payload, arch=name)


def list_models(real_size: bool = False, generative: bool = False) -> list[ModelSpec]:
    """The zoo's small models with their default parameters (what tests and ``verify`` use by default); with
    ``real_size`` also the real-size ones (``resnet50``, ``bert_base``: hundreds of MB of artifacts each); with
    ``generative`` also the next-token models served by streaming (``gpt``)."""
    return [get_model(n) for n, e in _ENTRIES.items()
            if (real_size or not e.real_size) and (generative or not e.generative)]


def payload_models() -> list[ModelSpec]:
    """The small zoo models with encoded payloads, served beside the tensor ones under their own names:
    ``cnn_image`` (``cnn`` fed JPEG files) and ``encoder_text`` (``encoder`` fed strings).  The contract suite
    serves them on every framework."""
    return [get_model("cnn", payload="image", served_as="cnn_image"),
            get_model("encoder", payload="text", served_as="encoder_text")]


def is_generative(name: str) -> bool:
    """Whether zoo model ``name`` is a next-token model that servers decode and stream (``gpt``)."""
    entry = _ENTRIES.get(name)
    return bool(entry and entry.generative)
