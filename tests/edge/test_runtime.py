"""The runtime contract on real backends: ONNX Runtime sessions on models built with
``onnx.helper`` and the zoo, LiteRT on a trained MediaPipe ``.tflite`` model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import devices
from devices.errors import BackendError, ModelError, ModelInputError
from edge import runtime
from edge.runtime._ort import provider_list, tensorrt_options
from tests.onnx_files import make_model

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _two_input_model() -> bytes:
    """image float32 [N, 3, 4, 4] and scale int64 [N, 2] -> out float32 [N, 3, 4, 4]."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])
    scale = helper.make_tensor_value_info("scale", TensorProto.INT64, ["N", 2])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 4, 4])
    total = helper.make_tensor_value_info("total", TensorProto.INT64, ["N"])
    nodes = [
        helper.make_node("Relu", ["image"], ["out"]),
        helper.make_node("ReduceSum", ["scale", "axes"], ["total"], keepdims=0),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "two_inputs", [image, scale], [out, total], [axes])
    model = make_model(graph)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def ort_session() -> runtime.Session:
    with runtime.load(_two_input_model(), devices.load_profile("generic-x86"),
                      check_finite=True, intra_op_threads=1) as session:
        yield session


@pytest.fixture(scope="module")
def litert_session(trained_model) -> runtime.Session:
    path = trained_model("face_detection_short_range")
    with runtime.load(path, None, check_finite=True, intra_op_threads=1) as session:
        yield session


def _good_feeds(session: runtime.Session, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.inputs:
        shape = tuple(batch if d is None else d for d in spec.shape)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 5, shape).astype(spec.dtype)
    return feeds


# ---------------------------------------------------------------------------- specs and runs


def test_ort_specs_and_run(ort_session: runtime.Session) -> None:
    assert [s.name for s in ort_session.inputs] == ["image", "scale"]
    image = ort_session.input_spec("image")
    assert image.dtype == np.float32 and image.shape == (None, 3, 4, 4)
    assert ort_session.input_spec("scale").dtype == np.int64
    assert image.describe() == "image: float32[?, 3, 4, 4]"
    feeds = _good_feeds(ort_session, batch=3)
    out = ort_session.run(feeds)
    assert set(out) == {"out", "total"}
    np.testing.assert_array_equal(out["out"], np.maximum(feeds["image"], 0))
    np.testing.assert_array_equal(out["total"], feeds["scale"].sum(axis=1))
    only = ort_session.run(feeds, outputs=["total"])
    assert list(only) == ["total"]


def test_litert_specs_and_run(litert_session: runtime.Session) -> None:
    (spec,) = litert_session.inputs
    assert spec.name == "input" and spec.shape == (1, 128, 128, 3) and spec.dtype == np.float32
    assert litert_session.providers == ("LiteRT",)
    out = litert_session.run(_good_feeds(litert_session, batch=1))
    assert {o.name for o in litert_session.outputs} == set(out)
    assert out["regressors"].shape == (1, 896, 16)
    assert np.isfinite(out["classificators"]).all()


def test_zoo_model_matches_bare_onnxruntime(zoo_model) -> None:
    path = zoo_model("squeezenet")
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with runtime.load(path, devices.load_profile("generic-x86"), intra_op_threads=1) as session:
        (spec,) = session.inputs
        got = session.run({spec.name: x})
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    bare = ort.InferenceSession(str(path), so, providers=[CPU])
    (want,) = bare.run(None, {spec.name: x})
    (name,) = got
    np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- bad inputs

# Each case: (what to do to a good feed dict, words the message must contain).
def _missing(feeds, name):
    del feeds[name]


def _unknown(feeds, name):
    feeds["bogus"] = feeds[name]


def _wrong_dtype(feeds, name):
    feeds[name] = feeds[name].astype(np.float64)


def _wrong_rank(feeds, name):
    feeds[name] = feeds[name][0]


def _wrong_dim(feeds, name):
    value = feeds[name]
    feeds[name] = np.concatenate([value, value], axis=-1)


def _non_finite(feeds, name):
    value = feeds[name].copy()
    value.flat[3] = np.nan
    value.flat[5] = np.inf
    feeds[name] = value


def _not_ndarray(feeds, name):
    feeds[name] = feeds[name].tolist()


BAD_INPUTS = [
    (_missing, ["missing input", "'{name}'"]),
    (_unknown, ["unknown input", "'bogus'"]),
    (_wrong_dtype, ["'{name}'", "expected dtype float32", "got float64"]),
    (_wrong_rank, ["'{name}'", "expected rank 4", "got rank 3"]),
    (_wrong_dim, ["'{name}'", "expected dim 3 to be", "got shape"]),
    (_non_finite, ["'{name}'", "expected finite values", "found 2 NaN or infinite"]),
    (_not_ndarray, ["'{name}'", "expected a numpy.ndarray", "got list"]),
]


@pytest.mark.parametrize("spoil, words", BAD_INPUTS, ids=[f.__name__.strip("_") for f, _ in BAD_INPUTS])
@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_bad_input_is_named(request, backend: str, spoil, words: list[str]) -> None:
    session = request.getfixturevalue("ort_session" if backend == "onnxruntime" else "litert_session")
    name = session.inputs[0].name
    feeds = _good_feeds(session, batch=1)
    spoil(feeds, name)
    with pytest.raises(ModelInputError) as info:
        session.run(feeds)
    message = str(info.value)
    for word in words:
        assert word.format(name=name) in message, message
    # The session keeps working after a rejected call.
    assert session.run(_good_feeds(session, batch=1))


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_feeds_must_be_a_mapping(request, backend: str) -> None:
    session = request.getfixturevalue("ort_session" if backend == "onnxruntime" else "litert_session")
    value = next(iter(_good_feeds(session, batch=1).values()))
    with pytest.raises(ModelInputError, match="feeds: expected a mapping of input name to "
                                              "numpy.ndarray, got ndarray"):
        session.run(value)


def test_memory_mapped_arrays_are_accepted(tmp_path: Path, ort_session: runtime.Session) -> None:
    feeds = _good_feeds(ort_session, batch=2)
    np.save(tmp_path / "image.npy", feeds["image"])
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    assert type(mapped) is np.memmap
    out = ort_session.run({"image": mapped, "scale": feeds["scale"]})
    np.testing.assert_array_equal(out["out"], np.maximum(feeds["image"], 0))


@pytest.mark.parametrize("backend", ["onnxruntime", "litert"])
def test_unknown_output_named(request, backend: str) -> None:
    session = request.getfixturevalue("ort_session" if backend == "onnxruntime" else "litert_session")
    with pytest.raises(ModelInputError, match=r"unknown output\(s\) 'logits' \(the model gives "):
        session.run(_good_feeds(session, batch=1), outputs=["logits"])
    first = session.outputs[0].name
    assert list(session.run(_good_feeds(session, batch=1), outputs=[first])) == [first]


def test_missing_message_lists_what_the_model_takes(ort_session: runtime.Session) -> None:
    with pytest.raises(ModelInputError, match=r"missing input\(s\) 'scale'.*image: float32\[\?, 3, 4, 4\]"):
        ort_session.run({"image": np.zeros((1, 3, 4, 4), np.float32)})


def test_wrong_integer_dtype_named(ort_session: runtime.Session) -> None:
    feeds = _good_feeds(ort_session, batch=1)
    feeds["scale"] = feeds["scale"].astype(np.int32)
    with pytest.raises(ModelInputError, match="input 'scale': expected dtype int64, got int32"):
        ort_session.run(feeds)


def test_non_finite_allowed_when_profile_does_not_ask() -> None:
    profile = devices.load_profile("generic-x86")
    assert profile.check_finite is False
    with runtime.load(_two_input_model(), profile, intra_op_threads=1) as session:
        feeds = _good_feeds(session, batch=1)
        feeds["image"][0, 0, 0, 0] = np.inf
        out = session.run(feeds)
    assert out["out"][0, 0, 0, 0] == np.inf


def test_check_finite_follows_the_profile(tmp_path: Path) -> None:
    text = Path(devices.load_profile("generic-x86").source).read_text()
    text = text.replace("[compute]", "[compute]\ncheck_finite = true", 1)
    path = tmp_path / "strict.toml"
    path.write_text(text)
    profile = devices.load_profile(path)
    assert profile.check_finite is True
    with runtime.load(_two_input_model(), profile, intra_op_threads=1) as session:
        feeds = _good_feeds(session, batch=1)
        feeds["image"][0, 1, 2, 3] = np.nan
        with pytest.raises(ModelInputError, match="input 'image': expected finite values"):
            session.run(feeds)


# ---------------------------------------------------------------------------- loading


def test_backend_chosen_by_suffix() -> None:
    assert runtime.backend_for("m.onnx").name == "onnxruntime"
    assert runtime.backend_for("m.TFLITE").name == "litert"
    with pytest.raises(ModelError, match=r"model 'm.pt': unknown file type '.pt'"):
        runtime.backend_for("m.pt")
    with pytest.raises(BackendError, match="unknown backend 'tensorflow'"):
        runtime.get_backend("tensorflow")


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="file not found"):
        runtime.load(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match=r"junk.onnx'?: onnxruntime cannot load it"):
        runtime.load(junk)
    junk_tfl = tmp_path / "junk.tflite"
    junk_tfl.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="LiteRT cannot load it"):
        runtime.load(junk_tfl)


def test_unknown_option_rejected() -> None:
    with pytest.raises(BackendError, match=r"unknown option\(s\) \['threads'\]"):
        runtime.load(_two_input_model(), None, threads=2)
    with pytest.raises(BackendError, match="graph_optimization: expected one of"):
        runtime.load(_two_input_model(), None, graph_optimization="max")


def test_closed_session_cannot_run() -> None:
    session = runtime.load(_two_input_model(), None)
    feeds = _good_feeds(session)
    session.close()
    with pytest.raises(Exception):  # noqa: B017 - any error, as long as it does not run
        session.run(feeds)


# ---------------------------------------------------------------------------- providers


def test_tensorrt_options_from_profile() -> None:
    nano = devices.load_profile("jetson-nano")
    orin = devices.load_profile("jetson-orin-nano")
    opts = tensorrt_options(orin)
    assert opts == {
        "trt_fp16_enable": True,
        "trt_int8_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(Path(orin.tensorrt.engine_cache_dir).expanduser()),
        "trt_max_workspace_size": orin.tensorrt.workspace_mb * 1024 * 1024,
    }
    # The Nano's Maxwell GPU has no INT8 tensor cores: its profile leaves int8 out.
    assert "int8" not in nano.precisions
    assert tensorrt_options(nano)["trt_int8_enable"] is False


def test_provider_order_follows_profile(tmp_path: Path) -> None:
    text = Path(devices.load_profile("jetson-orin-nano").source).read_text()
    text = text.replace('engine_cache_dir = "~/.cache/edgecut/trt"',
                        f'engine_cache_dir = "{tmp_path / "engines"}"')
    path = tmp_path / "orin.toml"
    path.write_text(text)
    orin = devices.load_profile(path)
    # A JetPack build of ONNX Runtime: TensorRT (with options), CUDA, CPU, in that order.
    full = provider_list(orin, available=[CPU, CUDA, TRT])
    assert [p if isinstance(p, str) else p[0] for p in full] == [TRT, CUDA, CPU]
    assert full[0][1]["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert (tmp_path / "engines").is_dir()
    # A build with CUDA only skips TensorRT but keeps the order of the rest.
    assert provider_list(orin, available=[CPU, CUDA]) == [CUDA, CPU]
    # An explicit list wins over the profile, and CPU is always the last resort.
    assert provider_list(orin, wanted=[CUDA], available=[CPU, CUDA, TRT]) == [CUDA, CPU]


def test_this_cpu_build_runs_on_cpu_only() -> None:
    orin = devices.load_profile("jetson-orin-nano")
    assert TRT not in ort.get_available_providers()
    assert provider_list(orin) == [CPU]
    with runtime.load(_two_input_model(), orin) as session:
        assert session.providers == (CPU,)
        assert session.inference_session.get_providers() == [CPU]
