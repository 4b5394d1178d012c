"""The adapter contract: how servingbench talks to one serving framework.

The harness owns processes, ports, secrets, verification and measurement; an adapter only *describes* a
deployment in the framework's own terms.  A new framework is one short module that subclasses :class:`Adapter`
plus an entry point in the ``servingbench.adapters`` group (``docs/adding-an-adapter.md`` is the checklist)::

    [project.entry-points."servingbench.adapters"]
    myframework = "my_package.my_module:MyAdapter"

Life cycle of one deployment (all calls come from the harness, in this order)::

    adapter = MyAdapter()
    adapter.check_available()                    # raise AdapterUnavailable if the framework is not installed
    adapter.validate(deployment)                 # raise UnsupportedDeployment for what it cannot honour
    adapter.prepare(deployment, ctx)             # write manifests / server scripts into ctx.workdir
    specs = adapter.launch(deployment, ctx)      # describe the process(es) to start; the harness starts them
    codec = adapter.codec(deployment)            # the pure request/decode pair for THIS deployment's configuration
    ...   the harness polls each LaunchSpec.ready probe, then verifies every model:
    req = codec.request(model, batch, ctx.secrets)     # pure: bytes on the wire
    out = codec.decode(model, status, body)            # pure: bytes -> numpy array (raise DecodeError)
    ...   the load generator (another process) rebuilds the same codec with
          adapter.codec(Deployment.from_description(deployment.describe())) and measures with it
    the harness stops the processes (LaunchSpec.stop_signal, grace, then SIGKILL to the group)

A codec is a function of the deployment's configuration only: no state may flow from ``validate`` or ``prepare``
into encoding.  Everything a framework needs on disk is written by ``prepare``: that folder is copied into the
results as the deployment's manifest, so a user can start the same deployment by hand.

Declared :attr:`Adapter.capabilities` are *claims*; the feature probes test every one of them against the real
server.  Adapters configure each framework the way its own documentation recommends for serving and expose the
relevant knobs through :class:`Deployment` (``workers``, ``max_batch_size``, ``batch_timeout_ms``) and the typed
:attr:`Adapter.Options`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from servingbench.contract.features import Capability
from servingbench.contract.types import (
    AdapterUnavailable, Deployment, LaunchSpec, RequestSpec, RunContext, Secrets, UnsupportedDeployment,
)

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable, Iterator

    import numpy as np

    from servingbench.models.zoo import ModelSpec


class AdapterOptions(BaseModel):
    """Base of every adapter's typed options (``options: {<framework>: {...}}`` in a suite).

    Declare each knob as a field with its type, bounds (``Field(ge=, le=)``), a ``description`` and, in
    ``json_schema_extra={"framework_default": ...}``, the framework's *own* default where it differs from the
    field's default (the value servingbench uses).  Unknown keys and bad values are rejected when a suite is
    validated, with the framework, option, value and the allowed range in the message.

    A knob that ``servingbench tune`` should search also says so in ``json_schema_extra``: ``"tune": {"low": 1,
    "high": 256, "log": true}`` for a number (int fields give integers), ``"tune": {"choices": [...]}`` for a
    set of values, ``"tune": true`` for a bool or a Literal (every value).  Give the framework's own default too:
    the ``framework-default`` profile uses it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class NoOptions(AdapterOptions):
    """An adapter without framework-specific options."""


class Codec(ABC):
    """Pure request building and response decoding for one deployment's configuration.

    Built by :meth:`Adapter.codec`; must be a function of the deployment only (no I/O, no hidden state), because
    the verifier, the probes and the load generator (in another process) each build their own and must agree.
    """

    @abstractmethod
    def request(self, model: "ModelSpec", batch: "np.ndarray", secrets: Secrets | None = None) -> RequestSpec:
        """Encode one inference request for ``model`` carrying ``batch`` (first dimension = batch size).

        Include the auth header when ``secrets`` carries a token (see :meth:`auth_headers`).
        """

    @abstractmethod
    def decode(self, model: "ModelSpec", status: int, body: bytes) -> "np.ndarray":
        """Decode a response into a float32 array of shape ``(batch, *model.output.shape)``.

        Raise :class:`DecodeError` with a ``kind`` for anything that is not a valid answer: ``"status"`` (not 2xx),
        ``"malformed"`` (unparsable, missing field), ``"shape"``, ``"nan"``.  The helpers in
        :mod:`servingbench.contract.codecs` do all four checks.
        """

    def auth_headers(self, secrets: Secrets | None) -> dict[str, str]:
        """Headers that carry the token (default ``Authorization: Bearer``); override for the framework's name."""
        if secrets and secrets.token:
            return {"Authorization": f"Bearer {secrets.token}"}
        return {}

    # ---- optional parts, used by the feature probes; None where the framework has no such API ----------------
    def repository_request(self, action: str, model: str | None = None, secrets: Secrets | None = None
                           ) -> RequestSpec | None:
        """A request that loads (``action="load"``) or unloads (``"unload"``) model ``model`` at run time."""
        return None

    def cache_stats_request(self, model: str, secrets: Secrets | None = None) -> RequestSpec | None:
        """A request whose answer carries the server's own cache hit/miss counters for ``model``."""
        return None

    def parse_cache_stats(self, model: str, status: int, body: bytes) -> dict[str, int] | None:
        """``{"hits": n, "misses": m}`` from the answer to :meth:`cache_stats_request`."""
        return None


class Adapter(ABC):
    """Base class of every framework adapter.  Subclasses set the class attributes and implement the methods.

    Class attributes:
        name: registry name (lower case); the entry-point name must equal it.
        distribution: the PyPI distribution whose version is the framework's version.
        requires: further distributions the adapter needs at run time (checked by :meth:`check_available`).
        install_hint: what to install when a distribution is missing (default: ``pip install <distributions>``).
        capabilities: what the adapter claims (tested by the feature probes).  Claim only what the framework does
            natively; ``GPU`` means the framework's own knobs place the model on a GPU.
        Options: the typed options (an :class:`AdapterOptions` subclass).
        docs_claims: what the framework's documentation claims per capability (shown beside measured verdicts).
        open_paths: paths the auth probe expects to stay open without credentials (health, metrics, docs...).
        native_manifest: glob patterns (relative to the workdir) of the framework's *native* manifest files.
        baseline: True for a no-framework baseline (a plain web server written by hand), which reports mark as
            such; False for serving frameworks.
    """

    name: ClassVar[str]
    distribution: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str | None] = None
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    Options: ClassVar[type[AdapterOptions]] = NoOptions
    docs_claims: ClassVar[Mapping[str, str]] = {}
    open_paths: ClassVar[tuple[str, ...]] = ()
    native_manifest: ClassVar[tuple[str, ...]] = ()
    baseline: ClassVar[bool] = False
    #: The framework's *own* defaults of the deployment-level knobs (what a user gets without configuring
    #: anything), for ``servingbench tune``'s ``framework-default`` profile: ``workers`` (processes/replicas/
    #: instances per model), ``threads`` (torch threads per worker; ``"cpus"``: torch's own default, every CPU the
    #: server may use), ``max_batch_size`` (1: no batching) and ``batch_timeout_ms``.  Override the entries that
    #: differ; the tuning space itself is :func:`servingbench.tune.space_for` (workers, threads, batching when the
    #: adapter claims ``BATCHING``, and every option marked ``tune``).
    framework_defaults: ClassVar[Mapping[str, Any]] = {"workers": 1, "threads": "cpus", "max_batch_size": 1,
                                                       "batch_timeout_ms": 0.0}

    # ---- environment -------------------------------------------------------------------------------------------
    def framework_version(self) -> str | None:
        """Installed version of the framework, or ``None`` if it is not installed."""
        return _version(self.distribution)

    def check_available(self) -> None:
        """Raise :class:`AdapterUnavailable` with an install hint if the framework cannot run here."""
        missing = [d for d in (self.distribution, *self.requires) if _version(d) is None]
        if missing:
            hint = self.install_hint or f"pip install {' '.join(missing)}"
            raise AdapterUnavailable(
                f"{self.name}: the Python distribution(s) {missing} are not installed; {hint}")

    # ---- options -----------------------------------------------------------------------------------------------
    @classmethod
    def parse_options(cls, raw: Mapping[str, Any] | None) -> AdapterOptions:
        """Validate raw ``options`` into :attr:`Options`; raise :class:`OptionsError` naming option, value, range."""
        try:
            return cls.Options.model_validate(dict(raw or {}))
        except ValidationError as e:
            raise OptionsError(cls.name, cls.Options, e) from None

    def options_of(self, deployment: Deployment) -> Any:
        """The deployment's options, typed (an instance of :attr:`Options`)."""
        return self.parse_options(deployment.options)

    @classmethod
    def options_doc(cls) -> dict[str, str]:
        """Option name -> one-line description with the default (for ``servingbench frameworks``)."""
        out = {}
        for name, f in cls.Options.model_fields.items():
            fw = (f.json_schema_extra or {}).get("framework_default") if isinstance(f.json_schema_extra, dict) else None
            default = "" if f.is_required() else f" (default {f.default!r}" + (
                f"; framework's own: {fw!r})" if fw is not None else ")")
            out[name] = f"{f.description or ''}{default}"
        return out

    def validate(self, deployment: Deployment) -> None:
        """Raise :class:`UnsupportedDeployment` for settings this adapter cannot honour.  Called before prepare.

        The base class checks the options and refuses auth/TLS/cache/batching/GPU/gRPC when the capability is not
        declared; override to add framework-specific checks (call ``super().validate(deployment)`` first).
        """
        self.options_of(deployment)
        caps = set(self.capabilities)
        checks = [
            (deployment.auth, Capability.AUTH, "native authentication (auth: true)"),
            (deployment.tls, Capability.TLS, f"native TLS (tls: {deployment.tls})"),
            (deployment.max_batch_size > 1, Capability.BATCHING, "server-side batching (max_batch_size > 1)"),
            (deployment.device == "cuda", Capability.GPU, "GPU placement (device: cuda)"),
            (deployment.protocol == "grpc", Capability.GRPC, "gRPC endpoint (protocol: grpc)"),
        ]
        for wanted, cap, what in checks:
            if wanted and cap not in caps:
                raise UnsupportedDeployment(f"{self.name} has no {what}")
        if deployment.cache and not {Capability.RESPONSE_CACHE, Capability.MODEL_CACHE} & caps:
            raise UnsupportedDeployment(f"{self.name} has no native cache (cache: true)")

    # ---- deployment ----------------------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, deployment: Deployment, ctx: RunContext) -> None:
        """Write everything the framework needs into ``ctx.workdir`` in its native form (manifests, scripts).

        Server scripts run under ``ctx.python`` (possibly another virtualenv that has only the framework,
        servingbench, torch and numpy): copy them into the workdir rather than importing your own package there.
        """

    @abstractmethod
    def launch(self, deployment: Deployment, ctx: RunContext) -> list[LaunchSpec]:
        """Describe the server process(es) to start.  Most frameworks return one spec."""

    @abstractmethod
    def codec(self, deployment: Deployment) -> Codec:
        """The pure request/decode pair for this deployment's configuration (options, auth, protocol...)."""

    def scheme(self, deployment: Deployment) -> str:
        """``https`` when the deployment serves TLS on its HTTP endpoint, else ``http``."""
        return "https" if deployment.tls and deployment.protocol == "http" else "http"

    # ---- optional hooks used by the feature probes ---------------------------------------------------------------
    def manifest_command(self, deployment: Deployment, ctx: RunContext) -> list[str] | None:
        """The framework's own CLI that starts this deployment from its manifest alone (after ``prepare``).

        The manifest probe launches exactly this (with the same env/ready probe as ``launch``) and verifies it.
        ``None`` when the framework has no declarative manifest.
        """
        return None

    def metrics_request(self, deployment: Deployment) -> RequestSpec | None:
        """The request that scrapes the framework's own metrics endpoint (Prometheus text format), e.g.
        ``RequestSpec("GET", "/metrics", b"", {}, port="metrics")`` on a named port of the deployment.  The metrics
        probe scrapes it before, during and after a known number of requests and looks for a counter that moved by
        exactly that number, a latency histogram, queue time and batch sizes.  Return one when claiming
        ``Capability.METRICS``; ``None`` (the default) when the framework has no metrics endpoint: the probe then
        records what ``GET /metrics`` on the inference port answers, as the evidence for "no"."""
        return None

    def stream_request(self, deployment: Deployment, model: "ModelSpec", prompt: "np.ndarray", max_tokens: int,
                       secrets: Secrets) -> RequestSpec | None:
        """The request that makes the deployment decode ``max_tokens`` tokens of a generative zoo model (``gpt``:
        ``model.input`` is a window of token ids, ``model.output`` the next token's logits) greedily from
        ``prompt`` (one row of token ids) and stream each token as soon as it is decided, with the framework's own
        streaming (the decoding loop: :func:`servingbench.models.generate.iter_greedy` over the loaded runtime's
        ``predict``).  Include the auth header when ``secrets.token`` is set.  Return one when claiming
        ``Capability.STREAMING``; ``None`` (the default) when the framework cannot stream a response: the probe
        then records "no" with :attr:`docs_claims` ``["streaming"]`` as the evidence."""
        return None

    def stream_tokens(self, chunks: "Iterable[bytes]") -> "Iterator[int]":
        """Token ids from the streamed response body's chunks, as they arrive.  The default reads newline-delimited
        JSON records ``{"token": id}``; for server-sent events return
        ``servingbench.contract.streaming.sse_tokens(chunks, extract)`` with an ``extract`` for your payload."""
        from servingbench.contract.streaming import ndjson_tokens

        return ndjson_tokens(chunks)

    def overload_limits(self) -> dict[str, Any] | None:
        """Your typed options that bound the framework's queue or time requests out (e.g. MOSEC
        ``{"capacity": 32}``), or ``None`` when it has no such knob.  The overload probe runs the deployment as
        configured *and*, when this returns options, once more with them merged in: users see both the unlimited
        and the limited behaviour."""
        return None

    def grpc_infer(self, deployment: Deployment, ctx: RunContext, model: "ModelSpec", batch: "np.ndarray"
                   ) -> "np.ndarray":
        """One inference over the deployment's gRPC endpoint (the gRPC probe).  Override when claiming GRPC."""
        raise UnsupportedDeployment(f"{self.name}: no gRPC client (grpc_infer) in this adapter")


class OptionsError(UnsupportedDeployment):
    """Options that do not match an adapter's :attr:`Adapter.Options`; the message names each bad option."""

    def __init__(self, framework: str, options: type[AdapterOptions], error: ValidationError) -> None:
        self.problems = []
        for err in error.errors():
            opt = ".".join(str(p) for p in err["loc"]) or "(options)"
            if err["type"] == "extra_forbidden":
                import difflib

                valid = ", ".join(options.model_fields)
                close = difflib.get_close_matches(opt, list(options.model_fields), n=2)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                msg = f"unknown option {opt!r}.{hint} Valid options: {valid or 'none'}"
            else:
                field = options.model_fields.get(str(err["loc"][0])) if err["loc"] else None
                rng = _range_text(field) if field is not None else ""
                msg = f"option {opt!r} = {err.get('input')!r}: {err['msg']}" + (f" (allowed: {rng})" if rng else "")
            self.problems.append(msg)
        super().__init__(f"{framework}: " + "; ".join(self.problems))


def _range_text(field: Any) -> str:
    import typing

    args = [a for a in typing.get_args(field.annotation) if a is not type(None)]
    if typing.get_origin(field.annotation) is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    parts = []
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                parts.append(f"{sym} {getattr(m, attr)}")
    ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
    return " and ".join([ann, *parts]) if parts else ann


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None

