"""The KServe V2 codec (servingbench.adapters.v2): requests and responses, JSON and Triton's binary extension."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from servingbench.adapters import v2
from servingbench.contract import DecodeError


def spec(in_shape=(64,), in_dtype="float32", out_shape=(10,), out_dtype="float32", name="mlp"):
    return SimpleNamespace(name=name, input=SimpleNamespace(name="input", shape=in_shape, dtype=in_dtype),
                           output=SimpleNamespace(name="output", shape=out_shape, dtype=out_dtype))


MLP = spec()
ENCODER = spec(in_shape=(32,), in_dtype="int64", out_shape=(2,), name="encoder")


def json_response(arr: np.ndarray, name="output", datatype="FP32", **extra) -> bytes:
    out = {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.ravel().tolist(), **extra}
    return json.dumps({"model_name": "m", "outputs": [out]}).encode()


def binary_response(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    outs, raw = [], b""
    for name, a in arrays.items():
        b = a.astype("<f4").tobytes()
        outs.append({"name": name, "shape": list(a.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": len(b)}})
        raw += b
    header = json.dumps({"model_name": "m", "outputs": outs}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


# ---- requests ----------------------------------------------------------------------------------------------------
def test_json_request_follows_the_protocol():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    body, headers = v2.infer_request(MLP, x, "INPUT__0", "OUTPUT__0")
    assert headers == {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    doc = json.loads(body)
    (inp,) = doc["inputs"]
    assert inp["name"] == "INPUT__0" and inp["shape"] == [3, 64] and inp["datatype"] == "FP32"
    assert len(inp["data"]) == 3 * 64  # flat, row-major
    assert doc["outputs"] == [{"name": "OUTPUT__0"}]  # plain V2: no Triton-only parameters
    # float32 survives the JSON text exactly
    assert np.array_equal(np.asarray(inp["data"], dtype=np.float32).reshape(3, 64), x)


def test_request_is_deterministic_and_casts_to_the_model_dtype():
    x64 = np.arange(64, dtype=np.float64).reshape(1, 64) / 3
    a, b = v2.infer_request(MLP, x64), v2.infer_request(MLP, x64)
    assert a == b
    assert json.loads(a[0])["inputs"][0]["datatype"] == "FP32"


def test_int64_inputs_are_exact_integers():
    x = np.array([[0, 1, 2**40, -(2**62)] + [7] * 28], dtype=np.int64)
    body, _ = v2.infer_request(ENCODER, x)
    inp = json.loads(body)["inputs"][0]
    assert inp["datatype"] == "INT64" and inp["shape"] == [1, 32]
    assert inp["data"][:4] == [0, 1, 2**40, -(2**62)] and all(isinstance(v, int) for v in inp["data"])


def test_binary_request_carries_raw_bytes_after_the_json_header():
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    body, headers = v2.infer_request(MLP, x, binary=True)
    n = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:n])
    inp = header["inputs"][0]
    assert "data" not in inp and inp["parameters"]["binary_data_size"] == x.nbytes == len(body) - n
    assert np.array_equal(np.frombuffer(body[n:], dtype="<f4").reshape(2, 64), x)
    assert header["outputs"] == [{"name": "output", "parameters": {"binary_data": False}}]


def test_binary_int64_request():
    x = np.arange(64, dtype=np.int64).reshape(2, 32) * (2**40)
    body, headers = v2.infer_request(ENCODER, x, binary=True)
    n = int(headers["Inference-Header-Content-Length"])
    assert json.loads(body[:n])["inputs"][0]["datatype"] == "INT64"
    assert np.array_equal(np.frombuffer(body[n:], dtype="<i8").reshape(2, 32), x)


def test_binary_output_can_be_requested():
    body, _ = v2.infer_request(MLP, np.zeros((1, 64), np.float32), binary_output=True)
    assert json.loads(body)["outputs"][0]["parameters"] == {"binary_data": True}


def test_request_does_not_validate_shapes():
    # Servers must reject bad shapes themselves (the contract suite checks that they do).
    body, _ = v2.infer_request(MLP, np.zeros((1, 3), np.float32))
    assert json.loads(body)["inputs"][0]["shape"] == [1, 3]


def test_repository_paths():
    assert v2.repository_path("index") == "/v2/repository/index"
    assert v2.repository_path("unload", "mlp") == "/v2/repository/models/mlp/unload"
    with pytest.raises(ValueError):
        v2.repository_path("load")
    with pytest.raises(ValueError):
        v2.repository_path("delete", "mlp")


# ---- responses ---------------------------------------------------------------------------------------------------
def test_json_round_trip_is_exact_for_float32():
    y = np.random.default_rng(2).standard_normal((8, 10)).astype(np.float32) * np.float32(1e-7)
    got = v2.decode_response(MLP, 200, json_response(y))
    assert got.dtype == np.float32 and got.shape == (8, 10)
    assert np.array_equal(got, y)


def test_request_then_response_round_trip_through_a_fake_server():
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    doc = json.loads(v2.infer_request(MLP, x)[0])
    seen = np.asarray(doc["inputs"][0]["data"], dtype=np.float32).reshape(doc["inputs"][0]["shape"])
    y = seen[:, :10] * 2
    assert np.array_equal(v2.decode_response(MLP, 200, json_response(y)), x[:, :10] * 2)


def test_nested_data_is_accepted():
    y = np.ones((2, 10), np.float32)
    body = json.dumps({"outputs": [{"name": "output", "shape": [2, 10], "datatype": "FP32",
                                    "data": y.tolist()}]}).encode()
    assert np.array_equal(v2.decode_response(MLP, 200, body), y)


def test_output_chosen_by_name():
    a, b = np.zeros((1, 10), np.float32), np.ones((1, 10), np.float32)
    outs = [{"name": n, "shape": [1, 10], "datatype": "FP32", "data": v.ravel().tolist()}
            for n, v in (("other", a), ("OUTPUT__0", b))]
    body = json.dumps({"outputs": outs}).encode()
    assert np.array_equal(v2.decode_response(MLP, 200, body, output_name="OUTPUT__0"), b)
    assert np.array_equal(v2.decode_response(MLP, 200, body), a)
    with pytest.raises(DecodeError) as e:
        v2.decode_response(MLP, 200, body, output_name="missing")
    assert e.value.kind == "malformed"


def test_binary_response_with_and_without_the_length_header():
    y = np.random.default_rng(4).standard_normal((3, 10)).astype(np.float32)
    z = np.full((3, 10), 5, np.float32)
    body, headers = binary_response({"first": z, "output": y})
    for h in (headers, None, {"inference-header-content-length": headers["Inference-Header-Content-Length"]}):
        assert np.array_equal(v2.decode_response(MLP, 200, body, h, output_name="output"), y)
        assert np.array_equal(v2.decode_response(MLP, 200, body, h, output_name="first"), z)


def test_integer_outputs_become_float32():
    body = json.dumps({"outputs": [{"name": "output", "shape": [1, 2], "datatype": "INT64",
                                    "data": [3, 4]}]}).encode()
    got = v2.decode_response(ENCODER, 200, body)
    assert got.dtype == np.float32 and got.tolist() == [[3.0, 4.0]]


@pytest.mark.parametrize("status", [400, 403, 404, 500, 503])
def test_non_2xx_is_a_status_error(status):
    with pytest.raises(DecodeError) as e:
        v2.decode_response(MLP, status, json_response(np.zeros((1, 10), np.float32)))
    assert e.value.kind == "status"


@pytest.mark.parametrize("body", [
    b"not json", b"", b"{}", b"[]", b"[[1,2],[3]]", b'{"outputs": []}', b'{"outputs": {"a": 1}}',
    b'{"error": "model not ready"}',
    b'{"outputs": [{"name": "output", "shape": [1, 10], "datatype": "FP32"}]}',  # no data
    b'{"outputs": [{"name": "output", "shape": [1, 10], "datatype": "FP32", "data": [1, 2]}]}',  # size
    b'{"outputs": [{"name": "output", "shape": [1, 10], "datatype": "WEIRD", "data": []}]}',
    b'{"outputs": [{"name": "output", "datatype": "FP32", "data": [1]}]}',  # no shape
    b'{"outputs": [{"name": "output", "shape": [1, 2], "datatype": "FP32", "data": [[1], [2, 3]]}]}',
    b'{"outputs": [{"name": "output", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}',
    b'{"outputs": [{"name": "output", "shape": [1, 10], "datatype": "FP32", '
    b'"parameters": {"binary_data_size": 40}}]}',  # binary output, bytes missing
])
def test_malformed_bodies(body):
    with pytest.raises(DecodeError) as e:
        v2.decode_response(MLP, 200, body)
    assert e.value.kind == "malformed", e.value


def test_bad_length_header_is_malformed():
    body, _ = binary_response({"output": np.zeros((1, 10), np.float32)})
    for h in ({"Inference-Header-Content-Length": "x"}, {"Inference-Header-Content-Length": str(len(body) + 1)}):
        with pytest.raises(DecodeError) as e:
            v2.decode_response(MLP, 200, body, h)
        assert e.value.kind == "malformed"


@pytest.mark.parametrize("shape", [(10,), (1, 9), (2, 10, 1), (1, 2, 5)])
def test_wrong_shape(shape):
    with pytest.raises(DecodeError) as e:
        v2.decode_response(MLP, 200, json_response(np.zeros(shape, np.float32)))
    assert e.value.kind == "shape"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf(bad):
    y = np.zeros((2, 10), np.float32)
    y[1, 3] = bad
    body, headers = binary_response({"output": y})
    with pytest.raises(DecodeError) as e:
        v2.decode_response(MLP, 200, body, headers)
    assert e.value.kind == "nan"


def test_null_in_json_data_is_nan():
    # MLServer encodes NaN as null.
    body = json.dumps({"outputs": [{"name": "output", "shape": [1, 10], "datatype": "FP32",
                                    "data": [None] + [0.0] * 9}]}).encode()
    with pytest.raises(DecodeError) as e:
        v2.decode_response(MLP, 200, body)
    assert e.value.kind in ("nan", "malformed")


def test_datatype_names():
    assert v2.datatype("float32") == "FP32" and v2.datatype(np.int64) == "INT64"
    assert v2.dtype_of(SimpleNamespace(dtype="torch.float32")) == np.float32
    with pytest.raises(ValueError):
        v2.datatype(np.complex64)
