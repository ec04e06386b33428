"""What a request's legs leave behind: a cloud leg's answer or failure folded into the
link estimate and the cost table, the fallback to the device, and the request's outcome
with its energy.

``_Folding`` is one of the jobs of :class:`~edge.offload._executor.Executor`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import DeadlineExceeded, TransferAbandoned
from edge.offload._outcome import Outcome, _nbytes
from edge.offload._sizing import UNSCALED, RequestScale
from edge.policy._decide import Decision
from edge.policy._link import LinkEstimator
from partition import LOCAL, OFFLOAD, CutCandidate


def fold_cloud_failure(link: LinkEstimator, exc: BaseException, nbytes: int,
                       seconds: float, rest_s: float | None = None) -> str:
    """Fold what a failed cloud leg of ``nbytes`` up, which ran ``seconds``, says of the
    link into ``link``; returns what it was taken as ("rate", "bound", "doubt" or "").
    ``rest_s``: the leg's expected time beyond its transfers (round trip, the server's
    usual time), when known.

    - A given-up upload (``TransferAbandoned``): the rate its writes progressed at while
      the path held them back stands in for a bandwidth sample.
    - A leg that ran out of time while its upload was still being handed over (the
      writes were held back at the end): a censored sample. In the attempt's time the
      link carried at most the bytes the client had handed over, never the bytes it
      meant to send (the rest had not left).
    - A leg that ran out of time after its whole upload was handed over: no sample.
      What follows the last write (the bytes still in the path's buffers, the server's
      queue and compute, the answer) cannot be told apart: taken as transfer time, one
      such timeout behind a loaded server dragged a 212 Mbit/s estimate to 3 on a 5G
      trace (issue 25). The estimate is put in doubt instead, so that the policy probes
      the link before it bets on it again; a real drop then shows in the probe's
      measured transfer, or, when another leg times out so before anything was
      measured, in a bound on the time ``rest_s`` leaves (``observe_timeout``). So also
      when the client cannot say what was sent (a deadline that passed between
      attempts, the gRPC transport).
    - Anything else (the service unreachable, the request refused): nothing here; the
      breaker and the cloud's health deal with it.
    """
    if isinstance(exc, TransferAbandoned):
        if exc.rate_bps > 0:
            link.observe_rate(exc.rate_bps)
            return "rate"
        link.doubt()
        return "doubt"
    if not isinstance(exc, DeadlineExceeded):
        return ""
    sent = exc.sent_bytes
    if sent is not None and exc.upload_s is None:
        spent = exc.seconds if exc.seconds is not None else seconds
        # (the body's bytes: the tensors and a small header; the tensors' count at most)
        if link.observe_censored(min(sent, nbytes), spent):
            return "bound"
        if sent < nbytes:  # (too little sent, or too soon, to say anything)
            link.doubt()
            return "doubt"
    spent = exc.seconds if exc.seconds is not None else seconds
    return link.observe_timeout(nbytes, spent, rest_s)


class _Folding:
    """Measurements folded back, fallbacks run, outcomes costed."""

    def _cloud_seconds(self, result: Any) -> float:
        """The cloud leg's time with the server's own compute at ``cloud_compute_scale``
        x what it took (1 on a real deployment: the time as measured)."""
        k = self.cloud_compute_scale
        if result.server_s is None or k == 1.0:
            return float(result.seconds)
        return max(float(result.seconds) - result.server_s * (1.0 - k), 0.0)

    def _uncharged_s(self, cut_id: str) -> float:
        """Seconds of the server's last measured compute for ``cut_id`` that a cloud
        accounted faster than the server playing it (``cloud_compute_scale`` < 1) is not
        charged: the wall-clock allowance a leg gets for it (0 on a real deployment)."""
        return self.server_compute_s.get(cut_id, 0.0) * (1.0 - self.cloud_compute_scale)

    def _observe_cloud(self, cand: CutCandidate, result: Any,
                       scale: RequestScale = UNSCALED) -> None:
        """Fold a cloud leg's answer into the link estimate and the cost table (its
        server time at the plan's reference size: divided by ``scale``'s tail factor)."""
        k = self.cloud_compute_scale
        if result.server_s is not None:
            self.server_compute_s[cand.cut_id] = result.server_s
            server_s = result.server_s * k
        else:
            server_s = cand.tail_ms / 1000.0
        self.link.observe_transfer(result.up_bytes, result.down_bytes,
                                   self._cloud_seconds(result), server_s=server_s)
        if result.server_s is not None:
            self.costs.observe(cand.cut_id,
                               tail_ms=server_s * 1000.0 / scale.tail(cand.cut_id))
        else:
            self.costs.observe(cand.cut_id)

    def _observe_head(self, cand: CutCandidate, ms: float,
                      scale: RequestScale = UNSCALED) -> None:
        """Fold a head's device time into the cost table, at the reference size."""
        self.costs.observe(cand.cut_id, head_ms=ms / scale.head(cand.cut_id))

    def _observe_whole(self, ms: float, scale: RequestScale = UNSCALED) -> None:
        """Fold a whole-model device run into the cost table, at the reference size."""
        self.costs.observe_local_full(ms / scale.local())

    def _observe_cloud_failure(self, exc: Exception, crossing: Mapping[str, np.ndarray],
                               seconds: float, cand: CutCandidate | None = None,
                               scale: RequestScale = UNSCALED) -> None:
        """What a failed cloud leg says of the link (see :func:`fold_cloud_failure`)."""
        rest_s = self._expected_rest_s(cand, scale) if cand is not None else None
        fold_cloud_failure(self.link, exc, _nbytes(crossing), seconds, rest_s)

    def _expected_rest_s(self, cand: CutCandidate, scale: RequestScale = UNSCALED) -> float:
        """Wall seconds ``cand``'s cloud leg is expected to spend beyond its transfers:
        the round trip and the server's usual time for it (the cost table's tail, learnt
        from its Server-Timing at ``cloud_compute_scale``, back at the server's own
        speed, and at this request's size)."""
        tail_ms = next((c.tail_ms for c in self.costs.snapshot() if c.cut_id == cand.cut_id),
                       cand.tail_ms)
        k = self.cloud_compute_scale or 1.0
        return (self.link.estimate().rtt_s
                + tail_ms * scale.tail(cand.cut_id) / k / 1000.0)

    def _tail_feeds(self, tail: Path, feeds: Mapping[str, np.ndarray],
                    crossing: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The local tail's inputs: the crossing tensors plus any model input it reads."""
        sess = self._session_for(tail)
        extra = {s.name: feeds[s.name] for s in sess.inputs if s.name in feeds}
        return {**crossing, **extra}

    def _local_rest_ms(self, cand: CutCandidate) -> float:
        snap = {c.cut_id: c for c in self.costs.snapshot()}
        local = next((c.head_ms for c in snap.values() if c.kind == LOCAL), 0.0)
        if self._local_tail_path(cand) is not None:
            return max(local - snap[cand.cut_id].head_ms, 0.0)
        return local

    def _fallback(self, rid: int, decision: Decision, cand: CutCandidate,
                  feeds: Mapping[str, np.ndarray], crossing: dict[str, np.ndarray],
                  head_ms: float, cloud_ms: float, reason: str, slo: float,
                  started: float, scale: RequestScale = UNSCALED) -> Outcome:
        tail_path = self._local_tail_path(cand)
        if tail_path is not None and cand.kind != OFFLOAD:
            outputs, ms = self._run_local(tail_path, self._tail_feeds(tail_path, feeds,
                                                                      crossing))
            executed = f"{decision.plan} -> local tail"
        else:
            outputs, ms = self._run_local(self.model_path, feeds)
            self._observe_whole(ms, scale)
            executed = "local (fallback)"
        return self._outcome(rid, decision, executed, reason, outputs, head_ms, cloud_ms, ms,
                             0, 0, slo, started)

    def _outcome(self, rid: int, decision: Decision, executed: str, fallback: str,
                 outputs: dict, head_ms: float, cloud_ms: float, local_tail_ms: float,
                 up: int, down: int, slo: float, started: float) -> Outcome:
        latency = head_ms + cloud_ms + local_tail_ms
        if fallback:
            # What the failed cloud leg sent is unknown: its whole time is charged at the
            # radio's transmit power, the most it can have cost.
            up_ms, down_ms, wait_ms = cloud_ms, 0.0, 0.0
        else:
            est = self.link.estimate()
            up_ms = min(est.transfer_s(up) * 1000.0, cloud_ms)
            down_ms = min(est.transfer_s(down) * 1000.0, max(cloud_ms - up_ms, 0.0))
            wait_ms = max(cloud_ms - up_ms - down_ms, 0.0)
        energy = self.energy.plan_mj(head_ms + local_tail_ms, up_ms, down_ms, wait_ms)
        missed = slo > 0 and latency > slo
        return Outcome(rid, decision, executed, fallback, latency, head_ms, cloud_ms,
                       local_tail_ms, up, down, energy, missed, started, outputs=outputs)
