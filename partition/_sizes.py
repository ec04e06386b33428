"""Costs as functions of the input size.

A plan is profiled at a few representative sizes of the model's dynamic dims (``--shapes``,
or by default the reference size, half of it and twice it), and between any two of them
more than ``MAX_STEP`` apart in elements (:func:`fill_gaps`). Each candidate then carries:

* ``extra["up_bytes_expr"]`` / ``extra["down_bytes_expr"]``: its crossing bytes and the
  outputs' bytes as expressions over the symbols (exact at any size; see
  :mod:`partition._expr`);
* ``extra["size_expr"]``: the input's element count, the variable times are interpolated
  in;
* ``extra["by_size"]``: its head and tail times at each profiled size.

:func:`cost_at` gives a candidate's (head ms, tail ms, up bytes, down bytes) at any sizes:
bytes evaluated exactly, times interpolated piecewise linearly in the input's element count
between profiled sizes and extrapolated along the nearest segment beyond them (convolution
and matrix work grows with the pixels or tokens). It uses the standard library only, so
the device's policy can call it per request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from devices.errors import PartitionError
from partition._expr import evaluate
from partition._types import LOCAL, OFFLOAD, CutCandidate

ROUND_TO = 32  # default profiled sizes are rounded to this (vision models' usual stride)
# Neighbouring profiled sizes are at most this far apart in input elements: where the
# sizes asked for are further apart, their geometric midpoint is profiled too. A model's
# time per element is not constant (PP-OCR's detector here: flat up to about 448x448,
# then 17-32% higher as its activations leave the cache), and a straight line between
# sizes 4x apart puts such a bend's error on every size between them. A round number,
# not fitted: each halving of the gap halves how far a knee can throw the line.
MAX_STEP = 2.0
MAX_POINTS = 8  # profiling costs time: at most this many sizes, asked for and added


def parse_shapes(texts: Sequence[str] | str) -> list[dict[str, int]]:
    """``"H=640,W=640"`` (one size point; several separated by ``;`` or given as a
    list) -> ``[{"H": 640, "W": 640}]``. ``HxW`` like ``"640x480"`` means ``H=640,W=480``."""
    items = [texts] if isinstance(texts, str) else list(texts)
    out: list[dict[str, int]] = []
    for text in items:
        for part in str(text).split(";"):
            part = part.strip()
            if not part:
                continue
            m = re.fullmatch(r"(\d+)x(\d+)", part)
            if m:
                out.append({"H": int(m.group(1)), "W": int(m.group(2))})
                continue
            point: dict[str, int] = {}
            for kv in part.split(","):
                if "=" not in kv:
                    raise PartitionError(f"shapes {part!r}: expected NAME=SIZE[,NAME=SIZE] or HxW")
                k, v = kv.split("=", 1)
                try:
                    size = int(v)
                except ValueError:
                    raise PartitionError(f"shapes {part!r}: size of '{k.strip()}' must be an integer") from None
                if size < 1:
                    raise PartitionError(f"shapes {part!r}: size of '{k.strip()}' must be >= 1")
                point[k.strip()] = size
            out.append(point)
    return out


def default_points(reference: Mapping[str, int]) -> list[dict[str, int]]:
    """The reference sizes, half of them and twice them (rounded up to ``ROUND_TO``)."""
    if not reference:
        return [{}]

    def scaled(f: float) -> dict[str, int]:
        return {k: max(ROUND_TO, -(-int(v * f) // ROUND_TO) * ROUND_TO) for k, v in reference.items()}

    points = [dict(reference)]
    for f in (0.5, 2.0):
        p = scaled(f)
        if p not in points:
            points.append(p)
    return points


def elements(point: Mapping[str, int]) -> int:
    """The product of a point's dims: the input's size up to the dims it does not name."""
    return math.prod(int(v) for v in point.values())


def fill_gaps(points: Sequence[Mapping[str, int]], step: float = MAX_STEP,
              limit: int = MAX_POINTS) -> list[dict[str, int]]:
    """``points`` (in their order, the reference first), then sizes inside every gap
    between neighbours (by element count) that is more than ``step`` wide: the fewest
    geometrically even ones that cut it into parts at most ``step`` wide, each dim
    rounded down to ``ROUND_TO`` (at least ``ROUND_TO``; a dim equal at both ends
    stays). The widest gaps are filled first, until there are ``limit`` points (a gap
    the limit leaves too few for gets fewer even parts); a size that rounds onto one
    already there is not added."""
    out = [dict(p) for p in points]
    ranked = sorted(out, key=elements)
    gaps = sorted(((elements(b) / max(1, elements(a)), a, b)
                   for a, b in zip(ranked, ranked[1:])),  # noqa: B905 - one shorter by design
                  key=lambda g: -g[0])
    for ratio, lo, hi in gaps:
        if ratio <= step:
            break
        # Fewer, still even, parts where the limit leaves too few sizes for the gap.
        parts = min(math.ceil(math.log(ratio) / math.log(step) - 1e-9), limit - len(out) + 1)
        for j in range(1, parts):
            mid = {}
            for k, a in lo.items():
                b = hi.get(k, a)
                f = (b / a) ** (j / parts) if a > 0 else 1.0
                mid[k] = a if a == b else max(ROUND_TO, int(a * f) // ROUND_TO * ROUND_TO)
            if elements(lo) < elements(mid) < elements(hi) and mid not in out:
                out.append(mid)
    return out


def _interp(points: Sequence[tuple[float, float]], x: float) -> float:
    pts = sorted(points)
    if len(pts) == 1:
        x0, y0 = pts[0]
        return y0 * x / x0 if x0 > 0 else y0
    if x <= pts[0][0]:
        (x0, y0), (x1, y1) = pts[0], pts[1]
    elif x >= pts[-1][0]:
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
    else:
        i = next(k for k in range(1, len(pts)) if pts[k][0] >= x)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    if x1 == x0:
        return (y0 + y1) / 2.0
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    # Below the smallest profiled size, never less than proportional to it.
    floor = pts[0][1] * x / pts[0][0] if x < pts[0][0] and pts[0][0] > 0 else 0.0
    return max(y, floor, 0.0)


def cost_at(candidate: CutCandidate, sizes: Mapping[str, int]) -> tuple[float, float, int, int]:
    """(head ms, tail ms, up bytes, down bytes) of ``candidate`` at the symbol ``sizes``
    (every symbol of the model; a request's :meth:`bind` gives them). A candidate from a
    plan without size data keeps its reference values."""
    e = candidate.extra
    up = evaluate_bytes(e.get("up_bytes_expr"), sizes, candidate.up_bytes)
    down = evaluate_bytes(e.get("down_bytes_expr"), sizes, candidate.down_bytes)
    table = e.get("by_size")
    if candidate.kind == LOCAL:
        up = down = 0
    if not table or "size_expr" not in e:
        return candidate.head_ms, candidate.tail_ms, up, down
    x = float(evaluate_bytes(e["size_expr"], sizes, 0))
    head = _interp([(float(r["elements"]), float(r["head_ms"])) for r in table], x)
    tail = _interp([(float(r["elements"]), float(r["tail_ms"])) for r in table], x)
    if candidate.kind == OFFLOAD:
        head = 0.0
    if candidate.kind == LOCAL:
        tail = 0.0
    return head, tail, up, down


def evaluate_bytes(expr: str | None, sizes: Mapping[str, int], default: int) -> int:
    """A byte (or element) count expression at ``sizes``; ``default`` without one."""
    if not expr:
        return int(default)
    total = evaluate(str(expr), sizes)
    if total < 0:
        raise PartitionError(f"byte count {expr!r} is negative at {dict(sizes)}")
    return total


def bind(inputs: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The symbol sizes that a request's input ``shapes`` give, from a plan's ``inputs``
    (``{"x": {"dims": ["N", 3, "H", "W"], ...}}``). Inputs the plan does not know, and
    plans without ``dims``, give nothing."""
    out: dict[str, int] = {}
    for name, shape in shapes.items():
        spec = inputs.get(name)
        if not isinstance(spec, Mapping):
            continue
        dims = spec.get("dims")
        if not isinstance(dims, list) or len(dims) != len(shape):
            continue
        for d, v in zip(dims, shape):  # noqa: B905 - Python 3.8
            if isinstance(d, str) and d.isidentifier():
                out[d] = int(v)
    return out


def size_rows(points: Sequence[Mapping[str, int]], size_expr: str, heads: Sequence[float],
              tails: Sequence[float]) -> list[dict[str, Any]]:
    """``by_size`` rows for one candidate."""
    rows = []
    for p, h, t in zip(points, heads, tails):  # noqa: B905 - Python 3.8
        rows.append({"sizes": dict(p), "elements": evaluate_bytes(size_expr, p, 0),
                     "head_ms": float(h), "tail_ms": float(t)})
    return rows


__all__ = ["bind", "cost_at", "default_points", "elements", "evaluate_bytes", "fill_gaps", "parse_shapes",
           "size_rows"]
