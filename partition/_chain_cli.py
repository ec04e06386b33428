"""``edgecut partition MODEL --chain ... --links ...``: plan across a chain of nodes.

    edgecut partition resnet50 --chain device=jetson-nano,edge=jetson-agx-orin,cloud=here \\
        --links edge=1000Mbit/2ms,cloud=20Mbit/40ms --out plan/

``--chain`` names the nodes in order, each with a device profile (``here``: this host as
it is). ``--links`` gives the hop into each node after the first, as ``rate/RTT``. The
model is profiled once on this host and each node's times are divided by its profile's
``relative_speed`` (this host stands in for every node). The command prints where each
layer runs, what each hop carries and the predicted cost, beside the best plan on each
single remote node, and writes the segments and a Triton repository per node
(``partition.write_chain``) and ``chain.png`` (where each layer runs); ``--relay-url edge=http://host:port`` writes a middle
node's relay parameters (the URL of the node after it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devices.errors import ConfigError


def parse_chain(text: str) -> list[tuple[str, str]]:
    """``"device=jetson-nano,edge=jetson-agx-orin,cloud=here"`` -> [(name, profile)]."""
    nodes = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, prof = item.partition("=")
        if not sep or not name or not prof:
            raise ConfigError(f"--chain: expected name=profile, got {item!r}")
        if name in (n for n, _ in nodes):
            raise ConfigError(f"--chain: node {name!r} named twice")
        nodes.append((name, prof))
    if len(nodes) < 2:
        raise ConfigError(f"--chain: expected at least two nodes (device and one more), got {text!r}")
    return nodes


def parse_links(text: str, nodes: list[tuple[str, str]]) -> list[Any]:
    """``"edge=1000Mbit/2ms,cloud=20Mbit/40ms"`` -> one ``Hop`` per node after the first."""
    from partition._chain import Hop
    from partition._units import parse_bandwidth, parse_duration

    given = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, spec = item.partition("=")
        rate, slash, rtt = spec.partition("/")
        if not sep or not slash:
            raise ConfigError(f"--links: expected node=rate/rtt (e.g. edge=1000Mbit/2ms), got {item!r}")
        given[name] = Hop(parse_bandwidth(rate), parse_duration(rtt))
    names = [n for n, _ in nodes]
    unknown = sorted(set(given) - set(names[1:]))
    if unknown:
        raise ConfigError(f"--links: {unknown} not among the chain's nodes after the first {names[1:]}")
    missing = [n for n in names[1:] if n not in given]
    if missing:
        raise ConfigError(f"--links: no link into {missing} (give node=rate/rtt for each)")
    return [given[n] for n in names[1:]]


def run_chain(model_path: Path, chain: str, links: str, objective: str, slo_ms: float | None,
              out_dir: str, runs: int, relay_urls: tuple[str, ...], console: Any,
              figure: bool = True) -> None:
    from rich.table import Table

    from devices import load_profile
    from partition._chain import plan_chain
    from partition._chain_export import chain_segments, write_chain
    from partition._graph import LayerGraph
    from partition._onnx import load_model
    from partition._planner import side_times
    from partition._profile import profile_model

    nodes = parse_chain(chain)
    hops = parse_links(links, nodes)
    urls = {}
    for item in relay_urls:
        name, sep, url = item.partition("=")
        if not sep or name not in [n for n, _ in nodes[1:-1]]:
            raise ConfigError(f"--relay-url: expected middle-node=URL, got {item!r}")
        urls[name] = url
    profiles = [load_profile("generic-x86" if p == "here" else p) for _, p in nodes]
    speeds = [1.0 if nodes[i][1] == "here" else profiles[i].relative_speed for i in range(len(nodes))]
    device = profiles[0]
    model = load_model(model_path)
    graph = LayerGraph.from_model(model)
    console.print(f"[dim]profiling {model_path.stem} here once; node times = host / relative_speed "
                  f"({', '.join(f'{nodes[i][0]} {speeds[i]:g}' for i in range(len(nodes)))})[/dim]")
    prof = profile_model(graph.model, device, runs=runs, model_name=model_path.stem, threads=1,
                         emulate=False)
    host = side_times(graph, prof.nodes, prof.total_ms)
    node_ms = [{v: t / s for v, t in host.items()} for s in speeds]
    plan = plan_chain(graph, node_ms, hops, device, objective, slo_ms=slo_ms)
    segs = chain_segments(graph, plan)
    title = (f"{model_path.stem}: {' -> '.join(n for n, _ in nodes)} ({objective}"
             f"{'' if slo_ms is None else f', SLO {slo_ms:g} ms'}; {plan.method}"
             f"{'' if plan.exact else ', over the candidate cuts'})")
    table = Table(title=title)
    for col in ("node", "profile", "layers", "compute ms", "sends", "KB", "up ms", "next link"):
        table.add_column(col, justify="left" if col in ("node", "profile", "sends", "next link") else "right")
    for j, s in enumerate(segs):
        name, p = nodes[j]
        hop = hops[j] if j < len(hops) else None
        kb = graph.cut_bytes(s.sends, 1) / 1024 if s.sends else 0.0
        sends = ", ".join(s.sends[:3]) + (f" (+{len(s.sends) - 3})" if len(s.sends) > 3 else "")
        table.add_row(name, p, str(len(s.nodes)), f"{plan.cost.compute_ms[j]:.2f}", sends or "-",
                      f"{kb:.1f}", f"{plan.cost.up_ms[j]:.2f}" if hop else "-",
                      f"{hop.bandwidth_bps / 1e6:g} Mbit/s, {hop.rtt_s * 1000:g} ms" if hop else "-")
    console.print(table)
    console.print(f"predicted: latency {plan.cost.latency_ms:.1f} ms, device energy "
                  f"{plan.cost.energy_mj:.1f} mJ, stream {plan.cost.stream_fps:.2f} frames/s")
    # the best plan that uses one remote node only (the others relay or are unused)
    for j in range(1, len(nodes)):
        only = [node_ms[0]] + [node_ms[k] if k == j else {v: 1e12 for v in host} for k in range(1, len(nodes))]
        alone = plan_chain(graph, only, hops, device, objective, slo_ms=slo_ms)
        console.print(f"best with {nodes[0][0]} + {nodes[j][0]} only: latency {alone.cost.latency_ms:.1f} ms, "
                      f"energy {alone.cost.energy_mj:.1f} mJ, stream {alone.cost.stream_fps:.2f} frames/s")
    folders = write_chain(graph.model, graph, plan, model_path.stem, [n for n, _ in nodes], out_dir,
                          next_urls=urls, info={"profiles": [p for _, p in nodes],
                                                "hops": [[h.bandwidth_bps, h.rtt_s] for h in hops]})
    written = [str(f) for f in folders.values()]
    if figure:
        from partition._figure import plot_chain

        written.append(str(plot_chain(graph, node_ms, dict(plan.labels), [n for n, _ in nodes],
                                      title, Path(out_dir) / "chain.png")))
    console.print("wrote " + ", ".join(written))
