"""A pure codec for the Open Inference Protocol (KServe v2) REST inference messages.

No I/O, no HTTP framework: bytes and headers in, NumPy arrays out (and back). Both sides
use it: the HTTP app decodes requests and encodes responses, the edge offload client
encodes requests and decodes responses. The datatype table and the raw tensor layout are
the transports' common ground, in :mod:`cloud._tensors`.

Two body forms exist. A JSON body carries tensors as (flat or nested) JSON lists. With the
binary tensor data extension the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by the raw little-endian tensor bytes, in the order of the tensors whose
``parameters.binary_data_size`` is set. ``BYTES`` elements are each a 4-byte little-endian
length followed by that many bytes. Decoding binary tensors makes read-only
``np.frombuffer`` views over the body, never a copy.

Every malformed message raises :class:`cloud.errors.ProtocolError` with a message that
names the tensor and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cloud._tensors import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    binary_view,
    check_shape,
    datatype_of,
    dtype_of,
    from_binary,
    is_int,
)
from cloud.errors import ProtocolError
from cloud.http._json import from_json, to_json_data

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

#: Header that carries the JSON part's length in a binary-extension body.
HEADER_LENGTH = "Inference-Header-Content-Length"


# ----------------------------------------------------------------------------- helpers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def _split_body(body: bytes | memoryview, headers: Mapping[str, str]) -> tuple[dict, memoryview]:
    """Parse the JSON header; return it and the binary tail (empty for a JSON body)."""
    json_part, tail = _parts(body, headers)
    try:
        message = json.loads(bytes(json_part))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON in the request header: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(
            f"the JSON message must be an object, got {type(message).__name__}"
        )
    return message, tail


def _parts(body: bytes | memoryview, headers: Mapping[str, str]) -> tuple[memoryview, memoryview]:
    """The body's JSON header and its binary tail (empty for a JSON body)."""
    view = memoryview(body)
    raw_length = _header(headers, HEADER_LENGTH)
    if raw_length is None:
        json_part, tail = view, view[len(view):]
    else:
        try:
            length = int(raw_length)
        except ValueError:
            raise ProtocolError(
                f"{HEADER_LENGTH} must be an integer, got {raw_length!r}"
            ) from None
        if length < 0 or length > len(view):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {length} but the body has only {len(view)} bytes "
                "(truncated body?)"
            )
        json_part, tail = view[:length], view[length:]
    return json_part, tail



def _check_params(where: str, params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object, got {params!r}")
    return params



def _tensors(
    items: Mapping[str, np.ndarray],
    binary: Any,
    kind: str,
) -> tuple[list[dict], list[bytes | memoryview]]:
    """JSON descriptions and binary chunks for ``items``; ``binary(name) -> bool``."""
    described: list[dict] = []
    chunks: list[bytes | memoryview] = []
    for name, value in items.items():
        array = np.asarray(value)
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary(name):
            chunk = binary_view(name, array, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk) if isinstance(chunk, bytes) else chunk.nbytes}
            chunks.append(chunk)
        else:
            entry["data"] = to_json_data(name, array)
        described.append(entry)
    return described, chunks


_ALIGN = 64


def _assemble(message: dict, chunks: list[bytes | memoryview]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if not chunks:
        return header, {"Content-Type": "application/json"}
    # Pad the JSON header with spaces (valid JSON whitespace) so that the binary data starts
    # 64-byte aligned in the body: the receiver's views of it are then aligned arrays.
    header += b" " * (-len(header) % _ALIGN)
    body = b"".join([header, *chunks])
    return body, {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


# ----------------------------------------------------------------------------- requests


def encode_infer_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    *,
    binary: bool = True,
    binary_outputs: bool = True,
    parameters: dict | None = None,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference request; returns ``(body, headers)``.

    ``binary`` sends the inputs with the binary tensor data extension (the headers then
    include ``Inference-Header-Content-Length``); ``outputs`` selects outputs by name
    (``None``: all); ``binary_outputs`` asks the server to send outputs as binary data.
    """
    if not inputs:
        raise ProtocolError("an inference request needs at least one input")
    described, chunks = _tensors(inputs, lambda _name: binary, "input")
    message: dict[str, Any] = {}
    if request_id is not None:
        message["id"] = str(request_id)
    params = dict(parameters or {})
    if outputs is None:
        if binary_outputs:
            params["binary_data_output"] = True
    else:
        message["outputs"] = [
            {"name": n, "parameters": {"binary_data": bool(binary_outputs)}} for n in outputs
        ]
    if params:
        message["parameters"] = params
    message["inputs"] = described
    return _assemble(message, chunks)


# Request headers seen before, with their checked plan (see decode_infer_request).
_REQUEST_PLANS: dict[bytes, tuple] = {}


def decode_infer_request(body: bytes | memoryview, headers: Mapping[str, str], *,
                         shared_memory: Any = None,
                         check: Callable[[str, str, tuple[int, ...]], None] | None = None
                         ) -> InferRequest:
    """Decode and validate an inference request body (JSON or binary extension).

    ``shared_memory``: reads inputs whose parameters name a ``shared_memory_region``
    (``read(name, datatype, shape, params) -> ndarray``, the system shared memory
    extension); without it such inputs are refused. ``check(name, datatype, shape)``:
    called for every input before its data is decoded (the server checks the model's
    signature and element counts there, so a tensor the model cannot take is refused
    before any work is spent on it).
    """
    json_part, tail = _parts(body, headers)
    # A client sends the same header again and again (same shapes, the same shared
    # memory regions): its parse and checks are kept, and a repeat only reads the data
    # (the binary tail, or the regions, whose registration is checked on every read).
    key = bytes(json_part) if len(json_part) <= 4096 else b""
    plan = _REQUEST_PLANS.get(key) if key else None
    if plan is not None:
        steps, size, seen = plan
        if size == len(tail) and (shared_memory is not None or not any(s[0] for s in steps)):
            if check is not None:
                for _in_shm, name, datatype, shape, _extra in steps:
                    check(name, datatype, shape)
            inputs: dict[str, np.ndarray] = {}
            offset = 0
            for in_shm, name, datatype, shape, extra in steps:
                if in_shm:
                    inputs[name] = shared_memory.read(name, datatype, shape, extra)
                else:
                    inputs[name] = from_binary(name, datatype, shape,
                                                tail[offset : offset + extra])
                    offset += extra
            return dataclasses.replace(seen, inputs=inputs)
    request, plan = _decode_request(json_part, tail, shared_memory, check)
    if plan is not None and key:
        if len(_REQUEST_PLANS) >= 64:
            _REQUEST_PLANS.clear()
        _REQUEST_PLANS[key] = plan
    return request


def _decode_request(json_part: memoryview, tail: memoryview, shared_memory: Any,
                    check: Callable[[str, str, tuple[int, ...]], None] | None = None
                    ) -> tuple[InferRequest, tuple | None]:
    """The request, and its plan (see decode_infer_request) unless it has JSON data."""
    message, _ = _split_body(json_part, {})
    steps: list | None = []
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, got {request_id!r}")
    parameters = _check_params("request", message.get("parameters"))
    binary_outputs = parameters.get("binary_data_output", False)
    if not isinstance(binary_outputs, bool):
        raise ProtocolError(f"parameter 'binary_data_output' must be a boolean, got {binary_outputs!r}")

    raw_inputs = message.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    input_parameters: dict[str, dict] = {}
    offset = 0
    for index, entry in enumerate(raw_inputs):
        if not isinstance(entry, dict):
            raise ProtocolError(f"inputs[{index}] must be an object, got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"inputs[{index}]: 'name' must be a non-empty string")
        if name in inputs:
            raise ProtocolError(f"tensor {name!r} appears twice in 'inputs'")
        datatype = entry.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise ProtocolError(
                f"tensor {name!r}: unknown datatype {datatype!r}; expected one of "
                f"{', '.join(DATATYPES)}"
            )
        shape = check_shape(name, entry.get("shape"))
        if check is not None:
            check(name, datatype, shape)
        params = _check_params(f"tensor {name!r}", entry.get("parameters"))
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in entry:
                raise ProtocolError(f"tensor {name!r}: has both 'data' and binary_data_size")
            if not is_int(size) or size < 0:
                raise ProtocolError(
                    f"tensor {name!r}: binary_data_size must be a non-negative integer, got {size!r}"
                )
            if offset + size > len(tail):
                raise ProtocolError(
                    f"tensor {name!r}: binary_data_size {size} at offset {offset} runs past the "
                    f"{len(tail)} bytes of binary data (truncated body?)"
                )
            inputs[name] = from_binary(name, datatype, shape, tail[offset : offset + size])
            offset += size
            if steps is not None:
                steps.append((False, name, datatype, shape, size))
        elif "shared_memory_region" in params:
            if "data" in entry:
                raise ProtocolError(f"tensor {name!r}: has both 'data' and shared_memory_region")
            if shared_memory is None:
                raise ProtocolError(
                    f"tensor {name!r}: names shared_memory_region but this server has the "
                    "system shared memory extension off")
            inputs[name] = shared_memory.read(name, datatype, shape, params)
            if steps is not None:
                steps.append((True, name, datatype, shape, params))
        else:
            if "data" not in entry:
                raise ProtocolError(f"tensor {name!r}: needs 'data' or a binary_data_size parameter")
            inputs[name] = from_json(name, datatype, shape, entry["data"])
            steps = None
        input_parameters[name] = params
    if offset != len(tail):
        raise ProtocolError(
            f"binary tensor sizes add up to {offset} bytes but the body carries {len(tail)} "
            "bytes after the JSON header"
        )

    outputs: tuple[RequestedOutput, ...] | None = None
    raw_outputs = message.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list")
        seen: list[RequestedOutput] = []
        for index, entry in enumerate(raw_outputs):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ProtocolError(f"outputs[{index}] must be an object with a string 'name'")
            oname = entry["name"]
            if any(o.name == oname for o in seen):
                raise ProtocolError(f"output {oname!r} requested twice")
            oparams = _check_params(f"output {oname!r}", entry.get("parameters"))
            want = oparams.get("binary_data", binary_outputs)
            if not isinstance(want, bool):
                raise ProtocolError(f"output {oname!r}: binary_data must be a boolean, got {want!r}")
            seen.append(RequestedOutput(oname, want, oparams))
        outputs = tuple(seen)
    request = InferRequest(
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        input_parameters=input_parameters,
        outputs=outputs,
        binary_outputs=binary_outputs,
    )
    # The plan keeps no data: the request's fields other than its inputs.
    plan = None if steps is None else (tuple(steps), offset, dataclasses.replace(request, inputs={}))
    return request, plan


# ----------------------------------------------------------------------------- responses


# Response headers by output layout (see encode_infer_response).
_RESPONSE_HEADERS: dict[tuple, tuple[bytes, dict[str, str]]] = {}


def encode_infer_response(
    model_name: str,
    outputs: Mapping[str, np.ndarray],
    *,
    model_version: str | None = None,
    request_id: str | None = None,
    parameters: dict | None = None,
    binary: bool | Sequence[str] = False,
    shared_memory: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response; returns ``(body, headers)``.

    ``binary`` is ``True`` for all outputs as binary data, or the names of those to send so.
    ``shared_memory``: outputs already written to a shared memory region, described with
    these parameters and no data.
    """
    chosen = frozenset(binary) if not isinstance(binary, bool) else frozenset()

    def wants(name: str) -> bool:
        return binary if isinstance(binary, bool) else name in chosen

    # All outputs binary, of fixed-size types: the header depends only on names, types and
    # shapes, and is encoded once for each such layout.
    key: tuple | None = None
    if not shared_memory and not parameters:
        layout = []
        for name, value in outputs.items():
            if not (isinstance(value, np.ndarray) and wants(name) and value.dtype.kind in "biuf"):
                break
            layout.append((name, value.dtype.str, value.shape))
        else:
            key = (model_name, model_version, request_id, *layout)
            cached = _RESPONSE_HEADERS.get(key)
            if cached is not None:
                header, response_headers = cached
                chunks = [binary_view(name, value, datatype_of(value.dtype))
                          for name, value in outputs.items()]
                return b"".join([header, *chunks]), dict(response_headers)

    placed = shared_memory or {}
    described, chunks = _tensors(
        {n: a for n, a in outputs.items() if n not in placed} if placed else outputs,
        wants, "output")
    if placed:
        by_name = {e["name"]: e for e in described}
        described = [
            by_name.get(n) or {"name": n, "shape": list(np.shape(a)),
                               "datatype": datatype_of(np.asarray(a).dtype),
                               "parameters": dict(placed[n])}
            for n, a in outputs.items()
        ]
    message: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        message["model_version"] = str(model_version)
    if request_id is not None:
        message["id"] = request_id
    if parameters:
        message["parameters"] = parameters
    message["outputs"] = described
    body, response_headers = _assemble(message, chunks)
    if key is not None and chunks:
        if len(_RESPONSE_HEADERS) >= 64:
            _RESPONSE_HEADERS.clear()
        _RESPONSE_HEADERS[key] = (body[: int(response_headers[HEADER_LENGTH])],
                                  dict(response_headers))
    return body, response_headers


# Response headers seen before, with their checked layout (see decode_infer_response).
_RESPONSE_LAYOUTS: dict[bytes, tuple[tuple[str, str, tuple[int, ...], int], ...]] = {}


def decode_infer_response(body: bytes | memoryview, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Decode an inference response into ``{output name: array}``.

    Handles JSON and binary outputs (mixed too). An error body (``{"error": ...}``)
    raises ``ProtocolError`` carrying the server's message.
    """
    json_part, tail = _parts(body, headers)
    key = bytes(json_part) if len(json_part) <= 4096 and len(tail) else b""
    layout = _RESPONSE_LAYOUTS.get(key) if key else None
    if layout is not None:  # the same header as an earlier response: checked already
        result = {}
        offset = 0
        for name, datatype, shape, size in layout:
            result[name] = from_binary(name, datatype, shape, tail[offset : offset + size])
            offset += size
        if offset == len(tail):
            return result
    result, layout = _decode_response(json_part, tail)
    # A server answers a model's requests with the same header (outputs of the same
    # shapes, all binary): its parse and checks are kept for the next such response.
    # Only the layout is kept; each body's data is read anew.
    if layout is not None and key:
        if len(_RESPONSE_LAYOUTS) >= 64:
            _RESPONSE_LAYOUTS.clear()
        _RESPONSE_LAYOUTS[key] = layout
    return result


def _decode_response(json_part: memoryview, tail: memoryview
                     ) -> tuple[dict[str, np.ndarray], tuple | None]:
    """The outputs, and their layout when all are binary and fill the tail exactly."""
    message, _ = _split_body(json_part, {})
    if "error" in message and "outputs" not in message:
        raise ProtocolError(f"server error: {message['error']}")
    raw_outputs = message.get("outputs")
    if not isinstance(raw_outputs, list):
        raise ProtocolError("the response has no 'outputs' list")
    result: dict[str, np.ndarray] = {}
    layout: list | None = []
    offset = 0
    for index, entry in enumerate(raw_outputs):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"outputs[{index}] must be an object with a string 'name'")
        name = entry["name"]
        datatype = entry.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise ProtocolError(f"output {name!r}: unknown datatype {datatype!r}")
        shape = check_shape(name, entry.get("shape"))
        params = _check_params(f"output {name!r}", entry.get("parameters"))
        size = params.get("binary_data_size")
        if size is not None:
            if not is_int(size) or size < 0 or offset + size > len(tail):
                raise ProtocolError(
                    f"output {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(tail) - offset} bytes left in the body"
                )
            result[name] = from_binary(name, datatype, shape, tail[offset : offset + size])
            offset += size
            if layout is not None:
                layout.append((name, datatype, shape, size))
        else:
            if "data" not in entry:
                raise ProtocolError(f"output {name!r}: has neither 'data' nor binary_data_size")
            result[name] = from_json(name, datatype, shape, entry["data"])
            layout = None
    return result, (tuple(layout) if layout and offset == len(tail) else None)
