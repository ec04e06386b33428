"""A device under attack: a real agent on a real mosquitto, an operator key, a decoy folder.

The attacker is anyone who can publish on the broker. Every attack test checks the ack it
gets and that nothing outside the model store changed: ``Device.snapshot()`` hashes every
file under the device's folder except the agent's own data, and the decoy folder next to
the store is what path tricks aim at.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.agent._daemon import Agent
from edge.agent._signing import CONFIG_TYPE, DEPLOY_TYPE, sign
from tests.edge.conftest import (  # noqa: F401 - the broker fixtures, for these tests too
    Observer,
    mosquitto,
    observer_factory,
    tiny_model,
    write_agent_config,
)

FINAL = ("committed", "rejected", "rolled_back", "superseded")
ACK = {"config/set": "config/ack", "cmd": "cmd/ack", "models/deploy": "models/ack"}


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``relative path -> content hash`` (or the link target, or 'dir') under ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d))
                       not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skip:
                continue
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Device:
    """One agent and the operator's and the attacker's view of it."""

    root: Path
    agent: Agent
    obs: Observer
    key: Any  # the operator's Ed25519 private key
    store: Path
    decoy: Path
    counter: int = 0
    _n: int = field(default=0, repr=False)

    def outside(self) -> dict[str, str]:
        """Everything on disk outside the agent's data folder (decoy, config, models)."""
        return snapshot(self.root, skip=("data",))

    def send(self, topic: str, payload: dict[str, Any] | bytes, timeout: float = 30.0,
             final: bool = True, retain: bool = False) -> dict[str, Any]:
        """Publish on ``t/dev1/<topic>``; return its (final) ack."""
        if isinstance(payload, dict):
            cid = payload.get("id")
            data = json.dumps(payload).encode()
        else:
            cid, data = None, payload
        before = len(self.obs.messages)
        self.obs.publish(f"t/dev1/{topic}", data, retain=retain)
        ack_topic = f"t/dev1/{ACK[topic]}"

        def found() -> dict[str, Any] | None:
            for t, p, _ in self.obs.messages[before:]:
                if t != ack_topic:
                    continue
                m = json.loads(p)
                if cid is not None and m.get("id") != cid:
                    continue
                if topic == "models/deploy" and final and m.get("step") not in FINAL \
                        and m.get("ok") is not False:
                    continue
                return m
            return None

        return self.obs.wait_for(found, timeout, f"an ack on {ack_topic} for {cid}")

    def next_id(self, what: str = "m") -> str:
        self._n += 1
        return f"{what}-{self._n}"

    def signed_deploy(self, model: str, version: str, file: Path, *, counter: int | None = None,
                      expires_in: float = 3600.0, issued_at: float | None = None,
                      devices: list[str] | None = None, key: Any = None,
                      **doc_fields: Any) -> dict[str, Any]:
        """A deploy message signed by the operator (or by ``key``)."""
        if counter is None:
            self.counter += 1
            counter = self.counter
        now = time.time() if issued_at is None else issued_at
        doc: dict[str, Any] = {"type": "deploy", "model": model, "version": version,
                               "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                               "size": file.stat().st_size, "counter": counter,
                               "issued_at": int(now), "expires_at": int(now + expires_in)}
        if devices is not None:
            doc["devices"] = devices
        doc.update(doc_fields)
        return {"id": self.next_id("deploy"), "signed": sign(key or self.key, DEPLOY_TYPE, doc),
                "path": str(file)}

    def signed_config(self, version: str, config: dict[str, Any] | None = None,
                      policy: dict[str, Any] | None = None, *, counter: int | None = None,
                      key: Any = None, expires_in: float = 3600.0) -> dict[str, Any]:
        if counter is None:
            self.counter += 1
            counter = self.counter
        now = time.time()
        doc: dict[str, Any] = {"type": "config", "version": version, "counter": counter,
                               "issued_at": int(now), "expires_at": int(now + expires_in)}
        if config is not None:
            doc["config"] = config
        if policy is not None:
            doc["policy"] = policy
        return {"id": self.next_id("config"), "signed": sign(key or self.key, CONFIG_TYPE, doc)}

    def alive(self) -> None:
        """The agent still answers on the fleet link and serves its model."""
        import numpy as np

        cid = self.next_id("ping")
        assert self.send("cmd", {"id": cid, "command": "ping"})["pong"] is True
        out = self.agent.infer("tiny", {"x": np.ones((1, 4), np.float32)})
        assert out["y"].shape == (1, 4)


def make_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def start_device(tmp_path: Path, port: int, make_observer: Any, *, protocol: str = "5",
                 signed: bool = True, updates: str = "", extra: str = "",
                 mqtt_extra: str = "") -> Device:
    root = tmp_path / "device"
    root.mkdir(parents=True, exist_ok=True)
    decoy = root / "decoy"
    (decoy / "inner").mkdir(parents=True, exist_ok=True)
    (decoy / "victim.txt").write_text("do not touch\n")
    (decoy / "inner" / "model.onnx").write_bytes(b"not a model")
    sources = root / "sources"
    sources.mkdir(exist_ok=True)
    # The files the tests deploy, made before any snapshot (model_file writes the same
    # bytes again).
    tiny_model(sources / "v2.onnx", factor=3.0)
    tiny_model(sources / "v3.onnx", factor=5.0)
    key = make_key(root / "fleet.pub")
    lines = [updates or "probation_s = 0.3\nhealth_interval_s = 0.1\nmin_probation_requests = 10",
             f'source_dir = "{sources}"']
    if signed:
        lines.append(f'public_key_file = "{root / "fleet.pub"}"')
    cfg = write_agent_config(root, models={"tiny": tiny_model(root / "v1.onnx")},
                             mqtt_port=port, protocol=protocol, updates="\n".join(lines),
                             extra=extra)
    if mqtt_extra:
        cfg.write_text(cfg.read_text().replace("[updates]", mqtt_extra + "\n[updates]", 1))
    obs = make_observer(["t/#"], client_id=f"attacker-{os.getpid()}-{time.monotonic_ns()}")
    agent = Agent(cfg)
    agent.start_fleet()
    obs.wait_json("t/dev1/status", lambda m: m["state"] == "online")
    return Device(root=root, agent=agent, obs=obs, key=key, store=root / "data" / "models",
                  decoy=decoy)


@pytest.fixture
def device(tmp_path: Path, mosquitto: Any, observer_factory: Any) -> Iterator[Device]:  # noqa: F811
    dev = start_device(tmp_path, mosquitto.port, observer_factory)
    try:
        yield dev
    finally:
        dev.agent.close()


@pytest.fixture
def device_factory(tmp_path: Path, mosquitto: Any, observer_factory: Any  # noqa: F811
                   ) -> Iterator[Any]:
    made: list[Device] = []

    def make(**kwargs: Any) -> Device:
        dev = start_device(tmp_path, mosquitto.port, observer_factory, **kwargs)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        dev.agent.close()


def model_file(dev: Device, name: str, factor: float = 3.0) -> Path:
    """A valid model in the device's source folder."""
    return tiny_model(dev.root / "sources" / name, factor=factor)
