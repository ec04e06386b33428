"""``edgecut token`` and ``edgecut serve`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from cloud import TokenVerifier, encode_infer_request
from edge.cli import cli
from tests.cloud.conftest import x_batch
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_token_command_mints_a_verifiable_token(keys):
    result = CliRunner().invoke(cli, [
        "token", "--key", str(keys["ec_private_path"]), "--sub", "jetson-7", "--aud", "edgecut-test",
        "--iss", "fleet", "--models", "resnet50,squeezenet*", "--ttl", "120"])
    assert result.exit_code == 0, result.output
    verifier = TokenVerifier.from_folder(keys["folder"], audience="edgecut-test", issuers=["fleet"])
    principal = verifier.verify("Bearer " + result.output.strip())
    assert principal.subject == "jetson-7"
    assert principal.may_use("squeezenet.tail.4") and not principal.may_use("vgg19")


def test_token_command_rejects_a_public_key(keys, tmp_path):
    public = tmp_path / "pub.pem"
    public.write_bytes(keys["ec_public"])
    result = CliRunner().invoke(cli, ["token", "--key", str(public), "--sub", "d", "--models", "*"])
    assert result.exit_code != 0 and "private key" in result.output


def _wait_live(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("edgecut serve did not become ready")


def test_serve_command_with_auth(repo, keys):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", "--repository", str(repo), "--port", str(port),
         "--auth-keys", str(keys["folder"]), "--audience", "edgecut-test", "--issuer", "fleet",
         "--intra-op-threads", "1"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_live(url, proc)
        token = CliRunner().invoke(cli, [
            "token", "--key", str(keys["ec_private_path"]), "--sub", "d1", "--aud", "edgecut-test",
            "--iss", "fleet", "--models", "affine"]).output.strip()
        body, headers = encode_infer_request({"x": x_batch(1)})
        r = httpx.post(url + "/v2/models/affine/infer", content=body, headers=headers)
        assert r.status_code == 401
        r = httpx.post(url + "/v2/models/affine/infer", content=body,
                       headers={**headers, "Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # structured logs: JSON lines, one of them saying what was loaded
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e.get("msg", "").startswith("serving 2 models") for e in lines), err[-2000:]


def test_serve_refuses_to_run_open_without_saying_so(repo):
    result = CliRunner().invoke(cli, ["serve", "--repository", str(repo)])
    assert result.exit_code != 0 and "--no-auth" in result.output
