"""Bookkeeping that may wait until a request's answer is on its way.

Counting a request in statistics and metrics, and queueing its log record, cost tens of
microseconds each right after an inference (cold caches). While the fast lane
(:mod:`cloud.http._lane`) serves a request, :func:`after_answer` holds such work and the lane
runs it once the answer is written; anywhere else it runs at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["after_answer", "collecting", "run_collected"]

log = logging.getLogger("edgecut.cloud")

_state = threading.local()


def after_answer(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` after the answer being served on this thread, or now."""
    held: list | None = getattr(_state, "held", None)
    if held is None:
        fn(*args)
    else:
        held.append((fn, args))


def collecting() -> None:
    """Start holding :func:`after_answer` work on this thread."""
    _state.held = []


def run_collected() -> None:
    """Stop holding and run what was held, in order (an error is logged, not raised)."""
    held: list = getattr(_state, "held", None) or []
    _state.held = None
    for fn, args in held:
        try:
            fn(*args)
        except Exception:  # bookkeeping must not break serving
            log.exception("deferred bookkeeping %r failed", fn)
