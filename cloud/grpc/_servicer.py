"""Triton's ``GRPCInferenceService`` over an :class:`~cloud.InferenceService` (grpc.aio).

Every method is a thin translation: read the message, ask the :class:`~cloud._gate.Gate`
(the token from the ``authorization`` metadata entry, the in-flight and pending-bytes
limits), call the core, write the answer. Core errors become gRPC status codes at one
place (:func:`grpc_code`): ProtocolError and RepositoryError INVALID_ARGUMENT, NotFound
NOT_FOUND, AuthError UNAUTHENTICATED, Forbidden PERMISSION_DENIED, PayloadTooLarge and
Overloaded RESOURCE_EXHAUSTED, ModelNotReady and Unavailable UNAVAILABLE, anything else
INTERNAL. ``ModelStreamInfer`` runs the requests of one stream concurrently (up to a
window) and answers them in the order they came; an error answers that request only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from cloud._gate import Gate
from cloud._peer import Peer, caller_of, infer_into_shm, shm_view
from cloud._service import InferenceService
from cloud.errors import (
    AuthError,
    CloudError,
    Forbidden,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    RepositoryError,
    Unavailable,
)
from cloud.grpc._codec import decode_infer_request, encode_infer_response, param_value

__all__ = ["InferenceServicer", "grpc_code"]

log = logging.getLogger("edgecut.cloud.grpc")

# Most specific first: a subclass is looked up before its base.
_CODES: tuple[tuple[type, grpc.StatusCode], ...] = (
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (RepositoryError, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)

# Requests of one stream in progress at once: enough to keep a batching model busy, few
# enough that a client that never reads its answers holds bounded memory.
_STREAM_WINDOW = 16
_LOCAL_PEERS = ("ipv4:127.", "ipv6:[::1]", "unix:")


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for a core error (INTERNAL for anything unexpected)."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _peer(context: Any) -> Peer | None:
    """gRPC's peer string ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000', 'unix:...') as a
    :class:`Peer` (a Unix-socket peer's uid is not known to gRPC: its shm use is refused)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return Peer(rest.rsplit(":", 1)[0])
    if kind == "ipv6":
        return Peer(rest.rsplit(":", 1)[0].strip("[]"))
    if kind == "unix":
        return Peer(None, None)
    return Peer(peer or "unknown")


async def _off_loop(call: Callable[[], Any]) -> Any:
    # run_in_executor rather than asyncio.to_thread: the agent may run on Python 3.8.
    return await asyncio.get_running_loop().run_in_executor(None, call)


def _authorization(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    """Translate core errors (and bugs) into the call's status."""

    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except CloudError as exc:
            self.log_error(method.__name__, exc)
            await context.abort(grpc_code(exc), str(exc))
        except Exception:  # a bug: INTERNAL, the traceback logged, the server keeps serving
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The v2 gRPC methods of one server; shares ``gate`` and ``shm`` with its HTTP app."""

    def __init__(self, service: InferenceService, gate: Gate, shm: Any = None, *,
                 max_bytes_elements: int = 1 << 20) -> None:
        self.service = service
        self.gate = gate
        self.shm = shm
        self.max_bytes_elements = max_bytes_elements  # BYTES elements one input may have

    def log_error(self, method: str, exc: CloudError) -> None:
        if isinstance(exc, Overloaded):
            self.gate.log_refused(f"gRPC {method} -> RESOURCE_EXHAUSTED", exc, {})
            return
        code = grpc_code(exc)
        level = logging.WARNING if code in (grpc.StatusCode.INTERNAL,
                                            grpc.StatusCode.UNAVAILABLE) else logging.INFO
        log.log(level, "gRPC %s -> %s: %s", method, code.name, exc)

    # ------------------------------------------------------------------ health, metadata

    @_unary
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @_unary
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.service.ready)

    @_unary
    async def ModelReady(self, request: Any, context: Any) -> Any:
        self.gate.require_model(_authorization(context), request.name)
        ready = self.service.model_ready(request.name, request.version or None)
        return service_pb2.ModelReadyResponse(ready=ready)

    @_unary
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        self.gate.principal(_authorization(context))
        meta = self.service.server_metadata()
        extensions = list(meta["extensions"])
        if self.shm is not None:
            extensions.append("system_shared_memory")
        return service_pb2.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                                  extensions=extensions)

    @_unary
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        self.gate.require_model(_authorization(context), request.name)
        meta = self.service.model_metadata(request.name, request.version or None)
        return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

    @_unary
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        self.gate.require_model(_authorization(context), request.name)
        config = self.service.model_config(request.name, request.version or None)
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=message)

    @_unary
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        visible = self.gate.visible(_authorization(context))
        if request.name:
            self.gate.require_model(_authorization(context), request.name)
            stats = self.service.statistics(request.name, request.version or None)
        else:
            stats = self.service.statistics()
            stats["model_stats"] = [s for s in stats["model_stats"] if visible(s["name"])]
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    # ------------------------------------------------------------------ repository

    @_unary
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        visible = self.gate.visible(_authorization(context))
        entries = [e for e in self.service.index(request.ready) if visible(e["name"])]
        return service_pb2.RepositoryIndexResponse(models=[
            service_pb2.RepositoryIndexResponse.ModelIndex(
                name=e["name"], version=e.get("version", ""), state=e["state"],
                reason=e.get("reason", ""))
            for e in entries
        ])

    @_unary
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self.gate.require_admin(_authorization(context), request.model_name)
        params = {k: param_value(v) for k, v in request.parameters.items()}
        if request.repository_name:
            raise RepositoryError(
                f"repository {request.repository_name!r}: this server has one repository; "
                "leave repository_name empty")
        await _off_loop(functools.partial(self.service.load, request.model_name, params))
        return service_pb2.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self.gate.require_admin(_authorization(context), request.model_name)
        params = {k: param_value(v) for k, v in request.parameters.items()}
        version = params.pop("version", None)
        params.pop("unload_dependents", None)  # no ensembles here: nothing depends on a model
        if params:
            raise RepositoryError(f"unload of {request.model_name!r}: unknown parameters "
                                  f"{sorted(params)}")
        if version is not None and not isinstance(version, str):
            raise ProtocolError("unload parameter 'version' must be a string")
        await _off_loop(functools.partial(self.service.unload, request.model_name, version))
        return service_pb2.RepositoryModelUnloadResponse()

    # ------------------------------------------------------------------ system shared memory

    def _local_shm(self, context: Any) -> tuple[Any, Any]:
        """The registry and the caller whose regions a request may see (cloud._shm: a
        region belongs to the token's subject, else to the peer's address)."""
        if self.shm is None:
            raise NotFound("this server has the system shared memory extension off")
        peer = context.peer() or ""
        if not peer.startswith(_LOCAL_PEERS):
            # Only a process on this host can share memory with the server.
            raise Forbidden(f"system shared memory is for clients on this host only, not {peer}")
        caller = caller_of(self.gate.principal(_authorization(context)), _peer(context))
        return self.shm, caller

    @_unary
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        shm, caller = self._local_shm(context)
        regions = shm.status(request.name or None, caller)
        response = service_pb2.SystemSharedMemoryStatusResponse()
        for region in regions:
            response.regions[region["name"]].CopyFrom(
                service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return response

    @_unary
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        shm, caller = self._local_shm(context)
        body = {"key": request.key, "offset": request.offset, "byte_size": request.byte_size}
        await _off_loop(functools.partial(shm.register, request.name, body, caller))
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @_unary
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        shm, caller = self._local_shm(context)
        shm.unregister(request.name or None, caller)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    # ------------------------------------------------------------------ inference

    @_unary
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        response, result = await self._infer(request, _authorization(context),
                                             _peer(context))
        # As the HTTP app's Server-Timing header: the server's share of the round trip,
        # which the edge offload client takes out of its link estimate.
        context.set_trailing_metadata((
            ("server-timing",
             f"queue;dur={result.queue_ms:.3f}, compute;dur={result.compute_ms:.3f}"),))
        return response

    async def _infer(self, message: Any, authorization: str | None,
                     peer: Peer | None = None) -> tuple[Any, Any]:
        gate = self.gate
        gate.in_flight += 1
        held = [0]
        try:
            if gate.at_limit():
                raise gate.refuse_busy()
            gate.hold(held, message.ByteSize())
            model = message.model_name
            principal = gate.principal(authorization)
            if principal is not None:
                principal.require(model)
            version = message.model_version or None
            self.service.require(model, version)
            # Regions are the caller's own (cloud._shm); inputs are checked against the
            # model before their data is decoded.
            shm = None if self.shm is None else shm_view(self.shm, principal, peer)
            request = decode_infer_request(
                message, shared_memory=shm,
                check=self.service.input_check(model, version, self.max_bytes_elements))
            result, placed = await infer_into_shm(self.service, model, version, request, shm)
            return encode_infer_response(model, result.version, result.outputs,
                                         request_id=request.id, shared_memory=placed), result
        finally:
            gate.in_flight -= 1
            gate.release(held[0])

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: Any) -> AsyncIterator[Any]:
        authorization = _authorization(context)
        peer = _peer(context)
        window: asyncio.Queue = asyncio.Queue(maxsize=_STREAM_WINDOW)

        async def one(message: Any) -> Any:
            try:
                response, _result = await self._infer(message, authorization, peer)
            except CloudError as exc:
                self.log_error("ModelStreamInfer", exc)
                return service_pb2.ModelStreamInferResponse(error_message=str(exc))
            except Exception:
                log.exception("gRPC ModelStreamInfer request failed")
                return service_pb2.ModelStreamInferResponse(error_message="internal server error")
            return service_pb2.ModelStreamInferResponse(infer_response=response)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await window.put(asyncio.ensure_future(one(message)))
            finally:
                await window.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                task = await window.get()
                if task is None:
                    break
                yield await task
            await reader  # a broken stream ends the call with its error
        finally:
            reader.cancel()
            while not window.empty():
                task = window.get_nowait()
                if task is not None:
                    task.cancel()
