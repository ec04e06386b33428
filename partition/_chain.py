"""Plan a model across an ordered chain of nodes: device -> nearby edge nodes -> cloud.

A chain plan gives every compute node ``v`` of the layer DAG a label ``L(v)`` in
``0..K-1`` (0 is the device, ``K-1`` the last node). Data moves only forward, so the
labelling is monotone: ``L(u) <= L(w)`` for every activation ``u -> w``. Equivalently the
sets ``S_k = {v : L(v) <= k}`` are nested predecessor-closed sets (ideals), and hop ``k``
(between node ``k`` and ``k+1``) carries exactly ``crossing(S_k)``; a tensor made on the
device and read in the cloud passes through every hop between (a middle node relays it).
Model outputs travel back to the device.

Costs of a labelling (ms; ``D`` = the largest label used)::

    compute_j  = sum of node j's times over {v : L(v) = j}
    up_k       = bytes(crossing(S_k)) * 8 / bw_k
    down_k     = bytes(model outputs made beyond node k) * 8 / bw_k
    latency    = sum compute + sum up + sum down + sum_{k < D} rtt_k
    energy     = P_active*compute_0 + P_tx*up_0 + P_rx*down_0 + P_idle*(the rest)   (device)
    stream     = 1000 / max(compute_j, up_k, down_k)   frames/s, pipelined

With two nodes these are ``partition.predict`` and ``partition.stream_stages``.

Exact methods:

* latency and energy: one min s-t cut on an expanded graph (Ishikawa's construction for
  a monotone multi-label problem): node ``v`` becomes ``v_0..v_{D-1}`` with
  ``v_k`` on the source side iff ``L(v) <= k``; the chain ``s -> v_{D-1} -> ... -> v_0 ->
  t`` carries the cost of each label on the edge whose cut selects it, infinite reverse
  edges keep the labels monotone, infinite ``w_k -> u_k`` edges keep data flowing forward,
  and per level an auxiliary node per tensor charges its hop transfer once however many
  consumers it has. The round trips are not separable, so the cut is solved once per
  ``D`` (0 = local) and the cheapest true cost is kept.
* stream throughput (the bottleneck ``max`` of sums is not a cut function): enumeration
  of every nested chain of ideals (K <= 3), vectorised over ideal pairs with NumPy. When
  the DAG has more ideals than ``limit`` the enumeration runs over the candidate cuts
  instead and the plan says ``exact=False``.

``enumerate_chain`` is the complete enumeration the min cut is checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from devices import DeviceProfile
from devices.errors import PartitionError
from partition._graph import LayerGraph
from partition._maxflow import FlowGraph
from partition._planner import active_power_w, candidate_cuts, transfer_ms

CHAIN_OBJECTIVES = ("latency", "energy", "throughput")
_SCALE = 1e6  # ms -> integer nano-units for the max-flow
IDEAL_LIMIT = 3000


@dataclass(frozen=True)
class Hop:
    """The link from chain node ``k`` to node ``k+1``: rate (bit/s, both ways) and RTT."""

    bandwidth_bps: float
    rtt_s: float

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise PartitionError(f"hop bandwidth must be > 0 bit/s, got {self.bandwidth_bps}")
        if not self.rtt_s >= 0:
            raise PartitionError(f"hop rtt must be >= 0 s, got {self.rtt_s}")


@dataclass(frozen=True)
class ChainCost:
    """What one labelling costs: per-node compute, per-hop up and down (ms), latency
    (ms), device energy (mJ), pipeline rate (frames/s) and the deepest node used."""

    compute_ms: tuple[float, ...]
    up_ms: tuple[float, ...]
    down_ms: tuple[float, ...]
    latency_ms: float
    energy_mj: float
    depth: int

    @property
    def bottleneck_ms(self) -> float:
        return max(self.compute_ms + self.up_ms + self.down_ms)

    @property
    def stream_fps(self) -> float:
        b = self.bottleneck_ms
        return 1000.0 / b if b > 0 else float("inf")


@dataclass(frozen=True)
class ChainPlan:
    """A labelling of the DAG onto the chain: ``labels[v]`` is the chain index of node
    ``v``; ``boundaries[k]`` the tensors hop ``k`` carries; ``exact`` whether the method
    searched every monotone labelling."""

    labels: Mapping[str, int]
    boundaries: tuple[tuple[str, ...], ...]
    cost: ChainCost
    objective: str
    method: str
    exact: bool = True
    info: dict[str, object] = field(default_factory=dict, hash=False, compare=False)

    def segment(self, j: int) -> frozenset[str]:
        """The compute nodes chain node ``j`` runs."""
        return frozenset(v for v, lab in self.labels.items() if lab == j)

    def value(self) -> float:
        """The objective's number (lower is better; throughput as its bottleneck ms)."""
        return objective_value(self.cost, self.objective)


def objective_value(cost: ChainCost, objective: str) -> float:
    if objective == "latency":
        return cost.latency_ms
    if objective == "energy":
        return cost.energy_mj
    return cost.bottleneck_ms


def _check(graph: LayerGraph, node_ms: Sequence[Mapping[str, float]], hops: Sequence[Hop],
           objective: str) -> None:
    if objective not in CHAIN_OBJECTIVES:
        raise PartitionError(f"objective must be one of {', '.join(CHAIN_OBJECTIVES)}, got {objective!r}")
    if len(node_ms) < 1 or len(hops) != len(node_ms) - 1:
        raise PartitionError(
            f"a chain of {len(node_ms)} node(s) needs {max(len(node_ms) - 1, 0)} hop(s), got {len(hops)}")
    for j, ms in enumerate(node_ms):
        missing = [v for v in graph.order if v not in ms]
        if missing:
            raise PartitionError(f"chain node {j}: no time for graph node '{missing[0]}'")


def _weights(device: DeviceProfile, objective: str, k_nodes: int) -> tuple[list[float], list[float], list[float], float]:
    """Per-node compute, per-hop up and down, and round-trip weights of the objective."""
    if objective == "energy":
        idle = device.power.idle_w
        comp = [active_power_w(device)] + [idle] * (k_nodes - 1)
        up = [device.radio.tx_w] + [idle] * (k_nodes - 2) if k_nodes > 1 else []
        down = [device.radio.rx_w] + [idle] * (k_nodes - 2) if k_nodes > 1 else []
        return comp, up, down, idle
    return [1.0] * k_nodes, [1.0] * (k_nodes - 1), [1.0] * (k_nodes - 1), 1.0


def evaluate_labels(
    graph: LayerGraph,
    node_ms: Sequence[Mapping[str, float]],
    hops: Sequence[Hop],
    device: DeviceProfile,
    labels: Mapping[str, int],
    wire: str = "fp32",
) -> ChainCost:
    """The cost of one labelling, straight from the definitions (the reference every
    method is checked against)."""
    k_nodes = len(node_ms)
    for v in graph.order:
        lab = labels.get(v)
        if lab is None or not 0 <= lab < k_nodes:
            raise PartitionError(f"labelling: node '{v}' needs a label in 0..{k_nodes - 1}, got {lab}")
        for p in graph.preds[v]:
            if labels[p] > lab:
                raise PartitionError(f"labelling: data would flow back from '{p}' (node {labels[p]}) "
                                     f"to '{v}' (node {lab})")
    compute = [0.0] * k_nodes
    for v in graph.order:
        compute[labels[v]] += float(node_ms[labels[v]][v])
    up, down = [], []
    for k, hop in enumerate(hops):
        s_k = [v for v in graph.order if labels[v] <= k]
        up.append(transfer_ms(graph.cut_bytes(graph.crossing(s_k), 1, wire), hop.bandwidth_bps))
        out_bytes = sum(graph.tensors[o].bytes(1) for o in graph.outputs
                        if graph.tensors[o].producer and labels[graph.tensors[o].producer] > k)
        down.append(transfer_ms(out_bytes, hop.bandwidth_bps))
    depth = max(labels[v] for v in graph.order) if graph.order else 0
    rtt = sum(h.rtt_s for h in hops[:depth]) * 1000.0
    latency = sum(compute) + sum(up) + sum(down) + rtt
    energy = active_power_w(device) * compute[0]
    if hops:
        energy += device.radio.tx_w * up[0] + device.radio.rx_w * down[0]
        energy += device.power.idle_w * (latency - compute[0] - up[0] - down[0])
    return ChainCost(tuple(compute), tuple(up), tuple(down), latency, energy, depth)


def _boundaries(graph: LayerGraph, labels: Mapping[str, int], k_nodes: int) -> tuple[tuple[str, ...], ...]:
    return tuple(graph.crossing([v for v in graph.order if labels[v] <= k]) for k in range(k_nodes - 1))


# -- min cut (latency, energy) ------------------------------------------------------


def _cut_for_depth(graph: LayerGraph, node_ms: Sequence[Mapping[str, float]], hops: Sequence[Hop],
                   weights: tuple[list[float], list[float], list[float], float], depth: int,
                   wire: str) -> dict[str, int]:
    """The min-cut labelling with labels in ``0..depth`` (``depth >= 1``)."""
    w_comp, w_up, w_down, _ = weights
    s, t = "\x00s", "\x00t"
    g = FlowGraph()

    def cap(x: float) -> int:
        return int(round(x * _SCALE))

    def name(v: str, k: int) -> str:
        return f"{v}\x00{k}"

    out_bytes = {v: 0 for v in graph.order}
    for o in graph.outputs:
        p = graph.tensors[o].producer
        if p:
            out_bytes[p] += graph.tensors[o].bytes(1)
    for v in graph.order:
        # cost of each label j: compute on node j, and the outputs' way back over hops < j
        costs = []
        back = 0.0
        for j in range(depth + 1):
            if j > 0:
                back += w_down[j - 1] * transfer_ms(out_bytes[v], hops[j - 1].bandwidth_bps)
            costs.append(w_comp[j] * float(node_ms[j][v]) + back)
        g.add_edge(s, name(v, depth - 1), cap(costs[depth]))
        for k in range(depth - 1, 0, -1):
            g.add_edge(name(v, k), name(v, k - 1), cap(costs[k]))
            g.add_edge(name(v, k - 1), name(v, k), None)  # labels stay monotone
        g.add_edge(name(v, 0), t, cap(costs[0]))
    for tname, info in graph.tensors.items():
        if not info.consumers:
            continue
        nbytes = info.wire_bytes(wire)
        for k in range(depth):
            src = name(info.producer, k) if info.producer else s
            aux = f"\x00a{tname}\x00{k}"
            g.add_edge(src, aux, cap(w_up[k] * transfer_ms(nbytes, hops[k].bandwidth_bps)))
            for c in info.consumers:
                g.add_edge(aux, name(c, k), None)
                if info.producer:
                    g.add_edge(name(c, k), name(info.producer, k), None)  # forward only
    g.node(s)
    g.node(t)
    _, side = g.min_cut(s, t)
    labels = {}
    for v in graph.order:
        lab = depth
        for k in range(depth):
            if name(v, k) in side:
                lab = k
                break
        labels[v] = lab
    return labels


def min_cut_chain(
    graph: LayerGraph,
    node_ms: Sequence[Mapping[str, float]],
    hops: Sequence[Hop],
    device: DeviceProfile,
    objective: str = "latency",
    wire: str = "fp32",
) -> ChainPlan:
    """Exact least-latency or least-energy monotone labelling (see the module
    docstring): one min cut per deepest node used, the cheapest kept."""
    if objective not in ("latency", "energy"):
        raise PartitionError(f"min_cut_chain handles latency and energy, got {objective!r}")
    _check(graph, node_ms, hops, objective)
    k_nodes = len(node_ms)
    weights = _weights(device, objective, k_nodes)
    best: tuple[float, dict[str, int], ChainCost] | None = None
    for depth in range(k_nodes):
        labels = {v: 0 for v in graph.order} if depth == 0 else _cut_for_depth(
            graph, node_ms, hops, weights, depth, wire)
        cost = evaluate_labels(graph, node_ms, hops, device, labels, wire)
        val = objective_value(cost, objective)
        if best is None or val < best[0] - 1e-9:
            best = (val, labels, cost)
    assert best is not None
    _, labels, cost = best
    return ChainPlan(labels, _boundaries(graph, labels, k_nodes), cost, objective, "min-cut")


# -- enumeration ----------------------------------------------------------------------


def ideal_sets(graph: LayerGraph, limit: int = IDEAL_LIMIT) -> list[int] | None:
    """Every predecessor-closed node set of the DAG (empty and full included) as bit
    masks over ``graph.order``, or ``None`` when there are more than ``limit``."""
    pos = {v: i for i, v in enumerate(graph.order)}
    pred_mask = [sum(1 << pos[p] for p in graph.preds[v]) for v in graph.order]
    seen = {0}
    todo = [0]
    while todo:
        s = todo.pop()
        for i, pm in enumerate(pred_mask):
            bit = 1 << i
            if not s & bit and pm & ~s == 0:
                nxt = s | bit
                if nxt not in seen:
                    seen.add(nxt)
                    if len(seen) > limit:
                        return None
                    todo.append(nxt)
    return sorted(seen, key=lambda m: (bin(m).count("1"), m))


def _ideal_table(graph: LayerGraph, masks: Sequence[int], node_ms: Sequence[Mapping[str, float]],
                 wire: str) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Per ideal: membership matrix, per-chain-node time sums, crossing bytes, and bytes
    of model outputs made outside it."""
    n = len(graph.order)
    a = np.zeros((len(masks), n), dtype=bool)
    for r, m in enumerate(masks):
        for i in range(n):
            if m >> i & 1:
                a[r, i] = True
    pos = {v: i for i, v in enumerate(graph.order)}
    sums = [a @ np.array([float(ms[v]) for v in graph.order]) for ms in node_ms]
    cross = np.zeros(len(masks))
    outside = np.zeros(len(masks))
    for info in graph.tensors.values():
        made = a[:, pos[info.producer]] if info.producer else np.ones(len(masks), dtype=bool)
        if info.consumers:
            read_all = a[:, [pos[c] for c in info.consumers]].all(axis=1)
            cross += (made & ~read_all) * info.wire_bytes(wire)
        if info.is_output and info.producer:
            outside += (~made) * info.bytes(1)
    return a, sums, cross, outside


def enumerate_chain(
    graph: LayerGraph,
    node_ms: Sequence[Mapping[str, float]],
    hops: Sequence[Hop],
    device: DeviceProfile,
    objective: str = "latency",
    slo_ms: float | None = None,
    wire: str = "fp32",
    masks: Sequence[int] | None = None,
) -> ChainPlan:
    """The best labelling by trying every nested chain of ideals (``masks``: the sets to
    try, default every ideal of the DAG), for chains of up to three nodes. Throughput
    takes the highest rate whose latency meets ``slo_ms`` (ties: lower latency; nothing
    meets it: the least latency); latency and energy ignore ``slo_ms``."""
    _check(graph, node_ms, hops, objective)
    k_nodes = len(node_ms)
    if k_nodes > 3:
        raise PartitionError(f"enumeration handles chains of up to 3 nodes, got {k_nodes}")
    exact = masks is None
    if masks is None:
        masks = ideal_sets(graph)
        if masks is None:
            raise PartitionError(f"model '{graph.model.graph.name}': more than {IDEAL_LIMIT} ideals to enumerate")
    full = (1 << len(graph.order)) - 1
    masks = sorted(set(masks) | {0, full}, key=lambda m: (bin(m).count("1"), m))
    a, sums, cross, outside = _ideal_table(graph, masks, node_ms, wire)
    idx_full = masks.index(full)
    p_act, idle = active_power_w(device), device.power.idle_w
    if k_nodes == 1:
        i0 = np.array([idx_full])
        i1 = None
    elif k_nodes == 2:
        i0 = np.arange(len(masks))
        i1 = None
    else:
        af = a.astype(np.float32)
        nested = (af @ (~a).astype(np.float32).T) == 0  # nested[i, j]: ideal i within ideal j
        i0, i1 = np.nonzero(nested)
    totals = [float(s[idx_full]) for s in sums]
    comp = [sums[0][i0]]
    up, down = [], []
    rtt = np.zeros(len(i0))
    if k_nodes >= 2:
        lower, upper = (i0, i1) if k_nodes == 3 else (i0, None)
        b0 = hops[0].bandwidth_bps
        up.append(cross[lower] * 8000.0 / b0)
        down.append(outside[lower] * 8000.0 / b0)
        rtt += (lower != idx_full) * hops[0].rtt_s * 1000.0
        if upper is None:
            comp.append(totals[1] - sums[1][lower])
        else:
            b1 = hops[1].bandwidth_bps
            comp.append(sums[1][upper] - sums[1][lower])
            comp.append(totals[2] - sums[2][upper])
            up.append(cross[upper] * 8000.0 / b1)
            down.append(outside[upper] * 8000.0 / b1)
            rtt += (upper != idx_full) * hops[1].rtt_s * 1000.0
    latency = sum(comp) + sum(up) + sum(down) + rtt
    if objective == "latency":
        key = latency
    elif objective == "energy":
        key = p_act * comp[0]
        if up:
            key = key + device.radio.tx_w * up[0] + device.radio.rx_w * down[0]
            key = key + idle * (latency - comp[0] - up[0] - down[0])
    else:
        key = np.max(np.stack(comp + up + down), axis=0)
    if objective == "throughput":
        ok = np.ones(len(i0), dtype=bool) if slo_ms is None else latency <= slo_ms
        if ok.any():
            masked = np.where(ok, key, np.inf)
            tied = masked <= masked.min() * (1 + 1e-9) + 1e-12
            pick = int(np.argmin(np.where(tied, latency, np.inf)))
        else:
            pick = int(np.argmin(latency))
    else:
        pick = int(np.argmin(key))
    chosen = [int(i0[pick])] + ([int(i1[pick])] if i1 is not None else [])
    labels = {}
    for col, v in enumerate(graph.order):
        lab = k_nodes - 1
        for k, row in enumerate(chosen):
            if a[row, col]:
                lab = k
                break
        labels[v] = lab
    cost = evaluate_labels(graph, node_ms, hops, device, labels, wire)
    info: dict[str, object] = {"sets": len(masks), "combinations": int(len(i0))}
    if objective == "throughput" and slo_ms is not None:
        info["meets_slo"] = bool(cost.latency_ms <= slo_ms)
    return ChainPlan(labels, _boundaries(graph, labels, k_nodes), cost, objective,
                     "enumeration", exact, info)


def plan_chain(
    graph: LayerGraph,
    node_ms: Sequence[Mapping[str, float]],
    hops: Sequence[Hop],
    device: DeviceProfile,
    objective: str = "latency",
    slo_ms: float | None = None,
    wire: str = "fp32",
) -> ChainPlan:
    """The planner's pick: the min cut for latency and energy (any chain length); for
    throughput, enumeration over every ideal when the DAG has at most ``IDEAL_LIMIT`` of
    them, else over the candidate cuts (``exact=False``)."""
    _check(graph, node_ms, hops, objective)
    if objective != "throughput":
        return min_cut_chain(graph, node_ms, hops, device, objective, wire)
    masks = ideal_sets(graph)
    if masks is not None:
        return enumerate_chain(graph, node_ms, hops, device, objective, slo_ms, wire)
    pos = {v: i for i, v in enumerate(graph.order)}
    cand = [sum(1 << pos[v] for v in graph.device_side(c)) for c in candidate_cuts(graph)]
    return enumerate_chain(graph, node_ms, hops, device, objective, slo_ms, wire, masks=cand)
