"""The one feature catalog: what an adapter can claim, which probe tests each claim, in which order reports list them.

The scenario schema (``features:``), the probes and the report all read this module; nothing else lists features.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Capability(str, Enum):
    """Features an adapter can claim (:attr:`servingbench.contract.Adapter.capabilities`).  Each claim is tested by
    a feature probe; the value is the feature's name in results and reports."""

    MULTI_MODEL = "multi_model"  #: several models served by one server process tree
    LOAD_UNLOAD = "load_unload"  #: models loaded and unloaded at run time through an API
    RESPONSE_CACHE = "response_cache"  #: identical requests answered from a cache
    MODEL_CACHE = "model_cache"  #: models kept in an LRU cache and (re)loaded on demand
    BATCHING = "batching"  #: server-side dynamic/adaptive batching
    MANIFEST = "manifest"  #: a native declarative deployment manifest the framework's own CLI starts from
    AUTH = "auth"  #: native request authentication
    TLS = "tls"  #: native TLS on the inference endpoint
    GRPC = "grpc"  #: a gRPC inference endpoint
    GPU = "gpu"  #: CUDA placement of models (the framework places the model on a GPU through its own knobs)
    #: the readiness endpoint says ready only when inference answers correctly.  Every adapter claims it: the
    #: contract's ``LaunchSpec.ready`` is that claim (the readiness probe tests it from spawn).
    READINESS = "readiness"
    #: a metrics endpoint (Prometheus text) whose request counter matches what was sent; the adapter names it with
    #: :meth:`servingbench.contract.Adapter.metrics_request`
    METRICS = "metrics"
    #: stopped with its graceful signal under load, the server finishes the requests in flight and exits by itself.
    #: Every adapter claims it: ``LaunchSpec.stop_signal`` is the framework's documented graceful stop.
    GRACEFUL_DRAIN = "graceful_drain"
    #: at twice its capacity the server sheds the excess (HTTP 429/503 from a bounded queue) and recovers once the
    #: load drops, instead of queueing without bound
    OVERLOAD = "overload"
    #: a generative model's tokens are streamed as they are decoded (the first token arrives long before the last);
    #: the adapter names the request with :meth:`servingbench.contract.Adapter.stream_request`
    STREAMING = "streaming"


@dataclass(frozen=True)
class Feature:
    """One row of the feature matrix: the capability, the probe that decides it, a title for reports."""

    capability: Capability
    probe: str
    title: str

    @property
    def name(self) -> str:
        return self.capability.value


#: The catalog, in report order.  A probe may decide several features (``multi_model`` also decides load/unload).
CATALOG: tuple[Feature, ...] = (
    Feature(Capability.MULTI_MODEL, "multi_model", "Multi-model serving"),
    Feature(Capability.LOAD_UNLOAD, "multi_model", "Load/unload at run time"),
    Feature(Capability.RESPONSE_CACHE, "caching", "Response cache"),
    Feature(Capability.MODEL_CACHE, "caching", "Model cache (LRU)"),
    Feature(Capability.BATCHING, "batching", "Dynamic batching"),
    Feature(Capability.MANIFEST, "manifest", "Native manifest"),
    Feature(Capability.AUTH, "auth", "Authentication"),
    Feature(Capability.TLS, "tls", "TLS"),
    Feature(Capability.GRPC, "grpc", "gRPC endpoint"),
    Feature(Capability.GPU, "gpu", "GPU placement"),
    Feature(Capability.READINESS, "readiness", "Ready means ready"),
    Feature(Capability.METRICS, "metrics", "Metrics endpoint"),
    Feature(Capability.GRACEFUL_DRAIN, "drain", "Graceful drain"),
    Feature(Capability.OVERLOAD, "overload", "Sheds overload"),
    Feature(Capability.STREAMING, "streaming", "Token streaming"),
)

#: Claimed by every adapter through the contract itself (see :attr:`Capability.READINESS`).
CONTRACT_CLAIMS = frozenset({Capability.READINESS, Capability.GRACEFUL_DRAIN})

#: Feature names in report order.
FEATURES: tuple[str, ...] = tuple(f.name for f in CATALOG)

#: Probe name -> the features it decides (in catalog order); the keys are the valid ``features:`` of a suite.
PROBES: dict[str, tuple[str, ...]] = {}
for _f in CATALOG:
    PROBES.setdefault(_f.probe, ())
    PROBES[_f.probe] += (_f.name,)
del _f
