"""LitServe (Lightning AI): one LitAPI per model in one LitServer; API-key auth; TLS through uvicorn."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Literal

from pydantic import Field

from servingbench.contract import (
    Adapter, AdapterOptions, Capability, Deployment, JsonCodec, LaunchSpec, ReadyProbe, RequestSpec, RunContext,
    json_stream_request, server_env,
)

SERVER = Path(__file__).parent / "servers" / "litserve_server.py"
CODEC = JsonCodec(path="/predict/{model}", auth_header="X-API-Key")  # LIT_SERVER_API_KEY is checked on X-API-Key


class LitServeOptions(AdapterOptions):
    num_api_servers: int | None = Field(None, ge=1, le=64, description="uvicorn API server processes in front of "
                                        "the workers (LitServer num_api_servers; LitServe's default: one)",
                                        json_schema_extra={"framework_default": 1, "tune": {"low": 1, "high": 2}})
    devices: int | Literal["auto"] | None = Field(None, description="number of GPUs, or 'auto' (LitServer devices)")
    timeout_s: float | None = Field(None, gt=0, le=3600, description="request timeout inside LitServe "
                                    "(servingbench's default when unset: 60)",
                                    json_schema_extra={"framework_default": 30})


class LitServeAdapter(Adapter):
    name = "litserve"
    distribution = "litserve"
    capabilities = frozenset({
        Capability.MULTI_MODEL, Capability.BATCHING, Capability.AUTH, Capability.TLS, Capability.GPU,
        Capability.STREAMING,
    })
    Options = LitServeOptions
    open_paths = ("/health", "/info", "/docs", "/openapi.json")
    docs_claims = {
        "multi_model": "yes: several LitAPIs with distinct api_path in one LitServer",
        "batching": "yes: max_batch_size / batch_timeout",
        "auth": "yes: LIT_SERVER_API_KEY (X-API-Key) or LitAPI.authorize",
        "tls": "yes: ssl_keyfile/ssl_certfile passed to uvicorn",
        "gpu": "yes: accelerator='cuda', devices, workers_per_device",
        "manifest": "no (Python server script)",
        "response_cache": "no", "model_cache": "no", "grpc": "no", "load_unload": "no",
        "metrics": "no built-in endpoint (a user-written Prometheus logger callback)",
        "streaming": "yes: LitAPI(stream=True), predict and encode_response as generators",
    }

    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        cfg = {
            "host": ctx.host,
            "port": ctx.ports["http"],
            "accelerator": "cuda" if deployment.device == "cuda" else "cpu",
            "workers": deployment.workers,
            "threads": deployment.threads,
            "max_batch_size": deployment.max_batch_size,
            "batch_timeout_ms": deployment.batch_timeout_ms if deployment.max_batch_size > 1 else 0.0,
            "model_format": deployment.model_format,
            "models": [
                {"name": m.name, "dir": str(m.dir), "input_dtype": _input_dtype(m), "generative": m.generative}
                for m in deployment.models
            ],
            **self.options_of(deployment).model_dump(exclude_none=True),
        }
        if deployment.tls:
            cfg.update(ssl_keyfile=str(ctx.secrets.server_key), ssl_certfile=str(ctx.secrets.server_cert))
            if deployment.tls == "mutual":  # uvicorn options, passed through LitServer.run
                cfg.update(ssl_ca_certs=str(ctx.secrets.ca_cert), ssl_cert_reqs=2)  # ssl.CERT_REQUIRED
        (ctx.workdir / "deployment.json").write_text(json.dumps(cfg, indent=2))
        shutil.copy(SERVER, ctx.workdir / SERVER.name)

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        env = server_env(ctx, deployment.threads)
        headers = {}
        if deployment.auth and ctx.secrets.token:
            env["LIT_SERVER_API_KEY"] = ctx.secrets.token  # read by litserve at import time
            headers = CODEC.auth_headers(ctx.secrets)  # /health is gated too
        return [LaunchSpec(
            argv=[ctx.python, str(ctx.workdir / SERVER.name), str(ctx.workdir / "deployment.json")],
            env=env,
            cwd=ctx.workdir,
            ready=ReadyProbe(path="/health", body_contains="ok", headers=headers),
            # SIGINT to the leader is LitServe's graceful path; SIGTERM to the leader alone orphans workers.
            stop_signal=signal.SIGINT,
            signal_group=False,
            grace_s=10.0,
            name="litserve",
        )]

    def overload_limits(self) -> dict:
        return {"timeout_s": 1.0}  # LitServe answers 504 for a request that waited longer

    def codec(self, deployment: Deployment) -> JsonCodec:
        return CODEC

    def stream_request(self, deployment: Deployment, model, prompt, max_tokens: int, secrets) -> RequestSpec:
        return json_stream_request(f"/generate/{model.name}", prompt, max_tokens, CODEC.auth_headers(secrets))


def _input_dtype(art) -> str:
    return json.loads(Path(art.meta).read_text())["input"]["dtype"]
