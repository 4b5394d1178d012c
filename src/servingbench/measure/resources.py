"""Sample CPU and memory of the server's whole process tree and of the load generator while a point runs.

PSS (proportional set size) is the memory figure to compare: forked workers share pages that RSS counts once per
process.  GPU memory and utilisation come from NVML when it is importable and a GPU is present.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

import numpy as np
import psutil


def tree_memory(procs: list[psutil.Process]) -> dict[str, float]:
    rss = pss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            mi = p.memory_full_info()
            rss += mi.rss
            pss += getattr(mi, "pss", mi.rss)
    return {"rss_bytes": rss, "pss_bytes": pss, "processes": len(procs)}


def _nvml():
    try:
        import pynvml  # type: ignore

        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001
        return None, []


class Sampler:
    """Background thread: every ``interval`` s, CPU% and memory of ``server_procs()`` and CPU% of ``generator_pid``."""

    def __init__(self, server_procs: Callable[[], list[psutil.Process]], interval: float = 0.5) -> None:
        self.server_procs = server_procs
        self.interval = interval
        self.generator: psutil.Process | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[dict[str, float]] = []
        self._cpu_prev: dict[int, float] = {}
        self._nvml, self._gpus = _nvml()

    def attach_generator(self, pid: int) -> None:
        """The generator process; its children (locust workers it starts) are counted with it."""
        with contextlib.suppress(psutil.Error):
            self.generator = psutil.Process(pid)

    def _generator_cpu_seconds(self) -> float | None:
        try:
            return self._cpu_seconds([self.generator, *self.generator.children(recursive=True)])
        except psutil.Error:
            return None

    def _cpu_seconds(self, procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
                self._cpu_prev[p.pid] = t.user + t.system
        return total

    def _loop(self) -> None:
        prev_t = time.perf_counter()
        prev_cpu = prev_gen = None
        while not self._stop.wait(self.interval):
            procs = self.server_procs()
            now = time.perf_counter()
            cpu = self._cpu_seconds(procs)
            s: dict[str, float] = {"t": now}
            dt = now - prev_t
            if prev_cpu is not None:
                s["server_cpu_pct"] = max(0.0, 100.0 * (cpu - prev_cpu) / dt)
            prev_cpu, prev_t = cpu, now
            s.update(tree_memory(procs))
            if self.generator is not None:
                gen = self._generator_cpu_seconds()
                if gen is not None and prev_gen is not None:
                    s["generator_cpu_pct"] = max(0.0, 100.0 * (gen - prev_gen) / dt)
                prev_gen = gen
            if self._nvml:
                with contextlib.suppress(Exception):
                    s["gpu_mem_bytes"] = sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._gpus)
                    s["gpu_util_pct"] = float(np.mean([self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._gpus]))
            self.samples.append(s)

    def __enter__(self) -> "Sampler":
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def summary(self, t0: float | None = None, t1: float | None = None) -> dict[str, float | None]:
        """Aggregates of the samples taken in [t0, t1] (perf_counter; default: all of them)."""
        samples = [s for s in self.samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)]

        def agg(key: str, fn) -> float | None:
            vals = [s[key] for s in samples if key in s]
            return float(fn(vals)) if vals else None

        return {
            "samples": len(samples),
            "server_cpu_pct_mean": agg("server_cpu_pct", np.mean),
            "server_cpu_pct_max": agg("server_cpu_pct", np.max),
            "server_rss_bytes_max": agg("rss_bytes", np.max),
            "server_pss_bytes_max": agg("pss_bytes", np.max),
            "server_pss_bytes_mean": agg("pss_bytes", np.mean),
            "server_processes": agg("processes", np.max),
            "generator_cpu_pct_mean": agg("generator_cpu_pct", np.mean),
            "generator_cpu_pct_max": agg("generator_cpu_pct", np.max),
            "gpu_mem_bytes_max": agg("gpu_mem_bytes", np.max),
            "gpu_util_pct_mean": agg("gpu_util_pct", np.mean),
        }
