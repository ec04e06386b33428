from __future__ import annotations

import random

import onnx
import pytest

from devices import load_profile
from devices.errors import PartitionError
from partition import (
    LOCAL,
    OFFLOAD,
    SPLIT,
    CutCandidate,
    LayerGraph,
    choose,
    make_candidates,
    min_cut,
    predict,
)
from tests.partition import graphs

NANO = load_profile("jetson-nano")


def _best_by_enumeration(g, dev, cloud, bw, rtt, objective):
    cands = make_candidates(g, [g.crossing(s) for s in g.ideals()], dev, cloud)
    return choose(cands, bw, rtt, NANO, objective)


def test_predict_follows_the_formula() -> None:
    c = CutCandidate("c", SPLIT, ("t",), head_ms=10.0, tail_ms=2.0, up_bytes=125_000, down_bytes=1250)
    lat, en = predict(c, 10e6, 0.04, NANO)
    up_ms, down_ms = 100.0, 1.0  # 1 Mbit and 10 kbit at 10 Mbit/s
    assert lat == pytest.approx(10 + up_ms + 40 + 2 + down_ms)
    p, r = NANO.power, NANO.radio
    active = p.gpu_active_w if "CUDAExecutionProvider" in NANO.providers else p.cpu_active_w
    assert en == pytest.approx(active * 10 + r.tx_w * up_ms + r.rx_w * down_ms + p.idle_w * (40 + 2))
    local = CutCandidate(LOCAL, LOCAL, (), 30.0, 0.0, 0, 0)
    assert predict(local, 1e3, 5.0, NANO) == pytest.approx((30.0, active * 30.0))
    with pytest.raises(PartitionError, match="bandwidth"):
        predict(c, 0, 0.01, NANO)


def test_chain_known_optimum_at_three_bandwidths() -> None:
    g = LayerGraph.from_model(graphs.chain())
    dev = {"A": 10.0, "B": 1.0, "C": 20.0}
    cloud = {"A": 1.0, "B": 0.1, "C": 1.0}
    cands = make_candidates(g, [("t1",), ("t2",)], dev, cloud)
    # 1 Mbit/s, 10 ms: local 31; t1 = 10 + 0.32 + 10 + 1.1 + 0.16 = 21.58; t2 = 22.48;
    # offload = 32 + 10 + 2.1 + 0.16 = 44.26.
    pick = choose(cands, 1e6, 0.01, NANO)
    assert pick.candidate.tensors == ("t1",)
    assert pick.latency_ms == pytest.approx(21.58)
    assert choose(cands, 1e9, 0.01, NANO).candidate.kind == OFFLOAD  # 12.13 ms
    assert choose(cands, 1e4, 0.01, NANO).candidate.kind == LOCAL  # transfers take seconds
    for bw, expected in ((1e6, 21.58), (1e9, 12.13216), (1e4, 31.0)):
        mc = min_cut(g, dev, cloud, bw, 0.01, NANO)
        assert mc.cost == pytest.approx(expected, rel=1e-6)
    assert min_cut(g, dev, cloud, 1e6, 0.01, NANO).tensors == ("t1",)


def test_min_cut_sends_a_shared_tensor_once() -> None:
    g = LayerGraph.from_model(graphs.diamond())
    dev = {"A": 1.0, "B1": 30.0, "B2": 30.0, "S": 1.0}
    cloud = dict.fromkeys(dev, 0.0)
    # 8 kbit/s: t (40 B) costs 40 ms once; local 62; split at t: 1 + 40 + 12 (down) = 53.
    mc = min_cut(g, dev, cloud, 8000.0, 0.0, NANO)
    assert mc.kind == SPLIT and mc.tensors == ("t",)
    assert mc.cost == pytest.approx(53.0)
    best = _best_by_enumeration(g, dev, cloud, 8000.0, 0.0, "latency")
    assert best.candidate.tensors == ("t",) and best.latency_ms == pytest.approx(53.0)


def test_energy_objective_and_slo() -> None:
    fast_hungry = CutCandidate(LOCAL, LOCAL, (), 20.0, 0.0, 0, 0)
    slow_frugal = CutCandidate("s", SPLIT, ("t",), 1.0, 5.0, 50_000, 100)
    cands = [fast_hungry, slow_frugal]
    bw, rtt = 10e6, 0.03
    lat_l, en_l = predict(fast_hungry, bw, rtt, NANO)
    lat_s, en_s = predict(slow_frugal, bw, rtt, NANO)
    assert lat_l < lat_s and en_s < en_l  # the trade-off the test needs
    assert choose(cands, bw, rtt, NANO, "latency").candidate is fast_hungry
    assert choose(cands, bw, rtt, NANO, "energy").candidate is slow_frugal
    assert choose(cands, bw, rtt, NANO, "energy", slo_ms=lat_s + 1).candidate is slow_frugal
    tight = choose(cands, bw, rtt, NANO, "energy", slo_ms=lat_l + 0.1)
    assert tight.candidate is fast_hungry and "SLO" in tight.reason
    none = choose(cands, bw, rtt, NANO, "energy", slo_ms=1.0)
    assert none.candidate is fast_hungry and "no candidate meets" in none.reason
    with pytest.raises(PartitionError, match="objective"):
        choose(cands, bw, rtt, NANO, "cost")


@pytest.mark.parametrize("name", ["squeezenet", "inception_v1", "resnet50", "densenet121"])
def test_min_cut_agrees_with_complete_enumeration(zoo_model, name: str) -> None:
    g = LayerGraph.from_model(onnx.load(zoo_model(name)))
    ideals = g.ideals()
    assert ideals is not None  # enumeration is complete on these graphs
    rng = random.Random(name)
    splits_won = 0
    for _ in range(3):
        cloud = {n: rng.random() * 2 for n in g.order}
        dev = {n: v * rng.uniform(0.5, 8) for n, v in cloud.items()}
        cands = make_candidates(g, [g.crossing(s) for s in ideals], dev, cloud)
        for objective in ("latency", "energy"):
            for bw in (1e6, 5e6, 20e6, 100e6, 1e9):
                mc = min_cut(g, dev, cloud, bw, 0.02, NANO, objective)
                best = choose(cands, bw, 0.02, NANO, objective)
                want = best.latency_ms if objective == "latency" else best.energy_mj
                assert mc.cost == pytest.approx(want, rel=1e-6), (objective, bw, best.candidate.cut_id)
                splits_won += best.candidate.kind == SPLIT
    if name != "resnet50":  # ResNet's activations outweigh its input until the very end
        assert splits_won > 0  # the random costs exercise real splits, not only extremes


def test_fp16_wire_halves_float_transfers_and_moves_the_optimum() -> None:
    g = LayerGraph.from_model(graphs.chain())
    dev = {"A": 10.0, "B": 1.0, "C": 20.0}
    cloud = {"A": 1.0, "B": 0.1, "C": 1.0}
    full = {c.cut_id: c for c in make_candidates(g, [("t1",)], dev, cloud)}
    half = {c.cut_id: c for c in make_candidates(g, [("t1",)], dev, cloud, wire="fp16")}
    assert full[OFFLOAD].up_bytes == 4000 and half[OFFLOAD].up_bytes == 2000
    split = next(k for k, c in half.items() if c.kind == SPLIT)
    assert full[split].up_bytes == 40 and half[split].up_bytes == 20
    assert half[split].down_bytes == full[split].down_bytes == 20  # outputs come back as they are
    # 100 kbit/s, 10 ms: split at t1 = 10 + 40 B (3.2 ms; 1.6 at fp16) + 10 + 1.1 + 1.6 down.
    assert min_cut(g, dev, cloud, 1e5, 0.01, NANO).cost == pytest.approx(25.9)
    assert min_cut(g, dev, cloud, 1e5, 0.01, NANO, wire="fp16").cost == pytest.approx(24.3)
    # 1 Mbit/s: offload at fp32 (4000 B, 32 ms) loses to local; at fp16 (16 ms) it is
    # 0 + 16 + 10 + 2.1 + 0.16 = 28.26, still behind the split (21.42).
    mc = min_cut(g, dev, cloud, 1e6, 0.01, NANO, wire="fp16")
    assert mc.tensors == ("t1",) and mc.cost == pytest.approx(21.42)
