"""``edgecut replay``: trace-driven evaluation of the policy against fixed strategies."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--trace", "traces", multiple=True,
              help="Bandwidth trace file (FCC/HSDPA, Mahimahi, Ghent JSON, NYU CSV, 5Gophers "
                   "CSV); FILE#key=value,... selects a series in multi-series files "
                   "(default: the bundled FCC trace). With --chain: NODE=FILE, once per hop "
                   "that follows a trace (the hop into NODE).")
@click.option("--chain", default=None,
              help="Replay a chain of nodes instead: name=profile,... in order, the device "
                   "first (e.g. device=jetson-nano,edge=here,cloud=here).")
@click.option("--links", default=None,
              help="With --chain: the hop into each node after the first, NODE=rate/RTT "
                   "(e.g. edge=1000Mbit/2ms,cloud=20Mbit/40ms); a hop with a --trace takes "
                   "its rate from the trace and its RTT from here.")
@click.option("--model", required=True,
              help="Zoo model name (resnet50, inception_v1, ...) or an .onnx path.")
@click.option("--device", "device_name", default=None,
              help="Device profile name or .toml path (required without --chain).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, exists=True),
              default=None, help="policy.toml (default: the built-in defaults). With --chain "
              "only its [offload] breaker_failures and breaker_reset_s apply: the circuit "
              "breaker on the device's first hop (reset counted in trace seconds).")
@click.option("--requests", default=40, show_default=True, type=click.IntRange(1, 100000))
@click.option("--duration", "duration_s", default=30.0, show_default=True,
              type=click.FloatRange(1.0, 86400.0),
              help="Wanted wall time of the replay; sets the trace clock's speed-up.")
@click.option("--window", "window_s", default=None, type=click.FloatRange(1.0, None),
              help="Seconds of the trace to replay (default: all of it).")
@click.option("--rtt-ms", default=40.0, show_default=True, type=click.FloatRange(0.0, 10000.0),
              help="Round-trip time the emulator adds (half each way).")
@click.option("--plan-dir", default=None, type=click.Path(file_okay=False),
              help="Where the plan is built or reused (default: OUT/plan).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--cloud", "cloud_name", default="host", show_default=True,
              help="Cloud profile the server's compute is charged at: host (this host as "
                   "it is), t4, a10, or a speed factor over this host (docs/policy.md, "
                   "'Judging the policy').")
@click.option("--kill", "kill", default=None, metavar="NODE@K",
              help="With --chain: kill NODE's edgecut serve after K requests of the chain "
                   "strategy (a node lost mid-run; the rest must fall back, none be lost).")
@click.option("--revive", "revive", default=None, metavar="NODE@K",
              help="With --chain and --kill NODE@J: start NODE's edgecut serve again after K "
                   "(> J) requests of the chain strategy (a node back: used again once its "
                   "breaker's trial succeeds).")
@click.option("--objective", type=click.Choice(["latency", "energy"]), default=None,
              help="With --chain: what the chain planner minimises per request "
                   "[default: latency].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result (summary, per-request records, notes) as one JSON "
                   "document instead of tables; progress still goes to stderr.")
@click.pass_context
def replay(ctx: click.Context, traces: tuple[str, ...], chain: str | None, links: str | None,
           model: str, device_name: str | None, policy_path: str | None, requests: int,
           duration_s: float, window_s: float | None, rtt_ms: float, plan_dir: str | None,
           out_dir: str, seed: int, cloud_name: str, kill: str | None, revive: str | None,
           objective: str | None, as_json: bool) -> None:
    """Replay a bandwidth trace: real requests through a link emulator to edgecut serve.

    Device compute is emulated as the time measured on this host divided by the device
    profile's relative_speed. Compares local, cloud, the best static split (Neurosurgeon),
    edgecut's adaptive policy and the per-request oracle; writes replay.json,
    requests.jsonl, decisions.jsonl and replay.png to OUT.

    With --chain and --links: every node after the device is an edgecut serve behind its
    own link emulator (a middle node relays to the next); compares the device alone, the
    best plan on the device and each single node, the chain plan re-chosen per request
    from per-hop estimates, and the oracle; prints where each request's layers ran and
    what each node's server counted; writes replay_chain.json, requests.jsonl,
    replay_chain.png and chain-<plan>.png (where each layer ran) to OUT, e.g.

    edgecut replay --model squeezenet --chain device=jetson-nano,edge=here,cloud=here
    --links edge=1000Mbit/2ms,cloud=20Mbit/40ms --trace cloud=TRACE --out OUT
    """
    from devices.errors import ConfigError

    if chain is not None:
        # Options of the two-node replay that a chain does not use are refused, not ignored.
        for opt, name in (("--device", "device_name"), ("--plan-dir", "plan_dir"),
                          ("--rtt-ms", "rtt_ms"), ("--cloud", "cloud_name")):
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT):
                raise click.BadParameter(
                    f"{opt} does not apply with --chain (the chain names each node's profile, "
                    "--links each hop's RTT)", param_hint=opt)
        _replay_chain(model, chain, links, traces, requests, duration_s, window_s, out_dir,
                      seed, kill, revive, objective or "latency", policy_path, as_json)
        return
    for opt, value in (("--kill", kill), ("--revive", revive), ("--objective", objective)):
        if value is not None:
            raise click.BadParameter(f"{opt} needs --chain", param_hint=opt)
    if links is not None:
        raise click.BadParameter("--links needs --chain", param_hint="--links")
    if device_name is None:
        raise click.BadParameter("give a device profile (or --chain)", param_hint="--device")
    if len(traces) > 1:
        raise click.BadParameter("one trace without --chain (NODE=FILE per hop with --chain)",
                                 param_hint="--trace")
    from devices import load_profile
    from edge.lab._cloudgpu import cloud_profile
    from edge.lab._replay import replay as run_replay
    from edge.lab._replay import summary_table
    from edge.policy._config import PolicyConfig, load_policy_config

    model_path = _model_path(model)
    trace = traces[0] if traces else None
    try:
        cloud = cloud_profile(cloud_name)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--cloud") from exc
    device = load_profile(device_name)
    cfg = load_policy_config(policy_path) if policy_path else PolicyConfig(slo_ms=0.0)
    out = Path(out_dir)
    if trace is None:
        from edge.lab._emulator import bundled_trace

        trace = str(bundled_trace())
    result = run_replay(trace, model_path, device, cfg, plan_dir=plan_dir or out / "plan",
                        out_dir=out, requests=requests, duration_s=duration_s,
                        window_s=window_s, rtt_s=rtt_ms / 1000.0, seed=seed, cloud=cloud,
                        log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps({"out": str(out), **result.to_dict(), "requests": result.requests}))
        return
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(summary_table(result))
    click.echo(json.dumps({"out": str(out), "fallbacks": result.info["fallbacks"],
                           "static_split_cut": result.info["static_split_cut"]}))


def _model_path(model: str) -> Path:
    """A zoo model's name (built on first use) or an .onnx path, checked."""
    if model.endswith(".onnx"):
        model_path = Path(model)
        if not model_path.is_file():
            raise click.BadParameter(f"{model}: no such file", param_hint="--model")
        return model_path
    from partition import ZOO_MODELS, zoo_model

    if model not in ZOO_MODELS:
        raise click.BadParameter(
            f"unknown model {model!r}: expected an .onnx path or one of "
            + ", ".join(ZOO_MODELS), param_hint="--model")
    return zoo_model(model)


def _replay_chain(model: str, chain: str, links: str | None, traces: tuple[str, ...],
                  requests: int, duration_s: float, window_s: float | None, out_dir: str,
                  seed: int, kill: str | None, revive: str | None, objective: str,
                  policy_path: str | None, as_json: bool) -> None:
    from devices import load_profile
    from devices.errors import ConfigError
    from edge.lab._chain_replay import chain_replay, parse_hop_traces
    from edge.lab._chain_report import requests_table, served_table, summary_table
    from partition._chain_cli import parse_chain, parse_links

    try:
        nodes = parse_chain(chain)
        for _, profile in nodes:
            if profile != "here":
                load_profile(profile)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--chain") from exc
    if links is None:
        raise click.BadParameter("--chain needs --links (NODE=rate/RTT for each hop, e.g. "
                                 "edge=1000Mbit/2ms,cloud=20Mbit/40ms)", param_hint="--links")
    try:
        hops = parse_links(links, nodes)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--links") from exc
    try:
        hop_traces = parse_hop_traces(traces, nodes)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--trace") from exc
    for name, spec in hop_traces.items():
        path = spec.partition("#")[0]
        if not Path(path).is_file():
            raise click.BadParameter(f"trace for the hop into {name!r}: {path}: no such file",
                                     param_hint="--trace")
    kill_at = None
    if kill is not None:
        node, _, k = kill.partition("@")
        if node not in [n for n, _ in nodes[1:]] or not k.isdigit() or int(k) >= requests:
            raise click.BadParameter(
                f"expected NODE@K with NODE a chain node after the device "
                f"{[n for n, _ in nodes[1:]]} and 0 <= K < --requests ({requests}), got {kill!r}",
                param_hint="--kill")
        kill_at = (node, int(k))
    revive_at = None
    if revive is not None:
        node, _, k = revive.partition("@")
        if kill_at is None or node != kill_at[0] or not k.isdigit() or not kill_at[1] < int(k) < requests:
            raise click.BadParameter(
                f"expected NODE@K with NODE the node of --kill and --kill's K < K < --requests "
                f"({requests}), got {revive!r} (--kill {kill!r})", param_hint="--revive")
        revive_at = (node, int(k))
    offload = None
    if policy_path is not None:
        from edge.policy._config import load_policy_config

        try:
            offload = load_policy_config(policy_path).offload
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--policy") from exc
    model_path = _model_path(model)
    result = chain_replay(model_path, nodes, hops, hop_traces, out_dir=out_dir, requests=requests,
                          duration_s=duration_s, window_s=window_s, seed=seed, kill=kill_at,
                          revive=revive_at, objective=objective, offload=offload,
                          log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps({"out": str(out_dir), **result.to_dict(with_requests=True)}))
        return
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo("plans deployed:")
    for pid, meta in result.plans.items():
        click.echo(f"  {pid}: " + " + ".join(f"{n} {k}" for n, k in meta["layers"].items())
                   + f" layers; predicted {meta['predicted_ms_at_mean']:g} ms at the mean rates")
    click.echo("chain strategy, per request:")
    click.echo(requests_table(result))
    click.echo("what each node's server counted, per strategy:")
    click.echo(served_table(result))
    click.echo(summary_table(result))
    click.echo(json.dumps({"out": str(out_dir), "chain_plans_used": result.info["chain_plans_used"],
                           "fallbacks": result.info["fallbacks"], "lost": result.info["lost"],
                           "routed_around": result.info["routed_around"],
                           "max_abs_diff": result.info["max_abs_diff"]}))
