"""The offload client over gRPC: KServe v2 / Triton ``GRPCInferenceService``.

Same contract as :class:`~edge.offload._client.OffloadClient` (the executor and the agent
use either): ``infer`` with a deadline, retries where safe, re-authentication once, the
circuit breaker, and the bytes and server time of each request for the link estimator.
The deadline of each attempt is the gRPC call's deadline; the JWT travels in the
``authorization`` metadata entry; the server's time comes from the ``server-timing``
trailing metadata ``edgecut serve`` sends (Triton sends none: the link estimate then
includes the server's time, as over HTTP).

A URL picks the channel: ``grpc://host:port`` or ``http://host:port`` plain,
``grpcs://`` or ``https://`` with TLS (``ca_file`` for a private CA). It needs the grpc
extra (grpcio and Triton's stubs from ``tritonclient[grpc]``). An upload over gRPC is one
message, so a caller's ``watch`` cannot see it progress: it is not called here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from devices.errors import (
    CloudUnavailable,
    ConfigError,
    DeadlineExceeded,
    OffloadRejected,
)
from edge.offload._client import (
    AttemptFailed,
    AuthRefused,
    CircuitBreaker,
    InferResult,
    OffloadClient,
    TokenSource,
    UploadProgress,
    _server_compute,
    _server_timing,
)

__all__ = ["GrpcOffloadClient", "grpc_target"]

# gRPC status name -> the HTTP status OffloadRejected carries for the same refusal.
_REJECTED = {
    "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400, "ALREADY_EXISTS": 409, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNKNOWN": 500, "DATA_LOSS": 500,
}
_AUTH = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def grpc_target(url: str) -> tuple[str, bool]:
    """``(host:port, tls)`` of a ``grpc://``, ``grpcs://``, ``http://`` or ``https://`` URL."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.scheme not in ("grpc", "grpcs", "http", "https") or not parts.hostname:
        raise ConfigError(f"gRPC URL {url!r}: expected grpc://HOST:PORT (or grpcs://, "
                          "http://, https://)")
    tls = parts.scheme in ("grpcs", "https")
    port = parts.port or (443 if tls else 8001)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", tls


class GrpcOffloadClient(OffloadClient):
    """Client of any KServe v2 gRPC server (``edgecut serve --grpc-port``, Triton)."""

    def __init__(self, url: str, *, token: TokenSource | None = None, timeout_s: float = 10.0,
                 max_retries: int = 1, breaker: CircuitBreaker | None = None,
                 ca_file: str | None = None, max_connections: int = 4) -> None:
        try:
            import grpc
            from tritonclient.grpc import service_pb2, service_pb2_grpc
        except ImportError as exc:
            raise ConfigError(f"cloud protocol grpc needs the grpc extra: pip install "
                              f"'edgecut[grpc]' ({exc})") from exc
        self._grpc, self._pb = grpc, service_pb2
        self.base_url = url
        self.token_source = token
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.breaker = breaker or CircuitBreaker()
        target, tls = grpc_target(url)
        # One HTTP/2 connection multiplexes every call; max_connections has no role here.
        options = [("grpc.max_send_message_length", -1),
                   ("grpc.max_receive_message_length", -1),
                   ("grpc.keepalive_time_ms", 30_000)]
        if tls:
            root = Path(ca_file).read_bytes() if ca_file else None
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates=root), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_source is None:
            return ()
        return (("authorization", f"Bearer {self.token_source.token()}"),)

    def close(self) -> None:
        self._channel.close()

    # -- health -------------------------------------------------------------------------
    def live(self, timeout_s: float = 2.0) -> bool:
        try:
            return self._stub.ServerLive(self._pb.ServerLiveRequest(), timeout=timeout_s).live
        except self._grpc.RpcError:
            return False

    def ready(self, model: str | None = None, timeout_s: float = 2.0) -> bool:
        try:
            if model is None:
                return self._stub.ServerReady(self._pb.ServerReadyRequest(),
                                              timeout=timeout_s).ready
            return self._stub.ModelReady(self._pb.ModelReadyRequest(name=model),
                                         metadata=self._metadata(), timeout=timeout_s).ready
        except self._grpc.RpcError:
            return False

    def ping(self, timeout_s: float = 2.0) -> float:
        """Round trip of ``ServerLive`` in seconds (a light RTT probe)."""
        t0 = time.perf_counter()
        try:
            self._stub.ServerLive(self._pb.ServerLiveRequest(), timeout=timeout_s)
        except self._grpc.RpcError as exc:
            raise CloudUnavailable(f"{self.base_url}: health probe failed: "
                                   f"{exc.code().name}: {exc.details()}") from exc
        return time.perf_counter() - t0

    # -- inference ----------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None, *, deadline: float | None = None,
              request_id: str | None = None, idempotent: bool = True,
              watch: Callable[[UploadProgress], str] | None = None) -> InferResult:
        """Run ``model`` on the server (see :meth:`OffloadClient.infer`; ``watch`` is
        not called: a gRPC message goes out whole)."""
        from cloud.grpc import decode_infer_response, encode_infer_request

        if not self.breaker.allow():
            raise CloudUnavailable(f"{self.base_url}: circuit open after repeated failures")
        request = encode_infer_request(model, inputs, outputs,
                                       request_id=request_id or uuid.uuid4().hex[:16])
        up = request.ByteSize()
        grpc = self._grpc

        def attempt(timeout: float
                    ) -> tuple[dict[str, np.ndarray], int, int, float | None, float | None]:
            try:
                response, call = self._stub.ModelInfer.with_call(
                    request, timeout=timeout, metadata=self._metadata())
            except grpc.RpcError as exc:
                raise _translate(model, self.base_url, exc, timeout) from exc
            try:
                result = decode_infer_response(response)
            except Exception as exc:  # a server that speaks the protocol wrongly
                raise OffloadRejected(f"model '{model}': malformed response: {exc}",
                                      status=200) from exc
            trailing = {k: v for k, v in (call.trailing_metadata() or ())
                        if isinstance(v, str)}
            return (result, up, response.ByteSize(), _server_timing(trailing),
                    _server_compute(trailing))

        return self._with_retries(model, attempt, deadline, idempotent)


def _translate(model: str, url: str, exc: Any, timeout: float) -> Exception:
    """A failed call as the offload error tree (via the retry loop's exceptions)."""
    code, details = exc.code().name, exc.details() or ""
    said = f"model '{model}': server answered {code}: {details}"
    if code in _AUTH:
        return AuthRefused(OffloadRejected(said, status=_AUTH[code]))
    if code == "DEADLINE_EXCEEDED":
        return AttemptFailed(DeadlineExceeded(
            f"model '{model}': no answer within {timeout * 1000:.0f} ms"))
    if code == "RESOURCE_EXHAUSTED" and "larger than" in details:
        return OffloadRejected(said, status=413)  # the message is over the server's limit
    if code in _REJECTED:
        return OffloadRejected(said, status=_REJECTED[code])
    # UNAVAILABLE (refused, reset, stopping), RESOURCE_EXHAUSTED (queue full), ABORTED,
    # CANCELLED: the service could not take it now.
    sent = "connect" not in details.lower()
    return AttemptFailed(CloudUnavailable(f"{url}: {said}"), sent=sent)
