"""Triton Python-backend model for servingbench zoo models (copied to ``<repository>/<model>/1/model.py``).

Everything this file needs comes from ``config.pbtxt`` ``parameters``: ``artifact_dir``, ``model_format``,
``threads`` and ``sys_path`` (prepended to sys.path: the Python-backend stub ignores PYTHONPATH and takes its
environment from the first ``python3`` on PATH).

Tensors cross the backend boundary through DLPack, never numpy: with numpy 2.x the ``as_numpy()`` /
``Tensor(name, ndarray)`` path fails every request ("output tensor shape does not match size of output").
With dynamic batching ``execute`` receives several requests: they are concatenated, run once and split.

With the parameter ``stream: "true"`` (a generative model's ``<model>_stream`` twin, ``model_transaction_policy {
decoupled: true }``) each request is decoded greedily from the ``prompt`` request parameter (space-separated token
ids), ``max_tokens`` tokens, and every token is sent as its own response through the request's response sender,
then the final flag.

An image or text payload model (``servingbench.models.preprocess``; parameter ``payload`` not ``tensor``) takes a
``TYPE_UINT8`` input of dims ``[-1]``: each row is one JPEG file or UTF-8 text padded with NUL bytes (this stub
cannot read ``TYPE_STRING`` inputs with numpy 2.x); the rows become the model's input tensor through the shared
``Preprocessor`` before the requests are concatenated.
"""

import json
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        for p in reversed([p for p in params.get("sys_path", "").split(":") if p]):
            if p not in sys.path:
                sys.path.insert(0, p)
        import torch
        from torch.utils import dlpack

        from servingbench.models.runtime import load_runtime

        self.torch, self.dlpack = torch, dlpack
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.rt = load_runtime(params["artifact_dir"], fmt=params.get("model_format", "eager"), device=device,
                               threads=int(params.get("threads", "1")))
        self.device = device
        self.input_name = cfg["input"][0]["name"]
        self.output_name = cfg["output"][0]["name"]
        self.stream = params.get("stream") == "true"
        from servingbench.models.preprocess import load_preprocessor

        self.pre = load_preprocessor(params["artifact_dir"])  # None: a tensor payload

    def execute(self, requests):
        if self.stream:
            for r in requests:
                self._stream(r)
            return None  # decoupled: the answers went through the response senders
        torch, dlpack = self.torch, self.dlpack
        try:
            xs = [self._input(r) for r in requests]
            sizes = [int(x.shape[0]) for x in xs]
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            with torch.inference_mode():
                y = self.rt.predict_tensor(x.to(self.device))
            parts = torch.split(y.detach().to("cpu").contiguous(), sizes)
            return [
                pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor.from_dlpack(self.output_name, dlpack.to_dlpack(p.contiguous()))
                ])
                for p in parts
            ]
        except Exception as e:  # noqa: BLE001 - report per request instead of killing the stub
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
                    for _ in requests]

    def _input(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        x = self.dlpack.from_dlpack(tensor.to_dlpack())
        if self.pre is not None:  # uint8 rows: each item's bytes, NUL-padded
            rows = x.to("cpu").numpy()
            return self.torch.from_numpy(self.pre([r.tobytes().rstrip(b"\0") for r in rows]))
        return x

    def _stream(self, request):
        from servingbench.models.generate import iter_greedy

        torch, dlpack = self.torch, self.dlpack
        sender = request.get_response_sender()
        try:
            import numpy as np

            # The prompt is a request parameter (Triton 2.45's generate endpoint reads one element of a numeric
            # array); the input holds its length, a check that both arrived.
            params = json.loads(request.parameters() or "{}")
            length = dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name).to_dlpack())
            ids = np.array([[int(t) for t in str(params.get("prompt", "")).split()]], dtype=np.int64)
            if ids.shape[1] != int(length.reshape(-1)[0]):
                raise ValueError(f"prompt has {ids.shape[1]} token ids, the request said {int(length.reshape(-1)[0])}")
            n = int(params.get("max_tokens", 1))
            for tok in iter_greedy(self.rt.predict, ids, n):
                out = torch.tensor([int(tok[0])], dtype=torch.int64)
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor.from_dlpack(self.output_name, dlpack.to_dlpack(out))]))
        except Exception as e:  # noqa: BLE001 - the stream ends with the error as its last event
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
