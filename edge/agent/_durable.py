"""The agent's own state files, written durably and read defensively.

``state.json`` (the serving and previous version of each model) and
``config-overlay.json`` (config pushed by the fleet) decide what the agent runs after a
restart, so a damaged one must neither stop the agent nor be trusted: each write goes to
a temporary file that is fsync'ed and renamed, the folder fsync'ed, and the content it
replaces kept as ``<name>.prev``; each read checks the shape of every entry, falls back to
``.prev`` when the file cannot be read at all, and returns, with the data, what it
ignored and why, for one log line that says exactly that.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.agent._names import is_name
from edge.agent._signing import write_durably

log = logging.getLogger("edgecut.agent")


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` (JSON), keeping what it held as ``<path>.prev``."""
    try:
        old = path.read_bytes()
    except OSError:
        old = b""
    if old:
        try:
            json.loads(old)
            write_durably(path.with_name(path.name + ".prev"), old)
        except ValueError:
            pass  # never keep a damaged copy as the good one
    write_durably(path, json.dumps(data, indent=1).encode())


def read_state(path: Path, check: Callable[[Any], tuple[dict[str, Any], list[str]]]
               ) -> tuple[dict[str, Any], list[str]]:
    """``check(parsed)`` of ``path``, else of ``<path>.prev``; plus what was ignored.

    A missing file is an empty state with nothing to report.
    """
    notes: list[str] = []
    for candidate in (path, path.with_name(path.name + ".prev")):
        try:
            text = candidate.read_text()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            notes.append(f"{candidate.name}: unreadable ({exc})")
            continue
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            notes.append(f"{candidate.name}: not JSON ({exc})")
            continue
        data, dropped = check(parsed)
        notes += [f"{candidate.name}: {d}" for d in dropped]
        if candidate != path and data:
            notes.append(f"using {candidate.name}, the last good copy")
        return data, notes
    return {}, notes


def check_model_state(parsed: Any) -> tuple[dict[str, Any], list[str]]:
    """Keep the well-formed entries of ``state.json``: ``{model: {version, path, previous}}``."""
    if not isinstance(parsed, dict):
        return {}, [f"expected an object, got {type(parsed).__name__}"]
    good: dict[str, Any] = {}
    dropped = []

    def version_ok(entry: Any) -> bool:
        return (isinstance(entry, dict) and is_name(entry.get("version"))
                and isinstance(entry.get("path"), str) and bool(entry["path"]))

    for name, entry in parsed.items():
        if not is_name(name) or not version_ok(entry):
            dropped.append(f"entry {str(name)[:64]!r} ignored (not a model name with a "
                           "version and a path)")
            continue
        previous = entry.get("previous")
        if previous is not None and not version_ok(previous):
            dropped.append(f"entry {name!r}: its previous version ignored (malformed)")
            previous = None
        good[name] = {"version": entry["version"], "path": entry["path"],
                      "previous": None if previous is None else
                      {"version": previous["version"], "path": previous["path"]}}
    return good, dropped


def check_overlay(parsed: Any) -> tuple[dict[str, Any], list[str]]:
    """Keep the well-formed parts of ``config-overlay.json``."""
    if not isinstance(parsed, dict):
        return {}, [f"expected an object, got {type(parsed).__name__}"]
    good: dict[str, Any] = {}
    dropped = []
    kinds = {"version": str, "config": dict, "signed_config": dict, "policy": dict}
    for key, value in parsed.items():
        kind = kinds.get(key)
        if kind is None:
            dropped.append(f"unknown part {str(key)[:64]!r} ignored")
        elif value is None:
            continue
        elif not isinstance(value, kind):
            dropped.append(f"part {key!r} ignored (expected {kind.__name__}, got "
                           f"{type(value).__name__})")
        else:
            good[key] = value
    return good, dropped


def log_ignored(event: str, path: Path, notes: list[str]) -> None:
    if notes:
        log.error(json.dumps({"event": event, "file": str(path), "ignored": notes}))


__all__ = ["check_model_state", "check_overlay", "log_ignored", "read_state", "write_state"]
