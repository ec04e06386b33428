from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile
from devices.errors import BackendError, ModelError
from edge.runtime._contract import Backend, Session, TensorSpec, _InputCheck, check_output_names


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:  # JetPack images with NumPy 1.x ship only tflite-runtime
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise BackendError(
                "no LiteRT runtime: install 'ai-edge-litert' (or 'tflite-runtime' on NumPy 1.x)"
            ) from exc
    return Interpreter


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(None if int(d) < 0 else int(d) for d in signature)
    return TensorSpec(detail["name"], np.dtype(detail["dtype"]), shape)


class LiteRTSession(Session):
    """A ``.tflite`` model in a LiteRT interpreter with checked inputs."""

    def __init__(self, interpreter: Any, check_finite: bool) -> None:
        self._interp = interpreter
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._in)
        self.outputs = tuple(_spec(d) for d in self._out)
        self.providers = ("LiteRT",)
        self._check = _InputCheck(self.inputs, check_finite)
        self._shapes = {d["name"]: tuple(int(x) for x in d["shape"]) for d in self._in}

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._check(feeds)
        wanted = None if outputs is None else set(check_output_names(outputs, self.outputs))
        try:
            resized = False
            for d in self._in:
                value = feeds[d["name"]]
                if value.shape != self._shapes[d["name"]]:
                    self._interp.resize_tensor_input(d["index"], value.shape)
                    self._shapes[d["name"]] = value.shape
                    resized = True
            if resized:
                self._interp.allocate_tensors()
            for d in self._in:
                self._interp.set_tensor(d["index"], feeds[d["name"]])
            self._interp.invoke()
            return {
                d["name"]: self._interp.get_tensor(d["index"]).copy()
                for d in self._out
                if wanted is None or d["name"] in wanted
            }
        except Exception as exc:
            raise BackendError(f"LiteRT failed to run the model: {exc}") from exc

    def close(self) -> None:
        self._interp = None


class LiteRTBackend(Backend):
    """LiteRT (formerly TensorFlow Lite) for ``.tflite`` models."""

    name = "litert"

    def load(
        self, model: str | Path | bytes, device: DeviceProfile | None = None, **options: Any
    ) -> Session:
        """Load a ``.tflite`` model. Options: ``intra_op_threads``, ``check_finite``."""
        threads = int(options.pop("intra_op_threads", device.intra_op_threads if device else 0))
        check_finite = bool(options.pop("check_finite", device.check_finite if device else False))
        options.pop("graph_optimization", None)
        options.pop("providers", None)
        if options:
            raise BackendError(f"litert backend: unknown option(s) {sorted(options)}")
        interpreter_cls = _interpreter_class()
        kwargs: dict[str, Any] = {"num_threads": threads or os.cpu_count() or 1}
        if isinstance(model, (bytes, bytearray)):
            kwargs["model_content"] = bytes(model)
        else:
            if not Path(model).is_file():
                raise ModelError(f"model '{model}': file not found")
            kwargs["model_path"] = str(model)
        try:
            interp = interpreter_cls(**kwargs)
            interp.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"model '{model if not isinstance(model, bytes) else 'bytes'}': "
                             f"LiteRT cannot load it: {exc}") from exc
        return LiteRTSession(interp, check_finite)
