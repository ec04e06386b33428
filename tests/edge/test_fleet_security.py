"""The fleet link over TLS with a client certificate and a password, against mosquitto."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.agent._daemon import Agent
from tests.conftest import free_port
from tests.edge.conftest import _USER_LINE, Broker, tiny_model, write_agent_config


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _cert(path: Path, subject: str, key, issuer_key, issuer: x509.Name | None,
          ca: bool = False, ip: str | None = None) -> x509.Name:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return name


@pytest.fixture
def tls_broker(tmp_path: Path):
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key = _key(pki / "ca.key")
    ca_name = _cert(pki / "ca.pem", "edgecut test CA", ca_key, ca_key, None, ca=True)
    server_key = _key(pki / "server.key")
    _cert(pki / "server.pem", "127.0.0.1", server_key, ca_key, ca_name, ip="127.0.0.1")
    for who in ("dev1", "operator"):
        _cert(pki / f"{who}.pem", who, _key(pki / f"{who}.key"), ca_key, ca_name)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pki / "passwd"), "dev1", "s3cret"],
                   check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pki / "passwd"), "operator", "op"],
                   check=True)
    broker = Broker(tmp_path / "broker", free_port())
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\n"
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
        f"{_USER_LINE}"
        "allow_anonymous false\n"
        f"password_file {pki / 'passwd'}\n")
    broker.start()
    yield broker, pki
    broker.stop()


def _operator(port: int, pki: Path) -> tuple[mqtt.Client, list[tuple[str, dict]]]:
    seen: list[tuple[str, dict]] = []
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="operator")
    client.tls_set(ca_certs=str(pki / "ca.pem"), certfile=str(pki / "operator.pem"),
                   keyfile=str(pki / "operator.key"))
    client.username_pw_set("operator", "op")
    client.on_connect = lambda c, *a: c.subscribe("t/#", qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: seen.append((m.topic, json.loads(m.payload)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(10)
    return client, seen


def _config(tmp_path: Path, port: int, pki: Path, password: str) -> Path:
    (tmp_path / "mqtt.pass").write_text(password + "\n")
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             mqtt_port=port, protocol="3.1.1")
    text = cfg.read_text().replace("[updates]", (
        'username = "dev1"\n'
        f'password_file = "{tmp_path / "mqtt.pass"}"\n'
        "[mqtt.tls]\nenabled = true\n"
        f'ca_file = "{pki / "ca.pem"}"\ncert_file = "{pki / "dev1.pem"}"\n'
        f'key_file = "{pki / "dev1.key"}"\n'
        "[updates]"))
    cfg.write_text(text)
    return cfg


def test_tls_client_certificate_and_password(tls_broker, tmp_path: Path) -> None:
    broker, pki = tls_broker
    operator, seen = _operator(broker.port, pki)
    agent = Agent(_config(tmp_path, broker.port, pki, "s3cret"))
    agent.start_fleet()
    try:
        assert agent.fleet.connected.wait(15)
        # The status follows the subscriptions on the same connection: once it is seen,
        # commands reach the agent.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t == "t/dev1/status" for t, _ in seen):
            time.sleep(0.05)
        operator.publish("t/dev1/cmd", json.dumps({"id": "p", "command": "ping"}), qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t == "t/dev1/cmd/ack" for t, _ in seen):
            time.sleep(0.05)
        acks = [m for t, m in seen if t == "t/dev1/cmd/ack"]
        assert acks and acks[0]["pong"] is True
        assert any(t == "t/dev1/status" and m["state"] == "online" for t, m in seen)
    finally:
        agent.close()
        operator.loop_stop()


def test_a_wrong_password_is_refused(tls_broker, tmp_path: Path) -> None:
    broker, pki = tls_broker
    agent = Agent(_config(tmp_path, broker.port, pki, "wrong"))
    agent.start_fleet()
    try:
        assert not agent.fleet.connected.wait(2.0)
        assert agent.fleet.connects == 0
    finally:
        agent.close()
