"""``edgecut run`` end to end: in process through ``edge.cli.main`` and as the installed
console script, on real models, with good and bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from edge.cli import main
from tests.onnx_files import make_model, save_model

EDGECUT = Path(sys.executable).with_name("edgecut")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """x float32 [N, 4] -> y = relu(x); a second model with two inputs a, b."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = make_model(graph)
    path = tmp_path_factory.mktemp("models") / "relu.onnx"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory) -> Path:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"])], "add", [a, b], [s])
    model = make_model(graph)
    path = tmp_path_factory.mktemp("models") / "add.onnx"
    save_model(model, path)
    return path


def _one_error_line(capsys, code: int) -> str:
    out = capsys.readouterr()
    assert code == 2, (code, out)
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1, out.err
    assert lines[0].startswith("edgecut: error: ")
    assert "Traceback" not in out.err + out.out
    return lines[0]


def test_run_zoo_model_with_random_input(capsys, zoo_model) -> None:
    code = main(["run", str(zoo_model("squeezenet")), "--device", "generic-x86", "--repeat", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "device    generic-x86  providers: CPUExecutionProvider" in out
    assert "input     data_0  float32 [1, 3, 224, 224]" in out
    assert "output    softmaxout_1  float32 [1, 1000, 1, 1]" in out
    assert "latency" in out and "(median of 2)" in out


def test_run_with_npy_input(capsys, tmp_path: Path, small_model: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([[-1, 2, -3, 4], [5, -6, 7, -8], [0, 0, 0, 1]], np.float32))
    code = main(["run", str(small_model), "--input", f"x={tmp_path / 'x.npy'}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "input     x  float32 [3, 4]" in out
    assert "output    y  float32 [3, 4]" in out


def test_run_tflite_model(capsys, trained_model) -> None:
    code = main(["run", str(trained_model("face_detection_short_range"))])
    out = capsys.readouterr().out
    assert code == 0
    assert "providers: LiteRT" in out
    assert "output    regressors  float32 [1, 896, 16]" in out


@pytest.mark.parametrize(
    "value, words",
    [
        (np.zeros((2, 5), np.float32), "input 'x': expected dim 1 to be 4"),
        (np.zeros((2, 4), np.float64), "input 'x': expected dtype float32, got float64"),
        (np.zeros((4,), np.float32), "input 'x': expected rank 2"),
    ],
    ids=["shape", "dtype", "rank"],
)
def test_run_rejects_bad_npy(capsys, tmp_path: Path, small_model: Path, value, words) -> None:
    np.save(tmp_path / "bad.npy", value)
    line = _one_error_line(capsys, main(["run", str(small_model), "--input", str(tmp_path / "bad.npy")]))
    assert words in line


def test_run_missing_input_file(capsys, tmp_path: Path, small_model: Path) -> None:
    line = _one_error_line(capsys, main(["run", str(small_model), "--input", str(tmp_path / "nope.npy")]))
    assert "input 'x': file" in line and "nope.npy' not found" in line


def test_run_unreadable_input_file(capsys, tmp_path: Path, small_model: Path) -> None:
    (tmp_path / "text.npy").write_text("not numpy")
    line = _one_error_line(capsys, main(["run", str(small_model), "--input", str(tmp_path / "text.npy")]))
    assert "input 'x':" in line and "is not a readable .npy file" in line


def test_run_unknown_and_ambiguous_inputs(capsys, tmp_path: Path, two_input_model: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones(2, np.float32))
    line = _one_error_line(capsys, main(["run", str(two_input_model), "--input", str(tmp_path / "v.npy")]))
    assert "the model has 2 inputs (a, b)" in line and "NAME=FILE.npy" in line
    line = _one_error_line(capsys, main(["run", str(two_input_model), "--input", f"a={tmp_path / 'v.npy'}",
                                         "--input", f"c={tmp_path / 'v.npy'}"]))
    assert "missing input(s) 'b'" in line and "unknown input(s) 'c'" in line


def test_run_bad_model_files(capsys, tmp_path: Path) -> None:
    line = _one_error_line(capsys, main(["run", str(tmp_path / "absent.onnx")]))
    assert "absent.onnx': file not found" in line
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a model")
    line = _one_error_line(capsys, main(["run", str(bad)]))
    assert "bad.onnx': onnxruntime cannot load it" in line
    weird = tmp_path / "model.pt"
    weird.write_bytes(b"x")
    line = _one_error_line(capsys, main(["run", str(weird)]))
    assert "unknown file type '.pt'" in line


def test_run_unknown_device(capsys, small_model: Path) -> None:
    line = _one_error_line(capsys, main(["run", str(small_model), "--device", "jetson-tx9"]))
    assert "unknown device profile 'jetson-tx9'" in line


def test_console_script_end_to_end(tmp_path: Path, small_model: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    ok = subprocess.run([str(EDGECUT), "run", str(small_model), "--input", str(tmp_path / "x.npy")],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "output    y  float32 [1, 4]" in ok.stdout
    np.save(tmp_path / "wrong.npy", np.ones((1, 4), np.int32))
    bad = subprocess.run([str(EDGECUT), "run", str(small_model), "--input", str(tmp_path / "wrong.npy")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "edgecut: error: input 'x': expected dtype float32, got int32"
