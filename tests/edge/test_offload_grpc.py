"""The offload client over gRPC against a real ``edgecut serve --grpc-port`` process: the
same deadlines, retries, re-authentication, breaker and link measurements as over HTTP,
and the executor offloading through it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from devices import CloudUnavailable, ConfigError, DeadlineExceeded, OffloadRejected
from edge.lab._scenarios import _feeds_for
from edge.lab._server import CloudServer
from edge.offload import CircuitBreaker, FileToken, KeyToken, StaticToken, offload_client
from edge.offload._client import OPEN
from edge.offload._executor import Executor
from edge.offload._grpc import GrpcOffloadClient, grpc_target
from edge.policy import Policy, policy_config_from_text
from partition import Plan
from tests.conftest import free_port
from tests.edge.test_executor import plan_dir, slow_board  # noqa: F401  (fixtures)
from tests.edge.test_offload import X, _write_model, keys  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, bytes]):  # noqa: F811
    repo = tmp_path_factory.mktemp("repo")
    _write_model(repo, "double")
    _write_model(repo, "double_wide", width=100_000)
    with CloudServer(repo, auth_keys=keys[0], grpc_port=0) as srv:
        yield srv


def _token(keys, **kw) -> KeyToken:  # noqa: F811
    return KeyToken(keys[1], subject="dev1", models=kw.pop("models", ["double*"]),
                    key_id="dev1", **kw)


def test_grpc_target_urls() -> None:
    assert grpc_target("grpc://10.0.0.2:8001") == ("10.0.0.2:8001", False)
    assert grpc_target("grpcs://cloud.example") == ("cloud.example:443", True)
    assert grpc_target("http://[::1]:9000") == ("[::1]:9000", False)
    assert grpc_target("cloud:8001") == ("cloud:8001", False)
    with pytest.raises(ConfigError, match="grpc://HOST:PORT"):
        grpc_target("ftp://x")
    with pytest.raises(ConfigError, match="expected one of http, grpc"):
        offload_client("http://x", protocol="carrier-pigeon")


def test_infer_measures_bytes_and_server_time(server: CloudServer, keys) -> None:  # noqa: F811
    with offload_client(server.grpc_url, protocol="grpc", token=_token(keys)) as client:
        assert isinstance(client, GrpcOffloadClient)
        assert client.live() and client.ready() and client.ready("double")
        assert client.ping() > 0
        r = client.infer("double", {"x": X})
        np.testing.assert_array_equal(r.outputs["y"], X * 2)
        assert r.attempts == 1 and r.up_bytes >= X.nbytes and r.down_bytes >= X.nbytes
        # the server's queue + compute time, from its server-timing trailing metadata
        assert r.server_s is not None and 0 < r.server_s < r.seconds
        assert r.server_compute_s is not None and 0 < r.server_compute_s <= r.server_s
        wide = np.ones((1, 100_000), np.float32)
        big = client.infer("double_wide", {"x": wide}, outputs=["y"])
        assert big.up_bytes > 400_000 and big.down_bytes > 400_000
        np.testing.assert_array_equal(big.outputs["y"], wide * 2)


def test_refusals_are_rejected_and_leave_the_breaker_closed(server: CloudServer, keys) -> None:  # noqa: F811
    breaker = CircuitBreaker(failure_threshold=1)
    with offload_client(server.grpc_url, protocol="grpc", token=_token(keys),
                        breaker=breaker) as client:
        with pytest.raises(OffloadRejected) as err:
            client.infer("double_missing", {"x": X})  # in the token's scope, not served
        assert err.value.status == 404 and "NOT_FOUND" in str(err.value)
        with pytest.raises(OffloadRejected) as err:
            client.infer("double", {"x": X.astype(np.float64)})
        assert err.value.status == 400 and "expected datatype FP32" in str(err.value)
        assert breaker.state == "closed"
    # a token for other models: refused (after one fresh token), 403
    with GrpcOffloadClient(server.grpc_url, token=_token(keys, models=["other"])) as client:
        with pytest.raises(OffloadRejected) as err:
            client.infer("double", {"x": X})
        assert err.value.status == 403


def test_rotated_token_file_is_read_again(server: CloudServer, keys, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "token"
    path.write_text("not-a-token")
    source = FileToken(path)
    with GrpcOffloadClient(server.grpc_url, token=source) as client:
        with pytest.raises(OffloadRejected) as err:
            client.infer("double", {"x": X})
        assert err.value.status == 401
        path.write_text(_token(keys).token())  # rotated by the provisioning
        r = client.infer("double", {"x": X})
        np.testing.assert_array_equal(r.outputs["y"], X * 2)


def test_deadlines(server: CloudServer, keys) -> None:  # noqa: F811
    with GrpcOffloadClient(server.grpc_url, token=_token(keys), max_retries=3) as client:
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            client.infer("double", {"x": X}, deadline=time.monotonic() - 1)
        wide = np.ones((64, 100_000), np.float32)  # 25 MB each way: far beyond 1 ms
        with pytest.raises(DeadlineExceeded):
            client.infer("double_wide", {"x": wide}, deadline=time.monotonic() + 0.001)
        assert client.breaker.state == "closed"  # slow is not down
        assert client.infer("double", {"x": X}).attempts == 1


def test_unreachable_cloud_opens_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=60)
    with GrpcOffloadClient(f"grpc://127.0.0.1:{free_port()}", token=StaticToken("t"),
                           breaker=breaker, timeout_s=2.0, max_retries=1) as client:
        assert not client.live(timeout_s=0.5)
        with pytest.raises(CloudUnavailable):
            client.ping(timeout_s=0.5)
        for _ in range(2):
            with pytest.raises(CloudUnavailable, match="UNAVAILABLE"):
                client.infer("double", {"x": X})
        assert breaker.state == OPEN
        with pytest.raises(CloudUnavailable, match="circuit open"):
            client.infer("double", {"x": X})


def test_executor_offloads_over_grpc(plan_dir: Path, slow_board) -> None:  # noqa: F811
    plan = Plan.load(plan_dir / "plan.json")
    cfg = policy_config_from_text("slo_ms = 400\n")
    with CloudServer(plan_dir / "repository", grpc_port=0) as srv, \
            offload_client(srv.grpc_url, protocol="grpc") as client:
        ex = Executor(plan, plan_dir, slow_board, policy=Policy(cfg), client=client)
        feeds = _feeds_for(ex)
        ref = ex._session_for(ex.model_path).run(feeds)
        remote = [c for c in plan.candidates if c.kind != "local"]
        assert remote
        for c in remote:
            out = ex.infer(feeds, force=c.cut_id)
            assert out.fallback == "" and out.up_bytes > 0 and out.cloud_ms > 0
            for k, v in ref.items():
                np.testing.assert_allclose(out.outputs[k], v, rtol=1e-3, atol=1e-4)
        ex.close()
