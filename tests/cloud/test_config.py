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
    ("max_batch_size: \"8\"", "wrong type"),
    ("version_policy { latest { num_versions: 0 } }", "num_versions"),
    ("version_policy { newest { } }", "latest, specific or all"),
    ("dynamic_batching { preferred_batch_size: [0] }", "preferred_batch_size"),
    ("instance_group [ { count: 0 } ]", "count"),
    ("name: \"a\" {", "field name"),
    ("dynamic_batching { max_queue_delay_microseconds: 5", "closing"),
    ("parameters [ { key: \"a\" } ]", "key and value"),
    ("default_model_filename: \"../x.onnx\"", "plain file name"),
])
def test_bad_configs_name_the_field(text, message):
    with pytest.raises(RepositoryError, match=message):
        config_from_text(text, "m/config.pbtxt")


def test_latest_policy_selects_newest():
    config = config_from_text("version_policy: { latest: { num_versions: 2 } }")
    assert config.version_policy.select([3, 1, 10, 2]) == [3, 10]
