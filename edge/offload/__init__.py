"""Where a request is sent: the offload client and the executor that carries out a decision.

Owns: the Open Inference Protocol client (tokens, retries, circuit breaker, upload
progress), the executor that runs a decided plan (the head on the device, the crossing
tensors to the cloud, the tail there, and every fallback to local execution), the
stream pipeline (frames overlapped across device, link and cloud, in order, with drops
counted), and the chain router (a chain's plans routed around a first hop whose breaker
is open).
May import: ``edge.runtime``, ``edge.policy``, ``partition`` (plans), ``devices``, httpx,
and (for the gRPC client, on first use) grpcio with Triton's stubs and ``cloud.grpc``.
"""

from __future__ import annotations

from typing import Any

from edge.offload._chain import ChainRoute, ChainRouter
from edge.offload._client import (
    CircuitBreaker,
    FileToken,
    InferResult,
    KeyToken,
    OffloadClient,
    StaticToken,
    TokenSource,
    UploadProgress,
)
from edge.offload._executor import Executor
from edge.offload._outcome import Decided, Outcome
from edge.offload._stream import OVERLOAD_POLICIES, StreamPipeline, StreamResult, StreamStats

__all__ = [
    "OVERLOAD_POLICIES",
    "PROTOCOLS",
    "offload_client",
    "ChainRoute",
    "ChainRouter",
    "CircuitBreaker",
    "Decided",
    "Executor",
    "FileToken",
    "InferResult",
    "KeyToken",
    "OffloadClient",
    "Outcome",
    "StaticToken",
    "StreamPipeline",
    "StreamResult",
    "StreamStats",
    "TokenSource",
    "UploadProgress",
    "follow_offload_settings",
]


#: The transports an offload client speaks (``[cloud] protocol`` in agent.toml).
PROTOCOLS = ("http", "grpc")


def offload_client(url: str, *, protocol: str = "http", settings: Any = None,
                   **kwargs: Any) -> OffloadClient:
    """An offload client for ``protocol``: ``http`` (KServe v2 REST, :class:`OffloadClient`)
    or ``grpc`` (KServe v2 gRPC, ``GrpcOffloadClient``, same contract). ``kwargs`` are the
    clients' common options (``token``, ``timeout_s``, ``max_retries``, ``breaker``);
    ``settings`` (``policy.toml``'s ``[offload]``, an ``OffloadSettings``) gives the
    timeout, retries and breaker instead (see :func:`follow_offload_settings`)."""
    if settings is not None:
        kwargs.update(timeout_s=settings.timeout_ms / 1000.0, max_retries=settings.max_retries,
                      breaker=CircuitBreaker(settings.breaker_failures,
                                             settings.breaker_reset_s))
    if protocol == "http":
        return OffloadClient(url, **kwargs)
    if protocol == "grpc":
        from edge.offload._grpc import GrpcOffloadClient

        return GrpcOffloadClient(url, **kwargs)
    from devices.errors import ConfigError

    raise ConfigError(f"offload protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def follow_offload_settings(client: Any, settings: Any) -> None:
    """Make ``client`` (either transport) follow ``policy.toml``'s ``[offload]`` keys:
    ``timeout_ms`` (the call's one timeout), ``max_retries``, ``breaker_failures`` and
    ``breaker_reset_s``. Each is read per call, so a policy pushed or reloaded while the
    device serves takes effect on the next request."""
    client.timeout_s = settings.timeout_ms / 1000.0
    client.max_retries = settings.max_retries
    client.breaker.failure_threshold = settings.breaker_failures
    client.breaker.reset_timeout_s = settings.breaker_reset_s
