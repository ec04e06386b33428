"""A request's own input size, in what the agent learns and in what it plans at.

* Every path that measures a request (local, a split's head, a plain cloud leg, both legs
  of a race, the fallback) folds its times into the cost table at the plan's reference
  size, divided by the one factor ``_sizing.RequestScale`` gives for that request.
* The input sizes the agent's requests ran at are counted (``edge.agent._seen``) and
  are the sizes a new version's plan is profiled at.

The model is PP-OCR's trained direction classifier (``[N, 3, 48, W]``, from the
rapidocr wheel), run by ONNX Runtime, its tails served by a real cloud on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices import DeviceProfile
from devices.errors import EdgecutError
from edge.agent._daemon import Agent
from edge.agent._seen import MAX_POINTS, SizeHistogram, profiling_points, shape_key
from edge.lab._server import CloudServer
from edge.offload._client import OffloadClient
from edge.offload._executor import Executor
from edge.offload._sizing import UNSCALED, RequestScale
from edge.policy import CostTable, Policy, policy_config_from_text
from partition import LOCAL, OFFLOAD, SPLIT, Plan, build_plan, input_dims, load_model, zoo
from tests.conftest import free_port
from tests.edge.conftest import profile_variant, write_agent_config

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = {"H": 48, "W": 192}
# Twice the reference width: every factor is 2 under the proportional curves below.
WIDE = (1, 3, 48, 384)


def test_request_scale_factors() -> None:
    scale = RequestScale({"local": (4.0, 1.0, 0, 0), "offload": (1.0, 3.5, 10, 2),
                          "odd": (0.0, -1.0, 0, 0)}, "local")
    assert scale.local() == 4.0 and scale.head("local") == 4.0
    assert scale.tail("offload") == 3.5 and scale.head("offload") == 1.0
    # A cut the request has no factor for, or a factor that is not positive: unscaled.
    assert scale.tail("unknown") == 1.0 and scale.head("odd") == 1.0 and scale.tail("odd") == 1.0
    assert UNSCALED.local() == 1.0 and UNSCALED.tail("offload") == 1.0


@pytest.fixture(scope="module")
def slow_board(tmp_path_factory: pytest.TempPathFactory) -> DeviceProfile:
    """This host 1,000x slower (the slowest a profile may say): a raced request's device
    leg answers long after the cloud on 127.0.0.1 has (it waits for its emulated time,
    and a cloud answer ends the wait), so the cloud wins the race."""
    return profile_variant(tmp_path_factory.mktemp("profile"), "generic-x86", "slow-x86",
                           relative_speed="0.001")


@pytest.fixture(scope="module")
def sized_plan(slow_board: DeviceProfile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The classifier planned at widths 192 (reference), 96 and 384, then its cost curves
    made proportional to the input's element count: a request at twice the reference
    width then has every factor exactly 2, whatever this host's timings were (the test
    is of where the factors are applied, not of the profile)."""
    out = tmp_path_factory.mktemp("sized")
    build_plan(zoo.trained_model("ppocr_cls"), slow_board, "here", 20e6, 0.02, keep=1,
               runs=2, measure=0, threads=1, figure=False, out_dir=out,
               shapes=[REFERENCE, {"H": 48, "W": 96}, {"H": 48, "W": 384}])
    doc = json.loads((out / "plan.json").read_text())
    for c in doc["candidates"]:
        rows = c["extra"]["by_size"]
        ref = rows[0]
        assert ref["sizes"] == {"N": 1, **REFERENCE}
        for r in rows:
            r["head_ms"] = ref["head_ms"] * r["elements"] / ref["elements"]
            r["tail_ms"] = ref["tail_ms"] * r["elements"] / ref["elements"]
    (out / "plan.json").write_text(json.dumps(doc))
    return out


class _Recording(Executor):
    """The executor, noting each local run's (model file, ms) as it measured them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.runs: list[tuple[str, float]] = []
        super().__init__(*args, **kwargs)

    def _run_local(self, path: Path, feeds: Any) -> tuple[dict, float]:
        out, ms = super()._run_local(path, feeds)
        self.runs.append((Path(path).name, ms))
        return out, ms


def _state(table: CostTable) -> tuple:
    """What the table has learnt (its factors, residuals and held samples)."""
    return (round(table.device_factor, 9), round(table.cloud_factor, 9),
            {k: round(v, 9) for k, v in table._head_r.items()},
            {k: round(v, 9) for k, v in table._tail_r.items()},
            {k: round(v, 9) for k, v in table._held.items()},
            {c.cut_id: c.samples for c in table.snapshot(0.0)})


@pytest.mark.parametrize("path", ["local", "split", "offload", "offload raced",
                                  "offload, cloud down"])
def test_every_path_learns_a_wide_request_at_the_reference_size(
        sized_plan: Path, slow_board: DeviceProfile, path: str) -> None:
    """A request at twice the reference width, on each path that measures it: the cost
    table ends as a table fed the request's times halved (its factor at that size)."""
    plan = Plan.load(sized_plan / "plan.json")
    split = next(c for c in plan.candidates if c.kind == SPLIT)
    force = {"local": LOCAL, "split": split.cut_id}.get(path, OFFLOAD)
    cfg = policy_config_from_text("slo_ms = 0\n[offload]\nrace_cloud_span = 10\n")
    feeds = {"x": np.random.default_rng(1).standard_normal(WIDE).astype(np.float32)}
    with CloudServer(sized_plan / "repository") as srv:
        url = f"http://127.0.0.1:{free_port()}" if path.endswith("down") else srv.url
        with OffloadClient(url, max_retries=0) as client:
            ex = _Recording(plan, sized_plan, slow_board, policy=Policy(cfg), client=client,
                            background_probes=False,
                            compute_scale=1.0 / slow_board.relative_speed)
            scale = ex._sizing.scale(feeds)
            assert scale.local() == pytest.approx(2.0)
            assert scale.head(split.cut_id) == pytest.approx(2.0)
            assert scale.tail(OFFLOAD) == pytest.approx(2.0)
            want = CostTable(plan, ewma=cfg.learning.ewma, raw_inputs=ex.input_names)
            before = _state(ex.costs)
            assert before == _state(want)
            decided = ex.decide(feeds, force=force)
            if path.endswith("raced"):
                decided = decided._replace(decision=replace(decided.decision, race=True))
            out = ex.infer(feeds, decided=decided)
            ex.close()  # a raced device leg has finished and been folded in
    expected = ex._session_for(ex.model_path).run(feeds)
    for k, v in expected.items():
        np.testing.assert_allclose(out.outputs[k], v, rtol=1e-4, atol=1e-5)
    whole = ex.model_path.name
    if path == "local":
        assert out.executed == "local"
        want.observe_local_full(ex.runs[0][1] / 2.0)
    elif path == "split":
        assert out.fallback == "" and ex.runs[0][0] == split.head_model
        want.observe(split.cut_id, head_ms=ex.runs[0][1] / 2.0)
        want.observe(split.cut_id, tail_ms=ex.server_compute_s[split.cut_id] * 1000.0 / 2.0)
    elif path == "offload":
        assert out.fallback == "" and out.raced == "" and ex.runs == []
        want.observe(OFFLOAD, tail_ms=ex.server_compute_s[OFFLOAD] * 1000.0 / 2.0)
    elif path == "offload raced":
        assert out.raced == "cloud" and [r[0] for r in ex.runs] == [whole]
        want.observe(OFFLOAD, tail_ms=ex.server_compute_s[OFFLOAD] * 1000.0 / 2.0)
        want.observe_local_full(ex.runs[0][1] / 2.0)
    else:  # the cloud is down: the whole model runs here
        assert out.fallback and out.executed == "local (fallback)"
        assert [r[0] for r in ex.runs] == [whole]
        want.observe_local_full(ex.runs[0][1] / 2.0)
    got = _state(ex.costs)
    assert got != before  # the request was learnt from
    assert got == _state(want)


# -- sizes the agent has seen ----------------------------------------------------------

def test_the_histogram_keeps_the_most_counted_sizes_in_fixed_memory() -> None:
    h = SizeHistogram(capacity=4)
    # Width 320 in every other request, among 60 sizes seen once each: a size counted
    # more than total / capacity times keeps its place (space-saving's guarantee), and
    # its count is never under its true one.
    for i in range(60):
        assert h.record({"x": np.array([1, 3, 48, 1000 + i]).tolist()})
        if i % 2 == 0:
            assert h.record({"x": (1, 3, 48, 320)})
    assert len(h) == 4
    top = h.top(4)
    assert top[0][0] == {"x": (1, 3, 48, 320)} and top[0][1] >= 30
    # numpy's integers count; anything not a well-formed shape does not.
    count = top[0][1]
    assert h.record({"x": tuple(np.int64(d) for d in (1, 3, 48, 320))})
    assert h.top(1)[0][1] == count + 1
    for bad in ({"x": (1, 3, 48, 0)}, {"x": (1, 3, 48.0, 320)}, {"x": (True, 3)},
                {"x": "1x3"}, {"x": (1,) * 9}, {"x": (1, 3, 1 << 20, 2)}, {1: (1, 2)}, {},
                ["x"]):
        assert not h.record(bad), bad
        assert shape_key(bad) is None
    assert len(h) == 4 and h.top(1)[0][1] == count + 1
    with pytest.raises(ValueError, match="capacity"):
        SizeHistogram(0)


def test_profiling_points_follow_the_rule_on_a_real_models_inputs() -> None:
    """The recognizer's ``[N, 3, H, W]``: the most counted size first, then the smallest
    and largest seen, then the next most counted, at most ``MAX_POINTS``; the batch is
    never a profiled size."""
    dims, batch = input_dims(load_model(zoo.trained_model("ppocr_rec")))
    assert dims == {"x": ["N", 3, "H", "W"]} and batch == ["N"]
    seen = [{"x": (1, 3, 48, w)} for w in (320, 480, 160, 800, 96, 320)]
    seen.append({"x": (4, 3, 48, 320)})  # another batch of a seen size: the same point
    seen.append({"y": (1, 3, 48, 999)})  # not an input of this model: binds nothing
    points = profiling_points(seen, dims, batch)
    assert points == [{"H": 48, "W": 320}, {"H": 48, "W": 96}, {"H": 48, "W": 800},
                      {"H": 48, "W": 480}]
    assert len(points) == MAX_POINTS
    assert profiling_points(seen[:1], dims, batch) == [{"H": 48, "W": 320}]
    assert profiling_points([{"y": (1, 2)}], dims, batch) == []


def test_a_new_version_is_profiled_at_the_sizes_the_agent_served(
        tmp_path: Path, sized_plan: Path) -> None:
    """Requests through the agent (its plan, a real cloud) at widths 256 (most), 128 and
    512; the next version's plan is profiled at exactly those widths, the most served
    first (its reference), instead of the planner's default points."""
    # The file's stem names the model on the cloud, as the plan's does.
    src = zoo.trained_model("ppocr_cls")
    model = tmp_path / src.name
    shutil.copy(src, model)
    with CloudServer(sized_plan / "repository") as srv:
        cfg = write_agent_config(
            tmp_path, models={"ppocr_cls": model}, plans={"ppocr_cls": sized_plan / "plan.json"},
            extra=f'[cloud]\nurl = "{srv.url}"\n')
        agent = Agent(cfg)
        try:
            rng = np.random.default_rng(0)
            for w, n in ((256, 3), (128, 1), (512, 2)):
                for _ in range(n):
                    x = rng.standard_normal((1, 3, 48, w)).astype(np.float32)
                    agent.infer("ppocr_cls", {"x": x})
            with pytest.raises(EdgecutError, match="rank"):  # not a size that ran: not counted
                agent.infer("ppocr_cls", {"x": np.zeros((1, 3, 48), np.float32)})
            top = agent.seen_sizes["ppocr_cls"].top(8)
            assert [(s["x"], n) for s, n in top] == [((1, 3, 48, 256), 3), ((1, 3, 48, 512), 2),
                                                    ((1, 3, 48, 128), 1)]
            result = agent._repartition("ppocr_cls", agent.slots["ppocr_cls"].current)
        finally:
            agent.close()
    assert result is not None
    want = [{"H": 48, "W": 256}, {"H": 48, "W": 128}, {"H": 48, "W": 512}]
    assert result["profiled_sizes"] == want
    plan = Plan.load(result["plan"])
    assert plan.info["sizes"]["profiled"] == want
    # The new plan's reference is the most served width.
    assert [r["sizes"] for r in plan.candidate(LOCAL).extra["by_size"]] == [
        {"N": 1, **w} for w in want]
