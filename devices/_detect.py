from __future__ import annotations

import platform
from pathlib import Path

from devices._profile import DeviceProfile, list_profiles, load_profile


def _read_text(path: Path) -> str:
    try:
        # The device-tree model string ends in a NUL byte.
        return path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def detect_name(root: str | Path = "/", machine: str | None = None) -> str:
    """Name of the profile that fits the board whose file system is at ``root``.

    Reads ``/proc/device-tree/model`` (and ``/etc/nv_tegra_release`` to tell a Jetson
    whose model string is unfamiliar); falls back to a generic CPU profile by machine type.
    """
    root = Path(root)
    model = _read_text(root / "proc/device-tree/model")
    tegra = _read_text(root / "etc/nv_tegra_release")
    if model:
        # Longest marker first, so "Orin Nano" wins over "Nano".
        best, best_len = "", 0
        for name in list_profiles():
            for marker in load_profile(name).detect_model_contains:
                if marker.lower() in model.lower() and len(marker) > best_len:
                    best, best_len = name, len(marker)
        if best:
            return best
    if tegra:
        # An L4T release file with an unknown model string: the smallest Jetson is the
        # safe guess for speed and power.
        return "jetson-nano"
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64", "armv7l", "armv8l"):
        return "generic-arm"
    return "generic-x86"


def detect(root: str | Path = "/", machine: str | None = None) -> DeviceProfile:
    """The :class:`DeviceProfile` for this board (see :func:`detect_name`)."""
    return load_profile(detect_name(root, machine))
