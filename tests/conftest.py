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
