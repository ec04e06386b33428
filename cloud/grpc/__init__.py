"""The gRPC transport: KServe v2 / Triton ``GRPCInferenceService`` over the service core.

What it owns: the message codec (``_codec``: ``ModelInferRequest``/``ModelInferResponse``
<-> the core's tensors, raw contents and typed contents), the servicer that maps every
method onto an :class:`~cloud.InferenceService` with the same :class:`~cloud._gate.Gate`
(auth from the ``authorization`` metadata entry, limits) and error codes (``_servicer``),
and the ``grpc.aio`` server that runs on the HTTP server's event loop (``_server``).

The service definitions are Triton's own (``tritonclient.grpc``: ``service_pb2``,
``model_config_pb2``, the stubs), so a ``tritonclient.grpc`` client, Triton's perf tools
and DeepStream's ``nvinferserver`` talk to it unchanged. It needs the ``grpc`` extra
(``pip install edgecut[grpc]``: grpcio); the codec loads the messages on first use. It may
import the core, never the HTTP transport.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cloud.grpc._codec import (
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)

__all__ = [
    "GrpcServer",
    "InferenceServicer",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "grpc_code",
]

_LAZY = {
    "GrpcServer": "cloud.grpc._server",
    "InferenceServicer": "cloud.grpc._servicer",
    "grpc_code": "cloud.grpc._servicer",
}

if TYPE_CHECKING:
    from cloud.grpc._server import GrpcServer
    from cloud.grpc._servicer import InferenceServicer, grpc_code


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud.grpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
