"""Cloud profiles for trace replay: how much faster than this host the cloud computes.

When this host plays both the device and the cloud, the cloud is as slow as two CPU
cores, and a Jetson Orin (``relative_speed`` 2) is *faster* than it: every Orin run is
local for every strategy. A real offload target is a datacenter GPU, several times
faster than an Orin and tens of times faster than a Nano.

Method (``docs/policy.md``, "A GPU-class cloud"): the cloud's compute is *accounted*, the
way the device's already is. The device's compute is timed here and multiplied by
``1 / relative_speed``; the cloud's own compute (the server's ``Server-Timing``, which
``edgecut serve`` reports on every answer) is taken out of the cloud leg's measured time
and put back multiplied by ``1 / relative_speed`` of the cloud profile. Transfers, the
round trip, HTTP and queueing stay as measured through the link emulator. The executor
charges its own cloud legs this way (``cloud_compute_scale``), its cost table learns the
scaled tail times, a raced device run is given the time the GPU would have saved, and
the replay costs every fixed plan and the oracle the same way.

What it does not do: the trace clock keeps running while the server computes at CPU
speed (a resnet50 offload holds the link's clock about 25 ms longer than a GPU would;
the device side has the same approximation in reverse). Time dilation (slowing the
device, link and trace clock by the cloud's factor, Gupta et al., NSDI 2006) avoids that
at the price of runs that many times longer; on this 2-core host the benchmark could not
afford it.

Speed figures are relative to the reference host of ``devices`` profiles (2 cores with
AVX-512 VNNI; resnet50 FP32 batch 1 in 28.9 ms through ONNX Runtime,
shared/BENCHMARKING.md). They are deliberately conservative, batch-1 figures through a
serving stack, well under the cards' peak (sources in each profile's ``sources``).
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.errors import ConfigError


@dataclass(frozen=True)
class CloudProfile:
    """A cloud's compute speed relative to this host (``relative_speed`` 1: the host)."""

    name: str
    relative_speed: float
    description: str = ""
    sources: tuple[str, ...] = ()

    @property
    def compute_scale(self) -> float:
        """Multiplier from the host's measured compute to the cloud's."""
        return 1.0 / self.relative_speed


CLOUD_PROFILES = {
    "host": CloudProfile("host", 1.0, "this host: ONNX Runtime on CPU (the old default)"),
    # T4: 8.1 TFLOPS FP32, 65 TFLOPS FP16 with tensor cores, 70 W. At batch 1 a serving
    # stack reaches a small share of that: 10x the host's 0.14 effective TFLOPS (resnet50
    # in ~2.9 ms) is about 1.4 TFLOPS, a fifth of FP32 peak and a fiftieth of FP16 peak.
    "t4": CloudProfile(
        "t4", 10.0, "NVIDIA T4 (Turing, 70 W), batch 1, FP16 TensorRT through a server",
        ("NVIDIA T4 Tensor Core GPU data sheet (8.1 TFLOPS FP32, 65 TFLOPS FP16)",
         "MLPerf Inference v0.5 results, closed division, T4 ResNet-50 single-stream "
         "(mlperf.org/inference-results): about a millisecond, under this profile's 2.9 ms")),
    # A10: 31.2 TFLOPS FP32, 125 TFLOPS FP16 with tensor cores, 150 W: about twice a T4
    # at batch 1.
    "a10": CloudProfile(
        "a10", 20.0, "NVIDIA A10 (Ampere, 150 W), batch 1, FP16 TensorRT through a server",
        ("NVIDIA A10 Tensor Core GPU data sheet (31.2 TFLOPS FP32, 125 TFLOPS FP16)",)),
}


def cloud_profile(name_or_speed: str) -> CloudProfile:
    """A profile by name (``host``, ``t4``, ``a10``) or a bare speed factor (``"8"``)."""
    key = name_or_speed.strip().lower()
    if key in CLOUD_PROFILES:
        return CLOUD_PROFILES[key]
    try:
        speed = float(key)
    except ValueError:
        raise ConfigError(f"cloud profile {name_or_speed!r}: expected one of "
                          f"{sorted(CLOUD_PROFILES)} or a speed factor > 0") from None
    if not speed > 0:
        raise ConfigError(f"cloud profile {name_or_speed!r}: speed factor must be > 0")
    return CloudProfile(f"x{speed:g}", speed, f"a cloud {speed:g}x this host")
