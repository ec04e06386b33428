"""Connection limits a few sockets cannot exhaust, against a real `edgecut serve` process:
slowloris headers, header floods, trickled bodies, one address hogging connections, idle
keep-alive connections, and health while the inference queue is full. Each asserts the
refusal and that other clients are served meanwhile and afterwards."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud import (
    InferenceService,
    ModelRuntime,
    ServerThread,
    TensorMeta,
    create_app,
    encode_infer_request,
)
from tests.cloud.conftest import affine_model, write_version
from tests.security.conftest import raw_connect, read_status, wait_for

# Small limits so that the test waits seconds, not the defaults' tens of seconds.
FAST = ("--no-auth", "--header-timeout", "1", "--body-timeout", "1", "--body-min-rate",
        "1000", "--keep-alive-timeout", "2", "--max-header-bytes", "16384",
        "--max-body-mb", "2", "--max-pending-mb", "4")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_version(root, "affine", 1, affine_model(1.0))
    return root


def _good(url: str) -> bool:
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    r = httpx.post(url + "/v2/models/affine/infer", content=body, headers=headers, timeout=10)
    health = httpx.get(url + "/v2/health/ready", timeout=10)
    return r.status_code == 200 and health.status_code == 200


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_slowloris_headers_time_out_with_408_while_others_are_served(serve_process, repo):
    """520 connections from 40 addresses, each with half a request head: before, every
    request (health included) got 503 while they stayed open."""
    server = serve_process(repo, *FAST)
    socks = []
    for i in range(520):
        s = raw_connect(server.port, source=f"127.0.0.{2 + i % 40}")
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    try:
        assert _good(server.url)  # served while all 520 are open
        statuses = [read_status(s) for s in socks]
        assert statuses.count(408) >= 500, statuses  # (a few may be reset instead)
        assert set(statuses) <= {408, None}
    finally:
        for s in socks:
            s.close()
    assert server.alive() and _good(server.url)


def test_header_flood_gets_431_and_memory_stays_flat(serve_process, repo):
    """4 connections x 32 MB of one header: before, RSS grew with every byte."""
    server = serve_process(repo, *FAST)
    before = _rss_mb(server.proc.pid)
    chunk = b"a" * (1 << 20)
    statuses = []
    for _ in range(4):
        s = raw_connect(server.port)
        try:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(32):
                try:
                    s.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
            statuses.append(read_status(s))
        finally:
            s.close()
    assert statuses == [431] * 4, statuses
    assert _rss_mb(server.proc.pid) - before < 40, (before, _rss_mb(server.proc.pid))
    assert server.alive() and _good(server.url)


def test_trickled_bodies_get_408_and_hold_no_budget(serve_process, repo):
    """8 connections declare a 2 MB body (16 MB, four times the 4 MB budget) and send one
    byte: the budget counts bytes received, so others are served, and each trickler gets
    408 once its body falls behind the minimum rate."""
    server = serve_process(repo, *FAST)
    socks = []
    for i in range(8):
        s = raw_connect(server.port, source=f"127.0.1.{i + 1}")
        s.sendall(b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{")
        socks.append(s)
    try:
        assert _good(server.url)
        statuses = [read_status(s) for s in socks]
        assert statuses == [408] * 8, statuses
    finally:
        for s in socks:
            s.close()
    assert _good(server.url)


def test_one_address_cannot_take_every_connection(serve_process, repo):
    server = serve_process(repo, "--no-auth", "--max-connections-per-client", "16")
    hogs = [raw_connect(server.port, source="127.0.0.9") for _ in range(16)]
    try:
        extra = raw_connect(server.port, source="127.0.0.9")
        extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_status(extra) == 503
        extra.close()
        assert _good(server.url)  # another address is served
        # The hogs' own connections are open and answer.
        hogs[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_status(hogs[0]) == 200
    finally:
        for s in hogs:
            s.close()

    def served_again() -> bool:
        s = raw_connect(server.port, source="127.0.0.9")
        try:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            return read_status(s) == 200
        finally:
            s.close()

    wait_for(served_again, 20, "the address to be served once its connections closed")


def test_idle_keep_alive_connection_is_closed(serve_process, repo):
    server = serve_process(repo, *FAST)
    s = raw_connect(server.port)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_status(s) == 200
    s.settimeout(20)
    closed = b""
    try:
        while True:  # the rest of the answer, then EOF when the server closes it
            chunk = s.recv(4096)
            if not chunk:
                closed = b"eof"
                break
    except ConnectionResetError:
        closed = b"reset"
    finally:
        s.close()
    assert closed in (b"eof", b"reset")
    assert _good(server.url)


class _Blocking(ModelRuntime):
    """A runtime whose every run waits for ``release``: the queue fills and stays full."""

    inputs = (TensorMeta("x", "FP32", (-1, 4)),)
    outputs = (TensorMeta("y", "FP32", (-1, 4)),)
    max_batch_size = 0

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def predict(self, inputs):
        self.started.set()
        self.release.wait(30)
        return {"y": inputs["x"]}


def test_health_answers_while_the_inference_queue_is_full():
    runtime = _Blocking()
    service = InferenceService(None, max_queue_size=2)
    service.add_runtime("blocked", runtime)
    from tests.conftest import free_port

    with ServerThread(create_app(service), port=free_port()) as server:
        body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})

        async def fill() -> list:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                def post() -> asyncio.Future:
                    return asyncio.ensure_future(client.post(
                        "/v2/models/blocked/infer", content=body, headers=headers))

                pending = [post()]  # one running (once the worker took it) ...
                deadline = time.monotonic() + 20
                while not runtime.started.is_set():
                    assert time.monotonic() < deadline, "the first request did not start"
                    await asyncio.sleep(0.02)
                pending += [post(), post()]  # ... and two queued: full
                deadline = time.monotonic() + 20
                while True:  # until all three are in (the gauge of requests in flight)
                    text = (await client.get("/metrics")).text
                    if 'edgecut_requests_in_flight{model="blocked"} 3.0' in text:
                        break
                    assert time.monotonic() < deadline, "the requests did not queue"
                    await asyncio.sleep(0.02)
                refused = await client.post("/v2/models/blocked/infer", content=body,
                                            headers=headers)
                assert refused.status_code == 503 and "queue is full" in refused.json()["error"]
                live = await client.get("/v2/health/live")
                ready = await client.get("/v2/health/ready")
                meta = await client.get("/v2/models/blocked")
                runtime.release.set()
                done = await asyncio.gather(*pending)
                return [live.status_code, ready.status_code, meta.status_code,
                        *[d.status_code for d in done]]

        codes = asyncio.run(fill())
        assert codes == [200] * 6, codes
        r = httpx.post(server.url + "/v2/models/blocked/infer", content=body,
                       headers=headers, timeout=10)
        assert r.status_code == 200
