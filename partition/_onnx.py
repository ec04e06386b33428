"""ONNX model files and the proto facts the layer graph is built from: reading a model
(with TFLite refused by name), node names, the tensors a node reads (its subgraphs' outer
scope included), tensor bytes, FLOPs per node and a stable topological order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from devices.errors import ModelError


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file with a clear error for a missing or malformed one."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model '{p}': file not found")
    reject_tflite(p)
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"model '{p}': not a readable ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelError(f"model '{p}': not a readable ONNX model (no graph nodes)")
    return model


def reject_tflite(path: str | Path) -> None:
    """A clear error for a TFLite file given where an ONNX graph is needed."""
    p = Path(path)
    if p.suffix.lower() == ".tflite" or _is_tflite(p):
        raise ModelError(
            f"model '{p}': a TFLite graph; TFLite graphs are not partitioned, profiled or "
            "quantized by edgecut (it runs them whole on the device with LiteRT). Give an "
            "ONNX model, e.g. converted with tf2onnx"
        )


def _is_tflite(path: Path) -> bool:
    # A FlatBuffer with TFLite's file identifier at bytes 4..8.
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head[4:8] == b"TFL3"


def _named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    names = [n.name for n in model.graph.node]
    if all(names) and len(set(names)) == len(names):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    ensure_node_names(copy)
    return copy


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed (or duplicate-named) node a stable name ``<op>_<index>``."""
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
            while n.name in seen:
                n.name += "_"
        seen.add(n.name)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        itemsize = 4
    return int(n) * itemsize


def _ort_dtype(type_str: str) -> np.dtype:
    table = {
        "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
        "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
    }
    if type_str not in table:
        raise ModelError(f"input type {type_str} is not supported by the partitioner")
    return np.dtype(table[type_str])


def _reads(node: onnx.NodeProto) -> tuple[str, ...]:
    """What a node reads: its inputs, then what its subgraphs (If branches, Loop and Scan
    bodies, at any depth) read from the enclosing scope."""
    out = [i for i in node.input if i]
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in subs:
            out.extend(sorted(outer_names(sg)))
    return tuple(dict.fromkeys(out))


def outer_names(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from outside itself (nested subgraphs included)."""
    local = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        local.update(n.output)
    used: set[str] = set()
    for n in g.node:
        used.update(i for i in n.input if i)
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sg in subs:
                used.update(outer_names(sg))
    return used - local
