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


def run_stream(client: Any, model: str, frames: Iterable[Mapping[str, np.ndarray]], *,
               window: int = 4, outputs: Sequence[str] | None = None) -> Iterator[StreamFrame]:
    """See the module docstring; ``client`` is an ``edge.Client``."""
    if window < 1:
        raise ValueError(f"stream window must be >= 1, got {window}")
    target = model if model.endswith(STREAM_SUFFIX) else model + STREAM_SUFFIX
    pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="edgecut-client-stream")
    pending: deque[tuple[int, Future]] = deque()
    source = iter(frames)
    seq = 0
    done = False
    try:
        while True:
            while not done and len(pending) < window:
                try:
                    frame = next(source)
                except StopIteration:
                    done = True
                    break
                pending.append((seq, pool.submit(_one, client, target, frame, outputs)))
                seq += 1
            if not pending:
                return
            n, fut = pending.popleft()
            status, out, ms, err = fut.result()
            yield StreamFrame(n, status, out, ms, err)
    finally:
        pool.shutdown(wait=True)
