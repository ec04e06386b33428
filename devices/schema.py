"""One declaration per setting: config files described by frozen dataclasses.

A config file's schema is a tree of frozen dataclasses. Each field is a key declared once
with :func:`setting` (default, meaning, unit, range, the key's name in the file and its
scale to the stored unit) or a sub-table declared with :func:`section`. From that one
declaration follow:

- :func:`parse`: the strict parser (types, ranges, choices, unknown keys refused, a key
  that was renamed named with its new name), through :class:`devices.config.Table`;
- the defaults: the dataclass's own;
- :func:`docs_tables`: the reference tables in the docs (``key | type | default | unit |
  meaning``);
- :func:`example_toml`: the example file, every key with its default.

``scripts/config_docs.py`` writes the docs tables and example files from the schemas, and
the docs test checks that they agree.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from devices.config import Table
from devices.errors import ConfigError

_SETTING = "edgecut.setting"
_SECTION = "edgecut.section"
_FLAGS = "edgecut.flags"
_NO_EXAMPLE = object()


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one key reads, checks and documents itself (see :func:`setting`)."""

    doc: str
    note: str = ""
    key: str = ""
    unit: str = ""
    scale: float = 1.0
    kind: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    example: Any = _NO_EXAMPLE
    type_doc: str = ""
    path: bool = False
    required: bool = False
    item: Any = None
    flags: tuple[str, ...] = ()


def setting(default: Any, doc: str, *, note: str = "", key: str = "", unit: str = "",
            scale: float = 1.0, kind: Any = None, min: float | None = None,
            max: float | None = None, choices: tuple[Any, ...] | None = None,
            example: Any = _NO_EXAMPLE, type_doc: str = "", path: bool = False,
            required: bool = False, item: Any = None, flags: tuple[str, ...] = ()) -> Any:
    """A key of a config table, stored in the dataclass field it is assigned to.

    ``default`` is in the stored unit; the file holds ``stored / scale`` under ``key``
    (the field's name when empty), of ``kind`` (the default's type when None). ``doc`` is
    the docs table's meaning, ``note`` the example file's comment (``doc`` when empty),
    ``example`` a value the example file shows instead of the default. ``path``: a file
    path, resolved against the config file's folder; ``required``: the file must give it;
    ``item``: a list (stored as a tuple) of this type. ``flags`` mark it for the file's own
    rules (e.g. ``restart``: takes effect on restart); see :func:`flagged`.
    """
    meta = Setting(doc=doc, note=note, key=key, unit=unit, scale=scale, kind=kind, min=min,
                   max=max, choices=choices, example=example, type_doc=type_doc, path=path,
                   required=required, item=item, flags=flags)
    return dataclasses.field(default=default, metadata={_SETTING: meta})


def section(cls: type, doc: str = "", flags: tuple[str, ...] = ()) -> Any:
    """A sub-table ``[name]`` read into the dataclass ``cls``; ``flags`` mark the whole
    table (see :func:`flagged`)."""
    return dataclasses.field(default_factory=cls, metadata={_SECTION: doc, _FLAGS: flags})


def flagged(cls: type, flag: str, prefix: tuple[str, ...] = ()) -> tuple[tuple[str, ...], ...]:
    """The key paths (``("mqtt", "host")``; a flagged table as its own path) marked
    ``flag``, in declaration order."""
    out: list[tuple[str, ...]] = []
    for key, _f, s in keys_of(cls):
        if flag in s.flags:
            out.append(prefix + (key,))
    for name, f in sections_of(cls):
        if flag in f.metadata.get(_FLAGS, ()):
            out.append(prefix + (name,))
        else:
            out += flagged(f.default_factory, flag, prefix + (name,))  # type: ignore[misc]
    return tuple(out)


def _kind_of(value: Any) -> type:
    for t in (bool, int, float, str):
        if isinstance(value, t):
            return t
    raise TypeError(f"give kind= for a default of {type(value).__name__}")


def _kind(f: dataclasses.Field, s: Setting) -> type:
    if s.item is not None:
        return list
    if s.kind is not None:
        return s.kind
    return _kind_of(f.default)


def _file_value(stored: Any, s: Setting, kind: type) -> Any:
    if s.scale == 1.0:
        return stored
    value = stored / s.scale
    if kind is int:
        return int(round(value))
    return float(value)


def _stored_value(value: Any, f: dataclasses.Field, s: Setting) -> Any:
    if s.scale == 1.0:
        return value
    stored = value * s.scale
    return int(stored) if isinstance(f.default, int) and not isinstance(f.default, bool) else stored


def keys_of(cls: type) -> list[tuple[str, dataclasses.Field, Setting]]:
    """``(file key, field, setting)`` of each key of one table, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        s = f.metadata.get(_SETTING)
        if s is not None:
            out.append((s.key or f.name, f, s))
    return out


def sections_of(cls: type) -> list[tuple[str, dataclasses.Field]]:
    """``(table name, field)`` of each sub-table, in declaration order."""
    return [(f.name, f) for f in dataclasses.fields(cls) if _SECTION in f.metadata]


def parse_table(cls: type, table: Table, *, renamed: Mapping[str, str] | None = None,
                extra: Mapping[str, Any] | None = None,
                resolve: Callable[[str], str] | None = None) -> Any:
    """Read one table (and its sub-tables) into ``cls``; unknown keys are errors.

    ``renamed`` maps old key names (``"explore.probe_kb"`` style paths relative to this
    table, or plain names) to their new names, named in the error. ``extra`` gives fields
    that are not read from the file (e.g. ``source``). ``resolve`` turns a ``path`` key's
    value into the path it names (relative to the config file, say)."""
    for old, new in (renamed or {}).items():
        if "." not in old and table.has(old):
            raise ConfigError(f"{table.where}: key '{old}' was renamed to '{new}'")
    kwargs: dict[str, Any] = dict(extra or {})
    for key, f, s in keys_of(cls):
        if s.item is not None:
            default = None if s.required else list(f.default)
            value: Any = tuple(table.get_list(key, s.item, *(() if s.required else (default,))))
        else:
            kind = _kind(f, s)
            if s.required:
                value = table.get(key, kind, choices=s.choices, min=s.min, max=s.max)
            else:
                value = table.get(key, kind, _file_value(f.default, s, kind), choices=s.choices,
                                  min=s.min, max=s.max)
            value = _stored_value(value, f, s)
            if s.path and resolve is not None:
                value = resolve(value)
        kwargs[f.name] = value
    for name, f in sections_of(cls):
        sub_renamed = {k.split(".", 1)[1]: v for k, v in (renamed or {}).items()
                       if k.startswith(name + ".")}
        kwargs[name] = parse_table(f.default_factory, table.table(name),  # type: ignore[misc]
                                   renamed=sub_renamed, resolve=resolve)
    table.finish()
    return cls(**kwargs)


def parse(cls: type, data: Mapping[str, Any], where: str, *,
          renamed: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
          resolve: Callable[[str], str] | None = None) -> Any:
    """Read a parsed TOML document into the schema ``cls`` (see :func:`parse_table`);
    ``renamed`` keys of sub-tables are written ``"table.old_key"``."""
    return parse_table(cls, Table(data, where), renamed=renamed, extra=extra, resolve=resolve)


# -- documentation --------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _num(value: float) -> str:
    return f"{value:g}"


_TYPE_DOC = {bool: "bool", int: "integer", float: "number", str: "string"}


def _type_doc(kind: type, s: Setting) -> str:
    if s.type_doc:
        return s.type_doc
    if s.item is not None:
        return f"list of {_TYPE_DOC[s.item]}s"
    name = _TYPE_DOC[kind] + (" (a path)" if s.path else "")
    if s.min is not None and s.max is not None:
        return f"{name} {_num(s.min)}..{_num(s.max)}"
    if s.min:
        return f"{name} >= {_num(s.min)}"
    return name


def _default_doc(value: Any) -> str:
    if isinstance(value, float):
        return f"`{_num(value)}`"
    if isinstance(value, (tuple, list)):
        return "`[" + ", ".join(_toml(v) for v in value) + "]`"
    return f"`{_toml(value)}`"


def docs_table(cls: type, flag_notes: Mapping[str, str] | None = None,
               table_flags: tuple[str, ...] = ()) -> str:
    """The markdown reference table of one table's keys; ``flag_notes`` says in the
    meaning what each flag of a key (or of the whole table, ``table_flags``) means."""
    lines = ["| key | type | default | unit | meaning |", "| --- | --- | --- | --- | --- |"]
    for key, f, s in keys_of(cls):
        kind = _kind(f, s)
        unit = f" {s.unit} " if s.unit else " "
        default = "required" if s.required else _default_doc(_file_value(f.default, s, kind))
        notes = [flag_notes[x] for x in (*table_flags, *s.flags) if x in (flag_notes or {})]
        doc = s.doc + (f" ({'; '.join(notes)})" if notes else "")
        lines.append(f"| `{key}` | {_type_doc(kind, s)} | {default} |{unit}| {doc} |")
    return "\n".join(lines)


def docs_tables(cls: type, heading: str = "###",
                flag_notes: Mapping[str, str] | None = None) -> str:
    """Every table of the schema: the top level, then each ``[section]``."""
    parts = []
    if keys_of(cls):
        parts.append(f"{heading} Top level\n\n{docs_table(cls, flag_notes)}")
    parts += _docs_sections(cls, heading, "", flag_notes, ())
    return "\n\n".join(parts) + "\n"


def _docs_sections(cls: type, heading: str, prefix: str, flag_notes: Mapping[str, str] | None,
                   inherited: tuple[str, ...]) -> list[str]:
    parts = []
    for name, f in sections_of(cls):
        sub = f.default_factory  # type: ignore[misc]
        doc = f.metadata[_SECTION]
        flags = inherited + tuple(f.metadata.get(_FLAGS, ()))
        head = f"{heading} `[{prefix}{name}]`\n\n" + (f"{doc}\n\n" if doc else "")
        if keys_of(sub):
            parts.append(head + docs_table(sub, flag_notes, flags))
        parts += _docs_sections(sub, heading, f"{prefix}{name}.", flag_notes, flags)
    return parts


def _example_lines(cls: type) -> list[str]:
    rows = []
    for key, f, s in keys_of(cls):
        kind = _kind(f, s)
        shown = (_file_value(f.default, s, kind) if s.example is _NO_EXAMPLE or s.required
                 else s.example)
        if s.required:
            shown = s.example
        if kind is float and isinstance(shown, int) and not isinstance(shown, bool):
            shown = float(shown)
        note = s.note or s.doc
        if s.required:
            note = "required: " + note
        elif s.example is not _NO_EXAMPLE:
            note += "   [example value]"
        rows.append((f"{key} = {_toml(shown)}", note))
    width = max((len(a) for a, _ in rows), default=0) + 2
    out = []
    for assignment, note in rows:
        if not note:
            out.append(assignment)
            continue
        # Long notes continue on comment lines under the first, within 100 columns.
        parts = textwrap.wrap(note, max(100 - width - 2, 30)) or [""]
        out.append(f"{assignment:<{width}}# {parts[0]}")
        out += [f"{'':<{width}}# {part}" for part in parts[1:]]
    return out


def _example_tables(cls: type, prefix: str) -> list[str]:
    out = []
    for name, f in sections_of(cls):
        sub = f.default_factory  # type: ignore[misc]
        out.append(f"[{prefix}{name}]")
        out += _example_lines(sub) + [""]
        out += _example_tables(sub, f"{prefix}{name}.")
    return out


def example_toml(cls: type, header: str, arrays: Mapping[str, tuple[type, str]] | None = None
                 ) -> str:
    """The example file: ``header`` (comment lines), then every key at its default;
    ``arrays`` adds one example ``[[name]]`` table per entry, after a comment."""
    out = [header.rstrip("\n"), ""]
    top = _example_lines(cls)
    if top:
        out += top + [""]
    out += _example_tables(cls, "")
    for name, (item, comment) in (arrays or {}).items():
        out += [f"# {line}" for line in textwrap.wrap(comment, 90)]
        out.append(f"[[{name}]]")
        out += _example_lines(item) + [""]
    return "\n".join(out).rstrip("\n") + "\n"
