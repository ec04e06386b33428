"""A plan at several input sizes: which sizes of a model's dynamic dims to profile, and
every candidate's byte expressions and head and tail times at each of them (the policy
interpolates between them; :mod:`partition._sizes`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from devices import DeviceProfile
from devices.errors import PartitionError
from partition._graph import LayerGraph
from partition._planner import side_times
from partition._profile import Profile, profile_model
from partition._sources import HERE, CloudSpec, _measured_here, resolve_cloud
from partition._types import LOCAL, OFFLOAD, CutCandidate

__all__ = ["by_size", "size_points", "whole_model_times"]


def size_points(graph: LayerGraph, given: list[dict[str, int]]) -> list[dict[str, int]]:
    """Sizes of the non-batch symbols to profile at, the reference first: the ones
    given (or the defaults), then midpoints where two are more than ``MAX_STEP`` apart
    (:func:`partition._sizes.fill_gaps`)."""
    from partition._sizes import default_points, fill_gaps

    free = [s for s in graph.symbols if s not in graph.batch_symbols]
    if not free:
        return [{}]
    ref = {k: graph.sizes[k] for k in free}
    if not given:
        return fill_gaps(default_points(ref))
    points = []
    for p in given:
        env = dict(ref)
        for k, v in p.items():
            sym = graph.renamed.get(k, k)
            if sym not in graph.symbols:
                raise PartitionError(
                    f"shapes: '{k}' is not a dynamic dim of the model; its dims are "
                    f"{', '.join(graph.symbols)}"
                )
            if sym in free:
                env[sym] = int(v)
        if env not in points:
            points.append(env)
    return fill_gaps(points)


def by_size(graph: LayerGraph, candidates: list[CutCandidate], points: list[dict[str, int]],
             dprof: Profile, cprof: Profile,
             dev: DeviceProfile, cloud: CloudSpec, name: str, runs: int, threads: int,
             profile_device: bool, wire: str, say: Callable[[str], None],
             measure_at: Callable[[dict[str, int]], dict[str, tuple[float, float]]] | None = None,
             sides: tuple[bool, bool] = (False, False),
             measured: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Every candidate's byte expressions and its times at each profiled size (the
    reference's from the plan's own candidates, the others profiled here). Where the plan
    measured candidates at the reference, ``measure_at`` measures the same ones at each
    size, and a line per side through them corrects every candidate there, as at the
    reference; otherwise each candidate's reference correction carries as a ratio."""
    from partition._sizes import size_rows

    size_expr = " + ".join(
        f"{graph.tensors[t].bytes_expr()}/{graph.tensors[t].dtype.itemsize}" for t in graph.inputs)
    down_expr = graph.cut_bytes_expr(graph.outputs)
    heads: dict[str, list[float]] = {c.cut_id: [c.head_ms] for c in candidates}
    kinds = {c.cut_id: c.kind for c in candidates}
    tails: dict[str, list[float]] = {c.cut_id: [c.tail_ms] for c in candidates}
    if measured and measure_at is not None and len(points) > 1:
        # The times at every size, the reference's included, come from one rule (the
        # profile's prediction at that size put through one map per side, _calibration):
        # the times between sizes are interpolated, and a reference corrected
        # otherwise (the plan's line, ``measured = a * predicted + b``) gave every head
        # the line's intercept at the reference only (a 0.8 ms head predicted 19 ms
        # between the reference and the next size).
        pred0 = {c.cut_id: (float(c.extra.get("predicted_head_ms", c.head_ms)),
                            float(c.extra.get("predicted_tail_ms", c.tail_ms))) for c in candidates}
        rh, rt = _side_maps(pred0, measured, kinds, sides)
        for c in candidates:
            if sides[0] and c.kind != OFFLOAD:
                heads[c.cut_id] = [rh(pred0[c.cut_id][0])]
            if sides[1] and c.kind != LOCAL:
                tails[c.cut_id] = [rt(pred0[c.cut_id][1])]
    measured_points = [points[0]]
    cloud_here = str(cloud) == HERE or _measured_here(cprof)
    notes = []
    for p in points[1:]:
        if not profile_device:
            notes.append("device profile given: other sizes not profiled")
            break
        env = graph.env(p, 1)
        say(f"profiling {name} at {p}")
        try:
            dp = profile_model(graph.model, dev, runs=runs, model_name=name,
                               threads=threads, sizes=env)
            if cloud_here:
                cp = resolve_cloud(HERE, graph.model, name, runs, threads, env)
            else:
                cp = None
        except Exception as exc:  # noqa: BLE001 - a size the model rejects is skipped, said
            notes.append(f"size {p} not profiled: {exc}"[:300])
            continue
        dms = side_times(graph, dp.nodes, dp.total_ms)
        if cp is not None:
            cms = side_times(graph, cp.nodes, cp.total_ms)
        else:  # a remote cloud profiled at the reference only: scale it as the device's work
            ref_dev = side_times(graph, dprof.nodes, dprof.total_ms)
            ref_cloud = side_times(graph, cprof.nodes, cprof.total_ms)
            cms = {n: ref_cloud[n] * (dms[n] / ref_dev[n] if ref_dev[n] > 0 else 1.0) for n in graph.order}
            notes.append(f"cloud times at {p} scaled from the reference by the device's per-node ratio")
        total_dev, total_cloud = sum(dms.values()), sum(cms.values())
        pred: dict[str, tuple[float, float]] = {}
        for c in candidates:
            if c.kind == LOCAL:
                pred[c.cut_id] = (total_dev, 0.0)
            elif c.kind == OFFLOAD:
                pred[c.cut_id] = (0.0, total_cloud)
            else:
                s = graph.device_side(c.tensors)
                pred[c.cut_id] = (sum(dms[n] for n in s),
                                  max(0.0, total_cloud - sum(cms[n] for n in s)))
        ratios = None
        if measure_at is not None:
            try:
                meas = measure_at(env)
            except Exception as exc:  # noqa: BLE001 - fall back to the ratio carry, said
                notes.append(f"candidates not measured at {p}: {exc}"[:300])
            else:
                # One monotone map per side through the measured candidates, not a
                # line: an intercept fitted through a few noisy points at one size gave
                # a 0.4 ms head 5 ms.
                ratios = _side_maps(pred, meas, kinds, sides)
        for c in candidates:
            h, t = pred[c.cut_id]
            if ratios is not None:
                h = ratios[0](h) if c.kind != OFFLOAD else h
                t = ratios[1](t) if c.kind != LOCAL else t
            else:
                # The reference's correction of this candidate (profile -> session times,
                # as a ratio) carries to this size; an intercept fitted at one size would not.
                h *= _ratio(c.head_ms, c.extra.get("predicted_head_ms"))
                t *= _ratio(c.tail_ms, c.extra.get("predicted_tail_ms"))
            heads[c.cut_id].append(h)
            tails[c.cut_id].append(t)
        measured_points.append(p)
    out = []
    for c in candidates:
        e = dict(c.extra)
        e["up_bytes_expr"] = graph.cut_bytes_expr(c.tensors, wire) if c.kind != LOCAL else "0"
        e["down_bytes_expr"] = down_expr if c.kind != LOCAL else "0"
        e["size_expr"] = size_expr
        e["by_size"] = size_rows([graph.env(p, 1) for p in measured_points], size_expr,
                                 heads[c.cut_id], tails[c.cut_id])
        out.append(replace(c, extra=e))
    return {
        "candidates": out,
        "symbols": list(graph.symbols),
        "batch_symbols": list(graph.batch_symbols),
        "reference": dict(points[0]),
        "profiled": [dict(p) for p in measured_points],
        "assumed": list(graph.assumed_sizes),
        "shape_method": graph.shape_method,
        "probed_tensors": len(graph.probed),
        "approximate_tensors": list(graph.approximate),
        "notes": notes,
    }


def whole_model_times(model: Any, envs: list[dict[str, int]], threads: int, level: str,
                      rounds: int) -> list[float]:
    """The whole model's median time here (ms) at each of ``envs``, the sizes run in turn
    round by round in one session. Candidates are measured at each size as ratios to
    the whole model run beside them; these times put every size on one scale, so load
    that came and went between one size's measurement and the next's does not bend the
    curve the policy interpolates along."""
    import time

    from partition._profile import make_session, random_feeds

    sess = make_session(model, threads, level)
    feeds = [random_feeds(sess, sizes=e) for e in envs]
    for f in feeds:  # warm-up (the arena grows to the largest size once)
        sess.run(None, f)
    samples: list[list[float]] = [[] for _ in envs]
    for _ in range(max(1, rounds)):
        for i, f in enumerate(feeds):
            t0 = time.perf_counter()
            sess.run(None, f)
            samples[i].append((time.perf_counter() - t0) * 1000.0)
    return [float(statistics.median(x)) for x in samples]


def _side_maps(pred: dict[str, tuple[float, float]], measured: dict[str, tuple[float, float]],
               kinds: dict[str, str], sides: tuple[bool, bool]
               ) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """The head and tail maps (:func:`_calibration`) through the measured candidates'
    (predicted, measured) times at one size; a side not measured here is left as is."""
    hp = [(pred[k][0], m[0]) for k, m in measured.items()
          if sides[0] and k in kinds and kinds[k] != OFFLOAD]
    tp = [(pred[k][1], m[1]) for k, m in measured.items()
          if sides[1] and k in kinds and kinds[k] != LOCAL]
    return _calibration(hp), _calibration(tp)


def _calibration(pairs: list[tuple[float, float]]) -> Callable[[float], float]:
    """One side's map from profiled time to session time at one size: piecewise linear
    through (0, 0) and the measured candidates ordered by their predicted time (the
    whole model among them), made non-decreasing by pooling adjacent points that are out
    of order (isotonic regression); above the largest, its ratio.

    The profile is taken at ONNX Runtime's ``extended`` level (it keeps node names);
    sessions run at ``all``, whose NCHWc layouts speed the early, high-resolution layers
    up more than the late ones, so one ratio per side gave PP-OCR's detector heads that
    end early 10-40% too much time while the whole model was right. Each candidate
    is now corrected by the measured candidates of about its own size: a tail predicted at
    0.3 ms that costs ~1.3 ms as a session of its own (the session's fixed overhead)
    bends only the map below it, where a median of per-candidate ratios once made every
    tail of PP-OCR's recognizer 4x its measured time."""
    kept = sorted((p, m) for p, m in pairs if p > 0 and m > 0)
    if not kept:
        return lambda x: x
    blocks: list[list[float]] = []  # pooled points: [sum of predicted, sum of measured, count]
    for p, m in kept:
        blocks.append([p, m, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]  # noqa: B905
    xs = [0.0] + [b[0] / b[2] for b in blocks]
    ys = [0.0] + [b[1] / b[2] for b in blocks]
    top = ys[-1] / xs[-1]

    def corrected(x: float) -> float:
        if x <= 0:
            return 0.0
        if x >= xs[-1]:
            return x * top
        return float(np.interp(x, xs, ys))

    return corrected


def _ratio(corrected: float, predicted: float | None) -> float:
    if not predicted or predicted <= 0 or corrected <= 0:
        return 1.0
    return min(2.0, max(0.5, corrected / predicted))
