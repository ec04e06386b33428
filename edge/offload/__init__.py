"""Where a request is sent: the offload client and the executor that carries out a decision.

Owns: the Open Inference Protocol client (tokens, retries, circuit breaker, upload
progress), and the executor that runs a decided plan: the head on the device, the crossing
tensors to the cloud, the tail there, and every fallback to local execution.
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

__all__ = [
    "CircuitBreaker",
    "Decided",
    "Executor",
    "FileToken",
    "InferResult",
    "KeyToken",
    "OffloadClient",
    "Outcome",
    "StaticToken",
    "TokenSource",
    "UploadProgress",
]
