"""ONNX files edgecut writes load in the oldest supported ONNX Runtime (1.16: IR <= 9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from devices import ModelError, import_onnxruntime
from partition import MAX_IR_VERSION, portable_model, save_model


def _relu(*opsets: tuple[str, int], domain: str = "") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("Relu", ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "relu", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def test_ir_version_is_lowered_to_what_the_opsets_need() -> None:
    model = _relu(("", 17))
    before = model.ir_version
    portable = portable_model(model)
    assert portable.ir_version == min(before, MAX_IR_VERSION)
    assert model.ir_version == before  # a copy: the caller's model is left as it was
    onnx.checker.check_model(portable)


def test_an_unused_newer_opset_import_is_dropped_and_a_used_one_refused() -> None:
    portable = portable_model(_relu(("", 13), ("ai.onnx.ml", 5)))
    assert [(o.domain, o.version) for o in portable.opset_import] == [("", 13)]
    with pytest.raises(ModelError, match="opset 21 of domain 'ai.onnx' is newer than ONNX Runtime 1.16"):
        portable_model(_relu(("", 21)))


def test_saved_file_loads_and_runs(tmp_path: Path) -> None:
    path = save_model(_relu(("", 17)), tmp_path / "sub" / "relu.onnx")
    assert onnx.load(str(path)).ir_version <= MAX_IR_VERSION
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))
