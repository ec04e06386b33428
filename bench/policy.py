"""Trace-driven benchmark of the policy engine (issue 5).

For every trace family in ../shared/data/traces (one file per family: a subset, to keep
the run near 25 minutes on two shared cores; 96 requests over the first 192 s of each),
for resnet50 and inception_v1, on the jetson-nano and jetson-orin-nano profiles: edgecut's adaptive policy runs for real
through the link emulator to a real ``edgecut serve``; local-only, cloud-only, the best
static split (Neurosurgeon) and the per-request oracle are costed on the same request
sequence from measured components (see edge/lab/_replay.py, edge/lab/_costing.py). Then the energy objective under
an SLO on two traces per pair (replayed at 2x real time, see --energy-duration), the cloud
killed mid-run, and a 50 -> 1 Mbit/s drop.

    .venv/bin/python bench/policy.py --json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRACES = ROOT.parent / "shared" / "data" / "traces"

# One file per family; the selector picks one series in multi-series files.
FAMILY_FILES = {
    "fcc": "fcc/test_1s/test_fcc_trace_27175_http---www.amazon.com_360_0",
    "hsdpa_norway": "hsdpa_norway/tram.ljabru-jernbanetorget-report.2010-12-09_1334CET.log",
    "mahimahi_us_cellular": "mahimahi_us_cellular/Verizon-LTE-short.up",
    "orange4g_uplink_mahimahi": "orange4g_uplink_mahimahi/orange-4G-traces-A-up.pps",
    "lte_ghent_belgium": "lte_ghent_belgium/report_car_0001.json",
    "lte_nyu_mets": "lte_nyu_mets/bus62.csv",
    "nr5g_5gophers": "nr5g_5gophers/car-driving-trace-1.csv#carrier=Verizon",
}
ENERGY_FAMILIES = ("lte_ghent_belgium", "lte_nyu_mets")


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b > 0 else float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    # 96 requests per run, one every 2 s of trace: with 48, one request was 2.08 pp of
    # deadline misses, so the "+2 pp" allowed no miss at all beyond the oracle's,
    # and one unforeseeable outage decided a run. (Longer runs are more exposed to this
    # host's slow spells; the replay now charges every strategy the slowdown the host
    # showed during each request, measured on the device or on the server's compute.)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--duration", type=float, default=28.0, help="wall seconds per trace run")
    # Energy runs replay the trace at 2x real time, not ~7x: sped up that much, one
    # ~250 ms upload spans 1.7 s of trace, so the second-to-second steps of the trace land
    # inside single transfers (an online policy sees seven times the variation a device
    # on the road would), while the oracle, costed through the trace, does not care. The
    # energy objective's bets on an upload (and giving one up) are what that distorts.
    ap.add_argument("--energy-duration", type=float, default=96.0,
                    help="wall seconds per energy run (2x real time for the default window)")
    ap.add_argument("--window", type=float, default=192.0,
                    help="trace seconds replayed (requests are spread evenly over them)")
    ap.add_argument("--models", default="resnet50,inception_v1")
    ap.add_argument("--devices", default="jetson-nano,jetson-orin-nano")
    ap.add_argument("--families", default=",".join(FAMILY_FILES))
    ap.add_argument("--no-scenarios", action="store_true")
    ap.add_argument("--policy-extra", default="",
                    help="TOML appended to both objectives' policy (after slo_ms/objective), "
                         "e.g. '[explore]\\nprobe_budget_kib = 2048'")
    ap.add_argument("--wire", choices=("fp32", "fp16"), default="fp32",
                    help="how the plans send crossing tensors and offloaded inputs")
    ap.add_argument("--out", default=str(Path.home() / ".cache/edgecut/bench/policy"))
    args = ap.parse_args()
    # A plain SIGTERM would skip the finally blocks that stop the server subprocesses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from devices import load_profile
    from edge.lab._replay import (
        CloudServer,
        prepare_plan,
        replay,
        scenario_bandwidth_drop,
        scenario_cloud_kill,
    )
    from edge.policy._config import policy_config_from_text
    from partition import zoo_model

    t0 = time.time()
    out_root = Path(args.out)
    runs = []
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    families = [f for f in args.families.split(",") if f]
    for model in args.models.split(","):
        model_path = zoo_model(model)
        for dev_name in args.devices.split(","):
            dev = load_profile(dev_name)
            plan_dir = out_root / f"{model}-{dev_name}"
            # each replay loads it
            prepare_plan(model_path, dev, plan_dir, keep=6, log=log, wire=args.wire)
            # The SLOs come from the local latency each run measures on the emulated device
            # (the plan's prediction was made with other threads and another host load).
            # (The SLO written here is replaced by the measured one.)
            configs = {
                "latency": policy_config_from_text("slo_ms = 1000\n" + args.policy_extra),
                "energy": policy_config_from_text('objective = "energy"\nslo_ms = 1000\n'
                                                  + args.policy_extra),
            }
            slo_rule = {"latency": (1.3, 100.0), "energy": (2.0, 200.0)}
            comps = None  # measured by the pair's first run, reused by the others
            with CloudServer(plan_dir / "repository") as srv:
                for fam in families:
                    for objective in ("latency", "energy"):
                        if objective == "energy" and fam not in ENERGY_FAMILIES:
                            continue
                        trace = str(TRACES / FAMILY_FILES[fam])
                        log(f"== {model} {dev_name} {fam} {objective}")
                        r = replay(trace, model_path, dev, configs[objective], plan_dir=plan_dir,
                                   out_dir=out_root / "runs" / f"{model}-{dev_name}-{fam}-{objective}",
                                   requests=args.requests,
                                   duration_s=(args.energy_duration or args.duration
                                               if objective == "energy" else args.duration),
                                   window_s=args.window, server=srv, plot=True,
                                   components=comps, slo_from_local=slo_rule[objective])
                        comps = r.components
                        s = r.summary
                        fixed = {k: s[k] for k in ("local", "cloud", "static_split")}
                        key = "mean_ms" if objective == "latency" else "energy_mj"
                        best_fixed = min(fixed, key=lambda k: fixed[k][key])
                        run = {
                            "trace": fam + "/" + Path(FAMILY_FILES[fam]).name, "family": fam,
                            "model": model, "device": dev_name, "objective": objective,
                            "slo_ms": r.slo_ms, "requests": args.requests,
                            "trace_mean_mbps": r.info["trace_mean_mbps"],
                            **{k: s[k] for k in ("local", "cloud", "static_split", "edgecut",
                                                 "oracle")},
                            "ratio_to_oracle": _ratio(s["edgecut"][key], s["oracle"][key]),
                            "oracle_hindsight": r.info["oracle_hindsight"],
                            "ratio_to_hindsight": _ratio(s["edgecut"][key],
                                                         r.info["oracle_hindsight"][key]),
                            "best_fixed": best_fixed,
                            "ratio_to_best_fixed": _ratio(s["edgecut"][key],
                                                          fixed[best_fixed][key]),
                            "miss_delta_pp": round(s["edgecut"]["deadline_miss_pct"]
                                                   - s["oracle"]["deadline_miss_pct"], 2),
                            "fallbacks": r.info["fallbacks"], "explored": r.info["explored"],
                            "probes": r.info["probes"], "raced": r.info["raced"],
                            "lookahead_probes": r.info["lookahead_probes"],
                            "probe_mj_per_request": r.info["probe_mj_per_request"],
                            "static_split_cut": r.info["static_split_cut"],
                        }
                        if objective == "energy":
                            run["energy_ratio_to_oracle"] = run["ratio_to_oracle"]
                        runs.append(run)
                        log(json.dumps({k: run[k] for k in ("ratio_to_oracle", "ratio_to_best_fixed",
                                                            "miss_delta_pp", "best_fixed")}))
    lat = [r for r in runs if r["objective"] == "latency"]
    en = [r for r in runs if r["objective"] == "energy"]
    result = {
        "bench": "policy",
        "runs": runs,
        "worst_ratio_to_oracle": max((r["ratio_to_oracle"] for r in lat), default=None),
        "worst_ratio_to_best_fixed": max((r["ratio_to_best_fixed"] for r in lat), default=None),
        "worst_miss_delta_pp": max((r["miss_delta_pp"] for r in lat), default=None),
        "worst_energy_ratio_to_oracle": max((r["ratio_to_oracle"] for r in en), default=None),
        "worst_energy_miss_delta_pp": max((r["miss_delta_pp"] for r in en), default=None),
        "worst_ratio_to_hindsight": max((r["ratio_to_hindsight"] for r in lat), default=None),
        "notes": [
            "one trace file per family (listed in each run), first "
            f"{args.window:g} s of it, {args.requests} requests, trace clock sped up to fit "
            f"{args.duration:g} s of wall time (one request every {args.window / args.requests:g} s of trace); "
            f"energy runs in {args.energy_duration or args.duration:g} s",
            "device compute emulated: measured on this host / the profile's relative_speed; "
            "components measured once per model and device (heads as ratios paired with "
            "whole-model runs), then device and cloud compute scaled per request by the "
            "slowdown this host showed during it (from edgecut's own device compute, or "
            "the server's compute for requests it sent away)",
            "edgecut runs for real through the shaping proxy to edgecut serve (1 thread) on "
            "127.0.0.1; fixed strategies and oracle costed per request from measured "
            "components and the bandwidth each request met",
            "oracle: per request, the plan that is best at the bandwidth that request met, "
            "charged with the device as slow as it really was then; oracle_hindsight also "
            "foresees this host's stalls (the cheapest realised cost of each request), "
            "a bound no online policy can reach",
            "downlink traces stand in for the uplink except mahimahi .up and orange4g",
            f"wire format {args.wire}: "
            + ("float32 inputs and crossing tensors sent at half precision (the cloud "
               "models take FP16 and cast back), for every strategy alike"
               if args.wire == "fp16" else "tensors sent as float32"),
            "latency runs: SLO = max(1.3 x local, 100 ms); energy runs: SLO = max(2 x local, "
            "200 ms), local being the emulated device's local latency measured with the "
            "components; ratios for energy runs are of energy per request",
        ],
    }
    if not args.no_scenarios:
        dev = load_profile("jetson-nano")
        model_path = zoo_model("resnet50")
        plan_dir = out_root / "resnet50-jetson-nano"
        cfg = policy_config_from_text("slo_ms = 400\n")
        kill = scenario_cloud_kill(model_path, dev, plan_dir, cfg, log=log)
        drop = scenario_bandwidth_drop(model_path, dev, plan_dir, cfg, log=log)
        result["cloud_kill"] = {k: v for k, v in kill.items() if k != "records"}
        result["bandwidth_drop"] = {k: v for k, v in drop.items() if k != "records"}
    result["elapsed_s"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
