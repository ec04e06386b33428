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
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import mmap
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from devices.errors import CloudUnavailable, ModelInputError, OffloadRejected

log = logging.getLogger("edgecut.client")
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

_SHM_ROOT = "/dev/shm"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_region_ids = itertools.count(1)

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


class _Region:
    """One client-owned ``/dev/shm`` object registered with the server as a region."""

    def __init__(self, size: int) -> None:
        self.key = f"edgecut-{os.getpid()}-{next(_region_ids)}-{secrets.token_hex(4)}"
        self.path = os.path.join(_SHM_ROOT, self.key)
        self.size = size
        # 0600: tensors are the application's data; a server running as another user
        # cannot open it, registration fails and the client falls back to binary tensors.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)

    def release(self) -> None:
        try:
            self.mapping.close()
        except BufferError:  # a view is still alive somewhere; the unmap follows it
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _unlink_all(regions: list[_Region]) -> None:
    # At garbage collection or exit of a client that was never closed: no file is left
    # behind in /dev/shm (the server's mapping, if any, lives on until it unregisters).
    for region in list(regions):
        region.release()
    regions.clear()


_JSON_HEADERS = {"Content-Type": "application/json"}


class _RegionLost(Exception):
    pass


class Client:
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

    # ------------------------------------------------------------------ shared memory

    @property
    def uses_shared_memory(self) -> bool | None:
        """Whether inputs go through shared memory (``None`` until the first ``infer``)."""
        return self._shm

    def _use_shm(self, inputs: Mapping[str, np.ndarray]) -> bool:
        if self._shm is None:
            try:
                extensions = self.metadata().get("extensions", [])
            except (OffloadRejected, ModelInputError, ValueError):
                extensions = []
            self._shm = "system_shared_memory" in extensions and os.path.isdir(_SHM_ROOT)
        if not self._shm:
            return False
        # BYTES tensors have no fixed size per element: those requests go as binary.
        return all(np.asarray(v).dtype.kind not in "OSU" for v in inputs.values())

    def _drop_regions(self) -> None:
        regions: dict[str, _Region] = getattr(self._local, "regions", {})
        self._local.regions = {}
        with self._lock:
            for region in regions.values():
                if region in self._regions:
                    self._regions.remove(region)
        for region in regions.values():
            region.release()

    def _region_for(self, name: str, nbytes: int) -> _Region | None:
        """This thread's region for input ``name``, big enough; ``None``: use binary."""
        regions: dict[str, _Region] | None = getattr(self._local, "regions", None)
        if regions is None:
            regions = self._local.regions = {}
        region = regions.get(name)
        if region is not None and region.size >= nbytes:
            return region
        if region is not None:  # outgrown: replace it with one of the new size
            del regions[name]
            with self._lock:
                self._regions.remove(region)
            self._request("POST", f"/v2/systemsharedmemory/region/{region.key}/unregister")
            region.release()
        try:
            region = _Region(max(nbytes, 64))
        except OSError as exc:
            log.warning("no shared memory region (%s); sending binary tensors", exc)
            self._shm = False
            return None
        with self._lock:
            self._regions.append(region)
        status, data, _ = self._request(
            "POST", f"/v2/systemsharedmemory/region/{region.key}/register",
            json.dumps({"key": "/" + region.key, "offset": 0, "byte_size": region.size}).encode(),
            {"Content-Type": "application/json"})
        if status != 200:
            # E.g. the server runs as another user and cannot open the 0600 object.
            log.warning("server refused shared memory region (HTTP %d: %s); sending binary "
                        "tensors", status, data[:200].decode(errors="replace"))
            with self._lock:
                self._regions.remove(region)
            region.release()
            self._shm = False
            return None
        regions[name] = region
        return region

    def _infer_shm(self, model: str, inputs: Mapping[str, np.ndarray],
                   outputs: Sequence[str] | None, version: str | None) -> dict[str, np.ndarray]:
        from cloud.protocol import (
            DATATYPES,
            datatype_of,
            decode_infer_response,
            encode_infer_request,
        )

        described = []
        placed = []
        for name, value in inputs.items():
            array = np.asarray(value)
            datatype = datatype_of(array.dtype)
            dtype = DATATYPES[datatype]
            nbytes = array.size * dtype.itemsize
            region = self._region_for(name, nbytes)
            if region is None:  # shared memory turned out not to work: binary after all
                body, headers = encode_infer_request(inputs, outputs)
                return decode_infer_response(*self.infer_raw(model, body, headers,
                                                             version=version))
            # The one copy of the local path: into the region (little-endian, C order).
            np.copyto(np.ndarray(array.shape, dtype=dtype, buffer=region.mapping), array)
            placed.append((name, array.shape, datatype, region.key, nbytes))
        # An application sends the same shapes again and again: the request (path and
        # JSON message) is encoded once per thread and layout, and re-sent.
        key = (model, version, None if outputs is None else tuple(outputs), tuple(placed))
        cache: dict[tuple, tuple[str, bytes]] | None = getattr(self._local, "messages", None)
        if cache is None:
            cache = self._local.messages = {}
        encoded = cache.get(key)
        if encoded is None:
            for name, shape, datatype, region_key, nbytes in placed:
                described.append({"name": name, "shape": list(shape), "datatype": datatype,
                                  "parameters": {"shared_memory_region": region_key,
                                                 "shared_memory_byte_size": nbytes}})
            message: dict[str, Any] = {"inputs": described}
            if outputs is None:
                message["parameters"] = {"binary_data_output": True}
            else:
                message["outputs"] = [{"name": n, "parameters": {"binary_data": True}}
                                      for n in outputs]
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
            if len(cache) >= 32:
                cache.clear()
            encoded = cache[key] = (path, json.dumps(message, separators=(",", ":")).encode())
        status, data, hdrs = self._request("POST", encoded[0], encoded[1], _JSON_HEADERS)
        if status == 400 and b"is not registered" in data:
            raise _RegionLost
        if status == 400 and b"shared memory extension off" in data:
            self._shm = False
            raise _RegionLost
        self._raise_for(status, data, f"model '{model}'")
        return decode_infer_response(data, hdrs)

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
               outputs: Sequence[str] | None = None) -> Any:
        """Run an iterable of frames (input dicts) through the agent's ``<model>.stream``
        with up to ``window`` in flight; yields one ``StreamFrame`` per frame, in order
        (``ok``, ``dropped`` by the agent's overload policy, or ``error``). The next frame
        is taken from ``frames`` only when a slot frees (back-pressure)."""
        from edge._client_stream import run_stream

        return run_stream(self, model, frames, window=window, outputs=outputs)

    def agent_status(self) -> dict[str, Any]:
        """The agent's own status (models and versions, profile, config version)."""
        status, data, _ = self._request("GET", "/agent/status")
        self._raise_for(status, data, "agent status")
        return json.loads(data)
