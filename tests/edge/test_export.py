from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import onnx
import onnx.utils
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cloud._config import read_config
from devices.errors import ConfigError, PartitionError
from edge.cli import main
from partition import CutCandidate, Plan
from tests.onnx_files import save_model

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "schemas"


def _plan_with_one_split(tmp_path: Path, model_path: Path) -> Path:
    model = onnx.load(str(model_path))
    cut = "r9"  # the output of squeezenet's first fire module (a Concat)
    tail = onnx.utils.Extractor(model).extract_model([cut], [o.name for o in model.graph.output])
    save_model(tail, tmp_path / "tail.c1.onnx")
    plan = Plan(
        model="squeezenet",
        model_path=str(model_path),
        device="jetson-nano",
        candidates=(
            CutCandidate("local", "local", (), 10.0, 0.0, 0, 4000),
            CutCandidate("offload", "offload", ("data_0",), 0.0, 3.0, 602112, 4000, cloud_model="squeezenet"),
            CutCandidate("c1", "split", (cut,), 2.0, 2.0, 1, 4000, tail_model="tail.c1.onnx",
                         cloud_model="squeezenet.tail.c1"),
        ),
        chosen="c1",
    )
    plan.save(tmp_path / "plan.json")
    return tmp_path / "plan.json"


def test_triton_repository_configs_parse_with_tritons_schema(tmp_path: Path, zoo_model) -> None:
    plan_path = _plan_with_one_split(tmp_path, zoo_model("squeezenet"))
    repo = tmp_path / "repo"
    assert main(["export", "triton", "--plan", str(plan_path), "--out", str(repo),
                 "--max-batch-size", "16", "--instances", "2"]) == 0
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["squeezenet", "squeezenet.tail.c1"]
    for name in names:
        assert (repo / name / "1" / "model.onnx").is_file()
        config = model_config_pb2.ModelConfig()
        text_format.Parse((repo / name / "config.pbtxt").read_text(), config)
        assert config.name == name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 16
        assert config.instance_group[0].count == 2
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.output[0].data_type == model_config_pb2.TYPE_FP32
        # and edgecut serve loads the same file by the same schema
        served = read_config(repo / name)
        assert (served.name, served.max_batch_size, served.instance_count) == (name, 16, 2)
    tail_cfg = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "squeezenet.tail.c1" / "config.pbtxt").read_text(), tail_cfg)
    assert tail_cfg.input[0].name == "r9"
    assert list(tail_cfg.input[0].dims) == [128, 55, 55]


def test_a_plan_for_the_fp16_wire_exports_its_fp16_models(tmp_path: Path, zoo_model) -> None:
    plan_dir = tmp_path / "plan"
    assert main(["partition", str(zoo_model("squeezenet")), "--device", "jetson-nano",
                 "--cloud", "here", "--bandwidth", "20Mbit", "--rtt", "40ms", "--out",
                 str(plan_dir), "--keep", "1", "--runs", "2", "--measure", "0", "--no-figure",
                 "--wire", "fp16"]) == 0
    plan = Plan.load(plan_dir / "plan.json")
    repo = tmp_path / "repo"
    assert main(["export", "triton", "--plan", str(plan_dir / "plan.json"), "--out", str(repo)]) == 0
    names = {p.name for p in repo.iterdir()}
    # The whole model for float32 clients, the offload's FP16 one, and every tail.
    assert names == {"squeezenet", *(c.cloud_model for c in plan.candidates if c.cloud_model)}
    assert "squeezenet.fp16" in names
    for c in plan.candidates:
        if c.kind == "local":
            continue
        config = model_config_pb2.ModelConfig()
        text_format.Parse((repo / c.cloud_model / "config.pbtxt").read_text(), config)
        assert read_config(repo / c.cloud_model).name == c.cloud_model
        assert {i.name: i.data_type for i in config.input} == dict.fromkeys(
            c.tensors, model_config_pb2.TYPE_FP16)


def test_export_triton_names_a_missing_tail(tmp_path: Path, zoo_model) -> None:
    plan_path = _plan_with_one_split(tmp_path, zoo_model("squeezenet"))
    (tmp_path / "tail.c1.onnx").unlink()
    from edge.lab._export import export_triton

    with pytest.raises(PartitionError, match="tail.c1.onnx.*c1"):
        export_triton(Plan.load(plan_path), tmp_path, tmp_path / "repo")


def test_kserve_manifest_is_valid_yaml_with_required_fields(tmp_path: Path) -> None:
    out = tmp_path / "isvc.yaml"
    assert main(["export", "kserve", "--name", "resnet50-tails", "--storage-uri",
                 "s3://models/edgecut", "--max-replicas", "6", "--out", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 1
    schema = json.loads((SCHEMAS / "kserve-inferenceservice.json").read_text())
    jsonschema.validate(docs[0], schema)
    predictor = docs[0]["spec"]["predictor"]
    assert predictor["model"]["modelFormat"]["name"] == "triton"
    assert predictor["model"]["storageUri"] == "s3://models/edgecut"
    assert predictor["maxReplicas"] == 6


def test_schema_rejects_a_manifest_without_storage() -> None:
    from edge.lab._export import ClusterOptions, kserve_manifest

    doc = kserve_manifest(ClusterOptions())
    del doc["spec"]["predictor"]["model"]["storageUri"]
    schema = json.loads((SCHEMAS / "kserve-inferenceservice.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


@pytest.mark.parametrize("server", ["triton", "edgecut"])
def test_plain_kubernetes_manifests(tmp_path: Path, server: str) -> None:
    out = tmp_path / "k8s.yaml"
    assert main(["export", "kubernetes", "--server", server, "--gpus", "0", "--out", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    schema = json.loads((SCHEMAS / "kubernetes-objects.json").read_text())
    for doc in docs:
        jsonschema.validate(doc, schema)
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert ("tritonserver" if server == "triton" else "edgecut") == container["command"][0]
    # gRPC is on in both (tritonserver's flag names, which edgecut serve takes too)
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(container["command"])
    assert not any(a.startswith("--allow-grpc") for a in container["command"])
    assert {p["name"] for p in docs[1]["spec"]["ports"]} == {"http", "grpc"}
    if server == "edgecut":  # the container's command line parses as edgecut serve's
        from cloud._cli import serve

        (tmp_path / "models").mkdir()
        (tmp_path / "keys").mkdir()
        args = [a.replace("/models", str(tmp_path / "models")).replace("/keys", str(tmp_path / "keys"))
                for a in container["command"][2:]]
        params = serve.make_context("serve", args).params
        assert (params["port"], params["grpc_port"], params["metrics_port"]) == (8000, 8001, 8002)
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_bad_cluster_options_are_named() -> None:
    from edge.lab._export import ClusterOptions, kserve_manifest, kubernetes_manifests

    with pytest.raises(ConfigError, match="name"):
        kserve_manifest(ClusterOptions(name="Not_A_Label"))
    with pytest.raises(ConfigError, match="replicas"):
        kserve_manifest(ClusterOptions(min_replicas=5, max_replicas=2))
    with pytest.raises(ConfigError, match="pvc://"):
        kubernetes_manifests(ClusterOptions(storage_uri="s3://x/y"))
