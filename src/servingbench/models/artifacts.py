"""Exported artifacts of a zoo model, built once into a cache directory and reused.

``<cache>/<name>-<key>-torch<version>/``: ``state_dict.pt``, ``model.ts`` (TorchScript, traced on CPU),
``reference_inputs.npy`` / ``reference_outputs.npy`` (batch 8, computed in-process, one thread) and ``meta.json``
(spec, tolerances, torch version, sha256 of every file).  Built in a temp dir and renamed into place, so a
concurrent builder or a crash never leaves a half-written artifact; a file whose hash no longer matches is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servingbench.models.zoo import ModelSpec

REF_BATCH = 8
FILES = ("state_dict.pt", "model.ts", "reference_inputs.npy", "reference_outputs.npy")


def default_cache_dir() -> Path:
    env = os.environ.get("SERVINGBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "servingbench" / "artifacts"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelArtifacts:
    name: str
    key: str
    dir: Path

    @property
    def state_dict(self) -> Path:
        return self.dir / "state_dict.pt"

    @property
    def torchscript(self) -> Path:
        return self.dir / "model.ts"

    @property
    def ref_inputs(self) -> Path:
        return self.dir / "reference_inputs.npy"

    @property
    def ref_outputs(self) -> Path:
        return self.dir / "reference_outputs.npy"

    @property
    def meta(self) -> Path:
        return self.dir / "meta.json"

    def metadata(self) -> dict:
        return json.loads(self.meta.read_text())

    def sha256(self) -> dict[str, str]:
        return dict(self.metadata()["sha256"])

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.ref_inputs), np.load(self.ref_outputs)

    def spec(self) -> ModelSpec:
        from servingbench.models.zoo import get_model

        meta = self.metadata()
        return get_model(meta["name"], **meta["params"])

    def intact(self) -> bool:
        try:
            recorded = self.sha256()
            return all(_sha256(self.dir / f) == recorded.get(f) for f in FILES)
        except (OSError, ValueError, KeyError):
            return False


def load_artifacts(directory: str | os.PathLike) -> ModelArtifacts:
    d = Path(directory)
    meta = json.loads((d / "meta.json").read_text())
    return ModelArtifacts(name=meta["name"], key=meta["key"], dir=d)


def build_artifacts(spec: ModelSpec, cache_dir: Path | None = None) -> ModelArtifacts:
    """Artifacts for ``spec`` (cached; rebuilt if missing or corrupt)."""
    import torch

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{spec.name}-{spec.key()}-torch{torch.__version__.replace('+', '_')}"
    art = ModelArtifacts(name=spec.name, key=spec.key(), dir=final)
    if art.intact():
        return art
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _export(spec, tmp)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # corrupt copy
        try:
            os.rename(tmp, final)
        except OSError:  # a concurrent builder won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not art.intact():
        raise RuntimeError(f"artifacts for {spec.name} at {final} failed their integrity check after building")
    return art


def _export(spec: ModelSpec, d: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = spec.build()
        torch.save(module.state_dict(), d / "state_dict.pt")
        x = spec.example_inputs(REF_BATCH, seed=0)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).float().numpy()
        with torch.no_grad():
            traced = torch.jit.trace(module, torch.from_numpy(spec.example_inputs(2, seed=1)), check_trace=False)
        traced.save(str(d / "model.ts"))
        np.save(d / "reference_inputs.npy", x)
        np.save(d / "reference_outputs.npy", ref)
    finally:
        torch.set_num_threads(threads)
    meta = {
        "name": spec.name, "key": spec.key(), "params": dict(spec.params), "seed": spec.seed,
        "description": spec.description, "input": spec.input.to_dict(), "output": spec.output.to_dict(),
        "rtol": spec.rtol, "atol": spec.atol, "torch": torch.__version__, "reference_batch": REF_BATCH,
        "sha256": {f: _sha256(d / f) for f in FILES},
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2))
