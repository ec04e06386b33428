"""What a cloud leg that ran out of time tells the link estimate (issue 25): a real
``edgecut serve`` behind the link emulator, the real offload client and the rule the
executor folds its failures with (``edge.offload._fold.fold_cloud_failure``).

A timeout after the whole upload was handed over may be the server's doing (its queue, a
loaded host): it must not drag the estimate down. A timeout while the upload was still
being handed over is the link's: the bytes the client handed over bound its rate, and a
real drop shows within a few requests."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from devices import DeadlineExceeded
from edge.lab._emulator import LinkEmulator, Trace
from edge.lab._server import CloudServer
from edge.offload._client import OffloadClient
from edge.offload._fold import fold_cloud_failure
from edge.offload._outcome import _nbytes
from edge.policy import LinkEstimator
from tests.onnx_files import make_model, save_model

WIDTH = 65_536
# Two rows of WIDTH float32: 512 kB up, as much down.
X = np.ones((2, WIDTH), np.float32)
# A lone request waits this long in the queued model's batcher for company: a server
# slow to answer (its queue), whatever the link.
QUEUE_DELAY_US = 4_000_000


def _double(repo: Path, name: str, config: str = "") -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], name, [x], [y],
                              initializer=[two])
    (repo / name / "1").mkdir(parents=True)
    save_model(make_model(graph), repo / name / "1" / "model.onnx")
    if config:
        (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    repo = tmp_path_factory.mktemp("repo")
    _double(repo, "prompt")
    _double(repo, "queued", f'name: "queued"\nmax_batch_size: 8\n'
            f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n")
    with CloudServer(repo) as srv:
        yield srv


def _measure(est: LinkEstimator, client: OffloadClient, n: int) -> None:
    """``n`` answered requests folded in as the executor and its probes do."""
    est.observe_rtt(client.ping())
    for _ in range(n):
        r = client.infer("prompt", {"x": X})
        np.testing.assert_array_equal(r.outputs["y"], X * 2)
        est.observe_transfer(r.up_bytes, r.down_bytes, r.seconds, server_s=r.server_s or 0.0)


def _timed_out(client: OffloadClient, model: str, seconds: float) -> DeadlineExceeded:
    with pytest.raises(DeadlineExceeded) as info:
        client.infer(model, {"x": X}, deadline=time.monotonic() + seconds)
    return info.value


def test_a_timeout_behind_a_slow_server_leaves_a_fast_links_estimate(
        server: CloudServer) -> None:
    fast = Trace.from_steps([(0.0, 100e6)], 1000.0)
    est = LinkEstimator()
    with LinkEmulator("127.0.0.1", server.port, up=fast, down=fast, delay_s=0.005) as emu, \
            OffloadClient(emu.url) as client:
        _measure(est, client, 4)
        seen_at = time.monotonic()  # (both beliefs read at one instant: same age)
        before = est.estimate(seen_at)
        # (the premise: the link measured fast; the emulator at 100 Mbit/s, less on a
        # busy host, never near what the timeout would say taken as transfer time)
        assert before.bandwidth_bps > 8e6 and not before.provisional
        # The queue holds the request for seconds; the link took the upload at once.
        exc = _timed_out(client, "queued", 1.0)
    assert exc.sent_bytes is not None and exc.sent_bytes >= X.nbytes
    assert exc.upload_s is not None and exc.seconds is not None
    assert exc.upload_s < exc.seconds
    taken = fold_cloud_failure(est, exc, _nbytes({"x": X}), exc.seconds)
    after = est.estimate(seen_at)
    # Taken whole as transfer time (the rule before issue 25's fix), those 512 kB in a
    # second would have said "at most 4 Mbit/s" and dragged the estimate down to a few
    # Mbit/s; the timeout cannot tell the link from the server, so it moves nothing ...
    assert taken == "doubt"
    assert after == dataclasses.replace(before, provisional=True)
    # ... but puts the estimate in question until a measured transfer settles it.
    assert after.provisional
    # (Were a second leg to time out so before anything measured the link, the leg as a
    # whole is slow: with the server's expected part known, a stand-in bound; see
    # test_link.py::test_a_timeout_after_the_whole_upload_doubts_first_and_bounds_...)
    with LinkEmulator("127.0.0.1", server.port, up=fast, down=fast, delay_s=0.005) as emu, \
            OffloadClient(emu.url) as client:
        _measure(est, client, 1)
    assert not est.estimate().provisional


def test_a_real_drop_moves_the_estimate_within_a_few_requests(server: CloudServer) -> None:
    fast = Trace.from_steps([(0.0, 100e6)], 1000.0)
    slow = Trace.from_steps([(0.0, 0.2e6)], 1000.0)  # 512 kB would take 20 s
    est = LinkEstimator()
    with LinkEmulator("127.0.0.1", server.port, up=fast, down=fast, delay_s=0.005) as emu, \
            OffloadClient(emu.url) as client:
        _measure(est, client, 4)
    before = est.estimate().bandwidth_bps
    assert before > 8e6
    bounds = []
    with LinkEmulator("127.0.0.1", server.port, up=slow, down=fast, delay_s=0.005) as emu, \
            OffloadClient(emu.url) as client:
        for _ in range(3):
            exc = _timed_out(client, "prompt", 1.0)
            # Cut off mid-upload: the client knows how much it handed over, a part.
            assert exc.upload_s is None and exc.sent_bytes is not None
            assert 0 < exc.sent_bytes < X.nbytes
            assert exc.seconds is not None
            assert fold_cloud_failure(est, exc, _nbytes({"x": X}), exc.seconds) == "bound"
            bounds.append(exc.sent_bytes * 8.0 / exc.seconds)
    after = est.estimate()
    # What the client handed over (the path's buffers included) bounds the link at a
    # few Mbit/s at most; three such bounds pull the estimate down to their level.
    assert max(bounds) < before / 2
    assert after.bandwidth_bps < 2.0 * max(bounds)
    assert after.bandwidth_bps < before / 4
    assert after.provisional
