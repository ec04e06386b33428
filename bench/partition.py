"""Planner choice versus measured best, per model and bandwidth.

For each model: ``partition.build_plan`` profiles it here on behalf of the device
(times divided by its ``relative_speed``; the cloud is this host, unscaled), plans, and
keeps every candidate. Then every candidate is run for real, head session then tail
session (batch 1, fixed threads, lower quartile over interleaved rounds), and its end-to-end
latency is computed from the measured times, the bytes and the link:
``head/relative_speed + up*8/bw + RTT + tail + down*8/bw`` (local: head only). The planner's
choice at each bandwidth is compared with the measured best.

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
    args = ap.parse_args()

    dev = load_profile(args.device)
    scale = 1.0 / dev.relative_speed
    rtt = args.rtt_ms / 1000.0
    cases = []
    max_diff = 0.0
    per_model = {}
    densenet_plan_ms = None
    for name in args.models.split(","):
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
        measured = m.times
        max_diff = max(max_diff, m.max_abs_diff)
        per_model[name] = {
            "candidates": len(plan.candidates),
            "measured_by_planner": len(plan.info.get("measured", [])),
            "plan_s": round(plan_s, 1),
            "bench_measure_s": round(time.perf_counter() - t0, 1),
            "min_cut_ms_median": round(statistics.median(mc_times), 2),
            "cost_model_err_pct": plan.info["cost_model"]["device"]["median_abs_pct_error"],
            "device_total_ms": round(dprof.total_ms, 2),
            "host_full_ms_bench": round(m.full_ms, 2),
            "cloud_total_ms": round(cprof.total_ms, 2),
        }
        for mbps in MBPS:
            bw = mbps * 1e6
            lat = {c.cut_id: measured_latency(c, *measured[c.cut_id], scale, bw, rtt) for c in plan.candidates}
            chosen = choose(plan.candidates, bw, rtt, dev).candidate
            best_id = min(lat, key=lat.get)
            cases.append({
                "model": name,
                "mbps": mbps,
                "chosen_cut": chosen.cut_id,
                "chosen_ms_measured": round(lat[chosen.cut_id], 2),
                "best_cut": best_id,
                "best_ms_measured": round(lat[best_id], 2),
                "ratio": round(lat[chosen.cut_id] / lat[best_id], 4),
            })
            if not args.json:
                print(json.dumps(cases[-1]), flush=True)
    result = {
        "device": dev.name,
        "relative_speed": dev.relative_speed,
        "rtt_ms": args.rtt_ms,
        "threads": args.threads,
        "cases": cases,
        "max_ratio": max(c["ratio"] for c in cases),
        "densenet121_plan_ms": None if densenet_plan_ms is None else round(densenet_plan_ms, 2),
        "head_tail_max_abs_diff": max_diff,
        "models": per_model,
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
