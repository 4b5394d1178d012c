"""Sample CPU and memory of the server's whole process tree and of the load generator while a point runs, and the
per-CPU accounting that tells whether something else ran on their cores (:mod:`servingbench.measure.interference`).

PSS (proportional set size) is the memory figure to compare: forked workers share pages that RSS counts once per
process.  GPU memory and utilisation come from NVML when it is importable and a GPU is present.

The sampler is built to cost little beside what it measures (it runs in the harness, often on the same cores):
    * The server tree is found once per point (``server_procs()``, which may scan every process's environment for
      the run's marker) and then followed from ``/proc``: each sample lists the pids and reads ``/proc/<pid>/stat``
      only of pids new since the last sample, adding those whose parent is in the tree.  ``server_procs()`` runs
      again when a member disappears (at most once per ``rescan_interval / 5``) and every ``rescan_interval`` s
      as a fallback for processes that daemonise out of the tree.
    * CPU is accounted per process and summed as deltas (:class:`~servingbench.measure.interference.Cumulative`):
      pids seen in both samples add their increase, a pid that started during the run adds all of its CPU, a pid
      that exits loses at most its last interval.  A pid is keyed by (pid, start time): reuse is a new process.
    * PSS (``smaps_rollup``: the kernel walks the page tables, ~15 ms per torch process) is read at the start,
      every ``memory_interval`` (5) s and once at the end; RSS (``statm``, ~20 µs) at every sample.
    * Every sample holds per-CPU ``/proc/stat`` ticks and the cumulative CPU and run-queue delay of the server tree,
      the generator tree and the harness, so :meth:`Sampler.summary` computes CPU %, interference and run-queue
      delay over exactly ``[t0, t1]`` (cumulative counters interpolated linearly between the samples around t0
      and t1): the measured windows, not the generator's start-up and tail.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import psutil

from servingbench.measure.interference import (
    DEFAULT_THRESHOLDS,
    CpuTicks,
    USER_HZ,
    Cumulative,
    Group,
    PidStat,
    ProcFS,
    Thresholds,
    interference_summary,
    pin_harness,
)

__all__ = ["Sampler", "pin_harness", "tree_memory"]


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


GROUPS = ("server", "generator", "harness")


@dataclass
class _Tree:
    """One followed process group: its members (pid -> identity key) and the CPUs they may run on."""

    members: dict[int, tuple[int, int]] = field(default_factory=dict)
    cpu: Cumulative = field(default_factory=Cumulative)
    delay: Cumulative = field(default_factory=Cumulative)
    affinity: set[int] = field(default_factory=set)
    descendants: bool = True  #: follow children (the harness: no, its children are the server and generator)
    ever: bool = False  #: had a member at some point


@dataclass
class _Snap:
    t: float
    ticks: dict[int, CpuTicks]
    cpu: dict[str, float]
    delay: dict[str, float]


def _lerp(a: _Snap, b: _Snap, t: float) -> _Snap:
    w = 0.0 if b.t <= a.t else min(1.0, max(0.0, (t - a.t) / (b.t - a.t)))
    return _Snap(
        t=t,
        ticks={c: a.ticks[c].lerp(b.ticks[c], w) for c in a.ticks if c in b.ticks},
        cpu={k: a.cpu[k] + w * (b.cpu[k] - a.cpu[k]) for k in a.cpu},
        delay={k: a.delay[k] + w * (b.delay[k] - a.delay[k]) for k in a.delay},
    )


class Sampler:
    """Background thread: every ``interval`` s, CPU of the server tree, the generator tree and the harness, per-CPU
    ticks, run-queue delays and RSS; PSS every ``memory_interval`` s and at the end.  Use as a context manager.

    ``server_cpus``/``generator_cpus``: the CPU sets to account for interference; by default the CPUs the server's
    and the generator's processes are allowed on (their affinity).  ``procfs``, ``clock``, ``harness_pid`` exist for
    tests.
    """

    def __init__(
        self,
        server_procs: Callable[[], list[psutil.Process]],
        interval: float = 0.5,
        *,
        server_cpus: set[int] | None = None,
        generator_cpus: set[int] | None = None,
        memory_interval: float = 5.0,
        rescan_interval: float = 5.0,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        procfs: ProcFS | None = None,
        clock: Callable[[], float] = time.perf_counter,
        harness_pid: int | None = None,
    ) -> None:
        self.server_procs = server_procs
        self.interval = interval
        self.memory_interval = memory_interval
        self.rescan_interval = rescan_interval
        self.thresholds = thresholds
        self.server_cpus = set(server_cpus) if server_cpus else None
        self.generator_cpus = set(generator_cpus) if generator_cpus else None
        self.fs = procfs or ProcFS()
        self.clock = clock
        self.generator: psutil.Process | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self.samples: list[dict[str, float]] = []
        self._snaps: list[_Snap] = []
        self._nvml, self._gpus = _nvml()
        self._trees = {g: _Tree() for g in GROUPS}
        self._trees["harness"].descendants = False
        self._harness_pid = harness_pid or os.getpid()
        self._listed: set[int] = set()
        self._stats: dict[int, PidStat] = {}  # pid -> stat read when first listed (parent, start)
        self._psutil: dict[tuple[int, int], psutil.Process] = {}
        self._start_boot: float | None = None  # seconds since boot at the first sample
        self._last_mem = self._last_rescan = self._last_vanish_rescan = -1e18
        self.sampling_s = 0.0  # time spent taking samples (the sampler's own cost)
        self.rescans = 0

    # -- membership ----------------------------------------------------------------------------------------------
    def attach_generator(self, pid: int) -> None:
        """The generator process; its children (locust workers it starts) are counted with it."""
        with contextlib.suppress(psutil.Error):
            self.generator = psutil.Process(pid)
        with self._lock:
            st = self.fs.pid_stat(pid)
            if st is not None:
                self._add("generator", st)
                self._adopt("generator")  # workers it started before it was attached

    def _add(self, group: str, st: PidStat) -> None:
        tree = self._trees[group]
        if st.pid not in tree.members:
            tree.members[st.pid] = st.key
            tree.ever = True
            tree.affinity |= self.fs.affinity(st.pid) or set()

    def _adopt(self, name: str) -> None:
        """Add every listed process whose parent is a member (repeated: grandchildren of members too)."""
        tree = self._trees[name]
        if not tree.descendants or not tree.members:
            return
        added = True
        while added:
            added = False
            for pid, st in list(self._stats.items()):
                if pid not in tree.members and st.ppid in tree.members:
                    self._add(name, st)
                    added = True

    def _rescan_server(self) -> None:
        """The full (possibly expensive) discovery: ``server_procs()``."""
        self.rescans += 1
        try:
            procs = self.server_procs()
        except Exception:  # noqa: BLE001 - a failed discovery keeps the tree as it is
            return
        for p in procs:
            st = self.fs.pid_stat(p.pid)
            if st is not None:
                self._add("server", st)
                self._psutil.setdefault(st.key, p)
        self._adopt("server")

    def _follow(self, now: float) -> None:
        """Update every tree from the pid listing: drop the gone, add new children of members."""
        pids = self.fs.pids()
        new = pids - self._listed
        for pid in self._listed - pids:
            self._stats.pop(pid, None)
        for pid in new:
            st = self.fs.pid_stat(pid)
            if st is not None:
                self._stats[pid] = st
        self._listed = pids
        vanished = False  # a server process gone: look for its replacement (a respawn, a daemon) at once
        for name, tree in self._trees.items():
            for pid in [p for p in tree.members if p not in pids]:
                del tree.members[pid]
                vanished = vanished or name == "server"
        if new:
            for name in self._trees:
                self._adopt(name)
        if self._trees["server"].ever and (
                now - self._last_rescan >= self.rescan_interval
                or (vanished and now - self._last_vanish_rescan >= self.rescan_interval / 5)):
            if vanished:
                self._last_vanish_rescan = now
            self._last_rescan = now
            self._rescan_server()

    # -- sampling ------------------------------------------------------------------------------------------------
    def _read_group(self, name: str, tree: _Tree) -> None:
        cpu: dict[Any, float] = {}
        delay: dict[Any, float] = {}
        known_before = {k for k in tree.members.values() if k in tree.cpu}

        def fully(key: Any) -> bool:
            """Count all of a member first seen now: a process that started during the run, or a new thread of a
            process already followed (its threads were listed at the previous sample)."""
            if isinstance(key[0], tuple):  # (process key, tid)
                return key[0] in known_before or self._started_during(key[0])
            return self._started_during(key)

        for pid, key in list(tree.members.items()):
            st = self.fs.pid_stat(pid)
            if st is None or st.key != key:  # gone, or the pid now belongs to another process
                tree.members.pop(pid, None)
                if st is not None:
                    self._stats[pid] = st
                continue
            cpu[key] = st.cpu_s
            if name != "harness":
                for tid, ns in (self.fs.run_delays_ns(pid) or {}).items():
                    delay[(key, tid)] = ns / 1e9
        tree.cpu.update(cpu, fully)
        tree.delay.update(delay, fully)

    def _started_during(self, pid_key: tuple[int, int]) -> bool:
        if self._start_boot is None:
            return False
        return pid_key[1] / USER_HZ >= self._start_boot - 1.0 / USER_HZ  # start times are in ticks: one of slack

    def sample(self, final: bool = False) -> None:
        """Take one sample now (the thread takes one every ``interval`` s; ``final``: with memory)."""
        t_begin = time.perf_counter()
        with self._lock:
            now = self.clock()
            first = not self._snaps
            if first:
                self._start_boot = self.fs.uptime() or 0.0
                for pid in (self._harness_pid,):
                    st = self.fs.pid_stat(pid)
                    if st is not None:
                        self._add("harness", st)
                self._rescan_server()
                self._last_rescan = now
                self._listed = set()  # _follow sees every pid as new once: reads each parent, adds descendants
            self._follow(now)
            self._trees["harness"].affinity = self.fs.affinity(self._harness_pid) or self._trees["harness"].affinity
            ticks = self.fs.cpu_ticks()
            for name, tree in self._trees.items():
                self._read_group(name, tree)
            snap = _Snap(t=now, ticks=ticks, cpu={g: self._trees[g].cpu.total for g in GROUPS},
                         delay={g: self._trees[g].delay.total for g in GROUPS})
            server = self._trees["server"].members
            s: dict[str, float] = {"t": now, "processes": len(server),
                                   "rss_bytes": sum(self.fs.rss_bytes(pid) or 0 for pid in server)}
            if self._snaps:
                prev = self._snaps[-1]
                dt = now - prev.t
                if dt > 0:
                    s["server_cpu_pct"] = 100.0 * (snap.cpu["server"] - prev.cpu["server"]) / dt
                    if self._trees["generator"].ever:
                        s["generator_cpu_pct"] = 100.0 * (snap.cpu["generator"] - prev.cpu["generator"]) / dt
            self._snaps.append(snap)
            if final or now - self._last_mem >= self.memory_interval:
                self._last_mem = now
                s.update(tree_memory(self._server_psutil()))
            if self._nvml:
                with contextlib.suppress(Exception):
                    s["gpu_mem_bytes"] = sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._gpus)
                    s["gpu_util_pct"] = float(np.mean([self._nvml.nvmlDeviceGetUtilizationRates(h).gpu
                                                       for h in self._gpus]))
            self.samples.append(s)
        self.sampling_s += time.perf_counter() - t_begin

    def _server_psutil(self) -> list[psutil.Process]:
        out = []
        for pid, key in self._trees["server"].members.items():
            p = self._psutil.get(key)
            if p is None:
                with contextlib.suppress(psutil.Error):
                    p = self._psutil[key] = psutil.Process(pid)
            if p is not None:
                out.append(p)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "Sampler":
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.sample(final=True)

    # -- results -------------------------------------------------------------------------------------------------
    def _at(self, snaps: list[_Snap], t: float) -> _Snap:
        for a, b in zip(snaps, snaps[1:]):
            if a.t <= t <= b.t:
                return _lerp(a, b, t)
        return snaps[0] if t < snaps[0].t else snaps[-1]

    def summary(self, t0: float | None = None, t1: float | None = None) -> dict[str, Any]:
        """Aggregates over [t0, t1] (perf_counter; default: the whole run).

        ``server_cpu_pct_mean``/``generator_cpu_pct_mean``: CPU seconds used in [t0, t1] over its length (% of one
        core); ``*_max``: the largest per-sample value among samples in the range; memory: the memory samples in
        the range (the nearest one when none falls inside); ``interference``:
        :func:`servingbench.measure.interference.interference_summary` over [t0, t1].
        """
        with self._lock:
            snaps = list(self._snaps)
            all_samples = list(self.samples)
        samples = [s for s in all_samples if (t0 is None or s["t"] >= t0) and (t1 is None or s["t"] <= t1)]

        def agg(key: str, fn, pool=samples) -> float | None:
            vals = [s[key] for s in pool if key in s]
            return float(fn(vals)) if vals else None

        a = b = None
        wall = 0.0
        if len(snaps) >= 2:
            lo = snaps[0].t if t0 is None else min(max(t0, snaps[0].t), snaps[-1].t)
            hi = snaps[-1].t if t1 is None else min(max(t1, lo), snaps[-1].t)
            a, b = self._at(snaps, lo), self._at(snaps, hi)
            wall = hi - lo

        def mean_pct(group: str, key: str) -> float | None:
            if a is not None and wall > 0 and (group != "generator" or self._trees["generator"].ever):
                return 100.0 * (b.cpu[group] - a.cpu[group]) / wall
            return agg(key, np.mean)

        mem = [s for s in samples if "pss_bytes" in s]
        if not mem:
            mid = (t0 if t0 is not None else 0.0) if t1 is None else (t1 if t0 is None else (t0 + t1) / 2)
            pool = [s for s in all_samples if "pss_bytes" in s]
            mem = [min(pool, key=lambda s: abs(s["t"] - mid))] if pool else []
        cpu_mean = mean_pct("server", "server_cpu_pct")
        gen_mean = mean_pct("generator", "generator_cpu_pct")
        out: dict[str, Any] = {
            "samples": len(samples),
            "server_cpu_pct_mean": cpu_mean,
            "server_cpu_pct_max": agg("server_cpu_pct", np.max) if agg("server_cpu_pct", np.max) is not None
            else cpu_mean,
            "server_rss_bytes_max": agg("rss_bytes", np.max) if samples else agg("rss_bytes", np.max, mem),
            "server_pss_bytes_max": agg("pss_bytes", np.max, mem),
            "server_pss_bytes_mean": agg("pss_bytes", np.mean, mem),
            "server_processes": agg("processes", np.max, samples or all_samples),
            "generator_cpu_pct_mean": gen_mean,
            "generator_cpu_pct_max": agg("generator_cpu_pct", np.max) if agg("generator_cpu_pct", np.max)
            is not None else gen_mean,
            "gpu_mem_bytes_max": agg("gpu_mem_bytes", np.max),
            "gpu_util_pct_mean": agg("gpu_util_pct", np.mean),
            "interval_s": wall if a is not None else None,
            "sampler_busy_pct": 100.0 * self.sampling_s / (snaps[-1].t - snaps[0].t)
            if len(snaps) >= 2 and snaps[-1].t > snaps[0].t else None,
            "interference": self._interference(a, b, wall) if a is not None else None,
        }
        return out

    def _interference(self, a: _Snap, b: _Snap, wall: float) -> dict[str, Any]:
        trees = self._trees

        def cpus(tree: _Tree) -> frozenset[int] | None:
            return frozenset(tree.affinity) if tree.affinity else None

        server_set = self.server_cpus or trees["server"].affinity or None
        gen_set = self.generator_cpus or trees["generator"].affinity or None
        groups = [Group(g, b.cpu[g] - a.cpu[g], cpus(trees[g])) for g in GROUPS if trees[g].ever]
        out = interference_summary(
            a.ticks, b.ticks, wall, server_cpus=server_set, generator_cpus=gen_set, groups=groups,
            server_run_delay_s=b.delay["server"] - a.delay["server"] if trees["server"].ever else None,
            generator_run_delay_s=b.delay["generator"] - a.delay["generator"] if trees["generator"].ever else None,
            thresholds=self.thresholds)
        out["harness_cpu_pct"] = 100.0 * (b.cpu["harness"] - a.cpu["harness"]) / wall if wall > 0 else None
        out["harness_cpus"] = sorted(trees["harness"].affinity)
        return out
