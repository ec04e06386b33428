"""ONNX graph analysis, per-layer profiling, cut planning, splitting and export."""

from __future__ import annotations

from partition.zoo import ZOO_MODELS, build_zoo, materialize, trained_model, zoo_model

__all__ = ["ZOO_MODELS", "build_zoo", "materialize", "trained_model", "zoo_model"]
