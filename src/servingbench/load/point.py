"""One load point: build the generator's plan, run the locust generator beside the resource sampler, and turn
its raw windows into the point's metrics and validity flags."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from servingbench.deploy.live import LiveDeployment
from servingbench.load.plan import GeneratorPlan, PointPlan
from servingbench.load.pool import InputPool
from servingbench.measure.resources import Sampler
from servingbench.runtime import supervisor
from servingbench.scenarios.schema import Generator, Measurement

GENERATOR_BOUND_PCT = 90.0
#: the generator's mode for each workload kind (an SLO search probes open-loop arrival rates)
MODES = {"closed_loop": "closed", "open_loop": "open", "slo_search": "open", "shape": "shape"}


def run_point(
    live: LiveDeployment,
    plan: PointPlan,
    pool: InputPool,
    gen_cpus: set[int] | None,
    workdir: Path,
    log_dir: Path,
    warm: WarmGenerator | None = None,
) -> dict[str, Any]:
    """Run the generator for one load point; return the record's measured part (``warm``: see
    :class:`WarmGenerator`)."""
    w, m = plan.workload, plan.measurement
    targets = []
    for name in plan.models:
        art = live.deployment.model(name)
        bodies, exp_path, info = pool.get(art, w.batch, w.input_pool, workdir)
        meta = art.metadata()
        targets.append({
            "model": name, "model_name": meta["name"], "model_params": meta.get("params", {}),
            # the spec travels whole for a user model, and for a zoo model served under another name or with an
            # image / text payload (the generator cannot rebuild those from the name and params alone)
            "model_spec": meta if meta.get("source") or meta.get("arch", meta["name"]) != meta["name"]
            or meta.get("payload", "tensor") != "tensor" else None,
            "bodies": bodies, "expected": str(exp_path),
            "weight": (w.weights or {}).get(name, 1.0), **info,
        })
    tag = f"{w.name}-{'-'.join(f'{k}{v:g}' for k, v in plan.load.items())}-r{plan.repeat}"
    extra: dict[str, Any] = {}
    duration = m.warmup + m.max_duration
    if w.kind == "shape":
        extra = {"stages": [st.model_dump() for st in w.stages], "shape": w.shape, "start_users": w.start_users}
        duration = w.total_duration()
    elif w.kind != "closed_loop":
        extra = {"arrival": w.arrival, "max_in_flight": w.max_in_flight}
    gen_plan = GeneratorPlan.build(
        mode=MODES[w.kind], load=plan.load, m=m, targets=targets, result=str(workdir / f"gen-{tag}.json"),
        processes=generator_plan(plan.generator, gen_cpus), framework=live.deployment.framework,
        deployment=live.deployment.describe(), seed=plan.repeat, live=plan.live,
        ca_file=str(live.secrets.ca_cert) if live.secrets.ca_cert else None,
        client_cert=str(live.secrets.client_cert) if live.deployment.tls == "mutual" else None,
        client_key=str(live.secrets.client_key) if live.deployment.tls == "mutual" else None, **extra,
    ).model_dump()
    batches_before = live.batch_log(reuse=True)  # the previous point's closing reading, unless requests went out
    with Sampler(live.processes) as sampler:
        raw = run_generator(gen_plan, gen_cpus, workdir / f"gen-{tag}.plan.json", log_dir / f"generator-{tag}.log",
                            budget=duration + 60 + gen_plan["generator"]["connect_timeout_s"],
                            watch=live.check_alive, sampler=sampler, warm=warm)
    live.check_alive()
    batches = batch_sizes(*batches_before, *live.batch_log(), request_rows=w.batch)
    if w.kind == "shape":
        return {"stages": shape_stages(raw, sampler, m, w), **({"batch_sizes": batches} if batches else {})}
    out = summarize_point(raw, _window_resources(raw, sampler, reported_windows(raw, m)), m, w.batch,
                          ceiling_rps=plan.generator_ceiling_rps)
    if batches:
        out["batch_sizes"] = batches
    return out


def batch_sizes(before: dict[int, int], compute_before: dict[str, float] | None, after: dict[int, int],
                compute_after: dict[str, float] | None, request_rows: int = 1) -> dict[str, Any] | None:
    """The batches the server formed during a point (its whole generator run, warm-up included): rows per model
    call -> calls, the calls, and the mean rows per call and requests per call (rows / the workload's batch);
    with the compute sums of :func:`servingbench.models.runtime.read_batch_log`, the mean time of a model call
    (``compute_s_per_call``) and the mean time a request's rows spent in their model call (``compute_s``: the
    model's share of a request's latency; the rest is the client and loopback, queueing and the framework).
    None when the server logged nothing (no ``BatchLog``: a remote target, a container without the workdir)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in sorted(delta.items()) if v > 0}
    calls = sum(delta.values())
    if not calls:
        return None
    rows = sum(k * v for k, v in delta.items())
    out = {"histogram": {str(k): v for k, v in delta.items()}, "calls": calls, "mean_rows": rows / calls,
           "mean_requests": rows / calls / max(1, request_rows), "max_rows": max(delta)}
    ca, cb = compute_before or {}, compute_after or {}
    timed_calls = cb.get("calls", 0) - ca.get("calls", 0)
    timed_rows = cb.get("rows", 0) - ca.get("rows", 0)
    if timed_calls > 0 and timed_rows > 0:
        out.update(compute_s_per_call=(cb.get("s", 0.0) - ca.get("s", 0.0)) / timed_calls,
                   compute_s=(cb.get("row_s", 0.0) - ca.get("row_s", 0.0)) / timed_rows)
    return out


def _window_resources(raw: dict, sampler: Sampler, start: int) -> dict[str, Any]:
    """Server and generator resources over the reported windows only (not the generator's start-up and tail)."""
    t0, ws = raw.get("t_measure_abs"), raw["windows"][start:]
    if t0 is None or not ws:
        return sampler.summary()
    return sampler.summary(t0 + ws[0]["start"], t0 + ws[-1]["end"])


def generator_plan(g: Generator | None, gen_cpus: set[int] | None = None) -> dict[str, Any]:
    """The plan's ``generator`` part: locust processes, and a free master port when workers are wanted."""
    workers = g.local_workers(gen_cpus) if g is not None else 0
    if g is None or not (workers or g.remote_workers):
        return {"workers": 0}
    return {"workers": workers, "remote_workers": g.remote_workers, "master_bind": g.master_bind,
            "master_port": g.master_port or supervisor.free_port(), "connect_timeout_s": g.connect_timeout}


def shape_stages(raw: dict, sampler: Sampler, m: Measurement, w: Any) -> list[dict[str, Any]]:
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
        part = {**raw, "windows": kept, "window_metric": values, "stable": stable, "stable_from": 0,
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


def _spawn_generator(args: list[str], gen_cpus: set[int] | None, log_path: Path,
                     stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """The generator process (``python -m servingbench.load.generator ARGS``), pinned to ``gen_cpus``, in a
    session of its own (its group is killed as a whole), marked as the harness's (the locust workers inherit the
    marks): ``servingbench cleanup`` finds them all."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "servingbench.load.generator", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=stdin,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **supervisor.marker_env("generator")},
            preexec_fn=supervisor.default_signals,
        )
    if gen_cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, gen_cpus)
    return proc


def _kill_group(proc: subprocess.Popen) -> None:
    # The whole group, even after a normal exit: locust workers the generator started must not outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class WarmGenerator:
    """One generator process started ahead, its imports done (~0.8 s of a core), waiting for the next point's plan
    (``--await-plan``).  A cell's points run one after another, so the next spare is started as soon as a point's
    generator has exited: its start-up overlaps the harness's work between points (the batch counts, the records,
    the next plan, an SLO probe's drain) instead of adding to every point's wall time.  Never during a point: the
    spare is idle (blocked on stdin) while anything is measured.  A context manager: leaving it kills the spare;
    if the harness dies, the spare reads end of input and exits."""

    def __init__(self) -> None:
        self._spare: subprocess.Popen | None = None
        self._key: Any = None
        self._log: Path | None = None

    def __enter__(self) -> WarmGenerator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def key(gen_cpus: set[int] | None) -> Any:
        """What a spare must share with a point to serve it: interpreter, environment, CPU set."""
        return sys.executable, tuple(sorted(os.environ.items())), tuple(sorted(gen_cpus or ()))

    def prepare(self, gen_cpus: set[int] | None, log_dir: Path) -> None:
        """Start a spare for points on ``gen_cpus`` (unless one is ready for them)."""
        key = self.key(gen_cpus)
        if self._spare is not None and self._key == key and self._spare.poll() is None:
            return
        self.close()
        self._log = log_dir / "generator-spare.log"
        self._spare = _spawn_generator(["--await-plan"], gen_cpus, self._log, stdin=subprocess.PIPE)
        self._key = key

    def take(self, gen_cpus: set[int] | None, plan_path: Path, log_path: Path) -> subprocess.Popen | None:
        """The spare, handed ``plan_path`` (its output goes to ``log_path`` from here), or None when there is no
        live spare for ``gen_cpus`` (the caller starts a generator the usual way)."""
        proc, self._spare = self._spare, None
        if proc is None:
            return None
        if self._key != self.key(gen_cpus) or proc.poll() is not None:
            self._discard(proc)
            return None
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{plan_path}\t{log_path}\n".encode())
            proc.stdin.close()
        except OSError:
            self._discard(proc)
            return None
        return proc

    def _discard(self, proc: subprocess.Popen) -> None:
        _kill_group(proc)
        if proc.returncode not in (0, -signal.SIGKILL) and self._log is not None:
            # a spare that died by itself: say why in its log's place (the point runs on a fresh generator)
            with contextlib.suppress(OSError), open(self._log, "a") as f:
                f.write(f"spare generator exited with {proc.returncode}\n")

    def close(self) -> None:
        proc, self._spare = self._spare, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            _kill_group(proc)


def run_generator(
    gen_plan: dict,
    gen_cpus: set[int] | None,
    plan_path: Path,
    log_path: Path,
    *,
    budget: float,
    watch: Callable[[], None] | None = None,
    sampler: Sampler | None = None,
    warm: WarmGenerator | None = None,
) -> dict[str, Any]:
    """Run the locust generator process on ``gen_plan`` (pinned to ``gen_cpus``) and return its raw result.  With
    ``warm``, its spare runs the plan where it has one, and a new spare is started once this generator exited."""
    plan_path.write_text(json.dumps(gen_plan))
    os.chmod(plan_path, 0o600)  # carries auth headers; deleted below
    result_path = Path(gen_plan["result"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    supervisor.claim_tempdir(plan_path.parent)  # a scratch dir: `servingbench cleanup` removes it if we die
    proc = warm.take(gen_cpus, plan_path, log_path) if warm is not None else None
    try:
        if proc is None:
            proc = _spawn_generator([str(plan_path)], gen_cpus, log_path)
        if sampler is not None:
            sampler.attach_generator(proc.pid)
        wait_for(proc, budget, watch, "load generator")
    finally:
        if proc is not None:
            _kill_group(proc)
        with contextlib.suppress(OSError):
            plan_path.unlink()
    if warm is not None and proc.returncode == 0:
        warm.prepare(gen_cpus, log_path.parent)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"load generator failed (exit {proc.returncode}): {supervisor.tail(log_path, 15)}")
    raw = json.loads(result_path.read_text())
    result_path.unlink()
    return raw


def reported_windows(raw: dict, m: Measurement) -> int:
    """Index of the first window the point's metrics come from: the stable tail the generator found (both
    throughput and p50 agreed), else the last ``m.windows`` windows (an unstable point, flagged).  The earlier
    windows stay in the record's ``windows`` (the timeline) but not in its metrics."""
    start = raw.get("stable_from")
    n = len(raw["windows"])
    return max(0, n - m.windows) if start is None else min(int(start), max(0, n - 1))


#: Generator limits beyond which a point is ``generator_bound`` (docs/methodology.md).
LOOP_LAG_P99_MS = 5.0  # a send or a timestamp later than this is the generator's delay, not the server's
#: event-loop lag with the generator's busiest process below this CPU share is the machine's (steal, scheduling), not
#: the generator's load: on this VM, steal bursts of 8-30 % gave a lag p99 of 5-10 ms at 7-13 % generator CPU
LAG_BUSY_PCT = 50.0
RUN_QUEUE_PCT = 10.0  # the generator waited for a CPU this share of the time
CEILING_FRACTION = 0.9  # closed loop at >= 90 % of the calibrated ceiling of the generator against a no-op server


def generator_limits(gen: dict, throughput: float | None, ceiling_rps: float | None, mode: str) -> dict[str, Any]:
    """Which of the generator's limits a point reached: CPU, run-queue delay, event-loop lag, the calibrated
    ceiling.  ``factors`` empty: the generator was not the bottleneck.  Event-loop lag counts only while the generator
    is busy (its busiest process at >= ``LAG_BUSY_PCT`` CPU); below, the lag is the machine's (``machine_lag``: the
    point is flagged ``interference`` with that reason, not ``generator_bound``)."""
    factors = []
    if generator_saturated(gen):
        factors.append(f"cpu {gen['cpu_pct']:.0f}%")
    lag = (gen.get("loop_lag_ms") or {}).get("p99")
    machine_lag = None
    if lag is not None and lag > LOOP_LAG_P99_MS:
        if (gen.get("cpu_pct") or 0.0) >= LAG_BUSY_PCT:
            factors.append(f"event-loop lag p99 {lag:.1f} ms")
        else:
            machine_lag = (f"generator event-loop lag p99 {lag:.1f} ms at {gen.get('cpu_pct') or 0.0:.0f} % generator "
                           f"CPU: the machine delayed it (steal, scheduling), not its load")
    rq = gen.get("run_queue_delay_pct")
    if rq is not None and rq > RUN_QUEUE_PCT:
        factors.append(f"run-queue delay {rq:.0f}% of the time")
    frac = throughput / ceiling_rps if throughput and ceiling_rps else None
    if mode == "closed" and frac is not None and frac >= CEILING_FRACTION:
        factors.append(f"{100 * frac:.0f}% of the calibrated ceiling {ceiling_rps:.0f} rps")
    return {"factors": factors, "cpu_pct": gen.get("cpu_pct"), "loop_lag_p99_ms": lag, "run_queue_delay_pct": rq,
            "ceiling_fraction": frac, "machine_lag": machine_lag}


def wait_for(proc: subprocess.Popen, budget_s: float, watch: Callable[[], None] | None = None,
             what: str = "load generator", error: type[Exception] = RuntimeError) -> None:
    """Wait for ``proc`` to exit, calling ``watch`` (e.g. "is the server still alive?") every 0.2 s; ``error`` if it
    runs past ``budget_s``."""
    deadline = time.perf_counter() + budget_s
    while proc.poll() is None:
        supervisor.raise_if_stop_requested()
        if time.perf_counter() > deadline:
            raise error(f"{what} did not finish within {budget_s:.0f} s")
        if watch is not None:
            watch()
        time.sleep(0.2)


def summarize_point(raw: dict, resources: dict, m: Measurement, batch: int = 1,
                    min_duration_s: float | None = None, ceiling_rps: float | None = None) -> dict[str, Any]:
    """Metrics from the reported (stable) windows (merged histograms, our own window clock), plus validity flags."""
    from servingbench.measure.stats import LatencyHistogram

    start = reported_windows(raw, m)
    reported = raw["windows"][start:]
    total = LatencyHistogram()
    per_model: dict[str, LatencyHistogram] = {}
    count = errors = 0
    for w in reported:
        total.merge(LatencyHistogram.from_dict(w["histogram"]))
        for name, h in w["per_model"].items():
            per_model.setdefault(name, LatencyHistogram()).merge(LatencyHistogram.from_dict(h))
        count += w["count"]
        errors += w["errors"]
    dur = sum(w["end"] - w["start"] for w in reported)
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
        "errors_by_kind": raw["errors_by_kind"],  # of the whole run (warm-up excluded), as late sends
        "late_sends": raw.get("late_sends", 0),
        "max_lateness_s": raw.get("max_lateness_s", 0.0),
        "window_metric": raw["window_metric"],
        "per_model_latency_s": {n: h.percentiles() for n, h in per_model.items() if h.count},
        "connections_opened": raw.get("connections_opened"),
    }
    gen = raw["generator"]
    limits = generator_limits(gen, metrics["throughput_rps"], ceiling_rps, raw["mode"])
    flags, reasons = [], {}
    if dur < (min_duration_s if min_duration_s is not None else m.window * m.windows * 0.95):
        flags.append("too_short")
    if count < m.min_requests:
        flags.append("too_few_requests")
    if not raw["stable"]:
        flags.append("unstable")
    if any(w["count"] == 0 for w in reported) or not count:
        flags.append("stalled")
        reasons["stalled"] = "a measured window completed no request"
    if limits["factors"]:
        flags.append("generator_bound")
        reasons["generator_bound"] = ", ".join(limits["factors"])
    if metrics["error_rate"] and metrics["error_rate"] > 0.001:
        flags.append("errors")
    if raw["mode"] == "open" and count and raw.get("late_sends", 0) / count > 0.01:
        flags.append("late_sends")
    inter = "; ".join(x for x in (_interference_flags(resources), limits["machine_lag"]) if x)
    if inter:
        flags.append("interference")
        reasons["interference"] = inter
    return {
        "metrics": metrics,
        "histogram": total.to_dict(),
        "windows": [{k: v for k, v in w.items() if k != "per_model"} for w in raw["windows"]],
        "reported_from": start,
        "resources": resources,
        "generator": {**gen, "cores": max(1, len(gen.get("cpus") or [1])), "limits": limits},
        "error_examples": raw.get("error_examples", {}),
        "validity": {"valid": not flags, "flags": flags, "reasons": reasons},
    }


def _interference_flags(resources: dict) -> str:
    """Why the resource sampler saw other work on the server's or generator's cores ('' when it did not)."""
    summary = resources.get("interference")
    if not summary:
        return ""
    from servingbench.measure.interference import interference_flags

    flags, why = interference_flags(summary)
    return "; ".join(why) if flags else ""


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
