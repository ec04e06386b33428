"""The model runtime contract and its ONNX Runtime implementation.

A runtime is what one *instance* of a model version runs: it declares its tensors and
answers ``predict``. The service calls ``predict`` from one dedicated worker thread per
instance, so a runtime may block (ONNX Runtime releases the GIL while it computes). Only
a runtime that offers ``prepare`` is ever run on the event loop, and only for the requests
it marks as short (see ``Prepared``). Any class with these members works (MLServer's
``MLModel`` shape)::

    class MyRuntime(ModelRuntime):
        inputs = (TensorMeta("x", "FP32", (-1, 4)),)
        outputs = (TensorMeta("y", "FP32", (-1, 2)),)
        max_batch_size = 8          # 0: no batch dimension, the batcher leaves it alone
        def predict(self, inputs): return {"y": ...}

Shapes are full shapes (the batch dimension included when ``max_batch_size > 0``), with
``-1`` for a dynamic dimension, as the protocol's model metadata reports them.
"""

from __future__ import annotations

import abc
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud._tensors import DATATYPES
from cloud.errors import ExecutionError, RepositoryError

__all__ = ["ModelRuntime", "OnnxRuntime", "TensorMeta", "ort_providers"]

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorMeta:
    """A tensor of a model's signature: name, v2 datatype and full shape (-1 = dynamic)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Prepared:
    """A request a runtime has looked at before it is queued (see ``ModelRuntime.prepare``).

    ``run`` computes the outputs. ``inline``: the runtime expects it to be short and to
    block on nothing but the processor, so an idle single-instance model runs it on the
    event loop itself, saving the two thread hand-offs of the queue (about as long as a
    small model's inference on a loaded board).
    """

    run: Callable[[], dict[str, np.ndarray]]
    inline: bool = False


class ModelRuntime(abc.ABC):
    """What the service needs from a model instance (subclass it or match its shape).

    ``platform`` appears in model metadata. ``predict`` receives arrays already checked
    against ``inputs`` (names, datatypes, ranks, fixed dimensions) and, for a batching
    model, concatenated along the first axis; it must return every output in ``outputs``
    with the same leading batch size.
    """

    inputs: Sequence[TensorMeta] = ()
    outputs: Sequence[TensorMeta] = ()
    max_batch_size: int = 0
    platform: str = "python"
    #: True when ``predict`` neither keeps its input arrays nor returns views of them, so
    #: the batcher may reuse its batch buffers (ONNX Runtime always returns fresh arrays).
    reusable_inputs: bool = False

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on checked inputs and return every output by name."""

    def prepare(self, inputs: dict[str, np.ndarray]) -> Prepared | None:
        """Optional: look at a request on the event loop before it is queued.

        Called only for a single-instance model without dynamic batching whose instance is
        idle with nothing queued, so it must take microseconds and never block. Return
        ``None`` to queue ``predict(inputs)`` as usual (the default).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook: most runtimes hold nothing to free
        """Release resources; called once when the version is unloaded."""


def _onnxruntime() -> Any:
    """The ``onnxruntime`` module from whichever wheel provides it (edgecut depends on none,
    so that a GPU wheel is never replaced by the CPU one)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RepositoryError(
            f"ONNX Runtime is not installed ({exc}): pip install 'edgecut[gpu]' on a CUDA "
            "host, or 'edgecut[cpu]'"
        ) from exc
    return onnxruntime


def ort_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use: ``requested`` filtered to those available, or the best
    available (TensorRT only when asked for, since it compiles engines on first load)."""
    ort = _onnxruntime()

    available = ort.get_available_providers()
    if requested:
        chosen = [p for p in requested if p in available]
        if not chosen:
            raise RepositoryError(
                f"none of the execution providers {list(requested)} is available; "
                f"this onnxruntime has {available}"
            )
        return chosen
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*preferred, "CPUExecutionProvider"]


def _meta(arg, batched: bool) -> TensorMeta:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise RepositoryError(f"tensor {arg.name!r}: ONNX type {arg.type} is not served")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    if batched and shape:
        shape = (-1, *shape[1:])
    return TensorMeta(arg.name, datatype, shape)


def _dynamic_first_dim(args) -> bool:
    return all(a.shape and not isinstance(a.shape[0], int) for a in args)


class OnnxRuntime(ModelRuntime):
    """One ONNX Runtime session: one instance of an ONNX model version."""

    platform = "onnxruntime_onnx"
    reusable_inputs = True

    def __init__(
        self,
        path: str | Path,
        *,
        max_batch_size: int | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
        spinning: bool = True,
    ) -> None:
        ort = _onnxruntime()

        self.path = Path(path)
        self.providers = ort_providers(providers)
        self.intra_op_threads = intra_op_threads
        options = ort.SessionOptions()
        # Threads are fixed explicitly: one executor thread per instance, and this many
        # intra-op threads, so that instances times threads matches the host's cores.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not spinning:
            # Idle intra-op threads otherwise spin for a while after each run, taking CPU
            # from the event loop and the other instances on a small host.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._options_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise RepositoryError(f"{self.path}: ONNX Runtime cannot load the model ({exc})") from exc
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        can_batch = _dynamic_first_dim(ins) and _dynamic_first_dim(outs)
        if max_batch_size is None:
            # Triton's auto-complete: batch when every tensor has a dynamic first dim.
            max_batch_size = 8 if can_batch else 0
        elif max_batch_size > 0 and not can_batch:
            raise RepositoryError(
                f"{self.path}: max_batch_size {max_batch_size} needs a dynamic first dimension "
                "on every input and output"
            )
        self.max_batch_size = max_batch_size
        batched = max_batch_size > 0
        self.inputs = tuple(_meta(a, batched) for a in ins)
        self.outputs = tuple(_meta(a, batched) for a in outs)
        self._output_names = [o.name for o in self.outputs]
        # ONNX Runtime wants str elements for string tensors; the protocol carries bytes.
        self._string_inputs = [m.name for m in self.inputs if m.datatype == "BYTES"]

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self._string_inputs:
            inputs = {**inputs, name: _as_str(inputs[name])}
        try:
            values = self.session.run(self._output_names, inputs)
        except Exception as exc:  # translate at the boundary, keep the cause
            raise ExecutionError(f"{self.path.name}: ONNX Runtime failed: {exc}") from exc
        return dict(zip(self._output_names, values))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def profile(self, runs: int, batch: int, warmup: int = 2,
                shapes: dict[str, list[int]] | None = None) -> dict:
        """Run ONNX Runtime's profiler on random inputs; per-node median milliseconds."""
        ort = _onnxruntime()

        feeds = _random_feeds(self.inputs, batch if self.max_batch_size > 0 else None, shapes or {})
        with tempfile.TemporaryDirectory(prefix="edgecut-profile-") as tmp:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self._options_threads
            options.inter_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, "profile")
            session = ort.InferenceSession(str(self.path), options, providers=self.providers)
            for _ in range(warmup + runs):
                session.run(None, feeds)
            trace = session.end_profiling()
            with open(trace, encoding="utf-8") as fh:
                events = json.load(fh)
        per_node: dict[str, list[float]] = {}
        totals: list[float] = []
        for ev in events:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                per_node.setdefault(ev["name"][: -len("_kernel_time")], []).append(ev["dur"] / 1000)
            elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
                totals.append(ev["dur"] / 1000)
        # The k-th occurrence of a node belongs to the k-th run; drop the warm-up runs.
        nodes = {
            name: statistics.median(times[warmup:] or times) for name, times in per_node.items()
        }
        total = statistics.median(totals[warmup:] or totals) if totals else sum(nodes.values())
        return {
            "nodes": nodes,
            "total_ms": total,
            "providers": list(self.providers),
            "runs": runs,
            "batch": batch,
        }


def _as_str(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    return out


def _random_feeds(metas: Sequence[TensorMeta], batch: int | None,
                  shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for meta in metas:
        if meta.name in shapes:
            shape = tuple(shapes[meta.name])
        else:
            dims = list(meta.shape)
            if batch is not None and dims:
                dims[0] = batch
            shape = tuple(d if d >= 0 else 1 for d in dims)
        dtype = DATATYPES[meta.datatype]
        if meta.datatype == "BYTES":
            feeds[meta.name] = np.full(shape, "x", dtype=object)
        elif dtype.kind == "f":
            feeds[meta.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[meta.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[meta.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds
