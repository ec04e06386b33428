"""The thin ASGI adapter: exactly the v2 REST paths over an :class:`InferenceService`.

A raw ASGI callable rather than a framework: per request it parses the path, reads the body
within the configured limit, checks the token, calls the service and writes the answer,
which keeps the added latency in the tens of microseconds. Only this package (and
:mod:`cloud.errors`) knows HTTP status codes.

The app picks a route family from the path: the server's and one model's routes and the
repository extension (:mod:`cloud.http._routes`), inference (:mod:`cloud.http._infer`,
which also serves the fast lane), shared memory and profiles
(:mod:`cloud.http._extensions`); :mod:`cloud.http._answer` finishes every answer and
:mod:`cloud.http._request` reads bodies within the gate's limits.
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from cloud._auth import TokenVerifier
from cloud._gate import Gate
from cloud._peer import Peer
from cloud._service import InferenceService
from cloud._shm import SharedMemoryRegistry
from cloud.errors import CloudError, NotFound
from cloud.http._answer import Answer, Answers
from cloud.http._extensions import JSON_HEADERS as _JSON
from cloud.http._extensions import SharedMemoryRoutes
from cloud.http._extensions import json_bytes as _json
from cloud.http._infer import InferRoute
from cloud.http._request import Disconnected, Receive, Request
from cloud.http._routes import ModelRoutes, RepositoryRoutes, ServerRoutes

__all__ = ["create_app"]

log = logging.getLogger("edgecut.cloud.http")

# typing's spellings: these aliases are evaluated at import, and Python 3.8 cannot
# subscript dict or collections.abc.Callable at run time.
Scope = typing.Dict[str, Any]
Send = typing.Callable[[typing.Dict[str, Any]], typing.Awaitable[None]]


class _App:
    """The ASGI entry: reads a request's headers, picks its route family, and answers
    (errors included) with the headers every answer carries."""

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
        self._answers = Answers(service.metrics, gate)
        self._infer = InferRoute(service, gate, shm, self._answers, max_bytes_elements)
        self._server = ServerRoutes(service, gate, metrics_require_auth=metrics_require_auth,
                                    shared_memory=shm is not None)
        self._models = ModelRoutes(service, gate, self._infer)
        self._repository = RepositoryRoutes(service, gate)
        self._shm = SharedMemoryRoutes(shm, gate) if shm is not None else None

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
        answers = self._answers
        request_id = answers.request_id(headers)
        method, path = scope["method"], scope["path"]
        req = Request(method, path, headers, receive, _peer(scope))
        gate = self.gate
        gate.in_flight += 1
        try:
            if method == "POST" and gate.at_limit():
                # Refused before its body is read: memory stays bounded however many come.
                raise gate.refuse_busy()
            status, body, extra = await self._route(req)
        except Disconnected:
            return  # the client is gone; nothing to answer
        except CloudError as exc:
            status, body, extra = answers.error(exc, method, path, request_id)
        except Exception:  # a bug: answer 500, log the traceback, keep serving
            log.exception("%s %s failed", method, path, extra={"request_id": request_id})
            status, body, extra = 500, _json({"error": "internal server error"}), _JSON
        finally:
            gate.in_flight -= 1
            gate.release(req.held[0])
        out_headers = answers.final_headers(status, body, extra, request_id)
        try:
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            await send({"type": "http.response.body", "body": body})
        except OSError:  # the connection dropped while answering
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d in %.3f ms", method, path, status,
                      (time.perf_counter() - start) * 1e3,
                      extra={"request_id": request_id, "status": status, "path": path})

    async def _route(self, req: Request) -> Answer:
        parts = req.parts
        if parts == ["metrics"] and self.metrics:
            return self._server.metrics(req)
        if parts[0] != "v2":
            raise NotFound(f"no endpoint {req.path!r}; this server speaks the v2 protocol under /v2")
        n = len(parts)
        if n == 1:
            return self._server.metadata(req)
        section = parts[1]
        if section == "health" and n == 3 and parts[2] in ("live", "ready"):
            return self._server.health(req)
        if section == "systemsharedmemory" and self._shm is not None:
            return await self._shm.handle(req)
        if section == "models":
            return await self._models.handle(req)
        if section == "repository":
            return await self._repository.handle(req)
        raise NotFound(f"no endpoint {req.path!r}")

    # ------------------------------------------------------------------ the lane

    def serve_now(self, model: str, headers: dict[str, str], body: bytes, peer: Peer | None = None
                  ) -> Answer | Coroutine[Any, Any, Answer] | None:
        """``POST /v2/models/{model}/infer`` with its body read, served without a task.

        For the local API's fast lane (:mod:`cloud.http._lane`), called on the event loop:
        when the model's batcher runs the request inline, the answer is returned ready
        to write (status, body, headers with ``content-length`` and ``x-request-id``);
        when the runtime queued it for its worker, a coroutine to await for that answer.
        ``None``: nothing was done (the request needs the ordinary route: a busy model,
        compressed or unusual bodies, outputs into shared memory, a body that does not
        decode, whose error the ordinary route then reports).
        """
        return self._infer.serve_now(model, headers, body, peer)


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

