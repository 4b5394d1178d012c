"""Shared pure helpers for frameworks that take ``{"inputs": [...]}`` JSON and answer with a list of outputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from servingbench.adapters.base import DecodeError


def encode_inputs(batch: np.ndarray, key: str = "inputs") -> bytes:
    return json.dumps({key: batch.tolist()}, separators=(",", ":")).encode()


def decode_outputs(model, status: int, body: bytes, key: str | None = "outputs") -> np.ndarray:
    """Parse ``{key: nested list}`` (or a bare list when key is None) into float32 ``(batch, *output.shape)``."""
    if not 200 <= status < 300:
        raise DecodeError(f"HTTP {status}: {body[:200]!r}", kind="status")
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
