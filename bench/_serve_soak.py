"""The hostile-client soak of ``bench/serve.py`` (see that module's docstring): a
well-behaved client alone, then beside 500 slow connections and malformed requests
(``bench/_soak.py``, a separate process), then alone again."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._serving import (
    ROOT,
    PeakRss,
    Server,
    _cpu_s,
    _http,
    _write_http_request,
    _write_repo,
)


def soak(model: str, args: argparse.Namespace, workdir: Path, gen: Any) -> dict:
    """The hostile-client soak (see the module docstring)."""
    from partition import zoo
    from tests.conftest import free_port

    source = zoo.zoo_model(model)
    repo = workdir / f"soak-{model}"
    _write_repo(repo, model, source, args.max_batch, args.delay_us, args.queue)
    import onnxruntime as ort

    input_name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]
                                      ).get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    port = free_port()
    payload = workdir / f"soak-{model}.http"
    _write_http_request(payload, model, {input_name: x}, port)
    spin = "--ort-spinning" if args.spinning else "--no-ort-spinning"
    server = Server(repo, port, args.threads, (spin, *args.server_arg))
    host = "127.0.0.1"
    try:
        gen.run(host, port, str(payload), 4, 2.0, 0.5)  # warm-up
        cpu0 = _cpu_s(server.proc.pid)
        before = gen.run(host, port, str(payload), 4, args.soak_baseline, args.warmup)
        cpu_alone = (_cpu_s(server.proc.pid) - cpu0) / max(1, before["throughput"]
                                                           * args.soak_baseline)
        with PeakRss(server.proc.pid, 0.1) as rss:
            attackers = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "_soak.py"), str(port),
                 str(args.soak_duration + 2.0), model], stdout=subprocess.PIPE, text=True,
                preexec_fn=(lambda: os.nice(args.soak_attacker_nice)) if args.soak_attacker_nice
                else None)
            time.sleep(2.0)  # the slow connections are open before the measurement starts
            cpu0 = _cpu_s(server.proc.pid)
            under = gen.run(host, port, str(payload), 4, args.soak_duration - 2.0, 0.0)
            cpu_under = (_cpu_s(server.proc.pid) - cpu0) / max(
                1, under["throughput"] * (args.soak_duration - 2.0))
            attacker_cpu = _cpu_s(attackers.pid)
            attack_out, _ = attackers.communicate(timeout=120)
        after = gen.run(host, port, str(payload), 4, args.soak_baseline, args.warmup)
        alive = _http(host, port, "GET", "/v2/health/live")[0] == 200
    finally:
        server.stop()
    baseline = (before["throughput"] + after["throughput"]) / 2
    attack = json.loads(attack_out)
    return {
        "soak_good_throughput_ratio": round(under["throughput"] / baseline, 3),
        "soak_good_errors": sum(n for c, n in under["codes"].items() if c != 200)
        + under["conn_errors"],
        "soak_peak_rss_mb": round(rss.peak_mb, 1),
        # context
        "soak_model": model,
        "soak_duration_s": args.soak_duration,
        "soak_good_throughput": round(under["throughput"], 2),
        "soak_good_throughput_alone_before_after": [round(before["throughput"], 2),
                                                   round(after["throughput"], 2)],
        "soak_good_p50_ms": round(under["p50_ms"], 3) if under["p50_ms"] else None,
        "soak_good_p50_ms_alone_before": round(before["p50_ms"], 3) if before["p50_ms"] else None,
        "soak_rss_before_mb": round(rss.samples[0], 1),
        "soak_slow_connections": 500,
        "soak_slow_connects": attack["slow_connects"],
        "soak_slow_answers": attack["slow_answers"],
        "soak_slow_connect_errors": attack["slow_errors"],
        "soak_malformed_answers": attack["malformed_answers"],
        "soak_server_alive_after": alive,
        # CPU: the server's seconds per good request (all its work, the attack's included)
        # alone and under attack, and what the attack generator itself used on this host
        "soak_server_cpu_ms_per_good_request_alone": round(cpu_alone * 1e3, 3),
        "soak_server_cpu_ms_per_good_request_under_attack": round(cpu_under * 1e3, 3),
        "soak_attacker_cpu_s": round(attacker_cpu, 2),
        "soak_attacker_nice": args.soak_attacker_nice,
        "host_loadavg_1m_after": float(open("/proc/loadavg").read().split()[0]),
    }
