"""Names from the wire, and paths proven to lie inside their folder.

A model name or a version comes from a fleet message and becomes a folder name in the
model store, so it is checked against one strict pattern before it is used: 1-64 ASCII
letters, digits, ``_``, ``.`` or ``-``, starting with a letter, a digit or ``_`` (so no
``.``, ``..``, hidden or option-like names), and no name the store keeps for itself.
Unicode digits, separators, NUL and a trailing newline all fail the pattern
(``re.fullmatch`` on an explicit ASCII class; ``$`` would accept a final newline).

Checking names is not enough when a folder on disk is a symbolic link, so every path the
store writes, renames or removes is also resolved and proven to lie inside the store
(:func:`inside`) just before it is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from devices.errors import ModelUpdateError

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
# Files and folders the model store keeps next to the model folders.
RESERVED = frozenset({"state.json", "state.json.prev", "state.tmp", "counters.json",
                      "counters.tmp", "incoming"})


def check_name(value: object, field: str, where: str = "deploy") -> str:
    """Return ``value`` when it is a valid model name or version, else raise naming ``field``."""
    if not isinstance(value, str):
        raise ModelUpdateError(
            f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if _NAME_RE.fullmatch(value) is None or value.lower() in RESERVED:
        raise ModelUpdateError(
            f"{where}: field '{field}' must be 1-64 of [A-Za-z0-9_.-] starting with a letter, "
            f"digit or '_' (not a reserved name), got {value[:80]!r}")
    return value


def is_name(value: object) -> bool:
    """Whether ``value`` would pass :func:`check_name`."""
    return (isinstance(value, str) and _NAME_RE.fullmatch(value) is not None
            and value.lower() not in RESERVED)


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved (symbolic links followed), when it lies strictly inside ``root``.

    Raises :class:`ModelUpdateError` otherwise: the caller must not touch it.
    """
    base = os.path.realpath(root)
    target = os.path.realpath(path)
    if target == base or os.path.commonpath([base, target]) != base:
        raise ModelUpdateError(f"refused: '{path}' is not inside '{root}'")
    return Path(target)


def is_inside(root: str | Path, path: str | Path) -> bool:
    """Whether :func:`inside` would accept ``path``."""
    try:
        inside(root, path)
    except (ModelUpdateError, ValueError, OSError):
        return False
    return True


__all__ = ["NAME_PATTERN", "RESERVED", "check_name", "inside", "is_inside", "is_name"]
