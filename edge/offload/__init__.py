"""Where a request is sent: the offload client and the executor that carries out a decision.

Owns: the Open Inference Protocol client (tokens, retries, circuit breaker, upload
progress), the executor that runs a decided plan (the head on the device, the crossing
tensors to the cloud, the tail there, and every fallback to local execution), and the
stream pipeline (frames overlapped across device, link and cloud, in order, with drops
counted).
May import: ``edge.runtime``, ``edge.policy``, ``partition`` (plans), ``devices``, httpx.
"""

from __future__ import annotations

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
