"""Trace-driven replay of a chain of nodes: device -> nearby edge node(s) -> cloud.

``chain_replay()`` runs real processes per node: every node after the device is an
``edgecut serve`` on 127.0.0.1 with its segments (a middle node relays what it makes to
the next node, ``cloud._relay``), each behind its own user-space ``LinkEmulator`` whose
rate follows that hop's trace (or the constant rate of ``--links``) with that hop's RTT.
The device runs in this process as an emulated board (time measured here / the profile's
``relative_speed``) through a ``StreamPipeline`` one frame at a time.

Strategies, each run for real over the same trace window (every emulator's clock
restarted at the window's start for each), one request at a time:

- ``device``: the whole model on the device;
- ``device+<node>``: for each later node, the best plan using the device and that node
  only (the nodes between relay), chosen once at the traces' mean rates (Neurosurgeon's
  static choice, per node);
- ``chain``: the chain planner's plan (``partition.plan_chain``), re-chosen per request
  from per-hop link estimates. The estimate of a hop is the mean of its trace over the
  ``estimate_window_s`` seconds of trace time before the request: what a per-hop
  estimator reporting with that lag would know (the replay does not measure the hops
  beyond the first itself). Every plan the requests will want is deployed at start
  (the estimates depend on the past of the traces only), at most ``max_plans``; beyond
  that a request gets the deployed plan that is cheapest at its estimate;
- ``oracle``: per request, the best of the strategies above as measured for that request
  (hindsight over the strategies run; not over every labelling).

A dead hop is remembered as a single-hop offload remembers a dead cloud: the device's
client to the first hop has the circuit breaker of ``policy.toml``'s ``[offload]``
(``breaker_failures``, ``breaker_reset_s``), and the chain strategy routes through
``edge.offload.ChainRouter``: while the breaker is open, the plans that need the hop are
excluded and the device's own plan runs (no failed attempt paid); after the reset the
wanted plan goes again as the trial. The breaker's clock is the replay's: each request
happens at its scheduled trace time, so ``breaker_reset_s`` is counted in trace seconds
(the same for every run, however long this host takes). ``kill=(node, k)`` and
``revive=(node, k)`` take a node's server down and bring it back mid-run.

Nodes after the device are served on this host: the planner is told this host's speed
for them (``edgecut serve`` does not emulate a slower or faster machine), so predictions
and measurements describe the same machines; their profiles are recorded only.

Device energy per request: ``P_active`` x its compute + ``P_tx``/``P_rx`` x the first
hop's transfer time of what it sent and received at the rate that hop's trace had then +
``P_idle`` x the rest of the measured latency.

The tables and the plot that show a result are in ``_chain_report``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile, load_profile
from devices.errors import ConfigError
from edge.lab._emulator import LinkEmulator, Trace, load_trace
from edge.lab._server import _free_port
from edge.offload._client import CircuitBreaker

CHAIN = "chain"
ORACLE = "oracle"
DEVICE = "device"


@dataclass
class ChainReplayResult:
    """Per-strategy summaries, per-request records, the plans deployed, and how."""

    model: str
    nodes: list[tuple[str, str]]
    summary: dict[str, dict[str, float]]
    requests: list[dict[str, Any]]
    plans: dict[str, dict[str, Any]]
    notes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_requests: bool = False) -> dict[str, Any]:
        out = {"model": self.model, "nodes": [list(n) for n in self.nodes],
               "summary": self.summary, "plans": self.plans, "notes": self.notes,
               "info": self.info}
        if with_requests:
            out["requests"] = self.requests
        return out


def parse_hop_traces(items: Sequence[str], nodes: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``["edge=FILE", "cloud=FILE#key=value"]`` -> {node: trace spec}; the node is the
    text before the first ``=`` and must be a chain node after the device."""
    later = [n for n, _ in nodes[1:]]
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not spec:
            raise ConfigError(f"--trace: expected node=FILE for a chain, got {item!r}")
        if name not in later:
            raise ConfigError(f"--trace: {name!r} is not a chain node after the device {later}")
        if name in out:
            raise ConfigError(f"--trace: hop into {name!r} given twice")
        out[name] = spec
    return out


def _labels_key(labels: Mapping[str, int], order: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(labels[v]) for v in order)


class _Deployment:
    """Every deployed plan's files, one merged Triton repository per later node, the
    servers and the emulators (the last node first, so relays find their next hop)."""

    def __init__(self, work: Path, names: list[str], traces: list[Trace], rtts: list[float],
                 speedup: float, threads: int, breaker: tuple[int, float] = (3, 5.0)) -> None:
        self.work = work
        self.names = names
        self.ports = {n: _free_port() for n in names[1:]}
        self.emu_ports = {n: _free_port() for n in names[1:]}
        self.traces = traces
        self.rtts = rtts
        self.speedup = speedup
        self.threads = threads
        self.servers: dict[str, Any] = {}
        self.emulators: list[LinkEmulator] = []
        self.device_dirs: dict[str, Path] = {}
        self.breaker = breaker

    def relay_urls(self) -> dict[str, str]:
        n = self.names
        return {n[j]: f"http://127.0.0.1:{self.emu_ports[n[j + 1]]}" for j in range(1, len(n) - 1)}

    def add_plan(self, plan_id: str, graph: Any, plan: Any, model_name: str) -> None:
        from partition import write_chain

        folders = write_chain(graph.model, graph, plan, f"{model_name}_{plan_id}", self.names,
                              self.work / "plans" / plan_id, next_urls=self.relay_urls(),
                              relay_breaker_failures=self.breaker[0],
                              relay_breaker_reset_s=self.breaker[1])
        self.device_dirs[plan_id] = folders[self.names[0]]
        for n in self.names[1:]:
            repo = folders[n] / "repository"
            if repo.is_dir():
                for m in repo.iterdir():
                    shutil.copytree(m, self.work / "nodes" / n / "repository" / m.name)

    def start(self, log: Callable[[str], None]) -> str:
        from edge.lab._server import CloudServer

        for j in range(len(self.names) - 1, 0, -1):
            n = self.names[j]
            repo = self.work / "nodes" / n / "repository"
            if repo.is_dir():
                log(f"starting edgecut serve for {n} on 127.0.0.1:{self.ports[n]}")
                self.servers[n] = CloudServer(repo, port=self.ports[n], threads=self.threads,
                                              log_path=self.work / f"{n}.log").start()
            self.emulators.append(LinkEmulator("127.0.0.1", self.ports[n], up=self.traces[j - 1],
                                               delay_s=self.rtts[j - 1] / 2, speedup=self.speedup,
                                               listen_port=self.emu_ports[n]).start())
        return f"http://127.0.0.1:{self.emu_ports[self.names[1]]}"

    def counts(self) -> dict[str, dict[str, float]]:
        """Per node with a live server: requests answered and relay outcomes so far."""
        return {n: server_counts(s.url) for n, s in self.servers.items()
                if s.proc is not None and s.proc.poll() is None}

    def settled_counts(self, before: Mapping[str, Mapping[str, float]], reached: Mapping[str, int],
                       timeout_s: float = 10.0) -> dict[str, dict[str, float]]:
        """``counts()`` once every live server has counted at least the requests the
        client saw it answer (``reached``, since ``before``): a server counts a request
        after writing its answer, so a read right after the last answer can miss it.
        At the deadline, what was read is returned as it is (a shortfall then shows)."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.counts()
            if time.monotonic() >= deadline or all(
                    c["answered"] - before.get(n, {}).get("answered", 0.0) >= reached.get(n, 0)
                    for n, c in now.items()):
                return now
            time.sleep(0.02)

    def kill(self, node: str) -> str | None:
        """Kill ``node``'s server abruptly (a node lost); None when it has none."""
        server = self.servers.get(node)
        if server is None:
            return None
        server.kill()
        return node

    def revive(self, node: str) -> str | None:
        """Start ``node``'s server again on its port (a node back); returns once it is
        ready. None when it has none."""
        server = self.servers.get(node)
        if server is None:
            return None
        server.start()
        return node

    def restart_clocks(self, offset_s: float) -> None:
        for e in self.emulators:
            e.restart_clock(offset_s)

    def trace_time(self) -> float:
        return self.emulators[0].trace_time()

    def stop(self) -> None:
        for e in self.emulators:
            e.stop()
        for s in self.servers.values():
            s.stop()


def _reached(records: Sequence[Mapping[str, Any]], strategy: str,
             meta: Mapping[str, Mapping[str, Any]], names: Sequence[str],
             since: Mapping[str, int] | None = None) -> dict[str, int]:
    """Per later node, how many of ``strategy``'s requests answered ``ok`` passed through
    it: every node up to the deepest one its plan uses (for a node in ``since``, only
    requests from that index on: a restarted server counts from zero)."""
    out = {n: 0 for n in names[1:]}
    for r in records:
        if r["strategy"] == strategy and r["status"] == "ok":
            deepest = max(names.index(n) for n in meta[r["plan"]]["nodes_used"])
            for j in range(1, deepest + 1):
                if r["i"] >= (since or {}).get(names[j], 0):
                    out[names[j]] += 1
    return out


def server_counts(url: str) -> dict[str, float]:
    """An ``edgecut serve``'s totals from its /metrics: requests ``answered`` (every
    model) and the relay's ``forwarded`` / ``finished_here`` / ``next_hop_down``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10.0).text
    out = {"answered": 0.0, "forwarded": 0.0, "finished_here": 0.0, "next_hop_down": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgecut_inference_requests_total":
                out["answered"] += sample.value
            elif sample.name == "edgecut_relay_requests_total":
                key = sample.labels.get("outcome", "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def _estimate(trace: Trace, t: float, window_s: float) -> float:
    if t <= 0:
        return trace.rate_at(0.0)
    return trace.mean_between(max(0.0, t - window_s), t)


def chain_replay(model_path: str | Path, nodes: Sequence[tuple[str, str]], hops: Sequence[Any],
                 hop_traces: Mapping[str, str] | None = None, *, out_dir: str | Path,
                 requests: int = 20, duration_s: float = 30.0, window_s: float | None = None,
                 estimate_window_s: float = 5.0, max_plans: int = 6, max_rate_bps: float = 1e9,
                 objective: str = "latency", runs: int = 5, seed: int = 0, server_threads: int = 1,
                 plot: bool = True, log: Callable[[str], None] | None = None,
                 on_request: Callable[[dict[str, Any]], None] | None = None,
                 kill: tuple[str, int] | None = None, revive: tuple[str, int] | None = None,
                 offload: Any = None) -> ChainReplayResult:
    """Replay per-hop traces through a chain of real processes (module docstring).

    ``nodes``: [(name, profile)], the device first. ``hops``: one ``partition.Hop`` per
    node after the device (its RTT, and its rate when the hop has no trace).
    ``hop_traces``: node -> trace file (``FILE#key=value`` selects a series).
    ``on_request(record)`` is called after each request (the demo prints it live).
    ``kill=(node, k)``: kill that node's ``edgecut serve`` after ``k`` requests of the
    chain strategy (which runs last): a node lost mid-run. The requests after it fall back
    (a dead middle node: the device finishes from its cut; a dead last node behind a
    relay: the relay finishes the model itself) and none may be lost.
    ``revive=(node, k)``: start the killed node's server again after ``k`` chain
    requests (``k`` after the kill's). ``offload``: ``policy.toml``'s ``[offload]`` (an
    ``OffloadSettings``; default: the built-in one) -- its ``breaker_failures`` and
    ``breaker_reset_s`` (trace seconds here) set the first hop's breaker.
    ``info["served"][strategy][node]``: what that node's server counted during the
    strategy (``answered``, relay ``forwarded`` / ``finished_here``), from its metrics
    (a revived server's counts start again from zero).
    """
    import onnxruntime as ort

    from edge.offload import ChainRouter, OffloadClient, StreamPipeline
    from edge.policy._config import OffloadSettings
    from partition import LayerGraph, device_candidate, evaluate_labels, plan_chain, profile_model
    from partition._chain import Hop
    from partition._planner import active_power_w, side_times

    say = log or (lambda _m: None)
    if len(nodes) < 2 or len(hops) != len(nodes) - 1:
        raise ConfigError(f"chain replay: {len(nodes)} nodes need {len(nodes) - 1} hops, got {len(hops)}")
    if requests < 1:
        raise ConfigError(f"chain replay: requests must be >= 1, got {requests}")
    if kill is not None and (kill[0] not in [n for n, _ in nodes[1:]] or not 0 <= kill[1] < requests):
        raise ConfigError(f"chain replay: kill expects (a node after the device, 0 <= k < {requests} "
                          f"requests), got {kill!r}")
    if revive is not None and (kill is None or revive[0] != kill[0]
                               or not kill[1] < revive[1] < requests):
        raise ConfigError(f"chain replay: revive expects the killed node and kill's k < k < "
                          f"{requests} requests, got revive={revive!r}, kill={kill!r}")
    settings = offload if offload is not None else OffloadSettings()
    if objective not in ("latency", "energy"):
        raise ConfigError(f"chain replay: objective must be latency or energy, got {objective!r}")
    names = [n for n, _ in nodes]
    device: DeviceProfile = load_profile("generic-x86" if nodes[0][1] == "here" else nodes[0][1])
    dev_speed = 1.0 if nodes[0][1] == "here" else device.relative_speed
    specs = dict(hop_traces or {})
    traces: list[Trace] = []
    for j, n in enumerate(names[1:]):
        if n in specs:
            path, _, select = specs[n].partition("#")
            traces.append(load_trace(path, select=select or None).clipped(max_rate_bps))
        else:
            traces.append(Trace.from_steps([(0.0, hops[j].bandwidth_bps)], 1e6,
                                           f"constant {hops[j].bandwidth_bps / 1e6:g} Mbit/s"))
    traced = [t for n, t in zip(names[1:], traces) if n in specs]
    window = min([window_s or 1e9] + [t.duration_s for t in traced]) if traced else (window_s or duration_s)
    speedup = max(window / duration_s, 1.0)
    step = window / requests

    model_path = Path(model_path)
    graph = LayerGraph.from_path(model_path)
    model_name = model_path.stem
    say(f"profiling {model_name} here once ({runs} runs)")
    prof = profile_model(graph.model, device, runs=runs, model_name=model_name, threads=1, emulate=False)
    host = side_times(graph, prof.nodes, prof.total_ms)
    node_ms = [{v: t / dev_speed for v, t in host.items()}] + [dict(host) for _ in names[1:]]
    never = {v: 1e12 for v in host}
    order = list(graph.order)

    def hops_at(rates: Sequence[float]) -> list[Hop]:
        return [Hop(max(r, 1.0), h.rtt_s) for r, h in zip(rates, hops)]

    mean_rates = [t.mean_between(0.0, window) for t in traces]
    plans: dict[tuple[int, ...], tuple[str, Any]] = {}
    meta: dict[str, dict[str, Any]] = {}

    def keep(plan: Any, why: str) -> str:
        key = _labels_key(plan.labels, order)
        if key not in plans:
            pid = f"p{len(plans)}"
            plans[key] = (pid, plan)
            used = sorted(set(key))
            at_mean = evaluate_labels(graph, node_ms, hops_at(mean_rates), device, plan.labels)
            meta[pid] = {"nodes_used": [names[u] for u in used],
                         "layers": {names[u]: key.count(u) for u in used},
                         "predicted_ms_at_mean": round(at_mean.latency_ms, 2),
                         "predicted_mj_at_mean": round(at_mean.energy_mj, 2),
                         "chosen_for": []}
        pid = plans[key][0]
        meta[pid]["chosen_for"].append(why)
        return pid

    labels_local = {v: 0 for v in order}
    local_cost = evaluate_labels(graph, node_ms, hops_at(mean_rates), device, labels_local)
    from partition import ChainPlan

    strategies: dict[str, list[str]] = {}
    strategies[DEVICE] = [keep(ChainPlan(labels_local, tuple(() for _ in hops), local_cost, objective,
                                         "given"), DEVICE)] * requests
    for j in range(1, len(names)):
        only = [node_ms[0]] + [node_ms[k] if k == j else never for k in range(1, len(names))]
        p = plan_chain(graph, only, hops_at(mean_rates), device, objective)
        strategies[f"device+{names[j]}"] = [keep(p, f"device+{names[j]}")] * requests
    estimates = [[_estimate(t, i * step, estimate_window_s) for t in traces] for i in range(requests)]
    wanted = [plan_chain(graph, node_ms, hops_at(est), device, objective) for est in estimates]
    chain_ids: list[str] = []
    metric = "latency_ms" if objective == "latency" else "energy_mj"
    for i, p in enumerate(wanted):
        key = _labels_key(p.labels, order)
        if key in plans or len(plans) < max_plans:
            chain_ids.append(keep(p, f"chain@{i}"))
            continue
        # over the cap: the deployed plan cheapest (by the objective) at this request's estimate
        best = min(plans.values(), key=lambda kp: getattr(evaluate_labels(
            graph, node_ms, hops_at(estimates[i]), device, kp[1].labels), metric))
        chain_ids.append(best[0])
    strategies[CHAIN] = chain_ids
    by_id = {pid: p for pid, p in plans.values()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "nodes-work"
    if work.exists():
        shutil.rmtree(work)
    whole = work / "whole.onnx"
    whole.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, whole)
    dep = _Deployment(work, names, traces, [h.rtt_s for h in hops], speedup, server_threads,
                      (settings.breaker_failures, settings.breaker_reset_s))
    for pid, p in by_id.items():
        dep.add_plan(pid, graph, p, model_name)

    rng = np.random.default_rng(seed)
    name0 = graph.inputs[0]
    shape = [d or 1 for d in graph.tensors[name0].shape]
    feeds = {name0: rng.standard_normal(shape).astype(np.float32)}
    sess = ort.InferenceSession(str(whole), providers=["CPUExecutionProvider"])
    reference = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))

    notes = [
        f"device node {names[0]!r}: compute emulated as time measured on this host / relative_speed "
        f"{dev_speed:g} ({nodes[0][1]})",
        f"nodes after the device ({', '.join(names[1:])}): edgecut serve on 127.0.0.1 with "
        f"{server_threads} ONNX Runtime thread(s), at this host's speed; the planner is told "
        "so (their profiles are not emulated)",
        "links: one user-space shaping proxy per hop, rate from its trace (or --links), "
        f"one-way delay RTT/2, trace clock x{speedup:.3g}; each strategy replays the same "
        "window from its start",
        f"chain: re-planned per request (min cut, objective {objective}) from per-hop estimates = each hop's trace "
        f"mean over the previous {estimate_window_s:g} s of trace time; {len(by_id)} distinct "
        f"plan(s) deployed (cap {max_plans})",
        "oracle: per request the best strategy measured for it (hindsight over the "
        "strategies run, not over every labelling)",
        f"first hop's circuit breaker: opens after {settings.breaker_failures} failure(s) in a "
        f"row, half-open after {settings.breaker_reset_s:g} s of trace time; while open the "
        "chain strategy runs the device's own plan instead of a plan through the hop; a middle "
        "node's relay has the same breaker on its next hop (its own clock: wall time)",
    ]
    records: list[dict[str, Any]] = []
    served: dict[str, dict[str, dict[str, float]]] = {}
    killed: str | None = None
    revived: str | None = None
    # the breaker's clock: the scheduled trace time of the request being made
    clock = [0.0]
    energy_model = (active_power_w(device), device.radio.tx_w, device.radio.rx_w, device.power.idle_w)
    try:
        url = dep.start(say)
        with OffloadClient(url, timeout_s=60.0, max_retries=0) as client:
            pipes: dict[str, Any] = {}
            for pid, p in by_id.items():
                pipes[pid] = StreamPipeline(dep.device_dirs[pid], whole,
                                            device_candidate(graph, p, f"{model_name}_{pid}"), device,
                                            client, list(graph.outputs), window=1, queue_size=1,
                                            device_time=lambda _k, ms: ms / dev_speed,
                                            intra_op_threads=1)
            # warm every plan once (sessions, connections) off the clock
            for pipe in pipes.values():
                pipe.result(pipe.submit(feeds), timeout_s=120)
            before = dep.counts()
            since: dict[str, int] = {}
            for strat, ids in strategies.items():
                say(f"replaying {requests} requests over {window:.0f} s of trace: {strat}")
                # each strategy starts with the hop's breaker closed, on the replay's clock
                client.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s,
                                                clock=lambda: clock[0])
                router = ChainRouter(names, {k: v["nodes_used"] for k, v in meta.items()},
                                     strategies[DEVICE][0], client.breaker)
                dep.restart_clocks(0.0)
                for i in range(requests):
                    t_i = i * step
                    while True:
                        ahead = t_i - dep.trace_time()
                        if ahead <= 0:
                            break
                        time.sleep(min(ahead / speedup, 0.05))
                    if strat == CHAIN and kill is not None and i == kill[1]:
                        say(f"killing {kill[0]}'s edgecut serve after {i} chain requests")
                        killed = dep.kill(kill[0])
                    if strat == CHAIN and revive is not None and i == revive[1]:
                        say(f"starting {revive[0]}'s edgecut serve again after {i} chain requests")
                        revived = dep.revive(revive[0])
                        before[revive[0]] = {}
                        since[revive[0]] = i
                    t0 = dep.trace_time()
                    clock[0] = t_i
                    route = router.route(ids[i]) if strat == CHAIN else None
                    pid = route.plan if route is not None else ids[i]
                    pipe = pipes[pid]
                    r = pipe.result(pipe.submit(feeds), timeout_s=120)
                    rec = _record(strat, i, t0, pid, r, reference, pipe.candidate, traces[0],
                                  energy_model, estimates[i] if strat == CHAIN else None)
                    if route is not None:
                        # what the planner wanted, and the hop whose open breaker excluded it
                        rec.update(wanted=route.wanted, hop_down=route.hop_down, breaker=route.breaker)
                    # a request that fell back ran every layer on the device from its cut
                    rec["placement"] = (dict(meta[pid]["layers"]) if rec["status"] == "ok" else
                                        {names[0]: len(order)} if rec["status"] == "fallback" else {})
                    records.append(rec)
                    if on_request is not None:
                        on_request(rec)
                after = dep.settled_counts(before, _reached(records, strat, meta, names,
                                                            since if strat == CHAIN else None))
                # a node killed in this strategy has no counts to read afterwards
                served[strat] = {n: {k: v - before.get(n, {}).get(k, 0.0) for k, v in c.items()}
                                 for n, c in after.items()}
                before = after
            for pipe in pipes.values():
                pipe.close()
    finally:
        dep.stop()

    summary = _summarise(records, list(strategies), requests)
    info = {
        "requests": requests, "window_s": window, "speedup": speedup, "objective": objective,
        "hops": [{"into": n, "trace": t.name, "rtt_ms": h.rtt_s * 1000.0,
                  "mean_mbps": round(m / 1e6, 3)} for n, t, h, m in zip(names[1:], traces, hops, mean_rates)],
        "chain_plans_used": sorted(set(chain_ids)),
        # what each later node's edgecut serve counted per strategy (its /metrics)
        "served": served,
        # (node, after k chain requests) whose server was killed; None when none was
        "killed": None if kill is None else {"node": kill[0], "after_chain_requests": kill[1],
                                             "done": killed is not None},
        "revived": None if revive is None else {"node": revive[0], "after_chain_requests": revive[1],
                                                "done": revived is not None},
        # chain requests whose wanted plan needed a hop with an open breaker: run on the device
        "routed_around": sum(1 for r in records if r.get("hop_down")),
        "breaker": {"failures": settings.breaker_failures, "reset_s": settings.breaker_reset_s},
        "fallbacks": sum(1 for r in records if r["status"] == "fallback"),
        "lost": sum(1 for r in records if r["status"] not in ("ok", "fallback")),
        "max_abs_diff": max((r["max_abs_diff"] for r in records if r["max_abs_diff"] is not None),
                            default=None),
    }
    result = ChainReplayResult(model_name, list(nodes), summary, records, meta, notes, info)
    (out / "replay_chain.json").write_text(json.dumps(result.to_dict(), indent=2))
    with (out / "requests.jsonl").open("w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    if plot:
        from edge.lab._chain_report import plot_chain_replay
        from partition._figure import plot_chain

        for pid in sorted(set(chain_ids)):
            plot_chain(graph, node_ms, dict(by_id[pid].labels), names,
                       f"{model_name}: plan {pid} ({', '.join(meta[pid]['nodes_used'])})",
                       out / f"chain-{pid}.png")
        plot_chain_replay(result, traces, by_id, order, out / "replay_chain.png")
    return result


def _record(strat: str, i: int, t0: float, pid: str, r: Any, reference: Mapping[str, np.ndarray],
            cand: Any, trace0: Trace, energy_model: tuple[float, float, float, float],
            estimate: list[float] | None) -> dict[str, Any]:
    p_act, p_tx, p_rx, p_idle = energy_model
    ok = r is not None and r.status in ("ok", "fallback")
    diff = None
    if ok:
        diff = max(float(np.max(np.abs(r.outputs[k] - v))) for k, v in reference.items() if k in r.outputs)
    lat = float(r.latency_ms) if r is not None else float("nan")
    dev_ms = float(r.device_ms) if r is not None else 0.0
    rate = max(trace0.rate_at(t0), 1.0)
    sent = cand.up_bytes if ok and r.status == "ok" and cand.kind != "local" else 0
    got = cand.down_bytes if ok and r.status == "ok" and cand.kind != "local" else 0
    up_ms, down_ms = sent * 8e3 / rate, got * 8e3 / rate
    rest = max(lat - dev_ms - up_ms - down_ms, 0.0)
    energy = (p_act * dev_ms + p_tx * up_ms + p_rx * down_ms + p_idle * rest) if ok else float("nan")
    rec = {"strategy": strat, "i": i, "t_trace_s": round(t0, 3), "plan": pid,
           "status": r.status if r is not None else "no result", "latency_ms": round(lat, 2),
           "device_ms": round(dev_ms, 2), "energy_mj": round(energy, 2),
           "max_abs_diff": diff}
    if estimate is not None:
        rec["estimate_mbps"] = [round(e / 1e6, 3) for e in estimate]
    return rec


def _summarise(records: list[dict[str, Any]], strategies: list[str], requests: int
               ) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    by: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in strategies}
    for r in records:
        by[r["strategy"]][r["i"]] = r
    oracle: list[tuple[float, float]] = []
    for i in range(requests):
        done = [by[s][i] for s in strategies if i in by[s] and by[s][i]["status"] in ("ok", "fallback")]
        if done:
            best = min(done, key=lambda r: r["latency_ms"])
            oracle.append((best["latency_ms"], best["energy_mj"]))
    for s in strategies + [ORACLE]:
        if s == ORACLE:
            lat = [x for x, _ in oracle]
            en = [e for _, e in oracle]
            fb = 0
        else:
            rs = [r for r in by[s].values() if r["status"] in ("ok", "fallback")]
            lat = [r["latency_ms"] for r in rs]
            en = [r["energy_mj"] for r in rs]
            fb = sum(1 for r in rs if r["status"] == "fallback")
        summary[s] = {
            "mean_ms": round(statistics.fmean(lat), 1) if lat else float("nan"),
            "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat else float("nan"),
            "energy_mj": round(statistics.fmean(en), 1) if en else float("nan"),
            "answered": len(lat), "fallbacks": fb,
        }
    return summary


__all__ = ["ChainReplayResult", "chain_replay", "parse_hop_traces", "server_counts"]
