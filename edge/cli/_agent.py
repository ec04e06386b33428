"""``edgecut agent``: run the daemon, or install it as a systemd service."""

from __future__ import annotations

import getpass
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

[Service]
# notify: systemd learns the agent is ready once its models are loaded and its API
# answers; the watchdog restarts an agent whose API stops answering.
Type=notify
NotifyAccess=main
WatchdogSec=60
User={user}
ExecStart={exe} agent --config {config}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM drains in-flight requests for shutdown_grace_s; give it that plus a margin.
KillSignal=SIGTERM
TimeoutStopSec={stop_s}
Restart=on-failure
RestartSec=5
StartLimitIntervalSec=300
StartLimitBurst=10
# Resource limits: the agent must never starve the applications it serves.
MemoryMax={memory_max}
CPUWeight=90
TasksMax=256
LimitNOFILE=4096
Nice=-5
# Hardening that leaves the GPU, the model store and the socket reachable.
NoNewPrivileges=true
ProtectSystem=full
ReadWritePaths={data_dir}{runtime_dir_rw}
RuntimeDirectory=edgecut
RuntimeDirectoryPreserve=yes
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target
"""


def default_config_text(device_id: str, profile: str, data_dir: str, unix_socket: str,
                        port: int = 8800) -> str:
    """A complete agent.toml for this board: local serving on, fleet link ready to enable."""
    return f"""\
# Written by `edgecut agent install` for a {profile} board. Every key: edge/data/agent.example.toml
[agent]
device_id = "{device_id}"
profile = "{profile}"
data_dir = "{data_dir}"
log_level = "info"
shutdown_grace_s = 10.0

[api]
host = "127.0.0.1"
port = {port}
unix_socket = "{unix_socket}"

[cloud]
url = ""

[mqtt]
enabled = false
host = "127.0.0.1"
port = 1883
prefix = "edgecut"
telemetry_interval_s = 10.0

[updates]
probation_s = 60.0
error_rate_threshold = 0.05

# Add one table per model, e.g.:
# [[models]]
# name = "squeezenet"
# path = "{data_dir}/models/squeezenet.onnx"
"""


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
@click.option("--user", default=None, help="User the service runs as (default: you).")
@click.option("--exe", default=None, help="edgecut executable (default: this one).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def install(config_path: str, unit_path: str, device_id: str | None, profile_name: str | None,
            data_dir: str, port: int, unix_socket: str, user: str | None, exe: str | None,
            force: bool) -> None:
    """Write a systemd unit and a default agent.toml for the detected board."""
    import devices
    from devices.errors import ConfigError

    profile = devices.load_profile(profile_name) if profile_name else devices.detect()
    host = device_id or socket.gethostname().split(".")[0]
    safe_id = "".join(c if c.isalnum() or c in "_.-" else "-" for c in host)[:64] or "edge"
    exe = exe or shutil.which("edgecut") or str(Path(sys.argv[0]).resolve())
    user = user or getpass.getuser()
    config = Path(config_path)
    unit = Path(unit_path)
    # systemd starts the service in /, so every path it reads must be absolute.
    data_dir = str(Path(data_dir).expanduser().resolve())
    if unix_socket:
        unix_socket = str(Path(unix_socket).expanduser().resolve())
    for path in (config, unit):
        if path.exists() and not force:
            raise ConfigError(f"{path} exists; pass --force to overwrite it")
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(default_config_text(safe_id, profile.name, data_dir, unix_socket,
                                              port))
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(_UNIT.format(
            name=unit.stem, device_id=safe_id, user=user, exe=exe, config=config.resolve(),
            stop_s=20, memory_max=_memory_max(profile.name), data_dir=data_dir,
            runtime_dir_rw=" /run/edgecut" if unix_socket.startswith("/run/edgecut/") else "",
        ))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {exc.filename or config}: {exc.strerror or exc}; run it with sudo "
            "or choose --config-path and --unit-path"
        ) from exc
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError:
        click.echo(f"note      create {data_dir} (writable by {user}) before starting the service")
    click.echo(f"profile   {profile.name}")
    click.echo(f"config    {config}")
    click.echo(f"unit      {unit}")
    click.echo(f"next      sudo systemctl daemon-reload && sudo systemctl enable --now {unit.stem}")


@agent.command()
@click.option("--url", default="unix:///run/edgecut/agent.sock", show_default=True,
              help="The agent's local API (unix:///path or http://127.0.0.1:PORT).")
def status(url: str) -> None:
    """Print the running agent's status (models and serving versions) as JSON."""
    import json

    from edge.client import Client

    with Client(url, timeout=5.0) as client:
        click.echo(json.dumps(client.agent_status(), indent=2))
