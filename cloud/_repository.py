"""Reading a Triton-layout model repository: what is on disk and how to instantiate it.

``<repository>/<model>/config.pbtxt`` (optional) and ``<model>/<version>/model.onnx``.
Pure functions of the files and the service's defaults; :class:`cloud._loader.Loader`
decides when to load and swaps versions in.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from cloud._batcher import BatcherSettings
from cloud._config import ModelConfig, read_config
from cloud._runtime import OnnxRuntime
from cloud.errors import RepositoryError

__all__ = ["VERSION_RE", "onnx_instances", "read_model_dir", "repository_names"]

log = logging.getLogger("edgecut.cloud")

#: A version folder's name: ASCII digits only (``str.isdigit`` also takes '²' and '١',
#: which ``int`` then refuses or reads as another number).
VERSION_RE = re.compile(r"^[0-9]{1,18}$")


def repository_names(repository: Path | None) -> list[str]:
    """The model folders of ``repository`` (hidden ones skipped), sorted."""
    if repository is None:
        return []
    return sorted(
        p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")
    )


def read_model_dir(name: str, model_dir: Path) -> tuple[ModelConfig, list[int], list[str]]:
    """The model's config, the versions on disk its version policy selects, and why any
    other folder was skipped (each also logged as a warning)."""
    config = read_config(model_dir)
    if config.name is not None and config.name != name:
        raise RepositoryError(
            f"{model_dir / 'config.pbtxt'}: name {config.name!r} does not match the folder {name!r}"
        )
    filename = config.default_model_filename
    available = []
    skipped = []
    for p in sorted(model_dir.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        if not VERSION_RE.match(p.name):
            skipped.append(f"version folder {p.name!r} is not ASCII digits; skipped")
        elif not (p / filename).is_file():
            skipped.append(f"version {p.name} has no {filename}; skipped")
        else:
            available.append(int(p.name))
    for why in skipped:
        log.warning("model %s: %s", name, why, extra={"model": name})
    wanted = config.version_policy.select(available)
    if not wanted:
        raise RepositoryError(
            f"model {name!r}: no version to load (on disk: {sorted(available)}, policy "
            f"{config.version_policy.kind})"
        )
    return config, wanted, skipped


def onnx_instances(name: str, path: Path, config: ModelConfig, defaults: Any
                   ) -> tuple[list[OnnxRuntime], BatcherSettings]:
    """The ONNX Runtime instances of one version and its batcher settings.

    ``defaults``: the service's settings (``providers``, ``intra_op_threads``,
    ``ort_spinning``, ``dynamic_batching``, ``default_max_queue_delay_us``,
    ``max_queue_size``) for what the config leaves open.
    """
    count = config.instance_count
    threads = defaults.intra_op_threads
    if "intra_op_threads" in config.parameters:
        try:
            threads = int(config.parameters["intra_op_threads"])
        except ValueError:
            raise RepositoryError(f"model {name!r}: parameter intra_op_threads must be an integer") from None
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // count)
    instances = [
        OnnxRuntime(path, max_batch_size=config.max_batch_size, providers=defaults.providers,
                    intra_op_threads=threads, spinning=defaults.ort_spinning)
        for _ in range(count)
    ]
    if config.parameters.get("relay_next_url"):
        # A middle node of a chain: run this node's segment and forward the rest.
        from cloud._relay import relay_instances

        metrics = getattr(defaults, "metrics", None)
        instances = relay_instances(  # type: ignore[assignment]
            name, path, config.parameters, instances,
            lambda p: OnnxRuntime(p, max_batch_size=config.max_batch_size, providers=defaults.providers,
                                  intra_op_threads=threads, spinning=defaults.ort_spinning),
            (lambda outcome: metrics.relay.labels(name, outcome).inc()) if metrics is not None else None)
    runtime = instances[0]
    # With a config.pbtxt its dynamic_batching block decides (as in Triton); without
    # one, the service's default does.
    has_config = (path.parent.parent / "config.pbtxt").is_file()
    batching = config.dynamic_batching if has_config else defaults.dynamic_batching
    delay = config.max_queue_delay_us if config.dynamic_batching else defaults.default_max_queue_delay_us
    settings = BatcherSettings(
        max_batch_size=runtime.max_batch_size if batching else 0,
        max_queue_delay_s=delay / 1e6,
        preferred_batch_sizes=config.preferred_batch_sizes,
        max_queue_size=config.max_queue_size or defaults.max_queue_size,
    )
    return instances, settings
