"""The stream pipeline against a real ``edgecut serve``: order, drops, fallbacks, re-plan."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from devices import DeviceProfile, load_profile
from devices.errors import ConfigError
from edge.lab._replay import CloudServer, prepare_plan
from edge.offload import StreamPipeline
from edge.offload._client import OffloadClient
from partition import Plan
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> DeviceProfile:
    text = (ROOT / "devices/profiles/jetson-nano.toml").read_text()
    text, n = re.subn(r"(?m)^relative_speed = [0-9.]+$", "relative_speed = 0.03", text)
    assert n == 1  # the slow board must really be slow
    path = tmp_path_factory.mktemp("profile") / "slow-board.toml"
    path.write_text(text.replace('name = "jetson-nano"', 'name = "slow-board"'))
    return load_profile(path)


@pytest.fixture(scope="module")
def plan_dir(board: DeviceProfile, zoo_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan")
    prepare_plan(zoo_model("squeezenet"), board, out, keep=3)
    return out


def _frames(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(n)]


def _reference(plan_dir: Path, plan: Plan, frames: list) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(plan_dir / Path(plan.model_path).name)
                                if (plan_dir / Path(plan.model_path).name).is_file()
                                else plan.model_path, providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in frames]


def _pipeline(plan_dir: Path, plan: Plan, cand, board, client, **kw) -> StreamPipeline:  # noqa: ANN001
    names = [o for o in ("softmaxout_1",)]
    return StreamPipeline(plan_dir, plan.model_path, cand, board, client, names,
                          intra_op_threads=1, **kw)


def test_every_plan_streams_in_order_with_the_local_answer(plan_dir: Path, board: DeviceProfile) -> None:
    plan = Plan.load(plan_dir / "plan.json")
    frames = _frames(6)
    ref = _reference(plan_dir, plan, frames)
    with CloudServer(plan_dir / "repository") as srv, OffloadClient(srv.url) as client:
        for cand in plan.candidates:
            pipe = _pipeline(plan_dir, plan, cand, board, client, window=3, queue_size=2)
            got: list = []
            reader = threading.Thread(target=lambda p=pipe, g=got: g.extend(p.results()))
            reader.start()
            for f in frames:
                pipe.submit(f)
            pipe.close()
            reader.join(60)
            assert [r.seq for r in got] == list(range(len(frames)))
            assert all(r.status == "ok" for r in got), [r.error for r in got]
            for r, want in zip(got, ref):
                np.testing.assert_allclose(r.outputs["softmaxout_1"], want, rtol=1e-3, atol=1e-4)
            assert pipe.stats.lost == 0 and pipe.stats.dropped == 0


def test_drop_oldest_counts_every_drop_and_keeps_order(plan_dir: Path, board: DeviceProfile) -> None:
    plan = Plan.load(plan_dir / "plan.json")
    local = plan.candidate("local")
    frames = _frames(12)
    # the device holds each frame 50 ms; frames arrive all at once: most must be dropped
    pipe = _pipeline(plan_dir, plan, local, board, None, window=1, queue_size=2,
                     overload="drop_oldest", device_time=lambda _k, ms: max(ms, 50.0))
    for f in frames:
        pipe.submit(f)
    pipe.close()
    got = list(pipe.results(timeout_s=5))
    assert [r.seq for r in got] == list(range(12))
    dropped = [r.seq for r in got if r.status == "dropped"]
    assert pipe.stats.dropped == len(dropped) >= 1
    assert pipe.stats.lost == 0
    # the newest frame is never the one dropped under drop_oldest
    assert got[-1].status == "ok"
    with pytest.raises(ConfigError, match="closed"):
        pipe.submit(frames[0])


def test_drop_newest_refuses_arrivals(plan_dir: Path, board: DeviceProfile) -> None:
    plan = Plan.load(plan_dir / "plan.json")
    pipe = _pipeline(plan_dir, plan, plan.candidate("local"), board, None, window=1, queue_size=1,
                     overload="drop_newest", device_time=lambda _k, ms: max(ms, 50.0))
    for f in _frames(8):
        pipe.submit(f)
    pipe.close()
    got = list(pipe.results(timeout_s=5))
    assert got[0].status == "ok" and pipe.stats.dropped >= 1
    assert len(got) == 8 and pipe.stats.lost == 0


def test_dead_cloud_falls_back_on_the_device_for_every_frame(plan_dir: Path, board: DeviceProfile) -> None:
    plan = Plan.load(plan_dir / "plan.json")
    frames = _frames(4)
    ref = _reference(plan_dir, plan, frames)
    split = next(c for c in plan.candidates if c.kind == "split")
    with OffloadClient(f"http://127.0.0.1:{free_port()}", timeout_s=2.0) as client:
        for cand in (split, plan.candidate("offload")):
            pipe = _pipeline(plan_dir, plan, cand, board, client, window=2)
            for f in frames:
                pipe.submit(f)
            pipe.close()
            got = list(pipe.results(timeout_s=5))
            assert [r.status for r in got] == ["fallback"] * 4
            assert all("CloudUnavailable" in r.error or "Offload" in r.error for r in got)
            for r, want in zip(got, ref):
                np.testing.assert_allclose(r.outputs["softmaxout_1"], want, rtol=1e-3, atol=1e-4)
            assert pipe.stats.fallbacks == 4 and pipe.stats.lost == 0


def test_replan_mid_stream_loses_and_reorders_nothing(plan_dir: Path, board: DeviceProfile) -> None:
    plan = Plan.load(plan_dir / "plan.json")
    frames = _frames(10)
    ref = _reference(plan_dir, plan, frames)
    plans = iter(["offload", "offload", "local", "local", "local"] + ["local"] * 10)
    with CloudServer(plan_dir / "repository") as srv, OffloadClient(srv.url) as client:
        pipe = _pipeline(plan_dir, plan, plan.candidate("offload"), board, client, window=3,
                         chooser=lambda: plan.candidate(next(plans)), replan_every=2)
        for f in frames:
            pipe.submit(f)
        pipe.close()
        got = list(pipe.results(timeout_s=5))
    assert [r.seq for r in got] == list(range(10))
    assert [r.plan for r in got][:4] == ["offload"] * 4 and got[-1].plan == "local"
    assert pipe.stats.replans == 1 and pipe.stats.lost == 0
    for r, want in zip(got, ref):
        np.testing.assert_allclose(r.outputs["softmaxout_1"], want, rtol=1e-3, atol=1e-4)


def test_bad_settings_are_named(plan_dir: Path, board: DeviceProfile) -> None:
    plan = Plan.load(plan_dir / "plan.json")
    with pytest.raises(ConfigError, match="overload policy"):
        _pipeline(plan_dir, plan, plan.candidate("local"), board, None, overload="newest")
    with pytest.raises(ConfigError, match="window"):
        _pipeline(plan_dir, plan, plan.candidate("local"), board, None, window=0)
