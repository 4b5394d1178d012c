"""Public pure helpers for request/decode, shared by the built-in adapters and open to outside ones.

* :func:`encode_inputs` / :func:`decode_outputs` / :func:`as_output`: ``{"inputs": [...]}`` JSON in, a list of
  outputs out, with every check a decoder needs (HTTP status, JSON, field, numeric, shape, finite).
* :class:`JsonCodec`: a complete :class:`~servingbench.contract.Codec` for frameworks that take that JSON on one
  path per model (LitServe, MOSEC, Ray Serve, MLflow use it with their own path, keys, port and auth header).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from servingbench.contract.adapter import Codec
from servingbench.contract.types import DecodeError, RequestSpec, Secrets


def encode_inputs(batch: np.ndarray, key: str = "inputs") -> bytes:
    """``{key: batch as nested lists}`` as compact JSON bytes.  A payload batch (``servingbench.models.preprocess``)
    is a list of strings: ``bytes_`` items (JPEG files) as base64, ``str_`` items (texts) as they are."""
    return json.dumps({key: payload_items(batch)}, separators=(",", ":")).encode()


def payload_items(batch: np.ndarray) -> list:
    """``batch`` as JSON-ready lists: base64 strings for ``bytes_`` items, strings for ``str_`` items, numbers
    otherwise."""
    batch = np.asarray(batch)
    if batch.dtype.kind == "S":
        return [base64.b64encode(bytes(b)).decode("ascii") for b in batch.reshape(-1)]
    if batch.dtype.kind == "U":
        return [str(t) for t in batch.reshape(-1)]
    return batch.tolist()


def check_status(status: int, body: bytes) -> None:
    """Raise ``DecodeError(kind="status")`` unless ``status`` is 2xx."""
    if not 200 <= status < 300:
        raise DecodeError(f"HTTP {status}: {body[:200]!r}", kind="status")


def decode_outputs(model, status: int, body: bytes, key: str | None = "outputs") -> np.ndarray:
    """Parse ``{key: nested list}`` (or a bare list when key is None) into float32 ``(batch, *output.shape)``."""
    check_status(status, body)
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeError(f"response is not JSON: {body[:80]!r}", kind="malformed") from e
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise DecodeError(f"response has no {key!r} field: {str(data)[:120]}", kind="malformed")
        data = data[key]
    return as_output(model, data)


def as_output(model, data: Any) -> np.ndarray:
    """``data`` as float32 ``(batch, *model.output.shape)``; DecodeError ``malformed``/``shape``/``nan`` otherwise."""
    try:
        arr = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise DecodeError(f"outputs are not numeric: {str(data)[:120]}", kind="malformed") from e
    if arr.ndim != 1 + len(model.output.shape) or tuple(arr.shape[1:]) != tuple(model.output.shape):
        raise DecodeError(
            f"output shape {arr.shape} does not match (batch, {', '.join(map(str, model.output.shape))})", kind="shape"
        )
    if not np.all(np.isfinite(arr)):
        raise DecodeError("outputs contain NaN or inf", kind="nan")
    return arr


@dataclass(frozen=True)
class JsonCodec(Codec):
    """``POST path`` with ``{input_key: [...]}`` JSON; the answer's ``output_key`` holds the outputs.

    Attributes:
        path: request path; ``{model}`` is replaced by the model's name.
        input_key / output_key: the JSON fields (``output_key=None``: the answer is a bare list).
        port: the named port (``ctx.ports``) that serves the model; ``{model}`` is replaced too.
        auth_header: header that carries the token (``None``: ``Authorization: Bearer <token>``).
        headers: extra fixed headers; ``model_header``: a header whose value is the model's name (Ray multiplexing).
    """

    path: str = "/predict/{model}"
    input_key: str = "inputs"
    output_key: str | None = "outputs"
    port: str = "http"
    auth_header: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    model_header: str | None = None

    def request(self, model, batch, secrets: Secrets | None = None) -> RequestSpec:
        headers = {"Content-Type": "application/json", **self.headers, **self.auth_headers(secrets)}
        if self.model_header:
            headers[self.model_header] = model.name
        return RequestSpec(method="POST", path=self.path.format(model=model.name), body=encode_inputs(batch,
                           self.input_key), headers=headers, port=self.port.format(model=model.name))

    def decode(self, model, status, body):
        return decode_outputs(model, status, body, key=self.output_key)

    def auth_headers(self, secrets: Secrets | None) -> dict[str, str]:
        if self.auth_header is None:
            return super().auth_headers(secrets)
        return {self.auth_header: secrets.token} if secrets and secrets.token else {}
