"""Public helpers for what every adapter's ``prepare``/``launch`` repeats: the server environment, the
hand-start description in the workdir, and the model metadata a server script needs."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

from servingbench.contract.types import RunContext


def path_with_venv(python: str, path: str | None) -> str:
    """``PATH`` with ``python``'s bin directory first, so console scripts and stubs that look ``python3`` up on
    PATH (Triton's Python-backend stub, Ray workers, MLServer's ``mlserver``) come from the same virtualenv."""
    bin_dir = str(Path(python).parent)
    rest = [p for p in (path or os.defpath).split(os.pathsep) if p and p != bin_dir]
    return os.pathsep.join([bin_dir, *rest])


def server_env(ctx: RunContext, threads: int, **extra: str) -> dict[str, str]:
    """The environment for a server process: :meth:`RunContext.base_env` (marker, no proxies, unbuffered), torch
    and BLAS threads set to ``threads``, ``ctx.python``'s virtualenv first on ``PATH``, then ``extra``."""
    env = ctx.base_env(OMP_NUM_THREADS=str(threads))
    env["PATH"] = path_with_venv(ctx.python, env.get("PATH"))
    env.update(extra)
    return env


def write_command_file(ctx: RunContext, commands: Iterable[list[str]], env: Mapping[str, str] | None = None,
                       comment: str = "") -> Path:
    """Write ``<workdir>/command.txt``: how to start this deployment by hand (the results keep the workdir).

    ``env``: variables to show before the first command (never secrets: they are redacted by the caller).
    """
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    prefix = [f"{k}={v}" for k, v in (env or {}).items()]
    for i, argv in enumerate(commands):
        lines.append(shlex.join((prefix if i == 0 else []) + list(argv)))
    path = ctx.workdir / "command.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def model_entry(art: Any, **extra: Any) -> dict[str, Any]:
    """What a server script needs to load one model: name, artifact dir, input/output tensor specs, and
    ``generative`` (a next-token model the server also decodes and streams: ``Adapter.stream_request``)."""
    meta = art.metadata()
    return {"name": art.name, "dir": str(art.dir), "input": meta["input"], "output": meta["output"],
            "generative": art.generative, **extra}


def write_deployment_json(ctx: RunContext, cfg: Mapping[str, Any], name: str = "deployment.json") -> Path:
    """Write the server script's configuration into the workdir (kept with the results as the manifest)."""
    path = ctx.workdir / name
    path.write_text(json.dumps(cfg, indent=2))
    return path
