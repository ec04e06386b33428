"""Loading and unloading: building served versions and swapping them into the table.

A version comes from the Triton-layout repository (``<model>/<version>/model.onnx`` plus
an optional ``config.pbtxt``, read by :mod:`cloud._repository`) or from any
:class:`~cloud._runtime.ModelRuntime` registered in code; either way it gets its batcher,
statistics and metrics here. A reload builds the new or changed versions before they
replace the old ones in the :class:`~cloud._table.ModelTable`, and the versions it drops
drain before they close. Loads run in threads, one at a time (the table's lock).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cloud._batcher import Batcher, BatcherSettings, BatchRecord
from cloud._config import ModelConfig
from cloud._metrics import Metrics
from cloud._models import Model, Stats, Version, check_name, version_key
from cloud._repository import onnx_instances, read_model_dir, repository_names
from cloud._runtime import ModelRuntime
from cloud._table import ModelTable
from cloud._tensors import DATATYPES
from cloud.errors import CloudError, NotFound, RepositoryError

__all__ = ["Loader"]

log = logging.getLogger("edgecut.cloud")

_LOAD_PARAMETERS = {"default_version", "canary_version", "canary_fraction", "config"}


class Loader:
    """Builds versions and loads them into ``table``.

    The settings are the defaults for what a model's ``config.pbtxt`` leaves open (see
    :class:`cloud._service.InferenceService`); :func:`cloud._repository.onnx_instances`
    reads them, and ``metrics``, off this object.
    """

    def __init__(self, table: ModelTable, metrics: Metrics, repository: Path | None, *,
                 providers: list[str] | None, intra_op_threads: int | None,
                 max_queue_size: int, dynamic_batching: bool,
                 default_max_queue_delay_us: int, ort_spinning: bool) -> None:
        self.table = table
        self.metrics = metrics
        self.repository = repository
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.max_queue_size = max_queue_size
        self.dynamic_batching = dynamic_batching
        self.default_max_queue_delay_us = default_max_queue_delay_us
        self.ort_spinning = ort_spinning

    # ------------------------------------------------------------------ runtimes in code

    def add_runtime(self, name: str, instances: ModelRuntime | Sequence[ModelRuntime],
                    version: str, dynamic_batching: bool, max_queue_delay_us: int,
                    preferred_batch_sizes: Sequence[int], max_queue_size: int | None) -> None:
        check_name(name)
        if not version or "/" in version:
            raise RepositoryError(f"model {name!r}: invalid version {version!r}")
        runtimes = [instances] if isinstance(instances, ModelRuntime) or not isinstance(
            instances, Sequence) else list(instances)
        if not runtimes:
            raise RepositoryError(f"model {name!r}: needs at least one runtime instance")
        settings = BatcherSettings(
            max_batch_size=runtimes[0].max_batch_size if dynamic_batching else 0,
            max_queue_delay_s=max_queue_delay_us / 1e6,
            preferred_batch_sizes=tuple(preferred_batch_sizes),
            max_queue_size=max_queue_size or self.max_queue_size,
        )
        self.table.put_version(name, version, self._build_version(name, version, runtimes, settings))

    # ------------------------------------------------------------------ the repository

    def repository_names(self) -> list[str]:
        return repository_names(self.repository)

    def load_all(self) -> list[str]:
        loaded = []
        for name in self.repository_names():
            try:
                self.load(name, None)
                loaded.append(name)
            except CloudError as exc:
                log.error("model %s failed to load: %s", name, exc, extra={"model": name})
            except Exception as exc:  # noqa: BLE001 - one bad model must not stop the others
                log.exception("model %s failed to load", name, extra={"model": name})
                with self.table.lock:
                    self.table.load_errors[name] = f"{type(exc).__name__}: {exc}"
        return loaded

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        table = self.table
        entries: list[dict[str, Any]] = []
        names = set(self.repository_names()) | set(table.models)
        for name in sorted(names):
            model = table.models.get(name)
            if model is not None and model.versions:
                for version in sorted(model.versions, key=version_key):
                    entries.append({"name": name, "version": version, "state": "READY", "reason": ""})
            elif not ready_only:
                reason = table.load_errors.get(name, "")
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason or "unloaded"})
            if not ready_only:  # version folders passed over, each with why
                for why in table.skipped.get(name, ()):
                    entries.append({"name": name, "state": "UNAVAILABLE", "reason": why})
        return entries

    def load(self, name: str, parameters: Mapping[str, Any] | None) -> None:
        check_name(name)
        if self.repository is None:
            raise RepositoryError("this service has no model repository to load from")
        params = dict(parameters or {})
        unknown = set(params) - _LOAD_PARAMETERS
        if unknown:
            raise RepositoryError(f"load of {name!r}: unknown parameters {sorted(unknown)}")
        if "config" in params:
            raise RepositoryError(f"load of {name!r}: a config override is not supported; edit config.pbtxt")
        model_dir = self.repository / name
        table = self.table
        with table.lock:
            try:
                self._load_locked(name, model_dir, params)
                table.load_errors.pop(name, None)
            except CloudError as exc:
                if not isinstance(exc, NotFound):
                    table.load_errors[name] = str(exc)
                raise
            except (OSError, ValueError) as exc:  # an unreadable folder or file
                table.load_errors[name] = f"{type(exc).__name__}: {exc}"
                raise RepositoryError(f"model {name!r} failed to load: {exc}") from exc

    def _load_locked(self, name: str, model_dir: Path, params: dict[str, Any]) -> None:
        table = self.table
        if not model_dir.is_dir():
            raise NotFound(f"model {name!r} is not in the repository {self.repository}")
        config, wanted, table.skipped[name] = read_model_dir(name, model_dir)
        filename = config.default_model_filename
        current = table.models.get(name)
        old_versions = current.versions if current else {}
        versions: dict[str, Version] = {}
        built: list[Version] = []
        try:
            for v in wanted:
                path = model_dir / str(v) / filename
                mtime = path.stat().st_mtime
                previous = old_versions.get(str(v))
                if previous is not None and previous.mtime == mtime:
                    versions[str(v)] = previous
                    continue
                version = self._load_onnx_version(name, str(v), path, config)
                version.mtime = mtime
                built.append(version)
                versions[str(v)] = version
        except CloudError:
            for version in built:
                version.close()
            raise
        model = Model(name, versions, config, from_repository=True)
        try:
            _route_as_configured(model, config, params)
        except CloudError:
            for version in built:
                version.close()
            raise
        table.models = {**table.models, name: model}
        for v, old in old_versions.items():
            if versions.get(v) is not old:
                old.close()  # drains what it already queued
        log.info("model %s loaded versions %s", name, sorted(versions, key=version_key),
                 extra={"model": name})

    def _load_onnx_version(self, name: str, version: str, path: Path, config: ModelConfig) -> Version:
        instances, settings = onnx_instances(name, path, config, self)
        version_obj = self._build_version(name, version, instances, settings)
        version_obj.source = path
        return version_obj

    # ------------------------------------------------------------------ one version

    def _build_version(self, name: str, version: str, runtimes: list[ModelRuntime],
                       settings: BatcherSettings) -> Version:
        runtime = runtimes[0]
        stats = Stats()
        metrics = self.metrics.for_version(name, version)

        def on_batch(record: BatchRecord) -> None:
            stats.record_batch(record)
            metrics.batch.observe(record.size)
            metrics.compute.observe(record.compute_s)
            if record.reruns:
                self.metrics.batch_reruns.labels(name, version).inc(record.reruns)
                log.warning("model %s:%s: a batch of %d requests failed; reran each alone, "
                            "%d failed alone", name, version, record.reruns,
                            record.failed_alone, extra={"model": name})

        batcher = Batcher(runtimes, settings, on_batch, name=f"{name}:{version}")
        signature = tuple(
            (m.name, DATATYPES[m.datatype], tuple(m.shape)) for m in runtime.inputs
        )
        return Version(
            name, version, runtime, batcher, metrics, stats,
            signature=signature,
            output_names=tuple(m.name for m in runtime.outputs),
            max_batch_size=runtime.max_batch_size,
        )


def _route_as_configured(model: Model, config: ModelConfig, params: dict[str, Any]) -> None:
    """Set a freshly loaded model's default version and canary from ``config.pbtxt``'s
    ``parameters``, overridden by the load request's ``params``."""
    name, versions = model.name, model.versions
    merged = {**config.parameters, **{k: v for k, v in params.items() if v is not None}}
    model.default_version = _opt_str(merged.get("default_version"))
    model.canary_version = _opt_str(merged.get("canary_version"))
    try:
        fraction = float(merged.get("canary_fraction", 0.0))
    except (TypeError, ValueError):
        raise RepositoryError(f"model {name!r}: canary_fraction must be a number") from None
    if not 0.0 <= fraction <= 1.0:
        raise RepositoryError(f"model {name!r}: canary_fraction must be within [0, 1]")
    for label in ("default_version", "canary_version"):
        chosen = getattr(model, label)
        if chosen is not None and chosen not in versions:
            raise RepositoryError(
                f"model {name!r}: {label} {chosen!r} is not among the loaded versions "
                f"{sorted(versions, key=version_key)}"
            )
    model.canary_fraction = fraction if model.canary_version else 0.0


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
