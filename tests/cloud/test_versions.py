"""Versions: policies, default and canary routing, hot load under load, rollback."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from cloud import (
    InferenceService,
    RepositoryError,
    decode_infer_response,
    encode_infer_request,
)
from tests.cloud.conftest import affine_model, write_version, x_batch

X = x_batch(1)
BODY, HEADERS = encode_infer_request({"x": X}, ["y"])


def _bias(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    y = decode_infer_response(response.content, response.headers)["y"]
    return round(float((y - 2 * X).mean()), 3)


def _infer(client: httpx.Client, url: str) -> httpx.Response:
    return client.post(url + "/v2/models/affine/infer", content=BODY, headers=HEADERS)


def test_version_policies(repo):
    cfg = repo / "affine" / "config.pbtxt"
    write_version(repo, "affine", 3, affine_model(3.0))
    service = InferenceService(repo, intra_op_threads=1)
    try:
        service.load("affine")
        assert service.model_metadata("affine")["versions"] == ["2", "3"]
        cfg.write_text("max_batch_size: 8\nversion_policy: { specific: { versions: [1, 3] } }\n")
        service.load("affine")
        assert service.model_metadata("affine")["versions"] == ["1", "3"]
        cfg.write_text("max_batch_size: 8\nversion_policy: { all { } }\n")
        service.load("affine")
        assert service.model_metadata("affine")["versions"] == ["1", "2", "3"]
        cfg.write_text("max_batch_size: 8\nversion_policy: { specific: { versions: [7] } }\n")
        with pytest.raises(RepositoryError, match="no version to load"):
            service.load("affine")
        assert service.model_metadata("affine")["versions"] == ["1", "2", "3"]  # kept serving
        assert service.ready  # a failed reload of a model that still serves keeps readiness
        assert any(e["name"] == "affine" for e in service.index())
    finally:
        service.close()


def test_default_version_and_canary_fraction(repo, serve):
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    server = serve(service)
    with httpx.Client() as client:
        assert _bias(_infer(client, server.url)) == 2.0  # highest version by default
        r = client.post(server.url + "/v2/repository/models/affine/load", json={"parameters": {
            "default_version": "1", "canary_version": "2", "canary_fraction": 0.25}})
        assert r.status_code == 200, r.text
        seen = [_bias(_infer(client, server.url)) for _ in range(40)]
        assert seen.count(2.0) == 10 and seen.count(1.0) == 30
        stats = {s["version"]: s["inference_count"] for s in
                 client.get(server.url + "/v2/models/affine/stats").json()["model_stats"]}
        assert stats["2"] >= 10 and stats["1"] == 30
        metrics = client.get(server.url + "/metrics").text
        assert 'edgecut_inference_requests_total{model="affine",version="1"} 30.0' in metrics
        r = client.post(server.url + "/v2/repository/models/affine/load",
                        json={"parameters": {"canary_version": "9", "canary_fraction": 0.5}})
        assert r.status_code == 400 and "'9'" in r.json()["error"]


def test_config_parameters_set_the_routing(repo):
    (repo / "affine" / "config.pbtxt").write_text(
        "max_batch_size: 8\nversion_policy: { all { } }\n"
        'parameters [ { key: "default_version" value: { string_value: "1" } } ]\n')
    service = InferenceService(repo, intra_op_threads=1)
    try:
        service.load("affine")
        assert service.model_config("affine")["parameters"]["default_version"]["string_value"] == "1"
    finally:
        service.close()


@pytest.mark.slow
def test_hot_load_and_rollback_under_load_lose_no_request(repo, serve):
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    server = serve(service)
    results: list[float | str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    r = _infer(client, server.url)
                    results.append(_bias(r) if r.status_code == 200 else f"{r.status_code} {r.text}")
                except Exception as exc:  # noqa: BLE001 - every failure is a lost request
                    results.append(repr(exc))

    def wait_until(condition, what: str) -> None:
        # Requests are counted, not seconds: a busy host only makes this take longer.
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert condition(), what

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= 20, "traffic on version 2")
        with httpx.Client(timeout=60) as admin:
            write_version(repo, "affine", 3, affine_model(3.0))
            assert admin.post(server.url + "/v2/repository/models/affine/load").status_code == 200
            mark = len(results)
            wait_until(lambda: 3.0 in results[mark:], "traffic on version 3")
            # rollback: unload the newest version, traffic returns to version 2
            r = admin.post(server.url + "/v2/repository/models/affine/unload",
                           json={"parameters": {"version": "3"}})
            assert r.status_code == 200, r.text
            mark = len(results)
            wait_until(lambda: len(results) >= mark + 30, "traffic after the rollback")
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [r for r in results if isinstance(r, str)]
    assert not errors, errors[:5]
    assert len(results) > 50
    assert set(results[mark + 8:]) == {2.0}
    assert set(results) <= {2.0, 3.0}
    np.testing.assert_equal(service.model_metadata("affine")["versions"], ["2"])


def test_a_model_that_cannot_load_is_reported_and_unready(repo):
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    service = InferenceService(repo, intra_op_threads=1)
    try:
        assert service.load_all() == ["affine", "typed"]
        assert not service.ready
        entry = next(e for e in service.index() if e["name"] == "broken")
        assert entry["state"] == "UNAVAILABLE" and "cannot load" in entry["reason"]
        assert service.model_ready("affine")
    finally:
        service.close()
