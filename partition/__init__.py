"""ONNX graph analysis, per-layer profiling, cut planning, splitting and export."""

from __future__ import annotations

from partition._types import LOCAL, OFFLOAD, SPLIT, CutCandidate, Plan
from partition.zoo import ZOO_MODELS, build_zoo, materialize, trained_model, zoo_model

__all__ = [
    "LOCAL",
    "OFFLOAD",
    "SPLIT",
    "ZOO_MODELS",
    "CutCandidate",
    "Plan",
    "build_zoo",
    "materialize",
    "trained_model",
    "zoo_model",
]
