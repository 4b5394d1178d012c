"""Exported artifacts of a zoo model, built once into a cache directory and reused.

``<cache>/<name>-<key>-torch<version>/`` (``+`` in the version spelled ``_``) holds:

* ``state_dict.pt``: the weights (``ModelSpec.build().state_dict()``);
* ``model.ts``: TorchScript, ``torch.jit.trace`` of the module on CPU;
* ``reference_inputs.npy`` / ``reference_outputs.npy``: ``REF_BATCH`` example inputs (seed 0) and the eager
  outputs computed in-process on CPU with one thread, which every server's answers are verified against; for an
  ``image`` or ``text`` payload the inputs are JPEG files / strings and the outputs come from the same
  preprocessing the servers run (``servingbench.models.preprocess``);
* ``tokenizer.json`` (``text`` payload only): the tokenizer the servers load;
* ``meta.json``: the spec (name, params, seed, key, tensor specs, rtol/atol), torch version and the sha256 of
  every other file.

A directory is built beside its final place and renamed into it, so neither a crash nor a concurrent builder
leaves a half-written artifact; one whose files no longer match their recorded hashes is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servingbench.models.zoo import ModelSpec, get_model

__all__ = ["REF_BATCH", "FILES", "ModelArtifacts", "build_artifacts", "default_cache_dir", "load_artifacts"]

REF_BATCH = 8
REF_SEED = 0
FILES = ("state_dict.pt", "model.ts", "reference_inputs.npy", "reference_outputs.npy")


def default_cache_dir() -> Path:
    """``$SERVINGBENCH_CACHE``, else ``~/.cache/servingbench/artifacts``."""
    env = os.environ.get("SERVINGBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "servingbench" / "artifacts"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelArtifacts:
    """A built artifact directory (see the module docstring for its files)."""

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

    def metadata(self) -> dict[str, Any]:
        """The parsed ``meta.json``."""
        return json.loads(self.meta.read_text())

    @property
    def generative(self) -> bool:
        """Whether servers decode this model greedily and stream its tokens (``meta.json``'s ``generative``; artifacts
        built before it was recorded: the zoo's answer for the name)."""
        meta = self.metadata()
        if "generative" in meta:
            return bool(meta["generative"])
        from servingbench.models.zoo import is_generative

        return is_generative(self.name)

    def sha256(self) -> dict[str, str]:
        """File name -> sha256 as recorded in ``meta.json`` at build time."""
        return dict(self.metadata()["sha256"])

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, expected outputs)``, batch ``REF_BATCH``."""
        return np.load(self.ref_inputs), np.load(self.ref_outputs)

    def spec(self) -> ModelSpec:
        """The spec these artifacts were built from: a zoo spec (params and seed from ``meta.json``), or a user
        model's spec whose source is this directory's copy."""
        return spec_from_meta(self.metadata(), self.dir)

    @property
    def formats(self) -> tuple[str, ...]:
        """The model formats servers can load these artifacts as (a user model may have no TorchScript form)."""
        return tuple(self.metadata().get("formats") or ("eager", "torchscript"))

    def intact(self) -> bool:
        """``meta.json`` parses, records the reference files, and every recorded file's sha256 matches."""
        try:
            recorded = self.sha256()
            needed = {"reference_inputs.npy", "reference_outputs.npy"}
            return needed <= set(recorded) and all(_sha256(self.dir / f) == h for f, h in recorded.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False


def spec_from_meta(meta: dict[str, Any], art_dir: Path | None = None) -> ModelSpec:
    """The spec an artifact's ``meta.json`` (or a generator plan's ``model_spec``) describes."""
    if meta.get("source"):
        from servingbench.models.user import spec_from_meta as user_spec_from_meta

        return user_spec_from_meta(meta, art_dir)
    arch = meta.get("arch") or meta["name"]
    return dataclasses.replace(get_model(arch, payload=meta.get("payload", "tensor"), served_as=meta["name"],
                                         **meta["params"]), seed=int(meta["seed"]))


def load_artifacts(directory: str | os.PathLike[str]) -> ModelArtifacts:
    """The artifacts in ``directory``, described by its ``meta.json`` (hashes are not re-checked)."""
    d = Path(directory)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{d} is not a model artifact directory (no meta.json)") from None
    return ModelArtifacts(name=meta["name"], key=meta["key"], dir=d)


def artifact_dir(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """Where :func:`build_artifacts` puts ``spec``'s artifacts."""
    import torch

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{spec.name}-{spec.key()}-torch{torch.__version__.replace('+', '_')}"


def build_artifacts(spec: ModelSpec, cache_dir: Path | None = None) -> ModelArtifacts:
    """``spec``'s artifacts under ``cache_dir`` (default :func:`default_cache_dir`): reused when intact, else built."""
    final = artifact_dir(spec, cache_dir)
    art = ModelArtifacts(name=spec.name, key=spec.key(), dir=final)
    if art.intact():
        return art
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.build-", dir=final.parent))
    try:
        _export(spec, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; servers may run as another user
        if art.intact():  # a concurrent builder finished meanwhile: keep theirs
            return art
        if final.exists():  # corrupt or partial: move it aside (atomically), then delete it
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=final.parent))
            try:
                os.rename(final, trash / "old")
            except FileNotFoundError:  # someone else moved it first
                pass
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # a concurrent builder won the race: keep theirs if it is intact
            if not art.intact():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not art.intact():
        raise RuntimeError(f"artifacts for {spec.name!r} at {final} failed their integrity check after building")
    return art


def _copy_user_source(spec: ModelSpec, d: Path) -> ModelSpec:
    """A user model's source copied into ``d`` (what servers load); the spec pointing at the copy."""
    from servingbench.models.user import ARTIFACT_NAMES, artifact_source

    src = dict(spec.source)  # type: ignore[attr-defined]
    kind = src["kind"]
    if kind == "hf":
        shutil.copytree(src["path"], d / ARTIFACT_NAMES[kind])
    elif kind in ARTIFACT_NAMES:
        shutil.copyfile(src["path"], d / ARTIFACT_NAMES[kind])
    elif src.get("state_dict"):
        shutil.copyfile(src["state_dict"], d / "state_dict.pt")
    else:  # a factory without weights: keep the ones this call drew, so every server loads the same
        import torch

        torch.save(spec.build().state_dict(), d / "state_dict.pt")
        src["state_dict"] = str(d / "state_dict.pt")
    return dataclasses.replace(spec, source=artifact_source(src, d))


def _export(spec: ModelSpec, d: Path) -> None:
    """Write every artifact file and ``meta.json`` into the empty directory ``d``."""
    import torch

    user = bool(getattr(spec, "source", None))
    if user:
        original = spec
        spec = _copy_user_source(spec, d)
        module = spec.build()
    else:
        module = spec.build()
        torch.save(module.state_dict(), d / "state_dict.pt")
    x = spec.example_inputs(REF_BATCH, seed=REF_SEED)  # an image or text payload: JPEG files or strings
    xt = x
    if spec.payload != "tensor":  # the reference runs the servers' preprocessing on the same bytes
        from servingbench.models.preprocess import TOKENIZER_FILE, Preprocessor, build_tokenizer

        cfg = spec.preprocess_config()
        if spec.payload == "text":
            build_tokenizer(cfg["vocab_size"], d / TOKENIZER_FILE)
        xt = Preprocessor(cfg, d)(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            ref = module(torch.from_numpy(xt)).float().numpy()
        traced, trace_error = None, None
        if isinstance(module, torch.jit.ScriptModule):  # a TorchScript source is its own TorchScript form
            got = ref
        else:
            try:
                with torch.no_grad():  # the same inference kernels eager uses (e.g. the Transformer fast path)
                    traced = torch.jit.trace(module, torch.from_numpy(spec.tensor_inputs(2, seed=1)),
                                             check_trace=False)
                    got = traced(torch.from_numpy(xt)).float().numpy()
            except Exception as e:  # noqa: BLE001 - a user model that cannot be traced: eager only
                if not user:
                    raise
                trace_error = f"tracing failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                got = ref
    finally:
        torch.set_num_threads(threads)
    formats, ts_error = ["eager", "torchscript"], None
    if not np.allclose(got, ref, rtol=spec.rtol, atol=spec.atol):
        if not user:
            raise RuntimeError(f"TorchScript trace of {spec.name!r} disagrees with eager "
                               f"(max abs err {float(np.max(np.abs(got - ref)))})")
        formats, ts_error = ["eager"], f"the trace disagrees with eager (max abs err {np.max(np.abs(got - ref)):.3g})"
    if traced is not None and "torchscript" in formats and not (d / "model.ts").exists():
        traced.save(str(d / "model.ts"))
    elif traced is None and not (user and spec.source["kind"] == "torchscript"):
        formats, ts_error = ["eager"], trace_error
    np.save(d / "reference_inputs.npy", x)
    np.save(d / "reference_outputs.npy", ref)
    if user:  # the output as the first call gave it
        from servingbench.models.zoo import TensorSpec

        original = dataclasses.replace(original, output=TensorSpec("output", tuple(ref.shape[1:]), "float32"))
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    meta = {
        **(original.to_dict() if user else spec.to_dict()),
        "formats": formats, **({"torchscript_error": ts_error} if ts_error else {}),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "reference": {"batch": REF_BATCH, "seed": REF_SEED, "threads": 1, "device": "cpu", "format": "eager"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sha256": {f: _sha256(d / f) for f in files},
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
