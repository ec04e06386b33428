"""The edge agent: a long-running daemon that serves models to local applications.

One process holds, for each configured model, a :class:`~edge.agent._updates.ModelSlot` (the
serving version, swapped atomically by updates) and answers the Open Inference Protocol on
127.0.0.1 and/or a Unix socket. The protocol, its codec and the HTTP app are the cloud
package's (``cloud.create_app`` over an ``InferenceService``): the agent only supplies a
model runtime per model that runs the request on the device, so a local application and
a cloud application use the same client. ``/agent/status`` adds the agent's own state.

Lifecycle: SIGTERM or SIGINT stop accepting connections and let in-flight requests finish
within ``agent.shutdown_grace_s``, then the fleet link publishes ``offline`` and the
process exits; SIGHUP re-reads ``agent.toml`` and applies what can change live. Every
request is logged as one JSON line with its decision and its measured costs.

This module holds the agent's state and its life (``Agent``, ``run_agent``); its jobs
are beside it: config applied live (``_apply``), a request's lane and record
(``_lanes``), fleet messages acted on (``_commands``), the local API (``_api``), the log
(``_logging``) and telemetry statistics (``_stats``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import devices
from devices.errors import ConfigError, EdgecutError, ModelUpdateError
from edge import runtime
from edge.agent._api import AgentServer, _systemd_watch
from edge.agent._apply import _ConfigApply
from edge.agent._commands import _FleetHandling
from edge.agent._config import AgentConfig, security_warnings
from edge.agent._lanes import _Lanes, _Planned
from edge.agent._logging import log, setup_logging
from edge.agent._seen import SizeHistogram
from edge.agent._slots import ModelSlot, ModelVersion, sample_inputs, warm_up
from edge.agent._stats import _Stats
from edge.agent._store import ModelStore
from edge.agent._trust import Gate
from edge.agent._updates import Updater


def _agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgecut")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


class Agent(_ConfigApply, _Lanes, _FleetHandling):
    """The agent's state: config, device profile, model slots, updater and statistics.

    Usable in-process (tests, benchmarks) as well as by :func:`run_agent`. Its jobs live
    beside it: applying config (``_apply``), running requests (``_lanes``) and acting on
    fleet messages (``_commands``); the local API that serves it is ``_api``.
    """

    def __init__(self, config_path: str | Path | None = None, *,
                 config: AgentConfig | None = None) -> None:
        if config is None and config_path is None:
            raise ConfigError("Agent: give a config path or an AgentConfig")
        self.config_path = Path(config_path) if config_path is not None else None
        self.started_at = time.time()
        if config is None:
            config = self._read_config()
        self.config = config
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        for warning in security_warnings(config):
            log.warning(json.dumps({"event": "security_warning", "warning": warning}))
        self.profile = devices.detect() if config.profile == "auto" else devices.load_profile(
            config.profile)
        # A PolicyConfig (pushed over MQTT) or a watcher of policy.toml (hot-reloaded when
        # the file changes); None runs every request locally by the plan's defaults.
        self._policy: Any = self._load_policy(config)
        self.stats = _Stats()
        self.store = ModelStore(config.data_dir)
        self.slots: dict[str, ModelSlot] = {}
        self._active_w = self._active_watts()
        for m in config.models:
            self.slots[m.name] = ModelSlot(self._initial_version(m))
        # Models with a plan and a cloud URL run through the policy and the executor;
        # the others (and any version the plan was not built for) run locally.
        self.executors: dict[str, _Planned] = {}
        self._local_ms: dict[str, float] = {}  # per model: recent local run time (EWMA)
        # Per model: the input sizes its requests ran at (_seen); the most counted are
        # the sizes a new version's plan is profiled at (_commands._repartition).
        self.seen_sizes: dict[str, SizeHistogram] = {m.name: SizeHistogram()
                                                     for m in config.models}
        for m in config.models:
            self._attach_executor(m.name, m.plan)
        # What fleet messages may do here: signed documents, sources, security keys.
        self.gate = Gate(config.data_dir, config.device_id, lambda: self.config.updates)
        self.updater = Updater(self.slots, self.store, self.profile,
                               lambda: self.config.updates, self._warmup_for,
                               on_committed=self._after_update,
                               on_models_changed=self._models_changed, gate=self.gate,
                               trusted=self._trusted_path)
        self.fleet: Any = None
        self.reprofile_hooks: list[Callable[[str, ModelVersion], Any]] = []
        # Called after the set of served models changed (the local API registers them).
        self.model_listeners: list[Callable[[], None]] = []
        self.reprofiles: list[dict[str, Any]] = []
        self._config_lock = threading.Lock()
        self._sensor = None
        try:
            self._sensor = devices.open_power_sensor("auto", profile=self.profile)  # type: ignore[attr-defined]
        except (AttributeError, EdgecutError):
            self._sensor = None

    def _active_watts(self) -> float:
        power = self.profile.power
        gpu = any(p != "CPUExecutionProvider" for p in self.profile.providers)
        return (power.gpu_active_w if gpu else power.cpu_active_w) - power.idle_w

    def _warmup_for(self, name: str) -> tuple[int, str]:
        for m in self.config.models:
            if m.name == name:
                return m.warmup_runs, m.warmup_inputs
        return 2, ""

    def _trusted_path(self, name: str, path: str) -> bool:
        """A model path read back from state.json: inside the store, or the configured one."""
        configured = {m.name: m.path for m in self.config.models}
        return self.store.holds(path) or configured.get(name) == path

    def _initial_version(self, m: Any) -> ModelVersion:
        """The committed version from ``state.json`` when it loads, else the configured one."""
        entry = self.store.state().get(m.name)
        candidates: list[tuple[str, str]] = []
        if entry:
            candidates.append((entry["version"], entry["path"]))
            if entry.get("previous"):
                candidates.append((entry["previous"]["version"], entry["previous"]["path"]))
        candidates.append((m.version, m.path))
        last: Exception | None = None
        for version, path in candidates:
            if path != m.path and not self._trusted_path(m.name, path):
                # state.json names only versions the store holds (or the configured one).
                log.error(json.dumps({"event": "state_ignored", "model": m.name,
                                      "version": version, "path": path,
                                      "ignored": "a path outside the model store"}))
                continue
            try:
                session = runtime.load(path, self.profile)
                if m.warmup_runs:
                    warm_up(session, sample_inputs(session, m.warmup_inputs), m.warmup_runs)
                return ModelVersion(m.name, version, path, session)
            except EdgecutError as exc:
                last = exc
                log.error(json.dumps({"event": "model_load_failed", "model": m.name,
                                      "version": version, "error": str(exc)}))
        raise ModelUpdateError(f"model '{m.name}': no version could be loaded ({last})")

    def status(self) -> dict[str, Any]:
        """The body of the retained status message and of ``/agent/status``."""
        return {
            "agent_version": _agent_version(),
            "profile": self.profile.name,
            "config_version": self.config.version,
            "uptime_s": round(time.time() - self.started_at, 1),
            "models": {n: s.current.version for n, s in self.slots.items()},
            "cloud": bool(self.config.cloud.url),
        }

    def telemetry(self) -> dict[str, Any]:
        record = self.stats.take()
        for name, slot in self.slots.items():
            record["models"].setdefault(name, {"requests": 0, "errors": 0})
            record["models"][name]["version"] = slot.current.version
        record["link"] = None
        for planned in self.executors.values():
            est = planned.executor.link.estimate()
            record["link"] = {"bandwidth_bps": round(est.bandwidth_bps), "rtt_ms":
                              round(est.rtt_s * 1000.0, 3), "confidence": round(est.confidence, 3),
                              "age_s": round(est.age_s, 1), "samples": est.samples}
            break
        record["plans"] = {n: {"version": p.version, "plan": p.plan_path,
                               "active": p.version == self.slots[n].current.version}
                           for n, p in self.executors.items() if n in self.slots}
        record["power_w"] = self._sensor.read_w() if self._sensor is not None else None
        # "ina3221"/"rapl" are measured; "model" is the device profile's figure.
        record["power_source"] = getattr(self._sensor, "name", None)
        thermal = getattr(devices, "read_thermal", None)
        state = thermal() if thermal is not None else None
        record["temperature_c"] = None if state is None else round(state.max_temp_c, 1)
        record["throttled"] = None if state is None else state.throttled
        record["config_version"] = self.config.version
        streams = getattr(self, "streams", None)
        record["streams"] = streams.stats() if streams is not None else {}
        return record

    # -- lifecycle -----------------------------------------------------------------------

    def start_fleet(self) -> None:
        if not self.config.mqtt.enabled or self.fleet is not None:
            return
        from edge.agent._fleet import FleetLink

        self.fleet = FleetLink(self.config.mqtt, self.config.device_id, self.config.data_dir, self)
        self.fleet.start()

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
        streams = getattr(self, "streams", None)
        if streams is not None:
            streams.close()
        for planned in self.executors.values():
            planned.close()
        self.executors.clear()



def run_agent(config_path: str | Path) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit code."""
    setup_logging("info")
    agent = Agent(config_path)
    setup_logging(agent.config.log_level, log_format=agent.config.log_format)
    server = AgentServer(agent)
    agent.start_fleet()
    watch_stop = threading.Event()
    if os.environ.get("NOTIFY_SOCKET"):
        threading.Thread(target=_systemd_watch, args=(server, watch_stop), name="sd-notify",
                         daemon=True).start()
    log.info(json.dumps({"event": "agent_started", "device_id": agent.config.device_id,
                         "profile": agent.profile.name,
                         "models": {n: s.current.version for n, s in agent.slots.items()},
                         "api": server.url, "fleet": agent.config.mqtt.enabled}))
    try:
        server.serve_forever()
    finally:
        watch_stop.set()
        agent.close()
        log.info(json.dumps({"event": "agent_stopped"}))
    return 0
