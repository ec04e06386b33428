"""The offload service: the Open Inference Protocol (KServe v2) over HTTP.

Protocol codec (pure, used by the service and by the edge offload client)::

    body, headers = encode_infer_request({"x": array}, outputs=None, binary=True)
    outputs = decode_infer_response(response_body, response_headers)  # {name: ndarray}
    request = decode_infer_request(body, headers)                       # InferRequest
    body, headers = encode_infer_response("model", {"y": array}, binary=True)

``DATATYPES`` maps v2 datatypes to NumPy dtypes; ``datatype_of``/``dtype_of`` convert.
Errors are in :mod:`cloud.errors` (``CloudError`` and its leaves, each with an HTTP status).
"""

from __future__ import annotations

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
