"""Shared fixtures.  Server tests start real frameworks; they are marked ``server``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _artifact_cache(tmp_path_factory):
    """Model artifacts go to a per-session cache unless SERVINGBENCH_CACHE is set."""
    if "SERVINGBENCH_CACHE" not in os.environ:
        os.environ["SERVINGBENCH_CACHE"] = str(tmp_path_factory.mktemp("artifact-cache"))
    yield


@pytest.fixture(scope="session")
def zoo_artifacts(_artifact_cache):
    from servingbench.models import build_artifacts, list_models

    return {m.name: build_artifacts(m) for m in list_models()}


def marked_leftovers(marker: str) -> list:
    from servingbench.measure.supervisor import marked_processes

    return marked_processes(marker)


def all_marked_pids() -> set[int]:
    """PIDs of every process carrying a SERVINGBENCH_MARKER (any deployment)."""
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if b"SERVINGBENCH_MARKER=" in f.read():
                    pids.add(int(d))
        except OSError:
            continue
    pids.discard(os.getpid())
    return pids


@pytest.fixture
def no_leftovers():
    """Fails the test if it leaves any server process behind (processes alive before it are ignored)."""
    import time

    before = all_marked_pids()
    yield
    deadline = time.time() + 10
    left = all_marked_pids() - before
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = all_marked_pids() - before
    assert not left, f"server processes left behind: {sorted(left)}"
