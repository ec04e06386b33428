"""The cloud service's errors. Only this package knows HTTP status codes.

The tree (``status`` is the HTTP code the ASGI adapter answers with)::

    CloudError (500)
    ├── ProtocolError (400)          malformed request: JSON, datatype, shape, sizes
    │   └── PayloadTooLarge (413)    body above the configured limit
    ├── AuthError (401)              missing, malformed, expired or wrongly signed token
    │   └── Forbidden (403)          valid token, model out of its ``models`` scope
    ├── NotFound (404)               unknown model, version or path
    ├── ModelNotReady (400)          known model with no loaded version (Triton's answer)
    ├── RepositoryError (400)        load/unload/config problems in the model repository
    ├── Overloaded (503)             a bounded queue is full; retry later
    ├── Unavailable (503)            the service is shutting down or the model is unloading
    └── ExecutionError (500)         the runtime failed on a valid request

The cloud package stands alone on a GPU host, so it does not share ``devices.errors``;
the edge offload client translates these at its own boundary.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CloudError",
    "ExecutionError",
    "Forbidden",
    "ModelNotReady",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ProtocolError",
    "RepositoryError",
    "Unavailable",
]


class CloudError(Exception):
    """Root of the service's errors; ``status`` is the HTTP status the adapter sends."""

    status: int = 500


class ProtocolError(CloudError):
    """The request does not follow the Open Inference Protocol (or the model's signature)."""

    status = 400


class PayloadTooLarge(ProtocolError):
    """The request body is larger than the configured ``max_body_bytes``."""

    status = 413


class AuthError(CloudError):
    """Missing or invalid bearer token."""

    status = 401


class Forbidden(AuthError):
    """A valid token whose ``models`` scope does not include the requested model."""

    status = 403


class NotFound(CloudError):
    """Unknown model, model version or endpoint."""

    status = 404


class ModelNotReady(CloudError):
    """The model is known but has no version ready to serve."""

    status = 400


class RepositoryError(CloudError):
    """A model could not be loaded or unloaded, or its configuration is invalid."""

    status = 400


class Overloaded(CloudError):
    """A bounded queue is full: the request was not accepted (retry later)."""

    status = 503


class Unavailable(CloudError):
    """The service or model version is shutting down."""

    status = 503


class ExecutionError(CloudError):
    """The model runtime failed while running a request that passed validation."""

    status = 500
