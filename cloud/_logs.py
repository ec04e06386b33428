"""One log layout for every edgecut process (``edgecut serve`` and the edge agent).

Each record is one JSON object per line::

    {"ts": 1733554862.123456, "level": "info", "logger": "edgecut.cloud.http",
     "msg": "malformed JSON", "request_id": "req-42", "status": 400}

- ``ts`` (seconds since the epoch), ``level``, ``logger``;
- the message: a message given as fields (:class:`Fields`, or text that is a JSON object)
  is merged key by key (the agent's ``{"event": ...}`` records); any other is ``msg``;
- every ``extra`` field of the call (``request_id``, ``model``, ``status``, ...), as JSON
  (a value JSON cannot hold is written as its ``str``);
- ``exc``: the traceback, when the record carries one.

``TextLogFormatter`` writes the same content as one readable line for a person at a
terminal (``edgecut serve --log-format text``, ``[agent] log_format = "text"``).
Standard library only: the edge agent imports it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["LOG_FORMATS", "Fields", "JsonLogFormatter", "TextLogFormatter", "configure_logging",
           "log_formatter", "record_fields"]

#: The layouts a process may log in.
LOG_FORMATS = ("json", "text")

# Attributes every LogRecord has: anything else on a record came from ``extra`` (except
# uvicorn's ``color_message``, its message again with terminal colours).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}


class Fields(dict):
    """A log message given as its fields: merged into the record as they are (no encoding
    and parsing again on a hot path), and JSON when a plain handler prints it."""

    def __str__(self) -> str:
        return json.dumps(self)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What a record says, without time, level and logger: the message's fields (or
    ``msg``) and every ``extra`` field."""
    body: dict[str, Any] = {}
    if isinstance(record.msg, Fields) and not record.args:
        body.update(record.msg)
    else:
        msg = record.getMessage()
        parsed = None
        if msg.startswith("{"):
            try:
                parsed = json.loads(msg)
            except ValueError:
                parsed = None
        if isinstance(parsed, dict):
            body.update(parsed)
        else:
            body["msg"] = msg
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            body[key] = value
    return body


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 6),
                                 "level": record.levelname.lower(), "logger": record.name}
        entry.update(record_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def _text_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' ="\n'):
        return value
    return json.dumps(value, default=str)


class TextLogFormatter(logging.Formatter):
    """The same content as :class:`JsonLogFormatter`, one readable line per record:
    ``12:01:02.123 INFO  edgecut.agent config_applied version=3``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = record_fields(record)
        head = [f"{stamp}.{int(record.msecs):03d}", f"{record.levelname:<7}", record.name]
        lead = fields.pop("event", None)
        if lead is None:
            lead = fields.pop("msg", None)
        if lead is not None:
            head.append(str(lead))
        line = " ".join(head + [f"{k}={_text_value(v)}" for k, v in fields.items()])
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def log_formatter(log_format: str = "json") -> logging.Formatter:
    """The formatter for ``log_format`` (one of :data:`LOG_FORMATS`)."""
    if log_format == "json":
        return JsonLogFormatter()
    if log_format == "text":
        return TextLogFormatter()
    raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")


def configure_logging(level: str = "info", stream: Any = None, log_format: str = "json") -> None:
    """Send ``edgecut.*`` and uvicorn's logs to ``stream`` (stderr) in ``log_format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(log_formatter(log_format))
    for name in ("edgecut", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
