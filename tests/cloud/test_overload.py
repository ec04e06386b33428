"""Overload: what cannot be queued gets 503 with a clear body; the rest is served."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from cloud import InferenceService, ModelRuntime, TensorMeta, encode_infer_request


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
