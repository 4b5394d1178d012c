"""The model zoo: PyTorch models defined here, weights from a seed, no downloads.

Three cost profiles: ``mlp`` (tiny: the server's own overhead dominates), ``cnn`` (ResNet-18 architecture:
compute-bound), ``encoder`` (a small Transformer over int64 token ids: attention, embeddings, int inputs).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

ZOO_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """A per-sample tensor: ``shape`` excludes the batch dimension.  Ints are drawn from ``[low, high)``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    low: float = 0.0
    high: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model with its parameters filled in.  ``build()`` is deterministic in ``seed``."""

    name: str
    description: str
    cost: str
    input: TensorSpec
    output: TensorSpec
    params: Mapping[str, Any]
    seed: int
    rtol: float
    atol: float
    factory: Callable[..., Any] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def build(self):
        """The module in eval mode on CPU, with weights drawn from a generator seeded by ``seed``."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            module = self.factory(**self.params)
            _deterministic_init(module, self.seed)
        return module.eval()

    def example_inputs(self, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        shape = (batch, *self.input.shape)
        if self.input.dtype.startswith("int"):
            return rng.integers(int(self.input.low), int(self.input.high), size=shape, dtype=self.input.dtype)
        return rng.uniform(self.input.low, self.input.high, size=shape).astype(self.input.dtype)

    def key(self) -> str:
        blob = json.dumps({"name": self.name, "params": dict(self.params), "seed": self.seed, "zoo": ZOO_VERSION},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _deterministic_init(module, seed: int) -> None:
    """Re-draw every parameter and BatchNorm statistic from one seeded generator (scaled to keep O(1) outputs)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * math.sqrt(1.0 / fan_in))
            elif name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=g))


# ---- architectures (torch imported lazily so listing the zoo stays cheap) ----------------------------------------
def _mlp(in_features: int = 64, hidden: int = 256, num_classes: int = 10):
    from torch import nn

    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def _resnet18(resolution: int = 64, num_classes: int = 10, width: int = 64):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]), written here so no torchvision is needed."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            idt = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + idt)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], w
            for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
                stride = 1 if i == 0 else 2
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))

    return ResNet18()


def _encoder(vocab_size: int = 1000, seq_len: int = 32, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
             num_classes: int = 2):
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab_size, d_model)
            self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
            layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0,
                                               batch_first=True)
            # enable_nested_tensor=False: the nested-tensor fast path changes numerics between eager and traced.
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, num_classes)

        def forward(self, ids):
            h = self.encoder(self.tok(ids) + self.pos)
            return self.head(h.mean(dim=1))

    return Encoder()


_ZOO: dict[str, dict[str, Any]] = {
    "mlp": dict(
        factory=_mlp, defaults=dict(in_features=64, hidden=256, num_classes=10),
        description="Linear(64,256)-ReLU-Linear(256,10)", cost="overhead-bound (~20k MACs per sample)",
        input=lambda p: TensorSpec("input", (p["in_features"],), "float32", -1.0, 1.0),
        output=lambda p: TensorSpec("output", (p["num_classes"],), "float32"),
        # float32 GEMMs of this size agree to ~1e-6 across batch sizes and thread counts.
        rtol=1e-4, atol=1e-5,
    ),
    "cnn": dict(
        factory=_resnet18, defaults=dict(resolution=64, num_classes=10, width=64),
        description="ResNet-18 image classifier", cost="compute-bound (~150M MACs per sample at 64x64)",
        input=lambda p: TensorSpec("input", (3, p["resolution"], p["resolution"]), "float32", -1.0, 1.0),
        output=lambda p: TensorSpec("output", (p["num_classes"],), "float32"),
        # Convolution algorithms (oneDNN) pick different summation orders by batch size and thread count.
        rtol=1e-3, atol=1e-3,
    ),
    "encoder": dict(
        factory=_encoder, defaults=dict(vocab_size=1000, seq_len=32, d_model=64, n_heads=4, n_layers=2, num_classes=2),
        description="2-layer Transformer text classifier over int64 token ids", cost="mixed (~0.5M MACs per sample)",
        input=lambda p: TensorSpec("input", (p["seq_len"],), "int64", 0, p["vocab_size"]),
        output=lambda p: TensorSpec("output", (p["num_classes"],), "float32"),
        rtol=1e-3, atol=1e-4,
    ),
}


def get_model(name: str, **params: Any) -> ModelSpec:
    """The spec of zoo model ``name`` with ``params`` over its defaults.  Unknown names/params: ValueError."""
    if name not in _ZOO:
        close = difflib.get_close_matches(name, list(_ZOO), n=2, cutoff=0.4)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(_ZOO)}.")
    entry = _ZOO[name]
    unknown = set(params) - set(entry["defaults"])
    if unknown:
        raise ValueError(f"model {name!r} has no parameter(s) {sorted(unknown)}; valid: {sorted(entry['defaults'])}")
    p = {**entry["defaults"], **params}
    return ModelSpec(
        name=name, description=entry["description"], cost=entry["cost"], input=entry["input"](p),
        output=entry["output"](p), params=p, seed=0, rtol=entry["rtol"], atol=entry["atol"], factory=entry["factory"],
    )


def list_models() -> list[ModelSpec]:
    return [get_model(n) for n in _ZOO]
