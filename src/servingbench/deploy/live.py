"""A live deployment: prepare, start, wait for readiness, verify every model's outputs, stop.

A cell's performance numbers exist only after :meth:`LiveDeployment.verify` saw every model answer with the
reference outputs; the verifier, the probes and the load generator all use the deployment's own codec
(:meth:`servingbench.contract.Adapter.codec`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

from servingbench.adapters import registry
from servingbench.contract import Adapter, AdapterUnavailable, DecodeError, Deployment, Ports, RunContext, Secrets
from servingbench.runtime import containers, isolation, supervisor
from servingbench.runtime.supervisor import ServerError, ServerProcess, StopReport
from servingbench.scenarios.schema import DeploymentConfig


class VerificationError(RuntimeError):
    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def make_deployment(framework: str, cfg: DeploymentConfig, artifacts: list, device: str) -> Deployment:
    return Deployment(
        framework=framework,
        models=artifacts,
        device=device,  # type: ignore[arg-type]
        workers=cfg.workers,
        threads=cfg.threads,
        max_batch_size=cfg.max_batch_size,
        batch_timeout_ms=cfg.batch_timeout * 1000.0,
        model_format=cfg.model_format,
        cache=cfg.cache,
        auth=cfg.auth,
        tls=cfg.tls,
        protocol=cfg.protocol,
        options=dict(cfg.options.get(framework, {})),
        label=cfg.label,
    )


class LiveDeployment:
    """Prepare, start, wait for and verify a deployment; stop it on exit whatever happened.

    Attributes after ``__enter__``: ``ready_s`` (spawn -> readiness probe), ``cold_start_s`` (spawn -> first
    correct response), ``verification`` (per model), ``servers``.
    """

    def __init__(
        self,
        adapter: Adapter,
        deployment: Deployment,
        workdir: Path,
        log_dir: Path,
        secrets: Secrets,
        *,
        server_cpus: set[int] | None = None,
        startup_timeout: float = 180.0,
        host: str = "127.0.0.1",
        remote: Any = None,
        python: str | None = None,
        runtime: Any = None,
    ) -> None:
        self.adapter = adapter
        self.codec = adapter.codec(deployment)  # the deployment's own request/decode (options, auth, protocol)
        self.remote = remote  # a RemoteTarget: nothing to start or stop, only verify and measure
        self.runtime = runtime  # a containers.DockerRuntime (suite runtime: docker), or None: local processes
        self.cleanup_commands: list[list[str]] = []  # run after the stop (docker rm -f NAME)
        self.deployment = deployment
        # Absolute paths: servers run with cwd=workdir, so a relative path would resolve twice.
        workdir, log_dir = Path(workdir).absolute(), Path(log_dir).absolute()
        self.workdir = workdir
        self.log_dir = log_dir
        self.secrets = secrets
        self.server_cpus = server_cpus
        self.startup_timeout = startup_timeout
        self.marker = supervisor.new_marker()
        self.ctx = RunContext(
            workdir=workdir, ports=Ports(supervisor.free_port), secrets=secrets, host=host, marker=self.marker,
            python=python or sys.executable,  # suite `interpreters:` (servingbench.runtime.isolation)
        )
        self.servers: list[ServerProcess] = []
        self.ready_s: float | None = None
        self.cold_start_s: float | None = None
        self.verification: dict[str, Any] = {}
        self.stop_reports: list[StopReport] = []
        self.launch_argv: list[list[str]] = []
        self._sent = 0  # requests sent through send(): a batch-log reading is reusable while none went out
        self._batch_reading: tuple[int, tuple[dict[int, int], dict[str, float]]] | None = None
        #: the verifier's and probes' HTTP session (keep-alive; closed first on stop)
        self.http = self.new_session()

    def new_session(self) -> requests.Session:
        """An HTTP session for this deployment: no proxies from the environment, no response compression, the
        run's CA (TLS) and client certificate (mutual TLS).  Probes that need their own connections (one per
        thread, a watcher from spawn) take one each and close it."""
        http = requests.Session()
        http.trust_env = False
        http.headers["Accept-Encoding"] = "identity"  # measure inference, not response compression
        if self.secrets.ca_cert:
            http.verify = str(self.secrets.ca_cert)
        if self.deployment.tls == "mutual" and self.secrets.client_cert:
            http.cert = (str(self.secrets.client_cert), str(self.secrets.client_key))
        return http

    # -- urls ------------------------------------------------------------------------------------------------
    def base_url(self, port: str = "http") -> str:
        if self.remote is not None:
            url = self.remote.url if port == "http" else self.remote.urls.get(port)
            if url is None:
                raise KeyError(f"remote target has no URL for port {port!r}: add it under 'urls:'")
            return url.rstrip("/")
        return f"{self.adapter.scheme(self.deployment)}://127.0.0.1:{self.ctx.ports[port]}"

    def url(self, req) -> str:
        return req.path if req.path.startswith("http") else self.base_url(req.port) + req.path

    def processes(self) -> list[psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        for s in self.servers:
            for p in s.processes():
                procs.setdefault(p.pid, p)
        return list(procs.values())

    # -- life cycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> "LiveDeployment":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.remote is not None:
            t0 = time.perf_counter()
            self.verification = self.verify(deadline=t0 + self.startup_timeout)
            self.verification.pop("_first_correct_s")
            self.ready_s = self.cold_start_s = None
            return
        from servingbench.contract.types import BATCH_DIR_NAME

        (self.workdir / BATCH_DIR_NAME).mkdir(exist_ok=True)  # where the servers log their batches (batch_counts)
        self.adapter.prepare(self.deployment, self.ctx)
        specs = self.adapter.launch(self.deployment, self.ctx)
        containers.write_launch_file(self.workdir, specs, self.deployment, self.ctx)
        if self.runtime is not None:
            launches = self.runtime.wrap(specs, self.deployment, self.ctx, cpus=self.server_cpus)
            self.cleanup_commands += [c.cleanup for c in launches]
            specs = [c.spec for c in launches]
        ports = self.ctx.ports.assigned()
        t_spawn = time.perf_counter()
        for spec in specs:
            log = self.log_dir / f"{spec.name}.log"
            server = ServerProcess(spec, marker=self.marker, ports=ports, log_path=log, cpus=self.server_cpus)
            self.launch_argv.append(list(spec.argv))
            server.start()
            self.servers.append(server)
        deadline = t_spawn + self.startup_timeout
        for server in self.servers:
            mutual = self.deployment.tls == "mutual" and self.secrets.client_cert
            server.wait_ready(
                self.base_url(server.spec.ready.port), ca_file=self.secrets.ca_cert, deadline=deadline,
                client_cert=(self.secrets.client_cert, self.secrets.client_key) if mutual else None,
            )
        self.ready_s = time.perf_counter() - t_spawn
        # Readiness is a claim; only a correct inference ends the cold start.
        self.verification = self.verify(deadline=deadline)
        self.cold_start_s = self.verification.pop("_first_correct_s") - (t_spawn - self.servers[0].t_spawn)
        if self.server_cpus:
            for s in self.servers:
                s.pin(self.server_cpus)

    def stop(self) -> None:
        # Close our keep-alive connections first: Triton waits for open connections until its exit timeout.
        self.http.close()
        live = [s for s in reversed(self.servers) if s.running]
        for s in live:  # all servers share the deployment's marker: signal every one before waiting on any
            s.send_stop_signal()
        for s in live:
            self.stop_reports.append(s.stop())
        while self.cleanup_commands:  # a container outlives a SIGKILLed `docker run` client
            containers.remove_container(self.cleanup_commands.pop())

    def batch_counts(self) -> dict[int, int]:
        """Rows per model call -> calls, summed over the deployment's server processes so far (their
        ``BatchLog`` files; empty where the servers run elsewhere, e.g. a remote target)."""
        return self.batch_log()[0]

    def batch_log(self, reuse: bool = False) -> tuple[dict[int, int], dict[str, float]]:
        """:meth:`batch_counts` and the model calls' compute sums (``servingbench.models.runtime.read_batch_log``).

        Waits 1.5 flush periods for the servers' last calls to land.  ``reuse``: the caller knows that no load but
        the harness's own requests (:meth:`send`) reached the servers since the previous reading (the load points
        of one cell run one after another): that reading is returned without the wait when no :meth:`send` went out
        since."""
        from servingbench.contract.types import BATCH_DIR_NAME
        from servingbench.models.runtime import BATCH_FLUSH_S, read_batch_log

        if reuse and self._batch_reading is not None and self._batch_reading[0] == self._sent:
            return self._batch_reading[1]
        folder = self.ctx.workdir / BATCH_DIR_NAME
        if not folder.is_dir():
            return {}, {}
        time.sleep(BATCH_FLUSH_S * 1.5)  # the servers write every BATCH_FLUSH_S: let the last calls land
        reading = read_batch_log(folder)
        self._batch_reading = (self._sent, reading)
        return reading

    # -- requests --------------------------------------------------------------------------------------------
    def send(self, model_spec, batch: np.ndarray, timeout: float = 60.0) -> tuple[int, bytes, float]:
        req = self.codec.request(model_spec, batch, self.secrets)
        self._sent += 1
        t0 = time.perf_counter()
        r = self.http.request(req.method, self.url(req), data=req.body, headers=dict(req.headers), timeout=timeout)
        return r.status_code, r.content, time.perf_counter() - t0

    def infer(self, model_spec, batch: np.ndarray) -> np.ndarray:
        status, body, _ = self.send(model_spec, batch)
        return self.codec.decode(model_spec, status, body)

    def check_alive(self) -> None:
        for s in self.servers:
            rc = s.exited()
            if rc is not None:
                raise ServerError(f"{s.spec.name} exited with code {rc}", s.log_tail(), kind="crashed")

    def verify(self, deadline: float | None = None) -> dict[str, Any]:
        """Every model's outputs must equal the reference (the spec's tolerance) at batch 1 and the full batch.

        Until ``deadline``, connection errors and 404/5xx answers are retried (routes may come up after the
        health probe); a decoded but wrong answer fails at once.
        """
        out: dict[str, Any] = {}
        first_ok: float | None = None
        for art in self.deployment.models:
            spec = art.spec()
            inputs, expected = art.reference()
            checks = []
            for b in sorted({1, len(inputs)}):
                while True:
                    self.check_alive()
                    try:
                        status, body, _ = self.send(spec, inputs[:b])
                        if status in (401, 403):  # retrying cannot help: the credentials are wrong
                            raise VerificationError(f"{art.name}: authentication rejected (HTTP {status}): "
                                                    f"{body[:200]!r}", {"model": art.name, "status": status})
                        if status == 413:  # nor here: the server's request-size limit is below this request
                            raise VerificationError(
                                f"{art.name}: the server rejected a batch-{b} request as too large (HTTP 413): "
                                f"{body[:200]!r}; raise the framework's request-size limit in the deployment's "
                                f"options (for {self.adapter.name}: see its options in docs/frameworks.md; "
                                "MOSEC: max_request_size)",
                                {"model": art.name, "status": status, "batch": b})
                        got = self.codec.decode(spec, status, body)
                        break
                    except (requests.RequestException, DecodeError) as e:
                        if isinstance(e, DecodeError) and e.kind != "status":
                            raise VerificationError(f"{art.name}: undecodable answer: {e}", {"model": art.name}) from e
                        # Not up yet (connection refused, 404 before the route exists, 5xx while loading): retry.
                        if deadline is None or time.perf_counter() > deadline:
                            raise VerificationError(f"{art.name}: no correct answer before the deadline: {e}",
                                                    {"model": art.name}) from e
                        time.sleep(0.2)
                exp = expected[:b]
                err = float(np.max(np.abs(got.astype(np.float64) - exp))) if got.shape == exp.shape else None
                ok = got.shape == exp.shape and bool(np.allclose(got, exp, rtol=spec.rtol, atol=spec.atol))
                checks.append({"batch": b, "ok": ok, "max_abs_err": err, "shape": list(got.shape)})
                if not ok:
                    hint = "" if spec.payload == "tensor" else (
                        f"; the requests carry {spec.payload} payloads: the server's preprocessing must be "
                        "servingbench.models.preprocess's (" + ("JPEG decode, resize, centre crop, normalise"
                                                               if spec.payload == "image" else "the model's tokenizer, "
                                                               "padded/truncated to its sequence length") + ")")
                    raise VerificationError(
                        f"{art.name}: outputs differ from the reference at batch {b} "
                        f"(max abs err {err}, shape {got.shape} vs {exp.shape}, tolerance rtol={spec.rtol} atol={spec.atol})"
                        f"{hint}",
                        {"model": art.name, "checks": checks},
                    )
                if first_ok is None and self.servers:
                    first_ok = time.perf_counter() - self.servers[0].t_spawn
            out[art.name] = {"ok": True, "checks": checks, "rtol": spec.rtol, "atol": spec.atol,
                             "max_abs_err": max(c["max_abs_err"] for c in checks)}
        out["_first_correct_s"] = first_ok
        return out


def server_python_runtime(fw: str, suite: Any) -> tuple[str | None, Any]:
    """Where ``fw``'s servers run: the interpreter of its own venv (suite ``interpreters:``, checked to hold the
    framework, servingbench, torch and numpy) or None for the harness's, and a
    :class:`~servingbench.runtime.containers.DockerRuntime` (suite ``runtime: docker``) or None for local processes.

    Raises :class:`AdapterUnavailable` (the cell is skipped with the reason) when the interpreter is unusable.
    """
    python = suite.interpreters.get(fw)
    if python:
        try:
            isolation.check_interpreter(python, registry.get_class(fw).distribution)
        except isolation.IsolationError as e:
            raise AdapterUnavailable(f"{fw}: interpreters: {e}") from e
    return python, containers.DockerRuntime.for_suite(suite, fw)


def runtime_record(python: str | None, runtime: Any) -> dict[str, Any]:
    """What a cell or probe record says about where its servers ran."""
    return {"kind": "docker" if runtime else "local", "python": python or sys.executable,
            "image": runtime.image if runtime else None}
