"""Shapes as functions of the input, control flow, outputs read further, and PP-OCR."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from devices import load_profile
from devices.errors import ModelError, PartitionError
from partition import (
    SPLIT,
    LayerGraph,
    Splitter,
    choose,
    load_model,
    make_candidates,
    min_cut,
)
from partition._expr import evaluate
from partition.triton import triton_config
from tests.partition import graphs

NANO = load_profile("jetson-nano")


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in want})))  # noqa: B905


def _assert_min_cut_is_enumeration(g: LayerGraph, seed: str, rounds: int = 3) -> int:
    ideals = g.ideals()
    assert ideals is not None
    rng = random.Random(seed)
    splits = 0
    for _ in range(rounds):
        cloud = {n: rng.random() * 2 for n in g.order}
        dev = {n: v * rng.uniform(0.5, 8) for n, v in cloud.items()}
        cands = make_candidates(g, [g.crossing(s) for s in ideals], dev, cloud)
        for objective in ("latency", "energy"):
            for bw in (2e3, 1e5, 1e6, 20e6, 1e9):
                mc = min_cut(g, dev, cloud, bw, 0.001, NANO, objective)
                best = choose(cands, bw, 0.001, NANO, objective)
                want = best.latency_ms if objective == "latency" else best.energy_mj
                assert mc.cost == pytest.approx(want, rel=1e-6), (objective, bw, best.candidate.cut_id)
                splits += mc.kind == SPLIT
    return splits


@pytest.mark.parametrize("build", [graphs.output_consumed, graphs.if_outer, graphs.loop_outer])
def test_min_cut_equals_enumeration_and_every_cut_splits_exactly(build) -> None:
    model = build()
    g = LayerGraph.from_model(model)
    _assert_min_cut_is_enumeration(g, build.__name__)
    splitter = Splitter(g.model)
    x = np.random.default_rng(0).standard_normal((2, g.tensors["x"].dims[1])).astype(np.float32)
    want = _run(model, {"x": x})
    for s in g.ideals():
        cut = g.crossing(s)
        head, tail = splitter.split(cut)
        onnx.checker.check_model(head)
        onnx.checker.check_model(tail)
        mids = _run(head, {"x": x})
        got = _run(tail, {**mids, "x": x})
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=str(cut))


def test_subgraph_reads_are_edges() -> None:
    g = LayerGraph.from_model(graphs.if_outer())
    assert set(g.nodes["IF"].inputs) == {"c", "a", "b"}
    loop = LayerGraph.from_model(graphs.loop_outer())
    # The nodes computing what the body reads are not dead code; the raw input is an edge.
    assert {"A", "AS"} <= set(loop.nodes) and "x" in loop.nodes["LOOP"].inputs
    assert "LOOP" in loop.tensors["x"].consumers


def test_output_read_further_is_never_on_the_device() -> None:
    g = LayerGraph.from_model(graphs.output_consumed())
    dev = {"A": 0.0, "R": 0.0, "B": 1000.0, "T": 1000.0}  # A and R are free on the device
    cloud = {n: 0.0 for n in g.order}
    mc = min_cut(g, dev, cloud, 1e5, 0.0, NANO)
    assert mc.kind == SPLIT and mc.device_nodes == {"A"} and mc.tensors == ("a",)
    head, tail = Splitter(g.model).split(mc.tensors)  # the splitter accepts what it picked
    assert [o.name for o in tail.graph.output] == ["r", "y"]


def _conv_model(neg: bool) -> onnx.ModelProto:
    """[N,3,H,W] -> stride-2 conv -> flatten(N, -1) -> ... : dims of -1 and unnamed dims."""
    dims = [-1, 3, None, None] if neg else ["batch", 3, "height", "width"]
    x = helper.make_tensor_value_info("img", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    shape = onnx.numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["img", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
        helper.make_node("Sigmoid", ["f"], ["y"], name="sig"),
    ]
    graph = helper.make_graph(nodes, "convnet", [x], [y], initializer=[w, shape])
    if neg:  # an exporter's -1 in value_info, as the PP-OCR classifier has
        graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [-1, 4, -1, -1]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("neg", [False, True])
def test_bytes_are_exact_at_any_size_and_never_negative(neg: bool) -> None:
    model = _conv_model(neg)
    g = LayerGraph.from_model(model, sizes={"H": 64, "W": 48, "height": 64, "width": 48})
    assert set(g.symbols) == ({"N", "H", "W"} if neg else {"N", "height", "width"})
    h, w = ("H", "W") if neg else ("height", "width")
    names = [t for t in g.tensors if t != "img"]
    for n, hh, ww in [(1, 32, 32), (2, 64, 96), (1, 224, 160), (3, 30, 46)]:
        sizes = {g.batch_symbols[0]: n, h: hh, w: ww}
        got = _run_all(model, names, np.zeros((n, 3, hh, ww), np.float32))
        for t in names:
            assert g.tensors[t].bytes(n, sizes) == got[t].nbytes, (t, sizes)
            assert g.tensors[t].bytes(n, sizes) >= 0
        assert g.sizes_of({"img": (n, 3, hh, ww)}) == sizes


def _run_all(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    del probe.graph.value_info[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return _run(probe, {"img": x})


def test_halves_have_shapes_and_triton_dims() -> None:
    g = LayerGraph.from_model(_conv_model(True))
    head, tail = Splitter(g.model).split(["r"])
    onnx.checker.check_model(head)
    onnx.checker.check_model(tail)
    text = triton_config("t", tail)
    assert "dims: [ 4, -1, -1 ]" in text and "dims: [ 1 ]" not in text
    out = tail.graph.output[0].type.tensor_type.shape.dim
    assert len(out) == 2 and evaluate(out[1].dim_param, {"N": 1, "H": 64, "W": 48}) == 4 * 16 * 12


def test_tflite_gets_a_clear_message(tmp_path: Path, trained_model) -> None:
    with pytest.raises(ModelError, match="TFLite graphs are not partitioned"):
        load_model(trained_model("face_detection_short_range"))
    renamed = tmp_path / "model.onnx"  # the content says so, whatever the name
    renamed.write_bytes(Path(trained_model("face_detection_short_range")).read_bytes())
    with pytest.raises(ModelError, match="TFLite graphs are not partitioned"):
        load_model(renamed)


def test_ppocr_classifier_min_cut_equals_enumeration(trained_model) -> None:
    g = LayerGraph.from_model(load_model(trained_model("ppocr_cls")), sizes={"H": 48, "W": 192})
    assert all(t.bytes(1) > 0 for t in g.tensors.values())
    assert _assert_min_cut_is_enumeration(g, "ppocr_cls", rounds=1) > 0


def test_expression_errors_are_clear() -> None:
    with pytest.raises(PartitionError, match="no size given for 'H'"):
        evaluate("floor(H/2)", {})
    with pytest.raises(PartitionError, match="unsupported"):
        evaluate("__import__('os')", {})
    assert evaluate("floor(H/2 - 1/2) + 1", {"H": 31}) == 16


def test_unseen_trained_model_plans_exports_and_serves(tmp_path: Path, monkeypatch,
                                                       trained_model) -> None:
    """PP-OCR's classifier (dims of -1 in the file) planned from a relative path: every
    written half passes the full checker, every Triton config parses with Triton's own
    schema with the inferred dims, the plan exports from another folder, and a served
    tail answers like the whole model."""
    import tritonclient.http as triton_http
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from cloud import InferenceService, ServerThread, create_app
    from edge.cli import main
    from partition import build_plan
    from tests.conftest import free_port

    src = Path(trained_model("ppocr_cls"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "cls.onnx").write_bytes(src.read_bytes())
    monkeypatch.chdir(work)
    plan = build_plan("cls.onnx", "generic-x86", "here", 20e6, 0.02, out_dir="plan", keep=3,
                      runs=2, measure=0, threads=1, figure=False, shapes=[{"H": 48, "W": 192}])
    plan_dir = work / "plan"
    assert plan.info["sizes"]["reference"] == {"H": 48, "W": 192}
    assert all(c.up_bytes >= 0 and c.down_bytes >= 0 for c in plan.candidates)
    assert plan.candidate("offload").up_bytes == 3 * 48 * 192 * 4
    splits = [c for c in plan.candidates if c.kind == SPLIT]
    assert splits
    for c in splits:
        onnx.checker.check_model(str(plan_dir / c.head_model), full_check=True)
        onnx.checker.check_model(str(plan_dir / c.tail_model), full_check=True)
        config = model_config_pb2.ModelConfig()
        text_format.Parse((plan_dir / Path(c.tail_model).parents[1] / "config.pbtxt").read_text(), config)
        tail = onnx.load(str(plan_dir / c.tail_model))
        for spec, vi in zip(config.input, tail.graph.input):  # noqa: B905
            assert len(spec.dims) == len(vi.type.tensor_type.shape.dim) - 1 >= 1
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    assert main(["export", "triton", "--plan", str(plan_dir / "plan.json"), "--out", str(repo)]) == 0
    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    port = free_port()
    server = ServerThread(create_app(service), port=port)
    server.start()
    try:
        c = splits[0]
        x = np.random.default_rng(1).standard_normal((1, 3, 48, 192)).astype(np.float32)
        src_model = load_model(src)
        whole = _run(src_model, {"x": x})
        mids = _run(onnx.load(str(plan_dir / c.head_model)), {"x": x})
        client = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
        inputs = []
        for name, value in mids.items():
            inp = triton_http.InferInput(name, list(value.shape), "FP32")
            inp.set_data_from_numpy(value, binary_data=True)
            inputs.append(inp)
        result = client.infer(c.cloud_model, inputs)
        out = src_model.graph.output[0].name
        np.testing.assert_allclose(result.as_numpy(out), whole[out], rtol=1e-4, atol=1e-5)
    finally:
        server.stop()
        service.close()


def test_plan_costs_every_cut_at_any_size(tmp_path: Path) -> None:
    """A plan profiled at three sizes: bytes at a fourth size equal the arrays the split
    head returns; times grow with the input and pass through the profiled points; the
    plan records the sizes measured; a request's shapes bind the dims."""
    from partition import bind_sizes, build_plan, cost_at, parse_shapes

    path = tmp_path / "convnet.onnx"
    onnx.save(_conv_model(True), str(path))
    shapes = parse_shapes("H=64,W=64;H=32,W=32;128x96")
    plan = build_plan(path, "generic-x86", "here", 20e6, 0.02, keep=None, runs=3, measure=2,
                      measure_runs=3, threads=1, figure=False, shapes=shapes,
                      out_dir=tmp_path / "plan")
    info = plan.info["sizes"]
    assert info["symbols"] == ["N", "H", "W"] and info["batch_symbols"] == ["N"]
    assert info["profiled"] == [{"H": 64, "W": 64}, {"H": 32, "W": 32}, {"H": 128, "W": 96}]
    assert plan.inputs["img"]["dims"] == ["N", 3, "H", "W"]
    x = np.random.default_rng(2).standard_normal((2, 3, 80, 56)).astype(np.float32)
    env = bind_sizes(plan.inputs, {"img": x.shape})
    assert env == {"N": 2, "H": 80, "W": 56}
    want = _run(load_model(path), {"img": x})
    for c in plan.candidates:
        head_ms, tail_ms, up, down = cost_at(c, env)
        assert head_ms >= 0 and tail_ms >= 0
        rows = c.extra["by_size"]
        assert [r["sizes"]["H"] for r in rows] == [64, 32, 128]
        # At a profiled size the curve is the profiled value itself.
        at = cost_at(c, rows[2]["sizes"])
        assert at[:2] == pytest.approx((rows[2]["head_ms"], rows[2]["tail_ms"]))
        if c.kind == SPLIT:
            mids = _run(onnx.load(str(tmp_path / "plan" / c.head_model)), {"img": x})
            assert up == sum(v.nbytes for v in mids.values())
            assert down == sum(v.nbytes for v in want.values())
    local = plan.candidate("local")
    small, big = cost_at(local, {"N": 1, "H": 32, "W": 32}), cost_at(local, {"N": 1, "H": 256, "W": 256})
    assert big[0] > small[0]
    assert plan.candidate("offload").up_bytes == 3 * 64 * 64 * 4
    # The candidates measured at the reference were measured at every size too.
    assert plan.info["measured"] and not plan.info["sizes"]["notes"]


def test_sizes_further_apart_than_twice_the_elements_get_the_sizes_between() -> None:
    """Profiled sizes: the ones asked for, in their order, then the fewest geometrically
    even sizes that leave no two neighbours more than 2x apart in elements, each dim
    rounded down to the stride of 32 (worked by hand below)."""
    from partition._sizes import MAX_POINTS, elements, fill_gaps

    # 256x256 -> 512x512 is 4x: one size between, sqrt(256*512) = 362 -> 352.
    # 512x512 -> 768x768 is 2.25x: 627 -> 608.
    asked = [{"H": 512, "W": 512}, {"H": 256, "W": 256}, {"H": 768, "W": 768}]
    assert fill_gaps(asked) == asked + [{"H": 352, "W": 352}, {"H": 608, "W": 608}]
    # 2x apart (a dim equal at both ends stays): nothing added.
    widths = [{"H": 48, "W": 256}, {"H": 48, "W": 128}, {"H": 48, "W": 512}]
    assert fill_gaps(widths) == widths
    # 48x96 -> 48x320 is 3.3x: 96 * 3.33**0.5 = 175 -> 160; 320 -> 800 is 2.5x: 505 -> 480,
    # already asked for, so not added twice.
    seen = [{"H": 48, "W": 320}, {"H": 48, "W": 96}, {"H": 48, "W": 800}, {"H": 48, "W": 480}]
    assert fill_gaps(seen) == seen + [{"H": 48, "W": 160}]
    # A midpoint that rounds onto an end is left out: 32x32 -> 64x64 is 4x, 45 -> 32.
    assert fill_gaps([{"H": 64, "W": 64}, {"H": 32, "W": 32}]) == [{"H": 64, "W": 64},
                                                                   {"H": 32, "W": 32}]
    # 16 -> 4096 (256x) would take 8 parts, 7 sizes between; MAX_POINTS (8) leaves room
    # for 6, so the gap is cut into 7 even parts of 256**(1/7) = 2.208x instead:
    # 16 * 2.208**j = 35, 78, 172, 380, 840, 1854 -> 32, 64, 160, 352, 832, 1824.
    long = fill_gaps([{"L": 16}, {"L": 4096}])
    assert len(long) == MAX_POINTS and long[:2] == [{"L": 16}, {"L": 4096}]
    assert sorted(elements(p) for p in long) == [16, 32, 64, 160, 352, 832, 1824, 4096]
    assert fill_gaps([{}]) == [{}]
