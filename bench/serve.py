"""Benchmark `edgecut serve` against bare ONNX Runtime on the same models and batches.

    python bench/serve.py --json [--models resnet50,squeezenet] [--duration S] [--rounds 4]

For each model: starts `edgecut serve` (a subprocess) on 127.0.0.1 with a repository holding
the model (max batch 8, dynamic batching), HTTP and gRPC, then, interleaved over
``--rounds`` rounds: the server at concurrency 1 over HTTP and over gRPC, bare ONNX Runtime
at batch 1 (in this process, the server idle), the server at concurrency 4 and 16 over
HTTP and at 16 over gRPC, and after each concurrency-16 phase bare ONNX Runtime replaying
the batch sizes the server's batcher formed in it (read from the statistics extension), so
each transport's ratio is against bare ONNX Runtime on its own batches.
Latency percentiles pool every request of every round; throughput ratios are per round,
reported as the median with the min-max spread. Finally an overload phase
(``--overload-concurrency`` closed-loop clients against a queue of 32) counts 503s, other
errors and the server's peak RSS, sampled from /proc while it runs.

Then the hostile-client soak (``--soak-duration``, 0 skips it) on the first model, with a
fresh server at its default connection limits: a well-behaved client at concurrency 4
runs alone (``--soak-baseline`` s), then for ``--soak-duration`` s beside 500 slow
connections and a stream of malformed requests (``bench/_soak.py``), then alone again.
``soak_good_throughput_ratio`` is its throughput under attack over the mean of the two
baselines; ``soak_good_errors`` its non-200 answers and connection errors under attack;
``soak_peak_rss_mb`` the server's peak RSS meanwhile.

The load generator is a separate process (asyncio over raw HTTP/1.1 keep-alive
connections, one per client; for gRPC at concurrency 1 blocking calls, above it grpc.aio
over one HTTP/2 channel with every call multiplexed on it, as gRPC clients do): each request is encoded once (binary tensors;
a serialized ``ModelInferRequest`` with raw contents) and re-sent, and gRPC answers are
not parsed, as HTTP answers are only read.
Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# ----------------------------------------------------------------------------- load generator


async def _client(host: str, port: int, payload: bytes, start_at: float, warmup_s: float,
                  end_at: float, out: dict) -> None:
    reader = writer = None
    while time.perf_counter() < end_at:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        t0 = time.perf_counter()
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            out["conn_errors"] += 1
            writer.close()
            reader = writer = None
            continue
        status = int(head[9:12])
        lower = head.lower()
        length = 0
        pos = lower.find(b"\r\ncontent-length:")  # not inference-header-content-length
        if pos >= 0:
            length = int(lower[pos + 17 : lower.find(b"\r\n", pos + 2)])
        try:
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            out["conn_errors"] += 1
            writer.close()
            reader = writer = None
            continue
        t1 = time.perf_counter()
        # Throughput counts completions inside the window; latency, requests sent inside it.
        if start_at + warmup_s <= t1 <= end_at:
            out["codes"][status] = out["codes"].get(status, 0) + 1
            if status == 200:
                out["done"] += 1
        if t0 >= start_at + warmup_s and status == 200:
            out["lat"].append(t1 - t0)
        if b"connection: close" in lower:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _grpc_clients(spec: dict, payload: bytes, start: float, end: float, out: dict) -> None:
    import grpc

    channel = grpc.aio.insecure_channel(
        f"{spec['host']}:{spec['port']}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    # No serializers: the request goes out as the bytes encoded once, the answer stays bytes.
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    warm = start + spec["warmup"]

    async def one() -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                await call(payload, timeout=60)
                status = 200
            except grpc.aio.AioRpcError as exc:
                status = 503 if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 500
            t1 = time.perf_counter()
            if warm <= t1 <= end:
                out["codes"][status] = out["codes"].get(status, 0) + 1
                if status == 200:
                    out["done"] += 1
            if t0 >= warm and status == 200:
                out["lat"].append(t1 - t0)

    try:
        await asyncio.gather(*(one() for _ in range(spec["concurrency"])))
    finally:
        await channel.close()


def _grpc_blocking(spec: dict, payload: bytes, out: dict) -> None:
    """One client, blocking calls: gRPC's lowest-latency way from Python (grpc.aio adds
    an event loop hop per call), as the raw HTTP client is HTTP's."""
    import grpc

    channel = grpc.insecure_channel(
        f"{spec['host']}:{spec['port']}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    start = time.perf_counter()
    warm, end = start + spec["warmup"], start + spec["warmup"] + spec["duration"]
    try:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                call(payload, timeout=60)
                status = 200
            except grpc.RpcError as exc:
                status = 503 if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 500
            t1 = time.perf_counter()
            if warm <= t1 <= end:
                out["codes"][status] = out["codes"].get(status, 0) + 1
                if status == 200:
                    out["done"] += 1
            if t0 >= warm and status == 200:
                out["lat"].append(t1 - t0)
    finally:
        channel.close()


def _run_phase(runner, spec: dict, payload: bytes) -> dict:
    out = {"codes": {}, "lat": [], "done": 0, "conn_errors": 0}
    if spec.get("protocol") == "grpc" and spec["concurrency"] == 1:
        _grpc_blocking(spec, payload, out)
        return out

    async def main() -> None:
        start = time.perf_counter()
        end = start + spec["warmup"] + spec["duration"]
        if spec.get("protocol") == "grpc":
            await _grpc_clients(spec, payload, start, end, out)
            return
        await asyncio.gather(*(
            _client(spec["host"], spec["port"], payload, start, spec["warmup"], end, out)
            for _ in range(spec["concurrency"])
        ))

    runner(main())
    return out


def loadgen_main() -> None:
    """Serve phases read as JSON lines on stdin; answer each with a JSON line on stdout.

    One long-lived process, so that phases can alternate with bare ONNX Runtime every
    second without paying for a process start each time.
    """
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    payloads: dict[str, bytes] = {}
    for line in sys.stdin:
        spec = json.loads(line)
        if spec["payload"] not in payloads:
            payloads[spec["payload"]] = Path(spec["payload"]).read_bytes()
        out = _run_phase(runner, spec, payloads[spec["payload"]])
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class LoadGenerator:
    """The load generator process (started once per benchmark run)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--_loadgen"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, host: str, port: int, payload_path: str, concurrency: int, duration: float,
            warmup: float, protocol: str = "http") -> dict:
        spec = {"host": host, "port": port, "payload": payload_path, "concurrency": concurrency,
                "duration": duration, "warmup": warmup, "protocol": protocol}
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        out = json.loads(line)
        lat = sorted(out["lat"])
        return {
            "throughput": out["done"] / duration,
            "lat": lat,
            "p50_ms": _pct(lat, 50) * 1e3 if lat else None,
            "p99_ms": _pct(lat, 99) * 1e3 if lat else None,
            "codes": {int(k): v for k, v in out["codes"].items()},
            "conn_errors": out["conn_errors"],
        }

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def _pct(sorted_values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(sorted_values), q))


from bench._serve_soak import soak  # noqa: E402
from bench._serving import (  # noqa: E402
    PeakRss,
    Server,
    _batch_histogram,
    _cpu_s,
    _http,
    _write_http_request,
    _write_repo,
)

# ----------------------------------------------------------------------------- bare ORT


def _bare_session(path: Path, threads: int, spinning: bool):
    import onnxruntime as ort

    from cloud._runtime import ort_providers

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:  # the same session options as the server's
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=ort_providers())


def bare_b1(session, x: np.ndarray, duration: float) -> dict:
    name = session.get_inputs()[0].name
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"p50_ms": _pct(times, 50) * 1e3, "throughput": len(times) / sum(times), "lat": times}


def bare_same_batches(session, x: np.ndarray, hist: dict[int, int], duration: float
                      ) -> tuple[float, float]:
    """Images per second running the server's batch-size mix, back to back in one process."""
    name = session.get_inputs()[0].name
    total = sum(hist.values())
    # A repeating sequence with each batch size in proportion to how often the server ran it.
    sequence = [b for b, n in sorted(hist.items()) for _ in range(max(1, round(40 * n / total)))]
    batches = {b: np.repeat(x, b, axis=0) for b in hist}
    for b in batches:
        session.run(None, {name: batches[b]})
    images = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    end = start + duration
    i = 0
    while time.perf_counter() < end:
        b = sequence[i % len(sequence)]
        session.run(None, {name: batches[b]})
        images += b
        i += 1
    elapsed = time.perf_counter() - start
    return images / elapsed, (time.process_time() - cpu0) / images


# ----------------------------------------------------------------------------- the run


def _median_spread(values: list[float]) -> tuple[float, list[float]]:
    return statistics.median(values), [min(values), max(values)]


def bench_model(model: str, args: argparse.Namespace, workdir: Path, gen: LoadGenerator) -> dict:
    from partition import zoo
    from tests.conftest import free_port

    source = zoo.zoo_model(model)
    repo = workdir / f"repo-{model}"
    _write_repo(repo, model, source, args.max_batch, args.delay_us, args.queue)
    session = _bare_session(source, args.threads, args.spinning)
    input_name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    port = free_port()
    payload = workdir / f"{model}.http"
    _write_http_request(payload, model, {input_name: x}, port)
    from cloud.grpc import encode_infer_request as encode_grpc

    grpc_payload = workdir / f"{model}.grpc"
    grpc_payload.write_bytes(
        encode_grpc(model, {input_name: x}, request_id="bench").SerializeToString())
    grpc_port = free_port()

    spin = "--ort-spinning" if args.spinning else "--no-ort-spinning"
    # A window long enough for ~300 batch-1 runs (~35 batches of 8), so that counting
    # completed requests is not quantized by a handful of batches; 3 to 10 s.
    calibration = bare_b1(session, x, 1.0)["p50_ms"] / 1e3
    window = args.duration or min(10.0, max(3.0, 300 * calibration))
    server = Server(repo, port, args.threads, (spin, *args.server_arg), grpc_port=grpc_port)
    host = "127.0.0.1"
    rounds: dict[str, list] = {k: [] for k in (
        "c1", "c4", "c16", "bare_b1", "bare_same", "hist", "server_cpu", "bare_cpu",
        "grpc_c1", "grpc_c16", "grpc_bare_same", "grpc_hist")}
    try:
        for _ in range(args.rounds):
            rounds["c1"].append(gen.run(host, port, str(payload), 1, window, args.warmup))
            rounds["grpc_c1"].append(gen.run(host, grpc_port, str(grpc_payload), 1, window,
                                             args.warmup, "grpc"))
            rounds["bare_b1"].append(bare_b1(session, x, window))
            rounds["c4"].append(gen.run(host, port, str(payload), 4, window, args.warmup))
            before = _batch_histogram(host, port, model)
            cpu0 = _cpu_s(server.proc.pid)
            c16 = gen.run(host, port, str(payload), 16, window, args.warmup)
            cpu1 = _cpu_s(server.proc.pid)
            rounds["c16"].append(c16)
            after = _batch_histogram(host, port, model)
            hist = {b: after.get(b, 0) - before.get(b, 0) for b in after}
            hist = {b: n for b, n in hist.items() if n > 0}
            rounds["hist"].append(hist)
            images = sum(b * n for b, n in hist.items())
            rounds["server_cpu"].append((cpu1 - cpu0) / max(images, 1))
            throughput, cpu_per_image = bare_same_batches(session, x, hist, window)
            rounds["bare_same"].append(throughput)
            rounds["bare_cpu"].append(cpu_per_image)
            before = _batch_histogram(host, port, model)
            rounds["grpc_c16"].append(gen.run(host, grpc_port, str(grpc_payload), 16, window,
                                              args.warmup, "grpc"))
            after = _batch_histogram(host, port, model)
            ghist = {b: after.get(b, 0) - before.get(b, 0) for b in after}
            ghist = {b: n for b, n in ghist.items() if n > 0}
            rounds["grpc_hist"].append(ghist)
            rounds["grpc_bare_same"].append(bare_same_batches(session, x, ghist, window)[0])
        with PeakRss(server.proc.pid, 0.05) as rss:
            overload = gen.run(host, port, str(payload), args.overload_concurrency,
                               args.overload_duration, 0.5)
        alive = _http(host, port, "GET", "/v2/health/live")[0] == 200
    finally:
        server.stop()

    c16, c16_spread = _median_spread([r["throughput"] for r in rounds["c16"]])
    bare_same, bare_same_spread = _median_spread(rounds["bare_same"])
    ratios = [r["throughput"] / b for r, b in zip(rounds["c16"], rounds["bare_same"], strict=True)]
    # p50 and p99 over every request of every round (pooled); spreads are per round.
    pooled_c1 = sorted(t for r in rounds["c1"] for t in r["lat"])
    pooled_b1 = sorted(t for r in rounds["bare_b1"] for t in r["lat"])
    p50_c1, p50_c1_spread = _pct(pooled_c1, 50) * 1e3, [
        min(r["p50_ms"] for r in rounds["c1"]), max(r["p50_ms"] for r in rounds["c1"])]
    bare_p50, bare_p50_spread = _pct(pooled_b1, 50) * 1e3, [
        min(r["p50_ms"] for r in rounds["bare_b1"]), max(r["p50_ms"] for r in rounds["bare_b1"])]
    added = [r["p50_ms"] - b["p50_ms"] for r, b in zip(rounds["c1"], rounds["bare_b1"], strict=True)]
    grpc_ratios = [r["throughput"] / b
                   for r, b in zip(rounds["grpc_c16"], rounds["grpc_bare_same"], strict=True)]
    pooled_grpc_c1 = sorted(t for r in rounds["grpc_c1"] for t in r["lat"])
    codes = overload["codes"]
    merged_hist: dict[int, int] = {}
    for h in rounds["hist"]:
        for b, n in h.items():
            merged_hist[b] = merged_hist.get(b, 0) + n
    return {
        "throughput_c16": round(c16, 2),
        "bare_ort_throughput_same_batches": round(bare_same, 2),
        "throughput_ratio_c16": round(statistics.median(ratios), 3),
        "p50_ms_c1": round(p50_c1, 3),
        "bare_ort_p50_ms_b1": round(bare_p50, 3),
        "p99_ms_c1": round(_pct(pooled_c1, 99) * 1e3, 3),
        "bare_ort_p99_ms_b1": round(_pct(pooled_b1, 99) * 1e3, 3),
        "overload_503_count": codes.get(503, 0),
        "overload_other_errors": sum(n for c, n in codes.items() if c not in (200, 503))
        + overload["conn_errors"],
        "overload_peak_rss_mb": round(rss.peak_mb, 1),
        # the same server over gRPC (KServe v2 / Triton GRPCInferenceService)
        "grpc_throughput_c16": round(statistics.median(
            [r["throughput"] for r in rounds["grpc_c16"]]), 2),
        "grpc_bare_ort_throughput_same_batches": round(statistics.median(
            rounds["grpc_bare_same"]), 2),
        "grpc_throughput_ratio_c16": round(statistics.median(grpc_ratios), 3),
        "grpc_throughput_ratio_c16_spread": [round(min(grpc_ratios), 3),
                                             round(max(grpc_ratios), 3)],
        "grpc_p50_ms_c1": round(_pct(pooled_grpc_c1, 50) * 1e3, 3),
        "grpc_p50_ms_c1_spread": [round(min(r["p50_ms"] for r in rounds["grpc_c1"]), 3),
                                  round(max(r["p50_ms"] for r in rounds["grpc_c1"]), 3)],
        "grpc_p99_ms_c1": round(_pct(pooled_grpc_c1, 99) * 1e3, 3),
        "grpc_minus_http_p50_ms_c1_per_round": [
            round(g["p50_ms"] - h["p50_ms"], 3)
            for g, h in zip(rounds["grpc_c1"], rounds["c1"], strict=True)],
        "grpc_p50_ms_c16": round(statistics.median([r["p50_ms"] for r in rounds["grpc_c16"]]), 3),
        "grpc_errors_c1_c16": sum(n for r in rounds["grpc_c1"] + rounds["grpc_c16"]
                                  for c, n in r["codes"].items() if c != 200),
        # context for the numbers above
        "window_s": round(window, 2),
        "added_p50_ms_c1": round(statistics.median(added), 3),
        "added_p50_ms_c1_spread": [round(min(added), 3), round(max(added), 3)],
        "throughput_ratio_c16_spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "throughput_c16_spread": [round(v, 2) for v in c16_spread],
        "bare_ort_throughput_same_batches_spread": [round(v, 2) for v in bare_same_spread],
        "p50_ms_c1_spread": [round(v, 3) for v in p50_c1_spread],
        "bare_ort_p50_ms_b1_spread": [round(v, 3) for v in bare_p50_spread],
        "throughput_c1": round(statistics.median([r["throughput"] for r in rounds["c1"]]), 2),
        "throughput_c4": round(statistics.median([r["throughput"] for r in rounds["c4"]]), 2),
        "p50_ms_c4": round(statistics.median([r["p50_ms"] for r in rounds["c4"]]), 3),
        "p50_ms_c16": round(statistics.median([r["p50_ms"] for r in rounds["c16"]]), 3),
        "p99_ms_c16": round(statistics.median([r["p99_ms"] for r in rounds["c16"]]), 3),
        "bare_ort_throughput_b1": round(statistics.median(
            [r["throughput"] for r in rounds["bare_b1"]]), 2),
        "batch_histogram_c16": {str(b): n for b, n in sorted(merged_hist.items())},
        # CPU seconds per image (all threads of the process), robust to other load on the
        # host: the server's includes HTTP, decoding, batching and ONNX Runtime.
        "server_cpu_ms_per_image_c16": round(statistics.median(rounds["server_cpu"]) * 1e3, 3),
        "bare_ort_cpu_ms_per_image_same_batches": round(
            statistics.median(rounds["bare_cpu"]) * 1e3, 3),
        "errors_c1_c4_c16": sum(n for r in rounds["c1"] + rounds["c4"] + rounds["c16"]
                                for c, n in r["codes"].items() if c != 200),
        "overload_ok_count": codes.get(200, 0),
        "overload_rss_before_mb": round(rss.samples[0], 1),
        "overload_server_alive_after": alive,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--models", default="resnet50,squeezenet")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per measured window (default: 300 batch-1 runs, within 3..10 s)")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds before each window")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per model")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads on both sides (default: all cores)")
    parser.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=False,
                        help="let idle ONNX Runtime threads spin, on both sides (default: off, "
                        "since server, load generator and bare ORT share few cores)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_microseconds")
    parser.add_argument("--queue", type=int, default=32, help="max_queue_size per model")
    parser.add_argument("--overload-concurrency", type=int, default=128)
    parser.add_argument("--overload-duration", type=float, default=5.0)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for edgecut serve (repeatable)")
    parser.add_argument("--soak-duration", type=float, default=60.0,
                        help="seconds of the hostile-client soak (0: skip it)")
    parser.add_argument("--soak-baseline", type=float, default=15.0,
                        help="seconds the good client runs alone before and after the soak")
    parser.add_argument("--soak-attacker-nice", type=int, default=0,
                        help="niceness of the attack generator (it shares this host's cores "
                             "with the server; on a network it would use its own)")
    parser.add_argument("--skip-models", action="store_true",
                        help="run only the soak (no per-model rounds)")
    parser.add_argument("--_loadgen", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._loadgen:
        loadgen_main()
        return 0
    cores = os.cpu_count() or 1
    args.threads = args.threads or cores
    import onnxruntime as ort

    from cloud._runtime import ort_providers

    result: dict = {
        "host_cores": cores,
        "server": {"process": "edgecut serve (uvicorn, httptools, uvloop), 1 event loop",
                   "ort_intra_op_threads": args.threads, "ort_spinning": args.spinning,
                   "instances_per_model": 1,
                   "max_batch_size": args.max_batch, "max_queue_delay_us": args.delay_us,
                   "max_queue_size": args.queue},
        "bare_ort": {"process": "this benchmark process, server idle meanwhile",
                     "intra_op_threads": args.threads, "ort_spinning": args.spinning},
        "load_generator": {"process": "separate process, 1 thread, asyncio raw HTTP/1.1; "
                                      "grpc.aio over one HTTP/2 channel",
                           "encoding": "binary tensors (gRPC: raw_input_contents), encoded "
                                       "once, re-sent"},
        "onnxruntime": ort.__version__,
        "providers": ort_providers(),
        "window_s": args.duration or "auto: 300 x bare batch-1 p50 within 3..10 s, per model",
        "rounds": args.rounds,
        "overload_concurrency": args.overload_concurrency,
        "note": "server, load generator and bare ORT share the same cores; medians over rounds",
    }
    gen = LoadGenerator()
    try:
        with tempfile.TemporaryDirectory(prefix="edgecut-bench-") as tmp:
            models = args.models.split(",")
            if not args.skip_models:
                for model in models:
                    result[model] = bench_model(model, args, Path(tmp), gen)
            if args.soak_duration > 0:
                result.update(soak(models[0], args, Path(tmp), gen))
    finally:
        gen.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
