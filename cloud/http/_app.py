"""The thin ASGI adapter: exactly the v2 REST paths over an :class:`InferenceService`.

A raw ASGI callable rather than a framework: per request it parses the path, reads the body
within the configured limit, checks the token, calls the service and writes the answer,
which keeps the added latency in the tens of microseconds. Only this module (and
:mod:`cloud.errors`) knows HTTP status codes.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import time
import typing
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from cloud._auth import TokenVerifier
from cloud._deferred import after_answer
from cloud._gate import Gate
from cloud._peer import Peer, infer_into_shm, shm_view
from cloud._service import InferenceService, InferResult
from cloud._shm import SharedMemoryRegistry
from cloud.errors import (
    CloudError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
)
from cloud.http._codec import HEADER_LENGTH, decode_infer_request, encode_infer_response
from cloud.http._extensions import JSON_HEADERS as _JSON
from cloud.http._extensions import MethodNotAllowed as _MethodNotAllowed
from cloud.http._extensions import allow as _allow
from cloud.http._extensions import json_bytes as _json
from cloud.http._extensions import off_loop as _off_loop
from cloud.http._extensions import profile, shared_memory

__all__ = ["create_app"]

log = logging.getLogger("edgecut.cloud.http")

# typing's spellings: these aliases are evaluated at import, and Python 3.8 cannot
# subscript dict or collections.abc.Callable at run time.
Scope = typing.Dict[str, Any]
Receive = typing.Callable[[], typing.Awaitable[typing.Dict[str, Any]]]
Send = typing.Callable[[typing.Dict[str, Any]], typing.Awaitable[None]]

# JSON bodies larger than this are decoded and encoded off the event loop (a 1x3x224x224
# float tensor as JSON takes ~100 ms to parse, which would stall every other request).
_OFFLOAD_JSON_BYTES = 64 * 1024
_OFFLOAD_JSON_ELEMENTS = 16 * 1024


class _Disconnected(Exception):
    pass


class _App:
    def __init__(
        self,
        service: InferenceService,
        gate: Gate,
        metrics_require_auth: bool,
        shm: SharedMemoryRegistry | None = None,
        metrics: bool = True,
        max_bytes_elements: int = 1 << 20,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.gate = gate
        # The system shared memory extension: on for servers that only local clients reach.
        self.shm = shm
        self.metrics_require_auth = metrics_require_auth
        self.max_bytes_elements = max_bytes_elements
        self._profiling = False  # one profile at a time: each takes every core it is given
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}"

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        request_id = headers.get("x-request-id", "")[:128] or f"{self._id_prefix}-{next(self._ids)}"
        method, path = scope["method"], scope["path"]
        gate = self.gate
        gate.in_flight += 1
        held = [0]
        try:
            if method == "POST" and gate.at_limit():
                # Refused before its body is read: memory stays bounded however many come.
                raise gate.refuse_busy()
            status, body, extra = await self._route(method, path, headers, receive, request_id,
                                                    held, _peer(scope))
        except _Disconnected:
            return  # the client is gone; nothing to answer
        except CloudError as exc:
            status, body, extra = self._error(exc, method, path, request_id)
        except Exception:  # a bug: answer 500, log the traceback, keep serving
            log.exception("%s %s failed", method, path, extra={"request_id": request_id})
            status, body, extra = 500, _json({"error": "internal server error"}), _JSON
        finally:
            gate.in_flight -= 1
            gate.release(held[0])
        out_headers = self._final_headers(status, body, extra, request_id)
        try:
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            await send({"type": "http.response.body", "body": body})
        except OSError:  # the connection dropped while answering
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d in %.3f ms", method, path, status,
                      (time.perf_counter() - start) * 1e3,
                      extra={"request_id": request_id, "status": status, "path": path})

    # ------------------------------------------------------------------ the lane

    def serve_now(self, model: str, headers: dict[str, str], body: bytes, peer: Peer | None = None
                  ) -> tuple[int, bytes, list] | Coroutine[Any, Any, tuple[int, bytes, list]] | None:
        """``POST /v2/models/{model}/infer`` with its body read, served without a task.

        For the local API's fast lane (:mod:`cloud.http._lane`), called on the event loop:
        when the model's batcher runs the request inline, the answer is returned ready
        to write (status, body, headers with ``content-length`` and ``x-request-id``);
        when the runtime queued it for its worker, a coroutine to await for that answer.
        ``None``: nothing was done (the request needs the ordinary route: a busy model,
        compressed or unusual bodies, outputs into shared memory, a body that does not
        decode, whose error the ordinary route then reports).
        """
        request_id = headers.get("x-request-id", "")[:128] or f"{self._id_prefix}-{next(self._ids)}"
        path = f"/v2/models/{model}/infer"
        if (headers.get("content-encoding", "identity") != "identity"
                or (HEADER_LENGTH.lower() not in headers and len(body) > _OFFLOAD_JSON_BYTES)
                or self.gate.in_flight >= self.gate.max_in_flight
                or len(body) > self.gate.max_body_bytes
                or (len(body) > _OFFLOAD_JSON_BYTES and self.service.takes_bytes(model, None))):
            return None
        refused: list[CloudError] = []
        try:
            # Who may use the model first: nothing is decoded for a refused caller (the
            # ordinary route then answers the refusal).
            principal = self._principal(headers)
            if principal is not None:
                principal.require(model)
            check = self.service.input_check(model, None, self.max_bytes_elements)

            def lane_check(name: str, datatype: str, shape: tuple[int, ...]) -> None:
                try:
                    check(name, datatype, shape)  # type: ignore[misc]
                except CloudError as exc:
                    refused.append(exc)
                    raise

            request = decode_infer_request(
                body, headers, shared_memory=self._shm_view(principal, peer),
                check=None if check is None else lane_check)
        except CloudError:
            if refused:  # the model's own refusal: the lane answers it as the route would
                return self._final(*self._error(refused[0], "POST", path, request_id),
                                   request_id)
            return None
        if any("shared_memory_region" in o.parameters for o in request.outputs or ()):
            return None
        gate = self.gate
        gate.in_flight += 1
        try:
            result = self.service.infer_now(model, request)
        except CloudError as exc:
            return self._final(*self._error(exc, "POST", path, request_id), request_id)
        finally:
            gate.in_flight -= 1
        if result is None:
            return None
        if isinstance(result, InferResult):
            return self._final(*self._answer(model, request, result), request_id)

        async def settle() -> tuple[int, bytes, list]:
            gate.in_flight += 1
            try:
                done = await result
            except CloudError as exc:
                return self._final(*self._error(exc, "POST", path, request_id), request_id)
            finally:
                gate.in_flight -= 1
            return self._final(*self._answer(model, request, done), request_id)

        return settle()

    def _answer(self, model: str, request: Any, result: InferResult) -> tuple[int, bytes, list]:
        """The response to an inference whose outputs all go in the body."""
        binary = [name for name in result.outputs if request.wants_binary(name)]
        out, out_headers = encode_infer_response(
            model, result.outputs, model_version=result.version, request_id=request.id,
            binary=binary)
        return 200, out, self._timed(out_headers, result)

    @staticmethod
    def _timed(out_headers: dict[str, str], result: InferResult) -> list:
        # Server-Timing (W3C): the time the request waited in the model's queue and the
        # time its batch computed, so a client can tell the server's share of its round
        # trip from the network's (the edge link estimator subtracts it).
        timing = f"queue;dur={result.queue_ms:.3f}, compute;dur={result.compute_ms:.3f}"
        return [*((k.lower().encode("latin-1"), v.encode("latin-1"))
                  for k, v in out_headers.items()),
                (b"server-timing", timing.encode("latin-1"))]

    def _final(self, status: int, body: bytes, extra: list, request_id: str
               ) -> tuple[int, bytes, list]:
        return status, body, self._final_headers(status, body, extra, request_id)

    def _final_headers(self, status: int, body: bytes, extra: list, request_id: str) -> list:
        after_answer(self._count_status, status)
        # An explicit length: without it uvicorn falls back to chunked transfer encoding.
        return [*extra, (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode("latin-1"))]

    # ------------------------------------------------------------------ helpers

    def _count_status(self, status: int) -> None:
        self.service.metrics.http.labels(str(status)).inc()

    def _error(self, exc: CloudError, method: str, path: str, request_id: str
               ) -> tuple[int, bytes, list]:
        status, body, extra = exc.status, _json({"error": str(exc)}), _JSON
        self._log_error(method, path, status, exc, request_id)
        if isinstance(exc, _MethodNotAllowed):
            extra = [*_JSON, (b"allow", exc.allowed.encode())]
        return status, body, extra

    def _log_error(self, method: str, path: str, status: int, exc: Exception,
                   request_id: str) -> None:
        if isinstance(exc, Overloaded):
            self.gate.log_refused(f"{method} {path} -> 503", exc,
                                  {"request_id": request_id, "status": status, "path": path})
            return
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d: %s", method, path, status, exc,
                extra={"request_id": request_id, "status": status, "path": path})

    async def _body(self, headers: dict[str, str], receive: Receive, held: list[int]) -> bytes:
        gate = self.gate
        limit = gate.max_body_bytes
        declared = headers.get("content-length")
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ProtocolError(f"Content-Length must be an integer, got {declared!r}") from None
            gate.check_size(size)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                # Held as it arrives, not as declared: a client that declares 64 MB and
                # sends one byte holds one byte of the budget.
                gate.hold(held, len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise ProtocolError(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
        inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            # Bounded, so that a small compressed body cannot inflate past the limit.
            plain = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"body is not valid {encoding} data ({exc})") from None
        if len(plain) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        gate.hold(held, len(plain))
        if not inflater.eof:
            raise ProtocolError(f"{encoding} body is truncated")
        return plain

    async def _json_body(self, headers: dict[str, str], receive: Receive,
                         held: list[int]) -> dict[str, Any]:
        body = await self._body(headers, receive, held)
        if not body.strip():
            return {}
        try:
            value = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"malformed JSON body: {exc}") from None
        if not isinstance(value, dict):
            raise ProtocolError("the JSON body must be an object")
        return value

    def _principal(self, headers: dict[str, str]) -> Any:
        return self.gate.principal(headers.get("authorization"))

    def _shm_view(self, principal: Any, peer: Peer | None) -> Any:
        if self.shm is None:
            return None
        return shm_view(self.shm, principal, peer)

    def _scoped(self, headers: dict[str, str], model: str) -> None:
        self.gate.require_model(headers.get("authorization"), model)

    def _visible(self, headers: dict[str, str]) -> Callable[[str], bool]:
        return self.gate.visible(headers.get("authorization"))

    # ------------------------------------------------------------------ routing

    async def _route(self, method: str, path: str, headers: dict[str, str], receive: Receive,
                     request_id: str, held: list[int],
                     peer: Peer | None = None) -> tuple[int, bytes, list]:
        parts = path.strip("/").split("/")
        n = len(parts)
        if parts == ["metrics"] and self.metrics:
            _allow(method, "GET")
            if self.metrics_require_auth:
                self._principal(headers)
            return 200, self.service.metrics.exposition(), [
                (b"content-type", self.service.metrics.content_type.encode())]
        if parts[0] != "v2":
            raise NotFound(f"no endpoint {path!r}; this server speaks the v2 protocol under /v2")
        if n == 1:
            _allow(method, "GET")
            self._principal(headers)
            meta = self.service.server_metadata()
            if self.shm is not None:
                meta["extensions"] = [*meta["extensions"], "system_shared_memory"]
            return 200, _json(meta), _JSON
        section = parts[1]
        if section == "health" and n == 3 and parts[2] in ("live", "ready"):
            _allow(method, "GET")
            if parts[2] == "live":
                return 200, _json({"live": True}), _JSON
            ready = self.service.ready
            return (200 if ready else 503), _json({"ready": ready}), _JSON
        if section == "systemsharedmemory" and self.shm is not None:
            return await shared_memory(self, method, path, parts, headers, receive, held, peer)
        if section == "models":
            if n == 3 and parts[2] == "stats":
                _allow(method, "GET")
                visible = self._visible(headers)
                stats = self.service.statistics()
                stats["model_stats"] = [s for s in stats["model_stats"] if visible(s["name"])]
                return 200, _json(stats), _JSON
            if n < 3 or not parts[2]:
                raise NotFound(f"no endpoint {path!r}")
            model = parts[2]
            version: str | None = None
            rest = parts[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
                if not version:
                    raise NotFound(f"no endpoint {path!r}")
            action = rest[0] if len(rest) == 1 else "" if not rest else None
            if action is None:
                raise NotFound(f"no endpoint {path!r}")
            if action == "infer":
                _allow(method, "POST")
                principal = self._principal(headers)
                if principal is not None:
                    principal.require(model)
                return await self._infer(model, version, headers, receive, held, principal, peer)
            self._scoped(headers, model)
            if action == "":
                _allow(method, "GET")
                return 200, _json(self.service.model_metadata(model, version)), _JSON
            if action == "ready":
                _allow(method, "GET")
                if self.service.model_ready(model, version):
                    return 200, _json({"name": model, "ready": True}), _JSON
                self.service.model_metadata(model, None)  # 404 for an unknown model
                return 400, _json({"error": f"model {model!r} version {version!r} is not ready",
                                   "name": model, "ready": False}), _JSON
            if action == "config":
                _allow(method, "GET")
                return 200, _json(self.service.model_config(model, version)), _JSON
            if action == "stats":
                _allow(method, "GET")
                return 200, _json(self.service.statistics(model, version)), _JSON
            if action == "profile":
                _allow(method, "POST")
                self.gate.require_admin(headers.get("authorization"), model)
                return await profile(self, model, version, headers, receive, held)
            raise NotFound(f"no endpoint {path!r}")
        if section == "repository":
            if n == 3 and parts[2] == "index":
                _allow(method, "POST")
                visible = self._visible(headers)
                body = await self._json_body(headers, receive, held)
                ready_only = body.get("ready", False)
                if not isinstance(ready_only, bool):
                    raise ProtocolError("'ready' must be a boolean")
                entries = [e for e in self.service.index(ready_only) if visible(e["name"])]
                return 200, _json(entries), _JSON
            if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
                _allow(method, "POST")
                model = parts[3]
                self.gate.require_admin(headers.get("authorization"), model)
                body = await self._json_body(headers, receive, held)
                params = body.get("parameters", {})
                if not isinstance(params, dict):
                    raise ProtocolError("'parameters' must be an object")
                if parts[4] == "load":
                    await _off_loop(functools.partial(self.service.load, model, params))
                else:
                    version = params.get("version")
                    if version is not None and not isinstance(version, str):
                        raise ProtocolError("unload parameter 'version' must be a string")
                    await _off_loop(functools.partial(self.service.unload, model, version))
                return 200, b"", _JSON
        raise NotFound(f"no endpoint {path!r}")

    async def _infer(self, model: str, version: str | None, headers: dict[str, str],
                     receive: Receive, held: list[int], principal: Any,
                     peer: Peer | None) -> tuple[int, bytes, list]:
        self.service.require(model, version)  # 404 before reading a body for nothing
        body = await self._body(headers, receive, held)
        shm = self._shm_view(principal, peer)
        # Datatypes, shapes and element counts are checked against the model before any
        # tensor is decoded, so a request the model cannot take costs nothing to refuse.
        check = self.service.input_check(model, version, self.max_bytes_elements)
        # On the loop only what costs O(tensors): binary numeric tensors (a view of the
        # body). JSON and BYTES bodies of any size go to a thread.
        if len(body) > _OFFLOAD_JSON_BYTES and (HEADER_LENGTH.lower() not in headers
                                                or self.service.takes_bytes(model, version)):
            request = await _off_loop(functools.partial(
                decode_infer_request, body, headers, shared_memory=shm, check=check))
        else:
            request = decode_infer_request(body, headers, shared_memory=shm, check=check)
        result, placed = await infer_into_shm(self.service, model, version, request, shm)
        binary = [name for name in result.outputs
                  if name not in placed and request.wants_binary(name)]
        json_elements = sum(a.size for n, a in result.outputs.items()
                            if n not in binary and n not in placed)
        kwargs = {"model_version": result.version, "request_id": request.id, "binary": binary,
                  "shared_memory": placed}
        if json_elements > _OFFLOAD_JSON_ELEMENTS:
            out, out_headers = await _off_loop(
                functools.partial(encode_infer_response, model, result.outputs, **kwargs))
        else:
            out, out_headers = encode_infer_response(model, result.outputs, **kwargs)
        return 200, out, self._timed(out_headers, result)


def _peer(scope: Scope) -> Peer | None:
    """The connection's peer: from the guarded protocol, else from the ASGI client."""
    peer = scope.get("edgecut.peer")
    if peer is not None:
        return peer
    client = scope.get("client")
    if client:
        return Peer(str(client[0]))
    return None  # a Unix socket without the guarded protocol: no uid known


def create_app(
    service: InferenceService,
    *,
    verifier: TokenVerifier | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
    metrics_require_auth: bool = False,
    max_in_flight: int = 512,
    max_pending_bytes: int = 512 * 1024 * 1024,
    shared_memory: bool | SharedMemoryRegistry = False,
    gate: Gate | None = None,
    shm_allowed_uids: tuple[int, ...] = (),
    metrics: bool = True,
    max_bytes_elements: int = 1 << 20,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI application serving ``service`` over the v2 REST protocol.

    ``verifier``: check bearer tokens (``None`` turns auth off: every request is allowed,
    and a warning is logged). ``max_body_bytes``: larger bodies get 413. Health endpoints
    and ``/metrics`` (unless ``metrics_require_auth``) are open. ``max_in_flight``: POST
    requests in progress beyond this get 503 before their body is read (with the
    per-version queue bound, this keeps memory bounded under any overload).
    ``max_pending_bytes``: the request bodies all requests in progress may hold together
    (counted from ``Content-Length`` before reading); beyond it a request gets 503.
    ``shared_memory``: serve the system shared memory extension (``/v2/systemsharedmemory``,
    inputs and outputs in ``/dev/shm`` regions); only requests from loopback or Unix-socket
    peers may use it. Turn it on for servers bound to 127.0.0.1 or a Unix socket; pass a
    :class:`~cloud._shm.SharedMemoryRegistry` to share its regions with another transport.
    ``gate``: the auth and limits shared with another transport of the same server
    (then ``verifier`` and the three limits are taken from it). A region belongs to who
    registered it (see :mod:`cloud._shm`); ``shm_allowed_uids``: the owners, besides the
    server's own uid, whose files TCP loopback clients may register. ``metrics``: serve
    ``/metrics`` here (off when it has its own port). ``max_bytes_elements``: the most
    BYTES elements one input may have. Request bodies count against ``max_pending_bytes``
    as they arrive, not as declared.
    """
    if gate is None:
        gate = Gate(verifier, max_in_flight=max_in_flight, max_pending_bytes=max_pending_bytes,
                    max_body_bytes=max_body_bytes)
    if gate.verifier is None:
        log.warning("AUTH IS OFF: every client may use every model and change the repository")
    if isinstance(shared_memory, SharedMemoryRegistry):
        shm: SharedMemoryRegistry | None = shared_memory
    else:
        shm = SharedMemoryRegistry(allowed_uids=shm_allowed_uids) if shared_memory else None
    return _App(service, gate, metrics_require_auth, shm, metrics, max_bytes_elements)

