"""The board as it is: L4T release, nvpmodel's active mode, sensors that cannot be read, and
the ONNX Runtime wheel each board needs, on recorded file trees (tests/devices/data)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest

import devices
from devices import (
    BackendError,
    ModelSensor,
    RaplSensor,
    SensorUnreadable,
    load_profile,
    open_power_sensor,
)

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("tree, l4t, jetpack, python, cuda", [
    ("jetson-nano", "32.7.4", "4.6.4", "3.6", "10.2"),
    ("jetson-xavier-nx", "35.4.1", "5.1.2", "3.8", "11.4"),
    ("jetson-orin-nano", "36.4.3", "6.2", "3.10", "12.6"),
])
def test_l4t_release_and_what_its_jetpack_ships(tree: str, l4t: str, jetpack: str,
                                                python: str, cuda: str) -> None:
    release = devices.read_l4t(DATA / tree)
    assert release is not None
    assert (release.l4t, release.jetpack, release.python, release.cuda) == (l4t, jetpack, python, cuda)
    assert release.major == int(jetpack[0])


def test_l4t_of_an_unlisted_release_is_named_by_family(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 2.0, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x\n")
    release = devices.read_l4t(tmp_path)
    assert release is not None and (release.jetpack, release.cuda) == ("6.x", "12.2")
    assert devices.read_l4t(DATA / "x86-laptop") is None


@pytest.mark.parametrize("tree, mode_id, name, profile, mode", [
    ("jetson-nano", 0, "MAXN", "jetson-nano", "MAXN"),
    ("jetson-xavier-nx", 2, "MODE_15W_6CORE", "jetson-xavier-nx", "15W"),
    ("jetson-orin-nano", 1, "25W", "jetson-orin-nano", "25W"),
])
def test_active_nvpmodel_mode_maps_to_a_profile_mode(tree: str, mode_id: int, name: str,
                                                     profile: str, mode: str) -> None:
    nvp = devices.read_nvpmodel(DATA / tree)
    assert nvp is not None
    assert (nvp.mode_id, nvp.name, nvp.source) == (mode_id, name, "var/lib/nvpmodel/status")
    assert devices.detect_name(DATA / tree, machine="aarch64") == profile
    assert devices.active_power_mode(load_profile(profile), DATA / tree) == mode


# Every mode name nvpmodel uses on the profiled boards (the BSP's nvpmodel_*.conf files of
# JetPack 4.6, 5 and 6; see each profile's header), and the profile mode it means.
NVPMODEL_NAMES = [
    ("jetson-nano", "MAXN", "MAXN"), ("jetson-nano", "5W", "5W"),
    ("jetson-orin-nano", "15W", "15W"), ("jetson-orin-nano", "7W", "7W"),
    ("jetson-orin-nano", "25W", "25W"), ("jetson-orin-nano", "MAXN_SUPER", "MAXN_SUPER"),
    ("jetson-agx-orin", "MAXN", "MAXN"), ("jetson-agx-orin", "MODE_15W", "15W"),
    ("jetson-agx-orin", "MODE_30W", "30W"), ("jetson-agx-orin", "MODE_50W", "50W"),
    *[("jetson-xavier-nx", f"MODE_{w}W_{c}", f"{w}W")
      for w in (10, 15, 20) for c in ("2CORE", "4CORE")],
    ("jetson-xavier-nx", "MODE_10W_DESKTOP", "10W"), ("jetson-xavier-nx", "MODE_15W_6CORE", "15W"),
    ("jetson-xavier-nx", "MODE_20W_6CORE", "20W"),
]


@pytest.mark.parametrize("profile, nvpmodel, mode", NVPMODEL_NAMES)
def test_every_jetpack_mode_name_is_mapped(profile: str, nvpmodel: str, mode: str) -> None:
    assert load_profile(profile).mode_for_nvpmodel(nvpmodel) == mode


def test_added_modes_scale_with_their_budget() -> None:
    orin = load_profile("jetson-orin-nano").power_modes
    assert orin["15W"].gpu_active_w < orin["25W"].gpu_active_w < orin["MAXN_SUPER"].gpu_active_w
    agx = load_profile("jetson-agx-orin").power_modes
    assert agx["30W"].gpu_active_w < agx["50W"].gpu_active_w < agx["MAXN"].gpu_active_w


def test_unknown_nvpmodel_mode_keeps_the_default_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "board"
    shutil.copytree(DATA / "jetson-orin-nano", root)
    (root / "var/lib/nvpmodel/status").write_text("pmode:0007\n")
    (root / "etc/nvpmodel.conf").write_text("< POWER_MODEL ID=7 NAME=MODE_CUSTOM_12W >\n")
    with caplog.at_level(logging.WARNING, logger="edgecut.devices"):
        assert devices.active_power_mode(load_profile("jetson-orin-nano"), root) is None
    assert "MODE_CUSTOM_12W" in caplog.text and "'15W'" in caplog.text


def test_no_nvpmodel_off_jetson() -> None:
    assert devices.read_nvpmodel(DATA / "x86-laptop") is None
    assert devices.active_power_mode(load_profile("generic-x86"), DATA / "x86-laptop") is None


def test_nvpmodel_query_output_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in nvpmodel executable on PATH printing what JetPack 6's prints for `-q`.
    exe = tmp_path / "bin/nvpmodel"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nprintf 'NV Power Mode: MAXN_SUPER\\n2\\n'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    nvp = devices.read_nvpmodel(DATA / "jetson-orin-nano", query=True)
    assert nvp == devices.NvpModel(2, "MAXN_SUPER", "nvpmodel -q")


def test_rapl_that_this_user_cannot_read_falls_back_to_the_profile(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    shutil.copytree(DATA / "x86-laptop", root)
    # Stands in for a root-only counter: opening it fails with an OSError, as the
    # PermissionError a non-root agent gets (root itself reads any file, whatever its mode).
    for counter in root.glob("sys/class/powercap/intel-rapl:*/energy_uj"):
        counter.unlink()
        counter.mkdir()
    with pytest.raises(SensorUnreadable, match="cannot be read by this user"):
        RaplSensor(root)
    profile = load_profile("generic-x86")
    with caplog.at_level(logging.WARNING, logger="edgecut.devices"):
        sensor = open_power_sensor("auto", root=root, profile=profile)
    assert isinstance(sensor, ModelSensor)
    assert sensor.read_w() == profile.power.idle_w
    assert "energy_uj cannot be read" in caplog.text and "generic-x86" in caplog.text


def test_gpu_power_only_with_a_gpu_provider() -> None:
    assert devices.compute_for_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "gpu"
    assert devices.compute_for_providers(("TensorrtExecutionProvider",)) == "gpu"
    assert devices.compute_for_providers(["CPUExecutionProvider"]) == "cpu"


@pytest.mark.parametrize("tree, words", [
    ("jetson-orin-nano", ["onnxruntime-gpu", "jp6/cu126", "JetPack 6.2"]),
    ("jetson-xavier-nx", ["onnxruntime-gpu==1.16.0", "jp5/cu114", "JetPack 5.1.2"]),
    ("jetson-nano", ["edgecut[cpu]", "CUDA 10.2", "Python 3.6"]),
    ("x86-laptop", ["edgecut[cpu]"]),
])
def test_advice_names_the_wheel_for_the_board(tree: str, words: list[str]) -> None:
    advice = devices.onnxruntime_advice(DATA / tree)
    for word in words:
        assert word in advice


def test_missing_onnxruntime_fails_at_first_use_naming_the_wheel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import onnxruntime` raise ImportError, as on a device
    # where no wheel providing the module was installed.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match=r"jp5/cu114.*JetPack 5\.1\.2"):
        devices.import_onnxruntime(DATA / "jetson-xavier-nx")


def test_nano_profile_says_what_a_nano_runs() -> None:
    nano = load_profile("jetson-nano")
    assert nano.providers == ("CPUExecutionProvider",)
    assert nano.accelerators == ()
    text = Path(nano.source).read_text()
    for fact in ("CUDA 10.2", "Python 3.6", "CUDA 11.8", "JetPack is 4.6"):
        assert fact in text
