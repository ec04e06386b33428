"""Real model topologies and trained models for tests, benchmarks and the demo.

Two sources, neither of them a model hub:

* The ``onnx`` package ships model-zoo topologies (ResNet-50, Inception, DenseNet, ...)
  under ``onnx/backend/test/data/light/`` with every weight replaced by a
  ``ConstantOfShape`` node. :func:`materialize` turns one into a self-contained,
  checker-valid model with seeded random weights (He-scaled convolutions, positive
  BatchNorm variances so activations stay finite), a dynamic batch dimension, and a
  current opset.
* Trained models come out of PyPI packages without installing them
  (``pip download --no-deps`` and unzip): PP-OCRv4 from ``rapidocr-onnxruntime`` and
  the ``.tflite`` models of ``mediapipe==0.10.14``.

Files are cached under ``$EDGECUT_CACHE`` (default ``~/.cache/edgecut``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from devices.errors import ModelError

ZOO_MODELS = (
    "resnet50",
    "inception_v1",
    "inception_v2",
    "densenet121",
    "squeezenet",
    "shufflenet",
    "vgg19",
    "bvlc_alexnet",
    "zfnet512",
)
TARGET_OPSET = 17

# Trained models: (package spec, member path in the wheel) under a short name.
TRAINED_MODELS = {
    "ppocr_det": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_rec": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "ppocr_cls": ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "face_detection_short_range": ("mediapipe==0.10.14", "mediapipe/modules/face_detection/face_detection_short_range.tflite"),
    "palm_detection_lite": ("mediapipe==0.10.14", "mediapipe/modules/palm_detection/palm_detection_lite.tflite"),
    "hand_landmark_lite": ("mediapipe==0.10.14", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite"),
}


def cache_dir() -> Path:
    """The folder edgecut caches built and fetched models in."""
    root = os.environ.get("EDGECUT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "edgecut"
    )
    return Path(root)


def _light_path(name: str) -> Path:
    base = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    path = base / f"light_{name}.onnx"
    if not path.is_file():
        raise ModelError(
            f"zoo model '{name}': not shipped by onnx {onnx.__version__}; "
            f"expected one of {', '.join(ZOO_MODELS)}"
        )
    return path


def _weight_role(consumers: list[tuple[onnx.NodeProto, int]]) -> tuple[str, int]:
    """How a weight is used: (op type, input index) of its first real consumer."""
    for node, index in consumers:
        return node.op_type, index
    return "", -1


def _random_weight(
    shape: tuple[int, ...], role: tuple[str, int], node_attrs: dict, rng: np.random.Generator
) -> np.ndarray:
    op, index = role
    size = int(np.prod(shape)) if shape else 1
    if op == "Conv" and index == 1 and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if op == "Gemm" and index == 1 and len(shape) == 2:
        fan_in = shape[1] if node_attrs.get("transB", 0) else shape[0]
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in))
    if op == "BatchNormalization":
        if index == 1:  # scale
            return rng.uniform(0.5, 1.0, size).astype(np.float32).reshape(shape)
        if index == 4:  # variance must be positive
            return rng.uniform(0.5, 1.5, size).astype(np.float32).reshape(shape)
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05))
    if op == "Mul":  # DenseNet and Inception-v2 write BatchNorm's scale as Unsqueeze + Mul
        return rng.uniform(0.5, 1.0, size).astype(np.float32).reshape(shape)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def materialize(name: str, seed: int = 0, opset: int = TARGET_OPSET) -> onnx.ModelProto:
    """A self-contained copy of the zoo topology ``name`` with seeded random weights."""
    model = onnx.load(str(_light_path(name)))
    graph = model.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, inp in enumerate(node.input):
            consumers.setdefault(inp, []).append((node, i))

    def role_of(tensor: str) -> tuple[tuple[str, int], dict]:
        # Look through Unsqueeze/Reshape wrappers to the op that uses the weight.
        seen = consumers.get(tensor, [])
        while seen and seen[0][0].op_type in ("Unsqueeze", "Reshape", "Identity"):
            seen = consumers.get(seen[0][0].output[0], [])
        attrs = {}
        if seen:
            attrs = {a.name: helper.get_attribute_value(a) for a in seen[0][0].attribute}
        return _weight_role(seen), attrs

    new_inits: list[onnx.TensorProto] = []
    kept_nodes: list[onnx.NodeProto] = []
    used_shape_inits: set[str] = set()
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            role, attrs = role_of(node.output[0])
            value = _random_weight(shape, role, attrs, rng)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
            used_shape_inits.add(node.input[0])
            continue
        kept_nodes.append(node)

    # A batch-1 Reshape target becomes "copy the batch dim" (0), so any batch size runs.
    for t in graph.initializer:
        if t.name in used_shape_inits:
            continue
        arr = numpy_helper.to_array(t)
        is_reshape_target = any(n.op_type == "Reshape" and i == 1 for n, i in consumers.get(t.name, []))
        if is_reshape_target and arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
            arr = arr.copy()
            arr[0] = 0
            t = numpy_helper.from_array(arr.astype(np.int64), t.name)
        new_inits.append(t)

    used = {i for n in kept_nodes for i in n.input}
    new_inits = [t for t in new_inits if t.name in used]
    init_names = {t.name for t in new_inits}
    data_inputs = [
        i for i in graph.input if i.name not in init_names and i.name in used
    ]
    for inp in data_inputs:
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    outputs = []
    for out in graph.output:
        elem = out.type.tensor_type.elem_type
        outputs.append(helper.make_tensor_value_info(out.name, elem, None))

    new_graph = helper.make_graph(
        kept_nodes, f"{name}", data_inputs, outputs, initializer=new_inits
    )
    new_model = helper.make_model(
        new_graph, opset_imports=[helper.make_opsetid("", model.opset_import[0].version)],
        producer_name="edgecut.zoo",
    )
    new_model.ir_version = 7  # IR >= 4 lets initializers stay out of graph.input
    converted = version_converter.convert_version(new_model, opset)
    converted.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(converted)
    # Keep output shapes symbolic but typed; infer_shapes filled value_info for the rest.
    onnx.checker.check_model(inferred)
    return inferred


def _atomic_save(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def zoo_model(name: str, out_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Path of the materialized zoo model ``name``, building it on first use."""
    if name not in ZOO_MODELS:
        raise ModelError(f"zoo model '{name}': expected one of {', '.join(ZOO_MODELS)}")
    folder = Path(out_dir) if out_dir is not None else cache_dir() / "zoo"
    path = folder / f"{name}.onnx"
    if not path.is_file():
        model = materialize(name, seed=seed)
        _atomic_save(model.SerializeToString(), path)
    return path


def build_zoo(names: tuple[str, ...] | list[str] = ZOO_MODELS, out_dir: str | Path | None = None) -> list[Path]:
    """Materialize several zoo models; returns their paths."""
    return [zoo_model(n, out_dir) for n in names]


def trained_model(name: str, out_dir: str | Path | None = None) -> Path:
    """Path of a trained model fetched from a PyPI package (see ``TRAINED_MODELS``)."""
    if name not in TRAINED_MODELS:
        raise ModelError(f"trained model '{name}': expected one of {', '.join(TRAINED_MODELS)}")
    spec, member = TRAINED_MODELS[name]
    folder = Path(out_dir) if out_dir is not None else cache_dir() / "trained"
    path = folder / Path(member).name
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(prefix="edgecut-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError(f"trained model '{name}': 'pip download {spec}' failed: {proc.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(f"trained model '{name}': pip download {spec} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            # Take every model of the same package at once: they come in one download.
            for other, (other_spec, other_member) in TRAINED_MODELS.items():
                if other_spec != spec:
                    continue
                try:
                    data = zf.read(other_member)
                except KeyError:
                    if other == name:
                        raise ModelError(
                            f"trained model '{name}': {member} is not in {wheels[0].name}"
                        ) from None
                    continue
                _atomic_save(data, folder / Path(other_member).name)
    return path
