"""Device profiles: every shipped profile parses, and a bad one is rejected by name."""

from __future__ import annotations

from pathlib import Path

import pytest

import devices
from devices import ConfigError, UnknownProfileError

SHIPPED = ["generic-arm", "generic-x86", "jetson-agx-orin", "jetson-nano", "jetson-orin-nano",
           "jetson-xavier-nx", "raspberry-pi-5"]


def test_shipped_profiles_are_listed() -> None:
    assert devices.list_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_parses(name: str) -> None:
    p = devices.load_profile(name)
    assert p.name == name
    assert p.cpu_cores >= 1
    assert p.providers[-1] == "CPUExecutionProvider"
    assert set(p.precisions) <= {"fp32", "fp16", "int8"} and "fp32" in p.precisions
    assert p.graph_optimization in ("disable", "basic", "extended", "all")
    assert 0 < p.relative_speed < 100
    # Watts are physical: idle below active, and the default mode and radio exist.
    for mode in p.power_modes.values():
        assert 0 < mode.idle_w <= mode.cpu_active_w <= mode.gpu_active_w + mode.cpu_active_w
    assert p.power is p.power_modes[p.default_power_mode]
    assert {"wifi", "lte"} <= set(p.radios)
    for radio in p.radios.values():
        assert 0 <= radio.idle_w < radio.rx_w <= radio.tx_w
    assert p.radio is p.radios[p.default_radio]
    if name == "jetson-nano":
        # JetPack 4's CUDA 10.2 has no ONNX Runtime 1.16+ GPU build: CPU only (docs/jetson.md).
        assert p.providers == ("CPUExecutionProvider",) and not p.accelerators
    elif name.startswith("jetson"):
        assert p.providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        assert "gpu" in p.accelerators and "fp16" in p.precisions
    else:
        assert p.providers == ("CPUExecutionProvider",)


def test_profile_by_path_equals_by_name() -> None:
    by_name = devices.load_profile("raspberry-pi-5")
    assert devices.load_profile(Path(by_name.source)) == by_name


def test_unknown_profile_name() -> None:
    with pytest.raises(UnknownProfileError, match="unknown device profile 'jetson-tx9': expected one of"):
        devices.load_profile("jetson-tx9")


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = Path(devices.load_profile("jetson-orin-nano").source).read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("cpu_cores = 6", "cpu_cores = 6\ncpu_corez = 6", "[compute]: unknown key(s) 'cpu_corez'"),
        ("cpu_cores = 6", 'cpu_cores = "six"', "[compute]: key 'cpu_cores': expected an integer, got 'six'"),
        ("cpu_cores = 6", "cpu_cores = 0", "key 'cpu_cores': expected a value >= 1"),
        ('"CUDAExecutionProvider", ', '"CUDAExecutionProvidr", ',
         "[compute]: key 'providers': unknown provider 'CUDAExecutionProvidr'"),
        ('precisions = ["fp32", "fp16", "int8"]', 'precisions = ["fp32", "int4"]',
         "key 'precisions': unknown precision 'int4'"),
        ('graph_optimization = "all"', 'graph_optimization = "max"', "key 'graph_optimization': expected one of"),
        ("fp16 = true", 'fp16 = "yes"', "[tensorrt]: key 'fp16': expected a boolean"),
        ("idle_w = 3.8", "idle_w = -1.0", "[power] [modes] [7W]: key 'idle_w': expected a value >= 0.0"),
        ('default_mode = "15W"', 'default_mode = "40W"', "[power]: key 'default_mode': expected one of"),
        ('default = "wifi"', 'default = "5g"', "[radio]: key 'default': expected one of ['lte', 'wifi']"),
        ("tx_w = 1.0", "tx_w = 1.0\nantenna = 2", "[radio] [wifi]: unknown key(s) 'antenna'"),
        ('name = "jetson-orin-nano"', 'name = "x"\nvendor = "nvidia"', "unknown key(s) 'vendor'"),
        ('model_contains = ["Orin Nano"]', 'model_contains = "Orin Nano"',
         "[detect]: key 'model_contains': expected a list of strings"),
    ],
    ids=["unknown-key", "wrong-type", "below-min", "bad-provider", "bad-precision", "bad-choice",
         "bool-type", "negative-watts", "bad-default-mode", "bad-default-radio", "unknown-radio-key",
         "unknown-top-key", "list-type"],
)
def test_bad_profile_names_file_and_key(tmp_path: Path, old: str, new: str, words: str) -> None:
    path = _variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        devices.load_profile(path)
    message = str(info.value)
    assert str(path) in message, message
    assert words in message, message


def test_missing_required_table(tmp_path: Path) -> None:
    path = tmp_path / "bare.toml"
    path.write_text('name = "bare"\n')
    with pytest.raises(ConfigError, match=r"bare.toml: missing required table \[compute\]"):
        devices.load_profile(path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        devices.load_profile(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absent.toml: file not found"):
        devices.load_profile(tmp_path / "absent.toml")
