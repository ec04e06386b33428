"""The protocol-agnostic inference service (the data plane and the model repository).

:class:`InferenceService` knows nothing of HTTP: it routes a decoded
:class:`~cloud.protocol.InferRequest` to a model version, validates it against the
version's signature, queues it on that version's batcher and returns the outputs. It hosts
ONNX models from a Triton-layout repository (``<model>/<version>/model.onnx`` plus an
optional ``config.pbtxt``) and any :class:`~cloud._runtime.ModelRuntime` registered in code.

Concurrency: requests are served on one asyncio loop; loads and unloads run in threads.
The routing table is replaced, never mutated, so a request sees either the old or the new
set of versions; an unloaded version finishes what it queued before its sessions close,
which is how a hot load or a rollback loses no request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud._batcher import Batcher, BatcherSettings, BatchRecord
from cloud._config import ModelConfig, read_config
from cloud._deferred import after_answer
from cloud._metrics import Metrics, VersionMetrics
from cloud._runtime import ModelRuntime, OnnxRuntime
from cloud._threads import to_thread
from cloud.errors import (
    CloudError,
    ModelNotReady,
    NotFound,
    ProtocolError,
    RepositoryError,
    Unavailable,
)
from cloud.protocol import DATATYPES, InferRequest

__all__ = ["InferResult", "InferenceService"]

log = logging.getLogger("edgecut.cloud")

SERVER_NAME = "edgecut"
SERVER_VERSION = "0.1.0"
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "edgecut_profile",
    "edgecut_canary",
)


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Stats:
    """Triton's statistics extension counters for one version."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)


@dataclass(eq=False)
class _Version:
    model: str
    version: str
    runtime: ModelRuntime
    batcher: Batcher
    metrics: VersionMetrics
    stats: _Stats
    source: Path | None = None
    mtime: float | None = None
    # (name, dtype, shape) per input, precomputed for the per-request checks
    signature: tuple[tuple[str, np.dtype, tuple[int, ...]], ...] = ()
    output_names: tuple[str, ...] = ()
    max_batch_size: int = 0

    def close(self) -> None:
        self.batcher.close()


@dataclass(eq=False)
class _Model:
    name: str
    versions: dict[str, _Version]
    config: ModelConfig | None = None
    from_repository: bool = False
    default_version: str | None = None
    canary_version: str | None = None
    canary_fraction: float = 0.0
    _canary_acc: float = 0.0
    in_flight: int = 0

    def route(self) -> _Version:
        versions = self.versions
        if not versions:
            raise ModelNotReady(f"model {self.name!r} has no version ready")
        if self.canary_version in versions and self.canary_fraction > 0:
            # Deterministic weighted round robin: exactly this fraction, evenly spread.
            self._canary_acc += self.canary_fraction
            if self._canary_acc >= 1.0:
                self._canary_acc -= 1.0
                return versions[self.canary_version]  # type: ignore[index]
        if self.default_version in versions:
            return versions[self.default_version]  # type: ignore[index]
        return versions[self.highest]

    @functools.cached_property
    def highest(self) -> str:
        # versions is never mutated in place (a change builds a new _Model), so cache it
        return max(self.versions, key=_version_key)


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


@dataclass(frozen=True)
class InferResult:
    """A served request: the version that ran it, its outputs and the server-side times."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    queue_ms: float
    compute_ms: float
    batch_size: int


class InferenceService:
    """Hosts model versions and serves inference requests on them.

    ``repository``: a Triton-layout directory (optional; runtimes can be added in code).
    ``providers``: ONNX Runtime execution providers (default: CUDA when present, then CPU).
    ``intra_op_threads``: ONNX Runtime threads per instance (default: cores / instances).
    ``max_queue_size``: requests that may wait per version before ``Overloaded`` (503).
    ``dynamic_batching``: batch models that have no ``config.pbtxt`` (with a config, its
    ``dynamic_batching`` block decides, as in Triton). ``ort_spinning``: let idle ONNX
    Runtime threads spin (lower latency on a host with cores to spare).
    """

    def __init__(
        self,
        repository: str | Path | None = None,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        max_queue_size: int = 128,
        dynamic_batching: bool = True,
        default_max_queue_delay_us: int = 0,
        ort_spinning: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.repository = Path(repository) if repository is not None else None
        if self.repository is not None and not self.repository.is_dir():
            raise RepositoryError(f"model repository {self.repository} is not a directory")
        self.providers = list(providers) if providers else None
        self.intra_op_threads = intra_op_threads
        self.max_queue_size = max_queue_size
        self.dynamic_batching = dynamic_batching
        self.default_max_queue_delay_us = default_max_queue_delay_us
        self.ort_spinning = ort_spinning
        self.metrics = metrics or Metrics()
        self._models: dict[str, _Model] = {}
        self._failed: dict[str, str] = {}  # model -> why its last load failed
        self._lock = threading.RLock()  # serializes loads and unloads, not requests
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def load_all(self) -> list[str]:
        """Load every model of the repository; failures are logged and kept in the index."""
        loaded = []
        for name in self._repository_names():
            try:
                self.load(name)
                loaded.append(name)
            except CloudError as exc:
                log.error("model %s failed to load: %s", name, exc, extra={"model": name})
        return loaded

    def close(self) -> None:
        """Unload everything (queued requests finish first)."""
        with self._lock:
            self._closed = True
            models, self._models = self._models, {}
        for model in models.values():
            for version in model.versions.values():
                version.close()

    @property
    def ready(self) -> bool:
        """Server readiness: not closed, and every model it tried to load is serving (a
        failed reload of a model whose old versions still serve does not count)."""
        return not self._closed and all(name in self._models for name in self._failed)

    # ------------------------------------------------------------------ runtimes in code

    def add_runtime(
        self,
        name: str,
        instances: ModelRuntime | Sequence[ModelRuntime],
        version: str = "1",
        *,
        dynamic_batching: bool = False,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int | None = None,
    ) -> None:
        """Serve ``instances`` (one or more runtimes of one model) as ``name``/``version``.

        Each instance gets its own worker thread. Adding an existing version replaces it
        (the old one drains first, so this call may block: call it off the event loop);
        other versions of the model stay.
        """
        _check_name(name)
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
        built = self._build_version(name, version, runtimes, settings)
        with self._lock:
            current = self._models.get(name)
            versions = dict(current.versions) if current else {}
            old = versions.get(version)
            versions[version] = built
            model = _Model(name, versions) if current is None else _replace_versions(current, versions)
            self._models = {**self._models, name: model}
        if old is not None:
            old.close()

    def remove_model(self, name: str, version: str | None = None) -> None:
        """Stop serving ``name`` (or one version of it); queued requests finish first."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise NotFound(f"unknown model {name!r}")
            if version is None:
                closing = list(model.versions.values())
                self._models = {k: v for k, v in self._models.items() if k != name}
            else:
                if version not in model.versions:
                    raise NotFound(f"model {name!r} has no version {version!r} loaded")
                closing = [model.versions[version]]
                rest = {k: v for k, v in model.versions.items() if k != version}
                if rest:
                    self._models = {**self._models, name: _replace_versions(model, rest)}
                else:
                    self._models = {k: v for k, v in self._models.items() if k != name}
        for item in closing:
            item.close()

    def set_routing(
        self,
        name: str,
        *,
        default_version: str | None = None,
        canary_version: str | None = None,
        canary_fraction: float = 0.0,
    ) -> None:
        """Route unversioned requests: ``canary_fraction`` of them to ``canary_version``,
        the rest to ``default_version`` (``None``: the highest loaded version)."""
        if not 0.0 <= canary_fraction <= 1.0:
            raise RepositoryError(f"canary_fraction must be within [0, 1], got {canary_fraction}")
        with self._lock:
            model = self._require(name)
            for label, v in (("default_version", default_version), ("canary_version", canary_version)):
                if v is not None and v not in model.versions:
                    raise RepositoryError(
                        f"model {name!r}: {label} {v!r} is not loaded (loaded: {sorted(model.versions)})"
                    )
            model.default_version = default_version
            model.canary_version = canary_version
            model.canary_fraction = canary_fraction if canary_version else 0.0
            model._canary_acc = 0.0

    # ------------------------------------------------------------------ repository extension

    def _repository_names(self) -> list[str]:
        if self.repository is None:
            return []
        return sorted(
            p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: every model on disk or registered, with its state."""
        entries: list[dict[str, Any]] = []
        names = set(self._repository_names()) | set(self._models)
        for name in sorted(names):
            model = self._models.get(name)
            if model is not None and model.versions:
                for version in sorted(model.versions, key=_version_key):
                    entries.append({"name": name, "version": version, "state": "READY", "reason": ""})
            elif not ready_only:
                reason = self._failed.get(name, "")
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason or "unloaded"})
        return entries

    def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) a repository model: new or changed versions are loaded before
        they replace the old ones, versions the policy drops drain and close.

        ``parameters`` may set ``default_version``, ``canary_version`` and
        ``canary_fraction`` (overriding ``config.pbtxt``'s ``parameters``).
        """
        _check_name(name)
        if self.repository is None:
            raise RepositoryError("this service has no model repository to load from")
        params = dict(parameters or {})
        unknown = set(params) - {"default_version", "canary_version", "canary_fraction", "config"}
        if unknown:
            raise RepositoryError(f"load of {name!r}: unknown parameters {sorted(unknown)}")
        if "config" in params:
            raise RepositoryError(f"load of {name!r}: a config override is not supported; edit config.pbtxt")
        model_dir = self.repository / name
        with self._lock:
            try:
                self._load_locked(name, model_dir, params)
                self._failed.pop(name, None)
            except CloudError as exc:
                if not isinstance(exc, NotFound):
                    self._failed[name] = str(exc)
                raise

    def _load_locked(self, name: str, model_dir: Path, params: dict[str, Any]) -> None:
        if not model_dir.is_dir():
            raise NotFound(f"model {name!r} is not in the repository {self.repository}")
        config = read_config(model_dir)
        if config.name is not None and config.name != name:
            raise RepositoryError(
                f"{model_dir / 'config.pbtxt'}: name {config.name!r} does not match the folder {name!r}"
            )
        filename = config.default_model_filename
        available = [
            int(p.name) for p in model_dir.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
        ]
        wanted = config.version_policy.select(available)
        if not wanted:
            raise RepositoryError(
                f"model {name!r}: no version to load (on disk: {sorted(available)}, policy "
                f"{config.version_policy.kind})"
            )
        current = self._models.get(name)
        old_versions = current.versions if current else {}
        versions: dict[str, _Version] = {}
        built: list[_Version] = []
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
        model = _Model(name, versions, config, from_repository=True)
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
                for version in built:
                    version.close()
                raise RepositoryError(
                    f"model {name!r}: {label} {chosen!r} is not among the loaded versions "
                    f"{sorted(versions, key=_version_key)}"
                )
        model.canary_fraction = fraction if model.canary_version else 0.0
        self._models = {**self._models, name: model}
        for v, old in old_versions.items():
            if versions.get(v) is not old:
                old.close()  # drains what it already queued
        log.info("model %s loaded versions %s", name, sorted(versions, key=_version_key),
                 extra={"model": name})

    def _load_onnx_version(self, name: str, version: str, path: Path, config: ModelConfig) -> _Version:
        count = config.instance_count
        threads = self.intra_op_threads
        if "intra_op_threads" in config.parameters:
            try:
                threads = int(config.parameters["intra_op_threads"])
            except ValueError:
                raise RepositoryError(f"model {name!r}: parameter intra_op_threads must be an integer") from None
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // count)
        instances = [
            OnnxRuntime(path, max_batch_size=config.max_batch_size, providers=self.providers,
                        intra_op_threads=threads, spinning=self.ort_spinning)
            for _ in range(count)
        ]
        runtime = instances[0]
        # With a config.pbtxt its dynamic_batching block decides (as in Triton); without
        # one, the service's default does.
        has_config = (path.parent.parent / "config.pbtxt").is_file()
        batching = config.dynamic_batching if has_config else self.dynamic_batching
        delay = config.max_queue_delay_us if config.dynamic_batching else self.default_max_queue_delay_us
        settings = BatcherSettings(
            max_batch_size=runtime.max_batch_size if batching else 0,
            max_queue_delay_s=delay / 1e6,
            preferred_batch_sizes=config.preferred_batch_sizes,
            max_queue_size=config.max_queue_size or self.max_queue_size,
        )
        version_obj = self._build_version(name, version, instances, settings)
        version_obj.source = path
        return version_obj

    def _build_version(self, name: str, version: str, runtimes: list[ModelRuntime],
                       settings: BatcherSettings) -> _Version:
        runtime = runtimes[0]
        stats = _Stats()
        metrics = self.metrics.for_version(name, version)

        def on_batch(record: BatchRecord) -> None:
            with stats.lock:
                stats.execution_count += 1
                stats.compute.add(record.compute_s, record.requests)
                for q in record.queue_s:
                    stats.queue.add(q)
                per = stats.batches.setdefault(record.size, _Duration())
                per.add(record.compute_s)
            metrics.batch.observe(record.size)
            metrics.compute.observe(record.compute_s)

        batcher = Batcher(runtimes, settings, on_batch, name=f"{name}:{version}")
        signature = tuple(
            (m.name, DATATYPES[m.datatype], tuple(m.shape)) for m in runtime.inputs
        )
        return _Version(
            name, version, runtime, batcher, metrics, stats,
            signature=signature,
            output_names=tuple(m.name for m in runtime.outputs),
            max_batch_size=runtime.max_batch_size,
        )

    def unload(self, name: str, version: str | None = None) -> None:
        """Unload a model (or only one version: rollback by unloading the newest)."""
        self.remove_model(name, version)

    # ------------------------------------------------------------------ metadata

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def _require(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}")
        return model

    def _version(self, name: str, version: str | None) -> _Version:
        model = self._require(name)
        if version is None:
            return _peek_default(model)
        found = model.versions.get(version)
        if found is None:
            raise NotFound(
                f"model {name!r} has no version {version!r} loaded "
                f"(loaded: {sorted(model.versions, key=_version_key)})"
            )
        return found

    def require(self, name: str, version: str | None = None) -> None:
        """Raise ``NotFound``/``ModelNotReady`` unless ``name`` (``version``) can serve."""
        self._version(name, version)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self._version(name, version)
        except (NotFound, ModelNotReady):
            return False
        return True

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The protocol's model metadata (versions, platform, inputs, outputs)."""
        model = self._require(name)
        chosen = self._version(name, version)
        return {
            "name": name,
            "versions": sorted(model.versions, key=_version_key) if version is None else [version],
            "platform": chosen.runtime.platform,
            "inputs": [m.as_json() for m in chosen.runtime.inputs],
            "outputs": [m.as_json() for m in chosen.runtime.outputs],
        }

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration extension, as JSON (what ``get_model_config`` reads)."""
        model = self._require(name)
        chosen = self._version(name, version)
        batched = chosen.max_batch_size > 0
        settings = chosen.batcher.settings

        def dims(shape: tuple[int, ...]) -> list[int]:
            return list(shape[1:] if batched else shape)

        config: dict[str, Any] = {
            "name": name,
            "platform": chosen.runtime.platform,
            "max_batch_size": chosen.max_batch_size,
            "input": [{"name": m.name, "data_type": "TYPE_" + _config_type(m.datatype),
                       "dims": dims(m.shape)} for m in chosen.runtime.inputs],
            "output": [{"name": m.name, "data_type": "TYPE_" + _config_type(m.datatype),
                        "dims": dims(m.shape)} for m in chosen.runtime.outputs],
            "instance_group": [{"count": len(chosen.batcher.instances)}],
        }
        if settings.max_batch_size > 0:
            config["dynamic_batching"] = {
                "preferred_batch_size": list(settings.preferred_batch_sizes),
                "max_queue_delay_microseconds": int(settings.max_queue_delay_s * 1e6),
                "default_queue_policy": {"max_queue_size": settings.max_queue_size},
            }
        if model.config is not None:
            policy = model.config.version_policy
            config["version_policy"] = (
                {"latest": {"num_versions": policy.num_versions}} if policy.kind == "latest"
                else {"specific": {"versions": list(policy.versions)}} if policy.kind == "specific"
                else {"all": {}}
            )
        config["parameters"] = {
            "default_version": {"string_value": model.default_version or ""},
            "canary_version": {"string_value": model.canary_version or ""},
            "canary_fraction": {"string_value": str(model.canary_fraction)},
        }
        return config

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResult:
        """Validate ``request`` against the model's signature, queue it and await outputs."""
        model = self._require(name)
        target = self._version(name, version) if version is not None else model.route()
        batch = self._validate(target, request)
        start = time.perf_counter()
        self._enter(model)
        try:
            try:
                future = target.batcher.submit(request.inputs, batch)
            except Unavailable:
                if version is not None:
                    raise
                # Routed to a version that began unloading a moment ago: re-route once.
                target = self._require(name).route()
                future = target.batcher.submit(request.inputs, batch)
        except BaseException as exc:
            if isinstance(exc, CloudError):
                self._record_failure(target, exc, time.perf_counter() - start)
            self._leave(model)
            raise
        return await self._settle(model, target, request, batch, start, future)

    def infer_now(self, name: str, request: InferRequest
                  ) -> InferResult | Coroutine[Any, Any, InferResult] | None:
        """Serve ``request`` (default version) at once on the loop when its model can.

        For a model whose batcher runs short requests inline (one instance, no batching,
        a runtime with ``prepare``): returns the result when it ran here, or a coroutine
        to await when the runtime prepared it for its worker. ``None``: nothing was done
        (unknown model, a canary split, a busy worker); use ``infer``. An invalid request
        raises as ``infer`` would.
        """
        model = self._models.get(name)
        if model is None or model.canary_fraction > 0:
            return None
        target = model.route()
        batch = self._validate(target, request)
        start = time.perf_counter()
        # Counted in flight only if it waits: an inline run begins and ends before anyone
        # else (a scrape of the gauge included) gets the loop.
        model.in_flight += 1
        try:
            done = target.batcher.run_now(request.inputs, batch)
        except CloudError as exc:
            model.in_flight -= 1
            self._record_failure(target, exc, time.perf_counter() - start)
            raise
        model.in_flight -= 1
        if done is None:
            return None
        if isinstance(done, asyncio.Future):
            self._enter(model)
            return self._settle(model, target, request, batch, start, done)
        if done.error is not None:
            self._record_failure(target, done.error, time.perf_counter() - start)  # type: ignore[arg-type]
            raise done.error
        return self._finish(target, request, done, batch, start)

    async def _settle(self, model: _Model, target: _Version, request: InferRequest, batch: int,
                      start: float, future: asyncio.Future) -> InferResult:
        try:
            item = await future
        except CloudError as exc:
            self._record_failure(target, exc, time.perf_counter() - start)
            raise
        finally:
            self._leave(model)
        return self._finish(target, request, item, batch, start)

    def _enter(self, model: _Model) -> None:
        model.in_flight += 1
        self.metrics.in_flight.labels(model.name).inc()

    def _leave(self, model: _Model) -> None:
        model.in_flight -= 1
        self.metrics.in_flight.labels(model.name).dec()

    def _finish(self, target: _Version, request: InferRequest, item: Any, batch: int,
                start: float) -> InferResult:
        after_answer(self._count, target, batch, time.perf_counter() - start, item.queue_s)
        outputs = item.outputs
        wanted = request.output_names(target.output_names)
        if request.outputs is not None:
            missing = [n for n in wanted if n not in outputs]
            if missing:  # validated before queueing; a runtime that drops outputs is at fault
                raise ProtocolError(f"model {target.model!r} has no output {missing[0]!r}")
        return InferResult(
            target.model, target.version, {n: outputs[n] for n in wanted},
            item.queue_s * 1e3, item.compute_s * 1e3, item.batch_size,
        )

    @staticmethod
    def _count(target: _Version, batch: int, elapsed: float, queue_s: float) -> None:
        stats = target.stats
        with stats.lock:
            stats.inference_count += batch
            stats.success.add(elapsed)
            stats.last_inference_ms = int(time.time() * 1000)
        m = target.metrics
        m.requests.inc()
        m.queue.observe(queue_s)
        m.request_time.observe(elapsed)

    def _record_failure(self, target: _Version, exc: CloudError, elapsed: float) -> None:
        with target.stats.lock:
            target.stats.fail.add(elapsed)
        target.metrics.failure(type(exc).__name__)

    def _validate(self, target: _Version, request: InferRequest) -> int:
        inputs = request.inputs
        name = target.model
        signature = target.signature
        if len(inputs) != len(signature) or any(s[0] not in inputs for s in signature):
            expected = [s[0] for s in signature]
            unknown = [n for n in inputs if n not in expected]
            if unknown:
                raise self._invalid(target, f"model {name!r} has no input {unknown[0]!r}; expected {expected}")
            missing = [n for n in expected if n not in inputs]
            raise self._invalid(target, f"model {name!r}: input {missing[0]!r} is missing; expected {expected}")
        batch = 1
        batched = target.max_batch_size > 0
        for index, (tensor, dtype, shape) in enumerate(target.signature):
            array = inputs.get(tensor)
            if array is None:
                raise self._invalid(target, f"model {name!r}: input {tensor!r} is missing")
            if array.dtype != dtype:
                raise self._invalid(
                    target,
                    f"input {tensor!r}: expected datatype {_datatype_name(dtype)}, got "
                    f"{_datatype_name(array.dtype)}",
                )
            got = array.shape
            if len(got) != len(shape) or not _dims_match(shape, got, batched):
                raise self._invalid(
                    target, f"input {tensor!r}: expected shape {list(shape)}, got {list(got)}"
                )
            if batched:
                b = got[0]
                if index == 0:
                    batch = b
                elif b != batch:
                    raise self._invalid(
                        target, f"input {tensor!r}: batch size {b} differs from the other inputs' {batch}"
                    )
        if batched and not 1 <= batch <= target.max_batch_size:
            raise self._invalid(
                target, f"batch size {batch} is outside 1..{target.max_batch_size} for model {name!r}"
            )
        if request.outputs is not None:
            for out in request.outputs:
                if out.name not in target.output_names:
                    raise self._invalid(
                        target, f"model {name!r} has no output {out.name!r}; outputs are "
                        f"{list(target.output_names)}"
                    )
        return batch

    def _invalid(self, target: _Version, message: str) -> ProtocolError:
        target.metrics.failure("ProtocolError")
        with target.stats.lock:
            target.stats.fail.add(0.0)
        return ProtocolError(message)

    # ------------------------------------------------------------------ statistics, profile

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: per model version counts and cumulative times."""
        if name is None:
            pairs = [(m, v) for m in self._models.values() for v in m.versions.values()]
        else:
            model = self._require(name)
            if version is None:
                pairs = [(model, v) for v in model.versions.values()]
            else:
                pairs = [(model, self._version(name, version))]
        out = []
        for model, v in sorted(pairs, key=lambda p: (p[0].name, _version_key(p[1].version))):
            s = v.stats
            with s.lock:
                out.append({
                    "name": model.name,
                    "version": v.version,
                    "last_inference": s.last_inference_ms,
                    "inference_count": s.inference_count,
                    "execution_count": s.execution_count,
                    "inference_stats": {
                        "success": s.success.as_json(),
                        "fail": s.fail.as_json(),
                        "queue": s.queue.as_json(),
                        "compute_input": {"count": 0, "ns": 0},
                        "compute_infer": s.compute.as_json(),
                        "compute_output": {"count": 0, "ns": 0},
                    },
                    "batch_stats": [
                        {"batch_size": size, "compute_infer": d.as_json()}
                        for size, d in sorted(s.batches.items())
                    ],
                })
        return {"model_stats": out}

    async def profile(self, name: str, version: str | None, runs: int, batch: int,
                      shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
        """edgecut's profile extension: ONNX Runtime's per-node profile of a served model."""
        target = self._version(name, version)
        runtime = target.runtime
        if not isinstance(runtime, OnnxRuntime):
            raise ProtocolError(f"model {name!r} is not an ONNX model; only ONNX models can be profiled")
        if batch < 1:
            raise ProtocolError(f"profile batch must be >= 1, got {batch}")
        result = await to_thread(runtime.profile, runs, batch, 2, shapes)
        return {"model": name, "version": target.version, **result}


def _peek_default(model: _Model) -> _Version:
    versions = model.versions
    if not versions:
        raise ModelNotReady(f"model {model.name!r} has no version ready")
    if model.default_version in versions:
        return versions[model.default_version]  # type: ignore[index]
    return versions[model.highest]


def _dims_match(expected: tuple[int, ...], got: tuple[int, ...], batched: bool) -> bool:
    for i, (e, g) in enumerate(zip(expected, got)):
        if batched and i == 0:
            continue
        if e >= 0 and e != g:
            return False
    return True


def _datatype_name(dtype: np.dtype) -> str:
    for name, dt in DATATYPES.items():
        if dt == dtype:
            return name
    return str(dtype)


def _config_type(datatype: str) -> str:
    return {"FP16": "FP16", "FP32": "FP32", "FP64": "FP64", "BYTES": "STRING"}.get(datatype, datatype)


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise RepositoryError(f"invalid model name {name!r}")


def _replace_versions(model: _Model, versions: dict[str, _Version]) -> _Model:
    default = model.default_version if model.default_version in versions else None
    canary = model.canary_version if model.canary_version in versions else None
    return _Model(
        model.name, versions, model.config, model.from_repository,
        default, canary, model.canary_fraction if canary else 0.0,
    )
