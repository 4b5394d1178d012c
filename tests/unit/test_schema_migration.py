"""Issue 19: result files carry a schema version; older versions are migrated when read, newer ones refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from servingbench.report.data import RunData
from servingbench.results import SCHEMA_VERSION, ResultsError, RunResults, migrate_record, point_load

FIXTURE = Path(__file__).parent.parent / "fixtures" / "results-schema1"


@pytest.fixture
def v1_run(tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_the_fixture_is_schema_1_on_disk(v1_run):
    assert json.loads((v1_run / "run.json").read_text())["schema"] == 1
    first = json.loads((v1_run / "records.jsonl").read_text().splitlines()[0])
    assert first["schema"] == 1 and "load_level" not in first


def test_a_schema_1_run_loads_migrated(v1_run):
    assert SCHEMA_VERSION == 2
    d = RunData.load(v1_run)
    assert d.meta["schema"] == SCHEMA_VERSION and d.meta["schema_migrated_from"] == 1
    assert d.meta["plan"] is None  # not known for schema-1 runs
    assert d.points and all(p["schema"] == SCHEMA_VERSION for p in d.points)
    for p in d.points:
        kind, level = point_load(p["load"])
        assert (p["load_kind"], p["load_level"]) == (kind, level) and level is not None
    assert (v1_run / "records.jsonl").read_text().count('"load_level"') == 0  # read-only: nothing rewritten


def test_a_schema_1_run_still_reports(v1_run, tmp_path):
    from servingbench.report.build import write_report

    html = write_report(v1_run, tmp_path / "reports")
    assert html.exists() and "litserve" in html.read_text()


def test_a_resumed_schema_1_run_is_written_back_as_the_current_schema(v1_run):
    with RunResults.open(v1_run) as r:
        r.update_run(note="touched")
    data = json.loads((v1_run / "run.json").read_text())
    assert data["schema"] == SCHEMA_VERSION and data["schema_migrated_from"] == 1


def test_a_newer_schema_is_refused_with_the_fix(v1_run):
    meta = json.loads((v1_run / "run.json").read_text())
    meta["schema"] = SCHEMA_VERSION + 1
    (v1_run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ResultsError, match=r"newer servingbench .*upgrade servingbench"):
        RunData.load(v1_run)


def test_a_record_from_a_newer_schema_is_refused_naming_the_line(v1_run):
    with open(v1_run / "records.jsonl", "a") as f:
        f.write(json.dumps({"schema": SCHEMA_VERSION + 1, "type": "point", "id": "future"}) + "\n")
    n = (v1_run / "records.jsonl").read_text().count("\n")
    with pytest.raises(ResultsError, match=rf"line {n}: schema {SCHEMA_VERSION + 1} was written by a newer"):
        RunData.load(v1_run)


@pytest.mark.parametrize("bad", ["2", 0, -1, 1.5, True, None])
def test_a_schema_that_is_not_a_version_is_a_clear_error(v1_run, bad):
    meta = json.loads((v1_run / "run.json").read_text())
    meta["schema"] = bad
    (v1_run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ResultsError, match="schema"):
        RunData.load(v1_run)


def test_migrate_record_fills_the_load_of_every_kind():
    assert migrate_record({"schema": 1, "type": "point", "load": {"rate": 12.5}})["load_level"] == 12.5
    shape = migrate_record({"type": "point", "load": {"concurrency": 8, "from_concurrency": 2}})
    assert (shape["load_kind"], shape["load_level"], shape["schema"]) == ("concurrency", 8.0, SCHEMA_VERSION)
    assert migrate_record({"schema": 1, "type": "cell"}) == {"schema": SCHEMA_VERSION, "type": "cell"}
