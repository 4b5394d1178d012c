"""Scenario validation: every error names the file, the line, the field and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from servingbench.scenarios.loader import ScenarioError, load_suite
from servingbench.scenarios.schema import parse_duration

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
name: t
frameworks: [litserve]
models: [mlp]
workloads:
  - name: closed
    kind: closed_loop
    concurrency: [1, 2]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ScenarioError) as e:
        load_suite(write(tmp_path, text))
    return str(e.value)


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("**/*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path):
    suite = load_suite(path)
    # what servingbench writes back as a suite file (tune's confirm-<model>.yaml) reads as the same suite
    from servingbench.scenarios.schema import Suite, duration_text, raw

    assert Suite.model_validate(raw(suite)) == suite == Suite.model_validate(raw(suite, compact=True))
    assert duration_text(3.2e-08) == "0.000000032s" and duration_text(0.0) == "0s" and duration_text(30.0) == "30s"


def test_good_suite_defaults(tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    assert s.workloads[0].concurrency == [1, 2]
    assert s.deployments[0].label == "default" and s.measurement.windows == 3


def test_unknown_key_names_file_line_field(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    concurrency: [1, 2]", "    concurrency: [1, 2]\n    concurency: 3"))
    assert "suite.yaml" in msg and "line 8" in msg and "workloads.0.concurency" in msg and "unknown key" in msg


def test_wrong_type_and_negative_value(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("[1, 2]", "[1, -2]"))
    assert "workloads.0.concurrency.1" in msg and "-2" in msg and "line 7" in msg
    msg = error_of(tmp_path, GOOD + "measurement:\n  warmup: -1s\n")
    assert "measurement.warmup" in msg


def test_duration_needs_a_unit(tmp_path):
    msg = error_of(tmp_path, GOOD + "slo:\n  p99: 50\n")
    assert "slo.p99" in msg and "50" in msg and "no unit" in msg and "'50ms'" in msg
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration("2m") == 120


def test_unknown_framework_suggests(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("[litserve]", "[litserv]"))
    assert "'litserv'" in msg and "Did you mean 'litserve'" in msg and "line 2" in msg


def test_unknown_model_suggests(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("[mlp]", "[mpl]"))
    assert "mpl" in msg and "mlp" in msg


def test_unknown_workload_kind(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("closed_loop", "closed"))
    assert "workloads.0" in msg and "closed_loop" in msg


def test_cross_checks(tmp_path):
    msg = error_of(tmp_path, GOOD + "  - name: slo\n    kind: slo_search\n")
    assert "no 'slo:' section" in msg
    msg = error_of(tmp_path, GOOD.replace("    concurrency", "    models: [cnn]\n    concurrency"))
    assert "'cnn'" in msg


def test_slo_min_rate_above_start_rate(tmp_path):
    msg = error_of(tmp_path, GOOD + "  - name: slo\n    kind: slo_search\n    start_rate: 100\n    min_rate: 200\n"
                   "slo:\n  p99: 50ms\n")
    assert "suite.yaml" in msg and "workloads.1" in msg and "min_rate 200 is above start_rate 100" in msg
    assert "set min_rate <= start_rate" in msg


def test_not_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "name: [unclosed\n")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_suite(tmp_path / "nope.yaml")


def test_published_claims_must_name_points_of_the_suite(tmp_path):
    """Issue 16: a published figure names a framework, deployment, workload and load of the suite."""
    from servingbench.scenarios.loader import ScenarioError, load_suite

    base = ("name: p\nframeworks: [litserve]\nmodels: [mlp]\nworkloads:\n  - {name: c, kind: closed_loop, "
            "concurrency: [1]}\npublished:\n  - {claim: x, source: y, metric: throughput_rps, ")
    ok = tmp_path / "ok.yaml"
    ok.write_text(base + "of: {framework: litserve, workload: c, load: 1}, value: 100}\n")
    assert load_suite(ok).published[0].of.deployment == "default"
    for body, match in (("of: {framework: litserve, deployment: nope, workload: c, load: 1}, value: 1}",
                         "names deployment 'nope'"),
                        ("of: {framework: litserve, workload: c, load: 1}}", "value or as range"),
                        ("of: {framework: litserve, workload: c, load: 1}, range: [4, 2]}", r"\[4.0, 2.0\] is not")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(base + body + "\n")
        with pytest.raises(ScenarioError, match=match):
            load_suite(bad)
