"""MOSEC server for servingbench zoo models.

Run: ``python mosec_server.py deployment.json --address 127.0.0.1 --port 8000 --path IPC_DIR``
(mosec reads ``--address/--port/--path/--timeout`` itself; ``command.txt`` beside this file has the exact line).

One route per model at ``/predict/<model>``.  ``"pipeline": true`` splits each route into two stages, each its own
process pool: ``Decode`` (request -> validated array, never batched) and ``Infer`` (the model, dynamically batched).
MOSEC spawns its workers and pickles the worker *class*, so the per-model settings reach them through the
per-worker environment (``append_worker(env=...)``), not through constructor arguments.

A generative model (zoo ``gpt``) also gets ``/generate/<model>``: an ``SSEWorker`` that decodes greedily and sends
one server-sent event ``{"token": id}`` per step (``send_stream_event``) as soon as it is decided.

An image or text payload model (``servingbench.models.preprocess``) is decoded in ``to_array``, the deserialising
step (its own ``Decode`` stage process with ``"pipeline": true``): JPEG files (base64 in JSON, raw bytes in msgpack)
or strings in, the model's input tensor out (the shared ``Preprocessor``).
"""

import json
import os
import sys

import numpy as np
from mosec import Server, SSEWorker, Worker
from mosec.errors import ValidationError
from mosec.mixin import MsgpackMixin


class _Stage(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.m = json.loads(os.environ["SB_MODEL"])
        self.dtype = np.dtype(self.m["input"]["dtype"])
        self.shape = tuple(self.m["input"]["shape"])
        from servingbench.models.preprocess import load_preprocessor

        self.pre = load_preprocessor(self.m["dir"])  # None for a tensor payload

    def to_array(self, req) -> np.ndarray:
        if self.pre is not None:
            from servingbench.models.preprocess import PayloadError

            try:
                return self.pre(req["inputs"])
            except (PayloadError, KeyError, TypeError) as e:
                raise ValidationError(f"bad inputs: {e}") from e
        try:
            if self.m["serialization"] == "msgpack":
                x = np.frombuffer(req["inputs"], dtype=np.dtype(req["dtype"])).reshape(req["shape"])
                x = x.astype(self.dtype, copy=False)
            else:
                x = np.asarray(req["inputs"], dtype=self.dtype)
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"bad inputs: {e}") from e
        if x.ndim != 1 + len(self.shape) or x.shape[1:] != self.shape:
            raise ValidationError(f"inputs shape {x.shape} is not (batch, {', '.join(map(str, self.shape))})")
        return x


class Decode(_Stage):
    """Pipeline stage 1: JSON/msgpack request -> validated array (per request, so a bad one fails alone)."""

    def forward(self, data):
        return self.to_array(data)


class Infer(_Stage):
    """The model.  Batched: ``data`` is a list of requests, each with its own batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        from servingbench.models.runtime import load_runtime

        self.rt = load_runtime(self.m["dir"], fmt=self.m["model_format"], device=self.m["device"],
                               threads=self.m["threads"])
        self.pipelined = self.m["pipeline"]

    def encode(self, y: np.ndarray):
        if self.m["serialization"] == "msgpack":
            y = np.ascontiguousarray(y, dtype=np.float32)
            return {"outputs": y.tobytes(), "shape": list(y.shape)}
        return {"outputs": y.tolist()}

    def forward(self, data):
        if self.max_batch_size == 1:
            return self.encode(self.rt.predict(data if self.pipelined else self.to_array(data)))
        # MOSEC answers a whole batch with one status: in the single-stage form a bad request fails its batch.
        xs = data if self.pipelined else [self.to_array(d) for d in data]
        ys = self.rt.predict(np.concatenate(xs))
        return [self.encode(y) for y in np.split(ys, np.cumsum([len(x) for x in xs])[:-1])]


class Generate(SSEWorker):
    """Greedy decoding of a next-token model, one server-sent event per token (JSON request, never batched)."""

    def __init__(self) -> None:
        super().__init__()
        from servingbench.models.runtime import load_runtime

        self.m = json.loads(os.environ["SB_MODEL"])
        self.rt = load_runtime(self.m["dir"], fmt=self.m["model_format"], device=self.m["device"],
                               threads=self.m["threads"])

    def forward(self, data):
        from servingbench.models.generate import iter_greedy

        try:
            prompt, n = np.asarray(data["inputs"], dtype=np.int64)[:1], int(data.get("max_tokens", 1))
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"bad inputs: {e}") from e
        for tok in iter_greedy(self.rt.predict, prompt, n):
            self.send_stream_event(json.dumps({"token": int(tok[0])}))
        return {"tokens": n}  # not sent (the events were the answer), but serialized


class MsgpackDecode(MsgpackMixin, Decode):
    pass


class MsgpackInfer(MsgpackMixin, Infer):
    pass


def main(path: str) -> None:
    with open(path) as f:
        cfg = json.load(f)
    msgpack = cfg["serialization"] == "msgpack"
    decode, infer = (MsgpackDecode, MsgpackInfer) if msgpack else (Decode, Infer)
    server = Server()
    for m in cfg["models"]:
        route = f"/predict/{m['name']}"
        env = {"SB_MODEL": json.dumps({**m, **{k: cfg[k] for k in (
            "model_format", "device", "threads", "pipeline", "serialization")}})}
        if cfg["pipeline"]:
            server.append_worker(decode, num=cfg["decode_workers"], env=[env] * cfg["decode_workers"], route=route)
        server.append_worker(
            infer, num=cfg["workers"], env=[env] * cfg["workers"], route=route,
            max_batch_size=cfg["max_batch_size"], max_wait_time=cfg["max_wait_time_ms"],
        )
        if m.get("generative"):
            server.append_worker(Generate, num=1, env=[env], route=f"/generate/{m['name']}")
    server.run()


if __name__ == "__main__":
    main(sys.argv[1])
