"""The calibration deployment: a server with a known service time, as a servingbench adapter (part of the test kit).

Not registered as an entry point (it would join every suite's framework lists and the contract suite's adapters);
register it for one command with::

    SERVINGBENCH_ADAPTERS="calibration=servingbench.testing.calibration:CalibrationAdapter"

Then it is a framework like any other: ``servingbench contract calibration``, ``servingbench verify calibration``,
a suite with ``frameworks: [calibration]`` and per-deployment ``options: {calibration: {service_ms: 2}}``.

The server (``servingbench.measure.calibration_server``) serves the zoo models' real outputs through ONE worker
thread that holds every request for exactly ``service_ms x slowdown`` (a sleep, then a busy-wait to the exact
deadline): an M/D/1 FIFO queue with capacity ``1 / S`` requests/s.  Against it the harness's numbers have analytic
answers: closed-loop throughput ``1 / S`` at any concurrency >= 2, throughput at a p99 target
``servingbench.measure.stats.md1_max_rate_for_p99`` (open loop, Poisson arrivals); ``GET /stats`` shows the queue as
the server saw it.  ``scripts/bench_slo_search.py`` and ``scripts/bench_compare.py`` use it.

``slowdown`` is part of the deployment's configuration, so ``servingbench compare`` treats two runs that differ in
it as different deployments ("not comparable").  A planted slowdown that ``compare`` should *judge* (the same
configuration, a slower server, as with a regression in a server's code) is set through the environment variable
``SERVINGBENCH_CALIBRATION_SLOWDOWN`` of the harness instead: it is passed to the server, which prints it into its
log, and is not part of the configuration.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from pydantic import Field

from servingbench.contract import (
    Adapter, AdapterOptions, Capability, Deployment, JsonCodec, LaunchSpec, ReadyProbe, RunContext,
    UnsupportedDeployment, model_entry, server_env, write_command_file, write_deployment_json,
)

#: The server script, copied into the deployment's workdir (it runs under ``ctx.python``).
SERVER = Path(__file__).resolve().parents[1] / "measure" / "calibration_server.py"
#: The registration string for ``SERVINGBENCH_ADAPTERS``.
REGISTRATION = "calibration=servingbench.testing.calibration:CalibrationAdapter"
#: Environment variable of a planted slowdown outside the configuration (see the module docstring).
PLANTED_ENV = "SERVINGBENCH_CALIBRATION_SLOWDOWN"
CODEC = JsonCodec(path="/predict/{model}")


class CalibrationOptions(AdapterOptions):
    service_ms: float = Field(2.0, gt=0, le=10_000, description="deterministic service time of one request, ms "
                              "(the worker busy-waits until it has passed since it took the request)",
                              json_schema_extra={"framework_default": 3.0, "tune": {"low": 1.0, "high": 4.0}})
    slowdown: float = Field(1.0, gt=0, le=100, description="multiplies the service time: a planted slowdown "
                            "(part of the configuration; see SERVINGBENCH_CALIBRATION_SLOWDOWN for one that is not)")
    unavailable_s: float = Field(0.0, ge=0, le=600, description="a planted false-ready window: for this long after "
                                 "the server listens, /health says ok while inference answers 503")


class CalibrationAdapter(Adapter):
    """A single-worker FIFO server with a known, deterministic service time (``service_ms x slowdown``)."""

    name = "calibration"
    distribution = "torch"  # no framework: the version shown is torch's (the models run on it)
    Options = CalibrationOptions
    capabilities = frozenset({Capability.MULTI_MODEL})
    open_paths = ("/health",)
    docs_claims = {
        "multi_model": "yes: one path per model, every model behind the same single worker",
        "batching": "no", "auth": "no", "tls": "no", "grpc": "no", "gpu": "no", "response_cache": "no",
        "model_cache": "no", "manifest": "no (deployment.json read by a script)", "load_unload": "no",
    }

    def validate(self, deployment: Deployment) -> None:
        super().validate(deployment)
        if deployment.workers != 1:
            raise UnsupportedDeployment("calibration: one worker by construction (an M/D/1 queue); "
                                        f"workers: {deployment.workers} is not supported")

    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        opts = self.options_of(deployment)
        write_deployment_json(ctx, {
            "host": ctx.host, "port": ctx.ports["http"], "threads": deployment.threads,
            "model_format": deployment.model_format, "device": deployment.device,
            "service_ms": opts.service_ms, "slowdown": opts.slowdown, "backlog": 1024,
            "unavailable_s": opts.unavailable_s,
            "models": [model_entry(m) for m in deployment.models],
        })
        shutil.copy(SERVER, ctx.workdir / SERVER.name)
        write_command_file(ctx, [self._argv(ctx)], comment="the calibration server: one worker, FIFO, busy-waits "
                                                            "service_ms x slowdown per request")

    def _argv(self, ctx: RunContext) -> list[str]:
        return [ctx.python, str(ctx.workdir / SERVER.name), str(ctx.workdir / "deployment.json")]

    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        extra = {PLANTED_ENV: os.environ[PLANTED_ENV]} if os.environ.get(PLANTED_ENV) else {}
        return [LaunchSpec(
            argv=self._argv(ctx), env=server_env(ctx, deployment.threads, **extra), cwd=ctx.workdir,
            ready=ReadyProbe(path="/health", body_contains="ok"),
            stop_signal=signal.SIGTERM, signal_group=False, grace_s=5.0, name="calibration",
        )]

    def codec(self, deployment: Deployment) -> JsonCodec:
        return CODEC


__all__ = ["CalibrationAdapter", "CalibrationOptions", "PLANTED_ENV", "REGISTRATION", "SERVER"]
