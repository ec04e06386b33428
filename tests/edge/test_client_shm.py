"""``edge.Client`` against a real agent: local calls pass inputs through /dev/shm regions
(registered once per input, grown when needed, removed on close) and fall back to binary
tensors when the agent has the extension off."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from edge import Client
from edge.agent._daemon import Agent, AgentServer
from tests.conftest import free_port
from tests.edge.conftest import tiny_model, write_agent_config


def _regions(client: Client) -> list[dict]:
    import json

    status, data, _ = client._request("GET", "/v2/systemsharedmemory/status")
    assert status == 200, data
    return json.loads(data)


def _config(tmp_path: Path, shared_memory: bool | None = None) -> Path:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             api_port=free_port())
    if shared_memory is not None:
        text = cfg.read_text().replace(
            "workers = 2\n", f"workers = 2\nshared_memory = {str(shared_memory).lower()}\n")
        cfg.write_text(text)
    return cfg


def test_local_client_uses_shared_memory_and_cleans_up(tmp_path: Path) -> None:
    with AgentServer(Agent(_config(tmp_path))) as server:
        for url in (server.url, f"unix://{tmp_path / 'agent.sock'}"):
            client = Client(url)
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            np.testing.assert_array_equal(client.infer("tiny", {"x": x})["y"], x * 2)
            assert client.uses_shared_memory is True
            [region] = _regions(client)
            path = Path("/dev/shm") / region["key"].lstrip("/")
            assert path.exists() and region["byte_size"] >= x.nbytes
            # The same region serves the next call; the array really is read from it.
            y = np.full((2, 4), -1.5, np.float32)
            np.testing.assert_array_equal(client.infer("tiny", {"x": y})["y"], y * 2)
            assert _regions(client) == [region]
            # A bigger tensor: the region is replaced by one that fits, the old one goes.
            big = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
            np.testing.assert_array_equal(client.infer("tiny", {"x": big})["y"], big * 2)
            [grown] = _regions(client)
            assert grown["name"] != region["name"] and grown["byte_size"] >= big.nbytes
            assert not path.exists()
            # Errors still name the tensor (the dtype check runs on the shm input too).
            try:
                client.infer("tiny", {"x": x.astype(np.float64)})
                raise AssertionError("FP64 input accepted")
            except Exception as exc:  # noqa: BLE001 - checked below
                assert "'x'" in str(exc) and "FP32" in str(exc)
            client.close()
            assert not (Path("/dev/shm") / grown["key"].lstrip("/")).exists()
            with Client(url, shared_memory=False) as probe:
                assert _regions(probe) == []


def test_threads_get_their_own_regions(tmp_path: Path) -> None:
    with AgentServer(Agent(_config(tmp_path))) as server, Client(server.url) as client:
        errors: list[str] = []

        def work(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(30):
                x = rng.standard_normal((3, 4)).astype(np.float32)
                out = client.infer("tiny", {"x": x})["y"]
                if not np.array_equal(out, x * 2):
                    errors.append(f"thread {seed}: wrong output")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert len(_regions(client)) == 3
        keys = [r["key"] for r in _regions(client)]
    assert not any(os.path.exists("/dev/shm" + k) for k in keys)


def test_falls_back_to_binary_when_the_agent_has_it_off(tmp_path: Path) -> None:
    with AgentServer(Agent(_config(tmp_path, shared_memory=False))) as server:
        with Client(server.url) as client:
            assert "system_shared_memory" not in client.metadata()["extensions"]
            x = np.ones((1, 4), np.float32)
            np.testing.assert_array_equal(client.infer("tiny", {"x": x})["y"], x * 2)
            assert client.uses_shared_memory is False


def test_regions_are_registered_again_after_an_agent_restart(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    client = Client(f"unix://{tmp_path / 'agent.sock'}")
    x = {"x": np.ones((1, 4), np.float32)}
    with AgentServer(Agent(cfg)):
        assert client.infer("tiny", x)["y"][0, 0] == 2.0
        [before] = _regions(client)
    with AgentServer(Agent(cfg)):
        # The new agent knows no regions: the client registers a fresh one and retries.
        assert client.infer("tiny", x)["y"][0, 0] == 2.0
        assert client.uses_shared_memory is True
        [after] = _regions(client)
        assert after["name"] != before["name"]
        assert not os.path.exists("/dev/shm" + before["key"])
        client.close()
        assert not os.path.exists("/dev/shm" + after["key"])
