"""The model zoo: materialized topologies are valid, current and runnable; trained models
fetched from their PyPI packages load in their backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from devices.errors import ModelError
from edge import runtime
from partition import zoo

# The three biggest (vgg19 575 MB, zfnet512 349 MB, alexnet 244 MB) cost most of the time.
BIG = {"vgg19", "zfnet512", "bvlc_alexnet"}


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in zoo.ZOO_MODELS],
)
def test_materialized_model_is_valid_and_runs(name: str, zoo_model) -> None:
    path = zoo_model(name)
    onnx.checker.check_model(str(path), full_check=name not in BIG)
    model = onnx.load(str(path), load_external_data=False)
    assert _opset(model) == zoo.TARGET_OPSET == 17
    # Self-contained: no ConstantOfShape weight generators left, weights are initializers.
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    assert len(model.graph.initializer) > 0
    (inp,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]
    del model

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    outputs = sess.run(None, {inp.name: x})
    for value in outputs:
        assert value.shape[0] == 2
        assert np.isfinite(value).all()
    # The output depends on the input. Random weights give a large common mode, so the
    # outputs of two images differ little (shufflenet's softmax saturates), but they differ.
    first = outputs[0].reshape(2, -1)
    assert not np.array_equal(first[0], first[1])


def test_materialize_is_seeded() -> None:
    a = zoo.materialize("squeezenet", seed=3)
    b = zoo.materialize("squeezenet", seed=3)
    c = zoo.materialize("squeezenet", seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wc = {t.name: numpy_helper.to_array(t) for t in c.graph.initializer}
    assert wa.keys() == wc.keys()
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)


def test_batchnorm_variances_positive(zoo_model) -> None:
    model = onnx.load(str(zoo_model("inception_v2")))
    inits = {t.name: t for t in model.graph.initializer}
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns
    for node in bns:
        var = numpy_helper.to_array(inits[node.input[4]])
        assert (var > 0).all(), node.name


def test_zoo_model_into_folder(tmp_path: Path) -> None:
    path = zoo.zoo_model("squeezenet", out_dir=tmp_path)
    assert path == tmp_path / "squeezenet.onnx" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert zoo.zoo_model("squeezenet", out_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert not list(tmp_path.glob("*.onnx.*"))  # no temporary files left behind


def test_unknown_names() -> None:
    with pytest.raises(ModelError, match="zoo model 'resnet51': expected one of resnet50"):
        zoo.zoo_model("resnet51")
    with pytest.raises(ModelError, match="trained model 'yolo': expected one of ppocr_det"):
        zoo.trained_model("yolo")


@pytest.mark.parametrize("name, shape", [
    ("ppocr_cls", (2, 3, 48, 192)),
    ("ppocr_rec", (2, 3, 48, 320)),
    ("ppocr_det", (1, 3, 96, 160)),
])
def test_trained_onnx_models_run(name: str, shape: tuple[int, ...], trained_model) -> None:
    path = trained_model(name)
    onnx.checker.check_model(str(path))
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    with runtime.load(path, None, intra_op_threads=2) as session:
        out = session.run({session.inputs[0].name: x})
    (value,) = out.values()
    assert value.shape[0] == shape[0] and np.isfinite(value).all()
    if name == "ppocr_cls":
        assert value.shape == (2, 2)
        np.testing.assert_allclose(value.sum(axis=1), 1.0, rtol=1e-5)
    if name == "ppocr_rec":
        assert value.shape[2] == 6625  # 6623 characters + blank + space


@pytest.mark.parametrize("name", ["face_detection_short_range", "palm_detection_lite",
                                  "hand_landmark_lite"])
def test_trained_tflite_models_run(name: str, trained_model) -> None:
    with runtime.load(trained_model(name), None, intra_op_threads=2) as session:
        (spec,) = session.inputs
        x = np.random.default_rng(0).uniform(0, 1, spec.shape).astype(np.float32)
        out = session.run({spec.name: x})
    assert set(out) == {o.name for o in session.outputs}
    assert all(np.isfinite(v).all() for v in out.values())
