"""Triton's metric family on a real server's /metrics, read by prometheus_client's own text
parser: the counts equal the requests sent over HTTP and gRPC, as a Triton dashboard
would read them."""

from __future__ import annotations

import time

import httpx
import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families

from cloud import InferenceService
from cloud._metrics import TRITON_METRICS
from tests.cloud.conftest import x_batch


def _scrape(url: str) -> dict[tuple[str, str, str], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model, version = sample.labels.get("model"), sample.labels.get("version")
            if family.name.startswith("nv_") and model is not None:
                values[(family.name, model, version)] = sample.value
    return values


def test_nv_inference_counts_equal_requests_sent(repo, stacks):
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    stack = stacks(service)
    http = th.InferenceServerClient(stack.http.url.removeprefix("http://"))
    grpc_client = stack.client()
    sent_http, sent_grpc, batch = 7, 5, 3
    x = x_batch(batch)
    hin = th.InferInput("x", list(x.shape), "FP32")
    hin.set_data_from_numpy(x)
    gin = tg.InferInput("x", list(x.shape), "FP32")
    gin.set_data_from_numpy(x)
    for _ in range(sent_http):
        http.infer("affine", [hin])
    for _ in range(sent_grpc):
        grpc_client.infer("affine", [gin])
    wrong = tg.InferInput("x", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.ones((1, 4)))
    failed = 2
    for _ in range(failed):
        try:
            grpc_client.infer("affine", [wrong], model_version="1")
        except Exception:
            pass
    want = {
        ("nv_inference_request_success", "affine", "2"): sent_http + sent_grpc,
        ("nv_inference_count", "affine", "2"): (sent_http + sent_grpc) * batch,
        ("nv_inference_request_failure", "affine", "1"): failed,
        ("nv_inference_request_success", "affine", "1"): 0,
        ("nv_inference_request_success", "typed", "1"): 0,
    }
    deadline = time.monotonic() + 10  # counters are bumped just after each answer is sent
    while True:
        got = _scrape(stack.http.url)
        if all(got.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for key, value in want.items():
        assert got.get(key) == value, (key, got.get(key))
    # every Triton metric is there for every served version, with Triton's labels only
    for name, _kind, _help in TRITON_METRICS:
        for model, version in (("affine", "1"), ("affine", "2"), ("typed", "1")):
            assert (name, model, version) in got, (name, model, version)
    execs = got[("nv_inference_exec_count", "affine", "2")]
    assert 1 <= execs <= sent_http + sent_grpc
    assert got[("nv_inference_request_duration_us", "affine", "2")] > 0
    assert got[("nv_inference_compute_infer_duration_us", "affine", "2")] > 0
    assert got[("nv_inference_pending_request_count", "affine", "2")] == 0
    # Triton's exact sample names (no _total suffix) beside edgecut's own family
    text = httpx.get(stack.http.url + "/metrics", timeout=10).text
    assert (f'nv_inference_request_success{{model="affine",version="2"}} '
            f"{sent_http + sent_grpc}") in text
    assert "# TYPE nv_inference_request_success counter" in text
    assert 'edgecut_inference_requests_total{model="affine",version="2"}' in text
    http.close()
    grpc_client.close()
