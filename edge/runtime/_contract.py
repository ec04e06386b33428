"""The on-device runtime contract: a :class:`Backend` loads a model into a :class:`Session`.

Implementations are picked from a registry keyed by name (``onnxruntime``, ``litert``) or
by the model file's suffix (``.onnx``, ``.tflite``). Heavy imports happen inside
``load()``, so importing this module costs nothing on a device that lacks a runtime.

Every session validates its inputs before running: a missing or unknown tensor name, a
wrong dtype, a wrong rank or fixed dimension, and (when the device profile asks) NaN or
infinite values raise :class:`ModelInputError` naming the tensor and what was expected.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile
from devices.errors import BackendError, ModelError, ModelInputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a model input or output; ``None`` marks a dynamic dim."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


class _InputCheck:
    """Input validation compiled once per session so that a call costs a few microseconds."""

    __slots__ = ("_specs", "_names", "_check_finite", "_fixed")

    def __init__(self, specs: Sequence[TensorSpec], check_finite: bool) -> None:
        self._specs = {s.name: s for s in specs}
        self._names = frozenset(self._specs)
        self._check_finite = check_finite
        self._fixed = {
            s.name: tuple((i, d) for i, d in enumerate(s.shape) if d is not None) for s in specs
        }

    def __call__(self, feeds: Mapping[str, Any]) -> None:
        try:
            names_match = feeds.keys() == self._names
        except AttributeError:
            raise ModelInputError(
                f"feeds: expected a mapping of input name to numpy.ndarray, "
                f"got {type(feeds).__name__}"
            ) from None
        if not names_match:
            self._explain_names(feeds)
        for name, value in feeds.items():
            spec = self._specs[name]
            # The exact-type test is the fast path; subclasses (np.memmap) are fine too.
            if type(value) is not np.ndarray and not isinstance(value, np.ndarray):
                raise ModelInputError(
                    f"input '{name}': expected a numpy.ndarray of {spec.dtype}, "
                    f"got {type(value).__name__}"
                )
            if value.dtype != spec.dtype:
                raise ModelInputError(
                    f"input '{name}': expected dtype {spec.dtype}, got {value.dtype}"
                )
            shape = value.shape
            if len(shape) != len(spec.shape):
                raise ModelInputError(
                    f"input '{name}': expected rank {len(spec.shape)} "
                    f"(shape {_fmt_shape(spec.shape)}), got rank {len(shape)} (shape {shape})"
                )
            for axis, size in self._fixed[name]:
                if shape[axis] != size:
                    raise ModelInputError(
                        f"input '{name}': expected dim {axis} to be {size} "
                        f"(shape {_fmt_shape(spec.shape)}), got shape {shape}"
                    )
            if self._check_finite and value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int(value.size - np.count_nonzero(np.isfinite(value)))
                raise ModelInputError(
                    f"input '{name}': expected finite values, found {bad} NaN or infinite"
                )

    def _explain_names(self, feeds: Mapping[str, Any]) -> None:
        missing = sorted(self._names - feeds.keys())
        unknown = sorted(set(feeds) - self._names)
        parts = []
        if missing:
            parts.append("missing input(s) " + ", ".join(f"'{n}'" for n in missing))
        if unknown:
            parts.append("unknown input(s) " + ", ".join(f"'{n}'" for n in unknown))
        expected = ", ".join(self._specs[n].describe() for n in sorted(self._names))
        raise ModelInputError("; ".join(parts) + f" (the model takes {expected})")


def check_output_names(wanted: Sequence[str], specs: Sequence[TensorSpec]) -> list[str]:
    """``wanted`` as a list, or :class:`ModelInputError` naming outputs the model lacks."""
    names = list(wanted)
    known = {s.name for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ModelInputError(
            "unknown output(s) " + ", ".join(f"'{n}'" for n in unknown)
            + f" (the model gives {', '.join(s.name for s in specs)})"
        )
    return names


def _fmt_shape(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class Session(abc.ABC):
    """A loaded model, ready to run. Use as a context manager or call :meth:`close`."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...] = ()

    @abc.abstractmethod
    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (every input by name) and return outputs by name."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model's memory; the session cannot run afterwards."""

    def input_spec(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise ModelInputError(f"no input named '{name}'")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(abc.ABC):
    """Loads models of one format into sessions."""

    name: str = ""

    @abc.abstractmethod
    def load(
        self, model: str | Path | bytes, device: DeviceProfile | None = None, **options: Any
    ) -> Session:
        """Load ``model`` (a path, or serialized bytes) configured for ``device``."""


_REGISTRY: dict[str, Callable[[], Backend]] = {}
_SUFFIXES: dict[str, str] = {}


def register_backend(
    name: str, factory: Callable[[], Backend], suffixes: Sequence[str] = ()
) -> None:
    """Make a backend available under ``name``, and for files ending in ``suffixes``."""
    _REGISTRY[name] = factory
    for suffix in suffixes:
        _SUFFIXES[suffix.lower()] = name


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise BackendError(
            f"unknown backend '{name}': expected one of {', '.join(backend_names())}"
        ) from None


def backend_for(path: str | Path) -> Backend:
    """The backend that reads files like ``path``, chosen by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return get_backend(_SUFFIXES[suffix])
    known = sorted(_SUFFIXES)
    raise ModelError(f"model '{path}': unknown file type '{suffix}', expected one of {known}")


def load(
    model: str | Path | bytes,
    device: DeviceProfile | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> Session:
    """Load a model with the backend named, or the one its file suffix calls for.

    Serialized bytes are taken to be ONNX unless ``backend`` says otherwise.
    """
    if backend is not None:
        chosen = get_backend(backend)
    elif isinstance(model, (bytes, bytearray)):
        chosen = get_backend("onnxruntime")
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model '{path}': file not found")
        chosen = backend_for(path)
    return chosen.load(model, device, **options)


def _ort_factory() -> Backend:
    from edge.runtime._ort import OrtBackend

    return OrtBackend()


def _litert_factory() -> Backend:
    from edge.runtime._litert import LiteRTBackend

    return LiteRTBackend()


register_backend("onnxruntime", _ort_factory, (".onnx", ".ort"))
register_backend("litert", _litert_factory, (".tflite",))

__all__ = [
    "Backend",
    "Session",
    "TensorSpec",
    "backend_for",
    "backend_names",
    "get_backend",
    "load",
    "register_backend",
]
