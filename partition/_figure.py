"""The Neurosurgeon-style figure: per-layer device latency and output size, cut marked.

matplotlib is an optional extra (``edgecut[plot]``) and is imported only here.
"""

from __future__ import annotations

from pathlib import Path

from devices.errors import PartitionError
from partition._graph import LayerGraph
from partition._types import LOCAL, OFFLOAD, Plan


def plot_plan(graph: LayerGraph, dev_ms: dict[str, float], plan: Plan, path: str | Path) -> Path:
    """Bars of each node's device time (ms) and output size (KB) in topological order,
    with the chosen cut drawn as a vertical line; returns the PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PartitionError("the plan figure needs matplotlib: pip install 'edgecut[plot]'") from exc
    order = list(graph.order)
    pos = {n: i for i, n in enumerate(order)}
    ms = [dev_ms.get(n, 0.0) for n in order]
    kb = [sum(graph.tensors[t].bytes(1) for t in graph.nodes[n].outputs) / 1024.0 for n in order]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, min(24.0, len(order) / 12)), 6), sharex=True)
    x = list(range(len(order)))
    ax1.bar(x, ms, width=1.0, color="#3b75af")
    ax1.set_ylabel("device ms")
    ax1.set_title(f"{plan.model} on {plan.device}: chosen {plan.chosen} "
                  f"({plan.objective}, {plan.link.get('bandwidth_bps', 0) / 1e6:g} Mbit/s, "
                  f"RTT {plan.link.get('rtt_s', 0) * 1000:g} ms)")
    ax2.bar(x, kb, width=1.0, color="#e0823d")
    ax2.set_ylabel("output KB")
    ax2.set_yscale("log")
    ax2.set_xlabel("layer (topological order)")
    chosen = plan.candidate(plan.chosen)
    if chosen.kind == LOCAL:
        at = len(order) - 0.5
    elif chosen.kind == OFFLOAD:
        at = -0.5
    else:
        device = graph.device_side(chosen.tensors)
        at = max(pos[n] for n in device) + 0.5
    for ax in (ax1, ax2):
        ax.axvline(at, color="#c0392b", linestyle="--", linewidth=1.5)
    ax1.text(at, max(ms) if ms else 0, f" cut: {plan.chosen}", color="#c0392b", va="top", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_chain(graph: LayerGraph, node_ms: list[dict[str, float]], labels: dict[str, int],
               node_names: list[str], title: str, path: str | Path) -> Path:
    """Where each layer runs along a chain: bars of each layer's time on the node that
    runs it, coloured by node, in topological order, over its output size; returns the
    PNG's path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PartitionError("the chain figure needs matplotlib: pip install 'edgecut[plot]'") from exc
    colours = ["#3b75af", "#2e9e5b", "#e0823d", "#8e44ad", "#c0392b", "#7f8c8d"]
    order = list(graph.order)
    x = list(range(len(order)))
    ms = [node_ms[labels[n]].get(n, 0.0) for n in order]
    kb = [sum(graph.tensors[t].bytes(1) for t in graph.nodes[n].outputs) / 1024.0 for n in order]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, min(24.0, len(order) / 12)), 6), sharex=True)
    for j, name in enumerate(node_names):
        xs = [i for i in x if labels[order[i]] == j]
        ax1.bar(xs, [ms[i] for i in xs], width=1.0, color=colours[j % len(colours)],
                label=f"{name} ({len(xs)} layers)")
    ax1.set_ylabel("ms on its node")
    ax1.set_title(title)
    ax1.legend(fontsize=8)
    ax2.bar(x, kb, width=1.0, color="#95a5a6")
    ax2.set_ylabel("output KB")
    ax2.set_yscale("log")
    ax2.set_xlabel("layer (topological order)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
