"""The agent's local API against hostile local users and, with the API on every address,
hostile hosts: shared memory by uid and address, truncated regions, and slow headers. The
agent runs in this process (real sockets, a real second uid, real /dev/shm files)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import numpy as np

from edge.agent._daemon import Agent, AgentServer
from tests.conftest import free_port
from tests.edge.conftest import tiny_model, write_agent_config
from tests.security.conftest import raw_connect, read_status, uds_requests_as


def _agent(tmp_path: Path, sock: Path, host: str = "127.0.0.1") -> tuple[Agent, int]:
    port = free_port()
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             api_port=port, unix_socket=str(sock))
    text = cfg.read_text().replace("[api]\n", f'[api]\nhost = "{host}"\nheader_timeout_s = 1.0\n')
    cfg.write_text(text)
    return Agent(cfg), port


def _put(key: str, values: list[float]) -> None:
    with open(f"/dev/shm{key}", "r+b") as fh:
        fh.write(np.asarray(values, np.float32).tobytes())


def _read(key: str) -> list[float]:
    with open(f"/dev/shm{key}", "rb") as fh:
        return np.frombuffer(fh.read(16), np.float32).tolist()


def _shm_infer(region: str) -> dict:
    params = {"shared_memory_region": region, "shared_memory_byte_size": 16}
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": params}],
            "outputs": [{"name": "y", "parameters": params}]}


def _non_loopback() -> str:
    for line in os.popen("hostname -I").read().split():
        if ":" not in line and not line.startswith("127."):
            return line
    raise AssertionError("the test needs a non-loopback IPv4 address on this host")


def test_agent_regions_are_bound_to_uid_and_host(tmp_path, public_dir, shm_file, second_user):
    sock = public_dir / "agent.sock"
    agent, port = _agent(tmp_path, sock, host="0.0.0.0")
    with AgentServer(agent):
        os.chmod(sock, 0o666)  # the operator lets every local user reach the API
        app = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                           base_url="http://agent", timeout=10)
        mine = shm_file(64)
        _put(mine, [1.0, 2.0, 3.0, 4.0])
        assert app.post("/v2/systemsharedmemory/region/app/register",
                        json={"key": mine, "byte_size": 64}).status_code == 200
        theirs = shm_file(64, uid=second_user.pw_uid)
        answers = uds_requests_as(second_user, str(sock), [
            ("POST", "/v2/systemsharedmemory/region/x/register", {"key": mine, "byte_size": 64}),
            ("POST", "/v2/models/tiny/infer", _shm_infer("app")),
            ("POST", "/v2/systemsharedmemory/unregister", None),
            ("POST", "/v2/systemsharedmemory/region/own/register",
             {"key": theirs, "byte_size": 64}),
        ])
        assert answers[0]["status"] == 400 and "belongs to uid 0" in answers[0]["body"]
        assert answers[1]["status"] == 400 and "not registered" in answers[1]["body"]
        assert answers[2]["status"] == 200 and answers[3]["status"] == 200
        # Another host (this host's own non-loopback address stands in for one).
        far = f"http://{_non_loopback()}:{port}"
        r = httpx.post(far + "/v2/systemsharedmemory/region/x/register",
                       json={"key": mine, "byte_size": 64}, timeout=10)
        assert r.status_code == 403
        r = httpx.post(far + "/v2/models/tiny/infer", json=_shm_infer("app"), timeout=10)
        assert r.status_code == 403, r.text
        assert _read(mine) == [1.0, 2.0, 3.0, 4.0]
        # The app's region is its own and still works; so does the other host, without shm.
        status = app.get("/v2/systemsharedmemory/status").json()
        assert [s["name"] for s in status] == ["app"]
        r = app.post("/v2/models/tiny/infer", json=_shm_infer("app"))
        assert r.status_code == 200, r.text
        assert _read(mine) == [2.0, 4.0, 6.0, 8.0]
        r = httpx.post(far + "/v2/models/tiny/infer", timeout=10, json={"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 1, 1, 1]]}]})
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0] * 4
        app.close()


def test_agent_survives_a_truncated_region_and_slow_headers(tmp_path, public_dir, shm_file):
    sock = public_dir / "agent.sock"
    agent, port = _agent(tmp_path, sock)
    with AgentServer(agent):
        app = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                           base_url="http://agent", timeout=10)
        key = shm_file(64 * 1024)
        _put(key, [1.0, 2.0, 3.0, 4.0])
        assert app.post("/v2/systemsharedmemory/region/r/register",
                        json={"key": key, "byte_size": 64 * 1024}).status_code == 200
        assert app.post("/v2/models/tiny/infer", json=_shm_infer("r")).status_code == 200
        os.truncate(f"/dev/shm{key}", 0)
        for _ in range(10):
            r = app.post("/v2/models/tiny/infer", json=_shm_infer("r"))
            assert r.status_code == 400 and "'r'" in r.json()["error"], r.text
        slow = [raw_connect(port) for _ in range(20)]
        for s in slow:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        unix_slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix_slow.settimeout(30)
        unix_slow.connect(str(sock))
        unix_slow.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        r = app.post("/v2/models/tiny/infer", json={"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]})
        assert r.status_code == 200  # served while they hang
        assert [read_status(s) for s in slow] == [408] * 20
        assert read_status(unix_slow) == 408
        for s in (*slow, unix_slow):
            s.close()
        assert json.loads(app.get("/v2/health/ready").text)["ready"] is True
        app.close()
