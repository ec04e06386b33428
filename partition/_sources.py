"""Where a plan's profiles come from: the device profile by name or file, and the cloud's
from a running service's profile extension, a recorded file, a dict, or this host."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Union

import onnx

from devices import DeviceProfile, load_profile
from devices.errors import PartitionError
from partition._profile import Profile, fetch_cloud_profile, profile_model

CloudSpec = Union[str, Path, dict, Profile]  # noqa: UP007 - a runtime value: X | Y fails on Python 3.8
HERE = "here"


def resolve_device(device: DeviceProfile | str | Path) -> DeviceProfile:
    return device if isinstance(device, DeviceProfile) else load_profile(device)


def resolve_cloud(cloud: CloudSpec, model: onnx.ModelProto, model_name: str, runs: int,
                  threads: int | None = None, sizes: Mapping[str, int] | None = None) -> Profile:
    """A cloud profile from a URL (the service's profile extension), a recorded file,
    a dict, or ``"here"`` (profile this host as the cloud: no emulation)."""
    if isinstance(cloud, Profile):
        return cloud
    if isinstance(cloud, dict):
        return Profile.from_dict(cloud, "cloud profile")
    text = str(cloud)
    if text.startswith(("http://", "https://")):
        return fetch_cloud_profile(text, model_name, runs=runs)
    if text == HERE:
        host = load_profile("generic-x86")
        prof = profile_model(model, host, runs=runs, model_name=model_name, emulate=False,
                             threads=threads, sizes=sizes)
        return replace(prof, device="cloud (this host)")
    path = Path(text)
    if not path.is_file():
        raise PartitionError(
            f"cloud '{text}': expected an http(s) URL of the cloud service, a recorded cloud "
            f"profile JSON file, or '{HERE}'"
        )
    return Profile.load(path)


def _resolve_profile(given: Profile | dict | str | Path) -> Profile:
    if isinstance(given, Profile):
        return given
    if isinstance(given, dict):
        return Profile.from_dict(given, "device profile")
    return Profile.load(given)


def _measured_here(profile: Profile) -> bool:
    return profile.source == "measured here" and profile.host == socket.gethostname()
