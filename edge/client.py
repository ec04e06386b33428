"""``edge.Client``: a small Python API for applications on the board.

It speaks the Open Inference Protocol (binary tensors, HTTP/1.1 keep-alive) to the edge
agent over TCP or its Unix socket, and works unchanged against the cloud service or any
v2 server::

    with edge.Client("unix:///run/edgecut/agent.sock") as client:
        outputs = client.infer("squeezenet", {"data_0": image})

For a local server (a Unix socket, or 127.0.0.1) that advertises the ``system_shared_memory``
extension, inputs do not cross the socket at all: each thread keeps one ``/dev/shm`` region
per input name (registered once, re-created when a tensor outgrows it), copies the array
into it and sends only the JSON header naming the region. Other servers, or a server that
cannot open the client's regions, get binary tensors. ``close()`` unregisters and removes
the regions.

The transport is one persistent socket per thread, each request written as one buffer and
each response parsed by httptools (the C parser uvicorn uses; the standard library's
``http.client`` when the ``fast`` extra is not installed, and for TLS). Not httpx: on this
class of host httpx's request and response models alone cost about 0.25 ms per call and its
connection pool another 0.3 ms, and ``http.client``'s header parsing through the ``email``
package another 0.05-0.1 ms: all out of a budget of 1 ms at p50 that the agent's local path
may add over an in-process call.

Errors: a request the server rejects raises :class:`edge.ModelInputError` (HTTP 400, the
server's message names the tensor) or :class:`edge.OffloadRejected` (other statuses, with
``status``); a server that cannot be reached raises :class:`edge.CloudUnavailable`.

The transport is ``edge._transport`` and the shared memory path ``edge._shm``.
"""

from __future__ import annotations

import http.client
import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from devices.errors import CloudUnavailable, ModelInputError, OffloadRejected
from edge._shm import _Region, _RegionLost, _SharedMemory, _unlink_all
from edge._transport import (
    _STALE,
    _Connection,
    _httptools,
    _StdlibConnection,
    _tcp_socket,
    _TcpConnection,
    _unix_socket,
    _UnixConnection,
)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Client(_SharedMemory):
    """A keep-alive client of one inference server (the local agent by default).

    ``url`` is ``http://host:port``, ``https://host:port`` or ``unix:///path/to/socket``.
    Thread-safe: each thread gets its own connection (and its own shared memory regions).
    ``shared_memory``: ``None`` (default) passes inputs through ``/dev/shm`` when the server
    is local and advertises ``system_shared_memory``; ``False`` always sends binary tensors.
    """

    def __init__(self, url: str = "http://127.0.0.1:8800", *, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None,
                 shared_memory: bool | None = None) -> None:
        local = url.startswith("unix://")
        if url.startswith("unix://"):
            path = url[len("unix://"):]
            if not path:
                raise ValueError(f"client url {url!r}: expected unix:///path/to/socket")
            if _httptools() is not None:
                self._make = lambda: _Connection(lambda: _unix_socket(path, timeout),
                                                 "localhost")
            else:
                self._make = lambda: _StdlibConnection(_UnixConnection(path, timeout))
        elif url.startswith(("http://", "https://")):
            parts = urlsplit(url)
            if not parts.hostname:
                raise ValueError(f"client url {url!r}: no host")
            host, port = parts.hostname, parts.port
            local = parts.hostname in _LOOPBACK
            if parts.scheme == "https":
                self._make = lambda: _StdlibConnection(
                    http.client.HTTPSConnection(host, port, timeout=timeout))
            elif _httptools() is not None:
                port = port or 80
                host_header = (f"[{host}]" if ":" in host else host) + (
                    f":{port}" if port != 80 else "")
                self._make = lambda: _Connection(lambda: _tcp_socket(host, port, timeout),
                                                 host_header)
            else:
                self._make = lambda: _StdlibConnection(_TcpConnection(host, port,
                                                                      timeout=timeout))
        else:
            raise ValueError(f"client url {url!r}: expected http(s)://host:port or unix:///path")
        self.url = url
        self._headers = dict(headers or {})
        for key, value in self._headers.items():
            if any(c in str(key) + str(value) for c in "\r\n\0") or not str(key).strip():
                raise ValueError(f"client header {key!r}: names and values must be non-empty "
                                 "text without line breaks")
        self._local = threading.local()
        self._all: list[_Connection | _StdlibConnection] = []
        self._lock = threading.Lock()
        # None: not asked yet; the server's metadata decides on the first infer().
        self._shm: bool | None = None if local and shared_memory is not False else False
        self._regions: list[_Region] = []  # every thread's, for close()
        self._finalizer = weakref.finalize(self, _unlink_all, self._regions)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unregister and remove the shared memory regions, close every connection."""
        with self._lock:
            regions = list(self._regions)
        for region in regions:
            try:
                self._request("POST", f"/v2/systemsharedmemory/region/{region.key}/unregister")
            except CloudUnavailable:
                pass  # the server is gone, and its registrations with it
        _unlink_all(self._regions)
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def _conn(self) -> tuple[_Connection | _StdlibConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = self._make()
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn, False

    def _drop(self, conn: _Connection | _StdlibConnection) -> None:
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
                status, data, hdrs, will_close = conn.exchange(method, path, body, merged)
                if will_close:
                    self._drop(conn)
                return status, data, hdrs
            except _STALE as exc:
                self._drop(conn)
                if not reused or attempt:
                    raise CloudUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:  # incl. a malformed response
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

        if binary and self._use_shm(inputs):
            try:
                return self._infer_shm(model, inputs, outputs, version)
            except _RegionLost:
                # The server forgot this thread's regions (it restarted): register anew.
                self._drop_regions()
                if self._shm:
                    try:
                        return self._infer_shm(model, inputs, outputs, version)
                    except _RegionLost:
                        self._shm = False
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

    def stream(self, model: str, frames: Any, *, window: int = 4,
               outputs: Sequence[str] | None = None, overload: str = "block",
               queue_size: int = 1) -> Any:
        """Run an iterable of frames (input dicts) through the agent's ``<model>.stream``
        with up to ``window`` in flight; yields one ``StreamFrame`` per frame, in order
        (``ok``, ``dropped``, or ``error`` with the reason). ``overload="block"`` takes
        the next frame only when a slot frees (back-pressure); ``"drop_oldest"`` reads a
        live source as fast as it yields and keeps the newest ``queue_size`` waiting."""
        from edge._client_stream import run_stream

        return run_stream(self, model, frames, window=window, outputs=outputs,
                          overload=overload, queue_size=queue_size)

    def agent_status(self) -> dict[str, Any]:
        """The agent's own status (models and versions, profile, config version)."""
        status, data, _ = self._request("GET", "/agent/status")
        self._raise_for(status, data, "agent status")
        return json.loads(data)
