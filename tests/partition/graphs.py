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


def output_consumed() -> onnx.ModelProto:
    """x[N,64] -A-> r[N,4] (a model output) -B-> y[N,4]: ``r`` is returned and also read
    further, so its producer must stay in the cloud with the rest of the tail."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="A"),
        helper.make_node("Relu", ["a"], ["r"], name="R"),
        helper.make_node("MatMul", ["r", "wb"], ["b"], name="B"),
        helper.make_node("Tanh", ["b"], ["y"], name="T"),
    ]
    inits = [_w("wa", (64, 4), 6), _w("wb", (4, 4), 7)]
    return _model(nodes, [x], [r, y], inits, "output_consumed")


def if_outer() -> onnx.ModelProto:
    """An ``If`` whose branches read ``a`` and ``b`` from the outer scope (not inputs of
    the node): a cut must carry them, or compute them in the cloud."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    out_t = helper.make_tensor_value_info("yt", TensorProto.FLOAT, ["N", 8])
    out_e = helper.make_tensor_value_info("ye", TensorProto.FLOAT, ["N", 8])
    then_g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["yt"], name="then_add")],
                               "then", [], [out_t])
    else_g = helper.make_graph([helper.make_node("Sub", ["a", "b"], ["ye"], name="else_sub")],
                               "else", [], [out_e])
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="A"),
        helper.make_node("MatMul", ["x", "wb"], ["b0"], name="B"),
        helper.make_node("Relu", ["b0"], ["b"], name="BR"),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="S"),
        helper.make_node("Greater", ["s", "zero"], ["c"], name="G"),
        helper.make_node("If", ["c"], ["i"], then_branch=then_g, else_branch=else_g, name="IF"),
        helper.make_node("Tanh", ["i"], ["y"], name="T"),
    ]
    inits = [_w("wa", (32, 8), 8), _w("wb", (32, 8), 9),
             numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    return _model(nodes, [x], [y], inits, "if_outer")


def loop_outer() -> onnx.ModelProto:
    """A ``Loop`` (3 trips) whose body adds ``a``, computed outside from the input, and
    reads the raw input ``x`` too: both are edges into the loop."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
            helper.make_node("Add", ["acc_in", "a"], ["t"], name="body_add"),
            helper.make_node("Mul", ["t", "x"], ["acc_out"], name="body_mul"),
        ],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 16])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a0"], name="A"),
        helper.make_node("Sigmoid", ["a0"], ["a"], name="AS"),
        helper.make_node("MatMul", ["x", "wc"], ["c0"], name="C"),
        helper.make_node("Loop", ["trips", "", "c0"], ["acc"], body=body, name="LOOP"),
        helper.make_node("Tanh", ["acc"], ["y"], name="T"),
    ]
    inits = [_w("wa", (16, 16), 10), _w("wc", (16, 16), 11),
             numpy_helper.from_array(np.array(3, dtype=np.int64), "trips")]
    return _model(nodes, [x], [y], inits, "loop_outer")
