"""Board detection on recorded file trees: the exact bytes real boards expose."""

from __future__ import annotations

from pathlib import Path

import pytest

import devices

# /proc/device-tree/model as the boards report it (NUL-terminated device-tree strings),
# and /etc/nv_tegra_release from the L4T release each board ships with.
L4T_R32 = ("# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, "
           "DATE: Fri Jun  9 04:25:08 UTC 2023\n")
L4T_R35_XAVIER = ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                  "DATE: Tue Aug  1 19:57:35 UTC 2023\n")
L4T_R36 = ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
           "DATE: Fri Jul 19 23:24:25 UTC 2024\n")

BOARDS = [
    ("jetson-nano", b"NVIDIA Jetson Nano Developer Kit\x00", L4T_R32),
    ("jetson-nano", b"NVIDIA Jetson Nano 2GB Developer Kit\x00", L4T_R32),
    ("jetson-xavier-nx", b"NVIDIA Jetson Xavier NX Developer Kit\x00", L4T_R35_XAVIER),
    ("jetson-orin-nano", b"NVIDIA Orin Nano Developer Kit\x00", L4T_R35_XAVIER),  # JetPack 5.1
    ("jetson-orin-nano", b"NVIDIA Jetson Orin Nano Developer Kit\x00", L4T_R36),
    ("jetson-orin-nano", b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00", L4T_R36),
    ("jetson-agx-orin", b"Jetson AGX Orin\x00", L4T_R35_XAVIER),  # JetPack 5 drops "NVIDIA"
    ("jetson-agx-orin", b"NVIDIA Jetson AGX Orin Developer Kit\x00", L4T_R36),
    ("raspberry-pi-5", b"Raspberry Pi 5 Model B Rev 1.0\x00", None),
]


def _tree(root: Path, model: bytes | None, tegra: str | None) -> Path:
    if model is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(model)
    if tegra is not None:
        (root / "etc").mkdir(parents=True)
        (root / "etc/nv_tegra_release").write_text(tegra)
    return root


@pytest.mark.parametrize("expected, model, tegra", BOARDS,
                         ids=[m.decode().rstrip("\x00") for _, m, _ in BOARDS])
def test_detects_board(tmp_path: Path, expected: str, model: bytes, tegra: str | None) -> None:
    root = _tree(tmp_path, model, tegra)
    profile = devices.detect(root=root, machine="aarch64")
    assert profile.name == expected
    assert devices.detect_name(root, machine="aarch64") == expected


def test_jetson_with_unfamiliar_model_string_is_a_jetson(tmp_path: Path) -> None:
    # A carrier board vendor's own model string, but L4T is installed.
    root = _tree(tmp_path, b"Seeed reComputer J1010\x00", L4T_R32)
    assert devices.detect(root=root, machine="aarch64").name == "jetson-nano"


@pytest.mark.parametrize("model, tegra, expected", [
    # No profile of their own: the smallest board of the same family.
    (b"NVIDIA Orin NX Developer Kit\x00", L4T_R35_XAVIER, "jetson-orin-nano"),
    (b"Jetson-AGX\x00", L4T_R32, "jetson-nano"),
    (b"NVIDIA Jetson AGX Xavier Developer Kit\x00", L4T_R35_XAVIER, "jetson-xavier-nx"),
    (None, L4T_R36, "jetson-orin-nano"),  # L4T R36 runs on Orin only
    (None, L4T_R32, "jetson-nano"),
])
def test_unprofiled_jetsons_map_to_their_family(tmp_path: Path, model, tegra, expected) -> None:
    root = _tree(tmp_path, model, tegra)
    assert devices.detect_name(root, machine="aarch64") == expected


def test_older_raspberry_pi_falls_back_to_generic_arm(tmp_path: Path) -> None:
    root = _tree(tmp_path, b"Raspberry Pi 4 Model B Rev 1.5\x00", None)
    assert devices.detect(root=root, machine="aarch64").name == "generic-arm"


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "generic-x86"), ("AMD64", "generic-x86"), ("aarch64", "generic-arm"),
    ("arm64", "generic-arm"), ("armv7l", "generic-arm"),
])
def test_generic_fallback_by_machine(tmp_path: Path, machine: str, expected: str) -> None:
    assert devices.detect(root=tmp_path, machine=machine).name == expected


def test_empty_model_file_is_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path, b"\x00", None)
    assert devices.detect_name(root, machine="x86_64") == "generic-x86"

