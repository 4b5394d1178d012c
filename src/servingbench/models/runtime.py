"""Load a zoo model's artifacts inside a server process (or the in-process baseline) and run it.

Imported by every framework's server, so it stays light: torch and numpy, nothing else heavy.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
import time

import numpy as np
import torch

from servingbench.models.artifacts import ModelArtifacts, load_artifacts
from servingbench.models.zoo import ModelSpec

__all__ = ["BATCH_DIR_ENV", "BATCH_FLUSH_S", "BATCH_LOG", "FORMATS", "ModelRuntime", "load_runtime", "read_batch_counts",
           "read_batch_log"]

FORMATS = ("eager", "torchscript")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_interop_threads_set = False


#: where a server process writes how many rows each model call got (set by the harness: ``RunContext.base_env``;
#: spelled out here, not imported, to keep this module light)
BATCH_DIR_ENV = "SERVINGBENCH_BATCH_DIR"
BATCH_FLUSH_S = 0.2


class BatchLog:
    """Rows per model call in this process (the batch sizes the framework formed, whatever framework it is) and the
    time the model calls took (compute: what the framework adds around them is queueing and its own overhead),
    written every ``BATCH_FLUSH_S`` (0.2 s) to ``$SERVINGBENCH_BATCH_DIR/<pid>.json`` as ``{"pid", "counts": {rows:
    calls}, "compute": {"calls", "rows", "s", "row_s"}}`` (``s``: summed call time; ``row_s``: summed call time x
    rows, so that ``row_s / rows`` is the mean compute time a request's row spent in its call).  The harness reads
    the files before and after each load point (:func:`read_batch_log`); without the variable nothing is written.
    Recording is arithmetic under a lock: nothing on the request path touches disk."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.compute = {"calls": 0, "rows": 0, "s": 0.0, "row_s": 0.0}
        self.lock = threading.Lock()
        self.dir = os.environ.get(BATCH_DIR_ENV)
        self._writer: threading.Thread | None = None
        self._written = -1

    def record(self, rows: int, seconds: float | None = None) -> None:
        """One model call of ``rows`` rows that took ``seconds`` (None: not timed, e.g. an unsynchronised GPU call)."""
        if not self.dir:
            return
        with self.lock:
            self.counts[rows] = self.counts.get(rows, 0) + 1
            if seconds is not None:
                c = self.compute
                c["calls"] += 1
                c["rows"] += rows
                c["s"] += seconds
                c["row_s"] += seconds * rows
        if self._writer is None:
            self._writer = threading.Thread(target=self._loop, daemon=True, name="servingbench-batch-log")
            self._writer.start()
            atexit.register(self.flush)

    def flush(self) -> None:
        with self.lock:
            total, counts, compute = sum(self.counts.values()), dict(self.counts), dict(self.compute)
        if total == self._written or not self.dir:
            return
        path = os.path.join(self.dir, f"{os.getpid()}.json")
        try:
            os.makedirs(self.dir, exist_ok=True)
            with open(f"{path}.tmp", "w") as f:
                json.dump({"pid": os.getpid(), "counts": {str(k): v for k, v in counts.items()}, "compute": compute}, f)
            os.replace(f"{path}.tmp", path)
            self._written = total
        except OSError:
            pass

    def _loop(self) -> None:
        import time

        while True:
            time.sleep(BATCH_FLUSH_S)
            self.flush()


BATCH_LOG = BatchLog()


def read_batch_counts(directory: str | os.PathLike[str]) -> dict[int, int]:
    """The sum over every server process's ``BatchLog`` file in ``directory``: rows per call -> calls."""
    return read_batch_log(directory)[0]


def read_batch_log(directory: str | os.PathLike[str]) -> tuple[dict[int, int], dict[str, float]]:
    """The sums over every server process's ``BatchLog`` file in ``directory``: rows per call -> calls, and the
    compute sums ``{"calls", "rows", "s", "row_s"}``."""
    out: dict[int, int] = {}
    compute = {"calls": 0, "rows": 0, "s": 0.0, "row_s": 0.0}
    try:
        names = os.listdir(directory)
    except OSError:
        return out, compute
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                data = json.load(f)
            counts, comp = data.get("counts") or {}, data.get("compute") or {}
            for k, v in counts.items():
                out[int(k)] = out.get(int(k), 0) + int(v)
            for k in compute:
                compute[k] += comp.get(k, 0)
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return out, compute


class ModelRuntime:
    """A loaded model: ``predict(numpy) -> numpy`` or ``predict_tensor(tensor) -> tensor``."""

    def __init__(self, spec: ModelSpec, module: torch.nn.Module, device: str, fmt: str,
                 artifacts: ModelArtifacts | None = None) -> None:
        self.spec = spec
        self.module = module
        self.device = device
        self.fmt = fmt
        self.artifacts = artifacts
        self._in_dtype = getattr(torch, spec.input.dtype)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for the batch ``x`` (cast to the model's input dtype), on ``device``."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.module(x.to(self.device, self._in_dtype))
        # on a GPU the call returns before the kernels finish: its time is not the compute time
        BATCH_LOG.record(int(x.shape[0]) if x.dim() else 1, None if out.is_cuda else time.perf_counter() - t0)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """float32 outputs for the batch ``x`` (cast to the model's input dtype), as numpy on the CPU."""
        x = np.ascontiguousarray(x, dtype=self.spec.input.dtype)
        if not x.flags.writeable:  # e.g. np.frombuffer(request body): torch.from_numpy warns on read-only arrays
            x = x.copy()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.module(torch.from_numpy(x).to(self.device)).to("cpu", torch.float32).numpy()
        BATCH_LOG.record(int(x.shape[0]) if x.ndim else 1, time.perf_counter() - t0)  # to("cpu") waited for a GPU
        return out

    def __repr__(self) -> str:
        return f"ModelRuntime({self.spec.name!r}, fmt={self.fmt!r}, device={self.device!r})"


def load_runtime(artifact_dir: str | os.PathLike[str], fmt: str = "eager", device: str = "cpu",
                 threads: int | None = 1) -> ModelRuntime:
    """Load the artifacts in ``artifact_dir`` as ``fmt`` on ``device``.

    ``eager`` rebuilds the zoo module from ``meta.json``'s params and loads ``state_dict.pt``; ``torchscript``
    loads ``model.ts``.  ``threads`` (unless None) sets torch's intra-op threads, and its inter-op threads the
    first time (torch allows that only before any inter-op work).  On CUDA, TF32 is turned off so that outputs
    match the float32 CPU reference within the spec's tolerance.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown model format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"unknown device {device!r}; valid devices: 'cpu', 'cuda', 'cuda:N'")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available to torch")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if threads is not None:
        _set_threads(int(threads))
    art = load_artifacts(artifact_dir)
    spec = art.spec()
    module: torch.nn.Module
    if fmt not in art.formats:
        meta = art.metadata()
        raise ValueError(f"model {spec.name!r} has no {fmt} form ({meta.get('torchscript_error') or 'not built'}): "
                         f"use model_format {' or '.join(art.formats)}")
    if getattr(spec, "source", None) and (fmt == "eager" or spec.source.get("kind") == "torchscript"):
        module = spec.build()  # a user model from its copy in the artifact directory
    elif fmt == "eager":
        module = spec.build(init=False)
        module.load_state_dict(torch.load(art.state_dict, map_location="cpu", weights_only=True))
    else:
        module = torch.jit.load(str(art.torchscript), map_location="cpu")
    from servingbench.models.user import eval_mode

    module = eval_mode(module)
    if device != "cpu":
        module = module.to(device)
    return ModelRuntime(spec, module, device, fmt, art)


def _set_threads(threads: int) -> None:
    global _interop_threads_set
    if threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    torch.set_num_threads(threads)
    if not _interop_threads_set:
        _interop_threads_set = True
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # inter-op work already started in this process; the setting is fixed
            pass
