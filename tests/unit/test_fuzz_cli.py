"""Issue 15, defect 11 and its "done when": a property-based fuzz of suite files and CLI arguments, plus one test per
class of bad input (the suite parser and schema, run.json, records, output paths).

Every case must end with exit code 0, 1 or 2 and a message: never an uncaught exception, never a traceback, never a
hang (each case runs under an alarm).  Hypothesis is derandomized (the same cases every run) and keeps no example
database, so the test is reproducible and writes nothing outside its temporary directory.  The number of cases run
is printed at the end of the module (``fuzz cases: ...``).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from typer.testing import CliRunner

from servingbench.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "results" / "sample"
CASE_LIMIT_S = 20
"""Longest any one case may take (in-process: SIGALRM; subprocess: timeout)."""

# hypothesis's caches go to the temporary directory, not a .hypothesis/ folder in the checkout
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "servingbench-hypothesis")
COUNTS: collections.Counter = collections.Counter()
EXITS: collections.Counter = collections.Counter()
_FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(max_examples: int) -> settings:
    """Derandomized (the same cases every run), no example database, no per-example deadline (CASE_LIMIT_S)."""
    return settings(_FUZZ, max_examples=max_examples)

VALID_SUITE = """\
name: fuzz
frameworks: [litserve, mosec]
models: [mlp, {name: cnn, params: {resolution: 32}}]
deployments:
  - label: a
    workers: 2
    options: {litserve: {}}
  - {label: b, frameworks: [mosec], max_batch_size: 8, batch_timeout: 5ms}
measurement: {warmup: 1s, window: 1s, windows: 2, max_duration: 5s}
slo: {p99: 50ms}
cpu_sets: {server: "0", generator: "1"}
features: [auth]
workloads:
  - {name: closed, kind: closed_loop, concurrency: [1, 4]}
  - {name: open, kind: open_loop, rates: [10, 20.5], max_in_flight: 64}
  - {name: search, kind: slo_search, start_rate: 10, max_rate: 100}
  - {name: steps, kind: shape, stages: [{users: 2, duration: 2s}]}
"""


class CaseTimeout(BaseException):
    """A case ran past CASE_LIMIT_S (a BaseException, so no ``except Exception`` in the code under test eats it)."""


@contextmanager
def bounded(seconds: float = CASE_LIMIT_S):
    def expire(signum, frame):  # noqa: ARG001
        raise CaseTimeout(f"case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    total = sum(COUNTS.values())

    def outcome(kind: str) -> str:
        codes = [f"exit {c}: {EXITS[(kind, c)]}" for c in (0, 1, 2) if EXITS[(kind, c)]]
        return f" ({', '.join(codes)})" if codes else ""

    detail = "; ".join(f"{k} {v}{outcome(k)}" for k, v in sorted(COUNTS.items()))
    line = f"fuzz cases: {total}, none with a traceback or a hang: {detail}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:  # pragma: no cover
        print(line)
        return
    with capman.global_and_fixture_disabled():  # past pytest's capture, even with -q
        reporter.write_line("")
        reporter.write_line(line)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files the fuzzer may name: a valid run, damaged runs, garbage, a FIFO, a directory, a valid suite."""
    ws = tmp_path_factory.mktemp("fuzz-ws")
    shutil.copytree(SAMPLE, ws / "run")
    shutil.copytree(SAMPLE, ws / "run2")
    bad = ws / "badrun"
    shutil.copytree(SAMPLE, bad)
    (bad / "run.json").write_bytes(b"[1, 2, 3]")
    badrec = ws / "badrecs"
    shutil.copytree(SAMPLE, badrec)
    (badrec / "records.jsonl").write_bytes(b"\x00\xff garbage\n{\"type\": 3}\n")
    (ws / "good.yaml").write_text(VALID_SUITE)
    (ws / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    (ws / "empty.yaml").write_text("")
    (ws / "adir").mkdir()
    os.mkfifo(ws / "fifo")
    (ws / "afile").write_text("not a directory")
    return ws


def _check(result, what: str) -> None:
    """Exit 0/1/2 with a message; no uncaught exception and no traceback."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise AssertionError(f"{what}: uncaught {type(exc).__name__}: {exc}\n{tb}\noutput:\n{result.output[-2000:]}")
    assert result.exit_code in (0, 1, 2), f"{what}: exit {result.exit_code}\n{result.output[-2000:]}"
    assert "Traceback" not in result.output, f"{what}: traceback in the output\n{result.output[-3000:]}"
    if result.exit_code != 0:
        assert result.output.strip(), f"{what}: exit {result.exit_code} without a message"


def _invoke(args: list[str], kind: str):
    COUNTS[kind] += 1
    with bounded():
        result = CliRunner().invoke(app, args)
    _check(result, "servingbench " + " ".join(repr(a) if len(repr(a)) <= 80 else repr(a)[:77] + "..." for a in args))
    EXITS[(kind, result.exit_code)] += 1
    return result


def _validate_text(tmp_path: Path, data: bytes, kind: str):
    path = tmp_path / f"suite-{COUNTS[kind]}.yaml"
    path.write_bytes(data)
    try:
        return _invoke(["validate", str(path)], kind)
    finally:
        path.unlink()


# ---- strategies ------------------------------------------------------------------------------------------------------
FRAMEWORKS = ["litserve", "mosec", "mlserver", "triton", "rayserve", "mlflow", "nope", ""]
MODELS = ["mlp", "cnn", "encoder", "nope"]
FEATURES = ["multi_model", "caching", "batching", "manifest", "auth", "tls", "grpc", "gpu", "nope"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=24),
    st.sampled_from(["10s", "50ms", "auto", "none", "0", "-1", ".inf", "1e9", "0-3", "x" * 300, "\x00", "../../x"]),
)
junk = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                 st.dictionaries(st.text(max_size=10), c, max_size=4)),
                    max_leaves=10)


def maybe(valid, junk_share: int = 10):
    """Mostly a plausible value for the field (valid or near the limits), about one time in ``junk_share`` anything:
    most generated suites get past the first few fields, so every validator is reached."""
    # (not one_of(valid, ..., valid, junk): hypothesis would merge the copies and pick junk half the time)
    return st.integers(0, junk_share - 1).flatmap(lambda i: junk if i == junk_share // 2 else valid)


def near(lo: float, hi: float, *, integer: bool = True):
    """Values inside [lo, hi] mostly, the edges and a little beyond sometimes."""
    edges = [lo, hi, lo - 1, hi + 1, 0, -1] if integer else [lo, hi, 0.0, -0.0, float("inf"), float("nan")]
    inside = st.integers(int(lo), int(hi)) if integer else st.floats(lo, hi)
    return maybe(st.one_of(inside, inside, inside, st.sampled_from(edges)))


good_durations = st.sampled_from(["1s", "2s", "50ms", "500ms", "250us", "1m"])
durations = maybe(st.one_of(good_durations, good_durations, st.sampled_from(
    ["0s", "2h", "-1s", "10", "1e3s", ".5s", "s", "1.5 min", "inf s"])))
small = near(1, 16)
floats = maybe(st.floats(allow_nan=True, allow_infinity=True))
rates = maybe(st.lists(st.one_of(st.floats(0.5, 5000), st.sampled_from([0.0, -1.0, float("inf"), float("nan")])),
                       min_size=0, max_size=3))
cpus = maybe(st.sampled_from(["0", "1", "2-3", "0-3", "2-1", "0,1", "a", "", ",", "0-99999", "1-2-3", " 4 "]))
fw_lists = maybe(st.lists(st.sampled_from(FRAMEWORKS[:6]), min_size=1, max_size=3, unique=True))

measurement = maybe(st.fixed_dictionaries({}, optional={
    "warmup": durations, "window": durations, "windows": near(1, 5), "tolerance": near(0.01, 1, integer=False),
    "max_duration": maybe(st.sampled_from(["10s", "30s", "1s", "1m"])), "min_requests": near(1, 500),
    "repeats": near(1, 20), "sample_every": near(1, 100), "timeout": durations}))
_common = {"batch": near(1, 4096), "input_pool": near(1, 64), "measurement": measurement,
           "models": maybe(st.lists(st.sampled_from(MODELS), max_size=2)),
           "weights": maybe(st.dictionaries(st.sampled_from(MODELS), st.floats(allow_nan=True), max_size=2))}


def _workload(kind: str, required: dict, optional: dict):
    return st.fixed_dictionaries({"name": st.sampled_from(["w1", "w2", "w3"]), "kind": st.just(kind), **required},
                                 optional={**_common, **optional})


workload = maybe(st.one_of(
    _workload("closed_loop", {"concurrency": maybe(st.lists(near(1, 10_000), max_size=4))}, {}),
    _workload("open_loop", {"rates": rates}, {"max_in_flight": near(1, 100_000),
                                              "arrival": maybe(st.sampled_from(["poisson", "constant"]))}),
    _workload("slo_search", {}, {"start_rate": near(1, 1000, integer=False), "max_rate": floats,
                                 "precision": near(0.01, 0.99, integer=False), "max_steps": near(1, 50),
                                 "max_in_flight": near(1, 100_000), "confidence": near(0.5, 0.99, integer=False),
                                 "dispersion": near(1, 100, integer=False), "confirm": st.booleans()}),
    _workload("shape", {"stages": maybe(st.lists(st.fixed_dictionaries({"users": near(1, 10_000),
                                                                         "duration": durations}), max_size=3))},
              {"shape": maybe(st.sampled_from(["step", "ramp"])), "start_users": near(1, 10_000)}),
), junk_share=20)
deployment = maybe(st.fixed_dictionaries({"label": st.sampled_from(["a", "b", "c", "default"])}, optional={
    "frameworks": fw_lists, "workers": near(1, 64), "threads": near(1, 256),
    "max_batch_size": near(1, 4096), "batch_timeout": durations,
    "model_format": maybe(st.sampled_from(["eager", "torchscript", "onnx"])),
    "auth": maybe(st.booleans()), "tls": maybe(st.sampled_from([True, False, "mutual"])),
    "protocol": maybe(st.sampled_from(["http", "grpc"])),
    "options": maybe(st.dictionaries(st.sampled_from(FRAMEWORKS[:6]), st.dictionaries(
        st.sampled_from(["timeout_s", "workers", "x"]), junk, max_size=2), max_size=2))}))


def _suite_dicts():
    known = {
        "deployments": maybe(st.lists(deployment, max_size=3)),
        "workloads": maybe(st.lists(workload, max_size=3)),
        "measurement": measurement,
        "slo": maybe(st.fixed_dictionaries({"p99": durations}, optional={"max_error_rate": floats})),
        "cpu_sets": maybe(st.one_of(st.sampled_from(["auto", "none"]),
                                    st.fixed_dictionaries({}, optional={"server": cpus, "generator": cpus}))),
        "generator": maybe(st.fixed_dictionaries({}, optional={
            "workers": maybe(st.one_of(near(0, 64), st.just("auto"))), "remote_workers": near(0, 1024),
            "master_port": near(1, 65535), "master_bind": maybe(st.sampled_from(["127.0.0.1", "0.0.0.0"])),
            "connect_timeout": durations})),
        "features": maybe(st.lists(st.sampled_from(FEATURES), max_size=3)), "device": maybe(st.just("cpu")),
        "startup_timeout": durations, "runtime": maybe(st.sampled_from(["local", "docker", "k8s"])),
        "targets": maybe(st.dictionaries(st.sampled_from(FRAMEWORKS[:6]), st.fixed_dictionaries(
            {"url": maybe(st.sampled_from(["http://127.0.0.1:1", "ftp://x", "https://10.0.0.1"]))}), max_size=1)),
        "interpreters": maybe(st.dictionaries(st.sampled_from(FRAMEWORKS[:6]), st.sampled_from(["/x/python", "py"]),
                                              max_size=1)),
        "images": maybe(st.dictionaries(st.sampled_from(FRAMEWORKS[:6]), st.text(max_size=10), max_size=1)),
        "description": maybe(st.text(max_size=40)),
        "unknown_key": junk,
    }
    base = yaml.safe_load(VALID_SUITE)
    required = {"name": maybe(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)), "frameworks": fw_lists,
                "models": maybe(st.lists(st.sampled_from(MODELS), min_size=1, max_size=2))}
    everything = {**known, **required}
    # the valid suite with one to three fields replaced: most pass or fail on exactly those fields
    edited = st.lists(st.sampled_from(sorted(everything)), min_size=1, max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: everything[k] for k in keys})).map(lambda new: {**base, **new})
    return st.one_of(edited, _generated(known))


def _generated(known):
    """A suite built field by field."""
    return st.fixed_dictionaries(
        {"name": maybe(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)),
         "frameworks": fw_lists,
         "models": maybe(st.lists(st.one_of(st.sampled_from(MODELS[:3]), st.fixed_dictionaries(
             {"name": st.sampled_from(MODELS), "params": maybe(st.dictionaries(
                 st.sampled_from(["resolution", "hidden", "x"]), near(1, 512), max_size=2))})),
             min_size=1, max_size=2, unique_by=lambda m: m if isinstance(m, str) else m["name"]))},
        optional={k: v for k, v in known.items() if k != "unknown_key"}).flatmap(
        lambda d: st.integers(0, 19).map(lambda i: {**d, "unknown_key": 1} if i == 10 else d))


def _dump(data) -> bytes:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8", "surrogatepass")


# ---- fuzz: suite files through `validate` ----------------------------------------------------------------------------
@fuzz(200)
@given(data=_suite_dicts())
def test_fuzz_generated_suites(tmp_path, data):
    _validate_text(tmp_path, _dump(data), "suite: generated fields")


@fuzz(120)
@given(data=junk)
def test_fuzz_random_yaml_structures(tmp_path, data):
    _validate_text(tmp_path, _dump(data), "suite: random structure")


@fuzz(150)
@given(data=st.binary(max_size=3000))
def test_fuzz_garbage_bytes(tmp_path, data):
    _validate_text(tmp_path, data, "suite: garbage bytes")


@fuzz(150)
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID_SUITE)), st.integers(0, 8),
                                st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=6)), min_size=1,
                      max_size=4))
def test_fuzz_mutated_valid_suite(tmp_path, edits):
    """The valid suite with characters deleted and inserted (broken indentation, quotes, colons, anchors...)."""
    text = VALID_SUITE
    for pos, cut, ins in edits:
        pos = min(pos, len(text))
        text = text[:pos] + ins + text[pos + cut:]
    _validate_text(tmp_path, text.encode("utf-8", "surrogatepass"), "suite: mutated")


@fuzz(40)
@given(depth=st.integers(1, 3000), opener=st.sampled_from(["[", "{a: ", "- ", "{", "[{b: "]),
       anchors=st.booleans())
def test_fuzz_deep_nesting(tmp_path, depth, opener, anchors):
    if opener == "- ":
        text = "".join("  " * i + "-\n" for i in range(depth)) + "  " * depth + "x\n"
    else:
        closer = {"[": "]", "{a: ": "}", "{": "}", "[{b: ": "}]"}[opener]
        body = opener * depth + ("&a 1" if anchors else "1") + closer * depth
        text = f"name: deep\nframeworks: [litserve]\nmodels: [mlp]\noptions: {body}\n"
    _validate_text(tmp_path, text.encode(), "suite: deep nesting")


# ---- fuzz: command-line arguments ------------------------------------------------------------------------------------
PATHS = ["run", "run2", "badrun", "badrecs", "good.yaml", "garbage.bin", "empty.yaml", "adir", "fifo", "afile",
         "missing", "missing/deeper", "adir/new.html", "afile/x.html", "/dev/null", ".", "out", "run/run.json"]
OPTIONS = {
    "validate": ["--schema", "--help"],
    "report": ["--out", "--help"],
    "compare": ["--html", "--threshold", "--only-changes", "--help"],
    "matrix": ["--help"],
}
VALUES = ["0", "-1", "0.05", "nan", "inf", "-inf", "1e309", "abc", "", " ", "--", "-x", "\u00e9", "x" * 5000]


def _safe_text(s: str) -> bool:
    """Free text the fuzzer may pass as an argument: never a path outside the workspace."""
    return not s.startswith(("/", "~")) and ".." not in s and "\x00" not in s


POSITIONALS = {"validate": 1, "report": 1, "compare": 2, "matrix": 1}
LIKELY = {"validate": ["good.yaml", "empty.yaml", "garbage.bin", "fifo", "adir", "missing"],
          "report": ["run", "run2", "badrun", "badrecs", "adir", "missing"],
          "compare": ["run", "run2", "badrun", "badrecs", "missing"],
          "matrix": ["run", "badrun", "badrecs", "adir", "missing"]}


def _args(command: str):
    """Either anything at all, or the command's positional arguments (likely ones) followed by anything."""
    word = st.one_of(st.sampled_from(PATHS), st.sampled_from(OPTIONS[command]), st.sampled_from(VALUES),
                     st.text(max_size=12).filter(_safe_text))
    plausible = st.tuples(st.lists(st.sampled_from(LIKELY[command]), min_size=POSITIONALS[command],
                                   max_size=POSITIONALS[command]), st.lists(word, max_size=4)).map(
        lambda t: t[0] + t[1])
    return st.one_of(plausible, st.lists(word, max_size=6))


@pytest.fixture
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    return workspace


@fuzz(120)
@given(args=_args("validate"))
def test_fuzz_validate_arguments(in_workspace, args):
    _invoke(["validate", *args], "cli: validate")


@fuzz(30)
@given(args=_args("report"))
def test_fuzz_report_arguments(in_workspace, args):
    _invoke(["report", *args], "cli: report")


@fuzz(120)
@given(args=_args("compare"))
def test_fuzz_compare_arguments(in_workspace, args):
    _invoke(["compare", *args], "cli: compare")


@fuzz(100)
@given(args=_args("matrix"))
def test_fuzz_matrix_arguments(in_workspace, args):
    _invoke(["matrix", *args], "cli: matrix")


# ---- a few through a real process: the console script's own error path, stdin, signals ---------------------------
@fuzz(6)
@given(data=st.one_of(_suite_dicts().map(_dump), st.binary(max_size=500)))
def test_fuzz_validate_in_a_subprocess(tmp_path, data):
    COUNTS["subprocess: validate"] += 1
    path = tmp_path / "suite.yaml"
    path.write_bytes(data)
    p = subprocess.run([sys.executable, "-m", "servingbench.cli", "validate", str(path)], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode in (0, 1, 2), p.stderr[-2000:]
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    assert p.returncode == 0 or p.stderr.strip()


def test_fifo_suite_in_a_subprocess_does_not_hang(workspace):
    COUNTS["subprocess: validate"] += 1
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "servingbench.cli", "validate", str(workspace / "fifo")],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert time.monotonic() - t0 < 60
    assert p.returncode == 2 and "is not a regular file" in p.stderr and "Traceback" not in p.stderr


# ---- one test per class of bad input ---------------------------------------------------------------------------------
BASE = "name: s\nframeworks: [litserve]\nmodels: [mlp]\n"
BAD_SCHEMA = {
    # case: (suite text after the base, expected text of the message: field, value and fix)
    "rate_inf": ("workloads:\n  - {name: o, kind: open_loop, rates: [10, .inf]}\n",
                 ["workloads.0", "rates[1] is inf, not a finite number", "write a finite value"]),
    "rate_nan": ("workloads:\n  - {name: o, kind: open_loop, rates: [.nan]}\n",
                 ["workloads.0.rates.0", "value: nan", ".inf and .nan are not accepted"]),
    "rate_inf_string": ("workloads:\n  - {name: o, kind: open_loop, rates: ['inf']}\n",
                        ["rates[0] is inf, not a finite number"]),
    "max_rate_inf": ("slo: {p99: 50ms}\nworkloads:\n  - {name: o, kind: slo_search, max_rate: .inf}\n",
                     ["max_rate is inf, not a finite number"]),
    "weights_nan": ("workloads:\n  - {name: o, kind: closed_loop, concurrency: [1], weights: {mlp: .nan}}\n",
                    ["weights.mlp is nan, not a finite number"]),
    "options_inf": ("deployments:\n  - {label: a, options: {litserve: {timeout_s: .inf}}}\n"
                    "workloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                    ["deployments.0.options", "'timeout_s' = inf", "<= 3600"]),
    "max_in_flight_huge": ("workloads:\n  - {name: o, kind: open_loop, rates: [1], max_in_flight: 1.0e+9}\n",
                           ["workloads.0.max_in_flight", "max_in_flight 1000000000 is more than 100000",
                            "use at most 100000", "exhausts the load generator"]),
    "max_in_flight_huge_search": ("slo: {p99: 50ms}\nworkloads:\n  - {name: o, kind: slo_search, "
                                  "max_in_flight: 100001}\n", ["max_in_flight 100001 is more than 100000"]),
    "max_in_flight_exponent": ("workloads:\n  - {name: o, kind: open_loop, rates: [1], max_in_flight: 1e9}\n",
                               ["workloads.0.max_in_flight", "value: '1e9'", "write a whole number"]),
    "cpu_sets_overlap": ("cpu_sets: {server: '0-3', generator: '3,4'}\n"
                         "workloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                         ["cpu_sets", "server '0-3' and generator '3,4' share CPU(s) 3", "disjoint"]),
    "cpu_sets_syntax": ("cpu_sets: {server: 'zero', generator: '1'}\n"
                        "workloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                        ["cpu_sets.server 'zero'", "not a CPU number or range", "e.g. '0-3,6'"]),
    "cpu_sets_backwards": ("cpu_sets: {server: '3-1'}\nworkloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                           ["the range '3-1' runs backwards", "'1-3'"]),
    "cpu_sets_huge": ("cpu_sets: {server: '0-999999999'}\n"
                      "workloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                      ["CPU 999999999 is beyond", "8191"]),
    "cpu_sets_empty": ("cpu_sets: {generator: ','}\nworkloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                       ["names no CPU"]),
    "deployments_empty": ("deployments: []\nworkloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                          ["deployments: deployments is empty", "remove the key to use the default deployment"]),
    "deployment_frameworks_empty": ("deployments:\n  - {label: a, frameworks: []}\n"
                                    "workloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\n",
                                    ["deployments.0.frameworks", "frameworks is empty"]),
    "concurrency_empty": ("workloads:\n  - {name: o, kind: closed_loop, concurrency: []}\n",
                          ["workloads.0.concurrency", "list at least one load point"]),
    "rates_empty": ("workloads:\n  - {name: o, kind: open_loop, rates: []}\n",
                    ["workloads.0.rates", "list at least one arrival rate"]),
    "duplicate_key": ("workloads:\n  - {name: o, kind: closed_loop, concurrency: [1]}\nname: t\n",
                      ["key 'name' appears twice", "remove or rename one of them"]),
}


@pytest.mark.parametrize("case", list(BAD_SCHEMA))
def test_bad_suite_values_are_clear_errors(tmp_path, case):
    text, expected = BAD_SCHEMA[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(BASE + text)
    r = _invoke(["validate", str(path)], "class: suite")
    msg = " ".join(r.output.split())
    assert r.exit_code == 2, msg
    assert str(path) in msg and "line " in msg, msg  # the file and the line
    for e in expected:
        assert e in msg, msg


def test_valid_suite_still_validates(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(VALID_SUITE)
    r = _invoke(["validate", str(path)], "class: suite")
    assert r.exit_code == 0 and "ok - 3 cell(s)" in " ".join(r.output.split()), r.output


BAD_RUNS = {
    # run.json and records.jsonl as the report, matrix and compare commands meet them
    "run.json is a list": ("run.json", b"[1, 2]", "holds a list, not a JSON object"),
    "run.json binary": ("run.json", bytes(range(256)), "not UTF-8 text"),
    "run.json truncated": ("run.json", b'{"schema": 1, "run_id": "x", "cel', "is not valid JSON"),
    "run.json wrong types": ("run.json", json.dumps({"schema": 1, "run_id": 5, "status": [], "cells": {}}).encode(),
                             "field 'run_id' is a number"),
    "records wrong types": ("records.jsonl", b'{"type": "point", "id": ["x"]}\n', "field 'id' is a list"),
    "records garbage": ("records.jsonl", b"\x00\x01\x02\nnot json\n", "none of its 2 non-empty line(s)"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
@pytest.mark.parametrize("command", ["report", "matrix", "compare"])
def test_damaged_results_are_clear_errors_from_every_command(tmp_path, case, command):
    name, content, expected = BAD_RUNS[case]
    run = tmp_path / "run"
    shutil.copytree(SAMPLE, run)
    (run / name).write_bytes(content)
    args = {"report": ["report", str(run), "--out", str(tmp_path / "reports")], "matrix": ["matrix", str(run)],
            "compare": ["compare", str(SAMPLE), str(run)]}[command]
    r = _invoke(args, "class: results")
    msg = " ".join(r.output.split())
    assert r.exit_code == 2, msg
    if command == "matrix" and name == "records.jsonl" and "garbage" in case:
        assert "no feature probe results" in msg  # matrix reads probe records only: none readable
    else:
        assert str(run) in msg and expected in msg, msg


def test_compare_html_into_a_missing_directory_creates_it(tmp_path):
    target = tmp_path / "new" / "deeper" / "compare.html"
    r = _invoke(["compare", str(SAMPLE), str(SAMPLE), "--html", str(target)], "class: output paths")
    assert r.exit_code in (0, 1), r.output
    assert target.is_file() and "<table" in target.read_text()


@pytest.mark.parametrize("where,expected", [
    ("adir", "is a directory: give a file name, e.g."),
    ("afile/x.html", "cannot create its directory"),
    ("/dev/null", "exists and is not a regular file"),
    ("/proc/self/x/y.html", "cannot create its directory"),
])
def test_compare_html_paths_that_cannot_be_written(workspace, tmp_path, where, expected):
    target = where if where.startswith("/") else str(workspace / where)
    before = sorted(p.name for p in workspace.iterdir())
    r = _invoke(["compare", str(SAMPLE), str(SAMPLE), "--html", target], "class: output paths")
    msg = " ".join(r.output.split())
    assert r.exit_code == 2 and f"--html {target}" in msg and expected in msg, msg
    assert sorted(p.name for p in workspace.iterdir()) == before


@pytest.mark.parametrize("out,expected", [("/dev/null", "/dev/null"), ("afile", "afile")])
def test_report_out_that_is_not_a_directory(workspace, out, expected):
    target = out if out.startswith("/") else str(workspace / out)
    r = _invoke(["report", str(SAMPLE), "--out", target], "class: output paths")
    msg = " ".join(r.output.split())
    assert r.exit_code == 2 and expected in msg, msg
