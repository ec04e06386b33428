"""Static INT8 quantization on real ONNX Runtime sessions: integer kernels, agreement with
FP32, calibration sources and their errors, and ``edgecut quantize``."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices.errors import ConfigError, ModelError
from edge.cli import main
from edge.runtime.quantize import (
    agreement,
    ctc_decode,
    edit_distance,
    infer_task,
    integer_kernels,
    load_samples,
    quantize_model,
)
from tests.onnx_files import make_model, save_model

ROOT = Path(__file__).resolve().parents[2]


def _residual_net(path: Path, seed: int = 0) -> Path:
    """conv -> relu -> conv, summed with the input (an old-style ``Sum``), pooled, a
    classifier head and a softmax: the shape of a ResNet block, small enough for a test."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])

    def w(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("w1", (8, 8, 3, 3), 0.15), w("b1", (8,), 0.1), w("w2", (8, 8, 3, 3), 0.15),
             w("b2", (8,), 0.1), w("fc", (8, 10), 0.5), w("fcb", (10,), 0.1),
             numpy_helper.from_array(np.array([0, 8], np.int64), "flat")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Sum", ["c2", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Reshape", ["g", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["m"]),
        helper.make_node("Add", ["m", "fcb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "residual", [x], [y], inits)
    model = make_model(graph, opset=13)
    onnx.checker.check_model(model)
    save_model(model, path)
    return path


def _samples(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 8, 16, 16)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def residual(tmp_path_factory) -> Path:
    return _residual_net(tmp_path_factory.mktemp("q") / "residual.onnx")


def test_residual_net_becomes_integer(tmp_path: Path, residual: Path) -> None:
    out = tmp_path / "residual.int8.onnx"
    report = quantize_model(residual, out, _samples(16, 0), evaluation=_samples(40, 1),
                            intra_op_threads=1, timing_runs=3)
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert "Sum" not in ops  # rewritten to Add so that it is quantized too
    assert report.settings["sum_to_add"] == 1
    # What ONNX Runtime runs: both convolutions and the residual add as integer kernels;
    # the classifier head (MatMul + bias) and the softmax stay in float on purpose.
    assert report.kernels.get("QLinearConv", 0) == 2
    assert report.kernels.get("QLinearAdd", 0) == 1
    assert report.float_compute_ops == 1 and report.integer_compute_ops == 3
    assert report.settings["float_head"] is True
    assert report.agreement is not None and report.latency is not None
    assert report.agreement.samples == 40
    assert report.agreement.top1_agreement >= 0.9
    assert report.agreement.cosine_mean >= 0.99
    assert report.latency.fp32_ms > 0 and report.latency.int8_ms > 0
    assert report.calibration == "16 samples given in memory"
    assert integer_kernels(out) == Counter(report.kernels)


def test_head_can_be_quantized_too(tmp_path: Path, residual: Path) -> None:
    report = quantize_model(residual, tmp_path / "all.onnx", _samples(8, 0), float_head=False)
    assert report.float_compute_ops == 0
    assert report.settings["excluded_nodes"] == []
    assert report.agreement is None and report.latency is None  # no evaluation asked


def test_without_preprocessing(tmp_path: Path, residual: Path) -> None:
    report = quantize_model(residual, tmp_path / "raw.onnx", _samples(8, 0), preprocess=False)
    assert report.settings["preprocess"] is False
    assert report.kernels.get("QLinearConv", 0) == 2 and report.kernels.get("QLinearAdd", 0) == 1


def test_zoo_model_with_random_calibration(tmp_path: Path, zoo_model) -> None:
    out = tmp_path / "squeezenet.int8.onnx"
    report = quantize_model(zoo_model("squeezenet"), out, 4, evaluation=4,
                            intra_op_threads=1, timing_runs=3)
    assert report.calibration == "4 random normal samples (seed 0)"
    assert report.evaluation == "4 random normal samples (seed 1)"
    assert report.kernels["QLinearConv"] == 26
    assert report.float_compute_ops == 0
    assert report.agreement is not None and report.agreement.cosine_mean >= 0.99
    assert out.stat().st_size < zoo_model("squeezenet").stat().st_size / 2


def test_agreement_arithmetic() -> None:
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    same = agreement([a], [a])
    assert same.top1_agreement == 1.0 and same.cosine_mean == pytest.approx(1.0)
    b = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]])  # row 0 ties -> argmax 0; row 1 flips
    result = agreement([a], [b])
    assert result.top1_agreement == 0.5 and result.positions == 2
    assert result.cosine_min == pytest.approx(1 / np.sqrt(2))
    assert result.cosine_mean == pytest.approx((1 / np.sqrt(2) + 4 / 5) / 2)
    # [N, C, 1, 1] classifier outputs compare over C, [N, T, C] per time step.
    c = np.zeros((2, 5, 1, 1))
    c[0, 3] = c[1, 1] = 1
    assert agreement([c], [c]).positions == 2
    assert agreement([np.ones((2, 7, 4))], [np.ones((2, 7, 4))]).positions == 14
    with pytest.raises(ModelError, match="outputs differ in shape"):
        agreement([a], [a[:1]])
    assert result.task == "classifier" and result.metric == "top1" and result.score == 0.5


def test_task_is_inferred_from_the_output() -> None:
    assert infer_task(np.zeros((4, 10))) == "classifier"
    assert infer_task(np.zeros((4, 10, 1, 1))) == "classifier"
    assert infer_task(np.zeros((1, 40, 6625))) == "ctc"
    assert infer_task(np.zeros((1, 1, 64, 64))) == "dense"
    assert infer_task(np.zeros((3,))) == "other"


def test_dense_maps_are_judged_by_iou_of_thresholded_masks() -> None:
    ref = np.zeros((1, 1, 8, 8))
    ref[0, 0, :4, :] = 0.9  # 32 text pixels
    cand = ref.copy()
    cand[0, 0, 3, :] = 0.2  # 8 lost below 0.3
    cand[0, 0, 4, :4] = 0.8  # 4 gained
    r = agreement([ref], [cand], threshold=0.3)
    assert r.task == "dense" and r.metric == "iou" and r.threshold == 0.3
    assert r.score == pytest.approx(24 / 36)
    # A top-1 along the last axis says nothing here; the IoU is the headline.
    assert r.score != r.top1_agreement
    # Multi-channel scores: IoU of the per-pixel argmax, pooled over classes.
    seg = np.zeros((1, 2, 2, 2))
    seg[0, 0] = [[1, 1], [0, 0]]
    seg[0, 1] = [[0, 0], [1, 1]]
    flip = seg.copy()
    flip[0, :, 0, 0] = [0, 1]
    assert agreement([seg], [flip], task="dense").score == pytest.approx((1 + 2) / (2 + 3))


def test_ctc_outputs_are_judged_by_the_decoded_text() -> None:
    def scores(path: list[int], classes: int = 5) -> np.ndarray:
        out = np.zeros((len(path), classes))
        out[np.arange(len(path)), path] = 1.0
        return out

    assert ctc_decode(scores([1, 1, 0, 1, 2, 2, 0])[None]) == [[1, 1, 2]]
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 4]) == 2
    ref = np.stack([scores([1, 1, 0, 2, 3, 0]), scores([4, 0, 4, 0, 0, 0])])
    cand = ref.copy()
    cand[0, 1] = scores([0])[0]  # 1, blank: the same text (repeats were merged anyway)
    cand[1, 2] = scores([3])[0]  # 4 4 -> 4 3: one character differs
    r = agreement([ref], [cand])
    assert r.task == "ctc" and r.metric == "sequence"
    assert r.score == 0.5 and r.char_error_rate == pytest.approx(1 / 5)
    with pytest.raises(ConfigError, match="task"):
        agreement([ref], [cand], task="segmenter")


def test_quantize_names_tflite(tmp_path: Path, trained_model) -> None:
    with pytest.raises(ModelError, match="TFLite graphs are not partitioned"):
        quantize_model(trained_model("face_detection_short_range"), tmp_path / "o.onnx", 4)


def test_calibration_folder(tmp_path: Path, residual: Path) -> None:
    for i, x in enumerate(_samples(3, 5)):
        np.save(tmp_path / f"{i}.npy", x if i else x[0])  # with and without the batch axis
    samples = load_samples(tmp_path, residual)
    assert len(samples) == 3 and all(s["x"].shape == (1, 8, 16, 16) for s in samples)
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "a.npz", x=_samples(1, 0)[0])
    assert load_samples(npz, residual)[0]["x"].shape == (1, 8, 16, 16)


@pytest.mark.parametrize("value, words", [
    (np.zeros((1, 8, 16, 16), np.float64), "input 'x': expected dtype float32, got float64"),
    (np.zeros((16, 16), np.float32), "input 'x': expected rank 4 (or 3 without the batch axis)"),
])
def test_bad_calibration_files(tmp_path: Path, residual: Path, value, words: str) -> None:
    np.save(tmp_path / "bad.npy", value)
    with pytest.raises(ConfigError) as info:
        quantize_model(residual, tmp_path / "o.onnx", tmp_path)
    assert "bad.npy" in str(info.value) and words in str(info.value)


def test_bad_calibration_sources(tmp_path: Path, residual: Path, trained_model) -> None:
    with pytest.raises(ConfigError, match="no .npy or .npz files"):
        quantize_model(residual, tmp_path / "o.onnx", tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        quantize_model(residual, tmp_path / "o.onnx", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="expected at least 1 sample"):
        quantize_model(residual, tmp_path / "o.onnx", 0)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="junk.npz': not a readable array"):
        quantize_model(residual, tmp_path / "o.onnx", tmp_path)
    # PP-OCR's recognizer takes any width: random samples cannot guess one.
    with pytest.raises(ConfigError, match=r"input 'x' has dynamic dims \['\?', 3, '\?', '\?'\]"):
        quantize_model(trained_model("ppocr_rec"), tmp_path / "o.onnx", 4)
    with pytest.raises(ConfigError, match="activation_type: expected one of uint8, int8"):
        quantize_model(residual, tmp_path / "o.onnx", 2, activation_type="int4")
    with pytest.raises(ModelError, match="file not found"):
        quantize_model(tmp_path / "absent.onnx", tmp_path / "o.onnx", 2)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="bad.onnx"):
        quantize_model(tmp_path / "bad.onnx", tmp_path / "o.onnx", 2)


def test_cli_json_with_held_out_folder(tmp_path: Path, residual: Path, capsys) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, x in enumerate(_samples(8, 3)):
        np.save(folder / f"{i:02d}.npy", x)
    out = tmp_path / "cli.int8.onnx"
    code = main(["quantize", str(residual), "--calibration", str(folder), "--out", str(out),
                 "--threads", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert out.is_file()
    assert report["calibration"] == f"the first 6 samples in {folder}"
    assert report["evaluation"].startswith(f"the last 2 samples in {folder}")
    assert report["agreement"]["samples"] == 2
    assert report["settings"]["activation_type"] == "uint8"
    assert report["latency"]["intra_op_threads"] == 1


def test_cli_text_report_and_errors(tmp_path: Path, residual: Path, capsys) -> None:
    code = main(["quantize", str(residual), "--calibration", "4", "--out",
                 str(tmp_path / "t.onnx"), "--threads", "1", "--per-tensor",
                 "--op-types", "Conv,MatMul", "--quantize-head"])
    out = capsys.readouterr().out
    assert code == 0
    assert "per-tensor weights int8, activations uint8" in out
    # Only the two convolutions and the head's MatMul became integer; the add stayed float.
    assert "3 integer compute ops, 0 float Conv/MatMul/Gemm left" in out
    assert "evaluation   16 random normal samples (seed 1)" in out
    assert "speed-up" in out and "top-1" in out
    code = main(["quantize", str(residual), "--calibration", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "t.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "--calibration" in err and "expected a folder of .npy/.npz samples or a count" in err
    code = main(["quantize", "no-such-model", "--calibration", "4", "--out", str(tmp_path / "t.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "model 'no-such-model': no such file" in err


def _bench_module():
    spec = importlib.util.spec_from_file_location("edgecut_bench_runtime", ROOT / "bench" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_trained_classifier_agreement_on_rendered_text(tmp_path: Path, trained_model) -> None:
    """PP-OCR's trained direction classifier on rendered text lines: INT8 agrees with FP32."""
    bench = _bench_module()
    calib = [bench.paddle_input(img, 192) for img, _, _ in bench.render_lines(48, seed=11)]
    lines = bench.render_lines(200, seed=12)
    evaluation = [bench.paddle_input(img, 192) for img, _, _ in lines]
    report = quantize_model(trained_model("ppocr_cls"), tmp_path / "cls.int8.onnx", calib,
                            evaluation=evaluation, timing_runs=3)
    assert report.agreement is not None
    assert report.agreement.samples == 200
    assert report.agreement.top1_agreement >= 0.98
    assert report.agreement.cosine_mean >= 0.99
