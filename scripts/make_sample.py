#!/usr/bin/env python3
"""Copy a finished ``servingbench run`` into ``results/sample/`` and scrub this machine's absolute paths from it.

    servingbench run results/sample/suite.yaml --out /tmp/sample-run
    python scripts/make_sample.py /tmp/sample-run            # the --out root (one run in it) or the run directory

What is copied: ``run.json``, ``records.jsonl`` and ``manifests/`` (regular files only); ``logs/`` and anything else
in the run directory are left behind.  The destination's old copies of those three are removed first; its
``README.md`` and ``suite.yaml`` are kept.

What is scrubbed, in every copied file, longest path first (so the venv inside the repository becomes ``<venv>``,
not ``<repo>/.venv``), each only where it is a whole path (``/root`` is not replaced inside ``/rootfs``):

    the --out root of the run (parent of the run dir, and the --out in run.json's command)
                                                        ->  <results>   (so the run dir reads <results>/<run_id>)
    the venv running servingbench (sys.prefix)          ->  <venv>
    the repository root                                 ->  <repo>
    the artifact cache ($SERVINGBENCH_CACHE, else ~/.cache/servingbench/artifacts)  ->  <cache>
    the servingbench cache root (isolated venvs)        ->  <cache-root>   (when it is not the artifact cache)
    the home directory                                  ->  <home>
    the temporary directory ($TMPDIR, /tmp)             ->  <tmp>

Each line of ``records.jsonl`` is then re-serialised without the spaces after ``,`` and ``:`` (the same JSON values,
key order and numbers; about 6 % smaller; ``--no-compact`` keeps the harness's spacing).

Afterwards it fails (exit 1) if any copied file still contains ``/tmp/``, ``/work/``, ``/root/``, the home
directory or the host name, or if the sample is not below ``--max-bytes``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("run.json", "records.jsonl", "manifests")
LEFTOVER = re.compile(r"/tmp/|/work/|/root/")


def find_run(path: Path) -> Path:
    """The run directory: ``path`` itself if it holds run.json, else its single child that does."""
    if (path / "run.json").is_file():
        return path
    runs = [p for p in sorted(path.iterdir()) if (p / "run.json").is_file()]
    if len(runs) != 1:
        sys.exit(f"{path}: expected one run directory (with run.json), found {len(runs)}: {[p.name for p in runs]}")
    return runs[0]


def _forms(p: Path | str | None) -> list[str]:
    """The path as written and as resolved (a symlinked /tmp or home shows up either way)."""
    if not p:
        return []
    p = Path(p).expanduser()
    out = {str(p.absolute()), os.path.realpath(p)}
    return [s.rstrip("/") for s in out if s not in ("", "/")]


def replacements(run: Path) -> list[tuple[str, str]]:
    home = Path.home()
    env_cache = os.environ.get("SERVINGBENCH_CACHE")
    artifacts = Path(env_cache).expanduser() if env_cache else home / ".cache" / "servingbench" / "artifacts"
    cache_root = Path(env_cache).expanduser() if env_cache else home / ".cache" / "servingbench"
    out_roots: list[Path | str] = [run.parent]
    cmd = json.loads((run / "run.json").read_text()).get("command") or []
    for i, arg in enumerate(cmd):  # the --out the run was given, in case the run was moved since
        val = cmd[i + 1] if arg == "--out" and i + 1 < len(cmd) else arg[6:] if arg.startswith("--out=") else None
        if val and os.path.isabs(val):
            out_roots.append(val)
    pairs: dict[str, str] = {}
    # later entries do not overwrite earlier ones: the first (most specific) name wins for the same path
    for paths, name in (
        (out_roots, "<results>"),
        ([sys.prefix, os.environ.get("VIRTUAL_ENV"), REPO / ".venv"], "<venv>"),
        ([REPO], "<repo>"),
        ([artifacts], "<cache>"),
        ([cache_root], "<cache-root>"),
        ([home], "<home>"),
        ([tempfile.gettempdir(), "/tmp"], "<tmp>"),
    ):
        for p in paths:
            for form in _forms(p):
                pairs.setdefault(form, name)
    return sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True)  # longest (innermost) first


def scrub_text(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = re.sub(re.escape(old) + r"(?![\w.-])", new, text)
    return text


def copy_run(run: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        old = dest / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    files = []
    for name in ("run.json", "records.jsonl"):
        shutil.copyfile(run / name, dest / name)
        files.append(dest / name)
    for src in sorted((run / "manifests").rglob("*")):
        if src.is_symlink() or not src.is_file():  # sockets, fifos, links (an IPC dir's leftovers): not data
            continue
        dst = dest / src.relative_to(run)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        files.append(dst)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the run's --out root (holding one run) or the run directory")
    ap.add_argument("--dest", type=Path, default=REPO / "results" / "sample")
    ap.add_argument("--max-bytes", type=int, default=300_000)
    ap.add_argument("--no-compact", dest="compact", action="store_false",
                    help="keep records.jsonl's whitespace as the harness wrote it (default: re-serialise each record "
                         "without spaces after ',' and ':', the same JSON values, ~6 %% smaller)")
    args = ap.parse_args(argv)

    run = find_run(args.run.expanduser().absolute())
    pairs = replacements(run)
    files = copy_run(run, args.dest)
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            sys.exit(f"{f}: not UTF-8 text; cannot scrub it (drop it from the sample or extend this script)")
        new = scrub_text(text, pairs)
        if f.suffix in (".json", ".jsonl"):  # still valid JSON after the replacements
            for line in new.splitlines() if f.suffix == ".jsonl" else [new]:
                if line.strip():
                    json.loads(line)
        if f.name == "records.jsonl" and args.compact:
            new = "".join(json.dumps(json.loads(line), separators=(",", ":"), allow_nan=True) + "\n"
                          for line in new.splitlines() if line.strip())
        if new != text:
            f.write_text(new, encoding="utf-8")

    problems = []
    host = socket.gethostname()
    home = str(Path.home())
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if LEFTOVER.search(line) or (home not in ("", "/") and re.search(re.escape(home) + r"(?![\w.-])", line)) \
                    or (len(host) > 3 and host in line):
                problems.append(f"{f.relative_to(args.dest)}:{n}: {line[:160]}")
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"{run} -> {args.dest}: {len(files)} files, sample {size} bytes")
    for old, new in pairs:
        print(f"  {old} -> {new}")
    if problems:
        print("left over (absolute paths or host name):", *problems[:20], sep="\n  ")
    if size >= args.max_bytes:
        print(f"sample is {size} bytes, not below {args.max_bytes}")
    return 1 if problems or size >= args.max_bytes else 0


if __name__ == "__main__":
    raise SystemExit(main())
