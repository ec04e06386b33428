"""A repository with bad folders: version folders named with non-ASCII digits and a model
that does not load. Bad version folders are skipped with a warning and shown in the
repository index, never taking the server down; a model that fails to load stops it at
start-up only with --exit-on-error=true (Triton's strict behaviour, opt-in), and by
default the rest is served."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from cloud import encode_infer_request
from tests.cloud.conftest import affine_model, write_version
from tests.conftest import free_port
from tests.security.conftest import ROOT


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    good = write_version(root, "affine", 1, affine_model(1.0))
    for odd in ("\u00b2", "\u0661"):  # superscript two, Arabic-Indic one: isdigit() is True
        (root / "affine" / odd).mkdir()
        shutil.copyfile(good, root / "affine" / odd / "model.onnx")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    write_version(root, "other", 1, affine_model(5.0))
    return root


def test_bad_folders_and_models_are_skipped_and_reported(serve_process, tmp_path):
    server = serve_process(_repo(tmp_path), "--no-auth")  # the default: serve the rest
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    for model in ("affine", "other"):
        r = httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers,
                       timeout=10)
        assert r.status_code == 200, r.text
    index = httpx.post(server.url + "/v2/repository/index", json={}, timeout=10).json()
    reasons = {(e["name"], e.get("version"), e["state"], e["reason"]) for e in index}
    assert ("affine", "1", "READY", "") in reasons
    skipped = [e["reason"] for e in index if e["name"] == "affine" and e["state"] != "READY"]
    assert any("'\u00b2' is not ASCII digits" in why for why in skipped), index
    assert any("'\u0661' is not ASCII digits" in why for why in skipped), index
    broken = [e for e in index if e["name"] == "broken"]
    assert broken and broken[0]["state"] == "UNAVAILABLE" and broken[0]["reason"], index
    # Loading again through the API: a clear 400, not a 500, and the server stays up.
    r = httpx.post(server.url + "/v2/repository/models/affine/load", json={}, timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(server.url + "/v2/repository/models/broken/load", json={}, timeout=60)
    assert r.status_code == 400, r.text
    assert server.alive()
    assert httpx.post(f"{server.url}/v2/models/affine/infer", content=body, headers=headers,
                      timeout=10).status_code == 200


def test_odd_version_folders_alone_do_not_stop_the_server(serve_process, tmp_path):
    """Even with --exit-on-error=true: '²' made `edgecut serve` exit at start."""
    root = _repo(tmp_path)
    shutil.rmtree(root / "broken")
    server = serve_process(root, "--no-auth", "--exit-on-error=true")
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    r = httpx.post(f"{server.url}/v2/models/affine/infer", content=body, headers=headers,
                   timeout=10)
    assert r.status_code == 200 and r.headers["content-type"]
    assert httpx.get(server.url + "/v2/health/ready", timeout=10).status_code == 200


def test_exit_on_error_exits_naming_the_model(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve", "--repository", str(_repo(tmp_path)),
         "--port", str(free_port()), "--no-auth", "--exit-on-error=true", "--log-level",
         "error"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "broken" in done.stderr and "--exit-on-error=false" in done.stderr
