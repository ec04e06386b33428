"""Fixtures for the agent and fleet tests: a real mosquitto broker and an MQTT observer."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices import DeviceProfile, load_profile
from tests.conftest import free_port
from tests.onnx_files import make_model, save_model

_PROFILES = Path(__file__).resolve().parents[2] / "devices" / "profiles"
MOSQUITTO = "/usr/sbin/mosquitto"
# Started as root, mosquitto drops to the 'mosquitto' user, which cannot read or write
# the test's private temporary folders; keep the user it was started as.
_USER_LINE = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Broker:
    """A mosquitto process on 127.0.0.1 with persistence, so a restart keeps sessions."""

    def __init__(self, directory: Path, port: int) -> None:
        self.dir = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"{_USER_LINE}"
            "persistence true\n"
            f"persistence_location {directory / 'data'}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {directory / 'mosquitto.log'}\n"
        )

    def start(self) -> None:
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError(f"{MOSQUITTO} is missing: run scripts/install-system.sh")
        err = self.dir / "mosquitto.stderr"
        with open(err, "ab") as fh:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                         stdout=fh, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; mosquitto said: {err.read_text()[-2000:]}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A fresh broker on a free port, stopped after the test."""
    broker = Broker(tmp_path / "broker", free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Observer:
    """An MQTT client that records every message on the topics it subscribes to.

    It keeps a persistent session (QoS 1, clean_session off) so messages published while
    the broker restarts are still delivered to it afterwards.
    """

    def __init__(self, port: int, topics: list[str], client_id: str = "test-observer",
                 qos: int = 1) -> None:
        self._qos = qos
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._ready = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self._ready.set()
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("observer did not subscribe")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        client.subscribe([(t, self._qos) for t in self._topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes | str | dict[str, Any], retain: bool = False) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out waiting for {what}; got {self.messages[-5:]}")
                self._cond.wait(min(left, 0.2))

    def wait_json(self, topic: str, match: Callable[[dict[str, Any]], bool],
                  timeout: float = 15.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for m in self.json_on(topic):
                if match(m):
                    return m
            return None

        return self.wait_for(find, timeout, f"a message on {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def observer_factory(mosquitto: Broker) -> Iterator[Callable[..., Observer]]:
    made: list[Observer] = []

    def make(topics: list[str], client_id: str = "test-observer", qos: int = 1) -> Observer:
        obs = Observer(mosquitto.port, topics, client_id, qos)
        made.append(obs)
        return obs

    yield make
    for obs in made:
        obs.close()


# -- small models and agent configs ------------------------------------------------------------


def tiny_model(path: Path, kind: str = "scale", factor: float = 2.0) -> Path:
    """A model with input ``x`` float32[N, 4] and output ``y`` float32[N, 4], built in code.

    ``scale``: y = x * factor. ``fail_warmup``: loads but every run fails (a Reshape to an
    impossible shape). ``fail_some``: y = table[int(x)], which fails for any x >= 4.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    if kind == "scale":
        inits = [numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")]
        nodes = [helper.make_node("Mul", ["x", "k"], ["y"])]
    elif kind == "fail_warmup":
        # y = x + 0 * sum(reshape(x, [7, 3])): the output depends on a Reshape that fails
        # for every batch size, so ONNX Runtime cannot prune it away.
        inits = [numpy_helper.from_array(np.array([7, 3], dtype=np.int64), "shape"),
                 numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero")]
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
                 helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
                 helper.make_node("Mul", ["s", "zero"], ["z"]),
                 helper.make_node("Add", ["x", "z"], ["y"])]
    elif kind == "fail_some":
        inits = [numpy_helper.from_array(np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), "table")]
        nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
                 helper.make_node("Gather", ["table", "i"], ["y"], axis=0)]
    else:
        raise ValueError(kind)
    graph = helper.make_graph(nodes, f"tiny_{kind}", [x], [y], inits)
    model = make_model(graph)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    return path


def write_agent_config(directory: Path, *, models: dict[str, Path], mqtt_port: int = 0,
                       api_port: int = 0, unix_socket: str = "", extra: str = "",
                       telemetry_s: float = 60.0, protocol: str = "5",
                       device_id: str = "dev1", updates: str = "",
                       profile: str = "generic-x86", plans: dict[str, Path] | None = None,
                       log_requests: bool = False, workers: int = 2) -> Path:
    """Write an agent.toml for a test (MQTT on when ``mqtt_port`` is given)."""
    lines = [
        "[agent]",
        f'device_id = "{device_id}"',
        f'profile = "{profile}"',
        f'data_dir = "{directory / "data"}"',
        f"log_requests = {'true' if log_requests else 'false'}",
        "shutdown_grace_s = 5.0",
        "[api]",
        f"port = {api_port}",
        f'unix_socket = "{unix_socket or directory / "agent.sock"}"',
        f"workers = {workers}",
        "[mqtt]",
        f"enabled = {'true' if mqtt_port else 'false'}",
        f"port = {mqtt_port or 1883}",
        f'protocol = "{protocol}"',
        'prefix = "t"',
        'groups = ["lab"]',
        "reconnect_min_s = 0.1",
        "reconnect_max_s = 0.5",
        f"telemetry_interval_s = {telemetry_s}",
        "[updates]",
        updates or "probation_s = 1.0\nhealth_interval_s = 0.2\nmin_probation_requests = 10",
    ]
    if "source_dir" not in (updates or ""):
        # Deployments in these tests name files in the test's folder.
        lines.append(f'source_dir = "{directory}"')
    text = "\n".join(lines) + "\n" + extra + "\n"
    for name, path in models.items():
        text += f'[[models]]\nname = "{name}"\npath = "{path}"\nversion = "1"\nwarmup_runs = 1\n'
        if plans and name in plans:
            text += f'plan = "{plans[name]}"\n'
    path = directory / "agent.toml"
    path.write_text(text)
    return path


def slow_model(path: Path, size: int = 512, layers: int = 160) -> Path:
    """Input ``x`` float32[N, size] -> ``y``: ``layers`` MatMuls by the identity (slow for
    N = size, so a request stays in flight long enough to signal the agent meanwhile)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])
    w = numpy_helper.from_array(np.eye(size, dtype=np.float32), "w")
    names = ["x"] + [f"h{i}" for i in range(layers - 1)] + ["y"]
    nodes = [helper.make_node("MatMul", [names[i], "w"], [names[i + 1]]) for i in range(layers)]
    graph = helper.make_graph(nodes, "slow", [x], [y], [w])
    model = make_model(graph)
    save_model(model, path)
    return path


REPO = Path(__file__).resolve().parents[2]


def start_agent_process(config: Path, log: Path,
                        env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``edgecut agent --config`` as a real child process (its JSON logs go to ``log``)."""
    import sys

    fh = open(log, "wb")  # noqa: SIM115 - closed when the process is reaped by the test
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "agent", "--config", str(config)],
                            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None,
               timeout: float = 60.0) -> None:
    from edge.client import Client

    deadline = time.monotonic() + timeout
    with Client(url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the agent exited with code {proc.returncode}")
            if client.ready():
                return
            time.sleep(0.1)
    raise TimeoutError(f"the agent at {url} was not ready after {timeout} s")


def profile_variant(folder: Path, base: str, name: str, **keys: str) -> DeviceProfile:
    """A shipped device profile ``base`` renamed ``name`` with top-level ``keys`` set to
    the given TOML values (e.g. ``relative_speed="0.03"``), written in ``folder``."""
    text = (_PROFILES / f"{base}.toml").read_text()
    for key, value in keys.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, f"profile {base}: key {key!r} not found once"
    text = text.replace(f'name = "{base}"', f'name = "{name}"')
    path = folder / f"{name}.toml"
    path.write_text(text)
    return load_profile(path)
