"""How a chain replay is shown: text tables (per strategy, per request, per server) and
the plot of per-hop rates, where each request's layers ran, and latency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.lab._chain_replay import CHAIN, ORACLE, ChainReplayResult
from edge.lab._emulator import Trace


def summary_table(result: ChainReplayResult) -> str:
    """The per-strategy summary as aligned text."""
    lines = [f"{'strategy':<18}{'mean ms':>10}{'p95 ms':>10}{'mJ/req':>10}{'answered':>10}{'fallback':>10}"]
    for s, v in result.summary.items():
        lines.append(f"{s:<18}{v['mean_ms']:>10.1f}{v['p95_ms']:>10.1f}{v['energy_mj']:>10.1f}"
                     f"{int(v['answered']):>10d}{int(v['fallbacks']):>10d}")
    return "\n".join(lines)


def placement_text(layers: Mapping[str, int]) -> str:
    """``{"device": 12, "edge": 54}`` -> ``"device 12 + edge 54"`` (layers per node)."""
    return " + ".join(f"{n} {k}" for n, k in layers.items())


def requests_table(result: ChainReplayResult, strategy: str = CHAIN) -> str:
    """One line per request of ``strategy``: trace time, the per-hop estimates it was
    planned at (chain only), the plan, how many layers ran on each node, status, latency,
    and, when the wanted plan was excluded because its hop's breaker was open, which hop
    (the device's own plan ran instead)."""
    names = [n for n, _ in result.nodes]
    hops = "/".join(names[1:])
    lines = [f"{'#':>3} {'t s':>7} {'est Mbit/s ' + hops:>24}  {'plan':<5}{'layers per node':<32}"
             f"{'status':<9}{'ms':>9}  note"]
    for r in result.requests:
        if r["strategy"] != strategy:
            continue
        est = "/".join(f"{e:g}" for e in r.get("estimate_mbps", [])) or "-"
        note = (f"{r['hop_down']} down (breaker open): wanted {r['wanted']}" if r.get("hop_down")
                else f"breaker {r['breaker']}: trial" if r.get("breaker") == "half-open" else "")
        lines.append(f"{r['i'] + 1:>3} {r['t_trace_s']:>7.1f} {est:>24}  {r['plan']:<5}"
                     f"{placement_text(r['placement']):<32}{r['status']:<9}{r['latency_ms']:>9.1f}"
                     f"  {note}".rstrip())
    return "\n".join(lines)


def served_table(result: ChainReplayResult) -> str:
    """Per strategy, what each later node's server counted (from its /metrics)."""
    lines = []
    for strat, per_node in result.info.get("served", {}).items():
        parts = []
        for n, c in per_node.items():
            relay = ""
            if c.get("forwarded") or c.get("finished_here") or c.get("next_hop_down"):
                relay = f", forwarded {c['forwarded']:.0f}, finished itself {c['finished_here']:.0f}"
                if c.get("next_hop_down"):
                    relay += f" (+{c['next_hop_down']:.0f} without trying: next hop down)"
            parts.append(f"{n}: answered {c['answered']:.0f}{relay}")
        k = result.info.get("killed")
        if strat == CHAIN and k and k["done"]:
            parts.append(f"{k['node']}: killed after {k['after_chain_requests']} requests")
        b = result.info.get("revived")
        if strat == CHAIN and b and b["done"]:
            parts.append(f"{b['node']}: started again after {b['after_chain_requests']} requests "
                         "(its counts are since then)")
        lines.append(f"{strat:<18}" + ("; ".join(parts) or "no server"))
    return "\n".join(lines)


def plot_chain_replay(result: ChainReplayResult, traces: Sequence[Trace], plans: Mapping[str, Any],
                      order: Sequence[str], path: str | Path) -> Path:
    """Per-hop rates, where each layer ran for each request of the chain strategy (share
    of the layers per node), and every strategy's latency, over trace time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in result.nodes]
    colours = ["#3b75af", "#2e9e5b", "#e0823d", "#8e44ad", "#c0392b", "#7f8c8d"]
    recs = result.requests
    chain = [r for r in recs if r["strategy"] == CHAIN]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ts = [r["t_trace_s"] for r in chain]
    if ts:
        grid = np.linspace(0.0, max(ts) + 1e-6, 300)
        for j, t in enumerate(traces):
            axes[0].plot(grid, [t.rate_at(x) / 1e6 for x in grid], lw=0.9, color=colours[(j + 1) % 6],
                         label=f"hop into {names[j + 1]}")
            axes[0].plot(ts, [r["estimate_mbps"][j] for r in chain], ls="--", lw=0.8,
                         color=colours[(j + 1) % 6], label=f"estimate, {names[j + 1]}")
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("log")
    axes[0].legend(loc="upper right", fontsize=7)
    width = (ts[1] - ts[0]) * 0.8 if len(ts) > 1 else 1.0
    bottom = np.zeros(len(chain))
    for j, n in enumerate(names):
        share = np.array([sum(1 for v in order if plans[r["plan"]].labels[v] == j) / len(order)
                          for r in chain])
        axes[1].bar(ts, share, width=width, bottom=bottom, color=colours[j % 6], label=n)
        bottom += share
    fb = [r for r in chain if r["status"] == "fallback"]
    if fb:
        axes[1].scatter([r["t_trace_s"] for r in fb], [1.02] * len(fb), marker="v", color="k",
                        label="fell back to the device")
    axes[1].set_ylabel("share of layers")
    axes[1].set_title("chain strategy: where each layer ran, per request", fontsize=9)
    axes[1].legend(loc="upper right", fontsize=7)
    for s in result.summary:
        if s == ORACLE:
            continue
        rs = [r for r in recs if r["strategy"] == s]
        axes[2].plot([r["t_trace_s"] for r in rs], [r["latency_ms"] for r in rs], marker=".",
                     lw=0.9, label=s)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency ms")
    axes[2].set_xlabel(f"trace time s (clock x{result.info['speedup']:.3g})")
    axes[2].legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{result.model} over {' -> '.join(names)} (device emulated; later nodes are "
                 "edgecut serve on this host)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


__all__ = ["placement_text", "plot_chain_replay", "requests_table", "served_table", "summary_table"]
