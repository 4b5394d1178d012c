"""An adapter written outside the repository from docs/adding-an-adapter.md alone passes the contract suite from an
installed servingbench, and installing it breaks none of the project's adapter-enumerating tests.

The package is built from the code blocks of that page (so the doc cannot drift from what works), installed with
pip into a separate directory (its entry point is found the way any installed plugin's is), and exercised through
``servingbench contract`` in a subprocess with that directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "adding-an-adapter.md"


def _blocks() -> dict[str, str]:
    """The doc's code blocks, keyed by the file name in the line that introduces each one."""
    text = DOC.read_text()
    out = {}
    for m in re.finditer(r"`([\w/.]+\.(?:py|toml))`(?: of the package)?:\n\n```\w+\n(.*?)```", text, re.S):
        out[m.group(1)] = m.group(2)
    return out


def test_the_doc_carries_the_whole_example():
    blocks = _blocks()
    assert {"sb_plainhttp/adapter.py", "sb_plainhttp/plain_server.py", "pyproject.toml"} <= set(blocks), set(blocks)
    # the doc names every public hook and helper of the contract
    from servingbench import contract

    text = DOC.read_text()
    hooks = ["check_available", "validate", "prepare", "launch", "codec", "manifest_command", "grpc_infer",
             "repository_request", "cache_stats_request", "parse_cache_stats", "auth_headers", "options_of",
             "framework_version", "scheme"]
    missing = [n for n in [*contract.__all__, *hooks] if n not in text and n not in ("CATALOG", "FEATURES", "PROBES",
                                                                                     "Feature", "Ports")]
    assert not missing, f"docs/adding-an-adapter.md does not name: {missing}"
    # and refers only to files inside the repository
    for ref in re.findall(r"\]\(([^)#]+)\)", text):
        assert (DOC.parent / ref).exists(), ref
    assert "shared/" not in text and "FRAMEWORKS.md" not in text


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package, pip-installed into its own target directory."""
    src = tmp_path_factory.mktemp("sb-plainhttp")
    for name, code in _blocks().items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(code)
    (src / "sb_plainhttp" / "__init__.py").write_text("")
    site = tmp_path_factory.mktemp("site")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert list(site.glob("sb_plainhttp-*.dist-info/entry_points.txt")), list(site.iterdir())
    return site


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SERVINGBENCH_ADAPTERS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.server
def test_outside_adapter_passes_the_contract_suite(installed, no_leftovers):
    exe = Path(sys.executable).with_name("servingbench")
    env = _env(installed)
    listed = subprocess.run([str(exe), "frameworks"], capture_output=True, text=True, env=env, timeout=120)
    assert "plainhttp" in listed.stdout, listed.stdout + listed.stderr
    p = subprocess.run([str(exe), "contract", "plainhttp"], capture_output=True, text=True, env=env, timeout=600,
                       cwd=installed)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "passed" in p.stdout and "failed" not in p.stdout.lower().replace("0 failed", ""), p.stdout[-2000:]


def test_installing_it_breaks_none_of_the_projects_tests(installed):
    """The tests that enumerate registered adapters, with the outside adapter installed (no servers started)."""
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not server",
                        "tests/unit/test_containers.py", "tests/adapters/test_contract.py",
                        "tests/unit/test_scenarios.py"],
                       capture_output=True, text=True, env=_env(installed), timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "plainhttp" in subprocess.run(
        [sys.executable, "-c", "from servingbench.adapters import registry; print(registry.names())"],
        capture_output=True, text=True, env=_env(installed), timeout=60).stdout
