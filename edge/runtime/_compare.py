"""How an INT8 model compares with its FP32 original: agreement judged by the task the
output serves (top-1, IoU of thresholded maps, decoded CTC sequences, cosine always) and
interleaved latency. Used by :mod:`edge.runtime.quantize`, which re-exports these names.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import ConfigError, ModelError
from edge.runtime._samples import Feeds

TASKS = ("auto", "classifier", "dense", "ctc", "other")


def _choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Agreement:
    """How closely the INT8 model's first output follows the FP32 model's.

    ``task`` says what the output is, and ``metric``/``score`` the agreement that fits it:
    ``top1`` for a classifier ([N, C] scores), ``iou`` of the maps thresholded at
    ``threshold`` for a dense output ([N, 1, H, W] probabilities; the IoU pooled over classes
    of the per-pixel argmax for [N, C, H, W] scores), ``sequence`` (the share of samples
    whose greedy CTC decoding, repeats merged and blanks dropped, is identical) for a CTC
    recognizer ([N, T, C] per-step scores), and ``cosine`` for anything else. Cosine is
    always reported; so is top-1 along the last axis (meaningful for the first and the
    third only).
    """

    samples: int
    top1_agreement: float
    """Fraction of positions whose argmax over the last axis is the same (one per row of
    a classifier's [N, C] output, one per time step of a recognizer's [N, T, C])."""
    positions: int
    cosine_mean: float
    """Mean over batch items of the cosine similarity of the flattened outputs."""
    cosine_min: float
    max_abs_diff: float
    task: str = "classifier"
    metric: str = "top1"
    score: float = float("nan")
    threshold: float | None = None
    char_error_rate: float | None = None
    """CTC only: edit distance between the decoded sequences over the FP32 sequence's
    length, summed over samples."""


@dataclass(frozen=True)
class Latency:
    """Interleaved latency of the two models, milliseconds, medians with min and max."""

    fp32_ms: float
    int8_ms: float
    speedup: float
    fp32_range_ms: tuple[float, float]
    int8_range_ms: tuple[float, float]
    runs: int
    intra_op_threads: int


def _session(path: str | Path, threads: int) -> Any:
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _drop_trailing_ones(value: np.ndarray) -> np.ndarray:
    # A classifier's [N, C, 1, 1] output: the classes are on axis 1, not the last axis.
    shape = list(value.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return value.reshape(shape)


def infer_task(output: np.ndarray) -> str:
    """What an output is, from its shape and values: ``classifier`` ([N, C] with C >= 2),
    ``ctc`` ([N, T, C] with T > 1 and C > 2: per-step class scores), ``dense`` ([N, C, H, W]
    with H and W > 1), or ``other``."""
    value = _drop_trailing_ones(np.asarray(output))
    if value.ndim == 2 and value.shape[1] >= 2:
        return "classifier"
    if value.ndim == 3 and value.shape[1] > 1 and value.shape[2] > 2:
        return "ctc"
    if value.ndim == 4 and value.shape[2] > 1 and value.shape[3] > 1:
        return "dense"
    return "other"


def ctc_decode(scores: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Greedy CTC decoding of [N, T, C] scores: argmax per step, repeats merged, blanks
    dropped; one index sequence per batch item."""
    best = np.asarray(scores).argmax(axis=-1)
    out = []
    for row in best.reshape(best.shape[0], -1):
        seq, prev = [], -1
        for k in row.tolist():
            if k != prev and k != blank:
                seq.append(k)
            prev = k
        out.append(seq)
    return out


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _iou(ref: np.ndarray, cand: np.ndarray, threshold: float) -> tuple[int, int]:
    """(intersection, union) of the thresholded maps, or summed over classes of the
    per-pixel argmax for multi-channel scores."""
    if ref.shape[1] == 1:
        a, b = ref > threshold, cand > threshold
        return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))
    ra, ca = ref.argmax(axis=1), cand.argmax(axis=1)
    inter = union = 0
    for k in range(ref.shape[1]):
        a, b = ra == k, ca == k
        inter += int(np.count_nonzero(a & b))
        union += int(np.count_nonzero(a | b))
    return inter, union


def agreement(reference: Iterable[np.ndarray], candidate: Iterable[np.ndarray],
              task: str = "auto", threshold: float = 0.5, blank: int = 0) -> Agreement:
    """Agreement of output pairs, by the metric that fits ``task`` (see :class:`Agreement`;
    ``auto`` decides from the first reference output with :func:`infer_task`).

    Each pair is one batch of outputs ([N, ...]); cosine is taken per batch item over the
    flattened rest. ``threshold`` binarizes dense probability maps (PP-OCR's detector
    binarizes at 0.3); ``blank`` is the CTC blank class.
    """
    _choice("task", task, TASKS)
    matches = positions = items = 0
    cosines: list[float] = []
    max_diff = 0.0
    inter = union = 0
    same_seq = edits = ref_chars = 0
    kind = task
    for ref, cand in zip(reference, candidate):  # noqa: B905 - lengths checked below
        ref = _drop_trailing_ones(np.asarray(ref, dtype=np.float64))
        cand = _drop_trailing_ones(np.asarray(cand, dtype=np.float64))
        if ref.shape != cand.shape:
            raise ModelError(f"outputs differ in shape: {ref.shape} vs {cand.shape}")
        if kind == "auto":
            kind = infer_task(ref)
        top_ref = ref.argmax(axis=-1)
        matches += int(np.count_nonzero(top_ref == cand.argmax(axis=-1)))
        positions += top_ref.size
        a = ref.reshape(ref.shape[0], -1)
        b = cand.reshape(cand.shape[0], -1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
        cosines.extend(float(c) for c in cos)
        items += ref.shape[0]
        max_diff = max(max_diff, float(np.abs(ref - cand).max(initial=0.0)))
        if kind == "dense":
            if ref.ndim != 4:
                raise ModelError(f"task 'dense' needs [N, C, H, W] outputs, got shape {ref.shape}")
            i, u = _iou(ref, cand, threshold)
            inter, union = inter + i, union + u
        elif kind == "ctc":
            if ref.ndim != 3:
                raise ModelError(f"task 'ctc' needs [N, T, C] outputs, got shape {ref.shape}")
            for sa, sb in zip(ctc_decode(ref, blank), ctc_decode(cand, blank)):  # noqa: B905
                same_seq += sa == sb
                edits += edit_distance(sa, sb)
                ref_chars += len(sa)
    if not positions:
        raise ConfigError("agreement: no outputs to compare")
    top1 = matches / positions
    cos_mean = float(np.mean(cosines))
    metric, score, cer = {
        "classifier": ("top1", top1, None),
        "dense": ("iou", inter / union if union else 1.0, None),
        "ctc": ("sequence", same_seq / items, edits / max(ref_chars, 1)),
    }.get(kind, ("cosine", cos_mean, None))
    return Agreement(
        samples=items,
        top1_agreement=top1,
        positions=positions,
        cosine_mean=cos_mean,
        cosine_min=float(np.min(cosines)),
        max_abs_diff=max_diff,
        task=kind,
        metric=metric,
        score=float(score),
        threshold=threshold if kind == "dense" else None,
        char_error_rate=cer,
    )


def compare_agreement(fp32_path: str | Path, int8_path: str | Path, samples: Sequence[Feeds],
                      *, intra_op_threads: int | None = None, output: str | None = None,
                      task: str = "auto", threshold: float = 0.5) -> Agreement:
    """Run both models on every sample and compare their output ``output`` (default:
    first) by the metric of ``task`` (see :func:`agreement`)."""
    threads = intra_op_threads or os.cpu_count() or 1
    fp32, int8 = _session(fp32_path, threads), _session(int8_path, threads)
    name = output or fp32.get_outputs()[0].name
    ref = [fp32.run([name], s)[0] for s in samples]
    cand = [int8.run([name], s)[0] for s in samples]
    return agreement(ref, cand, task=task, threshold=threshold)


def compare_latency(fp32_path: str | Path, int8_path: str | Path, feeds: Feeds, *,
                    intra_op_threads: int | None = None, runs: int = 20,
                    warmup: int = 3) -> Latency:
    """Interleaved (FP32, INT8, FP32, ...) latency after warm-up, same threads on both."""
    threads = intra_op_threads or os.cpu_count() or 1
    sessions = (_session(fp32_path, threads), _session(int8_path, threads))
    for sess in sessions:
        for _ in range(warmup):
            sess.run(None, feeds)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for sess, bucket in zip(sessions, times):
            start = time.perf_counter()
            sess.run(None, feeds)
            bucket.append((time.perf_counter() - start) * 1000)
    fp32_ms, int8_ms = (float(np.median(t)) for t in times)
    return Latency(
        fp32_ms=fp32_ms,
        int8_ms=int8_ms,
        speedup=fp32_ms / int8_ms if int8_ms > 0 else math.inf,
        fp32_range_ms=(min(times[0]), max(times[0])),
        int8_range_ms=(min(times[1]), max(times[1])),
        runs=runs,
        intra_op_threads=threads,
    )
