"""The lab's real cloud: ``edgecut serve`` as a subprocess on a free port of 127.0.0.1,
and the plan (head and tail models, Triton repository) it serves."""


from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from devices import DeviceProfile
from devices.errors import EdgecutError
from partition import Plan


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CloudServer:
    """``edgecut serve`` as a subprocess on 127.0.0.1 (started, waited for, stopped)."""

    def __init__(self, repository: str | Path, *, port: int | None = None, threads: int = 1,
                 auth_keys: str | Path | None = None, startup_timeout_s: float = 120.0,
                 log_path: str | Path | None = None, grpc_port: int | None = None) -> None:
        # The server runs from the package root, so a relative path must be made absolute.
        self.repository = Path(repository).resolve()
        self.port = port or _free_port()
        self.threads = threads
        self.auth_keys = auth_keys
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        # gRPC beside HTTP (edgecut serve --grpc-port); 0 picks a free port here.
        self.grpc_port = _free_port() if grpc_port == 0 else grpc_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        if self.grpc_port is None:
            raise EdgecutError("this server was started without gRPC (grpc_port)")
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self) -> CloudServer:
        import httpx

        cmd = [sys.executable, "-m", "edge.cli", "serve", "--repository", str(self.repository),
               "--port", str(self.port), "--intra-op-threads", str(self.threads),
               "--log-level", "warning"]
        cmd += ["--auth-keys", str(Path(self.auth_keys).resolve())] if self.auth_keys else ["--no-auth"]
        if self.grpc_port is not None:
            cmd += ["--grpc-port", str(self.grpc_port)]
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgecutError(f"edgecut serve exited with {self.proc.returncode} "
                                   f"(repository {self.repository})")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise EdgecutError(f"edgecut serve on {self.url} not ready after {self.startup_timeout_s} s")

    def kill(self) -> None:
        """Kill the server abruptly (a crashed cloud)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prepare_plan(model_path: str | Path, device: DeviceProfile, out_dir: str | Path, *,
                 bandwidth_bps: float = 10e6, rtt_s: float = 0.04, objective: str = "latency",
                 slo_ms: float | None = None, keep: int = 6, reuse: bool = True,
                 log: Callable[[str], None] | None = None, wire: str | None = None) -> Plan:
    """The partitioner's plan for ``model_path`` on ``device`` (this host as the cloud),
    written to ``out_dir``; an existing plan there for the same model and device (and
    ``wire`` format, when one is asked for) is reused. A new plan sends tensors as
    ``wire`` (default fp32)."""
    import partition

    out = Path(out_dir)
    if reuse and (out / "plan.json").is_file():
        plan = Plan.load(out / "plan.json")
        if (plan.device == device.name and Path(plan.model_path) == Path(model_path)
                and wire in (None, plan.info.get("wire", "fp32"))):
            return plan
    return partition.build_plan(model_path, device, "here", bandwidth_bps, rtt_s,
                                objective=objective, slo_ms=slo_ms, out_dir=out, keep=keep,
                                runs=5, measure=min(keep, 6), measure_runs=5, figure=False,
                                log=log, wire=wire or "fp32")
