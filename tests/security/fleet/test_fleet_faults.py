"""Faults never leave the fleet link half-alive: a full disk under the spool, damaged spool
records and sequence files, a telemetry thread that throws."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from edge.agent._spool import TelemetrySpool

REPO = Path(__file__).resolve().parents[3]


def _on_a_tiny_disk(tmp_path: Path, script: str, size: str = "128k") -> dict:
    """Run ``script`` (Python) with ``DISK`` a folder on its own tmpfs of ``size``.

    The tmpfs is mounted in a private mount namespace (``unshare``: as root, or as an
    unprivileged user where user namespaces are allowed), so a real ``ENOSPC`` comes from
    the kernel and nothing outside the test sees the mount.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    body = "import json, os, sys\nDISK = sys.argv[1]\n" + textwrap.dedent(script)
    (tmp_path / "script.py").write_text(body)
    cmd = ["unshare", "--mount", "--map-root-user", "sh", "-c",
           f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$1" "$2" "$0"',
           str(disk), sys.executable, str(tmp_path / "script.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_full_disk_drops_by_policy_reports_it_and_recovers(tmp_path: Path) -> None:
    result = _on_a_tiny_disk(tmp_path, """
        import errno
        from edge.agent._spool import TelemetrySpool

        spool = TelemetrySpool(os.path.join(DISK, "spool"), max_bytes=10_000_000)
        seqs = [spool.append({"n": i, "pad": "x" * 200})[0] for i in range(5)]
        ballast = os.path.join(DISK, "ballast")

        def fill():
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                while True:
                    os.write(fd, bytes(4096))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            finally:
                os.close(fd)

        # A: the disk fills while records are spooled: the oldest make room.
        fill()
        full = [spool.append({"n": 100 + i, "pad": "x" * 200}) for i in range(10)]
        a = {"error": spool.error, "evicted": spool.evicted, "dropped": spool.dropped,
             "stored": sum(p is not None for _, p in full)}
        # B: everything was acknowledged, and the disk fills again: nothing to evict, so
        # new records are dropped (and their numbers are never used again).
        for seq in spool.pending():
            spool.delete(seq)
        fill()
        dropped = [spool.append({"n": 200 + i}) for i in range(5)]
        b = {"error": spool.error, "dropped": spool.dropped,
             "stored": sum(p is not None for _, p in dropped)}
        os.unlink(ballast)  # space comes back
        after = [spool.append({"n": 300 + i})[0] for i in range(3)]
        every = seqs + [s for s, _ in full] + [s for s, _ in dropped] + after
        print(json.dumps({"a": a, "b": b, "every": every, "after": after,
                          "error_after": spool.error, "pending": spool.pending(),
                          "on_disk": sorted(int(p[:-5]) for p in os.listdir(
                              os.path.join(DISK, "spool")) if p.endswith(".json"))}))
    """)
    a, b = result["a"], result["b"]
    assert "No space left" in a["error"] and "No space left" in b["error"]
    # Policy: the oldest records go first to make room, then new ones are dropped.
    assert a["evicted"] >= 1 and a["stored"] >= 1
    assert b["stored"] == 0 and b["dropped"] - a["dropped"] == 5
    # Resumed by itself once space came back.
    assert result["error_after"] == ""
    assert result["every"] == sorted(set(result["every"])), "a sequence number repeated"
    assert result["pending"] == result["on_disk"] == result["after"]


def test_a_damaged_record_is_never_published_and_a_damaged_counter_never_repeats(
        tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path, max_bytes=100_000)
    seqs = [spool.append({"n": i})[0] for i in range(4)]
    assert seqs == [0, 1, 2, 3]
    (tmp_path / f"{1:016d}.json").write_bytes(b"\x00garbage")
    (tmp_path / f"{2:016d}.json").write_text(json.dumps({"n": 2, "seq": 99}))  # not its seq
    assert spool.read(0) is not None
    assert spool.read(1) is None and spool.read(2) is None
    assert spool.corrupt == 2 and spool.pending() == [0, 3]
    for seq in seqs:
        spool.delete(seq)
    (tmp_path / "next_seq").write_text("garbage")
    again = TelemetrySpool(tmp_path, max_bytes=100_000)
    nxt = again.append({"n": 9})[0]
    assert nxt > 3  # never a number that may have been published
    third = TelemetrySpool(tmp_path, max_bytes=100_000)
    assert third.append({"n": 10})[0] == nxt + 1  # and from then on, one by one


def test_the_agent_reports_a_full_disk_and_resumes_by_itself(
        tmp_path: Path, mosquitto, observer_factory) -> None:
    """A real agent process whose data folder is a 160 KB tmpfs: the broker goes away,
    telemetry fills the disk, the agent says so and keeps serving; the broker comes back,
    the spool drains and telemetry resumes, with no sequence number used twice."""
    import signal
    import time

    from tests.edge.conftest import tiny_model, wait_ready, write_agent_config

    disk = tmp_path / "disk"
    disk.mkdir()
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             mqtt_port=mosquitto.port, telemetry_s=0.05)
    cfg.write_text(cfg.read_text().replace(f'data_dir = "{tmp_path / "data"}"',
                                           f'data_dir = "{disk / "data"}"'))
    obs = observer_factory(["t/dev1/telemetry"], client_id="disk-obs", qos=2)
    log = tmp_path / "agent.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--map-root-user", "sh", "-c",
             'mount -t tmpfs -o size=160k tmpfs "$0" && exec "$1" -m edge.cli agent --config "$2"',
             str(disk), sys.executable, str(cfg)], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"unix://{tmp_path / 'agent.sock'}", proc)
        obs.wait_for(lambda: len(obs.json_on("t/dev1/telemetry")) >= 5, 30, "telemetry")
        mosquitto.stop()
        deadline = time.monotonic() + 60
        while b"spool_write_failed" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        line = [json.loads(x) for x in log.read_text().splitlines()
                if "spool_write_failed" in x][0]
        assert "No space left" in line["error"]
        # Still serving while the disk is full.
        from edge import Client

        with Client(f"unix://{tmp_path / 'agent.sock'}") as client:
            import numpy as np

            assert client.infer("tiny", {"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 2.0
            fleet = client.agent_status()["fleet"]
            assert "No space left" in (fleet.get("spool_error") or "")
        mosquitto.start()

        def recovered() -> list[dict]:
            # The records that made room (evicted) or found none (dropped) are counted;
            # the error is gone once a write succeeds again.
            return [m for m in obs.json_on("t/dev1/telemetry")
                    if m["spool"]["evicted"] + m["spool"]["dropped"] > 0
                    and m["spool"]["error"] is None]

        obs.wait_for(recovered, 60, "telemetry after the disk had room again")
        assert b"spool_recovered" in log.read_bytes()
        seqs = [m["seq"] for m in obs.json_on("t/dev1/telemetry")]
        assert len(seqs) == len(set(seqs)), "a sequence number was published twice"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _restart_with(tmp_path: Path, files: dict[str, bytes], caplog) -> tuple:
    """An agent whose data folder holds ``files`` (damaged state) when it starts."""
    import logging

    from edge.agent._daemon import Agent
    from tests.edge.conftest import tiny_model, write_agent_config

    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")})
    data = tmp_path / "data"
    for rel, content in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="edgecut"):
        agent = Agent(cfg)
    return agent, [r.getMessage() for r in caplog.records]


def test_a_damaged_state_file_is_logged_and_the_config_serves(tmp_path: Path, caplog) -> None:
    import numpy as np

    for content in (b"\x00\xffnot json", b"[1, 2]", b'{"tiny": 5}',
                    b'{"tiny": {"version": "..", "path": "/etc/shadow"}}',
                    b'{"tiny": {"version": "9", "path": "/etc/shadow", "previous": 7}}',
                    b'{"../x": {"version": "1", "path": "/x"}}'):
        caplog.clear()
        agent, logs = _restart_with(tmp_path, {"models/state.json": content}, caplog)
        try:
            assert agent.slots["tiny"].current.version == "1"
            assert agent.infer("tiny", {"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 2.0
            assert any("state.json" in m and "ignored" in m for m in logs), (content, logs)
        finally:
            agent.close()


def test_a_damaged_state_file_falls_back_to_its_last_good_copy(tmp_path: Path,
                                                                caplog) -> None:
    from tests.edge.conftest import tiny_model

    v2 = tiny_model(tmp_path / "data" / "models" / "tiny" / "2" / "model.onnx", factor=3.0)
    good = json.dumps({"tiny": {"version": "2", "path": str(v2), "previous": None}}).encode()
    agent, logs = _restart_with(tmp_path, {"models/state.json": b"{torn",
                                           "models/state.json.prev": good}, caplog)
    try:
        assert agent.slots["tiny"].current.version == "2"
        assert any("last good copy" in m for m in logs), logs
    finally:
        agent.close()


def test_a_state_entry_pointing_outside_the_store_is_not_loaded(tmp_path: Path,
                                                                 caplog) -> None:
    from tests.edge.conftest import tiny_model

    elsewhere = tiny_model(tmp_path / "elsewhere" / "model.onnx", factor=7.0)
    state = json.dumps({"tiny": {"version": "7", "path": str(elsewhere)}}).encode()
    agent, logs = _restart_with(tmp_path, {"models/state.json": state}, caplog)
    try:
        assert agent.slots["tiny"].current.version == "1"
        assert any("outside" in m for m in logs), logs
    finally:
        agent.close()


def test_a_damaged_overlay_is_logged_and_the_file_config_serves(tmp_path: Path,
                                                                caplog) -> None:
    for content in (b"\x00garbage", b'"a string"', b'{"config": 5, "version": 7}',
                    b'{"config": {"agent": {"log_level": 3}}}',
                    b'{"config": {"cloud": {"url": "https://attacker.example"}}}'):
        caplog.clear()
        agent, logs = _restart_with(tmp_path, {"config-overlay.json": content}, caplog)
        try:
            assert agent.config.cloud.url == ""
            assert agent.config.log_level == "info"
            assert any("overlay" in m for m in logs), (content, logs)
        finally:
            agent.close()


class _OnceBroken:
    """The agent as the fleet link sees it (FleetHandler), whose next telemetry record
    cannot be encoded: the fault kills the telemetry timer's loop unless it is watched."""

    def __init__(self, agent) -> None:
        self._agent = agent
        self.broken = True

    def __getattr__(self, name: str):
        return getattr(self._agent, name)

    def telemetry(self) -> dict:
        record = self._agent.telemetry()
        if self.broken:
            self.broken = False
            record["bad"] = object()  # not JSON: the spool's encoder raises TypeError
        return record


def test_a_telemetry_thread_that_throws_is_restarted_and_reported(
        tmp_path: Path, mosquitto, observer_factory) -> None:
    from edge.agent._daemon import Agent
    from tests.edge.conftest import tiny_model, write_agent_config

    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             mqtt_port=mosquitto.port, telemetry_s=0.1)
    obs = observer_factory(["t/dev1/telemetry"], client_id="wd-obs")
    agent = Agent(cfg)
    agent.start_fleet()
    try:
        obs.wait_for(lambda: obs.json_on("t/dev1/telemetry"), 20, "telemetry")
        agent.fleet.handler = _OnceBroken(agent)
        obs.wait_for(lambda: agent.fleet.restarts.get("fleet-timer"), 20, "a restart")
        health = agent.fleet.health()
        assert "TypeError" in health["last_thread_error"]
        assert health["threads_alive"] == health["threads"]
        # Telemetry goes on, and says the thread was restarted.
        obs.wait_for(lambda: [m for m in obs.json_on("t/dev1/telemetry")
                              if m["fleet"]["thread_restarts"] >= 1], 20, "telemetry again")
    finally:
        agent.close()


def test_weak_settings_are_warned_about_loudly(tmp_path: Path) -> None:
    from edge.agent._config import parse_agent_config, security_warnings

    base = {"agent": {"device_id": "d"}, "mqtt": {"enabled": True}}
    warnings = " | ".join(security_warnings(parse_agent_config(
        {**base, "api": {"host": "0.0.0.0"}}, "a.toml")))
    assert "not encrypted" in warnings and "no username" in warnings
    assert "updates.public_key_file is not set" in warnings
    assert "api.host = '0.0.0.0'" in warnings and "no authentication" in warnings
    quiet = parse_agent_config({"agent": {"device_id": "d"}, "mqtt": {
        "enabled": True, "username": "d", "tls": {"enabled": True}},
        "updates": {"public_key_file": "k.pub"}}, "a.toml", tmp_path)
    assert security_warnings(quiet) == []


def test_rollback_does_not_load_a_previous_version_outside_the_store(device) -> None:
    """state.json edited to name a file elsewhere: a fleet rollback refuses to load it."""
    from tests.edge.conftest import tiny_model

    elsewhere = tiny_model(device.root / "elsewhere.onnx", factor=9.0)
    state = device.store / "state.json"
    state.write_text(json.dumps({"tiny": {
        "version": "1", "path": str(device.root / "v1.onnx"),
        "previous": {"version": "0", "path": str(elsewhere)}}}))
    ack = device.send("cmd", {"id": "rb", "command": "rollback", "model": "tiny"})
    assert ack["ok"] is False and "outside the model store" in ack["error"]
    assert device.agent.slots["tiny"].current.version == "1"
    device.alive()
