"""Results files: atomic run.json, whole-line records, torn last line tolerated, redaction, resume state."""

from __future__ import annotations

import json

import pytest

from servingbench.results import ResultsError, RunResults


def test_create_append_read(tmp_path):
    r = RunResults.create(tmp_path, "run1", {"suite": {"name": "x"}})
    r.append({"type": "point", "id": "a", "v": 1})
    r.append({"type": "cell", "id": "c", "v": 2})
    assert [x["v"] for x in r.records()] == [1, 2]
    assert r.records("cell")[0]["id"] == "c"
    assert json.loads(r.run_json.read_text())["status"] == "running"


def test_refuses_existing_run_dir(tmp_path):
    RunResults.create(tmp_path, "run1", {})
    with pytest.raises(ResultsError, match="--resume"):
        RunResults.create(tmp_path, "run1", {})


def test_unwritable_results_root(tmp_path):
    # chmod cannot stop root, so use a root that cannot be a directory: a path below a regular file.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ResultsError, match="cannot write results under .*choose a writable --out"):
        RunResults.create(blocker / "results", "run1", {})


def test_torn_last_line_is_skipped(tmp_path):
    r = RunResults.create(tmp_path, "run1", {})
    r.append({"type": "point", "id": "a"})
    with open(r.records_path, "ab") as f:
        f.write(b'{"type": "point", "id": "b", "metr')
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        recs = r.records()
    assert [x["id"] for x in recs] == ["a"]


def test_later_record_with_same_id_wins(tmp_path):
    r = RunResults.create(tmp_path, "run1", {})
    r.append({"id": "p", "v": 1})
    r.append({"id": "p", "v": 2})
    assert [x["v"] for x in r.records()] == [2]


def test_redaction(tmp_path):
    secret = "s3cr3t-token-value-xyz"
    r = RunResults.create(tmp_path, "run1", {"argv": ["--key", secret]}, redact=[secret])
    r.append({"id": "x", "argv": f"admin-key={secret}"})
    r.set_cell("fw/default", "ok", note=secret)
    text = r.run_json.read_text() + r.records_path.read_text()
    assert secret not in text and "<redacted>" in text


def test_cell_states_for_resume(tmp_path):
    r = RunResults.create(tmp_path, "run1", {})
    r.set_cell("a/default", "ok")
    r.set_cell("b/default", "running")
    r.set_cell("c/default", "failed", reason="boom")
    assert r.finished_cells() == {"a/default", "c/default"}
    again = RunResults.open(r.path)
    assert again.finished_cells() == {"a/default", "c/default"}


def test_open_rejects_other_schema(tmp_path):
    r = RunResults.create(tmp_path, "run1", {})
    data = json.loads(r.run_json.read_text())
    data["schema"] = 99
    r.run_json.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match="schema 99"):
        RunResults.open(r.path)


def test_full_disk_is_a_clear_error_and_leaves_no_partial_record(tmp_path, monkeypatch):
    import errno
    import os as _os

    r = RunResults.create(tmp_path, "run1", {})
    r.append({"id": "a"})
    real_write = _os.write

    def full(fd, data):  # the device fills up half-way through the line
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("servingbench.results.os.write", full)
    with pytest.raises(ResultsError, match="no space left .*--resume"):
        r.append({"id": "b", "payload": "x" * 100})
    monkeypatch.undo()
    assert [x["id"] for x in r.records()] == ["a"]  # no torn line
