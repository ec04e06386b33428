"""How close can any online policy get to the oracle on one trace under the energy objective?

The oracle of ``edgecut replay`` knows the bandwidth each request will meet. An online
policy only knows the past. This tool replays a trace against an idealised online policy
that is better informed than any real one: it sees the exact bandwidth every earlier
request met (a real device learns nothing while it runs locally, except from probes), and
it decides "offload if the offload meets the SLO at ``exp(-z x sigma)`` x its forecast",
where ``sigma`` is the RMS of its own recent forecast errors. For each forecaster and
margin ``z`` it prints the energy per request relative to the oracle's and the deadline
misses beyond the oracle's: the frontier any real policy is behind.

It costs the plans from a replay's measured components (``replay.json``), so run
``bench/policy.py`` (or ``edgecut replay``) first:

    .venv/bin/python bench/policy_bound.py \
        --run ~/.cache/edgecut/bench/policy/runs/inception_v1-jetson-nano-lte_ghent_belgium-energy \
        --trace ../shared/data/traces/lte_ghent_belgium/report_car_0001.json --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _harmonic(xs: list[float]) -> float:
    return len(xs) / sum(1.0 / x for x in xs)


FORECASTS: dict[str, Callable[[list[float]], float]] = {
    "last": lambda h: h[-1],
    "harmonic3": lambda h: _harmonic(h[-3:]),
    "harmonic6": lambda h: _harmonic(h[-6:]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a replay output folder (replay.json)")
    ap.add_argument("--trace", required=True, help="the trace file that run replayed")
    ap.add_argument("--slo-ms", type=float, default=None, help="default: the run's SLO")
    ap.add_argument("--margins", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from devices import EnergyModel, load_profile
    from devices.errors import ConfigError
    from edge.lab._emulator import load_trace

    replay_json = Path(args.run) / "replay.json"
    try:
        run = json.loads(replay_json.read_text())
        info = run["info"]
        comps = info["candidates"]
        local = next(c for c in comps.values() if c["kind"] == "local")
        off = next(c for c in comps.values() if c["kind"] == "offload")
        energy = EnergyModel.from_profile(load_profile(run["device"]))
        path, _, select = args.trace.partition("#")
        trace = load_trace(path, select=select or None).clipped(300e6)
    except (OSError, ValueError, ConfigError) as exc:
        print(f"policy_bound: {exc}", file=sys.stderr)
        return 2
    except (KeyError, StopIteration) as exc:
        print(f"policy_bound: {replay_json} is not an edgecut replay output with local and "
              f"offload candidates (missing {exc})", file=sys.stderr)
        return 2
    slo = args.slo_ms if args.slo_ms is not None else run["slo_ms"]
    speedup, rtt_ms = info["speedup"], 40.0
    fixed_ms = rtt_ms + off["cloud_direct_ms"] * info.get("remote_leg_slowness", 1.0)
    bits = (off["up_bytes"] + off["down_bytes"]) * 8.0

    def offload_ms(bps: float) -> float:
        return fixed_ms + bits / max(bps, 1.0) * 1000.0

    step = info["window_s"] / info["requests"]
    starts = [info["offset_s"] + i * step for i in range(info["requests"])]
    # The bandwidth each request met: the trace's mean over its transfer (in trace time).
    met = []
    for t in starts:
        span = offload_ms(trace.mean_between(t, t + 0.1)) / 1000.0 * speedup
        met.append(max(trace.mean_between(t, t + span), 1e3))
    local_mj = energy.plan_mj(local["device_head_ms"])

    def offload_mj(bps: float) -> float:
        up = bits / max(bps, 1.0) * 1000.0
        return energy.plan_mj(0.0, up, 0.0, fixed_ms)

    oracle = [offload_mj(b) if offload_ms(b) <= slo else local_mj for b in met]
    oracle_misses = 0  # the oracle here is charged exactly the costs it planned with
    oracle_mj = sum(oracle) / len(oracle)
    rows = []
    for name, forecast in FORECASTS.items():
        for z in (float(m) for m in args.margins.split(",")):
            spent, misses, errors = [], 0, []
            for i, b in enumerate(met):
                if i == 0:
                    spent.append(local_mj)
                    continue
                guess = forecast(met[:i])
                sigma = math.sqrt(sum(e * e for e in errors[-16:]) / len(errors[-16:])) \
                    if errors else 0.5
                if offload_ms(guess * math.exp(-z * sigma)) <= slo:
                    spent.append(offload_mj(b))
                    misses += offload_ms(b) > slo
                else:
                    spent.append(local_mj)
                errors.append(math.log(b / guess))
            rows.append({
                "forecast": name, "z": z,
                "energy_ratio_to_oracle": round(sum(spent) / len(spent) / oracle_mj, 3),
                "miss_delta_pp": round(100.0 * (misses - oracle_misses) / len(met), 2),
            })
    feasible = [r for r in rows if r["energy_ratio_to_oracle"] <= 1.10
                and r["miss_delta_pp"] <= 2.0]
    result = {
        "bench": "policy_bound", "run": str(args.run), "trace": args.trace, "slo_ms": slo,
        "requests": len(met), "oracle_energy_mj": round(oracle_mj, 1),
        "oracle_offloads": sum(1 for b in met if offload_ms(b) <= slo),
        "frontier": rows,
        "any_meets_energy_1.10_and_misses_2pp": bool(feasible),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
