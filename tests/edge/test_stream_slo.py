"""A stream's frames admitted by their per-frame SLO: the gate's rule with numbers, and
the pipeline on a clock the test sets, against a server whose answers the test releases
(so queueing behind a slow stage is made, not waited for)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices import load_profile
from devices.errors import ConfigError
from edge.offload import StreamPipeline
from edge.offload._client import InferResult
from edge.offload._slo_gate import LATE, START, WAIT, SloGate
from partition import OFFLOAD, CutCandidate

# -- the rule --------------------------------------------------------------------------


def test_gate_admits_what_finishes_within_the_slo_behind_the_frames_in_flight() -> None:
    g = SloGate(1000.0)
    assert g.decide(0.0, 0.0) == START  # nothing known: explore
    g.started(0, 0.0)
    g.finished(0, 0.3, stage_s=0.2)  # alone: 300 ms
    assert g.alone_s == pytest.approx(0.3)
    g.started(1, 1.0)  # predicted 1.3 (alone)
    # behind frame 1: max(1.0 + 0.3, 1.3 + 0.2 (the stage: no overlap seen yet)) = 1.5
    assert g.predict(1.0) == pytest.approx(1.5)
    assert g.decide(1.0, 1.0) == START
    g.started(2, 1.0)  # predicted 1.5
    g.started(3, 1.0)  # predicted 1.7
    assert g.decide(1.0, 1.0) == START  # 1.9 <= 2.0
    g.started(4, 1.0)  # predicted 1.9
    assert g.decide(1.0, 1.0) == WAIT  # 2.1 > 2.0: a frame in flight must finish first
    assert g.in_flight == 4
    # the slowest stage slowed down: results 600 ms apart
    g.finished(1, 1.4)
    g.finished(2, 2.0)
    assert g.cycle_s == pytest.approx(0.6)
    assert g.alone_s == pytest.approx(0.7 * 0.3 + 0.3 * 0.4)
    # frame 4 is due at 1.9 (overdue at 2.0): a new frame waits for it, a cycle later
    assert g.predict(2.0) == pytest.approx(2.6)
    assert g.decide(2.0, 2.0) == START  # 2.6 <= 3.0
    assert g.decide(2.0, 1.5) == WAIT  # submitted at 1.5: due by 2.5
    g.finished(3, 2.6)
    g.finished(4, 2.7)
    # nothing in flight: a frame that waited too long is late, a fresh one starts
    assert g.decide(2.7, 1.5) == LATE
    assert g.decide(2.7, 2.7) == START


def test_gate_never_drops_when_no_frame_can_meet_the_slo() -> None:
    g = SloGate(100.0)
    g.started(0, 0.0)
    g.finished(0, 0.5)  # alone 500 ms > 100 ms
    assert g.decide(1.0, 0.2) == START  # late, but nothing could make it: it runs
    g.started(1, 1.0)
    # the SLO cannot be met: the gate stands aside and the window is the pipeline's (as
    # choose_stream picks the fastest plan when no plan meets the SLO)
    assert g.decide(1.0, 1.0) == START
    g.finished(1, 1.2)  # a faster frame alone: 0.7 * 0.5 + 0.3 * 0.2 = 0.41 s > 0.1 s still
    assert g.decide(1.2, 1.2) == START


def test_gate_forgets_frames_that_ended_without_a_time() -> None:
    g = SloGate(100.0)
    g.started(0, 0.0)
    g.forget(0)
    assert g.in_flight == 0 and g.alone_s is None
    with pytest.raises(ValueError, match="slo_ms must be > 0"):
        SloGate(0.0)


# -- the pipeline ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class HeldServer:
    """The offload client's interface (``infer``), answering from a real ONNX Runtime
    session of the whole model; each answer is held until the test releases it (a server
    exactly as slow as the test says)."""

    def __init__(self, model: Path, compute_s: float) -> None:
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.compute_s = compute_s
        self.calls: queue.Queue[tuple[int, threading.Event]] = queue.Queue()

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
              **_kw: Any) -> InferResult:
        release = threading.Event()
        self.calls.put((int(_kw["request_id"].split("-")[1]), release))
        assert release.wait(60), "the test never released this answer"
        out = dict(zip([o.name for o in self.sess.get_outputs()], self.sess.run(None, dict(inputs))))
        return InferResult(out, 0.0, 0, 0, None, 1, self.compute_s)

    def next_call(self) -> tuple[int, threading.Event]:
        return self.calls.get(timeout=60)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _pipe(tiny: Path, server: HeldServer, clock: Clock, **kw: Any) -> StreamPipeline:
    cand = CutCandidate("offload", OFFLOAD, ("x",), 0.0, 1.0, 16, 16, cloud_model="tiny")
    return StreamPipeline(tiny.parent, tiny, cand, load_profile("generic-x86"), server, ["y"],
                          clock=clock, intra_op_threads=1, **kw)


def _frame(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 4), i - 3.0, dtype=np.float32)}


def _answer(server: HeldServer, clock: Clock, expect: int, at: float) -> None:
    """Wait for the server to get frame ``expect``, then answer it at time ``at``."""
    seq, release = server.next_call()
    assert seq == expect
    clock.t = at
    release.set()


def _wait_for(pipe: StreamPipeline, seq: int) -> Any:
    res = pipe.result(seq, timeout_s=60)
    assert res is not None, f"frame {seq} never finished"
    return res


def test_frames_that_would_queue_past_the_slo_wait_or_are_dropped_and_counted(tiny: Path) -> None:
    clock, server = Clock(), HeldServer(tiny, compute_s=0.5)
    pipe = _pipe(tiny, server, clock, window=4, queue_size=1, overload="drop_oldest", slo_ms=1000.0)
    pipe.submit(_frame(0))  # t=0: nothing known yet, starts
    _answer(server, clock, 0, at=0.6)  # alone: 600 ms
    assert _wait_for(pipe, 0).latency_ms == pytest.approx(600.0)
    pipe.submit(_frame(1))  # t=0.6: predicted 1.2, due 1.6: starts
    seq, release1 = server.next_call()
    assert seq == 1
    # frame 2 behind frame 1: max(0.6 + 0.6, 1.2 + 0.5 server compute) = 1.7 > 1.6: it may
    # not start while frame 1 is in flight (the window of 4 is not what limits it) ...
    pipe.submit(_frame(2))
    # ... so it is still queued when frame 3 arrives, and drop_oldest drops it
    pipe.submit(_frame(3))
    assert pipe.stats.dropped == 1 and pipe.stats.late == 0
    clock.t = 1.2
    release1.set()
    assert _wait_for(pipe, 1).status == "ok"
    assert _wait_for(pipe, 2).status == "dropped"
    # frame 3 (submitted at 0.6, due 1.6) would finish at 1.8 even alone: late, dropped
    res3 = _wait_for(pipe, 3)
    assert res3.status == "dropped" and "late" in res3.error and "1000 ms SLO" in res3.error
    assert pipe.stats.late == 1 and pipe.stats.dropped == 2
    pipe.submit(_frame(4))  # a fresh frame makes it
    _answer(server, clock, 4, at=1.8)
    res4 = _wait_for(pipe, 4)
    assert res4.status == "ok" and res4.latency_ms <= 1000.0
    np.testing.assert_array_equal(res4.outputs["y"], np.maximum(_frame(4)["x"], 0))
    pipe.close()
    assert pipe.stats.lost == 0 and pipe.stats.submitted == 5


def test_frames_overlap_as_far_as_the_slo_allows(tiny: Path) -> None:
    clock, server = Clock(), HeldServer(tiny, compute_s=0.1)
    pipe = _pipe(tiny, server, clock, window=4, queue_size=4, slo_ms=1000.0)
    pipe.submit(_frame(0))
    _answer(server, clock, 0, at=0.3)  # alone 300 ms, server stage 100 ms
    _wait_for(pipe, 0)
    for i in range(1, 5):
        pipe.submit(_frame(i))
    # predicted finishes 0.6, 0.7, 0.8, 0.9 (all due by 1.3): the window fills, four
    # cloud legs at once, before any is answered
    legs = [server.next_call() for _ in range(4)]
    assert [s for s, _ in legs] == [1, 2, 3, 4]
    for k, (_, release) in enumerate(legs):
        clock.t = 0.6 + 0.1 * k
        release.set()
        assert _wait_for(pipe, k + 1).status == "ok"
    pipe.close()
    assert pipe.stats.dropped == 0 and pipe.stats.lost == 0


def test_block_runs_a_late_frame_instead_of_dropping_it(tiny: Path) -> None:
    clock, server = Clock(), HeldServer(tiny, compute_s=0.5)
    pipe = _pipe(tiny, server, clock, window=2, queue_size=2, overload="block", slo_ms=1000.0)
    pipe.submit(_frame(0))
    _answer(server, clock, 0, at=0.6)
    _wait_for(pipe, 0)
    pipe.submit(_frame(1))  # starts (due 1.6)
    seq, release1 = server.next_call()
    assert seq == 1
    pipe.submit(_frame(2))  # waits behind frame 1 (1.7 > 1.6)
    clock.t = 1.2
    release1.set()
    _wait_for(pipe, 1)
    # frame 2 would finish at 1.8, after its due time 1.6: block never drops, it runs
    _answer(server, clock, 2, at=1.8)
    res2 = _wait_for(pipe, 2)
    assert res2.status == "ok" and res2.latency_ms == pytest.approx(1200.0)
    pipe.close()
    assert pipe.stats.dropped == 0 and pipe.stats.late == 0 and pipe.stats.lost == 0


def test_stream_slo_must_be_positive(tiny: Path) -> None:
    with pytest.raises(ConfigError, match="slo_ms must be > 0"):
        _pipe(tiny, HeldServer(tiny, 0.1), Clock(), slo_ms=0.0)
