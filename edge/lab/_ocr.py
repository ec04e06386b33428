"""``edgecut demo ocr``: a trained text-reading pipeline through the edge agent.

PP-OCRv4's detector (``[N,3,H,W]``), the text-direction classifier (``[N,3,48,192]``) and
the recognizer (``[N,3,48,W]``), trained, from the ``rapidocr-onnxruntime`` wheel, read
pages rendered here at several sizes (there is no image data set on the host; lines of
words in DejaVu fonts, as the runtime benchmark renders them):

1. each model is planned for the device with this host as the cloud, profiled at the
   sizes it will see (detector: the page sizes; recognizer: line widths);
2. ``edgecut serve`` on 127.0.0.1 serves every whole model and tail;
3. the agent loads the three models with their plans and a latency policy, and every
   request goes app -> ``edge.Client`` -> agent -> policy (local, offload or split, by the
   request's own dims) -> executor -> cloud;
4. the text read is compared with a plain ONNX Runtime run of the same models (character
   error rate between the two) and with the rendered truth, for FP32 and for INT8 models
   (static QDQ, calibrated on other rendered pages and lines).

The pipeline steps (:func:`detect_lines`, :func:`classify_input`, :func:`recognize_input`,
:func:`decode_text`) follow PaddleOCR's preprocessing; the box finding is simpler than
DBNet's polygon post-processing (horizontal text only): rows of the thresholded map group
into lines, and each line's box is widened by DB's unclip distance.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# typing's spellings: the alias is evaluated at import, on Python 3.8 too.
Infer = typing.Callable[[str, typing.Mapping[str, np.ndarray]], typing.Mapping[str, np.ndarray]]

_WORDS = (
    "edge cloud split offload tensor latency energy link device model layer input output "
    "plan policy route frame batch kernel graph node queue cache trace stream token agent "
    "north river stone paper orange silver market garden winter coffee window letter "
    "number station engine signal bridge camera doctor travel summer yellow purple"
).split()
_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DET_THRESHOLD = 0.3  # PaddleOCR's binarization threshold of the probability map
UNCLIP = 1.5  # DBNet's unclip ratio: how far a shrunk text region is grown back


def render_page(height: int, width: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A white page of dark text lines: (RGB uint8 [H, W, 3], the lines top to bottom)."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    img = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    lines: list[str] = []
    y = 12
    while True:
        size = int(rng.integers(22, 34))
        font = ImageFont.truetype(str(font_dir / _FONTS[int(rng.integers(len(_FONTS)))]), size)
        words: list[str] = []
        for _ in range(int(rng.integers(1, 6))):
            w = _WORDS[int(rng.integers(len(_WORDS)))]
            if rng.random() < 0.2:
                w = str(int(rng.integers(10, 9999)))
            trial = " ".join(words + [w])
            if font.getbbox(trial)[2] > width - 32:
                break
            words.append(w)
        if not words:
            break
        text = " ".join(words)
        left, top, right, bottom = font.getbbox(text)
        if y + (bottom - top) + 12 > height:
            break
        x = 16 + int(rng.integers(0, max(1, width - 32 - (right - left))))
        draw.text((x - left, y - top), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
        lines.append(text)
        y += (bottom - top) + int(rng.integers(14, 30))
    return np.asarray(img), lines


def detector_input(rgb: np.ndarray) -> np.ndarray:
    """[1, 3, H, W] float32 (BGR, ImageNet-normalized, as PaddleOCR feeds its detector);
    H and W must be multiples of 32."""
    h, w = rgb.shape[:2]
    if h % 32 or w % 32:
        raise ValueError(f"page of {h}x{w}: the detector takes sizes that are multiples of 32")
    x = (rgb[:, :, ::-1].astype(np.float32) / 255.0 - DET_MEAN) / DET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def detect_lines(prob: np.ndarray, threshold: float = DET_THRESHOLD) -> list[tuple[int, int, int, int]]:
    """Boxes (y0, y1, x0, x1) of horizontal text lines in a [1, 1, H, W] probability map:
    bands of rows holding text, each band's columns, grown by DB's unclip distance."""
    mask = np.asarray(prob)[0, 0] > threshold
    h, w = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    boxes = []
    if rows.size == 0:
        return boxes
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    for band in bands:
        y0, y1 = int(band[0]), int(band[-1]) + 1
        if y1 - y0 < 3:
            continue
        cols = np.flatnonzero(mask[y0:y1].any(axis=0))
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        bh, bw = y1 - y0, x1 - x0
        grow = int(round(bh * bw * UNCLIP / (2 * (bh + bw))))
        boxes.append((max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow)))
    return boxes


def _line_tensor(crop: np.ndarray, width: int, max_width: int | None) -> np.ndarray:
    from PIL import Image

    h, w = crop.shape[:2]
    resized = max(1, int(math.ceil(48 * w / h)))
    if max_width is not None:
        resized = min(resized, max_width)
    img = Image.fromarray(crop).resize((resized, 48), Image.BILINEAR)
    x = (np.asarray(img, np.float32)[:, :, ::-1] / 255.0 - 0.5) / 0.5
    out = np.zeros((3, 48, max(width, resized)), np.float32)
    out[:, :, :resized] = x.transpose(2, 0, 1)
    return out[None]


def classify_input(crop: np.ndarray) -> np.ndarray:
    """[1, 3, 48, 192] for the direction classifier (long lines squeezed, short padded)."""
    return _line_tensor(crop, 192, 192)


def recognizer_width(crop: np.ndarray, step: int = 32, minimum: int = 160) -> int:
    """The recognizer's input width for a line: its aspect at height 48, rounded up to
    ``step`` (so requests come in a few sizes), at least ``minimum``."""
    h, w = crop.shape[:2]
    return max(minimum, int(math.ceil(48 * w / h / step)) * step)


def recognize_input(crop: np.ndarray) -> np.ndarray:
    """[1, 3, 48, W] for the recognizer (see :func:`recognizer_width`)."""
    return _line_tensor(crop, recognizer_width(crop), None)


def characters(rec_model: str | Path) -> list[str]:
    """The recognizer's classes: the blank, its dictionary (model metadata), the space."""
    import onnx

    model = onnx.load(str(rec_model), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError(f"model '{rec_model}': no 'character' dictionary in its metadata")
    return ["<blank>"] + meta["character"].splitlines() + [" "]


def decode_text(probs: np.ndarray, chars: Sequence[str]) -> str:
    """Greedy CTC decoding of [1, T, C] scores into text."""
    out, prev = [], 0
    for k in np.asarray(probs)[0].argmax(-1).tolist():
        if k != 0 and k != prev and k < len(chars):
            out.append(chars[k])
        prev = k
    return "".join(out).strip()


def char_error_rate(truth: str, read: str) -> float:
    """Edit distance over the truth's length (0 for an exact read)."""
    from edge.runtime.quantize import edit_distance

    return edit_distance(list(truth), list(read)) / max(len(truth), 1)


def read_page(rgb: np.ndarray, infer: Infer, names: Mapping[str, str],
              chars: Sequence[str]) -> list[dict[str, Any]]:
    """Run detector, classifier and recognizer on one page through ``infer(model,
    feeds)``; ``names`` maps ``det``/``cls``/``rec`` to model names. One entry per line:
    text, box, turned (the classifier said 180 degrees) and the recognizer's width."""
    prob = next(iter(infer(names["det"], {"x": detector_input(rgb)}).values()))
    lines = []
    for y0, y1, x0, x1 in detect_lines(prob):
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        scores = next(iter(infer(names["cls"], {"x": classify_input(crop)}).values()))
        turned = bool(np.argmax(scores[0]) == 1 and float(np.max(scores[0])) > 0.9)
        if turned:
            crop = np.ascontiguousarray(crop[::-1, ::-1])
        x = recognize_input(crop)
        probs = next(iter(infer(names["rec"], {"x": x}).values()))
        lines.append({"text": decode_text(probs, chars), "box": [y0, y1, x0, x1],
                      "turned": turned, "rec_width": int(x.shape[3])})
    return lines


def ort_infer(paths: Mapping[str, str | Path], threads: int = 1) -> Infer:
    """Plain ONNX Runtime sessions by model name (the reference the agent is judged by)."""
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sessions = {n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for n, p in paths.items()}

    def infer(name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = sessions[name]
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, dict(feeds))))  # noqa: B905

    return infer


def _calibration(models: Mapping[str, Path], sizes: Sequence[tuple[int, int]], seed: int
                 ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Inputs of each model from pages rendered with other seeds than the evaluation's."""
    infer = ort_infer(models)
    out: dict[str, list[dict[str, np.ndarray]]] = {"det": [], "cls": [], "rec": []}
    for i in range(4):
        h, w = sizes[i % len(sizes)]
        rgb, _ = render_page(h, w, seed + 1000 + i)
        out["det"].append({"x": detector_input(rgb)})
        prob = next(iter(infer("det", {"x": detector_input(rgb)}).values()))
        for y0, y1, x0, x1 in detect_lines(prob):
            crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            out["cls"].append({"x": classify_input(crop)})
            out["rec"].append({"x": recognize_input(crop)})
    # The histogram calibrators stack their samples: the lines are padded (with the
    # normalized grey PaddleOCR pads with) to one width.
    width = max(s["x"].shape[3] for s in out["rec"])
    out["rec"] = [{"x": np.pad(s["x"], ((0, 0), (0, 0), (0, 0), (0, width - s["x"].shape[3])))}
                  for s in out["rec"]]
    return out


def quantized(models: Mapping[str, Path], out_dir: Path, sizes: Sequence[tuple[int, int]],
              seed: int, log: Callable[[str], None]) -> dict[str, Path]:
    """INT8 (static QDQ) copies of the three models, calibrated on rendered pages; the
    recognizer's transformer parts stay float (Conv, MatMul and Gemm only, percentile)."""
    from edge.runtime.quantize import quantize_model

    calib = _calibration(models, sizes, seed)
    out = {}
    for key, path in models.items():
        target = out_dir / f"{path.stem}.int8.onnx"
        log(f"quantizing {path.name} on {len(calib[key])} rendered samples")
        kwargs: dict[str, Any] = {}
        if key == "rec":
            kwargs = {"op_types": ["Conv", "MatMul", "Gemm"], "calibrate_method": "percentile"}
        if key == "det":
            kwargs = {"float_head": False}
        quantize_model(path, target, calib[key][:24], **kwargs)
        out[key] = target
    return out


def _plan(path: Path, name: str, out: Path, shapes: list[dict[str, int]], device: str,
          bandwidth_bps: float, log: Callable[[str], None]) -> Any:
    from partition import build_plan

    log(f"planning {name} at {shapes}")
    return build_plan(path, device, "here", bandwidth_bps, 0.02, out_dir=out, keep=3, runs=4,
                      measure=2, threads=1, figure=False, shapes=shapes, cloud_model=name)


def _agent_toml(models: Mapping[str, tuple[Path, Path]], device: str, data_dir: Path,
                port: int, cloud_url: str, policy: Path) -> str:
    parts = [f"""[agent]
device_id = "ocr-demo"
profile = "{device}"
data_dir = "{data_dir}"
log_level = "warning"
log_requests = false

[api]
host = "127.0.0.1"
port = {port}

[cloud]
url = "{cloud_url}"

[policy]
file = "{policy}"
"""]
    for name, (model, plan) in models.items():
        parts.append(f"""
[[models]]
name = "{name}"
path = "{model}"
version = "1"
plan = "{plan}"
warmup_runs = 0
""")
    return "".join(parts)


def run_ocr_demo(*, sizes: Sequence[tuple[int, int]], device: str, out_dir: Path, int8: bool,
                 bandwidth_bps: float, seed: int, console: Any) -> dict[str, Any]:
    """Run the OCR demo (see the module docstring); returns its JSON summary."""
    from cloud import InferenceService, ServerThread, create_app
    from edge.agent._daemon import Agent, AgentServer
    from edge.client import Client
    from edge.lab._export import export_triton
    from partition import zoo

    started = time.monotonic()
    say: Callable[[str], None] = lambda m: console.print(f"[dim]{m}[/dim]")  # noqa: E731
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {k: Path(zoo.trained_model(f"ppocr_{k}")) for k in ("det", "cls", "rec")}
    chars = characters(base["rec"])
    variants = {"fp32": base}
    if int8:
        variants["int8"] = quantized(base, out_dir, sizes, seed, say)
    rec_widths = [{"H": 48, "W": w} for w in (320, 160, 640)]
    det_sizes = [{"H": h, "W": w} for h, w in sizes]
    repo = out_dir / "repository"
    agent_models: dict[str, tuple[Path, Path]] = {}
    plans: dict[str, Any] = {}
    for variant, models in variants.items():
        for key, path in models.items():
            name = f"ppocr_{key}_{variant}"
            shapes = {"det": det_sizes, "cls": [{"H": 48, "W": 192}], "rec": rec_widths}[key]
            plan_dir = out_dir / "plans" / name
            plan = _plan(path, name, plan_dir, shapes, device, bandwidth_bps, say)
            export_triton(plan, plan_dir, repo)
            plans[name] = plan
            agent_models[name] = (path, plan_dir / "plan.json")
    console.print(f"[green]✓[/] planned {len(plans)} models; repository {repo}")

    from socket import AF_INET, SOCK_STREAM, socket

    def free_port() -> int:
        with socket(AF_INET, SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    service = InferenceService(repo, intra_op_threads=1)
    service.load_all()
    cloud_port = free_port()
    cloud = ServerThread(create_app(service), port=cloud_port)
    cloud.start()
    results: dict[str, Any] = {"sizes": [list(s) for s in sizes], "variants": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="edgecut-ocr-agent-") as tmp:
            policy = Path(tmp) / "policy.toml"
            policy.write_text('objective = "latency"\nslo_ms = 0.0\n[link]\n'
                              f"prior_bandwidth_mbps = {bandwidth_bps / 1e6:g}\nprior_rtt_ms = 20.0\n"
                              "[offload]\ntimeout_ms = 30000.0\n")
            config = Path(tmp) / "agent.toml"
            agent_port = free_port()
            config.write_text(_agent_toml(agent_models, device, Path(tmp) / "data", agent_port,
                                          f"http://127.0.0.1:{cloud_port}", policy))
            agent = Agent(config)
            server = AgentServer(agent).start()
            client = Client(server.url)
            console.print(f"[green]✓[/] agent on {server.url}, cloud on http://127.0.0.1:{cloud_port}")
            try:
                for variant, models in variants.items():
                    names = {k: f"ppocr_{k}_{variant}" for k in models}
                    plain = ort_infer({names[k]: p for k, p in models.items()})
                    chosen: dict[str, list[str]] = {}

                    def via_agent(name: str, feeds: Mapping[str, np.ndarray],
                                  chosen: dict[str, list[str]] = chosen) -> Mapping[str, np.ndarray]:
                        outcome = _last_outcome(agent, name, client, feeds)
                        chosen.setdefault(name, []).append(outcome[0])
                        return outcome[1]

                    pages = []
                    for i, (h, w) in enumerate(sizes):
                        rgb, truth = render_page(h, w, seed + i)
                        t0 = time.perf_counter()
                        agent_lines = read_page(rgb, via_agent, names, chars)
                        agent_ms = (time.perf_counter() - t0) * 1000.0
                        ort_lines = read_page(rgb, plain, names, chars)
                        a_text = "\n".join(x["text"] for x in agent_lines)
                        o_text = "\n".join(x["text"] for x in ort_lines)
                        t_text = "\n".join(truth)
                        pages.append({
                            "size": [h, w], "lines": len(truth), "found": len(agent_lines),
                            "same_as_ort": a_text == o_text,
                            "cer_vs_ort": round(char_error_rate(o_text, a_text), 4),
                            "cer_vs_truth": round(char_error_rate(t_text, a_text), 4),
                            "agent_ms": round(agent_ms, 1),
                            "plans": {n: sorted(set(p)) for n, p in chosen.items()},
                            "text": agent_lines,
                        })
                        chosen.clear()
                        console.print(f"{variant} {h}x{w}: {len(agent_lines)} lines, "
                                      f"same as ORT {a_text == o_text}, CER vs truth "
                                      f"{pages[-1]['cer_vs_truth']:.2%}, plans {pages[-1]['plans']}")
                    results["variants"][variant] = {
                        "pages": pages,
                        "all_same_as_ort": all(p["same_as_ort"] for p in pages),
                        "max_cer_vs_ort": max(p["cer_vs_ort"] for p in pages),
                        "mean_cer_vs_truth": round(float(np.mean([p["cer_vs_truth"] for p in pages])), 4),
                    }
            finally:
                client.close()
                server.stop()
                agent.close()
    finally:
        cloud.stop()
        service.close()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    (out_dir / "ocr.json").write_text(json.dumps(results, indent=2))
    return results


def _last_outcome(agent: Any, name: str, client: Any, feeds: Mapping[str, np.ndarray]
                  ) -> tuple[str, Mapping[str, np.ndarray]]:
    """Send one request through the agent's API and read which plan its executor ran."""
    seen: list[Any] = []
    executor = agent.executors[name].executor
    executor.listeners.append(seen.append)
    try:
        outputs = client.infer(name, dict(feeds))
    finally:
        executor.listeners.remove(seen.append)
    plan = seen[-1].decision.plan if seen else "?"
    return plan, outputs
