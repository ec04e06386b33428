"""Plan a stream of frames for throughput under a per-frame latency SLO.

A stream runs as a pipeline: the device head, the uplink, the cloud tail and the downlink
each work on a different frame at once, so a plan's steady rate is set by its slowest
stage (DADS's heavy-load mode, INFOCOM 2019)::

    stages(c)   = head_ms, up_bytes*8/bw, tail_ms, down_bytes*8/bw   (local: head only)
    bound_fps   = 1000 / max(stages)
    latency(c)  = the single-request latency of ``predict`` (a frame still passes every
                  stage and the round trip once)

``choose_stream`` is exact over the candidates it is given: the highest ``bound_fps``
among the candidates whose latency meets the SLO, ties broken by the lower latency;
with no SLO, the highest rate; when no candidate meets the SLO, the fastest one (a
stream that cannot keep its deadline should at least come back soonest), said in the
reason. The round trip does not limit the rate (frames overlap in flight) but counts in
the latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from devices import DeviceProfile
from devices.errors import PartitionError
from partition._planner import predict, transfer_ms
from partition._types import LOCAL, CutCandidate

STAGE_NAMES = ("device", "uplink", "cloud", "downlink")


@dataclass(frozen=True)
class StreamChoice:
    """The planner's pick for a stream: the candidate, its stage times (ms, in
    ``STAGE_NAMES`` order), its pipeline bound (frames/s), per-frame latency and device
    energy, and the reason in words."""

    candidate: CutCandidate
    stages_ms: tuple[float, float, float, float]
    bound_fps: float
    latency_ms: float
    energy_mj: float
    reason: str

    @property
    def bottleneck(self) -> str:
        """The name of the slowest stage."""
        return STAGE_NAMES[max(range(4), key=lambda i: self.stages_ms[i])]


def stream_stages(candidate: CutCandidate, bandwidth_bps: float) -> tuple[float, float, float, float]:
    """(device, uplink, cloud, downlink) ms per frame of ``candidate`` on a link of
    ``bandwidth_bps``; a local plan has only the device stage."""
    if candidate.kind == LOCAL:
        return (candidate.head_ms, 0.0, 0.0, 0.0)
    return (
        candidate.head_ms,
        transfer_ms(candidate.up_bytes, bandwidth_bps),
        candidate.tail_ms,
        transfer_ms(candidate.down_bytes, bandwidth_bps),
    )


def bound_fps(stages_ms: Sequence[float]) -> float:
    """Frames per second of a pipeline whose stages take ``stages_ms`` each."""
    slowest = max(stages_ms)
    return 1000.0 / slowest if slowest > 0 else float("inf")


def choose_stream(
    candidates: Sequence[CutCandidate],
    bandwidth_bps: float,
    rtt_s: float,
    device: DeviceProfile,
    slo_ms: float | None = None,
) -> StreamChoice:
    """The candidate with the highest pipeline rate whose per-frame latency meets
    ``slo_ms`` (see the module docstring for ties and an SLO nobody meets)."""
    if not candidates:
        raise PartitionError("no cut candidates to choose from")
    if slo_ms is not None and slo_ms <= 0:
        raise PartitionError(f"slo_ms must be > 0, got {slo_ms}")
    scored = []
    for c in candidates:
        lat, en = predict(c, bandwidth_bps, rtt_s, device)
        st = stream_stages(c, bandwidth_bps)
        scored.append((c, st, max(st), lat, en))
    pool = scored if slo_ms is None else [s for s in scored if s[3] <= slo_ms]
    if not pool:
        c, st, _, lat, en = min(scored, key=lambda s: (s[3], s[2]))
        return StreamChoice(c, st, bound_fps(st), lat, en,
                            f"no candidate meets the {slo_ms:g} ms SLO; fastest is {lat:.1f} ms")
    c, st, _, lat, en = min(pool, key=lambda s: (s[2], s[3]))
    choice = StreamChoice(c, st, bound_fps(st), lat, en, "")
    why = f"highest pipeline rate ({choice.bound_fps:.1f} fps, {choice.bottleneck} stage {max(st):.1f} ms)"
    if slo_ms is not None:
        why += f" within the {slo_ms:g} ms SLO ({lat:.1f} ms)"
    return StreamChoice(c, st, choice.bound_fps, lat, en, why)
