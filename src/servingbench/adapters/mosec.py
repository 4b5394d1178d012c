"""MOSEC: one route per model in one MOSEC server (Rust HTTP front, Python worker processes), dynamic batching."""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from servingbench.contract import (
    Adapter, AdapterOptions, Capability, Codec, DecodeError, Deployment, JsonCodec, LaunchSpec, ReadyProbe,
    RequestSpec, RunContext, Secrets, as_output, check_status, json_stream_request, model_entry, server_env,
    sse_tokens, write_command_file, write_deployment_json,
)

SERVER = Path(__file__).parent / "servers" / "mosec_server.py"
MAX_SOCKET_DIR = 80  # unix socket paths are limited to ~107 bytes; mosec appends /ipc_<Stage>_<n>.socket


class MosecOptions(AdapterOptions):
    pipeline: bool = Field(False, description="two stages per route, Decode (request -> validated array) and Infer "
                           "(the model), each its own processes (MOSEC's CPU/GPU pipelining)",
                           json_schema_extra={"tune": True})
    decode_workers: int = Field(1, ge=1, le=64, description="processes of the Decode stage when pipeline is on")
    serialization: Literal["json", "msgpack"] = Field(
        "json", description="'json' (MOSEC's default mixin) or 'msgpack' (MsgpackMixin; raw little-endian tensor "
                            "bytes + shape + dtype)")
    timeout_ms: int = Field(60000, ge=1, le=3_600_000, description="MOSEC --timeout: per-request service timeout",
                            json_schema_extra={"framework_default": 3000})
    capacity: int = Field(1024, ge=1, le=1_000_000, description="MOSEC --capacity: queue length beyond which "
                          "requests get 429")
    max_request_size: int = Field(
        256 * 2**20, ge=1024, le=2**31 - 1, description="MOSEC --max-request-size in bytes: larger bodies get 413. "
        "MOSEC's own 10 MiB rejects a JSON batch of four ResNet-50 224 px tensors (~12 MB)",
        json_schema_extra={"framework_default": 10 * 2**20})


@dataclass(frozen=True)
class MsgpackCodec(Codec):
    """MOSEC's MsgpackMixin: ``{"inputs": raw bytes, "dtype", "shape"}`` in, ``{"outputs", "shape"}`` out; an image
    or text payload: ``{"inputs": [raw JPEG bytes or strings]}``."""

    def request(self, model, batch, secrets: Secrets | None = None) -> RequestSpec:
        import msgpack

        x = np.ascontiguousarray(batch)
        if x.dtype.kind in "SU":  # msgpack carries binary as is: no base64
            body = msgpack.packb({"inputs": [bytes(b) if x.dtype.kind == "S" else str(b) for b in x.reshape(-1)]})
        else:
            body = msgpack.packb({"inputs": x.tobytes(), "dtype": x.dtype.str, "shape": list(x.shape)})
        return RequestSpec("POST", f"/predict/{model.name}", body, {"Content-Type": "application/msgpack"})

    def decode(self, model, status, body):
        import msgpack

        check_status(status, body)
        try:
            data = msgpack.unpackb(body)
            out = np.frombuffer(data["outputs"], dtype="<f4").reshape(data["shape"])
        except Exception as e:  # noqa: BLE001 - anything unparsable is a malformed answer
            raise DecodeError(f"response is not the msgpack tensor answer: {body[:80]!r}", kind="malformed") from e
        return as_output(model, out)


class MosecAdapter(Adapter):
    """MOSEC adapter.

    Knobs: ``workers`` (``append_worker(num=)`` of the model stage), ``max_batch_size`` and ``batch_timeout_ms``
    (``append_worker(max_batch_size=, max_wait_time=)``), ``threads``, ``model_format``, ``device``; options below.
    Requests are ``{"inputs": [...]}`` JSON to ``/predict/<model>`` (msgpack with ``serialization: msgpack``).
    """

    name = "mosec"
    distribution = "mosec"
    capabilities = frozenset({Capability.MULTI_MODEL, Capability.BATCHING, Capability.GPU, Capability.METRICS,
                              Capability.STREAMING})
    # MOSEC's own: one worker per stage, no batching, --wait 10 ms (max_wait_time when batching)
    framework_defaults = {**Adapter.framework_defaults, "batch_timeout_ms": 10.0}
    Options = MosecOptions
    docs_claims = {
        "multi_model": "yes: several append_worker(..., route=...) in one Server",
        "batching": "yes: dynamic batching, max_batch_size / max_wait_time per stage",
        "gpu": "yes: workers place models themselves; multi-stage pipelines overlap CPU and GPU work",
        "manifest": "no (Python server script)",
        "auth": "no", "tls": "no (plain HTTP; put a proxy in front)", "response_cache": "no",
        "model_cache": "no", "grpc": "no", "load_unload": "no",
        "metrics": "yes: Prometheus /metrics on the inference port",
        "streaming": "yes: an SSEWorker calls send_stream_event per token (server-sent events)",
    }

    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        opts = self.options_of(deployment)
        cfg = {
            "workers": deployment.workers,
            "threads": deployment.threads,
            "device": deployment.device,
            "model_format": deployment.model_format,
            "max_batch_size": deployment.max_batch_size,
            # MOSEC takes whole milliseconds (>= 1) and falls back to its --wait default below 1.
            "max_wait_time_ms": max(1, round(deployment.batch_timeout_ms)),
            "pipeline": opts.pipeline,
            "decode_workers": opts.decode_workers,
            "serialization": opts.serialization,
            "models": [model_entry(m) for m in deployment.models],
        }
        write_deployment_json(ctx, cfg)
        shutil.copy(SERVER, ctx.workdir / SERVER.name)
        write_command_file(ctx, [self._argv(deployment, ctx)])

    def _ipc_dir(self, ctx: RunContext) -> Path:
        ipc = ctx.workdir / "ipc"
        return ipc if len(str(ipc)) <= MAX_SOCKET_DIR else Path(f"/tmp/sb-mosec-{ctx.marker[:12]}")

    def _argv(self, deployment: Deployment, ctx: RunContext) -> list[str]:
        opts = self.options_of(deployment)
        return [
            ctx.python, str(ctx.workdir / SERVER.name), str(ctx.workdir / "deployment.json"),
            "--address", ctx.host, "--port", str(ctx.ports["http"]), "--path", str(self._ipc_dir(ctx)),
            "--timeout", str(opts.timeout_ms), "--capacity", str(opts.capacity),
            "--max-request-size", str(opts.max_request_size),
            "--log-level", "warning",
        ]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        return [LaunchSpec(
            argv=self._argv(deployment, ctx),
            env=server_env(ctx, deployment.threads),
            cwd=ctx.workdir,
            ready=ReadyProbe(path="/", body_contains="MOSEC"),  # the port opens once the workers are up
            stop_signal=signal.SIGTERM,  # graceful in ~1.5 s; MOSEC removes its IPC dir itself
            signal_group=False,
            grace_s=10.0,
            cleanup_globs=(str(self._ipc_dir(ctx)),),
            name="mosec",
        )]

    def overload_limits(self) -> dict:
        return {"capacity": 32}  # a short queue: MOSEC answers 429 beyond it

    def metrics_request(self, deployment: Deployment) -> RequestSpec:
        return RequestSpec("GET", "/metrics", b"", {}, port="http")

    def stream_request(self, deployment: Deployment, model, prompt, max_tokens: int, secrets) -> RequestSpec:
        return json_stream_request(f"/generate/{model.name}", prompt, max_tokens)

    def stream_tokens(self, chunks):
        return sse_tokens(chunks)  # data:{"token": id} per event (no space after the colon: axum)

    def codec(self, deployment: Deployment) -> Codec:
        return MsgpackCodec() if self.options_of(deployment).serialization == "msgpack" else JsonCodec()
