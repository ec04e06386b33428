"""Export a plan past one machine: a Triton model repository and Kubernetes manifests.

The tails (and the whole model) go into a Triton repository that Triton, KServe's Triton
runtime and ``edgecut serve`` all read; the manifests run that repository on a cluster
behind a load balancer, with autoscaling, so many agents can offload to N replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import ConfigError, PartitionError
from partition import Plan
from partition.triton import TritonOptions, write_repository_entry

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
EDGECUT_IMAGE = "ghcr.io/edgecut/edgecut:0.1.0"


def export_triton(
    plan: Plan, plan_dir: str | Path, out: str | Path, options: TritonOptions | None = None
) -> list[Path]:
    """Write the whole model and every tail of ``plan`` as a Triton model repository.

    ``plan_dir`` is the folder ``plan.json`` lives in; model paths in the plan are
    relative to it. Returns the model folders written.
    """
    plan_dir = Path(plan_dir)
    written: list[Path] = []
    whole = Path(plan.model_path)
    if not whole.is_absolute():
        whole = plan_dir / whole
    if not whole.is_file():
        # A plan made from a path relative to another working directory: the plan folder
        # holds its own copy of the whole model (the local candidate's model).
        local = [c.head_model for c in plan.candidates if c.kind == "local" and c.head_model]
        if local and (plan_dir / local[0]).is_file():
            whole = plan_dir / local[0]
    if not whole.is_file():
        raise PartitionError(f"plan '{plan.model}': whole model '{whole}' not found")
    written.append(write_repository_entry(out, plan.model, whole, options=options))
    for cand in plan.candidates:
        # Every split's tail, and the offload's own model when it is not the whole one
        # (a plan for the fp16 wire format offloads to ``<model>.fp16``).
        if cand.kind == "local" or not cand.tail_model or (
                cand.kind == "offload" and cand.cloud_model in ("", plan.model)):
            continue
        tail = Path(cand.tail_model)
        if not tail.is_absolute():
            tail = plan_dir / tail
        if not tail.is_file():
            raise PartitionError(f"plan '{plan.model}': tail model '{tail}' of cut '{cand.cut_id}' not found")
        name = cand.cloud_model or f"{plan.model}.tail.{cand.cut_id}"
        written.append(write_repository_entry(out, name, tail, options=options))
    return written


@dataclass(frozen=True)
class ClusterOptions:
    """How the exported repository is served on a cluster."""

    name: str = "edgecut"
    namespace: str = "default"
    storage_uri: str = "pvc://edgecut-models/repository"
    min_replicas: int = 1
    max_replicas: int = 4
    scale_target: int = 8  # concurrent requests per replica before scaling out
    gpus: int = 1
    image: str = TRITON_IMAGE

    def check(self) -> None:
        if not self.name or not self.name.replace("-", "").isalnum() or self.name != self.name.lower():
            raise ConfigError(f"name: expected a lower-case DNS label, got {self.name!r}")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                f"replicas: expected 0 <= min <= max and max >= 1, got {self.min_replicas}..{self.max_replicas}"
            )
        if self.scale_target < 1:
            raise ConfigError(f"scale_target: expected >= 1, got {self.scale_target}")


def kserve_manifest(options: ClusterOptions) -> dict[str, Any]:
    """A KServe ``InferenceService`` serving the repository with the Triton runtime."""
    options.check()
    resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}
    if options.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(options.gpus)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": options.name,
            "namespace": options.namespace,
            "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
            "labels": {"app.kubernetes.io/part-of": "edgecut"},
        },
        "spec": {
            "predictor": {
                "minReplicas": options.min_replicas,
                "maxReplicas": options.max_replicas,
                "scaleMetric": "concurrency",
                "scaleTarget": options.scale_target,
                "model": {
                    "modelFormat": {"name": "triton"},
                    "protocolVersion": "v2",
                    "runtime": "kserve-tritonserver",
                    "storageUri": options.storage_uri,
                    "args": ["--strict-model-config=false", "--model-control-mode=poll"],
                    "resources": resources,
                },
            }
        },
    }


def kubernetes_manifests(options: ClusterOptions, server: str = "triton") -> list[dict[str, Any]]:
    """Plain Kubernetes objects (no Helm, no KServe): Deployment, Service and HPA.

    ``server`` is ``triton`` (NVIDIA's image) or ``edgecut`` (``edgecut serve``); both read
    the same repository mounted from the PersistentVolumeClaim named in ``storage_uri``.
    """
    options.check()
    if server not in ("triton", "edgecut"):
        raise ConfigError(f"server: expected 'triton' or 'edgecut', got {server!r}")
    if not options.storage_uri.startswith("pvc://"):
        raise ConfigError(
            f"storage_uri: plain Kubernetes mounts a volume claim, expected pvc://CLAIM/PATH, "
            f"got {options.storage_uri!r}"
        )
    claim, _, sub_path = options.storage_uri[len("pvc://"):].partition("/")
    labels = {"app": options.name, "app.kubernetes.io/part-of": "edgecut"}
    # Both servers take tritonserver's flags: HTTP on 8000, gRPC on 8001, metrics on 8002.
    ports = ["--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": claim}}]
    mounts: list[dict[str, Any]] = [{"name": "models", "mountPath": "/models", "subPath": sub_path}]
    if server == "triton":
        image = options.image
        command = ["tritonserver", "--model-repository=/models", "--model-control-mode=poll",
                   *ports]
    else:
        image = EDGECUT_IMAGE
        # The devices' token-signing public keys come from a Secret (edgecut serve refuses
        # to run without auth unless told --no-auth, which a cluster service must not be).
        command = ["edgecut", "serve", "--model-repository=/models", "--http-address=0.0.0.0",
                   *ports, "--auth-keys=/keys"]
        volumes.append({"name": "auth-keys", "secret": {"secretName": f"{options.name}-auth-keys"}})
        mounts.append({"name": "auth-keys", "mountPath": "/keys", "readOnly": True})
    resources: dict[str, Any] = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}
    if options.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(options.gpus)
    probe = {"httpGet": {"path": "/v2/health/ready", "port": 8000}, "periodSeconds": 5}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": options.name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "replicas": max(1, options.min_replicas),
            "selector": {"matchLabels": {"app": options.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": server,
                            "image": image,
                            "command": command,
                            "ports": [{"name": "http", "containerPort": 8000},
                                      {"name": "grpc", "containerPort": 8001},
                                      {"name": "metrics", "containerPort": 8002}],
                            "readinessProbe": probe,
                            "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": 8000}},
                            "resources": resources,
                            "volumeMounts": mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": options.name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "selector": {"app": options.name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8000},
                      {"name": "grpc", "port": 8001, "targetPort": 8001}],
            "type": "LoadBalancer",
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": options.name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": max(1, options.min_replicas),
            "maxReplicas": options.max_replicas,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
            ],
        },
    }
    return [deployment, service, hpa]
