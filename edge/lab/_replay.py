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
  converges to);
- where edgecut actually ran a plan, that request's measured cost is used for that plan.

Strategies: ``local``, ``cloud`` (offload everything), ``static_split`` (Neurosurgeon:
the plan's best candidate for the window's mean bandwidth, chosen once), ``edgecut``, and
``oracle`` (per request, the best candidate given the bandwidth that request met).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile, EnergyModel, load_profile
from devices.errors import ConfigError, EdgecutError
from edge.lab._emulator import LinkEmulator, Trace, load_trace
from edge.offload._client import CircuitBreaker, OffloadClient
from edge.offload._executor import Executor, Outcome
from edge.policy._config import PolicyConfig
from edge.policy._decide import Policy
from partition import LOCAL, OFFLOAD, CutCandidate, Plan

STRATEGIES = ("local", "cloud", "static_split", "edgecut", "oracle")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CloudServer:
    """``edgecut serve`` as a subprocess on 127.0.0.1 (started, waited for, stopped)."""

    def __init__(self, repository: str | Path, *, port: int | None = None, threads: int = 1,
                 auth_keys: str | Path | None = None, startup_timeout_s: float = 120.0,
                 log_path: str | Path | None = None) -> None:
        # The server runs from the package root, so a relative path must be made absolute.
        self.repository = Path(repository).resolve()
        self.port = port or _free_port()
        self.threads = threads
        self.auth_keys = auth_keys
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CloudServer:
        import httpx

        cmd = [sys.executable, "-m", "edge.cli", "serve", "--repository", str(self.repository),
               "--port", str(self.port), "--intra-op-threads", str(self.threads),
               "--log-level", "warning"]
        cmd += ["--auth-keys", str(Path(self.auth_keys).resolve())] if self.auth_keys else ["--no-auth"]
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgecutError(f"edgecut serve exited with {self.proc.returncode} "
                                   f"(repository {self.repository})")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise EdgecutError(f"edgecut serve on {self.url} not ready after {self.startup_timeout_s} s")

    def kill(self) -> None:
        """Kill the server abruptly (a crashed cloud)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prepare_plan(model_path: str | Path, device: DeviceProfile, out_dir: str | Path, *,
                 bandwidth_bps: float = 10e6, rtt_s: float = 0.04, objective: str = "latency",
                 slo_ms: float | None = None, keep: int = 6, reuse: bool = True,
                 log: Callable[[str], None] | None = None, wire: str | None = None) -> Plan:
    """The partitioner's plan for ``model_path`` on ``device`` (this host as the cloud),
    written to ``out_dir``; an existing plan there for the same model and device (and
    ``wire`` format, when one is asked for) is reused. A new plan sends tensors as
    ``wire`` (default fp32)."""
    import partition

    out = Path(out_dir)
    if reuse and (out / "plan.json").is_file():
        plan = Plan.load(out / "plan.json")
        if (plan.device == device.name and Path(plan.model_path) == Path(model_path)
                and wire in (None, plan.info.get("wire", "fp32"))):
            return plan
    return partition.build_plan(model_path, device, "here", bandwidth_bps, rtt_s,
                                objective=objective, slo_ms=slo_ms, out_dir=out, keep=keep,
                                runs=5, measure=min(keep, 6), measure_runs=5, figure=False,
                                log=log, wire=wire or "fp32")


@dataclass(frozen=True)
class Components:
    """Measured cost components of one candidate (device ms already emulated)."""

    cut_id: str
    kind: str
    host_head_ms: float
    device_head_ms: float
    cloud_direct_ms: float
    up_bytes: int
    down_bytes: int
    #: The server's own compute within ``cloud_direct_ms`` (its Server-Timing), 0 if unknown.
    cloud_compute_ms: float = 0.0


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


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def measure_components(executor: Executor, client: OffloadClient, feeds: dict[str, np.ndarray],
                       relative_speed: float, rounds: int = 5) -> dict[str, Components]:
    """Time every candidate's device part here and its cloud leg directly (no emulator).

    Interleaved: each round runs every candidate once, and the medians over rounds are
    kept, so that a burst of load from other work on this host hits all candidates alike.
    A head is never taken as slower than the whole model it is a part of.
    """
    names = executor.output_names
    jobs: dict[str, tuple[Callable[[], object] | None, Callable[[], object] | None]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for c in executor.plan.candidates:
        if c.kind == LOCAL:
            sess = executor._session_for(executor.model_path)
            jobs[c.cut_id] = (lambda s=sess: s.run(feeds), None)
            sizes[c.cut_id] = (0, 0)
            continue
        head: Callable[[], object] | None = None
        if c.kind == OFFLOAD:
            crossing = dict(feeds)
        else:
            sess = executor._head_session(c)
            head_out = sess.run(feeds)
            crossing = {k: head_out[k] for k in c.tensors}
            head = partial(sess.run, feeds)
        crossing = c.for_wire(crossing)
        r = client.infer(c.cloud_model, crossing, names)  # loads the model, warms the socket
        sizes[c.cut_id] = (r.up_bytes, r.down_bytes)
        jobs[c.cut_id] = (head, lambda cm=c.cloud_model, x=crossing: client.infer(cm, x, names))
    head_t: dict[str, list[float]] = {k: [] for k in jobs}
    cloud_t: dict[str, list[float]] = {k: [] for k in jobs}
    compute_t: dict[str, list[float]] = {k: [] for k in jobs}
    ratio: dict[str, list[float]] = {k: [] for k in jobs}
    local_id = next(c.cut_id for c in executor.plan.candidates if c.kind == LOCAL)
    local_job = jobs[local_id][0]
    assert local_job is not None
    for _ in range(rounds):
        for cid, (head, cloud) in jobs.items():
            if head is not None and cid != local_id:
                # Each head is timed right after a whole-model run and kept as a ratio to
                # it: on a host whose load swings, the pair sees the same load.
                ref = _median_ms(local_job, 1)
                head_t[local_id].append(ref)
                t = _median_ms(head, 1)
                head_t[cid].append(t)
                ratio[cid].append(t / ref)
            if cloud is not None:
                t0 = time.perf_counter()
                r = cloud()
                cloud_t[cid].append((time.perf_counter() - t0) * 1000.0)
                server_s = getattr(r, "server_s", None)
                if server_s is not None:
                    compute_t[cid].append(server_s * 1000.0)
    if not head_t[local_id]:
        head_t[local_id] = [_median_ms(local_job, 1) for _ in range(rounds)]
    out: dict[str, Components] = {}
    local_host = statistics.median(head_t[local_id])
    for c in executor.plan.candidates:
        host = statistics.median(head_t[c.cut_id]) if head_t[c.cut_id] else 0.0
        if c.kind != LOCAL and ratio[c.cut_id]:
            host = min(statistics.median(ratio[c.cut_id]), 1.0) * local_host
        cloud = statistics.median(cloud_t[c.cut_id]) if cloud_t[c.cut_id] else 0.0
        compute = statistics.median(compute_t[c.cut_id]) if compute_t[c.cut_id] else 0.0
        out[c.cut_id] = Components(c.cut_id, c.kind, host, host / relative_speed, cloud,
                                   *sizes[c.cut_id], cloud_compute_ms=compute)
    return out


def _seed_plan_table(executor: Executor, comps: dict[str, Components], cfg: PolicyConfig,
                     clock: Callable[[], float]) -> None:
    """Start the executor's plan table from measured components, as a deployed device
    would from its profiling run (the plan's own figures were predicted with other
    threads and another host load)."""
    from edge.policy._costs import CostTable

    plan_m = replace(executor.plan, candidates=tuple(
        replace(c, head_ms=comps[c.cut_id].device_head_ms,
                tail_ms=max(comps[c.cut_id].cloud_direct_ms, 0.0))
        for c in executor.plan.candidates))
    executor.plan = plan_m
    executor.costs = CostTable(plan_m, ewma=cfg.learning.ewma, raw_inputs=executor.input_names,
                               device_layers=executor._device_layers(), clock=clock)


def _parts(comp: Components, t_start: float, slowdown: float, trace: Trace, speedup: float,
           rtt_s: float) -> tuple[float, float, float, float]:
    """(head, upload, waiting, download) ms of one candidate for a request starting at
    trace time ``t_start``: the fluid transfer times through the trace."""
    head = comp.device_head_ms * slowdown
    if comp.kind == LOCAL:
        return head, 0.0, 0.0, 0.0
    # The cloud runs on this host too: a slow spell slows its compute alike.
    cloud_ms = comp.cloud_direct_ms * slowdown
    t_up = t_start + comp.host_head_ms * slowdown / 1000.0 * speedup
    up_s = trace.send_time(t_up, comp.up_bytes * 8.0, speedup)
    t_down = t_up + (up_s + rtt_s + cloud_ms / 1000.0) * speedup
    down_s = trace.send_time(t_down, comp.down_bytes * 8.0, speedup)
    return head, up_s * 1000.0, rtt_s * 1000.0 + cloud_ms, down_s * 1000.0


# Below this the server's compute is mostly request handling: too noisy a gauge of the host.
_MIN_GAUGE_COMPUTE_MS = 5.0


def _host_slowdown(out: Outcome, comps: dict[str, Components]) -> float:
    """How much slower than its median this host ran during one request (1 = as usual).

    Measured on what the request computed: its head on the device, else the whole model
    when it fell back to the device, else the server's own compute (the cloud is this
    host too), so that requests edgecut sent away in a slow spell are not compared with
    alternatives charged at the host's usual speed.
    """
    comp = comps[out.decision.cut_id]
    local = next(c for c in comps.values() if c.kind == LOCAL)
    ratio = 1.0
    if comp.device_head_ms > 0 and out.head_ms > 0:
        ratio = out.head_ms / comp.device_head_ms
    elif ((out.fallback or out.raced) and comp.kind != LOCAL and comp.device_head_ms == 0
          and out.local_tail_ms > 0 and local.device_head_ms > 0):
        # the whole model ran on the device: after a failed cloud leg, or beside it
        ratio = out.local_tail_ms / local.device_head_ms
    elif out.server_ms > 0 and comp.cloud_compute_ms >= _MIN_GAUGE_COMPUTE_MS:
        ratio = out.server_ms / comp.cloud_compute_ms
    return min(max(ratio, 0.2), 10.0)


def _compose(parts: tuple[float, float, float, float], k: float,
             energy: EnergyModel) -> tuple[float, float]:
    """(latency ms, energy mJ) with the remote leg scaled by ``k`` (the emulator's and the
    server's measured slowness relative to the fluid model)."""
    head, up, wait, down = parts
    up, wait, down = up * k, wait * k, down * k
    return head + up + wait + down, energy.plan_mj(head, up, down, wait)


def _pick(options: dict[str, tuple[float, float]], objective: str, slo_ms: float,
          weight: float) -> str:
    if objective == "energy" and slo_ms > 0:
        ok = {k: v for k, v in options.items() if v[0] <= slo_ms}
        if ok:
            return min(ok, key=lambda k: ok[k][1])
        return min(options, key=lambda k: options[k][0])
    if objective == "weighted":
        ref_ms = max(min(v[0] for v in options.values()), 1e-6)
        ref_mj = max(min(v[1] for v in options.values()), 1e-6)
        return min(options, key=lambda k: weight * options[k][0] / ref_ms
                   + (1 - weight) * options[k][1] / ref_mj)
    return min(options, key=lambda k: options[k][0])


def _summarise(lat: list[float], mj: list[float], slo_ms: float) -> dict[str, float]:
    arr = np.asarray(lat)
    return {
        "mean_ms": round(float(arr.mean()), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "energy_mj": round(float(np.mean(mj)), 2),
        "deadline_miss_pct": round(100.0 * float(np.mean(arr > slo_ms)), 2) if slo_ms > 0 else 0.0,
    }


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
           slo_from_local: tuple[float, float] | None = None) -> ReplayResult:
    """Replay one trace (see the module docstring). ``duration_s`` is the wanted wall
    time of the run (sets ``speedup`` from the trace window when ``speedup`` is None).

    ``slo_from_local=(factor, floor_ms)`` sets the policy's SLO to ``factor`` x the
    emulated device's measured local latency (at least ``floor_ms``), once the components
    are measured: the plan's own prediction was made with other threads and host load.

    ``route`` is given the ready executor and returns the function each request goes
    through (default: the executor itself; the demo sends requests through the agent's
    local API instead). ``on_request(i, trace_time_s, outcome)`` is called after each one.
    """
    say = log or (lambda _m: None)
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
        f"device side {device_threads} thread(s); both on this host",
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
        client = OffloadClient(emu.url, timeout_s=cfg.offload.timeout_ms / 1000.0,
                               max_retries=cfg.offload.max_retries,
                               breaker=CircuitBreaker(cfg.offload.breaker_failures,
                                                      cfg.offload.breaker_reset_s))
        executor = Executor(plan, plan_dir, dev, policy=Policy(cfg), client=client,
                            compute_scale=1.0 / dev.relative_speed,
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
        _seed_plan_table(executor, comps, cfg, lambda: emu.trace_time())
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

    static_cands = [CutCandidate(c.cut_id, c.kind, c.tensors, comps[c.cut_id].device_head_ms,
                                 comps[c.cut_id].cloud_direct_ms, comps[c.cut_id].up_bytes,
                                 comps[c.cut_id].down_bytes) for c in plan.candidates]
    static = partition.choose(static_cands, mean_bw, rtt_s, dev,
                              "energy" if objective == "energy" else "latency",
                              slo if slo > 0 else None).candidate.cut_id
    offload_id = next(c.cut_id for c in plan.candidates if c.kind == OFFLOAD)
    local_id = next(c.cut_id for c in plan.candidates if c.kind == LOCAL)

    # First pass: fluid-model parts of every candidate for every request, and what
    # edgecut's own plan measured.
    rows = []
    ratios = []
    for t_start, out in outcomes:
        cid = out.decision.cut_id
        comp = comps[cid]
        slowdown = _host_slowdown(out, comps)
        parts = {k: _parts(c, t_start, slowdown, trace, speedup, rtt_s)
                 for k, c in comps.items()}
        # What each plan should cost at that moment: the bandwidth the request met, the
        # device at its measured median speed (the oracle's knowledge, see below).
        expected = parts if slowdown == 1.0 else {
            k: _parts(c, t_start, 1.0, trace, speedup, rtt_s) for k, c in comps.items()}
        rows.append((t_start, out, parts, expected))
        # (Not from raced requests: the device's run beside the cloud leg shares this
        # host with the server, which a real device would not.)
        if (comp.kind != LOCAL and not out.fallback and not out.raced
                and out.up_bytes >= 16384):
            fluid = sum(parts[cid][1:])
            if fluid > 0:
                ratios.append(out.cloud_ms / fluid)
    # The remote leg through the emulator and the server on this host is slower than the
    # fluid model (proxy CPU, HTTP, queueing); scale every modelled remote leg by the
    # median slowness edgecut's own sizeable transfers measured in this run.
    k_remote = min(max(statistics.median(ratios), 1.0), 5.0) if ratios else 1.0
    per: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in STRATEGIES}
    records = []
    hindsight: tuple[list[float], list[float]] = ([], [])
    for t_start, out, parts, expected in rows:
        cid = out.decision.cut_id
        measured_dev = out.head_ms + out.local_tail_ms
        options = {k: _compose(p, k_remote, energy) for k, p in parts.items()}
        if out.raced:
            # Raced: the first of two legs that ran at the same time, as the executor
            # charged it. The device's whole-model run, when it finished, stands for the
            # local plan; the cloud leg is not taken for its plan (on this host the
            # device's run slowed the server's compute beside it), which stays modelled.
            mine = (out.latency_ms, out.energy_mj)
            if comp.kind == OFFLOAD and out.local_tail_ms > 0:
                options[local_id] = (out.local_tail_ms, energy.plan_mj(out.local_tail_ms))
        elif out.fallback:
            # the failed leg at transmit power throughout, as the executor charges it
            mine = (out.latency_ms, energy.plan_mj(measured_dev, out.cloud_ms, 0.0, 0.0))
        else:
            _, up_f, _, dn_f = parts[cid]
            up_ms = min(up_f * k_remote, out.cloud_ms)
            dn_ms = min(dn_f * k_remote, max(out.cloud_ms - up_ms, 0.0))
            mine = (out.latency_ms, energy.plan_mj(measured_dev, up_ms, dn_ms,
                                                   max(out.cloud_ms - up_ms - dn_ms, 0.0)))
            options[cid] = mine  # measured where the strategy actually ran
        # The oracle knows the bandwidth each request met (the future, for a device) and
        # picks the plan that should be best with it; it is charged what that plan cost
        # this request, with the device and the remote leg as slow as they really were.
        # It does not also foresee the host's random stalls: the one that does (the
        # cheapest realised cost per request) is reported beside it as the hindsight bound.
        best = _pick({k: _compose(p, k_remote, energy) for k, p in expected.items()},
                     objective, slo, cfg.latency_weight)
        bound = options[_pick(options, objective, slo, cfg.latency_weight)]
        hindsight[0].append(bound[0])
        hindsight[1].append(bound[1])
        mine = (mine[0], mine[1] + probe_mj_each)
        chosen = {"local": options[local_id], "cloud": options[offload_id],
                  "static_split": options[static], "edgecut": mine, "oracle": options[best]}
        for s, (lat, mj) in chosen.items():
            per[s][0].append(lat)
            per[s][1].append(mj)
        records.append({
            "t_trace_s": round(t_start, 3),
            "bandwidth_mbps": round(trace.rate_at(t_start) / 1e6, 3),
            "met_mbps": round(trace.mean_between(t_start, t_start + max(out.cloud_ms, 1.0) / 1000 * speedup) / 1e6, 3),
            "plan": out.decision.plan, "executed": out.executed, "fallback": out.fallback,
            "explored": out.decision.explored, "probe": out.decision.probe, "raced": out.raced,
            "reason": out.decision.reason, "predicted_ms": round(out.decision.predicted_ms, 2),
            "oracle_plan": best, "link_estimate_mbps": round(out.link_bps / 1e6, 3),
            **{f"{s}_ms": round(v[0], 2) for s, v in chosen.items()},
            **{f"{s}_mj": round(v[1], 2) for s, v in chosen.items()},
        })
    summary = {s: _summarise(per[s][0], per[s][1], slo) for s in STRATEGIES}
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
        "oracle_hindsight": _summarise(hindsight[0], hindsight[1], slo),
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




def _feeds_for(executor: Executor, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    full = executor._session_for(executor.model_path)
    return {s.name: rng.standard_normal([d if d is not None else 1 for d in s.shape])
            .astype(s.dtype) for s in full.inputs}


def scenario_cloud_kill(model_path: str | Path, device: DeviceProfile, plan_dir: str | Path,
                        policy: PolicyConfig, *, before: int = 6, down: int = 8,
                        after: int = 10, breaker_reset_s: float = 1.0,
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Kill the cloud server mid-run and bring it back on the same port.

    Returns how many requests were lost (raised instead of answering; must be 0), how
    many fell back, whether every answer matched the local model's, the breaker's
    transitions, and whether offloading resumed after the cloud returned.
    """
    say = log or (lambda _m: None)
    plan = prepare_plan(model_path, device, plan_dir, log=say)
    srv = CloudServer(Path(plan_dir) / "repository").start()
    breaker = CircuitBreaker(policy.offload.breaker_failures, breaker_reset_s)
    client = OffloadClient(srv.url, timeout_s=5.0, breaker=breaker, max_retries=1)
    ex = Executor(plan, plan_dir, device, policy=Policy(policy), client=client,
                  compute_scale=1.0 / device.relative_speed, intra_op_threads=1)
    feeds = _feeds_for(ex)
    reference = ex._session_for(ex.model_path).run(feeds)
    ex.probe_link()
    records: list[dict[str, Any]] = []
    lost = 0
    wrong = 0

    def one(phase: str) -> None:
        nonlocal lost, wrong
        try:
            out = ex.infer(feeds)
        except EdgecutError as exc:  # a lost request
            lost += 1
            records.append({"phase": phase, "lost": repr(exc)})
            return
        for k, v in reference.items():
            if not np.allclose(out.outputs[k], v, rtol=1e-3, atol=1e-3):
                wrong += 1
                break
        records.append({"phase": phase, "plan": out.decision.plan, "executed": out.executed,
                        "fallback": out.fallback[:120], "latency_ms": round(out.latency_ms, 1),
                        "breaker": breaker.state})

    try:
        for _ in range(before):
            one("up")
        say("killing the cloud server")
        srv.kill()
        for _ in range(down):
            one("down")
        say("restarting the cloud server on the same port")
        srv = CloudServer(Path(plan_dir) / "repository", port=srv.port).start()
        t_back = time.monotonic()
        resumed_after = None
        for i in range(after):
            one("back")
            rec = records[-1]
            if resumed_after is None and "plan" in rec and rec["plan"] != "local" \
                    and not rec["fallback"]:
                resumed_after = i + 1
            if i == 0:
                # Let the breaker's pause run out so the half-open trial can happen.
                time.sleep(max(0.0, breaker_reset_s - (time.monotonic() - t_back)) + 0.05)
    finally:
        ex.close()
        client.close()
        srv.stop()
    remote_before = sum(1 for r in records if r["phase"] == "up" and r.get("plan") != "local")
    return {
        "requests": len(records), "lost": lost, "wrong_outputs": wrong,
        "fallbacks": sum(1 for r in records if r.get("fallback")),
        "remote_before_kill": remote_before,
        "breaker_transitions": [s for _, s in breaker.transitions],
        "breaker_recovered": breaker.state == "closed" and "open" in
        [s for _, s in breaker.transitions],
        "offload_resumed_after_requests": resumed_after,
        "records": records,
    }


def scenario_bandwidth_drop(model_path: str | Path, device: DeviceProfile,
                            plan_dir: str | Path, policy: PolicyConfig, *,
                            high_bps: float = 50e6, low_bps: float = 1e6,
                            before: int = 10, after: int = 12, rtt_s: float = 0.02,
                            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Drop the emulated link from ``high_bps`` to ``low_bps`` mid-run (through the
    emulator and a real server) and count the requests until the plan changes."""
    say = log or (lambda _m: None)
    plan = prepare_plan(model_path, device, plan_dir, log=say)
    # The step happens at trace time 1e6 s; the clock is moved there when it is time.
    trace = Trace.from_steps([(0.0, high_bps), (1e6, low_bps)], 2e6, "drop")
    records: list[dict[str, Any]] = []
    with CloudServer(Path(plan_dir) / "repository") as srv:
        emu = LinkEmulator("127.0.0.1", srv.port, up=trace, delay_s=rtt_s / 2).start()
        client = OffloadClient(emu.url, timeout_s=30.0)
        ex = Executor(plan, plan_dir, device, policy=Policy(policy), client=client,
                      compute_scale=1.0 / device.relative_speed, intra_op_threads=1,
                      clock=lambda: emu.trace_time())
        feeds = _feeds_for(ex)
        ex.warm_up()
        with OffloadClient(srv.url, timeout_s=60.0) as direct:
            comps = measure_components(ex, direct, feeds, device.relative_speed)
        _seed_plan_table(ex, comps, policy, lambda: emu.trace_time())
        ex.probe_link()
        try:
            for i in range(before + after):
                if i == before:
                    say(f"dropping the link to {low_bps / 1e6:g} Mbit/s")
                    emu.restart_clock(1e6)
                out = ex.infer(feeds)
                records.append({"i": i, "phase": "high" if i < before else "low",
                                "rate_mbps": emu.rate_now_bps() / 1e6,
                                "plan": out.decision.plan, "executed": out.executed,
                                "latency_ms": round(out.latency_ms, 1),
                                "link_mbps": round(out.link_bps / 1e6, 3),
                                "fallback": out.fallback[:100]})
        finally:
            ex.close()
            client.close()
            emu.stop()
    high_plans = [r["plan"] for r in records if r["phase"] == "high"]
    settled = high_plans[-1] if high_plans else ""
    changed_after = None
    for r in records[before:]:
        if r["plan"] != settled:
            changed_after = r["i"] - before + 1
            break
    return {"plan_at_high": settled, "plans_after_drop": [r["plan"] for r in records[before:]],
            "changed_after_requests": changed_after, "records": records}
