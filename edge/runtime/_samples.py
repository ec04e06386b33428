"""Calibration and evaluation samples for quantization: seeded random inputs, a folder of
``.npy``/``.npz`` files, or arrays in memory, each fitted to the model's inputs."""

from __future__ import annotations

import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devices.errors import ConfigError, ModelError

# typing's spellings: these aliases are evaluated at import, on Python 3.8 too.
Feeds = typing.Dict[str, np.ndarray]
Calibration = typing.Union[str, Path, int,
                           typing.Sequence[typing.Union[typing.Mapping[str, np.ndarray], np.ndarray]]]


def _input_specs(model_path: str | Path) -> list[tuple[str, np.dtype, tuple[int | None, ...]]]:
    from devices import import_onnxruntime

    ort = import_onnxruntime()

    from edge.runtime._ort import _spec

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"model '{model_path}': onnxruntime cannot load it: {exc}") from exc
    return [(s.name, s.dtype, s.shape) for s in (_spec(a) for a in sess.get_inputs())]


def random_samples(model_path: str | Path, count: int, seed: int = 0) -> list[Feeds]:
    """``count`` random batch-1 samples (standard normal) fitting the model's inputs.

    Only for models whose dims other than the batch are fixed; random weights
    (the zoo models) make random inputs as good as any.
    """
    rng = np.random.default_rng(seed)
    specs = _input_specs(model_path)
    for name, dtype, shape in specs:
        if any(d is None for d in shape[1:]):
            raise ConfigError(
                f"model '{model_path}': input '{name}' has dynamic dims "
                f"{['?' if d is None else d for d in shape]}; give real samples "
                "(a folder of .npy files) instead of a count"
            )
        if dtype.kind != "f":
            raise ConfigError(
                f"model '{model_path}': input '{name}' is {dtype}; give real samples "
                "(a folder of .npy files) instead of a count"
            )
    samples = []
    for _ in range(count):
        samples.append({
            name: rng.standard_normal((1, *shape[1:])).astype(dtype) for name, dtype, shape in specs
        })
    return samples


def _fit_rank(name: str, value: np.ndarray, rank: int, where: str) -> np.ndarray:
    if value.ndim == rank:
        return value
    if value.ndim == rank - 1:  # one sample saved without its batch axis
        return value[None]
    raise ConfigError(f"{where}: input '{name}': expected rank {rank} (or {rank - 1} "
                      f"without the batch axis), got shape {value.shape}")


def load_samples(folder: str | Path, model_path: str | Path) -> list[Feeds]:
    """Samples from a folder: one ``.npy`` per sample (single-input models) or one
    ``.npz`` per sample holding every input by name; files are taken in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"calibration '{folder}': not a folder (nor a sample count)")
    specs = _input_specs(model_path)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".npz"))
    if not files:
        raise ConfigError(f"calibration '{folder}': no .npy or .npz files in it")
    samples: list[Feeds] = []
    for path in files:
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"calibration file '{path}': not a readable array ({exc})") from exc
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise ConfigError(
                    f"calibration file '{path}': the model has {len(specs)} inputs "
                    f"({', '.join(s[0] for s in specs)}); use .npz files with one array per input"
                )
            arrays = {specs[0][0]: loaded}
        else:
            arrays = dict(loaded.items())
        feeds: Feeds = {}
        for name, dtype, shape in specs:
            if name not in arrays:
                raise ConfigError(f"calibration file '{path}': no array for input '{name}'")
            value = _fit_rank(name, np.asarray(arrays[name]), len(shape), f"calibration file '{path}'")
            if value.dtype != dtype:
                raise ConfigError(f"calibration file '{path}': input '{name}': expected dtype "
                                  f"{dtype}, got {value.dtype}")
            feeds[name] = value
        samples.append(feeds)
    return samples


def _as_samples(source: Calibration, model_path: str | Path, seed: int) -> tuple[list[Feeds], str]:
    """Samples and a description of where they came from."""
    if isinstance(source, bool):
        raise ConfigError(f"calibration: expected a folder, a count or samples, got {source!r}")
    if isinstance(source, int):
        if source < 1:
            raise ConfigError(f"calibration: expected at least 1 sample, got {source}")
        return random_samples(model_path, source, seed), f"{source} random normal samples (seed {seed})"
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.isdigit():
            return _as_samples(int(text), model_path, seed)
        samples = load_samples(text, model_path)
        return samples, f"{len(samples)} samples from {text}"
    specs = _input_specs(model_path)
    samples = []
    for i, item in enumerate(source):
        if isinstance(item, np.ndarray):
            if len(specs) != 1:
                raise ConfigError(f"sample {i}: the model has {len(specs)} inputs; give dicts")
            item = {specs[0][0]: item}
        samples.append({
            name: _fit_rank(name, np.asarray(item[name]), len(shape), f"sample {i}")
            for name, _dtype, shape in specs
        })
    if not samples:
        raise ConfigError("calibration: no samples given")
    return samples, f"{len(samples)} samples given in memory"


def _feed_reader(samples: Sequence[Feeds]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _SampleReader(CalibrationDataReader):
        """Hands the quantizer one sample at a time; rewindable for entropy calibration."""

        def __init__(self) -> None:
            self._it: Iterator[Feeds] = iter(samples)

        def get_next(self) -> Feeds | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(samples)

    return _SampleReader()


# ---------------------------------------------------------------------------- graph steps
