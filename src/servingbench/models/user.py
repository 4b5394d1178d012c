"""Bring your own model: a user's PyTorch model as a servingbench model, beside the zoo.

A suite's ``models:`` entry names a source instead of a zoo model::

    models:
      - name: mynet
        torchscript: models/mynet.pt           # torch.jit.save'd module
        input: {shape: [3, 224, 224], dtype: float32, low: -1, high: 1}
      - name: exported
        export: models/net.pt2                 # torch.export.save'd ExportedProgram
        input: {shape: [16], dtype: float32}
      - name: fromcode
        factory: mypkg.nets:build              # a callable returning an nn.Module (importable where servers run)
        state_dict: weights/net.pt             # optional: loaded into it
        example: inputs/example.npy            # (batch, ...) array: shape, dtype and value range from it
        rtol: 1e-3
        atol: 1e-3
      - name: tinybert
        hf: models/tinybert/                   # a local Hugging Face transformers model directory
        input: {shape: [64], dtype: int64, low: 0, high: 1000}

servingbench copies the source into the model's artifact directory (``model.ts``, ``model.pt2``, ``state_dict.pt`` +
the factory, or ``hf/``), so every server loads the same file, and computes the reference outputs in-process from
it; a factory's module is also traced to TorchScript when it can be (``model_format: torchscript``).  One input
tensor per request (wrap a model with several inputs in a module that takes one).  Outputs: the model's first
tensor output (``logits`` of a Hugging Face model), cast to float32.

:func:`check_user_model` loads the source and runs its first call (batch 2) before any server starts: a missing or
unreadable file, the wrong format, an input spec that does not match the model, or an output that is not a tensor
is a :class:`UserModelError` naming the entry, the field and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from servingbench.models.zoo import ModelSpec, TensorSpec

__all__ = ["SOURCES", "UserModelError", "UserModelSpec", "check_user_model", "load_source_module", "user_spec"]

#: source kind -> what it names
SOURCES = {
    "torchscript": "a TorchScript file (torch.jit.save)",
    "export": "a torch.export program (.pt2, torch.export.save)",
    "factory": "module:callable returning an nn.Module (plus an optional state_dict file)",
    "hf": "a local Hugging Face transformers model directory (config.json + weights)",
}
DTYPES = ("float32", "float16", "float64", "int64", "int32")
DEFAULT_RTOL = DEFAULT_ATOL = 1e-3


class UserModelError(ValueError):
    """A user model that cannot be used, with the entry, the field and the fix in the message."""


@dataclass(frozen=True)
class UserModelSpec(ModelSpec):
    """A user's model: like a zoo :class:`ModelSpec`, but built from ``source`` (see the module doc)."""

    source: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def build(self, *, init: bool = True) -> Any:
        """The module from the source (``init`` is ignored: the weights are the user's)."""
        return load_source_module(self.source, self.name)

    def key(self) -> str:
        """Hash of the source's content (file bytes, factory name), the input spec and the tolerances."""
        h = hashlib.sha256(json.dumps({"name": self.name, "input": self.input.to_dict(), "rtol": self.rtol,
                                       "atol": self.atol, "kind": self.source.get("kind"),
                                       "factory": self.source.get("factory"),
                                       "first_tensor": bool(self.source.get("first_tensor"))},
                                      sort_keys=True).encode())
        code = _factory_file(self.source.get("factory"))
        if code is not None:  # the factory's code: an edit rebuilds
            h.update(code.read_bytes())
        root = Path(self.source.get("path") or ".")
        for p in _source_files(self.source):  # contents (and paths inside an hf directory), not file names
            if self.source.get("kind") == "hf":
                h.update(str(p.relative_to(root)).encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "key": self.key(), "source": dict(self.source), "user": True}


def _factory_file(factory: str | None) -> Path | None:
    """The source file of a factory's module (found without importing it), or None."""
    if not factory:
        return None
    import importlib.util

    try:
        found = importlib.util.find_spec(str(factory).partition(":")[0])
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and os.path.isfile(origin) else None


def _source_files(source: Mapping[str, Any]) -> list[Path]:
    kind = source.get("kind")
    if kind in ("torchscript", "export"):
        return [Path(source["path"])]
    if kind == "factory":
        return [Path(source["state_dict"])] if source.get("state_dict") else []
    if kind == "hf":
        root = Path(source["path"])
        return sorted(p for p in root.rglob("*") if p.is_file())
    return []


def user_spec(name: str, source: Mapping[str, Any], input_spec: TensorSpec, output: TensorSpec | None = None,
              rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> UserModelSpec:
    """A :class:`UserModelSpec` (``output`` unknown until the first call: a placeholder)."""
    return UserModelSpec(name=name, description=f"user model ({SOURCES[source['kind']].split(' (')[0]})",
                         cost="user model", input=input_spec,
                         output=output or TensorSpec("output", (), "float32"), params={}, seed=0, rtol=rtol,
                         atol=atol, source=dict(source))


def spec_from_meta(meta: Mapping[str, Any], art_dir: Path | None = None) -> UserModelSpec:
    """The spec recorded in an artifact's ``meta.json``; with ``art_dir`` the source is the artifact's own copy."""
    source = dict(meta["source"])
    if art_dir is not None:
        source = artifact_source(source, art_dir)
    t = lambda d: TensorSpec(d["name"], tuple(d["shape"]), d["dtype"], d.get("low", 0.0), d.get("high", 1.0))  # noqa: E731
    return UserModelSpec(name=meta["name"], description=meta.get("description", "user model"),
                         cost=meta.get("cost", "user model"), input=t(meta["input"]), output=t(meta["output"]),
                         params={}, seed=0, rtol=float(meta["rtol"]), atol=float(meta["atol"]), source=source)


#: the file (or directory) each source kind keeps inside the artifact directory
ARTIFACT_NAMES = {"torchscript": "model.ts", "export": "model.pt2", "hf": "hf"}


def artifact_source(source: Mapping[str, Any], art_dir: Path) -> dict[str, Any]:
    """``source`` pointing at the copies inside ``art_dir`` (what servers load)."""
    s = dict(source)
    kind = s["kind"]
    if kind in ARTIFACT_NAMES:
        s["path"] = str(Path(art_dir) / ARTIFACT_NAMES[kind])
    elif kind == "factory" and (s.get("state_dict") or (Path(art_dir) / "state_dict.pt").is_file()):
        s["state_dict"] = str(Path(art_dir) / "state_dict.pt")  # the user's, or the weights drawn at build time
    return s


# ---- loading -------------------------------------------------------------------------------------------------------
class FirstTensor:
    """Wraps a module whose output is a tuple / dict / ``ModelOutput`` so that it returns its first tensor
    (a Hugging Face model's ``logits``)."""

    def __new__(cls, module: Any) -> Any:
        import torch

        class _First(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = self.inner(x)
                if isinstance(out, torch.Tensor):
                    return out
                if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
                    return out.logits
                if isinstance(out, dict):
                    out = list(out.values())
                for v in out:
                    if isinstance(v, torch.Tensor):
                        return v
                raise TypeError(f"the model returned {type(out).__name__} without a tensor in it")

        return _First(module)


def _import_factory(spec: str, name: str) -> Any:
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr:
        raise UserModelError(f"model {name!r}: factory {spec!r} is not 'module:callable' (e.g. mypkg.nets:build)")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - anything the user's module raises on import
        raise UserModelError(f"model {name!r}: factory {spec!r}: cannot import {mod_name!r} ({type(e).__name__}: "
                             f"{e}); make it importable (install it, or put its directory on PYTHONPATH)") from None
    obj = mod
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UserModelError(f"model {name!r}: factory {spec!r}: {mod_name!r} has no {attr!r}")
    if not callable(obj):
        raise UserModelError(f"model {name!r}: factory {spec!r} is not callable")
    return obj


def load_source_module(source: Mapping[str, Any], name: str) -> Any:
    """The eval-mode module on CPU from ``source`` (UserModelError naming ``name`` and the fix otherwise)."""
    import torch

    kind = source.get("kind")
    path = Path(source["path"]) if source.get("path") else None
    try:
        if kind == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")
        elif kind == "export":
            module = torch.export.load(str(path)).module()
        elif kind == "factory":
            module = _import_factory(source["factory"], name)()
            if not isinstance(module, torch.nn.Module):
                raise UserModelError(f"model {name!r}: factory {source['factory']!r} returned "
                                     f"{type(module).__name__}, not a torch.nn.Module")
            if source.get("state_dict"):
                sd = torch.load(source["state_dict"], map_location="cpu", weights_only=True)
                if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
                    sd = sd["state_dict"]
                module.load_state_dict(sd)
        elif kind == "hf":
            module = FirstTensor(_load_hf(path, name))
        else:
            raise UserModelError(f"model {name!r}: unknown source kind {kind!r} (one of {', '.join(SOURCES)})")
    except UserModelError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's own loader errors: wrong format, damaged file
        what = SOURCES.get(str(kind), str(kind))
        raise UserModelError(f"model {name!r}: {kind}: {path or source.get('factory')} could not be loaded as "
                             f"{what} ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                             f"check the file and the source key ({', '.join(SOURCES)})") from None
    if source.get("first_tensor") and kind != "hf":  # the model returns a tuple/dict: serve its first tensor
        module = FirstTensor(eval_mode(module))
    return eval_mode(module)


def eval_mode(module: Any) -> Any:
    """``module.eval()`` where the module allows it (a torch.export program's module refuses train/eval: it was
    exported in the mode it runs in)."""
    try:
        module.eval()
    except (NotImplementedError, AttributeError):
        pass
    return module


def _load_hf(path: Path | None, name: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise UserModelError(f"model {name!r}: hf: loading a Hugging Face model needs the transformers package: "
                             "pip install transformers") from None
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls or transformers.AutoModel
    return cls.from_pretrained(str(path), local_files_only=True, torch_dtype="auto")


# ---- checking ------------------------------------------------------------------------------------------------------
def _input_from(name: str, entry: Mapping[str, Any], base: Path) -> TensorSpec:
    if entry.get("example") is not None:
        p = _path(name, "example", entry["example"], base, want_dir=False)
        try:
            x = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise UserModelError(f"model {name!r}: example {p}: not a .npy array ({type(e).__name__}: {e}); save "
                                 "one with numpy.save(path, batch)") from None
        if x.ndim < 1 or x.shape[0] < 1:
            raise UserModelError(f"model {name!r}: example {p} has shape {x.shape}: give a batch (batch, ...)")
        if str(x.dtype) not in DTYPES:
            raise UserModelError(f"model {name!r}: example {p} has dtype {x.dtype}; use one of {', '.join(DTYPES)}")
        lo, hi = float(x.min()), float(x.max())
        if x.dtype.kind in "iu":
            hi += 1  # integer values are drawn from [low, high)
        return TensorSpec(entry.get("input_name", "input"), tuple(int(s) for s in x.shape[1:]), str(x.dtype), lo,
                          hi if hi > lo else lo + 1)
    spec = entry.get("input")
    if not isinstance(spec, Mapping) or "shape" not in spec:
        raise UserModelError(f"model {name!r}: no input spec: give input: {{shape: [...], dtype: float32, low: 0, "
                             "high: 1}} (per-sample shape, without the batch), or example: FILE.npy")
    shape = spec["shape"]
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise UserModelError(f"model {name!r}: input.shape {shape!r} is not a list of positive ints (the "
                             "per-sample shape, e.g. [3, 224, 224])")
    dtype = str(spec.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise UserModelError(f"model {name!r}: input.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    integer = np.dtype(dtype).kind in "iu"
    low = spec.get("low") if spec.get("low") is not None else (0 if integer else -1.0)
    high = spec.get("high") if spec.get("high") is not None else (2 if integer else 1.0)
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and high > low):
        raise UserModelError(f"model {name!r}: input.low {low!r} / input.high {high!r}: need numbers with "
                             "low < high (values are drawn from [low, high))")
    return TensorSpec(str(spec.get("name", "input")), tuple(shape), dtype, float(low), float(high))


def _path(name: str, key: str, value: Any, base: Path, want_dir: bool) -> Path:
    try:
        return _checked_path(name, key, value, base, want_dir)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a loop of links...
        if isinstance(e, UserModelError):
            raise
        raise UserModelError(f"model {name!r}: {key}: {str(value)[:200]!r} is not a usable path ({e}); give the "
                             "path of an existing file") from None


def _checked_path(name: str, key: str, value: Any, base: Path, want_dir: bool) -> Path:
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = base / p
    if not p.exists():
        raise UserModelError(f"model {name!r}: {key}: {p} does not exist (relative paths are taken from the suite "
                             "file's directory)")
    if want_dir and not p.is_dir():
        raise UserModelError(f"model {name!r}: {key}: {p} is not a directory (a Hugging Face model directory "
                             "holds config.json and the weights)")
    if not want_dir and not p.is_file():
        raise UserModelError(f"model {name!r}: {key}: {p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise UserModelError(f"model {name!r}: {key}: {p} is not readable (permissions)")
    return p.resolve()


def parse_entry(entry: Mapping[str, Any], base: Path) -> UserModelSpec:
    """A suite's user-model entry (see the module doc) as a spec; paths resolved against ``base``.  Cheap checks
    only (files exist, the spec is well-formed); :func:`check_user_model` runs the model."""
    name = str(entry.get("name"))
    kinds = [k for k in SOURCES if entry.get(k) is not None]
    if len(kinds) != 1:
        raise UserModelError(f"model {name!r}: give exactly one source ({', '.join(SOURCES)}), got "
                             f"{', '.join(kinds) or 'none'}")
    kind = kinds[0]
    source: dict[str, Any] = {"kind": kind}
    if kind in ("torchscript", "export"):
        source["path"] = str(_path(name, kind, entry[kind], base, want_dir=False))
    elif kind == "hf":
        p = _path(name, kind, entry[kind], base, want_dir=True)
        if not (p / "config.json").is_file():
            raise UserModelError(f"model {name!r}: hf: {p} has no config.json: give the directory that "
                                 "save_pretrained wrote")
        source["path"] = str(p)
    else:
        source["factory"] = str(entry["factory"])
        if entry.get("state_dict") is not None:
            source["state_dict"] = str(_path(name, "state_dict", entry["state_dict"], base, want_dir=False))
    if entry.get("state_dict") is not None and kind != "factory":
        raise UserModelError(f"model {name!r}: state_dict only goes with factory (a {kind} source holds its weights)")
    inp = _input_from(name, entry, base)
    rtol, atol = entry.get("rtol", DEFAULT_RTOL), entry.get("atol", DEFAULT_ATOL)
    for key, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 1):
            raise UserModelError(f"model {name!r}: {key} {v!r} must be a number in [0, 1) (verification tolerance)")
    return user_spec(name, source, inp, rtol=float(rtol), atol=float(atol))


def check_user_model(spec: UserModelSpec, batch: int = 2) -> tuple[UserModelSpec, dict[str, Any]]:
    """Load the model and run its first call on ``batch`` example inputs; the spec with its output filled in,
    and what was understood (for ``servingbench models --check``)."""
    import torch

    module = spec.build()
    x = spec.example_inputs(batch, seed=1)
    try:
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
            if not isinstance(out, torch.Tensor):  # a tuple/dict output: servers take its first tensor
                spec = dataclasses.replace(spec, source={**spec.source, "first_tensor": True})
                module = FirstTensor(module)
                out = module(torch.from_numpy(x))
    except Exception as e:  # noqa: BLE001
        raise UserModelError(
            f"model {spec.name!r}: the first call with input {spec.input.dtype}{[batch, *spec.input.shape]} "
            f"(values in [{spec.input.low:g}, {spec.input.high:g})) failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}; fix input.shape / dtype / range in the suite "
            "(the per-sample shape, without the batch dimension)") from None
    if out.ndim < 1 or out.shape[0] != batch:
        raise UserModelError(f"model {spec.name!r}: the output has shape {tuple(out.shape)} for a batch of {batch}: "
                             "servingbench needs the batch as the first output dimension")
    if not out.is_floating_point():
        raise UserModelError(f"model {spec.name!r}: the output is {out.dtype}; servingbench compares float outputs "
                             "(return logits or scores)")
    params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else None
    output = TensorSpec("output", tuple(int(s) for s in out.shape[1:]), "float32")
    checked = dataclasses.replace(spec, output=output)
    return checked, {"name": spec.name, "source": spec.source["kind"],
                     "path": spec.source.get("path") or spec.source.get("factory"),
                     "input": f"{spec.input.dtype}{list(spec.input.shape)} in [{spec.input.low:g}, "
                              f"{spec.input.high:g})",
                     "output": f"float32{list(output.shape)} (from {out.dtype})", "parameters": params,
                     "rtol": spec.rtol, "atol": spec.atol}
