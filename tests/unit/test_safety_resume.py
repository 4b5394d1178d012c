"""Issue 15, defects 6, 7 and 12 (the harness side, without servers): resume checks the suite and the plan and never
marks a partial run complete; other harnesses, held results directories and busy processes are warned about and
recorded; the CLI's own stop-signal handlers work whatever dispositions the process inherited.

The suite's cells are stubbed (``run_cell`` / ``run_probe_cell`` record a final status at once), so these tests
exercise ``run_suite``'s bookkeeping, not the frameworks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from servingbench import suite as suite_mod
from servingbench.results import ResultsError, RunResults, concurrent_activity, suite_sha256
from servingbench.scenarios.loader import load_suite

SUITE = """\
name: resume-check
frameworks: [litserve, mosec]
models: [mlp]
deployments:
  - label: a
  - label: b
features: [auth]
workloads:
  - name: closed
    kind: closed_loop
    concurrency: {concurrency}
"""


@pytest.fixture
def stubbed(monkeypatch):
    """run_suite without servers: cells and probes are final at once; no calibration, canary or artifacts.
    ``ran`` lists the cells each call ran; ``interrupt_at`` makes that cell raise KeyboardInterrupt."""
    ran: list[str] = []
    state = {"interrupt_at": None}

    def run_cell(cell, suite, artifacts, results, store, cpus, progress, scratch, allow_remote=False, canary=None):
        if cell.id == state["interrupt_at"]:
            results.set_cell(cell.id, "interrupted", framework=cell.framework, deployment=cell.config.label)
            raise KeyboardInterrupt
        ran.append(cell.id)
        results.set_cell(cell.id, "ok", framework=cell.framework, deployment=cell.config.label)
        results.append({"type": "cell", "id": f"cell:{cell.id}", "cell": cell.id, "status": "ok",
                        "framework": cell.framework, "deployment": cell.config.label})
        return "ok"

    def run_probe_cell(fw, name, suite, artifacts, results, store, cpus, progress):
        cid = f"{fw}/probe:{name}"
        ran.append(cid)
        results.set_cell(cid, "ok", framework=fw, probe=name)
        return "ok"

    class NoCanary:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return None

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(suite_mod, "run_cell", run_cell)
    monkeypatch.setattr(suite_mod, "run_probe_cell", run_probe_cell)
    monkeypatch.setattr(suite_mod, "build_artifacts_for", lambda suite: {})
    monkeypatch.setattr(suite_mod, "_reference_measurements", lambda *a, **k: None)
    monkeypatch.setattr(suite_mod.measure_canary, "Canary", NoCanary)
    monkeypatch.setattr("servingbench.measure.environment.capture", lambda frameworks: {})
    monkeypatch.setattr("servingbench.results.ACTIVITY_SAMPLE_S", 0.05)
    return ran, state


def suite_file(tmp_path: Path, concurrency: str = "[1, 4]", name: str = "suite.yaml", **replace: str) -> Path:
    text = SUITE.format(concurrency=concurrency)
    for a, b in replace.items():
        text = text.replace(a, b)
    path = tmp_path / name
    path.write_text(text)
    return path


def run(path: Path, tmp_path: Path, **kw):
    messages: list[str] = []
    outcome = suite_mod.run_suite(load_suite(path), suite_path=path, out=tmp_path / "results",
                                  progress=messages.append, **kw)
    outcome.results.close()
    return outcome, messages


ALL_CELLS = ["litserve/a", "mosec/a", "litserve/b", "mosec/b"]
ALL_PROBES = ["litserve/probe:auth", "mosec/probe:auth"]


def meta(outcome) -> dict:
    return json.loads(outcome.results.run_json.read_text())


def interrupted_run(tmp_path, stubbed, path):
    """A run interrupted in its third cell: litserve/a and mosec/a done, the rest not."""
    ran, state = stubbed
    state["interrupt_at"] = "litserve/b"
    outcome, _ = run(path, tmp_path)
    assert outcome.interrupted and meta(outcome)["status"] == "interrupted"
    state["interrupt_at"] = None
    ran.clear()
    return outcome.results.path


# ---- defect 6: the plan and the suite are recorded, and a resume is checked against them ----------------------------
def test_new_run_records_plan_and_suite_hash(tmp_path, stubbed):
    path = suite_file(tmp_path)
    outcome, _ = run(path, tmp_path)
    m = meta(outcome)
    assert m["status"] == "complete" and not outcome.partial and outcome.missing == []
    assert m["planned_cells"] == ALL_CELLS and m["planned_probes"] == ALL_PROBES
    assert m["suite_sha256"] == suite_sha256(load_suite(path).model_dump(mode="json"))
    assert m["suite_sha256"] == suite_sha256(m["suite"])  # the hash is of what run.json stores
    assert isinstance(m["concurrent_activity"], list) and m["missing_cells"] == []


def test_hash_ignores_formatting_and_key_order(tmp_path):
    a = suite_file(tmp_path, name="a.yaml")
    b = tmp_path / "b.yaml"
    b.write_text("# same suite, written differently\n" + textwrap.dedent("""\
        models: [{name: mlp}]
        frameworks: [litserve, mosec]
        name: resume-check
        workloads: [{kind: closed_loop, name: closed, concurrency: [1, 4]}]
        features: [auth]
        deployments: [{label: a}, {label: b, workers: 1}]
        """))
    digest = lambda p: suite_sha256(load_suite(p).model_dump(mode="json"))  # noqa: E731
    assert digest(a) == digest(b)
    assert digest(a) != digest(suite_file(tmp_path, "[1, 8]", name="c.yaml"))


def test_resume_with_the_same_suite_runs_only_what_is_missing(tmp_path, stubbed):
    ran, _ = stubbed
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    outcome, messages = run(path, tmp_path, resume=rd)
    assert ran == ["litserve/b", "mosec/b", *ALL_PROBES]
    m = meta(outcome)
    assert m["status"] == "complete" and m["missing_cells"] == [] and not outcome.partial
    assert m["resumes"][-1]["forced"] is False and m["resumes"][-1]["differences"] == []


def test_resume_reports_recovered_torn_lines(tmp_path, stubbed):
    """A crash mid-write leaves a torn last line: the resume says so (warning, progress, run.json) and the next
    record starts on a new line."""
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    with open(rd / "records.jsonl", "ab") as f:
        f.write(b'{"type": "point", "cell": "litserve/b", "metrics": {"requ')
    torn_at = len((rd / "records.jsonl").read_bytes().splitlines())
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable line"):
        outcome, messages = run(path, tmp_path, resume=rd)
    assert any(f"1 torn line(s) (line {torn_at})" in m for m in messages), messages
    m = meta(outcome)
    assert m["resumes"][-1]["torn_lines"] == [torn_at] and m["status"] == "complete"
    with pytest.warns(UserWarning):
        cells = {r["cell"] for r in outcome.results.records("cell")}
    assert cells == set(ALL_CELLS)  # the record after the torn line was not swallowed


def test_resume_refuses_a_records_line_that_is_not_a_record(tmp_path, stubbed):
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    with open(rd / "records.jsonl", "a") as f:
        f.write("[1, 2]\n")
    with pytest.raises(ResultsError, match=r"records.jsonl: line \d+: the record is a list"):
        run(path, tmp_path, resume=rd)
    assert not (rd / ".lock").exists()


def test_resume_with_a_different_suite_is_refused(tmp_path, stubbed):
    ran, _ = stubbed
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    before = (rd / "run.json").read_bytes()
    other = suite_file(tmp_path, "[1, 8]", name="other.yaml")
    with pytest.raises(ResultsError) as e:
        run(other, tmp_path, resume=rd)
    msg = str(e.value)
    run_id = json.loads(before)["run_id"]
    assert f"cannot resume run {run_id} ({rd})" in msg  # the run
    assert str(path) in msg and str(other) in msg  # the run's suite file and the one given
    assert "workloads[0].concurrency[1]: 4 in the run, 8 in the file" in msg  # what differs
    assert "--force" in msg
    assert ran == [] and (rd / "run.json").read_bytes() == before  # nothing ran, nothing was written
    assert not (rd / ".lock").exists()  # the lock was given back
    RunResults.open(rd).close()


def test_resume_with_a_renamed_suite_is_refused(tmp_path, stubbed):
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    other = suite_file(tmp_path, name="renamed.yaml", **{"name: resume-check": "name: something-else"})
    with pytest.raises(ResultsError, match=r"name: 'resume-check' in the run, 'something-else' in the file"):
        run(other, tmp_path, resume=rd)


def test_resume_of_a_run_from_before_the_hash_compares_the_stored_suite(tmp_path, stubbed):
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    m = json.loads((rd / "run.json").read_text())
    del m["suite_sha256"], m["planned_probes"]
    (rd / "run.json").write_text(json.dumps(m))
    other = suite_file(tmp_path, "[2]", name="other.yaml")
    with pytest.raises(ResultsError, match=r"workloads\[0\]\.concurrency: \[1, 4\] in the run, \[2\] in the file"):
        run(other, tmp_path, resume=rd)
    outcome, _ = run(path, tmp_path, resume=rd)  # the same suite: resumed, and hashed from now on
    m = meta(outcome)
    assert m["status"] == "complete" and m["suite_sha256"] == suite_sha256(m["suite"])
    assert m["planned_probes"] == ALL_PROBES  # derived from the stored suite


def test_resume_restricted_by_frameworks_is_refused(tmp_path, stubbed):
    ran, _ = stubbed
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    with pytest.raises(ResultsError) as e:
        run(path, tmp_path, resume=rd, frameworks=["litserve"])
    msg = str(e.value)
    assert "--frameworks litserve leaves out 2 unfinished planned cell(s) of the run: mosec/b, mosec/probe:auth" in msg
    assert "resume without --frameworks" in msg and "--force" in msg
    assert ran == []


def test_resume_restricted_to_finished_frameworks_only_is_fine(tmp_path, stubbed):
    """--frameworks that leaves out only finished cells loses nothing: allowed, and the run completes."""
    ran, state = stubbed
    path = suite_file(tmp_path, **{"features: [auth]\n": ""})
    state["interrupt_at"] = "mosec/b"
    outcome, _ = run(path, tmp_path)
    rd = outcome.results.path
    state["interrupt_at"] = None
    ran.clear()
    outcome, _ = run(path, tmp_path, resume=rd, frameworks=["mosec"])  # every litserve cell is already final
    assert ran == ["mosec/b"] and meta(outcome)["status"] == "complete"


def test_forced_restricted_resume_is_partial_never_complete(tmp_path, stubbed):
    ran, _ = stubbed
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    outcome, messages = run(path, tmp_path, resume=rd, frameworks=["litserve"], force=True)
    assert ran == ["litserve/b", "litserve/probe:auth"]
    m = meta(outcome)
    assert m["status"] == "partial" and outcome.partial and not outcome.failed
    assert outcome.missing == m["missing_cells"] == ["mosec/b", "mosec/probe:auth"]
    assert m["cells"]["mosec/b"]["status"] == "not_run" and "--frameworks litserve" in m["cells"]["mosec/b"]["reason"]
    assert m["resumes"][-1]["forced"] is True and m["resumes"][-1]["left_out"] == ["mosec/b", "mosec/probe:auth"]
    assert any("partial: 2 planned cell(s) have no final status" in x and "--resume" in x for x in messages)
    # the report lists the cells that never ran
    from servingbench.report.data import RunData

    from servingbench.report.build import write_report

    assert "not_run" in set(RunData.load(rd).cell_df["status"])
    html = write_report(rd, tmp_path / "reports").read_text()
    assert "partial" in html and "mosec/b" in html
    # a later plain resume finishes it
    ran.clear()
    outcome, _ = run(path, tmp_path, resume=rd)
    assert ran == ["mosec/b", "mosec/probe:auth"]
    assert meta(outcome)["status"] == "complete" and meta(outcome)["missing_cells"] == []


def test_forced_resume_with_a_changed_suite_records_the_differences(tmp_path, stubbed):
    ran, _ = stubbed
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    original = json.loads((rd / "run.json").read_text())
    # the new suite drops deployment b: its unfinished cells can never be run by it
    other = suite_file(tmp_path, name="other.yaml", **{"  - label: b\n": ""})
    outcome, _ = run(other, tmp_path, resume=rd, force=True)
    m = meta(outcome)
    last = m["resumes"][-1]
    assert last["forced"] and last["suite_file"] == str(other)
    assert any(d.startswith("deployments") for d in last["differences"])
    assert set(last["left_out"]) == {"litserve/b", "mosec/b"}
    assert m["suite"] == original["suite"] and m["suite_sha256"] == original["suite_sha256"]  # still the run's suite
    assert m["status"] == "partial" and set(m["missing_cells"]) == {"litserve/b", "mosec/b"}


def test_probe_cells_count_towards_completion(tmp_path, stubbed):
    """A features-only run: its probe cells are the plan."""
    ran, _ = stubbed
    path = tmp_path / "features.yaml"
    path.write_text("name: feats\nframeworks: [litserve, mosec]\nmodels: [mlp]\nfeatures: [auth, tls]\n")
    outcome, _ = run(path, tmp_path, frameworks=["litserve"])
    m = meta(outcome)
    assert m["planned_cells"] == [] and m["planned_probes"] == ["litserve/probe:auth", "litserve/probe:tls"]
    assert m["status"] == "complete"


# ---- the CLI: --force, refusal and partial exit codes ----------------------------------------------------------------
def _cli(*args: str):
    from servingbench.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_force_needs_resume(tmp_path):
    r = _cli("run", str(suite_file(tmp_path)), "--force")
    assert r.exit_code == 2 and "--force only applies with --resume" in " ".join(r.output.split())


def test_cli_resume_refusal_and_partial_exit_codes(tmp_path, stubbed):
    path = suite_file(tmp_path)
    rd = interrupted_run(tmp_path, stubbed, path)
    other = suite_file(tmp_path, "[1, 8]", name="other.yaml")
    r = _cli("run", str(other), "--resume", str(rd))
    assert r.exit_code == 2 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    text = " ".join(r.output.split())
    assert "cannot resume run" in text and "--force" in text and "Traceback" not in text
    r = _cli("run", str(path), "--resume", str(rd), "-f", "litserve", "--force")
    assert r.exit_code == 1, r.output
    assert "partial: 2 planned cell(s)" in " ".join(r.output.split())
    assert json.loads((rd / "run.json").read_text())["status"] == "partial"
    r = _cli("run", str(path), "--resume", str(rd))
    assert r.exit_code == 0, r.output
    assert json.loads((rd / "run.json").read_text())["status"] == "complete"


# ---- defect 7: other harnesses, held results directories and busy processes ------------------------------------------
def _detached(tmp_path: Path, argv: list[str]) -> int:
    """A process that is not this one's descendant (started through an intermediate that exits at once)."""
    pidfile = tmp_path / f"pid-{time.monotonic_ns()}"
    starter = ("import subprocess, sys\n"
               "p = subprocess.Popen(sys.argv[2:], start_new_session=True, stdin=subprocess.DEVNULL,\n"
               "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
               "open(sys.argv[1], 'w').write(str(p.pid))\n")
    subprocess.run([sys.executable, "-c", starter, str(pidfile), *argv], check=True, timeout=30)
    return int(pidfile.read_text())


@pytest.fixture
def others(tmp_path):
    """Start ``python -c CODE ARGS`` (or, with ``script=``, ``python SCRIPT ARGS``) outside this process's tree;
    killed at teardown."""
    pids: list[int] = []

    def start(code: str, *args: str, ready: Path | None = None, script: Path | None = None) -> int:
        argv = [sys.executable, str(script), *args] if script else [sys.executable, "-c", code, *args]
        pids.append(_detached(tmp_path, argv))
        deadline = time.monotonic() + 20
        while ready is not None and not ready.exists():
            assert time.monotonic() < deadline, "helper process never got ready"
            time.sleep(0.05)
        return pids[-1]

    yield start
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


HOLD_LOCK = """
import sys, time
from servingbench.results import RunResults
r = RunResults.open(sys.argv[1])
open(sys.argv[2], "w").write("ok")
time.sleep(120)
"""


def test_other_harness_held_results_dir_and_busy_process_are_warned_and_recorded(tmp_path, stubbed, others,
                                                                                 monkeypatch):
    # the real 1 s sample; a low bar, so a busy loop counts even on a loaded 2-core machine
    monkeypatch.setattr("servingbench.results.ACTIVITY_SAMPLE_S", 1.0)
    monkeypatch.setattr("servingbench.results.BUSY_CPU_PCT", 10.0)
    other_dir = RunResults.create(tmp_path / "results", "someone-elses-run", {})
    other_dir.close()
    ready = tmp_path / "holder-ready"
    holder = others(HOLD_LOCK, str(other_dir.path), str(ready), ready=ready)
    fake = tmp_path / "bin" / "servingbench"  # `python .../bin/servingbench run their-suite.yaml`
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(120)\n")
    harness = others("", "run", "their-suite.yaml", script=fake)
    busy = others("import time\nend = time.time() + 120\nwhile time.time() < end: pass")
    time.sleep(0.3)
    path = suite_file(tmp_path)
    outcome, messages = run(path, tmp_path)
    acts = meta(outcome)["concurrent_activity"]
    by_pid = {(a["kind"], a["pid"]): a for a in acts}
    assert ("servingbench_run", harness) in by_pid
    assert by_pid[("servingbench_run", harness)]["argv"][-2:] == ["run", "their-suite.yaml"]
    locked = by_pid[("results_locked", holder)]
    assert locked["path"] == str(other_dir.path) and f"pid {holder}" in locked["warning"]
    hot = by_pid[("busy_process", busy)]
    assert hot["cpu_pct"] > 10 and hot["name"].startswith("python") and "argv" not in hot  # name only
    assert all(a["phase"] == "start" and a["at"] for a in acts)
    for pid in (harness, holder, busy):
        assert any(f"{pid}" in m and m.startswith("[yellow]warning:") for m in messages), messages
    # a resume checks again and adds what it found
    rd = outcome.results.path
    m = json.loads((rd / "run.json").read_text())
    m["cells"]["mosec/b"]["status"] = "running"
    (rd / "run.json").write_text(json.dumps(m))
    outcome, _ = run(path, tmp_path, resume=rd)
    phases = [a["phase"] for a in meta(outcome)["concurrent_activity"]]
    assert "start" in phases and "resume" in phases


def test_own_children_and_own_lock_are_not_activity(tmp_path, monkeypatch):
    monkeypatch.setattr("servingbench.results.ACTIVITY_SAMPLE_S", 0.5)
    script = tmp_path / "servingbench"  # looks like a harness, and is busy: but it is this process's child
    script.write_text("import time\nend = time.time() + 30\nwhile time.time() < end: pass\n")
    child = subprocess.Popen([sys.executable, str(script), "run", "x.yaml"])
    mine = RunResults.create(tmp_path, "mine", {})
    try:
        time.sleep(0.3)
        acts = concurrent_activity([tmp_path])
        assert child.pid not in {a["pid"] for a in acts}
        assert not [a for a in acts if a["kind"] == "results_locked"]
    finally:
        child.kill()
        child.wait()
        mine.close()


@pytest.mark.parametrize("argv,expected", [
    (["/venv/bin/python", "/venv/bin/servingbench", "run", "s.yaml"], True),
    (["servingbench", "run", "s.yaml", "--resume", "r"], True),
    (["python", "-m", "servingbench.cli", "run", "s.yaml"], True),
    (["/usr/bin/python3.11", "-u", "-X", "dev", "/venv/bin/servingbench", "run", "s.yaml"], True),
    (["flock", "/tmp/l", "servingbench", "run", "s.yaml"], False),  # a wrapper (or a queued run): its child counts
    (["python", "-c", "import x", "servingbench", "run"], False),
    (["python", "-m", "servingbench.cli", "validate", "run"], False),
    (["servingbench", "report", "results/run"], False),
    (["bash", "-c", "servingbench run s.yaml"], False),  # a shell string: its servingbench child is the harness
    (["/home/u/servingbench/.venv/bin/python", "-m", "pytest", "run"], False),
    (["vim", "servingbench.py"], False),
])
def test_what_counts_as_a_harness(argv, expected):
    from servingbench.results import _is_harness_run

    assert _is_harness_run(argv) is expected


# ---- defect 12: the CLI's own stop-signal handlers -------------------------------------------------------------------
SIGNAL_CHILD = """
import os, signal, sys, time
# as nohup / `cmd &` / CI runners leave it: SIGINT and SIGHUP ignored, SIGTERM blocked
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
from servingbench.cli import _stop_signals
sig = getattr(signal, sys.argv[1])
try:
    with _stop_signals():
        os.kill(os.getpid(), sig)
        time.sleep(5)
    print("no interrupt")
except KeyboardInterrupt as e:
    print("interrupted:", e)
# the inherited dispositions and mask are back
print("restored:", signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGHUP) is signal.SIG_IGN,
      signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_stop_signals_work_whatever_was_inherited(sig):
    p = subprocess.run([sys.executable, "-c", SIGNAL_CHILD, sig], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"interrupted: signal {sig}" in p.stdout, p.stdout + p.stderr
    assert "restored: True True True" in p.stdout
