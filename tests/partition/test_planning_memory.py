"""What planning holds in memory at large input sizes, and one rule for times at every size.

Each ONNX Runtime session keeps an arena as large as its working memory at the largest
input it ran, so the planner bounds what it opens at once (``partition._memory``): the
sessions measured together, and the sizes the model is probed at to fit its shapes.
PP-OCR's trained direction classifier (``[N, 3, 48, W]``) is the model throughout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import partition._build as build
import partition._shapes as shapes
from partition import SPLIT, LayerGraph, Splitter, build_plan, load_model, zoo
from partition._planner import candidate_cuts, make_candidates

SIZES = {"H": 48, "W": 192}


@pytest.fixture(scope="module")
def cls_graph() -> LayerGraph:
    return LayerGraph.from_model(load_model(zoo.trained_model("ppocr_cls")), sizes=SIZES)


def test_measuring_opens_fewer_sessions_at_once_when_they_hold_the_budget(
        cls_graph: LayerGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no memory to spare, each candidate's sessions are measured and dropped before
    the next ones open; every candidate is still measured, and its halves still give
    the whole model's outputs."""
    g = cls_graph
    zero = {n: 1.0 for n in g.order}
    splits = [c for c in make_candidates(g, list(candidate_cuts(g)), zero, zero, "fp32")
              if c.kind == SPLIT][:5]
    opened: list[int] = []
    real_open = build._open_block

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - wraps the real one
        runners, diff = real_open(*args, **kwargs)
        opened.append(len(runners))
        return runners, diff

    monkeypatch.setattr(build, "_open_block", counting)
    env = g.env(SIZES, 1)
    full = build.measure_candidates(Splitter(g.model), splits, 1.0, 1, runs=1, sizes=env)
    assert opened == [5]  # the usual block: all five open together
    opened.clear()
    monkeypatch.setattr(build, "MEASURE_BLOCK_BYTES", -1)
    lean = build.measure_candidates(Splitter(g.model), splits, 1.0, 1, runs=1, sizes=env)
    assert opened == [1, 1, 1, 1, 1]
    assert set(lean.times) == set(full.times) == {c.cut_id for c in splits}
    assert all(h > 0 and t > 0 for h, t in lean.times.values())
    assert lean.max_abs_diff < 1e-3


def test_probing_a_large_reference_runs_at_halved_sizes_and_fits_the_same_shapes(
        cls_graph: LayerGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where probing at 3x the reference would run the model on more than
    ``PROBE_MAX_ELEMENTS``, the probes run at half the width (still a multiple of 32; the
    height 48 is not halved: 24 is not), and every tensor's dims come out as the full-size
    probes fit them, none less exact."""
    model = load_model(zoo.trained_model("ppocr_cls"))
    seen: list[int] = []
    real_observe = shapes.observe

    def recording(m, names, envs, skip_failures=False):  # noqa: ANN001, ANN202
        seen.extend(shapes._input_elements(m, e) for e in envs)
        return real_observe(m, names, envs, skip_failures)

    monkeypatch.setattr(shapes, "observe", recording)
    cap = 3 * 48 * 192 * 2  # under the 3x-width probe (3 * 48 * 576), over 3 * 48 * 288
    monkeypatch.setattr(shapes, "PROBE_MAX_ELEMENTS", cap)
    g = LayerGraph.from_model(model, sizes=SIZES)
    assert g.probed and g.shape_method.endswith("+probed")
    # Every probe within the cap (at the full width, 3 x 48 x 576 and 3 x 144 x 192 are not).
    assert max(seen) <= cap
    assert set(g.approximate) == set(cls_graph.approximate)
    for t, info in cls_graph.tensors.items():
        assert g.tensors[t].dims == info.dims, t


def test_times_at_every_profiled_size_follow_one_rule(tmp_path: Path) -> None:
    """With candidates measured at every size, each size's times (the reference's too)
    are the profile's predictions put through one non-decreasing map per side that starts
    at (0, 0): no candidate carries an intercept fitted at the reference only, and a
    candidate predicted to take longer is never given less time."""
    plan = build_plan(zoo.trained_model("ppocr_cls"), "generic-x86", "here", 20e6, 0.02,
                      keep=None, runs=2, measure=3, measure_runs=3, threads=1, figure=False,
                      shapes=[SIZES, {"H": 48, "W": 96}, {"H": 48, "W": 384}])
    assert plan.info["measured"]
    heads, tails = [], []
    for c in plan.candidates:
        ref = c.extra["by_size"][0]
        assert ref["sizes"] == {"N": 1, **SIZES}
        if c.kind == SPLIT:
            heads.append((c.extra["predicted_head_ms"], ref["head_ms"]))
            tails.append((c.extra["predicted_tail_ms"], ref["tail_ms"]))
    assert len(heads) > 3 and len(tails) > 3
    for side in (heads, tails):
        side.sort()
        for (p0, r0), (p1, r1) in zip(side, side[1:]):  # noqa: B905
            assert r1 >= r0 - 1e-9 * max(1.0, r0), (p0, r0, p1, r1)
            if p1 == p0:
                assert r1 == pytest.approx(r0, rel=1e-9)
        # below the smallest measured point the map is a line through (0, 0)
        assert all(r >= 0 for _, r in side)


def test_the_map_from_profile_to_session_times_bends_only_near_its_points() -> None:
    """Hand-computed: the map passes through the measured points, pools points out of
    order, is proportional above the largest, and a tiny tail's session overhead does
    not scale the large ones."""
    from partition._by_size import _calibration

    f = _calibration([(0.3, 1.3), (10.0, 8.0), (20.0, 15.0), (100.0, 90.0)])
    assert f(0.0) == 0.0
    assert f(0.15) == pytest.approx(0.65)
    assert f(0.3) == pytest.approx(1.3)
    assert f(5.0) == pytest.approx(1.3 + 6.7 * 4.7 / 9.7)
    assert f(20.0) == pytest.approx(15.0)
    assert f(60.0) == pytest.approx(15.0 + 75.0 * 40.0 / 80.0)
    assert f(200.0) == pytest.approx(180.0)
    # two points out of order are pooled into their mean
    g = _calibration([(10.0, 12.0), (11.0, 9.0), (50.0, 40.0), (0.0, 3.0), (5.0, float("nan"))])
    assert g(10.5) == pytest.approx(10.5)
    assert g(10.0) <= g(11.0)
    assert g(50.0) == pytest.approx(40.0)
    # nothing measured: the profile as it is
    assert _calibration([])(7.0) == 7.0


def test_measured_splits_reach_every_scale_of_the_candidates_times() -> None:
    """Hand-worked: besides the splits picked for decisions (mid-model and near the end),
    the splits nearest a half, a quarter and an eighth of the whole model's time on each
    measured side are measured, where none picked is within a factor sqrt(2) of it, and
    the split with the least time on each side."""
    from partition import LOCAL, OFFLOAD, CutCandidate
    from partition._build import coverage_picks

    local = CutCandidate(LOCAL, LOCAL, (), 100.0, 0.0, 0, 0)
    offload = CutCandidate(OFFLOAD, OFFLOAD, ("x",), 0.0, 50.0, 1000, 10)
    s1 = CutCandidate("s1", SPLIT, ("a",), 12.0, 45.0, 100, 10)   # near an eighth of 100
    s2 = CutCandidate("s2", SPLIT, ("b",), 26.0, 38.0, 100, 10)   # near a quarter
    s3 = CutCandidate("s3", SPLIT, ("c",), 48.0, 26.0, 100, 10)   # picked: half / half
    s4 = CutCandidate("s4", SPLIT, ("d",), 90.0, 3.0, 100, 10)    # picked
    s5 = CutCandidate("s5", SPLIT, ("e",), 95.0, 1.0, 100, 10)    # picked
    s6 = CutCandidate("s6", SPLIT, ("f",), 93.0, 6.5, 100, 10)    # tail near 50/8 = 6.25
    everything = [local, offload, s1, s2, s3, s4, s5, s6]
    picked = [local, offload, s3, s4, s5]
    # heads: 50 has s3 (48); 25 gets s2; 12.5 gets s1. Tails: 25 has s3 (26); 12.5 has
    # nothing within sqrt(2) (26 and 6.5 are ~2x off); 6.25 gets s6.
    assert coverage_picks(everything, picked, True, True) == [s2, s1, s6]
    assert coverage_picks(everything, picked, False, True) == [s6]
    assert coverage_picks(everything, picked, True, False) == [s2, s1]
    assert coverage_picks(everything, [*picked, s1, s2, s6], True, True) == []
    # no split near a target: nothing added for it, but the least head is measured
    assert coverage_picks([local, offload, s4, s5], [local, offload, s5], True, False) == [s4]
    # the split with the least time on a side, below the eighth, is measured too
    s0 = CutCandidate("s0", SPLIT, ("g",), 0.9, 49.5, 100, 10)
    assert coverage_picks([*everything, s0], picked, True, True) == [s2, s1, s0, s6]


def test_every_size_is_measured_on_the_scale_of_one_interleaved_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole model's times at the profiled sizes come from one pass over the sizes
    in turn; each size's measured candidates are scaled to it (here: times handed in, so
    the plan's measured whole-model time at the reference is exactly the pass's)."""
    passes: list[list[dict[str, int]]] = []

    def fixed(model, envs, threads, level, rounds):  # noqa: ANN001, ANN202
        passes.append([dict(e) for e in envs])
        return [100.0, 50.0, 400.0][:len(envs)]

    monkeypatch.setattr(build, "whole_model_times", fixed)
    plan = build_plan(zoo.trained_model("ppocr_cls"), "generic-x86", "here", 20e6, 0.02,
                      keep=2, runs=2, measure=2, measure_runs=2, threads=1, figure=False,
                      shapes=[SIZES, {"H": 48, "W": 96}, {"H": 48, "W": 384}])
    assert passes == [[{"N": 1, **SIZES}, {"N": 1, "H": 48, "W": 96},
                       {"N": 1, "H": 48, "W": 384}]]
    local = plan.candidate("local")
    assert local.extra["measured_head_ms"] == pytest.approx(100.0)  # relative_speed 1
    assert plan.candidate("offload").extra["measured_tail_ms"] == pytest.approx(100.0)
