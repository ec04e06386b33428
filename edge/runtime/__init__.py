"""On-device model execution: the ``Backend``/``Session`` contract and its implementations.

Owns: loading a model file into a session (ONNX Runtime in ``_ort``, LiteRT or
tflite-runtime in ``_litert``), input validation, and INT8 quantization (``quantize``).
May import: ``devices`` and numpy; ONNX Runtime, LiteRT and onnx only inside the functions
that need them, so ``import edge.runtime`` is cheap on a device without them.
"""

from __future__ import annotations

from edge.runtime._contract import (
    Backend,
    Session,
    TensorSpec,
    backend_for,
    backend_names,
    check_output_names,
    get_backend,
    load,
    register_backend,
)

__all__ = [
    "Backend",
    "Session",
    "TensorSpec",
    "backend_for",
    "backend_names",
    "check_output_names",
    "get_backend",
    "load",
    "register_backend",
]
