"""Chain segments: each node's model, run one after the other, gives the whole model's
answer; a real three-node chain of ``edgecut serve`` processes with a relaying middle."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from devices import load_profile
from edge.offload import StreamPipeline
from partition import (
    ChainPlan,
    LayerGraph,
    chain_segments,
    device_candidate,
    evaluate_labels,
    segment_models,
    write_chain,
)
from partition._chain import Hop
from tests.partition.test_chain import random_dag

NANO = load_profile("jetson-nano")


def _plan(g: LayerGraph, labels: dict[str, int], k: int) -> ChainPlan:
    ms = [{v: 1.0 for v in g.order}] * k
    hops = [Hop(1e6, 0.01)] * (k - 1)
    cost = evaluate_labels(g, ms, hops, NANO, labels)
    bounds = tuple(g.crossing([v for v in g.order if labels[v] <= j]) for j in range(k - 1))
    return ChainPlan(labels, bounds, cost, "latency", "given")


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_chain(model, g, plan, feeds):  # noqa: ANN001, ANN202
    """Run the segments node by node, carrying what each hop sends (and the outputs)."""
    segs = chain_segments(g, plan)
    models = segment_models(model, g, plan)
    carried = dict(feeds)
    outputs = {}
    for s, (seg, _rest) in zip(segs, models, strict=True):
        assert set(s.receives) <= set(carried)
        here = {t: carried[t] for t in s.receives}
        if seg is not None:
            names = [o.name for o in seg.graph.output]
            made = dict(zip(names, _session(seg).run(names, {t: here[t] for t in s.reads}), strict=True))
        else:
            made = {}
        outputs.update({o: made[o] for o in s.outputs_here})
        carried = {t: made[t] if t in made else here[t] for t in s.sends}
    return outputs


@pytest.mark.parametrize("seed", range(8))
def test_segments_compose_to_the_whole_model(seed: int) -> None:
    model = random_dag(seed, 7)
    g = LayerGraph.from_model(model)
    rng = np.random.default_rng(seed)
    # a random monotone labelling: labels non-decreasing along a topological order
    cuts = sorted(rng.integers(0, len(g.order) + 1, size=2))
    labels = {v: (0 if i < cuts[0] else 1 if i < cuts[1] else 2) for i, v in enumerate(g.order)}
    plan = _plan(g, labels, 3)
    feeds = {"x": rng.standard_normal((1, 16)).astype(np.float32)}
    want = dict(zip([o.name for o in model.graph.output],
                    _session(model).run(None, feeds), strict=True))
    got = _run_chain(model, g, plan, feeds)
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5)
    # every later node's rest model also finishes the job from what it receives
    for s, (_seg, rest) in zip(chain_segments(g, plan), segment_models(model, g, plan), strict=True):
        if s.index == 0 or rest is None:
            continue
        carried = _run_chain_until(model, g, plan, feeds, s.index)
        names = [o.name for o in rest.graph.output]
        out = dict(zip(names, _session(rest).run(names, {t: carried[t] for t in s.receives}), strict=True))
        for k, v in out.items():
            np.testing.assert_allclose(v, want[k], rtol=1e-5, atol=1e-5)


def _run_chain_until(model, g, plan, feeds, j):  # noqa: ANN001, ANN202
    segs = chain_segments(g, plan)
    models = segment_models(model, g, plan)
    carried = dict(feeds)
    for s, (seg, _rest) in zip(segs[:j], models[:j], strict=True):
        made = {}
        if seg is not None:
            names = [o.name for o in seg.graph.output]
            made = dict(zip(names, _session(seg).run(names, {t: carried[t] for t in s.reads}), strict=True))
        carried = {t: made[t] if t in made else carried[t] for t in s.sends}
    return carried


def _squeezenet_in_thirds(zoo_model):  # noqa: ANN001, ANN202
    """squeezenet's layers in topological order, a third on each of three nodes."""
    model = onnx.load(str(zoo_model("squeezenet")))
    g = LayerGraph.from_model(model)
    n = len(g.order)
    labels = {v: (0 if i < n // 3 else 1 if i < 2 * n // 3 else 2) for i, v in enumerate(g.order)}
    return model, g, _plan(g, labels, 3)


def test_three_node_chain_of_real_servers_with_a_relay(tmp_path, zoo_model) -> None:  # noqa: ANN001
    """Device head -> edge node (segment, relays) -> cloud (the rest); the cloud killed:
    the edge node finishes the model itself; the answers equal the whole model's."""
    from edge.lab._replay import CloudServer
    from edge.offload import OffloadClient
    from tests.conftest import free_port

    model, g, plan = _squeezenet_in_thirds(zoo_model)
    cloud_port = free_port()
    folders = write_chain(g.model, g, plan, "sq", ["device", "edge", "cloud"], tmp_path,
                          next_urls={"edge": f"http://127.0.0.1:{cloud_port}"})
    assert (folders["device"] / "head.onnx").is_file()
    assert (folders["edge"] / "repository/sq.seg1/1/segment.onnx").is_file()
    assert "relay_next_url" in (folders["edge"] / "repository/sq.seg1/config.pbtxt").read_text()
    rng = np.random.default_rng(0)
    feeds = {"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    want = _session(model).run(None, feeds)[0]
    head = ort.InferenceSession(str(folders["device"] / "head.onnx"), providers=["CPUExecutionProvider"])
    segs = chain_segments(g, plan)
    names = [o.name for o in head.get_outputs()]
    crossing = dict(zip(names, head.run(names, feeds), strict=True))
    send = {t: crossing.get(t, feeds.get(t)) for t in segs[0].sends}
    cloud = CloudServer(folders["cloud"] / "repository", port=cloud_port).start()
    try:
        with CloudServer(folders["edge"] / "repository") as edge, OffloadClient(edge.url) as client:
            res = client.infer("sq.seg1", send, ["softmaxout_1"])
            np.testing.assert_allclose(res.outputs["softmaxout_1"], want, rtol=1e-4, atol=1e-4)
            cloud.stop()
            res = client.infer("sq.seg1", send, ["softmaxout_1"])
            np.testing.assert_allclose(res.outputs["softmaxout_1"], want, rtol=1e-4, atol=1e-4)
            import httpx

            metrics = httpx.get(f"{edge.url}/metrics").text
            assert 'edgecut_relay_requests_total{model="sq.seg1",outcome="forwarded"} 1.0' in metrics
            assert 'edgecut_relay_requests_total{model="sq.seg1",outcome="finished_here"} 1.0' in metrics
            # the device's side of the plan, through the stream pipeline: answered by the
            # chain, then (the edge node gone too) finished on the device from its cut
            cand = device_candidate(g, plan, "sq")
            assert cand.kind == "split" and cand.cloud_model == "sq.seg1"
            whole = tmp_path / "whole.onnx"
            onnx.save(g.model, str(whole))
            pipe = StreamPipeline(folders["device"], whole, cand, NANO, client, ["softmaxout_1"],
                                  window=2, intra_op_threads=1)
            first = pipe.result(pipe.submit(feeds), timeout_s=60)
            edge.kill()
            second = pipe.result(pipe.submit(feeds), timeout_s=60)
            pipe.close()
            assert first is not None and first.status == "ok"
            assert second is not None and second.status == "fallback"
            for r in (first, second):
                np.testing.assert_allclose(r.outputs["softmaxout_1"], want, rtol=1e-4, atol=1e-4)
            assert pipe.stats.lost == 0
    finally:
        cloud.stop()


def test_relay_remembers_a_dead_next_hop_until_its_breaker_resets(tmp_path, zoo_model) -> None:  # noqa: ANN001
    """Edge node (relaying) and cloud as real edgecut serve processes, the relay's breaker
    opening after 1 failure for 5 s: the cloud killed, the first request tries it and the
    edge finishes itself; the requests after it, until the reset, do not try it
    (``next_hop_down``); the cloud started again, a request after the reset forwards again.
    Every answer equals the whole model's. (Times here are only lower bounds: a request
    that tried the cloud after the failure must have ended at least the reset later.)"""
    import time

    import httpx

    from edge.lab._replay import CloudServer
    from edge.offload import OffloadClient
    from tests.conftest import free_port

    model, g, plan = _squeezenet_in_thirds(zoo_model)
    cloud_port, reset_s = free_port(), 5.0
    folders = write_chain(g.model, g, plan, "sq", ["device", "edge", "cloud"], tmp_path,
                          next_urls={"edge": f"http://127.0.0.1:{cloud_port}"},
                          relay_breaker_failures=1, relay_breaker_reset_s=reset_s)
    config = (folders["edge"] / "repository/sq.seg1/config.pbtxt").read_text()
    assert 'key: "relay_breaker_failures" value: { string_value: "1" }' in config
    rng = np.random.default_rng(0)
    feeds = {"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    want = _session(model).run(None, feeds)[0]
    head = ort.InferenceSession(str(folders["device"] / "head.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in head.get_outputs()]
    crossing = dict(zip(names, head.run(names, feeds)))
    send = {t: crossing.get(t, feeds.get(t)) for t in chain_segments(g, plan)[0].sends}
    cloud = CloudServer(folders["cloud"] / "repository", port=cloud_port).start()
    try:
        with CloudServer(folders["edge"] / "repository") as edge, OffloadClient(edge.url) as client:
            seen = {"forwarded": 0.0, "finished_here": 0.0, "next_hop_down": 0.0}

            def outcome() -> str:
                """Ask the edge for one answer; which relay outcome it counted."""
                res = client.infer("sq.seg1", send, ["softmaxout_1"])
                np.testing.assert_allclose(res.outputs["softmaxout_1"], want, rtol=1e-4, atol=1e-4)
                text = httpx.get(f"{edge.url}/metrics").text
                now = {k: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith("edgecut_relay_requests_total{")
                              and f'outcome="{k}"' in line) for k in seen}
                moved = [k for k in seen if now[k] != seen[k]]
                assert len(moved) == 1 and now[moved[0]] == seen[moved[0]] + 1, (seen, now)
                seen.update(now)
                return moved[0]

            assert outcome() == "forwarded"
            cloud.kill()
            t_fail = time.monotonic()
            assert outcome() == "finished_here"  # tried, failed: the breaker opens
            dead = [(outcome(), time.monotonic() - t_fail) for _ in range(2)]
            # the cloud back: poll until a request forwards again (after the reset)
            cloud.start()
            back = []
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:
                back.append((outcome(), time.monotonic() - t_fail))
                if back[-1][0] == "forwarded":
                    break
            assert back[-1][0] == "forwarded", back
            # a request that ended within the reset of the failure cannot have tried the
            # cloud: it was finished on the edge without a try (next_hop_down) ...
            for got, ended in dead + back:
                if ended < reset_s:
                    assert got == "next_hop_down", (dead, back)
            # ... a try while the cloud was still dead fails (finished_here), one once it is
            # back forwards, and the first forward came no sooner than the reset
            assert all(got in ("next_hop_down", "finished_here") for got, _ in dead), dead
            assert all(got == "next_hop_down" for got, _ in back[:-1]), back
            assert back[-1][1] >= reset_s, back
    finally:
        cloud.stop()
