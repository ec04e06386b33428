"""What an application on the device pays for ``from edge import Client``."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
before = set(sys.modules)
from edge import Client
print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))
"""


_STDLIB_PROBE = """
import importlib.util, json, sys, sysconfig
stdlib = sysconfig.get_paths()["stdlib"]
out = []
for name in json.loads(sys.argv[1]):
    spec = importlib.util.find_spec(name)
    origin = (spec.origin or "") if spec else ""
    if origin in ("built-in", "frozen") or (origin.startswith(stdlib)
                                           and "site-packages" not in origin):
        out.append(name)
print(json.dumps(out))
"""


def _stdlib_names(candidates: set[str]) -> set[str]:
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return set(names)
    # Python 3.8/3.9 have no list: a module is the standard library's when it is built in
    # or was loaded from the interpreter's stdlib folder (not its site-packages).
    out = subprocess.run([sys.executable, "-c", _STDLIB_PROBE, json.dumps(sorted(candidates))],
                         check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def test_client_import_needs_only_numpy_and_the_standard_library() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True,
                         text=True).stdout
    loaded = set(json.loads(out))
    # cython_runtime: the module NumPy 1.x's Cython extensions register (no file of its own).
    ours = {"edge", "devices", "numpy", "cython_runtime"}
    stdlib = _stdlib_names(loaded)
    foreign = sorted(m for m in loaded - ours if not m.startswith("_") and m not in stdlib)
    assert foreign == [], f"from edge import Client imported {foreign}"
    heavy = {"onnx", "onnxruntime", "httpx", "partition", "cloud", "click", "rich", "paho",
             "uvicorn", "jwt", "cryptography", "httptools", "yaml", "matplotlib"}
    assert not loaded & heavy


def test_lazy_names_still_resolve() -> None:
    import edge

    assert edge.Executor.__name__ == "Executor"
    assert edge.load_trace.__module__ == "edge.lab._traces"
    try:
        edge.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
