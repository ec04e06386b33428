"""``agent.toml``: what the edge agent serves, where it listens, and how it reaches the fleet.

Each key is declared once below (``devices.schema``: default, range, unit, meaning); the
parser, the defaults, docs/agent.md's reference tables and ``edge/data/agent.example.toml``
follow from it (``scripts/config_docs.py`` writes the last two; the docs test checks
them). Unknown keys, wrong types and out-of-range values are errors that name the file
and the key. The same parser checks a config pushed over MQTT (``config/set``), so a
change that would not load from disk is never applied either.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from devices.config import Table, read_toml
from devices.errors import ConfigError
from devices.schema import flagged, parse, parse_table, section, setting
from edge.agent._names import NAME_PATTERN, is_name

_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_MQTT_PACKET = 268_435_455
# A deployment's probation holds the deploy worker: bounded so no message can hold it
# for long (a deploy message's own probation_s has the same range).
MAX_PROBATION_S = 3600.0
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_./-]{1,128}$")


@dataclass(frozen=True)
class AgentSettings:
    """The ``[agent]`` table."""

    device_id: str = setting("", "1-64 of `[A-Za-z0-9_.-]`; names the MQTT topics",
                             note="1-64 of [A-Za-z0-9_.-]; names the MQTT topics",
                             required=True, example="jetson-0001",
        flags=("restart", "signed"))
    profile: str = setting("auto", "device profile name or `.toml` path; `auto` detects the board",
                           note="device profile name or .toml path; \"auto\" detects the board")
    data_dir: str = setting("/var/lib/edgecut", "model versions, telemetry spool, fleet state",
                            path=True,
        flags=("restart", "signed"))
    log_level: str = setting("info", "`debug`, `info`, `warning` or `error`",
                             note="debug | info | warning | error",
                             choices=("debug", "info", "warning", "error"))
    log_requests: bool = setting(True, "one log line per request (decision and costs)")
    log_format: str = setting(
        "json", "`json` (one object per line, as `edgecut serve` writes) or `text` (for a "
        "terminal)", note="json (one object per line, as edgecut serve) | text "
        "(for a terminal)", choices=("json", "text"),
        flags=("restart",))
    shutdown_grace_s: float = setting(10.0, "SIGTERM: in-flight requests get this long to finish",
                                      unit="s", min=0.0, max=600.0)


@dataclass(frozen=True)
class PolicyFileSettings:
    """The ``[policy]`` table."""

    file: str = setting("", "`policy.toml` (docs/policy.md); empty: run everything locally",
                        note="policy.toml (docs/policy.md); empty: run everything locally",
                        path=True,
        flags=("signed",))


@dataclass(frozen=True)
class ApiConfig:
    """The local Open Inference Protocol endpoint (TCP on loopback and/or a Unix socket)."""

    host: str = setting("127.0.0.1", "address of the TCP listener (loopback by default)")
    port: int = setting(8800, "TCP port; 0 turns TCP off", min=0, max=65535)
    unix_socket: str = setting("", "Unix socket path; empty: none",
                               note="example: \"/run/edgecut/agent.sock\"", path=True)
    workers: int = setting(1, "requests run at once per model; 1 is best for latency", min=1,
                           max=64)
    # The system shared memory extension: local apps pass tensors through /dev/shm instead
    # of the socket. Only loopback and Unix-socket peers may use it, whatever the host.
    shared_memory: bool = setting(
        True, "system shared memory extension (loopback and Unix-socket peers only)",
        note="system shared memory extension (loopback/socket peers only)")
    # With one worker, a request the agent expects to finish locally within this many
    # milliseconds runs on the API's event loop when nothing else is in flight for the
    # model, skipping two thread hand-offs; longer ones and offloads use the worker
    # thread, so the loop is never held longer than this. 0 turns it off.
    inline_max_ms: float = setting(
        50.0, "with 1 worker: local runs expected this short skip the thread hand-off (a run "
        "already uses every core), more for throughput; 0: off", unit="ms", min=0.0,
        max=10000.0)
    # Inference requests the agent runs inline are answered inside the HTTP protocol,
    # without the ASGI request cycle (cloud.http._lane); false: every request takes that cycle.
    fast_lane: bool = setting(True, "inline runs are answered inside the HTTP protocol "
                              "(docs/agent.md)")
    # KServe v2 / Triton gRPC on api.host (DeepStream's nvinferserver, tritonclient.grpc);
    # 0: off. Needs the grpc extra.
    grpc_port: int = setting(0, "KServe v2 / Triton gRPC on `host` (e.g. 8001); 0: off",
                             note="KServe v2 / Triton gRPC on host (e.g. 8001); 0: off", min=0,
                             max=65535)
    # Connection limits against hostile local users or, with host = 0.0.0.0, the network
    # (cloud.http._conn): the same meaning and defaults as `edgecut serve`'s flags.
    header_timeout_s: float = setting(10.0, "a request's head must arrive within this; else 408",
                                      unit="s", min=0.0, max=3600.0)
    max_header_bytes: int = setting(64 * 1024, "request line plus headers; over it 431",
                                    unit="bytes", min=0, max=1 << 30)
    keep_alive_timeout_s: float = setting(30.0, "an idle keep-alive connection is closed after "
                                          "this", unit="s", min=1.0, max=3600.0)
    body_timeout_s: float = setting(
        20.0, "a body may take this long, plus 1 s per `body_min_bytes_per_s` bytes",
        note="a body may take this long, plus 1 s per body_min_bytes_per_s bytes", unit="s",
        min=0.0, max=3600.0)
    body_min_bytes_per_s: float = setting(4096.0, "a body that trickles slower gets 408; 0: off",
                                          unit="bytes/s", min=0.0, max=1e12)
    max_connections: int = setting(1024, "open connections; a new one beyond gets 503", min=1,
                                   max=1000000)
    max_connections_per_client: int = setting(
        256, "per client address (per uid on the Unix socket); 0: no cap", min=0, max=1000000)
    # Besides the agent's own uid, the owners whose /dev/shm files TCP loopback clients may
    # register (Unix-socket clients may register only their own files).
    shm_allow_uids: tuple[int, ...] = setting(
        (), "owners (besides the agent's uid) of `/dev/shm` files TCP clients may register",
        note="owners (besides the agent's uid) of /dev/shm files TCP clients may register",
        item=int)

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
    """Where offloaded work goes (the call's timeout, retries and breaker are policy.toml's
    ``[offload]`` keys)."""

    url: str = setting("", "the offload service; empty: local only",
                       note="example: \"https://gpu.example.com:8000\"; empty: local only",
        flags=("signed",))
    token_file: str = setting("", "a JWT for the service (`Authorization: Bearer`)",
                              note="a JWT for the service (Authorization: Bearer)", path=True,
        flags=("signed",))
    # How the offload client speaks to the cloud: "http" (KServe v2 REST) or "grpc"
    # (KServe v2 gRPC: edgecut serve --grpc-port, or any Triton).
    protocol: str = setting(
        "http", "`http` (KServe v2 REST) or `grpc` (KServe v2 gRPC: `url` grpc://host:8001; "
        "needs edgecut[grpc])",
        note="\"grpc\": KServe v2 gRPC (url grpc://host:8001; needs edgecut[grpc])")


@dataclass(frozen=True)
class ModelConfig:
    """One model the agent serves. ``path`` is the version it starts with."""

    name: str = setting("", "the model's name in the API (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`)",
                        note="the model's name in the API", required=True,
                        example="squeezenet")
    path: str = setting("", "the model file the agent starts with", required=True, path=True,
                        example="/var/lib/edgecut/models/squeezenet.onnx")
    version: str = setting("1", "the version name of `path` (a name as the model's)")
    plan: str = setting("", "`plan.json` from `edgecut partition` (split and offload plans)",
                        note="plan.json from `edgecut partition` (split/offload plans)",
                        path=True)
    warmup_runs: int = setting(2, "inferences run before serving", min=0, max=1000)
    warmup_inputs: str = setting("", "`.npz` of sample inputs for warm-up; empty: random",
                                 note=".npz of sample inputs for warm-up; default: random",
                                 path=True)


@dataclass(frozen=True)
class TlsConfig:
    """The broker connection's TLS (``[mqtt.tls]``)."""

    enabled: bool = setting(False, "TLS to the broker (the port defaults to 8883 then)")
    ca_file: str = setting("", "CA bundle that signed the broker's certificate", path=True)
    cert_file: str = setting("", "client certificate (mutual TLS), with `key_file`",
                             note="client certificate (mutual TLS), with key_file", path=True)
    key_file: str = setting("", "the client certificate's key", path=True)
    insecure: bool = setting(False, "skip the host name check (testing only)")


@dataclass(frozen=True)
class MqttConfig:
    """The fleet link (docs/mqtt.md)."""

    enabled: bool = setting(False, "connect to the fleet's broker",
        flags=("restart", "signed"))
    host: str = setting("127.0.0.1", "the broker",
        flags=("restart", "signed"))
    port: int = setting(1883, "the broker's port; 8883 when TLS is on and this is not given",
                        note="8883 when TLS is on", min=1, max=65535,
        flags=("restart", "signed"))
    protocol: str = setting("5", "`5` or `3.1.1`", note="\"5\" or \"3.1.1\"",
                            choices=("3.1.1", "5"),
        flags=("restart",))
    prefix: str = setting("edgecut", "topics are `<prefix>/<device_id>/...`",
                          note="topics are <prefix>/<device_id>/...",
        flags=("restart", "signed"))
    groups: tuple[str, ...] = setting(
        (), "also listens on `<prefix>/group/<g>/...` for each group",
        note="example: [\"lab\", \"line-3\"]: also listens on <prefix>/group/<g>/...",
        item=str,
        flags=("restart",))
    client_id: str = setting("", "MQTT client id; empty: `edgecut-<device_id>`",
                             note="default: edgecut-<device_id>",
        flags=("restart", "signed"))
    keepalive_s: int = setting(30, "MQTT keep-alive", unit="s", min=5, max=3600,
        flags=("restart",))
    username: str = setting("", "broker user name",
        flags=("restart", "signed"))
    password: str = setting("", "broker password (prefer `password_file`)",
                            note="prefer password_file",
        flags=("restart", "signed"))
    password_file: str = setting("", "a file holding the broker password", path=True,
        flags=("restart", "signed"))
    reconnect_min_s: float = setting(1.0, "reconnect backoff doubles from this ...", unit="s",
                                     min=0.05, max=600.0)
    reconnect_max_s: float = setting(30.0, "... to this", unit="s", min=0.05, max=3600.0)
    telemetry_interval_s: float = setting(10.0, "one telemetry record this often", unit="s",
                                          min=0.05, max=86400.0)
    spool_max_bytes: int = setting(
        10_000_000, "telemetry kept on disk while offline; the oldest evicted first",
        unit="bytes", min=1024, max=10 ** 10,
        flags=("signed",))
    # MQTT's own ceiling on a packet is 256 MiB.
    max_payload_bytes: int = setting(
        1_000_000, "larger command payloads are refused (MQTT 5: the broker is told at connect)",
        unit="bytes", min=1024, max=MAX_MQTT_PACKET,
        flags=("signed",))
    # Commands and deployments waiting to run, counted in payload bytes: a flood beyond
    # this is answered "busy" instead of growing the process.
    max_queued_bytes: int = setting(
        8_000_000, "commands waiting to run, in payload bytes; more: \"busy\"", unit="bytes",
        min=1024, max=1 << 30,
        flags=("signed",))
    inflight_window: int = setting(20, "telemetry records awaiting PUBACK at once", min=1,
                                   max=1000)
    tls: TlsConfig = section(TlsConfig, flags=("restart", "signed"))


@dataclass(frozen=True)
class UpdatesConfig:
    """Signed model updates and their probation (docs/agent.md)."""

    public_key_file: str = setting(
        "", "Ed25519 public key (PEM); when set, deployments and security keys must be signed",
        path=True,
        flags=("signed",))
    # Deploy sources: https:// always, http:// only with allow_http, and files only under
    # source_dir (empty: no file sources).
    allow_http: bool = setting(False, "deploy URLs: https:// only, unless this is true",
        flags=("signed",))
    source_dir: str = setting(
        "", "deploy `path` sources must lie under this folder; empty: none allowed",
        note="deploy \"path\" sources must lie under this folder; empty: none allowed",
        path=True,
        flags=("signed",))
    max_download_bytes: int = setting(1_000_000_000, "the largest model download", unit="bytes",
                                      min=1, max=1 << 40,
        flags=("signed",))
    download_timeout_s: float = setting(600.0, "a download's time limit", unit="s", min=0.1,
                                        max=86400.0)
    probation_s: float = setting(60.0, "after a swap, watch the new version this long",
                                 unit="s", min=0.0, max=MAX_PROBATION_S)
    error_rate_threshold: float = setting(
        0.05, "roll back when errors/requests exceeds this ...", min=0.0, max=1.0)
    min_probation_requests: int = setting(20, "... over at least this many requests", min=1,
                                          max=10 ** 6)
    health_interval_s: float = setting(
        5.0, "warm-up inference on the new version this often during probation", unit="s",
        min=0.05, max=3600.0)
    keep_versions: int = setting(2, "versions kept on disk per model (current and previous at "
                                 "least)", min=1, max=100)


@dataclass(frozen=True)
class StreamConfig:
    """Camera streams on ``<model>.stream`` (docs/streams.md): frames pipelined across the
    device, the link and the cloud, planned for throughput within the policy's SLO."""

    window: int = setting(4, "frames of one model past the device at once (and requests the "
                          "API runs at once on `<model>.stream`)",
                          note="frames of one model past the device at once", min=1, max=64)
    queue_size: int = setting(4, "frames waiting for the device; with `window` or fewer clients' "
                              "frames in flight nothing is dropped",
                              note="frames waiting for the device", min=1, max=1024)
    overload: str = setting("drop_oldest", "a frame arriving at a full queue: `drop_oldest` keeps "
                            "the newest (the dropped request is answered 503), `block` waits",
                            note="drop_oldest keeps the newest (dropped: 503), block waits",
                            choices=("drop_oldest", "block"))
    replan_every: int = setting(8, "frames between re-plans from the link estimate; 0: never",
                                min=0, max=100000)


@dataclass(frozen=True)
class AgentFile:
    """``agent.toml``'s tables (``[[models]]`` beside them is :class:`ModelConfig`): the
    schema the parser reads and the docs and example file are written from."""

    agent: AgentSettings = section(AgentSettings)
    api: ApiConfig = section(ApiConfig, "The local Open Inference Protocol endpoint.",
                             flags=("restart", "signed"))
    policy: PolicyFileSettings = section(PolicyFileSettings)
    cloud: CloudConfig = section(CloudConfig, "Where offloaded work goes; the call's timeout, "
                                 "retries and breaker are `policy.toml`'s `[offload]` keys.")
    mqtt: MqttConfig = section(MqttConfig, "The fleet link (docs/mqtt.md).")
    updates: UpdatesConfig = section(UpdatesConfig)
    stream: StreamConfig = section(StreamConfig, flags=("restart",))


#: The example file's header (``edge/data/agent.example.toml`` is written from the schema).
EXAMPLE_HEADER = """\
# edgecut agent configuration (every key, with its default unless marked "example").
# Relative paths are relative to this file. docs/agent.md explains each section.
# (Written from edge/agent/_config.py by scripts/config_docs.py.)"""
#: What the reference tables say of a flagged key.
FLAG_NOTES = {"restart": "restart only", "signed": "signed"}
MODELS_COMMENT = ("One table per model. path/version are what the agent starts with; a version "
                  "deployed over MQTT and committed takes over (recorded in "
                  "<data_dir>/models/state.json).")


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
    stream: StreamConfig = field(default_factory=StreamConfig)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models) or "none"
        raise ConfigError(f"no model named '{name}' in the agent config (it has {known})")


# Keys that only take effect when the agent restarts (``flags=("restart",)`` in the schema):
# a change pushed over MQTT is rejected with this reason rather than silently half-applied.
RESTART_ONLY = flagged(AgentFile, "restart")


# Keys that decide what the device trusts or where its data goes (``flags=("signed",)`` in
# the schema): a fleet message may change them only when it is signed with the update key
# (``edgecut sign config``); the file on the device may always. A path names the key and
# everything under it.
SECURITY_KEYS = flagged(AgentFile, "signed") + (
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
    top.table("agent", required=True)
    cloud_t = top.table("cloud")
    if cloud_t.has("timeout_s"):
        # One timeout per cloud call: policy.toml's, which the fleet can push and replay reads.
        raise ConfigError(f"{cloud_t.where}: key 'timeout_s' moved: the cloud call's timeout "
                          "is policy.toml's [offload] timeout_ms")
    raw_models = top.get_list("models", Mapping, [])
    tables = {k: v for k, v in data.items() if k != "models"}
    f = parse(AgentFile, tables, source, resolve=lambda value: _resolve(base, value))
    agent, api, cloud, mqtt = f.agent, f.api, f.cloud, f.mqtt
    if not _ID_RE.match(agent.device_id):
        raise ConfigError(
            f"{source} [agent]: key 'device_id': expected 1-64 letters, digits, '_', '.' or '-', "
            f"got {agent.device_id!r}"
        )
    if api.port == 0 and not api.unix_socket:
        raise ConfigError(f"{source} [api]: set 'port' or 'unix_socket' (both are off)")
    if cloud.protocol not in ("http", "grpc"):
        raise ConfigError(f"{source} [cloud]: key 'protocol': expected \"http\" or \"grpc\", "
                          f"got {cloud.protocol!r}")
    schemes = ("http://", "https://") + (("grpc://", "grpcs://") if cloud.protocol == "grpc" else ())
    if cloud.url and not cloud.url.startswith(schemes):
        expected = ("an http:// or https:// URL" if cloud.protocol == "http" else
                    "a grpc://, grpcs://, http:// or https:// URL (protocol grpc)")
        raise ConfigError(f"{source} [cloud]: key 'url': expected {expected}, got {cloud.url!r}")
    tls = mqtt.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError(f"{source} [mqtt] [tls]: 'cert_file' and 'key_file' go together; "
                          "set both")
    for g in mqtt.groups:
        if not _ID_RE.match(g):
            raise ConfigError(f"{source} [mqtt]: key 'groups': invalid group name {g!r}")
    if tls.enabled and "port" not in (data.get("mqtt") or {}):
        mqtt = replace(mqtt, port=8883)  # MQTT over TLS's own port, unless one is given
    if not _TOPIC_RE.match(mqtt.prefix) or any(c in mqtt.prefix for c in "+#"):
        raise ConfigError(f"{source} [mqtt]: key 'prefix': expected a topic prefix, got "
                          f"{mqtt.prefix!r}")
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        raise ConfigError(f"{source} [mqtt]: 'reconnect_max_s' must be >= 'reconnect_min_s'")

    models: list[ModelConfig] = []
    for i, item in enumerate(raw_models):
        where = f"{source} [[models]] #{i + 1}"
        m = parse_table(ModelConfig, Table(item, where),
                        resolve=lambda value: _resolve(base, value))
        if not is_name(m.name):
            raise ConfigError(f"{where}: key 'name': invalid model name {m.name!r} (expected "
                              f"{NAME_PATTERN})")
        if not is_name(m.version):
            raise ConfigError(f"{where}: key 'version': expected {NAME_PATTERN}, got "
                              f"{m.version!r}")
        if any(x.name == m.name for x in models):
            raise ConfigError(f"{where}: model '{m.name}' is listed twice")
        models.append(m)

    return AgentConfig(
        device_id=agent.device_id,
        profile=agent.profile,
        data_dir=agent.data_dir,
        log_level=agent.log_level,
        log_requests=agent.log_requests,
        log_format=agent.log_format,
        shutdown_grace_s=agent.shutdown_grace_s,
        policy_file=f.policy.file,
        api=api,
        cloud=cloud,
        mqtt=mqtt,
        updates=f.updates,
        stream=f.stream,
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
