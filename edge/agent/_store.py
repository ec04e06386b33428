"""Model versions on disk (``<data_dir>/models/<name>/<version>/``) and ``state.json``,
the persisted choice of the serving one.

Every folder the store creates, renames or removes is named by a checked model name and
version (:func:`edge.agent._names.check_name`) and proven to lie inside the store, links
resolved, just before it is touched; ``state.json`` is written durably with a last good
copy and read defensively (:mod:`edge.agent._durable`).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from edge.agent._durable import check_model_state, log_ignored, read_state, write_state
from edge.agent._names import check_name, inside, is_inside
from edge.agent._slots import ModelVersion


class ModelStore:
    """Model versions on disk and the persisted choice of the serving one."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"
        self._lock = threading.Lock()
        self._reported: tuple[str, ...] = ()

    def version_dir(self, model: str, version: str) -> Path:
        check_name(model, "model")
        check_name(version, "version")
        path = self.root / model / version
        inside(self.root, path)
        return path

    def staging_dir(self, model: str, version: str) -> Path:
        check_name(model, "model")
        check_name(version, "version")
        path = self.root / model / ".incoming" / version
        inside(self.root, path)
        return path

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` lies inside the store (links resolved)."""
        return is_inside(self.root, path)

    def remove(self, path: Path) -> None:
        """Remove a folder of the store; refuses (raises) anything outside it."""
        if not os.path.lexists(path):
            return
        inside(self.root, path)
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)

    def move(self, src: Path, dest: Path) -> None:
        inside(self.root, src)
        inside(self.root, dest)
        os.replace(src, dest)

    def state(self) -> dict[str, dict[str, Any]]:
        """The well-formed entries of ``state.json`` (or of its last good copy)."""
        data, notes = read_state(self._state_path, check_model_state)
        if tuple(notes) != self._reported:  # one log line per new problem, not per read
            self._reported = tuple(notes)
            log_ignored("state_ignored", self._state_path, notes)
        return data

    def _write(self, state: dict[str, Any]) -> None:
        write_state(self._state_path, state)

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
            self._write(state)

    def forget(self, model: str) -> None:
        """Drop ``model`` from the persisted state (it is no longer served)."""
        with self._lock:
            state = self.state()
            if state.pop(model, None) is not None:
                self._write(state)

    def prune(self, model: str, keep: list[str], keep_count: int) -> list[str]:
        """Delete version folders beyond the newest ``keep_count``, never those in ``keep``."""
        check_name(model, "model")
        folder = self.root / model
        if not folder.is_dir() or not is_inside(self.root, folder):
            return []
        dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.is_symlink()
                       and not d.name.startswith(".") and is_inside(self.root, d)),
                      key=lambda d: d.stat().st_mtime)
        removed = []
        excess = len(dirs) - keep_count
        for d in dirs:
            if excess <= 0:
                break
            if d.name in keep:
                continue
            self.remove(d)
            removed.append(d.name)
            excess -= 1
        return removed
