"""The agent daemon: its local API, signals, last will, config files and installer."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from devices.errors import ConfigError, EdgecutError, ModelInputError
from edge import Client
from edge.agent._config import load_agent_config, parse_agent_config
from edge.agent._daemon import Agent, AgentServer
from edge.cli._agent import agent as agent_cmd
from tests.conftest import free_port
from tests.edge.conftest import (
    REPO,
    slow_model,
    start_agent_process,
    tiny_model,
    wait_ready,
    write_agent_config,
)


def test_local_api_serves_over_tcp_and_the_unix_socket(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             api_port=free_port())
    agent = Agent(cfg)
    with AgentServer(agent) as server:
        for url in (server.url, f"unix://{tmp_path / 'agent.sock'}"):
            with Client(url) as client:
                assert client.live() and client.ready() and client.ready("tiny")
                x = np.arange(8, dtype=np.float32).reshape(2, 4)
                out = client.infer("tiny", {"x": x})
                np.testing.assert_array_equal(out["y"], x * 2)
                meta = client.metadata("tiny")
                assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
                with pytest.raises(ModelInputError, match="'x'.*FP32"):
                    client.infer("tiny", {"x": x.astype(np.float64)})
                status = client.agent_status()
                assert status["models"] == {"tiny": "1"} and status["profile"] == "generic-x86"
                shown = CliRunner().invoke(agent_cmd, ["status", "--url", url])
                assert shown.exit_code == 0 and json.loads(shown.output)["models"] == {"tiny": "1"}
                from cloud.protocol import encode_infer_request

                _, headers = client.infer_raw("tiny", *encode_infer_request({"x": x}))
                assert float(headers["server-timing"].split("agent;dur=")[1]) > 0
    # The service rejects the wrong dtype before the model runs: four requests ran.
    assert agent.stats.total_requests == 4
    assert not (tmp_path / "agent.sock").exists()
    # Nothing listens any more: the status command says so in one line.
    result = CliRunner().invoke(agent_cmd, ["status", "--url", f"unix://{tmp_path / 'agent.sock'}"])
    assert result.exit_code != 0 and "agent.sock" in str(result.exception)


def test_short_local_runs_skip_the_worker_thread_and_long_ones_do_not(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, workers=1, models={
        "tiny": tiny_model(tmp_path / "t.onnx"),
        "slow": slow_model(tmp_path / "s.onnx", size=256, layers=400)})
    # 5 ms: ten times what the tiny model takes, a tenth of the slow one (~50 ms here)
    cfg.write_text(cfg.read_text().replace("workers = 1", "workers = 1\ninline_max_ms = 5"))
    agent = Agent(cfg)
    ran_on: dict[str, list[str]] = {"tiny": [], "slow": []}
    for name, seen in ran_on.items():
        agent.slots[name].add_listener(
            lambda version, ok, seen=seen: seen.append(threading.current_thread().name))
    with AgentServer(agent) as server, Client(server.url) as client:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for _ in range(4):
            np.testing.assert_array_equal(client.infer("tiny", {"x": x})["y"], x * 2)
        slow_x = np.ones((256, 256), np.float32)
        for _ in range(3):
            np.testing.assert_array_equal(client.infer("slow", {"x": slow_x})["y"], slow_x)
        # Bad input is refused the same way on either path, and the agent keeps serving.
        with pytest.raises(ModelInputError, match="'x'"):
            client.infer("tiny", {"x": np.ones((2, 5), np.float32)})
        assert client.infer("tiny", {"x": x})["y"].shape == (2, 4)
    # The first run has no measured time yet: the worker thread. Later ones are short
    # (well under inline_max_ms) and run on the API's own thread.
    assert ran_on["tiny"][0].startswith("edgecut-tiny")
    assert ran_on["tiny"][1:] == ["agent-api"] * 4
    # 400 chained 256x256 MatMuls take far longer than 5 ms: never on the loop.
    assert agent._local_ms["slow"] > agent.config.api.inline_max_ms == 5
    assert all(name.startswith("edgecut-slow") for name in ran_on["slow"])
    assert agent.stats.total_requests == 8


def test_inline_runs_can_be_turned_off(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, workers=1, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             extra="")
    text = cfg.read_text().replace("workers = 1", "workers = 1\ninline_max_ms = 0")
    cfg.write_text(text)
    agent = Agent(cfg)
    assert agent.config.api.inline_max_ms == 0
    ran_on: list[str] = []
    agent.slots["tiny"].add_listener(lambda v, ok: ran_on.append(threading.current_thread().name))
    with AgentServer(agent) as server, Client(server.url) as client:
        for _ in range(3):
            client.infer("tiny", {"x": np.ones((1, 4), np.float32)})
    assert len(ran_on) == 3 and all(n.startswith("edgecut-tiny") for n in ran_on)


def test_telemetry_reports_decisions_latency_and_energy(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")})
    agent = Agent(cfg)
    for _ in range(20):
        agent.infer("tiny", {"x": np.ones((1, 4), np.float32)})
    with pytest.raises(ModelInputError):
        agent.infer("tiny", {"x": np.ones((1, 5), np.float32)})
    record = agent.telemetry()
    assert record["decisions"] == {"local": 20}
    tiny = record["models"]["tiny"]
    assert tiny["requests"] == 21 and tiny["errors"] == 1 and tiny["version"] == "1"
    assert 0 < tiny["latency_ms"]["p50"] <= tiny["latency_ms"]["p99"]
    assert record["energy_mj"] > 0
    assert record["fallbacks"] == 0
    # The window restarts after each record.
    assert agent.telemetry()["decisions"] == {}


def test_daemon_reloads_on_sighup_and_drains_on_sigterm(tmp_path: Path, mosquitto,
                                                        observer_factory) -> None:
    obs = observer_factory(["t/#"])
    sock = tmp_path / "agent.sock"
    cfg = write_agent_config(
        tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx"),
                          "slow": slow_model(tmp_path / "slow.onnx")},
        mqtt_port=mosquitto.port, unix_socket=str(sock), api_port=free_port())
    proc = start_agent_process(cfg, tmp_path / "agent.log")
    try:
        wait_ready(f"unix://{sock}", proc)
        obs.wait_json("t/dev1/status", lambda m: m["state"] == "online")
        client = Client(f"unix://{sock}")
        assert client.infer("tiny", {"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 2.0

        # SIGHUP: a model added to agent.toml is served without a restart.
        tiny_model(tmp_path / "t3.onnx", factor=3.0)
        with open(cfg, "a") as fh:
            fh.write(f'[[models]]\nname = "tiny3"\npath = "{tmp_path / "t3.onnx"}"\n')
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not client.ready("tiny3") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.infer("tiny3", {"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 3.0

        # SIGTERM while a slow request is in flight: it still completes.
        result: dict[str, object] = {}

        def slow_request() -> None:
            try:
                with Client(f"unix://{sock}") as c:
                    result["y"] = c.infer("slow", {"x": np.ones((512, 512), np.float32)})["y"]
                    result["done"] = time.monotonic()
            except Exception as exc:  # recorded and asserted below
                result["error"] = exc

        t = threading.Thread(target=slow_request)
        t.start()
        # Signal only once the agent reports the request in flight (its metrics gauge), so a
        # fast or a busy host cannot turn this into a test of timing.
        in_flight = 'edgecut_requests_in_flight{model="slow"} 1.0'
        deadline = time.monotonic() + 20
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as raw:
            while (in_flight not in raw.get("http://agent/metrics").text
                   and time.monotonic() < deadline):
                time.sleep(0.005)
        assert "done" not in result, "the slow request finished before it could be signalled"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert "error" not in result, result.get("error")
        assert np.asarray(result["y"]).shape == (512, 512)
        assert result["done"] > started, "the request was not in flight at SIGTERM"
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 5.0 + 5.0  # the grace bound plus start-up slack
        offline = obs.wait_json("t/dev1/status", lambda m: m["state"] == "offline")
        assert offline["reason"] == "agent stopped"
        # The last window's statistics went out as a final telemetry record.
        final = obs.json_on("t/dev1/telemetry")[-1]
        assert final["models"]["slow"]["requests"] == 1
        assert final["models"]["tiny"]["requests"] >= 1
        assert not sock.exists()
        log_lines = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines()
                     if line.startswith("{")]
        events = [e.get("event") for e in log_lines]
        assert "config_reloaded" in events and "shutdown" in events and "agent_stopped" in events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_last_will_marks_the_device_offline_on_sigkill(tmp_path: Path, mosquitto,
                                                       observer_factory) -> None:
    obs = observer_factory(["t/dev1/status"])
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             mqtt_port=mosquitto.port)
    proc = start_agent_process(cfg, tmp_path / "agent.log")
    try:
        wait_ready(f"unix://{tmp_path / 'agent.sock'}", proc)
        obs.wait_json("t/dev1/status", lambda m: m["state"] == "online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The broker notices the dead connection (socket closed) and publishes the will.
        will = obs.wait_json("t/dev1/status", lambda m: m["state"] == "offline", timeout=30)
        assert will["reason"] == "connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The will is retained: a dashboard that connects later sees the device offline.
    late = observer_factory(["t/dev1/status"], client_id="late-dashboard")
    retained = late.wait_json("t/dev1/status", lambda m: True)
    assert retained["state"] == "offline"


def test_example_config_parses_and_errors_name_the_key(tmp_path: Path) -> None:
    example = REPO / "edge" / "data" / "agent.example.toml"
    config = load_agent_config(example)
    assert config.device_id == "jetson-0001" and config.models[0].name == "squeezenet"
    assert config.mqtt.protocol == "5" and config.updates.error_rate_threshold == 0.05
    base = {"agent": {"device_id": "d"}, "api": {"port": 1}}
    with pytest.raises(ConfigError, match=r"\[mqtt\]: key 'protocol'"):
        parse_agent_config({**base, "mqtt": {"protocol": "4"}}, "a.toml")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'prot'"):
        parse_agent_config({**base, "mqtt": {"prot": "5"}}, "a.toml")
    with pytest.raises(ConfigError, match="device_id"):
        parse_agent_config({"agent": {"device_id": "a/b"}}, "a.toml")
    with pytest.raises(ConfigError, match="cert_file' and 'key_file' go together"):
        parse_agent_config({**base, "mqtt": {"tls": {"cert_file": "c.pem"}}}, "a.toml")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_agent_config({**base, "models": [{"name": "m", "path": "a"},
                                               {"name": "m", "path": "b"}]}, "a.toml")


def test_install_writes_a_unit_and_a_config_for_the_board(tmp_path: Path) -> None:
    unit = tmp_path / "edgecut-agent.service"
    config = tmp_path / "etc" / "agent.toml"
    args = ["install", "--unit-path", str(unit), "--config-path", str(config),
            "--profile", "jetson-orin-nano", "--device-id", "orin-7",
            "--data-dir", str(tmp_path / "var"), "--exe", "/usr/local/bin/edgecut",
            "--no-user-setup"]
    result = CliRunner().invoke(agent_cmd, args)
    assert result.exit_code == 0, result.output
    text = unit.read_text()
    assert f"ExecStart=/usr/local/bin/edgecut agent --config {config}" in text
    assert "Restart=on-failure" in text and "MemoryMax=4G" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    parsed = load_agent_config(config)
    assert parsed.device_id == "orin-7" and parsed.profile == "jetson-orin-nano"
    again = CliRunner().invoke(agent_cmd, args)
    assert again.exit_code != 0 and "exists" in str(again.exception)


def test_the_client_survives_an_agent_restart(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")})
    client = Client(f"unix://{tmp_path / 'agent.sock'}")
    x = {"x": np.ones((1, 4), np.float32)}
    with AgentServer(Agent(cfg)):
        assert client.infer("tiny", x)["y"][0, 0] == 2.0
    with pytest.raises(EdgecutError, match="agent.sock"):
        client.infer("tiny", x)  # nobody listens: CloudUnavailable names the socket
    with AgentServer(Agent(cfg)):
        # The kept-alive connection died with the first agent; the client reconnects.
        assert client.infer("tiny", x)["y"][0, 0] == 2.0
    client.close()


def test_reload_applies_live_keys_and_keeps_restart_only_ones(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             api_port=18001)
    agent = Agent(cfg)
    text = cfg.read_text().replace("port = 18001", "port = 18002")
    text = text.replace("[agent]\n", '[agent]\nlog_level = "debug"\n')
    cfg.write_text(text)
    result = agent.reload()
    assert result["restart_needed"] == ["api"]
    assert agent.config.api.port == 18001  # still what the socket is bound to
    assert agent.config.log_level == "debug"  # applied live


def test_systemd_notify_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    import socket

    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")})
    proc = start_agent_process(cfg, tmp_path / "agent.log",
                               env={"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "400000"})
    try:
        messages = [sock.recv(4096).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1") and "serving tiny" in messages[0]
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        proc.send_signal(signal.SIGTERM)
        rest = []
        while not any(m.startswith("STOPPING=1") for m in rest):
            rest.append(sock.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


@contextlib.contextmanager
def _agent_log_to(stream: io.StringIO) -> Iterator[None]:
    """The agent's logging set up to write to ``stream``, taken down again after."""
    from edge.agent._logging import setup_logging

    setup_logging("info", stream)
    try:
        yield
    finally:
        root = logging.getLogger("edgecut")
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.propagate = True


def test_a_long_queue_of_request_records_is_written_whole() -> None:
    from edge.agent._logging import log, log_request

    stream = io.StringIO()
    with _agent_log_to(stream):
        # Far more than the interpreter's recursion limit: queued between two writes by
        # a busy agent (each record used to be written one nested call deeper).
        n = 3 * sys.getrecursionlimit()
        for i in range(n):
            log_request({"event": "request", "n": i})
        log.info(json.dumps({"event": "reprofiled"}))  # writes the queue, then itself
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [entry.get("n") for entry in lines[:n]] == list(range(n))
        assert lines[n]["event"] == "reprofiled" and len(lines) == n + 1


def test_request_records_are_written_off_the_request_path_in_order() -> None:
    from edge.agent._logging import Fields, log, log_request, request_log

    stream = io.StringIO()
    with _agent_log_to(stream):
        t0 = time.time()
        request_log.info(Fields({"event": "request", "n": 1}))
        log_request({"event": "request", "n": 2})  # only its fields queued
        # Queued, not yet written: the request path only appended them.
        log.info(json.dumps({"event": "config_applied"}))  # written at once, after them
        log_request({"event": "request", "n": 3})
        deadline = time.monotonic() + 5
        while stream.getvalue().count("\n") < 4 and time.monotonic() < deadline:
            time.sleep(0.02)  # the writer thread's interval is 0.1 s
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [entry.get("n", entry["event"]) for entry in lines] == [1, 2, "config_applied", 3]
        assert all(entry["level"] == "info" and "ts" in entry for entry in lines)
        assert all(entry["logger"] == "edgecut.agent.request" for entry in lines if "n" in entry)
        # Stamped when logged, not when written.
        assert all(t0 - 0.01 <= entry["ts"] <= t0 + 1.0 for entry in lines)
        assert str(Fields({"a": 1})) == '{"a": 1}'  # plain handlers still get JSON
