"""On the device: runtime backends, executor, policy, offload client, link estimator,
agent daemon and the MQTT fleet link."""

from __future__ import annotations

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
from edge._emulator import LinkEmulator, Trace, bundled_trace, load_trace
from edge._executor import Executor, Outcome
from edge._offload import (
    CircuitBreaker,
    FileToken,
    InferResult,
    KeyToken,
    OffloadClient,
    StaticToken,
)
from edge.client import Client
from edge.policy import Decision, LinkEstimator, Policy, PolicyConfig, load_policy_config
from edge.runtime import Backend, Session, TensorSpec, load

__all__ = [
    "CircuitBreaker",
    "Decision",
    "Executor",
    "FileToken",
    "InferResult",
    "KeyToken",
    "LinkEmulator",
    "LinkEstimator",
    "OffloadClient",
    "Outcome",
    "Policy",
    "PolicyConfig",
    "StaticToken",
    "Trace",
    "bundled_trace",
    "load_policy_config",
    "load_trace",
    "Backend",
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
    "Session",
    "TensorSpec",
    "load",
]
