"""Chain planning (device -> edge node -> cloud) against complete enumeration of every
labelling, on small random DAGs and on a zoo model."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from devices import load_profile
from devices.errors import PartitionError
from partition import (
    Hop,
    LayerGraph,
    choose,
    enumerate_chain,
    evaluate_labels,
    ideal_sets,
    make_candidates,
    min_cut,
    min_cut_chain,
    plan_chain,
    predict,
)
from tests.partition import graphs

NANO = load_profile("jetson-nano")


def random_dag(seed: int, n: int) -> onnx.ModelProto:
    """``n`` nodes over one input: a one-input node is a MatMul to a random width, a
    two-input node a Concat of two earlier tensors (widths add up); the last one or two
    tensors are the outputs."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    widths = {"x": 16}
    names = ["x"]
    nodes, inits = [], []
    for i in range(n):
        out = f"t{i}"
        if len(names) >= 2 and rng.random() < 0.4:
            a, b = rng.choice(len(names), size=2, replace=False)
            ins = [names[a], names[b]]
            nodes.append(helper.make_node("Concat", ins, [out], name=f"n{i}", axis=1))
            widths[out] = widths[ins[0]] + widths[ins[1]]
        else:
            src = names[int(rng.integers(len(names)))]
            w = int(rng.choice([2, 8, 32, 128]))
            wname = f"w{i}"
            inits.append(numpy_helper.from_array(
                rng.standard_normal((widths[src], w)).astype(np.float32), wname))
            nodes.append(helper.make_node("MatMul", [src, wname], [out], name=f"n{i}"))
            widths[out] = w
        names.append(out)
    outs = names[-2:] if n >= 3 and rng.random() < 0.5 else names[-1:]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", widths[o]]) for o in outs]
    graph = helper.make_graph(nodes, f"dag{seed}", [x], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def brute_force(g, node_ms, hops, objective, slo_ms=None):
    """Every labelling in K^n, the monotone ones evaluated: (best value, its cost)."""
    k_nodes = len(node_ms)
    best = None
    for labs in itertools.product(range(k_nodes), repeat=len(g.order)):
        labels = dict(zip(g.order, labs, strict=True))
        if any(labels[p] > labels[v] for v in g.order for p in g.preds[v]):
            continue
        cost = evaluate_labels(g, node_ms, hops, NANO, labels)
        if objective == "latency":
            key = (cost.latency_ms,)
        elif objective == "energy":
            key = (cost.energy_mj,)
        else:
            ok = slo_ms is None or cost.latency_ms <= slo_ms
            key = (0 if ok else 1, cost.bottleneck_ms if ok else cost.latency_ms, cost.latency_ms)
        if best is None or key < best[0]:
            best = (key, cost)
    return best


def _times(g, rng, k_nodes):
    # device slowest, the middle node faster, the cloud fastest (random within that)
    base = {v: float(rng.uniform(0.5, 20.0)) for v in g.order}
    return [{v: base[v] * float(rng.uniform(0.6, 1.4)) / (1 + 4 * j) for v in g.order}
            for j in range(k_nodes)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7),
       objective=st.sampled_from(["latency", "energy", "throughput"]),
       k_nodes=st.sampled_from([2, 3]))
def test_chain_planner_equals_brute_force(seed, n, objective, k_nodes) -> None:
    g = LayerGraph.from_model(random_dag(seed, n))
    rng = np.random.default_rng(seed + 1)
    node_ms = _times(g, rng, k_nodes)
    hops = [Hop(float(rng.choice([1e5, 1e6, 1e7, 1e9])), float(rng.uniform(0, 0.05)))
            for _ in range(k_nodes - 1)]
    slo = float(rng.uniform(5, 80)) if objective == "throughput" else None
    plan = plan_chain(g, node_ms, hops, NANO, objective, slo_ms=slo)
    best_key, best_cost = brute_force(g, node_ms, hops, objective, slo)
    assert plan.exact
    if objective == "latency":
        assert plan.cost.latency_ms == pytest.approx(best_cost.latency_ms, rel=1e-6, abs=1e-6)
    elif objective == "energy":
        assert plan.cost.energy_mj == pytest.approx(best_cost.energy_mj, rel=1e-6, abs=1e-6)
    else:
        assert plan.cost.bottleneck_ms == pytest.approx(best_cost.bottleneck_ms, rel=1e-6, abs=1e-6)
        assert (plan.cost.latency_ms <= slo) == (best_cost.latency_ms <= slo)
    # the enumeration of ideals agrees too, for every objective
    enum = enumerate_chain(g, node_ms, hops, NANO, objective, slo_ms=slo)
    assert enum.value() == pytest.approx(plan.value(), rel=1e-6, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6))
def test_four_node_min_cut_equals_brute_force(seed, n) -> None:
    g = LayerGraph.from_model(random_dag(seed, n))
    rng = np.random.default_rng(seed)
    node_ms = _times(g, rng, 4)
    hops = [Hop(float(rng.choice([1e5, 1e7, 1e9])), float(rng.uniform(0, 0.03))) for _ in range(3)]
    for objective in ("latency", "energy"):
        plan = min_cut_chain(g, node_ms, hops, NANO, objective)
        _, best = brute_force(g, node_ms, hops, objective)
        assert plan.value() == pytest.approx(
            best.latency_ms if objective == "latency" else best.energy_mj, rel=1e-6, abs=1e-6)


def test_two_node_chain_matches_the_two_sided_planner() -> None:
    """With two nodes the chain's costs are ``predict``'s and its optimum is ``min_cut``'s."""
    g = LayerGraph.from_model(graphs.diamond())
    dev = {"A": 10.0, "B1": 4.0, "B2": 6.0, "S": 1.0}
    cloud = {v: t / 10 for v, t in dev.items()}
    cands = make_candidates(g, [g.crossing(s) for s in g.ideals()], dev, cloud)
    for bw, rtt in ((1e5, 0.04), (2e7, 0.04), (1e9, 0.001)):
        hop = [Hop(bw, rtt)]
        for c in cands:
            side = g.device_side(c.tensors) if c.kind == "split" else (
                frozenset(g.order) if c.kind == "local" else frozenset())
            labels = {v: 0 if v in side else 1 for v in g.order}
            cost = evaluate_labels(g, [dev, cloud], hop, NANO, labels)
            assert (cost.latency_ms, cost.energy_mj) == pytest.approx(predict(c, bw, rtt, NANO))
        for objective in ("latency", "energy"):
            plan = min_cut_chain(g, [dev, cloud], hop, NANO, objective)
            assert plan.value() == pytest.approx(min_cut(g, dev, cloud, bw, rtt, NANO, objective).cost)
            assert plan.value() == pytest.approx(
                getattr(choose(cands, bw, rtt, NANO, objective), f"{objective}_ms"
                        if objective == "latency" else "energy_mj"))


def test_fast_lan_slow_wan_runs_the_middle_on_the_edge_node() -> None:
    """A chain x -A-> t1 -B-> t2 -C-> y whose input is large and whose middle is heavy:
    over a fast LAN and a slow WAN the edge node takes the middle."""
    g = LayerGraph.from_model(graphs.chain())
    dev = {"A": 10.0, "B": 1.0, "C": 200.0}
    edge = {"A": 2.0, "B": 0.2, "C": 20.0}
    cloud = {"A": 0.5, "B": 0.05, "C": 2.0}
    hops = [Hop(1e9, 0.002), Hop(1e7, 0.06)]
    plan = plan_chain(g, [dev, edge, cloud], hops, NANO, "latency")
    # everything on the edge node: 2 + 0.2 + 20 + 2 ms + x up at 1 Gbit/s + y down
    assert dict(plan.labels) == {"A": 1, "B": 1, "C": 1}
    assert plan.cost.depth == 1
    assert plan.boundaries[0] == ("x",)
    assert plan.boundaries[1] == ()
    expected = 22.2 + 2.0 + 4000 * 8 / 1e9 * 1000 + 20 * 8 / 1e9 * 1000
    assert plan.cost.latency_ms == pytest.approx(expected)


def test_ideals_and_bad_input() -> None:
    g = LayerGraph.from_model(graphs.diamond())
    masks = ideal_sets(g)
    # {}, {A}, {A,B1}, {A,B2}, {A,B1,B2}, all
    assert masks is not None and len(masks) == 6
    assert ideal_sets(g, limit=3) is None
    dev = {v: 1.0 for v in g.order}
    with pytest.raises(PartitionError, match="needs 1 hop"):
        plan_chain(g, [dev, dev], [], NANO)
    with pytest.raises(PartitionError, match="objective"):
        plan_chain(g, [dev, dev], [Hop(1e6, 0.0)], NANO, "speed")
    with pytest.raises(PartitionError, match="no time for graph node"):
        plan_chain(g, [dev, {"A": 1.0}], [Hop(1e6, 0.0)], NANO)
    with pytest.raises(PartitionError, match="bandwidth"):
        Hop(0, 0.01)
    with pytest.raises(PartitionError, match="flow back"):
        evaluate_labels(g, [dev, dev], [Hop(1e6, 0.0)], NANO, {"A": 1, "B1": 0, "B2": 1, "S": 1})
