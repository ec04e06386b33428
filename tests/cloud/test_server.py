"""The v2 REST endpoints against a real uvicorn server: tritonclient unmodified, raw httpx
for the bad-input cases, metrics, statistics and the profile extension."""

from __future__ import annotations

import gzip
import json
import socket

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from cloud import HEADER_LENGTH, InferenceService, decode_infer_response, encode_infer_request
from tests.cloud.conftest import x_batch
from tests.onnx_files import make_model


@pytest.fixture
def client(server):
    c = tc.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _post(server, path, body: bytes, headers=None, **kw) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers=headers or {}, timeout=10, **kw)


def test_health_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "edgecut" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("affine") and client.is_model_ready("affine", "1")
    assert not client.is_model_ready("affine", "7")
    assert not client.is_model_ready("nope")
    model = client.get_model_metadata("affine")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("affine", "1")["versions"] == ["1"]
    config = client.get_model_config("affine")
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_infer_json_and_binary(client, binary_in, binary_out):
    x = x_batch(3)
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outs = [tc.InferRequestedOutput("y", binary_data=binary_out)]
    result = client.infer("affine", [inp], outputs=outs, request_id="abc")
    np.testing.assert_allclose(result.as_numpy("y"), 2 * x + 2.0, rtol=1e-6)
    assert result.as_numpy("z") is None  # output selection: only y was asked for
    response = result.get_response()
    assert response["model_version"] == "2" and response["id"] == "abc"
    # a pinned version
    result = client.infer("affine", [inp], model_version="1")
    np.testing.assert_allclose(result.as_numpy("y"), 2 * x + 1.0, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("z"), -x)


def test_every_numeric_datatype_round_trips(client):
    rng = np.random.default_rng(1)
    values = {
        "i8": rng.integers(-128, 127, (2, 3), dtype=np.int8),
        "u16": rng.integers(0, 65535, (2, 3), dtype=np.uint16),
        "i64": rng.integers(-(2**62), 2**62, (2, 3), dtype=np.int64),
        "f16": rng.standard_normal((2, 3)).astype(np.float16),
        "f64": rng.standard_normal((2, 3)),
        "b": rng.integers(0, 2, (2, 3)).astype(bool),
    }
    for binary in (True, False):
        inputs = []
        for name, value in values.items():
            inp = tc.InferInput(name, [2, 3], tc.np_to_triton_dtype(value.dtype))
            inp.set_data_from_numpy(value, binary_data=binary)
            inputs.append(inp)
        result = client.infer("typed", inputs)
        for name, value in values.items():
            got = result.as_numpy(f"{name}_out")
            assert got.dtype == value.dtype and np.array_equal(got, value), name


def test_parameters_and_gzip_body(server):
    body, headers = encode_infer_request({"x": x_batch(2)}, ["y"], parameters={"priority": 1},
                                         request_id="gz")
    packed = gzip.compress(body)
    r = _post(server, "/v2/models/affine/infer", packed, {**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    out = decode_infer_response(r.content, r.headers)
    np.testing.assert_allclose(out["y"], 2 * x_batch(2) + 2.0, rtol=1e-6)
    assert r.headers["x-request-id"]


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()["error"]


def test_bad_inputs_get_400_naming_the_problem(server):
    url = "/v2/models/affine/infer"
    good = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}

    def send(message):
        return _post(server, url, json.dumps(message).encode(), {"Content-Type": "application/json"})

    assert "malformed JSON" in _error(_post(server, url, b'{"inputs": [', {}), 400)
    msg = _error(send({"inputs": [dict(good, datatype="INT32")]}), 400)
    assert "'x'" in msg and "FP32" in msg and "INT32" in msg
    msg = _error(send({"inputs": [dict(good, datatype="FLOAT32")]}), 400)
    assert "FLOAT32" in msg
    assert "needs 4 elements, data has 3" in _error(send({"inputs": [dict(good, data=[1, 2, 3])]}), 400)
    msg = _error(send({"inputs": [dict(good, shape=[1, 5], data=[0] * 5)]}), 400)
    assert "'x'" in msg and "[-1, 4]" in msg
    assert "batch size 9" in _error(send({"inputs": [dict(good, shape=[9, 4], data=[0] * 36)]}), 400)
    assert "no input 'q'" in _error(send({"inputs": [dict(good, name="q")]}), 400)
    msg = _error(send({"inputs": [good], "outputs": [{"name": "w"}]}), 400)
    assert "no output 'w'" in msg
    # binary sizes that do not add up, and truncated bodies
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    hl = {HEADER_LENGTH: str(len(header))}
    assert "add up to 16" in _error(_post(server, url, header + b"\0" * 20, hl), 400)
    assert "runs past" in _error(_post(server, url, header + b"\0" * 8, hl), 400)
    assert "truncated" in _error(_post(server, url, header[:10], hl), 400)
    # unknown model and version
    assert "unknown model 'nope'" in _error(_post(server, "/v2/models/nope/infer", b"{}"), 404)
    assert "no version '9'" in _error(
        _post(server, "/v2/models/affine/versions/9/infer", json.dumps({"inputs": [good]}).encode()), 404)
    assert "no endpoint" in _error(httpx.get(server.url + "/v2/models/affine/bogus"), 404)
    assert httpx.get(server.url + "/v2/models/affine/infer").status_code == 405
    # still serving
    assert send({"inputs": [good]}).status_code == 200


def test_body_limit_and_truncated_transfer(repo, serve):
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    server = serve(service, max_body_bytes=4096)
    body, headers = encode_infer_request({"x": x_batch(8)})
    assert _post(server, "/v2/models/affine/infer", body, headers).status_code == 200
    big = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                  "data": [0.0] * 4}], "pad": "x" * 5000}).encode()
    assert "limit of 4096" in _error(_post(server, "/v2/models/affine/infer", big), 413)
    # a gzip bomb is stopped at the limit too
    bomb = gzip.compress(b" " * 100_000)
    r = _post(server, "/v2/models/affine/infer", bomb, {"Content-Encoding": "gzip"})
    assert r.status_code == 413
    # a client that promises more than it sends and hangs up: the server keeps serving
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"in")
    r = _post(server, "/v2/models/affine/infer", body, headers)
    assert r.status_code == 200


def test_statistics_metrics_and_profile(server, client):
    x = x_batch(1)
    inp = tc.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("affine", [inp])
    stats = client.get_inference_statistics("affine", "2")["model_stats"][0]
    assert stats["inference_count"] == 3 and stats["inference_stats"]["success"]["count"] == 3
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == stats["execution_count"]
    text = httpx.get(server.url + "/metrics").text
    assert 'edgecut_inference_requests_total{model="affine",version="2"} 3.0' in text
    assert "edgecut_batch_size_bucket" in text and "edgecut_queue_seconds_bucket" in text
    assert 'edgecut_requests_in_flight{model="affine"} 0.0' in text
    # Each inference response says how long it queued and computed (W3C Server-Timing).
    r = httpx.post(server.url + "/v2/models/affine/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    metrics = dict(m.strip().split(";dur=") for m in r.headers["server-timing"].split(","))
    assert set(metrics) == {"queue", "compute"}
    assert float(metrics["queue"]) >= 0 and float(metrics["compute"]) > 0
    r = httpx.post(server.url + "/v2/models/affine/profile", json={"runs": 3, "batch": 2}, timeout=30)
    assert r.status_code == 200, r.text
    profile = r.json()
    assert profile["model"] == "affine" and profile["providers"][-1] == "CPUExecutionProvider"
    assert profile["nodes"] and set(profile["nodes"]) <= {"double", "shift", "negate"}
    assert all(v >= 0 for v in profile["nodes"].values()) and profile["total_ms"] > 0
    assert "'runs'" in _error(httpx.post(server.url + "/v2/models/affine/profile", json={"runs": 0}), 400)


def test_repository_index_load_unload(server, client, repo):
    index = client.get_model_repository_index()
    assert {(e["name"], e.get("version")) for e in index} >= {("affine", "1"), ("affine", "2"), ("typed", "1")}
    client.unload_model("typed")
    assert not client.is_model_ready("typed")
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["typed"]["state"] == "UNAVAILABLE"
    client.load_model("typed")
    assert client.is_model_ready("typed")
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.load_model("missing")


def test_bytes_tensors_for_a_string_model(tmp_path, serve):
    from onnx import TensorProto, helper

    from tests.cloud.conftest import write_version

    s_in = helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])
    s_out = helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"])
    model = make_model(helper.make_graph([helper.make_node("Identity", ["s"], ["echo"])], "strings", [s_in], [s_out]))
    write_version(tmp_path, "strings", 1, model)
    service = InferenceService(tmp_path, intra_op_threads=1)
    service.load_all()
    server = serve(service)
    client = tc.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.get_model_metadata("strings")["inputs"][0]["datatype"] == "BYTES"
    words = np.array(["héllo".encode(), b"", b"edge"], dtype=object)
    for binary in (True, False):
        inp = tc.InferInput("s", [3], "BYTES")
        inp.set_data_from_numpy(words, binary_data=binary)
        result = client.infer("strings", [inp],
                              outputs=[tc.InferRequestedOutput("echo", binary_data=binary)])
        got = result.as_numpy("echo").tolist()
        # tritonclient hands JSON strings back as str, binary BYTES as bytes (as with Triton)
        expected = words.tolist() if binary else [w.decode() for w in words]
        assert got == expected
    client.close()


def test_batched_requests_get_their_own_results(server):
    import asyncio

    xs = [x_batch(1 + i % 3, seed=i) for i in range(24)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            calls = []
            for x in xs:
                body, headers = encode_infer_request({"x": x}, ["y"])
                calls.append(client.post("/v2/models/affine/infer", content=body, headers=headers))
            return await asyncio.gather(*calls)

    for _ in range(2):  # the second pass reuses the batcher's buffers
        for x, r in zip(xs, asyncio.run(run()), strict=True):
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(decode_infer_response(r.content, r.headers)["y"], 2 * x + 2.0,
                                       rtol=1e-6)
    stats = httpx.get(server.url + "/v2/models/affine/versions/2/stats").json()["model_stats"][0]
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 3  # requests were batched


def test_structured_logs_carry_the_request_id(server):
    import io
    import logging

    from cloud import JsonLogFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("edgecut.cloud.http")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        r = httpx.post(server.url + "/v2/models/affine/infer", content=b"{bad",
                       headers={"X-Request-Id": "req-42"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert r.status_code == 400 and r.headers["x-request-id"] == "req-42"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    entry = next(e for e in lines if e.get("request_id") == "req-42")
    assert entry["status"] == 400 and entry["level"] == "info" and "malformed JSON" in entry["msg"]
