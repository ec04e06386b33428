"""Serving one request: route it to a version, validate it, queue it and settle its answer.

:class:`Dispatcher` reads the :class:`~cloud._table.ModelTable` without its lock (the
table is replaced, never mutated) and counts each request in the version's statistics and
metrics. It also answers the decoders' early questions (:meth:`Dispatcher.input_check`,
:meth:`Dispatcher.takes_bytes`), so that a request the model cannot take is refused
before its tensors are decoded.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud._deferred import after_answer
from cloud._metrics import Metrics
from cloud._models import Model, Version, check_input, validate
from cloud._table import ModelTable
from cloud._tensors import InferRequest
from cloud.errors import CloudError, ProtocolError, Unavailable

__all__ = ["Dispatcher", "InferResult"]


@dataclass(frozen=True)
class InferResult:
    """A served request: the version that ran it, its outputs and the server-side times."""

    model: str
    version: str
    outputs: dict[str, np.ndarray]
    queue_ms: float
    compute_ms: float
    batch_size: int


class Dispatcher:
    """Routes requests to the versions of ``table`` and counts them in ``metrics``."""

    def __init__(self, table: ModelTable, metrics: Metrics) -> None:
        self.table = table
        self.metrics = metrics

    # ------------------------------------------------------------------ early checks

    def input_check(self, name: str, version: str | None, max_bytes_elements: int
                    ) -> Callable[[str, str, tuple[int, ...]], None] | None:
        model = self.table.models.get(name)
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
        model = self.table.models.get(name)
        if model is None:
            return False
        versions = model.versions.values() if version is None else [
            v for k, v in model.versions.items() if k == version]
        return any(dtype.kind == "O" for v in versions for _n, dtype, _s in v.signature)

    # ------------------------------------------------------------------ inference

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResult:
        table = self.table
        model = table.require(name)
        target = table.version(name, version) if version is not None else model.route()
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
                target = table.require(name).route()
                future = target.batcher.submit(request.inputs, batch)
        except BaseException as exc:
            if isinstance(exc, CloudError):
                self._record_failure(target, exc, time.perf_counter() - start)
            self._leave(model)
            raise
        return await self._settle(model, target, request, batch, start, future)

    def infer_now(self, name: str, request: InferRequest
                  ) -> InferResult | Coroutine[Any, Any, InferResult] | None:
        model = self.table.models.get(name)
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
        after_answer(_count, target, batch, time.perf_counter() - start, item.queue_s)
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
    def _record_failure(target: Version, exc: CloudError, elapsed: float) -> None:
        with target.stats.lock:
            target.stats.fail.add(elapsed)
        target.metrics.failure(type(exc).__name__)


def _count(target: Version, batch: int, elapsed: float, queue_s: float) -> None:
    """A success in the version's statistics and metrics (after the answer is written)."""
    stats = target.stats
    with stats.lock:
        stats.inference_count += batch
        stats.success.add(elapsed)
        stats.last_inference_ms = int(time.time() * 1000)
    m = target.metrics
    m.requests.inc()
    m.queue.observe(queue_s)
    m.request_time.observe(elapsed)
