"""The load generator process: locust as a library, driven by a JSON plan, writing a JSON result.

Run as ``python -m servingbench.workloads.generator PLAN.json``.  It is always a separate process (locust
monkey-patches the standard library with gevent, which the harness must not inherit), pinned by the harness to its
own CPU set.

Timing lives in one place, :meth:`_Target.send`, with ``time.perf_counter``.  Bodies are pre-encoded by the
harness through the adapter's pure ``request()``; every ``sample_every``-th response is decoded with the adapter's
``decode()`` and compared with the reference output for that input.

Closed loop: ``users`` locust users, each sending its next request as soon as the previous one returns.
Open loop: a shared schedule of *intended* send times (Poisson or constant); a pool of ``max_in_flight`` users
takes the next intended time, waits for it, sends.  Latency counts from the intended time, so when the server
stalls and every user is busy, the backlog shows up in the latencies instead of being hidden (coordinated
omission).  Sends later than ``late_threshold_s`` are counted.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402

# A send counts as late when it leaves more than this after its intended time (gevent scheduling on a loaded
# 2-core machine jitters by a few ms; beyond 10 ms the generator could not keep the schedule).
LATE_THRESHOLD_S = 0.010


@dataclass
class _Window:
    start: float
    end: float = 0.0
    count: int = 0
    errors: int = 0
    hist: Any = None
    per_model: dict = field(default_factory=dict)


class _Recorder:
    """Per-window latency histograms (completion time decides the window) and error counters."""

    def __init__(self) -> None:
        from servingbench.measure.stats import LatencyHistogram

        self._H = LatencyHistogram
        self.measuring = False
        self.windows: list[_Window] = []
        self.errors_by_kind: dict[str, int] = {}
        self.error_examples: dict[str, str] = {}
        self.late = 0
        self.max_late = 0.0
        self.warmup_requests = 0
        self.sampled = 0

    def open_window(self, now: float) -> None:
        if self.windows and not self.windows[-1].end:
            self.windows[-1].end = now
        self.windows.append(_Window(start=now, hist=self._H()))
        self.measuring = True

    def close(self, now: float) -> None:
        if self.windows and not self.windows[-1].end:
            self.windows[-1].end = now
        self.measuring = False

    def record(self, model: str, latency: float, error: str | None, detail: str = "", late: float = 0.0) -> None:
        if not self.measuring:
            self.warmup_requests += 1
            return
        w = self.windows[-1]
        w.count += 1
        if late > LATE_THRESHOLD_S:
            self.late += 1
            self.max_late = max(self.max_late, late)
        if error:
            w.errors += 1
            self.errors_by_kind[error] = self.errors_by_kind.get(error, 0) + 1
            self.error_examples.setdefault(error, detail[:300])
            return
        w.hist.record(latency)
        pm = w.per_model.get(model)
        if pm is None:
            pm = w.per_model[model] = self._H()
        pm.record(latency)


class _Target:
    """One model endpoint with its pre-encoded bodies and expected outputs."""

    def __init__(self, spec: dict, adapter, model_spec, sample_every: int) -> None:
        self.model = spec["model"]
        self.url = spec["url"]
        self.method = spec["method"]
        # locust's client asks for gzip/br by default; servers would then compress every answer.
        self.headers = {"Accept-Encoding": "identity", **spec["headers"]}
        self.bodies = [base64.b64decode(b) for b in spec["bodies"]]
        self.expected = np.load(spec["expected"]) if spec.get("expected") else None
        self.rtol, self.atol = spec.get("rtol", 1e-4), spec.get("atol", 1e-4)
        self.adapter = adapter
        self.model_spec = model_spec
        self.sample_every = sample_every
        self.i = 0

    def send(self, client, recorder: _Recorder, timeout: float, t_start: float | None = None) -> None:
        """Send the next body; record latency from ``t_start`` (intended time) or from the send."""
        idx = self.i % len(self.bodies)
        self.i += 1
        sample = self.sample_every and (self.i % self.sample_every == 0)
        t_send = time.perf_counter()
        t0 = t_start if t_start is not None else t_send
        late = t_send - t_start if t_start is not None else 0.0
        error, detail = None, ""
        try:
            resp = client.request(self.method, self.url, data=self.bodies[idx], headers=self.headers)
            body = resp.content or b""
            status = resp.status_code
            t_done = time.perf_counter()
            if status == 0:  # no HTTP answer: locust puts the exception in .error
                error, detail = _classify_exception(resp.error)
            elif not 200 <= status < 300:
                error, detail = "status", f"HTTP {status}: {body[:200]!r}"
            elif sample:
                error, detail = self._check(status, body, idx)
        except Exception as e:  # a generator must never die of one bad response
            t_done = time.perf_counter()
            error, detail = _classify_exception(e)
        recorder.record(self.model, t_done - t0, error, detail, late)

    def _check(self, status: int, body: bytes, idx: int) -> tuple[str | None, str]:
        from servingbench.adapters.base import DecodeError

        try:
            out = self.adapter.decode(self.model_spec, status, body)
        except DecodeError as e:
            return e.kind if e.kind != "status" else "malformed", str(e)
        except Exception as e:  # noqa: BLE001
            return "malformed", f"{type(e).__name__}: {e}"
        if self.expected is not None:
            exp = self.expected[idx]
            if out.shape != exp.shape:
                return "shape", f"shape {out.shape} != expected {exp.shape}"
            if not np.allclose(out, exp, rtol=self.rtol, atol=self.atol):
                return "wrong_output", f"max abs diff {float(np.max(np.abs(out - exp))):.3g}"
        return None, ""


def _classify_exception(e: BaseException | None) -> tuple[str, str]:
    name = type(e).__name__ if e else "unknown"
    text = f"{name}: {e}"
    low = text.lower()
    if "timeout" in low or "timed out" in low:
        return "timeout", text
    return "connection", text


def _ssl_factory(plan: dict):
    ca, cert, key = plan.get("ca_file"), plan.get("client_cert"), plan.get("client_key")
    if not ca:
        return None

    def factory():
        import gevent.ssl

        ctx = gevent.ssl.create_default_context(cafile=ca)
        if cert and key:
            ctx.load_cert_chain(cert, key)
        return ctx

    return factory


def run(plan: dict) -> dict:
    from locust import FastHttpUser, constant, task
    from locust.env import Environment

    from servingbench.adapters import registry
    from servingbench.models import get_model

    # No framework: calibration against a trivial endpoint, nothing to decode.
    adapter = registry.get(plan["framework"]) if plan.get("framework") else None
    targets = []
    for t in plan["targets"]:
        spec = get_model(t["model_name"], **t.get("model_params", {})) if adapter else None
        targets.append(_Target(t, adapter, spec, plan.get("sample_every", 50) if adapter else 0))
    weights = np.array([t.get("weight", 1.0) for t in plan["targets"]], dtype=float)
    weights = weights / weights.sum()
    rng = np.random.default_rng(plan.get("seed", 0))
    recorder = _Recorder()
    timeout = plan.get("timeout_s", 30.0)
    mode = plan["mode"]

    def pick() -> _Target:
        return targets[0] if len(targets) == 1 else targets[int(rng.choice(len(targets), p=weights))]

    schedule = _Schedule(plan, rng) if mode == "open" else None

    class BenchUser(FastHttpUser):
        wait_time = constant(0)
        network_timeout = timeout
        connection_timeout = timeout
        insecure = False
        ssl_context_factory = _ssl_factory(plan)
        concurrency = 1
        host = targets[0].url

        @task
        def one(self) -> None:
            if schedule is None:
                pick().send(self.client, recorder, timeout)
                return
            intended = schedule.next()
            delay = intended - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            pick().send(self.client, recorder, timeout, t_start=intended)

    env = Environment(user_classes=[BenchUser])
    runner = env.create_local_runner()
    users = plan["users"] if mode == "closed" else plan["max_in_flight"]
    rusage0 = os.times()
    t_begin = time.perf_counter()
    if schedule is not None:
        schedule.start(t_begin)
    runner.start(users, spawn_rate=max(users, 1) * 20)
    gevent.sleep(plan["warmup_s"])
    metric_values: list[float] = []
    stable = False
    cpu_start = os.times()
    t_measure = time.perf_counter()
    recorder.open_window(t_measure)
    max_windows = max(int(plan["max_duration_s"] // plan["window_s"]), plan["windows"])
    for _ in range(max_windows):
        gevent.sleep(max(0.0, recorder.windows[-1].start + plan["window_s"] - time.perf_counter()))
        now = time.perf_counter()
        w = recorder.windows[-1]
        w.end = now
        metric_values.append(_window_metric(w, mode))
        if len(metric_values) >= plan["windows"] and _stable(metric_values, plan["windows"], plan["tolerance"]):
            stable = True
            break
        if len(recorder.windows) < max_windows:
            recorder.open_window(now)
    t_end = time.perf_counter()
    recorder.close(t_end)
    cpu_end = os.times()
    runner.quit()
    gen_cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    return {
        "mode": mode,
        "stable": stable,
        "measured_s": t_end - t_measure,
        "warmup_s": t_measure - t_begin,
        "warmup_requests": recorder.warmup_requests,
        "windows": [
            {
                "start": w.start - t_measure,
                "end": w.end - t_measure,
                "count": w.count,
                "errors": w.errors,
                "histogram": w.hist.to_dict(),
                "per_model": {m: h.to_dict() for m, h in w.per_model.items()},
            }
            for w in recorder.windows
        ],
        "window_metric": metric_values,
        "errors_by_kind": recorder.errors_by_kind,
        "error_examples": recorder.error_examples,
        "late_sends": recorder.late,
        "max_lateness_s": recorder.max_late,
        "generator": {
            "cpu_s": gen_cpu,
            "cpu_pct": 100.0 * gen_cpu / max(t_end - t_measure, 1e-9),
            "cpus": sorted(os.sched_getaffinity(0)),
            "pid": os.getpid(),
            "process_cpu_total_s": (cpu_end.user + cpu_end.system) - (rusage0.user + rusage0.system),
        },
    }


def _window_metric(w: _Window, mode: str) -> float:
    """Closed loop: throughput of the window; open loop (throughput is fixed by the rate): median latency."""
    dur = max(w.end - w.start, 1e-9)
    if mode == "closed":
        return w.count / dur
    return w.hist.percentile(50) if w.hist.count else float("inf")


def _stable(values: list[float], n: int, tol: float) -> bool:
    from servingbench.measure.stats import StabilityRule

    return StabilityRule(windows=n, tolerance=tol).is_stable(values)


class _Schedule:
    """Intended send times (absolute perf_counter seconds), produced on demand and shared by all users."""

    def __init__(self, plan: dict, rng: np.random.Generator) -> None:
        self.rate = float(plan["rate"])
        self.poisson = plan.get("arrival", "poisson") == "poisson"
        self.rng = rng
        self.t = 0.0

    def start(self, t0: float) -> None:
        self.t = t0

    def next(self) -> float:
        gap = self.rng.exponential(1.0 / self.rate) if self.poisson else 1.0 / self.rate
        self.t += gap
        return self.t


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        plan = json.load(f)
    result = run(plan)
    tmp = plan["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, plan["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
