"""Score cuts for a link and an objective; find the exact optimum with a min s-t cut.

Latency of a candidate (ms)::

    head + up_bytes*8/bw + RTT + tail + down_bytes*8/bw      (local: head only)

Device energy (mJ = W x ms)::

    P_active*head + P_tx*upload + P_rx*download + P_idle*(RTT + tail)

Min-cut (DADS, INFOCOM 2019): a source ``s`` (the device) and a sink ``t`` (the cloud);
node ``v`` pays its device cost on edge ``v -> t`` and its cloud cost on ``s -> v``; an
activation ``x`` produced by ``u`` gets an auxiliary node ``a_x`` with ``u -> a_x``
carrying the cost of sending ``x`` once and ``a_x -> consumer`` infinite, so a tensor
read by several cloud nodes is paid for once; infinite ``consumer -> producer`` edges
forbid data from flowing back from the cloud. The RTT is paid by any non-local plan, so
the best split is the min cut and the answer is the better of it (+RTT) and local.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from devices import DeviceProfile
from devices.errors import PartitionError
from partition._graph import LayerGraph
from partition._maxflow import FlowGraph
from partition._types import LOCAL, OFFLOAD, SPLIT, CutCandidate

OBJECTIVES = ("latency", "energy")


def active_power_w(device: DeviceProfile) -> float:
    """Board power while computing: the GPU figure when the device runs on its GPU."""
    gpu = any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in device.providers)
    return device.power.gpu_active_w if gpu else device.power.cpu_active_w


def transfer_ms(nbytes: float, bandwidth_bps: float) -> float:
    if bandwidth_bps <= 0:
        raise PartitionError(f"bandwidth must be > 0 bit/s, got {bandwidth_bps}")
    return nbytes * 8.0 / bandwidth_bps * 1000.0


def predict(
    candidate: CutCandidate, bandwidth_bps: float, rtt_s: float, device: DeviceProfile
) -> tuple[float, float]:
    """Predicted (end-to-end latency in ms, device energy in mJ) of ``candidate`` on a
    link of ``bandwidth_bps`` and ``rtt_s``. Pure: no I/O, no state."""
    if rtt_s < 0:
        raise PartitionError(f"rtt must be >= 0 s, got {rtt_s}")
    p_act = active_power_w(device)
    if candidate.kind == LOCAL:
        return candidate.head_ms, p_act * candidate.head_ms
    up = transfer_ms(candidate.up_bytes, bandwidth_bps)
    down = transfer_ms(candidate.down_bytes, bandwidth_bps)
    rtt_ms = rtt_s * 1000.0
    latency = candidate.head_ms + up + rtt_ms + candidate.tail_ms + down
    radio = device.radio
    energy = (
        p_act * candidate.head_ms
        + radio.tx_w * up
        + radio.rx_w * down
        + device.power.idle_w * (rtt_ms + candidate.tail_ms)
    )
    return latency, energy


@dataclass(frozen=True)
class Choice:
    """The planner's pick for one link, with its predicted cost and the reason."""

    candidate: CutCandidate
    latency_ms: float
    energy_mj: float
    reason: str


def choose(
    candidates: Sequence[CutCandidate],
    bandwidth_bps: float,
    rtt_s: float,
    device: DeviceProfile,
    objective: str = "latency",
    slo_ms: float | None = None,
) -> Choice:
    """The best candidate for the link: least latency, least energy, or least energy
    among those meeting ``slo_ms`` (the fastest one when none meets it)."""
    if objective not in OBJECTIVES:
        raise PartitionError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not candidates:
        raise PartitionError("no cut candidates to choose from")
    scored = [(c, *predict(c, bandwidth_bps, rtt_s, device)) for c in candidates]
    fastest = min(scored, key=lambda s: s[1])
    if objective == "latency":
        c, lat, en = fastest
        return Choice(c, lat, en, f"least predicted latency ({lat:.1f} ms)")
    pool = scored
    if slo_ms is not None:
        pool = [s for s in scored if s[1] <= slo_ms]
        if not pool:
            c, lat, en = fastest
            return Choice(c, lat, en, f"no candidate meets the {slo_ms:g} ms SLO; fastest is {lat:.1f} ms")
    c, lat, en = min(pool, key=lambda s: s[2])
    why = f"least predicted energy ({en:.1f} mJ)"
    if slo_ms is not None:
        why += f" within the {slo_ms:g} ms SLO ({lat:.1f} ms)"
    return Choice(c, lat, en, why)


# -- per-node times ------------------------------------------------------------------


def match_profile(graph: LayerGraph, nodes: dict[str, float]) -> tuple[dict[str, float], float]:
    """Map a profile's entries onto the graph's compute nodes.

    Exact names first; ONNX Runtime's layout pass (level ``all``) renames a node to
    ``<its output tensor>_nchwc``, which is mapped back through the tensor's producer.
    Entries that match nothing (layout reorders, folded constants) are left out; their
    time still counts through ``total_ms``. Returns (times, share of the profile's time
    that was matched).
    """
    out: dict[str, float] = {}
    producer = {t: info.producer for t, info in graph.tensors.items() if info.producer}
    matched = 0.0
    for key, ms in nodes.items():
        target = key if key in graph.nodes else None
        if target is None and key.endswith("_nchwc"):
            target = producer.get(key[: -len("_nchwc")])
        if target is None:
            continue
        out[target] = out.get(target, 0.0) + float(ms)
        matched += float(ms)
    total = sum(float(v) for v in nodes.values())
    return out, (matched / total if total > 0 else 0.0)


def side_times(graph: LayerGraph, nodes: dict[str, float], total_ms: float | None,
               predictor: object | None = None) -> dict[str, float]:
    """Per-node ms for every compute node of ``graph``, scaled so the nodes add up to
    the whole-model session time ``total_ms`` (fusion and the session's own overhead
    make a plain sum differ from it).

    When the profile is of this model (most of its time matches graph nodes), a node it
    does not list was fused into a neighbour and costs nothing of its own. Otherwise the
    cost model ``predictor`` predicts each missing node from its FLOPs and bytes."""
    matched, share = match_profile(graph, nodes)
    covered = share >= 0.5 and len(matched) >= 0.3 * len(graph.nodes)
    out: dict[str, float] = {}
    for n in graph.order:
        if n in matched:
            out[n] = matched[n]
        elif covered:
            out[n] = 0.0
        elif predictor is not None:
            out[n] = float(predictor.predict(graph, graph.nodes[n]))  # type: ignore[attr-defined]
        else:
            raise PartitionError(f"profile has no time for node '{n}' and no cost model was given")
    s = sum(out.values())
    if s <= 0:
        raise PartitionError("profile does not match the model: no node has a time")
    if total_ms:
        k = total_ms / s
        out = {n: v * k for n, v in out.items()}
    return out


# -- cut ids and candidates ---------------------------------------------------------


def cut_id_for(tensors: Sequence[str]) -> str:
    """A short, stable, file- and model-name-safe id for a cut."""
    parts = [re.sub(r"[^A-Za-z0-9_]", "_", t).strip("_") or "t" for t in tensors]
    text = "-".join(parts)
    if len(text) <= 40:
        return text
    digest = f"{zlib.crc32('|'.join(tensors).encode()):08x}"
    return f"{parts[0][:24]}-{len(tensors)}t-{digest}"


def make_candidates(
    graph: LayerGraph,
    cuts: Iterable[Sequence[str]],
    dev_ms: dict[str, float],
    cloud_ms: dict[str, float],
    wire: str = "fp32",
) -> list[CutCandidate]:
    """``local``, ``offload`` and one ``split`` per distinct cut, with predicted times;
    ``up_bytes`` as the crossing tensors travel in the ``wire`` format."""
    total_dev = sum(dev_ms.values())
    total_cloud = sum(cloud_ms.values())
    down = graph.output_bytes(1)
    out = [
        CutCandidate(LOCAL, LOCAL, (), total_dev, 0.0, 0, 0, extra={"device_nodes": len(graph.nodes)}),
        CutCandidate(OFFLOAD, OFFLOAD, tuple(graph.inputs), 0.0, total_cloud,
                     graph.cut_bytes(graph.inputs, 1, wire), down, extra={"device_nodes": 0}),
    ]
    seen: set[frozenset[str]] = {frozenset(graph.inputs)}
    ids: set[str] = {LOCAL, OFFLOAD}
    for cut in cuts:
        key = frozenset(cut)
        if key in seen:
            continue
        seen.add(key)
        s = graph.device_side(cut)
        if not s or len(s) == len(graph.nodes):
            continue
        if set(graph.crossing(s)) != key:
            raise PartitionError(f"tensors {sorted(cut)} are not a cut of the graph")
        head = sum(dev_ms[n] for n in s)
        tail = total_cloud - sum(cloud_ms[n] for n in s)
        ordered = tuple(t for t in graph.crossing(s))
        cid = cut_id_for(ordered)
        while cid in ids:
            cid += "_"
        ids.add(cid)
        out.append(CutCandidate(
            cid, SPLIT, ordered, head, max(tail, 0.0), graph.cut_bytes(ordered, 1, wire), down,
            extra={"device_nodes": len(s), "position": max(graph.nodes[n].index for n in s)},
        ))
    return out


def candidate_cuts(graph: LayerGraph) -> list[tuple[str, ...]]:
    """The cuts worth keeping: every single-tensor frontier of a small-frontier
    topological order (block boundaries; each edge on a chain), and the multi-tensor
    frontiers inside a block that carry fewer bytes than both boundaries around it."""
    frontiers = [f for _, f in graph.frontiers()]
    sizes = [graph.cut_bytes(f, 1) for f in frontiers]
    boundary = [i for i, f in enumerate(frontiers) if len(f) == 1]
    keep: list[tuple[str, ...]] = []
    seen: set[frozenset[str]] = set()
    for i, f in enumerate(frontiers):
        if len(f) > 1:
            before = [sizes[j] for j in boundary if j < i][-1:]
            after = [sizes[j] for j in boundary if j > i][:1]
            limit = min(before + after) if (before or after) else math.inf
            if sizes[i] >= limit:
                continue
        key = frozenset(f)
        if key not in seen:
            seen.add(key)
            keep.append(f)
    return keep


# -- min cut --------------------------------------------------------------------------


@dataclass(frozen=True)
class MinCut:
    """The optimum over every valid cut of the DAG for one link and objective."""

    device_nodes: frozenset[str]
    tensors: tuple[str, ...]
    cost: float  # ms (latency) or mJ (energy), RTT included unless local
    kind: str


_SCALE = 1e6  # capacities in nano-units keep the max-flow arithmetic in integers


def min_cut(
    graph: LayerGraph,
    dev_ms: dict[str, float],
    cloud_ms: dict[str, float],
    bandwidth_bps: float,
    rtt_s: float,
    device: DeviceProfile,
    objective: str = "latency",
    wire: str = "fp32",
) -> MinCut:
    """Exact optimum (latency or energy) over all predecessor-closed device sets, with
    crossing tensors sent in the ``wire`` format."""
    if objective not in OBJECTIVES:
        raise PartitionError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "latency":
        w_dev, w_cloud, w_up, w_down, w_rtt = 1.0, 1.0, 1.0, 1.0, 1.0
    else:
        w_dev = active_power_w(device)
        w_cloud = w_rtt = device.power.idle_w
        w_up, w_down = device.radio.tx_w, device.radio.rx_w
    # Per-node weighted costs; the cost of sending an output back is paid in the cloud.
    dw = {n: w_dev * dev_ms[n] for n in graph.order}
    cw = {n: w_cloud * cloud_ms[n] for n in graph.order}
    tr = {name: w_up * transfer_ms(info.wire_bytes(wire), bandwidth_bps)
          for name, info in graph.tensors.items()}
    for info in graph.tensors.values():
        if info.is_output and info.producer:
            cw[info.producer] += w_down * transfer_ms(info.bytes(1), bandwidth_bps)

    g = FlowGraph()
    s, t = "\x00s", "\x00t"
    constant = 0.0

    def unary(x: str, cost_if_device: float) -> None:
        nonlocal constant
        if cost_if_device >= 0:
            g.add_edge(x, t, cap(cost_if_device))
        else:  # k*[dev] == k + (-k)*[cloud]
            constant += cost_if_device
            g.add_edge(s, x, cap(-cost_if_device))

    def cap(x: float) -> int:
        return int(round(x * _SCALE))

    chains = _chains(graph)
    inner: dict[str, tuple[str, ...]] = {}  # chain head -> whole chain
    removed: set[str] = set()
    internal: set[str] = set()  # tensors between two nodes of one chain
    for chain in chains:
        internal.update(graph.nodes[n].outputs[0] for n in chain[:-1])
        a, b = chain[0], chain[-1]
        inner[a] = chain
        removed.update(chain[1:-1])
        # A chain has three states: all in the cloud (C), all on the device (D), or cut
        # inside at its best internal tensor (M). With a = its first node and b = its
        # last, E = C + (M - C)[a on device] + (D - M)[b on device], b => a.
        c_all = sum(cw[n] for n in chain)
        d_all = sum(dw[n] for n in chain)
        best = math.inf
        head = 0.0
        for j in range(len(chain) - 1):
            head += dw[chain[j]]
            tail = c_all - sum(cw[n] for n in chain[: j + 1])
            best = min(best, head + tail + tr[graph.nodes[chain[j]].outputs[0]])
        constant += c_all
        unary(a, best - c_all)
        unary(b, d_all - best)
        g.add_edge(b, a, None)
    chain_nodes = {n for c in chains for n in (c[0], c[-1])}
    for n in graph.order:
        if n in removed or n in chain_nodes:
            continue
        g.add_edge(s, n, cap(cw[n]))
        g.add_edge(n, t, cap(dw[n]))
    for name, info in graph.tensors.items():
        if not info.consumers or name in internal:
            continue  # internal tensors of a chain are priced in the chain's M
        src = info.producer or s
        aux = "\x00a" + name
        g.add_edge(src, aux, cap(tr[name]))
        for c in info.consumers:
            g.add_edge(aux, c, None)
            if info.producer:
                g.add_edge(c, info.producer, None)  # no flow back from the cloud
    # A node that produces a model output stays in the cloud, as in enumeration and the
    # splitter: a cut tensor may not be a model output (the tail returns every output),
    # even when the output is also read by later nodes.
    for info in graph.tensors.values():
        if info.is_output and info.producer:
            g.add_edge(info.producer, t, None)
    g.node(s)
    g.node(t)
    flow, side = g.min_cut(s, t)
    value = flow / _SCALE + constant
    side_s = set(side)
    for a, chain in inner.items():
        if a in side_s and chain[-1] not in side_s:
            # Recover the best internal position.
            best_j, best = 0, math.inf
            head = 0.0
            c_all = sum(cw[n] for n in chain)
            for j in range(len(chain) - 1):
                head += dw[chain[j]]
                cost = head + c_all - sum(cw[n] for n in chain[: j + 1]) + tr[graph.nodes[chain[j]].outputs[0]]
                if cost < best:
                    best_j, best = j, cost
            side_s.update(chain[: best_j + 1])
        elif a in side_s:
            side_s.update(chain)
    dev_nodes = frozenset(n for n in side_s if n in graph.nodes)
    local_cost = w_dev * sum(dev_ms.values())
    if len(dev_nodes) == len(graph.nodes):
        return MinCut(dev_nodes, (), local_cost, LOCAL)
    split_cost = value + w_rtt * rtt_s * 1000.0
    if local_cost <= split_cost:
        return MinCut(frozenset(graph.nodes), (), local_cost, LOCAL)
    tensors = graph.crossing(dev_nodes)
    kind = OFFLOAD if not dev_nodes else SPLIT
    return MinCut(dev_nodes, tensors, split_cost, kind)


def with_times(candidate: CutCandidate, head_ms: float, tail_ms: float, **extra: object) -> CutCandidate:
    """A copy with new times; the old ones are kept under ``extra['predicted_*']``."""
    e = dict(candidate.extra)
    e.setdefault("predicted_head_ms", candidate.head_ms)
    e.setdefault("predicted_tail_ms", candidate.tail_ms)
    e.update(extra)
    return replace(candidate, head_ms=head_ms, tail_ms=tail_ms, extra=e)


def _chains(graph: LayerGraph) -> list[tuple[str, ...]]:
    """Maximal chains u1 -> ... -> uk (k >= 2) where each link is a node's only output
    tensor, read only by the next node, which reads no other activation."""
    nxt: dict[str, str] = {}
    for n in graph.order:
        node = graph.nodes[n]
        if len(node.outputs) != 1:
            continue
        info = graph.tensors[node.outputs[0]]
        if info.is_output or len(info.consumers) != 1:
            continue
        w = info.consumers[0]
        if graph.nodes[w].inputs == (node.outputs[0],):
            nxt[n] = w
    has_prev = set(nxt.values())
    chains = []
    for n in graph.order:
        if n in nxt and n not in has_prev:
            chain = [n]
            while chain[-1] in nxt:
                chain.append(nxt[chain[-1]])
            chains.append(tuple(chain))
    return chains
