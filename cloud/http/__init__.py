"""The HTTP/REST transport of the Open Inference Protocol (KServe v2) over the service core.

What it owns: the REST message codec (``_codec``: JSON and the binary tensor data
extension), the ASGI app that maps exactly the v2 paths onto an
:class:`~cloud.InferenceService` (``_app``, with its route families in ``_routes``,
``_infer`` and ``_extensions``), the local API's fast lane inside uvicorn's
protocol (``_lane``) and running the app with uvicorn in the foreground or a thread
(``_server``). Only this package (and :mod:`cloud.errors`' status table) knows HTTP.

It may import the core (:mod:`cloud._service`, ``_tensors``, ``_gate``, ``_shm``,
``_peer``, ``_metrics``, ``_deferred``, ``errors``), never another transport. The codec
needs NumPy only; the app and the server load uvicorn and the service on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cloud.http._codec import (
    HEADER_LENGTH,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)

__all__ = [
    "HEADER_LENGTH",
    "JsonLogFormatter",
    "ServerThread",
    "configure_logging",
    "create_app",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "lane_protocol",
    "uvicorn_config",
]

_LAZY = {
    "create_app": "cloud.http._app",
    "lane_protocol": "cloud.http._lane",
    "JsonLogFormatter": "cloud._logs",
    "ServerThread": "cloud.http._server",
    "configure_logging": "cloud._logs",
    "uvicorn_config": "cloud.http._server",
}

if TYPE_CHECKING:
    from cloud.http._app import create_app
    from cloud.http._lane import lane_protocol
    from cloud.http._server import (
        JsonLogFormatter,
        ServerThread,
        configure_logging,
        uvicorn_config,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud.http' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
