"""Head then tail equals the whole model for every cut candidate of four zoo graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from partition import LayerGraph, Splitter, candidate_cuts

MODELS = ("squeezenet", "inception_v1", "resnet50", "densenet121")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # No graph optimization keeps session creation cheap; the check is about the graphs, not speed.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", MODELS)
def test_every_candidate_head_then_tail_equals_full_model(zoo_model, name: str) -> None:
    model = onnx.load(zoo_model(name))
    graph = LayerGraph.from_model(model)
    cuts = candidate_cuts(graph)
    assert len(cuts) >= 20, f"{name}: expected block-boundary cuts, got {len(cuts)}"
    splitter = Splitter(graph.model)
    full = _session(graph.model)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {graph.inputs[0]: x}
    expected = full.run(None, feeds)
    worst = 0.0
    for cut in cuts:
        head, tail = splitter.split(cut)
        onnx.checker.check_model(head)
        onnx.checker.check_model(tail)
        # The batch dim stays dynamic on both sides.
        assert head.graph.input[0].type.tensor_type.shape.dim[0].dim_param
        assert tail.graph.input[0].type.tensor_type.shape.dim[0].dim_param
        mids = _session(head).run(None, feeds)
        assert [o.name for o in head.graph.output] == list(cut)
        tail_feeds = dict(zip(cut, mids))
        for i in tail.graph.input:
            tail_feeds.setdefault(i.name, feeds.get(i.name))
        got = _session(tail).run(None, tail_feeds)
        for a, b in zip(got, expected):
            assert a.shape == b.shape
            worst = max(worst, float(np.max(np.abs(a - b))))
        assert worst <= 1e-4, f"{name} cut {cut}: max abs diff {worst}"
    assert worst <= 1e-4


def test_split_keeps_dynamic_batch(zoo_model) -> None:
    model = onnx.load(zoo_model("squeezenet"))
    graph = LayerGraph.from_model(model)
    cut = candidate_cuts(graph)[len(candidate_cuts(graph)) // 2]
    head, tail = Splitter(graph.model).split(cut)
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    feeds = {graph.inputs[0]: x}
    mids = _session(head).run(None, feeds)
    assert mids[0].shape[0] == 3
    got = _session(tail).run(None, dict(zip(cut, mids)))[0]
    want = _session(graph.model).run(None, feeds)[0]
    assert got.shape == want.shape and got.shape[:2] == (3, 1000)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_half_precision_tail_takes_fp16_and_answers_as_the_fp32_one(zoo_model) -> None:
    from partition import half_precision_inputs
    from partition.triton import triton_config

    model = onnx.load(zoo_model("squeezenet"))
    graph = LayerGraph.from_model(model)
    cut = next(c for c in candidate_cuts(graph) if len(c) == 1)
    head, tail = Splitter(model).split(cut)
    half, changed = half_precision_inputs(tail, cut)
    assert changed == tuple(cut)
    name = cut[0]
    (inp,) = [i for i in half.graph.input if i.name == name]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert f'name: "{name}"\n    data_type: TYPE_FP16' in triton_config("t", half)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    crossing = _session(head).run(None, {"data_0": x})[0]
    want = _session(tail).run(None, {name: crossing})[0]
    got = _session(half).run(None, {name: crossing.astype(np.float16)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-4)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    # Only float32 inputs named are changed; the original model is left as it was.
    same, none = half_precision_inputs(tail, ["not_an_input"])
    assert none == () and same == tail
    assert tail.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
