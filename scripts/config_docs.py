"""Write the config reference tables in the docs and the example files from the schemas.

Each config file's keys are declared once (``devices.schema``): ``policy.toml`` in
``edge/policy/_config.py``, ``agent.toml`` in ``edge/agent/_config.py``. This writes, from those declarations, the reference tables
between the ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` markers of
the docs and the example files. ``--check`` only reports what differs (the docs test runs
it) and exits 1 when anything does.

    python scripts/config_docs.py          # rewrite
    python scripts/config_docs.py --check  # compare
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def targets() -> list[tuple[Path, str | None, str]]:
    """``(file, marker name or None for a whole file, generated text)``."""
    from devices.schema import docs_table, docs_tables, example_toml
    from edge.agent import _config as agent
    from edge.policy._config import EXAMPLE_HEADER, PolicyConfig

    agent_tables = (docs_tables(agent.AgentFile, "####", agent.FLAG_NOTES)
                    + "\n#### `[[models]]`\n\n" + agent.MODELS_COMMENT + "\n\n"
                    + docs_table(agent.ModelConfig, agent.FLAG_NOTES, ("signed",)) + "\n")
    return [
        (ROOT / "docs" / "policy.md", "policy.toml", docs_tables(PolicyConfig)),
        (ROOT / "edge" / "data" / "policy.example.toml", None,
         example_toml(PolicyConfig, EXAMPLE_HEADER)),
        (ROOT / "docs" / "agent.md", "agent.toml", agent_tables),
        (ROOT / "edge" / "data" / "agent.example.toml", None,
         example_toml(agent.AgentFile, agent.EXAMPLE_HEADER,
                      {"models": (agent.ModelConfig, agent.MODELS_COMMENT)})),
    ]


def _spliced(text: str, name: str, body: str, path: Path) -> str:
    begin = f"<!-- generated: {name} (scripts/config_docs.py; edit the schema, not this) -->"
    end = f"<!-- end generated: {name} -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no '{begin}' ... '{end}' markers")
    return pattern.sub(lambda _: f"{begin}\n\n{body}\n{end}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for path, marker, body in targets():
        old = path.read_text()
        new = body if marker is None else _spliced(old, marker, body, path)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        verb = "differs from its schema" if args.check else "rewritten"
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    raise SystemExit(main())
