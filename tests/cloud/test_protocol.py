"""The pure Open Inference Protocol codec: round trips, datatypes, malformed messages."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cloud import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    datatype_of,
    decode_infer_request,
    decode_infer_response,
    dtype_of,
    encode_infer_request,
    encode_infer_response,
)

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def _sample(datatype: str, shape=(2, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BYTES":
        return np.array([b"a", b"", "é".encode(), b"\x00\xff", b"xyz", b"q"], dtype=object).reshape(shape)
    dt = DATATYPES[datatype]
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return rng.standard_normal(shape).astype(dt)


def test_datatype_table_round_trips():
    for name, dt in DATATYPES.items():
        assert datatype_of(dt) == name
        assert dtype_of(name) == dt
    assert datatype_of(np.dtype(">f4")) == "FP32"
    assert datatype_of(np.dtype("U3")) == "BYTES"
    with pytest.raises(ProtocolError, match="complex64"):
        datatype_of(np.complex64)
    with pytest.raises(ProtocolError, match="BF16"):
        dtype_of("BF16")


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip_every_datatype(datatype, binary):
    if datatype == "BYTES" and not binary:
        value = np.array(["a", "b", "é", "", "xyz", "q"], dtype=object).reshape(2, 3)
        expect = np.array([s.encode() for s in value.reshape(-1)], dtype=object).reshape(2, 3)
    else:
        value = _sample(datatype)
        expect = value
    body, headers = encode_infer_request({"x": value}, ["y"], binary=binary, request_id="r1")
    assert (HEADER_LENGTH in headers) == binary
    request = decode_infer_request(body, headers)
    assert request.id == "r1"
    got = request.inputs["x"]
    assert got.dtype == DATATYPES[datatype]
    assert got.shape == (2, 3)
    assert np.array_equal(got, expect)
    assert request.output_names(["y", "z"]) == ["y"]
    assert request.wants_binary("y") is True


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_response_round_trip_binary_and_json(datatype):
    value = _sample(datatype)
    if datatype == "BYTES":
        with pytest.raises(ProtocolError, match="not UTF-8"):
            encode_infer_response("m", {"y": value}, binary=False)
        value = np.array([b"a", b"", b"b", b"c", b"xyz", b"q"], dtype=object).reshape(2, 3)
    for binary in (True, False, ["y"]):
        body, headers = encode_infer_response("m", {"y": value, "z": np.arange(3, dtype=np.int32)},
                                              model_version="2", binary=binary)
        outputs = decode_infer_response(body, headers)
        assert np.array_equal(outputs["y"], value)
        assert np.array_equal(outputs["z"], np.arange(3))


def test_binary_inputs_are_views_not_copies():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, headers = encode_infer_request({"x": x})
    got = decode_infer_request(body, headers).inputs["x"]
    assert not got.flags.owndata and not got.flags.writeable


def test_all_outputs_binary_by_default_parameter():
    body, headers = encode_infer_request({"x": np.zeros(2, np.float32)})
    request = decode_infer_request(body, headers)
    assert request.outputs is None and request.binary_outputs is True
    assert request.wants_binary("anything")


def test_nested_json_data_and_scalar_shapes():
    message = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]}
    request = decode_infer_request(json.dumps(message).encode(), {})
    assert request.inputs["x"].tolist() == [[1, 2], [3, 4.5]]


def _bad(message, binary: bytes = b"", headers=None):
    header = json.dumps(message).encode() if not isinstance(message, bytes) else message
    if headers is None:
        headers = {HEADER_LENGTH: str(len(header))} if binary else {}
    with pytest.raises(ProtocolError) as info:
        decode_infer_request(header + binary, headers)
    return str(info.value)


def test_malformed_requests_name_the_problem():
    assert "malformed JSON" in _bad(b"{not json")
    assert "must be an object" in _bad([1, 2])
    assert "'inputs'" in _bad({"inputs": []})
    t = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}
    assert "'x'" in _bad({"inputs": [dict(t, datatype="FLOAT")]}) and "FLOAT" in _bad({"inputs": [dict(t, datatype="FLOAT")]})
    assert "needs 2 elements, data has 3" in _bad({"inputs": [dict(t, data=[1, 2, 3])]})
    assert "non-negative" in _bad({"inputs": [dict(t, shape=[-1])]})
    assert "do not fit datatype INT8" in _bad({"inputs": [dict(t, datatype="INT8", data=[1, 300])]})
    assert "does not fit datatype INT32" in _bad({"inputs": [dict(t, datatype="INT32", data=[1.5, 2])]})
    assert "BOOL" in _bad({"inputs": [dict(t, datatype="BOOL", data=[1, 0])]})
    assert "appears twice" in _bad({"inputs": [t, t]})
    b = {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    assert "runs past" in _bad({"inputs": [b]}, b"\0" * 4)
    assert "add up to 8" in _bad({"inputs": [b]}, b"\0" * 12)
    assert "needs 8 bytes" in _bad({"inputs": [dict(b, parameters={"binary_data_size": 4})]}, b"\0" * 4)
    assert "truncated" in _bad({"inputs": [b]}, b"", headers={HEADER_LENGTH: "9999"})
    assert "integer" in _bad({"inputs": [b]}, b"", headers={HEADER_LENGTH: "ab"})
    s = {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}
    assert "BYTES" in _bad({"inputs": [s]}, b"\x01\0\0\0a\x09\0\0\0")


def test_error_response_raises_with_server_message():
    with pytest.raises(ProtocolError, match="boom"):
        decode_infer_response(b'{"error": "boom"}', {"Content-Type": "application/json"})


def test_encode_with_tritonclient_is_decoded():
    import tritonclient.http as httpclient
    from tritonclient.http._utils import _get_inference_request

    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    inp = httpclient.InferInput("x", [2, 3], "FP16")
    inp.set_data_from_numpy(x, binary_data=True)
    s = httpclient.InferInput("s", [1], "BYTES")
    s.set_data_from_numpy(np.array([b"hi"], dtype=object), binary_data=False)
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    body, json_size = _get_inference_request(
        inputs=[inp, s], request_id="7", outputs=[out], sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None,
    )
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    request = decode_infer_request(body if isinstance(body, bytes) else body.encode(), headers)
    assert request.id == "7"
    assert np.array_equal(request.inputs["x"], x)
    assert request.inputs["s"].tolist() == [b"hi"]
    assert request.wants_binary("y")


def test_repeated_headers_reuse_their_checks_but_read_each_body():
    # The same header again (same shapes): decoded from its own data every time, and a
    # body whose data does not fit the remembered header is still refused.
    for _ in range(3):
        a = _sample("FP32")
        body, headers = encode_infer_request({"x": a})
        np.testing.assert_array_equal(decode_infer_request(body, headers).inputs["x"], a)
    length = int(headers[HEADER_LENGTH])
    with pytest.raises(ProtocolError, match="bytes"):
        decode_infer_request(body[:-4], headers)
    with pytest.raises(ProtocolError, match="bytes"):
        decode_infer_request(body + b"\0" * 8, headers)
    assert decode_infer_request(body[:length] + body[length:], headers).id is None
    # Responses: the same layout with new data, a new request id, a truncated body.
    for i in range(3):
        out = {"y": _sample("INT32") + i, "z": _sample("FP16")}
        resp, rheaders = encode_infer_response("m", out, model_version="1",
                                               request_id=f"r{i}", binary=True)
        assert json.loads(resp[: int(rheaders[HEADER_LENGTH])])["id"] == f"r{i}"
        decoded = decode_infer_response(resp, rheaders)
        np.testing.assert_array_equal(decoded["y"], out["y"])
        np.testing.assert_array_equal(decoded["z"], out["z"])
    with pytest.raises(ProtocolError, match="bytes"):
        decode_infer_response(resp[:-2], rheaders)


def test_repeated_shared_memory_headers_check_the_region_each_time(tmp_path):
    from cloud._shm import Caller, SharedMemoryRegistry

    shm = SharedMemoryRegistry(root=str(tmp_path))
    caller = Caller("uid:test", uid=os.geteuid())
    registry = shm.for_caller(caller)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "r1").write_bytes(a.tobytes())
    shm.register("r1", {"key": "/r1", "offset": 0, "byte_size": a.nbytes}, caller)
    message = json.dumps({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
                                      "parameters": {"shared_memory_region": "r1",
                                                     "shared_memory_byte_size": a.nbytes}}]})
    for i in range(3):
        (tmp_path / "r1").write_bytes((a + i).tobytes())
        got = decode_infer_request(message.encode(), {}, shared_memory=registry)
        np.testing.assert_array_equal(got.inputs["x"], a + i)
    with pytest.raises(ProtocolError, match="shared memory extension off"):
        decode_infer_request(message.encode(), {})
    shm.unregister("r1", caller)
    with pytest.raises(ProtocolError, match="r1"):
        decode_infer_request(message.encode(), {}, shared_memory=registry)
