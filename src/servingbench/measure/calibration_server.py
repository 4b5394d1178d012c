"""The calibration server: a servingbench deployment whose capacity is known exactly (an M/D/1 FIFO queue).

    python calibration_server.py deployment.json      (the adapter, ``servingbench.testing.calibration``, writes
                                                      the file and copies this script next to it)

What it is: a ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, one thread per connection, any number of connections)
that serves the zoo models' real outputs, so servingbench's verification passes, through ONE worker thread:

* a connection thread reads and checks the request (``POST /predict/<model>`` with ``{"inputs": [...]}``; an unknown
  model is 404, a wrong input 400) and puts it on one FIFO queue;
* the worker takes the requests in order; for each it computes the model's outputs
  (``servingbench.models.runtime.load_runtime``) and then waits until exactly ``service_ms x slowdown`` have passed
  since it took the request: it sleeps until ``SPIN_MS`` (0.5 ms) before that deadline, then busy-waits on
  ``time.perf_counter`` to it, so the end of the service does not depend on the scheduler's timer slack;
* the connection thread then writes the answer (``{"outputs": [...]}``).

So the service time is deterministic, ``S = service_ms x slowdown``, and there is one server: the capacity is
``1 / S`` requests/s, closed-loop throughput at any concurrency >= 2 is ``1 / S``, and under Poisson arrivals the
queue is M/D/1, whose p99 sojourn time is ``servingbench.measure.stats.md1_p99_s(rate, S)`` and whose highest rate
meeting a p99 target is ``md1_max_rate_for_p99(target, S)``.  That holds as long as what a request costs outside
the wait (HTTP parsing, JSON, the model: ~0.1-0.5 ms on one core) is well below ``S``: that work runs in the
connection threads *during* the worker's wait, which is wall-clock (it does not lengthen ``S``).  Latencies
measured by a client add the round trip and that work once (not per queued request).

Why sleep, then spin (and not a spin of the whole ``S``): the connection threads share the worker's core(s) and the
GIL.  A worker spinning the whole time holds the GIL, so every read and write waits for a forced GIL switch, and it
keeps the core busy, so they wait for the CPU too.  Measured on 2 cores (server on one, the locust generator on the
other; S = 2 ms, Poisson 300 rps): with a whole-S spin the server's threads waited for a CPU 19-26 % of the time,
the worker's measured service time reached 13.9 ms at worst, and the client's p99 was 16.4 ms; sleeping all but the
last 0.5 ms, 5-8 %, 7.6 ms and 14.3 ms (the M/D/1 p99 is 11.1 ms).  ``sys.setswitchinterval(1e-4)``: a thread that
wants the GIL while the worker spins gets it within 0.1 ms (the default is 5 ms).  ``gc.freeze()`` after loading the
models: no long collection pauses under load.

Endpoints: ``GET /health`` -> 200 ``{"status": "ok", ...}``; ``GET /stats`` (``/stats?reset=1`` also forgets) -> the
queue as the server's clock saw it over the last ``HISTORY`` requests: counts and the mean/p50/p99/max (ms) of the
wait in the queue, the measured service time and the sojourn (queue -> answer ready), and the busy fraction.
SIGTERM (and SIGINT) -> exit 0.

Configuration (``deployment.json``): ``host``, ``port``, ``threads`` (torch intra-op threads), ``model_format``,
``device``, ``service_ms``, ``slowdown``, ``backlog`` (listen queue), ``spin_ms`` (optional), ``models``
(``model_entry`` of each).  The environment variable ``SERVINGBENCH_CALIBRATION_SLOWDOWN`` multiplies the service
time once more: a planted slowdown that, like a real regression in a server's code, is not part of the deployment's
configuration (so ``servingbench compare`` pairs the two runs' deployments and judges the change); the server
prints the service time it uses into its log when it starts.
"""

from __future__ import annotations

import _thread
import collections
import gc
import json
import os
import queue
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

PLANTED_ENV = "SERVINGBENCH_CALIBRATION_SLOWDOWN"
SWITCH_INTERVAL_S = 1e-4
HISTORY = 100_000  # requests kept for GET /stats
SPIN_MS = 0.5  # the last part of each service time is a busy-wait (the rest a sleep); deployment.json "spin_ms"


class _Job:
    """One request on its way through the queue; ``done`` is a lock the worker releases when the answer is ready."""

    __slots__ = ("runtime", "x", "out", "err", "done", "queued")

    def __init__(self, runtime: Any, x: np.ndarray) -> None:
        self.runtime, self.x = runtime, x
        self.queued = 0.0
        self.out: np.ndarray | None = None
        self.err: BaseException | None = None
        self.done = _thread.allocate_lock()
        self.done.acquire()


class Worker:
    """The single server of the queue: FIFO, one request at a time, deterministic service time ``service_s``."""

    def __init__(self, service_s: float, spin_s: float = SPIN_MS / 1e3) -> None:
        if not service_s > 0:
            raise ValueError(f"service time must be > 0, got {service_s}")
        self.service_s = float(service_s)
        self.spin_s = spin_s
        self.queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.served = 0
        self.overruns = 0  # requests whose model alone took longer than the service time
        #: per request, in order: (queued, taken, released) perf_counter times (the last ``HISTORY``)
        self.history: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=HISTORY)
        self.thread = threading.Thread(target=self._run, name="calibration-worker", daemon=True)

    def start(self) -> Worker:
        self.thread.start()
        return self

    def submit(self, runtime: Any, x: np.ndarray) -> np.ndarray:
        """Queue one request and wait for its outputs (raises what the model raised)."""
        job = _Job(runtime, x)
        job.queued = time.perf_counter()
        self.queue.put(job)
        job.done.acquire()  # blocks (without the GIL) until the worker releases it
        if job.err is not None:
            raise job.err
        assert job.out is not None
        return job.out

    def _run(self) -> None:
        clock, get = time.perf_counter, self.queue.get
        sleep, spin = time.sleep, self.spin_s
        while True:
            job = get()
            taken = clock()
            deadline = taken + self.service_s
            try:
                job.out = job.runtime.predict(job.x)
            except BaseException as e:  # noqa: BLE001 - reported to the request, the worker goes on
                job.err = e
            try:
                rest = deadline - clock()
                if rest < 0:
                    self.overruns += 1
                elif rest > spin:  # leave the core and the GIL to the connection threads ...
                    sleep(rest - spin)
                while clock() < deadline:  # ... then spin: exactly service_s since the request was taken
                    pass
                self.served += 1
                self.history.append((job.queued, taken, clock()))
            except Exception as e:  # noqa: BLE001 - never let the worker die: the server would hang
                print(f"calibration worker: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            finally:  # whatever happens, the request is answered
                job.done.release()


    def stats(self, reset: bool = False) -> dict[str, Any]:
        """What the queue did, from the server's own clock: counts, and percentiles (ms) of the wait in the queue,
        the service (taken -> released: ``service_s`` unless the model overran it, plus any delay of the worker
        getting the CPU back at the deadline) and the sojourn (queued -> released) over the last ``HISTORY``
        requests (``reset``: forget them afterwards)."""
        h = np.array(self.history, dtype=float).reshape(-1, 3)
        if reset:
            self.history.clear()
        out: dict[str, Any] = {"served": self.served, "overruns": self.overruns, "service_ms": self.service_s * 1e3,
                               "window": len(h)}
        if len(h):
            for name, v in (("wait_ms", h[:, 1] - h[:, 0]), ("service_measured_ms", h[:, 2] - h[:, 1]),
                            ("sojourn_ms", h[:, 2] - h[:, 0])):
                q = np.percentile(v * 1e3, [50, 99, 100])
                out[name] = {"mean": round(float(v.mean() * 1e3), 4), "p50": round(float(q[0]), 4),
                             "p99": round(float(q[1]), 4), "max": round(float(q[2]), 4)}
            span = h[-1, 2] - h[0, 1]
            out["busy_fraction"] = round(float((h[:, 2] - h[:, 1]).sum() / span), 4) if span > 0 else None
        return out


def make_handler(models: dict[str, tuple[Any, dict]], worker: Worker,
                 unavailable_until: float = 0.0) -> type[BaseHTTPRequestHandler]:
    """The request handler: ``models`` maps a name to ``(runtime, input spec {"shape", "dtype"})``.  Until
    ``time.monotonic()`` passes ``unavailable_until``, inference answers 503 while /health already says ok (a
    planted false-ready window: ``unavailable_s`` of the deployment, for the readiness probe's tests)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise
        disable_nagle_algorithm = True

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload, separators=(",", ":")).encode()
            head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
            if self.close_connection:
                head += "Connection: close\r\n"
            self.wfile.write(head.encode("latin-1") + b"\r\n" + body)  # one write: no delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok", "service_ms": worker.service_s * 1e3, "served": worker.served,
                                 "overruns": worker.overruns})
            elif self.path in ("/stats", "/stats?reset=1"):
                self._send(200, worker.stats(reset=self.path.endswith("reset=1")))
            else:
                self._send(404, {"error": f"no route {self.path!r}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                return self._send(400, {"error": "bad Content-Length"})
            data = self.rfile.read(n) if n > 0 else b""
            if not self.path.startswith("/predict/"):
                return self._send(404, {"error": f"no route {self.path!r}"})
            name = self.path[len("/predict/"):]
            if unavailable_until and time.monotonic() < unavailable_until:
                return self._send(503, {"error": "still loading (planted unavailable_s)"})
            if name not in models:
                return self._send(404, {"error": f"no model {name!r}"})
            runtime, spec = models[name]
            try:
                x = np.asarray(json.loads(data)["inputs"], dtype=spec["dtype"])
                if x.ndim != 1 + len(spec["shape"]) or tuple(x.shape[1:]) != tuple(spec["shape"]) or not len(x):
                    raise ValueError(f"input shape {x.shape} does not match (batch, {tuple(spec['shape'])})")
            except (ValueError, KeyError, TypeError, OverflowError) as e:
                return self._send(400, {"error": f"bad input: {e}"})
            try:
                out = worker.submit(runtime, x)
            except Exception as e:  # noqa: BLE001
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})
            self._send(200, {"outputs": out.tolist()})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: logging costs CPU per call
            pass

    return Handler


def make_server(cfg: dict, models: dict[str, tuple[Any, dict]], worker: Worker) -> ThreadingHTTPServer:
    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = int(cfg.get("backlog", 1024))

    until = time.monotonic() + float(cfg["unavailable_s"]) if cfg.get("unavailable_s") else 0.0
    return Server((cfg.get("host", "127.0.0.1"), int(cfg["port"])), make_handler(models, worker, until))


def service_seconds(cfg: dict, environ: dict | None = None) -> tuple[float, float]:
    """(service time in s, the planted factor from the environment) of a configuration."""
    env = os.environ if environ is None else environ
    planted = float(env.get(PLANTED_ENV) or 1.0)
    if not planted > 0:
        raise ValueError(f"{PLANTED_ENV} must be > 0, got {planted}")
    return float(cfg.get("service_ms", 2.0)) * float(cfg.get("slowdown", 1.0)) * planted / 1e3, planted


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: calibration_server.py deployment.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        cfg = json.load(f)
    from servingbench.models.runtime import load_runtime

    service_s, planted = service_seconds(cfg)
    models = {m["name"]: (load_runtime(m["dir"], cfg.get("model_format", "eager"), cfg.get("device", "cpu"),
                                       cfg.get("threads", 1)), m["input"]) for m in cfg["models"]}
    gc.collect()
    gc.freeze()  # the models' objects out of the collector's way: no long collection pauses under load
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    worker = Worker(service_s, float(cfg.get("spin_ms", SPIN_MS)) / 1e3).start()
    server = make_server(cfg, models, worker)

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"calibration server on {cfg.get('host', '127.0.0.1')}:{server.server_address[1]}: models "
          f"{', '.join(models)}; service {service_s * 1e3:g} ms (service_ms {cfg.get('service_ms', 2.0):g} x "
          f"slowdown {cfg.get('slowdown', 1.0):g}" + (f" x planted {planted:g} from {PLANTED_ENV}" if planted != 1
                                                       else "") + "), one worker, FIFO", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except SystemExit:
        pass
    finally:
        server.server_close()
        print(f"calibration server stopped: {worker.served} requests served, {worker.overruns} over the service "
              "time", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
