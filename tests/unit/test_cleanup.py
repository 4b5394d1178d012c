"""``servingbench cleanup``: what a gone, zombie, stopped or named-stuck harness left -- processes carrying its marks
and their children, the /dev/shm entries they use, marker-named and owned temp dirs -- is found and removed; what
a live harness owns is left alone.  Fake harnesses and children (sleeping Pythons): no server, fast.

Every cleanup here runs with ``SERVINGBENCH_MARKER_PREFIX`` set to the test's own prefix, so it sees only what the
test started (a machine's other runs are never touched)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from servingbench.runtime import supervisor

CLI = [sys.executable, "-m", "servingbench.cli", "cleanup"]
SLEEPER = "import time; time.sleep(120)"
#: A child that maps a /dev/shm file (as MOSEC's semaphores are mapped) and prints its path, then sleeps.
MAPPER = """\
import mmap, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
os.close(fd)
print("mapped", flush=True)
time.sleep(120)
"""


@pytest.fixture
def scope(monkeypatch):
    """A short marker prefix of this test's own (markers keep their 12-character uniqueness) and its cleanup."""
    prefix = f"u{uuid.uuid4().hex[:5]}-"
    monkeypatch.setenv("SERVINGBENCH_MARKER_PREFIX", prefix)
    started: list[subprocess.Popen] = []
    yield prefix, started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)  # a stopped one dies of SIGKILL as well, but only once it runs
            p.kill()
        p.wait()


def _harness(started, code: str = SLEEPER) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    started.append(p)
    return p


def _marked_child(started, harness_pid: int, marker: str, role: str = "server", argv: list[str] | None = None,
                  stdout=None) -> subprocess.Popen:
    start = supervisor.process_start(harness_pid)
    env = {**os.environ, supervisor.MARKER_ENV: marker, supervisor.HARNESS_ENV: str(harness_pid),
           supervisor.HARNESS_START_ENV: f"{start:.2f}" if start else "", supervisor.ROLE_ENV: role}
    p = subprocess.Popen(argv or [sys.executable, "-c", SLEEPER], env=env, start_new_session=True, stdout=stdout,
                         text=True)
    started.append(p)
    return p


def _cleanup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)


def _wait_marked(pids: set[int], deadline_s: float = 10.0) -> None:
    """Until every pid shows its marks in /proc (the exec has happened)."""
    end = time.time() + deadline_s
    while time.time() < end:
        if pids <= {m.proc.pid for m in supervisor._scan_marked()}:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {pids} never showed their marks")


def _dead_pid() -> tuple[int, float]:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = psutil.Process(p.pid).create_time()
    p.wait()
    return p.pid, start


def test_gone_harness_processes_shm_and_dirs_are_removed(scope, tmp_path, monkeypatch):
    prefix, started = scope
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # cleanup looks into the temp root the harness used
    gone, _ = _dead_pid()
    marker = prefix + uuid.uuid4().hex
    shm_path = f"/dev/shm/sbtest-{marker}"
    mapper = _marked_child(started, gone, marker, "server", [sys.executable, "-c", MAPPER, shm_path],
                           stdout=subprocess.PIPE)
    assert mapper.stdout.readline().strip() == "mapped"
    # Ray's temp root and MOSEC's IPC dir (in /tmp, named after the marker); Triton's shm region; an owned scratch.
    ray_dir = Path(f"/tmp/sb-ray-{marker[:12]}")
    ray_dir.mkdir()
    (ray_dir / "session_x").mkdir()
    triton_shm = Path(f"/dev/shm/sbtis{marker[:12]}_region")
    triton_shm.write_bytes(b"x")
    scratch = tmp_path / "servingbench-scratch-abc"
    scratch.mkdir()
    (scratch / supervisor.OWNER_FILE).write_text(json.dumps({"pid": gone, "start": None, "marker_prefix": prefix}))
    (scratch / "gen-x.plan.json").write_text("{}")
    try:
        _wait_marked({mapper.pid})
        listed = _cleanup()
        assert listed.returncode == 1, listed.stdout + listed.stderr
        out = listed.stdout
        assert f"stale: {mapper.pid}:" in out and f"harness {gone} gone" in out
        for path in (shm_path, str(ray_dir), str(triton_shm), str(scratch)):
            assert path in out, (path, out)
        assert mapper.poll() is None and ray_dir.exists(), "listing must not remove anything"

        killed = _cleanup("--kill")
        assert killed.returncode == 0, killed.stdout + killed.stderr
        assert mapper.wait(timeout=10) == -signal.SIGKILL
        for path in (shm_path, ray_dir, triton_shm, scratch):
            assert not os.path.lexists(path), (path, killed.stdout)
        assert f"removed {shm_path}" in killed.stdout
        again = _cleanup()
        assert again.returncode == 0 and "no stale" in again.stdout, again.stdout
    finally:
        for path in (shm_path, triton_shm):
            if os.path.lexists(path):
                os.unlink(path)
        if ray_dir.exists():
            import shutil

            shutil.rmtree(ray_dir)


@pytest.mark.parametrize("state", ["zombie", "stopped", "reused"])
def test_zombie_stopped_or_reused_harness_counts_as_gone(scope, state):
    prefix, started = scope
    if state == "reused":  # the harness PID now belongs to another process: the start time tells them apart
        harness = _harness(started)
        env = {**os.environ, supervisor.MARKER_ENV: prefix + uuid.uuid4().hex,
               supervisor.HARNESS_ENV: str(harness.pid), supervisor.HARNESS_START_ENV: "12345.00"}
        child = subprocess.Popen([sys.executable, "-c", SLEEPER], env=env, start_new_session=True)
        started.append(child)
    else:
        harness = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)" if state == "zombie"
                                    else SLEEPER], start_new_session=True)
        started.append(harness)
        child = _marked_child(started, harness.pid, prefix + uuid.uuid4().hex)
        if state == "zombie":  # exited, not reaped: its PID still exists
            while psutil.Process(harness.pid).status() != psutil.STATUS_ZOMBIE:
                time.sleep(0.05)
        else:
            os.kill(harness.pid, signal.SIGSTOP)
            while psutil.Process(harness.pid).status() != psutil.STATUS_STOPPED:
                time.sleep(0.05)
    _wait_marked({child.pid})
    found = {m.proc.pid: why for m, why in supervisor.find_leftovers().processes}
    assert child.pid in found, found
    assert found[child.pid] == f"harness {harness.pid} {'gone' if state == 'reused' else state}"
    killed = _cleanup("--kill")
    assert killed.returncode == 0, killed.stdout
    assert child.wait(timeout=10) == -signal.SIGKILL
    if state != "zombie":
        assert harness.poll() is None, "cleanup never kills a harness"


def test_live_harness_is_left_alone_unless_named_with_owner(scope, tmp_path, monkeypatch):
    import tempfile

    prefix, started = scope
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    harness = _harness(started)
    child = _marked_child(started, harness.pid, prefix + uuid.uuid4().hex, "generator")
    # ... and a grandchild that dropped the marks (an empty environment): a child of a stale process counts too.
    grandchild_code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                       "time.sleep(120)'], env={}); time.sleep(120)")
    parent = _marked_child(started, harness.pid, prefix + uuid.uuid4().hex, "inprocess",
                           [sys.executable, "-c", grandchild_code])
    owned = tmp_path / "servingbench-secrets-xyz"
    owned.mkdir()
    (owned / supervisor.OWNER_FILE).write_text(json.dumps(
        {"pid": harness.pid, "start": supervisor.process_start(harness.pid), "marker_prefix": prefix}))
    _wait_marked({child.pid, parent.pid})
    end = time.time() + 10
    while not psutil.Process(parent.pid).children() and time.time() < end:
        time.sleep(0.05)
    (grandchild,) = psutil.Process(parent.pid).children()

    assert not supervisor.find_leftovers(), "a live harness's processes and dirs are not leftovers"
    assert _cleanup().returncode == 0

    listed = _cleanup("--owner", str(harness.pid))
    assert listed.returncode == 1
    assert f"stale: {child.pid}:" in listed.stdout and "(generator," in listed.stdout
    assert f"stale: {grandchild.pid}:" in listed.stdout and f"child of {parent.pid}" in listed.stdout
    assert str(owned) in listed.stdout
    assert f"owner still running: {harness.pid}:" in listed.stdout
    killed = _cleanup("--kill", "--owner", str(harness.pid))
    assert killed.returncode == 0, killed.stdout
    assert child.wait(timeout=10) == -signal.SIGKILL and parent.wait(timeout=10) == -signal.SIGKILL
    psutil.wait_procs([grandchild], timeout=10)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
    assert not owned.exists()
    assert harness.poll() is None, "the named owner itself is never killed"
    assert _cleanup("--owner", "0").returncode == 2


def test_unclaimed_dir_only_when_no_live_harness_could_own_it(tmp_path, monkeypatch):
    """Global mode (no prefix): an unclaimed servingbench temp dir is removed only when no live harness started
    before it was created; claimed dirs follow their owner file."""
    monkeypatch.delenv("SERVINGBENCH_MARKER_PREFIX", raising=False)
    monkeypatch.setattr(supervisor, "_temp_roots", lambda: [tmp_path])
    monkeypatch.setattr(supervisor, "_stale_processes", lambda owners: ([], []))
    monkeypatch.setattr(supervisor, "SHM", str(tmp_path / "no-shm"))
    unclaimed = tmp_path / "servingbench-scratch-u"
    unclaimed.mkdir()
    claimed_live = tmp_path / "servingbench-scratch-l"
    claimed_live.mkdir()
    assert supervisor.claim_tempdir(claimed_live) and not supervisor.claim_tempdir(claimed_live)
    assert not supervisor.claim_tempdir(tmp_path)  # not a servingbench temp dir: never claimed
    gone, start = _dead_pid()
    claimed_gone = tmp_path / "servingbench-secrets-g"
    claimed_gone.mkdir()
    (claimed_gone / supervisor.OWNER_FILE).write_text(json.dumps({"pid": gone, "start": start}))
    other = tmp_path / "unrelated-dir"
    other.mkdir()

    # This test process owns claimed_live, started before unclaimed: it could own it.
    found = dict(supervisor.find_leftovers().files)
    assert set(found) == {str(claimed_gone)}, found
    assert found[str(claimed_gone)] == f"owner {gone} gone"

    os.unlink(claimed_live / supervisor.OWNER_FILE)  # no live harness left
    monkeypatch.setattr(supervisor, "_cli_harnesses", lambda: [])
    found = dict(supervisor.find_leftovers().files)
    assert set(found) == {str(claimed_gone), str(unclaimed), str(claimed_live)}, found
    done, failed = supervisor.remove_leftovers(supervisor.find_leftovers())
    assert not failed and not unclaimed.exists() and not claimed_gone.exists() and other.exists()

    late = supervisor.make_tempdir("servingbench-scratch-")  # claimed at birth
    try:
        assert json.loads((late / supervisor.OWNER_FILE).read_text())["pid"] == os.getpid()
    finally:
        import shutil

        shutil.rmtree(late)


def test_marker_env_and_shm_helpers(tmp_path):
    env = supervisor.marker_env("canary")
    assert env[supervisor.HARNESS_ENV] == str(os.getpid()) and env[supervisor.ROLE_ENV] == "canary"
    assert abs(float(env[supervisor.HARNESS_START_ENV]) - psutil.Process().create_time()) < 0.05
    assert supervisor.harness_state(os.getpid()) == "alive"
    assert supervisor.harness_state(os.getpid(), psutil.Process().create_time() - 10) == "gone"
    path = f"/dev/shm/sbtest-{uuid.uuid4().hex}"
    import mmap

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 4096)
        m = mmap.mmap(fd, 4096)
        assert path in supervisor.shm_of_tree([psutil.Process()])
        assert supervisor.remove_unused_shm([path]) == [] and os.path.exists(path), "in use: kept"
        m.close()
        os.close(fd)
        fd = -1
        assert supervisor.remove_unused_shm([path]) == [path] and not os.path.exists(path)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(path):
            os.unlink(path)
