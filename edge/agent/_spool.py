"""A bounded on-disk spool of telemetry records, one file per record.

Every telemetry record gets the next sequence number and is written to the spool before
anyone tries to publish it; it is deleted only when the broker has acknowledged it
(PUBACK). So a broker outage, a network outage or an agent restart loses nothing up to
the spool's size bound, and when the bound is reached the oldest records are evicted
first (and counted, so telemetry can say how many were dropped).

One file per record keeps each write atomic (write a temporary file, then rename) and
makes eviction and deletion O(1) without rewriting a log; telemetry is a few records a
minute, so the file count stays small.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

_SUFFIX = ".json"
_SEQ_FILE = "next_seq"


class TelemetrySpool:
    """Records waiting for a PUBACK, in sequence order, bounded to ``max_bytes`` on disk."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes: expected a positive size, got {max_bytes}")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[int, int] = OrderedDict()
        self._bytes = 0
        self.evicted = 0
        for path in sorted(self._dir.glob("*" + _SUFFIX)):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            size = path.stat().st_size
            self._sizes[seq] = size
            self._bytes += size
        for tmp in self._dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        last = next(reversed(self._sizes)) if self._sizes else -1
        self._next_seq = max(last + 1, self._read_seq())

    def _read_seq(self) -> int:
        try:
            return int((self._dir / _SEQ_FILE).read_text().strip())
        except (OSError, ValueError):
            return 0

    def _path(self, seq: int) -> Path:
        return self._dir / f"{seq:016d}{_SUFFIX}"

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def append(self, record: dict[str, Any]) -> tuple[int, bytes]:
        """Give ``record`` the next sequence number (field ``seq``), store it, return both."""
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            # The sequence counter survives restarts even when the spool is empty, so
            # sequence numbers never repeat for one device.
            self._write_atomic(self._dir / _SEQ_FILE, str(self._next_seq).encode())
            payload = json.dumps({**record, "seq": seq}, separators=(",", ":")).encode()
            self._write_atomic(self._path(seq), payload)
            self._sizes[seq] = len(payload)
            self._bytes += len(payload)
            while self._bytes > self._max_bytes and len(self._sizes) > 1:
                old, size = self._sizes.popitem(last=False)
                self._path(old).unlink(missing_ok=True)
                self._bytes -= size
                self.evicted += 1
            return seq, payload

    def delete(self, seq: int) -> None:
        """Forget ``seq`` (the broker acknowledged it); a no-op when already gone."""
        with self._lock:
            size = self._sizes.pop(seq, None)
            if size is None:
                return
            self._bytes -= size
            self._path(seq).unlink(missing_ok=True)

    def pending(self) -> list[int]:
        """Sequence numbers still waiting for an acknowledgement, oldest first."""
        with self._lock:
            return list(self._sizes)

    def read(self, seq: int) -> bytes | None:
        """The stored payload of ``seq``, or ``None`` when it was evicted or deleted."""
        try:
            return self._path(seq).read_bytes()
        except OSError:
            return None

    def __contains__(self, seq: int) -> bool:
        with self._lock:
            return seq in self._sizes

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def next_seq(self) -> int:
        with self._lock:
            return self._next_seq
