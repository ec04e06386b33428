"""The offload service: the Open Inference Protocol (KServe v2) over HTTP.

Layout: the private modules at this level are the protocol-agnostic core, one folder per
transport sits beside them and may import the core, never another transport::

    errors.py       the error tree (each leaf carries its HTTP status)
    _tensors.py     datatypes, the raw tensor byte layout, InferRequest (every transport)
    _service.py     InferenceService, the core's face over: _table.py (the routing table,
                    versions and canary), _loader.py (loading and unloading),
                    _dispatch.py (serving a request), _reports.py (metadata, statistics)
    _models.py      served versions, request checks, config and statistics rendering
    _batcher.py     dynamic batching and the worker threads; _runtime.py: model runtimes
    _config.py      config.pbtxt; _auth.py: JWT; _gate.py: auth and admission limits
    _shm.py         system shared memory regions; _metrics.py: Prometheus metrics
    http/           REST: the codec, the ASGI app, the local API's fast lane, uvicorn
    protocol.py     the REST codec's public face (what the edge client imports)
    _cli.py         ``edgecut serve`` and ``edgecut token``

Protocol codec (pure, used by the service and by the edge offload client)::

    body, headers = encode_infer_request({"x": array}, outputs=None, binary=True)
    outputs = decode_infer_response(response_body, response_headers)  # {name: ndarray}
    request = decode_infer_request(body, headers)                       # InferRequest
    body, headers = encode_infer_response("model", {"y": array}, binary=True)

``DATATYPES`` maps v2 datatypes to NumPy dtypes; ``datatype_of``/``dtype_of`` convert.
Errors are in :mod:`cloud.errors` (``CloudError`` and its leaves, each with an HTTP status).

Service core (protocol-agnostic) and its HTTP adapter::

    service = InferenceService("repo/")          # Triton layout; or None to host runtimes only
    service.load_all()                            # or service.load("resnet50")
    service.add_runtime("mine", MyRuntime())      # any ModelRuntime, e.g. the edge executor
    app = create_app(service, verifier=None)      # ASGI app: exactly the v2 REST paths
    with ServerThread(app, port=8000): ...        # or uvicorn.run(app), or `edgecut serve`

A model runtime (MLServer-like contract) declares ``inputs``/``outputs`` as ``TensorMeta``
(name, v2 datatype, full shape with -1 for dynamic dims), ``max_batch_size`` (0: no batch
dim) and a synchronous ``predict(inputs: dict[str, ndarray]) -> dict[str, ndarray]``; the
service calls it from one worker thread per instance, never on the event loop. Requests
are validated against ``inputs`` before ``predict`` sees them. With
``add_runtime(..., dynamic_batching=True)`` requests are concatenated along the first axis
(up to ``max_batch_size``) and the outputs split back.

``create_app`` limits: ``max_body_bytes`` (413 beyond), ``max_in_flight`` and
``max_pending_bytes`` (503 before a body is read), per-version ``max_queue_size`` (503);
``verifier=None`` turns auth off (logged as a warning). ``InferenceService.infer(name,
version, request) -> InferResult`` (outputs, version, queue/compute ms, batch size) can be
called in-process without HTTP. ``configure_logging`` / ``JsonLogFormatter``: JSON log lines
with ``request_id``.

``InferenceService`` also offers ``infer`` (async), ``model_metadata``, ``model_ready``,
``index``/``load``/``unload`` (repository extension; ``unload(name, version)`` rolls one
version back), ``set_routing`` (default version and canary fraction), ``statistics``
(Triton's statistics extension) and ``profile`` (ONNX Runtime per-node profile).

Auth: ``TokenVerifier.from_folder(dir, audience=..., issuers=[...])`` checks ES256/RS256
bearer tokens (exp, nbf, aud, iss, ``models`` scope); ``mint_token`` signs one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cloud.errors import (
    AuthError,
    CloudError,
    ExecutionError,
    Forbidden,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    RepositoryError,
    Unavailable,
)
from cloud.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    datatype_of,
    decode_infer_request,
    decode_infer_response,
    dtype_of,
    encode_infer_request,
    encode_infer_response,
)

__all__ = [
    "DATATYPES",
    "InferResult",
    "InferenceService",
    "JsonLogFormatter",
    "ModelConfig",
    "ModelRuntime",
    "OnnxRuntime",
    "Prepared",
    "Principal",
    "ServerThread",
    "TensorMeta",
    "TokenVerifier",
    "VersionPolicy",
    "config_from_text",
    "configure_logging",
    "create_app",
    "mint_token",
    "HEADER_LENGTH",
    "AuthError",
    "CloudError",
    "ExecutionError",
    "Forbidden",
    "InferRequest",
    "ModelNotReady",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ProtocolError",
    "RepositoryError",
    "RequestedOutput",
    "Unavailable",
    "datatype_of",
    "decode_infer_request",
    "decode_infer_response",
    "dtype_of",
    "encode_infer_request",
    "encode_infer_response",
]

# The service side (uvicorn, prometheus, jwt, onnxruntime) loads on first use, so that an
# edge device importing the codec pays only for NumPy.
_LAZY = {
    "create_app": "cloud.http._app",
    "Principal": "cloud._auth",
    "TokenVerifier": "cloud._auth",
    "mint_token": "cloud._auth",
    "ModelConfig": "cloud._config",
    "VersionPolicy": "cloud._config",
    "config_from_text": "cloud._config",
    "ModelRuntime": "cloud._runtime",
    "OnnxRuntime": "cloud._runtime",
    "Prepared": "cloud._runtime",
    "TensorMeta": "cloud._runtime",
    "ServerThread": "cloud.http._server",
    "JsonLogFormatter": "cloud._logs",
    "configure_logging": "cloud._logs",
    "InferenceService": "cloud._service",
    "InferResult": "cloud._service",
}

if TYPE_CHECKING:
    from cloud._auth import Principal, TokenVerifier, mint_token
    from cloud._config import ModelConfig, VersionPolicy, config_from_text
    from cloud._logs import JsonLogFormatter, configure_logging
    from cloud._runtime import ModelRuntime, OnnxRuntime, Prepared, TensorMeta
    from cloud._service import InferenceService, InferResult
    from cloud.http._app import create_app
    from cloud.http._server import ServerThread


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
