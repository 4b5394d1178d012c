"""MOSEC: one route per model in one MOSEC server (Rust HTTP front, Python worker processes), dynamic batching."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
from pathlib import Path

import numpy as np

from servingbench.adapters import _json
from servingbench.adapters.base import (
    Adapter, Capability, DecodeError, Deployment, LaunchSpec, ReadyProbe, RequestSpec, RunContext, Secrets,
    UnsupportedDeployment,
)
from servingbench.isolation import path_with_venv

SERVER = Path(__file__).parent / "servers" / "mosec_server.py"
MAX_SOCKET_DIR = 80  # unix socket paths are limited to ~107 bytes; mosec appends /ipc_<Stage>_<n>.socket


class MosecAdapter(Adapter):
    """MOSEC adapter.

    Knobs: ``workers`` (``append_worker(num=)`` of the model stage), ``max_batch_size`` and ``batch_timeout_ms``
    (``append_worker(max_batch_size=, max_wait_time=)``), ``threads``, ``model_format``, ``device``; options below.
    Requests are ``{"inputs": [...]}`` JSON to ``/predict/<model>`` (msgpack with ``serialization: msgpack``).
    """

    name = "mosec"
    distribution = "mosec"
    capabilities = frozenset({Capability.MULTI_MODEL, Capability.BATCHING, Capability.GPU})
    options_doc = {
        "pipeline": "true: two stages per route, Decode (request -> validated array) and Infer (the model), "
                    "each its own processes (MOSEC's CPU/GPU pipelining); default false",
        "decode_workers": "processes of the Decode stage when pipeline is on (default 1)",
        "serialization": "'json' (default, MOSEC's default mixin) or 'msgpack' (MsgpackMixin; raw little-endian "
                         "tensor bytes + shape + dtype)",
        "timeout_ms": "MOSEC --timeout: per-request service timeout in ms (default 60000; MOSEC's own is 3000)",
        "capacity": "MOSEC --capacity: queue length beyond which requests get 429 (default 1024)",
    }
    docs_claims = {
        "multi_model": "yes: several append_worker(..., route=...) in one Server",
        "batching": "yes: dynamic batching, max_batch_size / max_wait_time per stage",
        "gpu": "yes: workers place models themselves; multi-stage pipelines overlap CPU and GPU work",
        "manifest": "no (Python server script)",
        "auth": "no", "tls": "no (plain HTTP; put a proxy in front)", "response_cache": "no",
        "model_cache": "no", "grpc": "no", "load_unload": "no",
    }

    def __init__(self) -> None:
        self._msgpack = False

    def validate(self, deployment: Deployment) -> None:
        super().validate(deployment)
        ser = deployment.options.get("serialization", "json")
        if ser not in ("json", "msgpack"):
            raise UnsupportedDeployment(f"mosec: options.serialization is {ser!r}; valid: 'json', 'msgpack'")
        self._msgpack = ser == "msgpack"

    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        self.validate(deployment)
        opts = deployment.options
        cfg = {
            "workers": deployment.workers,
            "threads": deployment.threads,
            "device": deployment.device,
            "model_format": deployment.model_format,
            "max_batch_size": deployment.max_batch_size,
            # MOSEC takes whole milliseconds (>= 1) and falls back to its --wait default below 1.
            "max_wait_time_ms": max(1, round(deployment.batch_timeout_ms)),
            "pipeline": bool(opts.get("pipeline", False)),
            "decode_workers": int(opts.get("decode_workers", 1)),
            "serialization": opts.get("serialization", "json"),
            "models": [{"name": m.name, "dir": str(m.dir), "input": m.metadata()["input"]} for m in deployment.models],
        }
        (ctx.workdir / "deployment.json").write_text(json.dumps(cfg, indent=2))
        shutil.copy(SERVER, ctx.workdir / SERVER.name)
        (ctx.workdir / "command.txt").write_text(shlex.join(self._argv(deployment, ctx)) + "\n")

    def _ipc_dir(self, ctx: RunContext) -> Path:
        ipc = ctx.workdir / "ipc"
        return ipc if len(str(ipc)) <= MAX_SOCKET_DIR else Path(f"/tmp/sb-mosec-{ctx.marker[:12]}")

    def _argv(self, deployment: Deployment, ctx: RunContext) -> list[str]:
        opts = deployment.options
        return [
            ctx.python, str(ctx.workdir / SERVER.name), str(ctx.workdir / "deployment.json"),
            "--address", ctx.host, "--port", str(ctx.ports["http"]), "--path", str(self._ipc_dir(ctx)),
            "--timeout", str(int(opts.get("timeout_ms", 60000))), "--capacity", str(int(opts.get("capacity", 1024))),
            "--log-level", "warning",
        ]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        return [LaunchSpec(
            argv=self._argv(deployment, ctx),
            env=ctx.base_env(OMP_NUM_THREADS=str(deployment.threads),
                             PATH=path_with_venv(ctx.python, os.environ.get("PATH"))),  # ctx.python's venv first
            cwd=ctx.workdir,
            ready=ReadyProbe(path="/", body_contains="MOSEC"),  # the port opens once the workers are up
            stop_signal=signal.SIGTERM,  # graceful in ~1.5 s; MOSEC removes its IPC dir itself
            signal_group=False,
            grace_s=10.0,
            cleanup_globs=(str(self._ipc_dir(ctx)),),
            name="mosec",
        )]

    def request(self, model, batch, secrets: Secrets | None = None) -> RequestSpec:
        if self._msgpack:
            import msgpack

            x = np.ascontiguousarray(batch)
            body = msgpack.packb({"inputs": x.tobytes(), "dtype": x.dtype.str, "shape": list(x.shape)})
            ctype = "application/msgpack"
        else:
            body, ctype = _json.encode_inputs(batch), "application/json"
        return RequestSpec(method="POST", path=f"/predict/{model.name}", body=body, headers={"Content-Type": ctype})

    def decode(self, model, status, body):
        if not self._msgpack:
            return _json.decode_outputs(model, status, body, key="outputs")
        import msgpack

        if not 200 <= status < 300:
            raise DecodeError(f"HTTP {status}: {body[:200]!r}", kind="status")
        try:
            data = msgpack.unpackb(body)
            out = np.frombuffer(data["outputs"], dtype="<f4").reshape(data["shape"])
        except Exception as e:  # noqa: BLE001 - anything unparsable is a malformed answer
            raise DecodeError(f"response is not the msgpack tensor answer: {body[:80]!r}", kind="malformed") from e
        return _json.as_output(model, out)

