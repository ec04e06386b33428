"""Shared memory cannot be turned against anyone: attacks on `edgecut serve`'s system shared
memory extension (real /dev/shm files, a second real uid, real sockets). Each asserts the
refusal and that the server keeps serving other clients afterwards."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud import InferenceService, ServerThread, create_app, mint_token
from cloud.protocol import decode_infer_response
from tests.cloud.conftest import affine_model, write_version
from tests.security.conftest import uds_requests_as


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_version(root, "affine", 1, affine_model(1.0))
    return root


def _register(url: str, name: str, key: str, size: int, token: str | None = None,
              offset: int = 0) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v2/systemsharedmemory/region/{name}/register",
                      json={"key": key, "offset": offset, "byte_size": size},
                      headers=headers, timeout=10)


def _infer_shm(url: str, region: str, out_region: str | None = None,
               token: str | None = None) -> httpx.Response:
    message: dict = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                 "parameters": {"shared_memory_region": region,
                                                "shared_memory_byte_size": 16}}],
                     "parameters": {"binary_data_output": True}}
    if out_region is not None:
        message["outputs"] = [{"name": "y", "parameters": {
            "shared_memory_region": out_region, "shared_memory_byte_size": 16}}]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v2/models/affine/infer", json=message, headers=headers,
                      timeout=10)


def _serves(url: str, token: str | None = None) -> bool:
    """A plain (non-shm) inference answered correctly: the server serves other clients."""
    x = [[1.0, 2.0, 3.0, 4.0]]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = httpx.post(f"{url}/v2/models/affine/infer", headers=headers, timeout=10, json={
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x}]})
    return r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def _put(key: str, values: list[float]) -> None:
    with open(f"/dev/shm{key}", "r+b") as fh:
        fh.write(np.asarray(values, np.float32).tobytes())


def test_symlink_to_a_file_is_refused_and_not_written(serve_process, repo, tmp_path,
                                                      shm_file):
    server = serve_process(repo, "--no-auth")
    target = tmp_path / "precious"
    target.write_bytes(b"\x00" * 64)
    link = f"/dev/shm/ectest-link-{os.getpid()}"
    os.symlink("/etc/passwd", link)
    os.symlink(target, link + "2")
    try:
        for name in (link, link + "2"):
            r = _register(server.url, "evil", "/" + os.path.basename(name), 16)
            assert r.status_code == 400 and "symbolic link" in r.json()["error"], r.text
        assert httpx.get(server.url + "/v2/systemsharedmemory/status").json() == []
    finally:
        os.unlink(link)
        os.unlink(link + "2")
    assert target.read_bytes() == b"\x00" * 64
    assert _serves(server.url) and server.alive()


def test_fifo_under_a_key_is_refused_without_hanging(serve_process, repo):
    server = serve_process(repo, "--no-auth")
    path = f"/dev/shm/ectest-fifo-{os.getpid()}"
    os.mkfifo(path)
    try:
        r = _register(server.url, "fifo", "/" + os.path.basename(path), 16)
        assert r.status_code == 400 and "not a regular file" in r.json()["error"], r.text
    finally:
        os.unlink(path)
    assert _serves(server.url)


def test_another_users_file_is_refused_over_tcp(serve_process, repo, shm_file, second_user):
    """A 0600 file of another uid: the server (root) could open it, so it must not."""
    server = serve_process(repo, "--no-auth")
    theirs = shm_file(64, uid=second_user.pw_uid)
    _put(theirs, [9.0, 9.0, 9.0, 9.0])
    r = _register(server.url, "stolen", theirs, 16)
    assert r.status_code == 400, r.text
    assert f"belongs to uid {second_user.pw_uid}" in r.json()["error"]
    # An allow-list names the owners TCP clients may use.
    allowed = serve_process(repo, "--no-auth", "--shm-allow-uid", str(second_user.pw_uid))
    assert _register(allowed.url, "theirs", theirs, 16).status_code == 200
    assert _serves(server.url) and _serves(allowed.url)


def test_truncated_region_is_a_400_not_a_sigbus(serve_process, repo, shm_file):
    """Register 64 KiB, truncate the file to 0, infer from it and into it: the server
    answers 400 naming the region and lives (it used to die of SIGBUS, silently)."""
    server = serve_process(repo, "--no-auth")
    key = shm_file(64 * 1024)
    _put(key, [1.0, 2.0, 3.0, 4.0])
    assert _register(server.url, "victim", key, 64 * 1024).status_code == 200
    out_key = shm_file(4096)
    assert _register(server.url, "out", out_key, 4096).status_code == 200
    ok = _infer_shm(server.url, "victim")
    assert ok.status_code == 200, ok.text
    os.truncate(f"/dev/shm{key}", 0)
    os.truncate(f"/dev/shm{out_key}", 0)
    for _ in range(10):  # ten times: under systemd's start limit this left the agent down
        r = _infer_shm(server.url, "victim")
        assert r.status_code == 400 and "'victim'" in r.json()["error"], r.text
        assert "truncated" in r.json()["error"]
    with open(f"/dev/shm{key}", "r+b") as fh:
        fh.truncate(64 * 1024)
    _put(key, [1.0, 2.0, 3.0, 4.0])
    r = _infer_shm(server.url, "victim", out_region="out")
    assert r.status_code == 400 and "'out'" in r.json()["error"], r.text
    assert os.path.getsize(f"/dev/shm{out_key}") == 0  # never grown back by the server
    assert server.alive() and _serves(server.url)
    assert _infer_shm(server.url, "victim").status_code == 200


def test_regions_belong_to_the_token_that_registered_them(serve_process, repo, shm_file, keys):
    """Tenant A's token cannot list, read, write or unregister tenant B's region."""
    folder, private = keys
    server = serve_process(repo, "--auth-keys", str(folder))
    a = mint_token(private, subject="tenant-a", audience="edgecut", issuer="edgecut",
                   models=["affine"])
    b = mint_token(private, subject="tenant-b", audience="edgecut", issuer="edgecut",
                   models=["affine"])
    key_b = shm_file(64)
    _put(key_b, [5.0, 6.0, 7.0, 8.0])
    assert _register(server.url, "secret", key_b, 64, token=b).status_code == 200
    status_a = httpx.get(server.url + "/v2/systemsharedmemory/status",
                         headers={"authorization": f"Bearer {a}"}).json()
    assert status_a == []
    r = httpx.get(server.url + "/v2/systemsharedmemory/region/secret/status",
                  headers={"authorization": f"Bearer {a}"})
    assert r.status_code == 404
    r = _infer_shm(server.url, "secret", token=a)
    assert r.status_code == 400 and "not registered" in r.json()["error"]
    r = _infer_shm(server.url, "mine", out_region="secret", token=a)
    assert r.status_code == 400
    for path in ("/v2/systemsharedmemory/region/secret/unregister",
                 "/v2/systemsharedmemory/unregister"):
        assert httpx.post(server.url + path,
                          headers={"authorization": f"Bearer {a}"}).status_code == 200
    # B's region is still there, its bytes untouched, and B reads it.
    status_b = httpx.get(server.url + "/v2/systemsharedmemory/status",
                         headers={"authorization": f"Bearer {b}"}).json()
    assert [s["name"] for s in status_b] == ["secret"]
    with open(f"/dev/shm{key_b}", "rb") as fh:
        assert np.frombuffer(fh.read(16), np.float32).tolist() == [5.0, 6.0, 7.0, 8.0]
    r = _infer_shm(server.url, "secret", token=b)
    assert r.status_code == 200
    y = decode_infer_response(r.content, r.headers)["y"]
    assert y.tolist() == [[11.0, 13.0, 15.0, 17.0]]
    # A may use the same name for a region of its own (one namespace per principal).
    key_a = shm_file(64)
    assert _register(server.url, "secret", key_a, 64, token=a).status_code == 200
    assert _serves(server.url, token=a)


def test_unix_socket_peers_may_use_only_their_own_files(repo, shm_file, second_user,
                                                        public_dir):
    """Over a Unix socket the kernel names the peer (SO_PEERCRED): a second user may
    register its own file, not root's, and cannot see or use root's regions (nor root
    theirs)."""
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    sock = str(public_dir / "api.sock")
    app = create_app(service, shared_memory=True)
    with ServerThread(app, uds=sock) as _server:
        transport = httpx.HTTPTransport(uds=sock)
        root_client = httpx.Client(transport=transport, base_url="http://local", timeout=10)
        roots = shm_file(64)
        _put(roots, [1.0, 1.0, 1.0, 1.0])
        assert root_client.post("/v2/systemsharedmemory/region/app/register", json={
            "key": roots, "byte_size": 64}).status_code == 200
        theirs = shm_file(64, uid=second_user.pw_uid)
        _put(theirs, [2.0, 2.0, 2.0, 2.0])
        infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {
            "shared_memory_region": "app", "shared_memory_byte_size": 16}}],
            "outputs": [{"name": "y", "parameters": {
                "shared_memory_region": "app", "shared_memory_byte_size": 16}}]}
        answers = uds_requests_as(second_user, sock, [
            ("POST", "/v2/systemsharedmemory/region/r/register", {"key": roots, "byte_size": 64}),
            ("GET", "/v2/systemsharedmemory/status", None),
            ("POST", "/v2/models/affine/infer", infer),
            ("POST", "/v2/systemsharedmemory/region/app/unregister", None),
            ("POST", "/v2/systemsharedmemory/region/own/register", {"key": theirs, "byte_size": 64}),
            ("GET", "/v2/systemsharedmemory/status", None),
        ])
        assert answers[0]["status"] == 400 and "belongs to uid 0" in answers[0]["body"]
        assert json.loads(answers[1]["body"]) == []
        assert answers[2]["status"] == 400 and "not registered" in answers[2]["body"]
        assert answers[3]["status"] == 200  # a no-op: root's 'app' is not theirs
        assert answers[4]["status"] == 200, answers[4]
        assert [s["name"] for s in json.loads(answers[5]["body"])] == ["own"]
        # Root's region is intact and root still cannot see the other user's.
        assert [s["name"] for s in root_client.get("/v2/systemsharedmemory/status").json()] \
            == ["app"]
        with open(f"/dev/shm{roots}", "rb") as fh:
            assert np.frombuffer(fh.read(16), np.float32).tolist() == [1.0] * 4
        r = root_client.post("/v2/models/affine/infer", json={
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                        "data": [[1, 2, 3, 4]]}]})
        assert r.status_code == 200
        root_client.close()


def test_remote_peer_cannot_name_a_local_region(repo, shm_file):
    """A server on every address: a peer on another address (this host's non-loopback
    address stands in for another host) cannot register, nor infer naming a region."""
    addresses = [a for a in socket.gethostbyname_ex(socket.gethostname())[2]
                 if not a.startswith("127.")]
    if not addresses:
        out = os.popen("hostname -I").read().split()
        addresses = [a for a in out if ":" not in a]
    assert addresses, "the test needs a non-loopback IPv4 address on this host"
    remote = addresses[0]
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    from tests.conftest import free_port

    port = free_port()
    app = create_app(service, shared_memory=True)
    with ServerThread(app, host="0.0.0.0", port=port):
        local = f"http://127.0.0.1:{port}"
        key = shm_file(64)
        _put(key, [1.0, 2.0, 3.0, 4.0])
        assert _register(local, "app", key, 64).status_code == 200
        far = f"http://{remote}:{port}"
        assert _register(far, "mine", key, 64).status_code == 403
        r = _infer_shm(far, "app", out_region="app")
        assert r.status_code == 403, r.text
        with open(f"/dev/shm{key}", "rb") as fh:
            assert np.frombuffer(fh.read(16), np.float32).tolist() == [1.0, 2.0, 3.0, 4.0]
        assert _serves(far) and _infer_shm(local, "app").status_code == 200
    time.sleep(0)  # (nothing to wait for: the server stopped with the block)
