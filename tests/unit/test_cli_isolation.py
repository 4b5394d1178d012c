"""The CLI surface of isolation and containers: `servingbench isolate`, `verify/serve --python/--runtime/--image`,
and feature probes that honour a suite's `interpreters:` (no server starts here; the servers run in
tests/e2e/test_isolation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from servingbench.runtime import isolation
from servingbench.cli import app

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: no litserve, no servingbench


def invoke(*args: str, **kw):
    return CliRunner().invoke(app, list(args), catch_exceptions=False, **kw)


def error_text(result) -> str:
    return " ".join(result.stderr.split())  # rich may wrap long messages


# ---- servingbench isolate ----------------------------------------------------------------------------------------
def test_isolate_unknown_framework_suggests_the_name(tmp_path):
    r = invoke("isolate", "litserv", "--venv", str(tmp_path / "v"))
    assert r.exit_code == 2
    assert "unknown framework 'litserv'" in error_text(r) and "Did you mean 'litserve'" in error_text(r)
    assert not (tmp_path / "v").exists()


def test_isolate_bad_source_and_missing_lock(tmp_path):
    r = invoke("isolate", "litserve", "--source", "copy", "--venv", str(tmp_path / "v"))
    assert r.exit_code == 2 and "--source 'copy' is not one of link, install" in error_text(r)
    r = invoke("isolate", "litserve", "--lock", str(tmp_path / "nope.lock"), "--venv", str(tmp_path / "v"))
    assert r.exit_code == 2 and f"--lock {tmp_path / 'nope.lock'}: no such file" in error_text(r)


def test_isolate_refuses_a_directory_it_did_not_create(tmp_path):
    """create_venv replaces a venv it does not reuse; a user's directory must never be that."""
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        r = invoke("isolate", "litserve", "--venv", str(mine), *extra)
        assert r.exit_code == 2, r.output
        assert f"--venv {mine} exists and is not a servingbench venv" in error_text(r)
        assert (mine / "precious.txt").read_text() == "keep me"


def test_isolate_lock_that_lacks_the_framework_fails_with_the_file(tmp_path):
    """A real create_venv call: a lock without litserve's pins is refused before any install."""
    lock = tmp_path / "other.lock"
    lock.write_text("torch==2.13.0\nnumpy==2.0.0\n")
    r = invoke("isolate", "litserve", "--lock", str(lock), "--venv", str(tmp_path / "v"))
    assert r.exit_code == 1
    assert f"litserve: {lock} pins none of ['litserve" in error_text(r)
    assert not (tmp_path / "v").exists()


def test_isolate_forwards_its_options_to_create_venv(tmp_path, monkeypatch):
    """The options reach create_venv (the real build runs in tests/e2e/test_isolation.py); stdout is the path only."""
    calls = []

    def create_venv(framework, venv, **kw):
        calls.append((framework, venv, kw))
        kw["log"]("creating ...")
        return Path(venv or tmp_path / "cache") / "bin" / "python"

    monkeypatch.setattr(isolation, "create_venv", create_venv)
    monkeypatch.chdir(tmp_path)
    r = invoke("isolate", "mosec", "--venv", "rel/v", "--lock", str(LOCK), "--force", "--source", "install",
               "--torch-index-url", "https://example.invalid/whl/cpu")
    assert r.exit_code == 0, r.output
    [(fw, venv, kw)] = calls
    assert fw == "mosec" and venv == tmp_path / "rel" / "v"  # absolute: the suite needs an absolute path
    assert kw["lock"] == LOCK and kw["reuse"] is False and kw["source"] == "install"
    assert kw["torch_index_url"] == "https://example.invalid/whl/cpu" and kw["project"] == ROOT
    assert r.stdout == f"{tmp_path / 'rel' / 'v' / 'bin' / 'python'}\n"
    assert "interpreters:" in r.stderr and "creating ..." in r.stderr
    calls.clear()
    assert invoke("isolate", "mosec").exit_code == 0
    [(_, venv, kw)] = calls
    assert venv is None and kw["reuse"] is True and kw["source"] == "link" and kw["lock"] is None


# ---- verify / serve --python --runtime --image -------------------------------------------------------------------
@pytest.mark.parametrize("command", ["verify", "serve"])
def test_python_runtime_and_image_errors(command, tmp_path):
    r = invoke(command, "litserve", "--runtime", "dockr")
    assert r.exit_code == 2 and "--runtime 'dockr' is not a runtime. Did you mean 'docker'?" in error_text(r)
    r = invoke(command, "litserve", "--image", "servingbench/litserve:dev")
    assert r.exit_code == 2 and "--image servingbench/litserve:dev needs --runtime docker" in error_text(r)
    r = invoke(command, "litserve", "--python", str(tmp_path / "nope" / "bin" / "python"))
    assert r.exit_code == 2
    assert f"--python {tmp_path / 'nope' / 'bin' / 'python'}: interpreter" in error_text(r)
    assert "does not exist or is not executable" in error_text(r)
    r = invoke(command, "litserve", "--python", SYSTEM_PYTHON)
    assert r.exit_code == 2
    assert f"--python {SYSTEM_PYTHON}: litserve is not installed for interpreter {SYSTEM_PYTHON}" in error_text(r)
    assert "servingbench isolate litserve" in error_text(r)
    r = invoke(command, "litserv", "--python", SYSTEM_PYTHON)
    assert r.exit_code == 2 and "Did you mean 'litserve'" in error_text(r)


def test_runtime_docker_needs_a_client(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = invoke("verify", "litserve", "--runtime", "docker", env={"PATH": str(empty)})
    assert r.exit_code == 2 and "--runtime docker: no `docker` client on PATH" in error_text(r)


# ---- probes honour the suite's interpreters: ---------------------------------------------------------------------
def test_probe_cells_skip_an_interpreter_without_the_framework(tmp_path):
    from servingbench.suite import run_suite
    from servingbench.scenarios.loader import load_suite

    path = tmp_path / "features.yaml"
    path.write_text(f"name: probes-isolated\nframeworks: [litserve]\nmodels: [mlp]\nfeatures: [auth]\n"
                    f"interpreters:\n  litserve: {SYSTEM_PYTHON}\n")
    out = run_suite(load_suite(path), suite_path=path, out=tmp_path / "results", progress=print)
    assert out.statuses == {"litserve/probe:auth": "skipped"}
    cell = out.results.read_run()["cells"]["litserve/probe:auth"]
    assert cell["reason"].startswith(f"litserve: interpreters: litserve is not installed for interpreter "
                                     f"{SYSTEM_PYTHON}")
    assert not out.results.records("probe") and not out.failed


def test_probe_context_runtime_for_the_gpu_probe(tmp_path):
    """The gpu probe deploys with device cuda: a default :cpu image becomes :cuda, a suite's own image stays."""
    from servingbench.runtime.containers import DockerRuntime
    from servingbench.probes import ProbeContext

    def ctx(runtime):
        return ProbeContext("mosec", {}, None, tmp_path, tmp_path, None, python="/venv/bin/python", runtime=runtime)

    default = DockerRuntime(image="servingbench/mosec:cpu")
    assert ctx(default)._runtime_for("cpu") is default
    assert ctx(default)._runtime_for("cuda") == DockerRuntime(image="servingbench/mosec:cuda")
    own = DockerRuntime(image="registry.example/mosec:gpu-build")
    assert ctx(own)._runtime_for("cuda") is own
    assert ctx(None)._runtime_for("cuda") is None and ctx(None).python == "/venv/bin/python"
