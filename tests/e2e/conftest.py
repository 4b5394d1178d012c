"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def live(zoo_artifacts, tmp_path_factory):
    """A real LitServe server with the mlp model (one per test module), stopped after the module."""
    from servingbench.adapters import registry
    from servingbench.adapters.base import Secrets
    from servingbench.harness import LiveDeployment, make_deployment
    from servingbench.scenarios.schema import DeploymentConfig

    tmp = tmp_path_factory.mktemp("litserve-mlp")
    dep = make_deployment("litserve", DeploymentConfig(), [zoo_artifacts["mlp"]], "cpu")
    with LiveDeployment(registry.get("litserve"), dep, tmp / "d", tmp / "logs", Secrets()) as ld:
        yield ld
