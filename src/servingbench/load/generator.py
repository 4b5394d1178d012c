"""The load generator process: locust as a library, driven by a JSON plan, writing a JSON result.

Run as ``python -m servingbench.load.generator PLAN.json`` (the controller, started by the harness; or started ahead
as a warm spare with ``--await-plan``, which reads the plan's path from stdin: the ~0.8 s of imports then overlap
the harness's work between points), or as
``python -m servingbench.load.generator --worker --master-host HOST --master-port PORT`` (a locust worker
that takes its plan from the controller: ``servingbench generator-worker`` on another host).  The generator is
always a separate process (locust monkey-patches the standard library with gevent, which the harness must not
inherit), pinned by the harness to its own CPU set.

Timing lives in one place, :meth:`_Target.send`, with ``time.perf_counter``.  Bodies are pre-encoded by the
harness through the adapter's pure ``request()``; every ``sample_every``-th response is decoded with the adapter's
``decode()`` and compared with the reference output for that input.

Closed loop: ``users`` locust users, each sending its next request as soon as the previous one returns.
Open loop: a schedule of *intended* send times (Poisson or constant) and a pool of ``max_in_flight`` users.  One
dispatcher greenlet per process waits for each intended time and hands it to the most recently freed idle user
(LIFO, :class:`~servingbench.load.common.HandOff`), which sends at once.  So the users that send, and their
keep-alive connections, are the ones used last: the connections in use follow rate x latency, not the pool size
(FIFO made every user of the pool take its turn: at 40 rps, each connection idled 6.4 s, past uvicorn's 5 s
keep-alive, and every request opened a new one).  Latency counts from the intended time, so when the server stalls
and every user is busy, the backlog shows up in the latencies instead of being hidden (coordinated omission).
Sends later than ``LATE_THRESHOLD_S`` are counted.  With several processes, constant streams are phase-offset
(process ``i`` of ``n`` starts ``i / rate`` later: one evenly spaced stream); Poisson streams are independent.
Shape: users over time from a locust ``LoadTestShape`` (step or ramp stages); windows are cut at stage boundaries.

Stability (closed and open loop): each merged window carries ``throughput_rps`` (successful answers per second)
and ``p50_s`` (median of its merged histogram); the point stops at the first window where the last ``windows``
windows agree on both (:func:`servingbench.measure.stats.stable_tail`), and ``stable_from`` says where the reported
windows begin (None: never stable; every window stays in ``windows``).

Generator health, per process over its measured windows (first window's open to last window's end), merged in
``generator`` (:func:`servingbench.load.common.merge_health`): ``connections_opened`` (new TCP connections to the
server, counted exactly where geventhttpclient connects; ``_measured``: during the windows only), ``loop_lag_ms``
{p99, max} (a greenlet sleeping ``LAG_PROBE_S`` again and again: how late it wakes; gevent's libev loop waits in
epoll with millisecond timeouts, so an idle loop already shows up to ~1 ms), ``run_queue_delay_ms`` /
``run_queue_delay_pct`` (``/proc/self/schedstat``, 2nd field: time the event loop's thread was runnable but
waited for a CPU, and its share of the wall time).

Processes.  The *controller* decides when windows begin and end and when a point is stable; the *load* side
(:class:`_Load`) sends requests and records them.  With ``generator.workers`` 0 both live in one process on
locust's ``LocalRunner``; otherwise the controller runs locust's ``MasterRunner`` and every worker process a
``WorkerRunner`` (``workers`` started here, ``remote_workers`` connecting from elsewhere).  The same custom
messages serve both (``LocalRunner.send_message`` calls the listener in-process):

* controller -> load ``sb_plan`` {plan, index, n}: build the targets (process ``index`` of ``n``); answer
  ``sb_ready``.  The controller re-sends it until answered.
* controller -> load ``sb_window`` {action, n[, t0, host]}: ``start`` (open-loop schedules begin, at the
  controller's ``t0`` where the process shares its clock), ``open`` / ``end`` window ``n`` on the local clock,
  ``final``; every process answers ``sb_report`` (an ended window's count, errors and HdrHistogram; on ``final``
  its error kinds, late sends, CPU and health).

The controller merges every window across processes by adding counts and histograms (never averaging percentiles),
so a run with workers yields exactly the result format of a single process.  Open-loop rates are split evenly:
worker ``i`` of ``n`` follows its own schedule at ``rate / n`` (independent Poisson streams add up to one at
``rate``; constant ones are phase-offset); locust itself distributes closed-loop users.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, LoadTestShape, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from servingbench.load.common import (  # noqa: E402
    HandOff,
    Schedule,
    merge_health,
    merge_window,
    read_run_delay_ns,
    schedule_offset,
    shape_cuts,
    shape_users,
    stability_series,
)
from servingbench.measure.stats import stable_tail  # noqa: E402

# A send counts as late when it leaves more than this after its intended time (gevent scheduling on a loaded
# 2-core machine jitters by a few ms; beyond 10 ms the generator could not keep the schedule).
LATE_THRESHOLD_S = 0.010
REPLY_TIMEOUT_S = 15.0  # a process that does not answer a window cut within this is lost
# Open loop: the next intended send goes to the most recently freed user (False: the least recently freed, the
# old FIFO order that spread sends over the whole pool and reopened a connection per request at low rates).
OPEN_LOOP_LIFO = True
LAG_PROBE_S = 0.010  # the event-loop lag probe's sleep: how late it wakes is the loop's lag


# Every new TCP connection of the users' HTTP clients (geventhttpclient under locust's FastHttpUser) goes through
# ConnectionPool._connect_socket (SSLConnectionPool calls it before its TLS handshake): counting there is exact
# (one count per established TCP connection; a connect that fails is an error, not a connection) and costs one
# integer increment per connection.  The locust master/worker channel (zmq) does not go through it.
_CONNECTIONS = [0]


def _count_connections() -> None:
    from geventhttpclient.connectionpool import ConnectionPool

    original = ConnectionPool._connect_socket
    if getattr(original, "_servingbench_counts", False):
        return

    def counting(self, sock, address):
        out = original(self, sock, address)
        _CONNECTIONS[0] += 1
        return out

    counting._servingbench_counts = True  # type: ignore[attr-defined]
    ConnectionPool._connect_socket = counting


_count_connections()


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

    def __init__(self, spec: dict, codec, model_spec, sample_every: int) -> None:
        self.model = spec["model"]
        self.url = spec["url"]
        self.method = spec["method"]
        # locust's client asks for gzip/br by default; servers would then compress every answer.
        self.headers = {"Accept-Encoding": "identity", **spec["headers"]}
        self.bodies = [base64.b64decode(b) for b in spec["bodies"]]
        if spec["expected_npy"]:  # inlined for workers on other hosts
            self.expected = np.load(io.BytesIO(base64.b64decode(spec["expected_npy"])))
        else:
            self.expected = np.load(spec["expected"]) if spec["expected"] else None
        self.rtol, self.atol = spec["rtol"], spec["atol"]
        self.codec = codec
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
        from servingbench.contract import DecodeError

        try:
            out = self.codec.decode(self.model_spec, status, body)
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


def _checked(plan: dict) -> dict:
    """The plan validated against :class:`~servingbench.load.plan.GeneratorPlan` (every key present, typed)."""
    from servingbench.load.plan import GeneratorPlan

    return GeneratorPlan.model_validate(plan).model_dump()


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
    if plan.get("pem"):  # inlined for workers on other hosts: write them where only this process reads them
        d = tempfile.mkdtemp(prefix="servingbench-gen-")
        _CLEANUP.append(lambda: shutil.rmtree(d, ignore_errors=True))
        paths = {}
        for k, text in plan["pem"].items():
            paths[k] = os.path.join(d, k)
            fd = os.open(paths[k], os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ca, cert, key = paths.get("ca_file"), paths.get("client_cert"), paths.get("client_key")

    def factory():
        import gevent.ssl

        ctx = gevent.ssl.create_default_context(cafile=ca)
        if cert and key:
            ctx.load_cert_chain(cert, key)
        return ctx

    return factory




_CLEANUP: list[Callable[[], None]] = []


class _Load:
    """The sending side of one process: targets, recorder, open-loop schedule (its share of the rate) and the
    hand-off of its intended sends to idle users, and this process's health: connections opened, event-loop lag,
    run-queue delay."""

    def __init__(self, plan: dict, index: int = 0, n: int = 1) -> None:
        from servingbench.adapters import registry
        from servingbench.contract import Deployment
        from servingbench.models import get_model
        from servingbench.models.artifacts import spec_from_meta

        plan = _checked(plan)
        # The deployment's own codec, rebuilt from its configuration; no framework: calibration against a trivial
        # endpoint, nothing to decode.
        codec = None
        if plan["framework"]:
            codec = registry.get(plan["framework"]).codec(Deployment.from_description(plan["deployment"]))
        self.index = index
        self.targets = []
        for t in plan["targets"]:
            spec = None
            if codec:
                spec = spec_from_meta(t["model_spec"]) if t.get("model_spec") else get_model(t["model_name"],
                                                                                            **t["model_params"])
            self.targets.append(_Target(t, codec, spec, plan["sample_every"] if codec else 0))
        weights = np.array([t["weight"] for t in plan["targets"]], dtype=float)
        self.weights = weights / weights.sum()
        self.rng = np.random.default_rng(plan["seed"] * 1009 + index)
        self.recorder = _Recorder()
        self.timeout = plan["timeout_s"]
        self.schedule: Schedule | None = None
        self.handoff: HandOff | None = None
        self._freed = None
        if plan["mode"] == "open":
            offset = schedule_offset(index, n, float(plan["rate"]), plan["arrival"])
            self.schedule = Schedule(float(plan["rate"]) / n, plan["arrival"], self.rng, offset)
            self.handoff = HandOff(lifo=OPEN_LOOP_LIFO)
            self._freed = gevent.event.Event()
        self._greenlets: list = []
        self.cpu_start = os.times()
        # Health over the measured windows: snapshots at the first window's open and at every window's end.
        self._lag = None
        self._lag_max = 0.0
        self._conn0 = _CONNECTIONS[0]  # connections are counted per process: this load's own from here
        self._health0: tuple[float, int | None, int] | None = None  # (perf_counter, run delay ns, connections)
        self._health1: tuple[float, int | None, int] | None = None
        BenchUser.configure(plan, self.targets[0].url, self)

    def pick(self) -> _Target:
        if len(self.targets) == 1:
            return self.targets[0]
        return self.targets[int(self.rng.choice(len(self.targets), p=self.weights))]

    def one(self, client) -> None:
        if self.schedule is None:
            self.pick().send(client, self.recorder, self.timeout)
            return
        intended = self._next_send()
        self.pick().send(client, self.recorder, self.timeout, t_start=intended)

    # ---- open loop: one dispatcher hands each intended send to an idle user --------------------------------------
    def _next_send(self) -> float:
        """Wait (idle) until the dispatcher hands this user an intended send time; that time, already reached."""
        waiter = gevent.event.AsyncResult()
        self.handoff.free(waiter)
        self._freed.set()
        try:
            return waiter.get()
        finally:
            if not waiter.ready():  # stopped while idle (locust stops its users): not a candidate any more
                self.handoff.discard(waiter)

    def _dispatch(self) -> None:
        """Intended send times in order; at each, the next idle user (most recently freed first) gets it.  When
        every user is busy the send waits for the first one freed: it leaves late, and its latency still counts
        from the intended time."""
        while True:
            intended = self.schedule.next()
            while (delay := intended - time.perf_counter()) > 0:  # a timer may fire a hair early: never send early
                gevent.sleep(delay)
            user = self.handoff.take()
            while user is None:
                self._freed.clear()
                self._freed.wait()
                user = self.handoff.take()
            user.set(intended)

    # ---- health probes ----------------------------------------------------------------------------------------
    def _probe_lag(self) -> None:
        """Sleep LAG_PROBE_S again and again; how late each wake-up comes is the event loop's lag (a busy or
        descheduled loop delays every send and every timing of this process by as much)."""
        while True:
            t = time.perf_counter()
            gevent.sleep(LAG_PROBE_S)
            late = max(0.0, time.perf_counter() - t - LAG_PROBE_S)
            self._lag.record(late)
            self._lag_max = max(self._lag_max, late)

    def _health_snapshot(self) -> tuple[float, int | None, int]:
        return time.perf_counter(), read_run_delay_ns(), _CONNECTIONS[0]

    def _health(self) -> dict:
        """This process's health fields over its measured windows (first open to last end)."""
        out: dict[str, Any] = {"connections_opened": _CONNECTIONS[0] - self._conn0, "connections_opened_measured": None,
                               "loop_lag_ms": {"p99": None, "max": None},
                               "run_queue_delay_ms": None, "run_queue_delay_pct": None}
        if self._lag is not None and self._lag.count:
            out["loop_lag_ms"] = {"p99": 1e3 * self._lag.percentile(99), "max": 1e3 * self._lag_max,
                                  "samples": self._lag.count}
        h0, h1 = self._health0, self._health1
        if h0 is not None and h1 is not None:
            out["connections_opened_measured"] = h1[2] - h0[2]
            wall = h1[0] - h0[0]
            if h0[1] is not None and h1[1] is not None and wall > 0:
                delay_s = (h1[1] - h0[1]) / 1e9
                out["run_queue_delay_ms"] = 1e3 * delay_s
                out["run_queue_delay_pct"] = 100.0 * delay_s / wall
        return out

    def cut(self, action: str, n: int, t0: float | None = None, host: str | None = None) -> dict:
        """Apply the controller's ``action`` at this process's clock; the report for the controller.

        ``start``: the open-loop schedule begins (at the controller's ``t0`` when this process shares its clock:
        same host, perf_counter is CLOCK_MONOTONIC; else now); ``open``: window ``n`` begins; ``end``: window
        ``n`` ends (its counts and histogram go back); ``final``: the process's totals (error kinds, late sends,
        CPU, health).
        """
        now = time.perf_counter()
        rec = self.recorder
        out: dict[str, Any] = {"n": n, "index": self.index}
        if action == "start":
            if self.schedule is not None:
                same_clock = t0 is not None and host == socket.gethostname() and abs(now - t0) < 1.0
                self.schedule.start(t0 if same_clock else now)
                self._greenlets.append(gevent.spawn(self._dispatch))
        elif action == "open":
            if not rec.windows:
                self.cpu_start = os.times()
                self._health0 = self._health1 = self._health_snapshot()
                from servingbench.measure.stats import LatencyHistogram

                self._lag = LatencyHistogram()
                self._greenlets.append(gevent.spawn(self._probe_lag))
            rec.open_window(now)
        elif action == "end":
            rec.close(now)
            self._health1 = self._health_snapshot()
            w = rec.windows[-1]
            out["window"] = {"duration": w.end - w.start, "count": w.count, "errors": w.errors,
                             "histogram": w.hist.to_dict(),
                             "per_model": {m: h.to_dict() for m, h in w.per_model.items()}}
        elif action == "final":
            gevent.killall(self._greenlets, block=False)
            self._greenlets = []
            cpu = os.times()
            out["final"] = {
                "errors_by_kind": rec.errors_by_kind, "error_examples": rec.error_examples, "late_sends": rec.late,
                "max_lateness_s": rec.max_late, "warmup_requests": rec.warmup_requests,
                "cpu_s": (cpu.user + cpu.system) - (self.cpu_start.user + self.cpu_start.system),
                "cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid(), "host": socket.gethostname(),
                **self._health(),
            }
        return out


_LOAD: _Load | None = None


class BenchUser(FastHttpUser):
    """One locust user; what it sends comes from this process's :class:`_Load`."""

    wait_time = constant(0)
    network_timeout = 30.0
    connection_timeout = 30.0
    insecure = False
    concurrency = 1
    host = "http://127.0.0.1"  # replaced by the plan's target before any user starts

    @classmethod
    def configure(cls, plan: dict, host: str, load: _Load) -> None:
        global _LOAD
        _LOAD = load
        cls.host = host
        cls.network_timeout = cls.connection_timeout = plan["timeout_s"]
        factory = _ssl_factory(plan)
        # staticmethod: a plain function stored on the class would become a bound method (called with self).
        cls.ssl_context_factory = staticmethod(factory) if factory is not None else None

    @task
    def one(self) -> None:
        _LOAD.one(self.client)


class _StageShape(LoadTestShape):
    """Step or ramp stages (see ``scenarios.schema.Shape``); holds the last stage's users past the end (the
    controller ends the run, so the last window is not cut short by locust stopping the users)."""

    def __init__(self, stages: list[dict], ramp: bool, start_users: int) -> None:
        super().__init__()
        self.stages, self.ramp, self.start_users = stages, ramp, start_users
        self.spawn_rate = max(max(st["users"] for st in stages), start_users) * 20.0

    def tick(self):
        return shape_users(self.stages, self.ramp, self.start_users, self.get_run_time()), self.spawn_rate


def _register_load_side(runner) -> None:
    """Listeners of the sending side: build the plan's load, cut windows, answer the controller."""

    def on_plan(environment, msg, **kw) -> None:
        d = msg.data
        # The master re-sends a plan until it is answered (a plan may arrive before this listener exists).
        if _LOAD is None or _LOAD.index != d["index"]:
            _Load(d["plan"], d["index"], d["n"])
        runner.send_message("sb_ready", {"index": d["index"], "pid": os.getpid(), "host": socket.gethostname(),
                                         "cpus": sorted(os.sched_getaffinity(0))})

    def on_window(environment, msg, **kw) -> None:
        if _LOAD is not None:
            d = msg.data
            runner.send_message("sb_report", _LOAD.cut(d["action"], d["n"], d.get("t0"), d.get("host")))

    runner.register_message("sb_plan", on_plan)
    runner.register_message("sb_window", on_window)


class _Controller:
    """The controller's side of the messages: who is ready, and every process's report for each window cut."""

    def __init__(self, runner, processes: int, alive: Callable[[], None]) -> None:
        self.runner, self.processes, self.alive = runner, processes, alive
        self.ready: dict[str, dict] = {}  # by locust client id
        self.reports: dict[int, list[dict]] = {}
        runner.register_message("sb_ready", lambda environment, msg, **kw: self.ready.setdefault(msg.node_id, msg.data))
        runner.register_message("sb_report",
                                lambda environment, msg, **kw: self.reports.setdefault(msg.data["n"], []).append(msg.data))

    def poll(self, done: Callable[[], bool], timeout: float) -> bool:
        """Let locust's greenlets deliver messages until ``done()`` or ``timeout``; whether it is done."""
        deadline = time.perf_counter() + timeout
        while not done():
            if time.perf_counter() > deadline:
                return False
            self.alive()
            gevent.sleep(0.002)
        return True

    def wait(self, done: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
        if not self.poll(done, timeout):
            raise RuntimeError(f"load generator: {what() if callable(what) else what} within {timeout:.0f} s")

    def cut(self, action: str, n: int, **extra: Any) -> list[dict]:
        self.runner.send_message("sb_window", {"action": action, "n": n, **extra})
        self.wait(lambda: len(self.reports.get(n, [])) >= self.processes, REPLY_TIMEOUT_S,
                  lambda: f"{self.processes - len(self.reports.get(n, []))} generator process(es) did not answer "
                          f"'{action}' {n}")
        return sorted(self.reports.pop(n), key=lambda r: r["index"])


def _inline_plan(plan: dict) -> dict:
    """The plan as sent to workers: expected outputs and PEM files inlined (a worker may run on another host)."""
    out = dict(plan)
    targets = []
    for t in plan["targets"]:
        t = dict(t)
        if t.get("expected"):
            with open(t.pop("expected"), "rb") as f:
                t["expected_npy"] = base64.b64encode(f.read()).decode()
        targets.append(t)
    out["targets"] = targets
    pem = {}
    for k in ("ca_file", "client_cert", "client_key"):
        if plan.get(k):
            with open(plan[k]) as f:
                pem[k] = f.read()
    if pem:
        out["pem"] = pem
    return out


def _die_with_parent() -> None:
    """In a local worker, before exec: SIGKILL when the controller dies, however it dies (Linux prctl)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn_local_workers(n: int, host: str, port: int) -> list[subprocess.Popen]:
    """``n`` worker processes here, spread over this process's cores (one core each where there are enough)."""
    cpus = sorted(os.sched_getaffinity(0))
    dial = "127.0.0.1" if host in ("0.0.0.0", "*", "::", "") else host
    procs = []
    for i in range(n):
        p = subprocess.Popen(
            [sys.executable, "-m", "servingbench.load.generator", "--worker", "--master-host", dial,
             "--master-port", str(port)],
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent,
        )  # same session and process group as this controller: the harness's killpg reaches them too
        try:
            os.sched_setaffinity(p.pid, {cpus[i % len(cpus)]} if len(cpus) >= n else set(cpus))
        except OSError:
            pass
        procs.append(p)
    return procs


def run(plan: dict) -> dict:
    plan = _checked(plan)
    gen = plan["generator"]
    local_workers, remote_workers = gen["workers"], gen["remote_workers"]
    distributed = local_workers + remote_workers > 0
    mode = plan["mode"]
    shape = None
    if mode == "shape":
        shape = _StageShape(plan["stages"], plan["shape"] == "ramp", plan["start_users"])
    env = Environment(user_classes=[BenchUser], shape_class=shape)
    workers: list[subprocess.Popen] = []

    def alive() -> None:
        for p in workers:
            if p.poll() is not None:
                raise RuntimeError(f"load generator worker {p.pid} exited with {p.returncode}")

    if not distributed:
        runner = env.create_local_runner()
        processes = 1
        ctl = _Controller(runner, 1, alive)
        _register_load_side(runner)
    else:
        host, port = gen["master_bind"], int(gen["master_port"])
        runner = env.create_master_runner(master_bind_host=host, master_bind_port=port)
        processes = local_workers + remote_workers
        ctl = _Controller(runner, processes, alive)
        workers = _spawn_local_workers(local_workers, host, port)
    try:
        if distributed:
            ctl.wait(lambda: len(runner.clients.ready) >= processes, float(gen["connect_timeout_s"]),
                     lambda: f"only {len(runner.clients.ready)} of {processes} workers connected to the master at "
                             f"{host}:{port}")
        return _drive(plan, runner, ctl, processes, mode, distributed)
    finally:
        runner.quit()
        for p in workers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for fn in _CLEANUP:
            fn()


def _drive(plan: dict, runner, ctl: _Controller, processes: int, mode: str, distributed: bool) -> dict:
    wire = _inline_plan(plan) if distributed else plan
    clients = [c.id for c in runner.clients.all] if distributed else [None]
    for _ in range(60):  # a plan sent before a worker's listener existed is lost: re-send every second
        for i, client_id in enumerate(clients):
            if (client_id or "local") not in ctl.ready:
                runner.send_message("sb_plan", {"plan": wire, "index": i, "n": processes}, client_id=client_id)
        if ctl.poll(lambda: len(ctl.ready) >= processes, 1.0):
            break
    else:
        raise RuntimeError(f"load generator: {processes - len(ctl.ready)} generator process(es) did not load the "
                           "plan within 60 s")
    ready = sorted(ctl.ready.values(), key=lambda r: r["index"])
    cpu0 = os.times()
    t_begin = time.perf_counter()
    windows: list[dict] = []
    metric_values: list[float] = []
    stable_from: int | None = None
    n = 0

    def window(n: int, start: float) -> dict:
        """End window ``n`` everywhere and merge it; between its end and the next open no request is counted,
        and no time either (one message round trip: nothing at all with one process)."""
        reports = ctl.cut("end", n)
        end = time.perf_counter()
        return merge_window(reports, start - t_measure, end - t_measure)

    if mode == "shape":
        # Windows of window_s cut at stage boundaries; the first window of a stage is its transition.
        cuts = shape_cuts(plan["stages"], plan["window_s"])
        runner.start_shape()
        t_measure = time.perf_counter()
        for n, (end, stage, transition) in enumerate(cuts):
            start = time.perf_counter()
            ctl.cut("open", n)
            gevent.sleep(max(0.0, t_measure + end - time.perf_counter()))
            users = runner.user_count
            w = window(n, start)
            w.update(stage=stage, users=users, transition=transition)
            windows.append(w)
            metric_values.append(_window_metric(w, "closed"))
            _live_line(plan.get("live"), n, w)
        stable_from = 0  # stages are judged by the harness (load/point.shape_stages), each on its own windows
    else:
        users = plan["users"] if mode == "closed" else max(plan["max_in_flight"], processes)
        if mode == "open":
            # Every process's schedule starts now: at this t0 where it shares this clock (phase offsets of
            # constant streams are relative to it), else at its own now.
            ctl.cut("start", -1, t0=time.perf_counter(), host=socket.gethostname())
        runner.start(users, spawn_rate=max(users, 1) * 20)
        gevent.sleep(plan["warmup_s"])
        t_measure = time.perf_counter()
        max_windows = max(int(plan["max_duration_s"] // plan["window_s"]), plan["windows"])
        for n in range(max_windows):
            start = time.perf_counter()
            ctl.cut("open", n)
            gevent.sleep(max(0.0, start + plan["window_s"] - time.perf_counter()))
            windows.append(window(n, start))
            metric_values.append(_window_metric(windows[-1], mode))
            _live_line(plan.get("live"), n, windows[-1])
            # Stable when the last `windows` windows agree on throughput *and* p50 (closed and open loop).
            # Open loop: a window's throughput also varies with its random arrivals (sqrt(N)), allowed for.
            counts = [w["count"] for w in windows] if mode == "open" else None
            stable_from = stable_tail(*stability_series(windows), plan["windows"], plan["tolerance"], counts)
            if stable_from is not None:
                break
    finals = [r["final"] for r in ctl.cut("final", n + 1)]
    measured = sum(w["end"] - w["start"] for w in windows)
    return _result(plan, mode, stable_from, windows, metric_values, finals, t_begin, t_measure, measured, cpu0,
                   ready)


def _live_line(path: str | None, n: int, w: dict) -> None:
    """One line per finished window for a live display (``GeneratorPlan.live``); never fails the point."""
    if not path:
        return
    h = w["_hist"]
    line = {"window": n, "throughput_rps": w["throughput_rps"], "p99_s": h.percentile(99) if h.count else None,
            "count": w["count"], "errors": w["errors"]}
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _result(plan, mode, stable_from, windows, metric_values, finals, t_begin, t_measure, measured, cpu0,
            ready) -> dict:
    errors_by_kind: dict[str, int] = {}
    examples: dict[str, str] = {}
    late = warm = 0
    max_late = 0.0
    measured = max(measured, 1e-9)
    procs = []
    for r, f in zip(ready, finals):
        for k, v in f.get("errors_by_kind", {}).items():
            errors_by_kind[k] = errors_by_kind.get(k, 0) + v
        for k, v in f.get("error_examples", {}).items():
            examples.setdefault(k, v)
        late += f.get("late_sends", 0)
        max_late = max(max_late, f.get("max_lateness_s", 0.0))
        warm += f.get("warmup_requests", 0)
        procs.append({"index": r["index"], "host": f.get("host", r["host"]), "pid": f.get("pid", r["pid"]),
                      "cpus": f.get("cpus", r["cpus"]), "cpu_s": f.get("cpu_s", 0.0),
                      "cpu_pct": 100.0 * f.get("cpu_s", 0.0) / measured,
                      **{k: f.get(k) for k in _HEALTH_KEYS}})
    health = merge_health(procs)
    cpu1 = os.times()
    local_cpus = sorted({c for p in procs if p["host"] == socket.gethostname() for c in p["cpus"]})
    for w in windows:
        w.pop("_hist", None)
    return {
        "mode": mode,
        "stable": stable_from is not None,
        # index into `windows` of the first reported (stable) window; None: never stable (shape: 0, the harness
        # judges each stage)
        "stable_from": stable_from,
        "measured_s": measured,
        "t_measure_abs": t_measure,  # perf_counter (CLOCK_MONOTONIC, machine-wide): aligns with the harness's sampler
        "warmup_s": t_measure - t_begin,
        "warmup_requests": warm,
        "windows": windows,
        "window_metric": metric_values,
        "errors_by_kind": errors_by_kind,
        "error_examples": examples,
        "late_sends": late,
        "max_lateness_s": max_late,
        # new TCP connections to the server during the point (warm-up included), all processes
        "connections_opened": health["connections_opened"],
        "generator": {
            **health,
            "cpu_s": sum(p["cpu_s"] for p in procs),
            # locust drives one core per process: the busiest process decides whether the generator saturated
            "cpu_pct": max(p["cpu_pct"] for p in procs),
            "total_cpu_pct": sum(p["cpu_pct"] for p in procs),
            "cpus": local_cpus or sorted(os.sched_getaffinity(0)),
            "pid": os.getpid(),
            "processes": procs,
            # worker processes (locust master/worker mode); 0: the controller itself sent the load
            "workers": len(procs) if plan["generator"]["workers"] or plan["generator"]["remote_workers"] else 0,
            "controller_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "process_cpu_total_s": (cpu1.user + cpu1.system),
        },
    }


_HEALTH_KEYS = ("connections_opened", "connections_opened_measured", "loop_lag_ms", "run_queue_delay_ms",
                "run_queue_delay_pct")


def _window_metric(w: dict, mode: str) -> float:
    """The legacy ``window_metric`` (kept for compatibility; stability now judges ``throughput_rps`` and ``p50_s``
    of every window): closed loop: the window's completions per second; open loop: its median latency."""
    dur = max(w["end"] - w["start"], 1e-9)
    if mode == "closed":
        return w["count"] / dur
    h = w["_hist"]
    return h.percentile(50) if h.count else float("inf")


def _preload() -> None:
    """Import what a point's load imports (the adapters and the zoo) before its plan arrives: no stall once it comes.
    Used by locust workers and by the warm spare (``--await-plan``)."""
    import importlib

    for module in ("servingbench.adapters.registry", "servingbench.models"):
        importlib.import_module(module)


def worker_main(master_host: str, master_port: int, connect_timeout: float = 60.0) -> int:
    """A locust worker: connect to the controller's master, take its plan, send load until the master quits."""
    _preload()
    env = Environment(user_classes=[BenchUser])
    connected, last_error = False, ""

    def give_up() -> None:  # locust itself retries for minutes: no master within the timeout ends this worker
        gevent.sleep(connect_timeout)
        if not connected:
            print(f"generator worker: no master at {master_host}:{master_port} within {connect_timeout:.0f} s"
                  + (f" ({last_error})" if last_error else ""), flush=True)
            os._exit(2)

    gevent.spawn(give_up)
    while True:
        try:
            runner = env.create_worker_runner(master_host, master_port)
            break
        except Exception as e:  # noqa: BLE001 - the master may not listen yet; give_up() ends the tries
            last_error = f"{type(e).__name__}: {e}"
            gevent.sleep(0.5)
    connected = True
    _register_load_side(runner)
    signal.signal(signal.SIGTERM, lambda *a: runner.quit())
    runner.greenlet.join()
    for fn in _CLEANUP:
        fn()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        ap = argparse.ArgumentParser(prog="servingbench generator-worker")
        ap.add_argument("--worker", action="store_true")
        ap.add_argument("--master-host", required=True)
        ap.add_argument("--master-port", type=int, required=True)
        ap.add_argument("--connect-timeout", type=float, default=60.0)
        a = ap.parse_args(argv)
        return worker_main(a.master_host, a.master_port, a.connect_timeout)
    if argv and argv[0] == "--await-plan":
        # A warm spare (servingbench.load.point.WarmGenerator): everything imported, it waits for one line on stdin,
        # "<plan path>\t<log path>", then runs as if started with that plan.  End of input (the harness no longer
        # needs it, or is gone) ends it.
        _preload()
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            return 0
        plan_path, log_path = line.split("\t")
        with open(log_path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        argv = [plan_path]
    with open(argv[0]) as f:
        plan = _checked(json.load(f))
    result = run(plan)
    tmp = plan["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, plan["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
