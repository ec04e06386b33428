"""The energy model: what one inference plan costs the device, in millijoules.

Energy per plan = device active power x head time + radio power x transfer time
(transmit while uploading, receive while downloading) + idle power x waiting (for the
cloud's compute and the round trip). The figures come from the device profile and may be
corrected online from a power sensor (:meth:`EnergyModel.corrected`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from devices._profile import DeviceProfile
from devices.errors import ConfigError


@dataclass(frozen=True)
class EnergyModel:
    """Power figures in watts; times passed in milliseconds give millijoules."""

    active_w: float
    idle_w: float
    tx_w: float
    rx_w: float
    radio_idle_w: float = 0.0

    @staticmethod
    def from_profile(profile: DeviceProfile, power_mode: str | None = None,
                     radio: str | None = None, compute: str = "gpu") -> EnergyModel:
        """Figures of ``profile`` in ``power_mode`` (default mode) on ``radio`` (default)."""
        mode_name = power_mode or profile.default_power_mode
        mode = profile.power_modes.get(mode_name)
        if mode is None:
            raise ConfigError(
                f"device profile '{profile.name}': unknown power mode {mode_name!r}, "
                f"expected one of {sorted(profile.power_modes)}"
            )
        radio_name = radio or profile.default_radio
        r = profile.radios.get(radio_name)
        if r is None:
            raise ConfigError(
                f"device profile '{profile.name}': unknown radio {radio_name!r}, "
                f"expected one of {sorted(profile.radios)}"
            )
        if compute not in ("gpu", "cpu"):
            raise ConfigError(f"energy model: compute must be 'gpu' or 'cpu', got {compute!r}")
        active = mode.gpu_active_w if compute == "gpu" else mode.cpu_active_w
        return EnergyModel(active_w=active, idle_w=mode.idle_w, tx_w=r.tx_w, rx_w=r.rx_w,
                           radio_idle_w=r.idle_w)

    def plan_mj(self, head_ms: float, up_ms: float = 0.0, down_ms: float = 0.0,
                wait_ms: float = 0.0) -> float:
        """Energy of one request: head compute, upload, download and waiting."""
        return (self.active_w * head_ms + self.tx_w * up_ms + self.rx_w * down_ms
                + self.idle_w * wait_ms)

    def corrected(self, measured_active_w: float, weight: float = 0.2) -> EnergyModel:
        """A model whose active power moves ``weight`` of the way to a measured figure."""
        if measured_active_w <= 0:
            return self
        return replace(self, active_w=(1 - weight) * self.active_w + weight * measured_active_w)
