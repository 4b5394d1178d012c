"""Results on disk: ``results/<run-id>/run.json`` + ``records.jsonl`` + ``logs/`` + ``manifests/``.

* Versioned (``schema``); raw measurements (histograms, windows) are stored, metrics are recomputed at report time.
* ``run.json`` is rewritten atomically (temp file + fsync + rename); records are appended as whole lines with
  fsync, so a crash never leaves a half-written record except possibly a torn last line, which readers skip.
* Secrets are redacted from everything written here as a last line of defence.
* ``run --resume`` skips cells whose status is final (``ok`` / ``failed`` / ``skipped``).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
FINAL = {"ok", "failed", "skipped"}


class ResultsError(RuntimeError):
    pass


def new_run_id(suite_name: str) -> str:
    return f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{suite_name}-{secrets.token_hex(2)}"


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


class RunResults:
    """One run's results directory."""

    def __init__(self, path: Path, redact: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self._redact = [s for s in redact if s and len(s) >= 8]

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

    # ---- create / open ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, run_id: str, meta: dict[str, Any], redact: Iterable[str] = ()) -> "RunResults":
        path = Path(root) / run_id
        try:
            path.mkdir(parents=True, exist_ok=False)
            (path / "logs").mkdir()
            (path / "manifests").mkdir()
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except FileExistsError:
            raise ResultsError(f"results directory {path} already exists; use --resume {path} to continue it") from None
        except OSError as e:
            raise ResultsError(
                f"cannot write results under {root}: {e.strerror}; choose a writable --out directory"
            ) from e
        r = cls(path, redact)
        r.write_run({"schema": SCHEMA_VERSION, "run_id": run_id, "status": "running", "cells": {}, **meta})
        return r

    @classmethod
    def open(cls, path: Path, redact: Iterable[str] = ()) -> "RunResults":
        r = cls(Path(path), redact)
        if not r.run_json.is_file():
            raise ResultsError(f"{path} is not a servingbench results directory (no run.json)")
        data = r.read_run()
        if data.get("schema") != SCHEMA_VERSION:
            raise ResultsError(
                f"{r.run_json}: schema {data.get('schema')!r} is not supported (this servingbench writes {SCHEMA_VERSION})"
            )
        return r

    # ---- run.json -----------------------------------------------------------------------------------------------
    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError as e:
            raise ResultsError(f"{self.run_json} is corrupt ({e}); records.jsonl is intact") from e

    def write_run(self, data: dict[str, Any]) -> None:
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
        record = {"schema": SCHEMA_VERSION, **record}
        line = self._clean(json.dumps(record, default=str, allow_nan=True)) + "\n"
        # O_APPEND + one write of a whole line + fsync: a crash leaves at most a torn last line.
        data = line.encode()
        try:
            fd = os.open(self.records_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
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

    def records(self, type_: str | None = None) -> list[dict[str, Any]]:
        """All readable records (later duplicates of the same ``id`` replace earlier ones: resumed cells)."""
        if not self.records_path.is_file():
            return []
        out: dict[str, dict[str, Any]] = {}
        bad = 0
        with open(self.records_path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict):
                        raise ValueError("not an object")
                except ValueError:
                    bad += 1
                    continue
                out[rec.get("id") or f"line{n}"] = rec
        if bad:
            warnings.warn(f"{self.records_path}: skipped {bad} unreadable line(s) (a torn write from a crash?)")
        recs = list(out.values())
        return [r for r in recs if type_ is None or r.get("type") == type_]
