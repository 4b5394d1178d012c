"""Framework adapters.  The contract is :mod:`servingbench.adapters.base`; adapters register through entry points."""

from servingbench.adapters.base import (
    Adapter,
    AdapterUnavailable,
    Capability,
    DecodeError,
    Deployment,
    LaunchSpec,
    ReadyProbe,
    RequestSpec,
    RunContext,
    Secrets,
    UnsupportedDeployment,
)

__all__ = [
    "Adapter",
    "AdapterUnavailable",
    "Capability",
    "DecodeError",
    "Deployment",
    "LaunchSpec",
    "ReadyProbe",
    "RequestSpec",
    "RunContext",
    "Secrets",
    "UnsupportedDeployment",
]
