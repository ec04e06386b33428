"""The agent's log: per-request records written off the request path (``log_request``),
and the set-up the daemon runs (``setup_logging``). The layout is the one ``edgecut serve``
writes (``cloud._logs``): one JSON object per line with every ``extra`` field, or plain
text for a person at a terminal."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from typing import Any

from cloud._logs import Fields, log_formatter

log = logging.getLogger("edgecut.agent")
request_log = logging.getLogger("edgecut.agent.request")


class _LogHandler(logging.StreamHandler):
    """The daemon's JSON log handler. Per-request records (INFO on the request logger)
    are only queued on the request path and written by a background thread every
    ``interval_s`` (formatting and a write plus flush cost more than the agent's own
    work on a small model); every other record is written at once, after the queued
    ones, so the log keeps its order. ``flush`` (called by ``logging.shutdown`` at exit)
    writes what is queued."""

    def __init__(self, stream: Any, interval_s: float = 0.1) -> None:
        super().__init__(stream)
        # Records, or (time, fields) of requests given to ``defer``: their LogRecord is
        # made by the writer thread too.
        self._pending: deque[logging.LogRecord | tuple[float, dict[str, Any]]] = deque()
        self._wake = threading.Event()
        self._interval_s = interval_s
        self._writer = threading.Thread(target=self._drain_loop, name="agent-log", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        if record.name == request_log.name and record.levelno == logging.INFO:
            # No lock here: the writer may hold it; a deque append is thread-safe.
            if self.filter(record):
                self._pending.append(record)
                return True
            return False
        return super().handle(record)

    def defer(self, fields: dict[str, Any]) -> None:
        """Queue a request record given as its fields, stamped now."""
        self._pending.append((time.time(), fields))

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._drain(flush=False)
            self._write(record)
            super().flush()

    def _write(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit flushes after every record, and flush here drains the queue:
        # writing each queued record through it nested one call per record (hundreds
        # queued under load overflowed the stack). Records are written here, flushed once.
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _drain(self, flush: bool = True) -> None:
        with self.lock:  # type: ignore[union-attr]  # one writer at a time, in order
            wrote = False
            while self._pending:
                item = self._pending.popleft()
                if isinstance(item, tuple):
                    created, fields = item
                    item = request_log.makeRecord(request_log.name, logging.INFO, __file__, 0,
                                                  Fields(fields), None, None)
                    item.created, item.msecs = created, (created % 1) * 1000.0
                    if not self.filter(item):
                        continue
                self._write(item)
                wrote = True
            if wrote and flush:
                super().flush()

    def _drain_loop(self) -> None:
        while not self._wake.wait(self._interval_s):
            if self._pending:
                self._drain()

    def flush(self) -> None:
        self._drain()
        super().flush()

    def close(self) -> None:
        global _request_handler
        if _request_handler is self:
            _request_handler = None
        self._wake.set()
        self.flush()
        super().close()


# The daemon's handler, when it is the only one the request logger reaches.
_request_handler: _LogHandler | None = None


def log_request(fields: dict[str, Any]) -> None:
    """Log one request's record (INFO on ``edgecut.agent.request``). Under the daemon's own
    handler only the fields are queued (no LogRecord, no caller lookup on the request
    path); with any other logging set-up this is ``request_log.info``."""
    handler = _request_handler
    if handler is not None:
        handler.defer(fields)
    else:
        request_log.info(Fields(fields))


def setup_logging(level: str, stream: Any = None, log_format: str = "json") -> None:
    """Send ``edgecut.*`` and uvicorn's logs to ``stream`` (stderr) in ``log_format``
    (``json`` or ``text``), request records through the deferred writer."""
    global _request_handler
    root = logging.getLogger("edgecut")
    for h in list(root.handlers):
        if getattr(h, "_edgecut_agent", False):
            root.removeHandler(h)
            h.close()
    handler = _LogHandler(stream or sys.stderr)
    handler.setFormatter(log_formatter(log_format))
    handler._edgecut_agent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # The local API's server (uvicorn) logs in the same layout, to the same place.
    server_log = logging.getLogger("uvicorn")
    server_log.handlers[:] = [handler]
    server_log.propagate = False
    between = [request_log, log]  # the loggers from the request logger up to ``root``
    if not root.handlers[:-1] and not root.filters and all(
            lg.propagate and not lg.handlers and not lg.filters for lg in between):
        _request_handler = handler
    root.setLevel(level.upper())
    root.propagate = False
