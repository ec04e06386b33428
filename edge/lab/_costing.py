"""Costing strategies from measured components: each candidate's device and cloud legs
timed before a replay, the host's slowdown read per request, and the per-request pick of
the fixed strategies and the oracle (see ``edge.lab._replay``'s docstring)."""


from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from devices import EnergyModel
from edge.lab._emulator import Trace
from edge.offload._client import OffloadClient
from edge.offload._executor import Executor, Outcome
from edge.policy._config import PolicyConfig
from partition import LOCAL, OFFLOAD


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
