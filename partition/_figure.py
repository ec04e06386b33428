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
