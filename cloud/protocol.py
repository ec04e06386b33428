"""The Open Inference Protocol (KServe v2) REST codec, as the edge client and tools use it.

A public face only: the datatype table and request type live in :mod:`cloud._tensors`
(shared by every transport), the REST message codec in :mod:`cloud.http._codec`. Importing
it costs NumPy and the standard library, nothing of the server.
"""

from __future__ import annotations

from cloud._tensors import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    datatype_of,
    dtype_of,
)
from cloud.http._codec import (
    HEADER_LENGTH,
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "RequestedOutput",
    "datatype_of",
    "decode_infer_request",
    "decode_infer_response",
    "dtype_of",
    "encode_infer_request",
    "encode_infer_response",
]
