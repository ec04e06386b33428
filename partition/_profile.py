"""Per-node latency profiles: measured here with ONNX Runtime's profiler, fetched from
the cloud service (``POST {url}/v2/models/{m}/profile``), or read from a recorded file.

A profile maps node names to median milliseconds at batch 1, plus ``total_ms``, the
median wall time of the whole model in one optimized session. Nodes are profiled with
ORT's *extended* graph optimizations: fusions happen (so a fused Conv+BN+Relu is timed
once, under the Conv's name, and the fused-away nodes read 0) but node names survive,
which the layout-changing level ``all`` would rename. ``total_ms`` is measured at the
device profile's own optimization level, and the planner scales node sums to it.

When this host profiles on behalf of another device, every time is divided by the
device profile's ``relative_speed`` and the profile says so (``emulated``, ``scale``).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from devices import DeviceProfile
from devices.errors import CloudUnavailable, ModelError, PartitionError

_OPT = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
        "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class Profile:
    """Median per-node times (ms, batch 1) of one model on one device."""

    model: str
    device: str
    nodes: dict[str, float]
    total_ms: float
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0
    runs: int = 0
    scale: float = 1.0
    emulated: bool = False
    source: str = ""
    host: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def node_sum(self) -> float:
        return float(sum(self.nodes.values()))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["providers"] = list(self.providers)
        return data

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "") -> Profile:
        """Read a profile; the cloud service's reply (``nodes``, ``total_ms``,
        ``providers``) is enough."""
        if not isinstance(data, dict):
            raise PartitionError(f"profile {source}: expected a JSON object")
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise PartitionError(f"profile {source}: key 'nodes' must map node names to ms")
        try:
            clean = {str(k): float(v) for k, v in nodes.items()}
            total = float(data.get("total_ms", sum(clean.values())))
        except (TypeError, ValueError) as exc:
            raise PartitionError(f"profile {source}: node times must be numbers: {exc}") from exc
        if any(v < 0 for v in clean.values()) or total <= 0:
            raise PartitionError(f"profile {source}: times must be >= 0 and total_ms > 0")
        return Profile(
            model=str(data.get("model", "")),
            device=str(data.get("device", "")),
            nodes=clean,
            total_ms=total,
            providers=tuple(data.get("providers", ("CPUExecutionProvider",))),
            threads=int(data.get("threads", 0)),
            runs=int(data.get("runs", 0)),
            scale=float(data.get("scale", 1.0)),
            emulated=bool(data.get("emulated", False)),
            source=str(data.get("source", source)),
            host=str(data.get("host", "")),
            extra=dict(data.get("extra", {})),
        )

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2))
        return p

    @staticmethod
    def load(path: str | Path) -> Profile:
        p = Path(path)
        if not p.is_file():
            raise PartitionError(f"profile '{p}': file not found")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise PartitionError(f"profile '{p}': not valid JSON: {exc}") from exc
        return Profile.from_dict(data, str(p))


def threads_for(device: DeviceProfile) -> int:
    """The intra-op threads to use here for ``device``: its own setting, or its core
    count, never more than this host has."""
    host = os.cpu_count() or 1
    want = device.intra_op_threads or device.cpu_cores
    return max(1, min(want, host))


def session_options(threads: int, level: str = "all", profile_prefix: str | None = None) -> Any:
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT[level])
    opts.log_severity_level = 3
    # Idle pool threads must not spin: head and tail sessions (and other processes) take
    # turns on the same cores, and a spinning pool would steal the next session's time.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def make_session(model: onnx.ModelProto | bytes | str, threads: int, level: str = "all") -> Any:
    """A CPU ONNX Runtime session with fixed threads (what the planner measures with)."""
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(data, session_options(threads, level), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load the model: {exc}") from exc


def random_feeds(session: Any, batch: int = 1, seed: int = 0,
                 sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for every input of an ORT session: a named dynamic dim takes
    its size from ``sizes`` (by the model's dim name), any other dynamic dim ``batch``."""
    from partition._onnx import _ort_dtype

    rng = np.random.default_rng(seed)
    sizes = sizes or {}
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else int(sizes.get(d, batch)) if isinstance(d, str)
                 else batch for d in i.shape]
        dtype = _ort_dtype(i.type)
        if dtype.kind == "f":
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[i.name] = np.zeros(shape, dtype=dtype)
    return feeds


def time_session(session: Any, feeds: dict[str, np.ndarray], runs: int, warmup: int = 2) -> float:
    """Median wall time of ``session.run`` in ms after ``warmup`` runs."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def profile_model(
    model: onnx.ModelProto,
    device: DeviceProfile,
    runs: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    model_name: str = "",
    emulate: bool = True,
    sizes: Mapping[str, int] | None = None,
) -> Profile:
    """Profile every node of ``model`` here with ORT's profiler (median of ``runs``
    after ``warmup``), on behalf of ``device``: times are divided by its
    ``relative_speed`` when ``emulate`` (this host stands in for the device)."""
    from partition._onnx import _named_copy

    if runs < 1:
        raise PartitionError(f"runs must be >= 1, got {runs}")
    model = _named_copy(model)
    n_threads = threads or threads_for(device)
    data = model.SerializeToString()
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    with tempfile.TemporaryDirectory(prefix="edgecut-prof-") as tmp:
        opts = session_options(n_threads, "extended", os.path.join(tmp, "p"))
        try:
            sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"model '{model_name or model.graph.name}': ONNX Runtime cannot load it: {exc}") from exc
        feeds = random_feeds(sess, sizes=sizes)
        try:
            for _ in range(warmup + runs):
                sess.run(None, feeds)
        except Exception as exc:  # ORT's Fail/InvalidArgument: the model rejects this size
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise ModelError(
                f"model '{model_name or model.graph.name}' does not run at input shapes {shapes}: "
                f"{str(exc)[-300:]}. Give the sizes it takes for its dynamic dims "
                "(--shapes NAME=SIZE,..., e.g. H=48,W=320)"
            ) from exc
        trace_path = sess.end_profiling()
        events = json.loads(Path(trace_path).read_text())
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        per_node.setdefault(name, []).append(e["dur"] / 1000.0)
    scale = 1.0 / device.relative_speed if emulate else 1.0
    node_ms: dict[str, float] = {}
    fused: list[str] = []
    for n in model.graph.node:
        ds = per_node.get(n.name)
        if ds:
            # Each run emits one event per node; drop the warm-up runs.
            kept = ds[warmup:] if len(ds) > warmup else ds
            node_ms[n.name] = float(statistics.median(kept)) * scale
        else:
            node_ms[n.name] = 0.0  # fused into a neighbour or folded as a constant
            fused.append(n.name)
    total = make_session(data, n_threads, device.graph_optimization)
    total_ms = time_session(total, random_feeds(total, sizes=sizes), runs, warmup=warmup) * scale
    return Profile(
        model=model_name or model.graph.name,
        device=device.name,
        nodes=node_ms,
        total_ms=total_ms,
        providers=("CPUExecutionProvider",),
        threads=n_threads,
        runs=runs,
        scale=scale,
        emulated=emulate and device.relative_speed != 1.0,
        source="measured here",
        host=socket.gethostname(),
        extra={"fused_or_folded": fused, "graph_optimization": device.graph_optimization,
               **({"sizes": dict(sizes)} if sizes else {})},
    )


def fetch_cloud_profile(url: str, model: str, runs: int = 10, timeout_s: float = 120.0,
                        token: str | None = None) -> Profile:
    """Ask the cloud service to profile ``model``: ``POST {url}/v2/models/{model}/profile``
    with ``{"runs": N, "batch": 1}``."""
    import httpx

    endpoint = f"{url.rstrip('/')}/v2/models/{model}/profile"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.post(endpoint, json={"runs": runs, "batch": 1}, timeout=timeout_s, headers=headers)
    except httpx.HTTPError as exc:
        raise CloudUnavailable(f"cloud profile {endpoint}: {exc}") from exc
    if resp.status_code != 200:
        raise CloudUnavailable(
            f"cloud profile {endpoint}: HTTP {resp.status_code}: {resp.text[:300]}"
        )
    try:
        data = resp.json()
    except ValueError as exc:
        raise CloudUnavailable(f"cloud profile {endpoint}: reply is not JSON") from exc
    data.setdefault("model", model)
    data.setdefault("device", "cloud")
    data["source"] = endpoint
    return Profile.from_dict(data, endpoint)
