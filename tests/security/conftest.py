"""Fixtures for attacks on the servers: a second local user, /dev/shm files, raw sockets,
and `edgecut serve` processes started by the test (the attacks that could kill a process
are run against a child process, so a crash is a failed assertion, not a dead pytest)."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def second_user() -> Iterator[pwd.struct_passwd]:
    """A real second uid, made with useradd for the session and removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("these tests create a second user and must run as root")
    name = f"ectest{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def shm_file() -> Iterator[Callable[..., str]]:
    """``make(size, uid=None, mode=0o600) -> key``: a /dev/shm file, removed afterwards."""
    made: list[str] = []

    def make(size: int, uid: int | None = None, mode: int = 0o600) -> str:
        key = f"/ectest-{uuid.uuid4().hex[:12]}"
        path = f"/dev/shm{key}"
        with open(path, "wb") as fh:
            fh.truncate(size)
        os.chmod(path, mode)
        if uid is not None:
            os.chown(path, uid, -1)
        made.append(path)
        return key

    yield make
    for path in made:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ectest-"))
    os.chmod(path, 0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "k.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return folder, private


class ServeProcess:
    """`edgecut serve` in a child process, with its URL and a liveness check."""

    def __init__(self, repo: Path, args: tuple[str, ...] = (), host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="ectest-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "serve", "--repository", str(repo),
             "--host", host, "--port", str(self.port), "--intra-op-threads", "1",
             "--no-ort-spinning", "--log-level", "info", *args],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgecut serve exited ({self.proc.returncode}): "
                                   + self.output()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("edgecut serve did not start: " + self.output()[-2000:])
            try:
                if httpx.get(self.url + "/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.unlink(self.log.name)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(repo: Path, *args: str, host: str = "127.0.0.1") -> ServeProcess:
        server = ServeProcess(repo, tuple(args), host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def raw_connect(port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection from ``source`` (any 127.x address works on Linux loopback)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(30)
    s.connect((host, port))
    return s


def read_status(sock: socket.socket) -> int | None:
    """The status code of the next response on ``sock``; None if it closed first."""
    data = b""
    while b"\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return None
        if not chunk:
            return None
        data += chunk
    return int(data.split(b" ", 2)[1])


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# A client for another uid: a child process (run as that user) that speaks HTTP over a
# Unix socket with the standard library only and prints {"status", "body"} per request.
_UDS_CLIENT = r"""
import json, socket, sys
path, requests = sys.argv[1], json.loads(sys.argv[2])
out = []
for method, target, body in requests:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    data = b"" if body is None else json.dumps(body).encode()
    s.sendall(f"{method} {target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data)
    raw = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    out.append({"status": int(head.split(b" ", 2)[1]), "body": payload.decode("latin-1")})
print(json.dumps(out))
"""


# The test's own interpreter may live where other users cannot reach (root's pyenv); the
# child needs only the standard library.
_SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                       if os.access(p, os.X_OK)), sys.executable)


def uds_requests_as(user: pwd.struct_passwd, socket_path: str,
                    requests: list[tuple[str, str, object]]) -> list[dict]:
    """Send ``requests`` ``(method, target, json body or None)`` over the Unix socket as
    ``user``; their answers ``{"status", "body"}``."""
    done = subprocess.run(
        [_SYSTEM_PYTHON, "-I", "-c", _UDS_CLIENT, socket_path, json.dumps(requests)],
        user=user.pw_uid, group=user.pw_gid, capture_output=True, text=True, timeout=60,
        cwd="/")
    if done.returncode != 0:
        raise AssertionError(f"client as {user.pw_name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)
