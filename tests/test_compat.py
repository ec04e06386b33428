"""The device side runs on Python 3.8 (JetPack 5) to 3.13.

``make test`` also runs the device suite under Python 3.8 and 3.10 (see the Makefile);
these checks run under every interpreter and catch what a test might not reach:

- vermin: standard-library features newer than 3.8 (``zip(strict=)``,
  ``asyncio.to_thread``, ``str.removeprefix``, ...);
- union types and builtin generics evaluated at run time (``isinstance(x, A | B)``,
  ``Alias = dict[str, int]``), which ``from __future__ import annotations`` does not cover
  and vermin does not look for;
- every module imports (under 3.8 in the device suite, that evaluates each module's
  top level on the old interpreter).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "devices", "partition", "cloud")
# Modules that are not part of the device side: plotting needs matplotlib, which the
# device suites do not install (`edgecut partition --figure` is a workstation tool).
NOT_DEVICE_SIDE = {"partition._figure"}
_GENERICS = {"dict", "list", "tuple", "set", "frozenset", "type"}
_BUILTIN_TYPES = _GENERICS | {"str", "bytes", "bytearray", "int", "float", "bool", "complex",
                              "object"}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _device_tests() -> list[str]:
    """The device suite's test files and what they load (they run on Python 3.8 too)."""
    listed = (ROOT / "scripts/device-suite/tests.txt").read_text().split()
    helpers = ["tests/conftest.py", "tests/onnx_files.py", "tests/edge/conftest.py"]
    return [p for p in listed + helpers if (ROOT / p).exists()]


def test_no_standard_library_feature_newer_than_python_38() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())",
         "--target=3.8-", "--violations", "--no-tips",
         "--no-parse-comments", *PACKAGES, *_device_tests()],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"Python 3.9+ features in the device side:\n{proc.stdout}"


def _run_time_newer_syntax(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass") and len(node.args) == 2
                and isinstance(node.args[1], ast.BinOp) and isinstance(node.args[1].op, ast.BitOr)):
            found.append((node.lineno, f"{node.func.id}(..., A | B) needs Python 3.10"))
    body = list(getattr(tree, "body", []))
    # collections.abc's classes take [...] only from Python 3.9 (typing's do on 3.8).
    abc_names = {alias.asname or alias.name for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "collections.abc"
                 for alias in node.names}
    generics = _GENERICS | abc_names
    for stmt in body + [s for c in body if isinstance(c, ast.ClassDef) for s in c.body]:
        # Module and class level assignments run at import; annotations do not.
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if value is None:
            continue
        for sub in ast.walk(value):
            if (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name)
                    and sub.value.id in generics):
                found.append((stmt.lineno, f"{sub.value.id}[...] evaluated at import needs "
                                           "Python 3.9 (use typing's Dict, List, ...)"))
            if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.BitOr) and any(
                    isinstance(side, ast.Subscript)
                    or (isinstance(side, ast.Constant) and side.value is None)
                    or (isinstance(side, ast.Name) and side.id in _BUILTIN_TYPES)
                    for side in (sub.left, sub.right)):
                found.append((stmt.lineno, "a union type evaluated at import needs Python 3.10"))
    return found


def test_no_union_types_or_builtin_generics_at_run_time() -> None:
    problems = []
    for path in _sources():
        for line, what in _run_time_newer_syntax(ast.parse(path.read_text(), str(path))):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not problems, "\n".join(problems)


def test_the_checker_finds_what_it_looks_for() -> None:
    sample = ("from collections.abc import Sequence\n"
              "Alias = dict[str, int]\nOpt = list[int] | None\n"
              "def f(x):\n    return isinstance(x, int | str)\n"
              "Seq = Sequence[int]\nSpec = str | Path\nFlags = READ | WRITE\n")
    lines = sorted({line for line, _ in _run_time_newer_syntax(ast.parse(sample))})
    assert lines == [2, 3, 5, 6, 7]
    assert _run_time_newer_syntax(ast.parse("x: dict[str, int] | None = None\n")) == []


def _modules() -> list[str]:
    names = []
    for path in _sources():
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in NOT_DEVICE_SIDE:
            names.append(name)
    return names


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)
