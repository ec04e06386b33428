"""``edgecut quantize``: static INT8 quantization with a speed and agreement report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from devices.errors import ConfigError


def _resolve_model(model: str) -> Path:
    """A model path, or the name of a zoo or trained model (fetched on first use)."""
    path = Path(model)
    if path.is_file():
        from partition._onnx import reject_tflite

        reject_tflite(path)
        return path
    from partition import zoo

    if model in zoo.ZOO_MODELS:
        return zoo.zoo_model(model)
    if model in zoo.TRAINED_MODELS:
        return zoo.trained_model(model)
    raise ConfigError(
        f"model '{model}': no such file, and not a zoo model ({', '.join(zoo.ZOO_MODELS)}) "
        f"or trained model ({', '.join(zoo.TRAINED_MODELS)})"
    )


def _source(value: str, option: str) -> str | int:
    if value.isdigit():
        return int(value)
    if not Path(value).is_dir():
        raise ConfigError(f"{option} '{value}': expected a folder of .npy/.npz samples or a count")
    return value


def _split_folder(folder: str, model: Path) -> tuple[list[Any], list[Any]]:
    """Hold out the last quarter of a folder's samples for evaluation."""
    from edge.runtime.quantize import load_samples

    samples = load_samples(folder, model)
    if len(samples) < 4:
        raise ConfigError(
            f"--calibration '{folder}': {len(samples)} samples are too few to hold some out "
            "for evaluation; give --eval"
        )
    cut = len(samples) - max(1, len(samples) // 4)
    return samples[:cut], samples[cut:]


def _print_report(report: Any) -> None:
    echo = click.echo
    echo(f"model        {report.model}")
    echo(f"int8 model   {report.output}")
    s = report.settings
    echo(f"settings     QDQ, {'per-channel' if s['per_channel'] else 'per-tensor'} weights "
         f"{s['weight_type']}, activations {s['activation_type']}, reduce_range "
         f"{'on' if s['reduce_range'] else 'off'}, {s['calibrate_method']} calibration")
    echo(f"calibration  {report.calibration}")
    echo(f"kernels      {report.integer_compute_ops} integer compute ops, "
         f"{report.float_compute_ops} float Conv/MatMul/Gemm left")
    if report.latency is not None:
        lat = report.latency
        echo(f"evaluation   {report.evaluation}")
        echo(f"latency      fp32 {lat.fp32_ms:.2f} ms, int8 {lat.int8_ms:.2f} ms, "
             f"speed-up {lat.speedup:.2f}x (medians of {lat.runs} interleaved runs, "
             f"{lat.intra_op_threads} threads)")
    if report.agreement is not None:
        agr = report.agreement
        if agr.metric == "top1":
            what = f"top-1 {agr.score:.2%} of {agr.positions} rows"
        elif agr.metric == "iou":
            what = f"IoU {agr.score:.4f} of the maps thresholded at {agr.threshold:g}"
        elif agr.metric == "sequence":
            what = (f"decoded text identical for {agr.score:.2%} of samples, character "
                    f"error rate {agr.char_error_rate or 0.0:.2%}")
        else:
            what = f"cosine {agr.score:.4f}"
        echo(f"agreement    {agr.task}: {what}; cosine mean {agr.cosine_mean:.4f} "
             f"(min {agr.cosine_min:.4f}) over {agr.samples} samples")


@click.command()
@click.argument("model")
@click.option("--calibration", required=True, metavar="DIR_OR_N",
              help="Folder of .npy (one input) or .npz (inputs by name) samples, or a count of "
                   "random samples for models with fixed input dims.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the INT8 model.")
@click.option("--eval", "evaluation", default=None, metavar="DIR_OR_N",
              help="Samples for the FP32-vs-INT8 comparison (default: the last quarter of the "
                   "calibration folder, held out; or 16 fresh random samples for a count).")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8",
              show_default=True)
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8",
              show_default=True)
@click.option("--per-channel/--per-tensor", default=True, show_default=True)
@click.option("--reduce-range", is_flag=True, help="7-bit weights, for CPUs without VNNI.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default="minmax", show_default=True, help="Calibration method.")
@click.option("--op-types", default=None, metavar="OP,OP,...",
              help="Quantize only these op types (e.g. Conv,MatMul,Gemm for models with "
                   "transformer parts); default: every type the quantizer supports.")
@click.option("--quantize-head", is_flag=True,
              help="Quantize the last matrix product before the outputs too (kept in float "
                   "by default).")
@click.option("--no-preprocess", is_flag=True, help="Skip shape inference and graph optimization.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="intra_op threads for the comparison (default: all cores).")
@click.option("--task", type=click.Choice(["auto", "classifier", "dense", "ctc", "other"]),
              default="auto", show_default=True,
              help="What the first output is, which picks the agreement metric: top-1 "
                   "(classifier), IoU of thresholded maps (dense), decoded-text equality "
                   "(ctc), cosine (other); auto decides from the output's shape.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Binarization threshold of dense probability maps (PP-OCR's detector: 0.3).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def quantize(model: str, calibration: str, out_path: str, evaluation: str | None,
             activation_type: str, weight_type: str, per_channel: bool, reduce_range: bool,
             method: str, op_types: str | None, quantize_head: bool, no_preprocess: bool,
             threads: int | None, task: str, threshold: float, as_json: bool) -> None:
    """Quantize MODEL (a .onnx path, or a zoo/trained model name) to static INT8."""
    from edge.runtime.quantize import quantize_model

    path = _resolve_model(model)
    calib: Any = _source(calibration, "--calibration")
    held: Any = None
    labels: dict[str, str] = {}
    if evaluation is not None:
        held = _source(evaluation, "--eval")
    elif isinstance(calib, int):
        held = 16
    else:
        folder = calib
        calib, held = _split_folder(folder, path)
        labels = {
            "calibration_label": f"the first {len(calib)} samples in {folder}",
            "evaluation_label": f"the last {len(held)} samples in {folder}, held out from calibration",
        }
    types = [t.strip() for t in op_types.split(",") if t.strip()] if op_types else None
    report = quantize_model(
        path, out_path, calib, evaluation=held, per_channel=per_channel,
        activation_type=activation_type, weight_type=weight_type, reduce_range=reduce_range,
        calibrate_method=method, preprocess=not no_preprocess, float_head=not quantize_head,
        op_types=types, intra_op_threads=threads, task=task, threshold=threshold, **labels,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print_report(report)
