"""Start, watch and stop server processes so that nothing survives a run, a failure or Ctrl-C.

Rules (after mirakuru): no shell; each server gets its own session/process group; readiness is polled while the
process is watched, so a crash is reported at once with its log tail instead of looking like a slow start; stop
sends the framework's graceful signal, waits, then SIGKILLs the group *and* every process that still carries the
deployment's marker environment variable (Ray and friends daemonise out of the group); then it asserts that no
process survived and that the ports are free again.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import psutil

from servingbench.contract import LaunchSpec

MARKER_ENV = "SERVINGBENCH_MARKER"
HARNESS_ENV = "SERVINGBENCH_HARNESS_PID"
LOOPBACK = "127.0.0.1"


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


def stale_servers() -> list[tuple[psutil.Process, str]]:
    """Server processes started by a servingbench harness that is no longer running (a crash, a kill -9)."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        marker, harness = env.get(MARKER_ENV.encode()), env.get(HARNESS_ENV.encode())
        if marker is None or harness is None or p.pid == os.getpid():
            continue
        if not psutil.pid_exists(int(harness)) or int(harness) == p.pid:
            out.append((p, marker.decode()))
    return out


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
        env = dict(self.spec.env)
        env[MARKER_ENV] = self.marker
        env[HARNESS_ENV] = str(os.getpid())
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
        return f"{p.pid}:{' '.join(p.cmdline()[:3])[:80]}"
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


@contextlib.contextmanager
def terminate_on_signals():
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt inside the block so every ``finally`` runs (Ctrl-C already does)."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
