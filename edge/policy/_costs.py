"""The cost table: per-cut head and tail times, corrected online from every measurement."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from edge.policy._state import CutEstimate
from partition import LOCAL, OFFLOAD, CutCandidate, Plan

# A sample more than this far off the prediction is a spike until the next one agrees.
_SPIKE = 1.5
# No sample moves the table by more than this ratio either way.
_CLIP = 3.0


def _clipped(ratio: float) -> float:
    return min(max(ratio, 1 / _CLIP), _CLIP)


class CostTable:
    """Per-cut head and tail times, corrected online from every measurement.

    A prediction is the plan's profiled figure x a shared speed factor of its side x a
    per-cut residual. The shared factor moves with every measurement of any cut on that
    side (thermal throttling, contention or a busy cloud slow every cut alike), so one
    local run also corrects the heads of the splits not tried lately; the residual
    corrects what the profile got wrong about one cut. Both are exponentially weighted
    averages of ratios, each sample clipped to 3x either way; a sample over 1.5x off is
    held until the next one agrees, so that one stall (a GC pause, a page fault, another
    process on the core) does not move the table at all.
    """

    def __init__(self, plan: Plan, *, ewma: float = 0.3,
                 raw_inputs: Iterable[str] = (),
                 device_layers: Mapping[str, Iterable[str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.ewma = ewma
        self._clock = clock
        raw = frozenset(raw_inputs)
        layers = {k: frozenset(v) for k, v in (device_layers or {}).items()}
        self._lock = threading.Lock()
        self._base: dict[str, CutEstimate] = {}
        self._head_r: dict[str, float] = {}
        self._tail_r: dict[str, float] = {}
        self._seen: dict[str, float] = {}
        self._samples: dict[str, int] = {}
        self.device_factor = 1.0
        self.cloud_factor = 1.0
        self._held: dict[str, float] = {}  # a far-off sample's ratio awaiting the next, per side
        for c in plan.candidates:
            self._base[c.cut_id] = CutEstimate(
                cut_id=c.cut_id, kind=c.kind, head_ms=c.head_ms, tail_ms=c.tail_ms,
                up_bytes=c.up_bytes, down_bytes=c.down_bytes,
                sends_raw_input=c.kind == OFFLOAD or bool(raw.intersection(c.tensors)),
                device_layers=layers.get(c.cut_id, frozenset()),
            )
            self._head_r[c.cut_id] = 1.0
            self._tail_r[c.cut_id] = 1.0
            self._samples[c.cut_id] = 0

    def candidate(self, cut_id: str) -> CutCandidate:
        return self.plan.candidate(cut_id)

    def _update(self, side: str, base: float, factor: float, resid: float, sample: float,
                a: float) -> tuple[float, float]:
        if base <= 0:
            return factor, resid
        raw = sample / (base * factor * resid)
        # A sample far off the prediction (over 1.5x either way) is held: it counts only
        # when the next sample on this side is far off the same way. A lone stall (a GC
        # pause, another process taking the core for a second) then leaves the table where
        # it was, while a real change (throttling, a busy cloud) is followed in full from
        # its second sample on, the held one included.
        held = self._held.pop(side, None)
        if raw > _SPIKE or raw < 1 / _SPIKE:
            if held is None or (held > 1) != (raw > 1):
                self._held[side] = raw
                return factor, resid
            factor *= 1 + a * (_clipped(held) - 1)
        ratio = _clipped(raw)
        # The shared factor takes the ratio's move; the residual keeps what the shared
        # factor does not explain for this cut, learnt far more slowly: the cut measured
        # most often (local, on most devices) would otherwise take a share of every slow
        # spell into its residual, and splits whose heads are nearly the whole model
        # would look cheaper than local by that share.
        factor *= 1 + a * (ratio - 1)
        ratio2 = _clipped(sample / (base * factor * resid))
        resid *= 1 + (a / 8) * (ratio2 - 1)
        return factor, resid

    def observe(self, cut_id: str, *, head_ms: float | None = None,
                tail_ms: float | None = None, now: float | None = None) -> None:
        """Fold in measured device (head) and cloud (tail) times of one request."""
        now = self._clock() if now is None else now
        with self._lock:
            base = self._base.get(cut_id)
            if base is None:
                raise KeyError(f"cost table: unknown cut '{cut_id}'")
            a = self.ewma
            if head_ms is not None:
                self.device_factor, self._head_r[cut_id] = self._update(
                    "device", base.head_ms, self.device_factor, self._head_r[cut_id], head_ms, a)
            if tail_ms is not None:
                self.cloud_factor, self._tail_r[cut_id] = self._update(
                    "cloud", base.tail_ms, self.cloud_factor, self._tail_r[cut_id], tail_ms, a)
            self._seen[cut_id] = now
            self._samples[cut_id] += 1

    def observe_local_full(self, full_ms: float, now: float | None = None) -> None:
        """A whole-model local run also tells us the local candidate's cost."""
        for cid, base in self._base.items():
            if base.kind == LOCAL:
                self.observe(cid, head_ms=full_ms, now=now)

    def snapshot(self, now: float | None = None) -> tuple[CutEstimate, ...]:
        """The candidates with their current estimates and ages."""
        now = self._clock() if now is None else now
        with self._lock:
            out = []
            for cid, base in self._base.items():
                seen = self._seen.get(cid)
                out.append(CutEstimate(
                    cut_id=cid, kind=base.kind,
                    head_ms=base.head_ms * self.device_factor * self._head_r[cid],
                    tail_ms=base.tail_ms * self.cloud_factor * self._tail_r[cid],
                    up_bytes=base.up_bytes, down_bytes=base.down_bytes,
                    sends_raw_input=base.sends_raw_input, device_layers=base.device_layers,
                    age_s=math.inf if seen is None else max(now - seen, 0.0),
                    samples=self._samples[cid],
                ))
            return tuple(out)
