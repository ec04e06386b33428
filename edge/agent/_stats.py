"""The per-request facts the agent gathers between two telemetry records."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np


class _Stats:
    """Per-request facts gathered between two telemetry records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()
        self.total_requests = 0
        self.total_errors = 0
        # Cumulative since start, for /metrics (telemetry takes windows of the above):
        # (model, plan) -> decisions; model -> fallbacks, errors, answered, energy (mJ).
        self.decisions_total: Counter[tuple[str, str]] = Counter()
        self.fallbacks_total: Counter[str] = Counter()
        self.errors_total: Counter[str] = Counter()
        self.answered_total: Counter[str] = Counter()
        self.energy_mj_total: Counter[str] = Counter()

    def _reset(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.plans: Counter[str] = Counter()
        self.fallbacks = 0
        self.energy_mj = 0.0
        self.since = time.time()

    def add(self, model: str, plan: str, ms: float, energy_mj: float, ok: bool,
            fallback: bool = False) -> None:
        with self._lock:
            self.total_requests += 1
            if ok:
                self.latency[model].append(ms)
                self.plans[plan] += 1
                self.energy_mj += energy_mj
                self.decisions_total[(model, plan)] += 1
                self.answered_total[model] += 1
                self.energy_mj_total[model] += energy_mj
            else:
                self.errors[model] += 1
                self.total_errors += 1
                self.errors_total[model] += 1
            if fallback:
                self.fallbacks += 1
                self.fallbacks_total[model] += 1

    def totals(self) -> dict[str, Any]:
        """A consistent copy of the cumulative counters."""
        with self._lock:
            return {"decisions": dict(self.decisions_total),
                    "fallbacks": dict(self.fallbacks_total),
                    "errors": dict(self.errors_total),
                    "answered": dict(self.answered_total),
                    "energy_mj": dict(self.energy_mj_total)}

    def take(self) -> dict[str, Any]:
        with self._lock:
            lat, errors, plans = self.latency, self.errors, self.plans
            fallbacks, energy, since = self.fallbacks, self.energy_mj, self.since
            self._reset()
        models = {}
        for name in set(lat) | set(errors):
            values = np.asarray(lat.get(name, []), dtype=np.float64)
            entry: dict[str, Any] = {"requests": int(values.size) + errors[name],
                                     "errors": errors[name]}
            if values.size:
                p50, p90, p99 = np.percentile(values, [50, 90, 99])
                entry["latency_ms"] = {"p50": round(float(p50), 3), "p90": round(float(p90), 3),
                                       "p99": round(float(p99), 3),
                                       "max": round(float(values.max()), 3)}
            models[name] = entry
        return {"window_s": round(time.time() - since, 3), "models": models,
                "decisions": dict(plans), "fallbacks": fallbacks,
                "energy_mj": round(energy, 3)}
