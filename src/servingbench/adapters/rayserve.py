"""Ray Serve: applications from a Serve config file, on a private Ray head with its ports pinned to loopback.

Pinned: every port of the head (GCS, raylet, object manager, agents, metrics, Ray client, workers) and the Serve proxy.
Not pinnable in Ray 2.55.1: each Serve replica's inter-deployment gRPC server, which binds ``[::]:0`` (hard-coded
in ``ray/serve/_private/replica.py``), so one random port per replica listens on every interface.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import signal
from pathlib import Path

from servingbench.adapters import _json
from servingbench.adapters.base import (
    Adapter, Capability, Deployment, LaunchSpec, ReadyProbe, RequestSpec, RunContext, Secrets, UnsupportedDeployment,
)
from servingbench.isolation import path_with_venv

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
        Capability.GPU,
    })
    options_doc = {
        "multiplex": "true: one application whose replicas load models on demand (@serve.multiplexed LRU), "
                     "chosen by the serve_multiplexed_model_id header; default: one application per model "
                     "(true when cache: true)",
        "max_models_per_replica": "@serve.multiplexed max_num_models_per_replica (default: all models)",
        "max_ongoing_requests": "per replica (default 64; Ray's default 5 halves throughput)",
        "num_cpus_per_replica": "ray_actor_options.num_cpus (default: threads)",
        "num_gpus_per_replica": "ray_actor_options.num_gpus on cuda (default: 1 / number of replicas)",
        "ray_address": "deploy onto an existing Ray cluster (GCS address) instead of a private head; only our "
                       "applications are deleted on stop; the cluster's Serve proxy must be free to bind "
                       "127.0.0.1:<our port> (an already running Serve keeps its own http_options)",
        "object_store_mb": "object store size of the private head (default 512)",
    }
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
    }

    def __init__(self) -> None:
        self._multiplex = False

    def validate(self, deployment: Deployment) -> None:
        super().validate(deployment)
        if deployment.tls == "mutual":
            raise UnsupportedDeployment("rayserve: http_options has no option to require client certificates")
        self._multiplex = bool(deployment.options.get("multiplex", deployment.cache))
        if deployment.cache and not self._multiplex:
            raise UnsupportedDeployment("rayserve: cache: true is the multiplexing model cache; multiplex is false")

    # ---- manifest ----------------------------------------------------------------------------------------------
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        import yaml

        self.validate(deployment)
        manifest = ctx.workdir / "serve_config.yaml"
        manifest.write_text(
            "# Ray Serve config written by servingbench: the deployment's manifest.\n"
            "# Start it by hand: see command.txt (a private loopback Ray head, then `serve run --address ... "
            "serve_config.yaml`),\n# or just `serve run serve_config.yaml` (a throwaway local Ray, its ports not "
            "pinned).\n" + yaml.safe_dump(self._serve_config(deployment, ctx), sort_keys=False))
        driver = {"serve_config": str(manifest)}
        by_hand = ["# by hand, the same deployment in two steps:"]
        if deployment.options.get("ray_address"):
            driver["address"] = deployment.options["ray_address"]
            by_hand.append("# (`serve run` deploys declaratively: it replaces every application on that cluster)")
        else:
            driver.update(gcs_port=ctx.ports["ray-gcs"], ray_start=self._ray_start(deployment, ctx))
            env = {k: v for k, v in self._env(deployment, ctx).items() if k.startswith(("RAY", "AUTOSC", "DASHB"))}
            by_hand.append(shlex.join([f"{k}={v}" for k, v in env.items()] + driver["ray_start"]) + " &")
        by_hand.append(shlex.join(["serve", "run", "--address", driver.get("address") or
                                   f"127.0.0.1:{driver['gcs_port']}", str(manifest)]))
        (ctx.workdir / "ray_driver.json").write_text(json.dumps(driver, indent=2))
        (ctx.workdir / "command.txt").write_text("\n".join([shlex.join(self._argv(ctx)), "", *by_hand]) + "\n")

    def _replicas(self, deployment: Deployment) -> tuple[int, float]:
        """(replicas in all, num_cpus per replica)."""
        n = deployment.workers * (1 if self._multiplex else len(deployment.models))
        return n, float(deployment.options.get("num_cpus_per_replica", deployment.threads))

    def _serve_config(self, deployment: Deployment, ctx: RunContext) -> dict:
        opts = deployment.options
        n_replicas, cpus = self._replicas(deployment)
        batching = deployment.max_batch_size > 1
        dep = {
            "name": "ZooModel",
            "num_replicas": deployment.workers,
            "max_ongoing_requests": int(opts.get("max_ongoing_requests", 64)),
            "ray_actor_options": {
                "num_cpus": cpus,
                "num_gpus": float(opts.get("num_gpus_per_replica", 1 / n_replicas)) if deployment.device == "cuda"
                else 0.0,
            },
            "user_config": {"max_batch_size": deployment.max_batch_size,
                            "batch_wait_timeout_s": deployment.batch_timeout_ms / 1000 if batching else 0.0},
        }
        settings = {
            "model_format": deployment.model_format, "device": deployment.device, "threads": deployment.threads,
            "multiplex": self._multiplex,
            "max_models_per_replica": int(opts.get("max_models_per_replica", len(deployment.models))),
        }
        models = [{"name": m.name, "dir": str(m.dir), "input": m.metadata()["input"]} for m in deployment.models]
        groups = [("zoo", "/predict", models)] if self._multiplex else [
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
                "--object-store-memory", str(int(deployment.options.get("object_store_mb", 512)) * 2**20)]
        for flag, port in PORT_FLAGS.items():
            argv += [flag, str(ctx.ports[port])]
        return argv

    def _env(self, deployment: Deployment, ctx: RunContext) -> dict[str, str]:
        env = ctx.base_env(OMP_NUM_THREADS=str(deployment.threads), RAY_worker_niceness="0",
                           RAY_USAGE_STATS_ENABLED="0", PATH=path_with_venv(ctx.python, os.environ.get("PATH")))
        env.pop("RAY_ADDRESS", None)
        if not deployment.options.get("ray_address"):
            env.update(
                # Without this, `--node-ip-address 127.0.0.1` is silently replaced by the host's external address
                # (services.resolve_ip_for_localhost) and the gRPC servers bind 0.0.0.0 / [::].
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                AUTOSCALER_METRIC_PORT=str(ctx.ports["ray-autoscaler-metrics"]),  # fixed 44217 otherwise
                DASHBOARD_METRIC_PORT=str(ctx.ports["ray-dashboard-metrics"]),  # fixed 44227 otherwise
            )
        return env

    def _argv(self, ctx: RunContext) -> list[str]:
        return [ctx.python, "-m", DRIVER, str(ctx.workdir / "ray_driver.json")]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        last_route = "/predict" if self._multiplex else f"/predict/{deployment.models[-1].name}"
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
            cleanup_globs=() if deployment.options.get("ray_address") else (self._temp_dir(ctx),),
            name="rayserve",
        )]

    # ---- requests ------------------------------------------------------------------------------------------------
    def request(self, model, batch, secrets: Secrets | None = None) -> RequestSpec:
        headers = {"Content-Type": "application/json"}
        if self._multiplex:
            headers[MULTIPLEX_HEADER] = model.name
        return RequestSpec(method="POST", path=f"/predict/{model.name}", body=_json.encode_inputs(batch),
                           headers=headers)

    def decode(self, model, status, body):
        return _json.decode_outputs(model, status, body, key="outputs")

