"""``edge.Client.stream``: a camera stream through the agent, in order, with back-pressure.

Standard library and NumPy only (``from edge import Client`` stays light). Each frame is
one request to ``<model>.stream`` on the agent (see ``edge/agent/_stream.py``), with up to
``window`` frames in flight on per-thread keep-alive connections. The next frame is taken
from the source only when one of the ``window`` slots frees, so a source that is a
generator is held back (back-pressure) instead of buffering frames without bound. The
agent's overload policy may drop a frame (HTTP 503 saying so): it comes back in its place
with ``status="dropped"``; a frame that fails comes back ``status="error"`` with the
reason. Every frame taken from the source gets exactly one result, in source order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devices.errors import CloudUnavailable, ModelInputError, OffloadRejected

STREAM_SUFFIX = ".stream"


@dataclass(frozen=True)
class StreamFrame:
    """One frame's result: ``seq`` (0-based position in the source), ``status`` (``ok``,
    ``dropped`` or ``error``), ``outputs`` (empty unless ok), ``latency_ms`` (request
    sent to answer) and ``error`` (the reason, when not ok)."""

    seq: int
    status: str
    outputs: dict = field(default_factory=dict)
    latency_ms: float = 0.0
    error: str = ""


def _one(client: Any, model: str, frame: Mapping[str, np.ndarray],
         outputs: Sequence[str] | None) -> tuple[str, dict, float, str]:
    t0 = time.perf_counter()
    try:
        out = client.infer(model, frame, outputs)
        return "ok", out, (time.perf_counter() - t0) * 1000.0, ""
    except OffloadRejected as exc:
        status = "dropped" if exc.status == 503 and "dropped" in str(exc) else "error"
        return status, {}, (time.perf_counter() - t0) * 1000.0, str(exc)
    except (CloudUnavailable, ModelInputError) as exc:
        return "error", {}, (time.perf_counter() - t0) * 1000.0, f"{type(exc).__name__}: {exc}"


def _pump(source: Iterator[Mapping[str, np.ndarray]], waiting: deque, cv: threading.Condition,
          queue_size: int, state: dict) -> None:
    """Take frames from a live source as they come; keep the newest ``queue_size``."""
    seq = 0
    try:
        for frame in source:
            with cv:
                if len(waiting) >= queue_size:
                    old, _ = waiting.popleft()
                    state["dropped"].append(old)
                waiting.append((seq, frame))
                seq += 1
                cv.notify_all()
    finally:
        with cv:
            state["done"] = True
            state["total"] = seq
            cv.notify_all()


def run_stream(client: Any, model: str, frames: Iterable[Mapping[str, np.ndarray]], *,
               window: int = 4, outputs: Sequence[str] | None = None,
               overload: str = "block", queue_size: int = 1) -> Iterator[StreamFrame]:
    """See the module docstring; ``client`` is an ``edge.Client``. ``overload="block"``
    takes a frame from ``frames`` only when a slot is free (back-pressure);
    ``"drop_oldest"`` reads ``frames`` as fast as it yields (a live camera), keeps the
    newest ``queue_size`` waiting and reports the others ``dropped`` in their place."""
    if window < 1 or queue_size < 1:
        raise ValueError(f"stream window and queue_size must be >= 1, got {window} and {queue_size}")
    if overload not in ("block", "drop_oldest"):
        raise ValueError(f"stream overload must be 'block' or 'drop_oldest', got {overload!r}")
    target = model if model.endswith(STREAM_SUFFIX) else model + STREAM_SUFFIX
    pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="edgecut-client-stream")
    pending: deque[tuple[int, Future]] = deque()
    source = iter(frames)
    cv = threading.Condition()
    waiting: deque = deque()
    state: dict = {"done": False, "total": 0, "dropped": []}
    pump = None
    if overload == "drop_oldest":
        pump = threading.Thread(target=_pump, args=(source, waiting, cv, queue_size, state),
                                name="edgecut-client-stream-source", daemon=True)
        pump.start()
    seq = 0
    try:
        while True:
            # fill the window
            while len(pending) < window:
                if pump is None:
                    try:
                        frame = next(source)
                    except StopIteration:
                        break
                    pending.append((seq, pool.submit(_one, client, target, frame, outputs)))
                    seq += 1
                    continue
                with cv:
                    while not waiting and not state["done"] and not pending:
                        cv.wait()
                    if not waiting:
                        break
                    n, frame = waiting.popleft()
                pending.append((n, pool.submit(_one, client, target, frame, outputs)))
            if pump is not None:
                with cv:
                    dropped = sorted(state["dropped"])
                # dropped frames older than the next answer are reported in their place
                head = pending[0][0] if pending else None
                for d in dropped:
                    if head is None or d < head:
                        with cv:
                            state["dropped"].remove(d)
                        yield StreamFrame(d, "dropped", error="dropped by the client's overload "
                                          "policy (drop_oldest)")
                if not pending:
                    with cv:
                        if state["done"] and not waiting and not state["dropped"]:
                            return
                        if not waiting and not state["dropped"]:
                            cv.wait(0.05)
                    continue
            if not pending:
                return
            n, fut = pending.popleft()
            status, out, ms, err = fut.result()
            yield StreamFrame(n, status, out, ms, err)
    finally:
        pool.shutdown(wait=True)
