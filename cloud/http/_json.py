"""JSON tensor data of the REST protocol: (flat or nested) JSON lists <-> NumPy arrays.

Part of the REST codec (:mod:`cloud.http._codec`); every malformed list raises
:class:`~cloud.errors.ProtocolError` naming the tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cloud._tensors import DATATYPES, element_count, is_int, reshape
from cloud.errors import ProtocolError

__all__ = ["from_json", "to_json_data"]

_JSON_KINDS = {  # the NumPy kinds a JSON list may infer to, per datatype kind
    "b": {"b"},
    "i": {"i", "u"},
    "u": {"i", "u"},
    "f": {"i", "u", "f"},
}


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = element_count(shape)
    if not isinstance(data, list):
        data = [data]  # a bare scalar is the usual spelling of a single element
    if datatype == "BYTES":
        flat = _flatten_json(name, data)
        if len(flat) != count:
            raise ProtocolError(
                f"tensor {name!r}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
            )
        out = np.empty(count, dtype=np.object_)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise ProtocolError(
                    f"tensor {name!r}: BYTES data in JSON must be strings, got {item!r}"
                )
            out[i] = item.encode("utf-8")
        return reshape(name, out, shape)
    dtype = DATATYPES[datatype]
    try:
        inferred = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"tensor {name!r}: data is not a regular list of numbers ({exc})") from None
    if dtype.kind in "iu" and inferred.dtype.kind in "fO":
        # Mixed huge and small integers (UINT64 range) make NumPy infer float or object.
        flat = _flatten_json(name, data)
        if all(is_int(v) for v in flat):
            inferred = np.array(flat, dtype=object)
            if flat and (min(flat) < np.iinfo(dtype).min or max(flat) > np.iinfo(dtype).max):
                raise ProtocolError(
                    f"tensor {name!r}: values {min(flat)}..{max(flat)} do not fit datatype {datatype}"
                )
            inferred = inferred.astype(dtype)
    if inferred.size == 0:
        inferred = inferred.astype(dtype)
    elif inferred.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise ProtocolError(
            f"tensor {name!r}: data of JSON type {_json_kind_name(inferred)} does not fit "
            f"datatype {datatype}"
        )
    if inferred.size != count:
        raise ProtocolError(
            f"tensor {name!r}: shape {list(shape)} needs {count} elements, data has {inferred.size}"
        )
    if dtype.kind in "iu" and inferred.size:
        info = np.iinfo(dtype)
        lo, hi = int(inferred.min()), int(inferred.max())
        if lo < info.min or hi > info.max:
            raise ProtocolError(
                f"tensor {name!r}: values {lo}..{hi} do not fit datatype {datatype}"
            )
    with np.errstate(over="ignore"):
        return reshape(name, inferred.astype(dtype), shape)


def _json_kind_name(array: np.ndarray) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "number", "U": "string"}.get(
        array.dtype.kind, "mixed"
    )


def _flatten_json(name: str, data: list) -> list:
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
        if len(stack) > 64:
            raise ProtocolError(f"tensor {name!r}: data is nested too deeply")
    return flat


def to_json_data(name: str, array: np.ndarray) -> list:
    if array.dtype.kind in "OSU":
        out = []
        for item in array.reshape(-1):
            if isinstance(item, (bytes, bytearray, memoryview)):
                try:
                    item = bytes(item).decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(
                        f"tensor {name!r}: BYTES element is not UTF-8; send it as binary data"
                    ) from None
            elif not isinstance(item, str):
                raise ProtocolError(
                    f"tensor {name!r}: BYTES elements must be bytes or str, got {type(item).__name__}"
                )
            out.append(item)
        return out
    return array.reshape(-1).tolist()
