"""``edge.Client``: a small Python API for applications on the board.

It speaks the Open Inference Protocol (binary tensors, HTTP/1.1 keep-alive) to the edge
agent over TCP or its Unix socket, and works unchanged against the cloud service or any
v2 server::

    with edge.Client("unix:///run/edgecut/agent.sock") as client:
        outputs = client.infer("squeezenet", {"data_0": image})

The transport is the standard library's ``http.client`` with one persistent connection
per thread, not httpx: on this class of host httpx's request and response models alone
cost about 0.25 ms per call and its connection pool another 0.3 ms, more than the whole
budget the agent's local path has (1 ms at p50 over an in-process call).

Errors: a request the server rejects raises :class:`edge.ModelInputError` (HTTP 400, the
server's message names the tensor) or :class:`edge.OffloadRejected` (other statuses, with
``status``); a server that cannot be reached raises :class:`edge.CloudUnavailable`.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from devices.errors import CloudUnavailable, ModelInputError, OffloadRejected

# A reused keep-alive connection the server has closed fails in one of these ways; the
# request is then sent once more on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
          http.client.CannotSendRequest, http.client.BadStatusLine)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        _big_buffers(sock)
        sock.connect(self._path)
        self.sock = sock


class _TcpConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _big_buffers(self.sock)


def _big_buffers(sock: socket.socket) -> None:
    # A whole input tensor (600 KB for a 224x224 float image) fits in one send, so the
    # request is not written in many small steps each waiting for the server to read.
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass


class Client:
    """A keep-alive client of one inference server (the local agent by default).

    ``url`` is ``http://host:port``, ``https://host:port`` or ``unix:///path/to/socket``.
    Thread-safe: each thread gets its own connection.
    """

    def __init__(self, url: str = "http://127.0.0.1:8800", *, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None) -> None:
        if url.startswith("unix://"):
            path = url[len("unix://"):]
            if not path:
                raise ValueError(f"client url {url!r}: expected unix:///path/to/socket")
            self._make = lambda: _UnixConnection(path, timeout)
        elif url.startswith(("http://", "https://")):
            parts = urlsplit(url)
            if not parts.hostname:
                raise ValueError(f"client url {url!r}: no host")
            cls = http.client.HTTPSConnection if parts.scheme == "https" else _TcpConnection
            host, port = parts.hostname, parts.port
            self._make = lambda: cls(host, port, timeout=timeout)
        else:
            raise ValueError(f"client url {url!r}: expected http(s)://host:port or unix:///path")
        self.url = url
        self._headers = dict(headers or {})
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this client opened (in all threads)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _conn(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = self._make()
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        merged = {**self._headers, **(headers or {})}
        for attempt in (0, 1):
            conn, reused = self._conn()
            try:
                conn.request(method, path, body=body, headers=merged)
                resp = conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self._drop(conn)
                return resp.status, data, hdrs
            except _STALE as exc:
                self._drop(conn)
                if not reused or attempt:
                    raise CloudUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
            except OSError as exc:
                self._drop(conn)
                raise CloudUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _raise_for(status: int, data: bytes, what: str) -> None:
        if status < 400:
            return
        try:
            message = json.loads(data).get("error", data.decode(errors="replace"))
        except (ValueError, AttributeError):
            message = data.decode(errors="replace")
        if status == 400:
            raise ModelInputError(f"{what}: {message}")
        raise OffloadRejected(f"{what}: HTTP {status}: {message}", status)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None, *, version: str | None = None,
              binary: bool = True) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (arrays by input name); return outputs by name."""
        from cloud.protocol import decode_infer_response, encode_infer_request

        body, headers = encode_infer_request(inputs, outputs, binary=binary,
                                             binary_outputs=binary)
        return decode_infer_response(*self.infer_raw(model, body, headers, version=version))

    def infer_raw(self, model: str, body: bytes, headers: Mapping[str, str], *,
                  version: str | None = None) -> tuple[bytes, Mapping[str, str]]:
        """Send an already encoded request body (benchmarks re-send one body)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        status, data, hdrs = self._request("POST", path, body, headers)
        self._raise_for(status, data, f"model '{model}'")
        return data, hdrs

    def live(self) -> bool:
        """True when the server process answers ``/v2/health/live``."""
        try:
            return self._request("GET", "/v2/health/live")[0] == 200
        except CloudUnavailable:
            return False

    def ready(self, model: str | None = None) -> bool:
        """True when the server (or ``model``) is ready to serve."""
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        try:
            return self._request("GET", path)[0] == 200
        except CloudUnavailable:
            return False

    def metadata(self, model: str | None = None) -> dict[str, Any]:
        """Server metadata, or a model's (inputs and outputs with datatypes and shapes)."""
        status, data, _ = self._request("GET", f"/v2/models/{model}" if model else "/v2")
        self._raise_for(status, data, f"model '{model}'" if model else "server metadata")
        return json.loads(data)

    def agent_status(self) -> dict[str, Any]:
        """The agent's own status (models and versions, profile, config version)."""
        status, data, _ = self._request("GET", "/agent/status")
        self._raise_for(status, data, "agent status")
        return json.loads(data)
