"""Tensors as every transport carries them: the v2 datatype table and the raw byte layout.

Protocol-agnostic (NumPy and the standard library only): the HTTP codec's binary tensor
data extension and gRPC's ``raw_input_contents`` / ``raw_output_contents`` use the same
layout, little-endian elements in row-major order, ``BYTES`` elements each a 4-byte
little-endian length followed by that many bytes. :class:`InferRequest` is the decoded
request every transport hands the service.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.errors import ProtocolError

__all__ = [
    "DATATYPES",
    "InferRequest",
    "RequestedOutput",
    "binary_view",
    "check_shape",
    "datatype_of",
    "dtype_of",
    "from_binary",
    "is_int",
    "reshape",
    "decode_bytes_elements",
    "element_count",
    "encode_bytes_elements",
]

#: v2 datatype -> NumPy dtype (little-endian, as the binary extension sends them).
DATATYPES: Mapping[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# The inverse, derived so that the two can never disagree. Keyed by (kind, itemsize) so
# that a big-endian array still maps to its datatype (it is byte-swapped on encode).
_DATATYPE_BY_KIND: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"
}


def dtype_of(datatype: str) -> np.dtype:
    """The NumPy dtype of a v2 datatype name; ``ProtocolError`` for an unknown one."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(dtype: np.dtype | type) -> str:
    """The v2 datatype name of a NumPy dtype (object, str and bytes arrays are BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_BY_KIND[(dt.kind, dt.itemsize)]
    except KeyError:
        raise ProtocolError(f"NumPy dtype {dt} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of a request's ``outputs``: the name and whether to send it as binary."""

    name: str
    binary: bool = False
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request.

    ``outputs`` is ``None`` when the client asked for every output; ``binary_outputs`` is
    the request-level default (Triton's ``binary_data_output`` parameter) for outputs not
    listed explicitly.
    """

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    input_parameters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_outputs: bool = False

    def output_names(self, available: Sequence[str]) -> list[str]:
        """The outputs to return, in request order (or the model's order for all)."""
        if self.outputs is None:
            return list(available)
        return [o.name for o in self.outputs]

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` should be sent as binary data."""
        if self.outputs is not None:
            for o in self.outputs:
                if o.name == name:
                    return o.binary
        return self.binary_outputs

def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MAX_RANK = 32
_MAX_DIM = 2**40


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise ProtocolError(
            f"tensor {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    if len(shape) > _MAX_RANK or any(d > _MAX_DIM for d in shape):
        raise ProtocolError(
            f"tensor {name!r}: shape {shape!r} exceeds rank {_MAX_RANK} or dimension {_MAX_DIM}"
        )
    return tuple(shape)

def reshape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError as exc:  # e.g. a zero-size shape whose other dims overflow
        raise ProtocolError(f"tensor {name!r}: cannot use shape {list(shape)} ({exc})") from None


def element_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def decode_bytes_elements(name: str, raw: memoryview, count: int) -> np.ndarray:
    if count * 4 > len(raw):  # checked before allocating: each element takes >= 4 bytes
        raise ProtocolError(
            f"tensor {name!r}: {count} BYTES elements need at least {count * 4} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    out = np.empty(count, dtype=np.object_)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise ProtocolError(
                f"tensor {name!r}: BYTES data ends after {i} of {count} elements"
            )
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > end:
            raise ProtocolError(
                f"tensor {name!r}: BYTES element {i} claims {n} bytes, only {end - pos} left"
            )
        out[i] = bytes(raw[pos : pos + n])
        pos += n
    if pos != end:
        raise ProtocolError(
            f"tensor {name!r}: {end - pos} bytes left over after {count} BYTES elements"
        )
    return out


def encode_bytes_elements(name: str, array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            raise ProtocolError(
                f"tensor {name!r}: BYTES elements must be bytes or str, got {type(item).__name__}"
            )
        parts.append(struct.pack("<I", len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def from_binary(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        return reshape(name, decode_bytes_elements(name, raw, count), shape)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(
            f"tensor {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    array = reshape(name, np.frombuffer(raw, dtype=dtype), shape)
    if not array.flags.aligned:
        # A view at an odd offset (another client's JSON header length) makes ONNX Runtime
        # and NumPy take a slow element-wise path; one memcpy into an aligned array is cheaper.
        array = array.copy()
    if datatype == "BOOL" and array.size and np.any(array.view(np.uint8) > 1):
        raise ProtocolError(f"tensor {name!r}: BOOL bytes must be 0 or 1")
    return array

def binary_view(name: str, array: np.ndarray, datatype: str) -> bytes | memoryview:
    if datatype == "BYTES":
        return encode_bytes_elements(name, array)
    dt = DATATYPES[datatype]
    if array.dtype != dt or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=dt)
    return memoryview(array).cast("B")
