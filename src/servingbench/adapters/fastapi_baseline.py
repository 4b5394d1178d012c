"""No-framework baselines: a plain FastAPI app under uvicorn, as people write one by hand.

* ``fastapi``: an ``async`` endpoint that hands inference to a thread pool (``anyio.to_thread.run_sync``, FastAPI's
  own thread pool: 40 threads unless ``pool_threads``), ``workers`` uvicorn processes.
* ``fastapi-blocking``: the common mistake: an ``async`` endpoint that runs inference inline, blocking the event
  loop (one request at a time per process).

Both speak the same JSON as LitServe (``POST /predict/<model>`` with ``{"inputs": ...}``), check a bearer token when
auth is on and serve TLS through uvicorn, so every workload and probe runs on them as on the frameworks.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from pydantic import Field

from servingbench.contract import (
    Adapter, AdapterOptions, Capability, Deployment, JsonCodec, LaunchSpec, ReadyProbe, RequestSpec, RunContext,
    json_stream_request, server_env,
)

SERVER = Path(__file__).parent / "servers" / "fastapi_server.py"
CODEC = JsonCodec(path="/predict/{model}")  # Authorization: Bearer <token>


class FastAPIOptions(AdapterOptions):
    pool_threads: int | None = Field(None, ge=1, le=1024, description="threads of the pool inference runs in "
                                     "(anyio's default limiter: 40)", json_schema_extra={"framework_default": 40})


class FastAPIAdapter(Adapter):
    name = "fastapi"
    distribution = "fastapi"
    requires = ("uvicorn",)
    baseline = True
    capabilities = frozenset({Capability.MULTI_MODEL, Capability.AUTH, Capability.TLS, Capability.GPU,
                              Capability.STREAMING})
    Options = FastAPIOptions
    open_paths = ("/health", "/docs", "/openapi.json")
    docs_claims = {
        "multi_model": "yes: one route per model (written by hand)",
        "auth": "yes: a bearer-token dependency (written by hand)",
        "tls": "yes: uvicorn ssl_keyfile / ssl_certfile",
        "gpu": "yes: the model is moved to the device by hand",
        "batching": "no", "manifest": "no", "response_cache": "no", "model_cache": "no", "grpc": "no",
        "load_unload": "no",
        "metrics": "no",
        "streaming": "yes: a StreamingResponse over an async generator (written by hand)",
    }
    blocking = False

    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        cfg = {
            "device": deployment.device, "threads": deployment.threads, "model_format": deployment.model_format,
            "blocking": self.blocking, "auth": bool(deployment.auth),
            "models": [{"name": m.name, "dir": str(m.dir)} for m in deployment.models],
            **self.options_of(deployment).model_dump(exclude_none=True),
        }
        (ctx.workdir / "deployment.json").write_text(json.dumps(cfg, indent=2))
        shutil.copy(SERVER, ctx.workdir / SERVER.name)

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        env = server_env(ctx, deployment.threads)
        env["SB_FASTAPI_CONFIG"] = str(ctx.workdir / "deployment.json")
        if deployment.auth and ctx.secrets.token:
            env["SB_FASTAPI_TOKEN"] = ctx.secrets.token  # environment, never argv
        argv = [ctx.python, "-m", "uvicorn", "fastapi_server:app", "--host", ctx.host, "--port",
                str(ctx.ports["http"]), "--workers", str(deployment.workers), "--log-level", "warning",
                "--no-access-log"]
        if deployment.tls:
            argv += ["--ssl-keyfile", str(ctx.secrets.server_key), "--ssl-certfile", str(ctx.secrets.server_cert)]
            if deployment.tls == "mutual":
                argv += ["--ssl-ca-certs", str(ctx.secrets.ca_cert), "--ssl-cert-reqs", "2"]
        return [LaunchSpec(argv=argv, env=env, cwd=ctx.workdir, ready=ReadyProbe(path="/health", body_contains="ok"),
                           stop_signal=signal.SIGTERM, signal_group=False, grace_s=10.0, name=self.name)]

    def codec(self, deployment: Deployment) -> JsonCodec:
        return CODEC

    def stream_request(self, deployment: Deployment, model, prompt, max_tokens: int, secrets) -> RequestSpec:
        return json_stream_request(f"/generate/{model.name}", prompt, max_tokens, CODEC.auth_headers(secrets))


class FastAPIBlockingAdapter(FastAPIAdapter):
    name = "fastapi-blocking"
    blocking = True
    docs_claims = {**FastAPIAdapter.docs_claims}
