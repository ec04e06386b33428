"""The circuit breaker in front of a next hop: the edge's offload client to the cloud, and
a chain's relay (``cloud._relay``) to the node after it -- one implementation for both.

It lives in ``cloud`` (standard library only) because the edge already imports this
package's codec, while the cloud service must stay usable without the edge packages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """Stops sending to a failing next hop (the cloud, a chain's next node) and lets one
    trial through after a pause.

    closed --(``failure_threshold`` consecutive failures)--> open
    open --(``reset_timeout_s`` elapsed)--> half-open (one request allowed)
    half-open --success--> closed; --failure--> open again
    """

    def __init__(self, failure_threshold: int = 3, reset_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_out = False
        self._lock = threading.Lock()
        self.transitions: list[tuple[float, str]] = []

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.transitions.append((self._clock(), state))

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
                self._set(HALF_OPEN)
                self._trial_out = False
            return self._state

    def allow(self) -> bool:
        """May a request go now? In half-open, only the first caller gets True."""
        state = self.state
        with self._lock:
            if state == CLOSED:
                return True
            if state == HALF_OPEN and not self._trial_out:
                self._trial_out = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._trial_out = False
            self._set(CLOSED)

    def release(self) -> None:
        """Give back a half-open trial that ended without a verdict (e.g. our deadline)."""
        with self._lock:
            self._trial_out = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_out = False
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                self._set(OPEN)


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]
