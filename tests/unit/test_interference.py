"""servingbench.measure.interference: /proc readers on a synthetic /proc tree, accounting of members that come and
go, per-set busy/known/shared/foreign CPU and steal, every flag branch of the thresholds, and pin_harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servingbench.measure import interference as itf
from servingbench.measure.interference import (
    USER_HZ,
    CpuTicks,
    Cumulative,
    Group,
    ProcFS,
    Thresholds,
    cpu_set_usage,
    interference_flags,
    interference_reasons,
    interference_summary,
    parse_cpu_list,
    parse_pid_stat,
    parse_proc_stat,
    pin_harness,
)

PROC_STAT = """cpu  300 10 60 800 5 0 4 7 0 0
cpu0 100 0 20 400 2 0 2 3 0 0
cpu1 200 10 40 400 3 0 2 4 0 0
intr 987656 0 0
ctxt 123
"""


def pid_stat_line(pid: int, comm: str, ppid: int, utime: int, stime: int, start: int) -> str:
    # fields 3..22: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    #               priority nice num_threads itrealvalue starttime, then the rest
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194304 10 0 0 0 {utime} {stime} 7 9 20 0 3 0 {start} "
            "3133440 389 18446744073709551615 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")


def test_parse_proc_stat_per_cpu_lines_only():
    cpus = parse_proc_stat(PROC_STAT)
    assert set(cpus) == {0, 1}
    assert cpus[0] == CpuTicks(user=100, nice=0, system=20, idle=400, iowait=2, irq=0, softirq=2, steal=3)
    assert cpus[1].task == 250 and cpus[1].irqs == 2 and cpus[1].busy == 252
    # an old kernel without steal: missing fields are 0
    assert parse_proc_stat("cpu3 1 2 3 4 5 6 7\n")[3] == CpuTicks(1, 2, 3, 4, 5, 6, 7, 0)


def test_cpu_ticks_minus_and_lerp():
    a, b = CpuTicks(user=10, steal=2), CpuTicks(user=30, steal=6, idle=10)
    assert b.minus(a) == CpuTicks(user=20, steal=4, idle=10)
    assert a.lerp(b, 0.25) == CpuTicks(user=15, steal=3, idle=2.5)
    assert a.minus(b).user == 0  # never negative


def test_parse_pid_stat_odd_command_names():
    st = parse_pid_stat(42, pid_stat_line(42, "my (weird) proc) x", 7, 150, 50, 12345))
    assert st is not None and st.ppid == 7 and st.pid == 42
    assert st.cpu_s == pytest.approx(200 / USER_HZ)  # utime + stime, not cutime/cstime
    assert st.start_s == pytest.approx(12345 / USER_HZ) and st.key == (42, 12345)
    assert parse_pid_stat(42, "garbage") is None


def test_parse_cpu_list():
    assert parse_cpu_list(" 0-2,5,7-8\n") == {0, 1, 2, 5, 7, 8}
    assert parse_cpu_list("3") == {3}


def test_procfs_reads_a_synthetic_tree(tmp_path: Path):
    (tmp_path / "stat").write_text(PROC_STAT)
    (tmp_path / "uptime").write_text("1607.21 1630.97\n")
    p = tmp_path / "4242"
    (p / "task" / "4242").mkdir(parents=True)
    (p / "task" / "4243").mkdir()
    (p / "stat").write_text(pid_stat_line(4242, "srv", 1, 30, 10, 500))
    (p / "status").write_text("Name:\tsrv\nCpus_allowed:\t1\nCpus_allowed_list:\t0\n")
    (p / "statm").write_text("1000 300 50 1 0 200 0\n")
    (p / "task" / "4242" / "schedstat").write_text("1000 2000000 5\n")
    (p / "task" / "4243" / "schedstat").write_text("1000 3000000 5\n")
    (tmp_path / "self").mkdir()  # not a pid
    fs = ProcFS(tmp_path)
    assert fs.cpu_ticks()[1].user == 200
    assert fs.uptime() == pytest.approx(1607.21)
    assert fs.pids() == {4242}
    assert fs.pid_stat(4242).cpu_s == pytest.approx(40 / USER_HZ)
    assert fs.run_delays_ns(4242) == {4242: 2_000_000, 4243: 3_000_000}
    assert fs.affinity(4242) == {0} and fs.rss_bytes(4242) == 300 * os.sysconf("SC_PAGE_SIZE")
    # a process that is gone: None, never an exception
    assert fs.pid_stat(999) is None and fs.run_delays_ns(999) is None and fs.affinity(999) is None
    assert fs.rss_bytes(999) is None


def test_procfs_on_the_real_proc():
    fs = ProcFS()
    me = fs.pid_stat(os.getpid())
    assert me is not None and me.ppid == os.getppid()
    assert set(fs.cpu_ticks()) >= set(os.sched_getaffinity(0))
    assert fs.affinity(os.getpid()) == set(os.sched_getaffinity(0))
    delays = fs.run_delays_ns(os.getpid())
    assert delays and all(v >= 0 for v in delays.values())


def test_cumulative_members_coming_and_going():
    c = Cumulative()
    started_during = {"new"}
    full = started_during.__contains__
    assert c.update({"old": 10.0}, full) == 0.0  # present at the start: its past is the baseline
    assert c.update({"old": 12.0, "new": 3.0}, full) == 5.0  # old +2, new started during the run: all 3
    assert c.update({"new": 4.0}, full) == 6.0  # old gone: keeps what it added; new +1
    assert c.update({"old": 12.5, "new": 4.0}, full) == 6.5  # old readable again: its increase, not all of it
    assert c.update({"new": 3.0}, full) == 6.5  # a counter going back (never for real): ignored
    assert c.update({"new": 4.5}, full) == 7.0  # counted from its highest value, not the dip


def _ticks(**per_cpu: dict) -> dict[int, CpuTicks]:
    return {int(k[3:]): CpuTicks(**v) for k, v in per_cpu.items()}


def test_cpu_set_usage_known_shared_foreign_steal():
    wall = 2.0
    before = _ticks(cpu0=dict(user=0), cpu1=dict(user=0))
    # 2 s at 100 Hz = 200 ticks per CPU. cpu0: 180 busy (150 user + 20 system + 10 softirq), 10 steal
    after = _ticks(cpu0=dict(user=150, system=20, softirq=10, idle=10, steal=10),
                   cpu1=dict(user=100, idle=100))
    groups = [Group("server", 1.0, frozenset({0})),  # 50 % of a core, pinned to cpu0
              Group("generator", 0.8, frozenset({1})),
              Group("harness", 0.1, frozenset({0, 1}))]  # may have run on either
    s = cpu_set_usage(before, after, {0}, groups, wall)
    hz = USER_HZ / 100  # the figures above assume USER_HZ 100
    assert s["cpus"] == [0]
    assert s["busy_cpu_pct"] == pytest.approx(90 / hz) and s["task_cpu_pct"] == pytest.approx(85 / hz)
    assert s["irq_cpu_pct"] == pytest.approx(5 / hz) and s["idle_cpu_pct"] == pytest.approx(5 / hz)
    assert s["known_cpu_pct"] == pytest.approx(50) and s["shared_cpu_pct"] == pytest.approx(5)
    assert s["known_by_group"] == {"server": pytest.approx(50), "harness (shared)": pytest.approx(5)}
    assert s["foreign_cpu_pct"] == pytest.approx(85 / hz - 55)
    assert s["foreign_cpu_pct_upper"] == pytest.approx(85 / hz - 50)
    assert s["steal_pct"] == {0: pytest.approx(5 / hz)} and s["steal_pct_max"] == pytest.approx(5 / hz)
    # the generator's set: all its busy time is the generator's (40 %) and the harness's (5 %) or foreign
    g = cpu_set_usage(before, after, {1}, groups, wall)
    assert g["known_cpu_pct"] == pytest.approx(40) and g["foreign_cpu_pct"] == pytest.approx(50 / hz - 45)


def test_cpu_set_usage_clamps_and_edges():
    before, after = _ticks(cpu0=dict()), _ticks(cpu0=dict(user=20, idle=180))
    # known processes used more than the CPU shows (tick rounding): foreign is 0, not negative
    s = cpu_set_usage(before, after, {0}, [Group("server", 0.5, frozenset({0}))], 2.0)
    assert s["foreign_cpu_pct"] == 0.0 and s["foreign_cpu_pct_upper"] == 0.0
    # a group allowed anywhere (affinity unknown) is shared; one pinned elsewhere does not count here
    s = cpu_set_usage(before, after, {0}, [Group("a", 0.1, None), Group("b", 5.0, frozenset({1}))], 2.0)
    assert s["shared_cpu_pct"] == pytest.approx(5) and s["known_cpu_pct"] == 0
    assert cpu_set_usage(before, after, {7}, [], 2.0) is None  # CPU not in /proc/stat (offline)
    assert cpu_set_usage(before, after, {0}, [], 0.0) is None


def _summary(server_foreign=0.0, gen_foreign=0.0, steal=0.0, server_delay=0.0, gen_delay=0.0, wall=3.0):
    """A summary with chosen figures, built through the real accounting (ticks at USER_HZ)."""
    hz = USER_HZ

    def busy(pct):
        return pct / 100 * wall * hz

    before = _ticks(cpu0=dict(), cpu1=dict())
    after = {0: CpuTicks(user=busy(50 + server_foreign), steal=busy(steal)), 1: CpuTicks(user=busy(30 + gen_foreign))}
    groups = [Group("server", 0.5 * wall, frozenset({0})), Group("generator", 0.3 * wall, frozenset({1}))]
    return interference_summary(before, after, wall, server_cpus={0}, generator_cpus={1}, groups=groups,
                                server_run_delay_s=server_delay / 100 * wall,
                                generator_run_delay_s=gen_delay / 100 * wall)


def test_quiet_point_is_not_flagged():
    s = _summary(server_foreign=3, gen_foreign=2, steal=1, server_delay=15, gen_delay=40)
    assert s["server_set"]["foreign_cpu_pct"] == pytest.approx(3)
    assert s["server_run_delay_pct"] == pytest.approx(15) and s["server_run_delay_ms"] == pytest.approx(450)
    assert s["generator_run_delay_pct"] == pytest.approx(40)
    assert s["flags"] == [] and s["reasons"] == [] and interference_flags(s) == ([], [])
    assert s["thresholds"]["foreign_cpu_pct"] == 10.0


@pytest.mark.parametrize("kw, needle", [
    (dict(server_foreign=25), "foreign CPU on the server's CPUs [0]: 25 %"),
    (dict(gen_foreign=12), "foreign CPU on the generator's CPUs [1]: 12 %"),
    (dict(steal=6), "steal on CPU 0 (server): 6.0 %"),
])
def test_each_threshold_flags(kw, needle):
    s = _summary(**kw)
    flags, reasons = interference_flags(s)
    assert s["flags"] == flags == ["interference"] and s["reasons"] == reasons
    assert any(needle in r for r in reasons), reasons


def test_server_run_delay_is_reported_not_flagged_by_default():
    # the server's own threads queueing behind each other (LitServe on one core: 100-150 % of wall): not interference
    s = _summary(server_delay=150, server_foreign=7)
    assert s["server_run_delay_pct"] == pytest.approx(150) and s["flags"] == []


def test_server_run_delay_limit_flags_only_with_some_foreign_cpu_or_steal():
    t = Thresholds(server_run_delay_pct=25)
    # alone: self-contention, never interference
    assert interference_reasons(_summary(server_delay=60), t) == []
    # with foreign CPU between half the limit and the limit, the delay is what flags it
    r = interference_reasons(_summary(server_delay=60, server_foreign=7), t)
    assert len(r) == 1 and "server run-queue delay 60 %" in r[0]
    r = interference_reasons(_summary(server_delay=60, steal=3), t)
    assert len(r) == 1 and "run-queue" in r[0]
    # below the delay limit: nothing
    assert interference_reasons(_summary(server_delay=20, server_foreign=7), t) == []


def test_generator_run_delay_is_reported_and_flags_only_when_asked():
    s = _summary(gen_delay=80)
    assert s["flags"] == []
    flags, reasons = interference_flags(s, Thresholds(generator_run_delay_pct=50))
    assert flags == ["interference"] and "generator run-queue delay 80 %" in reasons[0]


def test_short_interval_is_not_judged():
    s = _summary(server_foreign=80, wall=0.5)
    assert s["server_set"]["foreign_cpu_pct"] == pytest.approx(80)
    assert s["flags"] == [] and "shorter than 1 s" in s["not_judged"]


def test_unknown_sets_have_no_accounting():
    s = interference_summary({}, {}, 2.0, server_cpus=None, generator_cpus=None, groups=[])
    assert s["server_set"] is None and s["generator_set"] is None and s["server_run_delay_ms"] is None
    assert s["flags"] == []


# ---- pin_harness -------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_affinity(monkeypatch):
    calls: list[tuple[int, list[int]]] = []
    monkeypatch.setattr(itf.os, "sched_setaffinity", lambda tid, cpus: calls.append((tid, sorted(cpus))))
    real_listdir = os.listdir
    monkeypatch.setattr(itf.os, "listdir", lambda p: ["11", "12"] if p == "/proc/self/task" else real_listdir(p))
    return calls


def test_pin_harness_two_cores_does_nothing(monkeypatch, fake_affinity):
    monkeypatch.setattr(itf.os, "sched_getaffinity", lambda pid: {0, 1})
    r = pin_harness({0}, {1})
    assert r["pinned"] is False and r["cpus"] is None and "no allowed core outside" in r["reason"]
    assert r["previous"] == [0, 1] and fake_affinity == []


def test_pin_harness_unknown_sets_does_nothing(monkeypatch, fake_affinity):
    monkeypatch.setattr(itf.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert pin_harness(None, {3})["pinned"] is False and fake_affinity == []


def test_pin_harness_pins_every_thread_to_the_rest(monkeypatch, fake_affinity):
    monkeypatch.setattr(itf.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    r = pin_harness({0, 1}, {3})
    assert r["pinned"] is True and r["cpus"] == [2] and r["previous"] == [0, 1, 2, 3]
    assert fake_affinity == [(11, [2]), (12, [2])]
