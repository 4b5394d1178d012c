"""Batch sizes formed: the server-side log (models.runtime.BatchLog), its reader, and the per-point delta."""

from __future__ import annotations

import json

import numpy as np

from servingbench.contract.types import BATCH_DIR_NAME, RunContext
from servingbench.load.point import batch_sizes
from servingbench.models import runtime


def test_the_log_counts_rows_per_call_and_the_reader_sums_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.BATCH_DIR_ENV, str(tmp_path))
    log = runtime.BatchLog()
    for rows in (1, 1, 4, 8):
        log.record(rows)
    log.flush()
    (tmp_path / "99999.json").write_text(json.dumps({"pid": 99999, "counts": {"1": 2, "8": 1}}))
    (tmp_path / "broken.json").write_text("{not json")  # a half-written file of a dying process: skipped
    assert runtime.read_batch_counts(tmp_path) == {1: 4, 4: 1, 8: 2}
    assert runtime.read_batch_counts(tmp_path / "missing") == {}


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(runtime.BATCH_DIR_ENV, raising=False)
    log = runtime.BatchLog()
    log.record(3)
    assert log.counts == {} and log._writer is None


def test_predict_records_the_batch_it_ran(monkeypatch):
    seen = []
    monkeypatch.setattr(runtime.BATCH_LOG, "record", seen.append)
    from servingbench.models import build_artifacts, get_model

    art = build_artifacts(get_model("mlp"))
    rt = runtime.load_runtime(art.dir)
    rt.predict(np.zeros((5, *art.spec().input.shape), dtype=np.float32))
    assert seen == [5]


def test_the_point_delta():
    b = batch_sizes({1: 10}, {1: 14, 4: 3, 8: 1}, request_rows=1)
    assert b["histogram"] == {"1": 4, "4": 3, "8": 1} and b["calls"] == 8
    assert b["mean_rows"] == (4 + 12 + 8) / 8 and b["max_rows"] == 8
    assert batch_sizes({1: 10}, {1: 10}) is None  # nothing logged during the point
    two = batch_sizes({}, {8: 2}, request_rows=2)
    assert two["mean_requests"] == 4.0


def test_servers_get_the_folder_in_their_environment(tmp_path):
    ctx = RunContext(workdir=tmp_path, ports=None, secrets=None, host="127.0.0.1", marker="m", python="python3")
    assert ctx.base_env()[runtime.BATCH_DIR_ENV] == str(tmp_path / BATCH_DIR_NAME)
