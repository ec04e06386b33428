"""Signed documents and names, below the agent: DSSE envelopes, freshness, counters,
`edgecut sign`, and the name pattern with hypothesis."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.errors import ModelUpdateError, TrustError
from edge.agent._names import check_name, inside, is_name
from edge.agent._signing import (
    CONFIG_TYPE,
    DEPLOY_TYPE,
    Counters,
    UpdateDocument,
    canonical,
    open_envelope,
    sign,
)
from edge.cli._sign import sign as sign_cmd
from tests.edge.conftest import tiny_model
from tests.security.fleet.conftest import make_key


def _doc(**over) -> dict:
    now = int(time.time())
    doc = {"type": "deploy", "model": "m", "version": "2", "sha256": "a" * 64, "size": 10,
           "counter": 5, "issued_at": now, "expires_at": now + 60}
    doc.update(over)
    return doc


def test_an_envelope_round_trips_and_any_change_breaks_it(tmp_path: Path) -> None:
    key = make_key(tmp_path / "k.pub")
    env = sign(key, DEPLOY_TYPE, _doc())
    assert open_envelope(env, DEPLOY_TYPE, str(tmp_path / "k.pub"), "deploy") == _doc(
        issued_at=json.loads(base64.b64decode(env["payload"]))["issued_at"],
        expires_at=json.loads(base64.b64decode(env["payload"]))["expires_at"])
    # A relabelled payload (same signature) fails.
    doc = json.loads(base64.b64decode(env["payload"]))
    doc["model"] = "other"
    forged = {**env, "payload": base64.b64encode(canonical(doc)).decode()}
    with pytest.raises(TrustError, match="no signature verifies"):
        open_envelope(forged, DEPLOY_TYPE, str(tmp_path / "k.pub"), "deploy")
    # A deploy envelope is not a config envelope (the type is signed too).
    with pytest.raises(TrustError, match="expected 'application/vnd.edgecut.config"):
        open_envelope(env, CONFIG_TYPE, str(tmp_path / "k.pub"), "config")
    relabelled = {**env, "payloadType": CONFIG_TYPE}
    with pytest.raises(TrustError, match="no signature verifies"):
        open_envelope(relabelled, CONFIG_TYPE, str(tmp_path / "k.pub"), "config")
    # Another key's signature fails.
    other = sign(make_key(tmp_path / "other.pub"), DEPLOY_TYPE, _doc())
    with pytest.raises(TrustError, match="no signature verifies"):
        open_envelope(other, DEPLOY_TYPE, str(tmp_path / "k.pub"), "deploy")


@pytest.mark.parametrize("envelope", [None, [], "x", {"payload": "", "signatures": []},
                                      {"payloadType": DEPLOY_TYPE, "payload": "!!",
                                       "signatures": [{"sig": "AA=="}]},
                                      {"payloadType": DEPLOY_TYPE, "payload": "e30=",
                                       "signatures": "nope"},
                                      {"payloadType": DEPLOY_TYPE, "payload": "e30=",
                                       "signatures": [1, {"sig": 5}, {"sig": "%%"}]}])
def test_malformed_envelopes_are_refused(tmp_path: Path, envelope) -> None:
    make_key(tmp_path / "k.pub")
    with pytest.raises(TrustError):
        open_envelope(envelope, DEPLOY_TYPE, str(tmp_path / "k.pub"), "deploy")


def test_freshness_scope_and_fields() -> None:
    now = time.time()
    assert UpdateDocument.parse(_doc(), "dev1").model == "m"
    with pytest.raises(TrustError, match="expired"):
        UpdateDocument.parse(_doc(expires_at=int(now) - 1), "dev1")
    with pytest.raises(TrustError, match="issued in the future"):
        UpdateDocument.parse(_doc(issued_at=int(now) + 3600), "dev1")
    with pytest.raises(TrustError, match="not for device 'dev1'"):
        UpdateDocument.parse(_doc(devices=["dev2"]), "dev1")
    assert UpdateDocument.parse(_doc(devices=["dev2", "dev1"]), "dev1").version == "2"
    with pytest.raises(ModelUpdateError, match="field 'version'"):
        UpdateDocument.parse(_doc(version=".."), "dev1")
    with pytest.raises(TrustError, match="'counter'"):
        UpdateDocument.parse(_doc(counter=True), "dev1")
    with pytest.raises(TrustError, match="'size'"):
        UpdateDocument.parse(_doc(size=0), "dev1")
    with pytest.raises(TrustError, match="unknown signed field"):
        UpdateDocument.parse(_doc(url="https://x"), "dev1")
    with pytest.raises(TrustError, match="not a deploy document"):
        UpdateDocument.parse(_doc(type="config"), "dev1")


def test_counters_refuse_replay_and_downgrade_and_survive_a_restart(tmp_path: Path) -> None:
    c = Counters(tmp_path / "counters.json")
    c.check("deploy:m", 5, "deploy")
    c.advance("deploy:m", 5, "deploy")
    with pytest.raises(TrustError, match="is a replay"):
        c.check("deploy:m", 5, "deploy")
    with pytest.raises(TrustError, match="older than one already accepted"):
        c.check("deploy:m", 4, "deploy")
    c.check("deploy:other", 1, "deploy")  # one counter per model
    again = Counters(tmp_path / "counters.json")
    assert again.last("deploy:m") == 5
    with pytest.raises(TrustError):
        again.advance("deploy:m", 5, "deploy")
    (tmp_path / "counters.json").write_text("{not json")
    damaged = Counters(tmp_path / "counters.json")
    assert "unreadable" in damaged.ignored


def test_edgecut_sign_keygen_deploy_and_config(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "fleet.key"
    result = runner.invoke(sign_cmd, ["keygen", "--out", str(key)])
    assert result.exit_code == 0, result.output
    assert os.stat(key).st_mode & 0o777 == 0o600
    pub = str(tmp_path / "fleet.pub")
    model = tiny_model(tmp_path / "m.onnx")
    result = runner.invoke(sign_cmd, ["deploy", str(model), "--key", str(key), "--model", "cam",
                                      "--version", "7", "--url", "https://models.example/m.onnx",
                                      "--device", "dev1", "--counter", "42"])
    assert result.exit_code == 0, result.output
    message = json.loads(result.output)
    assert message["url"] == "https://models.example/m.onnx"
    doc = UpdateDocument.parse(open_envelope(message["signed"], DEPLOY_TYPE, pub, "deploy"),
                               "dev1")
    assert (doc.model, doc.version, doc.size, doc.freshness.counter) == (
        "cam", "7", model.stat().st_size, 42)
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"config": {"cloud": {"url": "https://gpu.example"}}}))
    result = runner.invoke(sign_cmd, ["config", str(patch), "--key", str(key), "--version", "c1"])
    assert result.exit_code == 0, result.output
    opened = open_envelope(json.loads(result.output)["signed"], CONFIG_TYPE, pub, "config")
    assert opened["config"] == {"cloud": {"url": "https://gpu.example"}}
    bad = runner.invoke(sign_cmd, ["deploy", str(model), "--key", str(key), "--model", "../x",
                                   "--version", "1", "--path", "/x"])
    assert bad.exit_code != 0 and "'model'" in str(bad.exception)


@pytest.mark.parametrize("name", ["", ".", "..", "...", ".hidden", "-rf", "a/b", "a\\b",
                                  "a\x00b", "x\n", "١٢", "ａ", "state.json", "a" * 65, " a"])
def test_names_that_are_not_names(name: str) -> None:
    assert not is_name(name)
    with pytest.raises(ModelUpdateError, match="field 'version'"):
        check_name(name, "version")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_a_valid_name_is_one_plain_path_component(name: str) -> None:
    if is_name(name):
        assert Path(name).name == name and name not in (".", "..")
        assert name.isascii() and "/" not in name and "\x00" not in name


def test_inside_follows_links(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "m").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (store / "link").symlink_to(tmp_path / "outside")
    assert inside(store, store / "m" / "1") == (store / "m" / "1").resolve()
    for bad in (store, store / "..", store / "link" / "1", store / "m" / ".." / ".." / "x"):
        with pytest.raises(ModelUpdateError, match="refused"):
            inside(store, bad)
