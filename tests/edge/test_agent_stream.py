"""The agent's stream entry point through ``edge.Client.stream``, with a real cloud."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud import InferenceService, ServerThread, create_app
from devices import load_profile
from edge import Client
from edge.agent._api import AgentServer
from edge.agent._daemon import Agent
from partition import build_plan
from tests.conftest import free_port
from tests.edge.conftest import tiny_model, write_agent_config


@pytest.fixture(scope="module")
def squeezenet_plan(tmp_path_factory, zoo_model) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("plan")
    build_plan(zoo_model("squeezenet"), load_profile("generic-arm"), "here", 1e9, 0.001,
               out_dir=out, runs=3, measure=2, measure_runs=3, figure=False, threads=1)
    return out


def test_client_stream_through_the_agent_in_order_with_the_local_answer(
        tmp_path: Path, squeezenet_plan: Path) -> None:
    service = InferenceService(squeezenet_plan / "repository", intra_op_threads=1)
    service.load_all()
    port = free_port()
    cloud = ServerThread(create_app(service), port=port).start()
    policy = tmp_path / "policy.toml"
    policy.write_text('objective = "latency"\nslo_ms = 5000.0\n'
                      "[link]\nprior_bandwidth_mbps = 1000.0\nprior_rtt_ms = 1.0\n")
    model_path = Path(json.loads((squeezenet_plan / "plan.json").read_text())["model_path"])
    cfg = write_agent_config(
        tmp_path, workers=1, models={"squeezenet": model_path}, profile="generic-arm",
        plans={"squeezenet": squeezenet_plan / "plan.json"}, api_port=free_port(),
        extra=f'[cloud]\nurl = "http://127.0.0.1:{port}"\n[policy]\nfile = "{policy}"\n')
    agent = Agent(cfg)
    rng = np.random.default_rng(0)
    frames = [{"data_0": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(8)]
    expected = [agent.slots["squeezenet"].current.session.run(f) for f in frames]
    try:
        with AgentServer(agent) as server, Client(server.url) as client:
            assert client.ready("squeezenet.stream")
            got = list(client.stream("squeezenet", iter(frames), window=3))
            assert [g.seq for g in got] == list(range(8))
            # the agent holds frames back rather than dropping them: every answer is right
            assert [g.status for g in got] == ["ok"] * 8, [g.error for g in got]
            for g, want in zip(got, expected):
                name = next(iter(want))
                np.testing.assert_allclose(g.outputs[name], want[name], rtol=1e-3, atol=1e-5)
            stats = agent.telemetry()["streams"]["squeezenet"]
            assert stats["submitted"] == 8 and stats["dropped"] == 0
            # the cloud goes away mid-stream: frames finish on the device, none lost
            cloud.stop()
            later = list(client.stream("squeezenet", iter(frames[:4]), window=2))
            assert [g.status for g in later] == ["ok"] * 4
            for g, want in zip(later, expected[:4]):
                name = next(iter(want))
                np.testing.assert_allclose(g.outputs[name], want[name], rtol=1e-3, atol=1e-5)
    finally:
        cloud.stop()
        agent.close()
        service.close()


def test_a_model_without_a_plan_streams_frame_by_frame(tmp_path: Path) -> None:
    cfg = write_agent_config(tmp_path, models={"tiny": tiny_model(tmp_path / "t.onnx")},
                             api_port=free_port())
    agent = Agent(cfg)
    xs = [{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(5)]
    with AgentServer(agent) as server, Client(server.url) as client:
        got = list(client.stream("tiny", xs, window=2))
        assert [g.seq for g in got] == list(range(5))
        for g, x in zip(got, xs):
            assert g.status == "ok"
            np.testing.assert_array_equal(g.outputs["y"], x["x"] * 2)
        with pytest.raises(ValueError, match="window"):
            list(client.stream("tiny", xs, window=0))
        bad = list(client.stream("tiny", [{"x": np.zeros((1, 4), np.float64)}]))
        assert bad[0].status == "error" and "x" in bad[0].error
        # a live source faster than the stream: the client keeps the newest frame and
        # reports every other one dropped, in its place
        def camera():  # noqa: ANN202
            for i in range(30):
                yield {"x": np.full((1, 4), i, dtype=np.float32)}

        got = list(client.stream("tiny", camera(), window=1, overload="drop_oldest"))
        assert [g.seq for g in got] == list(range(30))
        ok = [g for g in got if g.status == "ok"]
        assert all(g.status in ("ok", "dropped") for g in got)
        assert got[-1].status == "ok"  # the newest frame is never the one dropped
        assert sum(g.status == "dropped" for g in got) >= 1
        for g in ok:
            np.testing.assert_array_equal(g.outputs["y"], np.full((1, 4), 2.0 * g.seq, np.float32))
        with pytest.raises(ValueError, match="overload"):
            list(client.stream("tiny", xs, overload="newest"))
    agent.close()


def test_grpc_model_stream_infer_runs_the_pipeline(tmp_path: Path, squeezenet_plan: Path) -> None:
    """Triton's ModelStreamInfer (tritonclient.grpc, unmodified) to ``<model>.stream`` on
    the agent: frames go through the stream pipeline and come back in order."""
    import queue

    import tritonclient.grpc as tg

    service = InferenceService(squeezenet_plan / "repository", intra_op_threads=1)
    service.load_all()
    port = free_port()
    cloud = ServerThread(create_app(service), port=port).start()
    policy = tmp_path / "policy.toml"
    policy.write_text('objective = "latency"\nslo_ms = 5000.0\n'
                      "[link]\nprior_bandwidth_mbps = 1000.0\nprior_rtt_ms = 1.0\n")
    model_path = Path(json.loads((squeezenet_plan / "plan.json").read_text())["model_path"])
    cfg = write_agent_config(
        tmp_path, workers=1, models={"squeezenet": model_path}, profile="generic-arm",
        plans={"squeezenet": squeezenet_plan / "plan.json"}, api_port=free_port(),
        extra=f'[cloud]\nurl = "http://127.0.0.1:{port}"\n[policy]\nfile = "{policy}"\n')
    cfg.write_text(cfg.read_text().replace("[api]\n", f"[api]\ngrpc_port = {free_port()}\n"))
    agent = Agent(cfg)
    rng = np.random.default_rng(1)
    frames = [rng.standard_normal((1, 3, 224, 224), dtype=np.float32) for _ in range(6)]
    expected = [agent.slots["squeezenet"].current.session.run({"data_0": f}) for f in frames]
    answers: queue.Queue = queue.Queue()
    try:
        with AgentServer(agent) as server:
            client = tg.InferenceServerClient(server.grpc_target)
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            try:
                for i, f in enumerate(frames):
                    item = tg.InferInput("data_0", list(f.shape), "FP32")
                    item.set_data_from_numpy(f)
                    client.async_stream_infer("squeezenet.stream", [item], request_id=str(i))
                got = [answers.get(timeout=120) for _ in frames]
            finally:
                client.stop_stream()
                client.close()
        assert [e for _r, e in got if e is not None] == []
        assert [r.get_response().id for r, _e in got] == [str(i) for i in range(6)]
        for (result, _e), want in zip(got, expected):
            name = next(iter(want))
            np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=1e-3, atol=1e-5)
        assert agent.telemetry()["streams"]["squeezenet"]["submitted"] == 6
    finally:
        cloud.stop()
        agent.close()
        service.close()
