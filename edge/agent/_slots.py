"""Serving versions: a model's :class:`ModelVersion` and the :class:`ModelSlot` that swaps
it atomically (in-flight requests finish on the version they started on), plus the
checks and warm-up a new version goes through before it serves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from devices.errors import EdgecutError, ModelInputError, ModelUpdateError
from edge import runtime


@dataclass
class ModelVersion:
    """One loaded version of a model and its request counters."""

    name: str
    version: str
    path: str
    session: runtime.Session
    loaded_at: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, ok: bool) -> None:
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.errors


class ModelSlot:
    """The serving version of one model, swapped atomically.

    ``run`` reads :attr:`current` once; the reference it holds keeps that version's
    session alive until the call returns, whatever swaps happen meanwhile.
    """

    def __init__(self, current: ModelVersion) -> None:
        self.current = current
        self.previous: ModelVersion | None = None
        self._listeners: list[Callable[[ModelVersion, bool], None]] = []

    @property
    def name(self) -> str:
        return self.current.name

    def add_listener(self, fn: Callable[[ModelVersion, bool], None]) -> None:
        """Call ``fn(version, ok)`` after every request (the probation monitor uses it)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ModelVersion, bool], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ModelVersion]:
        """Run the serving version; return its outputs and the version that ran."""
        version = self.current
        try:
            out = version.session.run(feeds)
        except ModelInputError:
            # The caller's mistake, not the model's: it does not count against a version.
            raise
        except Exception:
            version.record(False)
            for fn in list(self._listeners):
                fn(version, False)
            raise
        version.record(True)
        if self._listeners:
            for fn in list(self._listeners):
                fn(version, True)
        return out, version

    def swap(self, new: ModelVersion) -> ModelVersion:
        """Serve ``new`` from the next request on; return the version it replaced."""
        old = self.current
        self.previous = old
        self.current = new
        return old


def sample_inputs(session: runtime.Session, path: str = "", seed: int = 0) -> dict[str, np.ndarray]:
    """Warm-up feeds: the ``.npz`` at ``path`` when given, else seeded random tensors."""
    if path:
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ModelUpdateError(f"warm-up inputs '{path}': not a readable .npz ({exc})") from exc
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in session.inputs:
        shape = tuple(1 if d is None else d for d in spec.shape)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ModelUpdateError(
                f"input '{spec.name}' has dtype {spec.dtype}: give warm-up inputs as an .npz"
            )
    return feeds


def warm_up(session: runtime.Session, feeds: Mapping[str, np.ndarray], runs: int) -> float:
    """Run ``runs`` (at least one) inferences; fail on an error or a non-finite output.

    Returns the median latency in milliseconds.
    """
    times = []
    for i in range(max(1, runs)):
        start = time.perf_counter()
        try:
            out = session.run(feeds)
        except EdgecutError as exc:
            raise ModelUpdateError(f"warm-up inference {i + 1} failed: {exc}") from exc
        times.append((time.perf_counter() - start) * 1000)
        for name, value in out.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ModelUpdateError(f"warm-up inference {i + 1}: output '{name}' is not finite")
    return float(np.median(times))


def check_interface(old: runtime.Session, new: runtime.Session) -> None:
    """Reject a new version whose inputs or outputs differ from the serving one's.

    Applications on the board were written against the serving interface; a change in
    names, dtypes or ranks would make their requests fail after the swap.
    """
    for kind, a, b in (("input", old.inputs, new.inputs), ("output", old.outputs, new.outputs)):
        sa = {s.name: (s.dtype, len(s.shape)) for s in a}
        sb = {s.name: (s.dtype, len(s.shape)) for s in b}
        if sa != sb:
            def fmt(specs: tuple[runtime.TensorSpec, ...]) -> str:
                return ", ".join(s.describe() for s in specs)

            raise ModelUpdateError(
                f"{kind}s changed: serving version has {fmt(a)}, new version has {fmt(b)} "
                "(set allow_interface_change to deploy it anyway)"
            )
