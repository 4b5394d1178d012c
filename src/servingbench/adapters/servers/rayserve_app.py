"""Ray Serve application for servingbench zoo models (the ``import_path`` of ``serve_config.yaml``).

``build(args)`` is a Ray Serve application builder: ``args`` (from the config file) name the models, artifact
directories, format, device and threads, plus the deployment's scale settings; the config's ``deployments:`` section
repeats those settings as overrides, so ``serve run serve_config.yaml`` and an imperative ``serve.run(build(args))``
give the same deployment.  Batching settings travel in ``user_config`` and are applied in ``reconfigure`` (Ray's
idiom: they can change without restarting replicas).

Two layouts:
* one application per model (``route_prefix: /predict/<model>``), one ``ZooModel`` deployment each;
* ``multiplex: true``: one application at ``/predict`` whose replicas load models on demand through
  ``@serve.multiplexed`` (an LRU of ``max_models_per_replica``), chosen by the ``serve_multiplexed_model_id`` header.

A generative model (zoo ``gpt``) streams at ``<route>/generate``: ``{"inputs": [[token ids]], "max_tokens": n}``
in, a Starlette ``StreamingResponse`` of JSON lines ``{"token": id}`` out, one per greedy decoding step.

An image or text payload model (``servingbench.models.preprocess``) is decoded in the deployment's ``__call__``
before the (optionally batched) model call: base64 JPEG files or strings in, the shared ``Preprocessor``.
"""

from __future__ import annotations

import os

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

#: The address each replica's inter-deployment gRPC server binds instead of every interface (set by the adapter
#: for its private loopback head: 127.0.0.1, the node's only address).
REPLICA_GRPC_HOST_ENV = "SERVINGBENCH_RAY_REPLICA_GRPC_HOST"


def bind_replica_grpc(host: str | None = None) -> bool:
    """Make the replica's inter-deployment gRPC server listen on ``host`` instead of ``[::]``.

    Ray Serve 2.55 has no option for it: ``ReplicaActor._on_initialized`` (ray/serve/_private/replica.py) calls
    ``self._server.add_insecure_port("[::]:0")`` -- no environment variable, not ``grpc_options`` (those configure
    the proxy's gRPC ingress), not the node IP.  This module is imported in the replica's process before that call
    (the replica deserialises ``ZooModel`` from it), so ``grpc.aio``'s ``Server.add_insecure_port`` is wrapped
    there to rewrite exactly that address; handles and proxies reach a replica at its node IP, which is 127.0.0.1
    on our private head.  Returns whether the wrapper is in place.
    """
    host = host if host is not None else os.environ.get(REPLICA_GRPC_HOST_ENV)
    if not host:
        return False
    from grpc.aio import _server

    cls = _server.Server
    if getattr(cls.add_insecure_port, "_servingbench_host", None) == host:
        return True
    original = getattr(cls.add_insecure_port, "__wrapped__", cls.add_insecure_port)
    bind = f"[{host}]" if ":" in host else host

    def add_insecure_port(self, address: str) -> int:
        if address in ("[::]:0", "0.0.0.0:0"):
            address = f"{bind}:0"
        return original(self, address)

    add_insecure_port.__wrapped__ = original  # type: ignore[attr-defined]
    add_insecure_port._servingbench_host = host  # type: ignore[attr-defined]
    cls.add_insecure_port = add_insecure_port
    return True


bind_replica_grpc()


class BadInput(ValueError):
    pass


def _to_array(body: dict, m: dict, pre=None) -> np.ndarray:
    if pre is not None:  # an image or text payload
        from servingbench.models.preprocess import PayloadError

        try:
            return pre(body["inputs"])
        except (PayloadError, KeyError, TypeError) as e:
            raise BadInput(f"bad inputs: {e}") from e
    try:
        x = np.asarray(body["inputs"], dtype=np.dtype(m["input"]["dtype"]))
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"bad inputs: {e}") from e
    shape = tuple(m["input"]["shape"])
    if x.ndim != 1 + len(shape) or x.shape[1:] != shape:
        raise BadInput(f"inputs shape {x.shape} is not (batch, {', '.join(map(str, shape))})")
    return x


@serve.deployment
class ZooModel:
    def __init__(self, models: list[dict], settings: dict) -> None:
        from servingbench.models.runtime import load_runtime

        bind_replica_grpc()  # before Ray starts the replica's gRPC server (after this constructor returns)

        from servingbench.models.preprocess import load_preprocessor

        self.models = {m["name"]: m for m in models}
        self.pre = {m["name"]: load_preprocessor(m["dir"]) for m in models}  # None: a tensor payload
        self.settings = settings
        self._load = lambda m: load_runtime(m["dir"], fmt=settings["model_format"], device=settings["device"],
                                            threads=settings["threads"])
        self.batching = False
        if settings["multiplex"]:
            async def load(model_id: str):  # a plain function: the multiplex wrapper caches itself on it
                if model_id not in self.models:
                    raise KeyError(f"unknown model {model_id!r}")
                return self._load(self.models[model_id])

            self.get_model = serve.multiplexed(max_num_models_per_replica=settings["max_models_per_replica"])(load)
        else:
            (self.only,) = models
            self.rt = self._load(self.only)

    def reconfigure(self, user_config: dict) -> None:
        self.batching = user_config.get("max_batch_size", 1) > 1
        self.predict_batched.set_max_batch_size(user_config.get("max_batch_size", 1))
        self.predict_batched.set_batch_wait_timeout_s(user_config.get("batch_wait_timeout_s", 0.0))

    async def runtime(self):
        if self.settings["multiplex"]:
            model_id = serve.get_multiplexed_model_id()
            if model_id not in self.models:
                raise BadInput(f"unknown model {model_id!r} (header serve_multiplexed_model_id)")
            return self.models[model_id], await self.get_model(model_id)
        return self.only, self.rt

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict_batched(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        _, rt = await self.runtime()  # a batch never mixes multiplexed model ids
        ys = rt.predict(np.concatenate(xs))
        return np.split(ys, np.cumsum([len(x) for x in xs])[:-1])

    async def __call__(self, request: Request):
        try:
            m, rt = await self.runtime()
            body = await request.json()
            x = _to_array(body, m, self.pre[m["name"]])
        except (BadInput, ValueError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        if request.url.path.rstrip("/").endswith("/generate"):
            return StreamingResponse(_tokens(rt, x[:1], int(body.get("max_tokens", 1))),
                                     media_type="application/x-ndjson")
        y = await self.predict_batched(x) if self.batching else rt.predict(x)
        return {"outputs": y.tolist()}


def _tokens(rt, prompt: np.ndarray, n: int):
    """Greedy decoding as JSON lines (a sync generator: Starlette runs it in its thread pool)."""
    import json

    from servingbench.models.generate import iter_greedy

    for tok in iter_greedy(rt.predict, prompt, n):
        yield json.dumps({"token": int(tok[0])}) + "\n"


def build(args: dict):
    """Application builder: ``args`` = {"models": [...], "settings": {...}, "options": {...}}."""
    return ZooModel.options(**args.get("options", {})).bind(args["models"], args["settings"])
