"""The system shared memory extension against a real uvicorn server: register, status and
unregister; inference through a region gives the binary path's outputs; every bad region
use is a 400 naming the problem; tritonclient's own shared memory utilities work unmodified."""

from __future__ import annotations

import json
import os
import uuid

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
import tritonclient.utils.shared_memory as tshm
from tritonclient.utils import InferenceServerException

from cloud import InferenceService, decode_infer_response, encode_infer_request
from tests.cloud.conftest import x_batch


@pytest.fixture
def shm_server(repo, serve):
    service = InferenceService(repo, intra_op_threads=1, max_queue_size=64)
    service.load_all()
    return serve(service, shared_memory=True)


@pytest.fixture
def shm_file():
    """``make(size) -> key``: a /dev/shm object of ``size`` zero bytes, removed afterwards."""
    made: list[str] = []

    def make(size: int) -> str:
        key = f"/edgecut-test-{uuid.uuid4().hex[:12]}"
        with open(f"/dev/shm{key}", "wb") as fh:
            fh.truncate(size)
        made.append(key)
        return key

    yield make
    for key in made:
        try:
            os.unlink(f"/dev/shm{key}")
        except FileNotFoundError:
            pass


def _put(key: str, array: np.ndarray, offset: int = 0) -> None:
    with open(f"/dev/shm{key}", "r+b") as fh:
        fh.seek(offset)
        fh.write(np.ascontiguousarray(array).tobytes())


def _post(server, path: str, body=None) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=10)


def _infer_shm(server, params: dict, shape=(2, 4), datatype="FP32", outputs=None):
    message = {"inputs": [{"name": "x", "shape": list(shape), "datatype": datatype,
                           "parameters": params}],
               "parameters": {"binary_data_output": True}}
    if outputs is not None:
        message["outputs"] = outputs
    return _post(server, "/v2/models/affine/infer", message)


def test_register_status_unregister(shm_server, shm_file):
    meta = httpx.get(shm_server.url + "/v2", timeout=10).json()
    assert "system_shared_memory" in meta["extensions"]
    key = shm_file(1024)
    r = _post(shm_server, "/v2/systemsharedmemory/region/a/register",
              {"key": key, "offset": 0, "byte_size": 512})
    assert r.status_code == 200, r.text
    r = _post(shm_server, "/v2/systemsharedmemory/region/b/register",
              {"key": key, "offset": 512, "byte_size": 512})
    assert r.status_code == 200, r.text
    status = httpx.get(shm_server.url + "/v2/systemsharedmemory/status", timeout=10).json()
    assert sorted((s["name"], s["key"], s["offset"], s["byte_size"]) for s in status) == [
        ("a", key, 0, 512), ("b", key, 512, 512)]
    one = httpx.get(shm_server.url + "/v2/systemsharedmemory/region/b/status", timeout=10)
    assert one.json() == [{"name": "b", "key": key, "offset": 512, "byte_size": 512}]
    again = _post(shm_server, "/v2/systemsharedmemory/region/a/register",
                  {"key": key, "offset": 0, "byte_size": 16})
    assert again.status_code == 400 and "already registered" in again.json()["error"]
    assert _post(shm_server, "/v2/systemsharedmemory/region/a/unregister").status_code == 200
    gone = httpx.get(shm_server.url + "/v2/systemsharedmemory/region/a/status", timeout=10)
    assert gone.status_code == 404 and "'a'" in gone.json()["error"]
    assert _post(shm_server, "/v2/systemsharedmemory/unregister").status_code == 200
    assert httpx.get(shm_server.url + "/v2/systemsharedmemory/status", timeout=10).json() == []


def test_infer_through_shm_matches_binary(shm_server, shm_file):
    x = x_batch(2)
    key = shm_file(4096)
    _put(key, x, offset=128)
    r = _post(shm_server, "/v2/systemsharedmemory/region/in/register",
              {"key": key, "offset": 64, "byte_size": 1024})
    assert r.status_code == 200, r.text
    r = _infer_shm(shm_server, {"shared_memory_region": "in", "shared_memory_byte_size": x.nbytes,
                                "shared_memory_offset": 64})
    assert r.status_code == 200, r.text
    via_shm = decode_infer_response(r.content, r.headers)
    body, headers = encode_infer_request({"x": x})
    b = httpx.post(shm_server.url + "/v2/models/affine/infer", content=body, headers=headers,
                   timeout=10)
    via_binary = decode_infer_response(b.content, b.headers)
    assert set(via_shm) == {"y", "z"}
    for name in via_shm:
        np.testing.assert_array_equal(via_shm[name], via_binary[name])
    np.testing.assert_allclose(via_shm["y"], 2 * x + 2.0, rtol=1e-6)

    # The output written into a region instead of the body.
    out_key = shm_file(64)
    _post(shm_server, "/v2/systemsharedmemory/region/out/register",
          {"key": out_key, "offset": 0, "byte_size": 64})
    r = _infer_shm(shm_server, {"shared_memory_region": "in", "shared_memory_byte_size": x.nbytes,
                                "shared_memory_offset": 64},
                   outputs=[{"name": "y", "parameters": {"shared_memory_region": "out",
                                                         "shared_memory_byte_size": 64}},
                            {"name": "z", "parameters": {"binary_data": True}}])
    assert r.status_code == 200, r.text
    described = json.loads(r.content[:int(r.headers["inference-header-content-length"])])
    y_entry = next(o for o in described["outputs"] if o["name"] == "y")
    assert y_entry["parameters"] == {"shared_memory_region": "out", "shared_memory_byte_size": 32}
    with open(f"/dev/shm{out_key}", "rb") as fh:
        y = np.frombuffer(fh.read(32), np.float32).reshape(2, 4)
    np.testing.assert_allclose(y, 2 * x + 2.0, rtol=1e-6)


@pytest.mark.parametrize("case", ["bad_name", "bad_key", "missing_key", "past_end"])
def test_bad_registration_is_400(shm_server, shm_file, case):
    key = shm_file(256)
    name, body, expect = {
        "bad_name": ("a b", {"key": key, "byte_size": 16}, "region name"),
        "bad_key": ("r", {"key": "/../etc/passwd", "byte_size": 16}, "'key' must be"),
        "missing_key": ("r", {"key": "/edgecut-test-nope", "byte_size": 16}, "cannot open key"),
        "past_end": ("r", {"key": key, "offset": 200, "byte_size": 100}, "runs past the 256"),
    }[case]
    r = _post(shm_server, f"/v2/systemsharedmemory/region/{name}/register", body)
    assert r.status_code == 400, r.text
    assert expect in r.json()["error"]


@pytest.mark.parametrize("case", ["unregistered", "out_of_bounds", "wrong_size", "bad_offset"])
def test_bad_shm_input_is_400(shm_server, shm_file, case):
    key = shm_file(64)
    _post(shm_server, "/v2/systemsharedmemory/region/in/register",
          {"key": key, "offset": 0, "byte_size": 64})
    params, expect = {
        "unregistered": ({"shared_memory_region": "nope", "shared_memory_byte_size": 32},
                         "tensor 'x': shared memory region 'nope' is not registered"),
        "out_of_bounds": ({"shared_memory_region": "in", "shared_memory_byte_size": 32,
                           "shared_memory_offset": 48}, "runs past the 64 bytes of region 'in'"),
        "wrong_size": ({"shared_memory_region": "in", "shared_memory_byte_size": 16},
                       "tensor 'x': shape [2, 4] of FP32 needs 32 bytes"),
        "bad_offset": ({"shared_memory_region": "in", "shared_memory_byte_size": 32,
                        "shared_memory_offset": -1}, "shared_memory_offset must be"),
    }[case]
    r = _infer_shm(shm_server, params)
    assert r.status_code == 400, r.text
    assert expect in r.json()["error"]


def test_off_by_default(server, shm_file):
    meta = httpx.get(server.url + "/v2", timeout=10).json()
    assert "system_shared_memory" not in meta["extensions"]
    r = _post(server, "/v2/systemsharedmemory/region/a/register",
              {"key": shm_file(64), "byte_size": 64})
    assert r.status_code == 404
    r = _infer_shm(server, {"shared_memory_region": "a", "shared_memory_byte_size": 32})
    assert r.status_code == 400 and "extension off" in r.json()["error"]


def test_tritonclient_shared_memory_unmodified(shm_server):
    client = tc.InferenceServerClient(shm_server.url.removeprefix("http://"))
    x = x_batch(3)
    key = f"/edgecut-tc-{uuid.uuid4().hex[:8]}"
    in_handle = tshm.create_shared_memory_region("tc_in", key, x.nbytes)
    out_handle = tshm.create_shared_memory_region("tc_out", key + "o", x.nbytes)
    try:
        tshm.set_shared_memory_region(in_handle, [x])
        client.register_system_shared_memory("tc_in", key, x.nbytes)
        client.register_system_shared_memory("tc_out", key + "o", x.nbytes)
        regions = client.get_system_shared_memory_status()
        assert {r["name"] for r in regions} == {"tc_in", "tc_out"}
        inp = tc.InferInput("x", list(x.shape), "FP32")
        inp.set_shared_memory("tc_in", x.nbytes)
        y_out = tc.InferRequestedOutput("y", binary_data=True)
        y_out.set_shared_memory("tc_out", x.nbytes)
        z_out = tc.InferRequestedOutput("z", binary_data=True)
        result = client.infer("affine", [inp], outputs=[y_out, z_out])
        np.testing.assert_allclose(result.as_numpy("z"), -x)
        y_meta = result.get_output("y")
        assert y_meta["parameters"]["shared_memory_region"] == "tc_out"
        y = tshm.get_contents_as_numpy(out_handle, np.float32, list(x.shape))
        np.testing.assert_allclose(y, 2 * x + 2.0, rtol=1e-6)
        with pytest.raises(InferenceServerException, match="not registered"):
            bad = tc.InferInput("x", list(x.shape), "FP32")
            bad.set_shared_memory("missing", x.nbytes)
            client.infer("affine", [bad])
        client.unregister_system_shared_memory("tc_in")
        assert [r["name"] for r in client.get_system_shared_memory_status()] == ["tc_out"]
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
    finally:
        tshm.destroy_shared_memory_region(in_handle)
        tshm.destroy_shared_memory_region(out_handle)
        client.close()
