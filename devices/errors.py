"""The error tree shared by ``devices``, ``partition`` and ``edge``.

``devices`` is the base layer, so the root lives here and the other packages re-export
the leaves they raise. ``cloud`` stands alone and has its own tree in ``cloud.errors``.

    EdgecutError
    ├── ConfigError            a config file, profile or CLI value is invalid
    │   ├── UnknownProfileError    no device profile by that name
    │   └── SensorUnreadable       a power sensor is present but this user cannot read it
    ├── ModelError             a model file cannot be read or is not a valid model
    ├── ModelInputError        a tensor given to a session is missing, unknown or malformed
    ├── BackendError           a runtime backend failed to load or run a model
    ├── PartitionError         a graph cannot be analysed, cut or split
    ├── OffloadError           the cloud leg of a request failed
    │   ├── CloudUnavailable       the service cannot be reached or is unhealthy
    │   ├── OffloadRejected        the service answered with an error status
    │   └── DeadlineExceeded       the cloud leg would miss the request's deadline
    │       └── TransferAbandoned      an upload given up because its progress said so
    ├── ModelUpdateError       a model deployment was rejected (checksum, warm-up, ...)
    └── FleetError             the MQTT fleet link failed or got an invalid message
        └── TrustError             a fleet message failed a trust check (signature,
                                   freshness, counter, a key only the operator may set)

Every message names the thing (file, key, tensor, model) and what was expected.
"""

from __future__ import annotations


class EdgecutError(Exception):
    """Root of every error edgecut raises on purpose."""


class ConfigError(EdgecutError):
    """A config file, device profile or command-line value is invalid."""


class UnknownProfileError(ConfigError):
    """No device profile has the requested name."""


class SensorUnreadable(ConfigError):
    """A power sensor exists on this board but cannot be read (permissions, driver)."""


class ModelError(EdgecutError):
    """A model file is missing, unreadable or not a valid model."""


class ModelInputError(EdgecutError, ValueError):
    """An input tensor is missing, unknown, or has the wrong dtype, shape or values."""


class BackendError(EdgecutError):
    """A runtime backend failed to load or run a model."""


class PartitionError(EdgecutError):
    """A model graph cannot be analysed, cut or split."""


class OffloadError(EdgecutError):
    """The cloud leg of a request failed."""


class CloudUnavailable(OffloadError):
    """The cloud service cannot be reached, is not ready, or its circuit is open."""


class OffloadRejected(OffloadError):
    """The cloud service answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeadlineExceeded(OffloadError):
    """The cloud leg would finish after the request's deadline.

    What the client saw of the upload, when it knows (``None`` when it does not, e.g. a
    deadline that passed between attempts): ``sent_bytes``, the request body handed to
    the network before the time ran out; ``upload_s``, the seconds the whole body took to
    be handed over when all of it was (``None`` while some was still unsent); ``seconds``,
    how long the attempt that ran out ran. A leg that timed out after its whole upload
    was waiting on the server or the answer: its time is no measure of the uplink."""

    def __init__(self, message: str, *, sent_bytes: int | None = None,
                 upload_s: float | None = None, seconds: float | None = None) -> None:
        super().__init__(message)
        self.sent_bytes = sent_bytes
        self.upload_s = upload_s
        self.seconds = seconds


class TransferAbandoned(DeadlineExceeded):
    """An upload was given up part-way because its measured progress said the answer would
    come too late. ``rate_bps`` is the rate the upload was progressing at, ``sent_bytes``
    what had been handed over, ``seconds`` how long it ran."""

    def __init__(self, message: str, *, rate_bps: float = 0.0, sent_bytes: int = 0,
                 seconds: float = 0.0) -> None:
        super().__init__(message, sent_bytes=sent_bytes, seconds=seconds)
        self.rate_bps = rate_bps


class ModelUpdateError(EdgecutError):
    """A model deployment was rejected (download, checksum, signature, warm-up)."""


class FleetError(EdgecutError):
    """The MQTT fleet link failed or received an invalid message."""


class TrustError(FleetError):
    """A fleet message was refused by a trust check: a missing or wrong signature, an
    expired or replayed document, a relabelled or downgraded update, or a key that may
    be set only locally or by a signed message."""


__all__ = [
    "BackendError",
    "CloudUnavailable",
    "ConfigError",
    "DeadlineExceeded",
    "EdgecutError",
    "FleetError",
    "TrustError",
    "ModelError",
    "ModelInputError",
    "ModelUpdateError",
    "OffloadError",
    "OffloadRejected",
    "PartitionError",
    "TransferAbandoned",
    "UnknownProfileError",
]
