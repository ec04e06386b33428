"""``edgecut agent``: run the daemon, or install it as a systemd service."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import click

_UNIT = """\
# Written by `edgecut agent install`. Reload with: systemctl reload {name}
[Unit]
Description=edgecut edge inference agent ({device_id})
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
# notify: systemd learns the agent is ready once its models are loaded and its API
# answers; the watchdog restarts an agent whose API stops answering.
Type=notify
NotifyAccess=main
WatchdogSec=60
# A dedicated system user; video and render give it the GPU on a Jetson (/dev/nvhost-*,
# /dev/dri), and nothing else.
User={user}
Group={group}
SupplementaryGroups={groups}
ExecStart={exe} agent --config {config}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM drains in-flight requests for shutdown_grace_s; give it that plus a margin.
KillSignal=SIGTERM
TimeoutStopSec={stop_s}
Restart=on-failure
RestartSec=5
# Resource limits: the agent must never starve the applications it serves (and it gets
# no scheduling priority over them: no negative Nice).
MemoryMax={memory_max}
CPUWeight=90
TasksMax=256
LimitNOFILE=4096
# Hardening: the whole file system is read-only to the agent except its data folder and
# its runtime folder (the socket); it cannot gain privileges, sees a private /tmp and no
# home folders. Devices stay visible (the GPU).
NoNewPrivileges=true
ProtectSystem=strict
ReadWritePaths={data_dir}
ProtectHome=true
PrivateTmp=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictSUIDSGID=true
RestrictRealtime=true
LockPersonality=true
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027
RuntimeDirectory=edgecut
RuntimeDirectoryMode=0750
RuntimeDirectoryPreserve=yes
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""

GPU_GROUPS = ("video", "render")


def default_config_text(device_id: str, profile: str, data_dir: str, unix_socket: str,
                        port: int = 8800, config_dir: str = "/etc/edgecut") -> str:
    """A complete agent.toml for this board: local serving on, fleet link ready to enable
    (over TLS, with signed updates)."""
    return f"""\
# Written by `edgecut agent install` for a {profile} board. Every key: edge/data/agent.example.toml
[agent]
device_id = "{device_id}"
profile = "{profile}"
data_dir = "{data_dir}"
log_level = "info"
shutdown_grace_s = 10.0

[api]
# Loopback only: the local API has no authentication.
host = "127.0.0.1"
port = {port}
unix_socket = "{unix_socket}"

[cloud]
url = ""

[mqtt]
enabled = false
host = "127.0.0.1"
port = 8883
prefix = "edgecut"
telemetry_interval_s = 10.0

[mqtt.tls]
# The broker's CA; give cert_file and key_file too for a client certificate.
enabled = true
ca_file = "{config_dir}/ca.pem"

[updates]
# The fleet operator's Ed25519 public key (`edgecut sign keygen`): deployments and
# security-relevant config changes must be signed with its private key.
public_key_file = "{config_dir}/fleet.pub"
probation_s = 60.0
error_rate_threshold = 0.05

# Add one table per model, e.g.:
# [[models]]
# name = "squeezenet"
# path = "{data_dir}/models/squeezenet.onnx"
"""


def _run(cmd: list[str]) -> None:
    import subprocess

    from devices.errors import ConfigError

    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"{cmd[0]} not found: create the user yourself or pass "
                          "--no-user-setup") from exc
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"{' '.join(cmd)} failed: {exc.stderr.strip() or exc}") from exc


def _names(path: Path) -> dict[str, list[str]]:
    """``name -> fields`` of an /etc/passwd or /etc/group style file."""
    out: dict[str, list[str]] = {}
    try:
        for line in path.read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and not line.startswith("#"):
                out[fields[0]] = fields
    except OSError:
        pass
    return out


def ensure_service_user(user: str, data_dir: str, groups: tuple[str, ...] = GPU_GROUPS,
                        prefix: str = "") -> list[str]:
    """Create system user ``user`` (and its group) when missing and add it to ``groups``
    (each created as a system group when missing); return what was done.

    ``prefix``: act on the system image mounted there (``useradd --prefix``).
    """
    root = Path(prefix or "/")
    pre = ["--prefix", prefix] if prefix else []
    done = []
    if user not in _names(root / "etc/passwd"):
        _run(["useradd", *pre, "--system", "--user-group", "--no-create-home",
              "--home-dir", data_dir, "--shell", "/usr/sbin/nologin",
              "--comment", "edgecut agent", user])
        done.append(f"created system user {user}")
    have = _names(root / "etc/group")
    for g in groups:
        if g not in have:
            _run(["groupadd", *pre, "--system", g])
            done.append(f"created system group {g}")
    members = _names(root / "etc/group")
    missing = [g for g in groups if user not in members.get(g, ["", "", "", ""])[3].split(",")]
    if missing:
        _run(["usermod", *pre, "--append", "--groups", ",".join(missing), user])
        done.append(f"added {user} to {', '.join(missing)}")
    return done


def render_unit(*, name: str, device_id: str, user: str, group: str, exe: str, config: str,
                data_dir: str, memory_max: str, groups: tuple[str, ...] = GPU_GROUPS) -> str:
    """The systemd unit text (checked with ``systemd-analyze verify`` in the tests)."""
    return _UNIT.format(name=name, device_id=device_id, user=user, group=group,
                        groups=" ".join(groups), exe=exe, config=config, stop_s=20,
                        memory_max=memory_max, data_dir=data_dir)


def _memory_max(profile_name: str) -> str:
    # Leave most of a small board's shared CPU/GPU memory to the applications.
    return {"jetson-nano": "2G", "jetson-orin-nano": "4G", "jetson-xavier-nx": "4G"}.get(
        profile_name, "8G")


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="agent.toml to run with.")
@click.pass_context
def agent(ctx: click.Context, config_path: str | None) -> None:
    """Run the edge agent daemon (`edgecut agent --config agent.toml`), or install it."""
    if ctx.invoked_subcommand is not None:
        return
    if config_path is None:
        raise click.UsageError("give --config agent.toml (or use `edgecut agent install`)")
    from edge.agent._daemon import run_agent

    sys.exit(run_agent(config_path))


@agent.command()
@click.option("--config-path", default="/etc/edgecut/agent.toml", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the default agent.toml.")
@click.option("--unit-path", default="/etc/systemd/system/edgecut-agent.service",
              show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the systemd unit.")
@click.option("--device-id", default=None, help="Device id (default: the host name).")
@click.option("--profile", "profile_name", default=None,
              help="Device profile (default: detected from the board).")
@click.option("--data-dir", default="/var/lib/edgecut", show_default=True)
@click.option("--port", default=8800, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port of the local API on 127.0.0.1 (0: Unix socket only).")
@click.option("--unix-socket", default="/run/edgecut/agent.sock", show_default=True,
              help="Unix socket of the local API ('' to turn it off).")
@click.option("--user", default="edgecut", show_default=True,
              help="Dedicated system user the service runs as (created when missing).")
@click.option("--no-user-setup", "no_user_setup", is_flag=True,
              help="Do not create the user or change its groups (only write the files).")
@click.option("--root-prefix", default="", help="Act on a system image mounted here "
              "(user and groups in PREFIX/etc); files go where the paths say.")
@click.option("--exe", default=None, help="edgecut executable (default: this one).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def install(config_path: str, unit_path: str, device_id: str | None, profile_name: str | None,
            data_dir: str, port: int, unix_socket: str, user: str, no_user_setup: bool,
            root_prefix: str, exe: str | None, force: bool) -> None:
    """Write a systemd unit and a default agent.toml for the detected board, and set up the
    service's system user (groups video and render for the GPU)."""
    import devices
    from devices.errors import ConfigError

    if user == "root" or not user or not all(c.isalnum() or c in "_-." for c in user):
        raise ConfigError(f"--user: expected a dedicated system user name, got {user!r}")
    profile = devices.load_profile(profile_name) if profile_name else devices.detect()
    host = device_id or socket.gethostname().split(".")[0]
    safe_id = "".join(c if c.isalnum() or c in "_.-" else "-" for c in host)[:64] or "edge"
    exe = exe or shutil.which("edgecut") or str(Path(sys.argv[0]).resolve())
    config = Path(config_path)
    unit = Path(unit_path)
    # systemd starts the service in /, so every path it reads must be absolute.
    data_dir = str(Path(data_dir).expanduser().resolve())
    if unix_socket:
        unix_socket = str(Path(unix_socket).expanduser().resolve())
    for path in (config, unit):
        if path.exists() and not force:
            raise ConfigError(f"{path} exists; pass --force to overwrite it")
    actions: list[str] = []
    if not no_user_setup:
        if os.geteuid() != 0 and not root_prefix:
            raise ConfigError(f"creating system user {user} needs root: run it with sudo, or "
                              "pass --no-user-setup and create the user yourself")
        actions = ensure_service_user(user, data_dir, prefix=root_prefix)
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(default_config_text(safe_id, profile.name, data_dir, unix_socket,
                                              port, str(config.resolve().parent)))
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(render_unit(
            name=unit.stem, device_id=safe_id, user=user, group=user, exe=exe,
            config=str(config.resolve()), data_dir=data_dir,
            memory_max=_memory_max(profile.name)))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {exc.filename or config}: {exc.strerror or exc}; run it with sudo "
            "or choose --config-path and --unit-path"
        ) from exc
    try:
        os.makedirs(data_dir, mode=0o750, exist_ok=True)
        if not no_user_setup and not root_prefix and os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(data_dir, entry.pw_uid, entry.pw_gid)
            # The config is the service's to read, not to write.
            os.chown(config, 0, entry.pw_gid)
            os.chmod(config, 0o640)
    except (OSError, KeyError):
        click.echo(f"note      create {data_dir} (writable by {user}) before starting the service")
    click.echo(f"profile   {profile.name}")
    click.echo(f"config    {config}")
    click.echo(f"unit      {unit}")
    for line in actions:
        click.echo(f"user      {line}")
    click.echo(f"next      put the broker's CA and the fleet key next to {config.name} "
               "(ca.pem, fleet.pub), then")
    click.echo(f"          sudo systemctl daemon-reload && sudo systemctl enable --now {unit.stem}")


@agent.command()
@click.option("--url", default="unix:///run/edgecut/agent.sock", show_default=True,
              help="The agent's local API (unix:///path or http://127.0.0.1:PORT).")
def status(url: str) -> None:
    """Print the running agent's status (models and serving versions) as JSON."""
    import json

    from edge.client import Client

    with Client(url, timeout=5.0) as client:
        click.echo(json.dumps(client.agent_status(), indent=2))
