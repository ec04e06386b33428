"""Nothing heavy on the event loop, and the profile extension bounded: a BYTES flood at an
FP32 model, BYTES element counts, and profile requests built to take memory or time.
Against real `edgecut serve` processes; each asserts the refusal and that the server keeps
serving."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cloud import encode_infer_request, mint_token
from tests.cloud.conftest import affine_model, write_version
from tests.edge.conftest import slow_model


def _strings_model() -> onnx.ModelProto:
    s = helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])
    t = helper.make_tensor_value_info("t", TensorProto.STRING, ["N"])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings", [s], [t]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_version(root, "affine", 1, affine_model(1.0))
    write_version(root, "strings", 1, _strings_model())
    (root / "strings" / "config.pbtxt").write_text("max_batch_size: 0\n")
    return root


def _bytes_body(name: str, count: int, shape: list[int]) -> tuple[bytes, dict]:
    """``count`` empty BYTES elements (4 zero bytes each) as one binary tensor."""
    header = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 * count}}]}).encode()
    return header + bytes(4 * count), {"Inference-Header-Content-Length": str(len(header)),
                                       "Content-Type": "application/octet-stream"}


def _serves(url: str, token: str | None = None) -> bool:
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    if token:
        headers = {**headers, "authorization": f"Bearer {token}"}
    r = httpx.post(url + "/v2/models/affine/infer", content=body, headers=headers, timeout=20)
    return r.status_code == 200


def test_bytes_flood_at_an_fp32_model_is_refused_before_decoding(serve_process, repo):
    """15 M empty BYTES elements (60 MB): the datatype is checked against the model first,
    so the refusal names the datatype (before, they were decoded one by one: 8 s with the
    loop frozen)."""
    server = serve_process(repo, "--no-auth")
    body, headers = _bytes_body("x", 15_000_000, [3_750_000, 4])
    r = httpx.post(server.url + "/v2/models/affine/infer", content=body, headers=headers,
                   timeout=60)
    assert r.status_code == 400, r.text
    assert "expected datatype FP32, got BYTES" in r.json()["error"]
    assert server.alive() and _serves(server.url)


def test_bytes_element_count_is_capped(serve_process, repo):
    server = serve_process(repo, "--no-auth", "--max-bytes-elements", "1000")
    body, headers = _bytes_body("s", 5000, [5000])
    r = httpx.post(server.url + "/v2/models/strings/infer", content=body, headers=headers,
                   timeout=60)
    assert r.status_code == 400 and "exceed the limit of 1000" in r.json()["error"], r.text
    # Within the cap it is served (decoded off the loop when large).
    header = json.dumps({"inputs": [{"name": "s", "shape": [3], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 * 3 + 6}}],
                         "outputs": [{"name": "t", "parameters": {"binary_data": False}}]})
    raw = b"".join(struct.pack("<I", 2) + w for w in (b"ab", b"cd", b"ef"))
    r = httpx.post(server.url + "/v2/models/strings/infer", content=header.encode() + raw,
                   headers={"Inference-Header-Content-Length": str(len(header))}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ["ab", "cd", "ef"]
    assert _serves(server.url)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_profile_is_checked_bounded_and_admin_only(serve_process, repo, keys):
    folder, private = keys
    server = serve_process(repo, "--auth-keys", str(folder))

    def token(admin: bool) -> str:
        return mint_token(private, subject="dev", audience="edgecut", issuer="edgecut",
                          models=["*"], admin=admin)

    admin, user = token(True), token(False)

    def profile(body: dict, who: str) -> httpx.Response:
        return httpx.post(server.url + "/v2/models/affine/profile", json=body, timeout=60,
                          headers={"authorization": f"Bearer {who}"})

    assert profile({"runs": 1}, user).status_code == 403
    before = _rss_mb(server.proc.pid)
    # 55 bytes that asked for 125 M elements (RSS 118 -> 1545 MB before).
    r = profile({"runs": 1, "batch": 1, "shapes": {"x": [31250000, 4]}}, admin)
    assert r.status_code == 400 and "exceed the limit" in r.json()["error"], r.text
    assert _rss_mb(server.proc.pid) - before < 50
    r = profile({"shapes": {"x": [1, 5]}}, admin)
    assert r.status_code == 400 and "takes shape" in r.json()["error"], r.text
    r = profile({"shapes": {"nope": [1]}}, admin)
    assert r.status_code == 400 and "no input 'nope'" in r.json()["error"], r.text
    r = profile({"shapes": {"x": [1, 4, 1]}}, admin)
    assert r.status_code == 400
    r = profile({"runs": 2, "shapes": {"x": [3, 4]}}, admin)
    assert r.status_code == 200 and r.json()["nodes"], r.text
    assert _serves(server.url, admin)


def test_one_profile_runs_at_a_time(serve_process, tmp_path):
    root = tmp_path / "repo"
    (root / "slow" / "1").mkdir(parents=True)
    slow_model(root / "slow" / "1" / "model.onnx", size=256, layers=120)
    server = serve_process(root, "--no-auth")
    codes: list[int] = []

    def one() -> None:
        r = httpx.post(server.url + "/v2/models/slow/profile", json={"runs": 20, "batch": 256},
                       timeout=120)
        codes.append(r.status_code)
        if r.status_code == 503:
            assert "already running" in r.json()["error"]

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    assert set(codes) <= {200, 503}
    assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
