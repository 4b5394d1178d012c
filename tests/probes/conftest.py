"""Shared by the probe tests: a ProbeContext on the zoo's artifacts, the server on the automatic CPU set."""

from __future__ import annotations

import pytest


@pytest.fixture
def probe_ctx(zoo_artifacts, tmp_path):
    """``probe_ctx(framework)``: a ProbeContext with a SecretStore that closes after the test."""
    from servingbench.probes import ProbeContext
    from servingbench.runtime.secrets import SecretStore
    from servingbench.suite import cpu_sets

    with SecretStore() as store:
        yield lambda framework: ProbeContext(framework, zoo_artifacts, store, tmp_path / "work", tmp_path / "logs",
                                             cpu_sets("auto")[0])
