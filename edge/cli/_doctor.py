"""``edgecut doctor``: what edgecut finds on this board, and the command for what is missing.

The board's half (model, JetPack, power mode, sensors) is read from a file tree, ``/`` by
default or a recorded one with ``--root``; the Python half (ONNX Runtime, its providers,
LiteRT) is this interpreter's.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import click

import devices

_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                      "onnxruntime-openvino")
_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass
class Findings:
    """The lines ``doctor`` prints, as (label, text), and the (what, command) it misses."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, text: str) -> None:
        self.lines.append((label, text))


def _board(root: Path, found: Findings) -> tuple[devices.DeviceProfile, devices.JetsonRelease | None]:
    model_file = root / "proc/device-tree/model"
    try:
        model = model_file.read_bytes().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        model = ""
    machine = platform.machine() if str(root) == "/" else ("aarch64" if model else None)
    name = devices.detect_name(root, machine)
    profile = devices.load_profile(name)
    found.add("board", f"{model or 'no device-tree model'} -> profile {name}")
    release = devices.read_l4t(root)
    if release is None:
        found.add("jetpack", "none (no etc/nv_tegra_release: not a Jetson)")
    else:
        found.add("jetpack", f"{release.jetpack} (L4T R{release.l4t}; Ubuntu {release.ubuntu}, "
                             f"CUDA {release.cuda}, system Python {release.python})")
    return profile, release


def _power(root: Path, profile: devices.DeviceProfile, found: Findings) -> None:
    nvp = devices.read_nvpmodel(root)
    default = profile.default_power_mode
    if nvp is None:
        found.add("power mode", f"no nvpmodel -> the profile's default mode ({default})")
        return
    where = f"nvpmodel id {nvp.mode_id}, from {nvp.source}" if nvp.mode_id is not None \
        else f"from {nvp.source}"
    mode = profile.mode_for_nvpmodel(nvp.name) if nvp.name else None
    if mode is None:
        found.add("power mode", f"{nvp.name or '?'} ({where}) -> unknown to the profile, "
                                f"using its default {default}")
        found.missing.append((
            f"profile {profile.name} has no power mode for nvpmodel mode {nvp.name or '?'}",
            f"add [power.modes.{nvp.name or 'NAME'}] to a copy of {Path(profile.source).name} "
            "and pass it with --device"))
        return
    figures = profile.power_modes[mode]
    found.add("power mode", f"{nvp.name} ({where}) -> profile mode {mode}: idle "
                            f"{figures.idle_w:g} W, CPU {figures.cpu_active_w:g} W, "
                            f"GPU {figures.gpu_active_w:g} W")


def _sensors(root: Path, profile: devices.DeviceProfile, found: Findings) -> None:
    parts = []
    chosen = "profile figures"
    for kind in ("ina3221", "rapl"):
        try:
            sensor = devices.open_power_sensor(kind, root=root)
        except devices.SensorUnreadable as exc:
            parts.append(f"{kind} present but unreadable")
            if kind == "rapl":
                fix = ("run the agent as root, or: sudo chmod a+r "
                       "/sys/class/powercap/intel-rapl:*/energy_uj (until reboot)")
            else:
                fix = "run the agent as a user that can read /sys/bus/i2c/drivers/ina3221*"
            found.missing.append((str(exc), fix))
            continue
        except devices.ConfigError:
            parts.append(f"{kind} none")
            continue
        if isinstance(sensor, devices.Ina3221Sensor):
            rails = sensor.read_rails_w()
            total = sensor.read_w()
            parts.append(f"ina3221 {len(rails)} rails readable ({total:.2f} W now)")
        else:
            parts.append("rapl readable")
        if chosen == "profile figures":
            chosen = kind
    found.add("sensors", f"{'; '.join(parts)} -> power from {chosen}")


def _onnxruntime(root: Path, profile: devices.DeviceProfile,
                 release: devices.JetsonRelease | None, found: Findings) -> None:
    try:
        ort = devices.import_onnxruntime(root)
    except devices.BackendError:
        found.add("onnxruntime", "not installed")
        found.missing.append(("ONNX Runtime", devices.onnxruntime_advice(root)))
        return
    dists = [d for d in _ORT_DISTRIBUTIONS if _installed(d)]
    found.add("onnxruntime", f"{ort.__version__} (from {', '.join(dists) or 'unknown'})")
    available = list(ort.get_available_providers())
    found.add("providers", f"available {', '.join(available)}")
    wanted = list(profile.providers)
    chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    found.add("", f"profile wants {', '.join(wanted)}")
    compute = devices.compute_for_providers(chosen)
    found.add("", f"chosen {', '.join(chosen)} -> energy model uses {compute.upper()} power")
    lacking = [p for p in wanted if p in _GPU and p not in available]
    if lacking:
        found.missing.append((f"{' and '.join(lacking)} (the profile's GPU providers)",
                              devices.onnxruntime_advice(root)))
    if len(dists) > 1:
        found.missing.append((f"one ONNX Runtime, not {len(dists)} ({', '.join(dists)} share "
                              "one module)", f"pip uninstall -y {' '.join(dists)} and "
                              "reinstall the one for this board"))


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _litert(found: Findings) -> None:
    flavour = devices.litert_flavour()
    if flavour is None:
        found.add("litert", "none (.tflite models cannot run)")
        if sys.version_info >= (3, 9):
            found.missing.append(("LiteRT for .tflite models", "pip install ai-edge-litert"))
        else:
            found.missing.append(("LiteRT for .tflite models",
                                  "pip install tflite-runtime 'numpy<2'"))
        return
    found.add("litert", f"{flavour[0]} {flavour[1]}")


def diagnose(root: str | Path = "/") -> Findings:
    """Everything ``edgecut doctor`` reports for the board whose files are at ``root``."""
    root = Path(root)
    found = Findings()
    profile, release = _board(root, found)
    found.add("python", f"{platform.python_version()} (this interpreter; edgecut needs 3.8+)")
    _power(root, profile, found)
    _sensors(root, profile, found)
    _onnxruntime(root, profile, release, found)
    _litert(found)
    return found


@click.command("doctor")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="Read the board's files from this tree (a recorded board) instead of /.")
def doctor(root: str) -> None:
    """Print what edgecut detects on this board and the command that fixes what is missing."""
    found = diagnose(root)
    for label, text in found.lines:
        click.echo(f"{label:12s} {text}".rstrip() if label else f"{'':12s} {text}")
    if not found.missing:
        click.echo("missing      nothing")
        return
    click.echo("missing")
    for what, command in found.missing:
        click.echo(f"  - {what}")
        click.echo(f"    fix: {command}")
