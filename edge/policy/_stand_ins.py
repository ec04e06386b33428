"""What the link estimator takes from evidence short of a measured transfer: a rate read
off an upload's progress, an upload given up part-way (a censored bound), a cloud leg that
timed out after its whole upload (a doubt, then a bound). Each stands in below the
estimate until the next measured transfer replaces it, and marks the estimate
``provisional`` meanwhile. A mixin of :class:`edge.policy._link.LinkEstimator`, whose
state and lock it uses.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable

# Below this many bytes a transfer's time is all round trip: it refreshes the RTT only.
MIN_BANDWIDTH_SAMPLE_BYTES = 4096
# The largest forecast error (log units) a rate reading counts as (see observe_rate):
# a factor of e. Leaving readings out of the errors altogether let the energy objective
# retry a 6 % upload on almost every request on the NYU trace (54 given up); taking
# them whole made a 1.8 Mbit/s reading on 5G weigh on every transfer for sixteen.
_READING_ERROR = 1.0


class StandIns:
    """Readings, censored bounds and timeouts (see the module's notes)."""

    _clock: Callable[[], float]
    _lock: threading.Lock
    _bw: deque[tuple[float, float]]
    _last_traffic: float | None
    _readings: int
    _bounded: bool
    _doubted: bool
    total_samples: int
    # the estimator's own: its bandwidth and round trip, and noting a forecast error
    _bw_locked: Callable[[], float]
    _rtt_locked: Callable[[], float]
    _record_miss_locked: Callable[[float], None]

    def observe_rate(self, bps: float, now: float | None = None) -> None:
        """A rate measured directly: an upload's writes progressing while the path held
        them back (one given up part-way, see ``OffloadClient.infer``). Read early in a
        transfer it includes what the path's buffers took in at once, so it can overstate
        the link; read over a few tens of milliseconds it is the link of that instant,
        which a whole transfer averages out, so it can understate it many times over.
        Below the estimate it stands in as a sample until the next measured transfer
        replaces it, and counts as a forecast error of at most ``_READING_ERROR`` (a
        reading of a thirtieth of the estimate, taken whole, would weigh on the expected
        transfer time for the next sixteen requests). Above the estimate it is only a
        sign that the link is no slower than believed."""
        now = self._clock() if now is None else now
        if bps <= 0 or not math.isfinite(bps):
            return
        with self._lock:
            self._add_reading_locked(bps, now)

    def _add_reading_locked(self, bps: float, now: float) -> None:
        """A reading or a bound (``observe_rate``, ``observe_censored``): below the
        estimate, a stand-in sample; at or above it, only a sign of traffic."""
        self._last_traffic = now
        if self._bw and bps >= self._bw_locked():
            return
        if self._bw:
            # As a forecast error, at most _READING_ERROR below the estimate.
            self._record_miss_locked(max(bps, self._bw_locked()
                                         * math.exp(-_READING_ERROR)))
        self._bw.append((bps, now))
        self._readings += 1
        self._bounded = False
        self.total_samples += 1

    def observe_censored(self, nbytes: int, seconds: float, now: float | None = None) -> bool:
        """An upload still going after ``seconds`` (we gave up) when only ``nbytes`` had
        been handed to the network: in that time, less the round trip, the link carried
        at most those bytes (the ones written and not yet delivered included, so the
        bound errs on the fast side). Lowers the estimate, never raises it. ``nbytes``
        must be what the sender knows it handed over, never what it meant to send:
        bytes that had not left say nothing of the link (a leg that waited on a slow
        server after its whole upload went is :meth:`doubt`, not this).

        It is a bound, not a measurement (the link may have been far slower, or the
        sender itself slow to hand bytes over), so it is folded in as a rate reading is
        (see ``observe_rate``): it stands in until the next measured transfer replaces
        it, counts as a forecast error of at most ``_READING_ERROR``, and while it stands
        the estimate is ``provisional`` and its optimistic edge still reaches the
        measured samples' level, so that the policy can probe its way back. Returns
        whether it was taken (too few bytes, or no time beyond the round trip, say
        nothing)."""
        now = self._clock() if now is None else now
        with self._lock:
            rtt = self._rtt_locked()
            if nbytes < MIN_BANDWIDTH_SAMPLE_BYTES or seconds <= rtt:
                return False
            self._add_reading_locked(nbytes * 8.0 / (seconds - rtt), now)
            return True

    def observe_timeout(self, nbytes: int, seconds: float, rest_s: float | None = None,
                        now: float | None = None) -> str:
        """A cloud leg ran out of time after ``seconds`` though its whole upload of
        ``nbytes`` had been handed over (or the transport cannot say what was): the rest
        of the wait may be the link's (bytes still in its buffers, the answer) or the
        server's (its queue, its compute). Returns what it was taken as.

        - The first such timeout since the last measured transfer: a "doubt". No
          bandwidth follows from it (a timeout behind a loaded server, taken as transfer
          time, once dragged a 212 Mbit/s estimate to 3, issue 25); the estimate is
          ``provisional`` until the next measured transfer, so that the policy checks
          the link (a probe) before it bets on it again.
        - Another one before any transfer measured the link (the probe did not settle
          it either): the leg as a whole is slow, and a small upload swallowed whole by
          the path's buffers would otherwise never show a collapsed link. Given
          ``rest_s``, the server's expected part of the leg (its usual time and the
          round trip), the bytes had at most the time left: a "bound" of ``nbytes``
          over ``seconds - rest_s``, folded in as a censored sample is (a stand-in the
          next measured transfer replaces). Without ``rest_s``, or no time left over,
          still a doubt. (A server that stays slow is thereby planned as a slow link
          would be: either way the cloud leg is slow.)"""
        now = self._clock() if now is None else now
        with self._lock:
            again, self._doubted = self._doubted, True
            if (not again or rest_s is None or seconds - rest_s <= 0
                    or nbytes < MIN_BANDWIDTH_SAMPLE_BYTES):
                return "doubt"
            if self._bw and nbytes * 8.0 / (seconds - rest_s) >= self._bw_locked():
                return "doubt"
            self._add_reading_locked(nbytes * 8.0 / (seconds - rest_s), now)
            return "bound"

    def doubt(self) -> None:
        """Put the estimate in question (``provisional``) without moving it, until the
        next measured transfer (see ``observe_timeout``)."""
        with self._lock:
            self._doubted = True
