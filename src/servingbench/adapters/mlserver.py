"""Seldon MLServer: a generated serving directory (settings.json + one model-settings.json per model), KServe V2."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
from pydantic import Field

from servingbench.adapters import v2
from servingbench.contract import (
    Adapter, AdapterOptions, AdapterUnavailable, Capability, Deployment, LaunchSpec, ReadyProbe, RequestSpec,
    RunContext, UnsupportedDeployment, server_env, sse_tokens, write_command_file,
)

RUNTIME = Path(__file__).parent / "servers" / "mlserver_runtime.py"
IMPLEMENTATION = "mlserver_runtime.ZooRuntime"
INPUT, OUTPUT = "input", "output"


class MLServerOptions(AdapterOptions):
    parallel_workers: int | None = Field(None, ge=0, le=256, description="override settings.parallel_workers (0: "
                                         "inference in the server process; unset: workers)",
                                         json_schema_extra={"framework_default": 1})
    cache_size: int = Field(100, ge=1, le=10_000_000, description="entries in MLServer's response cache "
                            "(settings.cache_size)")
    debug: bool = Field(False, description="settings.debug: DEBUG logging and per-request access logs",
                        json_schema_extra={"framework_default": True})
    gzip: bool = Field(True, description="settings.gzip_enabled (requests ask for identity encoding anyway)")


class MLServerAdapter(Adapter):
    """MLServer with a custom ``MLModel`` runtime (``servers/mlserver_runtime.py``, copied into the workdir).

    Knobs: ``workers`` -> ``parallel_workers`` (inference processes shared by all models; ``options.
    parallel_workers: 0`` runs inference in the server process); ``threads`` -> torch threads per worker;
    ``max_batch_size > 1`` -> adaptive batching (``max_batch_size`` requests, ``max_batch_time`` = batch_timeout);
    ``cache`` -> MLServer's in-process response cache (``cache_enabled`` in settings and model settings).

    ``parallel_workers >= 1`` relies on the lock pinning ``uvloop<0.22``: with uvloop 0.23 every inference worker
    dies at start (``There is no current event loop in thread 'MainThread'``) and is restarted forever (the other
    fix, ``parallel_workers: 0``, is kept as an option).  Verified with uvloop 0.21.0 and parallel_workers 1 and 2.

    The serving directory is started by absolute path (``mlserver start /ABS/DIR``): a path that does not exist
    makes MLServer start silently with defaults on 0.0.0.0:8080, so prepare() refuses anything but an absolute,
    existing directory whose settings read back with the requested ports.
    The exact command line is written to ``<workdir>/command.txt``.
    """

    name = "mlserver"
    distribution = "mlserver"
    capabilities = frozenset({
        Capability.MULTI_MODEL, Capability.BATCHING, Capability.RESPONSE_CACHE, Capability.MANIFEST,
        Capability.GRPC, Capability.GPU, Capability.LOAD_UNLOAD, Capability.METRICS, Capability.STREAMING,
    })
    Options = MLServerOptions
    docs_claims = {
        "multi_model": "yes: every model folder in the repository is served",
        "batching": "yes: adaptive batching (max_batch_size, max_batch_time)",
        "response_cache": "yes: cache_enabled / cache_size (in-process, keyed by the request)",
        "manifest": "yes: settings.json + model-settings.json, `mlserver start DIR`",
        "grpc": "yes: KServe V2 gRPC",
        "gpu": "runtime-dependent (the runtime places the model)",
        "load_unload": "yes: /v2/repository/models/NAME/load|unload",
        "metrics": "yes: Prometheus /metrics on metrics_port",
        "auth": "no", "tls": "no", "model_cache": "no",
        "streaming": ("yes: MLModel.predict_stream behind POST /v2/models/{m}/infer_stream (server-sent events), "
                      "only with parallel_workers: 0"),
    }

    # ---- deployment -------------------------------------------------------------------------------------------
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        root = ctx.workdir.resolve()
        opts = self.options_of(deployment)
        settings = {
            "host": ctx.host,
            "http_port": ctx.ports["http"],
            "grpc_port": ctx.ports["grpc"],
            "metrics_port": ctx.ports["metrics"],
            # MLServer streams (predict_stream) only in the server process: a generative model forces 0 when unset.
            "parallel_workers": (opts.parallel_workers if opts.parallel_workers is not None else
                                 0 if any(m.generative for m in deployment.models) else deployment.workers),
            # Both default to the cwd; keep them in the deployment's directory.
            "metrics_dir": str(root / "run" / "metrics"),
            "environments_dir": str(root / "run" / "envs"),
            "debug": opts.debug,
            "gzip_enabled": opts.gzip,
            "load_models_at_startup": True,
            "cache_enabled": deployment.cache,
        }
        if deployment.cache:
            settings["cache_size"] = opts.cache_size
        (root / "run" / "metrics").mkdir(parents=True, exist_ok=True)
        (root / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        shutil.copy(RUNTIME, root / "mlserver_runtime.py")
        for art in deployment.models:
            folder = root / art.name
            folder.mkdir(exist_ok=True)
            (folder / "model-settings.json").write_text(json.dumps(self.model_settings(deployment, art), indent=2))
        self._check(root, settings)
        write_command_file(ctx, [self._argv(ctx)], comment="start this deployment by hand:")

    def model_settings(self, deployment: Deployment, art) -> dict:
        meta = json.loads(Path(art.meta).read_text())
        ms: dict = {
            "name": art.name,
            "implementation": IMPLEMENTATION,
            "parameters": {
                "uri": str(Path(art.dir).resolve()),
                "extra": {
                    "model_format": deployment.model_format, "threads": deployment.threads,
                    "device": deployment.device, "input_name": INPUT, "output_name": OUTPUT,
                    "input_dtype": meta["input"]["dtype"], "input_shape": list(meta["input"]["shape"]),
                },
            },
            # an image or text payload: one BYTES element (JPEG file or string) per row, preprocessed by the runtime
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1, 1]}
                       if meta.get("payload", "tensor") != "tensor" else
                       {"name": INPUT, "datatype": v2.datatype(meta["input"]["dtype"]),
                        "shape": [-1, *meta["input"]["shape"]]}],
            "outputs": [{"name": OUTPUT, "datatype": v2.datatype(meta["output"]["dtype"]),
                         "shape": [-1, *meta["output"]["shape"]]}],
            "cache_enabled": deployment.cache,
        }
        if deployment.max_batch_size > 1:
            ms["max_batch_size"] = deployment.max_batch_size
            ms["max_batch_time"] = deployment.batch_timeout_ms / 1000.0
        return ms

    @staticmethod
    def _check(root: Path, expected: dict) -> None:
        """Read the directory back the way ``mlserver start`` will: wrong ports or paths fail here, loudly.

        (MLServer's own pydantic loaders are not used: importing mlserver in the harness process clashes with
        tritonclient's protobuf registrations.)
        """
        if not root.is_absolute() or not (root / "settings.json").is_file():
            raise UnsupportedDeployment(f"mlserver: {root} is not an absolute directory with settings.json")
        s = json.loads((root / "settings.json").read_text())
        wrong = {k: s.get(k) for k in ("host", "http_port", "grpc_port", "metrics_port") if s.get(k) != expected[k]}
        if wrong:
            raise UnsupportedDeployment(f"mlserver: settings.json has {wrong}, expected {expected}")
        for path in root.glob("*/model-settings.json"):
            ms = json.loads(path.read_text())
            if ms.get("implementation") != IMPLEMENTATION or not Path(ms["parameters"]["uri"]).is_dir():
                raise UnsupportedDeployment(f"mlserver: {path} names no runtime or no artifact directory")

    def _argv(self, ctx: RunContext) -> list[str]:
        exe = Path(ctx.python).parent / "mlserver"  # the console script of ctx.python's venv
        if not exe.is_file():
            # PATH only for the harness's own interpreter: an isolated one (suite `interpreters:`) must bring its CLI.
            found = shutil.which("mlserver") if ctx.python == sys.executable else None
            if not found:
                raise AdapterUnavailable(f"mlserver: no `mlserver` command next to {ctx.python} or on PATH")
            exe = Path(found)
        return [str(exe), "start", str(ctx.workdir.resolve())]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        env = server_env(ctx, deployment.threads)
        for k in [k for k in env if k.startswith("MLSERVER_")]:  # the settings files are the only configuration
            del env[k]
        return [LaunchSpec(
            argv=self._argv(ctx), env=env, cwd=ctx.workdir.resolve(),
            ready=ReadyProbe(path="/v2/health/ready"),  # 200 once every model folder has loaded
            stop_signal=signal.SIGTERM, signal_group=False,  # MLServer stops its workers itself
            grace_s=15.0,
            name="mlserver",
        )]

    def metrics_request(self, deployment: Deployment) -> RequestSpec:
        return RequestSpec("GET", "/metrics", b"", {}, port="metrics")

    def stream_request(self, deployment: Deployment, model, prompt, max_tokens: int, secrets) -> RequestSpec:
        body, headers = v2.infer_request(model, np.asarray([prompt]), INPUT, OUTPUT)
        doc = {**json.loads(body), "parameters": {"max_tokens": int(max_tokens)}}
        return RequestSpec("POST", f"/v2/models/{model.name}/infer_stream", json.dumps(doc).encode(), headers)

    def stream_tokens(self, chunks):
        return sse_tokens(chunks, extract=lambda r: [int(t) for t in r["outputs"][0]["data"]])

    def codec(self, deployment: Deployment) -> v2.V2Codec:
        # MLServer's REST endpoint does not take Triton's binary tensor extension: JSON only.
        return v2.V2Codec(INPUT, OUTPUT, binary=False)

    # ---- hooks for the feature probes -----------------------------------------------------------------------
    native_manifest = ("settings.json", "*/model-settings.json")

    def manifest_command(self, deployment: Deployment, ctx: RunContext) -> list[str]:
        return self._argv(ctx)

    def grpc_infer(self, deployment: Deployment, ctx: RunContext, model, batch):
        """Inference over MLServer's V2 gRPC endpoint (tritonclient.grpc speaks it)."""
        return v2.grpc_infer(f"127.0.0.1:{ctx.ports['grpc']}", model, batch, INPUT, OUTPUT)
