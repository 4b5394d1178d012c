"""Issue 15, defects 1, 4, 5, 7 and 11 (results): results are data, never paths; one writer per results directory;
appends survive a torn last line; damaged run.json / records.jsonl are clear errors, never tracebacks or reports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from servingbench.report.build import REPORT_MARKER, write_report
from servingbench.report.data import RunData
from servingbench.results import RUN_ID_MAX, ResultsError, RunResults, new_run_id, run_id_problem

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "results" / "sample"


def _copy(tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLE, dst)
    return dst


def _set_meta(run: Path, **fields) -> None:
    meta = json.loads((run / "run.json").read_text())
    meta.update(fields)
    (run / "run.json").write_text(json.dumps(meta))


def _tree(path: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


# ---- defect 1: the report's output directory comes from --out and a checked run id ----------------------------------
@pytest.fixture
def victims(tmp_path):
    """A directory outside --out and another report inside it: neither may be touched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    reports = tmp_path / "reports"
    (reports / "other-run").mkdir(parents=True)
    (reports / "other-run" / "index.html").write_text("another report")
    return victim, reports


@pytest.mark.parametrize("run_id", ["../victim", "ABS", ".", "..", "", ".hidden", "a/b", "x" * (RUN_ID_MAX + 1),
                                    "a\x00b", "a\\b", "run id", 42, ["x"]])
def test_report_refuses_a_run_id_that_is_not_a_safe_name(tmp_path, victims, run_id):
    victim, reports = victims
    run = _copy(tmp_path)
    run_id = str(victim) if run_id == "ABS" else run_id
    _set_meta(run, run_id=run_id)
    before_victim, before_reports = _tree(victim), _tree(reports)
    with pytest.raises(ResultsError) as e:
        write_report(run, reports)
    msg = str(e.value)
    assert str(run / "run.json") in msg and "'run_id'" in msg  # the file and the field
    if isinstance(run_id, str):
        assert repr(run_id)[:40] in msg  # the value
        assert "Set 'run_id' in that run.json" in msg and "A-Z a-z" in msg  # the fix and the rule
    assert _tree(victim) == before_victim
    assert _tree(reports) == before_reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "run", "victim"]


def test_report_replaces_only_directories_that_are_servingbench_reports(tmp_path, victims):
    victim, reports = victims
    run_id = json.loads((SAMPLE / "run.json").read_text())["run_id"]
    target = reports / run_id
    # a directory of the user's that happens to carry the run's name
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ResultsError, match=f"{target} exists and is not a servingbench report .*choose another --out"):
        write_report(SAMPLE, reports)
    assert (target / "notes.txt").read_text() == "mine"
    shutil.rmtree(target)
    # a link planted where the report goes
    target.symlink_to(victim, target_is_directory=True)
    with pytest.raises(ResultsError, match="is not a report directory"):
        write_report(SAMPLE, reports)
    assert (victim / "precious.txt").read_text() == "keep me"
    target.unlink()
    # our own report is replaced on the next write
    index = write_report(SAMPLE, reports)
    assert index.parent == target.resolve() and (target / REPORT_MARKER).is_file()
    (target / "stale.txt").write_text("from the last report")
    write_report(SAMPLE, reports)
    assert not (target / "stale.txt").exists() and (target / "index.html").is_file()
    assert (reports / "other-run" / "index.html").read_text() == "another report"


def test_report_replaces_a_report_written_before_the_marker(tmp_path):
    run_id = json.loads((SAMPLE / "run.json").read_text())["run_id"]
    old = tmp_path / "reports" / run_id
    (old / "figures").mkdir(parents=True)
    (old / "index.html").write_text("old")
    (old / "report.md").write_text("old")
    write_report(SAMPLE, tmp_path / "reports")
    assert (old / REPORT_MARKER).is_file() and (old / "index.html").read_text() != "old"


@pytest.mark.parametrize("out", ["file", "/dev/null"])
def test_report_out_that_is_not_a_directory(tmp_path, out):
    if out == "file":
        out = tmp_path / "file"
        out.write_text("x")
    with pytest.raises(ResultsError, match="exists and is not a directory"):
        write_report(SAMPLE, Path(out))


def test_results_inside_the_report_directory_are_never_removed(tmp_path):
    run_id = json.loads((SAMPLE / "run.json").read_text())["run_id"]
    target = tmp_path / "reports" / run_id
    target.mkdir(parents=True)
    (target / REPORT_MARKER).write_text("{}")
    run = _copy(target, "run")
    with pytest.raises(ResultsError, match="lies inside the report directory"):
        write_report(run, tmp_path / "reports")
    assert (run / "run.json").is_file()


# ---- defect 4: run ids are names, never paths -----------------------------------------------------------------------
@pytest.mark.parametrize("suite_name", ["x/../../../escaped", "/", "a\x00b", "..", ".", "", "a" * 500, "ü ñ",
                                        "-lead", "../../etc/passwd"])
def test_new_run_id_uses_only_a_sanitised_name(tmp_path, suite_name):
    run_id = new_run_id(suite_name)
    assert run_id_problem(run_id) is None, run_id
    assert "/" not in run_id and "\x00" not in run_id and len(run_id) <= RUN_ID_MAX
    r = RunResults.create(tmp_path / "out", run_id, {})
    try:
        assert r.path.parent == tmp_path / "out"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    finally:
        r.close()


@pytest.mark.parametrize("run_id", ["../escaped", "/abs", ".", "a/b", ""])
def test_create_refuses_a_run_id_that_is_a_path(tmp_path, run_id):
    with pytest.raises(ResultsError, match="run id .* a run id must be"):
        RunResults.create(tmp_path / "out", run_id, {})
    assert list(tmp_path.iterdir()) == []


# ---- defect 5: appends after a torn last line -----------------------------------------------------------------------
def test_append_after_a_torn_last_line_starts_a_new_line(tmp_path):
    with RunResults.create(tmp_path, "run1", {}) as r:
        r.append({"type": "point", "id": "a"})
        with open(r.records_path, "ab") as f:
            f.write(b'{"type": "point", "id": "torn", "metr')  # a crash mid-write
        r.append({"type": "point", "id": "b"})  # the resumed run's next record
        r.append({"type": "point", "id": "c"})
        with pytest.warns(UserWarning, match=r"skipped 1 unreadable line\(s\) \(line 2;"):
            recs = r.records()
        assert [x["id"] for x in recs] == ["a", "b", "c"]
        assert r.torn_lines == 1 and r.torn_line_numbers == [2]
        assert r.records_path.read_bytes().endswith(b'"id": "c"}\n')


def test_report_reader_counts_torn_lines(tmp_path):
    run = _copy(tmp_path)
    with open(run / "records.jsonl", "ab") as f:
        f.write(b'{"schema": 1, "type": "point", "id": "torn", "metr')
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        d = RunData.load(run)
    assert d.torn_lines == 1 and d.torn_line_numbers == [len((run / "records.jsonl").read_bytes().splitlines())]
    assert d.points  # the readable records are all there


def test_clean_file_has_no_torn_lines(tmp_path):
    with RunResults.create(tmp_path, "run1", {}) as r:
        r.append({"id": "a"})
        assert r.records() and r.torn_lines == 0


# ---- defect 7: one writer per results directory ---------------------------------------------------------------------
HOLDER = """
import sys
from servingbench.results import RunResults
r = RunResults.open(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def _holder(path: Path) -> subprocess.Popen:
    """Another harness: a process that opens ``path`` for writing and holds it until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "locked", p.stderr.read()
    return p


@pytest.fixture
def holder(tmp_path):
    r = RunResults.create(tmp_path, "run1", {})
    r.close()
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(_holder(r.path))
        return procs[-1]

    yield r.path, start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def test_second_writer_process_is_refused_at_once_naming_the_pid(holder):
    path, start = holder
    p = start()
    t0 = time.monotonic()
    with pytest.raises(ResultsError) as e:
        RunResults.open(path)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert f"results directory {path} is in use by pid {p.pid}" in msg and "one harness per results directory" in msg
    # a reader (the report, matrix) takes no lock and still works
    reader = RunResults.open(path, readonly=True)
    assert reader.read_run()["run_id"] == "run1"
    with pytest.raises(ResultsError, match="read-only"):
        reader.append({"id": "x"})
    p.stdin.close()
    assert p.wait(10) == 0
    # the holder never called close(): exiting released the lock and removed its file
    assert not (path / ".lock").exists()
    RunResults.open(path).close()


def test_lock_is_released_when_the_holder_is_killed(holder):
    path, start = holder
    p = start()
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert (path / ".lock").exists()  # stale file, no holder
    with RunResults.open(path) as r:
        assert json.loads((path / ".lock").read_text())["pid"] == os.getpid()
        r.append({"id": "x"})


def test_close_is_idempotent_and_a_context_manager(tmp_path):
    with RunResults.create(tmp_path, "run1", {}) as r:
        assert (r.path / ".lock").is_file()
        r.append({"id": "a"})
    assert r.closed and not (r.path / ".lock").exists()
    r.close()
    r.close()
    with pytest.raises(ResultsError, match="closed"):
        r.append({"id": "b"})
    assert [x["id"] for x in r.records()] == ["a"]  # reading still works
    r2 = RunResults.open(r.path)
    r2.close()
    r2.close()


def test_same_process_reopen_shares_the_lock(tmp_path):
    """A resume in the process that created the run (tests, notebooks) keeps working without close()."""
    r = RunResults.create(tmp_path, "run1", {})
    again = RunResults.open(r.path)
    again.set_cell("a/default", "ok")
    r.close()
    assert (r.path / ".lock").exists()  # still held by `again`
    again.append({"id": "x"})
    again.close()
    assert not (r.path / ".lock").exists()


def test_lock_file_that_is_a_link_is_refused(tmp_path):
    r = RunResults.create(tmp_path, "run1", {})
    r.close()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (r.path / ".lock").symlink_to(victim)
    with pytest.raises(ResultsError, match="symbolic link"):
        RunResults.open(r.path)
    assert victim.read_text() == "keep"


def test_records_file_that_is_a_link_is_never_appended_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    with RunResults.create(tmp_path, "run1", {}) as r:
        r.records_path.symlink_to(victim)
        with pytest.raises(ResultsError, match="symbolic link"):
            r.append({"id": "x"})
    assert victim.read_text() == "keep\n"


# ---- defect 11: damaged run.json and records.jsonl ------------------------------------------------------------------
def _meta() -> dict:
    return json.loads((SAMPLE / "run.json").read_text())


BAD_RUN_JSON = {
    "list": (json.dumps([1, 2]).encode(), "holds a list, not a JSON object"),
    "binary": (bytes(range(256)), "byte offset 128: not UTF-8 text"),
    "not_json": (b'{"schema": 1, "run_id": ', "is not valid JSON (line 1 column"),
    "empty": (b"", "is not valid JSON"),
    "no_schema": (json.dumps({"run_id": "x"}).encode(), "has no 'schema' field"),
    "no_run_id": (json.dumps({k: v for k, v in _meta().items() if k != "run_id"}).encode(),
                  "field 'run_id' is missing"),
    "no_cells": (json.dumps({k: v for k, v in _meta().items() if k != "cells"}).encode(), "field 'cells' is missing"),
    "cells_list": (json.dumps({**_meta(), "cells": []}).encode(), "field 'cells' is a list ([]), expected an object"),
    "cell_str": (json.dumps({**_meta(), "cells": {"a/b": "ok"}}).encode(), "field 'cells.a/b' is a string"),
    "status_num": (json.dumps({**_meta(), "status": 3}).encode(), "field 'status' is a number (3), expected a string"),
    "deep": (b'{"schema": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON (nested too deeply)"),
}


@pytest.mark.parametrize("case", list(BAD_RUN_JSON))
def test_bad_run_json_is_a_clear_error(tmp_path, case):
    content, expected = BAD_RUN_JSON[case]
    run = _copy(tmp_path)
    (run / "run.json").write_bytes(content)
    for load in (lambda: RunResults.open(run), lambda: RunData.load(run), lambda: write_report(run, tmp_path / "r")):
        with pytest.raises(ResultsError) as e:
            load()
        assert str(e.value).startswith(f"{run / 'run.json'}"), str(e.value)
        assert expected in str(e.value)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("what", ["fifo", "dir"])
def test_run_json_or_records_that_are_not_files(tmp_path, what):
    run = _copy(tmp_path)
    for name in ("run.json", "records.jsonl"):
        r = _copy(tmp_path, f"run-{name}")
        (r / name).unlink()
        os.mkfifo(r / name) if what == "fifo" else (r / name).mkdir()
        done: list = []
        t = threading.Thread(target=lambda: done.append(_raises(lambda: RunData.load(r))), daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"RunData.load blocked on a {what} {name}"
        assert isinstance(done[0], ResultsError) and "is not a regular file" in str(done[0]), done
    assert run.exists()


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - returned for the assertion
        return e
    return None


def _sample_record(type_: str) -> dict:
    for line in (SAMPLE / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["type"] == type_:
            return r
    raise AssertionError(type_)


def _bad(type_: str, path: tuple, value) -> dict:
    r = json.loads(json.dumps(_sample_record(type_)))
    cur = r
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    r["id"] = f"bad-{type_}"
    return r


BAD_RECORDS = {
    "array": ([1, 2, 3], "the record is a list, not a JSON object"),
    "number": (42, "the record is a number"),
    "id_list": ({"type": "point", "id": ["x"]}, "field 'id' is a list"),
    "type_num": ({"type": 7, "id": "x"}, "field 'type' is a number"),
    "probe_no_framework": ({"type": "probe", "id": "p", "feature": "tls"}, "probe record field 'framework' is null"),
    "batch_str": (_bad("point", ("batch",), "abc"), "field 'batch' is a string ('abc'), expected an integer"),
    "batch_bool": (_bad("point", ("batch",), True), "field 'batch' is a boolean"),
    "load_list": (_bad("point", ("load",), [1]), "field 'load' is a list"),
    "window_count": (_bad("point", ("windows", 1, "count"), "x"), "field 'windows[1].count' is a string"),
    "window_null": (_bad("point", ("windows", 0, "errors"), None), "field 'windows[0].errors' is null"),
    "window_item_null": (_bad("point", ("windows", 1), None), "field 'windows[1]' is null, expected an object"),
    "flags_str": (_bad("point", ("validity", "flags"), "stable"), "field 'validity.flags' is a string"),
    "metrics_list": (_bad("point", ("metrics",), []), "field 'metrics' is a list"),
    "cell_config": (_bad("cell", ("config",), "x"), "field 'config' is a string"),
    "slo_points": (_bad("slo", ("points",), "x"), "field 'points' is a string"),
    "slo_point_rate": (_bad("slo", ("points", 0, "rate"), "fast"), "field 'points[0].rate' is a string"),
    "inprocess_latency": (_bad("inprocess", ("latency_s",), [0.1]), "field 'latency_s' is a list"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_is_a_clear_error_naming_file_and_line(tmp_path, case):
    rec, expected = BAD_RECORDS[case]
    run = _copy(tmp_path)
    n = len((run / "records.jsonl").read_text().splitlines()) + 1
    with open(run / "records.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    with pytest.raises(ResultsError) as e:
        write_report(run, tmp_path / "reports")
    msg = str(e.value)
    assert msg.startswith(f"{run / 'records.jsonl'}: line {n}: "), msg
    assert expected in msg, msg
    assert "servingbench" in msg  # the fix names what the file should be
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_legitimate_nulls_and_auto_workers_are_reported(tmp_path):
    """The checks refuse what the report cannot read, not what servingbench writes (null percentiles, "auto")."""
    run = _copy(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["suite"]["generator"] = {"workers": "auto", "remote_workers": 0}
    meta["ended"] = None
    (run / "run.json").write_text(json.dumps(meta))
    rec = _bad("point", ("metrics", "latency_s", "p99"), None)
    rec["validity"] = {"valid": None, "flags": []}
    rec["max_rate"] = None
    with open(run / "records.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    assert write_report(run, tmp_path / "reports").is_file()


BAD_META = {
    "loadavg": ({"environment": {"loadavg_at_start": ["high"]}}, "field 'environment.loadavg_at_start[0]' is a string"),
    "cpu_sets": ({"cpu_sets": {"server": "0-3"}}, "field 'cpu_sets.server' is a string"),
    "command": ({"command": [1, 2]}, "field 'command[0]' is a number (1), expected a string"),
    "suite_list": ({"suite": ["x"]}, "field 'suite' is a list"),
    "models": ({"suite": {"models": [3]}}, "field 'suite.models[0]' is a number"),
    "calibration": ({"calibration": {"points": [1]}}, "field 'calibration.points[0]' is a number"),
    "packages": ({"environment": {"packages": ["torch"]}}, "field 'environment.packages' is a list"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_run_json_the_report_cannot_read_is_a_clear_error(tmp_path, case):
    fields, expected = BAD_META[case]
    run = _copy(tmp_path)
    _set_meta(run, **fields)
    with pytest.raises(ResultsError) as e:
        RunData.load(run)
    assert str(e.value).startswith(f"{run / 'run.json'}: ") and expected in str(e.value), str(e.value)


@pytest.mark.parametrize("garbage", [b"hello\nworld\n\x00\xff\n", b"{not json\n{\"a\": \n", b"\n\n<html>\n"])
def test_garbage_records_file_gives_no_report(tmp_path, garbage):
    run = _copy(tmp_path)
    (run / "records.jsonl").write_bytes(garbage)
    with pytest.warns(UserWarning, match="unreadable"):
        with pytest.raises(ResultsError, match=r"records.jsonl: none of its \d+ non-empty line\(s\) is a readable"):
            write_report(run, tmp_path / "reports")
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())


def test_over_long_record_line_is_skipped_not_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr("servingbench.results.RECORD_LINE_MAX_BYTES", 1000)
    with RunResults.create(tmp_path, "run1", {}) as r:
        r.append({"id": "a"})
        with open(r.records_path, "ab") as f:
            f.write(b'{"id": "' + b"x" * 5000 + b'"}\n')
        r.append({"id": "b"})
        with pytest.warns(UserWarning, match=r"skipped 1 unreadable line\(s\) \(line 2;"):
            assert [x["id"] for x in r.records()] == ["a", "b"]
