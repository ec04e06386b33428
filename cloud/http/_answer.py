"""Finishing an answer, the same way on the ordinary route and the fast lane: the request
id, the error body and its log line, the headers every answer carries, the HTTP status
counter, and the ``Server-Timing`` of an inference."""

from __future__ import annotations

import itertools
import logging
import os
import typing

from cloud._deferred import after_answer
from cloud._gate import Gate
from cloud._metrics import Metrics
from cloud._service import InferResult
from cloud.errors import CloudError, Overloaded
from cloud.http._extensions import JSON_HEADERS, MethodNotAllowed, json_bytes

__all__ = ["Answer", "Answers", "timed"]

log = logging.getLogger("edgecut.cloud.http")

#: status, body, headers (a list of ``(name, value)`` byte pairs)
Answer = typing.Tuple[int, bytes, list]


class Answers:
    """Request ids, error answers and final headers for one app."""

    def __init__(self, metrics: Metrics, gate: Gate) -> None:
        self.metrics = metrics
        self.gate = gate
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}"

    def request_id(self, headers: dict[str, str]) -> str:
        """The client's ``x-request-id`` (at most 128 characters), else a fresh one."""
        return headers.get("x-request-id", "")[:128] or f"{self._id_prefix}-{next(self._ids)}"

    def error(self, exc: CloudError, method: str, path: str, request_id: str) -> Answer:
        """The answer to a refused request (its status and ``{"error": ...}``), logged."""
        status, body, extra = exc.status, json_bytes({"error": str(exc)}), JSON_HEADERS
        self._log_error(method, path, status, exc, request_id)
        if isinstance(exc, MethodNotAllowed):
            extra = [*JSON_HEADERS, (b"allow", exc.allowed.encode())]
        return status, body, extra

    def final(self, status: int, body: bytes, extra: list, request_id: str) -> Answer:
        """The answer ready to write: ``extra`` plus the headers every answer carries."""
        return status, body, self.final_headers(status, body, extra, request_id)

    def final_headers(self, status: int, body: bytes, extra: list, request_id: str) -> list:
        after_answer(self._count_status, status)
        # An explicit length: without it uvicorn falls back to chunked transfer encoding.
        return [*extra, (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode("latin-1"))]

    def _count_status(self, status: int) -> None:
        self.metrics.http.labels(str(status)).inc()

    def _log_error(self, method: str, path: str, status: int, exc: Exception,
                   request_id: str) -> None:
        if isinstance(exc, Overloaded):
            self.gate.log_refused(f"{method} {path} -> 503", exc,
                                  {"request_id": request_id, "status": status, "path": path})
            return
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "%s %s -> %d: %s", method, path, status, exc,
                extra={"request_id": request_id, "status": status, "path": path})


def timed(out_headers: dict[str, str], result: InferResult) -> list:
    """An inference's response headers as ASGI pairs, with its ``Server-Timing``."""
    # Server-Timing (W3C): the time the request waited in the model's queue and the
    # time its batch computed, so a client can tell the server's share of its round
    # trip from the network's (the edge link estimator subtracts it).
    timing = f"queue;dur={result.queue_ms:.3f}, compute;dur={result.compute_ms:.3f}"
    return [*((k.lower().encode("latin-1"), v.encode("latin-1"))
              for k, v in out_headers.items()),
            (b"server-timing", timing.encode("latin-1"))]
