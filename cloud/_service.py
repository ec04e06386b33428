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
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud._batcher import Batcher, BatcherSettings, BatchRecord
from cloud._config import ModelConfig
from cloud._deferred import after_answer
from cloud._metrics import Metrics
from cloud._models import (
    Model,
    Stats,
    Version,
    check_input,
    check_name,
    peek_default,
    replace_versions,
    validate,
    version_key,
)
from cloud._reports import Reports
from cloud._repository import onnx_instances, read_model_dir, repository_names
from cloud._runtime import ModelRuntime
from cloud._tensors import DATATYPES, InferRequest
from cloud.errors import (
    CloudError,
    NotFound,
    ProtocolError,
    RepositoryError,
    Unavailable,
)

__all__ = ["InferResult", "InferenceService"]

log = logging.getLogger("edgecut.cloud")


@dataclass(frozen=True)
class InferResult:
    """A served request: the version that ran it, its outputs and the server-side times."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    queue_ms: float
    compute_ms: float
    batch_size: int


class InferenceService(Reports):
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
        profile_max_elements: int = 1 << 24,
    ) -> None:
        self.profile_max_elements = profile_max_elements
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
        self.metrics.text_sources.append(self._triton_metrics)
        self._models: dict[str, Model] = {}
        self._failed: dict[str, str] = {}  # model -> why its last load failed
        self._skipped: dict[str, list[str]] = {}  # model -> version folders passed over
        self._lock = threading.RLock()  # serializes loads and unloads, not requests
        self._closed = False
        #: Readiness requires every model to be serving (Triton's --strict-readiness).
        self.strict_readiness = True

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
            except Exception as exc:  # noqa: BLE001 - one bad model must not stop the others
                log.exception("model %s failed to load", name, extra={"model": name})
                with self._lock:
                    self._failed[name] = f"{type(exc).__name__}: {exc}"
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
        """Server readiness: not closed, and (with ``strict_readiness``, Triton's default)
        every model it tried to load is serving (a failed reload of a model whose old
        versions still serve does not count)."""
        if self._closed:
            return False
        return not self.strict_readiness or all(name in self._models for name in self._failed)

    def failed(self) -> dict[str, str]:
        """Models whose last load failed and that serve no version: name -> why."""
        return {name: why for name, why in self._failed.items() if name not in self._models}

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
        built = self._build_version(name, version, runtimes, settings)
        with self._lock:
            current = self._models.get(name)
            versions = dict(current.versions) if current else {}
            old = versions.get(version)
            versions[version] = built
            model = Model(name, versions) if current is None else replace_versions(current, versions)
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
                    self._models = {**self._models, name: replace_versions(model, rest)}
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
        return repository_names(self.repository)

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: every model on disk or registered, with its state."""
        entries: list[dict[str, Any]] = []
        names = set(self._repository_names()) | set(self._models)
        for name in sorted(names):
            model = self._models.get(name)
            if model is not None and model.versions:
                for version in sorted(model.versions, key=version_key):
                    entries.append({"name": name, "version": version, "state": "READY", "reason": ""})
            elif not ready_only:
                reason = self._failed.get(name, "")
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason or "unloaded"})
            if not ready_only:  # version folders passed over, each with why
                for why in self._skipped.get(name, ()):
                    entries.append({"name": name, "state": "UNAVAILABLE", "reason": why})
        return entries

    def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) a repository model: new or changed versions are loaded before
        they replace the old ones, versions the policy drops drain and close.

        ``parameters`` may set ``default_version``, ``canary_version`` and
        ``canary_fraction`` (overriding ``config.pbtxt``'s ``parameters``).
        """
        check_name(name)
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
            except (OSError, ValueError) as exc:  # an unreadable folder or file
                self._failed[name] = f"{type(exc).__name__}: {exc}"
                raise RepositoryError(f"model {name!r} failed to load: {exc}") from exc

    def _load_locked(self, name: str, model_dir: Path, params: dict[str, Any]) -> None:
        if not model_dir.is_dir():
            raise NotFound(f"model {name!r} is not in the repository {self.repository}")
        config, wanted, self._skipped[name] = read_model_dir(name, model_dir)
        filename = config.default_model_filename
        current = self._models.get(name)
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
                    f"{sorted(versions, key=version_key)}"
                )
        model.canary_fraction = fraction if model.canary_version else 0.0
        self._models = {**self._models, name: model}
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

    def unload(self, name: str, version: str | None = None) -> None:
        """Unload a model (or only one version: rollback by unloading the newest)."""
        self.remove_model(name, version)

    # ------------------------------------------------------------------ metadata

    def _require(self, name: str) -> Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}")
        return model

    def _version(self, name: str, version: str | None) -> Version:
        model = self._require(name)
        if version is None:
            return peek_default(model)
        found = model.versions.get(version)
        if found is None:
            raise NotFound(
                f"model {name!r} has no version {version!r} loaded "
                f"(loaded: {sorted(model.versions, key=version_key)})"
            )
        return found

    def require(self, name: str, version: str | None = None) -> None:
        """Raise ``NotFound``/``ModelNotReady`` unless ``name`` (``version``) can serve."""
        self._version(name, version)

    def input_check(self, name: str, version: str | None, max_bytes_elements: int
                    ) -> Callable[[str, str, tuple[int, ...]], None] | None:
        """A check of one input's ``(name, datatype, shape)`` against the model, for the
        decoder to call before it decodes the input's data (``None``: an unknown model,
        which the service refuses later). BYTES inputs may have at most
        ``max_bytes_elements`` elements."""
        model = self._models.get(name)
        if model is None:
            return None
        if version is None:
            targets = list(model.versions.values())  # routing may pick any of them
        elif version in model.versions:
            targets = [model.versions[version]]
        else:
            return None
        if not targets:
            return None
        return functools.partial(check_input, name, targets, max_bytes_elements)

    def takes_bytes(self, name: str, version: str | None) -> bool:
        """Whether the model (any loaded version when ``version`` is None) has BYTES inputs."""
        model = self._models.get(name)
        if model is None:
            return False
        versions = model.versions.values() if version is None else [
            v for k, v in model.versions.items() if k == version]
        return any(dtype.kind == "O" for v in versions for _n, dtype, _s in v.signature)

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResult:
        """Validate ``request`` against the model's signature, queue it and await outputs."""
        model = self._require(name)
        target = self._version(name, version) if version is not None else model.route()
        batch = validate(target, request)
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
        batch = validate(target, request)
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

    async def _settle(self, model: Model, target: Version, request: InferRequest, batch: int,
                      start: float, future: asyncio.Future) -> InferResult:
        try:
            item = await future
        except CloudError as exc:
            self._record_failure(target, exc, time.perf_counter() - start)
            raise
        finally:
            self._leave(model)
        return self._finish(target, request, item, batch, start)

    def _enter(self, model: Model) -> None:
        model.in_flight += 1
        self.metrics.in_flight.labels(model.name).inc()

    def _leave(self, model: Model) -> None:
        model.in_flight -= 1
        self.metrics.in_flight.labels(model.name).dec()

    def _finish(self, target: Version, request: InferRequest, item: Any, batch: int,
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
    def _count(target: Version, batch: int, elapsed: float, queue_s: float) -> None:
        stats = target.stats
        with stats.lock:
            stats.inference_count += batch
            stats.success.add(elapsed)
            stats.last_inference_ms = int(time.time() * 1000)
        m = target.metrics
        m.requests.inc()
        m.queue.observe(queue_s)
        m.request_time.observe(elapsed)

    def _record_failure(self, target: Version, exc: CloudError, elapsed: float) -> None:
        with target.stats.lock:
            target.stats.fail.add(elapsed)
        target.metrics.failure(type(exc).__name__)

    # ------------------------------------------------------------------ statistics, profile


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
