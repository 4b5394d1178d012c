"""``servingbench tune``: the knob spaces the adapters declare, the profiles, and the summary (pure logic; the
live tuning run is tests/e2e/test_tune_live.py)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from servingbench.adapters import registry
from servingbench.scenarios.schema import DeploymentConfig
from servingbench.tune import (
    BATCH_SIZES, deployment_for, framework_default_params, machine_limited, pct_of_tuned, space_for, suite_params,
    summarize_study, write_summary,
)


def _space(fw: str, cpus: int = 1) -> dict:
    return {k.target: k for k in space_for(registry.get_class(fw), cpus)}


def test_every_framework_has_workers_and_its_own_defaults():
    for fw in ("litserve", "mosec", "mlserver", "triton", "rayserve", "mlflow"):
        space = _space(fw)
        assert space["workers"].framework_default == 1 and (space["workers"].low, space["workers"].high) == (1, 2)
        assert "threads" not in space  # one server CPU: nothing to choose
        assert "threads" in _space(fw, cpus=4) and _space(fw, cpus=4)["threads"].framework_default == 4  # torch's own


def test_batching_knobs_only_where_the_adapter_batches():
    assert "max_batch_size" not in _space("mlflow")
    for fw in ("litserve", "mosec", "mlserver", "triton", "rayserve"):
        s = _space(fw)
        assert s["max_batch_size"].choices == BATCH_SIZES and s["max_batch_size"].framework_default == 1
    assert _space("mosec")["batch_timeout_ms"].framework_default == 10.0  # MOSEC's --wait
    assert _space("rayserve")["batch_timeout_ms"].framework_default == 10.0  # batch_wait_timeout_s 0.01
    assert _space("triton")["batch_timeout_ms"].framework_default == 0.0


def test_framework_options_marked_for_tuning():
    ray = _space("rayserve")["options.max_ongoing_requests"]
    assert (ray.kind, ray.low, ray.high, ray.log, ray.framework_default) == ("int", 1, 256, True, 5)
    pipe = _space("mosec")["options.pipeline"]
    assert pipe.kind == "choice" and pipe.choices == (False, True) and pipe.framework_default is False
    lit = _space("litserve")["options.num_api_servers"]
    assert (lit.low, lit.high, lit.framework_default) == (1, 2, 1)


def test_profiles_as_deployments():
    space = space_for(registry.get_class("rayserve"), 1)
    fd = framework_default_params(space)
    assert fd == {"workers": 1, "max_batch_size": 1, "batch_timeout_ms": 10.0, "options.max_ongoing_requests": 5}
    dep = DeploymentConfig(label="default", max_batch_size=8, batch_timeout="2ms",
                           options={"rayserve": {"max_ongoing_requests": 64}, "mosec": {"pipeline": True}})
    sd = suite_params(dep, "rayserve", space)
    assert sd == {"workers": 1, "max_batch_size": 8, "batch_timeout_ms": 2.0, "options.max_ongoing_requests": 64}
    # an option the suite leaves unset is the framework's own value (LitServe num_api_servers: None -> 1)
    assert suite_params(dep, "litserve", space_for(registry.get_class("litserve"), 1))["options.num_api_servers"] == 1
    d = deployment_for(dep, "rayserve", fd, "t0")
    assert (d.label, d.max_batch_size, d.workers) == ("t0", 1, 1) and d.batch_timeout == pytest.approx(0.010)
    assert d.options == {"rayserve": {"max_ongoing_requests": 5}}  # other frameworks' options dropped
    # a value outside the option's bounds is refused by the adapter's typed options, naming it
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        deployment_for(dep, "rayserve", {"options.max_ongoing_requests": 0}, "t1")


def _study(values: list[tuple[str | None, float | None, float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist = {"workers": optuna.distributions.IntDistribution(1, 2)}
    for i, (profile, rate, p99) in enumerate(values):
        attrs = {"profile": profile, "max_rate": rate, "p99_at_start_s": p99, "start_rate": 100.0,
                 "pss_bytes": 2e8 + i * 1e7}
        if rate is None:
            t = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"workers": 1},
                                          distributions=dist, user_attrs={**attrs, "reason": "start-up failed"})
        else:
            t = optuna.trial.create_trial(values=[rate, p99], params={"workers": 1 + i % 2}, distributions=dist,
                                          user_attrs=attrs)
        study.add_trial(t)
    return study


def test_summary_profiles_tuned_and_percentages(tmp_path):
    s = summarize_study(_study([("framework-default", 150.0, 0.004), ("servingbench-default", 300.0, 0.003),
                                (None, None, math.inf), (None, 400.0, 0.005), (None, 400.0, 0.002)]))
    assert s["n_trials"] == 5 and s["tuned"]["trial"] == 4  # ties on throughput: the lower p99
    assert s["found_at"] == 5
    assert pct_of_tuned(s, "framework-default") == pytest.approx(37.5)
    assert pct_of_tuned(s, "servingbench-default") == pytest.approx(75.0)
    assert [t["status"] for t in s["trials"]].count("failed") == 1
    other = summarize_study(_study([("framework-default", 350.0, 0.004), ("servingbench-default", 360.0, 0.003)]))
    md = write_summary(tmp_path, {"rayserve-mlp": {"framework": "rayserve", "model": "mlp", **s},
                                  "mosec-mlp": {"framework": "mosec", "model": "mlp", **other}}).read_text()
    assert "| rayserve-mlp | 150 rps | 300 rps | 400 rps | workers=1 | 5 of 5 | 38 % |" in md
    # like with like: defaults ranked apart from tuned
    assert "- mlp, tuned: rayserve (400) > mosec (360)" in md
    assert "- mlp, framework-default: mosec (350) > rayserve (150)" in md
    assert (tmp_path / "pareto-rayserve-mlp.png").stat().st_size > 1000
    assert "data:image/png;base64," in (tmp_path / "index.html").read_text()


def test_a_search_the_machine_failed_is_unmeasured_not_zero():
    clean_fail = {"max_rate": None, "generator_limited": False, "reason": "no rate met the SLO",
                  "points": [{"rate": 100.0, "flags": [], "verdict": "fail"}]}
    assert machine_limited(clean_fail) is None  # the server missed the SLO at the lowest rate: a real 0
    steal = {"max_rate": None, "generator_limited": False, "reason": "no rate met the SLO",
             "points": [{"rate": 100.0, "flags": ["interference"], "verdict": "fail"},
                        {"rate": 100.0, "flags": ["generator_bound", "interference"], "verdict": "fail"}]}
    assert "generator_bound, interference" in machine_limited(steal)
    gen = {"max_rate": None, "generator_limited": True, "reason": "generator-limited at 100 rps", "points": []}
    assert "generator-limited" in machine_limited(gen)
    # a rate met, and the probes above it failed only for the machine: a lower bound, not the configuration's limit
    bound = {"max_rate": 200.0, "generator_limited": False, "reason": "step limit (2) reached",
             "points": [{"rate": 200.0, "flags": [], "verdict": "pass"},
                        {"rate": 400.0, "flags": ["interference"], "verdict": "fail"}]}
    assert "only a lower bound of 200 rps" in machine_limited(bound) and "interference" in machine_limited(bound)
    assert "lower bound" in machine_limited({**bound, "generator_limited": True, "points": bound["points"][:1]})
    # one clean failure above the rate met decides the bracket: an answer is an answer
    real = {**bound, "points": [*bound["points"], {"rate": 300.0, "flags": [], "verdict": "fail"}]}
    assert machine_limited(real) is None
    assert machine_limited({**bound, "points": bound["points"][:1]}) is None  # nothing above failed: the top rate


def test_a_trial_left_running_by_a_killed_tuning_is_closed_and_enqueued_again():
    from servingbench.tune import _requeue_interrupted

    study = optuna.create_study(directions=["maximize", "minimize"])
    t = study.ask({"workers": optuna.distributions.IntDistribution(1, 2)})  # RUNNING, as after a kill -9
    assert _requeue_interrupted(study) == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[1].state == optuna.trial.TrialState.WAITING and trials[1].user_attrs["requeue_of"] == t.number
    assert _requeue_interrupted(study) == 0  # once only


def test_rankings_leave_out_what_was_not_measured():
    """An unmeasured or missing profile is named after the ranking, never ranked as 0 (session 9's first tune
    summary ranked 'triton (0)' for a study whose every trial the machine left unmeasured)."""
    from servingbench.tune import rankings

    def study(fw, model, fd, tuned):
        return {"framework": fw, "model": model, "profiles": {"framework-default": fd}, "tuned": tuned}

    ok = lambda r: {"status": "ok", "max_rate": r}  # noqa: E731
    studies = {"litserve-mlp": study("litserve", "mlp", ok(600.0), ok(800.0)),
               "rayserve-mlp": study("rayserve", "mlp", ok(0.0), ok(37.5)),
               "triton-mlp": study("triton", "mlp", {"status": "unmeasured", "max_rate": None}, None)}
    studies["mlflow-mlp"] = {**study("mlflow", "mlp", None, None), "trials": [{"status": "unmeasured"}]}
    tuned, fdef = rankings(studies)
    assert tuned == ("mlp, tuned: litserve (800) > rayserve (38); not ranked: mlflow nothing measured (unmeasured), "
                     "triton not run")
    assert fdef == ("mlp, framework-default: litserve (600) > rayserve (0); not ranked: mlflow not run, "
                    "triton unmeasured")


def test_a_trial_starts_only_when_its_study_longest_trial_fits_in_the_budget():
    """Sessions 9 and 10 let any trial start before the limit and overran it by 16 s and 8 s (session 11, with the
    study's median, by 0.7 s): a trial now starts only when the time spent plus the study's longest trial so far
    (every study's median before its own first) fits."""
    from servingbench.tune import _Tuning

    t = object.__new__(_Tuning)
    t.budget_s = 300.0
    t.meta = {"spent_s": 0.0, "studies": {"a-mlp": {"spent_s": 0.0}, "b-mlp": {"spent_s": 0.0}}}
    assert t.expected_s("a-mlp") == 0.0 and t.fits("a-mlp")  # nothing ran yet: the first trial starts
    t.meta["studies"]["a-mlp"].update(spent_s=150.0, trial_s=[40.0, 70.0, 40.0])
    t.meta["spent_s"] = 150.0
    assert t.expected_s("a-mlp") == 70.0 and t.fits("a-mlp")  # 150 + 70 <= 300
    assert t.expected_s("b-mlp") == 40.0  # no trial of its own yet: every study's median
    t.meta["studies"]["b-mlp"].update(spent_s=100.0, trial_s=[100.0])
    t.meta["spent_s"] = 250.0
    assert not t.fits("a-mlp") and not t.fits("b-mlp")  # 250 + 70 and 250 + 100 > 300
    t.budget_s = 330.0
    assert t.fits("a-mlp") and not t.fits("b-mlp")  # the short study still fits, the long one does not


def test_a_rate_the_search_could_not_bound_reads_as_a_lower_bound():
    """Session 11: MOSEC's and Triton's mlp searches ran out of steps while every rate passed (3,200 rps); the
    summary showed "3200 rps" and "100 % of tuned" as if measured.  Now they read "≥" and say so."""
    from servingbench.tune import lower_bound, pct_text, summary_rows

    s = summarize_study(_study([("framework-default", 3200.0, 0.003), ("servingbench-default", 1600.0, 0.003)]))
    for t in s["trials"]:
        t["reason"] = ("upper bound not reached: step limit (6) hit while growing; confirmed at 3200 rps"
                       if t["max_rate"] == 3200.0 else "bisection converged to 25%; confirmed at 1600 rps")
    s["tuned"] = s["trials"][0]
    assert lower_bound(s["trials"][0]) == "no rate above it failed" and lower_bound(s["trials"][1]) is None
    assert lower_bound({"status": "ok", "generator_limited": True}) == "generator-limited"
    row = summary_rows({"mosec-mlp": s})[0]
    assert row[1] == "≥ 3200 rps (no rate above it failed)" and row[2] == "1600 rps"
    assert pct_text(s) == "100 % (a rate is a lower bound)"
    # trials recorded now carry it from the probes (read_trial: stats.slo_unbounded), whatever the reason says
    assert lower_bound({"status": "ok", "unbounded": False, "reason": "upper bound not reached"}) is None
    assert lower_bound({"status": "ok", "unbounded": True, "reason": ""}) == "no rate above it failed"


def test_a_tuning_kept_by_an_older_servingbench_resumes(tmp_path):
    """A suite field added since a tuning started (session 11: inprocess_limit) takes its default when the stored
    suite is compared on --resume; a different suite is still refused."""
    import json as _json

    from servingbench.scenarios.schema import Suite
    from servingbench.tune import TUNE_FILE, TuneError, _open_dir

    suite = Suite.model_validate({"name": "t", "frameworks": ["litserve"], "models": ["mlp"],
                                  "workloads": [{"name": "c", "kind": "closed_loop", "concurrency": [1]}]})
    stored = suite.model_dump(mode="json")
    stored.pop("inprocess_limit")  # as an older servingbench wrote it
    (tmp_path / TUNE_FILE).write_text(_json.dumps({"suite": stored, "studies": {}, "spent_s": 0.0}))
    path, meta = _open_dir(suite, tmp_path / "s.yaml", tmp_path, tmp_path)
    assert path == tmp_path
    other = suite.model_copy(update={"name": "u"})
    with pytest.raises(TuneError, match="the suite differs"):
        _open_dir(other, tmp_path / "s.yaml", tmp_path, tmp_path)


def test_a_tuning_resumes_when_a_nested_field_was_added_since(tmp_path):
    """tune.json keeps the suite as a suite file's data (schema.raw) and reads it through today's schema: a field
    added since inside a section (here measurement.sample_every) takes its default; a different suite is refused."""
    import json as _json

    from servingbench.scenarios.schema import Suite, raw
    from servingbench.tune import TUNE_FILE, TuneError, _open_dir

    suite = Suite.model_validate({"name": "t", "frameworks": ["litserve"], "models": ["mlp"],
                                  "workloads": [{"name": "c", "kind": "closed_loop", "concurrency": [1]}]})
    first, _ = _open_dir(suite, tmp_path / "s.yaml", tmp_path, None)  # a new tuning stores raw(suite)
    assert _json.loads((first / TUNE_FILE).read_text())["suite"] == raw(suite)
    stored = raw(suite)
    stored["measurement"].pop("sample_every")
    (tmp_path / TUNE_FILE).write_text(_json.dumps({"suite": stored, "studies": {}, "spent_s": 0.0}))
    assert _open_dir(suite, tmp_path / "s.yaml", tmp_path, tmp_path)[0] == tmp_path
    longer = suite.model_copy(update={"measurement": suite.measurement.model_copy(update={"windows": 9})})
    with pytest.raises(TuneError, match="the suite differs"):
        _open_dir(longer, tmp_path / "s.yaml", tmp_path, tmp_path)


def test_a_search_whose_passing_rates_failed_confirmation_says_so():
    """Session 12: Ray Serve with max_ongoing_requests 5 passed 100 and 125 rps once, then collapsed in both
    confirmations; the summary said "0 rps" as if no rate had ever passed."""
    from servingbench.tune import summary_rows

    s = summarize_study(_study([("framework-default", 0.0, 0.12), ("servingbench-default", 137.5, 0.06)]))
    s["trials"][0]["passed_unconfirmed"] = 125.0
    row = summary_rows({"rayserve-mlp": s})[0]
    assert row[1] == "0 rps (125 rps passed once, not confirmed)" and row[2] == "138 rps"


def test_the_tuning_writes_a_suite_that_remeasures_default_and_tuned_interleaved(tmp_path):
    """The tuned profile is the best of a few single searches: ``confirm-<model>.yaml`` re-measures each framework's
    framework-default and tuned profiles with interleaved repeats, and loads as a suite file."""
    from servingbench.scenarios.loader import load_suite
    from servingbench.suite import plan_cells
    from servingbench.tune import CONFIRM_REPEATS, write_confirm_suites, write_summary

    suite = load_suite(Path(__file__).parents[2] / "scenarios" / "tune_throughput.yaml")
    ray = summarize_study(_study([("framework-default", 100.0, 0.12), ("servingbench-default", 137.5, 0.06)]))
    ray["trials"][0]["params"] = {"workers": 1, "options.max_ongoing_requests": 5}
    ray["trials"][1]["params"] = {"workers": 2, "batch_timeout_ms": 3.2e-05, "options.max_ongoing_requests": 100}
    same = summarize_study(_study([("framework-default", 800.0, 0.003)]))  # tuned is the framework default
    studies = {"rayserve-mlp": {"framework": "rayserve", "model": "mlp", **ray},
               "litserve-mlp": {"framework": "litserve", "model": "mlp", **same}}
    files = write_confirm_suites(tmp_path, suite, studies)
    assert [f.name for f in files] == ["confirm-mlp.yaml"]
    confirm = load_suite(files[0])
    deps = {d.label: d for d in confirm.deployments}
    assert set(deps) == {"rayserve-framework-default", "rayserve-tuned", "litserve-framework-default"}
    assert deps["rayserve-framework-default"].options["rayserve"]["max_ongoing_requests"] == 5
    tuned = deps["rayserve-tuned"]
    assert tuned.workers == 2 and tuned.options["rayserve"]["max_ongoing_requests"] == 100
    assert tuned.batch_timeout == pytest.approx(3.2e-08)  # a tiny value is written without an exponent
    assert confirm.measurement.repeats == CONFIRM_REPEATS and not confirm.inprocess_limit
    assert [w.kind for w in confirm.workloads] == ["slo_search"] and confirm.slo == suite.slo
    cells = [c.id for c in plan_cells(confirm)]
    assert cells[:3] == ["rayserve/rayserve-framework-default#r0", "rayserve/rayserve-tuned#r0",
                         "litserve/litserve-framework-default#r0"] and len(cells) == 3 * CONFIRM_REPEATS
    md = write_summary(tmp_path, studies, files).read_text()
    assert "servingbench run confirm-mlp.yaml --report" in md
