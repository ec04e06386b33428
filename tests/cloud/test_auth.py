"""Bearer-token auth against a real server: every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest

from cloud import InferenceService, encode_infer_request, mint_token
from tests.cloud.conftest import x_batch


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over):
    now = int(time.time())
    claims = {"sub": "dev-1", "aud": "edgecut-test", "iss": "fleet", "iat": now,
              "exp": now + 600, "models": ["affine"]}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict, claims: dict) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


@pytest.fixture
def auth_server(repo, serve, verifier):
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    return serve(service, verifier=verifier)


def _infer(server, token: str | None, model: str = "affine") -> httpx.Response:
    body, headers = encode_infer_request({"x": x_batch(1)})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers)


def _token(keys, key="ec", **kw):
    args = dict(subject="dev-1", audience="edgecut-test", issuer="fleet", models=["affine"])
    args.update(kw)
    return mint_token(keys[key], **args)


def test_valid_tokens_ec_and_rsa(auth_server, keys):
    assert _infer(auth_server, _token(keys)).status_code == 200
    assert _infer(auth_server, _token(keys, "rsa")).status_code == 200
    assert _infer(auth_server, _token(keys, models=["*"]), "affine").status_code == 200
    assert _infer(auth_server, _token(keys, models=["aff*"])).status_code == 200


def test_health_is_open_the_rest_is_not(auth_server):
    assert httpx.get(auth_server.url + "/v2/health/live").status_code == 200
    assert httpx.get(auth_server.url + "/v2/health/ready").status_code == 200
    assert httpx.get(auth_server.url + "/v2").status_code == 401
    assert httpx.get(auth_server.url + "/v2/models/affine").status_code == 401


@pytest.mark.parametrize("case,expect", [
    ("missing", "missing bearer token"),
    ("not-bearer", "Bearer"),
    ("garbage", "malformed token"),
    ("expired", "expired"),
    ("not-yet-valid", "not valid yet"),
    ("wrong-audience", "audience"),
    ("wrong-issuer", "issuer"),
    ("no-exp", "'exp'"),
    ("wrong-key", "does not match"),
    ("alg-none", "not accepted"),
    ("hs256-with-public-key", "not accepted"),
])
def test_bad_tokens_get_401(auth_server, keys, case, expect):
    now = time.time()
    headers = {}
    body, base = encode_infer_request({"x": x_batch(1)})
    if case == "missing":
        token = None
    elif case == "not-bearer":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
        token = None
    elif case == "garbage":
        token = "abc.def"
    elif case == "expired":
        token = _token(keys, ttl_s=60, now=now - 3600)
    elif case == "not-yet-valid":
        token = _token(keys, not_before_s=600)
    elif case == "wrong-audience":
        token = _token(keys, audience="someone-else")
    elif case == "wrong-issuer":
        token = _token(keys, issuer="mallory")
    elif case == "no-exp":
        import jwt
        from cryptography.hazmat.primitives import serialization
        key = serialization.load_pem_private_key(keys["ec"], None)
        token = jwt.encode(_claims(exp=None), key, algorithm="ES256")
    elif case == "wrong-key":
        token = _token(keys, "stranger")
    elif case == "alg-none":
        token = _unsigned({"alg": "none", "typ": "JWT"}, _claims()) + "."
    else:  # HS256 with the server's public key as the HMAC secret (the classic confusion)
        signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims())
        sig = hmac.new(keys["ec_public"], signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(sig)}"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    r = httpx.post(auth_server.url + "/v2/models/affine/infer", content=body,
                   headers={**base, **headers})
    assert r.status_code == 401, (case, r.text)
    assert expect in r.json()["error"], (case, r.json())


def test_model_out_of_scope_gets_403(auth_server, keys):
    r = _infer(auth_server, _token(keys, models=["typed"]))
    assert r.status_code == 403 and "'affine'" in r.json()["error"]
    r = httpx.get(auth_server.url + "/v2/models/affine",
                  headers={"Authorization": "Bearer " + _token(keys, models=["typed"])})
    assert r.status_code == 403


def test_repository_changes_need_admin(auth_server, keys):
    plain = {"Authorization": "Bearer " + _token(keys, models=["*"])}
    admin = {"Authorization": "Bearer " + _token(keys, models=["*"], admin=True)}
    url = auth_server.url + "/v2/repository/models/typed/unload"
    assert httpx.post(url, headers=plain).status_code == 403
    assert httpx.post(url, headers=admin).status_code == 200
    index = httpx.post(auth_server.url + "/v2/repository/index",
                       headers={"Authorization": "Bearer " + _token(keys, models=["affine"])}).json()
    assert {e["name"] for e in index} == {"affine"}  # the index shows only what is in scope
