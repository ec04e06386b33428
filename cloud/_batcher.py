"""The dynamic batcher: a bounded queue per model version and one worker thread per instance.

The event loop only appends to the queue (a lock and a notify, microseconds) and awaits a
future; worker threads form batches, run the runtime (which releases the GIL) and hand the
results back with one ``call_soon_threadsafe`` per batch. The one exception: a
single-instance model without batching whose runtime offers ``prepare`` and marks a
request as short runs it on the loop when its worker is idle and nothing waits, which
saves the two hand-offs. A batch is flushed when it
reaches the maximum batch size or a preferred size, or when the oldest request has waited
``max_queue_delay``; requests are only concatenated when every input has the same dtype and
non-batch shape. When the queue is full the request is refused at once (``Overloaded``),
so memory stays bounded under any load. When a batch of several requests fails, each is
run again alone, so that only a request that fails by itself gets the error (one
client's out-of-range index must not fail the others it was batched with); the record
counts those reruns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cloud._deferred import after_answer
from cloud._runtime import ModelRuntime, Prepared
from cloud.errors import CloudError, ExecutionError, Overloaded, Unavailable


@dataclass(eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    batch: int
    key: tuple
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 0
    call: Callable[[], dict[str, np.ndarray]] | None = None  # a prepared run, else predict


@dataclass
class BatchRecord:
    """What a worker reports after each batch (for stats and metrics)."""

    size: int
    requests: int
    queue_s: Sequence[float]
    compute_s: float
    ok: bool
    error: str | None = None
    #: requests run again alone after their batch failed, and how many of them failed alone
    reruns: int = 0
    failed_alone: int = 0


@dataclass(frozen=True)
class BatcherSettings:
    """How a model version queues and batches requests."""

    max_batch_size: int = 0
    max_queue_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 128


def _resolve(items: list[_Pending]) -> None:
    for item in items:
        if item.future.done():  # the client went away; nothing to deliver
            continue
        if item.error is not None:
            item.future.set_exception(item.error)
        else:
            item.future.set_result(item)


@dataclass(eq=False)
class Batcher:
    """Queue plus worker threads over a list of runtime instances of one model version."""

    instances: Sequence[ModelRuntime]
    settings: BatcherSettings
    on_batch: Callable[[BatchRecord], None] | None = None
    name: str = "model"
    _queue: deque = field(default_factory=deque, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _closing: bool = field(default=False, init=False)
    _busy: int = field(default=0, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for i, runtime in enumerate(self.instances):
            thread = threading.Thread(
                target=self._work, args=(runtime,), name=f"edgecut-{self.name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, inputs: dict[str, np.ndarray], batch: int) -> asyncio.Future:
        """Queue one request (called on the event loop); its future resolves to the item."""
        item = self._item(inputs, batch)
        if self._can_prepare and self._try_inline(item):
            _resolve([item])
            return item.future
        return self._enqueue(item)

    def run_now(self, inputs: dict[str, np.ndarray], batch: int) -> _Pending | asyncio.Future | None:
        """Run one request at once on the calling (loop) thread, if it may run inline.

        Returns the finished item (outputs or error set) when it ran; the future of the
        queued item when the runtime prepared it to run on its worker instead; ``None``
        when this batcher is busy or cannot prepare requests: then nothing was done and
        the request may take the ordinary route (``submit``).
        """
        if not self._can_prepare:
            return None
        item = self._item(inputs, batch)
        ran = self._try_inline(item)
        if ran is None:
            return None
        return item if ran else self._enqueue(item)

    def _item(self, inputs: dict[str, np.ndarray], batch: int) -> _Pending:
        loop = asyncio.get_running_loop()
        if self.settings.max_batch_size > 0:
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())
        else:
            key = ()
        return _Pending(inputs, batch, key, loop.create_future(), loop, time.perf_counter())

    def _try_inline(self, item: _Pending) -> bool | None:
        """Prepare ``item`` and run it here if its runtime marks it short.

        True: it ran (outputs or error set). False: prepared for the worker (``call``
        set). None: the worker is busy or requests wait; nothing was done.
        """
        with self._cond:
            idle = not self._busy and not self._queue and not self._closing
        if not idle:
            return None
        prepared = self._prepare(item)
        if prepared is None or not prepared.inline:
            item.call = None if prepared is None else prepared.run
            return False
        with self._cond:
            self._busy += 1
        try:
            self._run(self.instances[0], [item], deliver=False)
        finally:
            with self._cond:
                self._busy -= 1
                if self._closing:  # close() is waiting for it
                    # (Only then: the idle worker waits on the same condition, and
                    # waking it after every inline run costs a thread switch on the
                    # request's path.)
                    self._cond.notify_all()
        return True

    def _enqueue(self, item: _Pending) -> asyncio.Future:
        with self._cond:
            if self._closing:
                raise Unavailable(f"model {self.name!r} is being unloaded")
            if len(self._queue) >= self.settings.max_queue_size:
                raise Overloaded(
                    f"model {self.name!r}: queue is full ({self.settings.max_queue_size} "
                    "requests waiting); retry later"
                )
            self._queue.append(item)
            self._cond.notify()
        return item.future

    @property
    def _can_prepare(self) -> bool:
        return len(self.instances) == 1 and self.settings.max_batch_size <= 0

    def _prepare(self, item: _Pending) -> Prepared | None:
        try:
            return self.instances[0].prepare(item.inputs)
        except CloudError:
            raise
        except Exception as exc:  # a custom runtime's own failure, as from predict
            raise ExecutionError(
                f"model {self.name!r} failed: {type(exc).__name__}: {exc}") from exc

    def _fail(self, items: list[_Pending], exc: Exception) -> str:
        """Set ``exc`` (wrapped when it is not the service's own) on ``items``."""
        if isinstance(exc, CloudError):
            for item in items:
                item.error = exc
            return str(exc)
        error = f"{type(exc).__name__}: {exc}"
        wrapped = ExecutionError(f"model {self.name!r} failed: {error}")
        wrapped.__cause__ = exc
        for item in items:
            item.error = wrapped
        return error

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, join the workers, close runtimes."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        with self._cond:  # a request running inline on the loop finishes first
            self._cond.wait_for(lambda: not self._busy, timeout)
        for runtime in self.instances:
            runtime.close()

    # ------------------------------------------------------------------ worker side

    def _take(self) -> list[_Pending] | None:
        s = self.settings
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            self._busy += 1  # until the batch is run (read by submit on the loop)
            batch = [first]
            if s.max_batch_size <= 0:
                return batch
            size = first.batch
            deadline = first.enqueued + s.max_queue_delay_s
            while True:
                i = 0
                while i < len(self._queue) and size < s.max_batch_size:
                    item = self._queue[i]
                    if item.key == first.key and size + item.batch <= s.max_batch_size:
                        del self._queue[i]
                        batch.append(item)
                        size += item.batch
                    else:
                        i += 1
                if size >= s.max_batch_size or size in s.preferred_batch_sizes:
                    return batch
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._closing:
                    return batch
                self._cond.wait(remaining)

    def _work(self, runtime: ModelRuntime) -> None:
        # Batch input buffers of this worker, reused: a fresh multi-megabyte array per
        # batch costs page faults (zeroed pages) that measured more than the copy itself.
        buffers: dict[tuple, np.ndarray] = {}
        while True:
            batch = self._take()
            if batch is None:
                return
            # Runtimes that only follow the contract by shape may lack the flag: no reuse.
            reuse = getattr(runtime, "reusable_inputs", False)
            try:
                self._run(runtime, batch, buffers if reuse else None)
            finally:
                with self._cond:
                    self._busy -= 1

    @staticmethod
    def _concatenate(name: str, parts: list[np.ndarray], buffers: dict[tuple, np.ndarray]) -> np.ndarray:
        first = parts[0]
        if first.dtype.kind == "O":
            return np.concatenate(parts)
        rows = sum(p.shape[0] for p in parts)
        key = (name, first.dtype.str, first.shape[1:])
        buf = buffers.get(key)
        if buf is None or buf.shape[0] < rows:
            buf = buffers[key] = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
        out = buf[:rows]
        np.concatenate(parts, out=out)
        return out

    def _run(self, runtime: ModelRuntime, batch: list[_Pending],
             buffers: dict[tuple, np.ndarray] | None = None, deliver: bool = True) -> None:
        start = time.perf_counter()
        size = sum(item.batch for item in batch)
        error: str | None = None
        try:
            if len(batch) == 1:
                feeds = batch[0].inputs
                call = batch[0].call
            else:
                call = None
                feeds = {
                    name: self._concatenate(name, [item.inputs[name] for item in batch],
                                            {} if buffers is None else buffers)
                    for name in batch[0].inputs
                }
            outputs = call() if call is not None else runtime.predict(feeds)
            if len(batch) == 1:
                batch[0].outputs = outputs
            else:
                offset = 0
                for item in batch:
                    item.outputs = {n: v[offset : offset + item.batch] for n, v in outputs.items()}
                    offset += item.batch
                for name, value in outputs.items():
                    if np.ndim(value) == 0 or value.shape[0] != size:
                        raise ExecutionError(
                            f"model {self.name!r}: output {name!r} has leading size "
                            f"{np.shape(value)[:1]}, expected the batch size {size}"
                        )
        except Exception as exc:  # noqa: BLE001 - a runtime's failure: report, keep serving
            error = self._fail(batch, exc)
        reruns = failed_alone = 0
        if error is not None and len(batch) > 1:
            # Isolate the culprit: each request alone, so only one that fails by itself
            # gets an error.
            reruns = len(batch)
            for item in batch:
                item.error = item.outputs = None
                try:
                    item.outputs = (item.call() if item.call is not None
                                    else runtime.predict(item.inputs))
                except Exception as exc:  # noqa: BLE001
                    self._fail([item], exc)
                    failed_alone += 1
            error = None if not failed_alone else f"{failed_alone} of {reruns} failed alone"
        end = time.perf_counter()
        queue_times = []
        for item in batch:
            item.queue_s = start - item.enqueued
            item.compute_s = end - start
            item.batch_size = size
            queue_times.append(item.queue_s)
        if self.on_batch is not None:
            record = BatchRecord(size, len(batch), queue_times, end - start, error is None, error,
                                 reruns, failed_alone)
            after_answer(self.on_batch, record)
        if not deliver:
            return
        # One wake-up of the loop per batch (per loop: all requests share one loop here).
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: the server is gone
                pass
