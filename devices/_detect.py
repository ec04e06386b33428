from __future__ import annotations

import platform
import re
from pathlib import Path

from devices._profile import DeviceProfile, list_profiles, load_profile


def _read_text(path: Path) -> str:
    try:
        # The device-tree model string ends in a NUL byte.
        return path.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _jetson_family(model: str, tegra: str) -> str:
    """The smallest profile of the Jetson family a board belongs to, for model strings no
    profile names (an Orin NX, a vendor's carrier board): the safe guess for speed and
    power within the family."""
    lowered = model.lower()
    if "orin" in lowered:
        return "jetson-orin-nano"
    if "xavier" in lowered:
        return "jetson-xavier-nx"
    if not tegra and "jetson" not in lowered:
        return ""
    match = re.match(r"#\s*R(\d+)", tegra)
    if match and int(match.group(1)) >= 36:
        return "jetson-orin-nano"  # L4T R36 (JetPack 6) runs on Orin only
    return "jetson-nano"


def detect_name(root: str | Path = "/", machine: str | None = None) -> str:
    """Name of the profile that fits the board whose file system is at ``root``.

    Reads ``/proc/device-tree/model`` (and ``/etc/nv_tegra_release`` to tell a Jetson
    whose model string is unfamiliar, mapped to the smallest board of its family); falls
    back to a generic CPU profile by machine type.
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
    family = _jetson_family(model, tegra)
    if family:
        return family
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64", "armv7l", "armv8l"):
        return "generic-arm"
    return "generic-x86"


def detect(root: str | Path = "/", machine: str | None = None) -> DeviceProfile:
    """The :class:`DeviceProfile` for this board (see :func:`detect_name`)."""
    return load_profile(detect_name(root, machine))
