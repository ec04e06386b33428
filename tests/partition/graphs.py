"""Small ONNX graphs with known optimal cuts, built with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_files import make_model


def _model(nodes, inputs, outputs, inits, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = make_model(graph)
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def _w(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)


def chain() -> onnx.ModelProto:
    """x[N,1000] -A-> t1[N,10] -B-> t2[N,10] -C-> y[N,5]; A's weight goes through a
    Constant + Identity (a weight-only producer that must be folded)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    nodes = [
        helper.make_node("Identity", ["wa_raw"], ["wa"], name="fold_me"),
        helper.make_node("MatMul", ["x", "wa"], ["t1"], name="A"),
        helper.make_node("Relu", ["t1"], ["t2"], name="B"),
        helper.make_node("MatMul", ["t2", "wc"], ["y"], name="C"),
    ]
    return _model(nodes, [x], [y], [_w("wa_raw", (1000, 10), 0), _w("wc", (10, 5), 1)], "chain")


def diamond() -> onnx.ModelProto:
    """x[N,50] -A-> t[N,10]; t -B1-> b1[N,3]; t -B2-> b2[N,3]; b1 + b2 -> y[N,3].
    ``t`` has two consumers: a cut at ``t`` sends it once."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 50])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["t"], name="A"),
        helper.make_node("MatMul", ["t", "w1"], ["b1"], name="B1"),
        helper.make_node("MatMul", ["t", "w2"], ["b2"], name="B2"),
        helper.make_node("Add", ["b1", "b2"], ["y"], name="S"),
    ]
    inits = [_w("wa", (50, 10), 2), _w("w1", (10, 3), 3), _w("w2", (10, 3), 4)]
    return _model(nodes, [x], [y], inits, "diamond")


def skip_input() -> onnx.ModelProto:
    """x[N,8] -A-> a[N,8]; y = a + x: the tail still needs the model input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="A"),
        helper.make_node("Relu", ["a"], ["r"], name="R"),
        helper.make_node("Add", ["r", "x"], ["y"], name="S"),
    ]
    return _model(nodes, [x], [y], [_w("w", (8, 8), 5)], "skip")


def single_node() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return _model([helper.make_node("Relu", ["x"], ["y"], name="R")], [x], [y], [], "single")
