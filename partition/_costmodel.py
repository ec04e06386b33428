"""Predict a node's time from its FLOPs and bytes where it was not measured.

Neurosurgeon's idea: per device and per layer type, latency is close to linear in the
layer's work. Here: ``ms = a * GFLOPs + b * MB moved + c`` fitted by least squares on relative error per op
type where there are at least four measured nodes of that type, and one model over all
nodes otherwise. The error is reported out of sample (two-fold: fit on half the nodes,
predict the other half).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from partition._graph import LayerGraph, LayerNode


def _features(graph: LayerGraph, node: LayerNode) -> np.ndarray:
    moved = sum(graph.tensors[t].bytes(1) for t in node.inputs + node.outputs) + node.param_bytes
    return np.array([node.flops / 1e9, moved / 1e6, 1.0])


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Least squares on relative error (rows weighted by 1/time): a 0.05 ms ReLU and a
    # 5 ms convolution count alike, which is what a per-node % error asks for.
    w = 1.0 / np.maximum(y, 1e-3)
    xw, yw = x * w[:, None], y * w
    coef, *_ = np.linalg.lstsq(xw, yw, rcond=None)
    # Negative slopes would predict negative times for big layers; refit without them.
    if coef[0] < 0 or coef[1] < 0:
        keep = [i for i in (0, 1) if coef[i] >= 0] + [2]
        sub, *_ = np.linalg.lstsq(xw[:, keep], yw, rcond=None)
        coef = np.zeros(3)
        coef[keep] = sub
    return coef


@dataclass
class CostModel:
    """A fitted per-device cost model; :meth:`predict` gives ms for any node."""

    device: str
    per_op: dict[str, np.ndarray] = field(default_factory=dict)
    overall: np.ndarray = field(default_factory=lambda: np.zeros(3))
    median_abs_pct_error: float = float("nan")
    samples: int = 0

    @staticmethod
    def fit(graph: LayerGraph, times: dict[str, float], device: str = "") -> CostModel:
        """Fit on the nodes of ``graph`` that have a non-zero measured time."""
        from partition._planner import match_profile

        times, _ = match_profile(graph, times)
        measured = [n for n in graph.order if times.get(n, 0.0) > 0.0]
        model = CostModel._fit_on(graph, measured, times, device)
        # Out-of-sample error: each half predicted by a model fitted on the other half.
        errors: list[float] = []
        halves = (measured[0::2], measured[1::2])
        for train, test in ((halves[0], halves[1]), (halves[1], halves[0])):
            if len(train) < 3:
                continue
            m = CostModel._fit_on(graph, train, times, device)
            for n in test:
                pred = m.predict(graph, graph.nodes[n])
                errors.append(abs(pred - times[n]) / times[n] * 100.0)
        model.median_abs_pct_error = float(statistics.median(errors)) if errors else float("nan")
        model.samples = len(measured)
        return model

    @staticmethod
    def _fit_on(graph: LayerGraph, names: list[str], times: dict[str, float], device: str) -> CostModel:
        model = CostModel(device=device)
        if not names:
            return model
        x = np.array([_features(graph, graph.nodes[n]) for n in names])
        y = np.array([times[n] for n in names])
        model.overall = _fit(x, y)
        by_op: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            by_op.setdefault(graph.nodes[n].op_type, []).append(i)
        for op, idx in by_op.items():
            if len(idx) >= 4:
                model.per_op[op] = _fit(x[idx], y[idx])
        return model

    def predict(self, graph: LayerGraph, node: LayerNode) -> float:
        coef = self.per_op.get(node.op_type, self.overall)
        return max(0.0, float(_features(graph, node) @ coef))

    def summary(self) -> dict[str, object]:
        return {
            "device": self.device,
            "median_abs_pct_error": round(self.median_abs_pct_error, 2),
            "samples": self.samples,
            "per_op_types": sorted(self.per_op),
        }
