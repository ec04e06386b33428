"""The fleet link against a real mosquitto: config updates, commands, malformed payloads."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.agent._daemon import Agent
from tests.edge.conftest import tiny_model, write_agent_config


@pytest.fixture
def fleet_agent(tmp_path: Path, mosquitto, observer_factory, request):
    protocol = getattr(request, "param", "5")
    model = tiny_model(tmp_path / "tiny.onnx")
    cfg = write_agent_config(tmp_path, models={"tiny": model}, mqtt_port=mosquitto.port,
                             protocol=protocol)
    obs = observer_factory(["t/#"])
    agent = Agent(cfg)
    agent.start_fleet()
    obs.wait_json("t/dev1/status", lambda m: m["state"] == "online")
    yield agent, obs
    agent.close()


def _ack(obs, topic: str, cid: str, timeout: float = 15.0) -> dict:
    return obs.wait_json(f"t/dev1/{topic}", lambda m: m.get("id") == cid, timeout)


@pytest.mark.parametrize("fleet_agent", ["5", "3.1.1"], indirect=True)
def test_config_update_is_applied_acked_and_persisted(fleet_agent, tmp_path: Path) -> None:
    agent, obs = fleet_agent
    obs.publish("t/dev1/config/set", {
        "id": "c1", "version": "v2",
        "config": {"updates": {"error_rate_threshold": 0.25}, "agent": {"log_level": "debug"}},
        "policy": {"objective": "latency", "slo_ms": 50},
    })
    ack = _ack(obs, "config/ack", "c1")
    assert ack["ok"] is True and ack["version"] == "v2"
    assert agent.config.version == "v2"
    assert agent.config.updates.error_rate_threshold == 0.25
    assert agent.policy_config.slo_ms == 50
    obs.wait_json("t/dev1/status", lambda m: m.get("config_version") == "v2")
    # A restart serves what was acknowledged.
    again = Agent(tmp_path / "agent.toml")
    assert again.config.version == "v2"
    assert again.config.updates.error_rate_threshold == 0.25
    assert again.policy_config.slo_ms == 50


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"config": {"updates": {"error_rate_threshold": "high"}}}, "error_rate_threshold"),
        ({"config": {"updates": {"error_rate_threshold": 2.0}}}, "a value <= 1.0"),
        ({"config": {"updates": {"probation": 5}}}, "unknown key(s) 'probation'"),
        ({"config": {"mqtt": {"keepalive_s": 60}}}, "mqtt.keepalive_s take effect only on restart"),
        ({"config": {"mqtt": {"port": 1}}}, "mqtt.port may be set only in agent.toml"),
        ({"policy": {"objective": "fastest"}}, "key 'objective'"),
        ({"config": {"updates": {"keep_versions": 3}}, "extra": 1}, "unknown field(s) ['extra']"),
        ({"config": []}, "field 'config': expected an object"),
    ],
)
def test_invalid_config_is_rejected_with_the_error_and_the_old_one_kept(
        fleet_agent, message: dict, expected: str) -> None:
    agent, obs = fleet_agent
    before = agent.config
    obs.publish("t/dev1/config/set", {"id": "bad", "version": "v9", **message})
    ack = _ack(obs, "config/ack", "bad")
    assert ack["ok"] is False
    assert expected in ack["error"]
    assert agent.config is before
    assert agent.config.version == "file"
    # The agent still applies a good one afterwards.
    obs.publish("t/dev1/config/set", {"id": "good", "version": "v10",
                                      "config": {"updates": {"keep_versions": 3}}})
    assert _ack(obs, "config/ack", "good")["ok"] is True
    assert agent.config.updates.keep_versions == 3


def test_a_redelivered_command_is_answered_not_run_again(fleet_agent) -> None:
    agent, obs = fleet_agent
    obs.publish("t/dev1/config/set", {"id": "same", "version": "v2",
                                      "config": {"updates": {"keep_versions": 4}}})
    assert _ack(obs, "config/ack", "same")["version"] == "v2"
    obs.publish("t/dev1/config/set", {"id": "same", "version": "v3",
                                      "config": {"updates": {"keep_versions": 5}}})
    dup = obs.wait_json("t/dev1/config/ack", lambda m: m.get("duplicate") is True)
    assert dup["id"] == "same" and dup["version"] == "v2"
    assert agent.config.version == "v2" and agent.config.updates.keep_versions == 4


def test_fleet_and_group_topics_reach_the_device(fleet_agent) -> None:
    agent, obs = fleet_agent
    obs.publish("t/fleet/cmd", {"id": "all-1", "command": "ping"})
    obs.publish("t/group/lab/cmd", {"id": "lab-1", "command": "status"})
    obs.publish("t/group/other/cmd", {"id": "other-1", "command": "ping"})
    assert _ack(obs, "cmd/ack", "all-1")["pong"] is True
    assert _ack(obs, "cmd/ack", "lab-1")["models"] == {"tiny": "1"}
    # A command sent after the other group's: once it is answered, an answer to that one
    # would have come before it (one broker connection, one command worker, in order).
    obs.publish("t/dev1/cmd", {"id": "after-1", "command": "ping"})
    assert _ack(obs, "cmd/ack", "after-1")["pong"] is True
    assert not [m for m in obs.json_on("t/dev1/cmd/ack") if m["id"] == "other-1"]


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("config/set", b"\xff\xfe not utf-8", "not UTF-8 JSON"),
        ("config/set", b"{nope", "not UTF-8 JSON"),
        ("cmd", b"[1, 2, 3]", "must be a JSON object"),
        ("cmd", b'{"command": "ping"}', "field 'id'"),
        ("cmd", b'{"id": "x1", "command": "format-disk"}', "field 'command'"),
        ("models/deploy", b'{"id": "d1", "model": "tiny"}', "missing required field 'version'"),
        ("models/deploy", b'{"id": "d2", "model": "tiny", "version": "2", "sha256": "00",'
                          b' "path": "/x.onnx"}', "64 hex digits"),
        ("models/deploy", b'{"id": "d3", "model": "tiny", "version": "2", "sha256": "' + b"a" * 64
                          + b'", "path": "/x.onnx", "sig": "AA=="}', "unknown field(s) ['sig']"),
        # Oversized payloads: tests/security/test_fleet_inputs.py (MQTT 5 and 3.1.1).
    ],
)
def test_malformed_payloads_get_an_error_ack(fleet_agent, topic, payload, expected) -> None:
    agent, obs = fleet_agent
    ack_topic = {"config/set": "config/ack", "cmd": "cmd/ack", "models/deploy": "models/ack"}[topic]
    obs.publish(f"t/dev1/{topic}", payload)
    ack = obs.wait_json(f"t/dev1/{ack_topic}", lambda m: m.get("ok") is False)
    assert expected in ack.get("error", "")
    obs.publish("t/dev1/cmd", {"id": "alive", "command": "ping"})
    assert _ack(obs, "cmd/ack", "alive")["pong"] is True


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=10), st.integers(), st.none()),
    "version": _json, "config": _json, "policy": _json, "command": _json, "model": _json,
    "url": _json, "path": _json, "sha256": _json,
})
_payloads = st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode()),
                      _fields.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(topic=st.sampled_from(["config/set", "cmd", "models/deploy"]), payload=_payloads)
def test_fuzzed_payloads_never_crash_the_agent(fleet_agent, topic: str, payload: bytes) -> None:
    agent, obs = fleet_agent
    before = len(obs.messages)
    obs.publish(f"t/dev1/{topic}", payload)
    # Every message is answered on its ack topic, whatever it held.
    ack_topic = {"config/set": "config/ack", "cmd": "cmd/ack", "models/deploy": "models/ack"}[topic]
    obs.wait_for(lambda: any(t == f"t/dev1/{ack_topic}" for t, _, _ in obs.messages[before:]),
                 10, "an ack")
    assert agent.fleet.connected.is_set()
    assert agent.slots["tiny"].current.version == "1"


def test_fuzz_leaves_the_agent_serving(fleet_agent) -> None:
    agent, obs = fleet_agent
    import numpy as np

    out = agent.infer("tiny", {"x": np.ones((1, 4), np.float32)})
    assert out["y"].tolist() == [[2.0, 2.0, 2.0, 2.0]]


def test_broker_restart_loses_and_duplicates_no_telemetry(
        tmp_path: Path, mosquitto, observer_factory) -> None:
    model = tiny_model(tmp_path / "tiny.onnx")
    cfg = write_agent_config(tmp_path, models={"tiny": model}, mqtt_port=mosquitto.port,
                             telemetry_s=0.05)
    obs = observer_factory(["t/dev1/telemetry", "t/dev1/status"], client_id="telemetry-obs",
                           qos=2)
    agent = Agent(cfg)
    agent.start_fleet()
    try:
        obs.wait_for(lambda: len(obs.json_on("t/dev1/telemetry")) >= 10, 15, "telemetry")
        mosquitto.stop(signal.SIGTERM)
        # Records keep coming (every 50 ms) while the broker is down: they wait in the spool.
        obs.wait_for(lambda: not agent.fleet.connected.is_set(), 15, "the link to notice")
        obs.wait_for(lambda: len(agent.fleet.spool) >= 10, 15, "ten spooled records")
        mosquitto.start()
        agent.fleet.connected.wait(15)
        assert agent.fleet.connects >= 2
        time.sleep(0.5)
        agent.fleet.telemetry_interval_s = 3600.0
        time.sleep(0.2)
        deadline = time.monotonic() + 20
        while len(agent.fleet.spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(agent.fleet.spool) == 0
        last = agent.fleet.spool.next_seq - 1
        obs.wait_for(lambda: len(obs.json_on("t/dev1/telemetry")) >= last + 1, 20,
                     "every record")
        seqs = [m["seq"] for m in obs.json_on("t/dev1/telemetry")]
        assert sorted(seqs) == list(range(last + 1)), "records lost or duplicated"
        assert seqs == sorted(seqs), "records out of order"
        assert agent.fleet.spool.evicted == 0
        last_record = max(obs.json_on("t/dev1/telemetry"), key=lambda m: m["seq"])
        assert last_record["fleet"]["connects"] >= 2  # the reconnect shows in telemetry
    finally:
        agent.close()


def test_mqtt5_response_topic_and_correlation_data(fleet_agent, mosquitto) -> None:
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    agent, obs = fleet_agent
    got: list[tuple[bytes, bytes | None]] = []
    done = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rr-operator",
                         protocol=mqtt.MQTTv5)

    def on_message(c, u, m) -> None:  # noqa: ANN001
        got.append((m.payload, getattr(m.properties, "CorrelationData", None)))
        done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.subscribe("t/dev1/reply/op-1", qos=1)
        assert subscribed.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "t/dev1/reply/op-1"
        props.CorrelationData = b"req-77"
        client.publish("t/dev1/cmd", json.dumps({"id": "rr", "command": "ping"}), qos=1,
                       properties=props)
        assert done.wait(10)
        payload, correlation = got[0]
        assert json.loads(payload)["pong"] is True and correlation == b"req-77"
        # The regular ack topic got it too.
        assert obs.wait_json("t/dev1/cmd/ack", lambda m: m.get("id") == "rr")["pong"] is True
    finally:
        client.loop_stop()
