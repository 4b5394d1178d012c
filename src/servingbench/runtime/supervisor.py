"""Start, watch and stop server processes so that nothing survives a run, a failure or Ctrl-C.

Rules (after mirakuru): no shell; each server gets its own session/process group; readiness is polled while the
process is watched, so a crash is reported at once with its log tail instead of looking like a slow start; stop
sends the framework's graceful signal, waits, then SIGKILLs the group *and* every process that still carries the
deployment's marker environment variable (Ray and friends daemonise out of the group); then it asserts that no
process survived and that the ports are free again.

Every process a harness starts (servers, the load generator and its locust workers, the in-process limit jobs, the
canary) carries ``SERVINGBENCH_MARKER`` / ``SERVINGBENCH_HARNESS_PID`` (+ the harness's start time and the
process's role) in its environment -- :func:`marker_env` -- and every temporary directory a harness creates holds
an owner file (:func:`claim_tempdir`).  :func:`find_leftovers` uses both to find what a dead (or stopped, or named
stuck) harness left: the processes, the /dev/shm entries they map (MOSEC's ``sem.mp-*`` semaphores, Triton's
``sbtis*`` regions), Ray's and MOSEC's marker-named dirs and the scratch/secrets dirs (``servingbench cleanup``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import psutil

from servingbench.contract import LaunchSpec

MARKER_ENV = "SERVINGBENCH_MARKER"
HARNESS_ENV = "SERVINGBENCH_HARNESS_PID"
HARNESS_START_ENV = "SERVINGBENCH_HARNESS_START"  #: the harness's start time (a reused PID is not the harness)
ROLE_ENV = "SERVINGBENCH_ROLE"  #: server, generator, inprocess, canary (for cleanup's messages)
LOOPBACK = "127.0.0.1"
#: In every temporary directory a harness creates: ``{"pid": ..., "start": ...}`` of the harness.
OWNER_FILE = ".servingbench-owner"
#: Prefixes of the temporary directories servingbench creates (tempfile.mkdtemp / TemporaryDirectory).
TEMP_PREFIXES = ("servingbench-scratch-", "servingbench-secrets-", "servingbench-gen-", "servingbench-verify-",
                 "servingbench-serve-", "servingbench-calibrate-", "servingbench-src-")
#: Directories named after a deployment's marker (``<prefix><marker[:12]>``): Ray's temp root, MOSEC's IPC dir.
MARKER_DIR_PREFIXES = ("sb-ray-", "sb-mosec-")
#: /dev/shm entries named after a deployment's marker: Triton's Python-backend regions (``sbtis<marker[:12]>_*``).
MARKER_SHM_PREFIXES = ("sbtis",)
SHM = "/dev/shm"


class ServerError(RuntimeError):
    """A server failed to start, exited early, or did not become ready.  ``log_tail`` holds its last output."""

    def __init__(self, message: str, log_tail: str = "", kind: str = "start") -> None:
        super().__init__(message + (f"\n--- server log (tail) ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail
        self.kind = kind


class PortInUse(RuntimeError):
    pass


# ---- ports -------------------------------------------------------------------------------------------------------
_handed_out: set[int] = set()
_port_lock = threading.Lock()


def is_listening(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts connections on host:port.

    A plain ``bind()`` test is wrong here: after a server stops, its port sits in TIME_WAIT for ~60 s and bind
    fails, although the frameworks themselves rebind fine (they set SO_REUSEADDR).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = LOOPBACK) -> int:
    """A loopback port nobody listens on, never handed out before in this process."""
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, 0))
                port = s.getsockname()[1]
            # Ray takes worker ports from its own range; keep ours clear of the ephemeral top too.
            if port in _handed_out or port > 60999 or is_listening(port, host):
                continue
            _handed_out.add(port)
            return port
    raise PortInUse("could not find a free loopback port after 200 tries")


def require_free(port: int, host: str = LOOPBACK) -> None:
    if is_listening(port, host):
        owner = _port_owner(port)
        raise PortInUse(
            f"port {host}:{port} is already in use{f' by {owner}' if owner else ''}; "
            "stop that process or choose another port"
        )


def _port_owner(port: int) -> str:
    with contextlib.suppress(Exception):
        for c in psutil.net_connections("tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                p = psutil.Process(c.pid)
                return f"pid {c.pid} ({' '.join(p.cmdline()[:4])})"
    return ""


def new_marker() -> str:
    """A fresh marker value; ``SERVINGBENCH_MARKER_PREFIX`` lets a caller (tests) find every server it caused."""
    import uuid

    return os.environ.get("SERVINGBENCH_MARKER_PREFIX", "") + uuid.uuid4().hex


# ---- process discovery -------------------------------------------------------------------------------------------
def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries ``SERVINGBENCH_MARKER=marker``."""
    found = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


# ---- marks: what a harness starts carries them, what it creates holds them ---------------------------------------
def process_start(pid: int) -> float | None:
    """A process's start time (seconds since the epoch), or None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def marker_env(role: str, marker: str | None = None) -> dict[str, str]:
    """The variables that mark a child as started by this harness: merge them into its environment.

    ``cleanup`` finds every process carrying them once the harness is gone (or stopped, or named stuck), and the
    tests' no-leftover checks find it by its marker (``SERVINGBENCH_MARKER_PREFIX``).  Children inherit them, so
    the generator's locust workers and Ray's raylet, agents and workers are marked too.
    """
    start = process_start(os.getpid())
    return {MARKER_ENV: marker or new_marker(), HARNESS_ENV: str(os.getpid()),
            HARNESS_START_ENV: f"{start:.2f}" if start else "", ROLE_ENV: role}


def claim_tempdir(path: str | os.PathLike) -> bool:
    """Put this harness's owner file into a temporary directory servingbench created (a name starting with one of
    :data:`TEMP_PREFIXES`) that has none yet; ``cleanup`` removes such a directory only once its owner is gone."""
    path = Path(path)
    if not path.name.startswith(TEMP_PREFIXES) or not path.is_dir() or path.is_symlink():
        return False
    try:
        fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:  # claimed already (by us: a later call) or not ours to write
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "start": process_start(os.getpid()),
                   "marker_prefix": os.environ.get("SERVINGBENCH_MARKER_PREFIX", "")}, f)
    return True


def make_tempdir(prefix: str) -> Path:
    """``tempfile.mkdtemp(prefix=...)`` (0700) holding this harness's owner file."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    claim_tempdir(path)
    return path


def harness_state(pid: int, start: float | None = None) -> str:
    """``alive``; ``gone`` (no such process, or its PID now belongs to a later process); ``zombie``; ``stopped``
    (SIGSTOP / Ctrl-Z: it makes no progress, and its servers would distort every other run)."""
    try:
        p = psutil.Process(pid)
        if start is not None and abs(p.create_time() - start) > 0.05:
            return "gone"
        status = p.status()
    except psutil.Error:
        return "gone"
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return "zombie"
    if status == psutil.STATUS_STOPPED:
        return "stopped"
    return "alive"


@dataclass
class Marked:
    """A live process carrying a harness's marks."""

    proc: psutil.Process
    marker: str
    harness: int | None
    harness_start: float | None
    role: str
    desc: str = ""  #: ``pid:command`` when found (a dying process loses its command line)


def _scan_marked() -> list[Marked]:
    """Every live (not zombie) process but this one whose environment carries ``SERVINGBENCH_MARKER``."""
    out = []
    needle = MARKER_ENV.encode() + b"="
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if needle not in raw:
            continue
        env = dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
        marker = env.get(MARKER_ENV.encode())
        if marker is None:
            continue
        try:
            proc = psutil.Process(int(d))
            if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue
        except psutil.Error:
            continue

        def num(key: str, kind):
            with contextlib.suppress(ValueError, TypeError):
                return kind(env.get(key.encode(), b"").decode()) or None
            return None

        out.append(Marked(proc, marker.decode(errors="replace"), num(HARNESS_ENV, int), num(HARNESS_START_ENV, float),
                          env.get(ROLE_ENV.encode(), b"server").decode(errors="replace")))
    return out


def _shm_of(pid: int) -> set[str]:
    """/dev/shm entries a process maps or holds open (and that still have a name)."""
    out = set()
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.rstrip("\n").split(None, 5)
            if len(parts) == 6 and parts[5].startswith(SHM + "/") and not parts[5].endswith(" (deleted)"):
                out.add(parts[5])
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(SHM + "/") and not target.endswith(" (deleted)"):
                    out.add(target)
    return out


def shm_in_use() -> set[str]:
    """Every /dev/shm entry some live process maps or holds open."""
    used: set[str] = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            used |= _shm_of(int(d))
    return used


def shm_of_tree(procs: Iterable[psutil.Process]) -> set[str]:
    """The /dev/shm entries a process tree uses (MOSEC's multiprocessing semaphores ``sem.mp-*``, Triton's
    regions): collected while it runs, removed once it is gone when nobody else uses them."""
    out: set[str] = set()
    for p in procs:
        out |= _shm_of(p.pid)
    return out


def remove_unused_shm(paths: Iterable[str]) -> list[str]:
    """Unlink those of ``paths`` no live process uses; returns the ones removed."""
    paths = [p for p in paths if os.path.lexists(p)]
    if not paths:
        return []
    used = shm_in_use()
    removed = []
    for p in paths:
        if p not in used:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                removed.append(p)
    return removed


def stale_servers() -> list[tuple[psutil.Process, str]]:
    """Processes (servers, generators, in-process jobs, canaries) started by a servingbench harness that is no
    longer running (a crash, a kill -9), is a zombie or is stopped; with their markers."""
    return [(m.proc, m.marker) for m, _ in _stale_processes(set())[0]]


def _scope() -> str:
    return os.environ.get("SERVINGBENCH_MARKER_PREFIX", "")


def _stale_processes(owners: set[int]) -> tuple[list[tuple[Marked, str]], list[Marked]]:
    """(stale marked processes with why, the other marked processes).  ``owners``: only what those harnesses
    started counts, whatever their state (a live but stuck harness); otherwise what every gone, zombie or
    stopped harness started.  ``SERVINGBENCH_MARKER_PREFIX`` limits both to markers with that prefix."""
    mine = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        mine |= {p.pid for p in psutil.Process().parents()}
    scope = _scope()
    states: dict[tuple[int, float | None], str] = {}
    stale, live = [], []
    for m in _scan_marked():
        why = None
        if m.proc.pid not in mine and m.marker.startswith(scope) and m.harness is not None:
            if owners:
                why = f"harness {m.harness} named with --owner" if m.harness in owners else None
            elif m.harness == m.proc.pid:
                why = "its own harness"
            else:
                key = (m.harness, m.harness_start)
                if key not in states:
                    states[key] = harness_state(*key)
                why = None if states[key] == "alive" else f"harness {m.harness} {states[key]}"
        if why:
            m.desc = describe_process(m.proc)
            stale.append((m, why))
        else:
            live.append(m)
    # Children that dropped the marks (a cleared environment) still belong to a stale parent.
    seen = {m.proc.pid for m, _ in stale} | {m.proc.pid for m in live}
    for m, _ in list(stale):
        with contextlib.suppress(psutil.Error):
            for c in m.proc.children(recursive=True):
                if c.pid not in seen and c.pid not in mine and c.status() != psutil.STATUS_ZOMBIE:
                    seen.add(c.pid)
                    stale.append((Marked(c, m.marker, m.harness, m.harness_start, m.role, describe_process(c)),
                                  f"child of {m.proc.pid}"))
    return stale, live


@dataclass
class Leftovers:
    """What :func:`find_leftovers` found: processes and paths, each with why it counts as left behind."""

    processes: list[tuple[Marked, str]] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)
    live_owners: list[str] = field(default_factory=list)  #: --owner harnesses still alive (not ours to kill)

    def __bool__(self) -> bool:
        return bool(self.processes or self.files)


def _temp_roots() -> list[Path]:
    roots = []
    for r in (tempfile.gettempdir(), "/tmp"):
        if os.path.isdir(r) and Path(r).resolve() not in [x.resolve() for x in roots]:
            roots.append(Path(r))
    return roots


def _cli_harnesses() -> list[tuple[int, float]]:
    """Live ``servingbench`` command-line processes other than this one and its parents: (pid, start)."""
    mine = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        mine |= {p.pid for p in psutil.Process().parents()}
    out = []
    for p in psutil.process_iter(["cmdline", "create_time", "status"]):
        cmd = p.info["cmdline"] or []
        if p.pid in mine or p.info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
            continue
        names = [os.path.basename(a) for a in cmd[:2]]
        module = cmd[cmd.index("-m") + 1] if "-m" in cmd[:3] and cmd.index("-m") + 1 < len(cmd) else ""
        if "servingbench" in names or module in ("servingbench", "servingbench.cli"):
            out.append((p.pid, p.info["create_time"]))
    return out


def find_leftovers(owners: Iterable[int] = ()) -> Leftovers:
    """Everything a gone, zombie or stopped harness started or created and left behind -- or, with ``owners``,
    everything those harnesses did, alive or not (a stuck harness):

    * processes carrying its marks (servers, Ray's raylet/GCS/agents/workers, the generator and its locust workers,
      in-process jobs, the canary) and their children;
    * /dev/shm entries those processes map or hold open (MOSEC's ``sem.mp-*``), and Triton's ``sbtis<marker>_*``
      regions whose marker no live process carries;
    * Ray's temp roots (``/tmp/sb-ray-<marker>``) and MOSEC's IPC dirs (``/tmp/sb-mosec-<marker>``) whose marker
      no live process carries;
    * servingbench's temporary directories (scratch, secrets, ...) whose owner file names such a harness; an
      unclaimed one only when no live harness could have created it (none started before it).

    ``SERVINGBENCH_MARKER_PREFIX`` limits all of it to markers (and owner files) of that prefix (tests).
    """
    owners = set(owners)
    scope = _scope()
    stale, live = _stale_processes(owners)
    found = Leftovers(processes=stale)
    for pid in sorted(owners):
        state = harness_state(pid)
        if state in ("alive", "stopped"):
            with contextlib.suppress(psutil.Error):
                found.live_owners.append(f"{describe_process(psutil.Process(pid))} ({state})")
    live12 = {m.marker[:12] for m in live}
    stale12 = {m.marker[:12] for m, _ in stale}
    files: dict[str, str] = {}
    for m, _ in stale:
        for path in sorted(_shm_of(m.proc.pid)):
            files.setdefault(path, f"used by stale process {m.proc.pid}")

    def marker_named(m12: str) -> bool:
        if owners:
            return m12 in stale12
        return bool(m12) and m12.startswith(scope[:12]) and m12 not in live12

    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(SHM)):
            for prefix in MARKER_SHM_PREFIXES:
                if name.startswith(prefix) and marker_named(name[len(prefix):len(prefix) + 12]):
                    files.setdefault(f"{SHM}/{name}", "no live process carries its marker")
    for path, why in _leftover_dirs(owners, scope, live, marker_named).items():
        files.setdefault(path, why)
    found.files = sorted(files.items())
    return found


def _leftover_dirs(owners: set[int], scope: str, live: list, marker_named: Callable[[str], bool]) -> dict[str, str]:
    """Temp directories a harness left (see :func:`find_leftovers`): marker-named dirs whose marker no live process
    carries, and servingbench's temp dirs whose owner is gone (or named in ``owners``)."""
    found: dict[str, str] = {}
    states: dict[tuple[int, float | None], str] = {}
    candidates: list[tuple[int, float]] | None = None
    for root in _temp_roots():
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                continue
            path = str(Path(root) / e.name)
            prefix = next((p for p in MARKER_DIR_PREFIXES if e.name.startswith(p)), None)
            if prefix is not None:
                if marker_named(e.name[len(prefix):len(prefix) + 12]):
                    found.setdefault(path, "no live process carries its marker")
                continue
            if not e.name.startswith(TEMP_PREFIXES):
                continue
            owner = _dir_owner(Path(path))
            if owner is not None:
                pid, start, owner_scope = owner
                if owner_scope != scope and scope:
                    continue
                if owners:
                    if pid in owners:
                        found.setdefault(path, f"owner {pid} named with --owner")
                    continue
                if (pid, start) not in states:
                    states[(pid, start)] = harness_state(pid, start)
                if states[(pid, start)] != "alive":
                    found.setdefault(path, f"owner {pid} {states[(pid, start)]}")
                continue
            if owners or scope:  # an unclaimed directory cannot be attributed to one harness
                continue
            if candidates is None:
                candidates = _live_harnesses(live)
            with contextlib.suppress(OSError):
                created = os.lstat(path).st_ctime
                if not any(start <= created + 1.0 for _, start in candidates):
                    found.setdefault(path, "no owner file, and no live harness started before it")
    return found


def _dir_owner(path: Path) -> tuple[int, float | None, str] | None:
    """(pid, start, marker prefix) from a directory's owner file, or None."""
    try:
        with open(path / OWNER_FILE, "rb") as f:
            data = json.loads(f.read(4096))
        start = data.get("start")
        return int(data["pid"]), float(start) if start is not None else None, str(data.get("marker_prefix", ""))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _live_harnesses(live: list[Marked]) -> list[tuple[int, float]]:
    """Live harnesses that may own an unclaimed temp dir: the harnesses of live marked processes, the owners of
    claimed temp dirs, and ``servingbench`` command-line processes; (pid, start)."""
    out = set(_cli_harnesses())
    pids = {m.harness for m in live if m.harness is not None}
    for root in _temp_roots():
        with contextlib.suppress(OSError):
            for name in os.listdir(root):
                if name.startswith(TEMP_PREFIXES):
                    owner = _dir_owner(Path(root) / name)
                    if owner is not None:
                        pids.add(owner[0])
    for pid in pids:
        if harness_state(pid) == "alive":
            start = process_start(pid)
            if start is not None:
                out.add((pid, start))
    return sorted(out)


def remove_leftovers(found: Leftovers, wait_s: float = 10.0) -> tuple[list[str], list[str]]:
    """SIGKILL the processes, then remove the paths that are still unused.  Returns (done, not done) lines."""
    done, failed = [], []
    procs = []
    for m, _ in found.processes:
        desc = m.desc or describe_process(m.proc)
        try:
            m.proc.kill()
            procs.append((m.proc, desc))
        except psutil.NoSuchProcess:
            continue
        except psutil.Error as e:
            failed.append(f"cannot kill {desc}: {e}")
    end = time.monotonic() + wait_s
    alive = [p for p, _ in procs]
    while alive and time.monotonic() < end:  # dead or a zombie (whose parent has not reaped it yet)
        time.sleep(0.05)
        alive = _alive(alive)
    descs = {p.pid: d for p, d in procs}
    done += [f"killed {d}" for p, d in procs if p not in alive]
    failed += [f"still alive after SIGKILL: {descs[p.pid]}" for p in alive]
    if not found.files:
        return done, failed
    used = shm_in_use()
    live12 = {m.marker[:12] for m in _scan_marked()}
    for path, _ in found.files:
        name = os.path.basename(path)
        prefix = next((p for p in MARKER_DIR_PREFIXES + MARKER_SHM_PREFIXES if name.startswith(p)), None)
        if path in used:
            failed.append(f"kept {path}: still in use")
            continue
        if prefix is not None and name[len(prefix):len(prefix) + 12] in live12:
            failed.append(f"kept {path}: a live process carries its marker")
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            failed.append(f"cannot remove {path}: {e}")
            continue
        done.append(f"removed {path}")
    return done, failed


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---- one server --------------------------------------------------------------------------------------------------
@dataclass
class StopReport:
    graceful: bool  #: the process tree exited within the grace period after the graceful signal
    seconds: float
    killed: list[str] = field(default_factory=list)  #: processes that needed SIGKILL
    survivors: list[str] = field(default_factory=list)  #: processes alive even after SIGKILL (a bug)
    ports_held: list[int] = field(default_factory=list)


class ServerProcess:
    """One server process tree, started in its own session."""

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        marker: str,
        ports: dict[str, int],
        log_path: Path,
        cpus: set[int] | None = None,
    ) -> None:
        self.spec = spec
        self.marker = marker
        self.ports = ports
        self.log_path = log_path
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.t_spawn: float | None = None
        self._seen: dict[int, psutil.Process] = {}
        self._signalled = False

    # start -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        port = self.ports.get(self.spec.ready.port)
        if port is not None:
            require_free(port)
        env = {**self.spec.env, **marker_env("server", self.marker)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.t_spawn = time.perf_counter()
            self.proc = subprocess.Popen(
                list(self.spec.argv),
                env=env,
                cwd=str(self.spec.cwd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_signals,
            )
        except OSError as e:
            raise ServerError(f"{self.spec.name}: cannot start {self.spec.argv[0]!r}: {e}") from e
        finally:
            log.close()
        _LIVE.add(self)
        if self.cpus:
            self.pin(self.cpus)

    def pin(self, cpus: set[int]) -> None:
        """Pin every process of the tree (new children inherit the leader's mask)."""
        for p in self.processes():
            with contextlib.suppress(psutil.Error, OSError):
                p.cpu_affinity(sorted(cpus))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def processes(self) -> list[psutil.Process]:
        """The live process tree: the leader, its descendants, its group, and everything carrying the marker."""
        procs: dict[int, psutil.Process] = {}
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(self.proc.pid)
                procs[leader.pid] = leader
                for c in leader.children(recursive=True):
                    procs[c.pid] = c
        for p in marked_processes(self.marker):
            procs.setdefault(p.pid, p)
        self._seen.update(procs)
        return _alive(procs.values())

    def wait_ready(self, base_url: str, *, ca_file: Path | None = None, deadline: float | None = None,
                   client_cert: tuple[Path, Path] | None = None) -> float:
        """Poll the readiness probe until it answers as expected.  Returns seconds since spawn.

        Raises :class:`ServerError` at once if the process exits, or when the probe's timeout passes.
        """
        probe = self.spec.ready
        deadline = deadline or (time.perf_counter() + probe.timeout_s)
        url = base_url.rstrip("/") + probe.path
        ctx = ssl.create_default_context(cafile=str(ca_file)) if url.startswith("https") and ca_file else None
        if ctx is not None and client_cert:
            ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        last = "no answer yet"
        while True:
            rc = self.exited()
            if rc is not None:
                raise ServerError(
                    f"{self.spec.name} exited with code {rc} before it was ready", self.log_tail(), kind="exited"
                )
            try:
                req = urllib.request.Request(url, headers=dict(probe.headers))
                with urllib.request.urlopen(req, timeout=2.0, context=ctx) as r:
                    body = r.read().decode("utf-8", "replace")
                    if r.status == probe.status and (probe.body_contains is None or probe.body_contains in body):
                        assert self.t_spawn is not None
                        return time.perf_counter() - self.t_spawn
                    last = f"HTTP {r.status}: {body[:200]}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code == probe.status and probe.body_contains is None:
                    assert self.t_spawn is not None
                    return time.perf_counter() - self.t_spawn
            except (OSError, urllib.error.URLError) as e:
                last = f"{type(e).__name__}: {e}"
            if time.perf_counter() > deadline:
                raise ServerError(
                    f"{self.spec.name} not ready after {probe.timeout_s:.0f} s at {url} (last: {last})",
                    self.log_tail(),
                    kind="timeout",
                )
            time.sleep(0.1)

    # stop ------------------------------------------------------------------------------------------------------
    def send_stop_signal(self) -> None:
        """The framework's graceful signal (once).  Deployments with several servers signal all before waiting."""
        if self.proc is None or self._signalled or self.proc.poll() is not None:
            return
        self._signalled = True
        try:
            if self.spec.signal_group:
                os.killpg(self.proc.pid, self.spec.stop_signal)
            else:
                self.proc.send_signal(self.spec.stop_signal)
        except ProcessLookupError:
            pass

    @property
    def running(self) -> bool:
        """Started by this process and not stopped yet (it may have exited on its own: see :meth:`exited`)."""
        return self in _LIVE

    def stop(self) -> StopReport:
        """Graceful signal, grace period, SIGKILL to the group and every marked process, then check."""
        t0 = time.perf_counter()
        report = StopReport(graceful=True, seconds=0.0)
        if self.proc is None:
            return report
        tree = self.processes()
        shm = shm_of_tree(tree)  # MOSEC's semaphores, Triton's regions: a SIGKILLed tree leaves them behind
        try:
            self.send_stop_signal()
            deadline = t0 + self.spec.grace_s
            while time.perf_counter() < deadline:
                self.proc.poll()
                tree = _alive(set(tree) | set(marked_processes(self.marker)))
                if not tree:
                    break
                time.sleep(0.05)
            remaining = _alive(set(tree) | set(marked_processes(self.marker)))
            if remaining:
                shm |= shm_of_tree(remaining)
                report.graceful = False
                report.killed = [describe_process(p) for p in remaining]
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                for p in remaining:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                psutil.wait_procs(remaining, timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            report.survivors = [describe_process(p) for p in _alive(set(remaining) | set(marked_processes(self.marker)))]
            # Ports: the servers' listening sockets must be gone.
            end = time.perf_counter() + 5
            held = [p for p in self.ports.values() if is_listening(p)]
            while held and time.perf_counter() < end:
                time.sleep(0.1)
                held = [p for p in held if is_listening(p)]
            report.ports_held = held
            with contextlib.suppress(OSError):
                remove_unused_shm(shm)
            for pattern in self.spec.cleanup_globs:
                for path in glob.glob(pattern):
                    with contextlib.suppress(OSError):
                        if os.path.isdir(path) and not os.path.islink(path):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            os.unlink(path)
        finally:
            _LIVE.discard(self)
        report.seconds = time.perf_counter() - t0
        return report


def describe_process(p: psutil.Process) -> str:
    """``pid:command`` of a process, for reports and messages."""
    try:
        return f"{p.pid}:{' '.join(' '.join(p.cmdline()[:3]).split())[:80]}"
    except psutil.Error:
        return str(p.pid)


def default_signals() -> None:
    """In a child before exec: default dispositions for the stop signals and an empty signal mask, whatever the
    harness inherited (``nohup`` and non-interactive shells start it with SIGINT/SIGHUP ignored; an ignored
    disposition survives exec, so LitServe would never see its graceful SIGINT)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


# ---- last-resort cleanup -----------------------------------------------------------------------------------------
_LIVE: set[ServerProcess] = set()


def live_servers() -> frozenset[ServerProcess]:
    """Servers this process started and has not stopped yet."""
    return frozenset(_LIVE)


def stop_all(keep: set | frozenset = frozenset()) -> None:
    """Stop every server this process started and has not stopped yet (atexit, signal handlers), but ``keep``."""
    for server in list(_LIVE - set(keep)):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(stop_all)


_STOP: list[str] = []  # why a stop was requested by a signal (empty: none)


def request_stop(why: str) -> None:
    """A signal handler's action: remember the stop, then raise KeyboardInterrupt.  A KeyboardInterrupt raised inside
    a finalizer or a logging lock is swallowed ("Exception ignored in ..."); :func:`raise_if_stop_requested`, called
    by every wait loop, raises it again there."""
    _STOP.append(why)
    raise KeyboardInterrupt(why)


def _quiet_lost_stop(unraisable) -> None:
    """``sys.unraisablehook`` while stop signals are handled: a stop's KeyboardInterrupt raised where Python cannot
    propagate it (a ``__del__``, an at-fork hook such as logging's ``_releaseLock`` while a server is being spawned)
    is remembered in ``_STOP`` and raised again by :func:`raise_if_stop_requested`, so it is not printed as a
    traceback; anything else goes to the hook that was there before."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _STOP:
        return
    _PREVIOUS_UNRAISABLE[-1](unraisable)


_PREVIOUS_UNRAISABLE: list = [sys.__unraisablehook__]


@contextlib.contextmanager
def quiet_lost_stops():
    """Install :func:`_quiet_lost_stop` as ``sys.unraisablehook`` inside the block (nests; restores the previous)."""
    previous = sys.unraisablehook
    if previous is _quiet_lost_stop:
        yield
        return
    _PREVIOUS_UNRAISABLE.append(previous)
    sys.unraisablehook = _quiet_lost_stop
    try:
        yield
    finally:
        sys.unraisablehook = previous
        _PREVIOUS_UNRAISABLE.pop()


def raise_if_stop_requested() -> None:
    """Raise KeyboardInterrupt if a signal asked the run to stop (and the first one got lost)."""
    if _STOP:
        raise KeyboardInterrupt(_STOP[-1])


@contextlib.contextmanager
def terminate_on_signals():
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt inside the block so every ``finally`` runs (Ctrl-C already does)."""

    def handler(signum, frame):  # noqa: ARG001
        request_stop(f"signal {signal.Signals(signum).name}")

    _STOP.clear()  # a stop requested in an earlier run of this process does not carry over
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    try:
        with quiet_lost_stops():
            yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _STOP.clear()
