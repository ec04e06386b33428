"""On the device: run models, decide per request, offload, and manage the device in a fleet.

The rooms (each subpackage's docstring says what it owns and what it may import):

- :mod:`edge.client`: what an application imports (numpy and the standard library only).
- :mod:`edge.runtime`: the ``Backend``/``Session`` contract, ONNX Runtime, LiteRT, INT8
  quantization.
- :mod:`edge.policy`: where a request is decided: the decision function, cost table, link
  estimator and ``policy.toml``.
- :mod:`edge.offload`: where a request is sent: the Open Inference Protocol client and the
  executor that runs a decision (head, transfer, tail, fallbacks).
- :mod:`edge.agent`: the daemon: its local API, ``agent.toml``, the MQTT fleet link (where
  a fleet message is handled), the telemetry spool and model updates.
- :mod:`edge.lab`: the link emulator, trace replay, the demo and deployment export.
- :mod:`edge.cli`: the ``edgecut`` command, one module per command group.

Names below are loaded on first use, so ``from edge import Client`` costs numpy and the
standard library only.
"""

from __future__ import annotations

import importlib
from typing import Any

from devices.errors import (
    BackendError,
    CloudUnavailable,
    ConfigError,
    DeadlineExceeded,
    EdgecutError,
    ModelError,
    ModelInputError,
    OffloadError,
    TransferAbandoned,
)
from edge.client import Client

# public name -> module that defines it, imported when the name is first read
_LAZY = {
    "LinkEmulator": "edge.lab",
    "Trace": "edge.lab",
    "bundled_trace": "edge.lab",
    "load_trace": "edge.lab",
    "Executor": "edge.offload",
    "Outcome": "edge.offload",
    "CircuitBreaker": "edge.offload",
    "FileToken": "edge.offload",
    "InferResult": "edge.offload",
    "KeyToken": "edge.offload",
    "OffloadClient": "edge.offload",
    "StaticToken": "edge.offload",
    "StreamPipeline": "edge.offload",
    "StreamResult": "edge.offload",
    "StreamFrame": "edge._client_stream",
    "Decision": "edge.policy",
    "LinkEstimator": "edge.policy",
    "Policy": "edge.policy",
    "PolicyConfig": "edge.policy",
    "load_policy_config": "edge.policy",
    "Backend": "edge.runtime",
    "Session": "edge.runtime",
    "TensorSpec": "edge.runtime",
    "load": "edge.runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BackendError",
    "Client",
    "CloudUnavailable",
    "ConfigError",
    "DeadlineExceeded",
    "EdgecutError",
    "ModelError",
    "ModelInputError",
    "OffloadError",
    "TransferAbandoned",
    *_LAZY,
]
