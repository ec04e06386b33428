"""Model versions on disk (``<data_dir>/models/<name>/<version>/``) and ``state.json``,
the persisted choice of the serving one."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from edge.agent._slots import ModelVersion


class ModelStore:
    """Model versions on disk and the persisted choice of the serving one."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"
        self._lock = threading.Lock()

    def version_dir(self, model: str, version: str) -> Path:
        return self.root / model / version

    def staging_dir(self, model: str, version: str) -> Path:
        return self.root / model / ".incoming" / version

    def state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._state_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def record(self, model: str, current: ModelVersion, previous: ModelVersion | None) -> None:
        with self._lock:
            state = self.state()
            state[model] = {
                "version": current.version,
                "path": current.path,
                "previous": None
                if previous is None
                else {"version": previous.version, "path": previous.path},
            }
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, self._state_path)

    def forget(self, model: str) -> None:
        """Drop ``model`` from the persisted state (it is no longer served)."""
        with self._lock:
            state = self.state()
            if state.pop(model, None) is not None:
                tmp = self._state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=1))
                os.replace(tmp, self._state_path)

    def prune(self, model: str, keep: list[str], keep_count: int) -> list[str]:
        """Delete version folders beyond the newest ``keep_count``, never those in ``keep``."""
        folder = self.root / model
        if not folder.is_dir():
            return []
        dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.stat().st_mtime)
        removed = []
        excess = len(dirs) - keep_count
        for d in dirs:
            if excess <= 0:
                break
            if d.name in keep:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
            excess -= 1
        return removed
