"""Safe model updates over MQTT: swap under load, rejections, rollback, download, signatures."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from devices.errors import EdgecutError
from edge import Client
from edge.agent._daemon import Agent, AgentServer
from tests.conftest import free_port
from tests.edge.conftest import tiny_model, write_agent_config
from tests.onnx_files import make_model, save_model

FINAL = ("committed", "rejected", "rolled_back", "superseded")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def make_env(tmp_path: Path, mosquitto, observer_factory):
    made: list[tuple[Agent, AgentServer]] = []

    def make(updates: str = "", extra: str = ""):
        cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "v1.onnx")},
                                 mqtt_port=mosquitto.port, updates=updates, extra=extra)
        obs = observer_factory(["t/dev1/#"])
        agent = Agent(cfg)
        server = AgentServer(agent).start()
        agent.start_fleet()
        obs.wait_json("t/dev1/status", lambda m: m["state"] == "online")
        made.append((agent, server))
        return agent, obs, server

    yield make
    for agent, server in made:
        agent.close()
        server.stop()


def deploy(obs, cid: str, timeout: float = 60.0, **fields) -> tuple[dict, list[str]]:
    obs.publish("t/dev1/models/deploy", {"id": cid, "model": "tiny", **fields})
    final = obs.wait_json("t/dev1/models/ack",
                          lambda m: m.get("id") == cid and m.get("step") in FINAL, timeout)
    steps = [m["step"] for m in obs.json_on("t/dev1/models/ack") if m.get("id") == cid]
    return final, steps


class _Load:
    """Closed-loop clients on the agent's Unix socket, recording every result."""

    def __init__(self, url: str, threads: int = 2, value: float = 1.0) -> None:
        self.url = url
        self.ok = 0
        self.failed: list[str] = []
        self.values: list[list[float]] = [[] for _ in range(threads)]
        self._stop = threading.Event()
        self._x = {"x": np.full((1, 4), value, np.float32)}
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        with Client(self.url) as client:
            while not self._stop.is_set():
                try:
                    y = client.infer("tiny", self._x)["y"]
                    self.values[i].append(float(y[0, 0]))
                    self.ok += 1
                except EdgecutError as exc:
                    self.failed.append(str(exc))

    def __enter__(self) -> _Load:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def wait_for_requests(self, n: int, timeout: float = 60.0) -> None:
        """Until every client has ``n`` more answers than now (requests, not seconds)."""
        want = [len(v) + n for v in self.values]
        deadline = time.monotonic() + timeout
        while any(len(v) < w for v, w in zip(self.values, want)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(len(v) >= w for v, w in zip(self.values, want)), "the load stalled"

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self.seconds = time.monotonic() - self.started


def test_update_under_continuous_load_fails_no_request(make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env()
    v2 = tiny_model(tmp_path / "v2.onnx", factor=3.0)
    with _Load(f"unix://{tmp_path / 'agent.sock'}") as load:
        load.wait_for_requests(25)  # every client in flight on the old version
        final, steps = deploy(obs, "d-v2", path=str(v2), version="2", sha256=sha(v2))
        load.wait_for_requests(25)  # ... and on the new one
    assert final["step"] == "committed", final
    assert steps[:9] == ["accepted", "downloading", "downloaded", "verified", "loaded",
                         "warmed", "swapped", "probation", "committed"]
    assert load.failed == [], load.failed[:3]
    total = load.ok
    for values in load.values:
        # Each client saw the old version, then the new one, never going back.
        switch = values.index(3.0)
        assert set(values[:switch]) == {2.0} and set(values[switch:]) == {3.0}
    assert agent.slots["tiny"].current.version == "2"
    state = json.loads((tmp_path / "data" / "models" / "state.json").read_text())
    assert state["tiny"]["version"] == "2"
    assert Path(state["tiny"]["path"]).is_file()
    assert state["tiny"]["previous"]["version"] == "1"
    assert Path(state["tiny"]["previous"]["path"]).is_file()  # the old version stays on disk
    obs.wait_json("t/dev1/status", lambda m: m.get("models") == {"tiny": "2"})
    print(f"swap under load: {total} requests in {load.seconds:.1f} s "
          f"({total / load.seconds:.0f}/s), 0 failed")
    # A restart serves the committed version.
    assert Agent(tmp_path / "agent.toml").slots["tiny"].current.version == "2"


def test_corrupt_download_and_failing_warm_up_are_rejected(make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env()
    url = f"unix://{tmp_path / 'agent.sock'}"
    v2 = tiny_model(tmp_path / "v2.onnx", factor=3.0)
    with _Load(url, threads=1) as load:
        final, _ = deploy(obs, "bad-sum", path=str(v2), version="2", sha256="0" * 64)
        assert final["step"] == "rejected"
        assert "refused: the file does not match the sha256 given" in final["reason"]
        assert sha(v2) not in final["reason"]  # never what the file holds

        broken = tiny_model(tmp_path / "broken.onnx", kind="fail_warmup")
        final, steps = deploy(obs, "bad-warm", path=str(broken), version="3", sha256=sha(broken))
        assert final["step"] == "rejected" and "loaded" in steps
        assert "warm-up inference 1 failed" in final["reason"]

        other = tmp_path / "other.onnx"
        _rank3_model(other)
        final, _ = deploy(obs, "bad-iface", path=str(other), version="4", sha256=sha(other))
        assert final["step"] == "rejected" and "inputs changed" in final["reason"]
    assert load.failed == []
    assert set(load.values[0]) == {2.0}  # the old model kept serving throughout
    assert agent.slots["tiny"].current.version == "1"
    assert not (tmp_path / "data" / "models" / "tiny" / "2").exists()
    assert not (tmp_path / "data" / "models" / "tiny" / "3").exists()


def _rank3_model(path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "r3", [x], [y])
    model = make_model(graph)
    save_model(model, path)


def test_error_rate_above_the_threshold_rolls_back(make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env(updates="probation_s = 20.0\nhealth_interval_s = 0.2\n"
                                          "min_probation_requests = 10\n"
                                          "error_rate_threshold = 0.2")
    flaky = tiny_model(tmp_path / "flaky.onnx", kind="fail_some")
    cid = "flaky"
    obs.publish("t/dev1/models/deploy", {"id": cid, "model": "tiny", "version": "2",
                                         "path": str(flaky), "sha256": sha(flaky)})
    obs.wait_json("t/dev1/models/ack", lambda m: m.get("id") == cid and m["step"] == "probation")
    client = Client(f"unix://{tmp_path / 'agent.sock'}")
    good = {"x": np.ones((1, 4), np.float32)}
    bad = {"x": np.full((1, 4), 9.0, np.float32)}
    failures = 0
    for i in range(30):
        try:
            client.infer("tiny", bad if i % 2 else good)
        except EdgecutError:
            failures += 1
        if agent.slots["tiny"].current.version == "1":
            break
    final = obs.wait_json("t/dev1/models/ack",
                          lambda m: m.get("id") == cid and m.get("step") in FINAL)
    assert final["step"] == "rolled_back", final
    assert "error rate" in final["reason"] and "exceeds the threshold 0.200" in final["reason"]
    assert final["serving"] == "1" and failures >= 3
    # The old version answers the inputs the new one failed on.
    assert client.infer("tiny", bad)["y"][0, 0] == 18.0
    state = json.loads((tmp_path / "data" / "models" / "state.json").read_text())
    assert state["tiny"]["version"] == "1"


class _RangeServer:
    """A file server on 127.0.0.1 that honours ``Range: bytes=N-`` and logs the header."""

    def __init__(self, files: dict[str, bytes], cut_first: bool = False) -> None:
        self.ranges: list[str | None] = []
        self.cut_first = cut_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                data = files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_first:
                    # The connection drops half way through the first transfer.
                    outer.cut_first = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


_HTTP = "probation_s = 1.0\nhealth_interval_s = 0.2\nmin_probation_requests = 10\nallow_http = true"


def test_http_download_resumes_with_range_and_is_size_limited(make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env(updates=_HTTP)
    v2 = tiny_model(tmp_path / "v2.onnx", factor=3.0)
    data = v2.read_bytes()
    files = _RangeServer({"/v2.onnx": data, "/v3.onnx": data})
    try:
        # A previous attempt left half the file behind.
        part = tmp_path / "data" / "models" / "tiny" / ".incoming" / "2" / "model.onnx.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[: len(data) // 2])
        final, steps = deploy(obs, "http-v2", url=f"http://127.0.0.1:{files.port}/v2.onnx",
                              version="2", sha256=sha(v2))
        assert final["step"] == "committed", final
        assert files.ranges == [f"bytes={len(data) // 2}-"]
        verified = [m for m in obs.json_on("t/dev1/models/ack")
                    if m.get("id") == "http-v2" and m["step"] == "verified"]
        assert verified[0]["bytes"] == len(data)

        # The download limit may be lowered on the device (not by an unsigned message).
        cfg = tmp_path / "agent.toml"
        cfg.write_text(cfg.read_text().replace("[updates]\n", "[updates]\nmax_download_bytes = 64\n"))
        agent.reload()
        final, _ = deploy(obs, "http-v3", url=f"http://127.0.0.1:{files.port}/v3.onnx",
                          version="3", sha256=sha(v2))
        assert final["step"] == "rejected"
        assert "refused" in final["reason"] and "limit of 64 bytes" in final["reason"]
        # (the URL's random port may contain the digits: look past it)
        reason = final["reason"].replace(f"http://127.0.0.1:{files.port}/v3.onnx", "")
        assert str(len(data)) not in reason
        assert agent.slots["tiny"].current.version == "2"
    finally:
        files.close()


def test_signed_deployments(make_env, tmp_path: Path) -> None:
    """The signature covers the update document (tests/security/fleet has the attacks)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.agent._signing import DEPLOY_TYPE, sign

    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "fleet.pub").write_bytes(pem)
    agent, obs, server = make_env(updates=f'public_key_file = "{tmp_path / "fleet.pub"}"\n'
                                          "probation_s = 0.5")
    v2 = tiny_model(tmp_path / "v2.onnx", factor=3.0)
    digest = sha(v2)
    final, _ = deploy(obs, "unsigned", path=str(v2), version="2", sha256=digest)
    assert final["step"] == "rejected" and "only signed deployments" in final["reason"]
    now = int(time.time())
    doc = {"type": "deploy", "model": "tiny", "version": "2", "sha256": digest,
           "size": v2.stat().st_size, "counter": 1, "issued_at": now, "expires_at": now + 600}
    forged = sign(Ed25519PrivateKey.generate(), DEPLOY_TYPE, doc)
    final, _ = deploy(obs, "forged", path=str(v2), signed=forged)
    assert final["step"] == "rejected" and "no signature verifies" in final["reason"]
    final, steps = deploy(obs, "signed", path=str(v2), signed=sign(key, DEPLOY_TYPE, doc))
    assert final["step"] == "committed", final
    verified = [m for m in obs.json_on("t/dev1/models/ack")
                if m.get("id") == "signed" and m["step"] == "verified"]
    assert verified[0]["signed"] is True and verified[0]["counter"] == 1


def test_rollback_command_and_reprofile(make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env()
    v2 = tiny_model(tmp_path / "v2.onnx", factor=3.0)
    final, _ = deploy(obs, "v2", path=str(v2), version="2", sha256=sha(v2))
    assert final["step"] == "committed"
    # The model is measured again after the update, and that is acknowledged too.
    reprofiled = obs.wait_json("t/dev1/models/ack",
                               lambda m: m.get("id") == "v2" and m["step"] == "reprofiled")
    assert reprofiled["version"] == "2" and reprofiled["local_ms"] > 0
    assert agent.reprofiles[-1]["version"] == "2"
    obs.publish("t/dev1/cmd", {"id": "rb", "command": "rollback", "model": "tiny"})
    ack = obs.wait_json("t/dev1/cmd/ack", lambda m: m.get("id") == "rb")
    assert ack["ok"] and ack["serving"] == "1"
    with Client(server.url) as client:
        assert client.infer("tiny", {"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 2.0
    assert Agent(tmp_path / "agent.toml").slots["tiny"].current.version == "1"
    obs.publish("t/dev1/cmd", {"id": "rp", "command": "reprofile", "model": "tiny"})
    ack = obs.wait_json("t/dev1/cmd/ack", lambda m: m.get("id") == "rp")
    assert ack["ok"] and ack["results"]["tiny"]["local_ms"] > 0
    # Re-deploying the same id is not run twice.
    obs.publish("t/dev1/models/deploy", {"id": "v2", "model": "tiny", "version": "2",
                                         "path": str(v2), "sha256": sha(v2)})
    obs.wait_json("t/dev1/models/ack", lambda m: m.get("id") == "v2" and m.get("duplicate"))
    assert agent.slots["tiny"].current.version == "1"


def test_a_deployment_can_add_a_model_and_a_failing_new_model_is_removed(
        make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env(updates="probation_s = 20.0\nhealth_interval_s = 0.2\n"
                                          "min_probation_requests = 5\n"
                                          "error_rate_threshold = 0.2")
    client = Client(server.url)
    extra = tiny_model(tmp_path / "extra.onnx", factor=5.0)
    obs.publish("t/dev1/models/deploy", {"id": "add", "model": "extra", "version": "1",
                                         "path": str(extra), "sha256": sha(extra),
                                         "probation_s": 0.5})
    final = obs.wait_json("t/dev1/models/ack",
                          lambda m: m.get("id") == "add" and m.get("step") in FINAL)
    assert final["step"] == "committed"
    assert client.infer("extra", {"x": np.ones((1, 4), np.float32)})["y"][0, 0] == 5.0
    status = client.agent_status()
    assert status["models"] == {"tiny": "1", "extra": "1"}
    assert status["fleet"]["connected"] is True

    flaky = tiny_model(tmp_path / "flaky.onnx", kind="fail_some")
    obs.publish("t/dev1/models/deploy", {"id": "add-flaky", "model": "flaky", "version": "1",
                                         "path": str(flaky), "sha256": sha(flaky)})
    obs.wait_json("t/dev1/models/ack",
                  lambda m: m.get("id") == "add-flaky" and m["step"] == "probation")
    assert client.ready("flaky")  # served (and so observable) during its probation
    for _ in range(10):
        try:
            client.infer("flaky", {"x": np.full((1, 4), 9.0, np.float32)})
        except EdgecutError:
            pass
        if "flaky" not in agent.slots:
            break
    final = obs.wait_json("t/dev1/models/ack",
                          lambda m: m.get("id") == "add-flaky" and m.get("step") in FINAL)
    assert final["step"] == "rolled_back" and final["serving"] is None
    assert not client.ready("flaky")
    assert "flaky" not in json.loads((tmp_path / "data" / "models" / "state.json").read_text())


def test_a_dropped_download_resumes_where_it_stopped(make_env, tmp_path: Path) -> None:
    agent, obs, server = make_env(updates=_HTTP)
    v2 = tiny_model(tmp_path / "v2.onnx", factor=3.0)
    data = v2.read_bytes()
    files = _RangeServer({"/v2.onnx": data}, cut_first=True)
    try:
        final, _ = deploy(obs, "drop", url=f"http://127.0.0.1:{files.port}/v2.onnx",
                          version="2", sha256=sha(v2))
        assert final["step"] == "committed", final
        assert files.ranges == [None, f"bytes={len(data) // 2}-"]
    finally:
        files.close()
    # Re-deploying the serving version is a no-op; after a rollback version 2 is kept
    # for a roll-forward, and a different file under its name is refused.
    final, _ = deploy(obs, "again", path=str(v2), version="2", sha256=sha(v2))
    assert final["step"] == "committed" and final.get("detail")  # already serving: a no-op
    v1_again = tiny_model(tmp_path / "v1b.onnx", factor=7.0)
    obs.publish("t/dev1/cmd", {"id": "rb", "command": "rollback", "model": "tiny"})
    obs.wait_json("t/dev1/cmd/ack", lambda m: m.get("id") == "rb")
    final, _ = deploy(obs, "clobber", path=str(v1_again), version="2", sha256=sha(v1_again))
    assert final["step"] == "rejected" and "already on the device" in final["reason"]
