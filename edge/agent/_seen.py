"""The input sizes a model's requests came at: a small bounded histogram per model, whose
most frequent sizes are the profiling points when the agent plans the model again.

A plan is profiled at a few input sizes and interpolates between them
(``partition._sizes``); the sizes this device really gets are the ones worth measuring.
Each request's input shapes are counted; the table keeps at most ``capacity`` distinct
sizes per model. A size not in a full table takes the place of the least counted one and
starts from its count plus one (the "space-saving" counter of Metwally, Agrawal and El
Abbadi, 2005): a size seen often keeps its place and its count is never under-estimated,
and memory stays fixed whatever the clients send. Counts are halved once their total
passes ``_DECAY_AT``, so sizes of long ago give way to recent ones.

Only well-formed shapes are counted (at most ``_MAX_INPUTS`` inputs of rank at most
``_MAX_RANK``, every dim an integer in 1..``_MAX_DIM``); anything else is ignored here (the
request itself is checked against the model where it runs).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Tuple

# Distinct sizes kept per model.
CAPACITY = 16
# Sizes a plan is profiled at, at most (each costs a profile of the whole model and of
# its measured candidates).
MAX_POINTS = 4
# Bounds of a shape that is counted at all (an input larger than this is not an image
# or a sequence this device plans for).
_MAX_INPUTS = 8
_MAX_RANK = 8
_MAX_DIM = 1 << 16
# Counts are halved when their sum passes this (recent traffic weighs more).
_DECAY_AT = 1 << 20

Key = Tuple[Tuple[str, Tuple[int, ...]], ...]


def shape_key(shapes: Mapping[str, Sequence[Any]]) -> Key | None:
    """``{input: shape}`` as a hashable key, or None when it is not a well-formed set of
    shapes (see the module docstring)."""
    if not isinstance(shapes, Mapping) or not 0 < len(shapes) <= _MAX_INPUTS:
        return None
    out = []
    for name, shape in shapes.items():
        if not isinstance(name, str) or not name or len(name) > 256:
            return None
        try:
            dims = tuple(shape)
        except TypeError:
            return None
        if len(dims) > _MAX_RANK:
            return None
        for d in dims:
            # numpy's integer types pass; bool, float and str do not.
            if isinstance(d, bool) or not hasattr(d, "__index__"):
                return None
            if not 1 <= int(d) <= _MAX_DIM:
                return None
        out.append((name, tuple(int(d) for d in dims)))
    return tuple(sorted(out))


class SizeHistogram:
    """Counts of the input sizes one model's requests came at (see the module docstring).
    Thread-safe; ``record`` is O(capacity) at worst."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"SizeHistogram: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._counts: dict[Key, int] = {}
        self._lock = threading.Lock()

    def record(self, shapes: Mapping[str, Sequence[Any]]) -> bool:
        """Count one request's input shapes; False (nothing counted) when malformed."""
        key = shape_key(shapes)
        if key is None:
            return False
        with self._lock:
            counts = self._counts
            if key in counts:
                counts[key] += 1
            elif len(counts) < self.capacity:
                counts[key] = 1
            else:
                least = min(counts, key=counts.__getitem__)
                counts[key] = counts.pop(least) + 1
            if sum(counts.values()) > _DECAY_AT:
                for k in list(counts):
                    counts[k] = max(counts[k] // 2, 1)
        return True

    def top(self, k: int) -> list[tuple[dict[str, tuple[int, ...]], int]]:
        """The ``k`` most counted sizes, most first (ties: the earlier-seen first), each
        as ``({input: shape}, count)``."""
        with self._lock:
            items = list(self._counts.items())
        order = sorted(range(len(items)), key=lambda i: (-items[i][1], i))
        return [(dict(items[i][0]), items[i][1]) for i in order[:max(k, 0)]]

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)


def profiling_points(seen: Sequence[Mapping[str, Sequence[int]]],
                     dims: Mapping[str, Sequence[Any]], batch: Sequence[str] = (),
                     limit: int = MAX_POINTS) -> list[dict[str, int]]:
    """The sizes to profile a model at, from the input shapes it was ``seen`` at (most
    counted first, as :meth:`SizeHistogram.top` gives them) and its inputs' ``dims``
    (``{"x": ["N", 3, "H", "W"]}``: ``partition.input_dims`` or a plan's ``inputs``).

    The rule: the most counted size first (the plan's reference, at which it chooses and
    the cost table learns), then the smallest and the largest seen (by the product of
    their sizes: every seen size then lies between profiled ones, interpolated rather
    than extrapolated), then the next most counted, at most ``limit`` in all. Sizes are
    of the non-batch symbols (``batch``: the batch is not a size a plan is profiled at);
    shapes that bind none are left out. Empty when nothing binds: the caller keeps its
    default points."""
    from partition import bind_sizes

    specs = {k: {"dims": list(v)} for k, v in dims.items()}
    bound: list[dict[str, int]] = []
    for shapes in seen:
        sizes = {k: v for k, v in bind_sizes(specs, shapes).items() if k not in batch}
        if sizes and sizes not in bound:
            bound.append(sizes)
    if not bound or limit < 1:
        return []

    def volume(p: Mapping[str, int]) -> int:
        out = 1
        for v in p.values():
            out *= v
        return out

    picked = [bound[0]]
    for p in (min(bound, key=volume), max(bound, key=volume), *bound[1:]):
        if len(picked) >= limit:
            break
        if p not in picked:
            picked.append(p)
    return picked
