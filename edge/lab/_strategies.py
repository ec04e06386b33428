"""Costing every strategy of one replay, request by request: a pure function.

``cost_strategies`` takes what a replay produced (edgecut's outcomes, each with the trace
time its request started), the measured components of every candidate and the trace,
and returns the per-strategy summaries. Nothing in it runs a model or opens a socket,
so the judge itself is unit-tested on a synthetic trace with hand-computed costs
(tests/edge/test_replay_costing.py).

Per request:

- every candidate's cost is modelled: its device part (``device_head_ms`` x the host's
  slowdown during that request), its upload and download through the trace from the
  instant each would start (the fluid time the token bucket converges to), the round
  trip and the cloud's compute (``cloud_direct_ms``, with the server's own compute
  scaled to the cloud profile's, x the slowdown); the remote leg is then scaled by
  ``k_remote``, the median slowness of edgecut's own sizeable, plain (not raced, not
  fallen back) transfers over that model in the same run, clipped to [1, 5];
- where edgecut ran a plan plainly, that request's measured cost replaces the model for
  that plan; a raced request is charged what the executor charged it, and the device's
  whole-model run beside an offload stands for the local plan; a fallback is charged its
  failed leg at transmit power throughout;
- the oracle picks, knowing the bandwidth the request met and the device at its median
  speed, the plan that is best for the objective, and is charged what that plan cost the
  request; the hindsight bound takes the cheapest realised cost;
- probes edgecut sent during the run are charged to it, shared out over the requests.

Strategies: ``local``, ``cloud``, ``static_split`` (Neurosurgeon's one choice,
``static_id``), ``edgecut``, ``oracle``; and every candidate as a fixed strategy
(``fixed``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from devices import EnergyModel
from edge.lab._costing import (
    Components,
    _compose,
    _host_slowdown,
    _parts,
    _pick,
    _summarise,
)
from edge.lab._emulator import Trace
from edge.offload._executor import Outcome
from partition import LOCAL, OFFLOAD

STRATEGIES = ("local", "cloud", "static_split", "edgecut", "oracle")
# A transfer this large says how slow the remote leg really is against the fluid model;
# smaller ones are mostly round trip and HTTP.
_MIN_GAUGE_BYTES = 16384


@dataclass(frozen=True)
class CostedRun:
    """Per-strategy summaries (``mean_ms``, ``p95_ms``, ``energy_mj``,
    ``deadline_miss_pct``), every candidate as a fixed strategy, the hindsight bound,
    per-request records and the remote leg's measured slowness."""

    summary: dict[str, dict[str, float]]
    fixed: dict[str, dict[str, float]]
    hindsight: dict[str, float]
    records: list[dict[str, Any]]
    k_remote: float


def scaled_components(comps: Mapping[str, Components], cloud_scale: float
                      ) -> dict[str, Components]:
    """Components with the server's own compute put at ``cloud_scale`` x what this host
    took (a GPU-class cloud: ``edge.lab._cloudgpu``); transfers and HTTP unchanged."""
    if cloud_scale == 1.0:
        return dict(comps)
    return {k: replace(c, cloud_direct_ms=max(c.cloud_direct_ms - c.cloud_compute_ms
                                              * (1.0 - cloud_scale), 0.0),
                       cloud_compute_ms=c.cloud_compute_ms * cloud_scale)
            for k, c in comps.items()}


def cost_strategies(outcomes: Sequence[tuple[float, Outcome]],
                    comps: Mapping[str, Components], trace: Trace, *, energy: EnergyModel,
                    objective: str, slo_ms: float, latency_weight: float, speedup: float,
                    rtt_s: float, static_id: str, probe_mj_each: float = 0.0,
                    cloud_scale: float = 1.0) -> CostedRun:
    """Cost every strategy on edgecut's request sequence (see the module docstring).

    ``comps`` are as measured on this host (the server's compute at host speed); the
    outcomes' cloud times are already at the cloud profile's speed (the executor's
    ``cloud_compute_scale``), their ``server_ms`` at host speed (the host's gauge)."""
    model = scaled_components(comps, cloud_scale)
    local_id = next(k for k, c in comps.items() if c.kind == LOCAL)
    offload_id = next(k for k, c in comps.items() if c.kind == OFFLOAD)
    rows = []
    ratios = []
    for t_start, out in outcomes:
        cid = out.decision.cut_id
        slowdown = _host_slowdown(out, dict(comps))
        parts = {k: _parts(c, t_start, slowdown, trace, speedup, rtt_s)
                 for k, c in model.items()}
        expected = parts if slowdown == 1.0 else {
            k: _parts(c, t_start, 1.0, trace, speedup, rtt_s) for k, c in model.items()}
        rows.append((t_start, out, parts, expected))
        if (comps[cid].kind != LOCAL and not out.fallback and not out.raced
                and out.up_bytes >= _MIN_GAUGE_BYTES):
            fluid = sum(parts[cid][1:])
            if fluid > 0:
                ratios.append(out.cloud_ms / fluid)
    k_remote = min(max(statistics.median(ratios), 1.0), 5.0) if ratios else 1.0
    per: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in STRATEGIES}
    fixed: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in comps}
    hindsight: tuple[list[float], list[float]] = ([], [])
    records = []
    for t_start, out, parts, expected in rows:
        cid = out.decision.cut_id
        options = {k: _compose(p, k_remote, energy) for k, p in parts.items()}
        measured_dev = out.head_ms + out.local_tail_ms
        if out.raced:
            mine = (out.latency_ms, out.energy_mj)
            if comps[cid].kind == OFFLOAD and out.local_tail_ms > 0:
                options[local_id] = (out.local_tail_ms, energy.plan_mj(out.local_tail_ms))
        elif out.fallback:
            mine = (out.latency_ms, energy.plan_mj(measured_dev, out.cloud_ms, 0.0, 0.0))
        else:
            _, up_f, _, dn_f = parts[cid]
            up_ms = min(up_f * k_remote, out.cloud_ms)
            dn_ms = min(dn_f * k_remote, max(out.cloud_ms - up_ms, 0.0))
            mine = (out.latency_ms, energy.plan_mj(measured_dev, up_ms, dn_ms,
                                                   max(out.cloud_ms - up_ms - dn_ms, 0.0)))
            options[cid] = mine
        best = _pick({k: _compose(p, k_remote, energy) for k, p in expected.items()},
                     objective, slo_ms, latency_weight)
        # The bound is the cheapest realised cost, so a raced or fallen-back request's own
        # realised cost (which no single plan's row holds) is one of its options too.
        realised = {**options, "(edgecut as run)": mine}
        bound = realised[_pick(realised, objective, slo_ms, latency_weight)]
        hindsight[0].append(bound[0])
        hindsight[1].append(bound[1])
        mine = (mine[0], mine[1] + probe_mj_each)
        chosen = {"local": options[local_id], "cloud": options[offload_id],
                  "static_split": options[static_id], "edgecut": mine,
                  "oracle": options[best]}
        for s, (lat, mj) in chosen.items():
            per[s][0].append(lat)
            per[s][1].append(mj)
        for k, (lat, mj) in options.items():
            fixed[k][0].append(lat)
            fixed[k][1].append(mj)
        records.append({
            "t_trace_s": round(t_start, 3),
            "bandwidth_mbps": round(trace.rate_at(t_start) / 1e6, 3),
            "met_mbps": round(trace.mean_between(
                t_start, t_start + max(out.cloud_ms, 1.0) / 1000 * speedup) / 1e6, 3),
            "plan": out.decision.plan, "executed": out.executed, "fallback": out.fallback,
            "explored": out.decision.explored, "probe": out.decision.probe,
            "raced": out.raced, "reason": out.decision.reason,
            "predicted_ms": round(out.decision.predicted_ms, 2),
            "oracle_plan": best, "link_estimate_mbps": round(out.link_bps / 1e6, 3),
            **{f"{s}_ms": round(v[0], 2) for s, v in chosen.items()},
            **{f"{s}_mj": round(v[1], 2) for s, v in chosen.items()},
        })
    summary = {s: _summarise(per[s][0], per[s][1], slo_ms) for s in STRATEGIES}
    return CostedRun(summary, {k: _summarise(v[0], v[1], slo_ms) for k, v in fixed.items()},
                     _summarise(hindsight[0], hindsight[1], slo_ms), records, k_remote)
