"""Planner choice versus measured best, per model and bandwidth.

For each model: ``partition.build_plan`` profiles it here on behalf of the device
(times divided by its ``relative_speed``; the cloud is this host, unscaled), plans, and
keeps every candidate. Then every candidate is run for real, head session then tail
session (batch 1, fixed threads, lower quartile over interleaved rounds), and its end-to-end
latency is computed from the measured times, the bytes and the link:
``head/relative_speed + up*8/bw + RTT + tail + down*8/bw`` (local: head only). The planner's
choice at each bandwidth is compared with the measured best. ``ratio`` uses the plan as
a device runs it, its predictions corrected by the observed whole-model time on each
side (one number per side, as ``edge.policy`` does online); ``static_ratio`` uses the
plan exactly as written at planning time, minutes earlier on a shared, noisy host.

    .venv/bin/python bench/partition.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devices import load_profile  # noqa: E402
from partition import (  # noqa: E402
    LOCAL,
    LayerGraph,
    Profile,
    build_plan,
    choose,
    load_model,
    measure_candidates,
    min_cut,
    rescale,
    side_times,
    zoo_model,
)

MODELS = ("resnet50", "inception_v1", "densenet121", "squeezenet")
MBPS = (1.0, 5.0, 20.0, 100.0, 1000.0)


def measured_latency(c, head_ms: float, tail_ms: float, scale: float, bw: float, rtt_s: float) -> float:
    if c.kind == LOCAL:
        return head_ms * scale
    up = c.up_bytes * 8.0 / bw * 1000.0
    down = c.down_bytes * 8.0 / bw * 1000.0
    return head_ms * scale + up + rtt_s * 1000.0 + tail_ms + down


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--device", default="jetson-nano")
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--block", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dynamic", choices=("yes", "no", "only"), default="yes",
                    help="PP-OCR at input sizes the plan was not made at (see bench/_dynamic.py)")
    args = ap.parse_args()
    if args.dynamic == "only":
        args.models = ""

    dev = load_profile(args.device)
    scale = 1.0 / dev.relative_speed
    rtt = args.rtt_ms / 1000.0
    cases = []
    max_diff = 0.0
    per_model = {}
    densenet_plan_ms = None
    for name in [m for m in args.models.split(",") if m]:
        path = zoo_model(name)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"edgecut-bench-{name}-") as out:
            plan = build_plan(path, dev, "here", 20e6, rtt, keep=None, out_dir=out, figure=False,
                              threads=args.threads, runs=10, measure=10)
            dprof = Profile.load(Path(out) / "profile.device.json")
            cprof = Profile.load(Path(out) / "profile.cloud.json")
        plan_s = time.perf_counter() - t0
        # Min-cut planning time after profiling, median over the five links.
        graph = LayerGraph.from_model(load_model(path))
        dev_ms = side_times(graph, dprof.nodes, dprof.total_ms)
        cloud_ms = side_times(graph, cprof.nodes, cprof.total_ms)
        mc_times = []
        for mbps in MBPS:
            t1 = time.perf_counter()
            min_cut(graph, dev_ms, cloud_ms, mbps * 1e6, rtt, dev)
            mc_times.append((time.perf_counter() - t1) * 1000.0)
        if name == "densenet121":
            densenet_plan_ms = statistics.median(mc_times)
        t0 = time.perf_counter()
        m = measure_candidates(load_model(path), plan.candidates, 1.0, args.threads, args.rounds,
                               dev.graph_optimization, block=args.block)
        measured = dict(m.times)
        max_diff = max(max_diff, m.max_abs_diff)

        # What a device does at run time: its observed whole-model time (and the cloud's)
        # corrects every prediction of the plan at once (edge.policy's online correction).
        by_id = {c.cut_id: c for c in plan.candidates}
        dev_factor = m.full_ms * scale / by_id[LOCAL].head_ms
        cloud_factor = m.full_ms / by_id["offload"].tail_ms
        corrected = rescale(plan.candidates, dev_factor, cloud_factor)

        def lat_at(bw: float, plan=plan, measured=measured) -> dict[str, float]:
            return {c.cut_id: measured_latency(c, *measured[c.cut_id], scale, bw, rtt)
                    for c in plan.candidates}

        # Race the contenders: the measured top three and the planner's picks at every
        # bandwidth get a second, longer pass on the same scale, so the "best" is not
        # just the luckiest of many noisy candidates.
        contenders: set[str] = set()
        for mbps in MBPS:
            lat = lat_at(mbps * 1e6)
            contenders.update(sorted(lat, key=lat.get)[:3])
            contenders.add(choose(corrected, mbps * 1e6, rtt, dev).candidate.cut_id)
            contenders.add(choose(plan.candidates, mbps * 1e6, rtt, dev).candidate.cut_id)
        again = measure_candidates(load_model(path), [by_id[c] for c in sorted(contenders)], 1.0,
                                   args.threads, 2 * args.rounds, dev.graph_optimization,
                                   block=args.block, anchor_ms=m.full_ms)
        for cid, (h, t) in again.times.items():
            h0, t0_ = measured[cid]
            measured[cid] = ((h0 + 2 * h) / 3, (t0_ + 2 * t) / 3)  # weighted by rounds
        per_model[name] = {
            "candidates": len(plan.candidates),
            "measured_by_planner": len(plan.info.get("measured", [])),
            "plan_s": round(plan_s, 1),
            "bench_measure_s": round(time.perf_counter() - t0, 1),
            "min_cut_ms_median": round(statistics.median(mc_times), 2),
            "cost_model_err_pct": plan.info["cost_model"]["device"]["median_abs_pct_error"],
            "host_full_ms_plan": round(by_id["offload"].tail_ms, 2),
            "host_full_ms_bench": round(m.full_ms, 2),
            "raced": len(contenders),
        }
        for mbps in MBPS:
            bw = mbps * 1e6
            lat = lat_at(bw)
            pick = choose(corrected, bw, rtt, dev)
            static = choose(plan.candidates, bw, rtt, dev).candidate
            best_id = min(lat, key=lat.get)
            cases.append({
                "model": name,
                "mbps": mbps,
                "chosen_cut": pick.candidate.cut_id,
                "chosen_ms_predicted": round(pick.latency_ms, 2),
                "chosen_ms_measured": round(lat[pick.candidate.cut_id], 2),
                "best_cut": best_id,
                "best_ms_measured": round(lat[best_id], 2),
                "ratio": round(lat[pick.candidate.cut_id] / lat[best_id], 4),
                "static_cut": static.cut_id,
                "static_ratio": round(lat[static.cut_id] / lat[best_id], 4),
            })
            if not args.json:
                print(json.dumps(cases[-1]), flush=True)
    dynamic: dict = {}
    if args.dynamic != "no":
        from bench._dynamic import run as run_dynamic

        dynamic = run_dynamic(log=None if args.json else print)
    result = {
        **dynamic,
        "device": dev.name,
        "relative_speed": dev.relative_speed,
        "rtt_ms": args.rtt_ms,
        "threads": args.threads,
        "cases": cases,
        "max_ratio": max((c["ratio"] for c in cases), default=None),
        "max_static_ratio": max((c["static_ratio"] for c in cases), default=None),
        "densenet121_plan_ms": None if densenet_plan_ms is None else round(densenet_plan_ms, 2),
        "head_tail_max_abs_diff": max_diff,
        "models": per_model,
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
