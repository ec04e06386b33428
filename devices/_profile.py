from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from devices.config import Table, read_toml
from devices.errors import ConfigError, UnknownProfileError

_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_OPT_LEVELS = ("disable", "basic", "extended", "all")
_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PowerMode:
    """Typical board power in one power mode (nvpmodel mode on Jetson), in watts."""

    name: str
    idle_w: float
    cpu_active_w: float
    gpu_active_w: float
    #: The names nvpmodel gives this mode across JetPack releases (``MODE_15W``, ``15W``).
    nvpmodel: tuple[str, ...] = ()


@dataclass(frozen=True)
class Radio:
    """Power of one network interface while sending, receiving and idle, in watts."""

    name: str
    tx_w: float
    rx_w: float
    idle_w: float


@dataclass(frozen=True)
class TensorRTOptions:
    fp16: bool = False
    int8: bool = False
    engine_cache_dir: str = "~/.cache/edgecut/trt"
    workspace_mb: int = 1024


@dataclass(frozen=True)
class DeviceProfile:
    """What edgecut knows about a kind of device: compute, power, radios.

    ``relative_speed`` is the device's FP32 inference speed relative to the reference
    x86 host edgecut is developed on (2 cores with AVX-512 VNNI): 0.25 means the device
    takes four times as long. Trace replay uses it to emulate the device's compute.
    """

    name: str
    description: str
    cpu_cores: int
    accelerators: tuple[str, ...]
    providers: tuple[str, ...]
    precisions: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: str
    check_finite: bool
    relative_speed: float
    tensorrt: TensorRTOptions
    power_modes: dict[str, PowerMode] = field(hash=False)
    default_power_mode: str = ""
    radios: dict[str, Radio] = field(default_factory=dict, hash=False)
    default_radio: str = ""
    detect_model_contains: tuple[str, ...] = ()
    source: str = ""

    @property
    def power(self) -> PowerMode:
        """The default power mode."""
        return self.power_modes[self.default_power_mode]

    @property
    def radio(self) -> Radio:
        """The default radio."""
        return self.radios[self.default_radio]

    def mode_for_nvpmodel(self, nvpmodel_name: str) -> str | None:
        """The power mode whose name or ``nvpmodel`` names include ``nvpmodel_name``."""
        wanted = nvpmodel_name.strip().upper()
        for key, mode in self.power_modes.items():
            if key.upper() == wanted or wanted in (n.upper() for n in mode.nvpmodel):
                return key
        return None


def _profiles_dir() -> Path:
    # Beside this module (importlib.resources.files needs Python 3.9; the package is
    # always installed as files, never zipped).
    return Path(__file__).resolve().parent / "profiles"


def list_profiles() -> list[str]:
    """Names of the device profiles shipped with edgecut."""
    return sorted(p.stem for p in _profiles_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a profile by name (``jetson-nano``) or from a TOML file path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.is_file()):
        path = _profiles_dir() / f"{text}.toml"
        if not path.is_file():
            known = ", ".join(list_profiles())
            raise UnknownProfileError(
                f"unknown device profile '{text}': expected one of {known} or a .toml path"
            )
    return parse_profile(read_toml(path), str(path))


def parse_profile(data: dict, source: str) -> DeviceProfile:
    """Build a :class:`DeviceProfile` from parsed TOML, rejecting unknown keys."""
    top = Table(data, source)
    name = top.get("name", str)
    description = top.get("description", str, "")

    compute = top.table("compute", required=True)
    cpu_cores = compute.get("cpu_cores", int, min=1)
    accelerators = tuple(compute.get_list("accelerators", str, []))
    providers = tuple(compute.get_list("providers", str, ["CPUExecutionProvider"]))
    for p in providers:
        if p not in _PROVIDERS:
            raise ConfigError(
                f"{compute.where}: key 'providers': unknown provider {p!r}, expected one of "
                + ", ".join(_PROVIDERS)
            )
    precisions = tuple(compute.get_list("precisions", str, ["fp32"]))
    for p in precisions:
        if p not in _PRECISIONS:
            raise ConfigError(
                f"{compute.where}: key 'precisions': unknown precision {p!r}, "
                f"expected one of {', '.join(_PRECISIONS)}"
            )
    intra = compute.get("intra_op_threads", int, 0, min=0)
    inter = compute.get("inter_op_threads", int, 1, min=0)
    opt = compute.get("graph_optimization", str, "all", choices=_OPT_LEVELS)
    check_finite = compute.get("check_finite", bool, False)
    relative_speed = compute.get("relative_speed", float, 1.0, min=1e-3)
    compute.finish()

    trt_t = top.table("tensorrt")
    trt = TensorRTOptions(
        fp16=trt_t.get("fp16", bool, False),
        int8=trt_t.get("int8", bool, False),
        engine_cache_dir=trt_t.get("engine_cache_dir", str, "~/.cache/edgecut/trt"),
        workspace_mb=trt_t.get("workspace_mb", int, 1024, min=16),
    )
    trt_t.finish()

    power = top.table("power", required=True)
    default_mode = power.get("default_mode", str)
    modes_t = power.table("modes", required=True)
    modes: dict[str, PowerMode] = {}
    for mode_name in list(modes_t.keys()):
        m = modes_t.table(mode_name)
        modes[mode_name] = PowerMode(
            name=mode_name,
            idle_w=m.get("idle_w", float, min=0.0),
            cpu_active_w=m.get("cpu_active_w", float, min=0.0),
            gpu_active_w=m.get("gpu_active_w", float, min=0.0),
            nvpmodel=tuple(m.get_list("nvpmodel", str, [])),
        )
        m.finish()
    modes_t.finish()
    power.finish()
    if default_mode not in modes:
        raise ConfigError(
            f"{source} [power]: key 'default_mode': expected one of {sorted(modes)}, "
            f"got {default_mode!r}"
        )

    radio_t = top.table("radio", required=True)
    default_radio = radio_t.get("default", str)
    radios: dict[str, Radio] = {}
    for radio_name in [k for k in radio_t.keys() if k != "default"]:
        r = radio_t.table(radio_name)
        radios[radio_name] = Radio(
            name=radio_name,
            tx_w=r.get("tx_w", float, min=0.0),
            rx_w=r.get("rx_w", float, min=0.0),
            idle_w=r.get("idle_w", float, min=0.0),
        )
        r.finish()
    radio_t.finish()
    if default_radio not in radios:
        raise ConfigError(
            f"{source} [radio]: key 'default': expected one of {sorted(radios)}, "
            f"got {default_radio!r}"
        )

    detect_t = top.table("detect")
    contains = tuple(detect_t.get_list("model_contains", str, []))
    detect_t.finish()
    top.finish()

    return DeviceProfile(
        name=name,
        description=description,
        cpu_cores=cpu_cores,
        accelerators=accelerators,
        providers=providers,
        precisions=precisions,
        intra_op_threads=intra,
        inter_op_threads=inter,
        graph_optimization=opt,
        check_finite=check_finite,
        relative_speed=relative_speed,
        tensorrt=trt,
        power_modes=modes,
        default_power_mode=default_mode,
        radios=radios,
        default_radio=default_radio,
        detect_model_contains=contains,
        source=source,
    )
