"""Trace-driven evaluation: real requests through the link emulator to a real server.

``replay()`` starts ``edgecut serve`` on 127.0.0.1 with the plan's Triton repository,
puts the :class:`LinkEmulator` in front of it (one-way delay, token bucket following the
trace, trace clock ``speedup`` x real time), and sends ``requests`` requests evenly spread
over the trace window through the :class:`Executor` under the given policy. That is
edgecut's strategy, run for real.

The fixed strategies are then costed on the same request sequence from measured
components instead of being run again (two cores cannot afford five runs per trace):

- device compute: each candidate's head (the whole model for ``local``) timed here before
  the run, divided by the profile's ``relative_speed`` (this host plays the device), and
  scaled per request by the slowdown this host showed during that request (so machine
  noise hits every strategy alike): measured on the real run's own device compute, or,
  for a request edgecut sent away, on the server's compute (``Server-Timing``);
- cloud leg: each remote candidate's request timed directly against the server
  (loopback HTTP plus the server's compute, scaled by the same slowdown), plus the
  emulator's round trip, plus the upload and download of its bytes through the trace
  from the instant that request's transfer would start (the fluid time the token bucket
  converges to); the server's own compute in it is charged at the cloud profile's speed
  (``cloud``, default this host; ``edge.lab._cloudgpu``), as edgecut's own cloud legs are;
- where edgecut actually ran a plan, that request's measured cost is used for that plan.

Strategies: ``local``, ``cloud`` (offload everything), ``static_split`` (Neurosurgeon:
the plan's best candidate for the window's mean bandwidth, chosen once), ``edgecut``, and
``oracle`` (per request, the best candidate given the bandwidth that request met); and
``info.fixed``: every candidate used for every request. The per-request costing is the
pure ``edge.lab._strategies.cost_strategies``, unit-tested by hand.

Beside this module: the server and plan it runs against (``_server``), the costing of the
fixed strategies from measured components (``_costing``) and the fault scenarios
(``_scenarios``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile, load_profile
from devices.errors import ConfigError
from edge.lab._cloudgpu import CLOUD_PROFILES, CloudProfile
from edge.lab._costing import (
    Components,
    _seed_plan_table,
    measure_components,
)
from edge.lab._emulator import LinkEmulator, Trace, load_trace
from edge.lab._scenarios import scenario_bandwidth_drop, scenario_cloud_kill
from edge.lab._server import CloudServer, prepare_plan
from edge.lab._strategies import STRATEGIES, cost_strategies, scaled_components
from edge.offload import offload_client
from edge.offload._client import OffloadClient
from edge.offload._executor import Executor, Outcome
from edge.policy._config import PolicyConfig
from edge.policy._decide import Policy
from partition import LOCAL, CutCandidate


@dataclass
class ReplayResult:
    """Per-strategy summaries, per-request records, and how they were obtained."""

    trace: str
    model: str
    device: str
    objective: str
    slo_ms: float
    summary: dict[str, dict[str, float]]
    requests: list[dict[str, Any]]
    notes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Components] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"trace": self.trace, "model": self.model, "device": self.device,
                "objective": self.objective, "slo_ms": self.slo_ms, "summary": self.summary,
                "notes": self.notes, "info": self.info}



def replay(trace_path: str | Path, model_path: str | Path, device: DeviceProfile | str,
           policy: PolicyConfig, *, plan_dir: str | Path, out_dir: str | Path | None = None,
           requests: int = 40, duration_s: float | None = None, window_s: float | None = None,
           offset_s: float = 0.0, speedup: float | None = None, rtt_s: float = 0.04,
           max_rate_bps: float = 300e6, seed: int = 0, server_threads: int = 1,
           device_threads: int = 1, trace_select: str | None = None,
           server: CloudServer | None = None, plot: bool = True,
           log: Callable[[str], None] | None = None,
           components: dict[str, Components] | None = None,
           route: Callable[[Executor], Callable[[dict[str, np.ndarray]], Outcome]] | None = None,
           on_request: Callable[[int, float, Outcome], None] | None = None,
           slo_from_local: tuple[float, float] | None = None,
           cloud: CloudProfile | None = None) -> ReplayResult:
    """Replay one trace (see the module docstring). ``duration_s`` is the wanted wall
    time of the run (sets ``speedup`` from the trace window when ``speedup`` is None).

    ``slo_from_local=(factor, floor_ms)`` sets the policy's SLO to ``factor`` x the
    emulated device's measured local latency (at least ``floor_ms``), once the components
    are measured: the plan's own prediction was made with other threads and host load.

    ``cloud`` is the cloud profile whose speed the server's compute is charged at (default
    this host's own, ``host``; ``edge.lab._cloudgpu``): the executor charges its cloud legs
    so, and every strategy is costed so.

    ``route`` is given the ready executor and returns the function each request goes
    through (default: the executor itself; the demo sends requests through the agent's
    local API instead). ``on_request(i, trace_time_s, outcome)`` is called after each one.
    """
    say = log or (lambda _m: None)
    cloud = cloud or CLOUD_PROFILES["host"]
    dev = load_profile(device) if isinstance(device, str) else device
    trace = load_trace(trace_path, select=trace_select)
    if max_rate_bps:
        trace = trace.clipped(max_rate_bps)
    window = min(window_s or trace.duration_s, trace.duration_s)
    if speedup is None:
        speedup = max(window / duration_s, 1.0) if duration_s else 1.0
    if requests < 1:
        raise ConfigError(f"replay: requests must be >= 1, got {requests}")
    plan = prepare_plan(model_path, dev, plan_dir, bandwidth_bps=trace.mean_bps, rtt_s=rtt_s,
                        log=say)
    plan_dir = Path(plan_dir)
    own_server = server is None
    srv = server or CloudServer(plan_dir / "repository", threads=server_threads)
    if own_server:
        say(f"starting edgecut serve on {srv.url}")
        srv.start()
    notes = [
        f"device compute emulated: time measured on this host / relative_speed "
        f"{dev.relative_speed:g} of profile {dev.name}",
        f"cloud: edgecut serve on 127.0.0.1 with {server_threads} ONNX Runtime thread(s); "
        f"device side {device_threads} thread(s); both on this host; the server's own "
        f"compute charged at 1/{cloud.relative_speed:g} of what it took (cloud profile "
        f"{cloud.name})",
        f"link: user-space shaping proxy, one-way delay {rtt_s / 2 * 1000:g} ms, rate from the "
        f"trace (capped at {max_rate_bps / 1e6:g} Mbit/s), trace clock x{speedup:.3g}; the "
        "trace is used as the uplink and the downlink",
        "fixed strategies and the oracle costed per request from measured components and "
        "the bandwidth each request met (fluid transfer through the trace, scaled by the "
        "slowness edgecut's own transfers measured against that model in the same run); "
        "edgecut ran for real, after one start-up link probe; the probes it sent during "
        "the run are charged to it, their radio time at transmit power shared out over "
        "the requests",
        "the oracle picks per request the plan that is best at the bandwidth that request "
        "met and is charged that plan's cost with the device as slow as it was then; "
        "info.oracle_hindsight also foresees the host's stalls (the cheapest realised "
        "cost of each request)",
    ]
    emu = None
    direct = OffloadClient(srv.url, timeout_s=60.0)
    try:
        emu = LinkEmulator("127.0.0.1", srv.port, up=trace, delay_s=rtt_s / 2, speedup=speedup,
                           offset_s=offset_s).start()
        cfg = policy
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        # The estimator and cost ages run on the trace clock: staleness is about how much
        # the link may have changed, which happens in trace time.
        # The call's timeout, retries and breaker: the policy's [offload] keys, as the agent.
        client = offload_client(emu.url, settings=cfg.offload)
        executor = Executor(plan, plan_dir, dev, policy=Policy(cfg), client=client,
                            compute_scale=1.0 / dev.relative_speed,
                            cloud_compute_scale=cloud.compute_scale,
                            clock=lambda: emu.trace_time(), seed=seed,
                            intra_op_threads=device_threads,
                            log_path=(Path(out_dir) / "decisions.jsonl") if out_dir else None)
        rng = np.random.default_rng(seed)
        full = executor._session_for(executor.model_path)
        feeds = {s.name: rng.standard_normal(
            [d if d is not None else 1 for d in s.shape]).astype(s.dtype) for s in full.inputs}
        executor.warm_up()
        if components is None:
            say("measuring each candidate's components")
            comps = measure_components(executor, direct, feeds, dev.relative_speed)
        else:
            comps = components  # measured by an earlier run of the same plan
        if slo_from_local is not None:
            factor, floor_ms = slo_from_local
            local_ms = next(c.device_head_ms for c in comps.values() if c.kind == LOCAL)
            cfg = replace(cfg, slo_ms=float(round(max(factor * local_ms, floor_ms))))
            executor.policy = Policy(cfg)
        _seed_plan_table(executor, scaled_components(comps, cloud.compute_scale), cfg,
                         lambda: emu.trace_time())
        executor.server_compute_s.update(
            {k: c.cloud_compute_ms / 1000.0 for k, c in comps.items() if c.cloud_compute_ms})
        emu.restart_clock(offset_s)
        # As a device does when it starts: one probe, so that the first decision is not
        # made on the prior alone (its time is not charged to any request).
        executor.probe_link()
        startup_probe_s = executor.probe_radio_s
        emu.restart_clock(offset_s)
        step = window / requests
        send = route(executor) if route is not None else executor.infer
        outcomes: list[tuple[float, Outcome]] = []
        say(f"replaying {requests} requests over {window:.0f} s of trace at x{speedup:.3g}")
        for i in range(requests):
            t_i = offset_s + i * step
            while (ahead := t_i - emu.trace_time()) > 0:
                time.sleep(min(ahead / speedup, 0.05))
            t_start = emu.trace_time()
            outcome = send(feeds)
            outcomes.append((t_start, outcome))
            if on_request is not None:
                on_request(i, t_start, outcome)
        executor.close()
        client.close()
    finally:
        direct.close()
        if emu is not None:
            emu.stop()
        if own_server:
            srv.stop()

    energy = executor.energy
    slo = cfg.slo_ms
    objective = cfg.objective
    # The probes edgecut sent during the run cost radio time no request carries: shared
    # out over the requests, at transmit power throughout (the most they can have cost).
    probe_s = executor.probe_radio_s - startup_probe_s
    probe_mj_each = energy.plan_mj(0.0, probe_s * 1000.0) / max(len(outcomes), 1)
    # Neurosurgeon: one choice from the profiled components at the window's mean bandwidth.
    mean_bw = trace.mean_between(offset_s, offset_s + window)
    import partition

    at_cloud = scaled_components(comps, cloud.compute_scale)
    static_cands = [CutCandidate(c.cut_id, c.kind, c.tensors, at_cloud[c.cut_id].device_head_ms,
                                 at_cloud[c.cut_id].cloud_direct_ms, at_cloud[c.cut_id].up_bytes,
                                 at_cloud[c.cut_id].down_bytes) for c in plan.candidates]
    static = partition.choose(static_cands, mean_bw, rtt_s, dev,
                              "energy" if objective == "energy" else "latency",
                              slo if slo > 0 else None).candidate.cut_id

    costed = cost_strategies(outcomes, comps, trace, energy=energy, objective=objective,
                             slo_ms=slo, latency_weight=cfg.latency_weight, speedup=speedup,
                             rtt_s=rtt_s, static_id=static, probe_mj_each=probe_mj_each,
                             cloud_scale=cloud.compute_scale)
    summary, records, k_remote = costed.summary, costed.records, costed.k_remote
    info = {
        "requests": requests, "speedup": speedup, "window_s": window, "offset_s": offset_s,
        "trace_mean_mbps": round(mean_bw / 1e6, 3), "static_split_cut": static,
        "candidates": {k: c.__dict__ for k, c in comps.items()},
        "fallbacks": sum(1 for _, o in outcomes if o.fallback),
        "explored": sum(1 for _, o in outcomes if o.decision.explored),
        # raced requests by which side answered first
        "raced": {side: sum(1 for _, o in outcomes if o.raced == side)
                  for side in ("cloud", "device")},
        "probes": executor.probes_sent,
        "lookahead_probes": executor.lookahead_probes,
        "probe_radio_s": round(probe_s, 3),
        "probe_mj_per_request": round(probe_mj_each, 2),
        "remote_leg_slowness": round(k_remote, 3),
        "oracle_hindsight": costed.hindsight,
        # every candidate used for every request
        "fixed": costed.fixed,
        "cloud": {"name": cloud.name, "relative_speed": cloud.relative_speed},
    }
    result = ReplayResult(str(trace.name), plan.model, dev.name, objective, slo, summary,
                          records, notes, info, comps)
    if out_dir:
        out = Path(out_dir)
        (out / "replay.json").write_text(json.dumps(result.to_dict(), indent=2))
        with (out / "requests.jsonl").open("w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        if plot:
            plot_replay(result, trace, out / "replay.png", speedup)
    return result


def plot_replay(result: ReplayResult, trace: Trace, path: str | Path, speedup: float) -> Path:
    """Bandwidth, decisions and latency over trace time, as a PNG (matplotlib, lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result.requests
    ts = [r["t_trace_s"] for r in recs]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    if ts:
        grid = np.linspace(min(ts), max(ts) + 1e-6, 400)
        axes[0].plot(grid, [trace.rate_at(t) / 1e6 for t in grid], lw=0.8, label="trace")
    axes[0].scatter(ts, [r["met_mbps"] for r in recs], s=10, c="C3", label="met by request")
    axes[0].plot(ts, [r["link_estimate_mbps"] for r in recs], "g--", lw=0.9,
                 label="edgecut's estimate")
    axes[0].set_ylabel("Mbit/s")
    axes[0].legend(loc="upper right", fontsize=8)
    plans = sorted({r["plan"] for r in recs} | {r["oracle_plan"] for r in recs},
                   key=lambda p: (p != "local", p != "offload", p))
    ypos = {p: i for i, p in enumerate(plans)}
    axes[1].scatter(ts, [ypos[r["plan"]] for r in recs], s=14, label="edgecut")
    axes[1].scatter(ts, [ypos.get(r["oracle_plan"], ypos.get("split@" + r["oracle_plan"], 0))
                         for r in recs], s=6, marker="x", label="oracle")
    fb = [r for r in recs if r["fallback"]]
    if fb:
        axes[1].scatter([r["t_trace_s"] for r in fb], [ypos[r["plan"]] for r in fb], s=40,
                        facecolors="none", edgecolors="C3", label="fell back")
    axes[1].set_yticks(range(len(plans)), plans, fontsize=7)
    axes[1].legend(loc="upper right", fontsize=8)
    for s in ("edgecut", "oracle", "local", "cloud"):
        axes[2].plot(ts, [r[f"{s}_ms"] for r in recs], lw=0.9, marker=".", ms=3, label=s)
    if result.slo_ms > 0:
        axes[2].axhline(result.slo_ms, color="k", ls="--", lw=0.7, label="SLO")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency ms")
    axes[2].set_xlabel(f"trace time s (clock x{speedup:.3g})")
    axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{result.model} on {result.device}, {result.trace} "
                 f"(device compute emulated: measured / relative_speed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def summary_table(result: ReplayResult) -> str:
    """The per-strategy summary as aligned text."""
    lines = [f"{'strategy':<13}{'mean ms':>10}{'p95 ms':>10}{'mJ/req':>10}{'miss %':>8}"]
    for s in STRATEGIES:
        v = result.summary[s]
        lines.append(f"{s:<13}{v['mean_ms']:>10.1f}{v['p95_ms']:>10.1f}{v['energy_mj']:>10.1f}"
                     f"{v['deadline_miss_pct']:>8.1f}")
    return "\n".join(lines)






__all__ = [
    "STRATEGIES",
    "CloudServer",
    "Components",
    "ReplayResult",
    "measure_components",
    "plot_replay",
    "prepare_plan",
    "replay",
    "scenario_bandwidth_drop",
    "scenario_cloud_kill",
    "summary_table",
]
