"""The server side of the serve benchmarks: a repository, an `edgecut serve` subprocess,
and what /proc and the statistics extension say about it (RSS, CPU, batch sizes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _http(host: str, port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body or None)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batch_histogram(host: str, port: int, model: str) -> dict[int, int]:
    status, body = _http(host, port, "GET", f"/v2/models/{model}/stats")
    if status != 200:
        raise RuntimeError(f"stats of {model}: HTTP {status} {body[:200]!r}")
    hist: dict[int, int] = {}
    for entry in json.loads(body)["model_stats"]:
        for b in entry["batch_stats"]:
            hist[b["batch_size"]] = hist.get(b["batch_size"], 0) + b["compute_infer"]["count"]
    return hist


def _write_repo(root: Path, model: str, source: Path, max_batch: int, delay_us: int,
                queue: int) -> None:
    folder = root / model / "1"
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "model.onnx")
    (root / model / "config.pbtxt").write_text(
        f'name: "{model}"\nmax_batch_size: {max_batch}\n'
        "instance_group [ { count: 1 } ]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us}\n"
        f"  default_queue_policy {{ max_queue_size: {queue} }} }}\n")


def _write_http_request(path: Path, model: str, inputs: dict, port: int) -> None:
    """One v2 infer request for ``model`` as the raw HTTP/1.1 bytes (head and binary
    body) the load generator re-sends, written to ``path``."""
    from cloud import encode_infer_request

    body, headers = encode_infer_request(inputs)
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + f"Content-Length: {len(body)}\r\n\r\n").encode()
    path.write_bytes(head + body)


class Server:
    def __init__(self, repo: Path, port: int, threads: int, extra: tuple[str, ...] = (),
                 grpc_port: int | None = None) -> None:
        self.port = port
        grpc = ("--grpc-port", str(grpc_port)) if grpc_port else ()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "serve", "--repository", str(repo),
             "--port", str(port), *grpc, "--no-auth", "--intra-op-threads", str(threads),
             "--log-level", "warning", "--max-in-flight", "4096", *extra],
            cwd=ROOT, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("edgecut serve exited during start-up")
            try:
                if _http("127.0.0.1", port, "GET", "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("edgecut serve did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PeakRss:
    """Samples a process's RSS from /proc every ``every_s`` while in a ``with`` block."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples = [_rss_mb(pid)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.samples.append(_rss_mb(self.pid))
            except OSError:
                return

    @property
    def peak_mb(self) -> float:
        return max(self.samples)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
