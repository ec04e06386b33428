"""Who may do what, and how much may be in progress: the checks every transport shares.

A :class:`Gate` is protocol-agnostic: a transport hands it the ``authorization`` value it
received (an HTTP header, a gRPC metadata entry) and the bytes a request holds, and gets a
:class:`~cloud._auth.Principal` or a :mod:`cloud.errors` exception (``AuthError``,
``Forbidden``, ``Overloaded``, ``PayloadTooLarge``) that it maps to its own status codes.
One gate may serve several transports of one server: its counters are updated on the
server's event loop only, so they need no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cloud.errors import Overloaded, PayloadTooLarge

__all__ = ["Gate"]

log = logging.getLogger("edgecut.cloud")


class Gate:
    """Authorization (``verifier``; ``None``: every request allowed) and admission limits.

    ``max_in_flight``: inference and other mutating requests in progress before new ones
    are refused (before their body is read). ``max_pending_bytes``: request bodies all
    requests in progress may hold together. ``max_body_bytes``: the largest one request.
    """

    def __init__(self, verifier: Any = None, *, max_in_flight: int = 512,
                 max_pending_bytes: int = 512 * 1024 * 1024,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if max_pending_bytes < max_body_bytes:
            raise ValueError("max_pending_bytes must be at least max_body_bytes")
        self.verifier = verifier
        self.max_in_flight = max_in_flight
        self.max_pending_bytes = max_pending_bytes
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self.pending_bytes = 0  # request bodies held right now, all requests together
        self._refused = 0
        self._refused_logged_at = 0.0

    # ------------------------------------------------------------------ authorization

    def principal(self, authorization: str | None) -> Any:
        """The verified caller, or ``None`` with auth off; ``AuthError`` for a bad token."""
        if self.verifier is None:
            return None
        return self.verifier.verify(authorization)

    def require_model(self, authorization: str | None, model: str) -> None:
        """``AuthError``/``Forbidden`` unless the caller may use ``model``."""
        principal = self.principal(authorization)
        if principal is not None:
            principal.require(model)

    def require_admin(self, authorization: str | None, model: str) -> None:
        """``AuthError``/``Forbidden`` unless the caller may load and unload ``model``."""
        principal = self.principal(authorization)
        if principal is not None:
            principal.require(model)
            principal.require_admin()

    def visible(self, authorization: str | None) -> Callable[[str], bool]:
        """Which model names the caller may see (index, statistics)."""
        principal = self.principal(authorization)
        return (lambda _m: True) if principal is None else principal.may_use

    # ------------------------------------------------------------------ admission

    def at_limit(self) -> bool:
        """Whether a new request would exceed ``max_in_flight`` (counting itself)."""
        return self.in_flight > self.max_in_flight

    def refuse_busy(self) -> Overloaded:
        return Overloaded(
            f"server is at its limit of {self.max_in_flight} requests in progress; retry later")

    def check_size(self, size: int) -> None:
        """``PayloadTooLarge`` for a body over ``max_body_bytes``."""
        if size > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes")

    def hold(self, held: list[int], size: int) -> None:
        """Count ``size`` more body bytes against the server-wide budget, or refuse.

        ``held[0]`` accumulates what this request holds; give it back with :meth:`release`.
        """
        if self.pending_bytes + size > self.max_pending_bytes:
            raise Overloaded(
                f"server holds {self.pending_bytes} bytes of requests, its budget is "
                f"{self.max_pending_bytes}; retry later"
            )
        self.pending_bytes += size
        held[0] += size

    def release(self, size: int) -> None:
        self.pending_bytes -= size

    def log_refused(self, what: str, exc: Exception, extra: dict[str, Any]) -> None:
        """Log a refusal for overload at most once a second, with how many there were.

        Under overload thousands of refusals a second would flood the log and cost the CPU
        the server is short of.
        """
        now = time.monotonic()
        self._refused += 1
        if now - self._refused_logged_at < 1.0:
            return
        count, self._refused, self._refused_logged_at = self._refused, 0, now
        log.warning("%s: %s (%d refused in the last second)", what, exc, count, extra=extra)
