"""Applying configuration to a running agent: ``agent.toml`` re-read on SIGHUP, a fleet's
``config/set`` (validated whole, persisted as an overlay, applied all or nothing) and the
policy in force (``policy.toml`` watched, or pushed by the fleet).

``_ConfigApply`` is one of the jobs of :class:`~edge.agent._daemon.Agent`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devices.errors import ConfigError
from edge.agent._config import (
    AgentConfig,
    keep_restart_only,
    load_agent_config,
    merge,
    parse_agent_config,
    restart_only_changes,
    without_security_keys,
)
from edge.agent._durable import check_overlay, log_ignored, read_state, write_state
from edge.agent._lanes import _Planned
from edge.agent._logging import log
from edge.agent._slots import ModelSlot, ModelVersion
from edge.agent._trust import overlay_patch

_OVERLAY = "config-overlay.json"


def _is_policy_config(value: Any) -> bool:
    from edge.policy._config import PolicyConfig

    return isinstance(value, PolicyConfig)



class _ConfigApply:
    """The config in force, and every way it changes while the agent runs."""

    def _overlay_path(self, data_dir: str) -> Path:
        return Path(data_dir) / _OVERLAY

    def _read_overlay(self, data_dir: str, report: bool = False) -> dict[str, Any]:
        path = self._overlay_path(data_dir)
        data, notes = read_state(path, check_overlay)
        if report:
            log_ignored("overlay_ignored", path, notes)
        return data

    def _read_config(self) -> AgentConfig:
        if self.config_path is None:
            raise ConfigError("the agent was not started from a config file")
        base = load_agent_config(self.config_path)
        overlay = self._read_overlay(base.data_dir, report=True)
        patch, ignored = overlay_patch(overlay)
        log_ignored("overlay_ignored", self._overlay_path(base.data_dir), ignored)
        if patch:
            try:
                return load_agent_config(self.config_path, patch,
                                         str(overlay.get("version", "overlay")))
            except ConfigError as exc:
                # A persisted fleet config that no longer fits the file: serve the file.
                log.error(json.dumps({"event": "overlay_ignored",
                                      "file": str(self._overlay_path(base.data_dir)),
                                      "error": str(exc)}))
        return base

    def _load_policy(self, config: AgentConfig, data: Mapping[str, Any] | None = None) -> Any:
        overlay = self._read_overlay(config.data_dir).get("policy") if data is None else data
        if not config.policy_file and not overlay:
            return None
        from edge.policy._config import PolicyConfigWatcher, parse_policy_config

        if overlay:
            try:
                return parse_policy_config(dict(overlay), "policy (fleet)")
            except ConfigError as exc:
                log.error(json.dumps({"event": "overlay_ignored", "part": "policy",
                                      "error": str(exc)}))
                if not config.policy_file:
                    return None

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
        """``config/set``: admitted by the trust gate, validated whole, applied all or
        nothing; a signed change's counter is recorded before it is applied."""
        with self._config_lock:
            current = self.config
            change = self.gate.admit_config(msg, current.raw, self.policy_config)
            version, patch, policy_data = change.version, change.patch, change.policy
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
            # after, it restarts with what was acknowledged. A signed patch is kept apart
            # (and in ``config`` too, so the latest value of every other key wins).
            plain = merge(overlay.get("config", {}), patch)
            signed = overlay.get("signed_config", {})
            if change.signed:
                signed = merge(signed, patch)
            else:
                plain, _ = without_security_keys(plain)
            new_overlay = {"version": version, "config": plain, "signed_config": signed,
                           "policy": policy_data if policy_data is not None
                           else overlay.get("policy")}
            self.gate.consume(change)  # a signed document is used once, even if this fails
            path = self._overlay_path(current.data_dir)
            write_state(path, new_overlay)
            try:
                self._apply(new, policy)
            except Exception:
                write_state(path, overlay)
                raise
        log.info(json.dumps({"event": "config_applied", "version": version,
                             "signed": change.signed}))
        return {"version": version, "applied": True, "signed": change.signed}
