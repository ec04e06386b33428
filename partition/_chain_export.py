"""Turn a chain plan into models per node: what each node runs, receives and sends.

Node ``j`` of a chain receives ``crossing(S_{j-1})`` over hop ``j-1`` (the device: the
model inputs), runs its segment, and sends ``crossing(S_j)`` on; a tensor in both is
passed through untouched (a middle node relays what a later node needs). Model outputs
travel back along the chain.

Files per node (``write_chain``):

* the device, ``<out>/<device>/``: ``head.onnx`` (its segment, when it has one),
  ``tail.onnx`` (the rest from its cut, for finishing on the device when the next node
  fails) and ``chain.json`` (the plan: labels, boundaries, costs, nodes, hops);
  ``device_candidate`` turns it into the ``CutCandidate`` the executor and the stream
  pipeline run, with the first later node as their "cloud";
* every later node, ``<out>/<node>/repository/<model>.seg<j>/1/``: ``model.onnx``, the
  whole rest of the model from what arrives there (what the node serves when it is the
  last hop, and what a relay runs when its next hop fails), and for a middle node with
  a segment ``segment.onnx``; ``config.pbtxt`` in Triton's format. A middle node relays
  when its config names the next hop (``relay_next_url``, ``relay_next_model``,
  ``relay_forward``: see ``cloud``'s relay runtime); ``write_chain`` writes those
  parameters when given the next hops' URLs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from devices.errors import PartitionError
from partition._chain import ChainPlan
from partition._graph import LayerGraph
from partition._portable import save_model
from partition._split import Splitter
from partition._types import LOCAL, OFFLOAD, SPLIT, CutCandidate


@dataclass(frozen=True)
class Segment:
    """What chain node ``index`` does: ``receives`` (over the hop before it; the model
    inputs for the device), ``reads`` (of those, what its segment model takes), ``makes``
    (its segment model's outputs), ``sends`` (over the hop after it), ``outputs_here``
    (model outputs made here) and ``nodes`` (its compute nodes)."""

    index: int
    nodes: frozenset[str]
    receives: tuple[str, ...]
    reads: tuple[str, ...]
    makes: tuple[str, ...]
    sends: tuple[str, ...]
    outputs_here: tuple[str, ...]


def chain_segments(graph: LayerGraph, plan: ChainPlan, k_nodes: int | None = None) -> list[Segment]:
    """The segments of ``plan`` (one per chain node, empty ones included)."""
    k = k_nodes if k_nodes is not None else len(plan.boundaries) + 1
    labels = plan.labels

    def label_of(t: str) -> int:
        p = graph.tensors[t].producer
        return labels[p] if p else -1

    out = []
    for j in range(k):
        nodes = frozenset(v for v in graph.order if labels[v] == j)
        receives = tuple(graph.inputs) if j == 0 else tuple(plan.boundaries[j - 1])
        sends = tuple(plan.boundaries[j]) if j < k - 1 else ()
        reads = tuple(t for t in receives if any(c in nodes for c in graph.tensors[t].consumers))
        here = tuple(o for o in graph.outputs if graph.tensors[o].producer in nodes)
        makes = tuple(dict.fromkeys([t for t in sends if label_of(t) == j] + list(here)))
        out.append(Segment(j, nodes, receives, reads, makes, sends, here))
    return out


def _extract(splitter: Splitter, name: str, inputs: Sequence[str], outputs: Sequence[str]) -> onnx.ModelProto:
    nodes, reached = splitter._reach(list(outputs), set(inputs))
    stray = sorted(reached - set(inputs))
    if stray:
        raise PartitionError(f"segment {name}: needs model input(s) {stray} it does not receive")
    return splitter._build(name, nodes, list(inputs), list(outputs))


def segment_models(model: onnx.ModelProto, graph: LayerGraph, plan: ChainPlan
                   ) -> list[tuple[onnx.ModelProto | None, onnx.ModelProto | None]]:
    """Per chain node: (its segment model or None when it computes nothing, the rest of
    the model from what it receives, or None for the device, whose rest is the whole
    model)."""
    splitter = Splitter(model)
    segs = chain_segments(graph, plan)
    base = model.graph.name or "model"
    out: list[tuple[onnx.ModelProto | None, onnx.ModelProto | None]] = []
    for s in segs:
        seg = _extract(splitter, f"{base}_seg{s.index}", s.reads, s.makes) if s.nodes and s.makes else None
        rest = None
        if s.index > 0 and s.receives:
            later = [o for o in graph.outputs if plan.labels.get(graph.tensors[o].producer, 0) >= s.index]
            rest = _extract(splitter, f"{base}_rest{s.index}", s.receives, later) if later else None
        out.append((seg, rest))
    return out


def _parameters_block(params: Mapping[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
                   for k, v in params.items())


def write_chain(model: onnx.ModelProto, graph: LayerGraph, plan: ChainPlan, model_name: str,
                node_names: Sequence[str], out_dir: str | Path, *,
                next_urls: Mapping[str, str] | None = None, relay_timeout_s: float = 10.0,
                relay_breaker_failures: int = 3, relay_breaker_reset_s: float = 5.0,
                info: Mapping[str, object] | None = None) -> dict[str, Path]:
    """Write every node's files (see the module docstring); returns node -> folder.
    ``next_urls`` maps a middle node's name to the URL of the node after it (its relay
    parameters are written only then); ``relay_breaker_*``: the relay's circuit breaker
    on its next hop (defaults as ``policy.toml``'s ``[offload]`` breaker keys)."""
    from partition.triton import triton_config

    if len(node_names) != len(plan.boundaries) + 1:
        raise PartitionError(f"chain of {len(plan.boundaries) + 1} nodes, got names {list(node_names)}")
    out = Path(out_dir)
    folders: dict[str, Path] = {}
    models = segment_models(model, graph, plan)
    segs = chain_segments(graph, plan)
    for j, name in enumerate(node_names):
        seg, rest = models[j]
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        folders[name] = folder
        if j == 0:
            if seg is not None:
                save_model(seg, folder / "head.onnx")
            if segs[0].sends and seg is not None:
                # the rest from the device's cut, for finishing on the device when the
                # next node cannot be reached
                later = [o for o in graph.outputs if o not in segs[0].outputs_here]
                save_model(_extract(Splitter(model), f"{model_name}_tail0", segs[0].sends, later),
                           folder / "tail.onnx")
            continue
        if rest is None:
            continue  # nothing reaches this node: the plan ends before it
        served = f"{model_name}.seg{j}"
        vdir = folder / "repository" / served / "1"
        save_model(rest, vdir / "model.onnx")
        text = triton_config(served, rest)
        nxt = (next_urls or {}).get(name)
        if j < len(node_names) - 1 and segs[j].sends and nxt:
            if seg is not None:
                save_model(seg, vdir / "segment.onnx")
            text += _parameters_block({
                "relay_next_url": nxt,
                "relay_next_model": f"{model_name}.seg{j + 1}",
                "relay_forward": ",".join(segs[j].sends),
                "relay_timeout_s": f"{relay_timeout_s:g}",
                "relay_breaker_failures": str(int(relay_breaker_failures)),
                "relay_breaker_reset_s": f"{relay_breaker_reset_s:g}",
            })
        (folder / "repository" / served / "config.pbtxt").write_text(text)
    doc = {
        "model": model_name,
        "nodes": list(node_names),
        "labels": dict(plan.labels),
        "boundaries": [list(b) for b in plan.boundaries],
        "objective": plan.objective,
        "method": plan.method,
        "exact": plan.exact,
        "cost": {"compute_ms": list(plan.cost.compute_ms), "up_ms": list(plan.cost.up_ms),
                 "down_ms": list(plan.cost.down_ms), "latency_ms": plan.cost.latency_ms,
                 "energy_mj": plan.cost.energy_mj, "stream_fps": plan.cost.stream_fps},
        "segments": [{"node": node_names[s.index], "receives": list(s.receives),
                      "sends": list(s.sends), "layers": len(s.nodes)} for s in segs],
        **dict(info or {}),
    }
    (folders[node_names[0]] / "chain.json").write_text(json.dumps(doc, indent=2))
    return folders


def device_candidate(graph: LayerGraph, plan: ChainPlan, model_name: str) -> CutCandidate:
    """What the device runs of a chain plan, as a two-sided candidate whose "cloud" is the
    next node (``<model>.seg1``): the head and the device's rest (``head.onnx``,
    ``tail.onnx`` in its folder), the bytes of the first hop, and the rest of the chain's
    predicted time as the tail's."""
    seg = chain_segments(graph, plan)[0]
    c = plan.cost
    if not seg.sends:
        return CutCandidate(LOCAL, LOCAL, (), c.latency_ms, 0.0, 0, 0)
    up_bytes = graph.cut_bytes(seg.sends, 1)
    down_bytes = sum(graph.tensors[o].bytes(1) for o in graph.outputs if o not in seg.outputs_here)
    rest_ms = c.latency_ms - c.compute_ms[0] - c.up_ms[0] - c.down_ms[0]
    if not seg.nodes:
        return CutCandidate(OFFLOAD, OFFLOAD, tuple(seg.sends), 0.0, rest_ms, up_bytes, down_bytes,
                            cloud_model=f"{model_name}.seg1")
    return CutCandidate("chain", SPLIT, tuple(seg.sends), c.compute_ms[0], rest_ms, up_bytes,
                        down_bytes, head_model="head.onnx", tail_model="tail.onnx",
                        cloud_model=f"{model_name}.seg1")
