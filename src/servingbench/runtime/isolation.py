"""One virtual environment per framework: run each framework's server from its own pinned interpreter.

The frameworks' pins drift apart (MLServer caps FastAPI, which holds Ray back, ...); one shared environment cannot
follow every framework forever.  A suite can therefore name an interpreter per framework::

    interpreters:
      litserve: /home/me/.cache/servingbench/venvs/litserve-1a2b3c4d5e6f-py3.11/bin/python

The harness passes it to the adapter as ``RunContext.python``; adapters start their servers and CLIs from that
interpreter's ``bin/`` (``<venv>/bin/mlserver``, ``<venv>/bin/mlflow``, ``<venv>/bin/ray``) with that ``bin/``
first on PATH.  The harness itself (prepare, requests, verification, locust) stays in the benchmark environment.

:func:`create_venv` builds such an environment from ``requirements.lock``: only ``torch``, ``numpy`` and the
framework's own requirements (the ``servingbench[<framework>]`` extra), every version constrained to the lock, so
the isolated server runs exactly the versions the shared environment would.  Servers import
``servingbench.models.runtime``; the venv sees the harness's own source through a ``.pth`` file (``source="link"``,
the default: what ``pip install -e --no-deps`` would do, with no build step, always the harness's current code and
none of its other dependencies), or gets a real copy (``source="install"``: ``pip install --no-deps <project>``,
what the container images do).

Command line (the CLI exposes the same as ``servingbench isolate FRAMEWORK``)::

    python -m servingbench.runtime.isolation create litserve            # prints the interpreter to put under interpreters:
    python -m servingbench.runtime.isolation create mlserver --venv /opt/sb/mlserver --lock requirements.lock
    python -m servingbench.runtime.isolation requirements rayserve      # what would be installed

This module imports only the standard library (the container build runs it before anything is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

__all__ = [
    "ALWAYS", "EXTRA_REQUIREMENTS", "IsolationError", "check_interpreter", "check_venv_target", "create_venv",
    "default_venv_dir",
    "distribution_version", "find_lock", "framework_requirements", "interpreter_facts", "lock_hash",
    "read_lock",
]

#: Installed into every framework's venv: what ``servingbench.models.runtime`` imports.
ALWAYS = ("torch", "numpy")
#: Server-side needs beyond the framework's extra (the extra is what a user installs next to the harness).
EXTRA_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "mosec": ("msgpack",),  # servers/mosec_server.py: MsgpackMixin for options.serialization: msgpack
    "rayserve": ("pyyaml",),  # servers/rayserve_driver.py reads serve_config.yaml
}
STAMP = ".servingbench-venv.json"


class IsolationError(RuntimeError):
    """A venv could not be created, or an interpreter is unusable for a framework."""


# ---- the lock and the requirements -------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _package_dir() -> Path:
    """The ``servingbench`` package directory (this module is ``servingbench/runtime/isolation.py``)."""
    return Path(__file__).resolve().parents[1]


def find_lock() -> Path:
    """``requirements.lock`` of the project this package runs from (a source checkout): ``<root>/requirements.lock``."""
    for parent in _package_dir().parents:
        if (parent / "requirements.lock").is_file():
            return parent / "requirements.lock"
        if (parent / "pyproject.toml").is_file():
            break
    raise IsolationError("no requirements.lock found next to the servingbench sources: pass --lock FILE")


def read_lock(lock: Path) -> dict[str, str]:
    """``{normalized name: "Name==version"}`` from a pip lock (``name==version`` lines; comments ignored)."""
    pins: dict[str, str] = {}
    for raw in Path(lock).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if not m:
            raise IsolationError(f"{lock}: not a pinned requirement: {raw!r}")
        pins[_norm(m.group(1))] = f"{m.group(1)}=={m.group(3)}"
    return pins


def lock_hash(lock: Path) -> str:
    return hashlib.sha256(Path(lock).read_bytes()).hexdigest()


def framework_requirements(framework: str) -> list[str]:
    """torch, numpy, the ``servingbench[<framework>]`` extra and :data:`EXTRA_REQUIREMENTS` (unpinned: the lock pins).

    The extra is read from the installed servingbench's metadata, else from the checkout's ``pyproject.toml``.
    """
    extra = _extras().get(framework)
    if extra is None:
        raise IsolationError(f"no servingbench extra named {framework!r}; known: {', '.join(sorted(_extras()))}")
    reqs = list(ALWAYS) + extra + list(EXTRA_REQUIREMENTS.get(framework, ()))
    seen, out = set(), []
    for r in reqs:
        key = _norm(re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@functools.lru_cache(maxsize=1)
def _extras() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        from importlib.metadata import PackageNotFoundError, requires

        reqs = requires("servingbench") or []
    except PackageNotFoundError:
        reqs = []
    for r in reqs:
        m = re.match(r"^(.*?);\s*extra\s*==\s*[\"']([^\"']+)[\"']\s*$", r)
        if m:
            out.setdefault(m.group(2), []).append(m.group(1).strip())
    if not out:
        import tomllib

        for parent in _package_dir().parents:
            if (parent / "pyproject.toml").is_file():
                project = tomllib.loads((parent / "pyproject.toml").read_text())["project"]
                out = {k: list(v) for k, v in project.get("optional-dependencies", {}).items()}
                break
    # "all" and "test" are not frameworks; self-references ("servingbench[...]") are not installable here.
    return {k: [r for r in v if not r.startswith("servingbench")] for k, v in out.items() if k not in ("all", "test")}


# ---- interpreters ------------------------------------------------------------------------------------------------
_FACTS = r"""
import json, sys, sysconfig
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
                  "version": "%d.%d" % sys.version_info[:2], "purelib": sysconfig.get_paths()["purelib"],
                  "libdir": sysconfig.get_config_var("LIBDIR")}))
"""


@functools.lru_cache(maxsize=None)
def interpreter_facts(python: str) -> dict[str, str]:
    """``executable, prefix, base_prefix, version ("3.11"), purelib, libdir`` of another interpreter."""
    if not Path(python).is_absolute():
        raise IsolationError(f"interpreter {python!r} is not an absolute path")
    if not os.access(python, os.X_OK):
        raise IsolationError(f"interpreter {python} does not exist or is not executable")
    try:
        out = subprocess.run([python, "-I", "-c", _FACTS], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise IsolationError(f"interpreter {python} does not run: {e}") from e
    return json.loads(out.stdout)


@functools.lru_cache(maxsize=None)
def distribution_version(python: str, distribution: str) -> str | None:
    """Version of ``distribution`` installed for interpreter ``python`` (None: not installed)."""
    code = ("import importlib.metadata as m, sys\ntry: print(m.version(sys.argv[1]))\n"
            "except m.PackageNotFoundError: print('')")
    try:
        out = subprocess.run([python, "-I", "-c", code, distribution], capture_output=True, text=True, timeout=60,
                             check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise IsolationError(f"interpreter {python} does not run: {e}") from e
    return out.stdout.strip() or None


def check_interpreter(python: str, distribution: str) -> str:
    """The framework's version in ``python``'s environment; :class:`IsolationError` when unusable.

    Also checks that the interpreter can import ``servingbench.models.runtime``'s package (servers import it).
    """
    interpreter_facts(python)
    version = distribution_version(python, distribution)
    if version is None:
        raise IsolationError(f"{distribution} is not installed for interpreter {python} "
                             f"(create one with `python -m servingbench.runtime.isolation create FRAMEWORK`)")
    probe = subprocess.run([python, "-c", "import servingbench.models, torch, numpy"], capture_output=True,
                           text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise IsolationError(f"interpreter {python} cannot import servingbench, torch and numpy ({last}); "
                             "create it with `python -m servingbench.runtime.isolation create FRAMEWORK`")
    return version


# ---- creating a venv ---------------------------------------------------------------------------------------------
def default_venv_dir(framework: str, lock: Path, python_version: str | None = None) -> Path:
    """``$SERVINGBENCH_CACHE/venvs`` (else ``~/.cache/servingbench/venvs``)``/<fw>-<lock hash>-py<X.Y>``."""
    env = os.environ.get("SERVINGBENCH_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "servingbench"
    py = python_version or "%d.%d" % sys.version_info[:2]
    return root / "venvs" / f"{framework}-{lock_hash(lock)[:12]}-py{py}"


def check_venv_target(venv: Path) -> None:
    """A venv directory is replaced only when servingbench made it: never a directory someone else owns."""
    if venv.exists() and (not venv.is_dir() or (any(venv.iterdir()) and not (venv / STAMP).is_file())):
        raise IsolationError(f"{venv} exists and is not a servingbench venv (no {STAMP}): "
                             "name a new or empty directory")


def create_venv(
    framework: str,
    venv: Path | None = None,
    *,
    lock: Path | None = None,
    base_python: str | None = None,
    torch_index_url: str | None = None,
    source: str = "link",
    project: Path | None = None,
    runtime_only: bool = False,
    reuse: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path:
    """Create (or reuse) a venv for ``framework``; returns its interpreter (``<venv>/bin/python``).

    Args:
        framework: registry name (litserve, mosec, mlserver, triton, rayserve, mlflow).
        venv: target directory (default :func:`default_venv_dir`, keyed by the lock's hash).
        lock: the pip lock whose pins constrain every install (default: the checkout's ``requirements.lock``).
        base_python: interpreter to create the venv with (default: this one's base interpreter).
        torch_index_url: an extra index to install torch from first (``https://download.pytorch.org/whl/cpu`` or
            a CUDA one such as ``.../whl/cu128``); default: wherever pip finds the lock's version.
        source: how the venv imports servingbench: ``link`` (a ``.pth`` to this package's source directory),
            ``install`` (``pip install --no-deps`` of ``project``), or ``none``.
        runtime_only: install only torch and numpy, not the framework (an image that brings its own server: the
            NGC Triton container, whose Python backend needs torch for ``model.py``).
        reuse: keep an existing venv whose stamp matches (framework, lock hash, requirements, source).

    Raises:
        IsolationError: pip failed, or ``pip check`` found conflicts.
    """
    if source not in ("link", "install", "none"):
        raise IsolationError(f"source must be link, install or none, got {source!r}")
    lock = Path(lock) if lock else find_lock()
    reqs = list(ALWAYS) if runtime_only else framework_requirements(framework)
    pins = read_lock(lock)
    missing = [r for r in reqs if _norm(re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0]) not in pins]
    if missing:
        raise IsolationError(f"{lock} pins none of {missing}: the lock is not the benchmark environment's")
    base = base_python or getattr(sys, "_base_executable", sys.executable)
    py_version = interpreter_facts(base)["version"]
    venv = Path(venv or default_venv_dir(framework, lock, py_version)).absolute()
    python = venv / "bin" / "python"
    want = {"framework": framework, "lock_sha256": lock_hash(lock), "requirements": reqs, "source": source,
            "torch_index_url": torch_index_url, "python": py_version}
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(venv.parent / f".{venv.name}.lock"):
        stamp = venv / STAMP
        if reuse and stamp.is_file():
            with contextlib.suppress(ValueError, OSError):
                have = json.loads(stamp.read_text())
                if {k: have.get(k) for k in want} == want and python.exists():
                    log(f"reusing {venv} (created in {have.get('seconds', 0):.0f} s)")
                    return python
        if venv.exists():
            check_venv_target(venv)
            shutil.rmtree(venv)
        t0 = time.perf_counter()
        log(f"creating {venv} for {framework} from {lock}")
        _run([base, "-m", "venv", str(venv)], "python -m venv")
        constraints = venv / "constraints.txt"
        constraints.write_text("\n".join(pins.values()) + "\n")
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
        if torch_index_url:  # torch's own index beside the usual one: its +cpu/+cuXXX build sorts above PyPI's
            _run([*pip, "install", "-q", "-c", str(constraints), "--extra-index-url", torch_index_url, pins["torch"]],
                 "pip install torch")
        _run([*pip, "install", "-q", "-c", str(constraints), *reqs], f"pip install {' '.join(reqs)}")
        _run([*pip, "check"], "pip check")  # before servingbench: installed --no-deps, its own deps are missing
        if source == "link":
            _link_source(python)
        elif source == "install":
            _install_source(pip, Path(project) if project else _package_dir().parents[1])
        frozen = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True).stdout
        seconds = time.perf_counter() - t0
        stamp.write_text(json.dumps({**want, "seconds": seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     "freeze": frozen.splitlines()}, indent=2) + "\n")
        log(f"created {venv} in {seconds:.0f} s")
    return python


def _link_source(python: Path) -> None:
    """A ``.pth`` naming the directory that holds this ``servingbench`` package (a src layout only: pointing at a
    site-packages would expose every package of the benchmark environment and defeat the isolation)."""
    src = _package_dir().parent  # a flat layout (package at the project root) would expose tests/, docs/... too
    if (src / "requirements.lock").exists() or src.name in ("site-packages", "dist-packages") or any(
            p.suffix == ".dist-info" for p in src.iterdir()):
        raise IsolationError(f"servingbench is not a source checkout ({src}): use source='install'")
    purelib = Path(interpreter_facts(str(python))["purelib"])
    (purelib / "servingbench-src.pth").write_text(f"{src}\n")


def _install_source(pip: list[str], root: Path) -> None:
    """``pip install --no-deps`` of the project, built from a copy (setuptools would leave build/ in the checkout)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="servingbench-src-") as tmp:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, Path(tmp) / name)
        shutil.copytree(root / "src", Path(tmp) / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        _run([*pip, "install", "-q", "--no-deps", tmp], f"pip install --no-deps {root}")


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise IsolationError(f"{what} failed (exit {proc.returncode}):\n{tail}")


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- command line ------------------------------------------------------------------------------------------------
def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m servingbench.runtime.isolation", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create (or reuse) a framework's venv; prints its interpreter")
    c.add_argument("framework")
    c.add_argument("--venv", type=Path, help="target directory (default: the cache, keyed by the lock's hash)")
    c.add_argument("--lock", type=Path, help="pip lock (default: the checkout's requirements.lock)")
    c.add_argument("--python", dest="base_python", help="base interpreter (default: this one's)")
    c.add_argument("--torch-index-url", help="install torch from this index (CPU or CUDA builds)")
    c.add_argument("--source", choices=["link", "install", "none"], default="link")
    c.add_argument("--project", type=Path, help="project root for --source install")
    c.add_argument("--runtime-only", action="store_true", help="only torch and numpy (the image has its own server)")
    c.add_argument("--force", action="store_true", help="rebuild even if a matching venv exists")
    r = sub.add_parser("requirements", help="print what a framework's venv gets (before the lock's pins)")
    r.add_argument("framework")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        if args.cmd == "requirements":
            print("\n".join(framework_requirements(args.framework)))
            return 0
        python = create_venv(args.framework, args.venv, lock=args.lock, base_python=args.base_python,
                             torch_index_url=args.torch_index_url, source=args.source, project=args.project,
                             runtime_only=args.runtime_only, reuse=not args.force)
    except IsolationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
