"""ONNX models for test fixtures, readable by the oldest supported ONNX Runtime.

``onnx.helper.make_model`` stamps the onnx package's newest IR version on every model,
which ONNX Runtime 1.16 (the Python 3.8 device suite, JetPack 5) refuses to load; build
fixtures with :func:`make_model` and write them with :func:`save_model` instead.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from partition import portable_model
from partition import save_model as _save_model

__all__ = ["make_model", "save_model"]


def make_model(graph: onnx.GraphProto, opset: int = 17, **kwargs: object) -> onnx.ModelProto:
    """``helper.make_model`` with one default-domain opset and a portable IR version."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    return portable_model(model)


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` with a portable IR version (see :func:`partition.save_model`)."""
    return _save_model(model, path)
