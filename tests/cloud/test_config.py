"""config.pbtxt reading, cross-checked against Triton's own protobuf schema."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cloud import RepositoryError, config_from_text
from partition.triton import TritonOptions, triton_config
from tests.cloud.conftest import affine_model

FULL = """
# a Triton config with fields edgecut ignores
name: "resnet50"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "data" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "prob" data_type: TYPE_FP32 dims: [ 1000 ] } ]
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] }, { count: 1, kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 8, 4 ]
  max_queue_delay_microseconds: 250
  default_queue_policy { max_queue_size: 64 }
}
version_policy: { specific: { versions: [ 1, 3 ] } }
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
parameters [
  { key: "canary_version" value: { string_value: "3" } },
  { key: "canary_fraction" value: { string_value: "0.1" } }
]
"""


def test_reads_the_subset_and_agrees_with_tritons_schema():
    config = config_from_text(FULL)
    proto = text_format.Parse(FULL, model_config_pb2.ModelConfig())
    assert config.name == proto.name == "resnet50"
    assert config.max_batch_size == proto.max_batch_size == 16
    assert config.dynamic_batching
    assert config.preferred_batch_sizes == tuple(sorted(proto.dynamic_batching.preferred_batch_size))
    assert config.max_queue_delay_us == proto.dynamic_batching.max_queue_delay_microseconds
    assert config.max_queue_size == proto.dynamic_batching.default_queue_policy.max_queue_size
    assert config.instance_count == sum(g.count for g in proto.instance_group) == 3
    assert config.version_policy.kind == "specific"
    assert config.version_policy.versions == tuple(proto.version_policy.specific.versions)
    assert config.parameters == {k: v.string_value for k, v in proto.parameters.items()}
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]


def test_partitioner_configs_parse_the_same_way():
    text = triton_config("affine.tail.3", affine_model(0.0), TritonOptions(instance_count=2))
    config = config_from_text(text)
    proto = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.max_batch_size == proto.max_batch_size == 32
    assert config.instance_count == 2
    assert config.max_queue_delay_us == proto.dynamic_batching.max_queue_delay_microseconds
    assert config.version_policy.kind == "latest" and config.version_policy.num_versions == 1


@pytest.mark.parametrize("text,message", [
    ("max_batch_size: -1", "max_batch_size"),
    ("max_batch_size: \"8\"", "1:17: .*Couldn't parse integer"),
    ("version_policy { latest { num_versions: 0 } }", "num_versions"),
    ("version_policy { newest { } }", 'no field named "newest"'),
    ("dynamic_batching { preferred_batch_size: [0] }", "preferred_batch_size"),
    ("instance_group [ { count: -1 } ]", "count"),
    ("name: \"a\" {", "Expected identifier"),
    ("dynamic_batching { max_queue_delay_microseconds: 5", 'Expected "}"'),
    ("default_model_filename: \"../x.onnx\"", "plain file name"),
])
def test_bad_configs_name_the_field(text, message):
    with pytest.raises(RepositoryError, match=message):
        config_from_text(text, "m/config.pbtxt")


def test_latest_policy_selects_newest():
    config = config_from_text("version_policy: { latest: { num_versions: 2 } }")
    assert config.version_policy.select([3, 1, 10, 2]) == [3, 10]


MISSPELT = """name: "affine"
max_batch_size: 8
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microsecond: 100
}
"""


@pytest.mark.parametrize("text,where", [
    ('name: "m"\nmax_batch_sizee: 8\n', 'm/config.pbtxt:2:1: .*no field named "max_batch_sizee"'),
    (MISSPELT, 'm/config.pbtxt:5:3: .*ModelDynamicBatching.*no field named '
               '"max_queue_delay_microsecond"'),
    ('input [ { name: "x" data_typ: TYPE_FP32 dims: [4] } ]', 'm/config.pbtxt:1:21: .*"data_typ"'),
    ('instance_group [ { kind: KIND_TPU } ]', "m/config.pbtxt:1:26: .*KIND_TPU"),
])
def test_misspelt_fields_are_errors_with_file_line_and_field(text, where):
    with pytest.raises(RepositoryError, match=where):
        config_from_text(text, "m/config.pbtxt")


@pytest.mark.parametrize("text,line,field", [
    ('name: "s"\n# stateful\nsequence_batching {\n  max_sequence_idle_microseconds: 5000000\n}\n',
     3, "sequence_batching"),
    ('name: "e"\nplatform: "ensemble"\nensemble_scheduling { step [ { model_name: "a" '
     'model_version: -1 } ] }\n', 3, "ensemble_scheduling"),
    ('name: "t"\nplatform: "tensorrt_plan"\n', 2, "platform"),
    ('name: "p"\nbackend: "python"\n', 2, "backend"),
    ('name: "d"\nmodel_transaction_policy { decoupled: true }\n', 2, "decoupled"),
    ('input [ { name: "x" data_type: TYPE_FP32 dims: [4]\n  reshape: { shape: [2, 2] } } ]\n',
     2, "reshape"),
    ('dynamic_batching {\n priority_levels: 2\n}\n', 2, "priority_levels"),
    ('dynamic_batching { default_queue_policy {\n default_timeout_microseconds: 10 } }\n', 2,
     "default_timeout_microseconds"),
    ('model_operations { op_library_filename: "libcustom.so" }\n', 1, "op_library_filename"),
    ('response_cache { enable: true }\n', 1, "response_cache"),
])
def test_unsupported_features_are_refused_at_load_naming_file_line_field(text, line, field):
    with pytest.raises(RepositoryError) as err:
        config_from_text(text, "m/config.pbtxt")
    message = str(err.value)
    assert message.startswith(f"m/config.pbtxt:{line}: field '{field}': ")
    assert "not supported" in message


def test_a_scalar_reshape_as_the_partitioner_writes_it_loads():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    model = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])],
                                                "scalar", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    text = triton_config("scalar", model, TritonOptions())
    assert "reshape: { shape: [ ] }" in text
    assert config_from_text(text, "scalar/config.pbtxt").max_batch_size == 32


def test_speed_hints_are_accepted():
    config = config_from_text(
        'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }\n'
        'model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 '
        'dims: [4] zero_data: true } } } ]\n'
        'instance_group [ { count: 2 kind: KIND_GPU gpus: [0] } ]\n')
    assert config.instance_count == 2


def test_non_ascii_strings_are_kept(tmp_path):
    from cloud._config import read_config

    folder = tmp_path / "café"
    folder.mkdir()
    (folder / "config.pbtxt").write_text(
        'name: "café"\nparameters { key: "note" value: { string_value: "naïve \\303\\251" } }\n',
        encoding="utf-8")
    config = read_config(folder)
    assert config.name == "café"
    assert config.parameters["note"] == "naïve é"  # literal UTF-8 and octal escapes alike
    assert config.triton.name == "café"


def test_a_sequence_model_in_a_repository_fails_to_load_with_the_reason(tmp_path):
    from cloud import InferenceService
    from tests.cloud.conftest import write_version

    write_version(tmp_path, "stateful", 1, affine_model(0.0))
    (tmp_path / "stateful" / "config.pbtxt").write_text(
        'name: "stateful"\nmax_batch_size: 8\nsequence_batching { }\n')
    service = InferenceService(tmp_path, intra_op_threads=1)
    try:
        assert service.load_all() == []
        (entry,) = service.index()
        assert entry["state"] == "UNAVAILABLE"
        assert "config.pbtxt:3: field 'sequence_batching'" in entry["reason"]
        assert "not supported" in entry["reason"]
    finally:
        service.close()


@pytest.mark.parametrize("options", [
    TritonOptions(),
    TritonOptions(instance_count=3, instance_kind="KIND_CPU", max_batch_size=4),
    TritonOptions(dynamic_batching=False),
    TritonOptions(max_batch_size=0),
    TritonOptions(preferred_batch_sizes=(), max_queue_delay_us=0),
])
def test_every_config_the_partitioner_writes_loads(options):
    for model in (affine_model(0.0), affine_model(1.0, batched=False)):
        text = triton_config("affine.tail.x", model, options)
        config = config_from_text(text, "affine.tail.x/config.pbtxt")
        assert config.name == "affine.tail.x"
        assert config.instance_count == options.instance_count
