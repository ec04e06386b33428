"""``agent.toml``: what the edge agent serves, where it listens, and how it reaches the fleet.

Read strictly through :class:`devices.config.Table`: unknown keys, wrong types and
out-of-range values are errors that name the file and the key. The same parser checks a
config pushed over MQTT (``config/set``), so a change that would not load from disk is
never applied either. See ``edge/data/agent.example.toml`` for every key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devices.config import Table, read_toml
from devices.errors import ConfigError

_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_MQTT_PACKET = 268_435_455
# A deployment's probation holds the deploy worker: bounded so no message can hold it
# for long (a deploy message's own probation_s has the same range).
MAX_PROBATION_S = 3600.0
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_./-]{1,128}$")


@dataclass(frozen=True)
class ApiConfig:
    """The local Open Inference Protocol endpoint (TCP on loopback and/or a Unix socket)."""

    host: str = "127.0.0.1"
    port: int = 8800
    unix_socket: str = ""
    workers: int = 1
    # The system shared memory extension: local apps pass tensors through /dev/shm instead
    # of the socket. Only loopback and Unix-socket peers may use it, whatever the host.
    shared_memory: bool = True
    # With one worker, a request the agent expects to finish locally within this many
    # milliseconds runs on the API's event loop when nothing else is in flight for the
    # model, skipping two thread hand-offs; longer ones and offloads use the worker
    # thread, so the loop is never held longer than this. 0 turns it off.
    inline_max_ms: float = 50.0
    # Inference requests the agent runs inline are answered inside the HTTP protocol,
    # without the ASGI request cycle (cloud.http._lane); false: every request takes that cycle.
    fast_lane: bool = True
    # KServe v2 / Triton gRPC on api.host (DeepStream's nvinferserver, tritonclient.grpc);
    # 0: off. Needs the grpc extra.
    grpc_port: int = 0
    # Connection limits against hostile local users or, with host = 0.0.0.0, the network
    # (cloud.http._conn): the same meaning and defaults as `edgecut serve`'s flags.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    keep_alive_timeout_s: float = 30.0
    body_timeout_s: float = 20.0
    body_min_bytes_per_s: float = 4096.0
    max_connections: int = 1024
    max_connections_per_client: int = 256
    # Besides the agent's own uid, the owners whose /dev/shm files TCP loopback clients may
    # register (Unix-socket clients may register only their own files).
    shm_allow_uids: tuple[int, ...] = ()

    def connection_limits(self) -> Any:
        """These limits as the cloud server's ``ConnectionLimits``."""
        from cloud.http._conn import ConnectionLimits

        return ConnectionLimits(
            header_timeout_s=self.header_timeout_s, max_header_bytes=self.max_header_bytes,
            keep_alive_timeout_s=self.keep_alive_timeout_s, body_timeout_s=self.body_timeout_s,
            body_min_rate=self.body_min_bytes_per_s, max_connections=self.max_connections,
            max_connections_per_client=self.max_connections_per_client)


@dataclass(frozen=True)
class CloudConfig:
    url: str = ""
    token_file: str = ""
    # How the offload client speaks to the cloud: "http" (KServe v2 REST) or "grpc"
    # (KServe v2 gRPC: edgecut serve --grpc-port, or any Triton).
    protocol: str = "http"


@dataclass(frozen=True)
class ModelConfig:
    """One model the agent serves. ``path`` is the version it starts with."""

    name: str
    path: str
    version: str = "1"
    plan: str = ""
    warmup_runs: int = 2
    warmup_inputs: str = ""


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = False


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"
    prefix: str = "edgecut"
    groups: tuple[str, ...] = ()
    client_id: str = ""
    keepalive_s: int = 30
    username: str = ""
    password: str = ""
    password_file: str = ""
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    telemetry_interval_s: float = 10.0
    spool_max_bytes: int = 10_000_000
    max_payload_bytes: int = 1_000_000
    # Commands and deployments waiting to run, counted in payload bytes: a flood beyond
    # this is answered "busy" instead of growing the process.
    max_queued_bytes: int = 8_000_000
    inflight_window: int = 20
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class UpdatesConfig:
    public_key_file: str = ""
    # Deploy sources: https:// always, http:// only with allow_http, and files only under
    # source_dir (empty: no file sources).
    allow_http: bool = False
    source_dir: str = ""
    max_download_bytes: int = 1_000_000_000
    download_timeout_s: float = 600.0
    probation_s: float = 60.0
    error_rate_threshold: float = 0.05
    min_probation_requests: int = 20
    health_interval_s: float = 5.0
    keep_versions: int = 2


@dataclass(frozen=True)
class AgentConfig:
    """The whole parsed ``agent.toml`` (plus any overlay applied over MQTT)."""

    device_id: str
    profile: str
    data_dir: str
    log_level: str
    log_requests: bool
    log_format: str
    shutdown_grace_s: float
    policy_file: str
    api: ApiConfig
    cloud: CloudConfig
    mqtt: MqttConfig
    updates: UpdatesConfig
    models: tuple[ModelConfig, ...]
    version: str = "file"
    source: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models) or "none"
        raise ConfigError(f"no model named '{name}' in the agent config (it has {known})")


# Keys that only take effect when the agent restarts: a change pushed over MQTT is
# rejected with this reason rather than silently half-applied.
RESTART_ONLY = (
    ("agent", "device_id"),
    ("agent", "data_dir"),
    ("agent", "log_format"),
    ("api",),
    ("mqtt", "enabled"),
    ("mqtt", "host"),
    ("mqtt", "port"),
    ("mqtt", "protocol"),
    ("mqtt", "prefix"),
    ("mqtt", "client_id"),
    ("mqtt", "groups"),
    ("mqtt", "username"),
    ("mqtt", "password"),
    ("mqtt", "password_file"),
    ("mqtt", "tls"),
    ("mqtt", "keepalive_s"),
)


# Keys that decide what the device trusts or where its data goes: a fleet message may
# change them only when it is signed with the update key (``edgecut sign config``); the
# file on the device may always. A path names the key and everything under it.
SECURITY_KEYS = (
    ("agent", "device_id"),
    ("agent", "data_dir"),
    ("policy", "file"),
    ("api",),
    ("cloud", "url"),
    ("cloud", "token_file"),
    ("mqtt", "enabled"),
    ("mqtt", "host"),
    ("mqtt", "port"),
    ("mqtt", "prefix"),
    ("mqtt", "client_id"),
    ("mqtt", "username"),
    ("mqtt", "password"),
    ("mqtt", "password_file"),
    ("mqtt", "tls"),
    ("mqtt", "max_payload_bytes"),
    ("mqtt", "max_queued_bytes"),
    ("mqtt", "spool_max_bytes"),
    ("updates", "public_key_file"),
    ("updates", "allow_http"),
    ("updates", "source_dir"),
    ("updates", "max_download_bytes"),
    # Each model's path, plan and warm-up inputs are files the agent loads.
    ("models",),
)


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


def security_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of security-relevant keys whose value differs between two raw configs."""
    return [".".join(p) for p in SECURITY_KEYS if _lookup(old, p) != _lookup(new, p)]


def without_security_keys(patch: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``patch`` with every security-relevant key taken out, and the dotted names taken."""
    out = copy.deepcopy(dict(patch))
    dropped = []
    for path in SECURITY_KEYS:
        parent: Any = out
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent:
            del parent[path[-1]]
            dropped.append(".".join(path))
    return out, dropped


def _resolve(base: Path, value: str) -> str:
    """Relative paths in agent.toml are relative to the file, not the working directory."""
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def parse_agent_config(
    data: Mapping[str, Any], source: str, base_dir: str | Path = ".", version: str = "file"
) -> AgentConfig:
    """Build an :class:`AgentConfig` from parsed TOML (or JSON), rejecting unknown keys."""
    base = Path(base_dir)
    top = Table(data, source)

    agent = top.table("agent", required=True)
    device_id = agent.get("device_id", str)
    if not _ID_RE.match(device_id):
        raise ConfigError(
            f"{agent.where}: key 'device_id': expected 1-64 letters, digits, '_', '.' or '-', "
            f"got {device_id!r}"
        )
    profile = agent.get("profile", str, "auto")
    data_dir = _resolve(base, agent.get("data_dir", str, "/var/lib/edgecut"))
    log_level = agent.get("log_level", str, "info", choices=("debug", "info", "warning", "error"))
    log_requests = agent.get("log_requests", bool, True)
    log_format = agent.get("log_format", str, "json", choices=("json", "text"))
    grace = agent.get("shutdown_grace_s", float, 10.0, min=0.0, max=600.0)
    agent.finish()

    pol = top.table("policy")
    policy_file = _resolve(base, pol.get("file", str, ""))
    pol.finish()

    api_t = top.table("api")
    api = ApiConfig(
        host=api_t.get("host", str, "127.0.0.1"),
        port=api_t.get("port", int, 8800, min=0, max=65535),
        unix_socket=_resolve(base, api_t.get("unix_socket", str, "")),
        workers=api_t.get("workers", int, 1, min=1, max=64),
        shared_memory=api_t.get("shared_memory", bool, True),
        inline_max_ms=api_t.get("inline_max_ms", float, 50.0, min=0.0, max=10000.0),
        fast_lane=api_t.get("fast_lane", bool, True),
        header_timeout_s=api_t.get("header_timeout_s", float, 10.0, min=0.0, max=3600.0),
        max_header_bytes=api_t.get("max_header_bytes", int, 64 * 1024, min=0, max=1 << 30),
        keep_alive_timeout_s=api_t.get("keep_alive_timeout_s", float, 30.0, min=1.0,
                                       max=3600.0),
        body_timeout_s=api_t.get("body_timeout_s", float, 20.0, min=0.0, max=3600.0),
        body_min_bytes_per_s=api_t.get("body_min_bytes_per_s", float, 4096.0, min=0.0,
                                       max=1e12),
        max_connections=api_t.get("max_connections", int, 1024, min=1, max=1000000),
        max_connections_per_client=api_t.get("max_connections_per_client", int, 256, min=0,
                                             max=1000000),
        shm_allow_uids=tuple(api_t.get_list("shm_allow_uids", int, [])),
        grpc_port=api_t.get("grpc_port", int, 0, min=0, max=65535),
    )
    api_t.finish()
    if api.port == 0 and not api.unix_socket:
        raise ConfigError(f"{api_t.where}: set 'port' or 'unix_socket' (both are off)")

    cloud_t = top.table("cloud")
    if cloud_t.has("timeout_s"):
        # One timeout per cloud call: policy.toml's, which the fleet can push and replay reads.
        raise ConfigError(f"{cloud_t.where}: key 'timeout_s' moved: the cloud call's timeout "
                          "is policy.toml's [offload] timeout_ms")
    cloud = CloudConfig(
        url=cloud_t.get("url", str, ""),
        token_file=_resolve(base, cloud_t.get("token_file", str, "")),
        protocol=cloud_t.get("protocol", str, "http"),
    )
    cloud_t.finish()
    if cloud.protocol not in ("http", "grpc"):
        raise ConfigError(f"{cloud_t.where}: key 'protocol': expected \"http\" or \"grpc\", "
                          f"got {cloud.protocol!r}")
    schemes = ("http://", "https://") + (("grpc://", "grpcs://") if cloud.protocol == "grpc" else ())
    if cloud.url and not cloud.url.startswith(schemes):
        expected = ("an http:// or https:// URL" if cloud.protocol == "http" else
                    "a grpc://, grpcs://, http:// or https:// URL (protocol grpc)")
        raise ConfigError(
            f"{cloud_t.where}: key 'url': expected {expected}, got {cloud.url!r}"
        )

    mq = top.table("mqtt")
    tls_t = mq.table("tls")
    tls = TlsConfig(
        enabled=tls_t.get("enabled", bool, False),
        ca_file=_resolve(base, tls_t.get("ca_file", str, "")),
        cert_file=_resolve(base, tls_t.get("cert_file", str, "")),
        key_file=_resolve(base, tls_t.get("key_file", str, "")),
        insecure=tls_t.get("insecure", bool, False),
    )
    tls_t.finish()
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError(f"{tls_t.where}: 'cert_file' and 'key_file' go together; set both")
    groups = tuple(mq.get_list("groups", str, []))
    for g in groups:
        if not _ID_RE.match(g):
            raise ConfigError(f"{mq.where}: key 'groups': invalid group name {g!r}")
    mqtt = MqttConfig(
        enabled=mq.get("enabled", bool, False),
        host=mq.get("host", str, "127.0.0.1"),
        port=mq.get("port", int, 8883 if tls.enabled else 1883, min=1, max=65535),
        protocol=mq.get("protocol", str, "5", choices=("3.1.1", "5")),
        prefix=mq.get("prefix", str, "edgecut"),
        groups=groups,
        client_id=mq.get("client_id", str, ""),
        keepalive_s=mq.get("keepalive_s", int, 30, min=5, max=3600),
        username=mq.get("username", str, ""),
        password=mq.get("password", str, ""),
        password_file=_resolve(base, mq.get("password_file", str, "")),
        reconnect_min_s=mq.get("reconnect_min_s", float, 1.0, min=0.05, max=600.0),
        reconnect_max_s=mq.get("reconnect_max_s", float, 30.0, min=0.05, max=3600.0),
        telemetry_interval_s=mq.get("telemetry_interval_s", float, 10.0, min=0.05, max=86400.0),
        spool_max_bytes=mq.get("spool_max_bytes", int, 10_000_000, min=1024, max=10 ** 10),
        # MQTT's own ceiling on a packet is 256 MiB.
        max_payload_bytes=mq.get("max_payload_bytes", int, 1_000_000, min=1024,
                                 max=MAX_MQTT_PACKET),
        max_queued_bytes=mq.get("max_queued_bytes", int, 8_000_000, min=1024, max=1 << 30),
        inflight_window=mq.get("inflight_window", int, 20, min=1, max=1000),
        tls=tls,
    )
    mq.finish()
    if not _TOPIC_RE.match(mqtt.prefix) or any(c in mqtt.prefix for c in "+#"):
        raise ConfigError(f"{mq.where}: key 'prefix': expected a topic prefix, got {mqtt.prefix!r}")
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        raise ConfigError(f"{mq.where}: 'reconnect_max_s' must be >= 'reconnect_min_s'")

    up = top.table("updates")
    updates = UpdatesConfig(
        public_key_file=_resolve(base, up.get("public_key_file", str, "")),
        allow_http=up.get("allow_http", bool, False),
        source_dir=_resolve(base, up.get("source_dir", str, "")),
        max_download_bytes=up.get("max_download_bytes", int, 1_000_000_000, min=1,
                                  max=1 << 40),
        download_timeout_s=up.get("download_timeout_s", float, 600.0, min=0.1, max=86400.0),
        probation_s=up.get("probation_s", float, 60.0, min=0.0, max=MAX_PROBATION_S),
        error_rate_threshold=up.get("error_rate_threshold", float, 0.05, min=0.0, max=1.0),
        min_probation_requests=up.get("min_probation_requests", int, 20, min=1, max=10 ** 6),
        health_interval_s=up.get("health_interval_s", float, 5.0, min=0.05, max=3600.0),
        keep_versions=up.get("keep_versions", int, 2, min=1, max=100),
    )
    up.finish()

    models: list[ModelConfig] = []
    raw_models = data.get("models", [])
    top.get_list("models", Mapping, [])
    for i, item in enumerate(raw_models):
        mt = Table(item, f"{source} [[models]] #{i + 1}")
        name = mt.get("name", str)
        if not _ID_RE.match(name):
            raise ConfigError(f"{mt.where}: key 'name': invalid model name {name!r}")
        m = ModelConfig(
            name=name,
            path=_resolve(base, mt.get("path", str)),
            version=mt.get("version", str, "1"),
            plan=_resolve(base, mt.get("plan", str, "")),
            warmup_runs=mt.get("warmup_runs", int, 2, min=0, max=1000),
            warmup_inputs=_resolve(base, mt.get("warmup_inputs", str, "")),
        )
        mt.finish()
        if any(x.name == name for x in models):
            raise ConfigError(f"{mt.where}: model '{name}' is listed twice")
        models.append(m)
    top.finish()

    return AgentConfig(
        device_id=device_id,
        profile=profile,
        data_dir=data_dir,
        log_level=log_level,
        log_requests=log_requests,
        log_format=log_format,
        shutdown_grace_s=grace,
        policy_file=policy_file,
        api=api,
        cloud=cloud,
        mqtt=mqtt,
        updates=updates,
        models=tuple(models),
        version=version,
        source=source,
        raw=copy.deepcopy(dict(data)),
    )


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` laid over it: tables merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def restart_only_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of restart-only keys whose value differs between ``old`` and ``new``."""
    changed = []
    for path in RESTART_ONLY:
        a: Any = old
        b: Any = new
        for key in path:
            a = a.get(key) if isinstance(a, Mapping) else None
            b = b.get(key) if isinstance(b, Mapping) else None
        if a != b:
            changed.append(".".join(path))
    return changed


def security_warnings(config: AgentConfig) -> list[str]:
    """What in ``config`` leaves the device open, in words (logged loudly at start)."""
    out = []
    mq = config.mqtt
    if mq.enabled and not mq.tls.enabled:
        out.append(f"mqtt: the fleet link to {mq.host}:{mq.port} is not encrypted "
                   "([mqtt.tls] enabled = false): anyone on the path can read telemetry "
                   "and inject commands")
    if mq.enabled and mq.tls.enabled and mq.tls.insecure:
        out.append("mqtt.tls.insecure = true: the broker's certificate name is not checked")
    if mq.enabled and not mq.username and not mq.tls.cert_file:
        out.append("mqtt: no username and no client certificate: the broker cannot tell "
                   "this device from anyone else")
    if mq.enabled and not config.updates.public_key_file:
        out.append("updates.public_key_file is not set: anyone who can publish on the "
                   "broker can deploy models and change security settings on this device")
    if config.api.port and config.api.host not in ("127.0.0.1", "::1", "localhost"):
        out.append(f"api.host = {config.api.host!r}: the local API has no authentication "
                   "and is reachable beyond this machine")
    if config.updates.allow_http:
        out.append("updates.allow_http = true: model downloads may travel unencrypted")
    return out


def load_agent_config(path: str | Path, overlay: Mapping[str, Any] | None = None,
                      version: str = "file") -> AgentConfig:
    """Read ``agent.toml``, lay ``overlay`` (a config applied over MQTT) over it, and parse."""
    path = Path(path)
    data = read_toml(path)
    if overlay:
        data = merge(data, overlay)
    return parse_agent_config(data, str(path), path.resolve().parent, version)


def load_agent_config_text(text: str, source: str = "agent.toml",
                           base_dir: str | Path = ".") -> AgentConfig:
    """Parse and validate ``agent.toml`` content given as text (docs, tests, tooling)."""
    from devices.config import parse_toml

    return parse_agent_config(parse_toml(text, source), source, base_dir)


def keep_restart_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` with every restart-only key put back to its value in ``old``.

    A reload applies what can change live; the rest keeps describing what is in force
    until the agent restarts.
    """
    out = copy.deepcopy(dict(new))
    for path in RESTART_ONLY:
        src: Any = old
        for key in path:
            src = src.get(key) if isinstance(src, Mapping) else None
        parent: Any = out
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                parent[key] = {}
            parent = parent[key]
        if src is None:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(src)
    return out
