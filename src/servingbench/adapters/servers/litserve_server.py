"""LitServe server for servingbench zoo models.  Run: ``python litserve_server.py deployment.json``.

Written by servingbench next to ``deployment.json`` (LitServe has no declarative manifest: this pair is the
reproducible deployment).  One LitAPI per model at ``/predict/<model>``; auth comes from the environment variable
``LIT_SERVER_API_KEY`` that LitServe reads at import time.  A generative model (zoo ``gpt``) also gets a streaming
LitAPI (``stream=True``) at ``/generate/<model>``: ``{"inputs": [[token ids]], "max_tokens": n}`` in, one JSON line
``{"token": id}`` per greedy decoding step out, as each is decided.

An image or text payload model (``servingbench.models.preprocess``) is decoded in ``decode_request``: base64 JPEG
files or strings in, the model's input tensor out (the shared ``Preprocessor``).
"""

import json
import sys

import numpy as np
import litserve as ls


class ZooAPI(ls.LitAPI):
    def __init__(self, model: dict, cfg: dict) -> None:
        super().__init__(
            max_batch_size=cfg["max_batch_size"],
            batch_timeout=cfg["batch_timeout_ms"] / 1000.0,
            api_path=f"/predict/{model['name']}",
        )
        self.model_cfg = model
        self.cfg = cfg
        self._sizes: list[int] = []

    def setup(self, device):
        from servingbench.models.runtime import load_runtime

        self.rt = load_runtime(self.model_cfg["dir"], fmt=self.cfg["model_format"], device=device,
                               threads=self.cfg["threads"])
        self.dtype = np.dtype(self.model_cfg["input_dtype"])
        from servingbench.models.preprocess import load_preprocessor

        self.pre = load_preprocessor(self.model_cfg["dir"])  # None for a tensor payload

    def decode_request(self, request):
        if self.pre is not None:  # JPEG decode + resize + crop + normalise, or tokenise
            return self.pre(request["inputs"])
        return np.asarray(request["inputs"], dtype=self.dtype)

    # Requests carry their own batch dimension: concatenate, remember the sizes, split after predict.
    def batch(self, inputs):
        self._sizes = [len(x) for x in inputs]
        return np.concatenate(inputs)

    def predict(self, x):
        return self.rt.predict(x)

    def unbatch(self, output):
        return np.split(output, np.cumsum(self._sizes)[:-1])

    def encode_response(self, output):
        return {"outputs": output.tolist()}


class GenerateAPI(ls.LitAPI):
    """Greedy decoding of a next-token model, streamed: ``predict`` and ``encode_response`` are generators."""

    def __init__(self, model: dict, cfg: dict) -> None:
        super().__init__(stream=True, api_path=f"/generate/{model['name']}")
        self.model_cfg = model
        self.cfg = cfg

    def setup(self, device):
        from servingbench.models.runtime import load_runtime

        self.rt = load_runtime(self.model_cfg["dir"], fmt=self.cfg["model_format"], device=device,
                               threads=self.cfg["threads"])

    def decode_request(self, request):
        return np.asarray(request["inputs"], dtype=np.int64)[:1], int(request.get("max_tokens", 1))

    def predict(self, x):
        from servingbench.models.generate import iter_greedy

        prompt, n = x
        for tok in iter_greedy(self.rt.predict, prompt, n):
            yield int(tok[0])

    def encode_response(self, output):  # unannotated: LitServe takes a return annotation for a response model
        for tok in output:
            yield {"token": tok}  # a dict is one JSON line


def main(path: str) -> None:
    with open(path) as f:
        cfg = json.load(f)
    apis = [ZooAPI(m, cfg) for m in cfg["models"]]
    apis += [GenerateAPI(m, cfg) for m in cfg["models"] if m.get("generative")]
    server = ls.LitServer(
        apis if len(apis) > 1 else apis[0],
        accelerator=cfg["accelerator"],
        devices=cfg.get("devices", "auto"),
        workers_per_device=cfg["workers"],
        timeout=cfg.get("timeout_s", 60),
    )
    run_kwargs = {}
    for key in ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "ssl_cert_reqs"):
        if cfg.get(key) is not None:
            run_kwargs[key] = cfg[key]
    server.run(
        host=cfg["host"],
        port=cfg["port"],
        num_api_servers=cfg.get("num_api_servers"),
        log_level=cfg.get("log_level", "warning"),
        generate_client_file=False,
        **run_kwargs,
    )


if __name__ == "__main__":
    main(sys.argv[1])
