"""servingbench.measure.resources.Sampler on a synthetic /proc tree driven by a fake clock: the server tree found once
and followed cheaply, CPU deltas that survive processes coming and going (and pid reuse), memory sampled less often,
CPU %, run-queue delay and interference over exactly [t0, t1]; plus one short run on the real /proc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from servingbench.measure import resources
from servingbench.measure.interference import USER_HZ, ProcFS
from servingbench.measure.resources import Sampler

BOOT = 1000.0  # seconds since boot at fake time 0
BASE = 9_000_000  # fake pids: above any real pid_max, so psutil never finds a real process by them
OLD_KEYS = {"samples", "server_cpu_pct_mean", "server_cpu_pct_max", "server_rss_bytes_max", "server_pss_bytes_max",
            "server_pss_bytes_mean", "server_processes", "generator_cpu_pct_mean", "generator_cpu_pct_max",
            "gpu_mem_bytes_max", "gpu_util_pct_mean"}


class FakeProc:
    """A synthetic /proc: per-CPU ticks, processes (parent, CPU ticks, start, threads' run delays, affinity)."""

    def __init__(self, root: Path, ncpu: int = 2) -> None:
        self.root = root
        self.now = 0.0
        self.cpus = {c: dict(user=0, nice=0, system=0, idle=0, iowait=0, irq=0, softirq=0, steal=0)
                     for c in range(ncpu)}
        self.procs: dict[int, dict] = {}
        self.write()

    def clock(self) -> float:
        return self.now

    def spawn(self, pid: int, ppid: int, *, ticks: int = 0, start: float | None = None, cpus=(0, 1),
              threads: dict[int, int] | None = None) -> None:
        """``start``: fake time the process started (default: now); before 0: before the sampler."""
        t = self.now if start is None else start
        self.procs[pid] = dict(ppid=ppid, ticks=ticks, start=round((BOOT + t) * USER_HZ), cpus=list(cpus),
                               threads=dict(threads or {pid: 0}))
        self.write()

    def kill(self, pid: int) -> None:
        del self.procs[pid]
        self.write()

    def run(self, dt: float, busy: dict[int, float], procs: dict[int, float], steal: dict[int, float] | None = None):
        """Advance ``dt`` s: CPU c busy ``busy[c]`` (fraction, as user), each pid in ``procs`` using that many
        cores (fraction); ``steal[c]`` fraction of CPU c stolen; the rest idle."""
        self.now += dt
        for c, f in self.cpus.items():
            b, s = busy.get(c, 0.0), (steal or {}).get(c, 0.0)
            f["user"] += round(b * dt * USER_HZ)
            f["steal"] += round(s * dt * USER_HZ)
            f["idle"] += round((1 - b - s) * dt * USER_HZ)
        for pid, frac in procs.items():
            self.procs[pid]["ticks"] += round(frac * dt * USER_HZ)
        self.write()

    def delay(self, pid: int, tid: int, ms: float) -> None:
        th = self.procs[pid]["threads"]
        th[tid] = th.get(tid, 0) + int(ms * 1e6)
        self.write()

    def write(self) -> None:
        for d in self.root.iterdir():
            if d.is_dir() and d.name.isdigit() and int(d.name) not in self.procs:
                shutil.rmtree(d)
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
        lines += [f"cpu{c} " + " ".join(str(v) for v in f.values()) + " 0 0" for c, f in self.cpus.items()]
        (self.root / "stat").write_text("\n".join(lines) + "\nintr 1 2 3\n")
        (self.root / "uptime").write_text(f"{BOOT + self.now:.2f} 0.00\n")
        for pid, p in self.procs.items():
            d = self.root / str(pid)
            if d.exists():
                shutil.rmtree(d)
            (d / "task").mkdir(parents=True)
            (d / "stat").write_text(f"{pid} (p {pid}) S {p['ppid']} {pid} {pid} 0 -1 0 0 0 0 0 {p['ticks']} 0 0 0 "
                                    f"20 0 1 0 {p['start']} 0 0\n")
            (d / "status").write_text(f"Name:\tp\nCpus_allowed_list:\t{','.join(map(str, p['cpus']))}\n")
            (d / "statm").write_text(f"1000 {p.get('rss_pages', 10)} 5 1 0 100 0\n")
            for tid, ns in p["threads"].items():
                (d / "task" / str(tid)).mkdir()
                (d / "task" / str(tid) / "schedstat").write_text(f"0 {ns} 1\n")


HARNESS, ROOT, CHILD, GEN, WORKER, HOG = (BASE + i for i in (1, 10, 11, 20, 21, 99))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fp = FakeProc(tmp_path)
    fp.spawn(HARNESS, 1, start=-100, ticks=500)
    fp.spawn(ROOT, HARNESS, start=-50, ticks=5000, cpus=[0], threads={ROOT: 0, ROOT + 1000: 0})
    memory_calls: list[float] = []

    def tree_memory(procs):
        memory_calls.append(fp.now)
        return {"rss_bytes": 100, "pss_bytes": 60 + len(memory_calls), "processes": len(procs)}

    monkeypatch.setattr(resources, "tree_memory", tree_memory)
    fp.memory_calls = memory_calls
    return fp


def make_sampler(fp: FakeProc, server_pids: list[int], calls: list | None = None, **kw) -> Sampler:
    def server_procs():
        if calls is not None:
            calls.append(fp.now)
        return [SimpleNamespace(pid=p) for p in server_pids if p in fp.procs]

    return Sampler(server_procs, interval=3600, procfs=ProcFS(fp.root), clock=fp.clock, harness_pid=HARNESS, **kw)


def test_cpu_deltas_survive_processes_coming_and_going(fake):
    s = make_sampler(fake, [ROOT])
    with s:
        fake.run(0.5, {0: 0.5}, {ROOT: 0.5})
        fake.spawn(CHILD, ROOT, ticks=0)  # a worker the server starts during the run
        fake.run(0.5, {0: 1.0}, {ROOT: 0.5, CHILD: 0.4})
        s.sample()
        fake.run(0.5, {0: 1.0}, {ROOT: 0.5, CHILD: 0.6})
        s.sample()
        fake.run(0.5, {0: 0.5}, {ROOT: 0.5, CHILD: 0.2})  # the child's last 0.1 s: lost when it exits
        fake.kill(CHILD)
        fake.spawn(CHILD, HARNESS, ticks=77)  # its pid reused by an unrelated process: not the server's
        fake.run(0.5, {0: 0.5}, {ROOT: 0.5})
        s.sample()
    r = s.summary()
    # root 0.5 core for 2.5 s = 1.25 s; the child, counted from its start: 0.2 + 0.3 = 0.5 s (last 0.1 s lost)
    assert r["interval_s"] == pytest.approx(2.5)
    assert r["server_cpu_pct_mean"] == pytest.approx(100 * (1.25 + 0.5) / 2.5)
    assert s.rescans >= 1 and r["server_processes"] == 2
    # the old processes' past (50 s of CPU before the point) is not part of it
    assert r["server_cpu_pct_max"] < 200


def test_server_found_once_then_followed_cheaply(fake):
    calls: list[float] = []
    s = make_sampler(fake, [ROOT], calls, rescan_interval=5.0)
    with s:
        for _ in range(6):  # 3 s of samples, nothing changes: no new discovery
            fake.run(0.5, {}, {})
            s.sample()
        assert calls == [0.0]
        fake.spawn(CHILD, ROOT)  # a new child is followed from the pid listing, without server_procs()
        fake.run(0.5, {}, {})
        s.sample()
        assert calls == [0.0] and CHILD in s._trees["server"].members
        fake.kill(CHILD)  # a member disappears: discovery runs at once (a respawn, a daemon)
        fake.run(0.5, {}, {})
        s.sample()
        assert calls == [0.0, 4.0]
        for _ in range(9):  # and then only every rescan_interval after the last discovery
            fake.run(0.5, {}, {})
            s.sample()
        assert calls == [0.0, 4.0]
        fake.run(0.5, {}, {})
        s.sample()
        assert calls == [0.0, 4.0, 9.0]


def test_daemon_found_by_the_slow_rescan_counts_from_its_start(fake):
    server = [ROOT]
    s = make_sampler(fake, server, rescan_interval=1.0)
    with s:
        fake.spawn(CHILD, 1, ticks=0)  # daemonised out of the tree (parent init), carries the marker
        server.append(CHILD)
        fake.run(0.5, {0: 1.0}, {ROOT: 0.5, CHILD: 0.5})
        s.sample()  # not seen yet (no rescan before 1 s)
        assert CHILD not in s._trees["server"].members
        fake.run(0.5, {0: 1.0}, {ROOT: 0.5, CHILD: 0.5})
        s.sample()
        assert CHILD in s._trees["server"].members
    # it started during the run: all its CPU counts, even the part before it was found
    assert s.summary()["server_cpu_pct_mean"] == pytest.approx(100.0)


def test_pss_every_memory_interval_and_at_the_end_rss_always(fake):
    s = make_sampler(fake, [ROOT], memory_interval=2.0)
    with s:
        for i in range(9):
            fake.procs[ROOT]["rss_pages"] = 20 if i == 5 else 10  # a peak between PSS readings
            fake.run(0.5, {}, {})
            s.sample()
    assert fake.memory_calls == [0.0, 2.0, 4.0, 4.5]
    assert len(s.samples) == 11 and sum("pss_bytes" in x for x in s.samples) == 4
    assert all("rss_bytes" in x for x in s.samples)
    r = s.summary()
    assert r["server_pss_bytes_max"] == 64
    assert r["server_rss_bytes_max"] == 20 * os.sysconf("SC_PAGE_SIZE")  # the peak, seen by the cheap reading
    # a window without a memory sample takes the nearest one
    assert s.summary(2.6, 3.4)["server_pss_bytes_max"] == 62
    assert s.summary(2.6, 3.4)["samples"] == 1  # the one at 3.0


def test_summary_over_exactly_t0_t1_with_a_hog(fake):
    fake.spawn(HOG, HARNESS, ticks=0, cpus=[0])  # not a known process
    fake.spawn(GEN, HARNESS, ticks=0, cpus=[1])
    s = make_sampler(fake, [ROOT], server_cpus={0}, generator_cpus={1})
    with s:
        s.attach_generator(GEN)
        for _ in range(4):  # 2 s quiet: server 50 % of cpu0, generator 40 % of cpu1
            fake.run(0.5, {0: 0.5, 1: 0.4}, {ROOT: 0.5, GEN: 0.4})
            s.sample()
        for _ in range(4):  # 2 s with a hog: cpu0 full, the server squeezed to 30 %
            fake.run(0.5, {0: 1.0, 1: 0.4}, {ROOT: 0.3, GEN: 0.4, HOG: 0.7})
            fake.delay(ROOT, ROOT, 150)  # 0.15 s of run-queue wait per 0.5 s: 30 % of wall
            s.sample()
    quiet, hog, whole = s.summary(0.25, 1.75), s.summary(2.25, 3.75), s.summary()
    # interpolated between samples: the server's exact 50 % over [0.25, 1.75], not a neighbour's
    assert quiet["interval_s"] == pytest.approx(1.5) and quiet["server_cpu_pct_mean"] == pytest.approx(50)
    assert quiet["generator_cpu_pct_mean"] == pytest.approx(40)
    qi = quiet["interference"]
    assert qi["server_set"]["foreign_cpu_pct"] == pytest.approx(0, abs=1e-6) and qi["flags"] == []
    assert qi["server_run_delay_pct"] == pytest.approx(0)
    hi = hog["interference"]
    assert hog["server_cpu_pct_mean"] == pytest.approx(30)
    assert hi["server_set"]["foreign_cpu_pct"] == pytest.approx(70) and hi["flags"] == ["interference"]
    assert hi["server_run_delay_pct"] == pytest.approx(30) and hi["server_run_delay_ms"] == pytest.approx(450)
    assert hi["generator_set"]["foreign_cpu_pct"] == pytest.approx(0, abs=1e-6)
    assert hi["server_set"]["known_by_group"]["server"] == pytest.approx(30)
    assert "harness (shared)" in hi["server_set"]["known_by_group"]  # the harness may run on both CPUs
    assert any("foreign CPU on the server's CPUs [0]: 70 %" in r for r in hi["reasons"])
    assert whole["interference"]["flags"] == ["interference"]
    assert OLD_KEYS | {"interference", "interval_s", "sampler_busy_pct"} <= set(whole)


def test_sets_default_to_the_processes_affinity(fake):
    fake.spawn(GEN, HARNESS, cpus=[1])
    s = make_sampler(fake, [ROOT])  # no sets given
    with s:
        s.attach_generator(GEN)
        fake.run(1.5, {0: 0.9, 1: 0.2}, {ROOT: 0.5, GEN: 0.2})
    r = s.summary()["interference"]
    assert r["server_set"]["cpus"] == [0] and r["generator_set"]["cpus"] == [1]
    assert r["server_set"]["foreign_cpu_pct"] == pytest.approx(40) and r["flags"] == ["interference"]


def test_generator_workers_started_before_and_after_attach(fake):
    fake.spawn(GEN, HARNESS, cpus=[1])
    s = make_sampler(fake, [ROOT], generator_cpus={1})
    with s:
        fake.spawn(WORKER, GEN, cpus=[1])
        fake.run(0.5, {1: 0.6}, {GEN: 0.1, WORKER: 0.5})
        s.sample()  # the worker is listed before the generator is attached
        s.attach_generator(GEN)
        fake.spawn(WORKER + 1, GEN, cpus=[1])
        fake.run(0.5, {1: 0.8}, {GEN: 0.1, WORKER: 0.3, WORKER + 1: 0.4})
        s.sample()
    assert set(s._trees["generator"].members) == {GEN, WORKER, WORKER + 1}
    r = s.summary()
    assert r["generator_cpu_pct_mean"] == pytest.approx(70)  # (0.3 + 0.4) s of CPU over 1 s
    assert r["interference"]["generator_set"]["foreign_cpu_pct"] == pytest.approx(0, abs=1e-6)


def test_run_delay_of_threads_coming_and_going(fake):
    s = make_sampler(fake, [ROOT])
    with s:
        fake.delay(ROOT, ROOT, 100)
        fake.procs[ROOT]["threads"][ROOT + 2] = int(50e6)  # a thread started during the run: all of it
        fake.run(1.0, {}, {})
        s.sample()
        del fake.procs[ROOT]["threads"][ROOT + 1000]  # a thread exits: the total does not go down
        fake.delay(ROOT, ROOT + 2, 50)
        fake.run(1.0, {}, {})
    r = s.summary()["interference"]
    assert r["server_run_delay_ms"] == pytest.approx(200) and r["server_run_delay_pct"] == pytest.approx(10)


def test_summary_without_samples_in_range_and_before_any_sample(fake):
    s = make_sampler(fake, [ROOT])
    r = s.summary()  # never entered: the old keys, empty
    assert OLD_KEYS <= set(r) and r["samples"] == 0 and r["interference"] is None
    with s:
        fake.run(1.0, {0: 0.5}, {ROOT: 0.5})
    r = s.summary(0.2, 0.4)  # no sample inside, still the exact interval
    assert r["samples"] == 0 and r["server_cpu_pct_mean"] == pytest.approx(50)
    assert r["server_cpu_pct_max"] == pytest.approx(50)
    assert r["interference"]["not_judged"]  # 0.2 s: too short to judge


def test_real_proc_short_run():
    """On the real /proc with a real thread: the server tree is found once, the figures are sane."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    calls = []

    def server_procs():
        import psutil

        calls.append(1)
        return [psutil.Process(child.pid)]

    try:
        with Sampler(server_procs, interval=0.05, memory_interval=0.2) as s:
            time.sleep(0.4)
        r = s.summary()
        child_cpus = sorted(os.sched_getaffinity(child.pid))
    finally:
        child.kill()
        child.wait()
    assert len(calls) == 1 and r["samples"] >= 5 and r["server_processes"] == 1
    assert r["server_pss_bytes_max"] > 1e6 and 0 <= r["server_cpu_pct_mean"] < 100
    i = r["interference"]
    assert i["server_set"]["cpus"] == child_cpus
    assert i["harness_cpus"] == sorted(os.sched_getaffinity(0))
    assert r["sampler_busy_pct"] < 50
