"""Strict reading of TOML config tables.

Every edgecut config file (device profiles, ``agent.toml``, ``policy.toml``) is read
through :class:`Table`, which checks each key's type and range, rejects keys it does not
know, and names the file and the key in every error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from devices.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older JetPack images
    import tomli as tomllib

_REQUIRED = object()

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_PLURAL_NAMES = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning I/O and syntax failures into :class:`ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text that came from ``source`` (a file name or a topic)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc


class Table:
    """A view of one TOML table that hands out checked values and remembers what it used.

    Call :meth:`finish` after reading every key: any key left over is an error, so a
    misspelt setting is never silently ignored.
    """

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
        self._data = data
        self._where = where
        self._used: set[str] = set()

    @property
    def where(self) -> str:
        return self._where

    def keys(self) -> Iterable[str]:
        return self._data.keys()

    def has(self, key: str) -> bool:
        return key in self._data

    def _fail(self, key: str, expected: str, got: Any) -> ConfigError:
        return ConfigError(f"{self._where}: key '{key}': expected {expected}, got {got!r}")

    def get(
        self,
        key: str,
        kind: type,
        default: Any = _REQUIRED,
        *,
        choices: Iterable[Any] | None = None,
        min: float | None = None,
        max: float | None = None,
    ) -> Any:
        """Return ``key`` checked to be of ``kind`` (``float`` also accepts integers)."""
        self._used.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise ConfigError(f"{self._where}: missing required key '{key}'")
            return default
        value = self._data[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self._fail(key, _TYPE_NAMES.get(kind, kind.__name__), value)
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                raise self._fail(key, "one of " + ", ".join(map(repr, allowed)), value)
        if min is not None and value < min:
            raise self._fail(key, f"a value >= {min}", value)
        if max is not None and value > max:
            raise self._fail(key, f"a value <= {max}", value)
        return value

    def get_list(self, key: str, kind: type, default: Any = _REQUIRED) -> list[Any]:
        """Return ``key`` as a list whose items are all of ``kind``."""
        self._used.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise ConfigError(f"{self._where}: missing required key '{key}'")
            return list(default)
        value = self._data[key]
        if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
            raise self._fail(key, f"a list of {_PLURAL_NAMES.get(kind, kind.__name__)}", value)
        return list(value)

    def table(self, key: str, *, required: bool = False) -> Table:
        """Return the sub-table ``key`` (an empty one when absent and not required)."""
        self._used.add(key)
        if key not in self._data:
            if required:
                raise ConfigError(f"{self._where}: missing required table [{key}]")
            return Table({}, f"{self._where} [{key}]")
        value = self._data[key]
        if not isinstance(value, Mapping):
            raise self._fail(key, "a table", value)
        return Table(value, f"{self._where} [{key}]")

    def finish(self) -> None:
        """Raise :class:`ConfigError` naming every key that was never read."""
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            names = ", ".join(f"'{k}'" for k in unknown)
            raise ConfigError(f"{self._where}: unknown key(s) {names}")
