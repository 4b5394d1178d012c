"""Scenario suites: the YAML users edit, validated strictly (unknown keys, wrong types, impossible values).

Every time value carries a unit (``"250ms"``, ``"10s"``, ``"2m"``): a bare number is rejected, since "50" could be
seconds or milliseconds.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|m|h)\s*$")


def parse_duration(value: Any) -> float:
    """``"250ms"`` -> 0.25 (seconds).  Numbers without a unit are refused with a suggestion."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration with a unit such as '10s' or '50ms', got {value!r}")
    if isinstance(value, (int, float)):
        raise ValueError(f"{value!r} has no unit: write '{value}s' or '{value}ms'")
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '10s', got {value!r}")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration: use a number and one of {', '.join(_UNITS)} (e.g. '50ms')")
    return float(m.group(1)) * _UNITS[m.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in YAML with a unit."""


def duration_text(seconds: float, unit: str = "s") -> str:
    """``0.25`` -> ``"0.25s"``: a duration as the schema reads it back (never in exponent notation, which
    :func:`parse_duration` refuses); ``unit="ms"`` when ``seconds`` is already in milliseconds."""
    return (f"{float(seconds):.9f}".rstrip("0").rstrip(".") or "0") + unit


def raw(obj: Any, compact: bool = False) -> Any:
    """A validated suite (or any part of it) as the plain data its YAML would hold, durations with their unit, so
    that ``Suite.model_validate(raw(suite)) == suite`` (for suites written by servingbench, e.g. ``tune``'s
    confirmation suite).  ``compact``: fields left at their default are left out, as a person would write it."""
    if isinstance(obj, BaseModel):
        out = {}
        for name, field in type(obj).model_fields.items():
            value = getattr(obj, name)
            if compact and not field.is_required() and value == field.get_default(call_default_factory=True):
                continue
            is_duration = any(getattr(m, "func", None) is parse_duration for m in field.metadata)
            out[name] = (duration_text(value) if is_duration and isinstance(value, (int, float))
                         else raw(value, compact))
        return out
    if isinstance(obj, (list, tuple)):
        return [raw(x, compact) for x in obj]
    if isinstance(obj, dict):
        return {k: raw(v, compact) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


MAX_IN_FLIGHT = 100_000
"""Largest generator pool (``max_in_flight``): each in-flight request is a locust user with its own connection."""
MAX_CPU_ID = 8191
"""Highest CPU number a ``cpu_sets`` entry may name (Linux supports at most 8192 CPUs)."""


def _non_finite(value: Any, path: str = "") -> tuple[str, float] | None:
    """``(path, value)`` of the first infinite or NaN number in ``value`` (lists and mappings searched, validated
    models skipped: they check their own fields), or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _non_finite(item, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(value, dict):
        for k, item in value.items():
            found = _non_finite(item, f"{path}.{k}")
            if found:
                return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _finite_numbers(self) -> Any:
        """No field of a suite takes ``.inf`` or ``.nan`` (nor 'inf' / 'nan', which pydantic turns into such floats):
        an infinite rate or duration never ends, and a NaN passes no bound.  (Nested models check their own.)"""
        for name, value in self:
            found = _non_finite(value)
            if found is not None:
                where, bad = found
                raise ValueError(f"{name}{where} is {bad!r}, not a finite number: write a finite value "
                                 "(YAML's .inf and .nan are not accepted)")
        return self


class InputSpec(_Strict):
    """A user model's input: one tensor per request, its per-sample shape (without the batch dimension)."""

    name: str = "input"
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="per-sample shape, e.g. [3, 224, 224]")
    dtype: Literal["float32", "float16", "float64", "int64", "int32"] = "float32"
    low: float | None = Field(None, description="example values are drawn from [low, high)")
    high: float | None = None


#: a user model's source keys (servingbench.models.user.SOURCES) and the paths among its fields
USER_SOURCES = ("torchscript", "export", "factory", "hf")
_USER_PATHS = ("torchscript", "export", "hf", "state_dict", "example")


class ModelRef(_Strict):
    """A zoo model (``name`` + ``params``), or a user's own model: ``name`` + one source (``torchscript``,
    ``export``, ``factory`` (+ ``state_dict``), ``hf``) + ``input`` or ``example`` (docs/models.md).  Relative paths
    are taken from the suite file's directory."""

    name: str = Field(description="zoo model name (servingbench models), or the name of a user model")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor parameters, e.g. resolution")
    torchscript: str | None = Field(None, description="user model: a TorchScript file (torch.jit.save)")
    export: str | None = Field(None, description="user model: a torch.export program (.pt2)")
    factory: str | None = Field(None, description="user model: 'module:callable' returning an nn.Module")
    state_dict: str | None = Field(None, description="user model with factory: weights to load into it")
    hf: str | None = Field(None, description="user model: a local Hugging Face transformers model directory")
    input: InputSpec | None = Field(None, description="user model: its input tensor")
    example: str | None = Field(None, description="user model: a .npy batch of example inputs (instead of input)")
    rtol: float | None = Field(None, ge=0, lt=1, description="user model: verification tolerance (default 1e-3)")
    atol: float | None = Field(None, ge=0, lt=1, description="user model: verification tolerance (default 1e-3)")
    payload: str = Field("tensor", description="what requests carry: tensor (the input tensor), image (JPEG files "
                         "the server decodes, resizes, crops and normalises: cnn, resnet50) or text (strings the "
                         "server tokenises: encoder, bert_base)")

    @field_validator("payload")
    @classmethod
    def _known_payload(cls, v: str) -> str:
        from servingbench.models.preprocess import PAYLOADS

        if v not in PAYLOADS:
            import difflib

            close = difflib.get_close_matches(str(v), PAYLOADS, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown payload {v!r}.{hint} Use one of: tensor (the input tensor, the default), "
                             "image (JPEG files, for cnn or resnet50), text (strings, for encoder or bert_base)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any, info: Any) -> Any:
        base = (getattr(info, "context", None) or {}).get("base")
        if isinstance(data, dict) and base is not None:
            data = dict(data)
            for key in _USER_PATHS:
                v = data.get(key)
                if isinstance(v, str) and v and not os.path.isabs(os.path.expanduser(v)):
                    data[key] = str(Path(base) / v)
        return data

    @property
    def user(self) -> bool:
        """A user's model (a source key is given), not a zoo model."""
        return any(getattr(self, k) is not None for k in USER_SOURCES)

    def user_entry(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None and k not in ("params", "payload")}

    @model_validator(mode="after")
    def _known(self) -> "ModelRef":
        from servingbench.models import get_model, list_models

        if not self.user:
            extra = [k for k in ("state_dict", "input", "example", "rtol", "atol") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to a user model: add its source ("
                                 f"{', '.join(USER_SOURCES)}), or remove them for the zoo model {self.name!r}")
            get_model(self.name, payload=self.payload, **self.params)  # raises ValueError with suggestions
            return self
        if self.payload != "tensor":
            raise ValueError(f"payload {self.payload!r} applies to zoo models (cnn, resnet50: image; encoder, "
                             "bert_base: text); a user model takes tensors: remove payload, or preprocess "
                             "inside your model")
        from servingbench.models.user import parse_entry

        if self.name in {m.name for m in list_models(real_size=True, generative=True)}:
            raise ValueError(f"model {self.name!r} is a zoo model's name: give your model another name")
        if self.params:
            raise ValueError("params only apply to zoo models (a user model is built by its source)")
        parse_entry(self.user_entry(), Path.cwd())  # files exist (paths made absolute above), the input is well-formed
        return self


def _model_ref(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


class Slo(_Strict):
    p99: Duration = Field(description="latency target for the 99th percentile, e.g. '50ms'")
    max_error_rate: float = Field(0.001, ge=0, le=1, description="maximum share of failed requests")


class Measurement(_Strict):
    """How each load point is measured (after MLPerf LoadGen's minimum-duration/minimum-count rules)."""

    warmup: Duration = Field(2.0, ge=0, description="discarded load before measuring")
    window: Duration = Field(2.0, gt=0, description="length of one measurement window")
    windows: int = Field(3, ge=1, description="consecutive windows that must agree for a point to be stable")
    tolerance: float = Field(0.10, gt=0, le=1, description="max relative spread of throughput and of p50 across those windows")
    max_duration: Duration = Field(30.0, gt=0, description="extend an unstable point up to this long, then flag it")
    min_requests: int = Field(200, ge=1, description="fewer measured requests flags the point 'too_few_requests'")
    repeats: int = Field(1, ge=1, le=20, description="run every point this many times; median and spread are kept")
    sample_every: int = Field(50, ge=1, description="verify every Nth response against the reference outputs")
    timeout: Duration = Field(30.0, gt=0, description="per-request timeout")

    @model_validator(mode="after")
    def _windows_fit(self) -> "Measurement":
        if self.window * self.windows > self.max_duration:
            raise ValueError(
                f"windows x window ({self.windows} x {self.window:g}s) is longer than max_duration "
                f"({self.max_duration:g}s): raise max_duration or shorten the window"
            )
        return self


class _WorkloadBase(_Strict):
    name: str = Field(description="unique name of the workload in the suite")
    batch: int = Field(1, ge=1, le=4096, description="samples per request")
    models: list[str] | None = Field(None, description="subset of the suite's models (default: all)")
    weights: dict[str, float] | None = Field(None, description="traffic share per model when several are served")
    input_pool: int = Field(16, ge=1, description="distinct pre-encoded inputs per model, cycled")
    measurement: Measurement | None = Field(None, description="overrides the suite's measurement settings")


class ClosedLoop(_WorkloadBase):
    """N concurrent users, each sending its next request when the previous one returns."""

    kind: Literal["closed_loop"]
    concurrency: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(description="load points: concurrent users")

    @field_validator("concurrency")
    @classmethod
    def _some_points(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("concurrency is empty: list at least one load point, e.g. [1, 8, 32]")
        return v


def _check_max_in_flight(v: int) -> int:
    if v > MAX_IN_FLIGHT:
        raise ValueError(
            f"max_in_flight {v} is more than {MAX_IN_FLIGHT}: every in-flight request is a generator user with its "
            "own connection (memory and a file descriptor each), so a larger pool exhausts the load generator, not "
            f"the server; use at most {MAX_IN_FLIGHT} (the default is 256)")
    return v


class OpenLoop(_WorkloadBase):
    """Requests at a fixed arrival rate; latency counts from each request's intended send time."""

    kind: Literal["open_loop"]
    rates: list[Annotated[float, Field(gt=0)]] = Field(description="load points: arrival rates in requests/s")
    arrival: Literal["poisson", "constant"] = "poisson"
    max_in_flight: int = Field(256, ge=1, description="generator users available to send (pool size)")

    @field_validator("rates")
    @classmethod
    def _some_rates(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("rates is empty: list at least one arrival rate in requests/s, e.g. [50, 100]")
        return v

    @field_validator("max_in_flight")
    @classmethod
    def _pool_cap(cls, v: int) -> int:
        return _check_max_in_flight(v)


class SloSearch(_WorkloadBase):
    """Search for the highest arrival rate whose p99 and error rate meet the suite's SLO."""

    kind: Literal["slo_search"]
    start_rate: float = Field(50.0, gt=0)
    max_rate: float = Field(20_000.0, gt=0)
    min_rate: float | None = Field(None, gt=0, description="the lowest rate probed when start_rate fails (probes at "
                                   "low rates are long: min_requests / rate seconds); a server that misses the SLO "
                                   "there reports 'no rate met the SLO'. Default: four halvings of start_rate")
    precision: float = Field(0.1, gt=0, lt=1, description="stop when the bracket is this narrow (relative)")
    max_steps: int = Field(10, ge=1, le=50)
    arrival: Literal["poisson", "constant"] = "poisson"
    max_in_flight: int = Field(256, ge=1)
    confidence: float = Field(0.95, ge=0.5, lt=1, description="confidence of each probe's p99 claim (early-stopping "
                                                              "bound, as MLPerf LoadGen)")
    dispersion: float = Field(1.0, ge=1, le=100, description="slow requests come in bursts: count every N requests as "
                              "one independent observation (raise with longer probes; docs/methodology.md)")
    confirm: bool = Field(True, description="measure the final rate a second time; step down if it fails")
    drain: bool = Field(True, description="before each probe, wait until a single request is back near the idle "
                                          "latency (the previous probe's backlog gone)")

    @field_validator("max_in_flight")
    @classmethod
    def _pool_cap(cls, v: int) -> int:
        return _check_max_in_flight(v)

    @model_validator(mode="after")
    def _min_below_start(self) -> SloSearch:
        if self.min_rate is not None and self.min_rate > self.start_rate:
            raise ValueError(f"min_rate {self.min_rate:g} is above start_rate {self.start_rate:g}: the search starts "
                             "at start_rate and halves down to min_rate; set min_rate <= start_rate")
        return self


class Stage(_Strict):
    users: int = Field(ge=1, le=10_000, description="concurrent users at the end of the stage")
    duration: Duration = Field(gt=0, description="how long the stage lasts, e.g. '10s'")


class Shape(_WorkloadBase):
    """Users over time through locust's ``LoadTestShape``: ``step`` holds each stage's users for its duration;
    ``ramp`` moves linearly from the previous stage's users (``start_users`` before the first) to the stage's.

    One generator run covers every stage; each stage is one record, measured in windows of the measurement's
    ``window`` cut at stage boundaries.  The first window of every stage (after a change of users) is discarded as
    the transition unless the stage is a single window.  locust applies a shape once per second.
    """

    kind: Literal["shape"]
    shape: Literal["step", "ramp"] = "step"
    stages: list[Stage] = Field(min_length=1, description="the stages, in order")
    start_users: int = Field(1, ge=1, le=10_000, description="ramp: users before the first stage")

    def total_duration(self) -> float:
        return sum(st.duration for st in self.stages)


Workload = Annotated[Union[ClosedLoop, OpenLoop, SloSearch, Shape], Field(discriminator="kind")]


class DeploymentConfig(_Strict):
    label: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    frameworks: list[str] | None = Field(None, description="only for these frameworks (default: all of the suite)")
    workers: int = Field(1, ge=1, le=64)
    threads: int = Field(1, ge=1, le=256)
    max_batch_size: int = Field(1, ge=1, le=4096)
    batch_timeout: Duration = Field(0.005, ge=0)
    model_format: Literal["eager", "torchscript"] = "eager"
    cache: bool = False
    auth: bool = False
    tls: Union[bool, Literal["mutual"]] = False
    protocol: Literal["http", "grpc"] = "http"
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="framework name -> framework-specific knobs (typed per adapter: "
                                          "`servingbench frameworks` lists them)"
    )

    @field_validator("frameworks")
    @classmethod
    def _some_frameworks(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("frameworks is empty: this deployment would run on no framework; list the frameworks "
                             "it is for, or remove the key to use it for all of the suite's frameworks")
        return v

    @field_validator("options")
    @classmethod
    def _typed_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each framework's options against its adapter's typed Options (unknown frameworks: checked by Suite)."""
        from servingbench.adapters import registry
        from servingbench.contract import OptionsError

        known = registry.names()
        for fw, opts in v.items():
            if fw in known:
                try:
                    registry.get_class(fw).parse_options(opts)
                except OptionsError as e:
                    raise ValueError(str(e)) from None
        return v


class Generator(_Strict):
    """How many locust processes make the load.  0 workers: one process (locust's local runner).  N workers:
    locust's master/worker mode, the master here and N worker processes started here; ``remote_workers`` more
    connect from other hosts (``servingbench generator-worker --master-host HOST --master-port PORT``).  Windows,
    histograms and counts are merged exactly: histograms are added, never percentiles averaged."""

    workers: Union[Annotated[int, Field(ge=0, le=64)], Literal["auto"]] = Field(
        0, description="local locust worker processes (0: a single process; auto: one per generator core when the "
                       "generator has two or more, else a single process)")
    remote_workers: int = Field(0, ge=0, le=1024, description="workers on other hosts the master waits for")
    master_bind: str = Field("127.0.0.1", description="address the master listens on for workers")
    master_port: int | None = Field(None, ge=1, le=65535,
                                    description="master port (default: a free port; needed with remote_workers)")
    connect_timeout: Duration = Field(60.0, gt=0, description="how long the master waits for its workers")

    @model_validator(mode="after")
    def _remote(self) -> "Generator":
        if self.remote_workers and self.master_port is None:
            raise ValueError(f"remote_workers: {self.remote_workers} needs a fixed master_port that the workers "
                             "connect to (e.g. master_port: 5557)")
        return self

    @classmethod
    def parse_workers(cls, value: Any) -> int | str:
        """``workers`` from a command line (``"3"``, ``"auto"``), validated as the field is; ValueError if not."""
        try:
            return cls(workers=value).workers
        except ValueError:
            raise ValueError(f"{value}: must be 0 (one process) to 64 locust worker processes, or auto") from None

    def local_workers(self, generator_cpus: set[int] | None = None) -> int:
        """Worker processes to start here; ``auto`` resolves to the generator's cores (or this process's)."""
        if self.workers != "auto":
            return int(self.workers)
        import os

        n = len(generator_cpus or os.sched_getaffinity(0))
        return n if n >= 2 else 0


class CpuSets(_Strict):
    """Disjoint CPU sets for server and load generator.  ``"auto"``: last core(s) to the generator."""

    server: str | None = None
    generator: str | None = None

    @staticmethod
    def parse(field: str, text: str) -> set[int]:
        """The CPU numbers of a list such as ``"0-3,6"``; ValueError naming ``field``, the value and the fix."""
        cpus: set[int] = set()
        for part in text.split(","):
            if not part.strip():
                continue
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise ValueError(f"{field} {text!r}: {part.strip()!r} is not a CPU number or range: write CPU "
                                 "numbers and ranges separated by commas, e.g. '0-3,6'")
            lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            if hi < lo:
                raise ValueError(f"{field} {text!r}: the range {part.strip()!r} runs backwards: write '{hi}-{lo}'")
            if hi > MAX_CPU_ID:
                raise ValueError(f"{field} {text!r}: CPU {hi} is beyond the highest CPU number Linux supports "
                                 f"({MAX_CPU_ID}): name this machine's CPUs (see `nproc` / `lscpu`)")
            cpus.update(range(lo, hi + 1))
        if not cpus:
            raise ValueError(f"{field} {text!r} names no CPU: write e.g. '0-3', or remove the key")
        return cpus

    @model_validator(mode="after")
    def _disjoint(self) -> "CpuSets":
        server = self.parse("cpu_sets.server", self.server) if self.server is not None else None
        gen = self.parse("cpu_sets.generator", self.generator) if self.generator is not None else None
        if server and gen and server & gen:
            both = sorted(server & gen)
            shown = ", ".join(map(str, both[:16])) + (" ..." if len(both) > 16 else "")
            raise ValueError(
                f"cpu_sets: server {self.server!r} and generator {self.generator!r} share CPU(s) {shown}: the load "
                "generator would compete with the server it measures; give them disjoint CPUs (or cpu_sets: auto)")
        return self


class RemoteTarget(_Strict):
    """A server someone else runs: servingbench verifies and measures it, but does not start or stop it."""

    url: str = Field(pattern=r"^https?://", description="base URL of the inference endpoint, e.g. http://10.0.0.5:8000")
    urls: dict[str, str] = Field(default_factory=dict,
                                 description="more base URLs by the adapter's port name (e.g. MLflow's http-<model>)")
    token_env: str | None = Field(None, description="environment variable holding the auth token (never stored)")
    ca_file: str | None = Field(None, description="CA certificate to verify the server's TLS certificate")
    client_cert: str | None = None
    client_key: str | None = None

    def is_loopback(self) -> bool:
        from urllib.parse import urlparse

        hosts = {urlparse(u).hostname for u in [self.url, *self.urls.values()]}
        return hosts <= {"127.0.0.1", "localhost", "::1"}


class PublishedPoint(_Strict):
    """One measured point of this suite: a deployment's metric at a workload's load level (median over repeats)."""

    framework: str
    deployment: str = Field("default", description="the deployment's label")
    workload: str
    model: str | None = Field(None, description="default: the suite's first model")
    load: float = Field(gt=0, description="the load level: concurrency (closed loop) or rate (open loop)")


class Published(_Strict):
    """A published figure this suite reproduces; the report shows it, its source and ours side by side."""

    claim: str = Field(description="what was published, in words")
    source: str = Field(description="where: a URL or citation (file, test, issue)")
    metric: Literal["throughput_rps", "samples_per_s", "latency_p50_s", "latency_p99_s"]
    of: PublishedPoint
    over: PublishedPoint | None = Field(None, description="a ratio claim: metric(of) / metric(over)")
    value: float | None = Field(None, description="the published figure (a ratio with over)")
    range: tuple[float, float] | None = Field(None, description="a published range [low, high] instead of a value")
    tolerance: float = Field(0.25, gt=0, lt=10, description="ours agrees when within this relative distance of "
                                                           "value (or inside range)")

    @model_validator(mode="after")
    def _one_figure(self) -> "Published":
        if (self.value is None) == (self.range is None):
            raise ValueError("give the published figure as value or as range (one of them)")
        if self.range is not None and not self.range[0] <= self.range[1]:
            raise ValueError(f"range {list(self.range)} is not [low, high]")
        return self


class Suite(_Strict):
    name: str
    description: str = ""
    frameworks: list[str] = Field(min_length=1)
    models: list[Annotated[ModelRef, BeforeValidator(_model_ref)]] = Field(min_length=1)
    device: Literal["cpu", "cuda"] = "cpu"
    deployments: list[DeploymentConfig] = Field(default_factory=lambda: [DeploymentConfig()])
    workloads: list[Workload] = Field(default_factory=list)
    measurement: Measurement = Field(default_factory=Measurement)
    slo: Slo | None = None
    cpu_sets: Union[Literal["auto", "none"], CpuSets] = "auto"
    generator: Generator = Field(default_factory=Generator, description="locust processes (master/worker mode)")
    startup_timeout: Duration = Field(180.0, gt=0)
    inprocess_limit: bool = Field(True, description="measure each cell's models in-process on the server's cores "
                                  "before it starts (the limit and overhead beside every point); false skips it "
                                  "(smoke runs: ~5 s a cell)")
    features: list[str] = Field(default_factory=list, description="feature probes to run (servingbench probes)")
    targets: dict[str, RemoteTarget] = Field(
        default_factory=dict, description="framework -> remote server to measure instead of starting one"
    )
    runtime: Literal["local", "docker"] = Field(
        "local", description="local: servers are processes here; docker: each server runs in its framework's image "
                             "(docs/containers.md)")
    images: dict[str, str] = Field(
        default_factory=dict, description="framework -> image for runtime: docker (default servingbench/<fw>:cpu|cuda)")
    interpreters: dict[str, str] = Field(
        default_factory=dict, description="framework -> python of its own venv (servingbench isolate FRAMEWORK; "
                                          "docs/isolation.md)")
    published: list[Published] = Field(default_factory=list, description="published figures this suite "
                                       "reproduces (scenarios/published/): the report puts ours beside them")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        """The name becomes part of the results directory name: a safe character set and a length limit."""
        allowed = "1-64 of letters A-Z a-z, digits 0-9, '.', '_' and '-', starting with a letter or digit"
        if not v:
            raise ValueError(f"the suite name is empty: use {allowed}")
        if len(v) > 64:
            raise ValueError(f"the suite name is {len(v)} characters long: use {allowed}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            bad = sorted({c for c in v if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
            what = ("contains " + ", ".join(repr(c) for c in bad[:8])) if bad else \
                "does not start with a letter or digit"
            raise ValueError(f"the suite name {what} (it names the results directory): use {allowed}")
        return v

    @field_validator("deployments")
    @classmethod
    def _some_deployments(cls, v: list[DeploymentConfig]) -> list[DeploymentConfig]:
        if not v:
            raise ValueError("deployments is empty: no cell would run; remove the key to use the default deployment "
                             "(label 'default'), or list at least one deployment")
        return v

    @field_validator("features")
    @classmethod
    def _known_probes(cls, v: list[str]) -> list[str]:
        from servingbench.contract import PROBES

        for name in v:
            if name not in PROBES:
                import difflib

                close = difflib.get_close_matches(name, list(PROBES), n=2)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"unknown feature probe {name!r}.{hint} Known: {', '.join(PROBES)}.")
        return v

    @field_validator("frameworks")
    @classmethod
    def _known_frameworks(cls, v: list[str]) -> list[str]:
        from servingbench.adapters import registry

        known = registry.names()
        for name in v:
            if name not in known:
                raise ValueError(f"unknown framework {name!r}.{registry.suggest(name, known)}")
        if len(set(v)) != len(v):
            raise ValueError(f"frameworks listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "Suite":
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"models lists {', '.join(map(repr, twice))} more than once (a model is served under "
                             "its name): keep one entry per model (e.g. one payload per zoo model)")
        seen = set()
        for w in self.workloads:
            if w.name in seen:
                raise ValueError(f"workload name {w.name!r} is used twice")
            seen.add(w.name)
            for m in (w.models or []) + list((w.weights or {}).keys()):
                if m not in names:
                    raise ValueError(f"workload {w.name!r} names model {m!r}, which is not in the suite's models {names}")
            if isinstance(w, SloSearch) and self.slo is None:
                raise ValueError(f"workload {w.name!r} is an slo_search but the suite has no 'slo:' section")
        labels = [d.label for d in self.deployments]
        if len(set(labels)) != len(labels):
            raise ValueError(f"deployment labels must be unique, got {labels}")
        for d in self.deployments:
            for fw in list(d.options) + list(d.frameworks or []):
                if fw not in self.frameworks:
                    raise ValueError(
                        f"deployment {d.label!r} names framework {fw!r}, which is not in the suite's frameworks"
                    )
        wnames = [w.name for w in self.workloads]
        for i, pub in enumerate(self.published):
            for side in (pub.of, pub.over):
                if side is None:
                    continue
                for what, value, known in (("framework", side.framework, self.frameworks),
                                           ("deployment", side.deployment, labels),
                                           ("workload", side.workload, wnames),
                                           ("model", side.model, names if side.model is not None else [None])):
                    if value not in known:
                        raise ValueError(f"published.{i} ({pub.claim[:40]!r}) names {what} {value!r}, which is "
                                         f"not in the suite's {what}s {known}")
        for key, names in (("targets", self.targets), ("images", self.images), ("interpreters", self.interpreters)):
            for fw in names:
                if fw not in self.frameworks:
                    raise ValueError(f"{key} names framework {fw!r}, which is not in the suite's frameworks")
        for fw, python in self.interpreters.items():
            if not python.startswith("/"):
                raise ValueError(f"interpreters: {fw}: {python!r} is not an absolute path")
        if not self.workloads and not self.features:
            raise ValueError("the suite has neither workloads nor features: nothing to run")
        return self

    def measurement_for(self, w: _WorkloadBase) -> Measurement:
        return w.measurement or self.measurement
