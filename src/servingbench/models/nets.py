"""The zoo's network architectures and their seeded initialisation (imports torch; loaded lazily by ``zoo``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MLP", "BasicBlock", "Bottleneck", "ResNet18", "ResNet50", "TextEncoder", "calibrate", "init_weights"]


class MLP(nn.Sequential):
    """``Linear(in, hidden) - ReLU - Linear(hidden, classes)``."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a (possibly projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _ResNet(nn.Module):
    """The ResNet stem (7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pool), four stages ``layer1..4`` built by
    :meth:`stages`, global average pool and a linear head; torchvision's attribute names, so state_dict keys match."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, blocks in enumerate(self.stages(width), start=1):
            stage = []
            for make in blocks:
                block, cin = make(cin)
                stage.append(block)
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def stages(self, width: int) -> list[list]:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(_ResNet):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""

    def stages(self, width: int) -> list[list]:
        def block(cout: int, stride: int):
            return lambda cin: (BasicBlock(cin, cout, stride), cout)

        return [[block(w, 1 if i == 0 else 2), block(w, 1)]
                for i, w in enumerate((width, 2 * width, 4 * width, 8 * width))]


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1 reduce, 3x3 with the stride, 1x1 expand x4) with a projected shortcut when the
    shape changes; torchvision's attribute names."""

    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * self.expansion
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(_ResNet):
    """ResNet-50 (Bottleneck, [3, 4, 6, 3])."""

    def stages(self, width: int) -> list[list]:
        def block(mid: int, stride: int):
            return lambda cin: (Bottleneck(cin, mid, stride), mid * Bottleneck.expansion)

        return [[block(mid, 1 if i == 0 else 2)] + [block(mid, 1)] * (n - 1)
                for i, (mid, n) in enumerate(((width, 3), (2 * width, 4), (4 * width, 6), (8 * width, 3)))]


class TextEncoder(nn.Module):
    """Token + learned positional embedding, post-norm Transformer encoder, mean-pool, linear head."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int, n_heads: int, n_layers: int,
                 num_classes: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0,
                                           batch_first=True)
        # No nested-tensor conversion: that path is taken only by some callers (not by traced graphs).
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.encoder(self.tok(ids) + self.pos)
        return self.head(h.mean(dim=1))


class TinyGPT(nn.Module):
    """Decoder-only Transformer over a fixed window of ``context`` token ids -> logits of the next token.

    Pre-norm causal self-attention blocks, learned positions, a final LayerNorm and a linear head over the
    vocabulary.  The window is fixed (generation slides it: the last ``context`` tokens of prompt + output), so
    every format (eager, TorchScript, ``torch.export``) and every framework serves it as an ordinary tensor model:
    ``(batch, context)`` int64 in, ``(batch, vocab)`` float32 out.  Greedy decoding lives in
    :mod:`servingbench.models.generate`."""

    def __init__(self, vocab_size: int, context: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(1, context, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        causal = torch.triu(torch.full((context, context), float("-inf")), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.blocks(self.tok(ids) + self.pos, mask=self.causal)
        return self.head(self.norm(h[:, -1]))


def init_weights(module: nn.Module, seed: int) -> None:
    """Redraw every parameter and BatchNorm statistic from one ``torch.Generator`` seeded by ``seed``.

    He-normal for convolutions and hidden linears (ReLU follows), LeCun-normal for attention projections and the
    output head, N(0, 1) token embeddings, N(0, 0.1^2) other free parameters (positional embeddings), norm scales
    near 1 and shifts near 0.  Every parameter must be covered.  :func:`calibrate` then fixes the scales.
    """
    g = torch.Generator().manual_seed(seed)
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    unit_gain = {id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    unit_gain |= {id(linears[-1])} if linears else set()  # the output head
    done: set[int] = set()

    def normal(t: Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(mean + std * torch.randn(t.shape, generator=g))
        done.add(id(t))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.MultiheadAttention):
                normal(m.in_proj_weight, 1.0 / math.sqrt(m.embed_dim))
                normal(m.in_proj_bias, 0.02)
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                gain = 1.0 if id(m) in unit_gain else 2.0
                normal(m.weight, math.sqrt(gain / fan_in))
                if m.bias is not None:
                    normal(m.bias, 0.02)
            elif isinstance(m, nn.Embedding):
                normal(m.weight, 1.0)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                normal(m.weight, 0.1, mean=1.0)
                normal(m.bias, 0.05)
            for p in m.parameters(recurse=False):  # free parameters, e.g. positional embeddings
                if id(p) not in done:
                    normal(p, 0.1)
    missing = [n for n, p in module.named_parameters() if id(p) not in done]
    if missing:  # pragma: no cover - guards new architectures
        raise RuntimeError(f"init_weights left parameters uninitialised: {missing}")


def calibrate(module: nn.Module, x: Tensor) -> None:
    """Data-dependent finish of the init (LSUV-style), on calibration inputs ``x``.

    BatchNorm running statistics become the exact per-channel statistics of their inputs over ``x`` (so eval-mode
    normalisation is non-trivial and activations stay O(1) at any depth, width or resolution), then the output
    head is rescaled and shifted so each logit has mean 0 and std 1 over ``x``: outputs are O(1) and differ
    across inputs rather than being dominated by a shared offset.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        if bns:
            momenta = [bn.momentum for bn in bns]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average: after one batch, running stats == batch stats
            module.train()
            module(x)
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
        module.eval()
        head = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
        feats: list[Tensor] = []
        handle = head.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].detach()))
        try:
            module(x)
        finally:
            handle.remove()
        z = feats[0].reshape(-1, head.in_features) @ head.weight.T
        std = z.std(dim=0).clamp_min(1e-6)
        head.weight.div_(std[:, None])
        head.bias.copy_(-(z.mean(dim=0) / std))
