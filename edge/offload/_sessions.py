"""The executor's ONNX Runtime sessions: the whole model, each head and local tail in the
plan folder, loaded once and shared by the request threads, and a local run on them (its
time in the device's terms, the power sensor's correction, the local queue's count).

``_Sessions`` is one of the jobs of :class:`~edge.offload._executor.Executor`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import ConfigError
from edge.runtime import Session
from partition import LOCAL, CutCandidate, Plan


class SessionCache:
    """Device sessions by model file, each loaded on first use and shared by the threads
    that run it; ``owner`` names the model files in the error when one is missing."""

    def __init__(self, device: Any, intra_op_threads: int | None, owner: str) -> None:
        self.device = device
        self.threads = intra_op_threads
        self.owner = owner
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> Session:
        key = str(path)
        with self._lock:
            sess = self._sessions.get(key)
            if sess is None:
                from edge.runtime import load

                if not path.is_file():
                    raise ConfigError(f"{self.owner}: model file {path} not found")
                kwargs: dict[str, Any] = {}
                if self.threads:
                    kwargs["intra_op_threads"] = self.threads
                sess = load(path, self.device, **kwargs)
                self._sessions[key] = sess
            return sess

    def close(self) -> None:
        with self._lock:
            for sess in self._sessions.values():
                sess.close()
            self._sessions.clear()


def _whole_model(plan: Plan, plan_dir: Path) -> Path:
    """The whole model: the local candidate's file in the plan folder, else the plan's
    ``model_path`` (relative to the plan folder unless absolute)."""
    local = next((c for c in plan.candidates if c.kind == LOCAL and c.head_model), None)
    model_path = Path(plan.model_path)
    if local is not None and (plan_dir / local.head_model).is_file():
        return plan_dir / local.head_model
    if not model_path.is_absolute():
        return plan_dir / model_path
    return model_path


class _Sessions:
    """Loading and caching the plan's models on the device, and running them there."""

    def _run_local(self, path: Path, feeds: Mapping[str, np.ndarray]) -> tuple[dict, float]:
        with self._inflight_lock:
            self._local_inflight += 1
        try:
            sess = self._session_for(path)
            t0 = time.perf_counter()
            out = sess.run(dict(feeds))
            ms = (time.perf_counter() - t0) * 1000.0 * self.compute_scale
            if self.power_sensor is not None:
                watts = self.power_sensor.read_w()
                if watts is not None and watts > 0:
                    self.energy = self.energy.corrected(watts)
            return out, ms
        finally:
            with self._inflight_lock:
                self._local_inflight -= 1

    def _session_for(self, path: Path) -> Session:
        return self._sessions.get(path)

    def _head_session(self, cand: CutCandidate) -> Session:
        return self._session_for(self.plan_dir / cand.head_model)

    def _local_tail_path(self, cand: CutCandidate) -> Path | None:
        if not cand.tail_model:
            return None
        path = self.plan_dir / cand.tail_model
        return path if path.is_file() else None

    def _device_layers(self) -> dict[str, frozenset[str]]:
        """Node and tensor names each split's head computes (for the privacy rule)."""
        import onnx

        out: dict[str, frozenset[str]] = {}
        for c in self.plan.candidates:
            if c.kind == LOCAL or not c.head_model:
                continue
            path = self.plan_dir / c.head_model
            if not path.is_file():
                continue
            graph = onnx.load(str(path), load_external_data=False).graph
            names: set[str] = set()
            for n in graph.node:
                names.add(n.name)
                names.update(n.output)
            out[c.cut_id] = frozenset(names)
        return out

    def warm_up(self) -> None:
        """Load every head and local tail session now rather than on first use."""
        for c in self.plan.candidates:
            if c.head_model and (self.plan_dir / c.head_model).is_file():
                self._head_session(c)
            tail = self._local_tail_path(c)
            if tail is not None:
                self._session_for(tail)
