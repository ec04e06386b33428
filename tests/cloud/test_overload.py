"""Overload: what cannot be queued gets 503 with a clear body; the rest is served."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud import InferenceService, ModelRuntime, TensorMeta, encode_infer_request
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


class SlowRuntime(ModelRuntime):
    """A real runtime (the service's contract) that takes 20 ms per batch: capacity is known."""

    inputs = (TensorMeta("x", "FP32", (-1, 4)),)
    outputs = (TensorMeta("y", "FP32", (-1, 4)),)
    max_batch_size = 4

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, inputs):
        time.sleep(0.02)
        self.batches.append(len(inputs["x"]))
        return {"y": inputs["x"] + 1}


async def _blast(url: str, n: int, body: bytes, headers: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        return await asyncio.gather(*(client.post("/v2/models/slow/infer", content=body,
                                                  headers=headers) for _ in range(n)))


def test_overload_gets_503_and_the_rest_is_served(serve):
    runtime = SlowRuntime()
    service = InferenceService(None, max_queue_size=8)
    service.add_runtime("slow", runtime, dynamic_batching=True)
    server = serve(service)
    x = np.ones((1, 4), np.float32)
    body, headers = encode_infer_request({"x": x})
    responses = asyncio.run(_blast(server.url, 80, body, headers))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) >= 8
    refused = next(r for r in responses if r.status_code == 503)
    assert "queue is full" in refused.json()["error"]
    # every batch respected the maximum, and batching happened under the load
    assert max(runtime.batches) <= 4 and max(runtime.batches) > 1
    # and it serves normally afterwards
    r = httpx.post(server.url + "/v2/models/slow/infer", content=body, headers=headers)
    assert r.status_code == 200


def test_in_flight_limit_refuses_before_reading_bodies(serve):
    service = InferenceService(None, max_queue_size=1000)
    service.add_runtime("slow", SlowRuntime(), dynamic_batching=False)
    server = serve(service, max_in_flight=4)
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    responses = asyncio.run(_blast(server.url, 40, body, headers))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503}
    assert any("limit of 4 requests" in r.json()["error"] for r in responses if r.status_code == 503)


def test_custom_runtime_failure_is_500_and_server_survives(serve):
    class Broken(SlowRuntime):
        def predict(self, inputs):
            raise RuntimeError("sensor unplugged")

    service = InferenceService(None)
    service.add_runtime("slow", Broken())
    server = serve(service)
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    r = httpx.post(server.url + "/v2/models/slow/infer", content=body, headers=headers)
    assert r.status_code == 500 and "sensor unplugged" in r.json()["error"]
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_overload_keeps_server_memory_bounded(zoo_model, tmp_path):
    """300 clients send 600 KB tensors at once to a squeezenet that serves ~100/s here:
    the server refuses what it cannot hold and its memory stays within its budgets."""
    repo = tmp_path / "repo"
    (repo / "squeezenet" / "1").mkdir(parents=True)
    shutil.copyfile(zoo_model("squeezenet"), repo / "squeezenet" / "1" / "model.onnx")
    (repo / "squeezenet" / "config.pbtxt").write_text(
        "max_batch_size: 4\ndynamic_batching { default_queue_policy { max_queue_size: 8 } }\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", "--repository", str(repo), "--port", str(port),
         "--no-auth", "--intra-op-threads", "1", "--max-pending-mb", "16", "--max-body-mb", "2",
         "--log-level", "error"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        body, headers = encode_infer_request({"data_0": x})
        httpx.post(url + "/v2/models/squeezenet/infer", content=body, headers=headers, timeout=30)
        baseline = _rss_mb(proc.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(_rss_mb(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()

        async def blast() -> list:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
                return await asyncio.gather(*(
                    client.post("/v2/models/squeezenet/infer", content=body, headers=headers)
                    for _ in range(300)), return_exceptions=True)

        try:
            responses = asyncio.run(blast())
        finally:
            done.set()
            sampler.join()
        codes = [getattr(r, "status_code", repr(r)) for r in responses]
        assert set(codes) <= {200, 503}, [c for c in codes if c not in (200, 503)][:3]
        assert codes.count(503) > 0 and codes.count(200) > 0
        # 180 MB were offered; the server may hold 16 MB of bodies plus what uvicorn
        # buffers ahead of it and ONNX Runtime's arena for a batch of 4.
        print(f"server RSS {baseline:.0f} MB -> peak {max(peak):.0f} MB; {codes.count(503)} x 503")
        assert max(peak) - baseline < 120, (baseline, max(peak))
        r = httpx.post(url + "/v2/models/squeezenet/infer", content=body, headers=headers, timeout=30)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
