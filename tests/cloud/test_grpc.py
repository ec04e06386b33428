"""KServe v2 / Triton gRPC against a real server: ``tritonclient.grpc`` unmodified for
health, metadata, config, inference over every datatype, streaming, statistics, the
repository and shared memory extensions, and each error code the service maps."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
import tritonclient.utils.shared_memory as tshm
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from cloud import InferenceService, ModelRuntime, TensorMeta, mint_token
from cloud.errors import ModelNotReady, Unavailable
from cloud.grpc import grpc_code
from tests.cloud.conftest import GrpcStack, write_version, x_batch

# Every v2 datatype (BYTES is TensorProto.STRING) through an Identity of its own.
ALL_TYPES = {
    "BOOL": TensorProto.BOOL, "INT8": TensorProto.INT8, "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32, "INT64": TensorProto.INT64, "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16, "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def all_types_model() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(f"in_{t}", p, [2, 3]) for t, p in ALL_TYPES.items()]
    outputs = [helper.make_tensor_value_info(f"out_{t}", p, [2, 3]) for t, p in ALL_TYPES.items()]
    nodes = [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in ALL_TYPES]
    model = helper.make_model(helper.make_graph(nodes, "alltypes", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def sample(datatype: str, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        # ONNX Runtime string tensors hold text: every element is UTF-8 (non-ASCII too)
        return np.array([b"a", b"", "café".encode(), b"\x00\x7f", b"x" * 300, b"z"],
                        dtype=object).reshape(2, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, (2, 3)).astype(bool)
    dtype = tg.triton_to_np_dtype(datatype)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, (2, 3), dtype=dtype, endpoint=True)
    return rng.standard_normal((2, 3)).astype(dtype)


@pytest.fixture
def grpc_repo(repo: Path) -> Path:
    write_version(repo, "alltypes", 1, all_types_model())
    return repo


@pytest.fixture
def stack(grpc_repo, stacks) -> GrpcStack:
    service = InferenceService(grpc_repo, intra_op_threads=1, max_queue_size=64)
    service.load_all()
    return stacks(service)


@pytest.fixture
def client(stack):
    c = stack.client()
    yield c
    c.close()


def test_health_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "edgecut"
    assert {"model_repository", "statistics", "system_shared_memory"} <= set(meta["extensions"])
    assert client.is_model_ready("affine") and client.is_model_ready("affine", "1")
    assert not client.is_model_ready("affine", "7")
    model = client.get_model_metadata("affine", as_json=True)
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = client.get_model_config("affine").config
    assert config.max_batch_size == 8 and config.name == "affine"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.version_policy.latest.num_versions == 2
    assert [i.name for i in config.input] == ["x"] and list(config.input[0].dims) == [4]
    assert config.input[0].data_type == tg.model_config_pb2.TYPE_FP32
    typed = client.get_model_config("alltypes").config
    assert {o.data_type for o in typed.output} >= {tg.model_config_pb2.TYPE_STRING,
                                                  tg.model_config_pb2.TYPE_FP16}


def test_infer_every_datatype_raw_contents(client):
    rng = np.random.default_rng(3)
    data = {t: sample(t, rng) for t in ALL_TYPES}
    inputs = []
    for t, array in data.items():
        item = tg.InferInput(f"in_{t}", list(array.shape), t)
        item.set_data_from_numpy(array)
        inputs.append(item)
    result = client.infer("alltypes", inputs, request_id="all-1")
    response = result.get_response()
    assert response.id == "all-1" and response.model_version == "1"
    # tritonclient sends raw_input_contents and reads raw_output_contents
    assert len(response.raw_output_contents) == len(ALL_TYPES)
    for t, array in data.items():
        got = result.as_numpy(f"out_{t}")
        assert got.shape == (2, 3), t
        if t == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, t
            np.testing.assert_array_equal(got, array)


def test_infer_typed_contents_and_output_selection(stack):
    channel = grpc.insecure_channel(stack.target)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="affine", model_version="1")
    x = x_batch(2)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.outputs.add(name="z")
    response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == ["z"]
    z = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 4)
    np.testing.assert_allclose(z, -x)
    # INT8 values beyond its range in the 32-bit contents field are refused by name (to a
    # model with an INT8 input: to affine the datatype itself is refused before decoding)
    bad = service_pb2.ModelInferRequest(model_name="typed")
    bad.inputs.add(name="i8", datatype="INT8", shape=[2, 3]).contents.int_contents.extend(
        [1, 2, 3, 4, 5, 300])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(bad, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensor 'i8': values 1..300 do not fit datatype INT8" in err.value.details()
    bad = service_pb2.ModelInferRequest(model_name="affine")
    bad.inputs.add(name="x", datatype="INT8", shape=[1, 4]).contents.int_contents.extend(
        [1, 2, 3, 300])
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(bad, timeout=10)
    assert "input 'x': expected datatype FP32, got INT8" in err.value.details()
    channel.close()


def test_stream_infer_100_in_order(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    try:
        for i in range(100):
            x = np.full((1, 4), i, np.float32)
            item = tg.InferInput("x", [1, 4], "FP32")
            item.set_data_from_numpy(x)
            sent[str(i)] = x
            client.async_stream_infer("affine", [item], request_id=str(i))
        got = [answers.get(timeout=30) for _ in range(100)]
    finally:
        client.stop_stream()
    assert [e for _r, e in got if e is not None] == []
    ids = [r.get_response().id for r, _e in got]
    assert ids == [str(i) for i in range(100)]
    for result, _ in got:
        x = sent[result.get_response().id]
        np.testing.assert_allclose(result.as_numpy("y"), 2 * x + 2.0)


def test_stream_error_answers_that_request_only(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        good = tg.InferInput("x", [1, 4], "FP32")
        good.set_data_from_numpy(x_batch(1))
        bad = tg.InferInput("x", [1, 4], "FP64")
        bad.set_data_from_numpy(x_batch(1).astype(np.float64))
        client.async_stream_infer("affine", [good], request_id="a")
        client.async_stream_infer("affine", [bad], request_id="b")
        client.async_stream_infer("affine", [good], request_id="c")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    assert got[0][1] is None and got[0][0].get_response().id == "a"
    assert got[1][0] is None and "expected datatype FP32, got FP64" in str(got[1][1])
    assert got[2][1] is None and got[2][0].get_response().id == "c"


def test_statistics_count_requests(client):
    x = tg.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(x_batch(2))
    for _ in range(5):
        client.infer("affine", [x], model_version="1")
    stats = client.get_inference_statistics("affine", "1", as_json=True)["model_stats"]
    assert len(stats) == 1 and stats[0]["version"] == "1"
    assert int(stats[0]["inference_count"]) == 10  # 5 requests of batch 2
    assert int(stats[0]["inference_stats"]["success"]["count"]) == 5
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {(s["name"], s["version"]) for s in every} >= {("affine", "1"), ("affine", "2")}


def test_repository_index_load_unload(client, grpc_repo):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m.get("version")) for m in index} >= {("affine", "1"), ("affine", "2")}
    write_version(grpc_repo, "late", 1, all_types_model())
    assert not client.is_model_ready("late")
    client.load_model("late")
    assert client.is_model_ready("late")
    client.unload_model("late")
    assert not client.is_model_ready("late")
    state = {m["name"]: m.get("state") for m in
             client.get_model_repository_index(as_json=True)["models"]}
    assert state["late"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("missing")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_system_shared_memory(client):
    x = x_batch(3)
    key = f"/edgecut-g-{uuid.uuid4().hex[:8]}"
    in_handle = tshm.create_shared_memory_region("g_in", key, x.nbytes)
    out_handle = tshm.create_shared_memory_region("g_out", key + "o", x.nbytes)
    try:
        tshm.set_shared_memory_region(in_handle, [x])
        client.register_system_shared_memory("g_in", key, x.nbytes)
        client.register_system_shared_memory("g_out", key + "o", x.nbytes)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert set(status) == {"g_in", "g_out"}
        inp = tg.InferInput("x", list(x.shape), "FP32")
        inp.set_shared_memory("g_in", x.nbytes)
        y_out = tg.InferRequestedOutput("y")
        y_out.set_shared_memory("g_out", x.nbytes)
        z_out = tg.InferRequestedOutput("z")
        result = client.infer("affine", [inp], outputs=[y_out, z_out])
        np.testing.assert_allclose(result.as_numpy("z"), -x)
        assert result.get_output("y").parameters["shared_memory_region"].string_param == "g_out"
        y = tshm.get_contents_as_numpy(out_handle, np.float32, list(x.shape))
        np.testing.assert_allclose(y, 2 * x + 2.0, rtol=1e-6)
        client.unregister_system_shared_memory("g_in")
        assert set(client.get_system_shared_memory_status(as_json=True)["regions"]) == {"g_out"}
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    finally:
        tshm.destroy_shared_memory_region(in_handle)
        tshm.destroy_shared_memory_region(out_handle)


def _code(err: pytest.ExceptionInfo) -> str:
    return err.value.status()


def test_error_codes_invalid_and_not_found(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert _code(err) == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in err.value.message()
    wrong = tg.InferInput("x", [1, 4], "INT32")
    wrong.set_data_from_numpy(np.ones((1, 4), np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("affine", [wrong])
    assert _code(err) == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x': expected datatype FP32, got INT32" in err.value.message()
    short = tg.InferInput("x", [1, 5], "FP32")
    short.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("affine", [short])
    assert _code(err) == "StatusCode.INVALID_ARGUMENT" and "expected shape" in err.value.message()
    # the server keeps serving
    good = tg.InferInput("x", [1, 4], "FP32")
    good.set_data_from_numpy(x_batch(1))
    assert client.infer("affine", [good]).as_numpy("y").shape == (1, 4)


def test_error_codes_auth(grpc_repo, stacks, keys, verifier):
    service = InferenceService(grpc_repo, intra_op_threads=1)
    service.load_all()
    stack = stacks(service, verifier=verifier)
    client = stack.client()

    def token(**kw):
        args = dict(subject="dev-1", audience="edgecut-test", issuer="fleet", models=["affine"])
        args.update(kw)
        return "Bearer " + mint_token(keys["ec"], **args)

    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(x_batch(1))
    with pytest.raises(InferenceServerException) as err:
        client.infer("affine", [x])
    assert _code(err) == "StatusCode.UNAUTHENTICATED" and "missing bearer token" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("affine", [x], headers={"authorization": "Bearer not.a.jwt"})
    assert _code(err) == "StatusCode.UNAUTHENTICATED"
    ok = client.infer("affine", [x], headers={"authorization": token()})
    assert ok.as_numpy("y").shape == (1, 4)
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("typed", headers={"authorization": token()})
    assert _code(err) == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("affine", headers={"authorization": token()})
    assert _code(err) == "StatusCode.PERMISSION_DENIED"
    client.load_model("affine", headers={"authorization": token(admin=True)})
    # health stays open, as over HTTP
    assert client.is_server_live() and client.is_server_ready()
    client.close()


def test_error_codes_resource_exhausted_too_large(grpc_repo, stacks):
    service = InferenceService(grpc_repo, intra_op_threads=1)
    service.load_all()
    stack = stacks(service, max_body_bytes=1024, max_pending_bytes=4096)
    client = stack.client()
    big = tg.InferInput("x", [64, 4], "FP32")
    big.set_data_from_numpy(np.ones((64, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("affine", [big])
    assert _code(err) == "StatusCode.RESOURCE_EXHAUSTED"
    small = tg.InferInput("x", [1, 4], "FP32")
    small.set_data_from_numpy(x_batch(1))
    assert client.infer("affine", [small]).as_numpy("y").shape == (1, 4)
    client.close()


class GatedRuntime(ModelRuntime):
    """Blocks each batch until released: the queue's state is known exactly."""

    inputs = (TensorMeta("x", "FP32", (-1, 4)),)
    outputs = (TensorMeta("y", "FP32", (-1, 4)),)
    max_batch_size = 1

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, inputs):
        self.entered.set()
        self.release.wait(30)
        return {"y": inputs["x"] + 1}


def test_error_codes_resource_exhausted_queue_full(stacks):
    runtime = GatedRuntime()
    service = InferenceService(None, max_queue_size=1)
    service.add_runtime("gated", runtime)
    stack = stacks(service)
    client = stack.client()
    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(x_batch(1))
    done: queue.Queue = queue.Queue()
    client.async_infer("gated", [x], callback=lambda result, error: done.put((result, error)))
    assert runtime.entered.wait(30)
    client.async_infer("gated", [x], callback=lambda result, error: done.put((result, error)))
    deadline = time.monotonic() + 30
    while stack.gate.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(InferenceServerException) as err:
        client.infer("gated", [x])
    assert _code(err) == "StatusCode.RESOURCE_EXHAUSTED" and "queue" in err.value.message()
    runtime.release.set()
    results = [done.get(timeout=30) for _ in range(2)]
    assert all(e is None for _r, e in results)
    client.close()


def test_unavailable_errors_map_to_unavailable():
    assert grpc_code(Unavailable("draining")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(ModelNotReady("no version")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(KeyError("bug")) == grpc.StatusCode.INTERNAL


class DrainingRuntime(ModelRuntime):
    """Says it cannot serve for now (the core's Unavailable), or fails (a bug)."""

    inputs = (TensorMeta("x", "FP32", (-1, 4)),)
    outputs = (TensorMeta("y", "FP32", (-1, 4)),)
    max_batch_size = 0

    def __init__(self, error: Exception) -> None:
        self.error = error

    def predict(self, inputs):
        raise self.error


def test_error_codes_unavailable_and_internal_live(stacks):
    service = InferenceService(None)
    service.add_runtime("draining", DrainingRuntime(Unavailable("model 'draining' is draining")))
    service.add_runtime("broken", DrainingRuntime(RuntimeError("segfault averted")))
    healthy = GatedRuntime()
    service.add_runtime("healthy", healthy)
    stack = stacks(service)
    client = stack.client()
    x = tg.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(x_batch(1))
    with pytest.raises(InferenceServerException) as err:
        client.infer("draining", [x])
    assert _code(err) == "StatusCode.UNAVAILABLE" and "draining" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("broken", [x])
    assert _code(err) == "StatusCode.INTERNAL" and "segfault averted" in err.value.message()
    healthy.release.set()  # the server keeps serving the others
    assert client.infer("healthy", [x]).as_numpy("y").shape == (1, 4)
    client.close()
