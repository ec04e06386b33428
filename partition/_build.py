"""``build_plan``: profile, enumerate, score, measure, choose, and write the plan folder.

Folder layout written when ``out_dir`` is given::

    plan.json
    <model>.onnx                          the whole model (the ``local`` plan's head)
    head.<cut-id>.onnx                    one head per kept split
    repository/<model>/1/model.onnx       the whole model for ``offload`` (+ config.pbtxt)
    repository/<model>.tail.<cut-id>/1/model.onnx   one Triton entry per kept tail
    profile.device.json, profile.cloud.json
    plan.png                              per-layer latency and output size, cut marked
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from devices import DeviceProfile
from devices.errors import PartitionError
from partition._by_size import by_size, size_points, whole_model_times
from partition._costmodel import CostModel
from partition._graph import LayerGraph
from partition._memory import MEASURE_BLOCK_BYTES, rss_bytes
from partition._onnx import load_model
from partition._planner import (
    OBJECTIVES,
    candidate_cuts,
    choose,
    make_candidates,
    min_cut,
    predict,
    side_times,
    with_times,
)
from partition._portable import save_model
from partition._profile import (
    Profile,
    make_session,
    profile_model,
    random_feeds,
    threads_for,
)
from partition._sources import (
    CloudSpec,
    _measured_here,
    _resolve_profile,
    resolve_cloud,
    resolve_device,
)
from partition._split import Splitter, half_precision_inputs
from partition._types import LOCAL, OFFLOAD, SPLIT, WIRE_FORMATS, CutCandidate, Plan


@dataclass(frozen=True)
class Measurement:
    """Measured times per candidate (ms, head already scaled to the device) and the
    largest difference between head-then-tail outputs and the whole model's."""

    times: dict[str, tuple[float, float]]
    max_abs_diff: float
    full_ms: float  # the whole model on this host, unscaled


def measure_candidates(
    model: onnx.ModelProto | Splitter,
    candidates: Sequence[CutCandidate],
    device_scale: float,
    threads: int,
    runs: int = 7,
    level: str = "all",
    measure_head: bool = True,
    measure_tail: bool = True,
    block: int = 12,
    anchor_ms: float | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Measurement:
    """Run each candidate's head then tail session here (batch 1, fixed threads).

    Candidates are measured in blocks whose sessions are all open at once (at most
    ``block``, fewer once they hold ``partition._memory.MEASURE_BLOCK_BYTES``), round by
    round; the whole model runs right before each candidate, and a candidate's time is
    its median ratio to that run times the whole model's median time, so load that
    comes and goes on a shared host cancels out. Head times are multiplied by ``device_scale`` (1 / relative_speed when
    this host stands in for the device). ``local`` and ``offload`` are the whole model.
    """
    splitter = model if isinstance(model, Splitter) else Splitter(model)
    full = make_session(splitter.model, threads, level)
    feeds = random_feeds(full, sizes=sizes)
    want = full.run(None, feeds)
    times: dict[str, tuple[float, float]] = {}
    ratios: dict[str, tuple[float, float]] = {}
    full_samples: list[float] = []
    max_diff = 0.0
    pending = [c for c in candidates if c.kind == SPLIT]
    while pending:
        # A block's sessions stay open together (interleaved rounds), each with its
        # arena at this size's working memory, so a block also ends once the process
        # has grown by ``MEASURE_BLOCK_BYTES`` (at least one candidate per block).
        runners, diff = _open_block(splitter, pending, block, threads, level, feeds, want)
        max_diff = max(max_diff, diff)
        ratios.update(_time_block(runners, full, feeds, runs, measure_head, measure_tail,
                                  full_samples))
        del runners  # the block's sessions and their arenas go before the next opens
    if not full_samples:
        for _ in range(2):
            full.run(None, feeds)
        for _ in range(runs):
            t0 = time.perf_counter()
            full.run(None, feeds)
            full_samples.append((time.perf_counter() - t0) * 1000.0)
    # ``anchor_ms`` lets a second, longer pass over a few candidates share the first
    # pass's whole-model time, so both passes are on one scale.
    full_ms = anchor_ms if anchor_ms is not None else statistics.median(full_samples)
    for cid, (h, t) in ratios.items():
        times[cid] = (
            h * full_ms * device_scale if measure_head else math.nan,
            t * full_ms if measure_tail else math.nan,
        )
    for c in candidates:
        if c.kind == LOCAL:
            times[c.cut_id] = (full_ms * device_scale, 0.0)
        elif c.kind == OFFLOAD:
            times[c.cut_id] = (0.0, full_ms)
    return Measurement(times, max_diff, full_ms)


def _open_block(splitter: Splitter, pending: list[CutCandidate], block: int, threads: int,
                level: str, feeds: dict[str, np.ndarray], want: list[np.ndarray]
                ) -> tuple[list[tuple[str, Any, Any, dict[str, np.ndarray]]], float]:
    """Head and tail sessions for the next candidates of ``pending`` (taken from it), each
    checked once against the whole model: up to ``block`` of them, fewer once the
    process has grown by ``MEASURE_BLOCK_BYTES``."""
    start = rss_bytes()
    runners = []
    max_diff = 0.0
    while pending and len(runners) < block:
        c = pending.pop(0)
        head, tail = splitter.split(c.tensors)
        hs, ts = make_session(head, threads, level), make_session(tail, threads, level)
        mids = dict(zip([o.name for o in hs.get_outputs()], hs.run(None, feeds)))
        tf = {i.name: mids.get(i.name, feeds.get(i.name)) for i in ts.get_inputs()}
        got = ts.run(None, tf)
        for a, b in zip(got, want):
            max_diff = max(max_diff, float(np.max(np.abs(a - b))))
        # ONNX Runtime allocates its memory-pattern block on a session's second run
        # (the arena then holds about twice the first run's): run both once more, so
        # the process's size below is what the pair holds while it is timed.
        hs.run(None, feeds)
        ts.run(None, tf)
        runners.append((c.cut_id, hs, ts, tf))
        now = rss_bytes()
        if start is not None and now is not None and now - start > MEASURE_BLOCK_BYTES:
            break
    return runners, max_diff


def _time_block(runners: list[tuple[str, Any, Any, dict[str, np.ndarray]]], full: Any,
                feeds: dict[str, np.ndarray], runs: int, measure_head: bool,
                measure_tail: bool, full_samples: list[float]
                ) -> dict[str, tuple[float, float]]:
    """Median head and tail times of a block as ratios to the whole model's run right
    before each (``full_samples`` gets those runs)."""
    samples: dict[str, tuple[list[float], list[float]]] = {r[0]: ([], []) for r in runners}
    for r in range(runs + 1):
        for cid, hs, ts, tf in runners:
            # The whole model runs right before each candidate: times are kept as
            # ratios to it, so load that comes and goes on a shared host cancels.
            t0 = time.perf_counter()
            full.run(None, feeds)
            t1 = time.perf_counter()
            if measure_head:
                hs.run(None, feeds)
            t2 = time.perf_counter()
            if measure_tail:
                ts.run(None, tf)
            t3 = time.perf_counter()
            if r > 0:  # round 0 warms up
                f_ms = (t1 - t0) * 1000.0
                full_samples.append(f_ms)
                samples[cid][0].append((t2 - t1) * 1000.0 / f_ms)
                samples[cid][1].append((t3 - t2) * 1000.0 / f_ms)
    return {cid: (statistics.median(h), statistics.median(t)) for cid, (h, t) in samples.items()}


def rescale(candidates: Sequence[CutCandidate], device_factor: float,
            cloud_factor: float) -> list[CutCandidate]:
    """Candidates with device times multiplied by ``device_factor`` and cloud times by
    ``cloud_factor``: how an observed whole-model time (the device running the model
    locally, the cloud answering an offload) corrects every prediction at once."""
    if device_factor <= 0 or cloud_factor <= 0:
        raise PartitionError("rescale factors must be > 0")
    return [
        replace(c, head_ms=c.head_ms * device_factor, tail_ms=c.tail_ms * cloud_factor,
                head_energy_mj=c.head_energy_mj * device_factor)
        for c in candidates
    ]


def sweep_top(candidates: Sequence[CutCandidate], device: DeviceProfile, rtt_s: float,
              per_point: int = 3, points: int = 16) -> list[CutCandidate]:
    """The splits that rank in the top ``per_point`` by predicted latency or energy at
    some bandwidth from 0.5 Mbit/s to 10 Gbit/s: the only ones any link could pick."""
    splits = [c for c in candidates if c.kind == SPLIT]
    picked: dict[str, CutCandidate] = {}
    for i in range(points):
        bw = 0.5e6 * (2e4 ** (i / (points - 1)))
        for k in (0, 1):
            ranked = sorted(splits, key=lambda c: predict(c, bw, rtt_s, device)[k])
            for c in ranked[:per_point]:
                picked.setdefault(c.cut_id, c)
    return list(picked.values())


# Fractions of the whole model's time on a side (head: local, tail: offload) that the
# measured splits should reach, for the per-side maps to have a point at every scale.
COVER_FRACTIONS = (0.5, 0.25, 0.125)


def coverage_picks(candidates: Sequence[CutCandidate], picked: Sequence[CutCandidate],
                   head: bool, tail: bool) -> list[CutCandidate]:
    """Splits to measure besides ``picked`` so that each measured side's map
    (``partition._by_size._calibration``) has a measured point near every scale of the
    candidates' times: for each fraction in ``COVER_FRACTIONS`` of the whole model's
    predicted time on that side, when no picked candidate lies within a factor of
    sqrt(2) of it, the split nearest to it (by ratio), if one lies within that factor.

    The splits picked for decisions (:func:`sweep_top`) bunch where links choose, often
    mid-model and near the end; a head that ends early was then corrected by the ratio of
    a head four times its size, though ONNX Runtime speeds early, high-resolution layers
    up more than late ones (PP-OCR's detector: such heads 26-34% high at 960x544 while the
    whole model was within 8%). The fractions halve down to an eighth; the split with the
    least time on the side is measured too (a session's fixed overhead: PP-OCR's
    detector's first convolution, 1.4 ms as a head, was predicted at 0.9 ms)."""
    out: list[CutCandidate] = []
    splits = [c for c in candidates if c.kind == SPLIT]
    whole = {c.kind: c for c in candidates if c.kind in (LOCAL, OFFLOAD)}
    near_enough = math.log(math.sqrt(2.0))
    for on, kind, side in ((head, LOCAL, "head_ms"), (tail, OFFLOAD, "tail_ms")):
        if not on or kind not in whole:
            continue
        times = {c.cut_id: float(getattr(c, side)) for c in candidates}
        total = times[whole[kind].cut_id]
        if total <= 0:
            continue
        for f in COVER_FRACTIONS:
            target = f * total
            have = [c for c in (*picked, *out) if c.kind == SPLIT]
            if any(_log_off(times[c.cut_id], target) <= near_enough for c in have):
                continue
            off, near = min(((_log_off(times[c.cut_id], target), c) for c in splits),
                            key=lambda pair: pair[0], default=(math.inf, None))
            if near is not None and off <= near_enough:
                out.append(near)
        # and the split with the least time there: below the smallest measured point
        # the map is a line through (0, 0), which misses a session's fixed overhead
        smallest = min((c for c in splits if times[c.cut_id] > 0),
                       key=lambda c: times[c.cut_id], default=None)
        if smallest is not None and smallest not in (*picked, *out):
            out.append(smallest)
    return out


def _log_off(t: float, target: float) -> float:
    """How far ``t`` is from ``target``, as the absolute log of their ratio."""
    return abs(math.log(t / target)) if t > 0 and target > 0 else math.inf


def _correct(pred: list[float], meas: list[float]) -> tuple[float, float]:
    """Least-squares ``measured = a * predicted + b`` (a ratio when too few points)."""
    if not pred:
        return 1.0, 0.0
    if len(pred) >= 3 and max(pred) > min(pred):
        a, b = np.polyfit(pred, meas, 1)
        if a > 0 and b >= 0:
            return float(a), float(b)
    ratios = [m / p for p, m in zip(pred, meas) if p > 0]
    return (float(statistics.median(ratios)) if ratios else 1.0), 0.0


def build_plan(
    model_path: str | Path,
    device: DeviceProfile | str | Path,
    cloud: CloudSpec,
    bandwidth_bps: float,
    rtt_s: float,
    objective: str = "latency",
    slo_ms: float | None = None,
    out_dir: str | Path | None = None,
    keep: int | None = 8,
    *,
    device_profile: Profile | dict | str | Path | None = None,
    runs: int = 10,
    measure: int = 8,
    measure_runs: int = 7,
    cloud_model: str | None = None,
    compression: Sequence[str] = (),
    figure: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    measured_mode: str = "fit",
    wire: str = "fp32",
    shapes: Sequence[Mapping[str, int]] | None = None,
) -> Plan:
    """Plan how to split the model at ``model_path`` between ``device`` and ``cloud``.

    ``cloud`` is the cloud service's URL (its ``/v2/models/{m}/profile`` extension is
    asked for per-node times), a recorded cloud profile JSON file or dict, or ``"here"``.
    The device is profiled on this host (times divided by its ``relative_speed``) unless
    ``device_profile`` gives a recorded profile. Candidates: ``local``, ``offload``, the
    block-boundary cuts and cheaper in-branch cuts, and the exact min-cut optimum for the
    link under both objectives. Up to ``measure`` of the splits that could win at some
    bandwidth are run for real (head then tail), and the splits that give each side's
    correction a measured point at every scale (:func:`coverage_picks`); a line fitted
    per side through their measured times corrects every candidate's prediction (``measured_mode="fit"``), or
    the measured times replace the predictions where there are any (``"raw"``).
    The plan keeps ``local``, ``offload``, the chosen cut and the ``keep`` best splits
    (all of them when ``keep`` is None); with ``out_dir`` their models are written.
    ``wire="fp16"`` sends float32 crossing tensors (and the offloaded input) at half
    precision: the cloud models take FP16 inputs and cast them back, and every byte count
    and choice is made for the halved transfers.
    ``shapes``: sizes of the model's dynamic dims to profile at (``[{"H": 640, "W": 640},
    ...]``; the first is the reference the plan is chosen at); by default the reference
    sizes, half and twice them. Every candidate gets its bytes as expressions and its times
    per profiled size (see :mod:`partition._sizes`); ``info["sizes"]`` records them.
    """
    say = log or (lambda _msg: None)
    if objective not in OBJECTIVES:
        raise PartitionError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if bandwidth_bps <= 0 or not math.isfinite(bandwidth_bps):
        raise PartitionError(f"bandwidth must be a positive number of bit/s, got {bandwidth_bps}")
    if rtt_s < 0:
        raise PartitionError(f"rtt must be >= 0 s, got {rtt_s}")
    if wire not in WIRE_FORMATS:
        raise PartitionError(f"wire format must be one of {', '.join(WIRE_FORMATS)}, got {wire!r}")
    dev = resolve_device(device)
    path = Path(model_path)
    model = load_model(path)
    name = cloud_model or path.stem
    given = [dict(p) for p in shapes] if shapes else []
    graph = LayerGraph.from_model(model, sizes=given[0] if given else None)
    points = size_points(graph, given)
    ref_env = graph.env(points[0], 1)
    cuts = candidate_cuts(graph)
    if not cuts:
        raise PartitionError(
            f"model '{path}': no valid cut between its inputs and outputs "
            f"({len(graph.nodes)} compute node(s)); nothing to split"
        )
    n_threads = threads or threads_for(dev)
    if device_profile is None:
        say(f"profiling {name} here for {dev.name} (times / relative_speed {dev.relative_speed:g})")
        dprof = profile_model(graph.model, dev, runs=runs, model_name=name, threads=n_threads,
                              sizes=ref_env)
    else:
        dprof = _resolve_profile(device_profile)
    say("cloud profile: " + str(cloud))
    cprof = resolve_cloud(cloud, graph.model, name, runs, threads=n_threads, sizes=ref_env)

    cm_dev = CostModel.fit(graph, dprof.nodes, dev.name)
    cm_cloud = CostModel.fit(graph, cprof.nodes, cprof.device or "cloud")
    dev_ms = side_times(graph, dprof.nodes, dprof.total_ms, cm_dev)
    cloud_ms = side_times(graph, cprof.nodes, cprof.total_ms, cm_cloud)

    t0 = time.perf_counter()
    optima = {obj: min_cut(graph, dev_ms, cloud_ms, bandwidth_bps, rtt_s, dev, obj, wire)
              for obj in OBJECTIVES}
    plan_ms = (time.perf_counter() - t0) * 1000.0 / len(OBJECTIVES)
    extra_cuts = [m.tensors for m in optima.values() if m.kind == SPLIT]
    candidates = make_candidates(graph, list(cuts) + extra_cuts, dev_ms, cloud_ms, wire)

    splitter = Splitter(graph.model)
    measured: dict[str, tuple[float, float]] = {}
    anchors: dict[tuple, float] = {}
    can_head = _measured_here(dprof)
    can_tail = _measured_here(cprof)
    if measure > 0 and (can_head or can_tail):
        top = sweep_top(candidates, dev, rtt_s)
        pick = [c for c in candidates if c.kind != SPLIT]
        pick += [c for c in candidates if c.cut_id in {m for m in _optimum_ids(candidates, optima)}]
        for c in top:
            if len([p for p in pick if p.kind == SPLIT]) >= measure:
                break
            if c not in pick:
                pick.append(c)
        pick += coverage_picks(candidates, pick, can_head, can_tail)
        if len(points) > 1:
            # One scale for every size's measurements (see whole_model_times).
            envs = [graph.env(p, 1) for p in points]
            say(f"timing the whole model at {len(envs)} sizes in turn")
            anchors = dict(zip(map(_key, envs), whole_model_times(  # noqa: B905
                splitter.model, envs, n_threads, dev.graph_optimization, measure_runs)))
        say(f"measuring {len(pick)} candidates (head then tail sessions, {measure_runs} runs)")
        measured = measure_candidates(
            splitter, pick, dprof.scale, n_threads, measure_runs, dev.graph_optimization,
            measure_head=can_head, measure_tail=can_tail, sizes=ref_env,
            anchor_ms=anchors.get(_key(ref_env)),
        ).times
    candidates = _apply_measurements(candidates, measured, can_head, can_tail, measured_mode)
    measure_at = None
    if measured:
        picked = [c for c in candidates if c.cut_id in measured]

        def measure_at(env: dict[str, int]) -> dict[str, tuple[float, float]]:
            say(f"measuring {len(picked)} candidates at {env}")
            return measure_candidates(
                splitter, picked, dprof.scale, n_threads, measure_runs, dev.graph_optimization,
                measure_head=can_head, measure_tail=can_tail, sizes=env,
                anchor_ms=anchors.get(_key(env)),
            ).times

    size_info = by_size(graph, candidates, points, dprof, cprof, dev, cloud, name,
                         runs, n_threads, device_profile is None, wire, say, measure_at,
                         (can_head, can_tail), measured)
    candidates = size_info.pop("candidates")

    best = choose(candidates, bandwidth_bps, rtt_s, dev, objective, slo_ms)
    ranked = sorted(
        (c for c in candidates if c.kind == SPLIT),
        key=lambda c: predict(c, bandwidth_bps, rtt_s, dev)[0 if objective == "latency" else 1],
    )
    kept_ids = {LOCAL, OFFLOAD, best.candidate.cut_id}
    kept_ids.update(c.cut_id for c in (ranked if keep is None else ranked[:keep]))
    kept = []
    for c in candidates:
        if c.cut_id not in kept_ids:
            continue
        lat, en = predict(c, bandwidth_bps, rtt_s, dev)
        kept.append(replace(c, head_energy_mj=_head_energy(c, dev),
                            extra={**c.extra, "predicted_latency_ms": lat, "predicted_energy_mj": en}))

    if compression:
        from partition._compress import evaluate_compression

        kept = [
            replace(c, extra={**c.extra, "compression": evaluate_compression(splitter, c.tensors, compression)})
            if c.kind == SPLIT else c
            for c in kept
        ]

    inputs = {
        t: {"shape": list(graph.tensors[t].shape), "dtype": str(graph.tensors[t].dtype),
            "dims": list(graph.tensors[t].dims)}
        for t in graph.inputs
    }
    info: dict[str, Any] = {
        "min_cut_ms": plan_ms,
        "min_cut": {obj: {"kind": m.kind, "tensors": list(m.tensors), "cost": m.cost} for obj, m in optima.items()},
        "reason": best.reason,
        "predicted_latency_ms": best.latency_ms,
        "predicted_energy_mj": best.energy_mj,
        "cost_model": {"device": cm_dev.summary(), "cloud": cm_cloud.summary()},
        "device_profile": {"source": dprof.source, "emulated": dprof.emulated, "scale": dprof.scale,
                           "threads": dprof.threads, "total_ms": dprof.total_ms},
        "cloud_profile": {"source": cprof.source, "total_ms": cprof.total_ms, "providers": list(cprof.providers)},
        "candidates_scored": len(candidates),
        "measured": sorted(measured),
        "slo_ms": slo_ms,
        "outputs": list(graph.outputs),
        "wire": wire,
        "sizes": size_info,
    }
    plan = Plan(
        model=name, model_path=str(path.resolve()), device=dev.name, candidates=tuple(kept),
        chosen=best.candidate.cut_id, link={"bandwidth_bps": float(bandwidth_bps), "rtt_s": float(rtt_s)},
        objective=objective, inputs=inputs, info=info,
    )
    if out_dir is not None:
        plan = write_plan_dir(plan, splitter, Path(out_dir), dprof, cprof, graph, dev_ms, figure,
                              wire)
    return plan


def _key(env: Mapping[str, int]) -> tuple:
    return tuple(sorted(env.items()))


def _optimum_ids(candidates: Sequence[CutCandidate], optima: dict) -> list[str]:
    ids = []
    for m in optima.values():
        for c in candidates:
            if c.kind == SPLIT and set(c.tensors) == set(m.tensors):
                ids.append(c.cut_id)
    return ids


def _apply_measurements(candidates: list[CutCandidate], measured: dict[str, tuple[float, float]],
                        head_ok: bool, tail_ok: bool, mode: str = "fit") -> list[CutCandidate]:
    """Bring measured session times into the candidates.

    ``fit`` (the default): every candidate, measured or not, gets its profile-based time
    corrected by the per-side line fitted through the measured candidates
    (``measured = a * predicted + b``; b is the session's own overhead). One noisy
    measurement then cannot make a head that holds 99.9% of the model look 20% cheaper
    than the whole model, which on a shared host happens. ``raw``: measured candidates
    take their measured times as they are; the others get the fitted correction.
    """
    if mode not in ("fit", "raw"):
        raise PartitionError(f"measured-times mode must be 'fit' or 'raw', got {mode!r}")
    if not measured:
        return candidates
    by_id = {c.cut_id: c for c in candidates}
    hp, hm, tp, tm = [], [], [], []
    for cid, (h, t) in measured.items():
        c = by_id[cid]
        if head_ok and c.kind != OFFLOAD:
            hp.append(c.head_ms)
            hm.append(h)
        if tail_ok and c.kind != LOCAL:
            tp.append(c.tail_ms)
            tm.append(t)
    ha, hb = _correct(hp, hm)
    ta, tb = _correct(tp, tm)
    out = []
    for c in candidates:
        if c.cut_id in measured and mode == "fit":
            h = max(0.0, ha * c.head_ms + hb) if c.kind != OFFLOAD and head_ok else c.head_ms
            t = max(0.0, ta * c.tail_ms + tb) if c.kind != LOCAL and tail_ok else c.tail_ms
            mh, mt = measured[c.cut_id]
            out.append(with_times(c, h, t, measured=True, corrected=True,
                                  measured_head_ms=mh if head_ok else None,
                                  measured_tail_ms=mt if tail_ok else None))
        elif c.cut_id in measured:
            h, t = measured[c.cut_id]
            out.append(with_times(c, h if head_ok else c.head_ms, t if tail_ok else c.tail_ms,
                                  measured=True))
        else:
            h = max(0.0, ha * c.head_ms + hb) if c.kind != OFFLOAD and head_ok else c.head_ms
            t = max(0.0, ta * c.tail_ms + tb) if c.kind != LOCAL and tail_ok else c.tail_ms
            out.append(with_times(c, h, t, measured=False, corrected=True))
    return out


def _head_energy(c: CutCandidate, dev: DeviceProfile) -> float:
    from partition._planner import active_power_w

    return active_power_w(dev) * c.head_ms


def write_plan_dir(plan: Plan, splitter: Splitter, out: Path, dprof: Profile, cprof: Profile,
                   graph: LayerGraph, dev_ms: dict[str, float], figure: bool = True,
                   wire: str = "fp32") -> Plan:
    """Write the models, profiles, plan.json and figure; return the plan with file names.

    Under ``wire="fp16"`` each cloud model takes its float32 crossing tensors as FP16
    (listed per candidate in ``extra["wire_fp16"]``, which the executor casts); the
    offload goes to ``<model>.fp16``, and ``<model>`` itself is still served as it is.
    """
    from partition.triton import write_repository_entry

    out.mkdir(parents=True, exist_ok=True)
    repo = out / "repository"
    name = plan.model
    full_name = f"{name}.onnx"
    save_model(splitter.model, out / full_name)

    def serve(cloud_name: str, model: onnx.ModelProto, c: CutCandidate, **files: str
              ) -> CutCandidate:
        extra = dict(c.extra)
        if wire == "fp16":
            model, halved = half_precision_inputs(model, c.tensors)
            extra["wire_fp16"] = list(halved)
        write_repository_entry(repo, cloud_name, model)
        return replace(c, tail_model=f"repository/{cloud_name}/1/model.onnx",
                       cloud_model=cloud_name, extra=extra, **files)

    new = []
    for c in plan.candidates:
        if c.kind == LOCAL:
            new.append(replace(c, head_model=full_name))
        elif c.kind == OFFLOAD:
            cloud_name = name
            if wire == "fp16":  # the whole model stays servable to clients that send fp32
                write_repository_entry(repo, name, splitter.model)
                cloud_name = f"{name}.fp16"
            new.append(serve(cloud_name, splitter.model, c))
        else:
            head, tail = splitter.split(c.tensors)
            head_file = f"head.{c.cut_id}.onnx"
            save_model(head, out / head_file)
            new.append(serve(f"{name}.tail.{c.cut_id}", tail, c, head_model=head_file))
    plan = replace(plan, candidates=tuple(new))
    dprof.save(out / "profile.device.json")
    cprof.save(out / "profile.cloud.json")
    if figure:
        from partition._figure import plot_plan

        plot_plan(graph, dev_ms, plan, out / "plan.png")
    plan.save(out / "plan.json")
    return plan
