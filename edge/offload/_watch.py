"""The upload watch: give a cloud leg's upload up while finishing on the device can still
meet the SLO (what ``[offload] abandon`` turns on)."""

from __future__ import annotations

import time
from collections.abc import Callable

from edge.offload._client import UploadProgress
from edge.policy._decide import LOCAL_SLACK, Prediction
from edge.policy._link import WATCH_SLICE_BYTES

# A watched upload is read at each write the path holds back: about this often on a fast
# link, once a slice (WATCH_SLICE_BYTES) has gone on a slow one. The last reading that can
# still give it up in time comes that long before the last moment.
_RECHECK_MS = 20.0
# An upload projected to answer this far past the SLO is given up at once: through the
# emulator at a steady rate the projection came within 6 % of the answer, and waiting for
# the last reading leaves the local run no room for a slow spell of the device.
_CLEARLY_LATE = 1.1


def abandon_watch(pred: Prediction | None, head_ms: float, local_rest_ms: float,
                  slo: float, t0: float, margin_ms: float) -> Callable[[UploadProgress], str]:
    """The upload watch of one request: give the upload up when, at the rate it is
    progressing, the answer would come after the SLO while finishing on the device
    would still meet it. Past that point it carries on: the device could not make
    the SLO either, and the transfer is the cheaper of the two to finish."""
    # After serialising, what the prediction adds: the round trip, the tail's compute
    # and the answer's download.
    after_ms = (pred.wait_ms + pred.down_ms) if pred is not None else 0.0

    # A local run started later may miss (device compute varies run to run: on this
    # host's emulated boards by up to a tenth, on a board with clocks and heat).
    latest_ms = slo - local_rest_ms * (1.0 + LOCAL_SLACK) - margin_ms

    def watch(p: UploadProgress) -> str:
        now_ms = head_ms + (time.perf_counter() - t0) * 1000.0
        finish_ms = head_ms + p.serialise_s() * 1000.0 + after_ms
        if now_ms > latest_ms:
            # Too late for the device to make the SLO; still, when the upload would
            # answer even later than a run started now, that run is the better miss
            # (a link far slower than hoped, first read late).
            local_ms = now_ms + local_rest_ms * (1.0 + LOCAL_SLACK)
            if finish_ms <= local_ms * _CLEARLY_LATE:
                return ""
            return (f"upload progressing at {p.rate_bps / 1e6:.1f} Mbit/s would answer "
                    f"at {finish_ms:.0f} ms, later than the device would ({local_ms:.0f}"
                    " ms): finished on the device")
        if finish_ms <= slo:
            return ""
        # Late at this rate. Give up now if clearly late, or if the next reading may
        # come too late; else wait and see: a link can come back within a transfer,
        # and a wrong give-up costs a whole local run.
        # (At 1.9 Mbit/s a slice takes 69 ms: waiting 20 ms for a reading that came 69 ms
        # later let near misses run past the last moment and miss the SLO.)
        next_ms = max(_RECHECK_MS, WATCH_SLICE_BYTES * 8.0 / p.rate_bps * 1000.0
                      if p.rate_bps > 0 else _RECHECK_MS)
        if finish_ms <= slo * _CLEARLY_LATE and now_ms + next_ms <= latest_ms:
            return ""
        return (f"upload progressing at {p.rate_bps / 1e6:.1f} Mbit/s would answer at "
                f"{finish_ms:.0f} ms, past the {slo:.0f} ms SLO: finished on the device")

    return watch
