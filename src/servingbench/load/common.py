"""The load generator's pure parts (no gevent here, so the harness and unit tests import them freely):
merging the processes' windows exactly, by adding counts and HdrHistograms; users over time of a shape; the open
loop's hand-off order and phase offsets; the generator-health fields of each process and their merge."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Hashable


def merge_window(reports: list[dict], start: float, end: float) -> dict:
    """One window of the whole generator: counts summed, histograms added (exact: HdrHistograms merge)."""
    from servingbench.measure.stats import LatencyHistogram

    hist = LatencyHistogram()
    per_model: dict[str, Any] = {}
    count = errors = 0
    by_process = []
    for r in reports:
        w = r["window"]
        hist.merge(LatencyHistogram.from_dict(w["histogram"]))
        for m, h in w["per_model"].items():
            per_model.setdefault(m, LatencyHistogram()).merge(LatencyHistogram.from_dict(h))
        count += w["count"]
        errors += w["errors"]
        by_process.append({"index": r["index"], "count": w["count"], "errors": w["errors"],
                           "duration": w["duration"]})
    # The window's own stability metrics: successful answers per second over the controller's window clock, and
    # the median of the merged histogram (None: no successful answer in the window).
    tput = (count - errors) / max(end - start, 1e-9)
    p50 = hist.percentile(50) if hist.count else None
    out = {"start": start, "end": end, "count": count, "errors": errors, "throughput_rps": tput, "p50_s": p50,
           "histogram": hist.to_dict(), "per_model": {m: h.to_dict() for m, h in per_model.items()}, "_hist": hist}
    if len(reports) > 1:
        out["processes"] = by_process
    return out


def shape_users(stages: list[dict], ramp: bool, start_users: int, t: float) -> int:
    """Users at ``t`` seconds into a shape: ``step`` holds each stage's users; ``ramp`` moves linearly from the
    previous stage's users (``start_users`` before the first).  Past the end: the last stage's users."""
    acc, prev = 0.0, start_users
    for st in stages:
        if t < acc + st["duration"]:
            if not ramp:
                return st["users"]
            return max(1, round(prev + (st["users"] - prev) * (t - acc) / st["duration"]))
        acc += st["duration"]
        prev = st["users"]
    return stages[-1]["users"]


def shape_cuts(stages: list[dict], window_s: float) -> list[tuple[float, int, bool]]:
    """Window ends of a shape run: (seconds from the start, stage, first window of a stage with several)."""
    cuts: list[tuple[float, int, bool]] = []
    acc = 0.0
    for i, st in enumerate(stages):
        k = max(1, round(st["duration"] / window_s))
        cuts += [(acc + st["duration"] * (j + 1) / k, i, j == 0 and k > 1) for j in range(k)]
        acc += st["duration"]
    return cuts


def stability_series(windows: list[dict]) -> tuple[list[float], list[float]]:
    """Per-window throughput (requests/s) and p50 (s) of merged windows, as ``stable_tail`` takes them: a window
    without a successful answer has p50 ``inf`` (never agrees)."""
    tput = [float(w["throughput_rps"]) for w in windows]
    p50 = [math.inf if w["p50_s"] is None else float(w["p50_s"]) for w in windows]
    return tput, p50


class HandOff:
    """Idle open-loop users waiting for their next send, and which one gets it.

    LIFO (the default): the next intended send goes to the most recently freed user, so the users that send are
    the ones whose connections were used last (still open: within the server's keep-alive).  The number of users,
    and so of connections, in use then follows rate x latency (the users actually busy at once), not the pool
    size.  FIFO (``lifo=False``, the old behaviour, kept for comparison): the least recently freed user sends, so
    every user of the pool takes its turn and each connection idles ``pool / rate`` seconds between requests.
    Users are opaque (the generator puts one gevent waiter per idle user here).
    """

    def __init__(self, lifo: bool = True) -> None:
        self.lifo = lifo
        self._idle: deque[Hashable] = deque()

    def free(self, user: Hashable) -> None:
        """``user`` is idle from now on (it finished its send, or has just started)."""
        self._idle.append(user)

    def take(self) -> Hashable | None:
        """The user that sends next, removed from the idle ones; None when every user is busy."""
        if not self._idle:
            return None
        return self._idle.pop() if self.lifo else self._idle.popleft()

    def discard(self, user: Hashable) -> None:
        """``user`` left (its greenlet was stopped while idle)."""
        try:
            self._idle.remove(user)
        except ValueError:
            pass

    def __len__(self) -> int:
        return len(self._idle)


def schedule_offset(index: int, processes: int, rate: float, arrival: str) -> float:
    """Seconds by which generator process ``index`` of ``processes`` starts its open-loop schedule.

    ``constant``: each process sends every ``processes / rate`` s (its share ``rate / processes``); starting
    process ``i`` ``i / rate`` s later (``i / (processes x share)``) interleaves them into one evenly spaced stream
    at ``rate`` (in phase they would send in clumps of ``processes``).  ``poisson``: 0: independent Poisson
    streams need no offset (they add up to a Poisson stream at ``rate``).  ``rate`` is the whole generator's rate.
    """
    if arrival != "constant" or processes <= 1 or not rate > 0:
        return 0.0
    return (index % processes) / float(rate)


class Schedule:
    """One process's intended send times (absolute perf_counter seconds), produced on demand, in order.

    ``rate`` is this process's share (the generator's rate / processes); ``offset`` its phase
    (:func:`schedule_offset`).  Constant: ``t0 + offset + k / rate`` for k = 1, 2, ... (computed, not summed: no
    drift); Poisson: exponential gaps from ``rng``.
    """

    def __init__(self, rate: float, arrival: str, rng: Any, offset: float = 0.0) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.poisson = arrival == "poisson"
        self.rng = rng
        self.offset = offset
        self.t = 0.0
        self._t0 = 0.0
        self._k = 0
        self.started = False

    def start(self, t0: float) -> None:
        self._t0 = self.t = t0 + self.offset
        self._k = 0
        self.started = True

    def next(self) -> float:
        self._k += 1
        if self.poisson:
            self.t += float(self.rng.exponential(1.0 / self.rate))
        else:
            self.t = self._t0 + self._k / self.rate
        return self.t


def read_run_delay_ns(path: str = "/proc/self/schedstat") -> int | None:
    """Nanoseconds this task has waited on a run queue (2nd field of ``schedstat``): time it was runnable but
    another task had the CPU.  ``/proc/self/schedstat`` is the process's main thread, where the generator's event
    loop runs.  None where the kernel does not provide it."""
    try:
        with open(path) as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _max_or_none(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def merge_health(processes: list[dict]) -> dict[str, Any]:
    """The generator-health fields of every process (their ``final`` reports) merged for the whole generator.

    * ``connections_opened`` / ``connections_opened_measured``: summed (each process opens its own).
    * ``loop_lag_ms`` {p99, max}: the worst process's (a lagging loop delays that process's sends and timings,
      whatever the others do), each maximum taken separately; a value is None when no process measured it.
    * ``run_queue_delay_ms`` / ``run_queue_delay_pct``: the worst process's, like ``cpu_pct`` (one process drives
      one core); None where no process could read schedstat.
    """
    lag = [p.get("loop_lag_ms") or {} for p in processes]
    lag_p99, lag_max = _max_or_none([x.get("p99") for x in lag]), _max_or_none([x.get("max") for x in lag])
    return {
        "connections_opened": sum(int(p.get("connections_opened") or 0) for p in processes),
        "connections_opened_measured": sum(int(p.get("connections_opened_measured") or 0) for p in processes),
        "loop_lag_ms": {"p99": lag_p99, "max": lag_max},
        "run_queue_delay_ms": _max_or_none([p.get("run_queue_delay_ms") for p in processes]),
        "run_queue_delay_pct": _max_or_none([p.get("run_queue_delay_pct") for p in processes]),
    }
