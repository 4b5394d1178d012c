"""Batch sizes formed: the server-side log (models.runtime.BatchLog), its reader, and the per-point delta."""

from __future__ import annotations

import json

import numpy as np
import pytest

from servingbench.contract.types import BATCH_DIR_NAME, RunContext
from servingbench.load.point import batch_sizes
from servingbench.models import runtime


def test_the_log_counts_rows_per_call_and_the_reader_sums_processes(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.BATCH_DIR_ENV, str(tmp_path))
    log = runtime.BatchLog()
    for rows, secs in ((1, 0.001), (1, 0.001), (4, 0.002), (8, None)):  # None: a call that was not timed
        log.record(rows, secs)
    log.flush()
    (tmp_path / "99999.json").write_text(json.dumps({"pid": 99999, "counts": {"1": 2, "8": 1}}))  # no compute part
    (tmp_path / "broken.json").write_text("{not json")  # a half-written file of a dying process: skipped
    assert runtime.read_batch_counts(tmp_path) == {1: 4, 4: 1, 8: 2}
    counts, compute = runtime.read_batch_log(tmp_path)
    assert compute["calls"] == 3 and compute["rows"] == 6
    assert compute["s"] == pytest.approx(0.004) and compute["row_s"] == pytest.approx(0.001 + 0.001 + 4 * 0.002)
    assert runtime.read_batch_counts(tmp_path / "missing") == {}


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(runtime.BATCH_DIR_ENV, raising=False)
    log = runtime.BatchLog()
    log.record(3)
    assert log.counts == {} and log._writer is None


def test_predict_records_the_batch_it_ran(monkeypatch):
    seen = []
    monkeypatch.setattr(runtime.BATCH_LOG, "record", lambda rows, secs: seen.append((rows, secs)))
    from servingbench.models import build_artifacts, get_model

    art = build_artifacts(get_model("mlp"))
    rt = runtime.load_runtime(art.dir)
    rt.predict(np.zeros((5, *art.spec().input.shape), dtype=np.float32))
    assert [r for r, _ in seen] == [5] and 0 < seen[0][1] < 5  # the call's rows and its time


def test_the_point_delta():
    b = batch_sizes({1: 10}, None, {1: 14, 4: 3, 8: 1}, None, request_rows=1)
    assert b["histogram"] == {"1": 4, "4": 3, "8": 1} and b["calls"] == 8
    assert b["mean_rows"] == (4 + 12 + 8) / 8 and b["max_rows"] == 8
    assert "compute_s" not in b  # not timed
    assert batch_sizes({1: 10}, None, {1: 10}, None) is None  # nothing logged during the point
    two = batch_sizes({}, None, {8: 2}, None, request_rows=2)
    assert two["mean_requests"] == 4.0
    # compute: 2 calls of 1 row at 1 ms, then 1 call of 4 rows at 3 ms: a call takes 5/3 ms on average, a row
    # spends (1 + 1 + 4 x 3) / 6 ms in its call
    c0 = {"calls": 10, "rows": 10, "s": 0.010, "row_s": 0.010}
    c1 = {"calls": 13, "rows": 16, "s": 0.015, "row_s": 0.010 + 0.014}
    t = batch_sizes({1: 10}, c0, {1: 12, 4: 1}, c1)
    assert t["compute_s_per_call"] == pytest.approx(0.005 / 3) and t["compute_s"] == pytest.approx(0.014 / 6)


def test_servers_get_the_folder_in_their_environment(tmp_path):
    ctx = RunContext(workdir=tmp_path, ports=None, secrets=None, host="127.0.0.1", marker="m", python="python3")
    assert ctx.base_env()[runtime.BATCH_DIR_ENV] == str(tmp_path / BATCH_DIR_NAME)


def test_where_the_time_goes_text():
    from servingbench.report.build import _time_text

    row = {"latency_mean_s": 0.010, "compute_mean_s": 0.004}
    assert _time_text(row, 0.001) == "4.00 / 1.00 / 5.00 ms"  # model / client floor / queue + framework
    assert _time_text(row, None) == "4.00 / – / 6.00 ms"
    assert _time_text({"latency_mean_s": 0.010, "compute_mean_s": float("nan")}, 0.001) == "–"  # not timed
