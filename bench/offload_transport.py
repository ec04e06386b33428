"""The device's offload client over both transports against one `edgecut serve`.

    python bench/offload_transport.py --json [--models squeezenet,resnet50] [--rounds 5]
        [--requests 30]

For each model: `edgecut serve` (a subprocess, HTTP and gRPC, the model's whole graph as a
Triton repository entry) and the two clients the agent may use, ``OffloadClient`` (KServe
v2 REST, binary tensors) and ``GrpcOffloadClient`` (KServe v2 gRPC, raw contents). After a
warm-up, rounds interleave the transports (A B A B ...), each round ``--requests`` requests
one after another with a 1x3x224x224 float input. Reported per transport: the median
round trip the client measured and its min-max spread over rounds, the median of the round
trip less the server's own time (what the link estimator sees as the network; the server
reports it in Server-Timing, over gRPC in trailing metadata), and the bytes each request
moved up and down. Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _round(client, model: str, feeds: dict, n: int) -> dict:
    seconds, overhead = [], []
    up = down = 0
    for _ in range(n):
        r = client.infer(model, feeds)
        seconds.append(r.seconds)
        if r.server_s is not None:
            overhead.append(r.seconds - r.server_s)
        up, down = r.up_bytes, r.down_bytes
    return {"p50_ms": statistics.median(seconds) * 1e3,
            "overhead_p50_ms": statistics.median(overhead) * 1e3 if overhead else None,
            "up_bytes": up, "down_bytes": down}


def bench_model(model: str, args: argparse.Namespace, workdir: Path) -> dict:
    import onnx

    from edge.lab._server import CloudServer
    from edge.offload import offload_client
    from partition import zoo
    from partition.triton import TritonOptions, write_repository_entry

    source = zoo.zoo_model(model)
    repo = workdir / f"repo-{model}"
    write_repository_entry(repo, model, source, options=TritonOptions(max_queue_delay_us=0))
    graph = onnx.load(str(source), load_external_data=False).graph
    init = {t.name for t in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in init)
    feeds = {name: np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    rounds: dict[str, list[dict]] = {"http": [], "grpc": []}
    with CloudServer(repo, threads=args.threads, grpc_port=0) as srv:
        clients = {"http": offload_client(srv.url, protocol="http", timeout_s=60.0),
                   "grpc": offload_client(srv.grpc_url, protocol="grpc", timeout_s=60.0)}
        try:
            for client in clients.values():
                _round(client, model, feeds, 3)  # warm-up: connections, sessions, caches
            for _ in range(args.rounds):
                for proto, client in clients.items():
                    rounds[proto].append(_round(client, model, feeds, args.requests))
        finally:
            for client in clients.values():
                client.close()
    out: dict = {}
    for proto, rs in rounds.items():
        p50 = [r["p50_ms"] for r in rs]
        over = [r["overhead_p50_ms"] for r in rs if r["overhead_p50_ms"] is not None]
        out[f"{proto}_p50_ms"] = round(statistics.median(p50), 3)
        out[f"{proto}_p50_ms_spread"] = [round(min(p50), 3), round(max(p50), 3)]
        out[f"{proto}_overhead_p50_ms"] = round(statistics.median(over), 3) if over else None
        out[f"{proto}_up_bytes"] = rs[-1]["up_bytes"]
        out[f"{proto}_down_bytes"] = rs[-1]["down_bytes"]
    out["grpc_minus_http_p50_ms_per_round"] = [
        round(g["p50_ms"] - h["p50_ms"], 3) for g, h in zip(rounds["grpc"], rounds["http"],
                                                             strict=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--models", default="squeezenet,resnet50")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30, help="requests per round")
    parser.add_argument("--threads", type=int, default=None,
                        help="the server's ONNX Runtime threads (default: all cores)")
    args = parser.parse_args(argv)
    args.threads = args.threads or os.cpu_count() or 1
    result: dict = {"host_cores": os.cpu_count(), "server_ort_threads": args.threads,
                    "rounds": args.rounds, "requests_per_round": args.requests,
                    "note": "client, server share the host; transports interleaved per round"}
    with tempfile.TemporaryDirectory(prefix="edgecut-offload-") as tmp:
        for model in args.models.split(","):
            result[model] = bench_model(model, args, Path(tmp))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
