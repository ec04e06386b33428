"""The agent with a plan and a cloud: requests go through the policy and the executor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud import InferenceService, ServerThread, create_app
from devices import load_profile
from edge.agent._daemon import Agent
from partition import build_plan
from tests.conftest import free_port
from tests.edge.conftest import write_agent_config


@pytest.fixture(scope="module")
def squeezenet_plan(tmp_path_factory, zoo_model) -> Path:
    out = tmp_path_factory.mktemp("plan")
    # A board four times slower than this host (generic-arm) and a fast link: offloading
    # squeezenet wins, so the executor's cloud path is exercised.
    build_plan(zoo_model("squeezenet"), load_profile("generic-arm"), "here", 1e9, 0.001,
               out_dir=out, runs=3, measure=2, measure_runs=3, figure=False, threads=1)
    return out


def _cloud_and_agent(tmp_path: Path, plan_dir: Path, policy_text: str, *,
                     workers: int = 2, api_extra: str = ""
                     ) -> tuple[InferenceService, ServerThread, Agent]:
    """A real cloud service for the plan's tails and an agent planned against it."""
    service = InferenceService(plan_dir / "repository", intra_op_threads=1)
    service.load_all()
    port = free_port()
    cloud = ServerThread(create_app(service), port=port).start()
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    cfg = write_agent_config(
        tmp_path, workers=workers, models={"squeezenet": Path(json.loads(
            (plan_dir / "plan.json").read_text())["model_path"])},
        profile="generic-arm", plans={"squeezenet": plan_dir / "plan.json"},
        extra=f'[cloud]\nurl = "http://127.0.0.1:{port}"\n[policy]\nfile = "{policy}"\n')
    if api_extra:
        cfg.write_text(cfg.read_text().replace(f"workers = {workers}",
                                               f"workers = {workers}\n{api_extra}"))
    return service, cloud, Agent(cfg)


def test_requests_follow_the_policy_and_fall_back_when_the_cloud_goes(
        tmp_path: Path, squeezenet_plan: Path) -> None:
    # max_power_w = 3 W rules out running the whole model on the board (5 W active), so
    # every request is planned remotely and a dead cloud must be caught by the fallback.
    service, cloud, agent = _cloud_and_agent(
        tmp_path, squeezenet_plan,
        "objective = \"latency\"\nslo_ms = 2000.0\n"
        "[link]\nprior_bandwidth_mbps = 1000.0\nprior_rtt_ms = 1.0\n"
        "[rules]\nmax_power_w = 3.0\n[explore]\nrate = 0.0\n[offload]\nbreaker_failures = 2\n")
    try:
        x = {"data_0": np.random.default_rng(0).standard_normal((1, 3, 224, 224),
                                                               dtype=np.float32)}
        expected = agent.slots["squeezenet"].current.session.run(x)
        for _ in range(5):
            out = agent.infer("squeezenet", x)
            name = next(iter(out))
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-5)
        record = agent.telemetry()
        remote = sum(n for plan, n in record["decisions"].items() if plan != "local")
        assert remote == 5, record["decisions"]
        assert record["link"] is not None and record["link"]["samples"] >= 1
        assert record["plans"]["squeezenet"]["active"] is True

        cloud.stop()  # the cloud goes away: no request may fail
        for _ in range(6):
            out = agent.infer("squeezenet", x)
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-5)
        record = agent.telemetry()
        assert record["fallbacks"] >= 1
        assert record["models"]["squeezenet"]["errors"] == 0
        assert record["models"]["squeezenet"]["requests"] == 6

        # The fleet turns offloading off: the model runs on the device, no executor left.
        agent.apply_config({"id": "c", "version": "local-only", "config": {"cloud": {"url": ""}}})
        assert agent.executors == {}
        agent.infer("squeezenet", x)
        assert agent.telemetry()["decisions"] == {"local": 1}
    finally:
        agent.close()
        service.close()


@pytest.mark.parametrize("rules, where", [
    # The whole model on the board is ruled out: every request waits on the cloud, so it
    # runs on the model's worker thread.
    ("max_power_w = 3.0", "worker"),
    # Inputs under 10 MB stay on the device: short local runs on the API's event loop.
    ("local_below_input_bytes = 10000000", "loop"),
])
def test_one_worker_runs_local_decisions_inline_and_remote_ones_on_the_worker(
        tmp_path: Path, squeezenet_plan: Path, rules: str, where: str) -> None:
    import threading

    from edge import Client
    from edge.agent._daemon import AgentServer

    service, cloud, agent = _cloud_and_agent(
        tmp_path, squeezenet_plan,
        "objective = \"latency\"\nslo_ms = 5000.0\n"
        "[link]\nprior_bandwidth_mbps = 1000.0\nprior_rtt_ms = 1.0\n"
        f"[rules]\n{rules}\n[explore]\nrate = 0.0\n",
        workers=1, api_extra="inline_max_ms = 5000")
    executor = agent.executors["squeezenet"].executor
    ran: list[tuple[str, str]] = []
    executor.listeners.append(
        lambda out: ran.append((out.decision.plan, threading.current_thread().name)))
    try:
        x = {"data_0": np.random.default_rng(1).standard_normal((1, 3, 224, 224),
                                                               dtype=np.float32)}
        expected = agent.slots["squeezenet"].current.session.run(x)
        name = next(iter(expected))
        with AgentServer(agent) as server, Client(server.url) as client:
            for _ in range(4):
                out = client.infer("squeezenet", x)
                np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-5)
        assert len(ran) == 4  # one decision and one run per request
        plans = {plan for plan, _ in ran}
        threads = {thread for _, thread in ran}
        if where == "loop":
            assert plans == {"local"} and threads == {"agent-api"}
        else:
            assert "local" not in plans
            assert all(t.startswith("edgecut-squeezenet") for t in threads), threads
        assert agent.stats.total_requests == 4
    finally:
        agent.close()
        cloud.stop()
        service.close()


class _FaultCloud:
    """A real HTTP server on 127.0.0.1 that fails the way a test asks: health checks
    answer 200; every inference request is counted, then answered 503 (``mode = "503"``)
    or held until the test ends (``mode = "hold"``)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.mode = "503"
        self.posts = 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._answer(200)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.posts += 1
                if outer.mode == "hold":
                    outer.release.wait(60)
                self._answer(503)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_the_offload_keys_of_policy_toml_work_in_the_agent(
        tmp_path: Path, squeezenet_plan: Path) -> None:
    """[offload] max_retries, breaker_failures, breaker_reset_s and timeout_ms govern the
    agent's cloud calls, and follow a policy pushed over the fleet link."""

    fault = _FaultCloud()
    policy = tmp_path / "policy.toml"
    # Local is ruled out (3 W) and nothing explores, probes or races: every request makes
    # exactly the cloud calls the [offload] keys allow, then finishes on the device.
    base = ("objective = \"latency\"\n[link]\nprior_bandwidth_mbps = 1000.0\nprior_rtt_ms = 1.0\n"
            "[rules]\nmax_power_w = 3.0\n[explore]\nrate = 0.0\nprobe_budget_kib = 0.0\n"
            "lookahead_probe = false\n")
    policy.write_text(base + "[offload]\nrace = false\nmax_retries = 2\nbreaker_failures = 2\n"
                      "breaker_reset_s = 600.0\n")
    cfg = write_agent_config(
        tmp_path, models={"squeezenet": Path(json.loads(
            (squeezenet_plan / "plan.json").read_text())["model_path"])},
        profile="generic-arm", plans={"squeezenet": squeezenet_plan / "plan.json"},
        extra=f'[cloud]\nurl = "{fault.url}"\n[policy]\nfile = "{policy}"\n')
    agent = Agent(cfg)
    try:
        x = {"data_0": np.random.default_rng(2).standard_normal((1, 3, 224, 224),
                                                               dtype=np.float32)}
        expected = agent.slots["squeezenet"].current.session.run(x)
        name = next(iter(expected))

        def run() -> None:
            out = agent.infer("squeezenet", x)  # every request still gets its answer
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-5)

        run()
        assert fault.posts == 3  # one call and max_retries = 2 more
        run()
        assert fault.posts == 6  # a second failed call: breaker_failures = 2 opens it
        run()
        assert fault.posts == 6  # open for breaker_reset_s: nothing is sent
        record = agent.telemetry()
        # Two calls failed and fell back; with the circuit open the third was planned local.
        assert record["fallbacks"] == 2 and record["decisions"].get("local") == 1

        # The fleet pushes a policy: a short timeout, no retries, the breaker tried again
        # at once. The next call is cut off at timeout_ms, not at the default 10 s.
        fault.mode = "hold"
        agent.apply_config({"id": "p", "version": "short-timeout", "policy": {
            "objective": "latency", "link": {"prior_bandwidth_mbps": 1000.0,
                                             "prior_rtt_ms": 1.0},
            "rules": {"max_power_w": 3.0},
            "explore": {"rate": 0.0, "probe_budget_kib": 0.0, "lookahead_probe": False},
            "offload": {"race": False, "max_retries": 0, "breaker_failures": 5,
                        "breaker_reset_s": 0.0, "timeout_ms": 300.0}}})
        outcomes: list = []
        agent.executors["squeezenet"].executor.listeners.append(outcomes.append)
        run()
        assert fault.posts == 7  # one call, no retry
        # The held call was cut off at timeout_ms (0.3 s), not at the default 10 s.
        (out,) = outcomes
        assert out.fallback.startswith("DeadlineExceeded") and out.cloud_ms < 5000.0
        client = agent.executors["squeezenet"].client
        assert (client.timeout_s, client.max_retries) == (0.3, 0)
        assert (client.breaker.failure_threshold, client.breaker.reset_timeout_s) == (5, 0.0)
    finally:
        agent.close()
        fault.close()


def test_the_cloud_timeout_is_one_key_in_policy_toml(tmp_path: Path) -> None:
    from devices.errors import ConfigError
    from edge.agent._config import parse_agent_config

    with pytest.raises(ConfigError, match=r"\[cloud\]: key 'timeout_s' moved.*\[offload\] "
                                          "timeout_ms"):
        parse_agent_config({"agent": {"device_id": "d", "data_dir": str(tmp_path)},
                            "cloud": {"url": "http://127.0.0.1:1", "timeout_s": 2.0}}, "a.toml")
