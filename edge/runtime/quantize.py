"""Static INT8 quantization of ONNX models, with a report of what it cost and gained.

:func:`quantize_model` runs ONNX Runtime's static quantizer in QDQ format with
per-channel weights, calibrated on real sample inputs, and then compares the INT8 model
with the FP32 one on a separate evaluation set: latency (interleaved, medians) and
agreement by the output's task (top-1 for a classifier, IoU of thresholded maps for a
dense output, decoded-sequence equality for a CTC recognizer; cosine similarity always).

Steps, each a small function (the samples come from ``_samples``):

1. ``quant_pre_process`` (ONNX shape inference and ORT's graph optimizations, so
   BatchNormalization is folded into the convolutions before their weights are quantized).
2. :func:`_sum_to_add`: a two-input ``Sum`` (old model-zoo exports use it for residual
   connections) becomes the identical ``Add``, which the quantizer turns into an integer
   ``QLinearAdd`` instead of leaving a float island between integer convolutions.
3. :func:`_head_nodes`: the last matrix product before each output (the classifier head)
   and a final Softmax stay in float: they decide close calls between classes and cost
   next to nothing.
4. ``quantize_static`` with a calibration reader over the samples.
5. :func:`integer_kernels`: asks ONNX Runtime which kernels the optimized INT8 graph really
   runs, so a report says whether convolutions and matrix products stayed in float.

On x86 with AVX-512 VNNI the fastest combination is unsigned 8-bit activations with
signed 8-bit per-channel weights (U8S8, ``reduce_range`` off): ORT fuses each
DequantizeLinear -> Conv -> QuantizeLinear into one ``QLinearConv`` running VNNI
kernels. Signed activations (S8S8) leave a third of ResNet-50's convolutions in float on
this CPU and are slower than FP32. Measured here (2 threads, interleaved medians):
ResNet-50 FP32 63.6 ms, U8S8 37.5 ms, S8S8 78.5 ms; with ``Sum`` rewritten to ``Add`` U8S8
runs every convolution and residual add as integer kernels (53 QLinearConv, 16
QLinearAdd) and reaches 2.3-2.7x.

Models with transformer parts (PP-OCRv4's recognizer) lose accuracy when residual adds and
normalizations are quantized; pass ``op_types=["Conv", "MatMul", "Gemm"]`` and the
``percentile`` calibration for them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from devices.errors import ModelError
from edge.runtime._compare import (
    TASKS,
    Agreement,
    Latency,
    _choice,
    agreement,
    compare_agreement,
    compare_latency,
    ctc_decode,
    edit_distance,
    infer_task,
)
from edge.runtime._samples import (
    Calibration,
    Feeds,
    _as_samples,
    _feed_reader,
    load_samples,
    random_samples,
)
from partition._portable import save_model

ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
# Ops whose float kernels are the expensive part; in an INT8 model they should be gone.
_FLOAT_COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm", "ConvTranspose", "FusedConv",
                                "FusedMatMul", "FusedGemm"})
_INTEGER_COMPUTE_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger",
                                  "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                                  "QLinearAdd", "QLinearMul", "QAttention", "NhwcQLinearConv"})


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_model` did and how the INT8 model compares with FP32."""

    model: str
    output: str
    settings: dict[str, Any]
    calibration: str
    calibration_samples: int
    evaluation: str = ""
    latency: Latency | None = None
    agreement: Agreement | None = None
    kernels: dict[str, int] = field(default_factory=dict)
    float_compute_ops: int = 0
    integer_compute_ops: int = 0
    quantize_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sum_to_add(model: onnx.ModelProto) -> int:
    """Rewrite two-input ``Sum`` nodes as ``Add`` in place; returns how many changed."""
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Sum" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            node.op_type = "Add"
            changed += 1
    return changed


def _upgrade_opset(model: onnx.ModelProto, minimum: int = 13) -> onnx.ModelProto:
    # Per-channel DequantizeLinear (the axis attribute) needs opset 13.
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version >= minimum:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise ModelError(f"cannot upgrade the model from opset {version} to {minimum} "
                         f"for per-channel quantization: {exc}") from exc


# Ops that only move, scale or normalize values between the head and an output.
_HEAD_PASS_THROUGH = frozenset({
    "Softmax", "LogSoftmax", "Sigmoid", "Reshape", "Transpose", "Flatten", "Squeeze",
    "Unsqueeze", "Identity", "Add", "Mul", "Div", "Cast",
})
_HEAD_COMPUTE = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


def _name_nodes(model: onnx.ModelProto) -> None:
    # The quantizer excludes nodes by name, so every node needs one.
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of each output's last compute node and the pass-through ops after it."""
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    found: list[str] = []
    for output in model.graph.output:
        chain: list[onnx.NodeProto] = []
        node = producer.get(output.name)
        while node is not None and node.op_type in _HEAD_PASS_THROUGH and len(chain) < 8:
            chain.append(node)
            # Follow the activation, not a constant operand (a bias, a shape).
            dynamic = [i for i in node.input if i and i not in initializers and i in producer]
            node = producer.get(dynamic[0]) if dynamic else None
        if node is not None and node.op_type in _HEAD_COMPUTE:
            found.extend(n.name for n in [*chain, node] if n.name not in found)
    return found


def _preprocess(src: Path, dst: Path, optimize: bool) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference needs sympy; ONNX's own inference covers these models.
    symbolic = importlib.util.find_spec("sympy") is not None
    try:
        quant_pre_process(str(src), str(dst), skip_optimization=not optimize,
                          skip_symbolic_shape=not symbolic)
    except Exception as exc:
        raise ModelError(f"model '{src}': quantization pre-processing failed: {exc}") from exc


def integer_kernels(model_path: str | Path) -> Counter[str]:
    """Op types of the graph ONNX Runtime actually runs (after its optimizations) on CPU."""
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    with tempfile.TemporaryDirectory(prefix="edgecut-opt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(out), load_external_data=False).graph
        return Counter(n.op_type for n in graph.node)


# ---------------------------------------------------------------------------- quantize


def quantize_model(
    model_path: str | Path,
    out_path: str | Path,
    calibration: Calibration,
    *,
    evaluation: Calibration | None = None,
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    preprocess: bool = True,
    exclude_op_types: Sequence[str] = ("Softmax",),
    op_types: Sequence[str] | None = None,
    exclude_nodes: Sequence[str] = (),
    float_head: bool = True,
    intra_op_threads: int | None = None,
    timing_runs: int = 20,
    seed: int = 0,
    calibration_label: str | None = None,
    evaluation_label: str | None = None,
    task: str = "auto",
    threshold: float = 0.5,
) -> QuantizeReport:
    """Quantize ``model_path`` to static INT8 (QDQ) at ``out_path`` and report on it.

    ``calibration`` is a folder of ``.npy``/``.npz`` samples, a count of random samples
    (only for models with fixed input dims), or samples in memory (arrays or dicts by
    input name). ``evaluation`` (same kinds; a count draws with another seed than the
    calibration) gives the samples for the FP32-vs-INT8 comparison; without it the report
    has no latency or agreement. The labels, when given, replace the report's description
    of where the samples came from. ``exclude_op_types`` stay in float: a final Softmax
    quantized to 8 bits would tie near-equal classes and costs almost nothing in float.
    ``op_types`` limits quantization to those op types (default: every type the quantizer
    supports; ``MatMul`` brings ``Gemm``, which pre-processing fuses MatMul + Add into); ``exclude_nodes`` keeps the named nodes in float. ``float_head`` keeps the
    last matrix product or convolution before each output (the classifier head, with
    its bias and the ops between it and the output) in float: its output is the logits,
    whose 8-bit rounding would decide close calls between classes, and it is a tiny
    share of the work. ``task`` picks the agreement metric (``auto``: from the output's
    shape; see :class:`Agreement`), ``threshold`` the binarization of dense maps.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    src = Path(model_path)
    if not src.is_file():
        raise ModelError(f"model '{src}': file not found")
    from partition._onnx import reject_tflite

    reject_tflite(src)
    out = Path(out_path)
    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    act = qtypes[_choice("activation_type", activation_type, ACTIVATION_TYPES)]
    wgt = qtypes[_choice("weight_type", weight_type, WEIGHT_TYPES)]
    method = methods[_choice("calibrate_method", calibrate_method, CALIBRATE_METHODS)]
    _choice("task", task, TASKS)
    try:
        onnx.checker.check_model(str(src))
    except Exception as exc:
        raise ModelError(f"model '{src}': not a valid ONNX model: {exc}") from exc

    samples, calib_desc = _as_samples(calibration, src, seed)
    eval_samples: list[Feeds] = []
    eval_desc = ""
    if evaluation is not None:
        eval_samples, eval_desc = _as_samples(evaluation, src, seed + 1)
    calib_desc = calibration_label or calib_desc
    eval_desc = evaluation_label or eval_desc

    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecut-quant-") as tmp:
        staged = Path(tmp) / "fp32.onnx"
        model = _upgrade_opset(onnx.load(str(src)))
        sums = _sum_to_add(model)
        save_model(model, staged)
        prepared = staged
        preprocessed: bool | str = False
        if preprocess:
            try:
                _preprocess(staged, Path(tmp) / "fp32.pre.onnx", optimize=True)
                prepared, preprocessed = Path(tmp) / "fp32.pre.onnx", True
            except ModelError as exc:
                # Pre-processing only helps (folds BatchNorm, fills shapes); a model it
                # cannot handle is still quantized as it is, and the report says so.
                preprocessed = f"skipped: {exc}"
        excluded = list(exclude_nodes)
        if float_head:
            prepared_model = onnx.load(str(prepared))
            _name_nodes(prepared_model)
            head = _head_nodes(prepared_model)
            excluded += [n for n in head if n not in excluded]
            onnx.save(prepared_model, str(prepared))
        if op_types is not None:
            supported = set(op_types)
            if "MatMul" in supported:
                # Pre-processing fuses MatMul + Add into Gemm; asking for one means both.
                supported.add("Gemm")
        else:
            supported = set(QDQRegistry) | set(QLinearOpsRegistry)
        quantized_ops = sorted(supported - set(exclude_op_types))
        try:
            # The histogram calibrators print progress to stdout, which must stay clean
            # for `edgecut quantize --json`.
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(
                    str(prepared),
                    str(out),
                    _feed_reader(samples),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=quantized_ops,
                    nodes_to_exclude=excluded or None,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=act,
                    weight_type=wgt,
                    calibrate_method=method,
                )
        except Exception as exc:
            raise ModelError(f"model '{src}': static quantization failed: {exc}") from exc
    # The quantizer stamps its output with the onnx package's IR version; restamp it so
    # the oldest supported runtime (ONNX Runtime 1.16) loads it too.
    save_model(onnx.load(str(out)), out)
    quantize_s = time.perf_counter() - started

    kernels = integer_kernels(out)
    settings = {
        "format": "QDQ",
        "per_channel": per_channel,
        "activation_type": activation_type,
        "weight_type": weight_type,
        "reduce_range": reduce_range,
        "calibrate_method": calibrate_method,
        "preprocess": preprocessed,
        "excluded_op_types": list(exclude_op_types),
        "op_types": list(op_types) if op_types is not None else "all supported",
        "float_head": float_head,
        "excluded_nodes": excluded,
        "sum_to_add": sums,
    }
    latency = agreement_ = None
    if eval_samples:
        agreement_ = compare_agreement(src, out, eval_samples, intra_op_threads=intra_op_threads,
                                       task=task, threshold=threshold)
        latency = compare_latency(src, out, eval_samples[0], intra_op_threads=intra_op_threads,
                                  runs=timing_runs)
    return QuantizeReport(
        model=str(src),
        output=str(out),
        settings=settings,
        calibration=calib_desc,
        calibration_samples=len(samples),
        evaluation=eval_desc,
        latency=latency,
        agreement=agreement_,
        kernels=dict(sorted(kernels.items())),
        float_compute_ops=sum(c for op, c in kernels.items() if op in _FLOAT_COMPUTE_OPS),
        integer_compute_ops=sum(c for op, c in kernels.items() if op in _INTEGER_COMPUTE_OPS),
        quantize_s=quantize_s,
    )


__all__ = [
    "ACTIVATION_TYPES",
    "CALIBRATE_METHODS",
    "TASKS",
    "WEIGHT_TYPES",
    "Agreement",
    "Latency",
    "QuantizeReport",
    "agreement",
    "compare_agreement",
    "compare_latency",
    "ctc_decode",
    "edit_distance",
    "infer_task",
    "integer_kernels",
    "load_samples",
    "quantize_model",
    "random_samples",
]
