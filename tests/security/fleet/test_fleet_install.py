"""`edgecut agent install`: a dedicated user, a hardened unit systemd accepts, TLS and signed
updates on in the config it writes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.agent import load_agent_config
from edge.cli._agent import agent as agent_cmd


def _image(tmp_path: Path) -> Path:
    """A copy of this system's user and group files to install into (useradd --prefix)."""
    prefix = tmp_path / "image"
    (prefix / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        src = Path("/etc") / name
        if src.exists():
            shutil.copy(src, prefix / "etc" / name)
    return prefix


def _install(tmp_path: Path, *extra: str) -> tuple[Path, Path, str]:
    unit = tmp_path / "edgecut-agent.service"
    config = tmp_path / "etc" / "agent.toml"
    # The console script of this environment: systemd-analyze checks that it exists.
    exe = str(Path(sys.executable).parent / "edgecut")
    args = ["install", "--unit-path", str(unit), "--config-path", str(config),
            "--profile", "jetson-orin-nano", "--device-id", "orin-7",
            "--data-dir", str(tmp_path / "var"), "--exe", exe, *extra]
    result = CliRunner().invoke(agent_cmd, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return unit, config, result.output


def test_install_creates_a_dedicated_user_in_the_gpu_groups(tmp_path: Path) -> None:
    prefix = _image(tmp_path)
    unit, _, output = _install(tmp_path, "--root-prefix", str(prefix))
    passwd = {line.split(":")[0]: line.split(":") for line in
              (prefix / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              (prefix / "etc/group").read_text().splitlines()}
    assert "edgecut" in passwd and passwd["edgecut"][6] == "/usr/sbin/nologin"
    assert int(passwd["edgecut"][2]) < 1000  # a system user
    assert "edgecut" in groups["video"] and "edgecut" in groups["render"]
    text = unit.read_text()
    assert "User=edgecut\n" in text and "SupplementaryGroups=video render\n" in text
    # Run twice: the user is there now, nothing more to do.
    _install(tmp_path, "--root-prefix", str(prefix), "--force")
    assert (prefix / "etc/passwd").read_text().count("\nedgecut:") == 1


def test_the_unit_is_hardened_and_systemd_accepts_it(tmp_path: Path) -> None:
    unit, _, _ = _install(tmp_path, "--no-user-setup")
    text = unit.read_text()
    lines = set(text.splitlines())
    for want in ("NoNewPrivileges=true", "ProtectSystem=strict", "PrivateTmp=true",
                 "ProtectHome=true", f"ReadWritePaths={tmp_path / 'var'}", "User=edgecut"):
        assert want in lines, want
    assert "User=root" not in text
    nice = [line for line in lines if line.startswith("Nice=")]
    assert all(int(line.split("=")[1]) >= 0 for line in nice)
    # Only the data folder is writable (the runtime folder comes from RuntimeDirectory).
    assert [line for line in lines if line.startswith("ReadWritePaths=")] == [
        f"ReadWritePaths={tmp_path / 'var'}"]
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    # systemd prints what it ignored (unknown keys, bad values) as warnings: there are none.
    assert verify.stderr.strip() == "", verify.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit with a bad value gets a warning."""
    unit, _, _ = _install(tmp_path, "--no-user-setup")
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert "ProtectSystem" in verify.stderr or "protect system" in verify.stderr


def test_the_config_template_has_tls_on_and_signed_updates(tmp_path: Path) -> None:
    _, config, _ = _install(tmp_path, "--no-user-setup")
    parsed = load_agent_config(config)
    assert parsed.mqtt.tls.enabled and parsed.mqtt.port == 8883
    assert parsed.updates.public_key_file == str(config.parent / "fleet.pub")
    assert parsed.api.host == "127.0.0.1"
    assert not parsed.updates.allow_http and parsed.updates.source_dir == ""


def test_install_refuses_root_as_the_service_user(tmp_path: Path) -> None:
    result = CliRunner().invoke(agent_cmd, [
        "install", "--unit-path", str(tmp_path / "u.service"),
        "--config-path", str(tmp_path / "a.toml"), "--profile", "generic-x86",
        "--user", "root", "--no-user-setup"])
    assert result.exit_code != 0
    assert "dedicated system user" in str(result.exception)
    assert not (tmp_path / "u.service").exists()


@pytest.mark.parametrize("user", ["", "a b", "x:y"])
def test_install_refuses_odd_user_names(tmp_path: Path, user: str) -> None:
    result = CliRunner().invoke(agent_cmd, [
        "install", "--unit-path", str(tmp_path / "u.service"),
        "--config-path", str(tmp_path / "a.toml"), "--profile", "generic-x86",
        "--user", user, "--no-user-setup"])
    assert result.exit_code != 0 and "--user" in str(result.exception)
