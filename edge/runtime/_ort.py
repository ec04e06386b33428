from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile, import_onnxruntime
from devices.errors import BackendError, ModelError
from edge.runtime._contract import Backend, Session, TensorSpec, _InputCheck, check_output_names

# Whichever wheel provides the module (CPU, CUDA, Jetson); without one, the error names the
# wheel that fits this board.
ort = import_onnxruntime()

# ONNX Runtime's type strings to NumPy dtypes; the inverse is derived, not written twice.
_ORT_TYPES: dict[str, np.dtype] = {
    f"tensor({k})": np.dtype(v)
    for k, v in {
        "float": "float32",
        "float16": "float16",
        "double": "float64",
        "int8": "int8",
        "int16": "int16",
        "int32": "int32",
        "int64": "int64",
        "uint8": "uint8",
        "uint16": "uint16",
        "uint32": "uint32",
        "uint64": "uint64",
        "bool": "bool",
        "string": "object",
    }.items()
}

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise BackendError(f"tensor '{arg.name}': unsupported ONNX Runtime type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


def tensorrt_options(device: DeviceProfile) -> dict[str, Any]:
    """TensorRT execution provider options from a profile's ``[tensorrt]`` table."""
    trt = device.tensorrt
    return {
        "trt_fp16_enable": trt.fp16 and "fp16" in device.precisions,
        "trt_int8_enable": trt.int8 and "int8" in device.precisions,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": os.path.expanduser(trt.engine_cache_dir),
        "trt_max_workspace_size": trt.workspace_mb * 1024 * 1024,
    }


def provider_list(
    device: DeviceProfile | None,
    wanted: Sequence[str] | None = None,
    available: Sequence[str] | None = None,
) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers in the profile's order, keeping those this build has.

    ``available`` defaults to what the installed ONNX Runtime offers; CPU always comes last
    as the fallback.
    """
    have = set(ort.get_available_providers() if available is None else available)
    order = list(wanted or (device.providers if device else ["CPUExecutionProvider"]))
    if "CPUExecutionProvider" not in order:
        order.append("CPUExecutionProvider")
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in order:
        if name not in have:
            continue
        if name == "TensorrtExecutionProvider" and device is not None:
            options = tensorrt_options(device)
            os.makedirs(options["trt_engine_cache_path"], exist_ok=True)
            chosen.append((name, options))
        else:
            chosen.append(name)
    return chosen


class OrtSession(Session):
    """A model in an ``onnxruntime.InferenceSession`` with checked inputs."""

    def __init__(self, session: ort.InferenceSession, check_finite: bool) -> None:
        self._session = session
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())
        self.providers = tuple(session.get_providers())
        self._output_names = [o.name for o in self.outputs]
        self._check = _InputCheck(self.inputs, check_finite)

    @property
    def inference_session(self) -> ort.InferenceSession:
        """The wrapped ONNX Runtime session, for profiling and benchmarks."""
        return self._session

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._check(feeds)
        names = self._output_names if outputs is None else check_output_names(outputs, self.outputs)
        if any(v.dtype.kind in "OS" for v in feeds.values()):
            feeds = {k: _as_text(v) if v.dtype.kind in "OS" else v for k, v in feeds.items()}
        try:
            values = self._session.run(names, feeds)
        except Exception as exc:  # ORT raises its own untyped errors
            raise BackendError(f"onnxruntime failed to run the model: {exc}") from exc
        return dict(zip(names, values))

    def close(self) -> None:
        # InferenceSession has no close(); dropping the reference frees it.
        self._session = None  # type: ignore[assignment]


def _as_text(array: np.ndarray) -> np.ndarray:
    """A string tensor's elements as ``str``: ONNX Runtime turns a ``bytes`` element into
    its repr (``"b'a'"``), while the protocol's BYTES elements arrive as bytes (UTF-8)."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    return out


class OrtBackend(Backend):
    """ONNX Runtime, with execution providers ordered as the device profile says."""

    name = "onnxruntime"

    def load(
        self, model: str | Path | bytes, device: DeviceProfile | None = None, **options: Any
    ) -> Session:
        """Load an ONNX model.

        Options: ``intra_op_threads``, ``inter_op_threads``, ``graph_optimization``
        (``disable|basic|extended|all``), ``providers`` (names, in order),
        ``check_finite``, ``enable_profiling`` and ``profile_prefix``.
        """
        so = ort.SessionOptions()
        intra = options.pop("intra_op_threads", device.intra_op_threads if device else 0)
        inter = options.pop("inter_op_threads", device.inter_op_threads if device else 1)
        # A profile written for an 8-core board must not oversubscribe a smaller host.
        so.intra_op_num_threads = min(int(intra), os.cpu_count() or 1)
        so.inter_op_num_threads = int(inter)
        level = options.pop("graph_optimization", device.graph_optimization if device else "all")
        if level not in _OPT_LEVELS:
            raise BackendError(
                f"graph_optimization: expected one of {sorted(_OPT_LEVELS)}, got {level!r}"
            )
        so.graph_optimization_level = _OPT_LEVELS[level]
        so.log_severity_level = 3
        if options.pop("enable_profiling", False):
            so.enable_profiling = True
            so.profile_file_prefix = str(options.pop("profile_prefix", "edgecut_profile"))
        check_finite = bool(options.pop("check_finite", device.check_finite if device else False))
        providers = provider_list(device, options.pop("providers", None))
        if options:
            raise BackendError(f"onnxruntime backend: unknown option(s) {sorted(options)}")
        source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
        if isinstance(source, str) and not Path(source).is_file():
            raise ModelError(f"model '{source}': file not found")
        try:
            session = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:
            where = "model bytes" if isinstance(source, bytes) else f"model '{source}'"
            raise ModelError(f"{where}: onnxruntime cannot load it: {exc}") from exc
        return OrtSession(session, check_finite)
