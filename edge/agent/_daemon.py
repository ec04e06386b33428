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
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import devices
from cloud._deferred import after_answer
from cloud._runtime import ModelRuntime, Prepared
from devices.errors import ConfigError, EdgecutError, ModelInputError, ModelUpdateError
from edge import runtime
from edge.agent._config import (
    AgentConfig,
    keep_restart_only,
    load_agent_config,
    merge,
    parse_agent_config,
    restart_only_changes,
)
from edge.agent._updates import (
    Deployment,
    ModelSlot,
    ModelStore,
    ModelVersion,
    Updater,
    sample_inputs,
    warm_up,
)

log = logging.getLogger("edgecut.agent")
request_log = logging.getLogger("edgecut.agent.request")

_OVERLAY = "config-overlay.json"
_SOCKET_BUFFER = 4 << 20
_CONFIG_MSG_KEYS = {"id", "version", "config", "policy"}
_COMMANDS = ("reprofile", "rollback", "reload", "telemetry", "status", "ping")


def _agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgecut")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


class Fields(dict):
    """A log message given as its fields: JSON when printed, merged as they are by
    ``JsonFormatter`` (no encoding and parsing again on the request path)."""

    def __str__(self) -> str:
        return json.dumps(self)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and the message (parsed when JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, Fields) and not record.args:
            body.update(record.msg)
        else:
            msg = record.getMessage()
            if msg.startswith("{"):
                try:
                    body.update(json.loads(msg))
                except ValueError:
                    body["msg"] = msg
            else:
                body["msg"] = msg
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, separators=(",", ":"))


class _LogHandler(logging.StreamHandler):
    """The daemon's JSON log handler. Per-request records (INFO on the request logger)
    are only queued on the request path and written by a background thread every
    ``interval_s`` (formatting and a write plus flush cost more than the agent's own
    work on a small model); every other record is written at once, after the queued
    ones, so the log keeps its order. ``flush`` (called by ``logging.shutdown`` at exit)
    writes what is queued."""

    def __init__(self, stream: Any, interval_s: float = 0.1) -> None:
        super().__init__(stream)
        # Records, or (time, fields) of requests given to ``defer``: their LogRecord is
        # made by the writer thread too.
        self._pending: deque[logging.LogRecord | tuple[float, dict[str, Any]]] = deque()
        self._wake = threading.Event()
        self._interval_s = interval_s
        self._writer = threading.Thread(target=self._drain_loop, name="agent-log", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        if record.name == request_log.name and record.levelno == logging.INFO:
            # No lock here: the writer may hold it; a deque append is thread-safe.
            if self.filter(record):
                self._pending.append(record)
                return True
            return False
        return super().handle(record)

    def defer(self, fields: dict[str, Any]) -> None:
        """Queue a request record given as its fields, stamped now."""
        self._pending.append((time.time(), fields))

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._drain(flush=False)
            self._write(record)
            super().flush()

    def _write(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit flushes after every record, and flush here drains the queue:
        # writing each queued record through it nested one call per record (hundreds
        # queued under load overflowed the stack). Records are written here, flushed once.
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _drain(self, flush: bool = True) -> None:
        with self.lock:  # type: ignore[union-attr]  # one writer at a time, in order
            wrote = False
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, tuple):
                    created, fields = item
                    item = request_log.makeRecord(request_log.name, logging.INFO, __file__, 0,
                                                  Fields(fields), None, None)
                    item.created, item.msecs = created, (created % 1) * 1000.0
                    if not self.filter(item):
                        continue
                self._write(item)
                wrote = True
            if wrote and flush:
                super().flush()

    def _drain_loop(self) -> None:
        while not self._wake.wait(self._interval_s):
            if self._pending:
                self._drain()

    def flush(self) -> None:
        self._drain()
        super().flush()

    def close(self) -> None:
        global _request_handler
        if _request_handler is self:
            _request_handler = None
        self._wake.set()
        self.flush()
        super().close()


# The daemon's handler, when it is the only one the request logger reaches.
_request_handler: _LogHandler | None = None


def log_request(fields: dict[str, Any]) -> None:
    """Log one request's record (INFO on ``edgecut.agent.request``). Under the daemon's own
    handler only the fields are queued (no LogRecord, no caller lookup on the request
    path); with any other logging set-up this is ``request_log.info``."""
    handler = _request_handler
    if handler is not None:
        handler.defer(fields)
    else:
        request_log.info(Fields(fields))


def setup_logging(level: str, stream: Any = None) -> None:
    global _request_handler
    root = logging.getLogger("edgecut")
    for h in list(root.handlers):
        if getattr(h, "_edgecut_agent", False):
            root.removeHandler(h)
            h.close()
    handler = _LogHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._edgecut_agent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    between = [request_log, log]  # the loggers from the request logger up to ``root``
    if not root.handlers[:-1] and not root.filters and all(
            lg.propagate and not lg.handlers and not lg.filters for lg in between):
        _request_handler = handler
    root.setLevel(level.upper())
    root.propagate = False


class _Stats:
    """Per-request facts gathered between two telemetry records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()
        self.total_requests = 0
        self.total_errors = 0

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
            else:
                self.errors[model] += 1
                self.total_errors += 1
            if fallback:
                self.fallbacks += 1

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


def _is_policy_config(value: Any) -> bool:
    from edge.policy._config import PolicyConfig

    return isinstance(value, PolicyConfig)


class _PolicySource:
    """Hands the policy the config in force now (file, SIGHUP or MQTT), read per request."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    @property
    def config(self) -> Any:
        from edge.policy._config import PolicyConfig

        return self._agent.policy_config or PolicyConfig()


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


class AgentModelRuntime(ModelRuntime):
    """The cloud service's model runtime over an agent model slot.

    ``inputs``/``outputs`` follow the serving version, so model metadata stays right
    after an update; ``predict`` runs on the device through the agent.
    """

    max_batch_size = 0
    platform = "edgecut_agent"

    def __init__(self, agent: Agent, name: str) -> None:
        self._agent = agent
        self.name = name

    def _metas(self, specs: tuple[runtime.TensorSpec, ...]) -> tuple[Any, ...]:
        from cloud import datatype_of
        from cloud._runtime import TensorMeta

        return tuple(
            TensorMeta(s.name, datatype_of(s.dtype), tuple(-1 if d is None else d for d in s.shape))
            for s in specs
        )

    @property
    def inputs(self) -> tuple[Any, ...]:  # type: ignore[override]
        return self._metas(self._agent.slots[self.name].current.session.inputs)

    @property
    def outputs(self) -> tuple[Any, ...]:  # type: ignore[override]
        return self._metas(self._agent.slots[self.name].current.session.outputs)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._errors_mapped(partial(self._agent.infer, self.name, inputs))

    def prepare(self, inputs: dict[str, np.ndarray]) -> Prepared | None:
        got = self._agent.prepare(self.name, inputs)
        if got is None:
            return None
        run, inline = got
        return Prepared(partial(self._errors_mapped, run), inline)

    @staticmethod
    def _errors_mapped(run: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        from cloud.errors import ExecutionError, ProtocolError

        try:
            return run()
        except ModelInputError as exc:
            raise ProtocolError(str(exc)) from exc
        except EdgecutError as exc:
            raise ExecutionError(str(exc)) from exc

    def close(self) -> None:
        """The agent owns the sessions; the service must not close them."""


class Agent:
    """The agent's state: config, device profile, model slots, updater and statistics.

    Usable in-process (tests, benchmarks) as well as by :func:`run_agent`.
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
        for m in config.models:
            self._attach_executor(m.name, m.plan)
        self.updater = Updater(self.slots, self.store, self.profile,
                               lambda: self.config.updates, self._warmup_for,
                               on_committed=self._after_update,
                               on_models_changed=self._models_changed)
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

    # -- config --------------------------------------------------------------------------

    def _overlay_path(self, data_dir: str) -> Path:
        return Path(data_dir) / _OVERLAY

    def _read_overlay(self, data_dir: str) -> dict[str, Any]:
        try:
            data = json.loads(self._overlay_path(data_dir).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _read_config(self) -> AgentConfig:
        if self.config_path is None:
            raise ConfigError("the agent was not started from a config file")
        base = load_agent_config(self.config_path)
        overlay = self._read_overlay(base.data_dir)
        if overlay.get("config"):
            try:
                return load_agent_config(self.config_path, overlay["config"],
                                         str(overlay.get("version", "overlay")))
            except ConfigError as exc:
                # A persisted fleet config that no longer fits the file: serve the file.
                log.error(json.dumps({"event": "overlay_ignored", "error": str(exc)}))
        return base

    def _load_policy(self, config: AgentConfig, data: Mapping[str, Any] | None = None) -> Any:
        overlay = self._read_overlay(config.data_dir).get("policy") if data is None else data
        if not config.policy_file and not overlay:
            return None
        from edge.policy._config import PolicyConfigWatcher, parse_policy_config

        if overlay:
            return parse_policy_config(dict(overlay), "policy (fleet)")

        def changed(new: Any) -> None:
            log.info(json.dumps({"event": "policy_reloaded", "file": config.policy_file}))

        def failed(exc: Exception) -> None:
            log.error(json.dumps({"event": "policy_rejected", "error": str(exc)}))

        return PolicyConfigWatcher(config.policy_file, on_change=changed, on_error=failed)

    @property
    def policy_config(self) -> Any:
        """The policy configuration in force now, or ``None`` when none is configured."""
        source = self._policy
        if source is None:
            return None
        return getattr(source, "config", source) if not _is_policy_config(source) else source

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
        from edge.offload._client import FileToken, OffloadClient
        from edge.offload._executor import Executor
        from edge.policy._decide import Policy
        from partition import Plan

        plan = Plan.load(plan_path)
        token = FileToken(cloud.token_file) if cloud.token_file else None
        client = OffloadClient(cloud.url, token=token, timeout_s=cloud.timeout_s)
        try:
            executor = Executor(plan, Path(plan_path).parent, self.profile,
                                policy=Policy(_PolicySource(self)), client=client)
            executor.warm_up()
        except EdgecutError:
            client.close()
            raise
        log.info(json.dumps({"event": "executor_ready", "model": name, "plan": plan_path,
                             "cloud": cloud.url, "candidates": len(plan.candidates)}))
        return _Planned(version, plan_path, executor, client)

    def _active_watts(self) -> float:
        power = self.profile.power
        gpu = any(p != "CPUExecutionProvider" for p in self.profile.providers)
        return (power.gpu_active_w if gpu else power.cpu_active_w) - power.idle_w

    def _warmup_for(self, name: str) -> tuple[int, str]:
        for m in self.config.models:
            if m.name == name:
                return m.warmup_runs, m.warmup_inputs
        return 2, ""

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

    def reload(self) -> dict[str, Any]:
        """Re-read ``agent.toml`` (SIGHUP): apply what can change live, keep the rest."""
        if self.config_path is None:
            raise ConfigError("reload: the agent was not started from a config file")
        with self._config_lock:
            new = self._read_config()
            changed = restart_only_changes(self.config.raw, new.raw)
            if changed:
                log.warning(json.dumps({"event": "reload_needs_restart", "keys": changed}))
                raw = keep_restart_only(self.config.raw, new.raw)
                new = parse_agent_config(raw, new.source, Path(new.source).resolve().parent,
                                         new.version)
            policy = self._load_policy(new)
            self._apply(new, policy)
        log.info(json.dumps({"event": "config_reloaded", "version": new.version,
                             "restart_needed": changed}))
        return {"version": new.version, "restart_needed": changed}

    def _apply(self, new: AgentConfig, policy: Any) -> None:
        """Make ``new`` the config in force: everything that can fail (loading models,
        building executors) happens first, so a failure changes nothing."""
        loaded: dict[str, ModelVersion] = {}
        for m in new.models:
            slot = self.slots.get(m.name)
            if slot is not None and slot.current.path == m.path:
                continue
            if slot is not None and self.store.state().get(m.name):
                continue  # a fleet deployment owns this model's version now
            loaded[m.name] = self._initial_version(m)
        built: dict[str, _Planned | None] = {}
        try:
            for m in new.models:
                planned = self.executors.get(m.name)
                have = (planned.plan_path, self.config.cloud) if planned else ("", None)
                want = (m.plan, new.cloud) if m.plan and new.cloud.url else ("", None)
                if have == want and m.name not in loaded:
                    continue
                version = (loaded[m.name].version if m.name in loaded
                           else self.slots[m.name].current.version)
                built[m.name] = (self._build_executor(m.name, m.plan, new.cloud, version)
                                 if want[0] else None)
        except Exception:
            for planned in built.values():
                if planned is not None:
                    planned.close()
            raise
        # Nothing below can fail: the new config takes effect as one step.
        for name, version in loaded.items():
            if name in self.slots:
                self.slots[name].swap(version)
            else:
                self.slots[name] = ModelSlot(version)
        for name in [n for n in self.slots if n not in {m.name for m in new.models}]:
            if not self.store.state().get(name):
                del self.slots[name]
        for name, planned in built.items():
            old = self.executors.pop(name, None)
            if planned is not None:
                self.executors[name] = planned
            if old is not None:
                old.close()
        for name in [n for n in self.executors if n not in self.slots]:
            self.executors.pop(name).close()
        self.config = new
        self._policy = policy
        self._active_w = self._active_watts()
        logging.getLogger("edgecut").setLevel(new.log_level.upper())
        if self.fleet is not None:
            self.fleet.telemetry_interval_s = new.mqtt.telemetry_interval_s
        self._models_changed()

    def apply_config(self, msg: dict[str, Any]) -> dict[str, Any]:
        """``config/set``: validate all of it, then apply it all or nothing."""
        unknown = sorted(set(msg) - _CONFIG_MSG_KEYS)
        if unknown:
            raise ConfigError(f"config/set: unknown field(s) {unknown}; expected "
                              f"{sorted(_CONFIG_MSG_KEYS)}")
        version = msg.get("version")
        if not isinstance(version, str) or not 0 < len(version) <= 64:
            raise ConfigError(f"config/set: field 'version': expected a string of 1-64 "
                              f"characters, got {version!r}")
        patch = msg.get("config", {})
        policy_data = msg.get("policy")
        if not isinstance(patch, dict):
            raise ConfigError(f"config/set: field 'config': expected an object, got {patch!r}")
        if policy_data is not None and not isinstance(policy_data, dict):
            raise ConfigError(f"config/set: field 'policy': expected an object, got "
                              f"{policy_data!r}")
        if not patch and policy_data is None:
            raise ConfigError("config/set: nothing to apply (give 'config' and/or 'policy')")
        with self._config_lock:
            current = self.config
            overlay = self._read_overlay(current.data_dir)
            new_raw = merge(current.raw, patch)
            changed = restart_only_changes(current.raw, new_raw)
            if changed:
                raise ConfigError(
                    f"config/set: key(s) {', '.join(changed)} take effect only on restart; "
                    "edit agent.toml on the device"
                )
            base_dir = Path(current.source).resolve().parent if current.source else Path(".")
            new = parse_agent_config(new_raw, f"config/set {version}", base_dir, version)
            if policy_data is not None:
                from edge.policy._config import parse_policy_config

                policy = parse_policy_config(dict(policy_data), f"config/set {version} policy")
            else:
                policy = self._policy
            # Persist first: if writing fails nothing has changed; if the agent dies right
            # after, it restarts with what was acknowledged.
            new_overlay = {"version": version,
                           "config": merge(overlay.get("config", {}), patch),
                           "policy": policy_data if policy_data is not None
                           else overlay.get("policy")}
            path = self._overlay_path(current.data_dir)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(new_overlay, indent=1))
            try:
                self._apply(new, policy)
            except Exception:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, path)
        log.info(json.dumps({"event": "config_applied", "version": version}))
        return {"version": version, "applied": True}

    # -- serving -------------------------------------------------------------------------

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
        after_answer(self._count_local, name, version, planned, ms)
        return out

    def _count_local(self, name: str, version: ModelVersion, planned: _Planned | None,
                     ms: float) -> None:
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

    # -- fleet handler -------------------------------------------------------------------

    def deploy(self, msg: dict[str, Any], ack: Callable[..., None]) -> str:
        dep = Deployment.from_message({k: v for k, v in msg.items() if k != "id"})
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
        plan = build_plan(version.path, self.profile, self.config.cloud.url, bandwidth, rtt,
                          objective=objective, out_dir=out_dir, figure=False)
        plan_path = str(out_dir / "plan.json")
        from edge.offload._client import OffloadClient

        with OffloadClient(self.config.cloud.url, timeout_s=self.config.cloud.timeout_s) as c:
            missing = sorted({cand.cloud_model for cand in plan.candidates
                              if cand.cloud_model and not c.ready(cand.cloud_model)})
        result: dict[str, Any] = {"plan": plan_path, "chosen": plan.chosen,
                                  "cloud_missing": missing}
        if not missing:
            self._attach_executor(name, plan_path)
        log.info(json.dumps({"event": "repartitioned", "model": name,
                             "version": version.version, **result}))
        return result

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
        for planned in self.executors.values():
            planned.close()
        self.executors.clear()


# -- the local API ---------------------------------------------------------------------------


def build_app(agent: Agent) -> tuple[Any, Any, Any]:
    """The cloud package's ASGI app serving the agent's models, plus ``/agent/status``.

    Returns ``(app, service, inner)``: ``inner`` is the v2 protocol app that ``app``
    wraps (the fast lane serves inference requests from it directly); close the service
    when done.
    """
    from cloud import InferenceService, create_app

    service = InferenceService(dynamic_batching=False)
    registered: set[str] = set()
    lock = threading.Lock()

    def sync() -> None:
        with lock:
            for name in list(agent.slots):
                if name not in registered:
                    # One runtime per worker: the service gives each its own thread; they
                    # share the slot, so a swap reaches all of them at once.
                    instances = [AgentModelRuntime(agent, name)
                                 for _ in range(agent.config.api.workers)]
                    service.add_runtime(name, instances, version="live")
                    registered.add(name)
            for name in list(registered):
                if name not in agent.slots:
                    service.remove_model(name)
                    registered.discard(name)

    sync()
    agent.model_listeners.append(sync)
    inner = create_app(service, shared_memory=agent.config.api.shared_memory,
                       shm_allowed_uids=agent.config.api.shm_allow_uids)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/agent/status":
            fleet = agent.fleet
            body = json.dumps({
                **agent.status(),
                "fleet": None if fleet is None else {
                    "connected": fleet.connected.is_set(), "connects": fleet.connects,
                    "telemetry_pending": len(fleet.spool)},
            }).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        # Server-Timing on inference responses: the time the request spent in the agent,
        # from its first byte handed over by the server to the response's headers, so a
        # client can tell the agent's share from the transport's.
        start = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000.0
                mine = f"agent;dur={ms:.3f}".encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"server-timing"]
                inner_timing = [v for k, v in message.get("headers", []) if k == b"server-timing"]
                # One header: the service's queue and compute metrics, then the agent's
                # own, which encloses them.
                headers.append((b"server-timing", b", ".join([*inner_timing, mine])))
                message = {**message, "headers": headers}
            await send(message)

        await inner(scope, receive, timed_send)

    return app, service, inner


def _sockets(config: AgentConfig) -> list[Any]:
    import socket

    socks = []
    if config.api.port:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((config.api.host, config.api.port))
        s.listen(128)
        socks.append(s)
    if config.api.unix_socket:
        path = Path(config.api.unix_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.bind(str(path))
        os.chmod(path, 0o660)
        u.listen(128)
        socks.append(u)
    for s in socks:
        # Room for a whole camera frame per read: a 1x3x224x224 float tensor is 600 KB,
        # and with the default buffers it crosses in many small reads, each a wake-up
        # of the event loop (the kernel caps these at net.core.rmem_max/wmem_max).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        s.set_inheritable(True)
    return socks


class AgentServer:
    """The agent's local API on its sockets, in the foreground or in a background thread.

    ``serve_forever()`` (the daemon) installs the agent's signal handlers: SIGTERM/SIGINT
    drain in-flight requests (bounded by ``agent.shutdown_grace_s``) and stop, SIGHUP
    reloads the config. ``start()``/``stop()`` run it in a thread (tests, benchmarks).
    """

    def __init__(self, agent: Agent) -> None:
        import uvicorn

        from cloud.http._server import uvicorn_config

        self.agent = agent
        self.app, self.service, self.inner_app = build_app(agent)
        inner = self.inner_app
        self.sockets = _sockets(agent.config)
        # The fast lane: the same answers, with inline inferences served inside the HTTP
        # protocol (``lane.answered`` counts them); None without httptools or when off.
        # Either way the protocol is wrapped in the cloud server's connection limits.
        self.lane: Any = None
        if agent.config.api.fast_lane:
            from cloud.http._lane import lane_protocol

            self.lane = lane_protocol(inner, timing="agent")
        config = uvicorn_config(self.app, base_protocol=self.lane,
                                limits=agent.config.api.connection_limits())
        config.timeout_graceful_shutdown = int(max(1, round(agent.config.shutdown_grace_s)))
        config.lifespan = "off"
        self.config = config
        outer = self

        class _Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self):  # type: ignore[override]
                # uvicorn's own handlers would re-raise the signal after shutdown and
                # skip the agent's cleanup (the offline status); these do not.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handlers = ((signal.SIGTERM, outer._on_stop), (signal.SIGINT, outer._on_stop),
                            (signal.SIGHUP, outer._on_hup))
                old = {sig: signal.signal(sig, fn) for sig, fn in handlers}
                try:
                    yield
                finally:
                    for sig, fn in old.items():
                        signal.signal(sig, fn)

        self.server = _Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` when TCP is on, else ``unix://PATH``."""
        api = self.agent.config.api
        if api.port:
            return f"http://{api.host}:{api.port}"
        return f"unix://{api.unix_socket}"

    def _on_stop(self, sig: int, frame: Any) -> None:
        log.info(json.dumps({"event": "shutdown", "signal": signal.Signals(sig).name,
                             "grace_s": self.agent.config.shutdown_grace_s}))
        _sd_notify("STOPPING=1")
        self.server.should_exit = True

    def _on_hup(self, sig: int, frame: Any) -> None:
        def work() -> None:
            try:
                self.agent.reload()
            except EdgecutError as exc:
                log.error(json.dumps({"event": "reload_failed", "error": str(exc)}))

        threading.Thread(target=work, name="agent-reload", daemon=True).start()

    def _serve(self) -> None:
        import asyncio

        if self.config.loop == "uvloop":
            import uvloop

            uvloop.run(self.server.serve(sockets=self.sockets))
        else:
            asyncio.run(self.server.serve(sockets=self.sockets))

    def serve_forever(self) -> None:
        try:
            self._serve()
        finally:
            self.close()

    def start(self, timeout: float = 20.0) -> AgentServer:
        self._thread = threading.Thread(target=self._serve, name="agent-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the agent's local API did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        self.service.close()
        for s in self.sockets:
            s.close()
        if self.agent.config.api.unix_socket:
            Path(self.agent.config.api.unix_socket).unlink(missing_ok=True)

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket when the service runs under one."""
    import socket

    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError:
        return False


def _systemd_watch(server: AgentServer, stop: threading.Event) -> None:
    """READY=1 once the API answers, then WATCHDOG=1 while it keeps answering.

    The watchdog pings only after a real request to the agent's own API succeeds, so a
    wedged event loop stops the pings and systemd restarts the service.
    """
    from edge.client import Client

    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    interval = usec / 2e6 if usec > 0 else 0.0
    with Client(server.url, timeout=max(interval, 1.0)) as client:
        while not stop.is_set() and not server.server.started:
            stop.wait(0.05)
        if stop.is_set():
            return
        _sd_notify("READY=1\nSTATUS=serving " + ", ".join(server.agent.slots))
        while interval and not stop.wait(interval):
            if client.live():
                _sd_notify("WATCHDOG=1")


def run_agent(config_path: str | Path) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit code."""
    setup_logging("info")
    agent = Agent(config_path)
    setup_logging(agent.config.log_level)
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
