"""An agent offloading to the cloud over gRPC ([cloud] protocol = "grpc"), and its /metrics
read by prometheus_client's parser: decisions by plan, fallbacks, the link estimate, energy
per request and power, beside the Triton family on both sides."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from cloud import InferenceService, ServerThread, create_app
from cloud.grpc import GrpcServer
from edge.agent._daemon import Agent, AgentServer
from tests.conftest import free_port
from tests.edge.conftest import write_agent_config
from tests.edge.test_agent_plan import squeezenet_plan  # noqa: F401  (fixture)

POLICY = ("objective = \"latency\"\nslo_ms = 2000.0\n"
          "[link]\nprior_bandwidth_mbps = 1000.0\nprior_rtt_ms = 1.0\n"
          # 3 W rules out the whole model on the 5 W board: every request is planned remote
          "[rules]\nmax_power_w = 3.0\n[explore]\nrate = 0.0\n[offload]\nbreaker_failures = 2\n")


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_agent_offloads_over_grpc_and_exports_device_metrics(
        tmp_path: Path, squeezenet_plan: Path) -> None:  # noqa: F811
    service = InferenceService(squeezenet_plan / "repository", intra_op_threads=1)
    service.load_all()
    grpc_server = GrpcServer(service, port=0)
    cloud = ServerThread(create_app(service), port=free_port(), companions=[grpc_server]).start()
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    api_port = free_port()
    model = Path(json.loads((squeezenet_plan / "plan.json").read_text())["model_path"])
    cfg = write_agent_config(
        tmp_path, models={"squeezenet": model}, profile="generic-arm", api_port=api_port,
        plans={"squeezenet": squeezenet_plan / "plan.json"},
        extra=f'[cloud]\nurl = "grpc://{grpc_server.target}"\nprotocol = "grpc"\n'
              f'[policy]\nfile = "{policy}"\n')
    agent = Agent(cfg)
    try:
        with AgentServer(agent):
            x = {"data_0": np.random.default_rng(0).standard_normal((1, 3, 224, 224),
                                                                   dtype=np.float32)}
            expected = agent.slots["squeezenet"].current.session.run(x)
            name = next(iter(expected))
            for _ in range(4):
                out = agent.infer("squeezenet", x)
                np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-5)
            # every remote request reached the cloud over gRPC
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                stats = service.statistics()["model_stats"]
                served = sum(s["inference_stats"]["success"]["count"] for s in stats)
                if served >= 4:
                    break
                time.sleep(0.05)
            assert served >= 4  # (and the executor's link probes, when it sent any)
            before = _samples(httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=10).text)
            cloud.stop()  # the cloud goes: the device answers, and says so
            for _ in range(3):
                out = agent.infer("squeezenet", x)
                np.testing.assert_allclose(out[name], expected[name], rtol=1e-3, atol=1e-5)
            got = _samples(httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=10).text)
    finally:
        cloud.stop()
        service.close()
        agent.close()
    def decided(samples: dict) -> dict[str, float]:
        return {dict(k[1])["plan"]: v for k, v in samples.items()
                if k[0] == "edgecut_agent_decisions_total"}

    # all four planned remote while the cloud was up; seven in all (once the breaker
    # opens after the cloud went, the policy may plan local)
    assert sum(decided(before).values()) == 4 and "local" not in decided(before)
    assert sum(decided(got).values()) == 7, decided(got)
    m = (("model", "squeezenet"),)
    assert got[("edgecut_agent_fallbacks_total", m)] >= 1
    assert got.get(("edgecut_agent_errors_total", m), 0) == 0
    assert got[("edgecut_agent_energy_millijoules_total", m)] > 0
    per_request = got[("edgecut_agent_energy_per_request_millijoules", m)]
    assert per_request == got[("edgecut_agent_energy_millijoules_total", m)] / 7
    assert got[("edgecut_agent_link_bandwidth_bps", m)] > 0
    assert got[("edgecut_agent_link_rtt_seconds", m)] > 0
    if agent._sensor is not None:
        assert [k for k in got if k[0] == "edgecut_agent_power_watts"]
    # and the Triton family of the agent's own service (the local API counts 0 here:
    # the requests above were made in-process)
    assert ("nv_inference_request_success_total", (("model", "squeezenet"),
                                                    ("version", "live"))) in got
