"""Results on disk: ``results/<run-id>/run.json`` + ``records.jsonl`` + ``logs/`` + ``manifests/``.

* Versioned (``schema``); raw measurements (histograms, windows) are stored, metrics are recomputed at report time.
* ``run.json`` is rewritten atomically (temp file + fsync + rename); records are appended as whole lines with
  fsync, so a crash never leaves a half-written record except possibly a torn last line.  The next append starts
  on a new line, and readers skip torn lines and count them (:attr:`RunResults.torn_lines`, plus a warning).
* Results are data, never paths: a run id is checked against a safe character set (:func:`run_id_problem`) before
  anything uses it as a directory name, and :func:`new_run_id` only uses a sanitised suite name.
* One harness per results directory: a writer holds ``flock`` on ``<dir>/.lock`` (with its pid inside) from
  :meth:`RunResults.create` / :meth:`RunResults.open` until :meth:`RunResults.close` (or process exit); a second
  writer in another process fails at once, naming the directory and the pid.  Readers (the report) open with
  ``readonly=True`` and take no lock.
* Damaged or foreign files (run.json that is not an object, missing fields, records with wrong types, non-regular
  files) are a :class:`ResultsError` that names the file, the line or field, the problem and the fix.
* Secrets are redacted from everything written here as a last line of defence.
* ``run --resume`` skips cells whose status is final (``ok`` / ``failed`` / ``skipped``), and only resumes a run
  made from the same suite (:func:`suite_sha256` of the validated suite, :func:`json_differences` to say what
  differs).
* :func:`concurrent_activity` finds what else is running on the machine (other harnesses, held results
  directories, busy processes) for the run's warning and its ``concurrent_activity`` field.
"""

from __future__ import annotations

import atexit
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 2
#: What each schema version changed (docs/results.md).  Older files are migrated in memory when read (asv-style:
#: one function per step, applied in order); a file from a newer servingbench is refused with the fix.
SCHEMA_CHANGES = {
    2: "point records carry load_kind and load_level (the load point as one number: concurrency, rate or users); "
       "run.json carries plan (planned load points per cell; null in runs migrated from schema 1)",
}
FINAL = {"ok", "failed", "skipped"}

RUN_ID_MAX = 120
"""Longest run id accepted as a directory name."""
RUN_ID_CHARS = "letters A-Z a-z, digits 0-9, '.', '_' and '-' (no leading dot)"
_RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")
SUITE_NAME_MAX = 64
"""Longest suite name part of a run id (:func:`new_run_id`)."""

RUN_JSON_MAX_BYTES = 64 * 2**20
RECORD_LINE_MAX_BYTES = 64 * 2**20
LOCK_NAME = ".lock"


class ResultsError(RuntimeError):
    pass


# ---- run ids ------------------------------------------------------------------------------------------------------
def run_id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a run id (a single, safe directory name), or ``None`` when it can."""
    if not isinstance(value, str):
        return f"is {_kind(value)}, not a string"
    if not value:
        return "is empty"
    if len(value) > RUN_ID_MAX:
        return f"is {len(value)} characters long (at most {RUN_ID_MAX})"
    if value in (".", ".."):
        return "is a relative path component, not a name"
    if not _RUN_ID_RE.fullmatch(value):
        bad = sorted({c for c in value if not _RUN_ID_RE.fullmatch(c)})
        return "contains " + ", ".join(repr(c) for c in bad[:8]) + (" ..." if len(bad) > 8 else "")
    if value.startswith("."):
        return "starts with a dot"
    return None


def check_run_id(value: Any, *, where: str = "run id") -> str:
    """``value`` if it is a safe run id, else :class:`ResultsError` naming ``where``, the value and the rule."""
    problem = run_id_problem(value)
    if problem:
        raise ResultsError(f"{where} {_show(value)} {problem}: a run id must be 1-{RUN_ID_MAX} of {RUN_ID_CHARS}")
    return value


def sanitise_name(name: str, max_len: int = SUITE_NAME_MAX) -> str:
    """``name`` reduced to the run-id character set: other characters become ``-``, no leading/trailing dots or
    dashes, at most ``max_len`` characters; ``"run"`` when nothing is left."""
    s = _UNSAFE_RE.sub("-", str(name)).strip(".-")[:max_len].rstrip(".-")
    return s or "run"


def new_run_id(suite_name: str) -> str:
    """``<yyyymmdd-hhmmss>-<sanitised suite name>-<4 hex>``: always a safe, single directory name."""
    return f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{sanitise_name(suite_name)}-{secrets.token_hex(2)}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- files --------------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(path: Path, e: OSError) -> ResultsError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResultsError(f"no space left on the device holding {path}: earlier results are intact; "
                            "free space, then continue with `servingbench run ... --resume`")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ResultsError(f"cannot write {path}: {e.strerror}; choose a writable --out directory")
    if e.errno == errno.ELOOP:
        return ResultsError(f"{path} is a symbolic link: results files are never written through links; "
                            "remove the link")
    return ResultsError(f"cannot write {path}: {e.strerror or e}")


def atomic_write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise _disk_error(path, e) from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with _suppress():
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _disk_error(path, e) from e
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def _open_regular(path: Path) -> int:
    """A read-only fd of ``path``, which must be a regular file (a FIFO or device never blocks or is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror or e}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ResultsError(f"{path} is not a regular file (a FIFO, device or directory): "
                           "a results directory holds plain files only")
    os.set_blocking(fd, True)
    return fd


def _decode(raw: bytes, path: Path, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"line {line}, byte {e.start + 1}" if line else f"byte offset {e.start}"
        raise ResultsError(f"{path}: {where}: not UTF-8 text (a binary or damaged file); "
                           "results files are UTF-8 JSON written by servingbench") from None


# ---- run.json -----------------------------------------------------------------------------------------------------
_RUN_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    # field: (allowed types, required).  None is accepted for the optional fields.
    "schema": ((int,), True),
    "run_id": ((str,), True),
    "plan": ((dict,), False),
    "status": ((str,), True),
    "cells": ((dict,), True),
    "suite": ((dict,), False),
    "environment": ((dict,), False),
    "cpu_sets": ((dict,), False),
    "calibration": ((dict,), False),
    "command": ((list, str), False),
    "suite_file": ((str,), False),
    "suite_text": ((str,), False),
    "started": ((str,), False),
    "ended": ((str,), False),
    "resumed_at": ((str,), False),
    "planned_cells": ((list,), False),
    "planned_probes": ((list,), False),
    "missing_cells": ((list,), False),
    "suite_sha256": ((str,), False),
    "resumes": ((list,), False),
    "concurrent_activity": ((list,), False),
}
_CELL_FIELDS = ("status", "reason", "framework", "deployment", "probe", "cell", "updated")
_FIX_RUN = "the file is damaged or was not written by servingbench: restore it from a copy, or re-run the suite"


def run_problems(data: Any) -> list[str]:
    """What is wrong with a parsed run.json (field, problem), empty when it has servingbench's shape."""
    if not isinstance(data, dict):
        return [f"the file holds {_kind(data)}, not a JSON object"]
    problems = []
    for key, (types, required) in _RUN_FIELDS.items():
        if key not in data or data[key] is None:
            if required:
                problems.append(f"field {key!r} is missing")
            continue
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, types):
            want = " or ".join(_kind(t()) for t in types)
            problems.append(f"field {key!r} is {_kind(v)} ({_show(v, 40)}), expected {want}")
    cells = data.get("cells")
    if isinstance(cells, dict):
        for cid, info in cells.items():
            if not isinstance(info, dict):
                problems.append(f"field 'cells.{cid}' is {_kind(info)}, expected an object")
                continue
            for k in _CELL_FIELDS:
                if info.get(k) is not None and not isinstance(info[k], str):
                    problems.append(f"field 'cells.{cid}.{k}' is {_kind(info[k])} ({_show(info[k], 40)}), "
                                    "expected a string")
    return problems


def read_run_json(path: Path) -> dict[str, Any]:
    """Parse ``path`` (a run.json) and check its shape; :class:`ResultsError` naming the file, the field, the
    problem and the fix otherwise.  Files over 64 MiB, non-regular files and non-UTF-8 bytes are refused."""
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > RUN_JSON_MAX_BYTES:
            raise ResultsError(f"{path} is {size} bytes (a run.json is at most {RUN_JSON_MAX_BYTES}): {_FIX_RUN}")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(RUN_JSON_MAX_BYTES + 1)
    finally:
        os.close(fd)
    text = _decode(raw, path)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        why = (f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError)
               else "nested too deeply")
        raise ResultsError(f"{path} is not valid JSON ({why}); records.jsonl is intact: {_FIX_RUN}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path} holds {_kind(data)}, not a JSON object: {_FIX_RUN}")
    if "schema" not in data:
        raise ResultsError(f"{path} has no 'schema' field: {_FIX_RUN}")
    problem = schema_problem(data.get("schema"))
    if problem:
        raise ResultsError(f"{path}: {problem}")
    data = migrate_run(data)
    problems = run_problems(data)
    if problems:
        raise ResultsError(f"{path}: " + "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more"
                                                                     if len(problems) > 10 else "") + f": {_FIX_RUN}")
    return data


# ---- schema versions ----------------------------------------------------------------------------------------------
def schema_problem(version: Any) -> str | None:
    """Why a file's ``schema`` cannot be read (with the fix), or ``None`` for 1 .. :data:`SCHEMA_VERSION`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"schema {_show(version, 40)} is not a schema version (1 to {SCHEMA_VERSION}): {_FIX_RUN}"
    if version > SCHEMA_VERSION:
        return (f"schema {version} was written by a newer servingbench (this one reads schema 1 to "
                f"{SCHEMA_VERSION}): upgrade servingbench to read it")
    return None


def point_load(load: Any) -> tuple[str | None, float | None]:
    """A point's load as (kind, level): ``concurrency``, ``rate`` or ``users`` and its number."""
    if isinstance(load, dict):
        for kind in ("concurrency", "rate", "users"):
            v = load.get(kind)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return kind, float(v)
    return None, None


def _run_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    data.setdefault("plan", None)  # what was planned is not known for schema-1 runs
    return data


def _record_1_to_2(rec: dict[str, Any]) -> dict[str, Any]:
    if rec.get("type") == "point":
        kind, level = point_load(rec.get("load"))
        rec.setdefault("load_kind", kind)
        rec.setdefault("load_level", level)
    return rec


#: version -> (run.json step, record step) to version + 1
MIGRATIONS = {1: (_run_1_to_2, _record_1_to_2)}


def migrate_run(data: dict[str, Any]) -> dict[str, Any]:
    """A checked run.json of any readable schema as the current one; ``schema_migrated_from`` says from which."""
    start = data["schema"]
    for v in range(start, SCHEMA_VERSION):
        data = MIGRATIONS[v][0](data)
    if start != SCHEMA_VERSION:
        data.update(schema=SCHEMA_VERSION, schema_migrated_from=data.get("schema_migrated_from") or start)
    return data


def migrate_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of any readable schema (no ``schema``: 1) as the current one."""
    start = rec.get("schema", 1)
    for v in range(start, SCHEMA_VERSION):
        rec = MIGRATIONS[v][1](rec)
    rec["schema"] = SCHEMA_VERSION
    return rec


# ---- records ------------------------------------------------------------------------------------------------------
def record_problem(rec: Any) -> str | None:
    """Why a parsed records.jsonl line is not a record (the envelope every reader relies on), or ``None``."""
    if not isinstance(rec, dict):
        return f"is {_kind(rec)}, not a JSON object"
    for key in ("id", "type"):
        v = rec.get(key)
        if v is not None and not isinstance(v, str):
            return f"field {key!r} is {_kind(v)} ({_show(v, 40)}), expected a string"
    v = rec.get("schema", 1)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return f"field 'schema' is {_kind(v)} ({_show(v, 40)}), expected a schema version (1 to {SCHEMA_VERSION})"
    if rec.get("type") == "probe":
        for key in ("framework", "feature"):
            if not isinstance(rec.get(key), str):
                return f"probe record field {key!r} is {_kind(rec.get(key))}, expected a string"
    return None


# ---- the lock -----------------------------------------------------------------------------------------------------
class _Lock:
    """flock on ``<dir>/.lock``, shared by every RunResults of this process on that directory."""

    def __init__(self, key: tuple[int, int], path: Path, fd: int) -> None:
        self.key, self.path, self.fd, self.users, self.pid = key, path, fd, 1, os.getpid()

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            # remove the file while holding the lock; a waiter that opened the old file notices (inode check)
            with _suppress():
                if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino:
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = -1


_LOCKS: dict[tuple[int, int], _Lock] = {}
_LOCKS_GUARD = threading.RLock()  # re-entrant: a finaliser (close) may run while this thread holds it


def _holder_text(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = json.loads(os.read(fd, 4096) or b"{}")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    parts = [f"pid {info.get('pid')}"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if info.get("since"):
        parts.append(f"since {info['since']}")
    if info.get("argv"):
        parts.append(f"running {_show(' '.join(map(str, info['argv'])), 120)}")
    return ", ".join(parts)


def _acquire(directory: Path) -> _Lock | None:
    """Take (or share, within this process) the lock of ``directory``; ResultsError when another process holds it."""
    try:
        st = os.stat(directory)
    except OSError as e:
        raise ResultsError(f"cannot use results directory {directory}: {e.strerror or e}") from e
    key = (st.st_dev, st.st_ino)
    path = directory / LOCK_NAME
    with _LOCKS_GUARD:
        held = _LOCKS.get(key)
        if held is not None and held.pid == os.getpid() and held.fd >= 0:
            held.users += 1
            return held
        for _ in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ResultsError(f"{path} is a symbolic link: remove it (a results directory's lock file is "
                                       "a plain file servingbench creates)") from None
                raise _disk_error(path, e) from e
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ResultsError(f"{path} is not a regular file: remove it")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise ResultsError(
                            f"results directory {directory} is in use by {_holder_text(path)}: one harness per "
                            "results directory. Wait for that run to finish (or stop it), then retry; start a "
                            "separate run with a different --out, or without --resume") from None
                    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        warnings.warn(f"{directory}: the file system does not support locks ({e.strerror}); "
                                      "nothing stops a second harness from writing this directory")
                        os.close(fd)
                        return None
                    raise
                try:
                    now = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
                mine = os.fstat(fd)
                if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                    os.close(fd)  # the previous holder removed the file between our open and flock: retry
                    continue
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "since": dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[:8]}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info, default=str).encode(), 0)
            except BaseException:
                with _suppress():
                    os.close(fd)
                raise
            lock = _Lock(key, path, fd)
            _LOCKS[key] = lock
            return lock
        raise ResultsError(f"could not take the lock {path}: it kept being replaced; retry")


def _drop(lock: _Lock) -> None:
    with _LOCKS_GUARD:
        lock.users -= 1
        if lock.users > 0:
            return
        if _LOCKS.get(lock.key) is lock:
            del _LOCKS[lock.key]
        lock.release()


@atexit.register
def _release_all() -> None:
    """At exit the kernel drops the locks anyway; this also removes the lock files of results never closed."""
    with _LOCKS_GUARD:
        for lock in list(_LOCKS.values()):
            if lock.pid == os.getpid():
                with _suppress():
                    lock.release()
        _LOCKS.clear()


# ---- one run's directory --------------------------------------------------------------------------------------------
class RunResults:
    """One run's results directory.

    A writer (``create`` / ``open``) holds the directory's lock until :meth:`close` (idempotent; also a context
    manager, and released when the object is garbage-collected or the process exits).  Several RunResults of one
    process share the lock; another process gets a :class:`ResultsError` at once.  ``open(..., readonly=True)``
    takes no lock and refuses writes.

    Attributes:
        torn_lines: unreadable (torn) lines of records.jsonl skipped by the last :meth:`records` call.
        torn_line_numbers: their line numbers (1-based).
    """

    def __init__(self, path: Path, redact: Iterable[str] = (), *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._redact = [s for s in redact if s and len(s) >= 8]
        self.readonly = readonly
        self._lock: _Lock | None = None
        self._closed = False
        self.torn_lines = 0
        self.torn_line_numbers: list[int] = []

    # ---- paths ------------------------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def records_path(self) -> Path:
        return self.path / "records.jsonl"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def manifests(self) -> Path:
        return self.path / "manifests"

    def set_redactions(self, strings: Iterable[str]) -> None:
        self._redact = [s for s in strings if s and len(s) >= 8]

    def _clean(self, text: str) -> str:
        for s in self._redact:
            text = text.replace(s, "<redacted>")
        return text

    # ---- lifetime -----------------------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        self._lock = _acquire(self.path)

    def close(self) -> None:
        """Release the directory's lock (idempotent).  Later writes raise :class:`ResultsError`."""
        if self._closed:
            return
        self._closed = True
        lock, self._lock = self._lock, None
        if lock is not None:
            _drop(lock)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "RunResults":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_lock", None) is not None:
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser (e.g. at interpreter shutdown)
            pass

    def _writable(self) -> None:
        if self.readonly:
            raise ResultsError(f"{self.path} was opened read-only; open it without readonly=True to write")
        if self._closed:
            raise ResultsError(f"{self.path}: these results were closed; open the directory again to write")

    # ---- create / open ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, run_id: str, meta: dict[str, Any], redact: Iterable[str] = ()) -> "RunResults":
        check_run_id(run_id)
        path = Path(root) / run_id
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise ResultsError(f"results directory {path} already exists; use --resume {path} to continue it") from None
        except OSError as e:
            raise ResultsError(
                f"cannot write results under {root}: {e.strerror}; choose a writable --out directory"
            ) from e
        r = cls(path, redact)
        r._take_lock()
        try:
            (path / "logs").mkdir()
            (path / "manifests").mkdir()
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            data = {"schema": SCHEMA_VERSION, "run_id": run_id, "status": "running", "cells": {}, **meta}
            data.update(schema=SCHEMA_VERSION, run_id=run_id)  # meta never overrides the checked id or the schema
            r.write_run(data)
        except OSError as e:
            r.close()
            raise ResultsError(
                f"cannot write results under {root}: {e.strerror}; choose a writable --out directory"
            ) from e
        except BaseException:
            r.close()
            raise
        return r

    @classmethod
    def open(cls, path: Path, redact: Iterable[str] = (), *, readonly: bool = False) -> "RunResults":
        """An existing results directory.  A writer (default) takes the directory's lock, failing at once when
        another process holds it; ``readonly=True`` (reports, matrix) takes none and refuses writes."""
        r = cls(Path(path), redact, readonly=readonly)
        try:
            is_dir = stat.S_ISDIR(os.stat(r.path).st_mode)
            has_run = is_dir and os.path.lexists(r.run_json)
        except FileNotFoundError:
            raise ResultsError(f"{path} is not a servingbench results directory (no such directory): give the "
                               "path of a results/<run-id> directory") from None
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
            raise ResultsError(f"cannot use {_show(str(path), 120)} as a results directory: "
                               f"{getattr(e, 'strerror', None) or e}; give the path of a results/<run-id> "
                               "directory") from None
        if not is_dir:
            raise ResultsError(f"{path} is not a servingbench results directory (not a directory)")
        if not has_run:
            raise ResultsError(f"{path} is not a servingbench results directory (no run.json)")
        r.read_run()  # shape and schema checked before the lock: a foreign directory gets no lock file
        if not readonly:
            r._take_lock()
        return r

    # ---- run.json -----------------------------------------------------------------------------------------------
    def read_run(self) -> dict[str, Any]:
        """run.json, checked (:func:`read_run_json`)."""
        return read_run_json(self.run_json)

    def write_run(self, data: dict[str, Any]) -> None:
        self._writable()
        atomic_write_text(self.run_json, self._clean(json.dumps(data, indent=2, default=str)) + "\n")

    def update_run(self, **fields: Any) -> dict[str, Any]:
        data = self.read_run()
        data.update(fields)
        self.write_run(data)
        return data

    def set_cell(self, cell_id: str, status: str, **info: Any) -> None:
        data = self.read_run()
        cell = data.setdefault("cells", {}).setdefault(cell_id, {})
        cell.update(status=status, updated=dt.datetime.now().isoformat(timespec="seconds"), **info)
        self.write_run(data)

    def finished_cells(self) -> set[str]:
        return {k for k, v in self.read_run().get("cells", {}).items() if v.get("status") in FINAL}

    # ---- records ------------------------------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        self._writable()
        record = {"schema": SCHEMA_VERSION, **record}
        line = self._clean(json.dumps(record, default=str, allow_nan=True)) + "\n"
        # O_APPEND + one write of a whole line + fsync: a crash leaves at most a torn last line.  A torn last line
        # left by an earlier crash gets its newline first, so it never swallows this record.
        data = line.encode()
        try:
            fd = os.open(self.records_path,
                         os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ResultsError(f"{self.records_path} is not a regular file: a results directory holds "
                                       "plain files only; remove it")
                start = os.lseek(fd, 0, os.SEEK_END)
                if start > 0 and os.pread(fd, 1, start - 1) != b"\n":
                    data = b"\n" + data
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, "short write")
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, start)  # never leave half a record behind
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            raise _disk_error(self.records_path, e) from e

    def numbered_records(self, type_: str | None = None) -> list[tuple[int, dict[str, Any]]]:
        """``(line number, record)`` of all readable records (a later record with the same ``id`` replaces the
        earlier one: resumed cells).  Torn lines are skipped, counted in :attr:`torn_lines` and warned about; a
        line that is JSON but not a record is a :class:`ResultsError` naming the file and line."""
        self.torn_lines, self.torn_line_numbers = 0, []
        if not os.path.lexists(self.records_path):
            return []
        out: dict[str, tuple[int, dict[str, Any]]] = {}
        bad: list[int] = []
        fd = _open_regular(self.records_path)
        with os.fdopen(fd, "rb") as f:
            n = 0
            while True:
                raw = f.readline(RECORD_LINE_MAX_BYTES)
                if not raw:
                    break
                n += 1
                if not raw.endswith(b"\n") and len(raw) >= RECORD_LINE_MAX_BYTES:
                    while (more := f.readline(RECORD_LINE_MAX_BYTES)) and not more.endswith(b"\n"):
                        pass
                    bad.append(n)  # an over-long line is no record servingbench writes
                    continue
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    bad.append(n)
                    continue
                problem = record_problem(rec)
                if not problem and rec.get("schema", 1) > SCHEMA_VERSION:
                    raise ResultsError(f"{self.records_path}: line {n}: {schema_problem(rec['schema'])}")
                if problem:
                    raise ResultsError(f"{self.records_path}: line {n}: the record {problem}; the file is damaged "
                                       "or was not written by servingbench: remove that line, or re-run the suite")
                out[rec.get("id") or f"line{n}"] = (n, migrate_record(rec))
        self.torn_lines, self.torn_line_numbers = len(bad), bad
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            warnings.warn(f"{self.records_path}: skipped {len(bad)} unreadable line(s) (line {shown}; a torn write "
                          "from a crash?)")
        return [(n, r) for n, r in out.values() if type_ is None or r.get("type") == type_]

    def records(self, type_: str | None = None) -> list[dict[str, Any]]:
        """All readable records (later duplicates of the same ``id`` replace earlier ones: resumed cells)."""
        return [r for _, r in self.numbered_records(type_)]


# ---- the suite a run was made from ---------------------------------------------------------------------------------
def suite_sha256(suite_json: Any) -> str:
    """Content hash of a validated suite's JSON (``Suite.model_dump(mode="json")``): key order and whitespace do
    not matter, every value does."""
    text = json.dumps(suite_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def json_differences(old: Any, new: Any, path: str = "", limit: int = 12) -> list[str]:
    """Where two JSON values differ, as ``"path: <old> in the run, <new> in the file"`` lines (at most ``limit``)."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                sub = f"{where}.{k}" if where else str(k)
                if k not in b:
                    out.append(f"{sub}: only in the run ({_show(a[k], 60)})")
                elif k not in a:
                    out.append(f"{sub}: only in the file ({_show(b[k], 60)})")
                else:
                    walk(a[k], b[k], sub)
                if len(out) >= limit:
                    return
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif a != b or type(a) is not type(b):
            out.append(f"{where or '(the suite)'}: {_show(a, 60)} in the run, {_show(b, 60)} in the file")

    walk(old, new, path)
    return out


# ---- other harnesses and busy processes on this machine -------------------------------------------------------------
ACTIVITY_SAMPLE_S = 1.0
"""How long :func:`concurrent_activity` samples CPU use."""
BUSY_CPU_PCT = 50.0
"""A process using more than this share of one core over the sample (not this harness's) distorts measurements."""
_LOCK_SCAN_MAX = 2000


def _is_harness_run(cmdline: list[str]) -> bool:
    """A ``servingbench run`` harness itself: ``servingbench run ...``, ``python .../servingbench run ...`` or
    ``python -m servingbench.cli run ...``.  Wrappers (``flock``, ``timeout``, a shell's ``-c`` string) are not the
    harness (their child is), nor is anything that merely mentions the word."""
    if not cmdline:
        return False
    rest: list[str] | None = None
    if os.path.basename(cmdline[0]) == "servingbench":
        rest = cmdline[1:]
    elif os.path.basename(cmdline[0]).startswith("python"):
        i = 1
        while i < len(cmdline) and cmdline[i].startswith("-") and cmdline[i] not in ("-m", "-c"):
            i += 2 if cmdline[i] in ("-X", "-W") else 1  # interpreter options, some with a value
        if i + 1 < len(cmdline) and cmdline[i] == "-m" and cmdline[i + 1] in ("servingbench.cli", "servingbench"):
            rest = cmdline[i + 2:]
        elif i < len(cmdline) and os.path.basename(cmdline[i]) == "servingbench":
            rest = cmdline[i + 1:]
    return bool(rest) and rest[0] == "run"


def _family(pid: int) -> set[int]:
    """``pid``, its ancestors and its descendants: this harness, whatever started it, what it started."""
    import psutil

    out = {pid}
    try:
        me = psutil.Process(pid)
        out.update(p.pid for p in me.parents())
        out.update(p.pid for p in me.children(recursive=True))
    except psutil.Error:
        pass
    return out


def _locked_inodes() -> dict[int, int]:
    """inode -> pid of every flock held on this machine (/proc/locks; waiters, marked ``->``, skipped)."""
    held: dict[int, int] = {}
    try:
        with open("/proc/locks") as f:
            lines = f.read(4 * 2**20).splitlines()
    except OSError:
        return held
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            held[int(parts[5].rsplit(":", 1)[1])] = int(parts[4])
        except (ValueError, IndexError):
            continue
    return held


def _held_results_dirs(roots: Iterable[Path], ours: set[int]) -> list[dict[str, Any]]:
    """Results directories under ``roots`` whose lock another process holds (a harness writing there now)."""
    held = _locked_inodes()
    mine = {key for key, lock in _LOCKS.items() if lock.pid == os.getpid() and lock.fd >= 0}
    found: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for root in roots:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)[:_LOCK_SCAN_MAX]
        except OSError:
            continue
        for entry in entries:
            d = Path(entry.path)
            if d in seen:
                continue
            seen.add(d)
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                st = os.stat(d / LOCK_NAME, follow_symlinks=False)
                dst = os.stat(d)
            except OSError:
                continue
            pid = held.get(st.st_ino)
            if pid is None or pid in ours or (dst.st_dev, dst.st_ino) in mine:
                continue
            found.append({"kind": "results_locked", "path": str(d), "pid": pid,
                          "text": f"results directory {d} is being written by {_holder_text(d / LOCK_NAME)}"})
    return found


def concurrent_activity(roots: Iterable[Path] = (), *, sample_s: float | None = None,
                        busy_pct: float | None = None, exclude: Iterable[int] = ()) -> list[dict[str, Any]]:
    """What else runs on this machine that would distort this run's numbers: other ``servingbench run``
    harnesses, results directories under ``roots`` another process holds, and processes using more than
    :data:`BUSY_CPU_PCT` % of a core over a :data:`ACTIVITY_SAMPLE_S` sample.  This process, its ancestors, its
    descendants and ``exclude`` are not counted.  Each entry has ``kind``, ``pid`` and ``text`` (the warning);
    busy processes are recorded by name only (their command lines may hold secrets)."""
    import psutil

    sample_s = ACTIVITY_SAMPLE_S if sample_s is None else sample_s
    busy_pct = BUSY_CPU_PCT if busy_pct is None else busy_pct
    ours = _family(os.getpid()) | set(exclude)
    t0 = time.monotonic()
    before: dict[int, tuple[Any, float]] = {}
    found: list[dict[str, Any]] = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        if p.pid in ours:
            continue
        try:
            cpu = p.cpu_times()
            before[p.pid] = (p, cpu.user + cpu.system)
        except psutil.Error:
            continue
        cmd = p.info.get("cmdline") or []
        if _is_harness_run(cmd):
            argv = [a if len(a) <= 120 else a[:117] + "..." for a in cmd[:8]]
            found.append({"kind": "servingbench_run", "pid": p.pid, "argv": argv,
                          "text": f"another servingbench run is active: pid {p.pid} ({' '.join(argv)})"})
    found += _held_results_dirs(roots, ours)
    time.sleep(max(0.0, sample_s - (time.monotonic() - t0)))
    elapsed = max(time.monotonic() - t0, 1e-3)
    ours |= _family(os.getpid())  # anything this process started meanwhile
    by_pid = {e["pid"]: e for e in found if e["kind"] == "servingbench_run"}
    for pid, (p, cpu0) in before.items():
        if pid in ours:
            continue
        try:
            cpu = p.cpu_times()
            pct = 100.0 * (cpu.user + cpu.system - cpu0) / elapsed
            name = p.name()
        except psutil.Error:
            continue
        if pct <= busy_pct:
            continue
        if pid in by_pid:
            by_pid[pid]["cpu_pct"] = round(pct, 1)
            continue
        found.append({"kind": "busy_process", "pid": pid, "name": name, "cpu_pct": round(pct, 1),
                      "text": f"process {pid} ({name}) is using {pct:.0f} % of a CPU core"})
    return found
