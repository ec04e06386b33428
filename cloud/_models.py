"""What the service serves: model versions, their routing, request checks and statistics.

Protocol-agnostic data structures of the core (:mod:`cloud._service` drives them). A
:class:`Model` is replaced, never mutated, when its set of versions changes, so a request
routed on the old one finishes on it. :func:`validate` checks a decoded request against a
version's signature, so every transport returns the same errors; :func:`config_json` and
:func:`stats_json` render Triton's model configuration and statistics extensions.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud._batcher import Batcher, BatchRecord
from cloud._config import ModelConfig
from cloud._metrics import VersionMetrics
from cloud._runtime import ModelRuntime
from cloud._tensors import DATATYPES, InferRequest
from cloud.errors import ModelNotReady, ProtocolError, RepositoryError

__all__ = [
    "Duration",
    "Model",
    "Stats",
    "Version",
    "check_name",
    "config_json",
    "peek_default",
    "replace_versions",
    "stats_json",
    "validate",
    "version_key",
]


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class Stats:
    """Triton's statistics extension counters for one version."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)


    def triton_values(self, pending: int) -> dict[str, float]:
        """This version's Triton metrics (``nv_inference_*``), durations in microseconds.

        Input and output copies are part of the runtime's run here, so they count as
        compute_infer; compute_input and compute_output stay 0.
        """
        with self.lock:
            return {
                "nv_inference_request_success": self.success.count,
                "nv_inference_request_failure": self.fail.count,
                "nv_inference_count": self.inference_count,
                "nv_inference_exec_count": self.execution_count,
                "nv_inference_request_duration_us": self.success.ns // 1000,
                "nv_inference_queue_duration_us": self.queue.ns // 1000,
                "nv_inference_compute_input_duration_us": 0,
                "nv_inference_compute_infer_duration_us": self.compute.ns // 1000,
                "nv_inference_compute_output_duration_us": 0,
                "nv_inference_pending_request_count": pending,
            }

    def record_batch(self, record: BatchRecord) -> None:
        """Count one executed batch (called from the batcher's worker)."""
        with self.lock:
            self.execution_count += 1
            self.compute.add(record.compute_s, record.requests)
            for q in record.queue_s:
                self.queue.add(q)
            self.batches.setdefault(record.size, Duration()).add(record.compute_s)



@dataclass(eq=False)
class Version:
    model: str
    version: str
    runtime: ModelRuntime
    batcher: Batcher
    metrics: VersionMetrics
    stats: Stats
    source: Path | None = None
    mtime: float | None = None
    # (name, dtype, shape) per input, precomputed for the per-request checks
    signature: tuple[tuple[str, np.dtype, tuple[int, ...]], ...] = ()
    output_names: tuple[str, ...] = ()
    max_batch_size: int = 0

    def close(self) -> None:
        self.batcher.close()


@dataclass(eq=False)
class Model:
    name: str
    versions: dict[str, Version]
    config: ModelConfig | None = None
    from_repository: bool = False
    default_version: str | None = None
    canary_version: str | None = None
    canary_fraction: float = 0.0
    _canary_acc: float = 0.0
    in_flight: int = 0

    def route(self) -> Version:
        versions = self.versions
        if not versions:
            raise ModelNotReady(f"model {self.name!r} has no version ready")
        if self.canary_version in versions and self.canary_fraction > 0:
            # Deterministic weighted round robin: exactly this fraction, evenly spread.
            self._canary_acc += self.canary_fraction
            if self._canary_acc >= 1.0:
                self._canary_acc -= 1.0
                return versions[self.canary_version]  # type: ignore[index]
        if self.default_version in versions:
            return versions[self.default_version]  # type: ignore[index]
        return versions[self.highest]

    @functools.cached_property
    def highest(self) -> str:
        # versions is never mutated in place (a change builds a new _Model), so cache it
        return max(self.versions, key=version_key)


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if _DIGITS.match(version) else (1, version)


_DIGITS = re.compile(r"^[0-9]{1,18}$")  # ASCII only: str.isdigit() also takes '²'


def validate(target: Version, request: InferRequest) -> int:
    """Check ``request`` against ``target``'s signature; returns its batch size."""
    inputs = request.inputs
    name = target.model
    signature = target.signature
    if len(inputs) != len(signature) or any(s[0] not in inputs for s in signature):
        expected = [s[0] for s in signature]
        unknown = [n for n in inputs if n not in expected]
        if unknown:
            raise _invalid(target, f"model {name!r} has no input {unknown[0]!r}; expected {expected}")
        missing = [n for n in expected if n not in inputs]
        raise _invalid(target, f"model {name!r}: input {missing[0]!r} is missing; expected {expected}")
    batch = 1
    batched = target.max_batch_size > 0
    for index, (tensor, dtype, shape) in enumerate(target.signature):
        array = inputs.get(tensor)
        if array is None:
            raise _invalid(target, f"model {name!r}: input {tensor!r} is missing")
        why = _mismatch(tensor, dtype, shape, batched, array.dtype, _datatype_name(array.dtype),
                        array.shape)
        if why:
            raise _invalid(target, why)
        got = array.shape
        if batched:
            b = got[0]
            if index == 0:
                batch = b
            elif b != batch:
                raise _invalid(
                    target, f"input {tensor!r}: batch size {b} differs from the other inputs' {batch}"
                )
    if batched and not 1 <= batch <= target.max_batch_size:
        raise _invalid(
            target, f"batch size {batch} is outside 1..{target.max_batch_size} for model {name!r}"
        )
    if request.outputs is not None:
        for out in request.outputs:
            if out.name not in target.output_names:
                raise _invalid(
                    target, f"model {name!r} has no output {out.name!r}; outputs are "
                    f"{list(target.output_names)}"
                )
    return batch

def _invalid(target: Version, message: str) -> ProtocolError:
    target.metrics.failure("ProtocolError")
    with target.stats.lock:
        target.stats.fail.add(0.0)
    return ProtocolError(message)


def config_json(model: Model, chosen: Version) -> dict[str, Any]:
    """Triton's model configuration extension for ``chosen``, as JSON (what
    ``get_model_config`` reads)."""
    name = model.name
    batched = chosen.max_batch_size > 0
    settings = chosen.batcher.settings

    def dims(shape: tuple[int, ...]) -> list[int]:
        return list(shape[1:] if batched else shape)

    config: dict[str, Any] = {
        "name": name,
        "platform": chosen.runtime.platform,
        "max_batch_size": chosen.max_batch_size,
        "input": [{"name": m.name, "data_type": "TYPE_" + _config_type(m.datatype),
                   "dims": dims(m.shape)} for m in chosen.runtime.inputs],
        "output": [{"name": m.name, "data_type": "TYPE_" + _config_type(m.datatype),
                    "dims": dims(m.shape)} for m in chosen.runtime.outputs],
        "instance_group": [{"count": len(chosen.batcher.instances)}],
    }
    if settings.max_batch_size > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(settings.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(settings.max_queue_delay_s * 1e6),
            "default_queue_policy": {"max_queue_size": settings.max_queue_size},
        }
    if model.config is not None:
        policy = model.config.version_policy
        config["version_policy"] = (
            {"latest": {"num_versions": policy.num_versions}} if policy.kind == "latest"
            else {"specific": {"versions": list(policy.versions)}} if policy.kind == "specific"
            else {"all": {}}
        )
    config["parameters"] = {
        "default_version": {"string_value": model.default_version or ""},
        "canary_version": {"string_value": model.canary_version or ""},
        "canary_fraction": {"string_value": str(model.canary_fraction)},
    }
    return config


def stats_json(pairs: list[tuple[Model, Version]]) -> dict[str, Any]:
    """Triton's statistics extension: per model version counts and cumulative times."""
    out = []
    for model, v in sorted(pairs, key=lambda p: (p[0].name, version_key(p[1].version))):
        s = v.stats
        with s.lock:
            out.append({
                "name": model.name,
                "version": v.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": s.success.as_json(),
                    "fail": s.fail.as_json(),
                    "queue": s.queue.as_json(),
                    "compute_input": {"count": 0, "ns": 0},
                    "compute_infer": s.compute.as_json(),
                    "compute_output": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {"batch_size": size, "compute_infer": d.as_json()}
                    for size, d in sorted(s.batches.items())
                ],
            })
    return {"model_stats": out}
    return {"model_stats": out}


def peek_default(model: Model) -> Version:
    versions = model.versions
    if not versions:
        raise ModelNotReady(f"model {model.name!r} has no version ready")
    if model.default_version in versions:
        return versions[model.default_version]  # type: ignore[index]
    return versions[model.highest]


def _dims_match(expected: tuple[int, ...], got: tuple[int, ...], batched: bool) -> bool:
    for i in range(len(expected)):  # lengths compared by the callers (no zip strict on 3.8)
        e, g = expected[i], got[i]
        if batched and i == 0:
            continue
        if e >= 0 and e != g:
            return False
    return True


def _mismatch(tensor: str, expected: Any, dims: Sequence[int], batched: bool, got_dtype: Any,
              got_datatype: str, got_shape: Sequence[int]) -> str:
    """Why an input of ``got_dtype`` and ``got_shape`` does not fit the model's input
    (``expected`` dtype, ``dims``), or "" when it does: one wording for the check before
    decoding and the one after."""
    if got_dtype != expected:
        return f"input {tensor!r}: expected datatype {_datatype_name(expected)}, got {got_datatype}"
    if len(dims) != len(got_shape) or not _dims_match(dims, got_shape, batched):
        return f"input {tensor!r}: expected shape {list(dims)}, got {list(got_shape)}"
    return ""


def check_input(model: str, targets: list[Version], max_bytes_elements: int, tensor: str,
                datatype: str, shape: tuple[int, ...]) -> None:
    """One input's datatype and shape against the model (any of ``targets`` may take it)
    and a cap on BYTES elements: the check the decoder runs before it decodes the data."""
    dtype = DATATYPES.get(datatype)
    why = ""
    for target in targets:
        for name, expected, dims in target.signature:
            if name != tensor:
                continue
            why = _mismatch(tensor, expected, dims, target.max_batch_size > 0, dtype, datatype,
                            shape)
            break
        else:
            why = (f"model {model!r} has no input {tensor!r}; expected "
                   f"{[n for n, _d, _s in target.signature]}")
        if not why:
            break
    if why:
        raise _invalid(targets[0], why)  # counted as the service's own checks are
    if datatype == "BYTES":
        count = 1
        for d in shape:
            count *= d
        if count > max_bytes_elements:
            raise _invalid(targets[0],
                           f"input {tensor!r}: {count} BYTES elements exceed the limit of "
                           f"{max_bytes_elements}")


def check_profile_shapes(name: str, runtime: Any, batch: int, shapes: dict[str, list[int]],
                         max_elements: int) -> None:
    """Refuse profile shapes the model cannot take, or inputs too large to allocate."""
    metas = {m.name: m for m in runtime.inputs}
    unknown = [k for k in shapes if k not in metas]
    if unknown:
        raise ProtocolError(f"profile of {name!r}: no input {unknown[0]!r}; inputs are "
                            f"{list(metas)}")
    batched = runtime.max_batch_size > 0
    total = 0
    for meta in runtime.inputs:
        dims = list(meta.shape)
        if meta.name in shapes:
            shape = list(shapes[meta.name])
            if len(shape) != len(dims) or not _dims_match(tuple(dims), tuple(shape), batched):
                raise ProtocolError(f"profile of {name!r}: input {meta.name!r} takes shape "
                                    f"{dims} (-1: any), got {shape}")
        else:
            if batched and dims:
                dims[0] = batch
            shape = [d if d >= 0 else 1 for d in dims]
        count = 1
        for d in shape:
            count *= d
        total += count
    if total > max_elements:
        raise ProtocolError(f"profile of {name!r}: inputs of {total} elements exceed the "
                            f"limit of {max_elements}")


def _datatype_name(dtype: np.dtype) -> str:
    for name, dt in DATATYPES.items():
        if dt == dtype:
            return name
    return str(dtype)


def _config_type(datatype: str) -> str:
    return {"FP16": "FP16", "FP32": "FP32", "FP64": "FP64", "BYTES": "STRING"}.get(datatype, datatype)



def check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise RepositoryError(f"invalid model name {name!r}")


def replace_versions(model: Model, versions: dict[str, Version]) -> Model:
    default = model.default_version if model.default_version in versions else None
    canary = model.canary_version if model.canary_version in versions else None
    return Model(
        model.name, versions, model.config, model.from_repository,
        default, canary, model.canary_fraction if canary else 0.0,
    )
