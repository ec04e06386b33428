"""Where a request is sent: the offload client and the executor that carries out a decision.

Owns: the Open Inference Protocol client (tokens, retries, circuit breaker, upload
progress), the executor that runs a decided plan (the head on the device, the crossing
tensors to the cloud, the tail there, and every fallback to local execution), and the
stream pipeline (frames overlapped across device, link and cloud, in order, with drops
counted).
May import: ``edge.runtime``, ``edge.policy``, ``partition`` (plans), ``devices``, httpx,
and (for the gRPC client, on first use) grpcio with Triton's stubs and ``cloud.grpc``.
"""

from __future__ import annotations

from typing import Any

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
]


#: The transports an offload client speaks (``[cloud] protocol`` in agent.toml).
PROTOCOLS = ("http", "grpc")


def offload_client(url: str, *, protocol: str = "http", **kwargs: Any) -> OffloadClient:
    """An offload client for ``protocol``: ``http`` (KServe v2 REST, :class:`OffloadClient`)
    or ``grpc`` (KServe v2 gRPC, ``GrpcOffloadClient``, same contract). ``kwargs`` are the
    clients' common options (``token``, ``timeout_s``, ``max_retries``, ``breaker``)."""
    if protocol == "http":
        return OffloadClient(url, **kwargs)
    if protocol == "grpc":
        from edge.offload._grpc import GrpcOffloadClient

        return GrpcOffloadClient(url, **kwargs)
    from devices.errors import ConfigError

    raise ConfigError(f"offload protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
