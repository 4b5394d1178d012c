"""Ray Serve: applications from a Serve config file, on a private Ray head with its ports pinned to loopback.

Pinned: every port of the head (GCS, raylet, object manager, agents, metrics, Ray client, workers) and the Serve proxy.
Each Serve replica's inter-deployment gRPC server binds ``[::]:0`` in Ray 2.55.1, hard-coded in
``ray/serve/_private/replica.py`` (``_on_initialized``), with no option or environment variable to change it; our
application module rebinds it to 127.0.0.1 inside the replica (``rayserve_app.bind_replica_grpc``, switched on by
``SERVINGBENCH_RAY_REPLICA_GRPC_HOST``), so on the private head every listener is loopback (a random port per
replica: the only port not chosen by us).  On an existing cluster (``ray_address``) replicas bind as Ray decides.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import signal
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from servingbench.contract import (
    Adapter, AdapterOptions, Capability, Deployment, JsonCodec, LaunchSpec, ReadyProbe, RequestSpec, RunContext,
    UnsupportedDeployment, json_stream_request, model_entry, server_env,
)

APP = "servingbench.adapters.servers.rayserve_app:build"
DRIVER = "servingbench.adapters.servers.rayserve_driver"
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
# `ray start` flag -> our port name.  The head's other listeners: the worker ports (--worker-port-list) and two
# metrics ports that only environment variables set (AUTOSCALER_METRIC_PORT, DASHBOARD_METRIC_PORT).
PORT_FLAGS = {
    "--port": "ray-gcs", "--node-manager-port": "ray-node-manager", "--object-manager-port": "ray-object-manager",
    "--ray-client-server-port": "ray-client", "--dashboard-agent-listen-port": "ray-agent-http",
    "--dashboard-agent-grpc-port": "ray-agent-grpc", "--runtime-env-agent-port": "ray-runtime-env",
    "--metrics-export-port": "ray-metrics",
}


class RayServeOptions(AdapterOptions):
    multiplex: bool | None = Field(None, description="true: one application whose replicas load models on demand "
                                   "(@serve.multiplexed LRU), chosen by the serve_multiplexed_model_id header; "
                                   "unset: one application per model (true when cache: true)")
    max_models_per_replica: int | None = Field(None, ge=1, le=1024, description="@serve.multiplexed "
                                               "max_num_models_per_replica (unset: all models)")
    max_ongoing_requests: int = Field(64, ge=1, le=100_000, description="per replica (Ray's default 5 halves "
                                      "throughput here)", json_schema_extra={"framework_default": 5,
                                                                            "tune": {"low": 1, "high": 256, "log": True}})
    max_queued_requests: int = Field(-1, ge=-1, le=1_000_000, description="requests a handle or proxy queues "
                                     "beyond max_ongoing_requests before answering 503 (-1: no limit, Ray's default)")
    num_cpus_per_replica: float | None = Field(None, ge=0, le=1024, description="ray_actor_options.num_cpus "
                                               "(unset: threads)")
    num_gpus_per_replica: float | None = Field(None, ge=0, le=64, description="ray_actor_options.num_gpus on cuda "
                                               "(unset: 1 / number of replicas)")
    ray_address: str | None = Field(None, min_length=1, description="deploy onto an existing Ray cluster (GCS "
                                    "address) instead of a private head; only our applications are deleted on "
                                    "stop; the cluster's Serve proxy must be free to bind 127.0.0.1:<our port>")
    object_store_mb: int = Field(512, ge=64, le=1_048_576, description="object store size of the private head")

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_limit(cls, v: int) -> int:
        if v == 0:
            raise ValueError("0 is not a queue limit: use -1 for no limit or a positive number")
        return v

    def multiplexed(self, deployment: Deployment) -> bool:
        return bool(deployment.cache if self.multiplex is None else self.multiplex)


class RayServeAdapter(Adapter):
    """Ray Serve adapter.

    Knobs: ``workers`` (``num_replicas`` per application), ``max_batch_size``/``batch_timeout_ms``
    (``@serve.batch`` through ``user_config``), ``threads`` (also the replicas' default ``num_cpus``),
    ``model_format``, ``device`` (fractional ``num_gpus``), ``tls`` (``http_options`` ssl_*), ``cache``
    (= ``multiplex``); options below.  Requests: ``{"inputs": [...]}`` JSON to ``/predict/<model>``.
    """

    name = "rayserve"
    distribution = "ray"
    # The Serve config YAML is the manifest; starting it by hand needs a Ray cluster first (see command.txt).
    native_manifest = ("serve_config.yaml",)
    capabilities = frozenset({
        Capability.MULTI_MODEL, Capability.BATCHING, Capability.MODEL_CACHE, Capability.MANIFEST, Capability.TLS,
        Capability.GPU, Capability.METRICS, Capability.STREAMING,
    })
    # Ray's own: one replica, @serve.batch off (its batch_wait_timeout_s default 0.01 when on)
    framework_defaults = {**Adapter.framework_defaults, "batch_timeout_ms": 10.0}
    Options = RayServeOptions
    docs_claims = {
        "multi_model": "yes: several applications (route_prefix each) or model multiplexing",
        "batching": "yes: @serve.batch (max_batch_size, batch_wait_timeout_s)",
        "model_cache": "yes: @serve.multiplexed keeps an LRU of models per replica, loads on demand",
        "manifest": "yes: Serve config YAML (serve run / serve deploy)",
        "tls": "yes: http_options ssl_keyfile / ssl_certfile",
        "gpu": "yes: ray_actor_options num_gpus (fractional)",
        "auth": "no (a FastAPI ingress with a dependency can add it)", "response_cache": "no",
        "grpc": "yes: gRPC proxy with user-compiled protos (not used here)",
        "load_unload": "partly: applications are added/removed with serve.run / serve.delete or a new config",
        "metrics": "yes: Prometheus metrics through Ray's metrics agent (--metrics-export-port)",
        "streaming": "yes: a deployment returns a Starlette StreamingResponse over a generator",
    }

    def validate(self, deployment: Deployment) -> None:
        super().validate(deployment)
        if deployment.tls == "mutual":
            raise UnsupportedDeployment("rayserve: http_options has no option to require client certificates")
        if deployment.cache and not self.options_of(deployment).multiplexed(deployment):
            raise UnsupportedDeployment("rayserve: cache: true is the multiplexing model cache; multiplex is false")

    # ---- manifest ----------------------------------------------------------------------------------------------
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        import yaml

        manifest = ctx.workdir / "serve_config.yaml"
        manifest.write_text(
            "# Ray Serve config written by servingbench: the deployment's manifest.\n"
            "# Start it by hand: see command.txt (a private loopback Ray head, then `serve run --address ... "
            "serve_config.yaml`),\n# or just `serve run serve_config.yaml` (a throwaway local Ray, its ports not "
            "pinned).\n" + yaml.safe_dump(self._serve_config(deployment, ctx), sort_keys=False))
        driver = {"serve_config": str(manifest)}
        by_hand = ["# by hand, the same deployment in two steps:"]
        if self.options_of(deployment).ray_address:
            driver["address"] = self.options_of(deployment).ray_address
            by_hand.append("# (`serve run` deploys declaratively: it replaces every application on that cluster)")
        else:
            driver.update(gcs_port=ctx.ports["ray-gcs"], ray_start=self._ray_start(deployment, ctx))
            env = {k: v for k, v in self._env(deployment, ctx).items() if k.startswith(("RAY", "AUTOSC", "DASHB", "SERVINGBENCH_RAY"))}
            by_hand.append(shlex.join([f"{k}={v}" for k, v in env.items()] + driver["ray_start"]) + " &")
        by_hand.append(shlex.join(["serve", "run", "--address", driver.get("address") or
                                   f"127.0.0.1:{driver['gcs_port']}", str(manifest)]))
        (ctx.workdir / "ray_driver.json").write_text(json.dumps(driver, indent=2))
        (ctx.workdir / "command.txt").write_text("\n".join([shlex.join(self._argv(ctx)), "", *by_hand]) + "\n")

    def _replicas(self, deployment: Deployment) -> tuple[int, float]:
        """(replicas in all, num_cpus per replica)."""
        opts = self.options_of(deployment)
        n = deployment.workers * (1 if opts.multiplexed(deployment) else len(deployment.models))
        return n, float(deployment.threads if opts.num_cpus_per_replica is None else opts.num_cpus_per_replica)

    def _serve_config(self, deployment: Deployment, ctx: RunContext) -> dict:
        opts = self.options_of(deployment)
        multiplex = opts.multiplexed(deployment)
        n_replicas, cpus = self._replicas(deployment)
        batching = deployment.max_batch_size > 1
        dep = {
            "name": "ZooModel",
            "num_replicas": deployment.workers,
            "max_ongoing_requests": opts.max_ongoing_requests,
            **({"max_queued_requests": opts.max_queued_requests} if opts.max_queued_requests != -1 else {}),
            "ray_actor_options": {
                "num_cpus": cpus,
                "num_gpus": (1 / n_replicas if opts.num_gpus_per_replica is None else opts.num_gpus_per_replica)
                if deployment.device == "cuda"
                else 0.0,
            },
            "user_config": {"max_batch_size": deployment.max_batch_size,
                            "batch_wait_timeout_s": deployment.batch_timeout_ms / 1000 if batching else 0.0},
        }
        settings = {
            "model_format": deployment.model_format, "device": deployment.device, "threads": deployment.threads,
            "multiplex": multiplex,
            "max_models_per_replica": opts.max_models_per_replica or len(deployment.models),
        }
        models = [model_entry(m) for m in deployment.models]
        groups = [("zoo", "/predict", models)] if multiplex else [
            (m["name"], f"/predict/{m['name']}", [m]) for m in models]
        http = {"host": ctx.host, "port": ctx.ports["http"]}
        if deployment.tls:
            http.update(ssl_keyfile=str(ctx.secrets.server_key), ssl_certfile=str(ctx.secrets.server_cert))
        return {
            "proxy_location": "HeadOnly",
            "http_options": http,
            "applications": [{
                "name": name, "route_prefix": prefix, "import_path": APP,
                "args": {"models": group, "settings": settings,
                         "options": {k: v for k, v in dep.items() if k != "name"}},
                # Ray logs every request at INFO to files by default: CPU on every call.  Warnings only, as the
                # other adapters do.
                "logging_config": {"log_level": "WARNING", "enable_access_log": False},
                "deployments": [dep],
            } for name, prefix, group in groups],
        }

    def _temp_dir(self, ctx: RunContext) -> str:
        # Ray puts unix sockets under <temp>/session_<date>_<pid>/sockets/: the ~107-byte limit needs a short root.
        return f"/tmp/sb-ray-{(ctx.marker or hashlib.sha1(str(ctx.workdir).encode()).hexdigest())[:12]}"

    def _ray_start(self, deployment: Deployment, ctx: RunContext) -> list[str]:
        ray = str(Path(ctx.python).parent / "ray")
        n_replicas, cpus = self._replicas(deployment)
        # Logical CPUs are only scheduling tokens: enough for every replica even on a 2-core host.
        num_cpus = max(os.cpu_count() or 1, math.ceil(n_replicas * cpus))
        workers = [str(ctx.ports[f"ray-worker-{i}"]) for i in range(2 * num_cpus + 2 * n_replicas + 12)]
        argv = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", self._temp_dir(ctx),
                "--num-cpus", str(num_cpus), "--worker-port-list", ",".join(workers),
                "--object-store-memory", str(self.options_of(deployment).object_store_mb * 2**20)]
        for flag, port in PORT_FLAGS.items():
            argv += [flag, str(ctx.ports[port])]
        return argv

    def _env(self, deployment: Deployment, ctx: RunContext) -> dict[str, str]:
        env = server_env(ctx, deployment.threads, RAY_worker_niceness="0", RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        if not self.options_of(deployment).ray_address:
            env.update(
                # Without this, `--node-ip-address 127.0.0.1` is silently replaced by the host's external address
                # (services.resolve_ip_for_localhost) and the gRPC servers bind 0.0.0.0 / [::].
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                # Each replica's inter-deployment gRPC server: [::]:0 in Ray, 127.0.0.1 with this (rayserve_app).
                SERVINGBENCH_RAY_REPLICA_GRPC_HOST="127.0.0.1",
                AUTOSCALER_METRIC_PORT=str(ctx.ports["ray-autoscaler-metrics"]),  # fixed 44217 otherwise
                DASHBOARD_METRIC_PORT=str(ctx.ports["ray-dashboard-metrics"]),  # fixed 44227 otherwise
            )
        return env

    def _argv(self, ctx: RunContext) -> list[str]:
        return [ctx.python, "-m", DRIVER, str(ctx.workdir / "ray_driver.json")]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        last_route = "/predict" if self.options_of(deployment).multiplexed(deployment) else f"/predict/{deployment.models[-1].name}"
        return [LaunchSpec(
            argv=self._argv(ctx),
            env=self._env(deployment, ctx),
            cwd=ctx.workdir,
            # /-/routes lists an application as soon as it is deployed, ~3 s before its replicas answer; the
            # harness's verification retries 404/5xx until the deadline, so the model route is the real gate.
            ready=ReadyProbe(path="/-/routes", body_contains=f'"{last_route}"', timeout_s=240.0),
            # SIGTERM to the driver only: it runs serve.shutdown(), ray.shutdown() and stops `ray start`.
            # A group SIGTERM kills the head under serve.shutdown(), which then hangs.
            stop_signal=signal.SIGTERM,
            signal_group=False,
            grace_s=20.0,
            cleanup_globs=() if self.options_of(deployment).ray_address else (self._temp_dir(ctx),),
            name="rayserve",
        )]

    # ---- requests ------------------------------------------------------------------------------------------------
    def overload_limits(self) -> dict:
        return {"max_queued_requests": 32}  # Ray Serve answers 503 beyond it

    def metrics_request(self, deployment: Deployment) -> RequestSpec:
        return RequestSpec("GET", "/metrics", b"", {}, port="ray-metrics")

    def stream_request(self, deployment: Deployment, model, prompt, max_tokens: int, secrets) -> RequestSpec:
        req = self.codec(deployment).request(model, np.asarray([prompt]), secrets)  # the model's route and headers
        return json_stream_request(req.path + "/generate", prompt, max_tokens, req.headers, port=req.port)

    def codec(self, deployment: Deployment) -> JsonCodec:
        if self.options_of(deployment).multiplexed(deployment):  # one route; the header picks the model
            return JsonCodec(path="/predict/{model}", model_header=MULTIPLEX_HEADER)
        return JsonCodec(path="/predict/{model}")
