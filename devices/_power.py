"""Power sensors, battery and thermal state read from sysfs.

One contract, :class:`PowerSensor` (``read_w() -> float | None``), with three
implementations picked by :func:`open_power_sensor` from a config string:

- ``ina3221``: the Jetson INA3221 rail monitors, either the hwmon layout of JetPack 5/6
  (``in<N>_label``, ``in<N>_input`` in mV, ``curr<N>_input`` in mA) or the iio layout of
  JetPack 4 (``rail_name_<N>``, ``in_power<N>_input`` in mW);
- ``rapl``: Intel RAPL package energy counters under ``/sys/class/powercap``;
- ``model``: the device profile's figures (idle or active), for boards without sensors.

A sensor that exists but cannot be read (RAPL's counters are root-only since Linux 5.10;
rails behind a driver that refuses reads) is not opened: ``auto`` then falls back to the
profile's figures and logs a warning saying why, rather than reporting nothing forever.

Every reader takes a ``root`` so that tests can point it at a recorded sysfs tree.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devices._profile import DeviceProfile
from devices.errors import ConfigError, SensorUnreadable

log = logging.getLogger("edgecut.devices")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_number(path: Path) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class PowerSensor(abc.ABC):
    """Something that reports the board's (or the package's) power draw in watts."""

    name: str = "sensor"

    @abc.abstractmethod
    def read_w(self) -> float | None:
        """Current power in watts, or ``None`` when not known yet (e.g. first RAPL read)."""


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: its label and the files to read."""

    label: str
    power_mw_file: Path | None = None
    voltage_mv_file: Path | None = None
    current_ma_file: Path | None = None

    def read_w(self) -> float | None:
        if self.power_mw_file is not None:
            mw = _read_number(self.power_mw_file)
            return None if mw is None else mw / 1000.0
        if self.voltage_mv_file is None or self.current_ma_file is None:
            return None
        mv = _read_number(self.voltage_mv_file)
        ma = _read_number(self.current_ma_file)
        if mv is None or ma is None:
            return None
        return mv * ma / 1e6


def _find_ina3221_rails(root: Path) -> list[Rail]:
    rails: list[Rail] = []
    # JetPack 5/6: hwmon under the ina3221 i2c driver.
    for hwmon in sorted(root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*")):
        for label_file in sorted(hwmon.glob("in*_label")):
            idx = label_file.name[2:-len("_label")]
            label = _read_text(label_file) or f"in{idx}"
            if label.lower().startswith("sum"):
                continue  # the summed channel would count its rails twice
            rails.append(Rail(label, voltage_mv_file=hwmon / f"in{idx}_input",
                              current_ma_file=hwmon / f"curr{idx}_input"))
    # JetPack 4 (Nano, TX2): iio devices under the ina3221x driver.
    for iio in sorted(root.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*")):
        for name_file in sorted(iio.glob("rail_name_*")):
            idx = name_file.name.rsplit("_", 1)[1]
            label = _read_text(name_file) or f"rail{idx}"
            rails.append(Rail(label, power_mw_file=iio / f"in_power{idx}_input"))
    return rails


class Ina3221Sensor(PowerSensor):
    """Sum of the Jetson INA3221 rails (board input when a main rail is labelled)."""

    name = "ina3221"

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)
        self.rails = _find_ina3221_rails(self.root)
        if not self.rails:
            raise ConfigError(f"{self.root}: no INA3221 rails under sys/bus/i2c/drivers/ina3221*")
        if not self.read_rails_w():
            raise SensorUnreadable(
                f"{self.root}: the INA3221 rails ({', '.join(r.label for r in self.rails)}) "
                "cannot be read by this user"
            )

    def read_rails_w(self) -> dict[str, float]:
        """Power per rail label, in watts (rails that could not be read are left out)."""
        out: dict[str, float] = {}
        for rail in self.rails:
            w = rail.read_w()
            if w is not None:
                out[rail.label] = w
        return out

    def read_w(self) -> float | None:
        rails = self.read_rails_w()
        if not rails:
            return None
        # Some boards label a rail as the whole module input: that alone is the total.
        for label, w in rails.items():
            if label.upper() in ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0"):
                return w
        return sum(rails.values())


class RaplSensor(PowerSensor):
    """Intel RAPL package power from the difference of two energy counter readings."""

    name = "rapl"

    def __init__(self, root: str | Path = "/", clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.zones = [
            z for z in sorted(self.root.glob("sys/class/powercap/intel-rapl:*"))
            if ":" in z.name and z.name.count(":") == 1 and (z / "energy_uj").exists()
        ]
        if not self.zones:
            raise ConfigError(f"{self.root}: no RAPL package zones under sys/class/powercap")
        self._clock = clock
        self._last: tuple[float, list[float]] | None = None
        if self._energy_uj() is None:
            zone = self.zones[0] / "energy_uj"
            raise SensorUnreadable(
                f"{zone} cannot be read by this user (RAPL energy counters are readable by "
                "root only since Linux 5.10)"
            )

    def _energy_uj(self) -> list[float] | None:
        values = [_read_number(z / "energy_uj") for z in self.zones]
        if any(v is None for v in values):
            return None
        return [float(v) for v in values if v is not None]

    def read_w(self) -> float | None:
        now = self._clock()
        energy = self._energy_uj()
        if energy is None:
            return None
        last, self._last = self._last, (now, energy)
        if last is None or now <= last[0]:
            return None
        total_uj = 0.0
        for zone, before, after in zip(self.zones, last[1], energy):
            delta = after - before
            if delta < 0:  # the counter wrapped
                delta += _read_number(zone / "max_energy_range_uj") or 0.0
            total_uj += delta
        return total_uj / 1e6 / (now - last[0])


class ModelSensor(PowerSensor):
    """The device profile's figures: active power while busy, idle power otherwise."""

    name = "model"

    def __init__(self, profile: DeviceProfile, power_mode: str | None = None,
                 compute: str = "gpu") -> None:
        if compute not in ("gpu", "cpu"):
            raise ConfigError(f"model power sensor: compute must be 'gpu' or 'cpu', got {compute!r}")
        mode = profile.power_modes.get(power_mode or profile.default_power_mode)
        if mode is None:
            raise ConfigError(
                f"device profile '{profile.name}': unknown power mode {power_mode!r}, "
                f"expected one of {sorted(profile.power_modes)}"
            )
        self.mode = mode
        self.compute = compute
        self.busy = False

    def read_w(self) -> float | None:
        if not self.busy:
            return self.mode.idle_w
        return self.mode.gpu_active_w if self.compute == "gpu" else self.mode.cpu_active_w


def open_power_sensor(kind: str = "auto", *, root: str | Path = "/",
                      profile: DeviceProfile | None = None) -> PowerSensor:
    """Open a power sensor by config string: ``auto``, ``ina3221``, ``rapl`` or ``model``.

    ``auto`` tries the INA3221 rails, then RAPL, then the profile's figures; a sensor
    that is present but unreadable is logged as a warning on the way to the next.
    """
    if kind not in ("auto", "ina3221", "rapl", "model"):
        raise ConfigError(
            f"power sensor {kind!r}: expected one of 'auto', 'ina3221', 'rapl', 'model'"
        )
    unreadable: list[str] = []
    if kind in ("auto", "ina3221"):
        try:
            return Ina3221Sensor(root)
        except SensorUnreadable as exc:
            if kind == "ina3221":
                raise
            unreadable.append(str(exc))
        except ConfigError:
            if kind == "ina3221":
                raise
    if kind in ("auto", "rapl"):
        try:
            return RaplSensor(root)
        except SensorUnreadable as exc:
            if kind == "rapl":
                raise
            unreadable.append(str(exc))
        except ConfigError:
            if kind == "rapl":
                raise
    if profile is None:
        raise ConfigError(f"power sensor {kind!r}: no sensor found under {root} and no profile given")
    for why in unreadable:
        log.warning("power sensor: %s; using device profile '%s' figures instead", why,
                    profile.name)
    return ModelSensor(profile)


@dataclass(frozen=True)
class BatteryState:
    """Battery level from ``/sys/class/power_supply``; ``power_w`` may be unknown."""

    name: str
    capacity_pct: float
    status: str
    power_w: float | None = None

    @property
    def discharging(self) -> bool:
        return self.status.lower() == "discharging"


def read_battery(root: str | Path = "/") -> BatteryState | None:
    """The first battery under ``sys/class/power_supply``, or ``None`` on mains-only boards."""
    base = Path(root) / "sys/class/power_supply"
    for supply in sorted(base.glob("*")):
        if (_read_text(supply / "type") or "").lower() != "battery":
            continue
        capacity = _read_number(supply / "capacity")
        if capacity is None:
            now = _read_number(supply / "energy_now") or _read_number(supply / "charge_now")
            full = _read_number(supply / "energy_full") or _read_number(supply / "charge_full")
            if now is None or not full:
                continue
            capacity = 100.0 * now / full
        power_uw = _read_number(supply / "power_now")
        if power_uw is None:
            cur = _read_number(supply / "current_now")
            volt = _read_number(supply / "voltage_now")
            power_uw = None if cur is None or volt is None else cur * volt / 1e6
        return BatteryState(
            name=supply.name,
            capacity_pct=max(0.0, min(100.0, capacity)),
            status=_read_text(supply / "status") or "Unknown",
            power_w=None if power_uw is None else abs(power_uw) / 1e6,
        )
    return None


@dataclass(frozen=True)
class ThermalState:
    """Hottest thermal zone and whether it has reached a passive (throttling) trip point."""

    max_temp_c: float
    throttled: bool
    zone: str = ""


def read_thermal(root: str | Path = "/") -> ThermalState | None:
    """Read ``sys/class/thermal/thermal_zone*``; ``None`` when the board exposes none."""
    hottest: tuple[float, str] | None = None
    throttled = False
    for zone in sorted(Path(root).glob("sys/class/thermal/thermal_zone*")):
        milli = _read_number(zone / "temp")
        if milli is None:
            continue
        for trip_type in zone.glob("trip_point_*_type"):
            if (_read_text(trip_type) or "") not in ("passive", "hot", "critical"):
                continue
            trip = _read_number(trip_type.with_name(trip_type.name.replace("_type", "_temp")))
            if trip is not None and trip > 0 and milli >= trip:
                throttled = True
        name = _read_text(zone / "type") or zone.name
        if hottest is None or milli / 1000.0 > hottest[0]:
            hottest = (milli / 1000.0, name)
    if hottest is None:
        return None
    return ThermalState(hottest[0], throttled, hottest[1])
