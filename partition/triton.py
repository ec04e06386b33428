"""Triton model-repository entries: ``<name>/<version>/model.onnx`` plus ``config.pbtxt``.

The config is written in Triton's text protobuf format (``inference.ModelConfig``) so that
Triton, KServe's Triton runtime and ``edgecut serve`` all read the same repository.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from devices.errors import PartitionError
from partition._portable import save_model

# ONNX tensor element types to Triton's ``DataType`` enum names.
_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.STRING: "TYPE_STRING",
}


@dataclass(frozen=True)
class TritonOptions:
    """Serving settings written into ``config.pbtxt``."""

    # A fleet's requests batch up to this on a GPU; it also lets a device's link probe
    # carry enough bytes through a cheap tail (see ``Executor._probe``).
    max_batch_size: int = 32
    dynamic_batching: bool = True
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    instance_count: int = 1
    instance_kind: str = "KIND_AUTO"  # KIND_GPU on a GPU host, KIND_CPU otherwise


def _tensor_block(value_info: onnx.ValueInfoProto, batched: bool) -> str:
    ttype = value_info.type.tensor_type
    if ttype.elem_type not in _TRITON_TYPES:
        raise PartitionError(
            f"tensor '{value_info.name}': element type {ttype.elem_type} has no Triton type"
        )
    if not ttype.HasField("shape"):
        raise PartitionError(
            f"tensor '{value_info.name}': no shape in the model; Triton needs its dims "
            "(split the model with partition.Splitter, which infers them)"
        )
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in ttype.shape.dim]
    if batched:
        dims = dims[1:]  # Triton's dims leave out the batch dimension
    # A tensor with no dims left (a scalar, or [batch] alone) is Triton's [1] reshaped
    # to [] for the model.
    dims_text = ", ".join(str(d) for d in dims) if dims else "1"
    reshape = "" if dims else "\n    reshape: { shape: [ ] }"
    return (
        "  {\n"
        f'    name: "{value_info.name}"\n'
        f"    data_type: {_TRITON_TYPES[ttype.elem_type]}\n"
        f"    dims: [ {dims_text} ]{reshape}\n"
        "  }"
    )


def _batch_dim_is_dynamic(model: onnx.ModelProto) -> bool:
    init_names = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def triton_config(name: str, model: onnx.ModelProto, options: TritonOptions | None = None) -> str:
    """The ``config.pbtxt`` text for serving ``model`` under ``name``."""
    options = options or TritonOptions()
    batched = options.max_batch_size > 0 and _batch_dim_is_dynamic(model)
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {options.max_batch_size if batched else 0}",
        "input [",
        ",\n".join(_tensor_block(i, batched) for i in inputs),
        "]",
        "output [",
        ",\n".join(_tensor_block(o, batched) for o in model.graph.output),
        "]",
        "instance_group [",
        f"  {{ count: {options.instance_count} kind: {options.instance_kind} }}",
        "]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    if batched and options.dynamic_batching:
        preferred = [b for b in options.preferred_batch_sizes if b <= options.max_batch_size]
        block = ["dynamic_batching {"]
        if preferred:
            block.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
        block.append(f"  max_queue_delay_microseconds: {options.max_queue_delay_us}")
        block.append("}")
        lines.extend(block)
    return "\n".join(lines) + "\n"


def write_repository_entry(
    repo: str | Path,
    name: str,
    model: onnx.ModelProto | str | Path,
    version: int = 1,
    options: TritonOptions | None = None,
) -> Path:
    """Write ``repo/<name>/<version>/model.onnx`` and ``repo/<name>/config.pbtxt``."""
    if isinstance(model, (str, Path)):
        source = Path(model)
        if not source.is_file():
            raise PartitionError(f"model '{source}': file not found")
        proto = onnx.load(str(source), load_external_data=False)
    else:
        source, proto = None, model
    folder = Path(repo) / name
    version_dir = folder / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.onnx"
    if source is not None:
        shutil.copyfile(source, target)
    else:
        save_model(proto, target)
    (folder / "config.pbtxt").write_text(triton_config(name, proto, options))
    return folder
