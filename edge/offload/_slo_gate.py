"""Admission of a stream's frames by their per-frame latency SLO.

A pipeline that keeps ``window`` frames in flight delivers them at the rate of its
slowest stage, so a frame started behind ``k`` others waits for them at that stage: its
latency is not its one-at-a-time latency but about ``max(alone, (k + 1) x cycle)``. A
window sized from one-at-a-time measurements (or a fixed one) therefore admits frames
that cannot finish within the SLO as soon as a stage slows down (a loaded server, a
slower link), and every frame in flight pays for it.

:class:`SloGate` predicts, when the device is about to start a frame, when that frame
will finish: ``max(now + alone, max(now, finish of the frame ahead) + cycle)``, where

* ``alone``: the latency from device start to result of a frame started with nothing in
  flight (exponentially weighted over the recent such frames), and
* ``cycle``: the interval between the results of consecutive frames that overlapped
  (the slowest stage's time per frame, as it is now); until two frames have overlapped,
  the larger of the device stage and the server's compute of the last frame.

A frame whose predicted finish is within ``submitted + slo`` starts. Otherwise, while
frames are in flight, it waits (the window in force shrinks; the frame stays in the
queue, so the overload policy applies to it: ``drop_oldest`` replaces it by a newer
one, counted). With nothing in flight a frame that still cannot make it (it waited too
long) is ``late``: the pipeline drops it in favour of a fresher frame under the drop
policies, and runs it under ``block`` (which never drops). When even a frame alone
takes longer than the SLO, no frame can meet it: the gate then stands aside (every frame
starts as the window allows, none is dropped for the SLO), as ``choose_stream`` picks
the fastest plan when none meets the SLO; re-planning is the policy's business.

The gate has no clock of its own: times are given (seconds, any monotonic clock), so its
rule is tested with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

START, WAIT, LATE = "start", "wait", "late"


@dataclass
class _InFlight:
    started: float
    predicted: float
    overlapped: bool  # something was in flight when it started


class SloGate:
    """Per-frame admission by predicted finish (module docstring). Not thread-safe: the
    pipeline calls it under its own lock."""

    def __init__(self, slo_ms: float, smoothing: float = 0.3) -> None:
        if not slo_ms > 0:
            raise ValueError(f"stream slo_ms must be > 0, got {slo_ms}")
        self.slo_s = slo_ms / 1000.0
        self._a = smoothing
        self.alone_s: float | None = None
        self.cycle_s: float | None = None
        self._stage_s = 0.0  # fallback cycle: the last frame's device stage or server compute
        self._flight: dict[int, _InFlight] = {}
        self._last_done: float | None = None

    @property
    def in_flight(self) -> int:
        return len(self._flight)

    def predict(self, now: float) -> float | None:
        """When a frame started ``now`` is expected to finish; ``None`` before any frame
        has finished alone (nothing known yet: the frame starts)."""
        if self.alone_s is None:
            return None
        finish = now + self.alone_s
        if self._flight:
            ahead = max(f.predicted for f in self._flight.values())
            cycle = self.cycle_s if self.cycle_s is not None else self._stage_s
            finish = max(finish, max(now, ahead) + cycle)
        return finish

    def decide(self, now: float, submitted: float) -> str:
        """``start``, ``wait`` (frames in flight must finish first) or ``late`` (nothing
        in flight, and this frame would still miss the SLO while a fresh one would not)."""
        finish = self.predict(now)
        if finish is None or finish <= submitted + self.slo_s:
            return START
        if self.alone_s is not None and self.alone_s > self.slo_s:
            return START  # no frame can meet the SLO: stand aside, for throughput
        return WAIT if self._flight else LATE

    def started(self, seq: int, now: float) -> None:
        finish = self.predict(now)
        self._flight[seq] = _InFlight(now, finish if finish is not None else now, bool(self._flight))

    def finished(self, seq: int, now: float, stage_s: float = 0.0) -> None:
        """Frame ``seq`` has its result (``stage_s``: its slowest stage as measured, the
        device stage or the server's compute, for ``cycle`` until frames overlap)."""
        f = self._flight.pop(seq, None)
        if f is None:
            return
        if stage_s > 0:
            self._stage_s = stage_s
        if not f.overlapped:
            self.alone_s = self._mix(self.alone_s, now - f.started)
        elif self._last_done is not None and self._last_done > f.started:
            # it started before the previous result: the gap between the two results is
            # the time the slowest stage took for it
            self.cycle_s = self._mix(self.cycle_s, now - self._last_done)
        self._last_done = now

    def forget(self, seq: int) -> None:
        """Frame ``seq`` ended without a usable time (an error)."""
        self._flight.pop(seq, None)

    def _mix(self, old: float | None, new: float) -> float:
        return new if old is None else (1.0 - self._a) * old + self._a * new


__all__ = ["LATE", "START", "WAIT", "SloGate"]
