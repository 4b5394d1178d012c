"""Interference: what else ran on the server's and the generator's CPUs while a point was measured.

Process accounting sees only the processes it knows.  Something else holding the server's core (another benchmark,
a build, a stray server) or the hypervisor running another guest (steal) slows the server down without showing up in
the server's own CPU figures.  This module reads the kernel's accounting and tells the two apart.

What is read (pure readers of ``/proc``, :class:`ProcFS`; tests point them at a synthetic tree)
    * ``/proc/stat``, one line per CPU: user, nice, system, idle, iowait, irq, softirq, steal, in clock ticks of
      ``USER_HZ = os.sysconf("SC_CLK_TCK")`` (100 on Linux).
    * ``/proc/<pid>/stat``: utime + stime (ticks; all the process's threads, living and exited), parent pid, start
      time (ticks since boot: a pid is keyed by (pid, start time), so a reused pid is a new process).
    * ``/proc/<pid>/task/<tid>/schedstat``, 2nd field: the thread's run-queue delay in ns (time it was runnable but
      waited for a CPU).  ``/proc/<pid>/schedstat`` alone covers only the main thread, so every thread is read.

Accounting over an interval, for one CPU set (the server's or the generator's), in % of ONE core (a set of two
fully busy cores reads 200 %), over the interval's wall time:
    * ``busy_cpu_pct``: user + nice + system + irq + softirq of the set's CPUs.
    * ``task_cpu_pct``: user + nice + system: the time the kernel charged to some process; ``irq_cpu_pct``:
      irq + softirq, reported apart: with IRQ time accounting the kernel charges it to no process, and on loopback it
      is mostly the benchmark's own network traffic.
    * ``known_cpu_pct``: CPU (utime + stime) of the known process groups (server tree, generator tree, harness)
      whose CPU set lies inside this set.  **A known process pinned inside the set counts entirely against it.**
    * ``shared_cpu_pct``: CPU of known groups allowed on this set *and* on other CPUs (e.g. an unpinned harness):
      they may have run here or elsewhere; the kernel does not say where.
    * ``foreign_cpu_pct = max(0, task − known − shared)``: a lower bound of what unknown processes used here (the
      shared groups are assumed to have run here); ``foreign_cpu_pct_upper = max(0, task − known)`` the upper bound.
      Flags use the lower bound, so the harness's own unpinned work never raises one.
    * ``steal_pct``: per CPU of the set, steal ticks over that CPU's wall time; ``steal_pct_max`` the largest.
Run-queue delay of the server tree and of the generator tree: the sum over their threads of the schedstat delay in
the interval, in ms and in % of wall (several threads can wait at once: it can exceed 100 %).

Thresholds (:class:`Thresholds`; a point beyond any of them gets the validity flag ``interference``)
    * ``foreign_cpu_pct`` = **10 % of one core**, on either set.  Noise floor: per-CPU and per-process times are
      counted in 10 ms ticks, so each process read and each CPU line is off by up to one tick per interval end
      (~2-3 % of a core over a 3 s interval with the 5-8 processes of a point), and kernel threads (kworkers, RCU,
      timers) use ~1 % of a core.  Effect: a server that saturates its core loses about as much throughput as the
      foreign load takes from that core, and 10 % is the size of the slowdown the compare rules must detect (a
      planted 10 % slowdown), so interference of that size must not pass unflagged.  Measured (2-core VM,
      LitServe mlp pinned to CPU 0, generator on CPU 1, closed loop, 4 users): 0-2.5 % foreign on either set with
      nothing else running; 47-62 % on the server's set with a ``while True: pass`` process pinned to CPU 0.
    * ``steal_pct`` = **5 % of a CPU**, on any CPU of either set.  Steal is time the hypervisor ran something else
      while this guest wanted the CPU: invisible to the guest's process accounting (neither busy nor foreign), it
      takes capacity directly.  It is measured by the hypervisor, without the tick noise above, so the limit can be
      lower: half the 10 % effect size.  The long-run average on the development VM is ~0.2 %; the runs of issue 14
      whose throughput swung ±50 % averaged 1.4-4.4 % (bursts above that), so 5 % over a measured interval is a
      clear departure, not the VM's normal state.
    * ``server_run_delay_pct``: reported, **not flagged by default** (``None``).  A server's threads also wait for
      *each other*: measured on the 2-core development VM with LitServe (mlp, closed loop, 4 users) pinned to one
      core, the server tree's summed run-queue delay was 105 % of wall over the whole point and 146 % over its
      measured windows with nothing else running, against 148 % / 202 % with a CPU hog on its core.  Its own design
      dominates the figure, so no fixed limit tells interference apart (10 % of wall would flag every LitServe
      point); the foreign CPU of its set is the signal, the delay shows how much the server waited.  When a limit
      is set, it flags only together with foreign CPU or steal above half of their own limits on the server set,
      so that a server's self-contention never flags on its own.
    * ``generator_run_delay_pct``: reported, not flagged here by default (``None``): a generator waiting for its CPU
      is a generator limit (``generator_bound``), which the generator's own checks report (measured: 1-2 % of wall
      for the point above, with or without the hog on the server's core).
    * ``min_interval_s`` = **1 s**: below it the tick granularity (1 % of a core per tick per second) makes the
      figures too coarse; no flag is raised, and ``not_judged`` says so.

The harness itself (the sampler thread included) is a known group.  :func:`pin_harness` moves it off both sets where
the machine has a core to spare; on 2 cores it stays on both and counts as ``shared``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


# ---- readers -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuTicks:
    """One CPU's cumulative times from ``/proc/stat`` (ticks of USER_HZ; floats after interpolation)."""

    user: float = 0
    nice: float = 0
    system: float = 0
    idle: float = 0
    iowait: float = 0
    irq: float = 0
    softirq: float = 0
    steal: float = 0

    @property
    def task(self) -> float:
        return self.user + self.nice + self.system

    @property
    def irqs(self) -> float:
        return self.irq + self.softirq

    @property
    def busy(self) -> float:
        return self.task + self.irqs

    def minus(self, other: "CpuTicks") -> "CpuTicks":
        return CpuTicks(*(max(0.0, getattr(self, f) - getattr(other, f)) for f in CPU_FIELDS))

    def lerp(self, other: "CpuTicks", w: float) -> "CpuTicks":
        """``self + w (other - self)``: the counters at a time between two snapshots."""
        return CpuTicks(*(getattr(self, f) + w * (getattr(other, f) - getattr(self, f)) for f in CPU_FIELDS))


@dataclass(frozen=True)
class PidStat:
    """What the sampler needs from ``/proc/<pid>/stat``."""

    pid: int
    ppid: int
    cpu_s: float  #: utime + stime, seconds (every thread, living and exited)
    start_s: float  #: start time, seconds since boot

    @property
    def key(self) -> tuple[int, int]:
        """Identity across pid reuse."""
        return self.pid, round(self.start_s * USER_HZ)


def parse_proc_stat(text: str) -> dict[int, CpuTicks]:
    """The per-CPU lines (``cpuN``) of ``/proc/stat``; the aggregate ``cpu`` line is left out."""
    out: dict[int, CpuTicks] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        with contextlib.suppress(ValueError):
            nums = [int(v) for v in vals[: len(CPU_FIELDS)]]
            out[int(name[3:])] = CpuTicks(*(nums + [0] * (len(CPU_FIELDS) - len(nums))))
    return out


def parse_pid_stat(pid: int, text: str) -> PidStat | None:
    """``/proc/<pid>/stat``; the command name may hold spaces and parentheses, so fields count from the last ')'."""
    try:
        rest = text[text.rindex(")") + 2:].split()
        # rest[0] is field 3 (state): field n is rest[n - 3]
        return PidStat(pid=pid, ppid=int(rest[1]), cpu_s=(int(rest[11]) + int(rest[12])) / USER_HZ,
                       start_s=int(rest[19]) / USER_HZ)
    except (ValueError, IndexError):
        return None


def parse_cpu_list(text: str) -> set[int]:
    """A kernel CPU list (``0-3,8,10-11``)."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


class ProcFS:
    """Readers of the kernel's accounting under ``root`` (``/proc``; a directory of synthetic files in tests).

    Every reader returns ``None`` (or leaves the entry out) for a process that is gone or unreadable.
    """

    def __init__(self, root: str | os.PathLike = "/proc") -> None:
        self.root = Path(root)

    def _read(self, *parts: str | int) -> str | None:
        try:
            with open(self.root.joinpath(*map(str, parts))) as f:
                return f.read()
        except OSError:
            return None

    def cpu_ticks(self) -> dict[int, CpuTicks]:
        text = self._read("stat")
        return parse_proc_stat(text) if text else {}

    def uptime(self) -> float | None:
        """Seconds since boot (the clock of :attr:`PidStat.start_s`)."""
        text = self._read("uptime")
        try:
            return float(text.split()[0]) if text else None
        except (ValueError, IndexError):
            return None

    def pid_stat(self, pid: int) -> PidStat | None:
        text = self._read(pid, "stat")
        return parse_pid_stat(pid, text) if text else None

    def run_delays_ns(self, pid: int) -> dict[int, int] | None:
        """Run-queue delay (ns) of each thread of ``pid``, from ``/proc/<pid>/task/<tid>/schedstat`` (2nd field)."""
        try:
            tids = os.listdir(self.root / str(pid) / "task")
        except OSError:
            return None
        out: dict[int, int] = {}
        for tid in tids:
            text = self._read(pid, "task", tid, "schedstat")
            if text:
                with contextlib.suppress(ValueError, IndexError):
                    out[int(tid)] = int(text.split()[1])
        return out

    def affinity(self, pid: int) -> set[int] | None:
        """The CPUs ``pid`` (its main thread) may run on: ``Cpus_allowed_list`` of ``/proc/<pid>/status``."""
        text = self._read(pid, "status")
        for line in (text or "").splitlines():
            if line.startswith("Cpus_allowed_list:"):
                with contextlib.suppress(ValueError):
                    return parse_cpu_list(line.split(":", 1)[1])
        return None

    def rss_bytes(self, pid: int) -> int | None:
        """Resident set size from ``/proc/<pid>/statm`` (cheap, unlike PSS from ``smaps_rollup``)."""
        text = self._read(pid, "statm")
        try:
            return int(text.split()[1]) * PAGE_SIZE if text else None
        except (ValueError, IndexError):
            return None

    def pids(self) -> set[int]:
        """Every process (thread-group leader) listed under the root."""
        try:
            return {int(d) for d in os.listdir(self.root) if d.isdigit()}
        except OSError:
            return set()


# ---- accounting of members that come and go -------------------------------------------------------------------------
class Cumulative:
    """A monotone total over members (processes, threads) that come and go.

    Each :meth:`update` adds, for every member seen before, its increase since it was last read; a member seen for
    the first time adds its whole value when ``counts_fully(key)`` says it started during the run (else its value
    is the baseline).  A member that disappears keeps its last value: its work since the last read is lost (at most
    one sampling interval), never counted twice when it reappears.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self._last: dict[Hashable, float] = {}

    def update(self, values: dict[Hashable, float], counts_fully: Callable[[Hashable], bool]) -> float:
        for k, v in values.items():
            prev = self._last.get(k)
            if prev is None:
                if counts_fully(k):
                    self.total += v
            elif v > prev:
                self.total += v - prev
            self._last[k] = max(v, prev) if prev is not None else v
        return self.total

    def __contains__(self, key: Hashable) -> bool:
        return key in self._last


# ---- the summary -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """A known process group over an interval: CPU seconds it used and where it may run (None: any CPU)."""

    name: str
    cpu_s: float
    cpus: frozenset[int] | None = None


@dataclass(frozen=True)
class Thresholds:
    """Limits beyond which a point is flagged ``interference`` (see the module docstring for the reasons)."""

    foreign_cpu_pct: float = 10.0  #: % of one core, on either set
    steal_pct: float = 5.0  #: % of a CPU, any CPU of either set
    server_run_delay_pct: float | None = None  #: % of wall, with foreign/steal above half their limits; None: off
    generator_run_delay_pct: float | None = None  #: % of wall; None: not flagged
    min_interval_s: float = 1.0  #: shorter intervals are not judged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_THRESHOLDS = Thresholds()


def cpu_set_usage(before: dict[int, CpuTicks], after: dict[int, CpuTicks], cpus: Iterable[int],
                  groups: Iterable[Group], wall_s: float) -> dict[str, Any] | None:
    """Busy, known, shared and foreign CPU of one CPU set over an interval (% of one core), steal per CPU (%).

    ``before``/``after``: per-CPU ticks at the interval's ends; ``groups``: the known processes' CPU over the
    same interval.  ``None`` when none of the set's CPUs is in both snapshots or the interval is empty.
    """
    cpus = sorted(c for c in set(cpus) if c in before and c in after)
    if not cpus or wall_s <= 0:
        return None
    d = {c: after[c].minus(before[c]) for c in cpus}

    def pct(ticks: float) -> float:
        return 100.0 * ticks / USER_HZ / wall_s

    task = pct(sum(x.task for x in d.values()))
    cset = set(cpus)
    known: dict[str, float] = {}
    shared: dict[str, float] = {}
    for g in groups:
        where = g.cpus
        if where is not None and set(where) <= cset:
            known[g.name] = known.get(g.name, 0.0) + 100.0 * g.cpu_s / wall_s
        elif where is None or set(where) & cset:
            shared[g.name] = shared.get(g.name, 0.0) + 100.0 * g.cpu_s / wall_s
    k, s = sum(known.values()), sum(shared.values())
    steal = {c: pct(x.steal) for c, x in d.items()}
    return {
        "cpus": cpus,
        "busy_cpu_pct": pct(sum(x.busy for x in d.values())),
        "task_cpu_pct": task,
        "irq_cpu_pct": pct(sum(x.irqs for x in d.values())),
        "idle_cpu_pct": pct(sum(x.idle + x.iowait for x in d.values())),
        "known_cpu_pct": k,
        "shared_cpu_pct": s,
        "known_by_group": {**known, **{f"{n} (shared)": v for n, v in shared.items()}},
        "foreign_cpu_pct": max(0.0, task - k - s),
        "foreign_cpu_pct_upper": max(0.0, task - k),
        "steal_pct": steal,
        "steal_pct_max": max(steal.values()),
    }


def interference_summary(before: dict[int, CpuTicks], after: dict[int, CpuTicks], wall_s: float, *,
                         server_cpus: Iterable[int] | None, generator_cpus: Iterable[int] | None,
                         groups: Iterable[Group], server_run_delay_s: float | None = None,
                         generator_run_delay_s: float | None = None,
                         thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The ``interference`` part of a resource summary: both sets' accounting, run-queue delays, flags, reasons.

    A set that is unknown (``None``) has no accounting (``None``).
    """
    groups = list(groups)

    def delay(v: float | None) -> tuple[float | None, float | None]:
        return (None, None) if v is None or wall_s <= 0 else (1e3 * v, 100.0 * v / wall_s)

    s_ms, s_pct = delay(server_run_delay_s)
    g_ms, g_pct = delay(generator_run_delay_s)
    out: dict[str, Any] = {
        "interval_s": wall_s,
        "server_set": cpu_set_usage(before, after, server_cpus, groups, wall_s) if server_cpus else None,
        "generator_set": cpu_set_usage(before, after, generator_cpus, groups, wall_s) if generator_cpus else None,
        "server_run_delay_ms": s_ms,
        "server_run_delay_pct": s_pct,
        "generator_run_delay_ms": g_ms,
        "generator_run_delay_pct": g_pct,
        "thresholds": thresholds.as_dict(),
    }
    out["reasons"] = interference_reasons(out, thresholds)
    out["flags"] = ["interference"] if out["reasons"] else []
    if wall_s < thresholds.min_interval_s:
        out["not_judged"] = f"interval {wall_s:.2f} s is shorter than {thresholds.min_interval_s:g} s"
    return out


def interference_reasons(summary: dict[str, Any], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """Why ``summary`` is beyond ``thresholds`` (empty: not flagged)."""
    t = thresholds
    if summary.get("interval_s") is None or summary["interval_s"] < t.min_interval_s:
        return []
    reasons: list[str] = []
    for name in ("server", "generator"):
        s = summary.get(f"{name}_set")
        if not s:
            continue
        if s["foreign_cpu_pct"] > t.foreign_cpu_pct:
            reasons.append(f"foreign CPU on the {name}'s CPUs {s['cpus']}: {s['foreign_cpu_pct']:.0f} % of a core "
                           f"(limit {t.foreign_cpu_pct:g} %)")
        for cpu, v in s["steal_pct"].items():
            if v > t.steal_pct:
                reasons.append(f"steal on CPU {cpu} ({name}): {v:.1f} % (limit {t.steal_pct:g} %)")
    srv = summary.get("server_set")
    d = summary.get("server_run_delay_pct")
    if t.server_run_delay_pct is not None and d is not None and d > t.server_run_delay_pct and srv and (
            srv["foreign_cpu_pct"] > t.foreign_cpu_pct / 2 or srv["steal_pct_max"] > t.steal_pct / 2):
        reasons.append(f"server run-queue delay {d:.0f} % of wall (limit {t.server_run_delay_pct:g} %) with "
                       f"foreign CPU {srv['foreign_cpu_pct']:.0f} % / steal {srv['steal_pct_max']:.1f} % on its CPUs")
    g = summary.get("generator_run_delay_pct")
    if t.generator_run_delay_pct is not None and g is not None and g > t.generator_run_delay_pct:
        reasons.append(f"generator run-queue delay {g:.0f} % of wall (limit {t.generator_run_delay_pct:g} %)")
    return reasons


def interference_flags(summary: dict[str, Any],
                       thresholds: Thresholds = DEFAULT_THRESHOLDS) -> tuple[list[str], list[str]]:
    """``(["interference"], reasons)`` when ``summary`` is beyond ``thresholds``, else ``([], [])``.

    ``summary``: the ``interference`` part of a resource summary (:func:`interference_summary`); the reasons are
    :func:`interference_reasons`, one sentence per limit passed.
    """
    reasons = interference_reasons(summary, thresholds)
    return (["interference"] if reasons else []), reasons


# ---- pinning the harness ------------------------------------------------------------------------------------------
def pin_harness(server_cpus: Iterable[int] | None, generator_cpus: Iterable[int] | None) -> dict[str, Any]:
    """Pin the calling process (every thread) to the allowed CPUs outside both sets, where there is one.

    Returns ``{"pinned": bool, "cpus": [...] | None, "previous": [...], "reason": str}``.  Does nothing when either
    set is unknown (processes started later inherit the harness's mask, and an unpinned server must not), or when
    no allowed core is left (a 2-core machine: one server core, one generator core): then the harness shares the
    sets, and :func:`cpu_set_usage` counts it as ``shared``.  Processes the harness starts afterwards inherit the
    mask: servers and the generator are pinned to their own sets when they start.
    """
    previous = sorted(os.sched_getaffinity(0))
    if not server_cpus or not generator_cpus:
        return {"pinned": False, "cpus": None, "previous": previous,
                "reason": "server or generator CPU set unknown: harness left unpinned"}
    rest = sorted(set(previous) - set(server_cpus) - set(generator_cpus))
    if not rest:
        return {"pinned": False, "cpus": None, "previous": previous,
                "reason": f"no allowed core outside the server's {sorted(server_cpus)} and the generator's "
                          f"{sorted(generator_cpus)} (allowed {previous}): harness shares them"}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), rest)
    return {"pinned": True, "cpus": rest, "previous": previous, "reason": f"harness pinned to {rest}"}


__all__ = [
    "CPU_FIELDS", "DEFAULT_THRESHOLDS", "USER_HZ", "CpuTicks", "Cumulative", "Group", "PidStat", "ProcFS", "Thresholds",
    "cpu_set_usage", "interference_flags", "interference_reasons", "interference_summary", "parse_pid_stat",
    "parse_cpu_list", "parse_proc_stat", "pin_harness",
]
