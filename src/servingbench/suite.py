"""Run a suite: plan the cells (framework x deployment), run each to a final status, then the feature probes.

One *cell* is one server lifetime.  A cell either finishes ``ok`` with its records, or is recorded ``failed``
(reason + server log tail) or ``skipped`` (unsupported / not installed), and the suite goes on.  Cells are final
once recorded, so ``run --resume`` only runs what is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from servingbench import records
from servingbench.adapters import registry
from servingbench.contract import AdapterUnavailable, Secrets, UnsupportedDeployment
from servingbench.deploy.live import (
    LiveDeployment, VerificationError, make_deployment, runtime_record, server_python_runtime,
)
from servingbench.load.kinds import RUNNERS, CellRun, emit
from servingbench.load.point import WarmGenerator
from servingbench.load.pool import InputPool
from servingbench.measure import canary as measure_canary
from servingbench.measure.resources import tree_memory
from servingbench.results import FINAL, ResultsError, RunResults
from servingbench.runtime import isolation, supervisor
from servingbench.runtime.supervisor import ServerError
from servingbench.scenarios.schema import DeploymentConfig, Suite

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Cell:
    """One server lifetime: a framework x deployment, in one repeat of the suite (repeats restart the server)."""

    framework: str
    config: DeploymentConfig
    repeat: int = 0
    repeats: int = 1

    @property
    def id(self) -> str:
        base = f"{self.framework}/{self.config.label}"
        return base if self.repeats == 1 else f"{base}#r{self.repeat}"


def suite_repeats(suite: Suite) -> int:
    """How many times the suite's cells run: the most repeats any workload asks for."""
    return max((suite.measurement_for(w).repeats for w in suite.workloads), default=1)


def plan_cells(suite: Suite, frameworks: list[str] | None = None) -> list[Cell]:
    chosen = frameworks or suite.frameworks
    unknown = [f for f in chosen if f not in suite.frameworks]
    if unknown:
        raise ValueError(
            f"--frameworks {unknown} not in the suite's frameworks {suite.frameworks}"
        )
    # Repeats outermost: A B C A B C, so a slow drift of the machine spreads over every framework alike.
    n = suite_repeats(suite)
    return [
        Cell(fw, d, rep, n)
        for rep in range(n)
        for d in suite.deployments
        for fw in chosen
        if d.frameworks is None or fw in d.frameworks
    ]


#: An SLO search's probes are not known in advance: the estimate (at most ``max_steps``) a live ETA starts from.
SLO_PROBES_ESTIMATE = 8


def planned_points(suite: Suite, cell: Cell) -> int:
    """How many load points ``cell`` measures (SLO searches: an estimate, see :data:`SLO_PROBES_ESTIMATE`)."""
    n = 0
    for w in suite.workloads:
        if cell.repeat >= suite.measurement_for(w).repeats:
            continue
        models = w.models or [m.name for m in suite.models]
        groups = 1 if (w.weights and len(models) > 1) else len(models)
        per = {"closed_loop": lambda: len(w.concurrency), "open_loop": lambda: len(w.rates),
               "shape": lambda: len(w.stages),
               "slo_search": lambda: min(w.max_steps, SLO_PROBES_ESTIMATE) + int(w.confirm)}[w.kind]()
        n += groups * per
    return n


def point_seconds(suite: Suite) -> float:
    """A prior for one point's wall time (warm-up + the stable windows + 2 s of generator start), before any
    point has finished."""
    ms = [suite.measurement_for(w) for w in suite.workloads] or [suite.measurement]
    return sum(m.warmup + m.window * m.windows + 2.0 for m in ms) / len(ms)


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.update(range(int(a), int(b) + 1))
        elif part.strip():
            cpus.add(int(part))
    return cpus


def cpu_sets(spec: Any) -> tuple[set[int] | None, set[int] | None]:
    """(server, generator) CPU sets.  ``auto``: the generator gets the last allowed core, the server the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "none" or spec is None:
        return None, None
    if spec == "auto":
        if len(allowed) < 2:
            return None, None
        n_gen = max(1, len(allowed) // 4)
        return set(allowed[:-n_gen]), set(allowed[-n_gen:])
    server = parse_cpus(spec.server) if spec.server else None
    gen = parse_cpus(spec.generator) if spec.generator else None
    return server, gen


def _setup_cell(cell: Cell, suite: Suite, artifacts: dict[str, Any], allow_remote: bool) -> tuple:
    """(adapter, deployment, remote target, python, runtime) of a cell; raises what makes it skipped or failed."""
    adapter = registry.get(cell.framework)
    remote = suite.targets.get(cell.framework)
    # A remote server needs only the adapter's pure codec: no interpreter, no runtime, no install.
    python, runtime = server_python_runtime(cell.framework, suite) if remote is None else (None, None)
    if remote is None and not python:  # an isolated interpreter was checked instead
        adapter.check_available()
    deployment = make_deployment(cell.framework, cell.config, [artifacts[m.name] for m in suite.models], suite.device)
    adapter.validate(deployment)
    if remote is not None and not remote.is_loopback() and not allow_remote:
        raise UnsupportedDeployment(
            f"target {remote.url} is not on this machine: pass --allow-remote to send load to another host")
    return adapter, deployment, remote, python, runtime


def _remote_secrets(framework: str, remote: Any) -> Secrets:
    """Credentials for a server someone else runs: the token from its environment variable (never stored)."""
    token = os.environ.get(remote.token_env) if remote.token_env else None
    if remote.token_env and not token:
        raise UnsupportedDeployment(
            f"target {framework}: environment variable {remote.token_env} (token_env) is not set")
    return Secrets(token=token, ca_cert=Path(remote.ca_file) if remote.ca_file else None,
                   client_cert=Path(remote.client_cert) if remote.client_cert else None,
                   client_key=Path(remote.client_key) if remote.client_key else None)


def _final(results: RunResults, base: dict, status: str, reason: str, progress: Progress) -> str:
    results.set_cell(base["cell"], status, reason=reason, **base)
    results.append(records.cell_record(base, status=status, reason=reason))
    progress(f"[{'red' if status == 'failed' else 'yellow'}]{base['cell']}: {status}: {reason}")
    return status


def run_cell(cell: Cell, suite: Suite, artifacts: dict[str, Any], results: RunResults, secrets_store,
             cpus: tuple[set[int] | None, set[int] | None], progress: Progress, scratch: Path,
             allow_remote: bool = False, canary: Any = None) -> str:
    """Run one cell to a final status and record it: start, verify, every workload, stop.  Returns the status."""
    cid = cell.id
    safe = cid.replace("/", "-").replace("#", "-")  # litserve/default#r1 -> litserve-default-r1
    log_dir = results.logs / safe
    log_dir.mkdir(parents=True, exist_ok=True)
    base = {**records.cell_base(cid, cell.framework, cell.config.label), "repeat": cell.repeat}
    try:
        adapter, deployment, remote, python, runtime = _setup_cell(cell, suite, artifacts, allow_remote)
    except (AdapterUnavailable, UnsupportedDeployment, ImportError) as e:
        return _final(results, base, "failed" if isinstance(e, ImportError) else "skipped", str(e), progress)
    if remote is not None:
        try:
            secrets = _remote_secrets(cell.framework, remote)
        except UnsupportedDeployment as e:
            return _final(results, base, "failed", str(e), progress)
        results.set_redactions([*secrets_store.sensitive_strings(), secrets.token or ""])
    else:
        secrets = secrets_store.make(auth=deployment.auth, tls=bool(deployment.tls))
        results.set_redactions(secrets_store.sensitive_strings())
    results.set_cell(cid, "running", **base)
    cell_rec = records.cell_record(base, config=deployment.describe(), framework_version=isolation.distribution_version(
        python, adapter.distribution) if python else adapter.framework_version())
    if python or runtime:
        cell_rec["runtime"] = runtime_record(python, runtime)
    if remote is not None:
        cell_rec["remote"] = {"url": remote.url, "urls": remote.urls}
    t0 = time.perf_counter()
    live = LiveDeployment(adapter, deployment, results.manifests / safe, log_dir, secrets, server_cpus=cpus[0],
                          startup_timeout=suite.startup_timeout, remote=remote, python=python, runtime=runtime)
    run = CellRun(live, suite, None, cpus[1], scratch, log_dir, results, base, progress,
                  generator_ceiling_rps=(results.read_run().get("calibration") or {}).get("ceiling_rps"),
                  repeat=cell.repeat)
    try:
        before = canary.measure(f"{cid} before") if canary is not None else None
        if remote is None and suite.inprocess_limit:  # the model alone on the server's cores, now: the limit
            run.limits = _cell_limits(cell, suite, deployment, cpus[0], scratch, log_dir, results)
        status = _measure_cell(live, run, cell_rec, cpus)
        if before is not None:
            cell_rec["canary"] = measure_canary.compare(before, canary.measure(f"{cid} after"))
            results.update_run(canary=canary.summary())
    except KeyboardInterrupt:
        results.set_cell(cid, "interrupted", **base)
        raise
    except Exception as e:  # noqa: BLE001 - a failing framework must not stop the suite
        status = "failed"
        cell_rec["reason"] = f"{type(e).__name__}: {e}"
        cell_rec["log_tail"] = "\n".join(s.log_tail(30) for s in live.servers)
        if isinstance(e, VerificationError):
            cell_rec["verification"] = e.details
        if not isinstance(e, (ServerError, VerificationError)):
            cell_rec["traceback"] = traceback.format_exc(limit=8)
        progress(f"[red]{cid}: failed: {str(e).splitlines()[0]}")
    finally:
        run.flush(machine_speed_changed=bool((cell_rec.get("canary") or {}).get("changed")))
    if status == "ok" and run.all_points_failed():
        status, cell_rec["reason"] = "failed", "every load point failed (no request answered within the rules)"
    cell_rec.update(status=status, seconds=time.perf_counter() - t0, stop=[r.__dict__ for r in live.stop_reports])
    results.append(cell_rec)
    results.set_cell(cid, status, reason=cell_rec.get("reason"), cold_start_s=cell_rec.get("cold_start_s"), **base)
    return status


def _cell_limits(cell: Cell, suite: Suite, deployment: Any, cpus: set[int] | None, scratch: Path, log_dir: Path,
                 results: RunResults) -> list[dict[str, Any]]:
    """The in-process limit of this cell's deployment (same threads, format, workers, batches, on its cores)."""
    from servingbench.measure.inprocess import limits_for

    batches = sorted({w.batch for w in suite.workloads}) or [1]
    found = limits_for([(m.name, m) for m in deployment.models], batches,
                       [(deployment.threads, deployment.model_format)], deployment.device, cpus, scratch, log_dir,
                       workers=deployment.workers, warmup_s=0.3, duration_s=1.0, tag=f"inprocess-{cell.repeat}")
    out = []
    for r in found:
        rec = {**records.inprocess_record(r), "cell": cell.id, "framework": cell.framework,
               "deployment": cell.config.label, "repeat": cell.repeat}
        rec["id"] += f":{cell.id}"
        results.append(rec)
        out.append(rec)
    return out


def _measure_cell(live: LiveDeployment, run: CellRun, cell_rec: dict, cpus: tuple) -> str:
    """Start and verify the deployment, run every workload through its kind's runner, stop; the cell's status."""
    cid, progress, suite = run.base["cell"], run.progress, run.suite
    progress(f"{cid}: starting")
    with live:
        cell_rec.update(
            ready_s=live.ready_s, cold_start_s=live.cold_start_s, verification=live.verification,
            memory_idle=tree_memory(live.processes()), argv=live.launch_argv,
            server_cpus=sorted(cpus[0]) if cpus[0] else None, generator_cpus=sorted(cpus[1]) if cpus[1] else None,
        )
        if live.remote is None:
            progress(f"{cid}: ready in {live.ready_s:.1f} s, first correct answer at {live.cold_start_s:.1f} s")
        else:
            progress(f"{cid}: remote target {live.remote.url} verified")
        run.pool = InputPool(live)
        with WarmGenerator() as run.warm:
            for w in suite.workloads:
                RUNNERS[w.kind].run(run, w)
        run.warm = None
    survivors = [s for r in live.stop_reports for s in r.survivors]
    if survivors:
        cell_rec["reason"] = f"processes survived the stop: {survivors}"
        return "failed"
    return "ok"


def run_probe_cell(fw: str, name: str, suite: Suite, artifacts: dict[str, Any], results: RunResults, store,
                   cpus: tuple[set[int] | None, set[int] | None], progress: Progress) -> str:
    """One feature probe on one framework: verdict records with evidence, or a failed cell with the reason."""
    from servingbench.probes import ProbeContext, run_probe

    cid = f"{fw}/probe:{name}"
    safe = cid.replace("/", "-").replace(":", "-")
    results.set_cell(cid, "running", framework=fw, probe=name)
    progress(f"{cid}: probing")
    try:
        python, runtime = server_python_runtime(fw, suite)
        ctx = ProbeContext(fw, artifacts, store, results.manifests / safe, results.logs / safe, cpus[0],
                           startup_timeout=suite.startup_timeout, python=python, runtime=runtime)
    except AdapterUnavailable as e:  # as run_cell: an unusable interpreter skips the cell, with the reason
        results.set_cell(cid, "skipped", framework=fw, probe=name, reason=str(e))
        progress(f"[yellow]{cid}: skipped: {e}")
        return "skipped"
    except Exception as e:  # noqa: BLE001 - not installed, broken entry point
        results.set_cell(cid, "failed", framework=fw, probe=name, reason=f"{type(e).__name__}: {e}")
        return "failed"
    recs = run_probe(name, ctx)
    results.set_redactions(store.sensitive_strings())
    for r in recs:
        if python or runtime:  # as run_cell's cell record: where the probed servers ran
            r["runtime"] = runtime_record(python, runtime)
        results.append(r)
        progress(f"{fw} {r['feature']}: {r['verdict']}" + (f" ({r['reason']})" if r["reason"] else ""))
    results.set_cell(cid, "ok", framework=fw, probe=name, verdicts={r["feature"]: r["verdict"] for r in recs})
    return "ok"


@dataclass
class SuiteOutcome:
    results: RunResults
    statuses: dict[str, str]
    interrupted: bool = False
    missing: list[str] = field(default_factory=list)
    """Planned cells (run.json planned_cells + planned_probes) without a final status: the run is ``partial``."""

    @property
    def partial(self) -> bool:
        return bool(self.missing) and not self.interrupted

    @property
    def failed(self) -> list[str]:
        return [c for c, s in self.statuses.items() if s == "failed"]


def build_artifacts_for(suite: Suite) -> dict[str, Any]:
    """Every model's artifacts (built once, cached).  A user model is loaded and called first
    (:func:`servingbench.models.user.check_user_model`): a model that does not match its spec fails here, before
    any server starts."""
    from servingbench.models import build_artifacts, get_model
    from servingbench.models.user import check_user_model, parse_entry

    out = {}
    for m in suite.models:
        if m.user:
            spec, _ = check_user_model(parse_entry(m.user_entry(), Path.cwd()))
            out[m.name] = build_artifacts(spec)
        else:
            out[m.name] = build_artifacts(get_model(m.name, payload=m.payload, **m.params))
    return out


def _open_results(suite: Suite, suite_path: Path, out: Path, resume: Path | None, cells: list[Cell],
                  cpus: tuple, probes: list[tuple[str, str]] = (), *, frameworks: list[str] | None = None,
                  force: bool = False, activity: list[dict[str, Any]] = (),
                  progress: Progress | None = None) -> tuple[RunResults, set[str]]:
    """The run's results directory (new, or the one resumed) and the cells already final in it.

    A new run records the plan (``planned_cells``, ``planned_probes``) and ``suite_sha256``.  A resume checks the
    suite against the run's (:func:`_resume_problems`) and refuses a mismatch unless ``force``; every resume is
    recorded in ``resumes``.  ``activity`` (:func:`servingbench.results.concurrent_activity`) is added to
    ``concurrent_activity``.  Torn lines of records.jsonl (a crash mid-write) are counted, warned about (a
    UserWarning and ``progress``) and recorded in the resume's entry; the next append starts on a new line.
    """
    from servingbench.measure.environment import capture
    from servingbench.results import new_run_id, suite_sha256

    suite_json = json.loads(json.dumps(suite.model_dump(mode="json"), default=str))
    digest = suite_sha256(suite_json)
    cell_ids = [c.id for c in cells]
    probe_ids = [f"{fw}/probe:{name}" for fw, name in probes]
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    seen = [{**{k: v for k, v in a.items() if k != "text"}, "warning": a["text"], "at": now,
             "phase": "resume" if resume else "start"} for a in activity]
    if resume:
        results = RunResults.open(Path(resume).absolute())
        try:
            meta = results.read_run()
            done = results.finished_cells()
            problems, left_out = _resume_problems(meta, suite_json, digest, cell_ids + probe_ids, done, frameworks)
            if (problems or left_out) and not force:
                raise ResultsError(_resume_refusal(meta, results.path, suite_path, problems, left_out, frameworks))
            results.numbered_records()  # torn lines: warned about; a line that is not a record: ResultsError
            torn = list(results.torn_line_numbers)
            if torn and progress is not None:
                progress(f"[yellow]warning: {results.records_path}: {len(torn)} torn line(s) (line "
                         f"{', '.join(map(str, torn[:10]))}) from an earlier crash are skipped; new records start on "
                         "a new line")
            planned_probes = meta.get("planned_probes")
            if planned_probes is None:  # a run from before planned_probes: the probes its suite asked for
                planned_probes = _old_planned_probes(meta)
            resumes = [*(meta.get("resumes") or []),
                       {"at": now, "suite_file": str(suite_path), "suite_sha256": digest, "frameworks": frameworks,
                        "forced": bool(problems or left_out), "differences": problems, "left_out": left_out,
                        "torn_lines": torn}]
            update: dict[str, Any] = dict(
                status="running", resumed_at=now, resumes=resumes,
                planned_cells=list(dict.fromkeys([*(meta.get("planned_cells") or []), *cell_ids])),
                planned_probes=list(dict.fromkeys([*planned_probes, *probe_ids])),
                concurrent_activity=[*(meta.get("concurrent_activity") or []), *seen])
            if not meta.get("suite_sha256") and not problems:
                update["suite_sha256"] = digest  # an older run whose stored suite matched: hash it from now on
            results.update_run(**update)
        except BaseException:
            results.close()
            raise
        return results, done
    meta = {
        "suite": suite_json,
        "suite_sha256": digest,
        "suite_file": str(suite_path),
        "suite_text": suite_path.read_text() if suite_path.is_file() else None,
        "command": sys.argv,
        "started": now,
        "environment": capture(suite.frameworks),
        "cpu_sets": {"server": sorted(cpus[0]) if cpus[0] else None,
                     "generator": sorted(cpus[1]) if cpus[1] else None},
        "planned_cells": cell_ids,
        "planned_probes": probe_ids,
        "concurrent_activity": seen,
    }
    return RunResults.create(Path(out).absolute(), new_run_id(suite.name), meta), set()


def _old_planned_probes(meta: dict[str, Any]) -> list[str]:
    suite = meta.get("suite") if isinstance(meta.get("suite"), dict) else {}
    fws = list(dict.fromkeys(c.split("/", 1)[0] for c in meta.get("planned_cells") or [] if isinstance(c, str)))
    fws = fws or [f for f in suite.get("frameworks") or [] if isinstance(f, str)]
    return [f"{fw}/probe:{name}" for fw in fws for name in suite.get("features") or [] if isinstance(name, str)]


def _resume_problems(meta: dict[str, Any], suite_json: dict[str, Any], digest: str, plan: list[str],
                     done: set[str], frameworks: list[str] | None) -> tuple[list[str], list[str]]:
    """``(differences, left_out)``: how the suite differs from the run's (name, then content: by ``suite_sha256``,
    or the stored ``suite`` of a run from before the hash), and the run's unfinished planned cells this
    invocation would not run (``--frameworks``, or a suite that no longer plans them)."""
    from servingbench.results import json_differences

    stored = meta.get("suite")
    problems: list[str] = []
    if not isinstance(stored, dict):
        problems.append("the run records no suite to compare with")
    else:
        if stored.get("name") != suite_json.get("name"):
            problems.append(f"name: {stored.get('name')!r} in the run, {suite_json.get('name')!r} in the file")
        same = meta["suite_sha256"] == digest if meta.get("suite_sha256") else stored == suite_json
        if not same:
            diffs = [d for d in json_differences(stored, suite_json) if not d.startswith("name:")]
            if meta.get("suite_sha256") and not diffs and not problems:
                diffs = [f"content: sha256 {meta['suite_sha256'][:16]}... in the run, {digest[:16]}... in the file"]
            problems += diffs
    planned = [*(meta.get("planned_cells") or []),
               *(meta.get("planned_probes") if meta.get("planned_probes") is not None else _old_planned_probes(meta))]
    left_out = [c for c in dict.fromkeys(planned) if isinstance(c, str) and c not in done and c not in plan]
    return problems, left_out


def _resume_refusal(meta: dict[str, Any], path: Path, suite_path: Path, problems: list[str], left_out: list[str],
                    frameworks: list[str] | None) -> str:
    run = f"run {meta.get('run_id')} ({path})"
    lines = []
    if problems:
        lines.append(f"cannot resume {run}: it was made from suite {(meta.get('suite') or {}).get('name')!r} "
                     f"({meta.get('suite_file') or 'file unknown'}), and {suite_path} differs:")
        lines += [f"  - {p}" for p in problems]
    if left_out:
        shown = ", ".join(left_out[:8]) + (f" and {len(left_out) - 8} more" if len(left_out) > 8 else "")
        why = f"--frameworks {','.join(frameworks)}" if frameworks else f"{suite_path}"
        lines.append(f"{'and ' if problems else f'cannot resume {run}: '}{why} leaves out {len(left_out)} "
                     f"unfinished planned cell(s) of the run: {shown}")
    fix = [f"resume with the run's suite file ({meta.get('suite_file') or 'the one it was made from'})"
           if problems else "resume without --frameworks"]
    lines.append(f"Fix: {' and '.join(fix)}; or pass --force to resume anyway (the run records what differs, "
                 "and it stays 'partial' until every planned cell has a final status).")
    return "\n".join(lines)


#: a file where a calibration is kept and reused by later runs with the same CPU sets and generator (the tests set
#: it: dozens of short runs in one session need the generator's limits measured once, not once each)
CALIBRATION_CACHE_ENV = "SERVINGBENCH_CALIBRATION_CACHE"


def _calibration_entries(path: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    entries = data.get("entries") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _cached_calibration(key: dict[str, Any]) -> dict[str, Any] | None:
    path = os.environ.get(CALIBRATION_CACHE_ENV)
    if not path:
        return None
    for e in _calibration_entries(path):
        if e.get("key") == key and isinstance(e.get("calibration"), dict):
            return {**e["calibration"], "reused_from": e.get("at")}
    return None


def _keep_calibration(key: dict[str, Any], cal: dict[str, Any]) -> None:
    path = os.environ.get(CALIBRATION_CACHE_ENV)
    if not path:
        return
    entries = [e for e in _calibration_entries(path) if e.get("key") != key]
    entries.append({"key": key, "calibration": cal, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        Path(tmp).write_text(json.dumps({"entries": entries[-16:]}))
        os.replace(tmp, path)


def _reference_measurements(suite: Suite, results: RunResults, cpus: tuple, scratch: Path,
                            progress: Progress) -> None:
    """The generator's calibration, once per run (kept on resume; with ``$SERVINGBENCH_CALIBRATION_CACHE``, reused
    from an earlier run with the same CPU sets and generator, marked ``reused_from``).  (The in-process limit is
    measured per cell.)"""
    from servingbench.load.calibration import calibrate_generator

    if "calibration" not in results.read_run():
        key = {"cpus": [sorted(c) if c else None for c in cpus],
               "generator": suite.generator.model_dump(mode="json")}
        cal = _cached_calibration(key)
        if cal is None:
            progress("calibrating the load generator against a trivial endpoint")
            cal = calibrate_generator(cpus, scratch, results.logs, generator=suite.generator)
            _keep_calibration(key, cal)
        else:
            progress(f"generator calibration reused from {cal['reused_from']} (${CALIBRATION_CACHE_ENV})")
        results.update_run(calibration=cal)
        progress(f"generator ceiling {cal['ceiling_rps']:.0f} rps, latency floor p50 "
                 f"{cal['floor_p50_s'] * 1e3:.2f} ms")


def _check_generator_bind(suite: Suite, allow_remote: bool) -> None:
    g = suite.generator
    if g.remote_workers and g.master_bind not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
        raise ValueError(f"generator.master_bind {g.master_bind!r} listens beyond this machine for "
                         f"{g.remote_workers} remote worker(s): the plan (request bodies, auth header) crosses that "
                         "network in the clear; pass --allow-remote if it is trusted, or bind 127.0.0.1")


def run_suite(suite: Suite, *, suite_path: Path, out: Path, frameworks: list[str] | None = None,
              resume: Path | None = None, progress: Progress = print, allow_remote: bool = False,
              force: bool = False) -> SuiteOutcome:
    """Run (or resume) a suite into ``out/<run-id>/``.  Ctrl-C / SIGTERM stop the servers and mark the run.

    A resume refuses a suite that differs from the run's, or ``frameworks`` that leave unfinished planned cells
    out (:class:`ResultsError`), unless ``force``.  The run ends ``complete`` (or ``failed_cells``) only when every
    planned cell has a final status; otherwise ``partial`` (:attr:`SuiteOutcome.missing`).  Other harnesses, held
    results directories and busy processes on the machine are warned about and recorded
    (``concurrent_activity``)."""
    from servingbench.results import concurrent_activity
    from servingbench.runtime.secrets import SecretStore

    # Performance cells only when there are workloads; a features-only suite runs just the probes.
    cells = plan_cells(suite, frameworks) if suite.workloads else []
    _check_generator_bind(suite, allow_remote)
    probes = [(fw, name) for fw in (frameworks or suite.frameworks) for name in suite.features]
    cpus = cpu_sets(suite.cpu_sets)
    stale = supervisor.stale_servers()
    if stale:
        progress(f"[yellow]warning: {len(stale)} server process(es) from an earlier run are still alive and will "
                 "distort measurements; stop them with `servingbench cleanup --kill`")
    statuses: dict[str, str] = {}
    outside = supervisor.live_servers()  # servers started by the caller, not by this run: never ours to stop
    roots = [Path(out).absolute()] + ([Path(resume).absolute().parent] if resume else [])
    activity = concurrent_activity(roots, exclude={p.pid for s in outside for p in s.processes()})
    for a in activity:
        progress(f"[yellow]warning: {a['text']}: measurements may be distorted (recorded in run.json "
                 "concurrent_activity)")
    progress("building model artifacts")  # before the results directory: a user model that fails stops here
    artifacts = build_artifacts_for(suite)
    with SecretStore() as store, supervisor.terminate_on_signals(), contextlib.ExitStack() as stack:
        results, done = _open_results(suite, suite_path, out, resume, cells, cpus, probes, frameworks=frameworks,
                                      force=force, activity=activity, progress=progress)
        stack.callback(results.close)  # the results directory's lock, released when the run ends however it ends
        results.set_redactions(store.sensitive_strings())
        progress(f"results: {results.path}")
        points = [(c.id, planned_points(suite, c)) for c in cells]
        if not results.read_run().get("plan"):  # a resume keeps the plan of the run it continues
            results.update_run(plan={"points": dict(points), "slo_probes_estimate": SLO_PROBES_ESTIMATE})
        emit(progress, "plan", cells=points, probes=[f"{fw}/probe:{name}" for fw, name in probes],
             point_s=point_seconds(suite))
        scratch = supervisor.make_tempdir("servingbench-scratch-")  # owned: cleanup removes it if we die
        try:
            canary = None
            if cells:
                _reference_measurements(suite, results, cpus, scratch, progress)
                canary = stack.enter_context(measure_canary.Canary(cpus[0]))
            for cell in cells:
                supervisor.raise_if_stop_requested()
                if cell.id in done:
                    statuses[cell.id] = results.read_run()["cells"][cell.id]["status"]
                    progress(f"{cell.id}: already {statuses[cell.id]} (resume)")
                    emit(progress, "cell_finished", cell=cell.id, status=statuses[cell.id], resumed=True)
                    continue
                emit(progress, "cell_started", cell=cell.id)
                statuses[cell.id] = run_cell(cell, suite, artifacts, results, store, cpus, progress, scratch,
                                             allow_remote, canary)
                emit(progress, "cell_finished", cell=cell.id, status=statuses[cell.id], resumed=False)
            for fw, name in probes:
                cid = f"{fw}/probe:{name}"
                if cid in done:
                    statuses[cid] = results.read_run()["cells"][cid]["status"]
                    emit(progress, "cell_finished", cell=cid, status=statuses[cid], resumed=True)
                    continue
                emit(progress, "cell_started", cell=cid)
                statuses[cid] = run_probe_cell(fw, name, suite, artifacts, results, store, cpus, progress)
                emit(progress, "cell_finished", cell=cid, status=statuses[cid], resumed=False)
        except KeyboardInterrupt:
            supervisor.stop_all(keep=outside)
            results.update_run(status="interrupted", ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
            progress(f"[yellow]interrupted: finished cells are kept; continue with "
                     f"`servingbench run {suite_path} --resume {results.path}`")
            return SuiteOutcome(results, statuses, interrupted=True)
        finally:
            supervisor.stop_all(keep=outside)
            shutil.rmtree(scratch, ignore_errors=True)
        failed = [c for c, s in statuses.items() if s == "failed"]
        missing = _finish(results, failed, suite_path, frameworks, progress)
    return SuiteOutcome(results, statuses, missing=missing)


def _finish(results: RunResults, failed: list[str], suite_path: Path, frameworks: list[str] | None,
            progress: Progress) -> list[str]:
    """Mark the run: ``complete`` / ``failed_cells`` only when every planned cell (planned_cells + planned_probes)
    has a final status, else ``partial`` with ``missing_cells`` (and a ``not_run`` entry for each cell never
    started, so the report lists it).  Returns the missing cells."""
    data = results.read_run()
    planned = list(dict.fromkeys([*(data.get("planned_cells") or []), *(data.get("planned_probes") or [])]))
    cells = data.setdefault("cells", {})
    missing = [c for c in planned if isinstance(c, str) and (cells.get(c) or {}).get("status") not in FINAL]
    why = f"left out by --frameworks {','.join(frameworks)}" if frameworks else "not in the suite this run resumed with"
    for cid in missing:
        if cid not in cells:
            fw, _, rest = cid.partition("/")
            cells[cid] = {"status": "not_run", "framework": fw, "reason": f"planned but never run ({why})",
                          **({"probe": rest.removeprefix("probe:")} if rest.startswith("probe:") else
                             {"deployment": rest.split("#", 1)[0]}),
                          "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    data.update(status="partial" if missing else "failed_cells" if failed else "complete", missing_cells=missing,
                ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    results.write_run(data)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        progress(f"[yellow]partial: {len(missing)} planned cell(s) have no final status ({shown}); finish with "
                 f"`servingbench run {suite_path} --resume {results.path}`")
    return missing
