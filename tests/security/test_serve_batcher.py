"""Batcher isolation: one client's request that fails the model (an out-of-range index)
must not fail the other clients' requests it was batched with. Real `edgecut serve` with
ONNX Runtime and dynamic batching."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np

from cloud import decode_infer_response, encode_infer_request
from tests.edge.conftest import tiny_model


def test_a_bad_request_fails_alone_in_its_batch(serve_process, tmp_path: Path):
    root = tmp_path / "repo"
    (root / "lookup" / "1").mkdir(parents=True)
    tiny_model(root / "lookup" / "1" / "model.onnx", kind="fail_some")  # y = table[int(x)]
    # A long queue delay: the eight requests below are batched together.
    (root / "lookup" / "config.pbtxt").write_text(
        "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 500000 }\n")
    server = serve_process(root, "--no-auth")

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            calls = []
            for i in range(8):
                x = np.full((1, 4), 9.0 if i == 3 else i % 4, np.float32)  # 9: out of range
                body, headers = encode_infer_request({"x": x})
                calls.append(client.post("/v2/models/lookup/infer", content=body,
                                         headers=headers))
            return await asyncio.gather(*calls)

    responses = asyncio.run(send())
    codes = [r.status_code for r in responses]
    assert codes[3] == 500 and "idx=9" in responses[3].json()["error"], codes
    assert codes[:3] + codes[4:] == [200] * 7, codes
    for i, r in enumerate(responses):
        if i != 3:
            y = decode_infer_response(r.content, r.headers)["y"]
            assert y.tolist() == [[float(i % 4 + 1)] * 4]
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    reruns = re.search(r'edgecut_batch_reruns_total\{model="lookup",version="1"\} (\S+)', metrics)
    assert reruns is not None and float(reruns.group(1)) >= 2, metrics[-2000:]
    stats = httpx.get(server.url + "/v2/models/lookup/stats", timeout=10).json()
    assert stats["model_stats"][0]["inference_stats"]["fail"]["count"] == 1
    body, headers = encode_infer_request({"x": np.zeros((1, 4), np.float32)})
    assert httpx.post(server.url + "/v2/models/lookup/infer", content=body, headers=headers,
                      timeout=10).status_code == 200
