"""``edge.Client``'s transport against a scripted HTTP/1.1 server on a real socket: keep-alive
reuse, chunked bodies, a keep-alive connection the server closed (sent again once), a
response broken off half way or malformed (an error, not sent again), ``Connection:
close``; with httptools and with the standard library's ``http.client``."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import edge._transport as transport_mod
from devices.errors import CloudUnavailable
from edge import Client
from tests.conftest import serve_connections

OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Thing: a b\r\n"
      b"Content-Length: 13\r\n\r\n{\"live\":true}")
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


class ScriptedServer:
    """Answers each request with ``script(n, method, path, headers, body)``: bytes to send,
    or ``None`` to close the connection without answering. ``close_after`` closes a
    connection after it has answered that many requests (a server's keep-alive limit)."""

    def __init__(self, script: Callable[..., bytes | None], family: int, address: object,
                 close_after: int | None = None) -> None:
        self.script = script
        self.close_after = close_after
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.address = self.sock.getsockname()
        serve_connections(self.sock, self._connection)

    def _connection(self, conn: socket.socket) -> None:
        self.connections += 1
        buf = b""
        answered = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip()
                           for k, v in (line.split(":", 1) for line in lines[1:])}
                size = int(headers.get("content-length", "0"))
                while len(buf) < size:
                    buf += conn.recv(65536)
                body, buf = buf[:size], buf[size:]
                self.requests.append((method, path, headers, body))
                reply = self.script(len(self.requests) - 1, method, path, headers, body)
                if reply is None:
                    return
                conn.sendall(reply)
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["httptools", "http.client"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "http.client":
        monkeypatch.setattr(transport_mod, "_httptools_module", None)
    else:
        assert transport_mod._httptools() is not None  # the fast extra is part of make test
    return request.param


@pytest.fixture(params=["tcp", "unix"])
def serve(request: pytest.FixtureRequest, tmp_path: Path
          ) -> Iterator[Callable[..., tuple[ScriptedServer, str]]]:
    servers: list[ScriptedServer] = []

    def start(script: Callable[..., bytes | None], **kw: object) -> tuple[ScriptedServer, str]:
        if request.param == "tcp":
            srv = ScriptedServer(script, socket.AF_INET, ("127.0.0.1", 0), **kw)
            url = f"http://127.0.0.1:{srv.address[1]}"
        else:
            path = tmp_path / f"s{len(servers)}.sock"
            srv = ScriptedServer(script, socket.AF_UNIX, str(path), **kw)
            url = f"unix://{path}"
        servers.append(srv)
        return srv, url

    yield start
    for srv in servers:
        srv.close()


def test_keep_alive_headers_and_bodies(transport: str, serve: Callable) -> None:
    srv, url = serve(lambda n, *_: OK if n % 2 == 0 else CHUNKED)
    with Client(url, headers={"Authorization": "Bearer t0k"}) as client:
        status, data, headers = client._request("POST", "/v2/models/m/infer", b"x" * 100_000,
                                                {"Content-Type": "application/octet-stream"})
        assert (status, data) == (200, b'{"live":true}')
        assert headers["x-thing"] == "a b" and headers["content-type"] == "application/json"
        status, data, _ = client._request("GET", "/v2")
        assert (status, data) == (200, b"hello world")  # chunked, decoded
    assert srv.connections == 1  # both on one keep-alive connection
    (m1, p1, h1, b1), (m2, p2, h2, b2) = srv.requests
    assert (m1, p1, len(b1), h1["content-length"]) == ("POST", "/v2/models/m/infer", 100_000,
                                                        "100000")
    assert h1["authorization"] == "Bearer t0k" and h1["content-type"] == "application/octet-stream"
    assert (m2, p2, b2) == ("GET", "/v2", b"") and "host" in h2


def test_a_closed_keep_alive_connection_is_replaced(transport: str, serve: Callable) -> None:
    srv, url = serve(lambda *_: OK, close_after=1)
    with Client(url) as client:
        for _ in range(3):
            assert client.live()
    assert len(srv.requests) == 3 and srv.connections == 3


def test_connection_close_is_honoured(transport: str, serve: Callable) -> None:
    reply = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    srv, url = serve(lambda *_: reply)
    with Client(url) as client:
        assert client.live() and client.live()
    assert srv.connections == 2


def test_a_malformed_response_is_an_error_and_not_sent_again(transport: str,
                                                             serve: Callable) -> None:
    _bad_response_case(serve, b"NOT HTTP AT ALL\r\n\r\n")


def test_a_response_broken_off_is_an_error_and_not_sent_again(serve: Callable) -> None:
    # (http.client takes a response cut off in its headers as one with an empty body.)
    assert transport_mod._httptools() is not None
    _bad_response_case(serve, OK[:40])


def _bad_response_case(serve: Callable, reply: bytes) -> None:
    def script(n: int, *_: object) -> bytes | None:
        return reply if n == 1 else OK

    srv, url = serve(script, close_after=2)
    with Client(url) as client:
        assert client.live()
        with pytest.raises(CloudUnavailable, match=url.split("//")[0]):
            client._request("POST", "/v2/models/m/infer", b"{}")
        assert len(srv.requests) == 2  # taken by the server once: not retried
        assert client.live()  # and the client goes on with a new connection
    assert srv.connections == 2


def test_a_server_that_never_answers_fresh_connection(transport: str, serve: Callable) -> None:
    srv, url = serve(lambda *_: None)  # closes without a word, every time
    with Client(url) as client, pytest.raises(CloudUnavailable):
        client._request("GET", "/v2")
    assert len(srv.requests) == 1  # a fresh connection is not retried


@pytest.mark.parametrize("headers", [{"X-Evil": "a\r\nInjected: 1"}, {"": "x"},
                                     {"X-Nul": "a\0b"}])
def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        Client("http://127.0.0.1:1", headers=headers)
