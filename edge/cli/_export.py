from __future__ import annotations

from pathlib import Path

import click
import yaml

from edge.lab._export import ClusterOptions, export_triton, kserve_manifest, kubernetes_manifests


@click.group()
def export() -> None:
    """Export a plan for serving past one machine (Triton, KServe, Kubernetes)."""


@export.command("triton")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="plan.json written by 'edgecut partition'.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the Triton model repository.")
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(0, 4096))
@click.option("--max-queue-delay-us", default=500, show_default=True, type=click.IntRange(0))
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Model instances per server (instance_group count).")
@click.option("--kind", "instance_kind", default="KIND_GPU", show_default=True,
              type=click.Choice(["KIND_GPU", "KIND_CPU", "KIND_AUTO"]))
def triton(plan_path: str, out_dir: str, max_batch_size: int, max_queue_delay_us: int,
           instances: int, instance_kind: str) -> None:
    """Write the whole model and every tail of a plan as a Triton model repository."""
    from partition import Plan
    from partition.triton import TritonOptions

    plan = Plan.load(plan_path)
    options = TritonOptions(
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instance_count=instances,
        instance_kind=instance_kind,
    )
    for folder in export_triton(plan, Path(plan_path).parent, out_dir, options):
        click.echo(f"wrote {folder}/config.pbtxt")


def _cluster_options(name: str, namespace: str, storage_uri: str, min_replicas: int,
                     max_replicas: int, scale_target: int, gpus: int) -> ClusterOptions:
    return ClusterOptions(name=name, namespace=namespace, storage_uri=storage_uri,
                          min_replicas=min_replicas, max_replicas=max_replicas,
                          scale_target=scale_target, gpus=gpus)


_cluster_flags = [
    click.option("--name", default="edgecut", show_default=True, help="Service name (a DNS label)."),
    click.option("--namespace", default="default", show_default=True),
    click.option("--storage-uri", default="pvc://edgecut-models/repository", show_default=True,
                 help="Where the exported repository lives (s3://, gs://, pvc://...)."),
    click.option("--min-replicas", default=1, show_default=True, type=int),
    click.option("--max-replicas", default=4, show_default=True, type=int),
    click.option("--scale-target", default=8, show_default=True, type=int,
                 help="Concurrent requests per replica before scaling out."),
    click.option("--gpus", default=1, show_default=True, type=click.IntRange(0, 16)),
    click.option("--out", "out_file", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True)),
]


def _with_cluster_flags(func):  # type: ignore[no-untyped-def]
    for flag in reversed(_cluster_flags):
        func = flag(func)
    return func


def _emit(docs: list[dict], out_file: str) -> None:
    text = yaml.safe_dump_all(docs, sort_keys=False)
    if out_file == "-":
        click.echo(text, nl=False)
    else:
        Path(out_file).write_text(text)
        click.echo(f"wrote {out_file}")


@export.command("kserve")
@_with_cluster_flags
def kserve(name: str, namespace: str, storage_uri: str, min_replicas: int, max_replicas: int,
           scale_target: int, gpus: int, out_file: str) -> None:
    """A KServe InferenceService serving the repository with the Triton runtime."""
    options = _cluster_options(name, namespace, storage_uri, min_replicas, max_replicas, scale_target, gpus)
    _emit([kserve_manifest(options)], out_file)


@export.command("kubernetes")
@_with_cluster_flags
@click.option("--server", default="triton", show_default=True, type=click.Choice(["triton", "edgecut"]))
def kubernetes(name: str, namespace: str, storage_uri: str, min_replicas: int, max_replicas: int,
               scale_target: int, gpus: int, out_file: str, server: str) -> None:
    """Plain Kubernetes (no Helm, no KServe): Deployment, LoadBalancer Service and HPA."""
    options = _cluster_options(name, namespace, storage_uri, min_replicas, max_replicas, scale_target, gpus)
    _emit(kubernetes_manifests(options, server), out_file)
