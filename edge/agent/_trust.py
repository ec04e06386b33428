"""The agent's trust checks on fleet messages: who may deploy what, from where, and which
config keys a message may change (docs/agent.md, "Trust model").

A ``models/deploy`` message is admitted (:meth:`Gate.admit_deploy`) before anything is
fetched: its names are names, its numbers in range, its source an ``https://`` URL
(``http://`` only with ``updates.allow_http``) or a file under ``updates.source_dir``, and,
when ``updates.public_key_file`` is set, it carries a signed update document that agrees
with every field it names, is fresh, is for this device, and has a counter above every
one this device accepted for the model. After the download :meth:`Gate.verified` checks
the file against the document and records the counter durably before the agent acts.

A ``config/set`` message (:meth:`Gate.admit_config`) may change a security-relevant key
(:data:`edge.agent._config.SECURITY_KEYS`) or turn the policy's privacy rule off only when
it is a signed config document; otherwise the refusal names the key.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devices.errors import ConfigError, ModelUpdateError, TrustError
from edge.agent._config import (
    MAX_PROBATION_S,
    UpdatesConfig,
    merge,
    security_changes,
    without_security_keys,
)
from edge.agent._names import is_inside
from edge.agent._signing import (
    CONFIG_TYPE,
    DEPLOY_TYPE,
    Counters,
    Freshness,
    UpdateDocument,
    open_envelope,
)

log = logging.getLogger("edgecut.agent.trust")

_CONFIG_DOC_KEYS = {"type", "version", "config", "policy", "counter", "issued_at",
                    "expires_at", "devices"}
_COUNTERS = "signed-counters.json"


@dataclass(frozen=True)
class ConfigChange:
    """An admitted ``config/set``: what to apply, and the counter to record when signed."""

    version: str
    patch: dict[str, Any]
    policy: dict[str, Any] | None
    freshness: Freshness | None = None

    @property
    def signed(self) -> bool:
        return self.freshness is not None


class Gate:
    """Trust checks for one device; ``settings()`` returns the ``UpdatesConfig`` in force."""

    def __init__(self, data_dir: str | Path, device_id: str,
                 settings: Callable[[], UpdatesConfig]) -> None:
        self.device_id = device_id
        self._settings = settings
        self.counters = Counters(Path(data_dir) / _COUNTERS)
        if self.counters.ignored:
            log.error(json.dumps({"event": "signed_counters_ignored",
                                  "error": self.counters.ignored,
                                  "note": "documents used before can be replayed until they "
                                          "expire"}))

    # -- deployments -----------------------------------------------------------------------

    def admit_deploy(self, msg: Mapping[str, Any]) -> Any:
        """The :class:`~edge.agent._updates.Deployment` of ``msg``, or an error naming why."""
        from edge.agent._updates import Deployment

        msg = {k: v for k, v in msg.items() if k != "id"}
        if "signature" in msg:
            raise TrustError("refused: deploy: field 'signature' (a signed digest) is not "
                             "accepted: sign the whole update document with `edgecut sign "
                             "deploy` and send it as 'signed'")
        settings = self._settings()
        key = settings.public_key_file
        document = None
        if "signed" in msg:
            if not key:
                raise TrustError("refused: deploy: field 'signed' cannot be checked: this "
                                 "device has no update key (updates.public_key_file)")
            document = UpdateDocument.parse(
                open_envelope(msg["signed"], DEPLOY_TYPE, key, "deploy"), self.device_id)
            named = {"model": document.model, "version": document.version,
                     "sha256": document.sha256, "size": document.size}
            for field, value in named.items():
                if field in msg and (msg[field].lower() if field == "sha256" and
                                     isinstance(msg[field], str) else msg[field]) != value:
                    raise TrustError(
                        f"refused: deploy: field '{field}' ({str(msg[field])[:80]!r}) differs "
                        f"from the signed document ({value!r})")
            self.counters.check(f"deploy:{document.model}", document.freshness.counter,
                                "deploy")
            msg = {**{k: v for k, v in msg.items() if k != "signed"}, **named}
        elif key:
            raise TrustError("refused: deploy: this device takes only signed deployments "
                             "(updates.public_key_file is set): send the update document "
                             "signed by `edgecut sign deploy` in 'signed'")
        probation = msg.get("probation_s")
        if probation is not None and (
                not isinstance(probation, (int, float)) or isinstance(probation, bool)
                or not math.isfinite(probation) or not 0 <= probation <= MAX_PROBATION_S):
            raise ModelUpdateError(f"deploy: field 'probation_s' must be a number of seconds "
                                   f"in [0, {MAX_PROBATION_S:g}], got {probation!r}")
        dep = Deployment.from_message(msg)
        self._check_source(dep, settings)
        if document is not None:
            import dataclasses

            dep = dataclasses.replace(dep, document=document)
        return dep

    def _check_source(self, dep: Any, settings: UpdatesConfig) -> None:
        if dep.url:
            scheme = urlsplit(dep.url).scheme.lower()
            if scheme == "https" or (scheme == "http" and settings.allow_http):
                return
            if scheme == "http":
                raise TrustError("refused: deploy: http:// sources are off "
                                 "(updates.allow_http = false); use https://")
            raise TrustError(f"refused: deploy: URL scheme {scheme[:16]!r} is not allowed "
                             "(https://, or a file under updates.source_dir as 'path')")
        folder = settings.source_dir
        if not folder:
            raise TrustError("refused: deploy: file sources are off (updates.source_dir is "
                             "not set); give an https:// URL")
        if not Path(dep.path).is_absolute() or not is_inside(folder, dep.path):
            raise TrustError(f"refused: deploy: 'path' must be a file under updates.source_dir "
                             f"('{folder}')")

    def verified(self, dep: Any, digest: str, size: int) -> None:
        """The file is what the signed document says: record its counter (durably)."""
        doc = dep.document
        if doc is None:
            return
        if digest != doc.sha256 or size != doc.size:
            raise TrustError("refused: deploy: the file does not match the signed document "
                             "(sha256 or size)")
        self.counters.advance(f"deploy:{doc.model}", doc.freshness.counter, "deploy")

    # -- config ----------------------------------------------------------------------------

    def admit_config(self, msg: Mapping[str, Any], current_raw: Mapping[str, Any],
                     current_policy: Any) -> ConfigChange:
        """Check a ``config/set`` message; the change to apply, or an error naming why."""
        if "signed" in msg:
            extra = sorted(set(msg) - {"id", "signed"})
            if extra:
                raise ConfigError(f"config/set: a signed message carries only 'id' and "
                                  f"'signed'; unexpected field(s) {extra}")
            key = self._settings().public_key_file
            if not key:
                raise TrustError("refused: config/set: field 'signed' cannot be checked: this "
                                 "device has no update key (updates.public_key_file)")
            doc = open_envelope(msg["signed"], CONFIG_TYPE, key, "config/set")
            unknown = sorted(set(doc) - _CONFIG_DOC_KEYS)
            if unknown:
                raise TrustError(f"config/set: unknown signed field(s) {unknown}")
            if doc.get("type") != "config":
                raise TrustError("refused: config/set: the signed document is not a config "
                                 "document")
            fresh = Freshness.of(doc, "config/set", self.device_id)
            self.counters.check("config", fresh.counter, "config/set")
            change = _change(doc, "config/set (signed)")
            return ConfigChange(change.version, change.patch, change.policy, fresh)
        unknown = sorted(set(msg) - {"id", "version", "config", "policy"})
        if unknown:
            raise ConfigError(f"config/set: unknown field(s) {unknown}; expected "
                              "['config', 'id', 'policy', 'signed', 'version']")
        change = _change(msg, "config/set")
        new_raw = merge(current_raw, change.patch)
        touched = [k for k in security_changes(current_raw, new_raw)
                   if not _safer(k, _lookup(new_raw, k))]
        if change.policy is not None and _privacy_on(current_policy) and not _privacy_asked(
                change.policy):
            touched.append("policy.rules.never_send_raw_input")
        if touched:
            raise TrustError(
                f"refused: config/set: key(s) {', '.join(touched)} may be set only in "
                "agent.toml on the device or by a config message signed with the update key "
                "(`edgecut sign config`)")
        return change

    def consume(self, change: ConfigChange) -> None:
        """Record a signed change's counter (durably), before it is applied."""
        if change.freshness is not None:
            self.counters.advance("config", change.freshness.counter, "config/set")


def _change(msg: Mapping[str, Any], where: str) -> ConfigChange:
    version = msg.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 64:
        raise ConfigError(f"{where}: field 'version': expected a string of 1-64 characters, "
                          f"got {str(version)[:80]!r}")
    patch = msg.get("config", {})
    policy = msg.get("policy")
    if not isinstance(patch, dict):
        raise ConfigError(f"{where}: field 'config': expected an object, got "
                          f"{type(patch).__name__}")
    if policy is not None and not isinstance(policy, dict):
        raise ConfigError(f"{where}: field 'policy': expected an object, got "
                          f"{type(policy).__name__}")
    if not patch and policy is None:
        raise ConfigError(f"{where}: nothing to apply (give 'config' and/or 'policy')")
    return ConfigChange(version, patch, policy)


# Security keys an unsigned message may still turn off: the change only narrows what the
# device sends out (offloading off: every request runs on the device).
_SAFE_OFF = {"cloud.url": ""}


def _safer(key: str, value: Any) -> bool:
    return key in _SAFE_OFF and value == _SAFE_OFF[key]


def _privacy_on(policy: Any) -> bool:
    rules = getattr(policy, "rules", None)
    return bool(getattr(rules, "never_send_raw_input", False))


def _privacy_asked(policy: Mapping[str, Any]) -> bool:
    rules = policy.get("rules")
    return isinstance(rules, Mapping) and rules.get("never_send_raw_input") is True


def overlay_patch(overlay: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config patch a persisted overlay stands for, and what in it was ignored.

    ``signed_config`` (from signed messages) applies as it is; ``config`` (every message)
    applies without security-relevant keys, so an overlay written before this check, or
    edited by hand, cannot carry one in unsigned.
    """
    ignored: list[str] = []
    signed = overlay.get("signed_config") or {}
    plain = overlay.get("config") or {}
    if not isinstance(signed, dict):
        ignored.append("signed_config (not an object)")
        signed = {}
    if not isinstance(plain, dict):
        ignored.append("config (not an object)")
        plain = {}
    plain, dropped = without_security_keys(plain)
    ignored += [f"config.{k} (may be set only by a signed message)" for k in dropped
                if _lookup(signed, k) is None]
    # A signed patch is kept in both parts, so ``config`` holds the latest value of every
    # other key: laid over ``signed_config``, it wins for them and cannot touch the rest.
    return merge(signed, plain), ignored


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = data
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


__all__ = ["ConfigChange", "Gate", "overlay_patch"]
