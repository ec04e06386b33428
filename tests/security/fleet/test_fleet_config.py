"""Config over the fleet cannot weaken security: security-relevant keys need the update
key's signature; everything else is validated and applied as before."""

from __future__ import annotations

import json

import pytest

from edge.agent._daemon import Agent
from tests.security.fleet.conftest import Device


def _overlay(dev: Device) -> dict | None:
    path = dev.root / "data" / "config-overlay.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize(("patch", "key"), [
    ({"updates": {"public_key_file": ""}}, "updates.public_key_file"),
    ({"updates": {"allow_http": True}}, "updates.allow_http"),
    ({"updates": {"source_dir": "/"}}, "updates.source_dir"),
    ({"cloud": {"url": "https://attacker.example"}}, "cloud.url"),
    ({"cloud": {"token_file": "/etc/shadow"}}, "cloud.token_file"),
    ({"mqtt": {"max_payload_bytes": 200_000_000}}, "mqtt.max_payload_bytes"),
    ({"models": [{"name": "tiny", "path": "/etc/shadow"}]}, "models"),
    ({"policy": {"file": "/etc/shadow"}}, "policy.file"),
])
def test_an_unsigned_config_may_not_touch_a_security_key(device: Device, patch: dict,
                                                         key: str) -> None:
    outside, overlay = device.outside(), _overlay(device)
    before = device.agent.config
    ack = device.send("config/set", {"id": device.next_id("cfg"), "version": "evil",
                                     "config": patch})
    assert ack["ok"] is False and key in ack["error"] and "signed" in ack["error"]
    assert device.agent.config == before
    assert _overlay(device) == overlay
    assert device.outside() == outside
    device.alive()


def test_after_a_refused_key_change_unsigned_deploys_stay_refused(device: Device) -> None:
    device.send("config/set", {"id": "clear-key", "version": "evil",
                               "config": {"updates": {"public_key_file": ""}}})
    from tests.security.fleet.test_fleet_updates import _unsigned

    ack = device.send("models/deploy", _unsigned(device))
    assert ack["ok"] is False and "signed" in ack["reason"]
    assert device.agent.slots["tiny"].current.version == "1"


def test_a_signed_config_may_change_them_and_it_survives_a_restart(device: Device) -> None:
    msg = device.signed_config("cloud-2", {"cloud": {"url": "https://gpu-2.example:8000"},
                                           "mqtt": {"telemetry_interval_s": 30.0}})
    ack = device.send("config/set", msg)
    assert ack["ok"] is True, ack
    assert device.agent.config.cloud.url == "https://gpu-2.example:8000"
    # A later unsigned change of a harmless key keeps the signed one.
    ack = device.send("config/set", {"id": "benign", "version": "v3",
                                     "config": {"updates": {"probation_s": 2.0}}})
    assert ack["ok"] is True, ack
    device.agent.close()
    again = Agent(device.root / "agent.toml")
    try:
        assert again.config.cloud.url == "https://gpu-2.example:8000"
        assert again.config.updates.probation_s == 2.0
    finally:
        again.close()


def test_a_signed_config_is_not_replayed(device: Device) -> None:
    msg = device.signed_config("cloud-2", {"cloud": {"url": "https://gpu-2.example:8000"}},
                               counter=5)
    assert device.send("config/set", msg)["ok"] is True
    ack = device.send("config/set", {**msg, "id": "again"})
    assert ack["ok"] is False and "replay" in ack["error"]
    older = device.signed_config("cloud-1", {"cloud": {"url": "https://gpu-1.example"}},
                                 counter=1)
    ack = device.send("config/set", older)
    assert ack["ok"] is False and "older" in ack["error"]
    assert device.agent.config.cloud.url == "https://gpu-2.example:8000"


def test_a_deploy_document_is_not_a_config_document(device: Device) -> None:
    from tests.security.fleet.conftest import model_file

    deploy = device.signed_deploy("tiny", "2", model_file(device, "v2.onnx"))
    ack = device.send("config/set", {"id": "wrong-type", "signed": deploy["signed"]})
    assert ack["ok"] is False and "type" in ack["error"]


def test_an_unsigned_policy_may_not_turn_the_privacy_rule_off(device: Device) -> None:
    strict = {"objective": "latency", "rules": {"never_send_raw_input": True}}
    assert device.send("config/set", device.signed_config("p1", policy=strict))["ok"] is True
    ack = device.send("config/set", {"id": "loosen", "version": "p2",
                                     "policy": {"objective": "latency"}})
    assert ack["ok"] is False and "never_send_raw_input" in ack["error"]
    assert device.agent.policy_config.rules.never_send_raw_input is True
    # Tuning that keeps the rule is fine unsigned.
    ack = device.send("config/set", {"id": "tune", "version": "p3", "policy": {
        "objective": "energy", "slo_ms": 100.0, "rules": {"never_send_raw_input": True}}})
    assert ack["ok"] is True, ack


def test_harmless_keys_still_apply_unsigned(device: Device) -> None:
    ack = device.send("config/set", {"id": "ok-1", "version": "v2", "config": {
        "mqtt": {"telemetry_interval_s": 30.0}, "updates": {"error_rate_threshold": 0.1}}})
    assert ack["ok"] is True, ack
    assert device.agent.config.updates.error_rate_threshold == 0.1


def test_turning_offloading_off_needs_no_signature(device: Device) -> None:
    """Narrowing what leaves the device is not a weakening: cloud.url may go to ''."""
    ack = device.send("config/set", {"id": "off", "version": "v2",
                                     "config": {"cloud": {"url": ""}}})
    assert ack["ok"] is True, ack
    ack = device.send("config/set", {"id": "on", "version": "v3",
                                     "config": {"cloud": {"url": "https://x.example"}}})
    assert ack["ok"] is False and "cloud.url" in ack["error"]
