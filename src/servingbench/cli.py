"""Command line: ``servingbench frameworks|models|validate|run|verify|serve``."""

from __future__ import annotations

import shutil
import sys
import time
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


def _check_frameworks(names: list[str]) -> None:
    from servingbench.adapters import registry

    for n in names:
        if n not in registry.names():
            _fail(f"unknown framework {n!r}.{registry.suggest(n, registry.names())}")


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
                      ", ".join(sorted(cls.options_doc)))
        except Exception as e:  # noqa: BLE001
            t.add_row(name, f"[red]broken: {e}", "", "")
    out.print(t)


@app.command()
def models() -> None:
    """List the model zoo."""
    from servingbench.models import list_models

    t = Table("model", "input", "output", "cost", "description")
    for m in list_models():
        t.add_row(m.name, f"{m.input.dtype}{list(m.input.shape)}", f"{m.output.dtype}{list(m.output.shape)}", m.cost,
                  m.description)
    out.print(t)


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
    from servingbench.harness import plan_cells

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
) -> None:
    """Run a suite: start each framework, verify outputs, measure, stop.  Exit 1 if any cell failed."""
    from servingbench.harness import run_suite
    from servingbench.results import ResultsError
    from servingbench.scenarios.loader import ScenarioError, load_suite

    if frameworks:
        frameworks = [f for item in frameworks for f in item.split(",") if f]
        _check_frameworks(frameworks)
    try:
        suite = load_suite(scenario)
    except ScenarioError as e:
        console.print(str(e), highlight=False, markup=False)
        raise typer.Exit(2)
    t0 = time.perf_counter()
    try:
        outcome = run_suite(suite, suite_path=scenario, out=out_dir, frameworks=frameworks, resume=resume,
                            progress=lambda msg: console.print(msg, highlight=False), allow_remote=allow_remote)
    except (ResultsError, ValueError) as e:
        _fail(str(e))
        return
    console.print(f"done in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{c} {s}" for c, s in outcome.statuses.items()))
    if report and not outcome.interrupted:
        _write_report(outcome.results.path)
    out.print(f"results: {outcome.results.path}")
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _write_report(results_path: Path, out_root: Path = Path("reports")) -> None:
    from servingbench.report.build import write_report

    out.print(f"report: {write_report(results_path, out_root)}")


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="results/<run-id>"),
    out_root: Path = typer.Option(Path("reports"), "--out", help="reports root"),
) -> None:
    """Write reports/<run-id>/index.html (self-contained), report.md, figures and tables."""
    from servingbench.results import ResultsError

    try:
        _write_report(results_dir, out_root)
    except ResultsError as e:
        _fail(str(e))


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

    try:
        df = compare_runs(run_a, run_b, threshold=threshold)
    except ResultsError as e:
        _fail(str(e))
        return
    out.print(render_compare_text(df, only_changes=only_changes), highlight=False, markup=False)
    if html:
        out.print(f"html: {write_compare_html(df, html)}")
    if len(df) and df["regression"].any():
        raise typer.Exit(1)


@app.command()
def verify(
    framework: str = typer.Argument(..., help="framework to check"),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="models (default: the whole zoo)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """Contract check: start, ready, outputs match for every model, cold start recorded, clean stop."""
    import tempfile

    from servingbench.adapters import registry
    from servingbench.harness import LiveDeployment, make_deployment
    from servingbench.measure.security import SecretStore
    from servingbench.models import build_artifacts, get_model, list_models
    from servingbench.scenarios.schema import DeploymentConfig

    _check_frameworks([framework])
    adapter = registry.get(framework)
    adapter.check_available()
    names = model or [m.name for m in list_models()]
    arts = [build_artifacts(get_model(n)) for n in names]
    dep = make_deployment(framework, DeploymentConfig(), arts, device)
    adapter.validate(dep)
    with tempfile.TemporaryDirectory(prefix="servingbench-verify-") as tmp, SecretStore() as store:
        live = LiveDeployment(adapter, dep, Path(tmp) / "deploy", Path(tmp) / "logs", store.make(False, False))
        try:
            with live:
                t = Table("model", "ok", "max abs err", "tolerance (rtol/atol)")
                for name, v in live.verification.items():
                    t.add_row(name, "yes" if v["ok"] else "NO", f"{v['max_abs_err']:.2e}", f"{v['rtol']:g}/{v['atol']:g}")
                out.print(t)
                out.print(f"ready {live.ready_s:.2f} s, cold start (spawn -> first correct answer) {live.cold_start_s:.2f} s")
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
def serve(
    framework: str = typer.Argument(...),
    model: List[str] = typer.Option(["mlp"], "--model", "-m"),
    device: str = typer.Option("cpu"),
    auth: bool = typer.Option(False, help="require a per-run token (printed)"),
) -> None:
    """Bring one deployment up for debugging; Ctrl-C stops it."""
    import tempfile

    from servingbench.adapters import registry
    from servingbench.harness import LiveDeployment, make_deployment
    from servingbench.measure.security import SecretStore
    from servingbench.measure.supervisor import terminate_on_signals
    from servingbench.models import build_artifacts, get_model
    from servingbench.scenarios.schema import DeploymentConfig

    _check_frameworks([framework])
    adapter = registry.get(framework)
    adapter.check_available()
    arts = [build_artifacts(get_model(n)) for n in model]
    dep = make_deployment(framework, DeploymentConfig(auth=auth), arts, device)
    adapter.validate(dep)
    with tempfile.TemporaryDirectory(prefix="servingbench-serve-") as tmp, SecretStore() as store, terminate_on_signals():
        secrets = store.make(auth, False)
        live = LiveDeployment(adapter, dep, Path(tmp) / "deploy", Path(tmp) / "logs", secrets)
        try:
            with live:
                for art in arts:
                    req = adapter.request(get_model(art.name), get_model(art.name).example_inputs(1), secrets)
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
    from servingbench.probes import FEATURES
    from servingbench.results import ResultsError, RunResults

    try:
        recs = RunResults.open(results_dir).records("probe")
    except ResultsError as e:
        _fail(str(e))
        return
    if not recs:
        _fail(f"{results_dir} has no feature probe results (run a suite with 'features:', e.g. scenarios/features.yaml)")
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
def cleanup(kill: bool = typer.Option(False, "--kill", help="kill them (SIGKILL to each process)")) -> None:
    """List (and with --kill, stop) server processes left behind by a harness that died."""
    from servingbench.measure.supervisor import _describe, stale_servers

    stale = stale_servers()
    if not stale:
        out.print("no stale servingbench servers")
        return
    for p, marker in stale:
        out.print(f"stale: {_describe(p)} (deployment marker {marker[:12]})")
        if kill:
            p.kill()
    if not kill:
        out.print("run `servingbench cleanup --kill` to stop them")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
