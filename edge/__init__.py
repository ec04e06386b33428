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
)
from edge.client import Client
from edge.runtime import Backend, Session, TensorSpec, load

__all__ = [
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
    "Session",
    "TensorSpec",
    "load",
]
