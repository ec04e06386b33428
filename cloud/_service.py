"""The protocol-agnostic inference service (the data plane and the model repository).

:class:`InferenceService` knows nothing of HTTP: it routes a decoded
:class:`~cloud.protocol.InferRequest` to a model version, validates it against the
version's signature, queues it on that version's batcher and returns the outputs. It hosts
ONNX models from a Triton-layout repository (``<model>/<version>/model.onnx`` plus an
optional ``config.pbtxt``) and any :class:`~cloud._runtime.ModelRuntime` registered in code.

It is the one face of four collaborators, each with one job, that share one routing
table (:class:`~cloud._table.ModelTable`: which versions serve, the default version and
the canary split): :class:`~cloud._loader.Loader` builds versions and loads and unloads
them, :class:`~cloud._dispatch.Dispatcher` serves requests on them, and
:class:`~cloud._reports.Reports` describes them (metadata, configuration, statistics,
Triton's metrics, profiles).

Concurrency: requests are served on one asyncio loop; loads and unloads run in threads.
The routing table is replaced, never mutated, so a request sees either the old or the new
set of versions; an unloaded version finishes what it queued before its sessions close,
which is how a hot load or a rollback loses no request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from cloud._dispatch import Dispatcher, InferResult
from cloud._loader import Loader
from cloud._metrics import Metrics
from cloud._reports import Reports
from cloud._runtime import ModelRuntime
from cloud._table import ModelTable
from cloud._tensors import InferRequest
from cloud.errors import RepositoryError

__all__ = ["InferResult", "InferenceService"]


class InferenceService:
    """Hosts model versions and serves inference requests on them.

    ``repository``: a Triton-layout directory (optional; runtimes can be added in code).
    ``providers``: ONNX Runtime execution providers (default: CUDA when present, then CPU).
    ``intra_op_threads``: ONNX Runtime threads per instance (default: cores / instances).
    ``max_queue_size``: requests that may wait per version before ``Overloaded`` (503).
    ``dynamic_batching``: batch models that have no ``config.pbtxt`` (with a config, its
    ``dynamic_batching`` block decides, as in Triton). ``ort_spinning``: let idle ONNX
    Runtime threads spin (lower latency on a host with cores to spare).
    ``profile_max_elements``: the most input elements one profile request may ask for.
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
        self.repository = Path(repository) if repository is not None else None
        if self.repository is not None and not self.repository.is_dir():
            raise RepositoryError(f"model repository {self.repository} is not a directory")
        self.metrics = metrics or Metrics()
        self._table = ModelTable()
        self._loader = Loader(
            self._table, self.metrics, self.repository,
            providers=list(providers) if providers else None,
            intra_op_threads=intra_op_threads, max_queue_size=max_queue_size,
            dynamic_batching=dynamic_batching,
            default_max_queue_delay_us=default_max_queue_delay_us, ort_spinning=ort_spinning,
        )
        self._dispatch = Dispatcher(self._table, self.metrics)
        self._reports = Reports(self._table, profile_max_elements)
        self.metrics.text_sources.append(self._reports.triton_metrics)
        #: Readiness requires every model to be serving (Triton's --strict-readiness).
        self.strict_readiness = True

    # ------------------------------------------------------------------ lifecycle

    def load_all(self) -> list[str]:
        """Load every model of the repository; failures are logged and kept in the index."""
        return self._loader.load_all()

    def close(self) -> None:
        """Unload everything (queued requests finish first)."""
        self._table.close()

    @property
    def ready(self) -> bool:
        """Server readiness: not closed, and (with ``strict_readiness``, Triton's default)
        every model it tried to load is serving (a failed reload of a model whose old
        versions still serve does not count)."""
        return self._table.ready(self.strict_readiness)

    def failed(self) -> dict[str, str]:
        """Models whose last load failed and that serve no version: name -> why."""
        return self._table.failed()

    # ------------------------------------------------------------------ versions and routing

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
        self._loader.add_runtime(name, instances, version, dynamic_batching, max_queue_delay_us,
                                 preferred_batch_sizes, max_queue_size)

    def remove_model(self, name: str, version: str | None = None) -> None:
        """Stop serving ``name`` (or one version of it); queued requests finish first."""
        self._table.remove(name, version)

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
        self._table.set_routing(name, default_version, canary_version, canary_fraction)

    # ------------------------------------------------------------------ repository extension

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index: every model on disk or registered, with its state."""
        return self._loader.index(ready_only)

    def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Load (or reload) a repository model: new or changed versions are loaded before
        they replace the old ones, versions the policy drops drain and close.

        ``parameters`` may set ``default_version``, ``canary_version`` and
        ``canary_fraction`` (overriding ``config.pbtxt``'s ``parameters``).
        """
        self._loader.load(name, parameters)

    def unload(self, name: str, version: str | None = None) -> None:
        """Unload a model (or only one version: rollback by unloading the newest)."""
        self._table.remove(name, version)

    # ------------------------------------------------------------------ inference

    def require(self, name: str, version: str | None = None) -> None:
        """Raise ``NotFound``/``ModelNotReady`` unless ``name`` (``version``) can serve."""
        self._table.version(name, version)

    def input_check(self, name: str, version: str | None, max_bytes_elements: int
                    ) -> Callable[[str, str, tuple[int, ...]], None] | None:
        """A check of one input's ``(name, datatype, shape)`` against the model, for the
        decoder to call before it decodes the input's data (``None``: an unknown model,
        which the service refuses later). BYTES inputs may have at most
        ``max_bytes_elements`` elements."""
        return self._dispatch.input_check(name, version, max_bytes_elements)

    def takes_bytes(self, name: str, version: str | None) -> bool:
        """Whether the model (any loaded version when ``version`` is None) has BYTES inputs."""
        return self._dispatch.takes_bytes(name, version)

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResult:
        """Validate ``request`` against the model's signature, queue it and await outputs."""
        return await self._dispatch.infer(name, version, request)

    def infer_now(self, name: str, request: InferRequest
                  ) -> InferResult | Coroutine[Any, Any, InferResult] | None:
        """Serve ``request`` (default version) at once on the loop when its model can.

        For a model whose batcher runs short requests inline (one instance, no batching,
        a runtime with ``prepare``): returns the result when it ran here, or a coroutine
        to await when the runtime prepared it for its worker. ``None``: nothing was done
        (unknown model, a canary split, a busy worker); use ``infer``. An invalid request
        raises as ``infer`` would.
        """
        return self._dispatch.infer_now(name, request)

    # ------------------------------------------------------------------ reports

    def server_metadata(self) -> dict[str, Any]:
        """The protocol's server metadata (name, version, extensions)."""
        return self._reports.server_metadata()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether ``name`` (``version``, or the default one) is loaded and can serve."""
        return self._reports.model_ready(name, version)

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The protocol's model metadata (versions, platform, inputs, outputs)."""
        return self._reports.model_metadata(name, version)

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration extension, as JSON (what ``get_model_config`` reads)."""
        return self._reports.model_config(name, version)

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: per model version counts and cumulative times."""
        return self._reports.statistics(name, version)

    async def profile(self, name: str, version: str | None, runs: int, batch: int,
                      shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
        """edgecut's profile extension: ONNX Runtime's per-node profile of a served model."""
        return await self._reports.profile(name, version, runs, batch, shapes)
