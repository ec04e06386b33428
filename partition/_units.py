"""Units on the command line: bandwidth (``20Mbit``, ``1Gbit``, ``500kbit``) and time
(``40ms``, ``0.04s``)."""

from __future__ import annotations

import re

from devices.errors import ConfigError

_RATE = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
         "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_NUM = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"


def parse_bandwidth(text: str | float | int) -> float:
    """Bit/s from ``20Mbit``, ``1Gbit``, ``500kbit``, ``20mbps`` (or a plain number of
    bit/s). Bytes are not accepted, to avoid a silent 8x error."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(_NUM + r"([A-Za-z/]*)\s*", str(text))
        unit = m.group(2).lower() if m else ""
        unit = unit[:-2] if unit.endswith("/s") else unit
        if not m or (unit and unit not in _RATE):
            raise ConfigError(
                f"bandwidth {text!r}: expected a number with a unit such as 500kbit, 20Mbit, "
                "1Gbit (bits per second)"
            )
        value = float(m.group(1)) * _RATE.get(unit, 1.0)
    if value <= 0:
        raise ConfigError(f"bandwidth {text!r}: must be greater than zero")
    return value


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``40ms``, ``0.04s``, ``500us`` (a plain number means seconds)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(_NUM + r"([A-Za-z]*)\s*", str(text))
        unit = m.group(2).lower() if m else ""
        if not m or (unit and unit not in _TIME):
            raise ConfigError(f"duration {text!r}: expected a number with a unit such as 40ms or 0.04s")
        value = float(m.group(1)) * _TIME.get(unit, 1.0)
    if value < 0:
        raise ConfigError(f"duration {text!r}: must not be negative")
    return value
