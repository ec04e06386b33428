"""One log layout for ``edgecut serve`` and the agent (cloud/_logs.py)."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from cloud._logs import Fields, JsonLogFormatter, TextLogFormatter, log_formatter


def _record(msg: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("edgecut.test.logs")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, None, None,
                             extra=extra or None)


def test_a_json_line_has_the_message_and_every_extra_field() -> None:
    line = JsonLogFormatter().format(_record("malformed JSON", request_id="req-42", status=400,
                                             shape=[1, 3], where=object()))
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "edgecut.test.logs"
    assert entry["msg"] == "malformed JSON" and entry["request_id"] == "req-42"
    assert entry["status"] == 400 and entry["shape"] == [1, 3]
    assert entry["where"].startswith("<object object")  # what JSON cannot hold: its str
    assert isinstance(entry["ts"], float)


@pytest.mark.parametrize("msg", [Fields({"event": "request", "model": "m"}),
                                 json.dumps({"event": "request", "model": "m"})])
def test_a_message_given_as_fields_is_merged_with_the_extras(msg: object) -> None:
    entry = json.loads(JsonLogFormatter().format(_record(msg, request_id="r-7")))
    assert entry["event"] == "request" and entry["model"] == "m" and "msg" not in entry
    assert entry["request_id"] == "r-7"


def test_text_that_only_looks_like_json_stays_the_message() -> None:
    for text in ("{not json", '["a list"]'):
        assert json.loads(JsonLogFormatter().format(_record(text)))["msg"] == text


def test_the_text_layout_says_the_same_for_a_person() -> None:
    line = TextLogFormatter().format(_record(Fields({"event": "config_applied", "version": "3"}),
                                             request_id="req 42"))
    assert " INFO " in line and "edgecut.test.logs config_applied" in line
    assert "version=3" in line and 'request_id="req 42"' in line
    rec = _record("failed")
    try:
        raise ValueError("boom")
    except ValueError:
        rec.exc_info = sys.exc_info()
    assert "ValueError: boom" in TextLogFormatter().format(rec)
    assert "ValueError: boom" in json.loads(JsonLogFormatter().format(rec))["exc"]


def test_an_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'xml'.*json, text"):
        log_formatter("xml")


def _take_down_agent_log() -> None:
    root = logging.getLogger("edgecut")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.propagate = True
    logging.getLogger("uvicorn").handlers.clear()
    logging.getLogger("uvicorn").propagate = True


def test_the_agent_writes_the_serve_layout_with_its_extra_fields() -> None:
    from edge.agent._logging import log, log_request, setup_logging

    stream = io.StringIO()
    setup_logging("info", stream)
    try:
        log.info(json.dumps({"event": "reloaded"}), extra={"request_id": "req-9"})
        log_request({"event": "request", "model": "m"})
        for handler in logging.getLogger("edgecut").handlers:
            handler.flush()
            assert isinstance(handler.formatter, JsonLogFormatter)
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    finally:
        _take_down_agent_log()
    assert lines[0]["event"] == "reloaded" and lines[0]["request_id"] == "req-9"
    assert lines[1]["event"] == "request" and lines[1]["logger"] == "edgecut.agent.request"
    assert set(lines[0]) >= {"ts", "level", "logger"}


def test_the_agent_writes_text_when_asked() -> None:
    from edge.agent._logging import log, setup_logging

    stream = io.StringIO()
    setup_logging("info", stream, log_format="text")
    try:
        log.info(json.dumps({"event": "agent_started", "models": {"m": "1"}}))
    finally:
        _take_down_agent_log()
    line = stream.getvalue().strip()
    assert "edgecut.agent agent_started" in line and 'models={"m": "1"}' in line


def test_agent_toml_log_format_is_checked_and_restart_only(tmp_path) -> None:
    from devices.errors import ConfigError
    from edge.agent._config import parse_agent_config, restart_only_changes

    base = {"agent": {"device_id": "d1", "data_dir": str(tmp_path)}}
    assert parse_agent_config(base, "a.toml").log_format == "json"
    text = {"agent": {**base["agent"], "log_format": "text"}}
    assert parse_agent_config(text, "a.toml").log_format == "text"
    with pytest.raises(ConfigError, match="log_format"):
        parse_agent_config({"agent": {**base["agent"], "log_format": "xml"}}, "a.toml")
    assert restart_only_changes(base, text) == ["agent.log_format"]
