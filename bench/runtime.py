"""Runtime benchmark: edgecut's session overhead over bare ONNX Runtime, and INT8.

Everything runs in one process, each comparison interleaved (A B A B ...) after warm-up,
with the same fixed ``intra_op_num_threads`` on both sides (``--threads``, default 1; the
INT8 latency is repeated with every core under ``int8_resnet50.threads_N``); numbers are
medians with the min-max spread. ``loadavg_1m_before_after`` records how busy the shared
host was.

* ``overhead_pct_resnet50``: ``edgecut`` ``Session.run`` vs a direct call of the same
  ``onnxruntime.InferenceSession`` (``Session.inference_session``), resnet50 batch 1.
  Calling the very same ORT session isolates what edgecut adds (input checks, output
  naming) from session-to-session differences in memory layout. 400 pairs: what edgecut
  adds is microseconds, so the median difference on a busy host is noise, and the
  ``paired_ratio_median`` (each pair run back to back) is the steadier estimate.
* ``overhead_us_tiny``: the same on a three-node model built with ``onnx.helper``,
  where the run itself costs a few microseconds, so the difference is edgecut's cost.
* ``fp32_ms_resnet50`` / ``int8_ms_resnet50``: the materialized zoo resnet50 (random
  weights) and its static INT8 version (QDQ, per-channel U8S8, calibrated on 16 random
  inputs), interleaved.
* ``int8_top1_agreement`` / ``int8_cosine_mean``: PP-OCRv4's trained text-direction
  classifier (``ppocr_cls``) quantized the same way, calibrated on 100 rendered text lines
  and compared with FP32 on 300 others (a different seed), with edgecut's default
  settings. The recognizer (``ppocr_rec``) is measured too, per time step and by the text
  it reads, under ``int8_ppocr_rec`` (see :func:`int8_ppocr_rec` for its settings).

Real inputs: there is no image data set on the host, so text lines are rendered with
Pillow from real English text (the first paragraphs of docstrings of Python's standard
library), dates, prices and serial codes, in eight DejaVu fonts shipped with matplotlib,
18-43 px, random dark-on-light (15% light-on-dark) colours, optional Gaussian blur and
pixel noise, and half of them turned 180 degrees for the classifier. They are
preprocessed as PaddleOCR does (BGR, resize to height 48 keeping the aspect ratio,
(x/255 - 0.5)/0.5, zero padding to width 192 for the classifier, to at least 320 for the
recognizer). Ground truth (the rotation, the text) gives each model's accuracy as a check
that the renders are real enough for the trained models.

Usage: ``python bench/runtime.py --json [--threads N] [--quick] [--no-rec]``;
``python bench/runtime.py --write-samples DIR`` writes classifier inputs for
``edgecut quantize ppocr_cls --calibration DIR``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import devices  # noqa: E402
from edge import runtime  # noqa: E402
from edge.runtime.quantize import agreement, compare_latency, quantize_model  # noqa: E402
from partition import zoo  # noqa: E402

_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)


# ---------------------------------------------------------------------------- timing


def _spread(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def interleaved(a: Callable[[], Any], b: Callable[[], Any], runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Seconds per call of ``a`` and ``b``, alternating which goes first each round."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    clock = time.perf_counter
    for i in range(runs):
        pair = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
        for fn, bucket in pair:
            start = clock()
            fn()
            bucket.append(clock() - start)
    return ta, tb


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    from partition import portable_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [16], [0.5] * 16)
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["t0"]),
        helper.make_node("Relu", ["t0"], ["t1"]),
        helper.make_node("Mul", ["t1", "t1"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return portable_model(model).SerializeToString()


def overhead(model: str | bytes, feeds: dict[str, np.ndarray], threads: int, runs: int,
             warmup: int) -> dict[str, Any]:
    """Bare ``InferenceSession.run`` vs ``Session.run`` on one and the same ORT session."""
    profile = devices.load_profile("generic-x86")
    sess = runtime.load(model, profile, intra_op_threads=threads, inter_op_threads=1,
                        graph_optimization="all", check_finite=False)
    bare = sess.inference_session
    names = [o.name for o in sess.outputs]

    def run_bare() -> Any:
        return bare.run(names, feeds)

    def run_edgecut() -> Any:
        return sess.run(feeds)

    t_bare, t_edge = interleaved(run_bare, run_edgecut, runs, warmup)
    sess.close()
    ratios = [e / b for e, b in zip(t_edge, t_bare, strict=True)]
    mb, me = statistics.median(t_bare), statistics.median(t_edge)
    return {
        "bare_ms": _spread([t * 1e3 for t in t_bare]),
        "edgecut_ms": _spread([t * 1e3 for t in t_edge]),
        "overhead_pct": (me / mb - 1) * 100,
        "overhead_us": (me - mb) * 1e6,
        "paired_ratio_median": statistics.median(ratios),
        "runs": runs,
    }


# ---------------------------------------------------------------------------- text lines


def _corpus() -> list[str]:
    """Words of real English prose: the first paragraph of stdlib docstrings."""
    import argparse as m1
    import collections as m2
    import functools as m3
    import json as m4
    import pathlib as m5
    import random as m6
    import string as m7
    import textwrap as m8

    words: list[str] = []
    for mod in (m1, m2, m3, m4, m5, m6, m7, m8):
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                first = doc.split("\n\n")[0]
                words.extend(w for w in first.split() if re.fullmatch(r"[\w.,;:!?()'$%-]+", w))
    return words


def render_lines(count: int, seed: int, rotate_fraction: float = 0.5) -> list[tuple[np.ndarray, str, bool]]:
    """``count`` rendered text lines: (RGB uint8 image, text, turned 180 degrees)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    words = _corpus()
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts: dict[tuple[str, int], Any] = {}
    lines = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.7:
            n = int(rng.integers(1, 8))
            start = int(rng.integers(0, len(words) - n))
            text = " ".join(words[start:start + n])
        elif kind < 0.8:
            text = f"{rng.integers(1990, 2031)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
        elif kind < 0.9:
            text = f"${rng.integers(0, 1000)}.{rng.integers(0, 100):02d}"
        else:
            alphabet = list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")
            text = "".join(rng.choice(alphabet, int(rng.integers(4, 10))))
        key = (_FONTS[int(rng.integers(len(_FONTS)))], int(rng.integers(18, 44)))
        if key not in fonts:
            fonts[key] = ImageFont.truetype(str(font_dir / key[0]), key[1])
        font = fonts[key]
        left, top, right, bottom = font.getbbox(text)
        pad = [int(p) for p in rng.integers(2, 12, 4)]
        size = (right - left + pad[0] + pad[2], bottom - top + pad[1] + pad[3])
        bg = tuple(int(v) for v in rng.integers(170, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 90, 3))
        if rng.random() < 0.15:
            bg, fg = fg, bg
        img = Image.new("RGB", size, bg)
        ImageDraw.Draw(img).text((pad[0] - left, pad[1] - top), text, font=font, fill=fg)
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        arr = np.asarray(img).astype(np.float32)
        arr += rng.normal(0.0, rng.uniform(0.0, 10.0), arr.shape)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        rotated = bool(rng.random() < rotate_fraction)
        if rotated:
            arr = np.ascontiguousarray(arr[::-1, ::-1])
        lines.append((arr, text, rotated))
    return lines


def paddle_input(rgb: np.ndarray, width: int, grow: bool = False) -> np.ndarray:
    """PaddleOCR's preprocessing to [1, 3, 48, W]; ``grow`` widens W for long lines."""
    from PIL import Image

    h, w = rgb.shape[:2]
    resized_w = int(math.ceil(48 * w / h))
    if not grow:
        resized_w = min(width, resized_w)
    img = Image.fromarray(rgb).resize((max(resized_w, 1), 48), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32)[:, :, ::-1] / 255.0  # BGR, as cv2 reads files
    x = (x - 0.5) / 0.5
    out = np.zeros((3, 48, max(width, resized_w)), np.float32)
    out[:, :, : x.shape[1]] = x.transpose(2, 0, 1)
    return out[None]


def _ctc_decode(probs: np.ndarray, chars: list[str]) -> str:
    text, prev = [], 0
    for k in probs.argmax(-1):
        if k != 0 and k != prev:
            text.append(chars[k])
        prev = k
    return "".join(text).strip()


# ---------------------------------------------------------------------------- INT8


def _ort(path: str | Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def int8_resnet50(tmp: Path, threads: int, runs: int, also_threads: tuple[int, ...] = ()) -> dict[str, Any]:
    src = zoo.zoo_model("resnet50")
    out = tmp / "resnet50.int8.onnx"
    report = quantize_model(src, out, 16, intra_op_threads=threads)
    feeds = _feeds_for(src, np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32))
    result: dict[str, Any] = {"integer_compute_ops": report.integer_compute_ops,
                              "float_compute_ops": report.float_compute_ops,
                              "quantize_s": report.quantize_s}
    for n in (threads, *also_threads):
        lat = compare_latency(src, out, feeds, intra_op_threads=n, runs=runs, warmup=3)
        entry = {
            "fp32_ms": lat.fp32_ms, "int8_ms": lat.int8_ms, "speedup": lat.speedup,
            "fp32_range_ms": list(lat.fp32_range_ms), "int8_range_ms": list(lat.int8_range_ms),
            "runs": lat.runs, "threads": n,
        }
        if n == threads:
            result.update(entry)
        else:
            result[f"threads_{n}"] = entry
    return result


def _agreement_run(src: Path, out: Path, inputs: list[np.ndarray], threads: int,
                   timing_runs: int) -> tuple[list[np.ndarray], list[np.ndarray], Any, Any]:
    """Both models' outputs on every input (run once each), their agreement, and the
    interleaved latency on the first input."""
    fp32, int8 = _ort(src, threads), _ort(out, threads)
    ref = [fp32.run(None, {"x": x})[0] for x in inputs]
    cand = [int8.run(None, {"x": x})[0] for x in inputs]
    lat = compare_latency(src, out, {"x": inputs[0]}, intra_op_threads=threads,
                          runs=timing_runs, warmup=2)
    return ref, cand, agreement(ref, cand), lat


def int8_ppocr_cls(tmp: Path, threads: int, n_calib: int, n_eval: int) -> dict[str, Any]:
    src = zoo.trained_model("ppocr_cls")
    calib = [paddle_input(img, 192) for img, _, _ in render_lines(n_calib, seed=101)]
    evaluation = render_lines(n_eval, seed=202)
    eval_x = [paddle_input(img, 192) for img, _, _ in evaluation]
    out = tmp / "ppocr_cls.int8.onnx"
    report = quantize_model(src, out, calib, calibration_label=f"{n_calib} rendered text lines (seed 101)")
    ref, cand, agr, lat = _agreement_run(src, out, eval_x, threads, 30)
    truth = np.array([int(rot) for _, _, rot in evaluation])
    pred32 = np.array([int(r.argmax()) for r in ref])
    pred8 = np.array([int(c.argmax()) for c in cand])
    return {
        "top1_agreement": agr.top1_agreement,
        "cosine_mean": agr.cosine_mean,
        "cosine_min": agr.cosine_min,
        "eval_samples": agr.samples,
        "calibration": report.calibration,
        "evaluation": f"{n_eval} other rendered text lines (seed 202), half turned 180 degrees",
        "settings": report.settings,
        "fp32_accuracy": float((pred32 == truth).mean()),
        "int8_accuracy": float((pred8 == truth).mean()),
        "fp32_ms": lat.fp32_ms,
        "int8_ms": lat.int8_ms,
        "integer_compute_ops": report.integer_compute_ops,
        "float_compute_ops": report.float_compute_ops,
    }


def int8_ppocr_rec(tmp: Path, threads: int, n_calib: int, n_eval: int) -> dict[str, Any]:
    """The recognizer: its SVTR neck is sensitive to 8-bit activations, so only the
    convolutions and matrix products are quantized (the residual adds and normalizations
    stay in float), calibrated with the percentile method on lines padded to one width,
    as PaddleOCR pads a batch."""
    import onnx

    src = zoo.trained_model("ppocr_rec")
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    chars = ["<blank>", *meta["character"].split("\n"), " "]
    calib = [paddle_input(img, 320, grow=True) for img, _, _ in render_lines(n_calib, 303, 0.0)]
    width = max(x.shape[-1] for x in calib)
    calib = [np.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - x.shape[-1]))) for x in calib]
    evaluation = render_lines(n_eval, seed=404, rotate_fraction=0.0)
    eval_x = [paddle_input(img, 320, grow=True) for img, _, _ in evaluation]
    out = tmp / "ppocr_rec.int8.onnx"
    report = quantize_model(
        src, out, calib, op_types=["Conv", "MatMul", "Gemm"], calibrate_method="percentile",
        calibration_label=f"{n_calib} rendered text lines (seed 303) padded to width {width}",
    )
    ref, cand, agr, lat = _agreement_run(src, out, eval_x, threads, 10)
    read32 = [_ctc_decode(r[0], chars) for r in ref]
    read8 = [_ctc_decode(c[0], chars) for c in cand]
    truth = [text for _, text, _ in evaluation]
    return {
        "top1_agreement_per_step": agr.top1_agreement,
        "cosine_mean": agr.cosine_mean,
        "cosine_min": agr.cosine_min,
        "eval_samples": agr.samples,
        "calibration": report.calibration,
        "evaluation": f"{n_eval} other rendered text lines (seed 404), width >= 320",
        "settings": report.settings,
        "fp32_exact_read": float(np.mean([a == b for a, b in zip(read32, truth, strict=True)])),
        "int8_exact_read": float(np.mean([a == b for a, b in zip(read8, truth, strict=True)])),
        "int8_same_text_as_fp32": float(np.mean([a == b for a, b in zip(read8, read32, strict=True)])),
        "fp32_ms": lat.fp32_ms,
        "int8_ms": lat.int8_ms,
        "integer_compute_ops": report.integer_compute_ops,
        "float_compute_ops": report.float_compute_ops,
        "quantize_s": report.quantize_s,
    }


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra_op threads on both sides of every comparison (default 1: "
                             "on a shared host a descheduled worker thread stalls a multi-thread "
                             "run, which makes ratios swing; the INT8 comparison is repeated "
                             "with all cores for reference)")
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--no-rec", action="store_true", help="skip the PP-OCR recognizer")
    parser.add_argument("--write-samples", metavar="DIR", default=None,
                        help="only write rendered, preprocessed text lines for ppocr_cls as "
                             "DIR/NNNN.npy (for `edgecut quantize ppocr_cls --calibration DIR`)")
    parser.add_argument("--count", type=int, default=200, help="samples for --write-samples")
    args = parser.parse_args(argv)
    if args.write_samples:
        folder = Path(args.write_samples)
        folder.mkdir(parents=True, exist_ok=True)
        for i, (img, _, _) in enumerate(render_lines(args.count, seed=505)):
            np.save(folder / f"{i:04d}.npy", paddle_input(img, 192))
        print(json.dumps({"written": args.count, "folder": str(folder)}))
        return 0
    threads = args.threads
    q = args.quick
    started = time.perf_counter()
    load_before = os.getloadavg()

    r50 = zoo.zoo_model("resnet50")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    big = overhead(str(r50), _feeds_for(r50, x), threads,
                   runs=10 if q else 400, warmup=5)
    tiny = overhead(_tiny_model(), {"x": np.ones((1, 16), np.float32)}, threads,
                    runs=500 if q else 20000, warmup=200)
    with tempfile.TemporaryDirectory(prefix="edgecut-bench-") as tmpname:
        tmp = Path(tmpname)
        all_cores = os.cpu_count() or 1
        i8 = int8_resnet50(tmp, threads, runs=8 if q else 60,
                           also_threads=(all_cores,) if all_cores != threads else ())
        cls = int8_ppocr_cls(tmp, threads, n_calib=32 if q else 100, n_eval=50 if q else 300)
        rec = None if args.no_rec else int8_ppocr_rec(tmp, threads, 16 if q else 60,
                                                       20 if q else 200)

    result: dict[str, Any] = {
        "overhead_pct_resnet50": big["overhead_pct"],
        "overhead_us_tiny": tiny["overhead_us"],
        "fp32_ms_resnet50": i8["fp32_ms"],
        "int8_ms_resnet50": i8["int8_ms"],
        "int8_speedup_resnet50": i8["speedup"],
        "int8_top1_agreement": cls["top1_agreement"],
        "int8_cosine_mean": cls["cosine_mean"],
        "int8_agreement_model": "ppocr_cls",
        "int8_agreement_samples": cls["eval_samples"],
        "threads": threads,
        "overhead_resnet50": big,
        "overhead_tiny": tiny,
        "int8_resnet50": i8,
        "int8_ppocr_cls": cls,
        "int8_ppocr_rec": rec,
        "wall_s": time.perf_counter() - started,
        # Other work shares this host; the load average says how quiet the runs were.
        "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def _feeds_for(path: Path, value: np.ndarray) -> dict[str, np.ndarray]:
    return {_ort(path, 1).get_inputs()[0].name: value}


if __name__ == "__main__":
    sys.exit(main())
