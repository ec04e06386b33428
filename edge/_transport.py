"""The client's transport: one persistent socket per thread, each request written as one
buffer and each response parsed by httptools (imported on first connect), or the standard
library's ``http.client`` without the ``fast`` extra and for TLS (see ``edge.client``)."""


from __future__ import annotations

import http.client
import socket
from collections.abc import Callable, Mapping
from typing import Any

_NOT_LOADED = object()
_httptools_module: Any = _NOT_LOADED


def _httptools() -> Any:
    """The ``fast`` extra's C response parser, imported when a client first connects (an
    application that only imports ``edge`` pays for numpy and the standard library alone)."""
    global _httptools_module
    if _httptools_module is _NOT_LOADED:
        try:
            import httptools
        except ImportError:  # pragma: no cover - exercised on installs without the extra
            httptools = None
        _httptools_module = httptools
    return _httptools_module


# A reused keep-alive connection the server has closed fails in one of these ways; the
# request is then sent once more on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          http.client.CannotSendRequest)


class _Response:
    """httptools callbacks collecting one response."""

    __slots__ = ("headers", "chunks", "complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser: Any = None

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete the parser has reset for the next one.
        self.keep_alive = self.parser.should_keep_alive()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    """One keep-alive HTTP/1.1 connection on a plain socket (Unix or TCP).

    Requests are written as one buffer (head and a small body together); responses are
    parsed by httptools (llhttp, in C), which also decodes chunked bodies. Without the
    ``fast`` extra, or over TLS, the standard library's ``http.client`` does the same work
    at about twice the cost per call (:class:`_StdlibConnection`).
    """

    def __init__(self, connect: Callable[[], socket.socket], host: str) -> None:
        self._connect = connect
        self._host = host
        self.sock: socket.socket | None = None
        self._heads: dict[tuple, bytes] = {}

    def exchange(self, method: str, path: str, body: bytes | None,
                 headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str], bool]:
        """Send one request; return (status, body, lower-cased headers, server closes)."""
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        # Request heads repeat (same path, headers and body size): each is built once.
        key = (method, path, None if body is None else len(body), *headers.items())
        raw = self._heads.get(key)
        if raw is None:
            head = [f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"]
            if body is not None:
                head.append(f"Content-Length: {len(body)}\r\n")
            head += [f"{k}: {v}\r\n" for k, v in headers.items()]
            head.append("\r\n")
            raw = "".join(head).encode("latin-1")
            if len(self._heads) >= 64:
                self._heads.clear()
            self._heads[key] = raw
        if body and len(body) > 65536:
            sock.sendall(raw)
            sock.sendall(body)
        else:
            sock.sendall(raw + body if body else raw)
        response = _Response()
        httptools = _httptools()
        parser = response.parser = httptools.HttpResponseParser(response)
        received = 0
        try:
            while not response.complete:
                data = sock.recv(1 << 18)
                if not data:
                    if received:
                        # Not a stale connection: the server took the request and broke off.
                        raise ConnectionAbortedError("the server closed the connection in "
                                                     "the middle of its response")
                    # Nothing came back: the server had closed this keep-alive connection.
                    raise http.client.RemoteDisconnected("the server closed the connection")
                received += len(data)
                parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ConnectionError(f"malformed HTTP response: {exc}") from exc
        return (parser.get_status_code(), b"".join(response.chunks), response.headers,
                not response.keep_alive)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _StdlibConnection:
    """The same exchange through ``http.client`` (TLS, or no httptools installed)."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self._conn = conn

    def exchange(self, method: str, path: str, body: bytes | None,
                 headers: Mapping[str, str]) -> tuple[int, bytes, dict[str, str], bool]:
        self._conn.request(method, path, body=body, headers=dict(headers))
        resp = self._conn.getresponse()
        data = resp.read()
        return (resp.status, data, {k.lower(): v for k, v in resp.getheaders()},
                bool(resp.will_close))

    def close(self) -> None:
        self._conn.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _unix_socket(self._path, self.timeout)


class _TcpConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _big_buffers(self.sock)


def _unix_socket(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _big_buffers(sock)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _tcp_socket(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _big_buffers(sock)
    return sock


def _big_buffers(sock: socket.socket) -> None:
    # A whole input tensor (600 KB for a 224x224 float image) fits in one send, so the
    # request is not written in many small steps each waiting for the server to read.
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass
