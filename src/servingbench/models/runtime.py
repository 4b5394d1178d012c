"""Load a zoo model inside a server (or the in-process limit) and run it.  Imported by every framework's server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_FORMATS = ("eager", "torchscript")
_interop_set = False


class ModelRuntime:
    """A loaded model: ``predict(numpy) -> numpy`` or ``predict_tensor(tensor) -> tensor``."""

    def __init__(self, spec, module, device: str) -> None:
        self.spec = spec
        self.module = module
        self.device = device

    def predict_tensor(self, x):
        import torch

        with torch.inference_mode():
            return self.module(x.to(self.device))

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return out.float().cpu().numpy()


def load_runtime(artifact_dir: str | os.PathLike, fmt: str = "eager", device: str = "cpu",
                 threads: int | None = 1) -> ModelRuntime:
    """Load the artifact in ``fmt`` (``eager``: zoo module + state_dict; ``torchscript``: model.ts) on ``device``."""
    global _interop_set
    import torch

    from servingbench.models.artifacts import load_artifacts

    if fmt not in _FORMATS:
        raise ValueError(f"model format {fmt!r} is not one of {_FORMATS}")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
    if threads is not None:
        torch.set_num_threads(int(threads))
        if not _interop_set:
            try:
                torch.set_num_interop_threads(max(1, int(threads)))
            except RuntimeError:  # only settable before any inter-op work started
                pass
            _interop_set = True
    art = load_artifacts(artifact_dir)
    spec = art.spec()
    if fmt == "eager":
        module = spec.build()
        module.load_state_dict(torch.load(Path(art.state_dict), map_location="cpu", weights_only=True))
    else:
        module = torch.jit.load(str(art.torchscript), map_location="cpu")
    module = module.eval().to(device)
    return ModelRuntime(spec, module, device)
