"""Stream planning: the highest pipeline rate within a per-frame SLO."""

from __future__ import annotations

import itertools

import pytest

from devices import load_profile
from devices.errors import PartitionError
from partition import (
    LOCAL,
    OFFLOAD,
    SPLIT,
    CutCandidate,
    bound_fps,
    choose_stream,
    predict,
    stream_stages,
)

NANO = load_profile("jetson-nano")

LOCAL_C = CutCandidate(LOCAL, LOCAL, (), 90.0, 0.0, 0, 0)
OFFLOAD_C = CutCandidate(OFFLOAD, OFFLOAD, ("x",), 0.0, 3.0, 602_112, 4000)
# a cut after a third of the model: 30 ms on the device, 50 kB up
EARLY = CutCandidate("early", SPLIT, ("a",), 30.0, 2.0, 50_000, 4000)
# a cut near the end: 80 ms on the device, 4 kB up
LATE = CutCandidate("late", SPLIT, ("b",), 80.0, 0.5, 4_000, 4000)
ALL = (LOCAL_C, OFFLOAD_C, EARLY, LATE)


def test_stages_and_bound() -> None:
    assert stream_stages(EARLY, 20e6) == pytest.approx((30.0, 20.0, 2.0, 1.6))
    assert stream_stages(LOCAL_C, 20e6) == (90.0, 0.0, 0.0, 0.0)
    assert bound_fps((30.0, 20.0, 2.0, 1.6)) == pytest.approx(1000 / 30)


def test_throughput_pick_differs_from_the_latency_pick() -> None:
    # 20 Mbit/s, 40 ms: latency: early 30+20+40+2+1.6 = 93.6; late 80+1.6+40+0.5+1.6 =
    # 123.7; local 90; offload 0+240.8+40+3+1.6. The latency pick is local (90 ms, 11 fps);
    # the stream pick is early (slowest stage 30 ms, 33 fps) within a 150 ms SLO.
    pick = choose_stream(ALL, 20e6, 0.04, NANO, slo_ms=150)
    assert pick.candidate.cut_id == "early"
    assert pick.bound_fps == pytest.approx(1000 / 30)
    assert pick.latency_ms == pytest.approx(predict(EARLY, 20e6, 0.04, NANO)[0])
    assert pick.bottleneck == "device"
    assert "within the 150 ms SLO" in pick.reason
    # a 91 ms SLO leaves only local
    assert choose_stream(ALL, 20e6, 0.04, NANO, slo_ms=91).candidate.kind == LOCAL
    # nothing meets 10 ms: the fastest, said so
    tight = choose_stream(ALL, 20e6, 0.04, NANO, slo_ms=10)
    assert tight.candidate.kind == LOCAL and "no candidate meets" in tight.reason


def test_choice_is_exact_over_the_candidates() -> None:
    for bw, rtt, slo in itertools.product((1e6, 20e6, 1e9), (0.0, 0.04), (None, 100.0, 300.0)):
        pick = choose_stream(ALL, bw, rtt, NANO, slo_ms=slo)
        feasible = [c for c in ALL if slo is None or predict(c, bw, rtt, NANO)[0] <= slo]
        if feasible:
            best = min(max(stream_stages(c, bw)) for c in feasible)
            assert max(pick.stages_ms) == pytest.approx(best)


def test_bad_input() -> None:
    with pytest.raises(PartitionError, match="no cut candidates"):
        choose_stream((), 1e6, 0.0, NANO)
    with pytest.raises(PartitionError, match="slo_ms"):
        choose_stream(ALL, 1e6, 0.0, NANO, slo_ms=0)
