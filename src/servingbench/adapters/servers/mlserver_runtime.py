"""MLServer custom runtime for servingbench zoo models (copied next to ``settings.json`` as ``mlserver_runtime.py``).

``model-settings.json`` names it ``"implementation": "mlserver_runtime.ZooRuntime"``; ``mlserver start DIR`` puts DIR
on sys.path and its parallel inference workers (multiprocessing *spawn*) inherit that sys.path.  Parameters:
``parameters.uri`` = the artifact directory, ``parameters.extra`` = ``{"model_format", "threads", "device",
"input_name", "output_name", "input_dtype", "input_shape"}`` (the shape without the batch dimension).

``predict_stream`` (``POST /v2/models/<model>/infer_stream``, server-sent events) decodes a generative model (zoo
``gpt``) greedily, ``parameters.max_tokens`` tokens, one ``InferenceResponse`` with output ``token`` per step, each
step in a thread (MLServer streams only with ``parallel_workers: 0``: the model runs on the server's event loop).

An image or text payload model (``servingbench.models.preprocess``) takes a ``BYTES`` input of shape ``[batch, 1]``
(base64 JPEG files or strings); ``_inputs``, the runtime's decoding step, turns it into the model's input tensor
with the shared ``Preprocessor``.
"""

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class ZooRuntime(MLModel):
    async def load(self) -> bool:
        from servingbench.models.runtime import load_runtime

        params = self.settings.parameters
        extra = dict(params.extra or {})
        self._rt = load_runtime(params.uri, fmt=extra.get("model_format", "eager"),
                                device=extra.get("device", "cpu"), threads=int(extra.get("threads", 1)))
        self._input = extra.get("input_name", "input")
        self._output = extra.get("output_name", "output")
        self._dtype = np.dtype(extra.get("input_dtype", "float32"))
        self._shape = tuple(extra.get("input_shape", ()))
        from servingbench.models.preprocess import load_preprocessor

        self._pre = load_preprocessor(params.uri)  # None: a tensor payload
        return True

    def _inputs(self, payload: InferenceRequest) -> np.ndarray:
        inp = next((i for i in payload.inputs if i.name == self._input), None)
        if inp is None:
            raise MLServerError(f"{self.name}: no input named {self._input!r}", status_code=400)
        if self._pre is not None:
            from servingbench.models.preprocess import PayloadError

            if inp.datatype != "BYTES":
                raise MLServerError(f"{self.name}: input {self._input!r} must be BYTES, not {inp.datatype}",
                                    status_code=400)
            try:
                return self._pre(list(getattr(inp.data, "root", inp.data)))
            except (PayloadError, TypeError) as e:
                raise MLServerError(f"{self.name}: {e}", status_code=400) from e
        x = np.asarray(NumpyCodec.decode_input(inp), dtype=self._dtype)
        if x.ndim != 1 + len(self._shape) or tuple(x.shape[1:]) != self._shape:
            raise MLServerError(f"{self.name}: input shape {list(x.shape)} is not [batch, "
                                f"{', '.join(map(str, self._shape))}]", status_code=400)
        return x

    async def predict_stream(self, payloads):
        from servingbench.models.generate import iter_greedy

        payload = await payloads.__anext__()  # REST sends exactly one request
        n = int(getattr(payload.parameters, "max_tokens", None) or 1) if payload.parameters else 1
        steps = iter_greedy(self._rt.predict, self._inputs(payload)[:1], n)
        while (tok := await asyncio.to_thread(next, steps, None)) is not None:
            yield InferenceResponse(model_name=self.name, outputs=[
                ResponseOutput(name="token", shape=[1], datatype="INT64", data=[int(tok[0])])])

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self._inputs(payload)
        y = self._rt.predict(x)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output(self._output, y)])
