"""Command line: ``servingbench frameworks|models|validate|run|verify|serve``."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark PyTorch model-serving frameworks.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True, width=max(140, shutil.get_terminal_size().columns))


def _fail(message: str, code: int = 2) -> None:
    console.print("[red]error:[/red] ", end="")
    console.print(message, highlight=False, markup=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def _stop_signals():
    """The CLI's own SIGINT, SIGTERM and SIGHUP handlers for every command that starts servers (``run``, ``serve``,
    ``verify``, ``crosscheck``, ``calibrate``), whatever dispositions and signal mask the
    process inherited (``nohup``, ``cmd &`` in a script, CI runners and service managers start it with SIGINT or
    SIGHUP ignored, which would make Ctrl-C and ``kill -INT`` do nothing): each raises KeyboardInterrupt in the main
    thread, so the run stops its servers and is marked interrupted.  The previous handlers are restored after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from servingbench.runtime.supervisor import quiet_lost_stops, request_stop

    def handler(signum, frame):  # noqa: ARG001
        request_stop(f"signal {signal.Signals(signum).name}")

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    old_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    try:
        with quiet_lost_stops():
            yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _check_frameworks(names: list[str]) -> None:
    from servingbench.adapters import registry

    for n in names:
        if n not in registry.names():
            _fail(f"unknown framework {n!r}.{registry.suggest(n, registry.names())}")


RUNTIMES = ["local", "docker"]


PYTHON_OPTION = typer.Option(
    None, "--python", help="run the server from this interpreter (a framework venv: `servingbench isolate`)")
RUNTIME_OPTION = typer.Option("local", "--runtime", help="local (processes here) or docker (the framework's image)")
IMAGE_OPTION = typer.Option(None, "--image", help="image for --runtime docker "
                                                  "(default servingbench/<framework>:cpu or :cuda)")


SUITE_MODELS_OPTION = typer.Option(None, "--suite", help="also serve every model of this suite (zoo entries with "
                                   "their params and payloads, and your own models)")
INPUT_SHAPE_OPTION = typer.Option(None, "--input-shape", help="with a model file in --model: the per-sample input "
                                  "shape, e.g. 3,224,224")
DTYPE_OPTION = typer.Option("float32", "--dtype", help="with a model file in --model: the input dtype")
MODEL_FILE_SUFFIXES = (".pt", ".pt2", ".pth", ".ts", ".jit")


def _is_model_path(value: str) -> bool:
    """A ``--model`` value naming a user's model file or Hugging Face directory rather than a zoo model."""
    return (value.endswith(MODEL_FILE_SUFFIXES) or "/" in value
            or (Path(value).is_dir() and (Path(value) / "config.json").is_file()))


def _file_model(path: Path, input_shape: Optional[str], dtype: str, option: str):
    """A user model from one file (TorchScript, or ``torch.export`` ``.pt2``) or a Hugging Face directory, loaded and
    called once (errors name the option and the fix)."""
    from servingbench.models.user import UserModelError, check_user_model, parse_entry

    try:
        spec, _ = check_user_model(parse_entry(_file_entry(path, input_shape, dtype, option), Path.cwd()))
    except UserModelError as e:
        _fail(f"{option} {path}: {e}", 2)
    return spec


def _file_entry(path: Path, input_shape: Optional[str], dtype: str, option: str) -> dict:
    """The suite entry a model file stands for (its kind from the path: a directory is a Hugging Face model, .pt2 a
    ``torch.export`` program, anything else TorchScript)."""
    if not input_shape:
        _fail(f"{option} {path}: give --input-shape (e.g. 3,224,224) for a model file, or use a suite")
    try:
        shape = [int(s) for s in input_shape.split(",")]
    except ValueError:
        _fail(f"--input-shape {input_shape!r}: give comma-separated positive ints, e.g. 3,224,224")
    kind = "hf" if path.is_dir() else "export" if path.suffix == ".pt2" else "torchscript"
    return {"name": path.stem if not path.is_dir() else path.name, kind: str(path),
            "input": {"shape": shape, "dtype": dtype}}


def _one_deployment(framework: str, models: list[str], device: str, python: Optional[Path], runtime: str,
                    image: Optional[str], *, suite: Optional[Path] = None, input_shape: Optional[str] = None,
                    dtype: str = "float32", **cfg):
    """(adapter, deployment, interpreter, docker runtime) of a single deployment for ``verify`` and ``serve``: zoo
    models by name, user model files (``--input-shape``), and every model of a suite."""
    from servingbench.deploy.live import make_deployment
    from servingbench.models import build_artifacts, get_model
    from servingbench.scenarios.schema import DeploymentConfig

    adapter, interpreter, docker = _server_setup(framework, python, runtime, image, device)
    arts = []
    for n in models:  # NAME, NAME:PAYLOAD (served as NAME_PAYLOAD, e.g. cnn:image -> cnn_image), or a model file
        if _is_model_path(n):
            arts.append(build_artifacts(_file_model(Path(n), input_shape, dtype, "--model")))
            continue
        name, _, payload = n.partition(":")
        try:
            spec = get_model(name, payload=payload or "tensor", served_as=f"{name}_{payload}" if payload else None)
        except ValueError as e:
            _fail(f"--model {n}: {e}", 2)
        arts.append(build_artifacts(spec))
    if suite is not None:
        from servingbench.models.user import UserModelError
        from servingbench.scenarios.loader import ScenarioError, load_suite
        from servingbench.suite import build_artifacts_for

        try:
            arts += list(build_artifacts_for(load_suite(suite)).values())
        except (ScenarioError, UserModelError) as e:
            _fail(str(e), 2)
    if not arts:
        _fail("no model to serve: give --model NAME (or a model file) or --suite FILE", 2)
    names = [a.name for a in arts]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        _fail(f"two models named {', '.join(twice)}: a model file is served under its file name, so rename one "
              "file, or name the models in a suite (--suite)", 2)
    dep = make_deployment(framework, DeploymentConfig(**cfg), arts, device)
    adapter.validate(dep)
    return adapter, dep, interpreter, docker


def _server_setup(framework: str, python: Optional[Path], runtime: str, image: Optional[str], device: str):
    """``(adapter, python, runtime)`` for ``verify`` / ``serve``, checked as ``run_cell`` checks a suite's
    ``interpreters:`` and ``runtime: docker``: an interpreter must run and hold the framework, servingbench, torch and
    numpy (it replaces the harness's ``check_available``); docker needs a client on PATH."""
    import os

    from servingbench.runtime import containers, isolation
    from servingbench.adapters import registry

    _check_frameworks([framework])
    if runtime not in RUNTIMES:
        _fail(f"--runtime {runtime!r} is not a runtime.{registry.suggest(runtime, RUNTIMES)}")
    if image and runtime != "docker":
        _fail(f"--image {image} needs --runtime docker (the server runs locally otherwise)")
    adapter = registry.get(framework)
    interpreter = None
    if python is not None:
        interpreter = os.path.abspath(python)  # not resolve(): a venv's python is a symlink to the base interpreter
        try:
            isolation.check_interpreter(interpreter, adapter.distribution)
        except isolation.IsolationError as e:
            _fail(f"--python {python}: {e} (or `servingbench isolate {framework}`)")
    else:
        adapter.check_available()
    docker = None
    if runtime == "docker":
        if shutil.which("docker") is None:
            _fail("--runtime docker: no `docker` client on PATH (install Docker, or use --runtime local)")
        docker = containers.DockerRuntime(image=image or containers.default_image(framework, device))
        try:
            containers.venv_prefix(interpreter or sys.executable)
        except ValueError as e:
            _fail(f"--runtime docker: {e}; pass --python <venv>/bin/python")
    return adapter, interpreter, docker


@app.command()
def isolate(
    framework: str = typer.Argument(..., help="framework whose server gets its own venv"),
    venv: Optional[Path] = typer.Option(
        None, "--venv", help="target directory (default: $SERVINGBENCH_CACHE/venvs or ~/.cache/servingbench/venvs, "
                             "<framework>-<lock sha256[:12]>-py<X.Y>)"),
    lock: Optional[Path] = typer.Option(None, "--lock", help="pip lock whose pins constrain every install "
                                                             "(default: the checkout's requirements.lock)"),
    force: bool = typer.Option(False, "--force", help="rebuild even when a matching venv exists"),
    source: str = typer.Option("link", "--source", help="how the venv imports servingbench: link (a .pth to this "
                                                        "checkout's src/) or install (a copy, pip install --no-deps)"),
    torch_index_url: Optional[str] = typer.Option(
        None, "--torch-index-url", help="install torch from this index first (a CPU or CUDA build)"),
) -> None:
    """Create (or reuse) a framework's own venv from the lock; prints the interpreter to put under `interpreters:`."""
    from servingbench.runtime import isolation
    from servingbench.adapters import registry

    _check_frameworks([framework])
    if source not in ("link", "install"):
        _fail(f"--source {source!r} is not one of link, install.{registry.suggest(source, ['link', 'install'])}")
    if lock is not None and not lock.is_file():
        _fail(f"--lock {lock}: no such file (a pip lock of name==version lines, e.g. requirements.lock)")
    if venv is not None:
        venv = venv.absolute()
        try:  # before anything is built: create_venv replaces a directory it does not reuse
            isolation.check_venv_target(venv)
        except isolation.IsolationError as e:
            _fail(f"--venv {e}")
    project = None
    if source == "install":
        project = Path(isolation.__file__).resolve().parents[3]
        if not (project / "pyproject.toml").is_file():
            _fail(f"--source install copies the project from a source checkout; {project} has no pyproject.toml")
    try:
        python = isolation.create_venv(framework, venv, lock=lock, torch_index_url=torch_index_url, source=source,
                                       project=project, reuse=not force,
                                       log=lambda s: console.print(s, highlight=False, markup=False))
    except isolation.IsolationError as e:
        _fail(f"{framework}: {e}", 1)
        return
    console.print(f"put it in the suite:\n  interpreters:\n    {framework}: {python}", highlight=False, markup=False)
    typer.echo(str(python))


@app.command()
def frameworks() -> None:
    """List adapters: installed version and declared capabilities."""
    from servingbench.adapters import registry

    t = Table("framework", "version", "capabilities (claims, tested by the feature probes)", "options")
    for name in registry.names():
        try:
            cls = registry.get_class(name)
            a = cls()
            t.add_row(name, a.framework_version() or "[red]not installed", ", ".join(sorted(c.value for c in cls.capabilities)),
                      ", ".join(cls.options_doc()))
        except Exception as e:  # noqa: BLE001
            t.add_row(name, f"[red]broken: {e}", "", "")
    out.print(t)


@app.command()
def models(
    check: Optional[List[Path]] = typer.Option(None, "--check", help="check a suite's user models (a .yaml), or "
                                               "one model file / Hugging Face directory (with --input-shape): load "
                                               "it, run its first call, show what was understood"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="with --check FILE: the per-sample "
                                              "input shape, e.g. 3,224,224"),
    dtype: str = typer.Option("float32", "--dtype", help="with --check FILE: the input dtype"),
    measure: bool = typer.Option(False, "--measure", help="also time each zoo model in-process here (batch 1, "
                                                          "one thread, median of 1 s of calls)"),
) -> None:
    """List the model zoo with each model's cost (MACs, parameters; --measure: in-process latency here), or
    check user models (--check)."""
    from servingbench.models import list_models

    if check:
        _check_models(check, input_shape, dtype)
        return
    cols = ["model", "input", "output", "parameters", "cost", "payloads"] + (["latency (1 thread)"] if measure else [])
    t = Table(*cols, "description")
    import torch

    for m in list_models(real_size=True, generative=True):
        with torch.device("meta"):  # sizes only: no memory, no time (the real-size models are hundreds of MB)
            module = m.build(init=False)
        params = sum(p.numel() for p in module.parameters())
        row = [m.name, f"{m.input.dtype}{list(m.input.shape)}", f"{m.output.dtype}{list(m.output.shape)}",
               f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params:,}", m.cost, ", ".join(m.payloads())]
        if measure:
            row.append(_inprocess_latency(m, m.build(init=False)))
        t.add_row(*row, m.description)
    out.print(t)


def _inprocess_latency(spec, module) -> str:
    import statistics

    import torch

    torch.set_num_threads(1)
    x = torch.from_numpy(spec.tensor_inputs(1))
    times = []
    with torch.inference_mode():
        module.eval()(x)
        t_end = time.perf_counter() + 1.0
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return f"{statistics.median(times) * 1e3:.2f} ms (n={len(times)})"


def _check_models(paths: List[Path], input_shape: Optional[str], dtype: str) -> None:
    """``models --check``: each user model of a suite, or one model file, loaded and called once."""
    from servingbench.models.user import SOURCES, UserModelError, check_user_model, parse_entry
    from servingbench.scenarios.loader import ScenarioError, load_suite

    t = Table("model", "source", "path", "input", "output", "parameters", "tolerance")
    failed = False
    for path in paths:
        entries = []
        try:
            if path.suffix in (".yaml", ".yml"):
                suite = load_suite(path)
                entries = [(m.name, m.user_entry()) for m in suite.models if m.user]
                if not entries:
                    out.print(f"{path}: no user models (only zoo models: {', '.join(m.name for m in suite.models)})")
            else:
                entry = _file_entry(path, input_shape, dtype, "--check")
                entries = [(entry["name"], entry)]
            for name, entry in entries:
                spec, info = check_user_model(parse_entry(entry, Path.cwd()))
                t.add_row(name, f"{info['source']}", str(info["path"]), info["input"], info["output"],
                          f"{info['parameters']:,}" if info["parameters"] is not None else "?",
                          f"rtol {spec.rtol:g}, atol {spec.atol:g}")
        except (ScenarioError, UserModelError) as e:
            failed = True
            console.print(str(e), highlight=False, markup=False)
    if t.row_count:
        out.print(t)
        out.print("sources: " + "; ".join(f"{k}: {v}" for k, v in SOURCES.items()), highlight=False, markup=False)
    if failed:
        raise typer.Exit(2)


@app.command()
def validate(
    scenario: Optional[Path] = typer.Argument(None, help="suite YAML file"),
    schema: bool = typer.Option(False, "--schema", help="print the suite JSON schema (every field, documented)"),
) -> None:
    """Validate a suite file without running anything."""
    from servingbench.scenarios.loader import ScenarioError, load_suite

    if schema:
        import json

        from servingbench.scenarios.schema import Suite

        out.print_json(json.dumps(Suite.model_json_schema()))
        return
    if scenario is None:
        _fail("give a suite file, or --schema")

    try:
        suite = load_suite(scenario)
    except ScenarioError as e:
        console.print(str(e), highlight=False, markup=False)
        raise typer.Exit(2)
    from servingbench.suite import plan_cells

    cells = plan_cells(suite)
    out.print(f"{scenario}: ok - {len(cells)} cell(s), {len(suite.models)} model(s), {len(suite.workloads)} workload(s)")


@app.command()
def run(
    scenario: Path = typer.Argument(..., help="suite YAML file"),
    frameworks: Optional[List[str]] = typer.Option(None, "--frameworks", "-f", help="run only these frameworks"),
    out_dir: Path = typer.Option(Path("results"), "--out", help="results root"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this results directory"),
    report: bool = typer.Option(False, "--report/--no-report", help="write the report at the end"),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow targets on other hosts (sends load there)"),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="local or docker: overrides the suite's runtime"),
    generator_workers: Optional[str] = typer.Option(
        None, "--generator-workers",
        help="locust worker processes on this machine (master/worker mode): 0-64 or auto (one per generator core); "
             "overrides the suite's generator.workers"),
    force: bool = typer.Option(
        False, "--force", help="with --resume: resume even when the suite differs from the run's or --frameworks "
                               "leaves unfinished cells out (recorded in run.json; the run stays partial until every "
                               "planned cell has a final status)"),
    plain: bool = typer.Option(False, "--plain", help="line-per-event output even in a terminal (the default when "
                                                      "stdout is not a terminal: CI logs, pipes)"),
) -> None:
    """Run a suite: start each framework, verify outputs, measure, stop.  In a terminal a live display shows the
    suite's and the cell's progress with ETAs and the running point's throughput and p99.  Exit 1 if any cell
    failed or the run is partial (planned cells not run), 130 when interrupted (Ctrl-C, SIGTERM, SIGHUP)."""
    from servingbench.suite import run_suite
    from servingbench.results import ResultsError
    from servingbench.scenarios.loader import ScenarioError, apply_overrides, load_suite

    if frameworks:
        frameworks = [f for item in frameworks for f in item.split(",") if f]
        _check_frameworks(frameworks)
    try:
        suite = load_suite(scenario)
        suite = apply_overrides(suite, scenario, runtime=runtime, generator_workers=generator_workers)
    except ScenarioError as e:
        console.print(str(e), highlight=False, markup=False)
        raise typer.Exit(2)
    if force and resume is None:
        _fail("--force only applies with --resume DIR (a new run always starts from the suite as it is)")
    from servingbench.progress import make_progress, summary_table

    t0 = time.perf_counter()
    with _stop_signals():
        try:
            with make_progress(console, plain=plain) as progress:
                outcome = run_suite(suite, suite_path=scenario, out=out_dir, frameworks=frameworks, resume=resume,
                                    progress=progress, allow_remote=allow_remote, force=force)
        except (ResultsError, ValueError) as e:
            _fail(str(e))
            return
        except KeyboardInterrupt as e:
            console.print(f"interrupted ({e or 'Ctrl-C'}) before the run started", highlight=False, markup=False)
            raise typer.Exit(130)
        console.print(f"done in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{c} {s}" for c, s in outcome.statuses.items()), highlight=False, markup=False)
        if outcome.statuses:
            console.print(summary_table(outcome.results.records("point"), outcome.statuses))
        if report and not outcome.interrupted:
            from servingbench.results import ResultsError

            try:
                _write_report(outcome.results.path, beside=True)  # <results>/<run-id>/report/index.html
            except ResultsError as e:
                out.print(f"[red]report: {e}")
        out.print(f"results: {Path(outcome.results.path).absolute()}", highlight=False, markup=False)
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.failed or outcome.partial:
        raise typer.Exit(1)


def _write_report(results_path: Path, out_root: Path = Path("reports"), beside: bool = False) -> Path:
    import warnings

    from servingbench.report.build import write_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_report(results_path, out_root, beside=beside)
    for w in caught:
        out.print(f"[yellow]warning: {w.message}", highlight=False)
    out.print(f"report: {Path(path).absolute()}", highlight=False, markup=False)
    return Path(path)


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="results/<run-id>"),
    out_root: Path = typer.Option(Path("reports"), "--out", help="reports root"),
    open_: bool = typer.Option(False, "--open", help="open the report in the default browser (when there is one)"),
) -> None:
    """Write reports/<run-id>/index.html (self-contained), report.md, figures and tables."""
    from servingbench.results import ResultsError

    try:
        path = _write_report(results_dir, out_root)
    except ResultsError as e:
        _fail(str(e))
    if open_:
        _open_in_browser(path)


def _open_in_browser(path: Path) -> bool:
    """Open ``path`` in the default browser; say so (and where the file is) when there is none."""
    import webbrowser

    try:
        opened = webbrowser.get() is not None and webbrowser.open(path.absolute().as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        out.print(f"no browser found here: open {path.absolute()} yourself", highlight=False, markup=False)
    return bool(opened)


@app.command()
def export(
    results_dir: Path = typer.Argument(..., help="results/<run-id>"),
    mlflow: bool = typer.Option(False, "--mlflow", help="log one MLflow run per cell (metrics per load point, "
                                                        "params, flags as tags, report and manifests as artifacts)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: "
                                               "$MLFLOW_TRACKING_URI, else sqlite:///<results root>/mlflow.db)"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default: the suite's "
                                                                        "name)"),
    parquet: Optional[Path] = typer.Option(None, "--parquet", help="write tidy tables here: points, windows, "
                                                                   "probes, cells (.parquet; docs/export.md)"),
) -> None:
    """Export a run: tidy Parquet tables and/or MLflow tracking runs (docs/export.md)."""
    from servingbench.export import ExportError, export_mlflow, write_parquet
    from servingbench.report.data import RunData
    from servingbench.results import ResultsError

    if not mlflow and parquet is None:
        _fail("nothing to export: give --mlflow and/or --parquet DIR")
    if (tracking_uri or experiment) and not mlflow:
        _fail("--tracking-uri / --experiment only apply with --mlflow")
    try:
        d = RunData.load(results_dir)
    except ResultsError as e:
        _fail(str(e))
    try:
        if parquet is not None:
            for name, path in write_parquet(d, parquet).items():
                out.print(f"{name}: {path.absolute()}", highlight=False, markup=False)
        if mlflow:
            report_dir = None
            try:
                report_dir = _write_report(results_dir, beside=True).parent
            except (ResultsError, OSError) as e:  # e.g. a read-only results directory: export without it
                out.print(f"report not attached: {e}", highlight=False, markup=False)
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
            for r in export_mlflow(d, uri, experiment, report_dir):
                out.print(f"{r['cell']}: MLflow run {r['run_id']} ({r['status']})", highlight=False, markup=False)
    except ExportError as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - the tracking store's own errors (bad URI, unreachable server)
        _fail(f"export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _html_target(html: Path) -> Path:
    """``compare --html``'s file, checked before anything is compared: its directory is created when missing;
    a path that is a directory, or under a file, is a clear error naming the path and the fix."""
    if html.is_dir():
        _fail(f"--html {html} is a directory: give a file name, e.g. {html / 'compare.html'}")
    if html.exists() and not html.is_file():
        _fail(f"--html {html} exists and is not a regular file: give the path of an .html file to write")
    parent = html.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        _fail(f"--html {html}: cannot create its directory {parent}: {getattr(e, 'strerror', None) or e} (is part "
              "of the path a file?); choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"--html {html}: directory {parent} is not writable; choose another path")
    return html


def _duration_s(text: str, option: str) -> float:
    from servingbench.scenarios.schema import parse_duration

    try:
        value = parse_duration(text)
    except (ValueError, TypeError) as e:
        _fail(f"{option} {text!r}: {e}; give a duration such as 30m, 90s or 1h")
    if value <= 0:
        _fail(f"{option} {text!r}: must be more than zero; give a duration such as 30m")
    return value


@app.command()
def tune(
    scenario: Path = typer.Argument(..., help="suite YAML file with an `slo:` target and an slo_search workload"),
    frameworks: Optional[List[str]] = typer.Option(None, "--frameworks", "-f", help="tune only these frameworks"),
    models: Optional[List[str]] = typer.Option(None, "--models", "-m", help="tune only these models of the suite"),
    budget: str = typer.Option("30m", "--budget", help="machine time for the whole tuning, shared by the "
                               "framework x model studies (each runs its two profiles even past its share)"),
    max_trials: Optional[int] = typer.Option(None, "--max-trials", min=1, help="at most this many trials per study "
                                             "(profiles included)"),
    out_dir: Path = typer.Option(Path("results"), "--out", help="root of the tuning directory"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this tuning directory"),
    seed: int = typer.Option(0, "--seed", help="the sampler's seed"),
) -> None:
    """Search each framework's knobs for the highest throughput at the suite's SLO (second objective: p99 at the
    search's start rate) with optuna's TPE sampler; every trial is a full run of one cell.  Writes the profiles
    framework-default, servingbench-default and tuned side by side (summary.md) and a Pareto plot per framework x
    model.  Ctrl-C keeps finished trials; --resume continues without repeating them.  Exit 130 when interrupted."""
    from servingbench.scenarios.loader import ScenarioError, load_suite
    from servingbench.tune import TuneError, pct_of_tuned, pct_text, run_tune

    if frameworks:
        frameworks = [f for item in frameworks for f in item.split(",") if f]
        _check_frameworks(frameworks)
    models = [m for item in models or [] for m in item.split(",") if m] or None
    budget_s = _duration_s(budget, "--budget")
    try:
        suite = load_suite(scenario)
    except ScenarioError as e:
        console.print(str(e), highlight=False, markup=False)
        raise typer.Exit(2)
    with _stop_signals():
        try:
            outcome = run_tune(suite, suite_path=scenario, out=out_dir, frameworks=frameworks, models=models,
                               budget_s=budget_s, max_trials=max_trials, resume=resume, seed=seed,
                               progress=lambda m: out.print(m, highlight=False, markup=False))
        except TuneError as e:
            _fail(str(e))
            return
    if outcome.interrupted:
        raise typer.Exit(130)
    for name, s in outcome.studies.items():
        pct = pct_of_tuned(s, "framework-default")
        best = s["tuned"]
        states = ", ".join(f"{n} {k}" for k, n in sorted(Counter(t["status"] for t in s["trials"]).items()))
        out.print(f"{name}: tuned {best['max_rate']:.0f} rps at the SLO (trial {s['found_at']} of {s['n_trials']})"
                  if best else f"{name}: no trial measured ({states or 'none run'})", highlight=False, markup=False)
        if pct is not None:
            out.print(f"  framework-default: {pct_text(s)} of tuned", highlight=False, markup=False)
    out.print(f"summary: {Path(outcome.path).absolute() / 'summary.md'}", highlight=False, markup=False)


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="baseline results directory"),
    run_b: Path = typer.Argument(..., help="candidate results directory"),
    threshold: float = typer.Option(0.05, help="smallest relative change worth flagging"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write the table as HTML"),
    only_changes: bool = typer.Option(False, "--only-changes", help="print only flagged rows"),
) -> None:
    """Regression table per framework x model x metric; flags only changes beyond the noise of both runs."""
    from servingbench.report.compare import compare_runs, render_compare_text, write_compare_html
    from servingbench.results import ResultsError

    if html:
        html = _html_target(html)
    try:
        df = compare_runs(run_a, run_b, threshold=threshold)
    except ResultsError as e:
        _fail(str(e))
        return
    out.print(render_compare_text(df, only_changes=only_changes), highlight=False, markup=False)
    if html:
        try:
            out.print(f"html: {write_compare_html(df, html)}")
        except (OSError, ValueError) as e:
            _fail(f"--html {html}: cannot write the file: {getattr(e, 'strerror', None) or e}; choose a writable "
                  "path")
    if len(df) and df["regression"].any():
        raise typer.Exit(1)


@app.command()
def verify(
    framework: str = typer.Argument(..., help="framework to check"),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="models (default: the whole zoo, or "
                                              "only --suite's); NAME:PAYLOAD sends image or text payloads (e.g. "
                                              "cnn:image, encoder:text), served as NAME_PAYLOAD; a file (.pt "
                                              "TorchScript, .pt2 torch.export) or a Hugging Face directory is your "
                                              "own model (with --input-shape)"),
    suite: Optional[Path] = SUITE_MODELS_OPTION,
    input_shape: Optional[str] = INPUT_SHAPE_OPTION,
    dtype: str = DTYPE_OPTION,
    device: str = typer.Option("cpu", help="cpu or cuda"),
    python: Optional[Path] = PYTHON_OPTION,
    runtime: str = RUNTIME_OPTION,
    image: Optional[str] = IMAGE_OPTION,
) -> None:
    """Start, ready, outputs match for every model, cold start recorded, clean stop (see also `contract`)."""
    import tempfile

    from servingbench.deploy.live import LiveDeployment
    from servingbench.models import list_models
    from servingbench.runtime.secrets import SecretStore

    models = model or ([] if suite else [m.name for m in list_models()])
    adapter, dep, interpreter, docker = _one_deployment(framework, models, device, python, runtime, image,
                                                        suite=suite, input_shape=input_shape, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="servingbench-verify-") as tmp, SecretStore() as store, _stop_signals():
        live = LiveDeployment(adapter, dep, Path(tmp) / "deploy", Path(tmp) / "logs", store.make(False, False),
                              python=interpreter, runtime=docker)
        try:
            with live:
                t = Table("model", "ok", "max abs err", "tolerance (rtol/atol)")
                for name, v in live.verification.items():
                    t.add_row(name, "yes" if v["ok"] else "NO", f"{v['max_abs_err']:.2e}", f"{v['rtol']:g}/{v['atol']:g}")
                out.print(t)
                out.print(f"ready {live.ready_s:.2f} s, cold start (spawn -> first correct answer) {live.cold_start_s:.2f} s")
                where = f"in image {docker.image} (docker)" if docker else "as local processes"
                out.print(f"server from {interpreter or sys.executable} {where}: {' '.join(live.launch_argv[0][:2])} ...",
                          highlight=False, markup=False)
        except Exception as e:  # noqa: BLE001
            _fail(f"{framework}: {e}", 1)
        survivors = [s for r in live.stop_reports for s in r.survivors]
        held = [p for r in live.stop_reports for p in r.ports_held]
        graceful = all(r.graceful for r in live.stop_reports)
        out.print(f"stop: {'graceful' if graceful else 'needed SIGKILL'} in "
                  f"{sum(r.seconds for r in live.stop_reports):.2f} s, survivors {survivors or 'none'}, ports held {held or 'none'}")
        if survivors or held:
            _fail(f"{framework}: unclean stop", 1)
    out.print(f"[green]{framework}: verify passed")


@app.command()
def contract(
    framework: List[str] = typer.Argument(..., help="registered adapter(s) to check (entry point or "
                                                     "SERVINGBENCH_ADAPTERS=name=module:Class)"),
    fast: bool = typer.Option(False, "--fast", help="only the checks that start no server"),
    pytest_args: Optional[List[str]] = typer.Option(None, "--pytest-arg", help="extra pytest argument (repeatable)"),
) -> None:
    """Run the adapter contract suite (servingbench.testing.contract) on FRAMEWORK: real servers, every zoo model."""
    try:
        import pytest
    except ImportError:
        _fail("the contract suite needs pytest: pip install 'servingbench[test]' (or pip install pytest)")
    from servingbench.testing import contract as suite_module

    _check_frameworks(framework)
    os.environ[suite_module.SELECT] = ",".join(framework)
    args = [suite_module.__file__, "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-o", "markers=server: starts a "
            "real framework server", "--rootdir", str(Path(suite_module.__file__).parent)]
    if fast:
        args += ["-m", "not server"]
    rc = pytest.main(args + list(pytest_args or []))
    if rc != 0:
        _fail(f"contract suite: {', '.join(framework)} failed (pytest exit {int(rc)})", 1)
    out.print(f"[green]{', '.join(framework)}: contract suite passed")


@app.command()
def crosscheck(
    framework: str = typer.Argument(..., help="framework to crosscheck"),
    model: str = typer.Option("mlp", "--model", "-m", help="the model every client sends to (batch 1)"),
    concurrency: int = typer.Option(32, "--concurrency", "-c", min=1, help="closed-loop users = wrk connections"),
    rounds: int = typer.Option(3, "--rounds", min=1, max=20,
                               help="interleaved rounds: servingbench, wrk[, perf_analyzer]"),
    duration: float = typer.Option(10.0, "--duration", min=1.0, help="seconds each client measures in a round"),
    cpu_sets: str = typer.Option("auto", "--cpu-sets", help="auto (last core to the clients, the rest to the server) "
                                                            "or none"),
    floor: bool = typer.Option(True, "--floor/--no-floor", help="first measure both clients against a trivial "
                                                                "endpoint (the client floor)"),
    perf_analyzer: bool = typer.Option(True, "--perf-analyzer/--no-perf-analyzer",
                                       help="also perf_analyzer for tritonserver/mlserver when it runs here"),
    quiet_wait: float = typer.Option(30.0, "--quiet-wait", min=0.0, help="before each measurement, wait up to this "
                                     "many seconds for the server's and clients' cores to be idle (0: do not wait)"),
    alternate: bool = typer.Option(True, "--alternate/--fixed-order", help="reverse the clients' order every other "
                                   "round (default), or servingbench first in every round"),
    results: Optional[Path] = typer.Option(None, "--results", help="append the crosscheck record to this run's "
                                                                   "records.jsonl (its calibration states the floor "
                                                                   "with --no-floor)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the result as JSON here"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    python: Optional[Path] = PYTHON_OPTION,
    runtime: str = RUNTIME_OPTION,
    image: Optional[str] = IMAGE_OPTION,
) -> None:
    """servingbench's own client against wrk (and perf_analyzer for Triton/MLServer) on one live deployment:
    interleaved rounds at one concurrency and one request body; medians, deltas and the client floor
    (docs/crosscheck.md).  Exits 1 when servingbench's median throughput is outside +-5 % of wrk's."""
    import tempfile

    from servingbench.deploy.live import LiveDeployment
    from servingbench.load import crosscheck as cc
    from servingbench.results import ResultsError, RunResults
    from servingbench.runtime.secrets import SecretStore
    from servingbench.suite import cpu_sets as make_cpu_sets

    if cpu_sets not in ("auto", "none"):
        _fail(f"--cpu-sets {cpu_sets!r}: give auto or none (a suite's cpu_sets can name cores)")
    if cc.find_wrk() is None:
        _fail("wrk is not installed: run scripts/ensure_wrk.sh (or set WRK=/path/to/wrk)")
    run = None
    if results is not None:
        try:
            run = RunResults.open(results)
        except ResultsError as e:
            _fail(f"--results {results}: {e}")
    server_cpus, gen_cpus = make_cpu_sets(cpu_sets)
    adapter, dep, interpreter, docker = _one_deployment(framework, [model], device, python, runtime, image)
    with tempfile.TemporaryDirectory(prefix="servingbench-crosscheck-") as tmp, SecretStore() as store, _stop_signals():
        live = LiveDeployment(adapter, dep, Path(tmp) / "deploy", Path(tmp) / "logs", store.make(False, False),
                              server_cpus=server_cpus, python=interpreter, runtime=docker)
        try:
            with live:
                result = cc.crosscheck(
                    live, model, concurrency, rounds=rounds, duration_s=duration, gen_cpus=gen_cpus,
                    workdir=Path(tmp) / "work", log_dir=Path(tmp) / "logs", server_cpus=server_cpus, floor=floor,
                    calibration=run.read_run().get("calibration") if run is not None else None,
                    perf_analyzer=perf_analyzer, quiet_wait_s=quiet_wait, alternate=alternate,
                    progress=lambda m: console.print(m, highlight=False, markup=False))
        except Exception as e:  # noqa: BLE001
            _fail(f"{framework}: crosscheck failed: {e}", 1)
    _print_crosscheck(cc, result, rounds, json_out, run)


def _print_crosscheck(cc, result: dict, rounds: int, json_out: Optional[Path], run) -> None:
    import json

    t = Table("round", "client", "rps", "p50", "p99", "errors", "client CPU", "server CPU", "flags", "delta")
    for row in cc.rows(result):
        t.add_row(*row)
    out.print(t)
    fl = result.get("client_floor") or {}
    for c in ("servingbench", "wrk"):
        if c in fl:
            ceiling = f", ceiling {fl[c]['ceiling_rps']:.0f} rps" if fl[c].get("ceiling_rps") else ""
            out.print(f"client floor {c}: p50 {fl[c]['floor_p50_s'] * 1e3:.2f} ms at concurrency 1{ceiling} "
                      f"({fl['source']})", highlight=False)
    for c, why in ((c, v["skipped"]) for c, v in result["clients"].items() if "skipped" in v):
        out.print(f"{c}: skipped: {why}", highlight=False, markup=False)
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))
        out.print(f"written: {json_out}")
    if run is not None:
        run.append(cc.crosscheck_record(result))
        run.close()
        out.print(f"appended to {run.records_path}")
    if result["interference_rounds"]:
        clean = (result["clean_deltas"] or {}).get("wrk")
        out.print(f"rounds with interference (other work or steal on the measured cores): "
                  f"{[i + 1 for i in result['interference_rounds']]} of {rounds}: the deltas are inconclusive; "
                  + (f"clean rounds {[i + 1 for i in clean['rounds']]}: throughput "
                     f"{clean['throughput_rps_pct']:+.1f} %, p50 {clean['p50_s_pct']:+.1f} %" if clean
                     else "no clean round"), highlight=False)
    d = result["deltas"]["wrk"]
    p50_ok = d["p50_within_tolerance"] or d["p50_within_floor"]
    out.print(f"servingbench vs wrk (medians of {rounds}): throughput {d['throughput_rps_pct']:+.1f} %, "
              f"p50 {d['p50_s_pct']:+.1f} % ({d['p50_abs_s'] * 1e3:+.2f} ms), p99 {d['p99_s_pct']:+.1f} %; "
              f"throughput {'within' if d['throughput_within_tolerance'] else 'OUTSIDE'} "
              f"+-{result['tolerance_pct']:g} %, p50 {'within' if p50_ok else 'OUTSIDE'} "
              f"+-{result['tolerance_pct']:g} % or the client floor", highlight=False)
    if d.get("paired_throughput_pct") is not None and d.get("paired_p50_pct") is not None:
        out.print(f"paired by round (median of the per-round deltas): throughput {d['paired_throughput_pct']:+.1f} %, "
                  f"p50 {d['paired_p50_pct']:+.1f} %; p50 x throughput (Little's law: the latency each client "
                  f"read for the rate it got) {d['paired_p50_x_rate_pct']:+.1f} %", highlight=False)
    if not d["throughput_within_tolerance"]:
        raise typer.Exit(1)


@app.command()
def serve(
    framework: str = typer.Argument(...),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="models (default: mlp, or only "
                                              "--suite's): zoo names, NAME:PAYLOAD, or your own model file / "
                                              "Hugging Face directory (with --input-shape)"),
    suite: Optional[Path] = SUITE_MODELS_OPTION,
    input_shape: Optional[str] = INPUT_SHAPE_OPTION,
    dtype: str = DTYPE_OPTION,
    device: str = typer.Option("cpu"),
    auth: bool = typer.Option(False, help="require a per-run token (printed)"),
    python: Optional[Path] = PYTHON_OPTION,
    runtime: str = RUNTIME_OPTION,
    image: Optional[str] = IMAGE_OPTION,
) -> None:
    """Bring one deployment up for debugging; Ctrl-C stops it."""
    import tempfile

    from servingbench.deploy.live import LiveDeployment
    from servingbench.runtime.secrets import SecretStore
    from servingbench.runtime.supervisor import terminate_on_signals

    adapter, dep, interpreter, docker = _one_deployment(framework, model or ([] if suite else ["mlp"]), device,
                                                        python, runtime, image, suite=suite,
                                                        input_shape=input_shape, dtype=dtype, auth=auth)
    arts = dep.models
    with tempfile.TemporaryDirectory(prefix="servingbench-serve-") as tmp, SecretStore() as store, _stop_signals(), \
            terminate_on_signals():
        secrets = store.make(auth, False)
        live = LiveDeployment(adapter, dep, Path(tmp) / "deploy", Path(tmp) / "logs", secrets, python=interpreter,
                              runtime=docker)
        try:
            with live:
                for art in arts:
                    req = live.codec.request(art.spec(), art.spec().example_inputs(1), secrets)
                    out.print(f"{art.name}: {req.method} {live.url(req)}")
                if secrets.token:
                    out.print(f"token (this session only): {secrets.token}")
                out.print(f"workdir {tmp}; logs in {tmp}/logs. Ctrl-C to stop.")
                while True:
                    live.check_alive()
                    time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping")


@app.command()
def matrix(results_dir: Path = typer.Argument(..., help="a results directory with feature probes")) -> None:
    """Frameworks x features: the verdicts the probes measured (claims that disagree are marked with !)."""
    from servingbench.contract import FEATURES
    from servingbench.results import ResultsError, RunResults

    try:
        recs = RunResults.open(results_dir, readonly=True).records("probe")
    except ResultsError as e:
        _fail(str(e))
        return
    if not recs:
        _fail(f"{results_dir} has no feature probe results (run a suite with 'features:', e.g. scenarios/features.yaml)")
    recs = [r for r in recs if isinstance(r.get("framework"), str) and isinstance(r.get("feature"), str)
            and isinstance(r.get("verdict"), str)]
    cells = {(r["framework"], r["feature"]): r for r in recs}
    fws = list(dict.fromkeys(r["framework"] for r in recs))
    feats = [f for f in FEATURES if any(k[1] == f for k in cells)]
    style = {"supported": "green", "partial": "yellow", "not_supported": "dim", "failed": "red", "not_run": "blue"}
    short = {"supported": "yes", "partial": "partial", "not_supported": "no", "failed": "FAILED", "not_run": "not run"}
    t = Table("framework", *feats, title="measured verdicts (! = disagrees with the adapter's declared claim)")
    for fw in fws:
        row = []
        for f in feats:
            r = cells.get((fw, f))
            if r is None:
                row.append("")
                continue
            mark = "!" if r.get("disagrees_with_claim") else ""
            row.append(f"[{style.get(r['verdict'], '')}]{short.get(r['verdict'], r['verdict'])}{mark}")
        t.add_row(fw, *row)
    out.print(t)
    for r in recs:
        if r.get("reason") or r.get("disagrees_with_claim"):
            out.print(f"  {r['framework']}/{r['feature']}: {r['verdict']}: {r.get('reason', '')}", highlight=False)


@app.command()
def cleanup(
    kill: bool = typer.Option(False, "--kill", help="SIGKILL the processes and remove the files and directories"),
    owner: Optional[List[int]] = typer.Option(
        None, "--owner", help="a harness PID that is alive but stuck: clean up only what it started (repeatable)"),
) -> None:
    """List (and with --kill, stop and remove) what a servingbench harness that died left behind.

    Processes carrying a harness's marks (servers, Ray's raylet/agents/workers, the load generator and its locust
    workers, in-process jobs, the canary) whose harness is gone, a zombie or stopped; the /dev/shm entries they use
    (MOSEC's semaphores) and Triton's regions; Ray's and MOSEC's /tmp dirs; scratch and secrets temp dirs whose
    owner is gone.  Exit 1 when something was found and not removed."""
    from servingbench.runtime.supervisor import describe_process, find_leftovers, remove_leftovers

    owners = list(owner or [])
    if any(pid <= 0 for pid in owners):
        _fail("--owner takes the PID of a servingbench harness (a positive number)")
    found = find_leftovers(owners)
    for line in found.live_owners:
        out.print(f"owner still running: {line}: not killed (kill it yourself if it is stuck)", highlight=False,
                  markup=False)
    if not found:
        out.print("no stale servingbench processes, /dev/shm entries or temp dirs"
                  + (f" of harness {', '.join(map(str, owners))}" if owners else ""), highlight=False, markup=False)
        return
    for m, why in found.processes:
        out.print(f"stale: {m.desc or describe_process(m.proc)} ({m.role}, marker {m.marker[:12]}, {why})",
                  highlight=False, markup=False)
    for path, why in found.files:
        out.print(f"stale: {path} ({why})", highlight=False, markup=False)
    if not kill:
        out.print("run `servingbench cleanup --kill" + "".join(f" --owner {p}" for p in owners)
                  + "` to stop and remove them", highlight=False, markup=False)
        raise typer.Exit(1)
    done, failed = remove_leftovers(found)
    for line in done:
        out.print(line, highlight=False, markup=False)
    for line in failed:
        out.print(f"not done: {line}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def calibrate(
    generator_workers: str = typer.Option("0", "--generator-workers", help="0-64 or auto, as for `run`"),
    concurrency: List[int] = typer.Option([1, 16], "--concurrency", "-c", help="closed-loop users (repeatable)"),
    cpu_sets: str = typer.Option("auto", "--cpu-sets", help="auto (last core to the generator) or none"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the calibration as JSON here"),
) -> None:
    """The load generator's own ceiling (rps) and latency floor against a trivial endpoint: what no server can
    beat on this machine.  Every run stores the same measurement in its run.json (``calibration``)."""
    import json
    import tempfile

    from servingbench.load.calibration import calibrate_generator
    from servingbench.suite import cpu_sets as make_cpu_sets
    from servingbench.scenarios.schema import Generator

    try:
        workers = Generator.parse_workers(generator_workers)
    except ValueError as e:
        _fail(f"--generator-workers {e}")
    if cpu_sets not in ("auto", "none"):
        _fail(f"--cpu-sets {cpu_sets!r}: give auto or none (a suite's cpu_sets can name cores)")
    cpus = make_cpu_sets(cpu_sets)
    with tempfile.TemporaryDirectory(prefix="servingbench-calibrate-") as tmp, _stop_signals():
        cal = calibrate_generator(cpus, Path(tmp), Path(tmp) / "logs", concurrency=tuple(concurrency),
                                  generator=Generator(workers=workers))
    table = Table("users", "rps", "p50", "p99", "generator CPU (busiest process)", "processes", "stable")
    for p in cal["points"]:
        table.add_row(str(p["concurrency"]), f"{p['throughput_rps']:.0f}", f"{p['latency_s']['p50'] * 1e3:.2f} ms",
                      f"{p['latency_s']['p99'] * 1e3:.2f} ms", f"{p['generator_cpu_pct']:.0f} %",
                      str(p["generator_processes"]), "yes" if p["stable"] else "no")
    out.print(table)
    out.print(f"generator ceiling {cal['ceiling_rps']:.0f} rps, latency floor p50 {cal['floor_p50_s'] * 1e3:.2f} ms "
              f"(generator cores {cal['generator_cpus'] or 'all'})")
    if json_out:
        json_out.write_text(json.dumps(cal, indent=1))
        out.print(f"written: {json_out}")


@app.command("generator-worker")
def generator_worker(
    master_host: str = typer.Option(..., "--master-host", help="host of the harness whose suite names remote_workers"),
    master_port: int = typer.Option(..., "--master-port", min=1, max=65535, help="its generator.master_port"),
    connect_timeout: float = typer.Option(600.0, "--connect-timeout",
                                          help="seconds to wait for the next load point's master before exiting"),
    once: bool = typer.Option(False, "--once", help="serve one load point, then exit"),
) -> None:
    """A locust worker for another machine's run (generator.remote_workers).  Every load point of the run has its
    own master; this serves them one after another (each in a fresh process: the generator monkey-patches the
    standard library with gevent), until no master appears within --connect-timeout, or Ctrl-C."""
    import signal
    import subprocess

    argv = [sys.executable, "-m", "servingbench.load.generator", "--worker", "--master-host", master_host,
            "--master-port", str(master_port), "--connect-timeout", str(connect_timeout)]
    served = 0
    while True:
        proc = subprocess.Popen(argv)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise typer.Exit(130)
        if rc != 0:  # no master within the timeout (2), or a failure the worker printed
            if served and rc == 2:
                console.print(f"no master at {master_host}:{master_port} for {connect_timeout:.0f} s after "
                              f"{served} load point(s): done")
                return
            raise typer.Exit(rc)
        served += 1
        if once:
            return


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
