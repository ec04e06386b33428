"""Reading ``config.pbtxt`` by Triton's own schema: protobuf text format into Triton's
``ModelConfig`` message (``tritonclient``'s ``model_config_pb2``), then the settings edgecut
serves by.

Because the schema is Triton's, a misspelt or unknown field is an error naming the file,
the line and the field, as in Triton; a field edgecut does not implement and that would
change what a model computes or how requests flow (sequence batching, ensembles, decoupled
models, ragged batches, reshapes, custom operations, ...) is a "not supported" error at
load, never silently ignored. Hints that change only speed (``optimization``,
``model_warmup``, instance ``kind``/``gpus``, rate limiters) are accepted and ignored.

The settings read: ``name``, ``platform``/``backend`` (ONNX Runtime only),
``max_batch_size``, ``dynamic_batching`` (``preferred_batch_size``,
``max_queue_delay_microseconds``, ``default_queue_policy.max_queue_size``),
``instance_group`` (``count``, summed), ``version_policy``, ``default_model_filename``, and
the string ``parameters``, where edgecut reads ``default_version``, ``canary_version``,
``canary_fraction`` and ``intra_op_threads``. Strings keep their text (UTF-8).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.errors import RepositoryError


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: ``latest`` N, ``specific`` ones, or ``all``."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to load from those on disk (sorted ascending)."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []


@dataclass(frozen=True)
class ModelConfig:
    """The serving settings of one model (defaults where ``config.pbtxt`` is silent)."""

    name: str | None = None
    max_batch_size: int | None = None  # None: decide from the model (dynamic batch dim)
    dynamic_batching: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int | None = None
    instance_count: int = 1
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    default_model_filename: str = "model.onnx"
    parameters: dict[str, str] = field(default_factory=dict)
    #: the whole parsed config (Triton's ``ModelConfig`` message); None without a file
    triton: Any = field(default=None, compare=False, repr=False)


_PB2 = "tritonclient.grpc.model_config_pb2"


def model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` module, loaded without the rest of ``tritonclient.grpc``
    (which would pull in grpcio and take a second): only protobuf is needed to read a
    config. Registered under its own name, so a later ``import tritonclient.grpc`` reuses
    it rather than registering the schema twice."""
    module = sys.modules.get(_PB2)
    if module is not None:
        return module
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise RepositoryError("reading config.pbtxt needs Triton's schema: pip install tritonclient")
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    loader_spec = importlib.util.spec_from_file_location(_PB2, path)
    if loader_spec is None or loader_spec.loader is None or not path.is_file():
        raise RepositoryError(f"reading config.pbtxt needs Triton's schema; {path} is missing")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[_PB2] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # e.g. a protobuf runtime older than the schema was built for
        del sys.modules[_PB2]
        raise RepositoryError(f"cannot load Triton's model config schema ({exc})") from exc
    return module


def _field_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(^|[\s{{\[,;<]){re.escape(name)}\s*[:{{<\[]", re.M)


_FIELD: dict[str, re.Pattern] = {}


def _strip_comments(text: str) -> str:
    # A '#' inside a string literal is rare in a config and only blurs a line number.
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _line_of(text: str, name: str) -> int:
    """The first line where field ``name`` is set (comments skipped); 1 if not found."""
    pattern = _field_pattern(name)
    for number, line in enumerate(_strip_comments(text).splitlines(), 1):
        if pattern.search(line):
            return number
    return 1


class _Refusal:
    """Collects the first unsupported feature of a config, with the line it is on."""

    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = text, where

    def __call__(self, name: str, what: str) -> RepositoryError:
        line = _line_of(self.text, name)
        return RepositoryError(
            f"{self.where}:{line}: field '{name}': {what} is not supported by edgecut serve "
            "(remove it, or serve this model with Triton)")


_ONNX_PLATFORMS = ("", "onnxruntime_onnx")
_ONNX_BACKENDS = ("", "onnxruntime")


def _check_supported(proto: Any, text: str, where: str) -> None:
    refuse = _Refusal(text, where)
    scheduling = proto.WhichOneof("scheduling_choice")
    if scheduling == "sequence_batching":
        raise refuse("sequence_batching", "sequence batching (a stateful model)")
    if scheduling == "ensemble_scheduling" or proto.platform == "ensemble":
        raise refuse("ensemble_scheduling" if scheduling else "platform", "an ensemble")
    if proto.platform not in _ONNX_PLATFORMS:
        raise refuse("platform", f"platform {proto.platform!r} (only onnxruntime_onnx)")
    if proto.backend not in _ONNX_BACKENDS:
        raise refuse("backend", f"backend {proto.backend!r} (only onnxruntime)")
    if proto.model_transaction_policy.decoupled:
        raise refuse("decoupled", "a decoupled model (several responses per request)")
    if proto.batch_input or proto.batch_output:
        raise refuse("batch_input" if proto.batch_input else "batch_output", "ragged batching")
    for kind, tensors in (("input", proto.input), ("output", proto.output)):
        for tensor in tensors:
            # Triton's spelling of a scalar, dims [1] reshaped to [] (what edgecut's own
            # partitioner writes), is served as the model's scalar; other reshapes are not.
            if tensor.HasField("reshape") and not (
                    list(tensor.dims) == [1] and not tensor.reshape.shape):
                raise refuse("reshape", f"{kind} {tensor.name!r}: a reshape other than [1] "
                             "to [] (a scalar)")
            if tensor.is_shape_tensor:
                raise refuse("is_shape_tensor", f"{kind} {tensor.name!r}: a shape tensor")
            if getattr(tensor, "allow_ragged_batch", False):
                raise refuse("allow_ragged_batch", f"{kind} {tensor.name!r}: a ragged batch")
            if getattr(tensor, "optional", False):
                raise refuse("optional", f"{kind} {tensor.name!r}: an optional input")
    if proto.model_operations.op_library_filename:
        raise refuse("op_library_filename", "a custom operation library")
    if proto.model_repository_agents.agents:
        raise refuse("model_repository_agents", "a repository agent")
    if proto.response_cache.enable:
        raise refuse("response_cache", "the response cache")
    if proto.cc_model_filenames:
        raise refuse("cc_model_filenames", "per-GPU model files")
    batching = proto.dynamic_batching
    if batching.priority_levels or batching.priority_queue_policy:
        raise refuse("priority_levels" if batching.priority_levels else
                      "priority_queue_policy", "request priorities")
    queue = batching.default_queue_policy
    if queue.default_timeout_microseconds or queue.allow_timeout_override:
        raise refuse("default_timeout_microseconds" if queue.default_timeout_microseconds
                     else "allow_timeout_override", "a queue timeout")


def parse_config(text: str, where: str = "config.pbtxt") -> Any:
    """``config.pbtxt`` text as Triton's ``ModelConfig`` message; ``RepositoryError`` naming
    ``where``, the line and the field for text that is not valid by Triton's schema."""
    from google.protobuf import text_format

    proto = model_config_pb2().ModelConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        message = str(exc)
        line, column = exc.GetLine(), exc.GetColumn()
        if line is not None:
            # protobuf's text starts with "line:column : "; the location is put first once
            message = re.sub(r"^\d+:\d+ : ", "", message)
            raise RepositoryError(f"{where}:{line}:{column}: {message}") from None
        raise RepositoryError(f"{where}: {message}") from None
    return proto


def config_from_text(text: str, where: str = "config.pbtxt") -> ModelConfig:
    """A :class:`ModelConfig` from ``config.pbtxt`` text; errors name ``where``, the line
    and the field."""
    proto = parse_config(text, where)
    _check_supported(proto, text, where)
    kwargs: dict[str, Any] = {"triton": proto}
    if proto.name:
        kwargs["name"] = proto.name
    if proto.max_batch_size < 0:
        raise RepositoryError(f"{where}:{_line_of(text, 'max_batch_size')}: field "
                              f"'max_batch_size' must be >= 0, got {proto.max_batch_size}")
    if _given(text, "max_batch_size"):  # proto3 has no presence: absent reads as 0
        kwargs["max_batch_size"] = proto.max_batch_size
    if proto.HasField("dynamic_batching"):
        batching = proto.dynamic_batching
        kwargs["dynamic_batching"] = True
        preferred = list(batching.preferred_batch_size)
        if not all(p > 0 for p in preferred):
            raise RepositoryError(f"{where}:{_line_of(text, 'preferred_batch_size')}: field "
                                  "'preferred_batch_size' must be positive integers")
        kwargs["preferred_batch_sizes"] = tuple(sorted(preferred))
        kwargs["max_queue_delay_us"] = int(batching.max_queue_delay_microseconds)
        if batching.default_queue_policy.max_queue_size > 0:
            kwargs["max_queue_size"] = int(batching.default_queue_policy.max_queue_size)
    if proto.instance_group:
        # Triton reads a count of 0 (or none) as 1; a negative one is an error.
        if any(g.count < 0 for g in proto.instance_group):
            raise RepositoryError(f"{where}:{_line_of(text, 'count')}: field 'count': "
                                  "instance_group count must be >= 1")
        kwargs["instance_count"] = sum(g.count or 1 for g in proto.instance_group)
    if proto.HasField("version_policy"):
        kwargs["version_policy"] = _version_policy(proto.version_policy, text, where)
    if proto.default_model_filename:
        filename = proto.default_model_filename
        if "/" in filename or filename in (".", ".."):
            raise RepositoryError(f"{where}:{_line_of(text, 'default_model_filename')}: field "
                                  "'default_model_filename' must be a plain file name")
        kwargs["default_model_filename"] = filename
    kwargs["parameters"] = {key: value.string_value for key, value in proto.parameters.items()}
    return ModelConfig(**kwargs)


def _given(text: str, name: str) -> bool:
    return _FIELD.get(name, _field_pattern(name)).search(_strip_comments(text)) is not None


def _version_policy(msg: Any, text: str, where: str) -> VersionPolicy:
    choice = msg.WhichOneof("policy_choice")
    if choice == "latest":
        n = msg.latest.num_versions
        if n < 1:
            raise RepositoryError(f"{where}:{_line_of(text, 'num_versions')}: field "
                                  "'num_versions': version_policy.latest.num_versions must be >= 1")
        return VersionPolicy("latest", num_versions=n)
    if choice == "specific":
        versions = list(msg.specific.versions)
        if not versions or not all(v > 0 for v in versions):
            raise RepositoryError(f"{where}:{_line_of(text, 'versions')}: field 'versions': "
                                  "version_policy.specific.versions must be positive integers")
        return VersionPolicy("specific", versions=tuple(versions))
    if choice == "all":
        return VersionPolicy("all")
    raise RepositoryError(f"{where}:{_line_of(text, 'version_policy')}: field "
                          "'version_policy' must be latest, specific or all")


def read_config(model_dir: Path) -> ModelConfig:
    """The model's ``config.pbtxt`` if present, else the defaults."""
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return ModelConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot read ({exc})") from exc
    return config_from_text(text, str(path))
