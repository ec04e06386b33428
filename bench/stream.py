"""Streams and chains: pipelined split execution and plans across device, edge node, cloud.

Prints one JSON object (``--json``) with two parts.

``chains``: for resnet50, inception_v1, densenet121 and squeezenet, per-node times
profiled on this host once (one ONNX Runtime thread) and scaled per chain node by its
profile's ``relative_speed`` (device jetson-nano, edge node jetson-agx-orin, cloud = this
host); five (LAN, WAN) link settings; objectives latency, energy and throughput (with a
per-frame SLO of twice the least-latency plan's latency). ``chain_exact`` is true when
for every case the planner's value equals complete enumeration of every monotone
labelling (every nested pair of ideals of the DAG): the min cut for latency and energy is
an independent method; for throughput the planner is the enumeration itself, so the
check there is the recomputation of its pick from the definitions (``evaluate_labels``)
and that no nested pair of candidate cuts beats it. ``chain_speedup_vs_best_two_node``
(predicted) is the best two-node plan's latency (device+cloud with the edge node relaying,
or device+edge node) over the best three-node plan's, on 1 Gbit/s 2 ms + 10 Mbit/s 60 ms.

``streams`` (``--streams``), measured between real processes: a cloud ``edgecut serve``
(one ONNX Runtime thread) behind the user-space link emulator (20 Mbit/s, 40 ms round
trip), this process as the device (an emulated jetson-nano: every device stage is held
for the time measured here divided by the profile's ``relative_speed``, as the replay
does). Per model: the plan (``prepare_plan``, cloud = this host); the SLO is a rule,
twice the least-latency plan's predicted latency; ``sequential_fps`` runs the
least-latency plan one frame at a time (each submitted when the previous is answered); ``stream_fps`` runs ``choose_stream``'s plan
through the pipeline (window: how many of the slowest stage one frame's trip past the
device holds (at most 4), both measured on frames of that plan run one at a time first;
the SLO given to the pipeline, which starts a frame only when it is predicted to finish
within it behind the frames in flight and drops one that waited too long (``late``, part
of ``dropped``); queue 1; ``drop_oldest``; uploads paced at the link's
rate) fed by a 15 frames/s camera for about 12 s, measured over the answered frames
after the first four; ``pipeline_bound_fps`` is 1 / the slowest stage of that plan measured in the same
run one frame at a time (median device stage as held, upload and download at the
emulated rate, median server compute); ``p95_ms``
per-frame latency from submit to result; ``dropped`` / ``lost`` from the pipeline's
counters (lost = submitted - delivered).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHAIN_MODELS = ("resnet50", "inception_v1", "densenet121", "squeezenet")
# (LAN bit/s, LAN RTT s, WAN bit/s, WAN RTT s): the fast LAN + slow WAN first,
# then a fast WAN, a slow LAN, a mid case and a poor everything.
LINK_SETTINGS = (
    (1e9, 0.002, 10e6, 0.060),
    (1e9, 0.002, 100e6, 0.020),
    (20e6, 0.010, 50e6, 0.030),
    (300e6, 0.003, 20e6, 0.040),
    (50e6, 0.005, 1e6, 0.100),
)
TOL = 1e-6
# The camera: 15 frames/s, the low end of a Jetson camera job (the 15 to 30), faster
# than any plan here can go, so the pipeline stays saturated and drop_oldest has work.
CAMERA_FPS = 15.0


def host_times(model: str, runs: int) -> tuple[object, dict[str, float]]:
    from devices import load_profile
    from partition import LayerGraph, profile_model, zoo_model
    from partition._planner import side_times

    graph = LayerGraph.from_path(zoo_model(model))
    prof = profile_model(graph.model, load_profile("generic-x86"), runs=runs, model_name=model,
                         threads=1, emulate=False)
    return graph, side_times(graph, prof.nodes, prof.total_ms)


def chain_case(graph, times, link, objective) -> dict:  # noqa: ANN001
    from devices import load_profile
    from partition import Hop, enumerate_chain, evaluate_labels, min_cut_chain, plan_chain
    from partition._planner import candidate_cuts

    nano, orin = load_profile("jetson-nano"), load_profile("jetson-agx-orin")
    node_ms = [{v: t / nano.relative_speed for v, t in times.items()},
               {v: t / orin.relative_speed for v, t in times.items()},
               dict(times)]
    hops = [Hop(link[0], link[1]), Hop(link[2], link[3])]
    slo = None
    if objective == "throughput":
        slo = 2.0 * min_cut_chain(graph, node_ms, hops, nano, "latency").cost.latency_ms
    t0 = time.perf_counter()
    plan = plan_chain(graph, node_ms, hops, nano, objective, slo_ms=slo)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enum = enumerate_chain(graph, node_ms, hops, nano, objective, slo_ms=slo)
    enum_s = time.perf_counter() - t0
    ok = abs(plan.value() - enum.value()) <= TOL * max(1.0, abs(enum.value()))
    again = evaluate_labels(graph, node_ms, hops, nano, plan.labels)
    ok = ok and abs(again.latency_ms - plan.cost.latency_ms) <= TOL * max(1.0, again.latency_ms)
    if objective == "throughput":
        pos = {v: i for i, v in enumerate(graph.order)}
        cands = [sum(1 << pos[v] for v in graph.device_side(c)) for c in candidate_cuts(graph)]
        sub = enumerate_chain(graph, node_ms, hops, nano, objective, slo_ms=slo, masks=cands)
        meets = (not slo) or plan.cost.latency_ms <= slo
        ok = ok and (not meets or sub.value() >= plan.value() - TOL * max(1.0, plan.value()))
    return {
        "objective": objective, "link": list(link), "exact": bool(ok),
        "value": round(plan.value(), 4), "enumerated": round(enum.value(), 4),
        "method": plan.method, "plan_s": round(plan_s, 3), "enumeration_s": round(enum_s, 3),
        "nodes_used": sorted({int(v) for v in plan.labels.values()}),
        "layers_per_node": [sum(1 for v in plan.labels.values() if v == j) for j in range(3)],
        "sets": enum.info.get("sets"), "combinations": enum.info.get("combinations"),
    }


def two_node_best(graph, times, link) -> tuple[float, float]:  # noqa: ANN001
    """(best three-node latency, best two-node latency) for ``link``."""
    from devices import load_profile
    from partition import Hop, min_cut_chain

    nano, orin = load_profile("jetson-nano"), load_profile("jetson-agx-orin")
    dev = {v: t / nano.relative_speed for v, t in times.items()}
    edge = {v: t / orin.relative_speed for v, t in times.items()}
    three = min_cut_chain(graph, [dev, edge, dict(times)], [Hop(link[0], link[1]), Hop(link[2], link[3])],
                          nano, "latency").cost.latency_ms
    # device + edge node
    de = min_cut_chain(graph, [dev, edge], [Hop(link[0], link[1])], nano, "latency").cost.latency_ms
    # device + cloud, the edge node only relaying: a chain whose middle node is never used
    # (its times infinite in effect)
    big = {v: 1e9 for v in times}
    dc = min_cut_chain(graph, [dev, big, dict(times)], [Hop(link[0], link[1]), Hop(link[2], link[3])],
                       nano, "latency").cost.latency_ms
    return three, min(de, dc)


def run_chains(models: list[str], runs: int) -> dict:
    cases = []
    speedups = {}
    for m in models:
        graph, times = host_times(m, runs)
        for link in LINK_SETTINGS:
            for objective in ("latency", "energy", "throughput"):
                case = chain_case(graph, times, link, objective)
                case["model"] = m
                cases.append(case)
        three, two = two_node_best(graph, times, LINK_SETTINGS[0])
        speedups[m] = round(two / three, 3)
    return {
        "chain_exact": all(c["exact"] for c in cases),
        "chain_cases": len(cases),
        "chain_speedup_vs_best_two_node_predicted": speedups,
        "cases": cases,
    }


def _run_stream(pipe, frames: list, rate_fps: float | None = None) -> tuple[list, float]:  # noqa: ANN001
    """Feed ``frames`` (at ``rate_fps`` like a camera, else as fast as the pipeline takes
    them) and collect the results; returns them and the rate of answered frames after
    the first four."""
    import threading

    got: list = []
    stamps: list[float] = []

    def read() -> None:
        for r in pipe.results():
            got.append(r)
            if r.status != "dropped":
                stamps.append(time.perf_counter())

    reader = threading.Thread(target=read)
    reader.start()
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        if rate_fps:
            wait = t0 + i / rate_fps - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        pipe.submit(f)
    pipe.close()
    reader.join(600)
    skip = min(4, len(stamps) - 2)
    fps = (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip]) if len(stamps) > skip + 1 else 0.0
    return got, fps


def _run_one_by_one(pipe, frames: list) -> tuple[list, float]:  # noqa: ANN001
    """Each frame submitted when the previous one is answered (nothing waits in the
    queue); returns the results and frames per second over all of them."""
    got = []
    t0 = time.perf_counter()
    for f in frames:
        r = pipe.result(pipe.submit(f), timeout_s=600)
        if r is not None:
            got.append(r)
    fps = len(got) / (time.perf_counter() - t0)
    pipe.close()
    return got, fps


def _stages(warm: list, cand, bandwidth_bps: float) -> tuple[float, float, float, float, float]:  # noqa: ANN001
    """(device, uplink, cloud, downlink, trip) ms of ``cand`` from frames run one at a
    time: the device stage as held, the link's transfers at its rate, the server's
    compute (batch 1: nothing else in flight), and a frame's whole trip past the device."""
    import statistics

    ok = [r for r in warm if r.status == "ok"] or warm
    dev = statistics.median(r.device_ms for r in ok)
    if cand.kind == "local":
        return dev, 0.0, 0.0, 0.0, 0.0
    up = cand.up_bytes * 8000.0 / bandwidth_bps
    down = cand.down_bytes * 8000.0 / bandwidth_bps
    cloud = statistics.median((r.compute_ms if r.compute_ms is not None else r.server_ms or 0.0) for r in ok)
    trip = statistics.median(r.latency_ms - r.device_ms for r in ok)
    return dev, up, cloud, down, trip


def _stream_model(m: str, n_frames: int, bandwidth_bps: float, rtt_s: float,
                  stream_seconds: float = 12.0) -> dict:
    import tempfile

    # profiled afresh in every run: a plan kept from an earlier run carries that moment's
    # host speed (one profiled under load predicted the cloud stage at several times what
    # it took on a quiet host, and the stream plan was picked on it)
    work = Path(tempfile.mkdtemp(prefix=f"edgecut-bench-stream-{m}-"))
    try:
        return _stream_in(work, m, n_frames, bandwidth_bps, rtt_s, stream_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stream_in(work: Path, m: str, n_frames: int, bandwidth_bps: float, rtt_s: float,
               stream_seconds: float) -> dict:
    import statistics

    import numpy as np

    from devices import load_profile
    from edge.lab._emulator import LinkEmulator, Trace
    from edge.lab._replay import CloudServer, prepare_plan
    from edge.offload import OffloadClient, StreamPipeline
    from partition import choose, choose_stream, zoo_model

    nano = load_profile("jetson-nano")
    plan = prepare_plan(zoo_model(m), nano, work, bandwidth_bps=bandwidth_bps, rtt_s=rtt_s, keep=6)
    lat_pick = choose(plan.candidates, bandwidth_bps, rtt_s, nano)
    slo = 2.0 * lat_pick.latency_ms
    st_pick = choose_stream(plan.candidates, bandwidth_bps, rtt_s, nano, slo_ms=slo)
    import onnx

    whole = onnx.load(str(plan.model_path), load_external_data=False).graph
    names = [o.name for o in whole.output]
    rng = np.random.default_rng(0)
    shape = [d.dim_value or 1 for d in whole.input[0].type.tensor_type.shape.dim]
    frames = [{whole.input[0].name: rng.standard_normal(shape).astype(np.float32)}
              for _ in range(n_frames)]
    trace = Trace.from_steps([(0.0, bandwidth_bps)], 1e6, "constant")
    device_time = lambda _k, ms: ms / nano.relative_speed  # noqa: E731
    with CloudServer(work / "repository") as srv:
        emu = LinkEmulator("127.0.0.1", srv.port, up=trace, delay_s=rtt_s / 2).start()
        try:
            with OffloadClient(emu.url, timeout_s=60.0) as client:
                def pipe(cand, window: int, overload: str = "block", slo_ms=None):  # noqa: ANN001, ANN202
                    return StreamPipeline(work, plan.model_path, cand, nano, client, names,
                                          window=window, queue_size=1, overload=overload, slo_ms=slo_ms,
                                          cloud_timeout_s=60.0, device_time=device_time,
                                          intra_op_threads=1)
                # warm both plans' sessions and the server's
                _run_one_by_one(pipe(lat_pick.candidate, 1), frames[:2])
                # the stream plan one frame at a time: its stage times (the pipeline's bound)
                # and the trip that sets how many frames to keep in flight
                warm, _ = _run_one_by_one(pipe(st_pick.candidate, 1), frames[:5])
                dev, up, cloud, down, trip = _stages(warm[1:], st_pick.candidate, bandwidth_bps)
                seq_n = max(6, n_frames // 3)
                seq_res, seq_fps = _run_one_by_one(pipe(lat_pick.candidate, 1), frames[:seq_n])
                # frames in flight past the device: as many as one frame's trip past the
                # device (measured one frame at a time above) holds of the slowest stage;
                # more would only wait in the server's queue and add to every frame's latency
                slowest = max(dev, up, cloud, down, 1e-3)
                depth = min(4, max(1, math.ceil(trip / slowest)))
                # the SLO bounds each frame in the pipeline too: a frame starts only when it
                # is predicted to finish within it behind the frames in flight (a stage that
                # slows down under load shrinks the window instead of queueing frames)
                sp = pipe(st_pick.candidate, depth, "drop_oldest", slo_ms=slo)
                camera = CAMERA_FPS
                n_cam = int(CAMERA_FPS * stream_seconds)
                cam_frames = [frames[i % len(frames)] for i in range(n_cam)]
                res, fps = _run_stream(sp, cam_frames, rate_fps=camera)
        finally:
            emu.stop()
    c = st_pick.candidate
    ok = [r for r in res if r.status in ("ok", "fallback")]
    bound = 1000.0 / max(dev, up, cloud, down)
    lat = sorted(r.latency_ms for r in ok)
    # where a frame's time went (medians): device stage, waiting for the uplink and the
    # queue, the cloud leg's wall time (upload, round trip, server, download)
    parts = {
        "device_ms": statistics.median(r.device_ms for r in ok) if ok else None,
        "cloud_leg_ms": statistics.median(r.cloud_ms for r in ok) if ok else None,
        "server_ms": statistics.median(r.server_ms or 0.0 for r in ok) if ok else None,
        "waiting_ms": statistics.median(r.latency_ms - r.device_ms - r.cloud_ms for r in ok) if ok else None,
    }
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else 0.0
    return {
        "stream_plan": c.cut_id, "latency_plan": lat_pick.candidate.cut_id,
        "slo_ms": round(slo, 1),
        "predicted_bound_fps": round(st_pick.bound_fps, 3),
        "stages_ms": {"device": round(dev, 1), "uplink": round(up, 1), "cloud": round(cloud, 1),
                      "downlink": round(down, 1)},
        "stream_fps": round(fps, 3), "pipeline_bound_fps": round(bound, 3),
        "sequential_fps": round(seq_fps, 3),
        "fraction_of_bound": round(fps / bound, 3) if bound else None,
        "vs_sequential": round(fps / seq_fps, 3) if seq_fps else None,
        "p95_ms": round(p95, 1), "median_parts_ms": {k: round(v, 1) for k, v in parts.items() if v is not None}, "within_slo": bool(p95 <= slo),
        "frames": len(cam_frames), "window": sp.window, "camera_fps": round(camera, 3), "dropped": sp.stats.dropped, "late": sp.stats.late, "lost": sp.stats.lost,
        "fallbacks": sp.stats.fallbacks, "errors": sp.stats.errors,
        "sequential_lost": 0 if len(seq_res) == seq_n else seq_n - len(seq_res),
    }


def run_streams(models: list[str], n_frames: int, bandwidth_bps: float = 20e6, rtt_s: float = 0.04) -> dict:
    return {m: _stream_model(m, n_frames, bandwidth_bps, rtt_s) for m in models}


# The fast LAN and slow WAN.
LAN = (1e9, 0.002)
WAN = (10e6, 0.060)


def _chain_setup(graph, plan, names, work: Path, model_name: str, hops) -> tuple:  # noqa: ANN001
    """Start every later node of ``plan`` behind its link emulator; returns (the device's
    client URL, the servers and emulators to stop, the device's folder, server by node)."""
    from edge.lab._emulator import LinkEmulator, Trace
    from edge.lab._server import CloudServer
    from partition import write_chain

    started: list = []
    servers: dict = {}
    ports = {n: _free_port() for n in names[1:]}
    # the emulator in front of node j listens on its own port; node j-1 sends to it
    emu_ports = {n: _free_port() for n in names[1:]}
    urls = {names[j]: f"http://127.0.0.1:{emu_ports[names[j + 1]]}" for j in range(1, len(names) - 1)}
    folders = write_chain(graph.model, graph, plan, model_name, names, work, next_urls=urls)
    for j in range(len(names) - 1, 0, -1):  # the last node first, so relays find their next hop
        n = names[j]
        repo = folders[n] / "repository"
        if repo.is_dir():
            servers[n] = CloudServer(repo, port=ports[n], threads=1).start()
            started.append(servers[n])
        trace = Trace.from_steps([(0.0, hops[j - 1].bandwidth_bps)], 1e6, "constant")
        started.append(LinkEmulator("127.0.0.1", ports[n], up=trace, delay_s=hops[j - 1].rtt_s / 2,
                                    listen_port=emu_ports[n]).start())
    return f"http://127.0.0.1:{emu_ports[names[1]]}", started, folders[names[0]], servers


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure_chain(graph, plan, names, hops, model_name: str, frames: list, reference: list,
                   kill_after: int | None = None) -> dict:  # noqa: ANN001
    """Run ``frames`` one at a time through a chain plan between real processes; the
    median end-to-end latency, the largest difference from the whole model, and how many
    frames got no answer (``kill_after``: the first later node is killed after that many)."""
    import statistics
    import tempfile

    from devices import load_profile
    from edge.offload import OffloadClient, StreamPipeline
    from partition import device_candidate

    nano = load_profile("jetson-nano")
    work = Path(tempfile.mkdtemp(prefix=f"edgecut-chain-{model_name}-"))
    url, started, dev_folder, servers = _chain_setup(graph, plan, names, work, model_name, hops)
    cand = device_candidate(graph, plan, model_name)
    out_name = graph.outputs[0]
    lat, worst, lost, statuses = [], 0.0, 0, []
    try:
        with OffloadClient(url, timeout_s=30.0, max_retries=0) as client:
            pipe = StreamPipeline(dev_folder, plan_model_path(graph, work), cand, nano, client,
                                  list(graph.outputs), window=1, queue_size=1,
                                  device_time=lambda _k, ms: ms / nano.relative_speed,
                                  intra_op_threads=1)
            for i, (f, want) in enumerate(zip(frames, reference, strict=True)):
                if kill_after is not None and i == kill_after:
                    servers[names[1]].kill()
                seq = pipe.submit(f)
                r = pipe.result(seq, timeout_s=120)
                if r is None or r.status not in ("ok", "fallback"):
                    lost += 1
                    continue
                statuses.append(r.status)
                lat.append(r.latency_ms)
                worst = max(worst, float(np.max(np.abs(r.outputs[out_name] - want))))
            pipe.close()
    finally:
        for x in reversed(started):
            x.stop()
    return {"median_ms": round(statistics.median(lat[1:] or lat), 1) if lat else None,
            "max_abs_diff": worst, "lost": lost, "fallbacks": statuses.count("fallback"),
            "frames": len(frames), "nodes_used": sorted(set(plan.labels.values())),
            "predicted_ms": round(plan.cost.latency_ms, 1)}


def plan_model_path(graph, work: Path) -> Path:  # noqa: ANN001
    import onnx

    path = work / "whole.onnx"
    if not path.is_file():
        onnx.save(graph.model, str(path))
    return path


def run_chain_measured(models: list[str], n_frames: int, runs: int) -> dict:
    """Measured end-to-end latency of the best three-node plan against the best two-node
    plans on the fast LAN + slow WAN (device: emulated jetson-nano; edge node and cloud:
    ``edgecut serve`` on this host, at this host's speed, which is what the planner is
    told), the outputs against the whole model, and a run with the edge node killed."""
    import onnxruntime as ort

    from partition import Hop, plan_chain

    out: dict = {}
    lan, wan = Hop(*LAN), Hop(*WAN)
    for m in models:
        graph, host = host_times(m, runs)
        dev = {v: t / _nano().relative_speed for v, t in host.items()}
        big = {v: 1e12 for v in host}
        three = plan_chain(graph, [dev, dict(host), dict(host)], [lan, wan], _nano(), "latency")
        de = plan_chain(graph, [dev, dict(host)], [lan], _nano(), "latency")
        dc = plan_chain(graph, [dev, big, dict(host)], [lan, wan], _nano(), "latency")
        sess = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        name = graph.inputs[0]
        shape = [d or 1 for d in graph.tensors[name].shape]
        frames = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n_frames)]
        reference = [sess.run(None, f)[0] for f in frames]
        r3 = _measure_chain(graph, three, ["device", "edge", "cloud"], [lan, wan], m, frames, reference)
        rde = _measure_chain(graph, de, ["device", "edge"], [lan], m, frames, reference)
        rdc = _measure_chain(graph, dc, ["device", "edge", "cloud"], [lan, wan], m, frames, reference)
        # the edge node killed mid-run, on a plan that runs layers on all three nodes
        order = list(graph.order)
        forced = dict(three.labels)
        if len(set(forced.values())) < 3:
            half = len(order) // 2
            forced = {v: (1 if i < half else 2) for i, v in enumerate(order)}
            forced[order[0]] = 0
        from partition import ChainPlan, evaluate_labels

        cost = evaluate_labels(graph, [dev, dict(host), dict(host)], [lan, wan], _nano(), forced)
        bounds = tuple(graph.crossing([v for v in order if forced[v] <= k]) for k in range(2))
        relay = ChainPlan(forced, bounds, cost, "latency", "given")
        rk = _measure_chain(graph, relay, ["device", "edge", "cloud"], [lan, wan], m, frames, reference,
                            kill_after=max(1, n_frames // 3))
        best_two = min(x["median_ms"] for x in (rde, rdc))
        out[m] = {
            "three_node": r3, "device_edge": rde, "device_cloud": rdc, "edge_killed": rk,
            "chain_speedup_vs_best_two_node": round(best_two / r3["median_ms"], 3),
            "max_abs_diff": max(x["max_abs_diff"] for x in (r3, rde, rdc, rk)),
            "chain_lost": rk["lost"] + r3["lost"] + rde["lost"] + rdc["lost"],
        }
    return out


def _nano():  # noqa: ANN202
    from devices import load_profile

    return load_profile("jetson-nano")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(CHAIN_MODELS))
    ap.add_argument("--runs", type=int, default=3, help="profiling runs per model (default 3)")
    ap.add_argument("--no-chains", action="store_true")
    ap.add_argument("--streams", action="store_true",
                    help="also run the measured stream part (real cloud serve, link emulator)")
    ap.add_argument("--stream-models", default="resnet50,inception_v1")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--chain-measured", action="store_true",
                    help="also measure chains between real processes (LAN 1 Gbit/s 2 ms, WAN 10 Mbit/s 60 ms)")
    ap.add_argument("--chain-models", default="squeezenet,resnet50")
    ap.add_argument("--chain-frames", type=int, default=9)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict = {}
    if not args.no_chains:
        out.update(run_chains(args.models.split(","), args.runs))
    if args.streams:
        out["streams"] = run_streams(args.stream_models.split(","), args.frames)
    if args.chain_measured:
        measured = run_chain_measured(args.chain_models.split(","), args.chain_frames, args.runs)
        out["chains_measured"] = measured
        out["chain_speedup_vs_best_two_node"] = {m: r["chain_speedup_vs_best_two_node"]
                                                 for m, r in measured.items()}
        out["chain_lost"] = sum(r["chain_lost"] for r in measured.values())
        out["chain_max_abs_diff"] = max(r["max_abs_diff"] for r in measured.values())
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
