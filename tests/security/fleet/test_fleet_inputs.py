"""Bounded inputs on the fleet link: retained commands, oversized payloads, floods, response
topics. A real agent on a real mosquitto; each attack is refused and the agent serves on."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.security.fleet.conftest import Device, model_file, start_device


def test_a_retained_config_left_on_the_broker_is_not_applied_by_a_device_that_connects(
        tmp_path, mosquitto, observer_factory) -> None:
    from tests.edge.conftest import Observer

    attacker = Observer(mosquitto.port, ["t/nothing"], client_id="retainer")
    bad = {"id": "retained-1", "version": "evil", "config": {"agent": {"log_level": "debug"}}}
    attacker.publish("t/fleet/config/set", bad, retain=True)
    attacker.publish("t/dev1/cmd", {"id": "retained-2", "command": "reload"}, retain=True)
    try:
        for protocol in ("3.1.1", "5"):
            dev = start_device(tmp_path / protocol, mosquitto.port, observer_factory,
                               protocol=protocol)
            try:
                dev.alive()  # subscribed, and anything retained was delivered before this
                assert dev.agent.config.version == "file"
                assert dev.agent.config.log_level == "info"
                assert not (dev.root / "data" / "config-overlay.json").exists()
                acks = [m for m in dev.obs.json_on("t/dev1/config/ack")
                        if m.get("id") == "retained-1"]
                if protocol == "3.1.1":
                    # MQTT 3.1.1 delivers it with the retain flag: refused with an ack.
                    assert acks and acks[0]["ok"] is False and "retained" in acks[0]["error"]
                else:
                    # MQTT 5: subscribed with retain handling 2, the broker never sends it.
                    assert acks == []
                assert not [m for m in dev.obs.json_on("t/dev1/cmd/ack")
                            if m.get("id") == "retained-2" and m.get("ok")]
            finally:
                dev.agent.close()
    finally:
        attacker.publish("t/fleet/config/set", b"", retain=True)  # clear it
        attacker.publish("t/dev1/cmd", b"", retain=True)
        attacker.close()


def test_a_command_published_with_the_retain_flag_is_refused_live(device: Device) -> None:
    """MQTT 5 keeps the flag as published, so a live retained command is refused too."""
    ack = device.send("config/set", {"id": "live-retained", "version": "x",
                                     "config": {"agent": {"log_level": "debug"}}}, retain=True)
    try:
        assert ack["ok"] is False and "retained" in ack["error"]
        assert device.agent.config.log_level == "info"
    finally:
        device.obs.publish("t/dev1/config/set", b"", retain=True)
    device.alive()


def test_an_oversized_payload_is_never_queued(device_factory) -> None:
    for protocol in ("3.1.1", "5"):
        dev = device_factory(protocol=protocol)
        big = b'{"id": "big", "pad": "' + b"x" * 1_100_000 + b'"}'
        before = dev.agent.fleet.rejected_messages
        dev.obs.publish("t/dev1/config/set", big)
        dev.alive()  # answered after the big one: it was handled (or dropped) first
        # A refused big payload is not parsed, so its ack has no id: found by its error.
        acks = [m for m in dev.obs.json_on("t/dev1/config/ack")
                if "max_payload_bytes" in m.get("error", "")]
        if protocol == "3.1.1":
            # Checked on arrival, before any queue: refused with an ack naming the limit.
            assert acks and "refused" in acks[0]["error"] and acks[0]["id"] is None
            assert dev.agent.fleet.rejected_messages == before + 1
        else:
            # MQTT 5: the agent told the broker its maximum packet size at connect, so the
            # broker drops the message instead of sending it.
            assert acks == []
        dev.agent.close()


def test_a_flood_is_bounded_by_queued_bytes_and_answered_busy(device_factory) -> None:
    dev = device_factory(signed=False, mqtt_extra="max_queued_bytes = 200000",
                         updates="probation_s = 6.0\nhealth_interval_s = 0.1\n"
                                 "min_probation_requests = 10")
    v2 = model_file(dev, "v2.onnx")
    import hashlib

    digest = hashlib.sha256(v2.read_bytes()).hexdigest()
    # The deploy worker is busy with a probation of 6 s ...
    dev.obs.publish("t/dev1/models/deploy", {"id": "hold", "model": "tiny", "version": "2",
                                             "sha256": digest, "path": str(v2)})
    dev.obs.wait_json("t/dev1/models/ack", lambda m: m.get("id") == "hold"
                      and m.get("step") == "probation")
    # ... while 12 payloads of 60 KB arrive: at most 200 KB of them may wait.
    for i in range(12):
        dev.obs.publish("t/dev1/models/deploy",
                        json.dumps({"id": f"flood-{i}", "pad": "x" * 60_000}).encode())
    def busy() -> list[dict]:
        return [m for m in dev.obs.json_on("t/dev1/models/ack")
                if str(m.get("id", "")).startswith("flood-") and "busy" in m.get("error", "")]

    # Three fit in 200 KB (60 KB each); the other nine are answered at once.
    dev.obs.wait_for(lambda: len(busy()) >= 9, 30, "nine busy acks")
    assert len(busy()) == 9 and "max_queued_bytes" in busy()[0]["error"]
    dev.obs.wait_json("t/dev1/models/ack", lambda m: m.get("id") == "hold"
                      and m.get("step") == "committed", 30)
    dev.alive()


def test_a_response_topic_outside_the_device_prefix_is_refused(device: Device,
                                                              mosquitto) -> None:
    got: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rt-attacker",
                         protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.subscribe("#", qos=1)
        assert subscribed.wait(10)
        for i, target in enumerate(["t/dev2/status", "other/app/cmd", "t/dev1/cmd",
                                    "t/dev1/reply/+"]):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = target
            client.publish("t/dev1/cmd", json.dumps({"id": f"rt-{i}", "command": "ping"}),
                           qos=1, properties=props).wait_for_publish(10)
            ack = device.obs.wait_json("t/dev1/cmd/ack", lambda m, i=i: m.get("id") == f"rt-{i}")
            assert ack["ok"] is False and "response topic" in ack["error"]
            assert "refused" in ack["error"]
        device.alive()
        # Nothing the agent published went anywhere but its own topics.
        assert {t for t, _ in got if t.startswith("t/dev1/")} <= {
            "t/dev1/status", "t/dev1/cmd", "t/dev1/cmd/ack"}
        assert not [t for t, _ in got if not t.startswith("t/dev1/")]
    finally:
        client.loop_stop()
