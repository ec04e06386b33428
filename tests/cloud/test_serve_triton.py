"""``edgecut serve`` as a Triton user runs it: tritonserver's flag names, EDGECUT_* environment
variables, gRPC beside HTTP, --exit-on-error, --strict-readiness and the exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.cloud.conftest import x_batch
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _start(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(url: str, proc: subprocess.Popen, path: str = "/v2/health/live") -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"edgecut serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("edgecut serve did not come up")


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    return err


def _broken(repo: Path) -> Path:
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    return repo


def test_triton_flags_and_env_vars_serve_http_and_grpc(repo):
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    # tritonserver's flag names; the gRPC port and the thread count from the environment
    proc = _start(["--model-repository", str(repo), "--http-port", str(http_port),
                   "--metrics-port", str(metrics_port), "--no-auth", "--log-verbose", "1"],
                  {"EDGECUT_SERVE_GRPC_PORT": str(grpc_port),
                   "EDGECUT_SERVE_INTRA_OP_THREADS": "1"})
    url = f"http://127.0.0.1:{http_port}"
    try:
        _wait(url, proc, "/v2/health/ready")
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready() and client.is_model_ready("affine")
        x = tg.InferInput("x", [1, 4], "FP32")
        data = x_batch(1)
        x.set_data_from_numpy(data)
        np.testing.assert_allclose(client.infer("affine", [x]).as_numpy("y"), 2 * data + 2.0)
        client.close()
        # Triton's metrics port (8002 in Triton) serves the same text as /metrics
        deadline = time.monotonic() + 10
        line = 'nv_inference_request_success{model="affine",version="2"} 1'
        while time.monotonic() < deadline:
            scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            if line in scrape:
                break
            time.sleep(0.05)
        assert line in scrape and "edgecut_inference_requests_total" in scrape
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err  # SIGTERM: a clean stop, gRPC stopped after HTTP
    levels = {json.loads(line)["level"] for line in err.splitlines() if line.startswith("{")}
    assert "debug" in levels  # --log-verbose 1


def test_exit_on_error_is_status_1_naming_the_model(repo):
    proc = _start(["--model-repository", str(_broken(repo)), "--http-port", str(free_port()),
                   "--no-auth", "--intra-op-threads", "1", "--exit-on-error=true"])
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "1 model(s) failed to load (broken:" in err and "--exit-on-error=false" in err


def test_exit_on_error_false_and_strict_readiness(repo):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(["--model-repository", str(_broken(repo)), "--http-port", str(port),
                   "--no-auth", "--intra-op-threads", "1", "--exit-on-error=false"])
    try:
        _wait(url, proc)
        # strict (Triton's default): not ready while a model failed
        assert httpx.get(url + "/v2/health/ready", timeout=5).status_code == 503
        index = httpx.post(url + "/v2/repository/index", json={}, timeout=5).json()
        assert {e["name"]: e["state"] for e in index}["broken"] == "UNAVAILABLE"
    finally:
        _stop(proc)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(["--model-repository", str(repo), "--http-port", str(port), "--no-auth",
                   "--intra-op-threads", "1", "--exit-on-error", "false",
                   "--strict-readiness", "false"])
    try:
        _wait(url, proc)
        assert httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        _stop(proc)


@pytest.mark.parametrize("args", [
    ["--http-port", "70000"],
    ["--allow-grpc=false", "--grpc-port", "9"],
    ["--no-such-flag"],
])
def test_usage_errors_are_status_2(repo, args):
    proc = _start(["--model-repository", str(repo), "--no-auth", *args])
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err


def test_busy_port_is_status_1(repo):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start(["--model-repository", str(repo), "--no-auth", "--intra-op-threads", "1",
                       "--http-port", str(free_port()), "--grpc-port", str(port)])
        _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert f"cannot serve: cannot bind the gRPC port 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_grpc_only_server_stops_cleanly(repo):
    grpc_port = free_port()
    proc = _start(["--model-repository", str(repo), "--no-auth", "--intra-op-threads", "1",
                   "--allow-http=false", "--grpc-port", str(grpc_port)])
    try:
        client = tg.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if client.is_server_ready():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        x = tg.InferInput("x", [1, 4], "FP32")
        data = x_batch(1)
        x.set_data_from_numpy(data)
        np.testing.assert_allclose(client.infer("affine", [x]).as_numpy("y"), 2 * data + 2.0)
        client.close()
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # SIGTERM: a clean stop
