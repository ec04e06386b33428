"""Attacks on the update path, one per test, against a real agent on a real mosquitto.

Each asserts the refusal ack (naming the field or the reason) and that nothing outside the
model store changed: the decoy folder next to the store, the config, the model files.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from tests.security.fleet.conftest import Device, make_key, model_file


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(dev: Device) -> dict:
    path = dev.store / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _unsigned(dev: Device, **fields) -> dict:
    v2 = model_file(dev, "v2.onnx")
    msg = {"id": dev.next_id("unsigned"), "model": "tiny", "version": "2",
           "sha256": _sha(v2), "path": str(v2)}
    msg.update(fields)
    return msg


@pytest.mark.parametrize(("field", "value"), [
    ("model", "../../decoy"),
    ("model", "../../decoy/inner"),
    ("model", "/tmp"),
    ("model", ".."),
    ("model", "state.json"),
    ("version", ".."),
    ("version", "."),
    ("version", "../../../decoy"),
    ("version", ".incoming"),
    ("version", "a/b"),
    ("version", "2\x00"),
    ("version", "٢"),
    ("version", "2\n"),
])
def test_a_name_that_is_a_path_is_refused_and_nothing_moves(device: Device, field: str,
                                                            value: str) -> None:
    outside, store_before = device.outside(), _state(device)
    signed = device.signed_deploy("tiny", "2", model_file(device, "v2.onnx"))
    signed[field] = value  # the names in the message, beside a valid signed document
    ack = device.send("models/deploy", signed)
    assert ack["ok"] is False and ack["step"] == "rejected"
    assert f"'{field}'" in ack["reason"]
    assert device.outside() == outside
    assert _state(device) == store_before
    assert set(device.agent.slots) == {"tiny"}  # no phantom slot
    assert device.agent.slots["tiny"].current.version == "1"
    device.alive()


def test_a_link_inside_the_store_pointing_out_is_not_followed(device: Device) -> None:
    """A local mistake or an earlier compromise left a link: the store does not follow it."""
    outside = device.outside()
    (device.store / "evil").symlink_to(device.decoy)
    ack = device.send("models/deploy", device.signed_deploy("evil", "inner",
                                                            model_file(device, "v2.onnx")))
    assert ack["ok"] is False and "refused" in ack["reason"] and "not inside" in ack["reason"]
    (device.store / "evil").unlink()
    assert device.outside() == outside


def test_an_unsigned_deploy_is_refused_when_a_key_is_set(device: Device) -> None:
    outside = device.outside()
    ack = device.send("models/deploy", _unsigned(device))
    assert ack["ok"] is False and "signed" in ack["reason"]
    assert "refused" in ack["reason"]
    assert device.agent.slots["tiny"].current.version == "1"
    assert device.outside() == outside


def test_a_digest_only_signature_is_not_accepted_any_more(device: Device) -> None:
    v2 = model_file(device, "v2.onnx")
    import base64

    sig = base64.b64encode(device.key.sign(bytes.fromhex(_sha(v2)))).decode()
    ack = device.send("models/deploy", _unsigned(device, signature=sig))
    assert ack["ok"] is False and "'signature'" in ack["reason"]
    assert device.agent.slots["tiny"].current.version == "1"


def test_a_signed_update_commits_and_the_flow_is_acknowledged(device: Device) -> None:
    v2 = model_file(device, "v2.onnx")
    msg = device.signed_deploy("tiny", "2", v2)
    ack = device.send("models/deploy", msg)
    assert ack["step"] == "committed", ack
    steps = [m for m in device.obs.json_on("t/dev1/models/ack") if m.get("id") == msg["id"]]
    verified = [m for m in steps if m["step"] == "verified"][0]
    assert verified["signed"] is True and verified["counter"] == device.counter
    assert device.agent.slots["tiny"].current.version == "2"


def test_relabelling_a_signed_file_onto_another_model_or_version_is_refused(
        device: Device) -> None:
    outside = device.outside()
    v2 = model_file(device, "v2.onnx")
    for field, value in (("model", "other"), ("version", "3"), ("sha256", "0" * 64)):
        msg = device.signed_deploy("tiny", "2", v2)
        msg[field] = value
        ack = device.send("models/deploy", msg)
        assert ack["ok"] is False and "refused" in ack["reason"]
        assert f"'{field}'" in ack["reason"] and "signed document" in ack["reason"]
    assert device.agent.slots["tiny"].current.version == "1"
    assert set(device.agent.slots) == {"tiny"}
    assert device.outside() == outside


def test_a_signed_document_for_another_file_is_refused_after_download(device: Device) -> None:
    """The document says one digest and size; the file at the path is another one."""
    v2 = model_file(device, "v2.onnx")
    v3 = model_file(device, "v3.onnx", factor=5.0)
    msg = device.signed_deploy("tiny", "2", v2)
    msg["path"] = str(v3)
    ack = device.send("models/deploy", msg)
    assert ack["ok"] is False and "refused" in ack["reason"]
    assert _sha(v3) not in json.dumps(ack) and str(v3.stat().st_size) not in ack["reason"]
    assert device.agent.slots["tiny"].current.version == "1"


def test_downgrade_and_replay_are_refused(device: Device) -> None:
    v2, v3 = model_file(device, "v2.onnx"), model_file(device, "v3.onnx", factor=5.0)
    old = device.signed_deploy("tiny", "2", v2, counter=10)
    new = device.signed_deploy("tiny", "3", v3, counter=11)
    assert device.send("models/deploy", new)["step"] == "committed"
    # The older document (a lower counter) would bring version 2 back: refused.
    ack = device.send("models/deploy", {**old, "id": "downgrade"})
    assert ack["ok"] is False and "counter 10" in ack["reason"] and "older" in ack["reason"]
    # The same document again, under a new message id: refused as a replay.
    ack = device.send("models/deploy", {**new, "id": "replay"})
    assert ack["ok"] is False and "replay" in ack["reason"]
    assert device.agent.slots["tiny"].current.version == "3"


def test_expired_future_and_other_device_documents_are_refused(device: Device) -> None:
    v2 = model_file(device, "v2.onnx")
    cases = [
        (device.signed_deploy("tiny", "2", v2, issued_at=time.time() - 7200, expires_in=60),
         "expired"),
        (device.signed_deploy("tiny", "2", v2, issued_at=time.time() + 3600), "future"),
        (device.signed_deploy("tiny", "2", v2, devices=["dev2"]), "not for device"),
    ]
    for msg, reason in cases:
        ack = device.send("models/deploy", msg)
        assert ack["ok"] is False and reason in ack["reason"], ack
    assert device.agent.slots["tiny"].current.version == "1"


def test_a_document_signed_by_another_key_is_refused(device: Device, tmp_path: Path) -> None:
    stranger = make_key(tmp_path / "stranger.pub")
    ack = device.send("models/deploy", device.signed_deploy(
        "tiny", "2", model_file(device, "v2.onnx"), key=stranger))
    assert ack["ok"] is False and "no signature verifies" in ack["reason"]


@pytest.mark.parametrize(("source", "reason"), [
    ({"url": "file:///etc/shadow"}, "scheme"),
    ({"url": "ftp://example.com/m.onnx"}, "scheme"),
    ({"url": "http://127.0.0.1:9/m.onnx"}, "http://"),
    ({"url": "gopher://x"}, "scheme"),
    ({"path": "/etc/shadow"}, "source_dir"),
    ({"path": "../decoy/inner/model.onnx"}, "source_dir"),
])
def test_deploy_sources_other_than_https_or_the_source_folder_are_refused(
        device_factory, source: dict, reason: str) -> None:
    dev = device_factory(signed=False)
    outside = dev.outside()
    msg = _unsigned(dev)
    msg.pop("path")
    msg.update(source)
    ack = dev.send("models/deploy", msg)
    assert ack["ok"] is False and "refused" in ack["reason"] and reason in ack["reason"]
    # Nothing about what is there comes back: no size, no digest.
    text = json.dumps([m for m in dev.obs.json_on("t/dev1/models/ack")
                       if m.get("id") == msg["id"]])
    assert "bytes" not in text and '"sha256"' not in text
    assert dev.outside() == outside
    assert dev.agent.slots["tiny"].current.version == "1"


def test_a_link_in_the_source_folder_pointing_out_is_refused(device_factory) -> None:
    dev = device_factory(signed=False)
    (dev.root / "sources" / "shadow.onnx").symlink_to("/etc/shadow")
    msg = _unsigned(dev, path=str(dev.root / "sources" / "shadow.onnx"))
    ack = dev.send("models/deploy", msg)
    assert ack["ok"] is False and "source_dir" in ack["reason"]


@pytest.mark.parametrize("value", [1e9, -1, float("inf"), "60", True])
def test_out_of_range_probation_is_refused(device_factory, value) -> None:
    dev = device_factory(signed=False)
    ack = dev.send("models/deploy", _unsigned(dev, probation_s=value))
    assert ack["ok"] is False and "'probation_s'" in ack["reason"]
    dev.alive()


def test_an_unsigned_deploy_without_a_key_still_works_with_a_warning(device_factory) -> None:
    dev = device_factory(signed=False)
    ack = dev.send("models/deploy", _unsigned(dev))
    assert ack["step"] == "committed", ack
    assert dev.agent.slots["tiny"].current.version == "2"
