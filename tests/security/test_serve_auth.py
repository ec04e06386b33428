"""Auth details an attacker would try: admin claims that are merely truthy, numeric claims
no clock can hold, clock skew within the leeway, and /metrics behind a token or on its own
port. Against real servers; each asserts the refusal and that the server keeps serving."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from cloud import (
    InferenceService,
    ServerThread,
    TokenVerifier,
    create_app,
    encode_infer_request,
)
from tests.cloud.conftest import affine_model, write_version
from tests.conftest import free_port


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_version(root, "affine", 1, affine_model(1.0))
    return root


@pytest.fixture
def server(repo, keys):
    folder, _private = keys
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    verifier = TokenVerifier.from_folder(folder, audience="edgecut", issuers=["edgecut"])
    app = create_app(service, verifier=verifier, metrics_require_auth=True)
    with ServerThread(app, port=free_port()) as running:
        yield running
    service.close()


def _sign(keys, **claims) -> str:
    _folder, private = keys
    key = serialization.load_pem_private_key(private, password=None)
    now = int(time.time())
    base = {"sub": "dev", "aud": "edgecut", "iss": "edgecut", "iat": now, "exp": now + 600,
            "jti": uuid.uuid4().hex, "models": ["*"]}
    base.update(claims)
    base = {k: v for k, v in base.items() if v is not None}
    return jwt.encode(base, key, algorithm="ES256")


def _auth(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _serves(url: str, token: str) -> bool:
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    r = httpx.post(url + "/v2/models/affine/infer", content=body,
                   headers={**headers, **_auth(token)}, timeout=10)
    return r.status_code == 200


@pytest.mark.parametrize("admin", ["false", "yes", [0], 1, {"a": 1}])
def test_admin_must_be_json_true(server, keys, admin):
    token = _sign(keys, admin=admin)
    r = httpx.post(server.url + "/v2/repository/models/affine/load", headers=_auth(token),
                   timeout=30)
    assert r.status_code == 401 and "'admin' claim must be true or false" in r.json()["error"]
    assert _serves(server.url, _sign(keys))


def test_admin_true_may_load_and_false_may_not(server, keys):
    url = server.url + "/v2/repository/models/affine/load"
    assert httpx.post(url, headers=_auth(_sign(keys, admin=False)), timeout=30).status_code == 403
    assert httpx.post(url, headers=_auth(_sign(keys, admin=True)), timeout=60).status_code == 200


@pytest.mark.parametrize("claim,value", [("exp", 10**400), ("exp", -(10**400)),
                                         ("iat", 10**400), ("nbf", 10**30), ("exp", 1e300),
                                         ("exp", "tomorrow"), ("exp", True)])
def test_out_of_range_numeric_claims_are_401(server, keys, claim, value):
    token = _sign(keys, **{claim: value})
    r = httpx.get(server.url + "/v2/models/affine", headers=_auth(token), timeout=10)
    assert r.status_code == 401, r.text
    assert claim in r.json()["error"] or "not a time" in r.json()["error"]
    assert _serves(server.url, _sign(keys))


def test_clock_skew_within_the_leeway_is_accepted(server, keys):
    now = int(time.time())
    late = _sign(keys, exp=now - 30, iat=now - 600)  # a device clock 30 s fast
    assert _serves(server.url, late)
    early = _sign(keys, nbf=now + 30)  # a device clock 30 s slow
    assert _serves(server.url, early)
    expired = _sign(keys, exp=now - 120, iat=now - 600)
    r = httpx.get(server.url + "/v2/models/affine", headers=_auth(expired), timeout=10)
    assert r.status_code == 401 and "expired" in r.json()["error"]


def test_metrics_need_a_token_when_asked(server, keys):
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
    r = httpx.get(server.url + "/metrics", headers=_auth(_sign(keys)), timeout=10)
    assert r.status_code == 200 and "edgecut_inference_requests" in r.text


def test_metrics_on_their_own_port(serve_process, repo):
    metrics_port = free_port()
    server = serve_process(repo, "--no-auth", "--metrics-port", str(metrics_port))
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 404
    body, headers = encode_infer_request({"x": np.ones((1, 4), np.float32)})
    assert httpx.post(server.url + "/v2/models/affine/infer", content=body, headers=headers,
                      timeout=10).status_code == 200
    r = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert r.status_code == 200
    assert 'edgecut_inference_requests_total{model="affine",version="1"} 1.0' in r.text
