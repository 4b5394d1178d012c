"""``servingbench tune``: equal tuning effort for every framework.

A framework run with its defaults beside one that was tuned says nothing about the frameworks.  ``tune`` searches
each framework's knob space (:func:`space_for`) for the highest **throughput at the suite's SLO** and, as the
second objective, the lowest **p99 at a fixed rate** (the SLO search's start rate, which every trial probes first),
one model at a time, and records every trial.

The optimiser: optuna's multi-objective TPE sampler (``TPESampler(multivariate=True)``, fixed seed), one study per
framework × model in an SQLite file of the tuning directory.  Why TPE and not successive halving: a trial is one
server start plus one SLO search, and a short, cheap version of it does not rank configurations the way the full
one does (a short probe cannot support a p99 claim: see docs/methodology.md), so there is no low-fidelity rung to
halve on; TPE models the good and bad regions from the few full trials a budget of minutes allows.  No pruner: an
SLO search probes the same doubling rates in every trial until one fails, so its intermediate values do not tell
trials apart before the bisection that decides the answer.

Every study starts with two enqueued trials, the **profiles**: ``framework-default`` (the framework's own
defaults: :attr:`Adapter.framework_defaults` and each option's ``framework_default``) and ``servingbench-default``
(the suite's deployment as written).  Every study's profiles run first, then the sampler's trials, one study after
the other in turn, within ``budget`` (machine time of the whole tuning): a trial starts only when the time spent
plus its study's longest trial so far (every study's median before the study's first trial ends) fits in the
budget, so the tuning ends within it unless a trial runs longer than any before it in its study; profiles that
did not fit read "not run".
``tuned`` is the best trial by throughput at the SLO (ties: lower p99), reported with its knobs and the trial that
found it.  A trial is a complete ``servingbench run`` of a one-cell suite (verification, canary, validity flags
included) in ``trials/<framework>-<model>/<n>/``; its record (knobs, objectives, memory, the run's path) is kept in
optuna's storage and in ``trials.jsonl``.

Resume: ``servingbench tune SUITE --resume DIR`` (or the same ``--out`` directory) reloads the studies; finished
trials are kept, a trial that Ctrl-C interrupted is run again with the same knobs, and the budget counts the time
already spent.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from servingbench.measure.stats import slo_machine_limited as machine_limited
from servingbench.measure.stats import slo_unbounded
from servingbench.scenarios.schema import DeploymentConfig, SloSearch, Suite, duration_text, raw

TUNE_FILE = "tune.json"
STORAGE = "optuna.db"
PROFILES = ("framework-default", "servingbench-default")
#: max_batch_size values tried when the adapter claims batching
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
#: batch timeout range (ms) tried when batching is on
BATCH_TIMEOUT_MS = (0.0, 20.0)


#: how often a trial the machine left unmeasured is run again with the same knobs
MACHINE_RETRIES = 1


class TuneError(ValueError):
    """A suite or a tuning directory that ``tune`` cannot use (the message says why and what to do)."""


# ---- the space -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One dimension: ``target`` is a deployment field (``workers``, ``threads``, ``max_batch_size``,
    ``batch_timeout_ms``) or ``options.<name>``; ``kind`` int, float or choice."""

    target: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    framework_default: Any = None

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.target, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.target, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.target, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        rng = f"{list(self.choices)}" if self.kind == "choice" else f"[{self.low:g}, {self.high:g}]" + (
            " log" if self.log else "")
        return f"{self.target} {rng} (framework default {self.framework_default!r})"


def _option_knob(name: str, field: Any) -> Knob | None:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    spec = extra.get("tune")
    if not spec:
        return None
    fw_default = extra.get("framework_default", field.default)
    target = f"options.{name}"
    if isinstance(spec, dict) and "choices" in spec:
        return Knob(target, "choice", choices=tuple(spec["choices"]), framework_default=fw_default)
    if isinstance(spec, dict):
        kinds = {a for a in typing.get_args(field.annotation) or (field.annotation,) if a in (int, float)}
        kind = "int" if kinds == {int} else "float"
        return Knob(target, kind, low=spec["low"], high=spec["high"], log=bool(spec.get("log")),
                    framework_default=fw_default)
    ann = field.annotation
    values = (False, True) if ann is bool else tuple(a for a in typing.get_args(ann) if a is not type(None))
    if typing.get_origin(ann) is typing.Literal:
        values = typing.get_args(ann)
    return Knob(target, "choice", choices=values, framework_default=fw_default)


def space_for(adapter_cls: Any, server_cpus: int) -> list[Knob]:
    """The knobs ``tune`` searches for one adapter on a server with ``server_cpus`` CPUs: workers 1 to
    max(2, CPUs), threads 1 to CPUs, max batch size and batch timeout when the adapter claims ``BATCHING``, and every
    option whose field is marked ``tune`` (see :class:`servingbench.contract.AdapterOptions`)."""
    from servingbench.contract import Capability

    cpus = max(1, server_cpus)
    fd = dict(adapter_cls.framework_defaults)
    threads_default = cpus if fd.get("threads") == "cpus" else int(fd.get("threads", 1))
    knobs = [Knob("workers", "int", 1, max(2, cpus), framework_default=int(fd.get("workers", 1)))]
    if cpus > 1:
        knobs.append(Knob("threads", "int", 1, cpus, framework_default=threads_default))
    if Capability.BATCHING in adapter_cls.capabilities:
        knobs.append(Knob("max_batch_size", "choice", choices=BATCH_SIZES,
                          framework_default=int(fd.get("max_batch_size", 1))))
        knobs.append(Knob("batch_timeout_ms", "float", *BATCH_TIMEOUT_MS,
                          framework_default=float(fd.get("batch_timeout_ms", 0.0))))
    for name, field in adapter_cls.Options.model_fields.items():
        k = _option_knob(name, field)
        if k is not None:
            knobs.append(k)
    return knobs


def framework_default_params(knobs: list[Knob]) -> dict[str, Any]:
    """The framework's own defaults as knob values (the ``framework-default`` profile)."""
    return {k.target: k.framework_default for k in knobs}


def suite_params(dep: DeploymentConfig, framework: str, knobs: list[Knob]) -> dict[str, Any]:
    """The suite's deployment as knob values (the ``servingbench-default`` profile)."""
    opts = dict(dep.options.get(framework) or {})
    from servingbench.adapters import registry

    typed = registry.get_class(framework).parse_options(opts)
    out: dict[str, Any] = {}
    for k in knobs:
        if k.target.startswith("options."):
            value = getattr(typed, k.target.split(".", 1)[1])
            out[k.target] = k.framework_default if value is None else value  # unset: the framework's own value
        elif k.target == "batch_timeout_ms":
            out[k.target] = float(dep.batch_timeout) * 1000
        else:
            out[k.target] = getattr(dep, k.target)
    return out


def deployment_for(dep: DeploymentConfig, framework: str, params: Mapping[str, Any], label: str) -> DeploymentConfig:
    """The suite's deployment with ``params`` applied (options of other frameworks dropped)."""
    update: dict[str, Any] = {"label": label, "frameworks": None}
    opts = dict(dep.options.get(framework) or {})
    for target, value in params.items():
        if target.startswith("options."):
            name = target.split(".", 1)[1]
            if value is None:
                opts.pop(name, None)
            else:
                opts[name] = value
        elif target == "batch_timeout_ms":
            update["batch_timeout"] = duration_text(value, "ms")
        else:
            update[target] = value
    update["options"] = {framework: opts} if opts else {}
    return DeploymentConfig.model_validate({**raw(dep), **update})


# ---- one trial -------------------------------------------------------------------------------------------------------
def _slo_workload(suite: Suite, path: Path) -> SloSearch:
    slo = [w for w in suite.workloads if w.kind == "slo_search"]
    if not slo or suite.slo is None:
        raise TuneError(f"{path}: tune needs an `slo:` target and one workload of kind `slo_search` (the objective "
                        "is the throughput at the SLO); add them as in scenarios/tune.yaml")
    return slo[0]


def trial_suite(suite: Suite, framework: str, model: Any, dep: DeploymentConfig, workload: SloSearch) -> Suite:
    """A one-cell suite: this framework, this model, this deployment, the SLO search alone, one repeat."""
    w = workload.model_copy(update={"models": [model.name]})
    return suite.model_copy(update={
        "name": f"{suite.name}-tune", "frameworks": [framework], "models": [model], "deployments": [dep],
        "workloads": [w], "features": [], "published": [],
        "measurement": suite.measurement.model_copy(update={"repeats": 1})})


def read_trial(run_dir: Path) -> dict[str, Any]:
    """Objectives and facts of a finished trial run: throughput at the SLO (0 when no rate met it), p99 of the first
    probe (the start rate), whether the search was generator-limited, idle PSS, the cell's status."""
    from servingbench.report.data import RunData

    data = RunData.load(run_dir)
    meta = data.meta
    slo = list(data.slos)
    cell = next(iter(data.cells), {})
    status = next(iter((meta.get("cells") or {}).values()), {}).get("status")
    out: dict[str, Any] = {"status": status, "run": run_dir.name}
    if not slo:
        out["reason"] = next(iter((meta.get("cells") or {}).values()), {}).get("reason") or "no SLO record"
        return out
    s = slo[0]
    first = (s.get("points") or [{}])[0]
    unmeasured = machine_limited(s)
    if unmeasured:
        out.update(status="unmeasured", reason=unmeasured)
        return out
    if s.get("max_rate") is None and s.get("confirmed") is False:  # rates passed once, none held on confirmation
        once = [p.get("rate") for p in s.get("points") or [] if p.get("ok") and isinstance(p.get("rate"), (int, float))]
        if once:
            out["passed_unconfirmed"] = max(once)
    out.update(max_rate=float(s.get("max_rate") or 0.0), p99_at_start_s=first.get("p99_s"),
               start_rate=first.get("rate"), generator_limited=bool(s.get("generator_limited")),
               confirmed=s.get("confirmed"), reason=s.get("reason"), unbounded=slo_unbounded(s),
               pss_bytes=(cell.get("memory_idle") or {}).get("pss_bytes"), cold_start_s=cell.get("cold_start_s"))
    return out


# ---- the tuning run --------------------------------------------------------------------------------------------------
@dataclass
class TuneOutcome:
    path: Path
    studies: dict[str, dict[str, Any]]
    interrupted: bool = False


def _study_name(framework: str, model: str) -> str:
    return f"{framework}-{model}"


def _storage_url(path: Path) -> str:
    return f"sqlite:///{(path / STORAGE).absolute()}"


def _open_dir(suite: Suite, suite_path: Path, out: Path, resume: Path | None) -> tuple[Path, dict[str, Any]]:
    if resume is not None:
        path = Path(resume)
        meta_file = path / TUNE_FILE
        if not meta_file.is_file():
            raise TuneError(f"{path}: not a tuning directory (no {TUNE_FILE}); start a new one without --resume")
        meta = json.loads(meta_file.read_text())
        if not _same_suite(meta.get("suite"), suite):
            raise TuneError(f"{path}: the suite differs from the one this tuning started with ({meta.get('suite_file')})"
                            "; resume with that suite, or start a new tuning directory")
        return path, meta
    path = Path(out) / f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{suite.name}"
    path.mkdir(parents=True, exist_ok=False)
    meta = {"schema": 2, "suite_file": str(suite_path), "suite": raw(suite),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": None, "spent_s": 0.0, "studies": {}}
    _write_meta(path, meta)
    return path, meta


def _same_suite(stored: Any, suite: Suite) -> bool:
    """Whether the suite a tuning started with (``tune.json``) is ``suite``.  Since session 12 it is kept as a suite
    file's data (:func:`servingbench.scenarios.schema.raw`) and read through today's schema, so any field added since,
    nested or not, takes its default; an older ``tune.json`` kept durations as bare seconds, which the schema refuses
    (:func:`_as_current`)."""
    try:
        return Suite.model_validate(stored) == suite
    except ValueError:  # pydantic's ValidationError
        return _as_current(stored) == suite.model_dump(mode="json")


def _as_current(stored: Any) -> Any:
    """A suite kept in an older tune.json with every top-level field added to the schema since then set to its
    default (what the older servingbench did without it), so that such a tuning resumes (session 11:
    ``inprocess_limit``)."""
    if not isinstance(stored, dict):
        return stored
    added = {k: f.get_default(call_default_factory=True) for k, f in Suite.model_fields.items() if k not in stored}
    return {**stored, **{k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in added.items()}}


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path / (TUNE_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(path / TUNE_FILE)


def _requeue_interrupted(study: Any) -> int:
    """Trials that did not finish (still ``RUNNING`` after a kill, or ``FAIL``: stopped by Ctrl-C or an error
    outside the measurement) are marked failed and enqueued again with the same knobs, once.  Finished trials
    (``COMPLETE``; ``PRUNED``: the deployment failed, recorded with its reason) stay as they are."""
    from optuna.trial import TrialState

    n = 0
    trials = study.get_trials(deepcopy=False)
    again = {t.user_attrs.get("requeue_of") for t in trials}  # a finished trial's attributes cannot change
    for t in trials:
        if t.state not in (TrialState.RUNNING, TrialState.FAIL) or t.number in again:
            continue
        if t.state == TrialState.RUNNING:  # its process was killed: close it as failed
            study.tell(t.number, state=TrialState.FAIL)
        attrs = {k: v for k, v in t.user_attrs.items() if k in ("profile",)}
        study.enqueue_trial(t.params, user_attrs={**attrs, "requeue_of": t.number}, skip_if_exists=False)
        n += 1
    return n


class _Tuning:
    """One tuning directory: its studies, budget and trials (:func:`run_tune` drives it)."""

    def __init__(self, suite: Suite, suite_path: Path, path: Path, meta: dict[str, Any], budget_s: float,
                 max_trials: int | None, progress: Callable[[str], None], seed: int) -> None:
        from servingbench.suite import cpu_sets

        self.suite, self.suite_path, self.path, self.meta = suite, suite_path, path, meta
        self.budget_s, self.max_trials, self.progress, self.seed = budget_s, max_trials, progress, seed
        self.workload = _slo_workload(suite, suite_path)
        cpus = cpu_sets(suite.cpu_sets)[0]
        self.server_cpus = len(cpus) if cpus else len(os.sched_getaffinity(0))

    # bookkeeping: machine time per study and in all, kept in tune.json across resumes
    def _spent(self, name: str) -> float:
        return float(self.meta["studies"].get(name, {}).get("spent_s") or 0.0)

    def _add_spent(self, name: str, seconds: float, finished: bool) -> None:
        self.meta["studies"][name]["spent_s"] = self._spent(name) + seconds
        if finished:  # a trial that ran to its end (not one Ctrl-C stopped): what the next one is expected to take
            self.meta["studies"][name].setdefault("trial_s", []).append(round(seconds, 1))
        self.meta["spent_s"] = sum(float(v.get("spent_s") or 0.0) for v in self.meta["studies"].values())
        _write_meta(self.path, self.meta)

    def expected_s(self, name: str) -> float:
        """How long the next trial of study ``name`` may take: the longest of its finished trials, else the median of
        every study's (a study's first trial when nothing has run yet: 0, it starts).  The longest, not the median:
        session 11's tuning, with the median, ended 0.7 s past its 3,300 s budget."""
        own = self.meta["studies"].get(name, {}).get("trial_s") or []
        if own:
            return float(max(own))
        every = [s for v in self.meta["studies"].values() for s in (v.get("trial_s") or [])]
        return float(statistics.median(every)) if every else 0.0

    def fits(self, name: str) -> bool:
        """Whether a trial of ``name`` may start: the time spent plus its expected duration stays within the budget,
        so that the tuning ends within it unless a trial runs longer than any before it in its study."""
        return float(self.meta.get("spent_s") or 0.0) + self.expected_s(name) <= self.budget_s

    def study(self, fw: str, model: Any, dep: DeploymentConfig, knobs: list[Knob]) -> Any:
        import optuna

        name = _study_name(fw, model.name)
        study = optuna.create_study(
            study_name=name, storage=_storage_url(self.path), load_if_exists=True,
            directions=["maximize", "minimize"],
            sampler=optuna.samplers.TPESampler(seed=self.seed, multivariate=True, n_startup_trials=4))
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(framework_default_params(knobs), user_attrs={"profile": "framework-default"})
            study.enqueue_trial(suite_params(dep, fw, knobs), user_attrs={"profile": "servingbench-default"})
        requeued = _requeue_interrupted(study)
        if requeued:
            self.progress(f"{name}: {requeued} interrupted trial(s) will run again with the same knobs")
        entry = self.meta["studies"].setdefault(name, {"spent_s": 0.0})
        entry.update(framework=fw, model=model.name, knobs=[k.describe() for k in knobs])
        _write_meta(self.path, self.meta)
        return study

    def objective(self, trial: Any, fw: str, model: Any, dep: DeploymentConfig, knobs: list[Knob],
                  name: str) -> tuple[float, float]:
        """One trial: the deployment with the trial's knobs, a complete run of a one-cell suite, its objectives."""
        import optuna

        from servingbench.suite import run_suite

        params = {k.target: k.suggest(trial) for k in knobs}
        label = f"t{trial.number}"
        tsuite = trial_suite(self.suite, fw, model, deployment_for(dep, fw, params, label), self.workload)
        tdir = self.path / "trials" / name
        tdir.mkdir(parents=True, exist_ok=True)
        tfile = tdir / f"{label}.json"  # the trial's suite as run (durations in seconds)
        tfile.write_text(json.dumps(tsuite.model_dump(mode="json"), indent=1))
        profile = trial.user_attrs.get("profile") or "tuning"
        self.progress(f"{name} trial {trial.number} ({profile}): " + ", ".join(f"{k}={v}" for k, v in params.items()))
        t0 = time.monotonic()
        outcome = run_suite(tsuite, suite_path=tfile, out=tdir, progress=lambda m: None)
        if outcome.interrupted:
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        res = read_trial(Path(outcome.results.path))
        res.update(seconds=time.monotonic() - t0, params=params, profile=profile, trial=trial.number)
        for k, v in res.items():
            trial.set_user_attr(k, v)
        with open(self.path / "trials.jsonl", "a") as f:
            f.write(json.dumps({"study": name, **res}, default=str) + "\n")
        if res.get("status") == "unmeasured":
            retries = int(trial.user_attrs.get("machine_retry") or 0)
            again = retries < MACHINE_RETRIES
            self.progress(f"{name} trial {trial.number}: unmeasured ({res.get('reason')})"
                          + ("; the same knobs run once more" if again else ""))
            if again:
                attrs = {k: v for k, v in trial.user_attrs.items() if k == "profile"}
                trial.study.enqueue_trial(params, user_attrs={**attrs, "machine_retry": retries + 1})
            raise optuna.TrialPruned(f"unmeasured: {res.get('reason')}")
        if res.get("status") != "ok" or "max_rate" not in res:
            self.progress(f"{name} trial {trial.number}: failed ({res.get('reason')})")
            raise optuna.TrialPruned(f"trial failed: {res.get('reason')}")
        p99 = res.get("p99_at_start_s")
        self.progress(f"{name} trial {trial.number}: {res['max_rate']:.0f} rps at the SLO"
                      + (" (generator-limited)" if res.get("generator_limited") else "")
                      + ("" if p99 is None else f", p99 {p99 * 1e3:.2f} ms at {res.get('start_rate')} rps"))
        return res["max_rate"], (p99 if p99 is not None else math.inf)

    def open(self, fw: str, model: Any) -> tuple[Any, Callable[[Any], tuple[float, float]]] | None:
        """The study of ``fw`` × ``model`` (created with its two profiles enqueued, or reloaded) and its objective;
        None when no deployment of the suite applies to ``fw``."""
        from servingbench.adapters import registry

        dep = next((d for d in self.suite.deployments if d.frameworks is None or fw in d.frameworks), None)
        if dep is None:
            return None
        knobs = space_for(registry.get_class(fw), self.server_cpus)
        name = _study_name(fw, model.name)
        study = self.study(fw, model, dep, knobs)
        self.progress(f"{name}: knobs " + "; ".join(k.describe() for k in knobs))
        return study, lambda t: self.objective(t, fw, model, dep, knobs, name)

    def one_trial(self, name: str, study: Any, objective: Callable[[Any], tuple[float, float]]) -> None:
        t0 = time.monotonic()
        finished = False
        try:
            study.optimize(objective, n_trials=1)
            finished = True
        finally:
            self._add_spent(name, time.monotonic() - t0, finished)

    def finished(self, study: Any) -> int:
        from optuna.trial import TrialState

        return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))

    def capped(self, study: Any) -> bool:
        return self.max_trials is not None and self.finished(study) >= self.max_trials

    @staticmethod
    def profile_waiting(study: Any) -> bool:
        """A profile trial (enqueued at the start, or again after an interruption or an unmeasured run) not yet run."""
        from optuna.trial import TrialState

        return any(t.state == TrialState.WAITING and t.user_attrs.get("profile") in PROFILES
                   for t in study.get_trials(deepcopy=False))


def run_tune(suite: Suite, *, suite_path: Path, out: Path, frameworks: list[str] | None = None,
             models: list[str] | None = None, budget_s: float = 1800.0, max_trials: int | None = None,
             resume: Path | None = None, progress: Callable[[str], None] = print, seed: int = 0) -> TuneOutcome:
    """Tune every framework × model of ``suite`` (see the module docstring).  ``budget_s`` is the machine time of
    the whole tuning (profiles of every study first, then sampled trials round-robin); ``max_trials`` caps each
    study's trials (profiles included).  The trials
    share one generator calibration (``SERVINGBENCH_CALIBRATION_CACHE``, in the tuning directory unless set)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its "trial failed" warnings carry a traceback of Ctrl-C
    _slo_workload(suite, suite_path)
    fws = frameworks or list(suite.frameworks)
    model_refs = [m for m in suite.models if not models or m.name in models]
    if not model_refs:
        raise TuneError(f"{suite_path}: none of the models {models} is in the suite ({[m.name for m in suite.models]})"
                        "; name models the suite lists, or leave --models out")
    path, meta = _open_dir(suite, suite_path, out, resume)
    os.environ.setdefault("SERVINGBENCH_CALIBRATION_CACHE", str(path.absolute() / "calibration.json"))
    meta["budget_s"] = budget_s
    tuning = _Tuning(suite, suite_path, path, meta, budget_s, max_trials, progress, seed)
    progress(f"tuning: {path}")
    todo = [(fw, m) for fw in fws for m in model_refs]
    opened: dict[str, tuple] = {}  # name -> (study, objective, framework, model)
    try:
        for fw, model in todo:
            got = tuning.open(fw, model)
            if got is not None:
                opened[_study_name(fw, model.name)] = (*got, fw, model.name)
        left = max(0.0, budget_s - float(meta.get("spent_s") or 0.0))
        progress(f"{len(opened)} studies, {left:.0f} s of the {budget_s:.0f} s budget left: the profiles of every "
                 "study first, then the sampler's trials round-robin while one is expected to fit in the budget")
        # 1. every study's profiles (framework-default, servingbench-default), so that each framework has them
        for name, (study, objective, _, _) in opened.items():
            while tuning.profile_waiting(study) and not tuning.capped(study) and tuning.fits(name):
                tuning.one_trial(name, study, objective)
        # 2. the sampler's trials, one per study in turn, while one is expected to fit (or until --max-trials)
        while True:
            active = [(n, st, ob) for n, (st, ob, _, _) in opened.items() if not tuning.capped(st) and tuning.fits(n)]
            if not active:
                break
            for name, study, objective in active:
                if tuning.fits(name):
                    tuning.one_trial(name, study, objective)
    except KeyboardInterrupt:
        meta["interrupted"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_meta(path, meta)
        progress(f"interrupted: finished trials are kept; continue with "
                 f"`servingbench tune {suite_path} --resume {path}`")
        return TuneOutcome(path, _summaries(opened), interrupted=True)
    if not all(tuning.capped(st) for st, _, _, _ in opened.values()):
        progress(f"budget spent: {float(meta['spent_s']):.0f} s of {budget_s:.0f} s (no study's next trial was "
                 "expected to fit in what was left)")
    meta["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_meta(path, meta)
    studies = _summaries(opened)
    confirm = write_confirm_suites(path, suite, studies)
    write_summary(path, studies, confirm)
    for f in confirm:
        progress(f"framework-default vs tuned, {CONFIRM_REPEATS} interleaved repeats: servingbench run {f} --report")
    return TuneOutcome(path, studies)


def _summaries(opened: dict[str, tuple]) -> dict[str, dict[str, Any]]:
    return {name: {"framework": fw, "model": model, **summarize_study(study)}
            for name, (study, _, fw, model) in opened.items()}


# ---- results -----------------------------------------------------------------------------------------------------
def summarize_study(study: Any) -> dict[str, Any]:
    """Profiles, the tuned trial and every trial of one study."""
    from optuna.trial import TrialState

    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        a = t.user_attrs
        trials.append({"trial": t.number, "profile": a.get("profile"), "params": t.params,
                       "status": "ok" if t.state == TrialState.COMPLETE else (
                           "unmeasured" if a.get("status") == "unmeasured" else "failed"),
                       "max_rate": a.get("max_rate"), "p99_at_start_s": a.get("p99_at_start_s"),
                       "start_rate": a.get("start_rate"), "generator_limited": a.get("generator_limited"),
                       "unbounded": a.get("unbounded"), "passed_unconfirmed": a.get("passed_unconfirmed"),
                       "pss_bytes": a.get("pss_bytes"), "reason": a.get("reason"), "run": a.get("run"),
                       "seconds": a.get("seconds")})
    ok = [t for t in trials if t["status"] == "ok"]
    best = max(ok, key=lambda t: (t["max_rate"] or 0.0, -(t["p99_at_start_s"] or math.inf)), default=None)
    profiles = {p: next((t for t in reversed(trials) if t["profile"] == p and t["status"] == "ok"),
                        next((t for t in reversed(trials) if t["profile"] == p), None)) for p in PROFILES}
    return {"trials": trials, "profiles": profiles, "tuned": best, "n_trials": len(trials),
            "found_at": None if best is None else 1 + [t["trial"] for t in trials].index(best["trial"])}


def pct_of_tuned(study: dict[str, Any], profile: str) -> float | None:
    p, best = study["profiles"].get(profile), study["tuned"]
    if not p or p["status"] != "ok" or not best or not best["max_rate"]:
        return None
    return 100.0 * (p["max_rate"] or 0.0) / best["max_rate"]


SUMMARY_HEAD = ["framework × model", "framework-default", "servingbench-default", "tuned", "tuned knobs",
                "found at trial", "framework-default % of tuned"]
SUMMARY_NOTE = ("Throughput at the SLO per profile (each a separate server start and SLO search). Compare like with "
                "like: tuned with tuned, default with default.")


def _tuned_text(s: dict[str, Any]) -> str:
    """The tuned column: the best measured trial, or why there is none."""
    if s["tuned"] or not s.get("trials"):
        return _profile_text(s["tuned"])
    return "nothing measured (" + ", ".join(sorted({t["status"] for t in s["trials"]})) + ")"


def lower_bound(t: dict | None) -> str | None:
    """Why a trial's throughput at the SLO is only a lower bound (None: it is the search's answer): the generator
    limited it, or no probe above its answer failed (it stopped growing at its step limit or max_rate)."""
    if not t or t.get("status", "ok") != "ok":
        return None
    if t.get("generator_limited"):
        return "generator-limited"
    if t.get("unbounded") is not None:  # recorded by read_trial from the search's probes (stats.slo_unbounded)
        return "no rate above it failed" if t["unbounded"] else None
    # trials recorded before session 11 kept only the search's reason
    return "no rate above it failed" if (t.get("reason") or "").startswith("upper bound not reached") else None


def _profile_text(t: dict | None) -> str:
    if not t:
        return "not run"
    if t["status"] != "ok":
        return t["status"]  # failed (the deployment) or unmeasured (the machine)
    why = lower_bound(t)
    if not t["max_rate"] and t.get("passed_unconfirmed"):
        return f"0 rps ({t['passed_unconfirmed']:g} rps passed once, not confirmed)"
    return (f"≥ {t['max_rate']:.0f} rps ({why})" if why else f"{t['max_rate']:.0f} rps")


def pct_text(s: dict[str, Any]) -> str:
    pct = pct_of_tuned(s, "framework-default")
    if pct is None:
        return "-"
    bounds = [lower_bound(s["profiles"].get("framework-default")), lower_bound(s["tuned"])]
    return f"{pct:.0f} %" + (" (a rate is a lower bound)" if any(bounds) else "")


def summary_rows(studies: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, s in studies.items():
        best = s["tuned"]
        knobs = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (best or {}).get("params", {}).items())
        rows.append([name, _profile_text(s["profiles"].get("framework-default")),
                     _profile_text(s["profiles"].get("servingbench-default")), _tuned_text(s), knobs,
                     f"{s['found_at'] or '-'} of {s['n_trials']}", pct_text(s)])
    return rows


def rankings(studies: dict[str, dict[str, Any]]) -> list[str]:
    """Per model, the frameworks ranked by tuned throughput at the SLO and, separately, by framework-default.  Only
    measured values are ranked (0: no rate met the SLO); a study whose profile the machine left unmeasured, whose
    deployment failed or that did not run is named after the ranking, never ranked as 0."""
    models = sorted({s.get("model") or n.rsplit("-", 1)[-1] for n, s in studies.items()})
    out = []
    for model in models:
        mine = {n: s for n, s in studies.items() if (s.get("model") or n.rsplit("-", 1)[-1]) == model}
        for label, pick in (("tuned", lambda s: s["tuned"]),
                            ("framework-default", lambda s: s["profiles"].get("framework-default"))):
            ranked, missing = [], []
            for n, s in mine.items():
                fw, t = s.get("framework") or n.rsplit("-", 1)[0], pick(s)
                if t and t.get("status", "ok") == "ok":
                    ranked.append((t.get("max_rate") or 0.0, fw, "≥ " if lower_bound(t) else ""))
                else:
                    missing.append(f"{fw} {_tuned_text(s) if label == 'tuned' else _profile_text(t)}")
            text = (" > ".join(f"{fw} ({ge}{rate:.0f})" for rate, fw, ge in sorted(ranked, reverse=True))
                    or "nothing measured")
            out.append(f"{model}, {label}: {text}" + (f"; not ranked: {', '.join(sorted(missing))}" if missing else ""))
    return out


#: repeats of the confirmation suites :func:`write_confirm_suites` writes
CONFIRM_REPEATS = 3


def confirm_suite(suite: Suite, studies: dict[str, dict[str, Any]], model: str,
                  repeats: int = CONFIRM_REPEATS) -> Suite | None:
    """For ``model``, each framework's framework-default and tuned profiles as two deployments of one suite, the SLO
    search with ``repeats`` interleaved repeats (a fresh server each, A B A B): the tuned profile is the best of a
    few single searches, so its margin over the default is decision-grade only when re-measured this way (session
    12: Ray Serve's default was 0 % of tuned in its one search, 67-89 % in three interleaved pairs).  A framework
    whose tuned profile is its framework default gets the one deployment.  None: no study of ``model`` has both."""
    ref = next((m for m in suite.models if m.name == model), None)
    workload = next((w for w in suite.workloads if w.kind == "slo_search"), None)
    deployments, fws = [], []
    for s in studies.values():
        fw, fdef, best = s.get("framework"), s["profiles"].get("framework-default"), s.get("tuned")
        base = next((d for d in suite.deployments if d.frameworks is None or fw in d.frameworks), None)
        if s.get("model") != model or base is None or not best or not fdef or fdef.get("status") != "ok":
            continue
        for label, t in (("framework-default", fdef), ("tuned", best)):
            if label == "tuned" and t["params"] == fdef["params"]:
                continue
            deployments.append(deployment_for(base, fw, t["params"], f"{fw}-{label}").model_copy(
                update={"frameworks": [fw]}))
        fws.append(fw)
    if ref is None or workload is None or not fws:
        return None
    update: dict[str, Any] = {"models": [model]}
    if getattr(workload, "measurement", None) is not None:
        update["measurement"] = workload.measurement.model_copy(update={"repeats": repeats})
    out = suite.model_copy(update={
        "name": f"{suite.name}-confirm-{model}",
        "description": f"framework-default vs tuned ({suite.name}), {repeats} interleaved repeats",
        "frameworks": fws, "models": [ref], "deployments": deployments, "inprocess_limit": False,
        "workloads": [workload.model_copy(update=update)], "features": [], "published": [],
        "measurement": suite.measurement.model_copy(update={"repeats": repeats})})
    return Suite.model_validate(raw(out))  # checked as a suite file would be


def write_confirm_suites(path: Path, suite: Suite, studies: dict[str, dict[str, Any]]) -> list[Path]:
    """``confirm-<model>.yaml`` per tuned model (:func:`confirm_suite`); the files written."""
    import yaml

    out = []
    for model in dict.fromkeys(s.get("model") for s in studies.values()):
        found = confirm_suite(suite, studies, model) if model else None
        if found is not None:
            f = path / f"confirm-{model}.yaml"
            f.write_text(f"# Written by servingbench tune ({path.name}): run it with `servingbench run {f.name}`.\n"
                         + yaml.safe_dump(raw(found, compact=True), sort_keys=False))
            out.append(f)
    return out


def write_summary(path: Path, studies: dict[str, dict[str, Any]], confirm: list[Path] = ()) -> Path:
    """``summary.json``, ``summary.md`` and ``index.html`` (profiles side by side, rankings like with like) and one
    Pareto plot per study; ``confirm``: the confirmation suites to name."""
    import base64
    import html

    (path / "summary.json").write_text(json.dumps(studies, indent=2, default=str))
    rows, ranks = summary_rows(studies), rankings(studies)
    md = [SUMMARY_NOTE, "", "| " + " | ".join(SUMMARY_HEAD) + " |", "|" + "---|" * len(SUMMARY_HEAD)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "Rankings (throughput at the SLO, rps):", ""] + [f"- {r}" for r in ranks]
    if confirm:
        md += ["", f"Each tuned profile is the best of a few single searches. To compare it with the framework "
               f"default on equal terms ({CONFIRM_REPEATS} interleaved repeats, fresh servers):", ""]
        md += [f"- `servingbench run {f.name} --report`" for f in confirm]
    plots = {name: pareto_plot(s, path / f"pareto-{name}.png", title=name) for name, s in studies.items()}
    md += [""] + [f"![{n}]({p.name})" for n, p in plots.items() if p]
    (path / "summary.md").write_text("\n".join(md) + "\n")
    esc = html.escape
    page = ["<!doctype html><meta charset='utf-8'><title>servingbench tune</title>",
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}</style>", "<h1>servingbench tune</h1>", f"<p>{esc(SUMMARY_NOTE)}</p>",
            "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in SUMMARY_HEAD) + "</tr>"]
    page += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    page += ["</table><h2>Rankings</h2><ul>"] + [f"<li>{esc(r)}</li>" for r in ranks] + ["</ul>"]
    if confirm:
        page += [f"<h2>Confirm</h2><p>Framework-default vs tuned, {CONFIRM_REPEATS} interleaved repeats:</p><ul>"]
        page += [f"<li><code>servingbench run {esc(f.name)} --report</code></li>" for f in confirm] + ["</ul>"]
    page += ["<h2>Trials</h2>"]
    for n, p in plots.items():
        if p:
            data = base64.b64encode(p.read_bytes()).decode()
            page.append(f"<figure><img alt='{esc(n)}' src='data:image/png;base64,{data}'></figure>")
    (path / "index.html").write_text("\n".join(page) + "\n")
    return path / "summary.md"


def pareto_plot(study: dict[str, Any], out: Path, title: str) -> Path | None:
    """Throughput at the SLO against p99 at the start rate, every trial; marker size = idle PSS; profiles and the
    tuned trial labelled."""
    ok = [t for t in study["trials"] if t["status"] == "ok" and t.get("p99_at_start_s") is not None]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pss = [(t.get("pss_bytes") or 0) / 2**20 for t in ok]
    top = max(pss) or 1.0
    sizes = [30 + 270 * p / top for p in pss]
    ax.scatter([t["p99_at_start_s"] * 1e3 for t in ok], [t["max_rate"] for t in ok], s=sizes, alpha=0.5,
               label="trials (size: idle PSS)")
    marks = {"framework-default": "s", "servingbench-default": "D"}
    for t in ok:
        if t["profile"] in marks:
            ax.scatter([t["p99_at_start_s"] * 1e3], [t["max_rate"]], marker=marks[t["profile"]], s=80,
                       facecolors="none", edgecolors="k", label=t["profile"])
    best = study.get("tuned")
    if best and best.get("p99_at_start_s") is not None:
        ax.scatter([best["p99_at_start_s"] * 1e3], [best["max_rate"]], marker="*", s=200, c="red", label="tuned")
    ax.set_xlabel(f"p99 at {ok[0].get('start_rate')} rps (ms, lower is better)")
    ax.set_ylabel("throughput at the SLO (rps)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
