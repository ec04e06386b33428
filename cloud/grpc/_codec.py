"""KServe v2 / Triton gRPC inference messages <-> the core's tensors.

Pure: protobuf messages in, :class:`~cloud._tensors.InferRequest` and NumPy arrays out (and
back), for the server (requests in, responses out) and the edge offload client (the other
way). The message classes are Triton's own (``tritonclient.grpc.service_pb2``).

Tensor data travels in ``raw_input_contents`` / ``raw_output_contents`` (one entry per
tensor, in order, the layout of :mod:`cloud._tensors`) or in the typed
``InferTensorContents`` fields; a request uses one way for all its inputs, as in Triton.
Every malformed message raises :class:`~cloud.errors.ProtocolError` naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cloud._tensors import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    binary_view,
    check_shape,
    datatype_of,
    element_count,
    from_binary,
    is_int,
)
from cloud.errors import ProtocolError

__all__ = [
    "CONTENTS_FIELD",
    "decode_infer_request",
    "decode_infer_response",
    "encode_infer_request",
    "encode_infer_response",
    "param_value",
    "set_param",
]

#: v2 datatype -> the InferTensorContents field that carries it (FP16 has none: raw only).
CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _pb() -> Any:
    from tritonclient.grpc import service_pb2

    return service_pb2


def param_value(param: Any) -> Any:
    """The Python value of an ``InferParameter`` (or ``ModelRepositoryParameter``)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def set_param(param: Any, value: Any) -> None:
    """Set an ``InferParameter`` from a Python bool, int, float or str."""
    if isinstance(value, bool):
        param.bool_param = value
    elif is_int(value):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise ProtocolError(f"parameter value {value!r}: expected a bool, int, float or str")


def _params(where: str, entries: Any) -> dict[str, Any]:
    out = {}
    for key, value in entries.items():
        got = param_value(value)
        if got is None:
            raise ProtocolError(f"{where}: parameter {key!r} has no value set")
        out[key] = got
    return out


def _from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(
            f"tensor {name!r}: {datatype} data has no typed contents field; send it in "
            "raw_input_contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise ProtocolError(
            f"tensor {name!r}: shape {list(shape)} needs {count} elements, {field} has "
            f"{len(values)}")
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        for i, item in enumerate(values):
            array[i] = bytes(item)
        return array.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        info = np.iinfo(dtype)
        lo, hi = min(values), max(values)
        if lo < info.min or hi > info.max:
            raise ProtocolError(
                f"tensor {name!r}: values {lo}..{hi} do not fit datatype {datatype}")
    return np.array(values, dtype=dtype).reshape(shape)


def _check_contents_unused(name: str, contents: Any) -> None:
    if any(len(getattr(contents, f)) for f in set(CONTENTS_FIELD.values())):
        raise ProtocolError(
            f"tensor {name!r}: has typed contents while the request also carries "
            "raw_input_contents (or a shared memory region); use one per request")


def decode_infer_request(message: Any, *, shared_memory: Any = None,
                         check: Any = None) -> InferRequest:
    """A ``ModelInferRequest`` as the core's :class:`InferRequest` (validated).

    ``shared_memory``: reads inputs whose parameters name a ``shared_memory_region`` (the
    system shared memory extension); without it such inputs are refused.
    ``check(name, datatype, shape)``: called for every input before its data is decoded
    (the service's check against the model and its element caps).
    """
    tensors = message.inputs
    raw = message.raw_input_contents
    if not tensors:
        raise ProtocolError("'inputs' must list at least one tensor")
    if raw and len(raw) != len(tensors):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs; send one "
            "per input, in the order of 'inputs'")
    inputs: dict[str, np.ndarray] = {}
    input_parameters: dict[str, dict] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise ProtocolError(f"inputs[{index}]: 'name' must be a non-empty string")
        if name in inputs:
            raise ProtocolError(f"tensor {name!r} appears twice in 'inputs'")
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise ProtocolError(
                f"tensor {name!r}: unknown datatype {datatype!r}; expected one of "
                f"{', '.join(DATATYPES)}")
        shape = check_shape(name, list(tensor.shape))
        if check is not None:
            check(name, datatype, shape)
        params = _params(f"tensor {name!r}", tensor.parameters)
        if "shared_memory_region" in params:
            _check_contents_unused(name, tensor.contents)
            if raw and len(raw[index]):
                raise ProtocolError(
                    f"tensor {name!r}: names shared_memory_region and has raw contents")
            if shared_memory is None:
                raise ProtocolError(
                    f"tensor {name!r}: names shared_memory_region but this server has the "
                    "system shared memory extension off")
            inputs[name] = shared_memory.read(name, datatype, shape, params)
        elif raw:
            _check_contents_unused(name, tensor.contents)
            inputs[name] = from_binary(name, datatype, shape, memoryview(raw[index]))
        else:
            inputs[name] = _from_contents(name, datatype, shape, tensor.contents)
        input_parameters[name] = params
    outputs: tuple[RequestedOutput, ...] | None = None
    if message.outputs:
        seen: list[RequestedOutput] = []
        for index, out in enumerate(message.outputs):
            if not out.name:
                raise ProtocolError(f"outputs[{index}]: 'name' must be a non-empty string")
            if any(o.name == out.name for o in seen):
                raise ProtocolError(f"output {out.name!r} requested twice")
            seen.append(RequestedOutput(out.name, True,
                                        _params(f"output {out.name!r}", out.parameters)))
        outputs = tuple(seen)
    return InferRequest(
        inputs=inputs,
        id=message.id or None,
        parameters=_params("request", message.parameters),
        input_parameters=input_parameters,
        outputs=outputs,
        binary_outputs=True,
    )


def encode_infer_response(model: str, version: str, outputs: Mapping[str, np.ndarray], *,
                          request_id: str | None = None,
                          shared_memory: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``.

    ``shared_memory``: outputs already written to a region, described by these parameters
    (their raw entry is empty, so that the others keep their index as Triton's clients
    read them).
    """
    pb = _pb()
    response = pb.ModelInferResponse(model_name=model, model_version=version,
                                     id=request_id or "")
    placed = shared_memory or {}
    raw = response.raw_output_contents
    for name, value in outputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array.dtype)
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        where = placed.get(name)
        if where is not None:
            for key, item in where.items():
                set_param(tensor.parameters[key], item)
            raw.append(b"")
        else:
            raw.append(bytes(binary_view(name, array, datatype)))
    return response


def encode_infer_request(model: str, inputs: Mapping[str, np.ndarray],
                         outputs: Sequence[str] | None = None, *, version: str = "",
                         request_id: str | None = None,
                         parameters: Mapping[str, Any] | None = None) -> Any:
    """A ``ModelInferRequest`` with every input in ``raw_input_contents``."""
    if not inputs:
        raise ProtocolError("an inference request needs at least one input")
    pb = _pb()
    request = pb.ModelInferRequest(model_name=model, model_version=version or "",
                                   id=request_id or "")
    for key, value in (parameters or {}).items():
        set_param(request.parameters[key], value)
    raw = request.raw_input_contents
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatype_of(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(bytes(binary_view(name, array, datatype)))
    for name in outputs or ():
        request.outputs.add(name=name)
    return request


def decode_infer_response(message: Any) -> dict[str, np.ndarray]:
    """A ``ModelInferResponse``'s outputs as ``{name: array}`` (raw or typed contents)."""
    raw = message.raw_output_contents
    result: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.outputs):
        name = tensor.name
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise ProtocolError(f"output {name!r}: unknown datatype {datatype!r}")
        shape = check_shape(name, list(tensor.shape))
        if index < len(raw):
            result[name] = from_binary(name, datatype, shape, memoryview(raw[index]))
        else:
            result[name] = _from_contents(name, datatype, shape, tensor.contents)
    return result
