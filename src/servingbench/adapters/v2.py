"""KServe V2 / Open Inference Protocol codec shared by the Triton and MLServer adapters.  Pure functions, no I/O.

Request (JSON form)::

    POST /v2/models/<name>/infer
    {"inputs": [{"name": "input", "shape": [8, 64], "datatype": "FP32", "data": [...flat, row-major...]}],
     "outputs": [{"name": "output", "parameters": {"binary_data": false}}]}

Response: ``{"model_name": ..., "outputs": [{"name": "output", "shape": [8, 10], "datatype": "FP32", "data": [...]}]}``.

Triton's *binary tensor extension* (``binary=True``) sends the JSON header followed by the raw little-endian tensor
bytes; the header length travels in the ``Inference-Header-Content-Length`` HTTP header and each binary tensor
declares ``parameters.binary_data_size``.  A binary *response* carries the same header, but
:meth:`Adapter.decode` only sees the body, so :func:`decode_response` also finds the end of the JSON header by
parsing it (the JSON header is ASCII; the raw bytes follow it directly).

JSON numbers round-trip float32 exactly: ``float32 -> Python float`` is exact and ``repr`` of a double is the
shortest string that parses back to the same double, hence to the same float32.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from servingbench.contract import Codec, DecodeError, RequestSpec, Secrets

HEADER_LENGTH = "Inference-Header-Content-Length"

#: numpy dtype name -> V2 datatype
DATATYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64",
}
NUMPY_DTYPES: dict[str, np.dtype] = {v: np.dtype(k) for k, v in DATATYPES.items()}


def dtype_of(tensor_spec: Any, default: str = "float32") -> np.dtype:
    """numpy dtype of a zoo tensor spec (``.dtype`` as a string, numpy or torch dtype)."""
    dt = getattr(tensor_spec, "dtype", None)
    if dt is None:
        return np.dtype(default)
    return np.dtype(str(dt).replace("torch.", ""))


def datatype(dtype: Any) -> str:
    """V2 datatype name (``"FP32"``) of a numpy dtype."""
    name = np.dtype(dtype).name
    if name not in DATATYPES:
        raise ValueError(f"dtype {name} has no V2 datatype; supported: {sorted(DATATYPES)}")
    return DATATYPES[name]


# ---- requests ----------------------------------------------------------------------------------------------------
def infer_request(
    model_spec: Any,
    batch: np.ndarray,
    input_name: str = "input",
    output_name: str = "output",
    binary: bool = False,
    binary_output: bool = False,
    payload_datatype: str = "BYTES",
) -> tuple[bytes, dict[str, str]]:
    """Encode one V2 inference request carrying ``batch`` (first dimension = batch size).

    Args:
        model_spec: the zoo model; ``model_spec.input.dtype`` fixes the wire datatype (the batch is cast to it).
        batch: the input array, sent as is (no shape check: servers must reject bad shapes themselves).
        input_name / output_name: tensor names in the server's model configuration.
        binary: send the input with Triton's binary tensor extension instead of a JSON list.
        binary_output: ask for the output as raw bytes (Triton only); the default asks for JSON.
        payload_datatype: how an image or text payload batch (``bytes_`` / ``str_`` items) travels: ``BYTES`` (one
            element per sample) or ``UINT8`` (``[batch, longest]``, each item's bytes padded with NULs: for
            servers that cannot read BYTES, see :func:`padded_items`).

    Returns:
        ``(body, headers)``; headers hold ``Content-Type``, ``Accept-Encoding: identity`` and, with ``binary``,
        ``Inference-Header-Content-Length``.
    """
    dtype = dtype_of(getattr(model_spec, "input", None))
    payload = np.asarray(batch).dtype.kind in "SU"  # an image or text payload
    if payload:
        if payload_datatype != "UINT8":
            return _bytes_request(np.asarray(batch), input_name, output_name, binary, binary_output)
        batch, dtype = padded_items(np.asarray(batch)), np.dtype(np.uint8)  # then sent as any uint8 tensor
    arr = np.ascontiguousarray(np.asarray(batch, dtype=dtype))
    tensor: dict[str, Any] = {"name": input_name, "shape": list(arr.shape), "datatype": datatype(arr.dtype)}
    raw = b""
    if binary:
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = arr.ravel().tolist()
    out: dict[str, Any] = {"name": output_name}
    if binary or binary_output:  # only Triton knows this parameter; plain V2 servers get a plain request
        out["parameters"] = {"binary_data": bool(binary_output)}
    header = json.dumps({"inputs": [tensor], "outputs": [out]}, separators=(",", ":")).encode()
    if binary and payload:
        header = _fixed_width(header)
    # Like tritonclient by default, ask for an uncompressed answer (Triton gzips whenever the client accepts it).
    if not binary:
        return header, {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    return header + raw, {"Content-Type": "application/octet-stream", "Accept-Encoding": "identity",
                          HEADER_LENGTH: str(len(header))}


HEADER_WIDTH = 512


def _fixed_width(header: bytes) -> bytes:
    """A binary payload request's JSON header padded with spaces to a multiple of :data:`HEADER_WIDTH` bytes: its
    sizes (item lengths, ``binary_data_size``) differ from body to body, and a request pool sends all its bodies
    with one set of headers, so ``Inference-Header-Content-Length`` must not change with them."""
    return header + b" " * (-len(header) % HEADER_WIDTH)


def padded_items(batch: np.ndarray) -> np.ndarray:
    """An image or text payload batch as ``uint8[batch, longest]``: each JPEG file (or UTF-8 text) padded with NUL
    bytes; the server strips trailing NULs (a JPEG ends with its EOI marker, a text has no trailing NUL)."""
    items = [bytes(b) for b in batch.reshape(-1)] if batch.dtype.kind == "S" else \
        [str(t).encode() for t in batch.reshape(-1)]
    out = np.zeros((len(items), max(len(b) for b in items)), dtype=np.uint8)
    for i, b in enumerate(items):
        out[i, :len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out


def _bytes_request(batch: np.ndarray, input_name: str, output_name: str, binary: bool,
                   binary_output: bool) -> tuple[bytes, dict[str, str]]:
    """A ``BYTES`` tensor of shape ``[batch, 1]`` (Triton's ``dims: [1]`` for a batched model): in JSON, base64 strings for JPEG files (``bytes_``) and the texts
    (``str_``); with the binary extension, each element's raw bytes (JPEG as is, text as UTF-8) behind its 4-byte
    little-endian length, as tritonclient serialises BYTES."""
    items = [bytes(b) for b in batch.reshape(-1)] if batch.dtype.kind == "S" else \
        [str(t).encode() for t in batch.reshape(-1)]
    tensor: dict[str, Any] = {"name": input_name, "shape": [len(items), 1], "datatype": "BYTES"}
    out: dict[str, Any] = {"name": output_name}
    if binary or binary_output:
        out["parameters"] = {"binary_data": bool(binary_output)}
    if not binary:
        from servingbench.contract.codecs import payload_items

        tensor["data"] = payload_items(batch)
        body = json.dumps({"inputs": [tensor], "outputs": [out]}, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = _fixed_width(json.dumps({"inputs": [tensor], "outputs": [out]}, separators=(",", ":")).encode())
    return header + raw, {"Content-Type": "application/octet-stream", "Accept-Encoding": "identity",
                          HEADER_LENGTH: str(len(header))}


def repository_path(action: str, model: str | None = None) -> str:
    """Path of a V2 model-repository call: ``index``, ``load`` or ``unload`` (all POST)."""
    if action == "index":
        return "/v2/repository/index"
    if action not in ("load", "unload") or not model:
        raise ValueError(f"repository action must be index, load or unload (with a model), got {action!r} {model!r}")
    return f"/v2/repository/models/{model}/{action}"


# ---- responses ---------------------------------------------------------------------------------------------------
def _header_length(headers: Mapping[str, str] | None) -> int | None:
    for k, v in (headers or {}).items():
        if k.lower() == HEADER_LENGTH.lower():
            try:
                return int(v)
            except ValueError as e:
                raise DecodeError(f"bad {HEADER_LENGTH} header {v!r}", kind="malformed") from e
    return None


def _split(body: bytes, headers: Mapping[str, str] | None) -> tuple[Any, bytes]:
    """(parsed JSON header, raw bytes after it)."""
    n = _header_length(headers)
    try:
        if n is not None:
            if not 0 < n <= len(body):
                raise DecodeError(f"{HEADER_LENGTH} {n} does not fit a {len(body)}-byte body", kind="malformed")
            return json.loads(body[:n]), body[n:]
        try:
            return json.loads(body), b""
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError on raw bytes
            # A binary response without its header: the JSON header ends where the parser stops.
            text = body.decode("latin-1")  # one char per byte, so offsets are byte offsets
            data, end = json.JSONDecoder().raw_decode(text)
            return data, body[end:]
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeError(f"response is not V2 JSON: {body[:80]!r}", kind="malformed") from e


def decode_response(
    model_spec: Any,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    output_name: str | None = None,
) -> np.ndarray:
    """Decode a V2 inference response into float32 ``(batch, *model_spec.output.shape)``.

    Accepts the JSON form and Triton's binary form.  ``output_name`` picks the output (default: the first).

    Raises:
        DecodeError: kind ``"status"`` for a non-2xx answer, ``"malformed"`` for a body that is not a V2 response
            (no outputs, bad datatype, data size not matching the shape), ``"shape"`` when the output is not
            ``(batch, *output.shape)``, ``"nan"`` for NaN or infinite values.
    """
    if not 200 <= status < 300:
        raise DecodeError(f"HTTP {status}: {body[:200]!r}", kind="status")
    data, raw = _split(body, headers)
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
        raise DecodeError(f"response has no outputs: {str(data)[:160]}", kind="malformed")
    chosen = outputs[0] if output_name is None else next((o for o in outputs if o.get("name") == output_name), None)
    if chosen is None:
        raise DecodeError(f"response has no output {output_name!r}: {[o.get('name') for o in outputs]}", "malformed")
    arr = _tensor(chosen, outputs, raw)
    expected = tuple(model_spec.output.shape)
    if arr.ndim != 1 + len(expected) or tuple(arr.shape[1:]) != expected:
        raise DecodeError(f"output shape {arr.shape} does not match (batch, {', '.join(map(str, expected))})",
                          kind="shape")
    if not np.all(np.isfinite(arr)):
        raise DecodeError("outputs contain NaN or inf", kind="nan")
    return arr


def _tensor(out: dict, outputs: list[dict], raw: bytes) -> np.ndarray:
    try:
        shape = tuple(int(d) for d in out["shape"])
        dt = NUMPY_DTYPES[out["datatype"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DecodeError(f"output without a valid shape/datatype: {str(out)[:160]}", kind="malformed") from e
    size = (out.get("parameters") or {}).get("binary_data_size")
    try:
        if size is not None:
            offset = 0  # binary outputs follow the header in the order they are listed
            for o in outputs:
                if o is out:
                    break
                offset += int((o.get("parameters") or {}).get("binary_data_size") or 0)
            if offset + int(size) > len(raw):
                raise DecodeError(f"binary output needs {offset + int(size)} bytes, body has {len(raw)}", "malformed")
            flat = np.frombuffer(raw, dtype=dt.newbyteorder("<"), count=int(size) // dt.itemsize, offset=offset)
        else:
            if "data" not in out:
                raise DecodeError(f"output has no data: {str(out)[:160]}", kind="malformed")
            flat = np.asarray(out["data"], dtype=dt)
        arr = flat.reshape(shape)  # V2 allows flat or nested data
    except DecodeError:
        raise
    except (ValueError, TypeError) as e:
        raise DecodeError(f"output data does not fit shape {list(shape)}: {e}", kind="malformed") from e
    return arr.astype(np.float32)


# ---- gRPC client (the one helper here that does I/O; used by the gRPC feature probe) --------------------------------
def grpc_infer(target: str, model_spec: Any, batch: np.ndarray, input_name: str, output_name: str,
               headers: Mapping[str, str] | None = None, **client_kwargs: Any) -> np.ndarray:
    """One V2 gRPC ``ModelInfer`` with ``tritonclient.grpc`` (``ssl=``, ``root_certificates=``... pass through).

    Returns the output as float32.  Errors surface as ``tritonclient.utils.InferenceServerException``.
    """
    import tritonclient.grpc as grpcclient

    arr = np.ascontiguousarray(np.asarray(batch, dtype=dtype_of(getattr(model_spec, "input", None))))
    inp = grpcclient.InferInput(input_name, list(arr.shape), datatype(arr.dtype))
    inp.set_data_from_numpy(arr)
    client = grpcclient.InferenceServerClient(target, **client_kwargs)
    try:
        res = client.infer(model_spec.name, [inp], outputs=[grpcclient.InferRequestedOutput(output_name)],
                           headers=dict(headers) if headers else None)
        return res.as_numpy(output_name).astype(np.float32)
    finally:
        client.close()


@dataclass(frozen=True)
class V2Codec(Codec):
    """The V2 HTTP codec of one deployment: tensor names, binary inputs or JSON, the auth header (Triton's
    restricted API key); the repository (load/unload) API, and Triton's statistics for cache hits."""

    input_name: str = "input"
    output_name: str = "output"
    binary: bool = False
    auth_header: str | None = None
    payload_datatype: str = "BYTES"  #: image / text payloads as BYTES elements, or UINT8 padded rows (Triton)
    stats: bool = False  #: the server answers GET /v2/models/NAME/stats with cache hit/miss counts (Triton)

    def request(self, model, batch, secrets: Secrets | None = None) -> RequestSpec:
        body, headers = infer_request(model, batch, self.input_name, self.output_name, binary=self.binary,
                                      payload_datatype=self.payload_datatype)
        return RequestSpec("POST", f"/v2/models/{model.name}/infer", body, {**headers, **self.auth_headers(secrets)})

    def decode(self, model, status, body):
        return decode_response(model, status, body, output_name=self.output_name)

    def auth_headers(self, secrets: Secrets | None) -> dict[str, str]:
        if self.auth_header is None:
            return {}
        return {self.auth_header: secrets.token} if secrets and secrets.token else {}

    def repository_request(self, action: str, model: str | None = None, secrets: Secrets | None = None) -> RequestSpec:
        """``index`` / ``load`` / ``unload`` through the V2 repository API."""
        return RequestSpec("POST", repository_path(action, model), b"{}",
                           {"Content-Type": "application/json", **self.auth_headers(secrets)})

    def cache_stats_request(self, model: str, secrets: Secrets | None = None) -> RequestSpec | None:
        """Per-model statistics: inference/execution counts, batch sizes, cache hits and misses."""
        return RequestSpec("GET", f"/v2/models/{model}/stats", b"", self.auth_headers(secrets)) if self.stats else None

    def parse_cache_stats(self, model: str, status: int, body: bytes) -> dict[str, int] | None:
        if not self.stats:
            return None
        try:
            stats = json.loads(body)["model_stats"][0]["inference_stats"]
            return {"hits": int(stats["cache_hit"]["count"]), "misses": int(stats["cache_miss"]["count"])}
        except (ValueError, KeyError, IndexError, TypeError):
            return None
