"""The agent's local API over gRPC (``[api] grpc_port``): ``tritonclient.grpc`` unmodified,
as DeepStream's nvinferserver or an application on the device would call it."""

from __future__ import annotations

import queue
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.utils.shared_memory as tshm
from tritonclient.utils import InferenceServerException

from devices.errors import ConfigError
from edge.agent._config import load_agent_config
from edge.agent._daemon import Agent, AgentServer
from tests.cloud.test_grpc import ALL_TYPES, all_types_model, sample
from tests.conftest import free_port
from tests.edge.conftest import tiny_model, write_agent_config


@pytest.fixture
def served(tmp_path: Path):
    onnx.save(all_types_model(), str(tmp_path / "alltypes.onnx"))
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx"),
                                               "alltypes": tmp_path / "alltypes.onnx"},
                             api_port=free_port())
    grpc_port = free_port()
    text = cfg.read_text().replace("[api]\n", f"[api]\ngrpc_port = {grpc_port}\n")
    # a BYTES input has no random warm-up data: the string model starts cold
    head, _, tail = text.rpartition("warmup_runs = 1")
    cfg.write_text(head + "warmup_runs = 0" + tail)
    agent = Agent(cfg)
    with AgentServer(agent) as server:
        assert server.grpc_target == f"127.0.0.1:{grpc_port}"
        client = tg.InferenceServerClient(server.grpc_target)
        yield agent, server, client
        client.close()


def _x(n: int = 2, value: float | None = None) -> tg.InferInput:
    x = np.arange(4 * n, dtype=np.float32).reshape(n, 4) if value is None else \
        np.full((n, 4), value, np.float32)
    item = tg.InferInput("x", list(x.shape), "FP32")
    item.set_data_from_numpy(x)
    return item


def test_health_metadata_config_and_infer(served) -> None:
    agent, _server, client = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and not client.is_model_ready("nope")
    meta = client.get_model_metadata("tiny", as_json=True)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert meta["platform"] == "edgecut_agent"
    config = client.get_model_config("tiny").config
    assert config.name == "tiny" and [i.name for i in config.input] == ["x"]
    result = client.infer("tiny", [_x()], request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("y"),
                                  np.arange(8, dtype=np.float32).reshape(2, 4) * 2)
    assert result.get_response().id == "r1"
    assert agent.stats.total_requests == 1


def test_every_datatype_and_bytes_through_the_agent(served) -> None:
    _agent, _server, client = served
    rng = np.random.default_rng(5)
    data = {t: sample(t, rng) for t in ALL_TYPES}
    inputs = []
    for t, array in data.items():
        item = tg.InferInput(f"in_{t}", list(array.shape), t)
        item.set_data_from_numpy(array)
        inputs.append(item)
    result = client.infer("alltypes", inputs)
    for t, array in data.items():
        got = result.as_numpy(f"out_{t}")
        if t == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, t
            np.testing.assert_array_equal(got, array)


def test_stream_100_in_order_and_statistics(served) -> None:
    agent, _server, client = served
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(100):
            client.async_stream_infer("tiny", [_x(1, float(i))], request_id=str(i))
        got = [answers.get(timeout=60) for _ in range(100)]
    finally:
        client.stop_stream()
    assert all(error is None for _r, error in got)
    assert [r.get_response().id for r, _e in got] == [str(i) for i in range(100)]
    for i, (result, _e) in enumerate(got):
        np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 4), 2.0 * i))
    stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) == 100
    assert agent.stats.total_requests == 100


def test_repository_and_errors(served) -> None:
    _agent, _server, client = served
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} >= {"tiny", "alltypes"}
    # The agent's models come from agent.toml and the fleet: nothing to load from.
    with pytest.raises(InferenceServerException) as err:
        client.load_model("tiny")
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "no model repository" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [_x()])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    wide = tg.InferInput("x", [1, 5], "FP32")
    wide.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", [wide])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x': expected shape [-1, 4], got [1, 5]" in err.value.message()
    assert client.infer("tiny", [_x()]).as_numpy("y").shape == (2, 4)  # still serving


def test_shared_memory_through_the_agent(served) -> None:
    _agent, _server, client = served
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    key = f"/edgecut-ag-{uuid.uuid4().hex[:8]}"
    handle = tshm.create_shared_memory_region("ag_io", key, 2 * x.nbytes)
    try:
        tshm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("ag_io", key, 2 * x.nbytes)
        item = tg.InferInput("x", list(x.shape), "FP32")
        item.set_shared_memory("ag_io", x.nbytes)
        out = tg.InferRequestedOutput("y")
        out.set_shared_memory("ag_io", x.nbytes, offset=x.nbytes)
        client.infer("tiny", [item], outputs=[out])
        y = tshm.get_contents_as_numpy(handle, np.float32, [6, 4])[3:]
        np.testing.assert_array_equal(y, x * 2)
        client.unregister_system_shared_memory()
    finally:
        tshm.destroy_shared_memory_region(handle)


def test_grpc_settings_in_agent_toml(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")})
    text = cfg.read_text()
    cfg.write_text(text.replace("[api]\n", "[api]\ngrpc_port = 8001\n")
                   + '[cloud]\nurl = "grpc://gpu.example:8001"\nprotocol = "grpc"\n')
    loaded = load_agent_config(cfg)
    assert loaded.api.grpc_port == 8001 and loaded.cloud.protocol == "grpc"
    cfg.write_text(text + '[cloud]\nurl = "grpc://gpu.example:8001"\n')
    with pytest.raises(ConfigError, match="key 'url': expected an http:// or https:// URL"):
        load_agent_config(cfg)
    cfg.write_text(text + '[cloud]\nprotocol = "grpcs"\n')
    with pytest.raises(ConfigError, match="key 'protocol'"):
        load_agent_config(cfg)
