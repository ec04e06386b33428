"""``edgecut demo``: the main job end to end on one machine, with nothing to configure.

1. build a zoo model (random weights, real topology);
2. partition it for a device profile (default ``jetson-nano``) with this host as the cloud;
3. start ``edgecut serve`` on 127.0.0.1 with the whole model and every tail;
4. put the user-space link emulator in front of it, its rate following a real bandwidth
   trace (the FCC trace shipped in the package);
5. start the edge agent with its local Open Inference Protocol API on 127.0.0.1, and send
   every request through ``edge.Client`` to the agent, whose policy decides local,
   offload or split per request and whose executor runs the plan over the emulated link;
6. show each decision live, then compare local-only, cloud-only, the best static split
   (Neurosurgeon), edgecut and the per-request oracle, and save a plot.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from edge.offload._executor import Executor, Outcome

STRATEGY_LABELS = {
    "local": "local only",
    "cloud": "cloud only",
    "static_split": "static split",
    "edgecut": "edgecut",
    "oracle": "oracle (reference)",
}


def _agent_config_text(model: str, model_path: Path, device: str, data_dir: Path, port: int) -> str:
    return f"""# agent.toml written by edgecut demo
[agent]
device_id = "demo-device"
profile = "{device}"
data_dir = "{data_dir}"
log_level = "warning"
log_requests = false

[api]
host = "127.0.0.1"
port = {port}

[[models]]
name = "{model}"
path = "{model_path}"
version = "1"
warmup_runs = 1
"""


class _AgentRoute:
    """Sends each request through the agent's local API and returns its Outcome.

    The agent serves the model through the same executor the replay measures: requests go
    app -> edge.Client -> agent (HTTP on 127.0.0.1) -> policy + executor -> link emulator
    -> edgecut serve; the executor's listener hands back what happened to the request.
    """

    def __init__(self, agent: Any, client: Any, model: str, plan_path: Path) -> None:
        self._agent = agent
        self._client = client
        self._model = model
        self._plan_path = plan_path
        self._last: Outcome | None = None

    def __call__(self, executor: Executor) -> Callable[[dict[str, np.ndarray]], Outcome]:
        from edge.agent._lanes import _Planned

        executor.listeners.append(self._remember)
        slot = self._agent.slots[self._model]
        # The replay owns the executor and its client; the agent only routes to it.
        self._agent.executors[self._model] = _Planned(
            slot.current.version, str(self._plan_path), executor, _NoClose())
        return self._send

    def _remember(self, outcome: Outcome) -> None:
        self._last = outcome

    def _send(self, feeds: dict[str, np.ndarray]) -> Outcome:
        self._last = None
        self._client.infer(self._model, feeds)
        if self._last is None:
            raise click.ClickException("the agent answered without running the planned executor")
        return self._last

    def detach(self) -> None:
        self._agent.executors.pop(self._model, None)


class _NoClose:
    def close(self) -> None:
        """The replay closes the offload client it made."""


class _LiveView:
    """A progress bar and a table of the latest decisions, redrawn after each request."""

    def __init__(self, console: Any, total: int, rows: int = 12) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.progress = Progress(TextColumn("[bold]replaying trace"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("replay", total=total)
        self.recent: deque[tuple[int, float, Outcome]] = deque(maxlen=rows)
        self.plans: Counter[str] = Counter()
        self.live: Any = None

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title="decisions (latest)", expand=False)
        for col in ("#", "t (s)", "Mbit/s", "plan", "ran", "ms", "predicted"):
            table.add_column(col, justify="right" if col not in ("plan", "ran") else "left",
                             no_wrap=True, min_width=len(col))
        table.add_column("reason", no_wrap=True, overflow="ellipsis", max_width=50)
        for i, t, o in self.recent:
            ran = o.executed.split(" ")[0] + (" *fallback" if o.fallback else "")
            table.add_row(str(i + 1), f"{t:.0f}", f"{o.link_bps / 1e6:.2f}", o.decision.plan, ran,
                          f"{o.latency_ms:.1f}", f"{o.decision.predicted_ms:.1f}",
                          o.decision.reason)
        counts = ", ".join(f"{k}: {v}" for k, v in self.plans.most_common())
        return Group(self.progress, table, f"plans so far: {counts}")

    def __enter__(self) -> _LiveView:
        from rich.live import Live

        self.live = Live(self._render(), console=self.console, refresh_per_second=4,
                         transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def update(self, i: int, t: float, outcome: Outcome) -> None:
        self.recent.append((i, t, outcome))
        self.plans[outcome.decision.plan] += 1
        self.progress.advance(self.task)
        self.live.update(self._render())


def summary_rich_table(summary: dict[str, dict[str, float]], slo_ms: float) -> Any:
    from rich.table import Table

    table = Table(title=f"summary (deadline {slo_ms:g} ms)")
    for col in ("strategy", "mean ms", "p95 ms", "energy mJ/request", "deadline misses %"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for key, label in STRATEGY_LABELS.items():
        s = summary[key]
        style = "bold green" if key == "edgecut" else ("dim" if key == "oracle" else None)
        table.add_row(label, f"{s['mean_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['energy_mj']:.1f}",
                      f"{s['deadline_miss_pct']:.1f}", style=style)
    return table


# A real 5G driving trace (5Gophers, CC BY 4.0) from the project's shared data: its swings
# between ~0 and hundreds of Mbit/s make every plan the best one at some moment. Where the
# shared data is absent (an installed package), the FCC trace shipped in the package is used.
_SHARED_TRACE = Path("data/traces/nr5g_5gophers/car-driving-trace-1.csv")


def default_trace() -> str | None:
    """The demo's trace from ``../shared`` beside the checkout or the working folder."""
    roots = [Path(__file__).resolve().parents[3] / "shared", Path.cwd().parent / "shared",
             Path.cwd() / "shared"]
    for root in roots:
        if (root / _SHARED_TRACE).is_file():
            return f"{root / _SHARED_TRACE}#carrier=TMobile"
    return None


def run_demo(*, model: str, device: str, trace: str | None, requests: int, duration_s: float,
             out_dir: Path, slo_ms: float, objective: str, seed: int, console: Any) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns the replay's JSON summary."""
    from devices import load_profile
    from edge.agent._daemon import Agent, AgentServer
    from edge.client import Client
    from edge.lab._emulator import bundled_trace
    from edge.lab._replay import prepare_plan, replay
    from edge.policy._config import PolicyConfig
    from partition import zoo_model

    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = load_profile(device)
    trace_path = trace or default_trace() or str(bundled_trace())

    console.rule("[bold]edgecut demo")
    console.print(f"model [bold]{model}[/], device profile [bold]{profile.name}[/] "
                  f"({profile.description}), trace [bold]{Path(trace_path).name}[/]")
    with console.status("building the zoo model"):
        model_path = zoo_model(model)
    console.print(f"[green]✓[/] model {model_path}")

    plan_dir = out_dir / "plan"
    with console.status("profiling and partitioning (this host plays the cloud)"):
        plan = prepare_plan(model_path, profile, plan_dir, bandwidth_bps=5e6, rtt_s=0.04,
                            log=lambda m: None)
    console.print(f"[green]✓[/] plan {plan_dir / 'plan.json'}: {len(plan.candidates)} candidates "
                  f"({', '.join(c.cut_id for c in plan.candidates)})")

    # Without a deadline given, 1.5x the local time the replay measures on the emulated
    # device (the plan's profile ran with every core of this host; the device side of
    # the replay runs with one, as the bench does).
    slo_from_local = (1.5, 0.0) if slo_ms <= 0 else None
    if slo_from_local is not None:
        console.print("[green]✓[/] deadline: 1.5x the device's local time, as the replay "
                      "measures it")

    from socket import AF_INET, SOCK_STREAM, socket

    with socket(AF_INET, SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        agent_port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="edgecut-demo-agent-") as agent_dir:
        config_path = Path(agent_dir) / "agent.toml"
        config_path.write_text(_agent_config_text(model, Path(model_path), profile.name,
                                                  Path(agent_dir) / "data", agent_port))
        agent = Agent(config_path)
        server = AgentServer(agent).start()
        console.print(f"[green]✓[/] agent serving the Open Inference Protocol on {server.url}")
        client = Client(server.url)
        route = _AgentRoute(agent, client, model, plan_dir / "plan.json")
        policy = PolicyConfig(slo_ms=slo_ms, objective=objective)
        view = _LiveView(console, requests)
        try:
            console.print("[green]✓[/] starting edgecut serve and the link emulator")
            with view:
                result = replay(trace_path, model_path, profile, policy, plan_dir=plan_dir,
                                out_dir=out_dir, requests=requests, duration_s=duration_s,
                                seed=seed, route=route, on_request=view.update,
                                slo_from_local=slo_from_local)
        finally:
            route.detach()
            client.close()
            server.stop()
            agent.close()

    console.print(summary_rich_table(result.summary, result.slo_ms))
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
    elapsed = time.monotonic() - started
    console.print(f"plot: {out_dir / 'replay.png'}   per-request log: {out_dir / 'requests.jsonl'}")
    console.print(f"static split chose cut {result.info['static_split_cut']}; "
                  f"fallbacks {result.info['fallbacks']}; finished in {elapsed:.0f} s")
    summary = {"out": str(out_dir), "elapsed_s": round(elapsed, 1), **result.to_dict()}
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary


@click.group(invoke_without_command=True)
@click.option("--model", default="resnet50", show_default=True, help="Zoo model name.")
@click.option("--device", default="jetson-nano", show_default=True, help="Device profile.")
@click.option("--trace", default=None,
              help="Bandwidth trace (default: the 5G driving trace in ../shared/data/traces when "
                   "present, else the FCC trace shipped in the package).")
@click.option("--requests", default=40, show_default=True, type=click.IntRange(5, 10000))
@click.option("--duration", "duration_s", default=45.0, show_default=True,
              type=click.FloatRange(5.0, 3600.0), help="Wall time of the replay, seconds.")
@click.option("--slo-ms", default=0.0, show_default=True, type=click.FloatRange(0.0, 60000.0),
              help="Latency deadline per request; 0 sets it to 1.5x the device's local time.")
@click.option("--objective", default="latency", show_default=True,
              type=click.Choice(["latency", "energy"]))
@click.option("--out", "out_dir", default="edgecut-demo", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.pass_context
def demo(ctx: click.Context, model: str, device: str, trace: str | None, requests: int,
         duration_s: float, slo_ms: float, objective: str, out_dir: str, seed: int) -> None:
    """The main job end to end: serve, partition, agent, trace replay, comparison, plot.

    ``edgecut demo ocr`` runs the trained PP-OCR pipeline through the agent instead."""
    import shutil

    if ctx.invoked_subcommand is not None:
        return

    from rich.console import Console

    # Wide enough for the decision table when stdout is a pipe or a CI log.
    width = max(shutil.get_terminal_size((140, 40)).columns, 120)
    run_demo(model=model, device=device, trace=trace, requests=requests, duration_s=duration_s,
             out_dir=Path(out_dir), slo_ms=slo_ms, objective=objective, seed=seed,
             console=Console(width=width))


@demo.command("ocr")
@click.option("--sizes", default="320x320,640x640,544x960", show_default=True,
              help="Page sizes HxW, multiples of 32, comma separated.")
@click.option("--device", default="generic-x86", show_default=True, help="Device profile.")
@click.option("--bandwidth", default="20Mbit", show_default=True,
              help="The link the plans and the policy's prior assume.")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="Also quantize the three models and read the pages with INT8.")
@click.option("--out", "out_dir", default="edgecut-demo-ocr", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
def demo_ocr(sizes: str, device: str, bandwidth: str, int8: bool, out_dir: str, seed: int) -> None:
    """PP-OCR detector, direction classifier and recognizer through the agent on rendered
    pages: each model planned and run by the policy, text compared with plain ONNX Runtime."""
    import re

    from rich.console import Console

    from edge.lab._ocr import run_ocr_demo
    from partition import parse_bandwidth

    pages = []
    for part in sizes.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m.group(1)) % 32 or int(m.group(2)) % 32:
            raise click.BadParameter(f"{part!r}: expected HxW with multiples of 32, e.g. 640x640",
                                     param_hint="--sizes")
        pages.append((int(m.group(1)), int(m.group(2))))
    console = Console(width=140)
    result = run_ocr_demo(sizes=pages, device=device, out_dir=Path(out_dir), int8=int8,
                          bandwidth_bps=parse_bandwidth(bandwidth), seed=seed, console=console)
    for variant, r in result["variants"].items():
        console.print(f"[bold]{variant}[/]: text identical to plain ORT on every page: "
                      f"{r['all_same_as_ort']} (largest CER vs ORT {r['max_cer_vs_ort']:.2%}); "
                      f"mean CER vs the rendered text {r['mean_cer_vs_truth']:.2%}")
    console.print(f"wrote {Path(out_dir) / 'ocr.json'} in {result['elapsed_s']:.0f} s")


@demo.command("chain")
@click.option("--model", default="squeezenet", show_default=True, help="Zoo model name.")
@click.option("--device", default="jetson-nano", show_default=True, help="Device profile.")
@click.option("--lan", default="1000Mbit/2ms", show_default=True,
              help="The hop into the nearby edge node, rate/RTT (constant).")
@click.option("--wan", default="20Mbit/40ms", show_default=True,
              help="The hop into the cloud, rate/RTT; its rate follows --trace, the RTT is this.")
@click.option("--trace", default=None,
              help="Bandwidth trace of the WAN hop (default: as `edgecut demo`).")
@click.option("--requests", default=6, show_default=True, type=click.IntRange(1, 1000),
              help="Requests per strategy.")
@click.option("--duration", "duration_s", default=3.0, show_default=True,
              type=click.FloatRange(1.0, 3600.0), help="Wall time of each strategy's run, seconds.")
@click.option("--out", "out_dir", default="edgecut-demo-chain", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--kill-edge-after", default=None, type=click.IntRange(0, None), metavar="K",
              help="Kill the edge node's edgecut serve after K requests of the chain strategy "
                   "(the last one run): the rest finish on the device, none is lost.")
def demo_chain(model: str, device: str, lan: str, wan: str, trace: str | None, requests: int,
               duration_s: float, out_dir: str, seed: int, kill_edge_after: int | None) -> None:
    """A chain device -> nearby edge node -> cloud: two real edgecut serve processes behind
    emulated links (the WAN following a real trace), a chain plan per request, and where
    each request's layers ran."""
    from rich.console import Console

    from devices import load_profile
    from devices.errors import ConfigError
    from edge.lab._chain_demo import run_chain_demo
    from partition import ZOO_MODELS
    from partition._chain_cli import parse_chain, parse_links

    if model not in ZOO_MODELS:
        raise click.BadParameter(f"unknown model {model!r}: expected one of " + ", ".join(ZOO_MODELS),
                                 param_hint="--model")
    try:
        load_profile(device)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    for opt, name, value in (("--lan", "edge", lan), ("--wan", "cloud", wan)):
        try:
            parse_links(f"{name}={value}", parse_chain(f"device=here,{name}=here"))
        except ConfigError as exc:
            raise click.BadParameter(f"expected rate/RTT (e.g. 20Mbit/40ms), got {value!r}: {exc}",
                                     param_hint=opt) from exc
    if kill_edge_after is not None and kill_edge_after >= requests:
        raise click.BadParameter(f"expected fewer than --requests ({requests}), got {kill_edge_after}",
                                 param_hint="--kill-edge-after")
    if trace is not None and not Path(trace.split("#")[0]).is_file():
        raise click.BadParameter(f"{trace.split('#')[0]}: no such file", param_hint="--trace")
    run_chain_demo(model=model, device=device, lan=lan, wan=wan, trace=trace, requests=requests,
                   duration_s=duration_s, out_dir=Path(out_dir), seed=seed,
                   console=Console(width=140), kill_edge_after=kill_edge_after)
