"""Optional compression of the tensors that cross a cut.

Codecs, written ``<quant>[+<entropy>]``: quantization ``fp32`` (none), ``fp16``, or
``int8`` (per-tensor affine to uint8: min and scale travel in an 8-byte header), then
optionally ``zstd`` or ``lz4``. :func:`evaluate_compression` measures, for one cut, the
bytes each codec sends and how far the model's outputs move when the tail runs on the
decoded tensors.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from devices.errors import PartitionError

QUANT = ("fp32", "fp16", "int8")
ENTROPY = ("", "zstd", "lz4")


def _parse(codec: str) -> tuple[str, str]:
    quant, _, entropy = codec.partition("+")
    if quant in ENTROPY[1:] and not entropy:
        quant, entropy = "fp32", quant
    if quant not in QUANT or entropy not in ENTROPY:
        raise PartitionError(
            f"compression codec {codec!r}: expected <fp32|fp16|int8>[+zstd|+lz4], e.g. fp16+zstd"
        )
    return quant, entropy


def encode(array: np.ndarray, codec: str) -> bytes:
    """Encode a float tensor with ``codec``; :func:`decode` needs its shape back."""
    quant, entropy = _parse(codec)
    a = np.ascontiguousarray(array)
    if a.dtype.kind != "f":
        raw = a.tobytes()  # integer tensors (shapes, indices) go as they are
    elif quant == "fp16":
        raw = a.astype(np.float16).tobytes()
    elif quant == "int8":
        lo = float(a.min()) if a.size else 0.0
        hi = float(a.max()) if a.size else 0.0
        scale = (hi - lo) / 255.0 or 1.0
        q = np.clip(np.rint((a - lo) / scale), 0, 255).astype(np.uint8)
        raw = struct.pack("<ff", lo, scale) + q.tobytes()
    else:
        raw = a.astype(np.float32).tobytes() if a.dtype != np.float32 else a.tobytes()
    if entropy == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(raw)
    if entropy == "lz4":
        import lz4.frame

        return lz4.frame.compress(raw)
    return raw


def decode(data: bytes, codec: str, shape: Sequence[int], dtype: np.dtype | str = np.float32) -> np.ndarray:
    """Inverse of :func:`encode`."""
    quant, entropy = _parse(codec)
    if entropy == "zstd":
        import zstandard

        data = zstandard.ZstdDecompressor().decompress(data)
    elif entropy == "lz4":
        import lz4.frame

        data = lz4.frame.decompress(data)
    dt = np.dtype(dtype)
    if dt.kind != "f":
        return np.frombuffer(data, dtype=dt).reshape(shape)
    if quant == "fp16":
        return np.frombuffer(data, dtype=np.float16).astype(dt).reshape(shape)
    if quant == "int8":
        lo, scale = struct.unpack("<ff", data[:8])
        q = np.frombuffer(data[8:], dtype=np.uint8)
        return (q.astype(np.float32) * np.float32(scale) + np.float32(lo)).astype(dt).reshape(shape)
    return np.frombuffer(data, dtype=np.float32).astype(dt).reshape(shape)


def evaluate_compression(splitter: Any, tensors: Sequence[str], codecs: Sequence[str],
                         seed: int = 0, threads: int = 1) -> dict[str, dict[str, float]]:
    """Per codec: bytes sent for the cut, ratio to raw, encode and decode ms, and the
    largest output change (and top-1 agreement) versus the uncompressed split."""
    from partition._profile import make_session, random_feeds

    for c in codecs:
        _parse(c)
    head, tail = splitter.split(tensors)
    hs = make_session(head, threads)
    ts = make_session(tail, threads)
    feeds = random_feeds(hs, seed=seed)
    mids = dict(zip([o.name for o in hs.get_outputs()], hs.run(None, feeds)))
    tail_in = [i.name for i in ts.get_inputs()]
    ref = ts.run(None, {n: mids.get(n, feeds.get(n)) for n in tail_in})
    raw = sum(int(mids[t].nbytes) for t in tensors if t in mids)
    out: dict[str, dict[str, float]] = {}
    for codec in codecs:
        t0 = time.perf_counter()
        blobs = {t: encode(mids[t], codec) for t in tensors if t in mids}
        t1 = time.perf_counter()
        decoded = {t: decode(b, codec, mids[t].shape, mids[t].dtype) for t, b in blobs.items()}
        t2 = time.perf_counter()
        got = ts.run(None, {n: decoded.get(n, feeds.get(n)) for n in tail_in})
        diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(got, ref))
        top1 = all(
            np.array_equal(np.argmax(a.reshape(a.shape[0], -1), axis=1), np.argmax(b.reshape(b.shape[0], -1), axis=1))
            for a, b in zip(got, ref) if a.ndim >= 2
        )
        sent = sum(len(b) for b in blobs.values())
        out[codec] = {
            "up_bytes": sent,
            "ratio": raw / sent if sent else 0.0,
            "encode_ms": (t1 - t0) * 1000.0,
            "decode_ms": (t2 - t1) * 1000.0,
            "max_abs_diff": diff,
            "top1_agree": bool(top1),
        }
    return out
