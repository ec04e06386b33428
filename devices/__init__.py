"""Device profiles, board detection, power sensing and the energy model.

The base layer of edgecut: ``partition`` and ``edge`` build on it; it imports neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from devices.errors import (
    BackendError,
    CloudUnavailable,
    ConfigError,
    DeadlineExceeded,
    EdgecutError,
    FleetError,
    ModelError,
    ModelInputError,
    ModelUpdateError,
    OffloadError,
    OffloadRejected,
    PartitionError,
    SensorUnreadable,
    TransferAbandoned,
    UnknownProfileError,
)

# public name -> module that defines it, imported when the name is first read (an
# application that imports ``edge.Client`` needs the error tree only)
_LAZY = {
    **dict.fromkeys(("JetsonRelease", "NvpModel", "active_power_mode", "compute_for_providers",
                     "import_onnxruntime", "litert_flavour", "onnxruntime_advice", "read_l4t",
                     "read_nvpmodel"), "devices._board"),
    **dict.fromkeys(("detect", "detect_name"), "devices._detect"),
    "EnergyModel": "devices._energy",
    **dict.fromkeys(("BatteryState", "Ina3221Sensor", "ModelSensor", "PowerSensor",
                     "RaplSensor", "ThermalState", "open_power_sensor", "read_battery",
                     "read_thermal"), "devices._power"),
    **dict.fromkeys(("DeviceProfile", "PowerMode", "Radio", "TensorRTOptions", "list_profiles",
                     "load_profile", "parse_profile"), "devices._profile"),
}

if TYPE_CHECKING:
    from devices._board import (
        JetsonRelease,
        NvpModel,
        active_power_mode,
        compute_for_providers,
        import_onnxruntime,
        litert_flavour,
        onnxruntime_advice,
        read_l4t,
        read_nvpmodel,
    )
    from devices._detect import detect, detect_name
    from devices._energy import EnergyModel
    from devices._power import (
        BatteryState,
        Ina3221Sensor,
        ModelSensor,
        PowerSensor,
        RaplSensor,
        ThermalState,
        open_power_sensor,
        read_battery,
        read_thermal,
    )
    from devices._profile import (
        DeviceProfile,
        PowerMode,
        Radio,
        TensorRTOptions,
        list_profiles,
        load_profile,
        parse_profile,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'devices' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "JetsonRelease",
    "NvpModel",
    "SensorUnreadable",
    "active_power_mode",
    "compute_for_providers",
    "import_onnxruntime",
    "litert_flavour",
    "onnxruntime_advice",
    "read_l4t",
    "read_nvpmodel",
    "BatteryState",
    "EnergyModel",
    "Ina3221Sensor",
    "ModelSensor",
    "PowerSensor",
    "RaplSensor",
    "ThermalState",
    "open_power_sensor",
    "read_battery",
    "read_thermal",
    "BackendError",
    "CloudUnavailable",
    "ConfigError",
    "DeadlineExceeded",
    "DeviceProfile",
    "EdgecutError",
    "FleetError",
    "ModelError",
    "ModelInputError",
    "ModelUpdateError",
    "OffloadError",
    "TransferAbandoned",
    "OffloadRejected",
    "PartitionError",
    "PowerMode",
    "Radio",
    "TensorRTOptions",
    "UnknownProfileError",
    "detect",
    "detect_name",
    "list_profiles",
    "load_profile",
    "parse_profile",
]
