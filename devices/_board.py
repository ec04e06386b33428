"""The board as it is: Jetson Linux release, active power mode, and what to install.

Everything here reads files under a ``root`` (``/`` on the device, a recorded tree in
tests) and, on the device only, runs ``nvpmodel -q``:

- :func:`read_l4t` parses ``etc/nv_tegra_release`` into a :class:`JetsonRelease` (L4T
  release, JetPack, Ubuntu, system Python, CUDA);
- :func:`read_nvpmodel` reads the active nvpmodel mode (``nvpmodel -q``, else
  ``var/lib/nvpmodel/status`` with the names in ``etc/nvpmodel.conf``), and
  :func:`active_power_mode` maps it onto a profile's power modes;
- :func:`onnxruntime_advice` says which ONNX Runtime wheel fits the board, and
  :func:`import_onnxruntime` imports the module or raises that advice.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices._profile import DeviceProfile
from devices.errors import BackendError

__all__ = [
    "JetsonRelease",
    "NvpModel",
    "active_power_mode",
    "compute_for_providers",
    "import_onnxruntime",
    "litert_flavour",
    "onnxruntime_advice",
    "read_l4t",
    "read_nvpmodel",
]

log = logging.getLogger("edgecut.devices")

# L4T major release -> (JetPack major, Ubuntu, system Python, CUDA) from NVIDIA's JetPack
# release notes; the CUDA of JetPack 6 depends on the minor release (see _CUDA_6).
_FAMILIES = {
    32: ("4", "18.04", "3.6", "10.2"),
    34: ("5", "20.04", "3.8", "11.4"),
    35: ("5", "20.04", "3.8", "11.4"),
    36: ("6", "22.04", "3.10", "12.6"),
}
# Exact JetPack releases of the L4T releases edgecut has been told about; others are named
# by family ("5.x").
_JETPACK = {
    "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3",
    "32.7.4": "4.6.4", "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2",
    "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}
_CUDA_6 = {"36.2": "12.2", "36.3": "12.2"}


@dataclass(frozen=True)
class JetsonRelease:
    """The Jetson Linux (L4T) release a board runs and what its JetPack ships."""

    l4t: str
    jetpack: str
    ubuntu: str
    python: str
    cuda: str

    @property
    def major(self) -> int:
        """JetPack's major version (4, 5 or 6)."""
        return int(self.jetpack.split(".")[0])


def read_l4t(root: str | Path = "/") -> JetsonRelease | None:
    """The release in ``root/etc/nv_tegra_release``; ``None`` off Jetson or when unreadable.

    The file's first line reads ``# R36 (release), REVISION: 4.3, ...``.
    """
    try:
        text = (Path(root) / "etc/nv_tegra_release").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    major = int(match.group(1))
    l4t = f"{major}.{match.group(2)}.{match.group(3) or 0}"
    family = _FAMILIES.get(major)
    if family is None:
        return JetsonRelease(l4t, "unknown", "unknown", "unknown", "unknown")
    jetpack, ubuntu, python, cuda = family
    if major == 36:
        cuda = _CUDA_6.get(".".join(l4t.split(".")[:2]), cuda)
    return JetsonRelease(l4t, _JETPACK.get(l4t, f"{jetpack}.x"), ubuntu, python, cuda)


@dataclass(frozen=True)
class NvpModel:
    """The active nvpmodel mode: its id, its name, and where it was read from."""

    mode_id: int | None
    name: str
    source: str


def _conf_names(root: Path) -> dict[int, str]:
    try:
        text = (root / "etc/nvpmodel.conf").read_text(errors="replace")
    except OSError:
        return {}
    return {int(i): name for i, name in
            re.findall(r"^<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+)\s*>", text, re.M)}


def _query_nvpmodel() -> NvpModel | None:
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)?", out)
    if not match:
        return None
    mode_id = int(match.group(2)) if match.group(2) else None
    return NvpModel(mode_id, match.group(1), "nvpmodel -q")


def read_nvpmodel(root: str | Path = "/", *, query: bool | None = None) -> NvpModel | None:
    """The active nvpmodel mode, or ``None`` when the board has no nvpmodel.

    On the device (``root`` is ``/``, or ``query=True``) it asks ``nvpmodel -q`` first;
    otherwise, or when that fails, it reads the mode id from ``var/lib/nvpmodel/status``
    (``pmode:0001 ...``) and its name from ``etc/nvpmodel.conf``.
    """
    root = Path(root)
    if query if query is not None else str(root) == "/":
        found = _query_nvpmodel()
        if found is not None:
            return found
    try:
        status = (root / "var/lib/nvpmodel/status").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"pmode:\s*(\d+)", status)
    if not match:
        return None
    mode_id = int(match.group(1))
    name = _conf_names(root).get(mode_id, "")
    return NvpModel(mode_id, name, "var/lib/nvpmodel/status")


def active_power_mode(profile: DeviceProfile, root: str | Path = "/",
                      nvp: NvpModel | None = None) -> str | None:
    """The profile's power mode that matches the active nvpmodel mode, or ``None``.

    A mode matches by its own name or by one of its ``nvpmodel`` names (the same budget
    is ``15W`` on one JetPack and ``MODE_15W`` on another). An active mode the profile
    does not know is logged and ``None`` returned, so callers keep the profile's default.
    """
    nvp = nvp if nvp is not None else read_nvpmodel(root)
    if nvp is None or not nvp.name:
        return None
    mode = profile.mode_for_nvpmodel(nvp.name)
    if mode is None:
        log.warning("device profile '%s' has no power mode for nvpmodel mode %r (from %s); "
                    "using its default %r", profile.name, nvp.name, nvp.source,
                    profile.default_power_mode)
    return mode


_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def compute_for_providers(providers: tuple[str, ...] | list[str]) -> str:
    """``gpu`` when a session got a GPU execution provider, else ``cpu``: which active
    power the board draws while it runs (a GPU wheel that fell back to the CPU draws the
    CPU's)."""
    return "gpu" if any(p in _GPU_PROVIDERS for p in providers) else "cpu"


def _has_nvidia_gpu(root: Path) -> bool:
    return (root / "proc/driver/nvidia/version").exists() or (root / "dev/nvidia0").exists()


def onnxruntime_advice(root: str | Path = "/") -> str:
    """The command that installs the ONNX Runtime wheel fitting the board at ``root``."""
    root = Path(root)
    release = read_l4t(root)
    if release is None:
        if _has_nvidia_gpu(root):
            return ("pip install 'edgecut[gpu]'  (onnxruntime-gpu, CUDA 12; "
                    "or 'edgecut[cpu]' for the CPU only)")
        return "pip install 'edgecut[cpu]'  (the onnxruntime CPU wheel)"
    where = f"JetPack {release.jetpack} (L4T R{release.l4t})"
    if release.major >= 6:
        index = "cu122" if release.cuda == "12.2" else "cu126"
        return (f"pip install onnxruntime-gpu --index-url "
                f"https://pypi.jetson-ai-lab.io/jp6/{index}  (the Jetson AI Lab wheel for "
                f"{where}, CUDA {release.cuda})")
    if release.major == 5:
        return ("pip install onnxruntime-gpu==1.16.0 --index-url "
                "https://pypi.jetson-ai-lab.io/jp5/cu114  (the Jetson AI Lab wheel for "
                f"{where}, CUDA 11.4, Python 3.8; the same wheel the Jetson Zoo lists)")
    return (f"pip install 'edgecut[cpu]'  ({where} ships CUDA {release.cuda} and Python "
            f"{release.python}; no ONNX Runtime 1.16+ GPU build exists for it, so edgecut "
            "runs on the CPU under a Python 3.8+ of its own)")


def import_onnxruntime(root: str | Path = "/") -> Any:
    """The ``onnxruntime`` module, from whichever wheel provides it.

    edgecut does not depend on one ONNX Runtime distribution (the CPU wheel, the CUDA
    wheel and the Jetson wheels share the module); without any, the error names the one
    to install for this board.
    """
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise BackendError(
            f"ONNX Runtime is not installed ({exc}); for this board: "
            f"{onnxruntime_advice(root)}"
        ) from exc


def litert_flavour() -> tuple[str, str] | None:
    """The LiteRT interpreter edgecut would load: ``(distribution, version)``, or ``None``."""
    from importlib import metadata, util

    for module, dist in (("ai_edge_litert", "ai-edge-litert"),
                         ("tflite_runtime", "tflite-runtime")):
        if util.find_spec(module) is not None:
            try:
                return dist, metadata.version(dist)
            except metadata.PackageNotFoundError:
                return dist, "unknown"
    return None
