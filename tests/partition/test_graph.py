from __future__ import annotations

import numpy as np
import onnx
import pytest

from devices.errors import ModelError, PartitionError
from partition import LayerGraph, Splitter, candidate_cuts, split_model
from tests.partition import graphs


def test_chain_graph_folds_weights_and_knows_bytes() -> None:
    g = LayerGraph.from_model(graphs.chain())
    assert list(g.order) == ["A", "B", "C"]
    assert "fold_me" in g.folded  # weight-only producer is not a layer
    assert g.inputs == ("x",) and g.outputs == ("y",)
    t1 = g.tensors["t1"]
    assert t1.shape == (None, 10) and t1.dtype == np.float32
    assert t1.bytes(1) == 40 and t1.bytes(8) == 320  # batch is a parameter
    assert g.nodes["A"].inputs == ("x",)  # weights are not activations
    assert g.nodes["A"].flops == 2 * 10 * 1000
    # On a chain every edge is a cut.
    assert candidate_cuts(g) == [("t1",), ("t2",)]
    assert g.crossing({"A"}) == ("t1",)
    assert g.device_side(("t2",)) == frozenset({"A", "B"})


def test_diamond_frontiers_and_ideals() -> None:
    g = LayerGraph.from_model(graphs.diamond())
    assert g.tensors["t"].consumers == ("B1", "B2")
    assert g.crossing({"A"}) == ("t",)
    assert set(g.crossing({"A", "B1"})) == {"t", "b1"}
    ideals = g.ideals()
    # {A}, {A,B1}, {A,B2}, {A,B1,B2}; S (the output) never stays on the device alone.
    assert sorted(sorted(s) for s in ideals) == [["A"], ["A", "B1"], ["A", "B1", "B2"], ["A", "B2"]]
    assert g.is_valid_cut({"A", "B1"}) and not g.is_valid_cut({"B1"})


def test_skip_to_input_tail_gets_model_input() -> None:
    model = graphs.skip_input()
    head, tail = split_model(model, ["r"])
    assert [i.name for i in tail.graph.input] == ["r", "x"]
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    full = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    r = ort.InferenceSession(head.SerializeToString()).run(None, {"x": x})[0]
    y = ort.InferenceSession(tail.SerializeToString()).run(None, {"r": r, "x": x})[0]
    np.testing.assert_allclose(y, full, atol=1e-6)


def test_split_errors_name_the_problem() -> None:
    model = graphs.diamond()
    sp = Splitter(model)
    with pytest.raises(PartitionError, match="does not separate"):
        sp.split(["b1"])
    with pytest.raises(PartitionError, match="'nope' is not a tensor"):
        sp.split(["nope"])
    with pytest.raises(PartitionError, match="weight"):
        sp.split(["wa"])
    with pytest.raises(PartitionError, match="model output"):
        sp.split(["y"])
    head, tail = sp.split(["b1", "b2"])
    onnx.checker.check_model(head)
    onnx.checker.check_model(tail)


def test_bad_model_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff\x13")
    with pytest.raises(ModelError, match="bad.onnx"):
        LayerGraph.from_path(bad)
    with pytest.raises(ModelError, match="not found"):
        LayerGraph.from_path(tmp_path / "missing.onnx")


def test_zoo_graphs_enumerate_completely(zoo_model) -> None:
    # All four are small enough that every valid cut can be listed.
    for name, at_least in (("squeezenet", 60), ("resnet50", 150)):
        g = LayerGraph.from_model(onnx.load(zoo_model(name)))
        ideals = g.ideals()
        assert ideals is not None and len(ideals) >= at_least
        for s in ideals[:: max(1, len(ideals) // 20)]:
            assert g.is_valid_cut(s)


def test_cut_that_carries_a_model_input_along() -> None:
    import onnxruntime as ort

    model = graphs.skip_input()
    g = LayerGraph.from_model(model)
    cuts = candidate_cuts(g)
    assert cuts == [("x", "a"), ("x", "r")]  # the skip connection keeps x crossing
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    for cut in cuts:
        head, tail = split_model(model, cut)
        onnx.checker.check_model(head)
        mids = ort.InferenceSession(head.SerializeToString()).run(None, {"x": x})
        got = ort.InferenceSession(tail.SerializeToString()).run(None, dict(zip(cut, mids)))[0]
        np.testing.assert_allclose(got, want, atol=1e-6)
