"""``edgecut replay``: trace-driven evaluation of the policy against fixed strategies."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--trace", "trace", default=None,
              help="Bandwidth trace file (FCC/HSDPA, Mahimahi, Ghent JSON, NYU CSV, 5Gophers "
                   "CSV); FILE#key=value,... selects a series in multi-series files "
                   "(default: the bundled FCC trace).")
@click.option("--model", required=True,
              help="Zoo model name (resnet50, inception_v1, ...) or an .onnx path.")
@click.option("--device", "device_name", required=True, help="Device profile name or .toml path.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, exists=True),
              default=None, help="policy.toml (default: the built-in defaults).")
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
def replay(trace: str | None, model: str, device_name: str, policy_path: str | None, requests: int,
           duration_s: float, window_s: float | None, rtt_ms: float, plan_dir: str | None,
           out_dir: str, seed: int, cloud_name: str) -> None:
    """Replay a bandwidth trace: real requests through a link emulator to edgecut serve.

    Device compute is emulated as the time measured on this host divided by the device
    profile's relative_speed. Compares local, cloud, the best static split (Neurosurgeon),
    edgecut's adaptive policy and the per-request oracle; writes replay.json,
    requests.jsonl, decisions.jsonl and replay.png to OUT.
    """
    from devices import load_profile
    from edge.lab._replay import replay as run_replay
    from edge.lab._replay import summary_table
    from edge.policy._config import PolicyConfig, load_policy_config

    if model.endswith(".onnx"):
        model_path = Path(model)
        if not model_path.is_file():
            raise click.BadParameter(f"{model}: no such file", param_hint="--model")
    else:
        from partition import ZOO_MODELS, zoo_model

        if model not in ZOO_MODELS:
            raise click.BadParameter(
                f"unknown model {model!r}: expected an .onnx path or one of "
                + ", ".join(ZOO_MODELS), param_hint="--model")
        model_path = zoo_model(model)
    from devices.errors import ConfigError
    from edge.lab._cloudgpu import cloud_profile

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
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(summary_table(result))
    click.echo(json.dumps({"out": str(out), "fallbacks": result.info["fallbacks"],
                           "static_split_cut": result.info["static_split_cut"]}))
