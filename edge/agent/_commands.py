"""Where a fleet message is acted on: a deployment, a command (``reprofile``,
``rollback``, ``reload``, ``telemetry``, ``status``, ``ping``), and what follows a
committed update (measure the new version again, plan its cuts again).

The MQTT side (topics, checks, acks) is ``edge.agent._fleet``; ``_FleetHandling`` is one of
the jobs of :class:`~edge.agent._daemon.Agent`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devices.errors import ConfigError
from edge.agent._lanes import _PolicySource
from edge.agent._logging import log
from edge.agent._slots import ModelVersion, sample_inputs, warm_up

_COMMANDS = ("reprofile", "rollback", "reload", "telemetry", "status", "ping")


class _FleetHandling:
    """The agent's answers to fleet messages (the fleet link calls these)."""

    def deploy(self, msg: dict[str, Any], ack: Callable[..., None]) -> str:
        # Admitted before anything is fetched: names, numbers, source, signed document.
        dep = self.gate.admit_deploy(msg)
        return self.updater.deploy(dep, ack)

    def _models_changed(self) -> None:
        for fn in list(self.model_listeners):
            fn()

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(msg) - {"id", "command", "model"})
        if unknown:
            raise ConfigError(f"cmd: unknown field(s) {unknown}; expected ['command', 'id', "
                              "'model']")
        name = msg.get("command")
        if name not in _COMMANDS:
            raise ConfigError(f"cmd: field 'command': expected one of {list(_COMMANDS)}, "
                              f"got {name!r}")
        model = msg.get("model")
        if model is not None and (not isinstance(model, str) or model not in self.slots):
            raise ConfigError(f"cmd: field 'model': no model named {model!r} "
                              f"(serving: {', '.join(self.slots)})")
        if name == "ping":
            return {"command": name, "pong": True}
        if name == "status":
            return {"command": name, **self.status()}
        if name == "telemetry":
            seq = self.fleet.emit_telemetry() if self.fleet is not None else None
            return {"command": name, "seq": seq}
        if name == "reload":
            return {"command": name, **self.reload()}
        if name == "rollback":
            if model is None:
                raise ConfigError("cmd rollback: field 'model' is required")
            steps: list[dict[str, Any]] = []
            version = self.updater.rollback(model, lambda step, **f: steps.append(f))
            if self.fleet is not None:
                self.fleet.publish_status()
            return {"command": name, "model": model, "serving": version}
        # reprofile
        names = [model] if model else list(self.slots)
        results = {n: self._reprofile(n, self.slots[n].current) for n in names}
        return {"command": name, "results": results}

    def _after_update(self, name: str, version: ModelVersion) -> dict[str, Any]:
        result = self._reprofile(name, version)
        plan = self._repartition(name, version)
        if plan is not None:
            result["repartition"] = plan
        return result

    def _reprofile(self, name: str, version: ModelVersion) -> dict[str, Any]:
        """Measure the serving version again; run registered re-partition hooks."""
        runs, inputs_path = self._warmup_for(name)
        feeds = sample_inputs(version.session, inputs_path)
        ms = warm_up(version.session, feeds, max(3, runs))
        result: dict[str, Any] = {"version": version.version, "local_ms": round(ms, 3)}
        for hook in self.reprofile_hooks:
            result[getattr(hook, "__name__", "hook")] = hook(name, version)
        self.reprofiles.append({"model": name, **result})
        log.info(json.dumps({"event": "reprofiled", "model": name, **result}))
        return result

    def _repartition(self, name: str, version: ModelVersion) -> dict[str, Any] | None:
        """Plan the new version's cuts again (models served with a plan and a cloud).

        The new plan's tails must be on the cloud before the executor may use them; until
        the cloud reports every remote model of the plan ready, the version runs locally.
        """
        m = next((x for x in self.config.models if x.name == name), None)
        if m is None or not m.plan or not self.config.cloud.url:
            return None
        from partition import build_plan

        planned = self.executors.get(name)
        if planned is not None:
            est = planned.executor.link.estimate()
            bandwidth, rtt = est.bandwidth_bps, est.rtt_s
        else:
            link = _PolicySource(self).config.link
            bandwidth, rtt = link.prior_bandwidth_bps, link.prior_rtt_s
        objective = "energy" if (self.policy_config and
                                 self.policy_config.objective == "energy") else "latency"
        out_dir = Path(self.config.data_dir) / "plans" / name / version.version
        shapes = self._profiling_sizes(name, version)
        plan = build_plan(version.path, self.profile, self.config.cloud.url, bandwidth, rtt,
                          objective=objective, out_dir=out_dir, figure=False,
                          shapes=shapes or None)
        plan_path = str(out_dir / "plan.json")
        from edge.offload import offload_client

        cloud = self.config.cloud
        settings = _PolicySource(self).config.offload
        with offload_client(cloud.url, protocol=cloud.protocol, settings=settings) as c:
            missing = sorted({cand.cloud_model for cand in plan.candidates
                              if cand.cloud_model and not c.ready(cand.cloud_model)})
        result: dict[str, Any] = {"plan": plan_path, "chosen": plan.chosen,
                                  "cloud_missing": missing, "profiled_sizes": shapes}
        if not missing:
            self._attach_executor(name, plan_path)
        log.info(json.dumps({"event": "repartitioned", "model": name,
                             "version": version.version, **result}))
        return result

    def _profiling_sizes(self, name: str, version: ModelVersion) -> list[dict[str, int]]:
        """The sizes of ``version``'s dynamic dims that its plan is profiled at: those its
        requests ran at most (``_seen.profiling_points``); empty (the planner's default
        points) for a model without dynamic dims or before any request."""
        from edge.agent._seen import CAPACITY, profiling_points
        from partition import input_dims, load_model

        hist = self.seen_sizes.get(name)
        if hist is None or not len(hist):
            return []
        dims, batch = input_dims(load_model(version.path))
        return profiling_points([shapes for shapes, _ in hist.top(CAPACITY)], dims, batch)
