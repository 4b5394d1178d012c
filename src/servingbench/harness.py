"""Run a suite: for each framework x deployment start the servers, verify, measure every workload, stop, record.

One *cell* is one server lifetime (framework x deployment label).  A cell either finishes ``ok`` with its records,
or is recorded ``failed`` (reason + server log tail) or ``skipped`` (unsupported / not installed), and the suite
goes on.  Cells are final once recorded, so ``run --resume`` only runs what is missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import psutil
import requests

from servingbench import containers, isolation
from servingbench.adapters import registry
from servingbench.adapters.base import (
    Adapter,
    AdapterUnavailable,
    DecodeError,
    Deployment,
    Ports,
    RunContext,
    Secrets,
    UnsupportedDeployment,
)
from servingbench.measure import supervisor
from servingbench.measure.resources import Sampler, tree_memory
from servingbench.measure.supervisor import ServerError, ServerProcess, StopReport
from servingbench.results import RunResults
from servingbench.scenarios.schema import (
    ClosedLoop, DeploymentConfig, Generator, Measurement, OpenLoop, Shape, SloSearch, Suite,
)

GENERATOR_BOUND_PCT = 90.0


class VerificationError(RuntimeError):
    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


# ---- cells and CPU sets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    framework: str
    config: DeploymentConfig

    @property
    def id(self) -> str:
        return f"{self.framework}/{self.config.label}"


def plan_cells(suite: Suite, frameworks: list[str] | None = None) -> list[Cell]:
    chosen = frameworks or suite.frameworks
    unknown = [f for f in chosen if f not in suite.frameworks]
    if unknown:
        raise ValueError(
            f"--frameworks {unknown} not in the suite's frameworks {suite.frameworks}"
        )
    return [
        Cell(fw, d)
        for d in suite.deployments
        for fw in chosen
        if d.frameworks is None or fw in d.frameworks
    ]


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.update(range(int(a), int(b) + 1))
        elif part.strip():
            cpus.add(int(part))
    return cpus


def cpu_sets(spec: Any) -> tuple[set[int] | None, set[int] | None]:
    """(server, generator) CPU sets.  ``auto``: the generator gets the last allowed core, the server the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "none" or spec is None:
        return None, None
    if spec == "auto":
        if len(allowed) < 2:
            return None, None
        n_gen = max(1, len(allowed) // 4)
        return set(allowed[:-n_gen]), set(allowed[-n_gen:])
    server = parse_cpus(spec.server) if spec.server else None
    gen = parse_cpus(spec.generator) if spec.generator else None
    return server, gen


# ---- a live deployment -------------------------------------------------------------------------------------------
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
            python=python or sys.executable,  # suite `interpreters:` (servingbench.isolation)
        )
        self.servers: list[ServerProcess] = []
        self.ready_s: float | None = None
        self.cold_start_s: float | None = None
        self.verification: dict[str, Any] = {}
        self.stop_reports: list[StopReport] = []
        self.launch_argv: list[list[str]] = []
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers["Accept-Encoding"] = "identity"  # measure inference, not response compression
        if secrets.ca_cert:
            self._session.verify = str(secrets.ca_cert)
        if deployment.tls == "mutual" and secrets.client_cert:
            self._session.cert = (str(secrets.client_cert), str(secrets.client_key))

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
        self._session.close()
        live = [s for s in reversed(self.servers) if s in supervisor._LIVE]
        for s in live:  # all servers share the deployment's marker: signal every one before waiting on any
            s.send_stop_signal()
        for s in live:
            self.stop_reports.append(s.stop())
        while self.cleanup_commands:  # a container outlives a SIGKILLed `docker run` client
            containers.remove_container(self.cleanup_commands.pop())

    # -- requests --------------------------------------------------------------------------------------------
    def send(self, model_spec, batch: np.ndarray, timeout: float = 60.0) -> tuple[int, bytes, float]:
        req = self.adapter.request(model_spec, batch, self.secrets)
        t0 = time.perf_counter()
        r = self._session.request(req.method, self.url(req), data=req.body, headers=dict(req.headers), timeout=timeout)
        return r.status_code, r.content, time.perf_counter() - t0

    def infer(self, model_spec, batch: np.ndarray) -> np.ndarray:
        status, body, _ = self.send(model_spec, batch)
        return self.adapter.decode(model_spec, status, body)

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
            spec = _spec(art)
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
                        got = self.adapter.decode(spec, status, body)
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
                    raise VerificationError(
                        f"{art.name}: outputs differ from the reference at batch {b} "
                        f"(max abs err {err}, shape {got.shape} vs {exp.shape}, tolerance rtol={spec.rtol} atol={spec.atol})",
                        {"model": art.name, "checks": checks},
                    )
                if first_ok is None and self.servers:
                    first_ok = time.perf_counter() - self.servers[0].t_spawn
            out[art.name] = {"ok": True, "checks": checks, "rtol": spec.rtol, "atol": spec.atol,
                             "max_abs_err": max(c["max_abs_err"] for c in checks)}
        out["_first_correct_s"] = first_ok
        return out


def _spec(art):
    from servingbench.models import get_model

    meta = json.loads(Path(art.meta).read_text())
    return get_model(meta["name"], **meta.get("params", {}))


# ---- one load point ----------------------------------------------------------------------------------------------
@dataclass
class PointPlan:
    workload: Any
    load: dict[str, float]
    measurement: Measurement
    repeat: int = 0
    models: list[str] = field(default_factory=list)
    generator: Generator | None = None  # locust processes (suite.generator); None: one process


class InputPool:
    """Pre-encoded request bodies and in-process expected outputs per (model, batch), built once per cell."""

    def __init__(self, live: LiveDeployment) -> None:
        self.live = live
        self._cache: dict[tuple[str, int, int], tuple[list[str], Path, dict]] = {}

    def get(self, art, batch: int, pool: int, workdir: Path) -> tuple[list[str], Path, dict]:
        key = (art.name, batch, pool)
        if key not in self._cache:
            from servingbench.models.runtime import load_runtime

            spec = _spec(art)
            rt = load_runtime(art.dir, fmt="eager", device="cpu", threads=1)
            bodies, expected, headers = [], [], {}
            for i in range(pool):
                x = spec.example_inputs(batch, seed=1000 + i)
                req = self.live.adapter.request(spec, x, self.live.secrets)
                bodies.append(base64.b64encode(req.body).decode())
                headers = dict(req.headers)
                expected.append(rt.predict(x))
                path, method = self.live.url(req), req.method
            exp_path = workdir / f"expected-{art.name}-b{batch}-p{pool}.npy"
            np.save(exp_path, np.stack(expected))
            self._cache[key] = (bodies, exp_path, {"url": path, "method": method, "headers": headers,
                                                   "rtol": spec.rtol, "atol": spec.atol})
        return self._cache[key]


def run_point(
    live: LiveDeployment,
    plan: PointPlan,
    pool: InputPool,
    gen_cpus: set[int] | None,
    workdir: Path,
    log_dir: Path,
) -> dict[str, Any]:
    """Run the generator for one load point; return the record's measured part."""
    w, m = plan.workload, plan.measurement
    targets = []
    for name in plan.models:
        art = live.deployment.model(name)
        bodies, exp_path, info = pool.get(art, w.batch, w.input_pool, workdir)
        meta = json.loads(Path(art.meta).read_text())
        targets.append({
            "model": name, "model_name": meta["name"], "model_params": meta.get("params", {}),
            "bodies": bodies, "expected": str(exp_path),
            "weight": (w.weights or {}).get(name, 1.0), **info,
        })
    tag = f"{w.name}-{'-'.join(f'{k}{v:g}' for k, v in plan.load.items())}-r{plan.repeat}"
    gen_plan = {
        "framework": live.deployment.framework,
        "mode": "closed" if isinstance(w, ClosedLoop) else "shape" if isinstance(w, Shape) else "open",
        "users": int(plan.load.get("concurrency", 0)),
        "rate": plan.load.get("rate"),
        "arrival": getattr(w, "arrival", "poisson"),
        "max_in_flight": getattr(w, "max_in_flight", 0),
        "warmup_s": m.warmup,
        "window_s": m.window,
        "windows": m.windows,
        "tolerance": m.tolerance,
        "max_duration_s": m.max_duration,
        "timeout_s": m.timeout,
        "sample_every": m.sample_every,
        "seed": plan.repeat,
        "targets": targets,
        "ca_file": str(live.secrets.ca_cert) if live.secrets.ca_cert else None,
        "client_cert": str(live.secrets.client_cert) if live.deployment.tls == "mutual" else None,
        "client_key": str(live.secrets.client_key) if live.deployment.tls == "mutual" else None,
        "result": str(workdir / f"gen-{tag}.json"),
        "generator": generator_plan(plan.generator, gen_cpus),
    }
    duration = m.warmup + m.max_duration
    if isinstance(w, Shape):
        gen_plan.update(stages=[st.model_dump() for st in w.stages], shape=w.shape, start_users=w.start_users)
        duration = w.total_duration()
    with Sampler(live.processes) as sampler:
        raw = run_generator(gen_plan, gen_cpus, workdir / f"gen-{tag}.plan.json", log_dir / f"generator-{tag}.log",
                            budget=duration + 60 + gen_plan["generator"].get("connect_timeout_s", 0),
                            watch=live.check_alive, sampler=sampler)
    live.check_alive()
    if isinstance(w, Shape):
        return {"stages": shape_stages(raw, sampler, m, w)}
    return summarize_point(raw, sampler.summary(), m, w.batch)


def generator_plan(g: Generator | None, gen_cpus: set[int] | None = None) -> dict[str, Any]:
    """The plan's ``generator`` part: locust processes, and a free master port when workers are wanted."""
    workers = g.local_workers(gen_cpus) if g is not None else 0
    if g is None or not (workers or g.remote_workers):
        return {"workers": 0}
    return {"workers": workers, "remote_workers": g.remote_workers, "master_bind": g.master_bind,
            "master_port": g.master_port or supervisor.free_port(), "connect_timeout_s": g.connect_timeout}


def shape_stages(raw: dict, sampler: Sampler, m: Measurement, w: Shape) -> list[dict[str, Any]]:
    """One measured part per stage of a shape run: its windows (transition windows left out), resources sampled
    while it ran, the same metrics and validity flags as any load point."""
    from servingbench.measure.stats import StabilityRule

    out = []
    t0 = raw.get("t_measure_abs")
    for i, st in enumerate(w.stages):
        mine = [x for x in raw["windows"] if x.get("stage") == i]
        kept = [x for x in mine if not x.get("transition")] or mine
        values = [x["count"] / max(x["end"] - x["start"], 1e-9) for x in kept]
        stable = w.shape == "ramp" or len(values) < 2 or StabilityRule(
            windows=len(values), tolerance=m.tolerance).is_stable(values)
        part = {**raw, "windows": kept, "window_metric": values, "stable": stable,
                "measured_s": sum(x["end"] - x["start"] for x in kept)}
        res = sampler.summary(t0 + kept[0]["start"], t0 + kept[-1]["end"]) if t0 is not None else sampler.summary()
        point = summarize_point(part, res, m, w.batch, min_duration_s=0.95 * part["measured_s"] if kept else None)
        point["timeline"] = [{k: v for k, v in x.items() if k not in ("histogram", "per_model")} for x in mine]
        point["errors_scope"] = "run"  # errors_by_kind, late sends: totals of the whole shape run
        load = {"concurrency": st.users, "stage": i}
        if w.shape == "ramp":
            load["from_concurrency"] = w.stages[i - 1].users if i else w.start_users
        out.append({"load": load, "stage": i, "users": st.users, "duration_s": st.duration, **point})
    return out


def run_generator(
    gen_plan: dict,
    gen_cpus: set[int] | None,
    plan_path: Path,
    log_path: Path,
    *,
    budget: float,
    watch: Callable[[], None] | None = None,
    sampler: Sampler | None = None,
) -> dict[str, Any]:
    """Run the locust generator process on ``gen_plan`` (pinned to ``gen_cpus``) and return its raw result."""
    plan_path.write_text(json.dumps(gen_plan))
    os.chmod(plan_path, 0o600)  # carries auth headers; deleted below
    result_path = Path(gen_plan["result"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "servingbench.workloads.generator", str(plan_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        if gen_cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, gen_cpus)
        if sampler is not None:
            sampler.attach_generator(proc.pid)
        deadline = time.perf_counter() + budget
        while proc.poll() is None:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"load generator did not finish within {budget:.0f} s")
            if watch is not None:
                watch()
            time.sleep(0.2)
    finally:
        # The whole group, even after a normal exit: locust workers the generator started must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with contextlib.suppress(OSError):
            plan_path.unlink()
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"load generator failed (exit {proc.returncode}): {supervisor.tail(log_path, 15)}")
    raw = json.loads(result_path.read_text())
    result_path.unlink()
    return raw


def summarize_point(raw: dict, resources: dict, m: Measurement, batch: int = 1,
                    min_duration_s: float | None = None) -> dict[str, Any]:
    """Metrics from the raw windows (merged histograms, our own window clock), plus validity flags."""
    from servingbench.measure.stats import LatencyHistogram

    total = LatencyHistogram()
    per_model: dict[str, LatencyHistogram] = {}
    count = errors = 0
    for w in raw["windows"]:
        total.merge(LatencyHistogram.from_dict(w["histogram"]))
        for name, h in w["per_model"].items():
            per_model.setdefault(name, LatencyHistogram()).merge(LatencyHistogram.from_dict(h))
        count += w["count"]
        errors += w["errors"]
    dur = raw["measured_s"]
    ok = count - errors
    metrics: dict[str, Any] = {
        "requests": count,
        "errors": errors,
        "error_rate": errors / count if count else None,
        "duration_s": dur,
        "throughput_rps": ok / dur if dur else None,
        "samples_per_s": ok * batch / dur if dur else None,
        "latency_s": {**total.percentiles(), "mean": total.mean() if total.count else None,
                      "max": total.max() if total.count else None} if total.count else {},
        "errors_by_kind": raw["errors_by_kind"],
        "late_sends": raw.get("late_sends", 0),
        "max_lateness_s": raw.get("max_lateness_s", 0.0),
        "window_metric": raw["window_metric"],
        "per_model_latency_s": {n: h.percentiles() for n, h in per_model.items() if h.count},
    }
    gen = raw["generator"]
    flags = []
    if dur < (min_duration_s if min_duration_s is not None else m.window * m.windows * 0.95):
        flags.append("too_short")
    if count < m.min_requests:
        flags.append("too_few_requests")
    if not raw["stable"]:
        flags.append("unstable")
    gen_cores = max(1, len(gen.get("cpus") or [1]))
    if generator_saturated(gen):
        flags.append("generator_bound")
    if metrics["error_rate"] and metrics["error_rate"] > 0.001:
        flags.append("errors")
    if raw["mode"] == "open" and count and raw.get("late_sends", 0) / count > 0.01:
        flags.append("late_sends")
    return {
        "metrics": metrics,
        "histogram": total.to_dict(),
        "windows": [{k: v for k, v in w.items() if k != "per_model"} for w in raw["windows"]],
        "resources": resources,
        "generator": {**gen, "cores": gen_cores},
        "error_examples": raw.get("error_examples", {}),
        "validity": {"valid": not flags, "flags": flags},
    }


def generator_saturated(gen: dict) -> bool:
    """A locust process drives one core: saturated when its busiest process nears 100 %, or when the processes
    of one host together near the capacity of the cores they share (two workers pinned to one core)."""
    if gen["cpu_pct"] >= GENERATOR_BOUND_PCT:
        return True
    hosts: dict[str, tuple[float, set[int]]] = {}
    for p in gen.get("processes") or []:
        pct, cores = hosts.get(p["host"], (0.0, set()))
        hosts[p["host"]] = (pct + p["cpu_pct"], cores | set(p.get("cpus") or []))
    return any(pct >= GENERATOR_BOUND_PCT * max(1, len(cores)) for pct, cores in hosts.values())


def points(w: Any) -> Iterator[dict[str, float]]:
    if isinstance(w, ClosedLoop):
        for c in w.concurrency:
            yield {"concurrency": c}
    elif isinstance(w, OpenLoop):
        for r in w.rates:
            yield {"rate": r}


def _groups(w: Any, suite: Suite) -> list[list[str]]:
    """Model groups a workload measures: one model at a time, unless weights ask for mixed traffic."""
    models = w.models or [mm.name for mm in suite.models]
    return [models] if (w.weights and len(models) > 1) else [[n] for n in models]


def _point_line(cid: str, wname: str, group: list[str], load: dict, rep: int, point: dict) -> str:
    mt = point["metrics"]
    p99 = mt["latency_s"].get("p99")
    flags = point["validity"]["flags"]
    return (f"{cid} {wname} {'+'.join(group)} {load} r{rep}: {mt['throughput_rps'] or 0:.0f} rps, "
            f"p99 {(p99 or float('nan')) * 1e3:.1f} ms, errors {mt['errors']}" + (f" [{', '.join(flags)}]" if flags else ""))


def run_slo_search(live, w, m, group, suite, pool, cpus, scratch, log_dir, results, base, progress) -> None:
    """Highest arrival rate whose p99 <= the SLO and error rate <= its maximum; every probed rate is recorded."""
    from servingbench.measure.stats import slo_search

    cid = base["cell"]
    n = 0

    def measure(rate: float) -> tuple[float, float]:
        nonlocal n
        load = {"rate": round(rate, 3)}
        point = run_point(live, PointPlan(w, load, m, 0, group, suite.generator), pool, cpus[1], scratch, log_dir)
        results.append({
            "type": "point", **base, "id": f"point:{cid}:{w.name}:{'+'.join(group)}:step{n}",
            "workload": w.name, "kind": w.kind, "models": group, "model": "+".join(group), "batch": w.batch,
            "load": load, "repeat": 0, "step": n, **point,
        })
        n += 1
        progress(_point_line(cid, w.name, group, load, 0, point))
        mt = point["metrics"]
        p99 = mt["latency_s"].get("p99", float("inf"))
        # A point the generator could not drive honestly is not a pass: a saturated generator, or an arrival rate
        # far from the one asked for.  (Late sends alone do not fail it: latency already counts from the
        # intended send time, so lateness is in the p99.)
        err = mt["error_rate"] if mt["error_rate"] is not None else 1.0
        achieved = (mt["throughput_rps"] or 0.0) + (mt["errors"] or 0) / max(mt["duration_s"] or 1.0, 1e-9)
        if "generator_bound" in point["validity"]["flags"] or achieved < 0.8 * rate:
            err = max(err, 1.0)
        return p99, err

    res = slo_search(measure, suite.slo.p99, max_error_rate=suite.slo.max_error_rate, start_rate=w.start_rate,
                     max_rate=w.max_rate, rel_precision=w.precision, max_steps=w.max_steps)
    results.append({
        "type": "slo", **base, "id": f"slo:{cid}:{w.name}:{'+'.join(group)}", "workload": w.name,
        "models": group, "model": "+".join(group), "batch": w.batch,
        "slo": {"p99_s": suite.slo.p99, "max_error_rate": suite.slo.max_error_rate},
        "max_rate": res.max_rate, "reason": res.reason,
        "points": [p.__dict__ for p in res.points],
    })
    progress(f"{cid} {w.name} {'+'.join(group)}: throughput at SLO "
             f"{'none' if res.max_rate is None else f'{res.max_rate:.0f} rps'} ({res.reason})")


def run_shape(live, w: Shape, m, rep, group, suite, pool, cpus, scratch, log_dir, results, base, progress) -> None:
    """One generator run through every stage of a shape; one point record per stage."""
    cid = base["cell"]
    load0 = {"stages": len(w.stages)}
    out = run_point(live, PointPlan(w, load0, m, rep, group, suite.generator), pool, cpus[1], scratch, log_dir)
    for st in out["stages"]:
        load = st.pop("load")
        del st["users"]  # in the load
        rec = {
            "type": "point", **base, "id": f"point:{cid}:{w.name}:{'+'.join(group)}:{json.dumps(load)}:{rep}",
            "workload": w.name, "kind": w.kind, "shape": w.shape, "models": group,
            "model": group[0] if len(group) == 1 else "+".join(group), "batch": w.batch, "load": load,
            "repeat": rep, **st,
        }
        results.append(rec)
        progress(_point_line(cid, w.name, group, load, rep, st))


# ---- the suite ---------------------------------------------------------------------------------------------------
Progress = Callable[[str], None]


def run_cell(
    cell: Cell,
    suite: Suite,
    artifacts: dict[str, Any],
    results: RunResults,
    secrets_store,
    cpus: tuple[set[int] | None, set[int] | None],
    progress: Progress,
    scratch: Path,
    allow_remote: bool = False,
) -> str:
    """Run one cell to a final status and record it.  Returns the status."""
    cid = cell.id
    safe = cid.replace("/", "-")
    workdir = results.manifests / safe
    log_dir = results.logs / safe
    log_dir.mkdir(parents=True, exist_ok=True)
    base = {"cell": cid, "framework": cell.framework, "deployment": cell.config.label}
    try:
        adapter = registry.get(cell.framework)
        remote = suite.targets.get(cell.framework)
        # A remote server needs only the adapter's pure request/decode: no interpreter, no runtime, no install.
        python, runtime = server_python_runtime(cell.framework, suite) if remote is None else (None, None)
        if remote is None and not python:  # an isolated interpreter was checked instead
            adapter.check_available()
        deployment = make_deployment(cell.framework, cell.config, [artifacts[m.name] for m in suite.models],
                                     suite.device)
        adapter.validate(deployment)
        if remote is not None and not remote.is_loopback() and not allow_remote:
            raise UnsupportedDeployment(
                f"target {remote.url} is not on this machine: pass --allow-remote to send load to another host"
            )
    except (AdapterUnavailable, UnsupportedDeployment, ImportError) as e:
        status = "failed" if isinstance(e, ImportError) else "skipped"
        results.set_cell(cid, status, reason=str(e), **base)
        results.append({"type": "cell", "id": f"cell:{cid}", **base, "status": status, "reason": str(e)})
        progress(f"[yellow]{cid}: {status}: {e}")
        return status
    if remote is not None:
        token = os.environ.get(remote.token_env) if remote.token_env else None
        if remote.token_env and not token:
            msg = f"target {cell.framework}: environment variable {remote.token_env} (token_env) is not set"
            results.set_cell(cid, "failed", reason=msg, **base)
            results.append({"type": "cell", "id": f"cell:{cid}", **base, "status": "failed", "reason": msg})
            progress(f"[red]{cid}: failed: {msg}")
            return "failed"
        secrets = Secrets(token=token, ca_cert=Path(remote.ca_file) if remote.ca_file else None,
                          client_cert=Path(remote.client_cert) if remote.client_cert else None,
                          client_key=Path(remote.client_key) if remote.client_key else None)
        results.set_redactions([*secrets_store.sensitive_strings(), token or ""])
    else:
        secrets = secrets_store.make(auth=deployment.auth, tls=bool(deployment.tls))
        results.set_redactions(secrets_store.sensitive_strings())
    results.set_cell(cid, "running", **base)
    config = deployment.describe()
    cell_rec: dict[str, Any] = {"type": "cell", "id": f"cell:{cid}", **base, "config": config,
                                "framework_version": isolation.distribution_version(python, adapter.distribution)
                                if python else adapter.framework_version()}
    if python or runtime:
        cell_rec["runtime"] = runtime_record(python, runtime)
    t0 = time.perf_counter()
    live = LiveDeployment(adapter, deployment, workdir, log_dir, secrets, server_cpus=cpus[0],
                          startup_timeout=suite.startup_timeout, remote=remote, python=python, runtime=runtime)
    if remote is not None:
        cell_rec["remote"] = {"url": remote.url, "urls": remote.urls}
    try:
        progress(f"{cid}: starting")
        with live:
            cell_rec.update(
                ready_s=live.ready_s, cold_start_s=live.cold_start_s, verification=live.verification,
                memory_idle=tree_memory(live.processes()), argv=live.launch_argv,
                server_cpus=sorted(cpus[0]) if cpus[0] else None,
                generator_cpus=sorted(cpus[1]) if cpus[1] else None,
            )
            if remote is None:
                progress(f"{cid}: ready in {live.ready_s:.1f} s, first correct answer at {live.cold_start_s:.1f} s")
            else:
                progress(f"{cid}: remote target {remote.url} verified")
            pool = InputPool(live)
            for w in suite.workloads:
                m = suite.measurement_for(w)
                if isinstance(w, SloSearch):
                    for group in _groups(w, suite):
                        run_slo_search(live, w, m, group, suite, pool, cpus, scratch, log_dir, results, base, progress)
                    continue
                if isinstance(w, Shape):
                    for group in _groups(w, suite):
                        for rep in range(m.repeats):
                            run_shape(live, w, m, rep, group, suite, pool, cpus, scratch, log_dir, results, base,
                                      progress)
                    continue
                for group in _groups(w, suite):
                    for load in points(w):
                        for rep in range(m.repeats):
                            plan = PointPlan(w, load, m, rep, group, suite.generator)
                            point = run_point(live, plan, pool, cpus[1], scratch, log_dir)
                            rec = {
                                "type": "point", **base,
                                "id": f"point:{cid}:{w.name}:{'+'.join(group)}:{json.dumps(load)}:{rep}",
                                "workload": w.name, "kind": w.kind, "models": group,
                                "model": group[0] if len(group) == 1 else "+".join(group),
                                "batch": w.batch, "load": load, "repeat": rep, **point,
                            }
                            results.append(rec)
                            progress(_point_line(cid, w.name, group, load, rep, point))
        status = "ok"
        survivors = [s for r in live.stop_reports for s in r.survivors]
        if survivors:
            status = "failed"
            cell_rec["reason"] = f"processes survived the stop: {survivors}"
    except KeyboardInterrupt:
        results.set_cell(cid, "interrupted", **base)
        raise
    except Exception as e:  # noqa: BLE001 - a failing framework must not stop the suite
        status = "failed"
        cell_rec["reason"] = f"{type(e).__name__}: {e}"
        cell_rec["log_tail"] = "\n".join(s.log_tail(30) for s in live.servers)
        if isinstance(e, VerificationError):
            cell_rec["verification"] = e.details
        if not isinstance(e, (ServerError, VerificationError)):
            cell_rec["traceback"] = traceback.format_exc(limit=8)
        progress(f"[red]{cid}: failed: {str(e).splitlines()[0]}")
    cell_rec.update(
        status=status, seconds=time.perf_counter() - t0,
        stop=[r.__dict__ for r in live.stop_reports],
    )
    results.append(cell_rec)
    results.set_cell(cid, status, reason=cell_rec.get("reason"), cold_start_s=cell_rec.get("cold_start_s"), **base)
    return status


def run_probe_cell(fw: str, name: str, suite: Suite, artifacts: dict[str, Any], results: RunResults, store,
                   cpus: tuple[set[int] | None, set[int] | None], progress: Progress) -> str:
    """One feature probe on one framework: verdict records with evidence, or a failed cell with the reason."""
    from servingbench.probes import ProbeContext, run_probe

    cid = f"{fw}/probe:{name}"
    safe = cid.replace("/", "-").replace(":", "-")
    results.set_cell(cid, "running", framework=fw, probe=name)
    progress(f"{cid}: probing")
    try:
        python, runtime = server_python_runtime(fw, suite)
        ctx = ProbeContext(fw, artifacts, store, results.manifests / safe, results.logs / safe, cpus[0],
                           startup_timeout=suite.startup_timeout, python=python, runtime=runtime)
    except AdapterUnavailable as e:  # as run_cell: an unusable interpreter skips the cell, with the reason
        results.set_cell(cid, "skipped", framework=fw, probe=name, reason=str(e))
        progress(f"[yellow]{cid}: skipped: {e}")
        return "skipped"
    except Exception as e:  # noqa: BLE001 - not installed, broken entry point
        results.set_cell(cid, "failed", framework=fw, probe=name, reason=f"{type(e).__name__}: {e}")
        return "failed"
    recs = run_probe(name, ctx)
    results.set_redactions(store.sensitive_strings())
    for r in recs:
        if python or runtime:  # as run_cell's cell record: where the probed servers ran
            r["runtime"] = runtime_record(python, runtime)
        results.append(r)
        progress(f"{fw} {r['feature']}: {r['verdict']}" + (f" ({r['reason']})" if r["reason"] else ""))
    results.set_cell(cid, "ok", framework=fw, probe=name, verdicts={r["feature"]: r["verdict"] for r in recs})
    return "ok"


def server_python_runtime(fw: str, suite: Suite) -> tuple[str | None, Any]:
    """Where ``fw``'s servers run: the interpreter of its own venv (suite ``interpreters:``, checked to hold the
    framework, servingbench, torch and numpy) or None for the harness's, and a
    :class:`~servingbench.containers.DockerRuntime` (suite ``runtime: docker``) or None for local processes.

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


@dataclass
class SuiteOutcome:
    results: RunResults
    statuses: dict[str, str]
    interrupted: bool = False

    @property
    def failed(self) -> list[str]:
        return [c for c, s in self.statuses.items() if s == "failed"]


def build_artifacts_for(suite: Suite) -> dict[str, Any]:
    from servingbench.models import build_artifacts, get_model

    return {m.name: build_artifacts(get_model(m.name, **m.params)) for m in suite.models}


def run_suite(
    suite: Suite,
    *,
    suite_path: Path,
    out: Path,
    frameworks: list[str] | None = None,
    resume: Path | None = None,
    progress: Progress = print,
    allow_remote: bool = False,
) -> SuiteOutcome:
    """Run (or resume) a suite into ``out/<run-id>/``.  Ctrl-C / SIGTERM stop the servers and mark the run."""
    from servingbench.measure.environment import capture
    from servingbench.measure.security import SecretStore
    from servingbench.results import new_run_id

    # Performance cells only when there are workloads; a features-only suite runs just the probes.
    cells = plan_cells(suite, frameworks) if suite.workloads else []
    g = suite.generator
    if g.remote_workers and g.master_bind not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
        raise ValueError(f"generator.master_bind {g.master_bind!r} listens beyond this machine for "
                         f"{g.remote_workers} remote worker(s): the plan (request bodies, auth header) crosses that "
                         "network in the clear; pass --allow-remote if it is trusted, or bind 127.0.0.1")
    probe_frameworks = list(frameworks or suite.frameworks)
    cpus = cpu_sets(suite.cpu_sets)
    stale = supervisor.stale_servers()
    if stale:
        progress(f"[yellow]warning: {len(stale)} server process(es) from an earlier run are still alive and will "
                 "distort measurements; stop them with `servingbench cleanup --kill`")
    statuses: dict[str, str] = {}
    outside = set(supervisor._LIVE)  # servers started by the caller, not by this run: never ours to stop
    with SecretStore() as store, supervisor.terminate_on_signals():
        if resume:
            results = RunResults.open(Path(resume).absolute())
            done = results.finished_cells()
            results.update_run(status="running", resumed_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        else:
            meta = {
                "suite": suite.model_dump(mode="json"),
                "suite_file": str(suite_path),
                "suite_text": suite_path.read_text() if suite_path.is_file() else None,
                "command": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "environment": capture(suite.frameworks),
                "cpu_sets": {"server": sorted(cpus[0]) if cpus[0] else None,
                             "generator": sorted(cpus[1]) if cpus[1] else None},
                "planned_cells": [c.id for c in cells],
            }
            results = RunResults.create(Path(out).absolute(), new_run_id(suite.name), meta)
            done = set()
        results.set_redactions(store.sensitive_strings())
        progress(f"results: {results.path}")
        scratch = Path(tempfile.mkdtemp(prefix="servingbench-scratch-"))
        try:
            progress("building model artifacts")
            artifacts = build_artifacts_for(suite)
            if cells and "calibration" not in results.read_run():
                progress("calibrating the load generator against a trivial endpoint")
                cal = calibrate_generator(cpus, scratch, results.logs, generator=suite.generator)
                results.update_run(calibration=cal)
                progress(f"generator ceiling {cal['ceiling_rps']:.0f} rps, latency floor p50 "
                         f"{cal['floor_p50_s'] * 1e3:.2f} ms")
            if cells and not results.records("inprocess"):
                progress("measuring the in-process limit (no server)")
                for r in inprocess_limits(suite, artifacts, cpus[0], scratch, results.logs):
                    results.append({"type": "inprocess",
                                    "id": f"inprocess:{r['model']}:b{r['batch']}:t{r['threads']}:{r['format']}", **r})
            for cell in cells:
                if cell.id in done:
                    statuses[cell.id] = results.read_run()["cells"][cell.id]["status"]
                    progress(f"{cell.id}: already {statuses[cell.id]} (resume)")
                    continue
                statuses[cell.id] = run_cell(cell, suite, artifacts, results, store, cpus, progress, scratch,
                                             allow_remote)
            for fw in probe_frameworks:
                for name in suite.features:
                    cid = f"{fw}/probe:{name}"
                    if cid in done:
                        statuses[cid] = results.read_run()["cells"][cid]["status"]
                        continue
                    statuses[cid] = run_probe_cell(fw, name, suite, artifacts, results, store, cpus, progress)
        except KeyboardInterrupt:
            supervisor.stop_all(keep=outside)
            results.update_run(status="interrupted", ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
            progress(f"[yellow]interrupted: finished cells are kept; continue with "
                     f"`servingbench run {suite_path} --resume {results.path}`")
            return SuiteOutcome(results, statuses, interrupted=True)
        finally:
            supervisor.stop_all(keep=outside)
            shutil.rmtree(scratch, ignore_errors=True)
        failed = [c for c, s in statuses.items() if s == "failed"]
        results.update_run(status="failed_cells" if failed else "complete",
                           ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return SuiteOutcome(results, statuses)


# ---- reference measurements: generator calibration and the in-process limit -------------------------------------
def calibrate_generator(
    cpus: tuple[set[int] | None, set[int] | None], scratch: Path, log_dir: Path,
    concurrency: tuple[int, ...] = (1, 16), window_s: float = 1.0, generator: Generator | None = None,
) -> dict[str, Any]:
    """Closed loop against a trivial endpoint: the generator's ceiling (rps) and the latency floor (p50/p99)."""
    from servingbench.adapters.base import LaunchSpec, ReadyProbe
    from servingbench.measure.stats import LatencyHistogram

    port = supervisor.free_port()
    spec = LaunchSpec(
        argv=[sys.executable, "-m", "servingbench.measure.calibrate", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=scratch,
        ready=ReadyProbe(path="/", timeout_s=30), stop_signal=signal.SIGTERM, grace_s=5, name="calibration-endpoint",
    )
    server = ServerProcess(spec, marker=supervisor.new_marker(), ports={"http": port}, log_path=log_dir / "calibration.log",
                           cpus=cpus[0])
    out: dict[str, Any] = {"generator_cpus": sorted(cpus[1]) if cpus[1] else None, "points": []}
    try:
        server.start()
        server.wait_ready(f"http://127.0.0.1:{port}")
        for c in concurrency:
            plan = {
                "framework": None, "mode": "closed", "users": c, "warmup_s": 0.5, "window_s": window_s,
                "windows": 3, "tolerance": 0.1, "max_duration_s": window_s * 5, "timeout_s": 10,
                "targets": [{"model": "echo", "url": f"http://127.0.0.1:{port}/", "method": "POST",
                             "headers": {"Content-Type": "application/json"},
                             "bodies": [base64.b64encode(b'{"inputs": [[0.0]]}').decode()]}],
                "result": str(scratch / f"calibration-{c}.json"),
                "generator": generator_plan(generator, cpus[1]),
            }
            raw = run_generator(plan, cpus[1], scratch / f"calibration-{c}.plan.json", log_dir / "calibration-generator.log",
                                budget=60 + plan["generator"].get("connect_timeout_s", 0))
            h = LatencyHistogram()
            count = 0
            for w in raw["windows"]:
                h.merge(LatencyHistogram.from_dict(w["histogram"]))
                count += w["count"] - w["errors"]
            out["points"].append({
                "concurrency": c, "throughput_rps": count / raw["measured_s"], "latency_s": h.percentiles(),
                "generator_cpu_pct": raw["generator"]["cpu_pct"], "stable": raw["stable"],
                "generator_processes": len(raw["generator"].get("processes") or [1]),
            })
    finally:
        server.stop()
    first, last = out["points"][0], out["points"][-1]
    out.update(ceiling_rps=last["throughput_rps"], floor_p50_s=first["latency_s"]["p50"],
               floor_p99_s=first["latency_s"]["p99"])
    return out


def inprocess_limits(suite: Suite, artifacts: dict[str, Any], cpus: set[int] | None, scratch: Path,
                     log_dir: Path) -> list[dict[str, Any]]:
    """For every model x batch x threads x format the suite uses: the model alone, in a process pinned like a server."""
    batches = sorted({w.batch for w in suite.workloads}) or [1]
    combos = sorted({(d.threads, d.model_format) for d in suite.deployments})
    jobs = [
        {"artifact_dir": str(artifacts[m.name].dir), "batch": b, "threads": t, "fmt": fmt, "device": suite.device,
         "warmup_s": 0.5, "duration_s": 2.0}
        for m in suite.models for b in batches for t, fmt in combos
    ]
    names = [m.name for m in suite.models for _ in batches for _ in combos]
    plan = {"jobs": jobs, "result": str(scratch / "inprocess.json")}
    plan_path = scratch / "inprocess.plan.json"
    plan_path.write_text(json.dumps(plan))
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "inprocess.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "servingbench.measure.inprocess", str(plan_path)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, cpus)
        proc.wait(timeout=60 + 5 * len(jobs))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"in-process measurement failed: {supervisor.tail(log_dir / 'inprocess.log', 15)}")
    results = json.loads(Path(plan["result"]).read_text())
    return [{"model": n, **r} for n, r in zip(names, results)]
