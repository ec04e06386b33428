"""Installing or upgrading edgecut leaves the ONNX Runtime a board already has alone.

A Jetson's ONNX Runtime comes as ``onnxruntime-gpu`` (or a wheel of NVIDIA's), which
provides the same ``onnxruntime`` module as the CPU wheel. edgecut depends on neither, so
``pip install edgecut`` and ``pip install -U edgecut`` must not bring the CPU wheel back
over it. This test builds a tiny stand-in ``onnxruntime-gpu`` wheel, installs it into a
fresh virtualenv, installs edgecut from this tree with its dependencies, upgrades it to a
newer version, and checks each time that the stand-in is the module imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_STAND_IN = '''"""A stand-in for the Jetson onnxruntime-gpu wheel (edgecut's packaging test)."""
__version__ = "1.99.0"
STAND_IN = True


def get_available_providers():
    return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _stand_in_wheel(folder: Path) -> Path:
    """``onnxruntime_gpu-1.99.0-py3-none-any.whl`` providing the ``onnxruntime`` module."""
    dist = "onnxruntime_gpu-1.99.0"
    files = {
        "onnxruntime/__init__.py": _STAND_IN.encode(),
        f"{dist}.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: onnxruntime-gpu\n"
                                       b"Version: 1.99.0\n"),
        f"{dist}.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: edgecut-test\n"
                                    b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        f"{dist}.dist-info/top_level.txt": b"onnxruntime\n",
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tree_copy(dst: Path, version: str) -> Path:
    """The distribution's files from this checkout, with ``version`` in pyproject.toml."""
    dst.mkdir(parents=True)
    for item in ("README.md", "edge", "cloud", "partition", "devices"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / item)
    text = (ROOT / "pyproject.toml").read_text()
    text, n = re.subn(r'(?m)^version = "[^"]+"$', f'version = "{version}"', text)
    assert n == 1, "pyproject.toml: no version line"
    (dst / "pyproject.toml").write_text(text)
    return dst


def _pip(venv: Path, *args: str) -> str:
    proc = subprocess.run([str(venv / "bin/python"), "-m", "pip", *args],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _which_onnxruntime(venv: Path) -> dict:
    code = ("import json, onnxruntime, importlib.metadata as m; "
            "names = sorted(d.metadata['Name'] for d in m.distributions() "
            "if d.metadata['Name'].lower().startswith('onnxruntime')); "
            "print(json.dumps({'stand_in': getattr(onnxruntime, 'STAND_IN', False), "
            "'version': onnxruntime.__version__, 'dists': names, "
            "'edgecut': m.version('edgecut')}))")
    # Run outside the checkout: its edgecut.egg-info would answer for the installed one.
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True,
                         text=True, timeout=120, check=True, cwd=venv.parent).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_install_and_upgrade_keep_the_gpu_wheel(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    _pip(venv, "install", "-q", str(_stand_in_wheel(tmp_path)))

    first = _tree_copy(tmp_path / "v1", "0.1.0")
    _pip(venv, "install", "-q", str(first))
    after_install = _which_onnxruntime(venv)
    assert after_install == {"stand_in": True, "version": "1.99.0",
                             "dists": ["onnxruntime-gpu"], "edgecut": "0.1.0"}

    second = _tree_copy(tmp_path / "v2", "0.1.1")
    _pip(venv, "install", "-q", "-U", "--upgrade-strategy", "eager", str(second))
    after_upgrade = _which_onnxruntime(venv)
    assert after_upgrade == {"stand_in": True, "version": "1.99.0",
                             "dists": ["onnxruntime-gpu"], "edgecut": "0.1.1"}

    # The installed edgecut finds the GPU wheel's providers through the stand-in module.
    doctor = subprocess.run([str(venv / "bin/edgecut"), "doctor"], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    assert "onnxruntime  1.99.0 (from onnxruntime-gpu)" in doctor.stdout
