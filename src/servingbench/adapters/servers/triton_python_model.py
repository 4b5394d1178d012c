"""Triton Python-backend model for servingbench zoo models (copied to ``<repository>/<model>/1/model.py``).

Everything this file needs comes from ``config.pbtxt`` ``parameters``: ``artifact_dir``, ``model_format``,
``threads`` and ``sys_path`` (prepended to sys.path: the Python-backend stub ignores PYTHONPATH and takes its
environment from the first ``python3`` on PATH).

Tensors cross the backend boundary through DLPack, never numpy: with numpy 2.x the ``as_numpy()`` /
``Tensor(name, ndarray)`` path fails every request ("output tensor shape does not match size of output").
With dynamic batching ``execute`` receives several requests: they are concatenated, run once and split.
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

    def execute(self, requests):
        torch, dlpack = self.torch, self.dlpack
        try:
            xs = [dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name).to_dlpack())
                  for r in requests]
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
