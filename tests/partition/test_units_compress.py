from __future__ import annotations

import numpy as np
import pytest

from devices.errors import ConfigError, PartitionError
from partition import decode, encode, parse_bandwidth, parse_duration


@pytest.mark.parametrize(("text", "bps"), [
    ("20Mbit", 20e6), ("1Gbit", 1e9), ("500kbit", 5e5), ("20mbps", 20e6), ("1.5Mbit/s", 1.5e6),
    ("1e6", 1e6), (2_000_000, 2e6),
])
def test_bandwidth_units(text, bps) -> None:
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["20MB", "fast", "", "0Mbit", "-5Mbit", "20 Mbyte"])
def test_bad_bandwidth_is_a_clear_error(text) -> None:
    with pytest.raises(ConfigError, match="bandwidth"):
        parse_bandwidth(text)


@pytest.mark.parametrize(("text", "s"), [("40ms", 0.04), ("0.04s", 0.04), ("500us", 5e-4), ("0.1", 0.1)])
def test_duration_units(text, s) -> None:
    assert parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("text", ["40 minutes", "soon", "-1ms"])
def test_bad_duration_is_a_clear_error(text) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


def test_codecs_round_trip_and_shrink() -> None:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((1, 64, 28, 28)).astype(np.float32), 0)  # ReLU-like
    raw = x.nbytes
    for codec, tol in (("fp32", 0.0), ("zstd", 0.0), ("lz4", 0.0), ("fp16", 2e-3), ("fp16+zstd", 2e-3),
                       ("int8", 0.02), ("int8+zstd", 0.02), ("int8+lz4", 0.02)):
        blob = encode(x, codec)
        back = decode(blob, codec, x.shape, x.dtype)
        assert back.shape == x.shape and back.dtype == x.dtype
        assert float(np.max(np.abs(back - x))) <= tol * max(1.0, float(x.max())), codec
        if codec != "fp32":
            assert len(blob) < raw, codec
    assert len(encode(x, "int8+zstd")) < len(encode(x, "fp16+zstd")) < raw
    ids = np.arange(10, dtype=np.int64)
    np.testing.assert_array_equal(decode(encode(ids, "int8+lz4"), "int8+lz4", ids.shape, ids.dtype), ids)
    with pytest.raises(PartitionError, match="codec"):
        encode(x, "bf16+gzip")
