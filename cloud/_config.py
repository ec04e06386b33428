"""Reading the subset of Triton's ``config.pbtxt`` (protobuf text format) the service uses.

Triton configs carry many fields this service does not implement (optimization, model
warmup, ...); they are parsed and ignored so that one repository serves both servers.
The fields read: ``name``, ``max_batch_size``, ``dynamic_batching`` (``preferred_batch_size``,
``max_queue_delay_microseconds``, ``default_queue_policy.max_queue_size``),
``instance_group`` (``count``, summed), ``version_policy`` (``latest``/``specific``/``all``),
``default_model_filename``, and the string ``parameters`` map, where edgecut reads
``default_version``, ``canary_version``, ``canary_fraction`` and ``intra_op_threads``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.errors import RepositoryError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<punct>[{}\[\]:,;<>])
      | (?P<word>[A-Za-z0-9_.+\-]+)
    )""",
    re.VERBOSE,
)


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


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            line = text.count("\n", 0, pos) + 1
            raise RepositoryError(f"{where}: cannot parse config.pbtxt near line {line}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "comment":
            continue
        out.append((kind, m.group(kind)))  # type: ignore[arg-type]
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], where: str) -> None:
        self.tokens, self.pos, self.where = tokens, 0, where

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise RepositoryError(f"{self.where}: config.pbtxt ends unexpectedly")
        self.pos += 1
        return tok

    def message(self, closing: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self._peek()
            if tok is None:
                if closing is not None:
                    raise RepositoryError(f"{self.where}: config.pbtxt misses a closing '{closing}'")
                return fields
            if tok[1] == closing:
                self.pos += 1
                return fields
            if tok[1] in ",;":
                self.pos += 1
                continue
            kind, name = self._take()
            if kind != "word":
                raise RepositoryError(f"{self.where}: expected a field name, got {name!r}")
            if self._peek() is not None and self._peek()[1] == ":":  # type: ignore[index]
                self.pos += 1
            fields.setdefault(name, []).extend(self._value(name))

    def _value(self, name: str) -> list[Any]:
        kind, text = self._take()
        if text in ("{", "<"):
            return [self.message("}" if text == "{" else ">")]
        if text == "[":
            values: list[Any] = []
            while True:
                tok = self._peek()
                if tok is None:
                    raise RepositoryError(f"{self.where}: list '{name}' misses its ']'")
                if tok[1] == "]":
                    self.pos += 1
                    return values
                if tok[1] == ",":
                    self.pos += 1
                    continue
                values.extend(self._value(name))
        if kind == "string":
            return [bytes(text[1:-1], "utf-8").decode("unicode_escape")]
        if kind == "word":
            return [_scalar(text)]
        raise RepositoryError(f"{self.where}: unexpected {text!r} after field '{name}'")


def _scalar(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def parse_pbtxt(text: str, where: str = "config.pbtxt") -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [values...]}`` (messages are dicts)."""
    return _Parser(_tokens(text, where), where).message(None)


def _one(fields: dict[str, list[Any]], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    values = fields.get(key)
    if not values:
        return None
    value = values[-1]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise RepositoryError(f"{where}: field '{key}' has the wrong type ({value!r})")
    return value


def config_from_text(text: str, where: str = "config.pbtxt") -> ModelConfig:
    """A :class:`ModelConfig` from ``config.pbtxt`` text; errors name ``where`` and the field."""
    fields = parse_pbtxt(text, where)
    kwargs: dict[str, Any] = {}
    name = _one(fields, "name", str, where)
    if name is not None:
        kwargs["name"] = name
    mbs = _one(fields, "max_batch_size", int, where)
    if mbs is not None:
        if mbs < 0:
            raise RepositoryError(f"{where}: max_batch_size must be >= 0, got {mbs}")
        kwargs["max_batch_size"] = mbs
    batching = _one(fields, "dynamic_batching", dict, where)
    if batching is not None:
        kwargs["dynamic_batching"] = True
        preferred = batching.get("preferred_batch_size", [])
        if not all(isinstance(p, int) and p > 0 for p in preferred):
            raise RepositoryError(f"{where}: preferred_batch_size must be positive integers")
        kwargs["preferred_batch_sizes"] = tuple(sorted(preferred))
        delay = _one(batching, "max_queue_delay_microseconds", int, where)
        if delay is not None:
            if delay < 0:
                raise RepositoryError(f"{where}: max_queue_delay_microseconds must be >= 0")
            kwargs["max_queue_delay_us"] = delay
        policy = _one(batching, "default_queue_policy", dict, where)
        if policy is not None:
            size = _one(policy, "max_queue_size", int, where)
            if size is not None and size > 0:
                kwargs["max_queue_size"] = size
    groups = fields.get("instance_group", [])
    if groups:
        total = 0
        for group in groups:
            if not isinstance(group, dict):
                raise RepositoryError(f"{where}: instance_group entries must be messages")
            count = _one(group, "count", int, where)
            total += 1 if count is None else count
        if total < 1:
            raise RepositoryError(f"{where}: instance_group count must be >= 1")
        kwargs["instance_count"] = total
    policy_msg = _one(fields, "version_policy", dict, where)
    if policy_msg is not None:
        kwargs["version_policy"] = _version_policy(policy_msg, where)
    filename = _one(fields, "default_model_filename", str, where)
    if filename is not None:
        if "/" in filename or filename in ("", ".", ".."):
            raise RepositoryError(f"{where}: default_model_filename must be a plain file name")
        kwargs["default_model_filename"] = filename
    params: dict[str, str] = {}
    for entry in fields.get("parameters", []):
        if not isinstance(entry, dict):
            raise RepositoryError(f"{where}: parameters entries must be messages")
        key = _one(entry, "key", str, where)
        value = _one(entry, "value", dict, where)
        if key is None or value is None:
            raise RepositoryError(f"{where}: a parameters entry needs key and value")
        string = _one(value, "string_value", str, where)
        if string is None:
            raise RepositoryError(f"{where}: parameter '{key}' needs a string_value")
        params[key] = string
    kwargs["parameters"] = params
    return ModelConfig(**kwargs)


def _version_policy(msg: dict[str, list[Any]], where: str) -> VersionPolicy:
    if "latest" in msg:
        latest = msg["latest"][-1]
        n = _one(latest, "num_versions", int, where) if isinstance(latest, dict) else None
        if n is None or n < 1:
            raise RepositoryError(f"{where}: version_policy.latest.num_versions must be >= 1")
        return VersionPolicy("latest", num_versions=n)
    if "specific" in msg:
        specific = msg["specific"][-1]
        versions = specific.get("versions", []) if isinstance(specific, dict) else []
        if not versions or not all(isinstance(v, int) and v > 0 for v in versions):
            raise RepositoryError(f"{where}: version_policy.specific.versions must be positive integers")
        return VersionPolicy("specific", versions=tuple(versions))
    if "all" in msg:
        return VersionPolicy("all")
    raise RepositoryError(f"{where}: version_policy must be latest, specific or all")


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
