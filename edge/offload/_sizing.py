"""What a request's own input sizes do to each cut's costs, for a plan with costs by
input size (``partition._sizes``; dynamic shapes).

The plan carries each candidate's times at several sizes; the cost table learns at the
plan's reference size. ``_InputSizing`` turns the sizes a request's arrays bind into, per
cut, the factors by which its head and tail times scale from the reference and the bytes
that cross at that size. It reads only the plan, so it is built once per executor.

``RequestScale`` carries one request's factors to every place that folds a measurement
of it into the cost table (the plain path, the fallback, both legs of a race): each
divides by the same factor, so the table learns at the reference size whichever path
measured it. It is passed along with the request rather than kept per thread: a raced
request's legs run on threads of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from partition import LOCAL, Plan, bind_sizes, cost_at


@dataclass(frozen=True)
class RequestScale:
    """How one request's input sizes scale each cut's times from the plan's reference:
    per cut id, (head factor, tail factor, up bytes, down bytes) as ``sized`` gives them;
    empty (every factor 1) for a plan without size data. ``local_cut`` is the plan's
    local candidate, whose head factor is the whole model's."""

    factors: Mapping[str, tuple[float, float, int, int]] = field(default_factory=dict)
    local_cut: str = ""

    def head(self, cut_id: str) -> float:
        """The factor a head (device) time of ``cut_id`` is divided by."""
        return _positive(self.factors.get(cut_id, (1.0, 1.0, 0, 0))[0])

    def tail(self, cut_id: str) -> float:
        """The factor a tail (cloud) time of ``cut_id`` is divided by."""
        return _positive(self.factors.get(cut_id, (1.0, 1.0, 0, 0))[1])

    def local(self) -> float:
        """The factor a whole-model device run is divided by."""
        return self.head(self.local_cut) if self.local_cut else 1.0


def _positive(f: float) -> float:
    return float(f) if f and f > 0 else 1.0


# What a request of the reference size (or of a plan without sizes) is scaled by.
UNSCALED = RequestScale()


class _InputSizing:
    """Per-cut cost factors at a request's input sizes (see the module docstring)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._ref = _size_reference(plan)
        self._local = next((c.cut_id for c in plan.candidates if c.kind == LOCAL), "")

    def scale(self, feeds: Mapping[str, np.ndarray]) -> RequestScale:
        """``sized(feeds)`` as a :class:`RequestScale` (see the module docstring)."""
        factors = self.sized(feeds)
        return RequestScale(factors, self._local) if factors else UNSCALED

    def sized(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float, int, int]]:
        """Per cut id, (head factor, tail factor, up bytes, down bytes) at the sizes of
        ``feeds``' dynamic dims; empty for a plan without size data or inputs that bind
        no dim."""
        if not self._ref:
            return {}
        env_ref, ref = self._ref
        sizes = bind_sizes(self.plan.inputs, {k: np.shape(v) for k, v in feeds.items()})
        if not sizes:
            return {}
        env = {**env_ref, **sizes}
        out = {}
        for c in self.plan.candidates:
            head, tail, up, down = cost_at(c, env)
            h0, t0 = ref[c.cut_id]
            out[c.cut_id] = (head / h0 if h0 > 0 else 1.0, tail / t0 if t0 > 0 else 1.0, up, down)
        return out


def _size_reference(plan: Plan) -> tuple[dict[str, int], dict[str, tuple[float, float]]] | None:
    """The plan's reference sizes and each candidate's (head, tail) ms there, when every
    candidate carries times by size."""
    rows = [c.extra.get("by_size") for c in plan.candidates]
    if not rows or not all(r and isinstance(r, list) for r in rows):
        return None
    env = {str(k): int(v) for k, v in rows[0][0].get("sizes", {}).items()}
    ref = {}
    for c in plan.candidates:
        head, tail, _, _ = cost_at(c, env)
        ref[c.cut_id] = (head, tail)
    return env, ref
