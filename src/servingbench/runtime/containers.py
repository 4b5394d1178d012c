"""Run servers in containers: ``runtime: docker`` and the per-framework images in ``docker/``.

The adapters stay unchanged: they prepare and describe the deployment on the host as for a local run, and
:func:`docker_run` turns each :class:`~servingbench.contract.LaunchSpec` into a ``docker run`` LaunchSpec that
the supervisor starts like any server.  Three rules make the same argv valid inside the image:

* **Same paths.**  The deployment's workdir, the model artifact cache, the per-run secrets and the servingbench
  sources are bind-mounted at their host paths, so every path the adapter wrote (manifests, ``deployment.json``,
  config.pbtxt ``sys_path``) means the same inside.
* **One translated prefix.**  The host venv of the serving interpreter (``ctx.python``'s prefix) is rewritten to the
  image's venv (``/opt/venv``), which holds the same lock's versions: ``<venv>/bin/python``, ``<venv>/bin/mlserver``,
  the Triton wheel's binary under ``site-packages`` all exist at the translated path.
* **Host network, loopback ports.**  ``--network host``: the harness's free loopback ports, readiness probes and
  requests work unchanged.

Stopping: the supervisor signals the ``docker run`` client; an attached client forwards signals to the container
(``--sig-proxy``, on by default), where ``--init`` (tini) passes them on to the server (to its process group when
the spec asks for a group signal: ``TINI_KILL_PROCESS_GROUP``).  If the grace period runs out the supervisor
SIGKILLs the client (and every process carrying the run's marker it can see), which does *not* stop a container:
every launch therefore comes with a cleanup command, ``docker rm -f NAME``, which the harness runs after the stop.

Besides, every deployment's workdir gets a ``launch.json`` (argv, cwd, needed environment with secrets redacted,
ports): ``python -m servingbench.runtime.containers serve WORKDIR`` starts that deployment inside an image (the entrypoint of
``docker/compose.yaml``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from servingbench.contract import LaunchSpec

if TYPE_CHECKING:
    from servingbench.contract import Deployment, RunContext

__all__ = [
    "ContainerLaunch", "DockerRuntime", "IMAGE_PREFIX", "Mount", "default_image", "docker_run", "launch_record",
    "remove_container", "translate", "write_launch_file",
]

IMAGE_PREFIX = "/opt/venv"  #: the venv inside every servingbench image (docker/servingbench.Dockerfile)
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER_ENV, HARNESS_ENV = "SERVINGBENCH_MARKER", "SERVINGBENCH_HARNESS_PID"
LAUNCH_FILE = "launch.json"
TOKEN_PLACEHOLDER = "${SERVINGBENCH_TOKEN}"
#: Variables passed into the container when present, even with the host's value (threads, devices, frameworks).
PASSTHROUGH = ("OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "TORCH", "PYTORCH_", "RAY_", "LIT_", "MLFLOW_",
               "MLSERVER_", "SERVINGBENCH_", "AUTOSCALER_", "DASHBOARD_", "PYTHONUNBUFFERED", "NO_PROXY",
               "__pyfunc_model_path__")
#: Host-only variables never passed in (they name host paths or host sessions, or are set explicitly).
HOST_ONLY = {"PATH", "HOME", "USER", "LOGNAME", "PWD", "OLDPWD", "SHLVL", "HOSTNAME", "TERM", "_", "TMPDIR", "SHELL",
             "MAIL", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SERVINGBENCH_CACHE",
             "SERVINGBENCH_MARKER_PREFIX"}


@dataclass(frozen=True)
class Mount:
    """A bind mount at the same path inside the container."""

    path: Path
    read_only: bool = True

    def arg(self) -> str:
        return f"{self.path}:{self.path}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class ContainerLaunch:
    """What :func:`docker_run` returns: the ``docker run`` spec, the container's name and its cleanup command."""

    spec: LaunchSpec
    container: str
    cleanup: list[str]
    image: str


# ---- pure pieces ------------------------------------------------------------------------------------------------
def translate(value: str, path_map: Mapping[str, str]) -> str:
    """Rewrite every occurrence of a host prefix (at a path boundary) to its container prefix.

    ``/work/.venv/bin/python`` -> ``/opt/venv/bin/python``; also inside ``--flag=PATH`` and ``a:b`` lists.
    """
    for host, inside in sorted(path_map.items(), key=lambda kv: -len(kv[0])):
        host = host.rstrip("/")
        value = re.sub(rf"(^|[=:,\s]){re.escape(host)}(?=/|$|[:,\s])", lambda m: m.group(1) + inside.rstrip("/"),
                       value)
    return value


def _needed_env(env: Mapping[str, str], base_env: Mapping[str, str]) -> list[str]:
    """Names the server needs: what the adapter set or changed, the passthrough families, the run's marker."""
    names = {k for k, v in env.items() if base_env.get(k) != v or k.startswith(PASSTHROUGH)}
    names |= {MARKER_ENV, HARNESS_ENV}  # the supervisor puts them into the client's environment at start
    return sorted(n for n in names if n not in HOST_ONLY and not n.startswith(("DOCKER_", "XDG_")))


def _container_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:120]


def docker_run(
    spec: LaunchSpec,
    *,
    image: str,
    name: str,
    mounts: Sequence[Mount],
    path_map: Mapping[str, str],
    gpus: str | None = None,
    user: str | None = None,
    cpus: Iterable[int] | None = None,
    shm_size: str | None = "2g",
    container_path: str = f"{IMAGE_PREFIX}/bin:{CONTAINER_PATH}",
    pythonpath: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    docker: str = "docker",
    base_env: Mapping[str, str] | None = None,
    extra_grace_s: float = 5.0,
) -> ContainerLaunch:
    """Turn a LaunchSpec into a ``docker run`` LaunchSpec (pure: no I/O, nothing started).

    Args:
        spec: the adapter's spec (argv/env/cwd as for a local run).
        image: the image to run (it must exist locally: ``--pull never``, a pull is not a cold start).
        name: the container's name (unique per run: the harness uses the marker).
        mounts: bind mounts at identical paths (workdir, artifact cache, secrets, sources).
        path_map: host prefix -> container prefix, applied to argv and to environment values.
        gpus: ``--gpus`` value (``"all"``, ``"device=0,1"``) for CUDA deployments; None: no GPU.
        user: ``uid:gid`` to run as (the harness's own, so that 0600 keys are readable and the workdir writable).
        cpus: ``--cpuset-cpus`` (the server's CPU set).
        container_path: PATH inside (the image's venv first).
        pythonpath: entries for PYTHONPATH inside (the mounted servingbench sources).
        base_env: the environment the adapter's env was derived from (default ``os.environ``): variables the
            adapter did not set or change are not passed unless they belong to :data:`PASSTHROUGH`.

    Environment values travel by name (``-e NAME``, the value comes from the client's environment), so no token
    appears in the argv; only values that differ inside the container (translated paths, PATH, HOME) are written out.
    """
    base_env = os.environ if base_env is None else base_env
    env = dict(spec.env)
    explicit: dict[str, str] = {"PATH": container_path}
    if user:
        explicit.update(HOME="/tmp", USER="servingbench")  # no passwd entry for an arbitrary uid inside
    if spec.env.get("LD_LIBRARY_PATH"):
        explicit["LD_LIBRARY_PATH"] = translate(spec.env["LD_LIBRARY_PATH"], path_map)
    pp = [*pythonpath, *[translate(p, path_map) for p in spec.env.get("PYTHONPATH", "").split(":") if p]]
    if pp:
        explicit["PYTHONPATH"] = ":".join(dict.fromkeys(pp))
    if spec.signal_group:
        explicit["TINI_KILL_PROCESS_GROUP"] = "1"  # tini forwards to the server's process group, not the leader only
    by_name = []
    for k in _needed_env(env, base_env):
        if k in explicit:
            continue
        moved = translate(env[k], path_map) if k in env else None
        if moved is not None and moved != env[k]:
            explicit[k] = moved
        else:
            by_name.append(k)
    argv = [docker, "run", "--rm", "--init", "--name", name, "--network", "host", "--pull", "never",
            "--workdir", str(spec.cwd), "--stop-signal", signal.Signals(spec.stop_signal).name,
            "--stop-timeout", str(math.ceil(spec.grace_s))]
    if user:
        argv += ["--user", user]
    if shm_size:
        argv += ["--shm-size", shm_size]  # Triton's Python backend and Ray's object store live in /dev/shm
    if cpus:
        argv += ["--cpuset-cpus", ",".join(str(c) for c in sorted(cpus))]
    if gpus:
        argv += ["--gpus", gpus]
    for k, v in sorted((labels or {}).items()):
        argv += ["--label", f"{k}={v}"]
    for m in mounts:
        argv += ["-v", m.arg()]
    for k, v in sorted(explicit.items()):
        argv += ["-e", f"{k}={v}"]
    for k in by_name:
        argv += ["-e", k]
    argv += [image, *(translate(a, path_map) for a in spec.argv)]
    wrapped = replace(spec, argv=argv, env=env, signal_group=False, grace_s=spec.grace_s + extra_grace_s)
    return ContainerLaunch(wrapped, name, [docker, "rm", "-f", name], image)


def default_image(framework: str, device: str = "cpu") -> str:
    """The tag ``docker/compose.yaml`` builds: ``servingbench/<framework>:cpu`` or ``:cuda``."""
    return f"servingbench/{framework}:{'cuda' if device == 'cuda' else 'cpu'}"


def venv_prefix(python: str) -> Path:
    """The venv root of an interpreter (``<prefix>/bin/python``); refuses a system interpreter (mapping ``/usr``
    would rewrite every system path)."""
    prefix = Path(python).parent.parent
    if not (prefix / "pyvenv.cfg").is_file():
        raise ValueError(f"runtime docker needs the serving interpreter in a venv: {python} is not in one "
                         f"(no {prefix / 'pyvenv.cfg'})")
    return prefix


def source_dir() -> Path | None:
    """The directory that holds the harness's ``servingbench`` package when it is a source checkout, else None."""
    src = Path(__file__).resolve().parents[2]  # servingbench/runtime/containers.py -> the dir holding servingbench
    return None if src.name in ("site-packages", "dist-packages") else src


def cache_root() -> Path:
    """Where servingbench caches artifacts and the Triton backend directory (``$SERVINGBENCH_CACHE``)."""
    env = os.environ.get("SERVINGBENCH_CACHE")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "servingbench"


def _dedupe(mounts: Iterable[Mount]) -> list[Mount]:
    """Drop duplicates and mounts inside another mount of the same mode (a read-write one wins over read-only)."""
    best: dict[Path, Mount] = {}
    for m in mounts:
        m = Mount(Path(os.path.abspath(m.path)), m.read_only)
        if m.path not in best or not m.read_only:
            best[m.path] = m
    out = []
    for m in sorted(best.values(), key=lambda m: len(m.path.parts)):
        if any(o.read_only == m.read_only and m.path.is_relative_to(o.path) for o in out):
            continue
        out.append(m)
    return out


# ---- the runtime the harness uses ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DockerRuntime:
    """``runtime: docker`` for one framework: which image, and how to run it.

    ``wrap`` is what the harness calls between ``adapter.launch`` and starting the processes.
    """

    image: str
    docker: str = "docker"
    image_prefix: str = IMAGE_PREFIX
    user: str | None = field(default_factory=lambda: f"{os.getuid()}:{os.getgid()}")
    shm_size: str | None = "2g"
    gpus: str = "all"  #: ``--gpus`` for device cuda
    extra_mounts: tuple[Mount, ...] = ()

    @classmethod
    def for_suite(cls, suite, framework: str) -> "DockerRuntime | None":
        """The runtime for ``framework`` in ``suite`` (None for ``runtime: local``)."""
        if getattr(suite, "runtime", "local") != "docker":
            return None
        images = getattr(suite, "images", None) or {}
        return cls(image=images.get(framework) or default_image(framework, suite.device))

    def mounts(self, deployment: "Deployment", ctx: "RunContext") -> list[Mount]:
        """Workdir (read-write); artifact cache, secrets, sources (read-only); only paths that exist here (docker
        would create a missing one, owned by root)."""
        s = ctx.secrets
        dirs = [cache_root(), *(Path(m.dir).absolute().parent for m in deployment.models),
                *(Path(p).absolute().parent for p in (s.ca_cert, s.server_cert, s.server_key, s.client_cert,
                                                       s.client_key) if p is not None)]
        src = source_dir()
        if src is not None and not src.is_relative_to(venv_prefix(ctx.python)):
            dirs.append(src)
        found = [Mount(Path(ctx.workdir).absolute(), read_only=False)] + [Mount(d) for d in dirs]
        # Adapters write some paths resolved (MLServer's uri) and some not: mount both spellings.
        found += [Mount(m.path.resolve(), m.read_only) for m in found if m.path.resolve() != m.path]
        return _dedupe([m for m in [*found, *self.extra_mounts] if m.path.exists()])

    def wrap(self, specs: Sequence[LaunchSpec], deployment: "Deployment", ctx: "RunContext",
             cpus: Iterable[int] | None = None) -> list[ContainerLaunch]:
        prefix = venv_prefix(ctx.python)
        src = source_dir()
        mounts = self.mounts(deployment, ctx)
        out = []
        for i, spec in enumerate(specs):
            if deployment.framework == "triton":  # the image may bring its own Triton (NGC): see use_triton_root
                spec = replace(spec, argv=[str(Path(ctx.python).parent / "python"), "-m", "servingbench.runtime.containers",
                                           "exec", "--", *spec.argv])
            name = _container_name(f"sb-{deployment.framework}-{spec.name}-{(ctx.marker or 'x')[-12:]}"
                                   + (f"-{i}" if len(specs) > 1 else ""))
            out.append(docker_run(
                spec, image=self.image, name=name, mounts=mounts, path_map={str(prefix): self.image_prefix},
                gpus=self.gpus if deployment.device == "cuda" else None, user=self.user, cpus=cpus,
                shm_size=self.shm_size, container_path=f"{self.image_prefix}/bin:{CONTAINER_PATH}",
                pythonpath=[str(src)] if src is not None and any(m.path == src for m in mounts) else (),
                labels={"servingbench.marker": ctx.marker, "servingbench.framework": deployment.framework},
                docker=self.docker,
            ))
        return out


def remove_container(cleanup: Sequence[str], timeout: float = 30.0) -> str:
    """Run a cleanup command (``docker rm -f NAME``); a container that is already gone is fine."""
    try:
        p = subprocess.run(list(cleanup), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{shlex.join(cleanup)}: {e}"
    if p.returncode != 0 and "No such container" not in p.stderr:
        return f"{shlex.join(cleanup)}: exit {p.returncode}: {p.stderr.strip()[-300:]}"
    return ""


# ---- launch.json: the deployment as the harness started it -------------------------------------------------------
def launch_record(specs: Sequence[LaunchSpec], deployment: "Deployment", ctx: "RunContext",
                  base_env: Mapping[str, str] | None = None) -> dict:
    """The launch as data: argv, cwd, the environment the server needs (secrets redacted), ports, probes."""
    base_env = os.environ if base_env is None else base_env
    token = ctx.secrets.token

    def redact(v: str) -> str:
        return v.replace(token, TOKEN_PLACEHOLDER) if token else v

    try:
        prefix = str(venv_prefix(ctx.python))
    except ValueError:
        prefix = None
    return {
        "version": 1,
        "framework": deployment.framework,
        "device": deployment.device,
        "python": ctx.python,
        "venv_prefix": prefix,
        "ports": ctx.ports.assigned(),
        "servers": [{
            "name": s.name,
            "argv": [redact(a) for a in s.argv],
            "cwd": str(s.cwd),
            "env": {k: redact(s.env[k]) for k in _needed_env(s.env, base_env) if k in s.env
                    and k not in (MARKER_ENV, HARNESS_ENV)} | (
                {"LD_LIBRARY_PATH": s.env["LD_LIBRARY_PATH"]} if s.env.get("LD_LIBRARY_PATH") else {}),
            "ready": {"path": s.ready.path, "port": s.ready.port, "status": s.ready.status},
            "stop_signal": signal.Signals(s.stop_signal).name,
            "signal_group": s.signal_group,
            "grace_s": s.grace_s,
        } for s in specs],
    }


def write_launch_file(workdir: Path, specs: Sequence[LaunchSpec], deployment: "Deployment",
                      ctx: "RunContext") -> Path:
    path = Path(workdir) / LAUNCH_FILE
    path.write_text(json.dumps(launch_record(specs, deployment, ctx), indent=2) + "\n")
    return path


# ---- inside the image: start a deployment from its launch.json ---------------------------------------------------
def serve_command(record: dict, name: str | None = None, *, prefix: str = sys.prefix,
                  triton_root: str | None = None, environ: Mapping[str, str] | None = None
                  ) -> tuple[list[str], dict[str, str], str]:
    """(argv, env, cwd) that start one server of ``record`` inside an image whose venv is ``prefix``.

    ``triton_root``: see :func:`use_triton_root`.
    """
    environ = os.environ if environ is None else environ
    servers = record["servers"]
    if name is None and len(servers) > 1:
        raise SystemExit(f"this deployment has {len(servers)} servers: choose one with --name "
                         f"({', '.join(s['name'] for s in servers)})")
    server = next((s for s in servers if name in (None, s["name"])), None)
    if server is None:
        raise SystemExit(f"no server named {name!r} (have {', '.join(s['name'] for s in servers)})")
    path_map = {record["venv_prefix"]: prefix} if record.get("venv_prefix") else {}
    token = environ.get("SERVINGBENCH_TOKEN", "")

    def fix(v: str) -> str:
        if TOKEN_PLACEHOLDER in v and not token:
            raise SystemExit("this deployment needs its token: set SERVINGBENCH_TOKEN")
        return translate(v.replace(TOKEN_PLACEHOLDER, token), path_map)

    argv = [fix(a) for a in server["argv"]]
    env = {**environ, **{k: fix(v) for k, v in server["env"].items()}}
    env["PATH"] = f"{prefix}/bin:{environ.get('PATH', CONTAINER_PATH)}"
    if triton_root and record["framework"] == "triton":
        argv, env = use_triton_root(argv, env, triton_root)
    return argv, env, server["cwd"]


def use_triton_root(argv: Sequence[str], env: Mapping[str, str], root: str) -> tuple[list[str], dict[str, str]]:
    """Run a Triton command line with another Triton installation (the NGC container's ``/opt/tritonserver``):
    its binary, backend and cache directories and libraries replace the nvidia-pytriton wheel's."""
    r = Path(root)
    out = [str(r / "bin" / "tritonserver"), *(
        f"--backend-directory={r / 'backends'}" if a.startswith("--backend-directory=") else
        f"--cache-directory={r / 'caches'}" if a.startswith("--cache-directory=") else a for a in argv[1:])]
    env = dict(env)
    env["LD_LIBRARY_PATH"] = str(r / "lib")
    return out, env


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m servingbench.runtime.containers",
                                description="start a generated deployment inside a servingbench image")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="exec the server that WORKDIR/launch.json describes (compose's entrypoint)")
    s.add_argument("workdir", type=Path)
    s.add_argument("--name", default=os.environ.get("SERVINGBENCH_SERVER") or None,
                   help="which server when the deployment has several (MLflow: mlflow-<model>)")
    s.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    e = sub.add_parser("exec", help="exec COMMAND, on the image's own Triton when TRITON_SERVER_ROOT is set "
                                    "(runtime: docker wraps Triton launches in this)")
    e.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    root = os.environ.get("TRITON_SERVER_ROOT") or None
    if args.cmd == "exec":
        cmd, env = list(args.command[1:] if args.command[:1] == ["--"] else args.command), dict(os.environ)
        if root:
            cmd, env = use_triton_root(cmd, env, root)
        os.execvpe(cmd[0], cmd, env)
    record = json.loads((args.workdir / LAUNCH_FILE).read_text())
    cmd, env, cwd = serve_command(record, args.name, triton_root=root)
    print(f"servingbench: {record['framework']} on ports {record['ports']}: {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    os.chdir(cwd)
    os.execvpe(cmd[0], cmd, env)  # the server replaces us: tini's signals reach it directly
    return 1


if __name__ == "__main__":
    sys.exit(main())
