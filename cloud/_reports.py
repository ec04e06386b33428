"""What the service reports about its models: metadata, Triton's model configuration and
statistics extensions, Triton's metrics and edgecut's profile extension.

A collaborator of :class:`cloud._service.InferenceService`: it reads the routing table
(:class:`cloud._table.ModelTable`) and its lookups only, and changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from cloud._metrics import triton_text
from cloud._models import (
    check_profile_shapes,
    config_json,
    stats_json,
    version_key,
)
from cloud._runtime import OnnxRuntime
from cloud._table import ModelTable
from cloud.errors import ModelNotReady, NotFound, ProtocolError

__all__ = ["EXTENSIONS", "SERVER_NAME", "SERVER_VERSION", "Reports"]

SERVER_NAME = "edgecut"
SERVER_VERSION = "0.1.0"
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "edgecut_profile",
    "edgecut_canary",
)


class Reports:
    """Metadata, configuration, statistics, metrics and profiles of the models in ``table``.

    ``profile_max_elements``: the most elements a profile's inputs may have together.
    """

    def __init__(self, table: ModelTable, profile_max_elements: int) -> None:
        self.table = table
        self.profile_max_elements = profile_max_elements

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.table.version(name, version)
        except (NotFound, ModelNotReady):
            return False
        return True

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The protocol's model metadata (versions, platform, inputs, outputs)."""
        model = self.table.require(name)
        chosen = self.table.version(name, version)
        return {
            "name": name,
            "versions": sorted(model.versions, key=version_key) if version is None else [version],
            "platform": chosen.runtime.platform,
            "inputs": [m.as_json() for m in chosen.runtime.inputs],
            "outputs": [m.as_json() for m in chosen.runtime.outputs],
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration extension, as JSON (what ``get_model_config`` reads)."""
        return config_json(self.table.require(name), self.table.version(name, version))

    def triton_metrics(self) -> bytes:
        """Triton's ``nv_inference_*`` family for every served version (from its stats)."""
        rows = []
        for model in sorted(self.table.models.values(), key=lambda m: m.name):
            for version in sorted(model.versions, key=version_key):
                v = model.versions[version]
                rows.append((model.name, version, v.stats.triton_values(v.batcher.queued)))
        return triton_text(rows)

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: per model version counts and cumulative times."""
        if name is None:
            pairs = [(m, v) for m in self.table.models.values() for v in m.versions.values()]
        else:
            model = self.table.require(name)
            if version is None:
                pairs = [(model, v) for v in model.versions.values()]
            else:
                pairs = [(model, self.table.version(name, version))]
        return stats_json(sorted(pairs, key=lambda p: (p[0].name, version_key(p[1].version))))

    async def profile(self, name: str, version: str | None, runs: int, batch: int,
                      shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
        """edgecut's profile extension: ONNX Runtime's per-node profile of a served model."""
        target = self.table.version(name, version)
        runtime = target.runtime
        if not isinstance(runtime, OnnxRuntime):
            raise ProtocolError(f"model {name!r} is not an ONNX model; only ONNX models can be profiled")
        if batch < 1:
            raise ProtocolError(f"profile batch must be >= 1, got {batch}")
        check_profile_shapes(name, runtime, batch, shapes or {}, self.profile_max_elements)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            None, functools.partial(runtime.profile, runs, batch, 2, shapes))
        return {"model": name, "version": target.version, **result}
