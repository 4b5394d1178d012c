"""What the harness hands the load generator for one load point: a typed plan, built in one place.

The generator runs in its own process (and on worker hosts), so the plan travels as JSON; both sides use
:class:`GeneratorPlan`, so a missing or misspelt key fails at once instead of falling back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from servingbench.scenarios.schema import Generator, Measurement

Mode = Literal["closed", "open", "shape"]


class _Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetPlan(_Plan):
    """One model the point sends to: its request bodies (base64), URL, and the outputs to check samples against."""

    model: str
    model_name: str  #: zoo name: the generator rebuilds the ModelSpec from it and model_params
    model_params: dict[str, Any] = {}
    #: the model's meta.json (its spec) for a user model, or a zoo model with a payload or another name; else None
    model_spec: dict[str, Any] | None = None
    url: str
    method: str
    headers: dict[str, str]
    bodies: list[str]
    expected: str | None = None  #: .npy path of the expected outputs (one row per body)
    expected_npy: str | None = None  #: the same inlined (base64), for workers on other hosts
    rtol: float
    atol: float
    weight: float = 1.0


class ProcessesPlan(_Plan):
    """locust processes: 0 workers = one process; else master/worker mode (``generator:`` of the suite)."""

    workers: int = 0
    remote_workers: int = 0
    master_bind: str = "127.0.0.1"
    master_port: int | None = None
    connect_timeout_s: float = 0.0


class GeneratorPlan(_Plan):
    framework: str | None  #: adapter whose codec decodes sampled responses (None: no output checks)
    deployment: dict[str, Any] | None = None  #: Deployment.describe(): the codec is built from it
    mode: Mode
    users: int = 0
    rate: float | None = None
    arrival: Literal["poisson", "constant"] = "poisson"
    max_in_flight: int = 0
    warmup_s: float
    window_s: float
    windows: int
    tolerance: float
    max_duration_s: float
    timeout_s: float
    sample_every: int
    seed: int = 0
    targets: list[TargetPlan]
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    pem: dict[str, str] | None = None  #: PEM files inlined for workers on other hosts
    result: str
    generator: ProcessesPlan = ProcessesPlan()
    stages: list[dict[str, Any]] | None = None
    shape: Literal["step", "ramp"] | None = None
    start_users: int = 1
    live: str | None = None  #: append one JSON line per window here (live progress: throughput, p99, errors)

    @classmethod
    def build(cls, *, mode: Mode, load: dict[str, float], m: Measurement, targets: list[dict], result: str,
              processes: dict[str, Any], framework: str | None = None, deployment: dict | None = None,
              seed: int = 0, **extra: Any) -> "GeneratorPlan":
        """The one place a plan is made: load level + measurement rules + targets + generator processes."""
        return cls(
            framework=framework, deployment=deployment, mode=mode, users=int(load.get("concurrency", 0)),
            rate=load.get("rate"), warmup_s=m.warmup, window_s=m.window, windows=m.windows, tolerance=m.tolerance,
            max_duration_s=m.max_duration, timeout_s=m.timeout, sample_every=m.sample_every, seed=seed,
            targets=[TargetPlan(**t) for t in targets], result=result, generator=ProcessesPlan(**processes), **extra,
        )


@dataclass
class PointPlan:
    """One load point of a workload: the load level, its measurement rules, the models it sends to."""

    workload: Any
    load: dict[str, float]
    measurement: Measurement
    repeat: int = 0
    models: list[str] = field(default_factory=list)
    generator: Generator | None = None  # locust processes (suite.generator); None: one process
    generator_ceiling_rps: float | None = None  # the run's calibrated generator ceiling: flags points near it
    live: str | None = None  # the generator appends one line per window here (GeneratorPlan.live)
