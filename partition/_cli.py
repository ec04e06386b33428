"""``edgecut profile`` and ``edgecut partition``: parse arguments, call the library, print."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from devices.errors import ConfigError, ModelError


def _console():  # noqa: ANN202 - rich is imported lazily
    import sys

    from rich.console import Console

    # Pipes and logs get a wide table instead of rich's 80-column default.
    return Console() if sys.stdout.isatty() else Console(width=160)


def _model_path(model: str) -> Path:
    """A file path, a zoo model name (materialized on first use) or a trained model's
    name (``ppocr_det``, fetched on first use)."""
    from partition.zoo import TRAINED_MODELS, ZOO_MODELS, trained_model, zoo_model

    path = Path(model)
    if path.is_file():
        return path
    if model in ZOO_MODELS:
        return zoo_model(model)
    if model in TRAINED_MODELS:
        return trained_model(model)
    if path.suffix or "/" in model:
        raise ModelError(f"model '{model}': file not found")
    raise ModelError(f"model '{model}': not a file and not a zoo model ({', '.join(ZOO_MODELS)})")


@click.command("profile")
@click.argument("model")
@click.option("--device", "device_name", required=True, help="Device profile name or .toml path.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="profile.json to write.")
@click.option("--runs", default=10, show_default=True, type=click.IntRange(1, 1000), help="Profiled runs (after warm-up).")
@click.option("--threads", default=None, type=click.IntRange(1, 1024), help="Intra-op threads (default: the device's).")
@click.option("--no-emulate", is_flag=True, help="Do not scale times by the device's relative_speed.")
@click.option("--shapes", default=None, metavar="NAME=SIZE,...",
              help="Sizes of the model's dynamic dims to profile at, e.g. H=640,W=640 "
                   "(default: 224 for each dim but the batch, which is 1).")
def profile(model: str, device_name: str, out_path: str, runs: int, threads: int | None, no_emulate: bool,
            shapes: str | None) -> None:
    """Measure every node's latency of MODEL with ONNX Runtime's profiler."""
    from rich.table import Table

    from devices import load_profile
    from partition._costmodel import CostModel
    from partition._graph import LayerGraph
    from partition._onnx import load_model
    from partition._planner import side_times
    from partition._profile import profile_model

    dev = load_profile(device_name)
    path = _model_path(model)
    from partition._sizes import parse_shapes

    points = parse_shapes(shapes) if shapes else []
    if len(points) > 1:
        raise ConfigError("--shapes: profile takes one size (NAME=SIZE,...); partition takes several")
    graph = LayerGraph.from_model(load_model(path), sizes=points[0] if points else None)
    env = graph.env(points[0] if points else None, 1)
    prof = profile_model(graph.model, dev, runs=runs, threads=threads, model_name=path.stem,
                         emulate=not no_emulate, sizes=env)
    if graph.assumed_sizes:
        _console().print(f"[yellow]no size given for {', '.join(graph.assumed_sizes)}: profiled at "
                         f"{env} (give --shapes)[/yellow]")
    cm = CostModel.fit(graph, prof.nodes, dev.name)
    prof = replace(prof, extra={**prof.extra, "cost_model": cm.summary()})
    prof.save(out_path)
    console = _console()
    if prof.emulated:
        console.print(f"[yellow]measured on this host on behalf of {dev.name}: times divided by its "
                      f"relative_speed {dev.relative_speed:g}[/yellow]")
    times = side_times(graph, prof.nodes, None, cm)
    table = Table(title=f"{path.stem} on {dev.name}: {prof.total_ms:.2f} ms per run "
                        f"({prof.threads} threads, median of {runs})")
    for col in ("node", "op", "ms", "GFLOPs", "output KB"):
        table.add_column(col, justify="left" if col in ("node", "op") else "right")
    for n in sorted(times, key=times.get, reverse=True)[:15]:
        node = graph.nodes[n]
        kb = sum(graph.tensors[t].bytes(1) for t in node.outputs) / 1024
        table.add_row(n, node.op_type, f"{times[n]:.3f}", f"{node.flops / 1e9:.3f}", f"{kb:.1f}")
    console.print(table)
    console.print(f"cost model (FLOPs and bytes): median |error| {cm.median_abs_pct_error:.1f}% per node "
                  f"over {cm.samples} measured nodes (out of sample)")
    console.print(f"wrote {out_path}")


@click.command("partition")
@click.argument("model")
@click.option("--device", "device_name", default=None,
              help="Device profile name or .toml path (required without --chain).")
@click.option("--cloud", default=None,
              help="Cloud service URL, a recorded cloud profile .json, or 'here' (this host); "
                   "required without --chain.")
@click.option("--bandwidth", default=None, help="Uplink bandwidth, e.g. 20Mbit, 1Gbit, 500kbit.")
@click.option("--rtt", default=None, help="Round-trip time, e.g. 40ms or 0.04s.")
@click.option("--objective", type=click.Choice(["latency", "energy", "throughput"]), default="latency",
              show_default=True, help="throughput: a stream's frames/s within --slo-ms (with --chain).")
@click.option("--slo-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency SLO for the energy objective, per frame for throughput.")
@click.option("--chain", default=None,
              help="Plan across a chain of nodes instead: name=profile,... in order, e.g. "
                   "device=jetson-nano,edge=jetson-agx-orin,cloud=here.")
@click.option("--links", default=None,
              help="With --chain: the link into each later node, e.g. edge=1000Mbit/2ms,cloud=20Mbit/40ms.")
@click.option("--relay-url", "relay_urls", multiple=True,
              help="With --chain: node=URL of the node after a middle node (writes its relay).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the plan.")
@click.option("--keep", default=8, show_default=True, type=click.IntRange(0, 10000), help="Best splits to keep.")
@click.option("--device-profile", default=None, type=click.Path(dir_okay=False),
              help="Recorded device profile (edgecut profile); default: profile here.")
@click.option("--cloud-model", default=None, help="Model name at the cloud service (default: file stem).")
@click.option("--compress", multiple=True, help="Evaluate a codec for the crossing tensors, e.g. fp16+zstd.")
@click.option("--wire", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="How crossing tensors travel: fp16 sends float32 ones at half precision "
                   "(the cloud models take FP16 inputs and cast them back).")
@click.option("--runs", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--measure", default=8, show_default=True, type=click.IntRange(0, 1000),
              help="Splits to run for real to replace predictions with measured times.")
@click.option("--no-figure", is_flag=True, help="Skip plan.png (it needs matplotlib).")
@click.option("--shapes", multiple=True, metavar="NAME=SIZE,...",
              help="Sizes of the model's dynamic dims to profile at, one size per option or "
                   "separated by ';' (e.g. --shapes H=640,W=640 --shapes H=320,W=320); the "
                   "first is the size the plan is chosen at. Default: 224 for each dim but "
                   "the batch, half and twice that.")
def partition_cmd(model: str, device_name: str, cloud: str, bandwidth: str, rtt: str, objective: str,
                  slo_ms: float | None, out_dir: str, keep: int, device_profile: str | None,
                  cloud_model: str | None, compress: tuple[str, ...], wire: str, runs: int,
                  measure: int, no_figure: bool, chain: str | None, links: str | None,
                  relay_urls: tuple[str, ...], shapes: tuple[str, ...]) -> None:
    """Choose where to cut MODEL between DEVICE and CLOUD for a link; write the plan.
    With --chain and --links: where each layer runs along a chain of nodes."""
    from rich.table import Table

    if chain is not None:
        from partition._chain_cli import run_chain

        if not links:
            raise ConfigError("--chain needs --links (the link into each later node)")
        run_chain(_model_path(model), chain, links, objective, slo_ms, out_dir, runs, relay_urls,
                  _console(), figure=not no_figure)
        return
    missing = [f"--{k}" for k, v in (("device", device_name), ("cloud", cloud),
                                      ("bandwidth", bandwidth), ("rtt", rtt)) if v is None]
    if missing:
        raise ConfigError(f"partition: {', '.join(missing)} required (or plan a chain with --chain)")
    if objective == "throughput":
        raise ConfigError("--objective throughput plans a chain: give --chain device=...,cloud=here "
                          "--links cloud=RATE/RTT")

    from devices import load_profile
    from partition._build import build_plan
    from partition._planner import predict, transfer_ms
    from partition._sizes import parse_shapes
    from partition._units import parse_bandwidth, parse_duration

    bw = parse_bandwidth(bandwidth)
    rtt_s = parse_duration(rtt)
    if slo_ms is not None and objective != "energy":
        raise ConfigError("--slo-ms applies to --objective energy (latency is already minimized)")
    dev = load_profile(device_name)
    path = _model_path(model)
    console = _console()
    plan = build_plan(
        path, dev, cloud, bw, rtt_s, objective=objective, slo_ms=slo_ms, out_dir=out_dir, keep=keep,
        device_profile=device_profile, runs=runs, measure=measure, cloud_model=cloud_model,
        compression=compress, figure=not no_figure, log=lambda m: console.print(f"[dim]{m}[/dim]"),
        wire=wire, shapes=parse_shapes(list(shapes)) if shapes else None,
    )
    sizes = plan.info.get("sizes", {})
    if sizes.get("assumed"):
        console.print(f"[yellow]no size given for {', '.join(sizes['assumed'])}: planned at "
                      f"{sizes['reference']} (give --shapes)[/yellow]")
    if sizes.get("symbols"):
        console.print(f"dynamic dims {', '.join(sizes['symbols'])} (shapes by "
                      f"{sizes['shape_method']}); profiled at "
                      + "; ".join(",".join(f"{k}={v}" for k, v in p.items()) for p in sizes["profiled"]))
    if plan.info["device_profile"]["emulated"]:
        console.print(f"[yellow]device times measured on this host and divided by {dev.name}'s "
                      f"relative_speed {dev.relative_speed:g}[/yellow]")
    table = Table(title=f"{plan.model} on {dev.name}, {bw / 1e6:g} Mbit/s, RTT {rtt_s * 1000:g} ms "
                        f"({objective}{'' if slo_ms is None else f', SLO {slo_ms:g} ms'})")
    for col in ("cut", "head ms", "bytes", "transfer ms", "tail ms", "total ms", "energy mJ", ""):
        table.add_column(col, justify="left" if col in ("cut", "") else "right")
    rows = sorted(plan.candidates, key=lambda c: predict(c, bw, rtt_s, dev)[0 if objective == "latency" else 1])
    for c in rows[: max(keep, 1) + 2]:
        lat, en = predict(c, bw, rtt_s, dev)
        xfer = 0.0 if c.kind == "local" else transfer_ms(c.up_bytes + c.down_bytes, bw)
        mark = "[bold green]<- chosen[/bold green]" if c.cut_id == plan.chosen else ""
        if c.extra.get("measured"):
            mark += " (measured)"
        table.add_row(c.cut_id, f"{c.head_ms:.2f}", f"{c.up_bytes:,}", f"{xfer:.2f}", f"{c.tail_ms:.2f}",
                      f"{lat:.2f}", f"{en:.1f}", mark)
    console.print(table)
    cm = plan.info["cost_model"]
    console.print(f"chosen: {plan.chosen} ({plan.info['reason']}); min cut in {plan.info['min_cut_ms']:.1f} ms; "
                  f"cost model median |error| per node: device {cm['device']['median_abs_pct_error']}%, "
                  f"cloud {cm['cloud']['median_abs_pct_error']}%")
    console.print(f"wrote {Path(out_dir) / 'plan.json'}, {len(plan.candidates)} candidates' models"
                  + ("" if no_figure else f", {Path(out_dir) / 'plan.png'}"))
