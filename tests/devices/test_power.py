from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devices import (
    ConfigError,
    EnergyModel,
    Ina3221Sensor,
    ModelSensor,
    RaplSensor,
    load_profile,
    open_power_sensor,
    read_battery,
    read_thermal,
)

DATA = Path(__file__).parent / "data"


def test_ina3221_hwmon_reads_board_input_rail() -> None:
    sensor = Ina3221Sensor(DATA / "jetson-orin-nano")
    rails = sensor.read_rails_w()
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # the sum channel is skipped
    assert rails["VDD_IN"] == pytest.approx(5.056 * 1.432)
    assert sensor.read_w() == pytest.approx(5.056 * 1.432)  # VDD_IN is the whole module


def test_ina3221_iio_layout_of_jetpack4() -> None:
    sensor = Ina3221Sensor(DATA / "jetson-nano")
    assert sensor.read_rails_w() == {"POM_5V_IN": 4.12, "POM_5V_GPU": 1.48, "POM_5V_CPU": 0.82}
    assert sensor.read_w() == pytest.approx(4.12)


def test_rapl_power_from_counter_difference(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(DATA / "x86-laptop", root)
    now = [100.0]
    sensor = RaplSensor(root, clock=lambda: now[0])
    assert [z.name for z in sensor.zones] == ["intel-rapl:0"]  # subzones not double counted
    assert sensor.read_w() is None  # one reading is not a rate
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    energy.write_text(str(123456789 + 12_500_000))
    now[0] = 102.5
    assert sensor.read_w() == pytest.approx(5.0)
    # A wrapped counter adds the range back instead of going negative.
    energy.write_text("1000000")
    now[0] = 103.5
    expected = (262143328850 - (123456789 + 12_500_000) + 1_000_000) / 1e6
    assert sensor.read_w() == pytest.approx(expected)


def test_open_power_sensor_auto_and_errors() -> None:
    assert isinstance(open_power_sensor(root=DATA / "jetson-nano"), Ina3221Sensor)
    assert isinstance(open_power_sensor(root=DATA / "x86-laptop"), RaplSensor)
    profile = load_profile("jetson-nano")
    model = open_power_sensor(root=DATA / "charge-only", profile=profile)
    assert isinstance(model, ModelSensor)
    assert model.read_w() == profile.power.idle_w
    model.busy = True
    assert model.read_w() == profile.power.gpu_active_w
    with pytest.raises(ConfigError, match="no INA3221 rails"):
        open_power_sensor("ina3221", root=DATA / "x86-laptop")
    with pytest.raises(ConfigError, match="expected one of"):
        open_power_sensor("thermocouple", root=DATA / "x86-laptop")
    with pytest.raises(ConfigError, match="no sensor found"):
        open_power_sensor(root=DATA / "charge-only")


def test_battery_and_thermal() -> None:
    bat = read_battery(DATA / "x86-laptop")
    assert bat is not None and bat.name == "BAT0"
    assert bat.capacity_pct == 17 and bat.discharging and bat.power_w == pytest.approx(9.12)
    charge = read_battery(DATA / "charge-only")
    assert charge is not None and charge.capacity_pct == 50 and not charge.discharging
    assert charge.power_w == pytest.approx(2.0)
    assert read_battery(DATA / "jetson-nano") is None
    hot = read_thermal(DATA / "jetson-nano")
    assert hot is not None and hot.throttled and hot.max_temp_c == 97.5 and hot.zone == "GPU-therm"
    cool = read_thermal(DATA / "jetson-orin-nano")
    assert cool is not None and not cool.throttled and cool.max_temp_c == 48.25
    assert read_thermal(DATA / "x86-laptop") is None


def test_energy_model_from_profile() -> None:
    nano = load_profile("jetson-nano")
    e = EnergyModel.from_profile(nano)
    # head 100 ms on the GPU, 50 ms upload, 10 ms download, 40 ms waiting
    assert e.plan_mj(100, 50, 10, 40) == pytest.approx(7.5 * 100 + 1.0 * 50 + 0.55 * 10 + 1.25 * 40)
    cpu5 = EnergyModel.from_profile(nano, "5W", "lte", compute="cpu")
    assert (cpu5.active_w, cpu5.idle_w, cpu5.tx_w) == (3.0, 1.1, 2.6)
    with pytest.raises(ConfigError, match="unknown power mode"):
        EnergyModel.from_profile(nano, "20W")
    with pytest.raises(ConfigError, match="unknown radio"):
        EnergyModel.from_profile(nano, radio="5g")
    assert e.corrected(5.5, weight=0.5).active_w == pytest.approx(6.5)
