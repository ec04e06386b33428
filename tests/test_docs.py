"""Every example in README.md and docs/*.md runs here, so the docs cannot rot.

- ```console blocks: each ``$ command`` line (with ``\\`` continuations and here-documents)
  runs, in order (each fixed port it uses replaced by a free one),
  as one bash script per document in a scratch folder, with ``.venv/bin`` first on PATH.
  A command ending in ``&`` runs in the background and is stopped when the document ends.
  Lines without ``$`` are sample output and are not compared (timings differ per run).
- ```toml blocks whose first line is ``# policy.toml``, ``# agent.toml`` or
  ``# device profile`` are loaded by that file's own validating loader; others must parse.
- ```json blocks must parse.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(path: Path, lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(path.read_text()) if kind == lang]


_HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")


def _commands(block: str) -> list[str]:
    """The ``$`` commands of a console block, with continuations and here-documents."""
    commands, current, heredoc_end = [], "", None
    for line in block.splitlines():
        if heredoc_end is not None:
            current += "\n" + line
            if line.strip() == heredoc_end:
                commands.append(current)
                current, heredoc_end = "", None
            continue
        if current:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        else:
            continue
        match = _HEREDOC.search(line)
        if match:
            heredoc_end = match.group(1)
            continue
        if not current.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def _load_toml_example(text: str, where: str) -> None:
    first = text.lstrip().splitlines()[0].strip() if text.strip() else ""
    if first == "# policy.toml":
        from edge.policy import load_policy_text

        load_policy_text(text, where)
    elif first == "# agent.toml":
        from edge.agent._config import load_agent_config_text

        load_agent_config_text(text, where)
    elif first == "# device profile":
        from devices import parse_profile
        from devices.config import parse_toml

        parse_profile(parse_toml(text, where), where)
    else:
        from devices.config import parse_toml

        parse_toml(text, where)


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_structured_examples_are_valid(doc: Path) -> None:
    for i, block in enumerate(_blocks(doc, "toml")):
        _load_toml_example(block, f"{doc.name} toml example {i + 1}")
    for block in _blocks(doc, "json"):
        json.loads(block)


# A port an example binds or talks to: after --port/--http-port/... or in a loopback URL.
_PORT = re.compile(r"(?:--[a-z-]*port[= ]|127\.0\.0\.1:|localhost:)(\d{4,5})\b")


def _free_ports(commands: list[str]) -> list[str]:
    """The commands with each fixed port an example uses replaced by a free one (the same
    replacement throughout the document), so anything else on that port cannot fail it."""
    from tests.conftest import free_port

    fixed = sorted({p for c in commands for p in _PORT.findall(c)})
    mapping = {p: str(free_port()) for p in fixed}
    if not mapping:
        return commands
    pattern = re.compile(r"\b(" + "|".join(fixed) + r")\b")
    return [pattern.sub(lambda m: mapping[m.group(1)], c) for c in commands]


def test_examples_get_free_ports() -> None:
    got = _free_ports(["edgecut agent --port 18800 --x", "edgecut health http://127.0.0.1:18800",
                       "echo 18800 and 2018800"])
    port = got[0].split()[3]
    assert port != "18800" and got[1] == f"edgecut health http://127.0.0.1:{port}"
    assert got[2] == f"echo {port} and 2018800"  # every use of the port, whole numbers only


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_console_examples_run(doc: Path, tmp_path: Path) -> None:
    commands = _free_ports([c for block in _blocks(doc, "console") for c in _commands(block)])
    if not commands:
        # Nothing to run in this document: its examples are all checked above.
        assert not _blocks(doc, "console")
        return
    script = ["set -euo pipefail", "trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT"]
    for command in commands:
        script.append(f"echo {shlex.quote('+ ' + command.splitlines()[0])} >&2")
        script.append(command)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["EDGECUT_DOCS_TEST"] = "1"
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"{doc.name}: an example failed (exit {proc.returncode})\n"
        f"--- stderr ---\n{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"
    )


def test_config_reference_and_examples_follow_the_schemas() -> None:
    """docs/policy.md's and docs/agent.md's key tables and edge/data/*.example.toml are
    written from the schemas in edge/policy/_config.py and edge/agent/_config.py (run
    scripts/config_docs.py after changing a key)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ```text blocks of docs/jetson.md that start with "$ edgecut doctor": the output shown is
# what the command prints, run from the repository root (the recorded boards under
# tests/devices/data, and this host). Lines about this interpreter's packages are compared
# with their version numbers masked, so an upgrade does not make the page wrong.
_DOCTOR_DOC = ROOT / "docs" / "jetson.md"
_ENV_LABELS = ("python", "onnxruntime", "litert")
_VERSION = re.compile(r"\d+(\.\d+)+")


def _doctor_examples() -> list[tuple[str, list[str]]]:
    examples = []
    for block in _blocks(_DOCTOR_DOC, "text"):
        lines = block.rstrip("\n").splitlines()
        if lines and lines[0].startswith("$ edgecut doctor"):
            examples.append((lines[0][2:], lines[1:]))
    return examples


def _masked(lines: list[str]) -> list[str]:
    return [_VERSION.sub("N", line) if line.split(" ", 1)[0] in _ENV_LABELS else line
            for line in lines]


def test_doctor_output_in_the_jetson_guide_is_what_doctor_prints() -> None:
    examples = _doctor_examples()
    roots = sorted(c.split("--root ", 1)[1] for c, _ in examples if "--root " in c)
    assert roots == ["tests/devices/data/jetson-nano", "tests/devices/data/jetson-orin-nano",
                     "tests/devices/data/jetson-xavier-nx"]
    assert any("--root" not in c for c, _ in examples), "no example for this host"
    for command, shown in examples:
        proc = subprocess.run([str(Path(sys.executable).parent / "edgecut"),
                               *shlex.split(command)[1:]],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert _masked(proc.stdout.rstrip("\n").splitlines()) == _masked(shown), (
            f"docs/jetson.md: `{command}` prints:\n{proc.stdout}")
