"""Where the agent runs a request: the model's lane through the policy and the executor
(a plan and a cloud), or locally on the serving version; each request counted and logged.

``_Lanes`` is one of the jobs of :class:`~edge.agent._daemon.Agent` (it reads the agent's
``config``, ``slots``, ``executors``, ``stats``, ``profile`` and ``policy_config``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud._deferred import after_answer
from devices.errors import EdgecutError, ModelInputError
from edge.agent._logging import log, log_request, request_log
from edge.agent._slots import ModelSlot, ModelVersion

if TYPE_CHECKING:
    from edge.agent._daemon import Agent


class _PolicySource:
    """Hands the policy the config in force now (file, SIGHUP or MQTT), read per request,
    and keeps ``client`` (the executor's offload client, when given) on its ``[offload]``
    keys: a policy pushed or reloaded changes the next call's timeout, retries and breaker."""

    def __init__(self, agent: Agent, client: Any = None) -> None:
        self._agent = agent
        self._client = client
        self._followed: Any = None

    @property
    def config(self) -> Any:
        from edge.policy._config import PolicyConfig

        cfg = self._agent.policy_config or PolicyConfig()
        if self._client is not None and cfg.offload != self._followed:
            from edge.offload import follow_offload_settings

            follow_offload_settings(self._client, cfg.offload)
            self._followed = cfg.offload
        return cfg


class _Planned:
    """An executor (policy + offload client) for one version of a model."""

    def __init__(self, version: str, plan_path: str, executor: Any, client: Any) -> None:
        self.version = version
        self.plan_path = plan_path
        self.executor = executor
        self.client = client

    def close(self) -> None:
        self.executor.close()
        self.client.close()


class _Lanes:
    """Serving: which lane a request takes, running it, and its record."""

    def _attach_executor(self, name: str, plan_path: str) -> None:
        """Serve ``name`` through a new executor for ``plan_path`` (none: locally)."""
        planned = None
        if plan_path and self.config.cloud.url and name in self.slots:
            planned = self._build_executor(name, plan_path, self.config.cloud,
                                           self.slots[name].current.version)
        old = self.executors.pop(name, None)
        if planned is not None:
            self.executors[name] = planned
        if old is not None:
            old.close()

    def _build_executor(self, name: str, plan_path: str, cloud: Any, version: str) -> _Planned:
        from edge.offload import offload_client
        from edge.offload._client import FileToken
        from edge.offload._executor import Executor
        from edge.policy._decide import Policy
        from partition import Plan

        plan = Plan.load(plan_path)
        token = FileToken(cloud.token_file) if cloud.token_file else None
        # The call's timeout, retries and breaker are policy.toml's [offload] keys, and the
        # source keeps the client on them as the policy changes.
        client = offload_client(cloud.url, protocol=cloud.protocol, token=token,
                                settings=_PolicySource(self).config.offload)
        source = _PolicySource(self, client)
        try:
            executor = Executor(plan, Path(plan_path).parent, self.profile,
                                policy=Policy(source), client=client)
            executor.warm_up()
        except EdgecutError:
            client.close()
            raise
        log.info(json.dumps({"event": "executor_ready", "model": name, "plan": plan_path,
                             "cloud": cloud.url, "candidates": len(plan.candidates)}))
        return _Planned(version, plan_path, executor, client)


    def prepare(self, name: str, feeds: Mapping[str, np.ndarray]
                ) -> tuple[Callable[[], dict[str, np.ndarray]], bool] | None:
        """Decide how a request for ``name`` runs, before it is queued (microseconds).

        Returns ``(run, inline)``: ``inline`` when it should run locally within
        ``[api] inline_max_ms`` (the API then runs it on its event loop, with no thread
        hand-off), or ``None`` to leave it all to ``infer`` on the worker thread. A model
        with a plan gets the policy's decision here, and ``run`` carries it out.
        """
        slot = self.slots.get(name)
        limit = self.config.api.inline_max_ms
        if slot is None or limit <= 0:
            return None
        planned = self.executors.get(name)
        if planned is not None and planned.version == slot.current.version:
            decided = planned.executor.decide(feeds)
            decision = decided.decision
            inline = decision.plan == "local" and 0.0 < decision.predicted_ms <= limit
            return partial(self._infer_planned, name, slot, planned, feeds, decided), inline
        expected = self._local_ms.get(name)
        if expected is None or expected > limit:
            return None
        return partial(self.infer, name, feeds), True

    def infer(self, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request for model ``name``; record and log its decision and costs."""
        slot = self.slots.get(name)
        if slot is None:
            raise ModelInputError(f"no model named '{name}' (serving: {', '.join(self.slots)})")
        planned = self.executors.get(name)
        if planned is not None and planned.version == slot.current.version:
            return self._infer_planned(name, slot, planned, feeds)
        start = time.perf_counter()
        plan = "local"
        try:
            out, version = slot.run(feeds)
        except EdgecutError as exc:
            ms = (time.perf_counter() - start) * 1000.0
            self.stats.add(name, plan, ms, 0.0, ok=False)
            request_log.warning(json.dumps({"event": "request", "model": name, "plan": plan,
                                            "ok": False, "ms": round(ms, 3),
                                            "error": str(exc)}))
            raise
        ms = (time.perf_counter() - start) * 1000.0
        # Counted and logged once the answer is on its way (the API's fast lane).
        after_answer(self._count_local, name, version, planned, ms, _shapes(feeds))
        return out

    def _see_sizes(self, name: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Count the input sizes a request for ``name`` ran at (only requests that ran:
        their sizes are ones this device can run, and profile, the model at)."""
        from edge.agent._seen import SizeHistogram

        hist = self.seen_sizes.get(name)
        if hist is None:
            hist = self.seen_sizes.setdefault(name, SizeHistogram())
        hist.record(shapes)

    def _count_local(self, name: str, version: ModelVersion, planned: _Planned | None,
                     ms: float, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        if shapes is not None:
            self._see_sizes(name, shapes)
        seen = self._local_ms.get(name)
        self._local_ms[name] = ms if seen is None else 0.8 * seen + 0.2 * ms
        energy = ms * self._active_w  # W * ms = mJ, above idle
        self.stats.add(name, "local", ms, energy, ok=True)
        if self.config.log_requests and request_log.isEnabledFor(logging.INFO):
            log_request({
                "event": "request", "model": name, "version": version.version,
                "plan": "local", "reason": self._local_reason(planned),
                "ok": True, "device_ms": round(ms, 3), "up_ms": 0.0, "cloud_ms": 0.0,
                "down_ms": 0.0, "energy_mj": round(energy, 3)})

    def _local_reason(self, planned: _Planned | None) -> str:
        if not self.config.cloud.url:
            return "no cloud configured"
        if planned is None:
            return "no plan for this model"
        return f"the plan is for version {planned.version}; re-partitioning pending"

    def _infer_planned(self, name: str, slot: ModelSlot, planned: _Planned,
                       feeds: Mapping[str, np.ndarray], decided: Any = None
                       ) -> dict[str, np.ndarray]:
        version = slot.current
        start = time.perf_counter()
        try:
            outcome = planned.executor.infer(feeds, decided=decided)
        except EdgecutError as exc:
            ms = (time.perf_counter() - start) * 1000.0
            version.record(False)
            self.stats.add(name, "error", ms, 0.0, ok=False)
            request_log.warning(json.dumps({"event": "request", "model": name, "ok": False,
                                            "ms": round(ms, 3), "error": str(exc)}))
            raise
        ms = (time.perf_counter() - start) * 1000.0
        version.record(True)
        self._see_sizes(name, _shapes(feeds))
        decision = outcome.decision
        self.stats.add(name, decision.plan, ms, outcome.energy_mj, ok=True,
                       fallback=bool(outcome.fallback))
        if self.config.log_requests and request_log.isEnabledFor(logging.INFO):
            log_request({
                "event": "request", "model": name, "version": version.version,
                "plan": decision.plan, "executed": outcome.executed,
                "fallback": outcome.fallback, "raced": outcome.raced,
                "reason": decision.reason, "ok": True,
                "ms": round(ms, 3), "device_ms": round(outcome.head_ms + outcome.local_tail_ms, 3),
                "cloud_ms": round(outcome.cloud_ms, 3), "up_bytes": outcome.up_bytes,
                "down_bytes": outcome.down_bytes, "energy_mj": round(outcome.energy_mj, 3),
                "predicted_ms": round(decision.predicted_ms, 3),
                "deadline_missed": outcome.deadline_missed})
        return outcome.outputs


def _shapes(feeds: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """A request's input shapes (what the size histogram counts)."""
    return {k: tuple(np.shape(v)) for k, v in feeds.items()}
