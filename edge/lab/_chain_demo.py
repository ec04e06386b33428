"""``edgecut demo chain``: a chain of nodes end to end on one machine, in under a minute.

1. build a zoo model (random weights, real topology);
2. plan it over a chain device -> nearby edge node -> cloud (``partition.plan_chain``),
   the device emulated from a profile (default ``jetson-nano``);
3. start two real ``edgecut serve`` processes on free ports of 127.0.0.1, the edge node
   and the cloud, each behind its own user-space link emulator: a fast constant LAN into
   the edge node, and a WAN into the cloud whose rate follows a real bandwidth trace (the
   demo's 5G driving trace when the shared data is there, else the FCC trace shipped in
   the package); a plan that runs layers in the cloud reaches it through the edge node,
   which relays;
   (with ``--kill-edge-after K``, the edge node's server is killed after K requests of
   the chain strategy: the requests after it finish on the device, none is lost);
4. run the requests of each strategy (the device alone, device + one node, the chain
   plan re-chosen per request from per-hop estimates) and show, live, where each
   request's layers ran; then what each server counted (requests answered, relayed,
   finished itself) and the per-strategy summary.

All of it is ``edge.lab._chain_replay.chain_replay``, the engine of ``edgecut replay
--chain``; this module only chooses the settings and shows the result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

STRATEGY_LABELS = {
    "device": "device alone",
    "chain": "chain plan (per request)",
    "oracle": "oracle (reference)",
}


def _label(strategy: str) -> str:
    if strategy.startswith("device+"):
        return f"device + {strategy.split('+', 1)[1]} only"
    return STRATEGY_LABELS.get(strategy, strategy)


def run_chain_demo(*, model: str, device: str, lan: str, wan: str, trace: str | None,
                   requests: int, duration_s: float, out_dir: Path, seed: int,
                   console: Any, kill_edge_after: int | None = None) -> dict[str, Any]:
    """Run the chain demo (module docstring); returns what it wrote to demo_chain.json.
    ``kill_edge_after=k`` kills the edge node's server after k requests of the chain
    strategy (the last one run), to show the requests after it finishing on the device."""
    from rich.table import Table

    from devices import load_profile
    from edge.lab._chain_replay import chain_replay
    from edge.lab._chain_report import placement_text
    from edge.lab._demo import default_trace
    from edge.lab._emulator import bundled_trace
    from partition import zoo_model
    from partition._chain_cli import parse_chain, parse_links

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = load_profile(device)
    nodes = parse_chain(f"device={device},edge=here,cloud=here")
    hops = parse_links(f"edge={lan},cloud={wan}", nodes)
    trace_spec = trace or default_trace() or str(bundled_trace())

    console.rule("[bold]edgecut demo chain")
    console.print(f"model [bold]{model}[/], chain [bold]device[/] ({profile.name}) -> "
                  f"[bold]edge[/] (LAN {lan}) -> [bold]cloud[/] (WAN: RTT from {wan}, rate "
                  f"following {Path(trace_spec.split('#')[0]).name})")
    with console.status("building the zoo model"):
        model_path = zoo_model(model)
    console.print(f"[green]✓[/] model {model_path}")

    def on_request(rec: dict[str, Any]) -> None:
        status = rec["status"]
        if status != "ok":
            status = f"[{'yellow' if status == 'fallback' else 'red'}]{status}[/]"
        est = ""
        if rec.get("estimate_mbps"):
            est = f" (planned at {'/'.join(f'{e:g}' for e in rec['estimate_mbps'])} Mbit/s)"
        if rec.get("hop_down"):
            # the hop's breaker is open: the plan through it was not even tried
            est += f" [dim]{rec['hop_down']} down (breaker open): not tried[/]"
        console.print(f"  {_label(rec['strategy']):<26} #{rec['i'] + 1:<3} "
                      f"{placement_text(rec['placement']):<28} {rec['latency_ms']:>8.1f} ms  "
                      f"{status}{est}", highlight=False)

    def log(message: str) -> None:
        console.print(f"[green]✓[/] {message}")

    result = chain_replay(model_path, nodes, hops, {"cloud": trace_spec}, out_dir=out_dir,
                          requests=requests, duration_s=duration_s, seed=seed, log=log,
                          on_request=on_request,
                          kill=None if kill_edge_after is None else ("edge", kill_edge_after))

    plans = Table(title="plans: how many layers run on each node")
    for col in ("plan", "device", "edge", "cloud", "predicted ms", "chosen for"):
        plans.add_column(col, justify="left" if col in ("plan", "chosen for") else "right")
    for pid, meta in result.plans.items():
        why = sorted({w.split("@")[0] for w in meta["chosen_for"]})
        plans.add_row(pid, *(str(meta["layers"].get(n, 0)) for n in ("device", "edge", "cloud")),
                      f"{meta['predicted_ms_at_mean']:.1f}", ", ".join(_label(w) for w in why))
    console.print(plans)

    served = Table(title="what each edgecut serve counted (its /metrics), per strategy")
    for col in ("strategy", "edge answered", "edge relayed to cloud", "edge finished itself",
                "cloud answered"):
        served.add_column(col, justify="left" if col == "strategy" else "right")
    killed = result.info["killed"]
    for strat, per_node in result.info["served"].items():
        e = per_node.get("edge", {})
        c = per_node.get("cloud", {})
        if strat == "chain" and killed and killed["done"]:
            dead = f"killed after {killed['after_chain_requests']}"
            served.add_row(_label(strat), dead, dead, dead, f"{c.get('answered', 0):.0f}")
            continue
        served.add_row(_label(strat), f"{e.get('answered', 0):.0f}", f"{e.get('forwarded', 0):.0f}",
                       f"{e.get('finished_here', 0):.0f}", f"{c.get('answered', 0):.0f}")
    console.print(served)

    summary = Table(title="summary")
    for col in ("strategy", "mean ms", "p95 ms", "device mJ/request", "answered", "fell back"):
        summary.add_column(col, justify="left" if col == "strategy" else "right")
    for strat, s in result.summary.items():
        style = "bold green" if strat == "chain" else ("dim" if strat == "oracle" else None)
        summary.add_row(_label(strat), f"{s['mean_ms']:.1f}", f"{s['p95_ms']:.1f}",
                        f"{s['energy_mj']:.1f}", f"{s['answered']:.0f}", f"{s['fallbacks']:.0f}",
                        style=style)
    console.print(summary)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
    elapsed = time.monotonic() - started
    console.print(f"plots: {out_dir / 'replay_chain.png'} and chain-<plan>.png (where each layer "
                  f"ran)   per-request log: {out_dir / 'requests.jsonl'}")
    console.print(f"lost {result.info['lost']}, fallbacks {result.info['fallbacks']}, largest "
                  f"difference from the whole model {result.info['max_abs_diff']:.2g}; finished "
                  f"in {elapsed:.0f} s")
    out = {"out": str(out_dir), "elapsed_s": round(elapsed, 1), **result.to_dict()}
    (out_dir / "demo_chain.json").write_text(json.dumps(out, indent=2))
    return out


__all__ = ["run_chain_demo"]
