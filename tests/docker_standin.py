"""A stand-in docker client for tests (this machine has no engine): ``run`` execs the container command here with
ONLY the ``-e`` environment, as a container would see it, optionally with the image's venv (``/opt/venv``) mapped
onto a host venv; ``rm`` logs the cleanup and answers like a daemon that has no such container.  Each ``run`` logs
``{"image", "argv0"}`` (argv0 before the mapping), each ``rm`` its argv, one JSON value a line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: docker run options that take a value.
VALUED = {"--name", "--network", "--pull", "--workdir", "--stop-signal", "--stop-timeout", "--user", "--shm-size",
          "--cpuset-cpus", "--gpus", "--label", "-v", "-e", "--entrypoint"}

_SCRIPT = r'''#!{python}
import json, os, sys
args, log, prefix, valued = sys.argv[1:], {log!r}, {prefix!r}, {valued!r}
host = (lambda s: s.replace("/opt/venv", prefix)) if prefix else (lambda s: s)
if args[0] == "rm":
    with open(log, "a") as f:
        f.write(json.dumps(args) + "\n")
    print("Error response from daemon: No such container: " + args[-1], file=sys.stderr)
    sys.exit(1)
env, cwd, i = {{}}, "/", 1
while args[i].startswith("-"):
    if args[i] in valued:
        opt, v = args[i], args[i + 1]
        if opt == "-e":
            k, eq, val = v.partition("=")
            if eq:
                env[k] = val
            elif k in os.environ:
                env[k] = os.environ[k]
        elif opt == "--workdir":
            cwd = v
        elif opt == "-v":
            assert os.path.exists(v.split(":")[0]), v
        i += 2
    else:
        i += 1
image, cmd = args[i], args[i + 1:]
with open(log, "a") as f:
    f.write(json.dumps({{"image": image, "argv0": cmd[0]}}) + "\n")
os.chdir(cwd)
os.execve(host(cmd[0]), [host(a) for a in cmd], {{k: host(v) for k, v in env.items()}})
'''


def write(bin_dir: Path, log: Path, prefix: str | None = None) -> Path:
    """``bin_dir/docker`` (made executable), logging to ``log``; ``prefix``: the host venv behind /opt/venv."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(_SCRIPT.format(python=sys.executable, log=str(log), prefix=prefix, valued=sorted(VALUED)))
    fake.chmod(0o755)
    return fake


def read_log(log: Path) -> tuple[list[dict], list[list[str]]]:
    """(runs, removals) from the stand-in's log."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [x for x in lines if isinstance(x, dict)], [x for x in lines if isinstance(x, list)]
