"""A bounded on-disk spool of telemetry records, one file per record.

Every telemetry record gets the next sequence number and is written to the spool before
anyone tries to publish it; it is deleted only when the broker has acknowledged it
(PUBACK). So a broker outage, a network outage or an agent restart loses nothing up to
the spool's size bound, and when the bound is reached the oldest records are evicted
first (and counted, so telemetry can say how many were dropped).

One file per record keeps each write atomic (write a temporary file, then rename) and
makes eviction and deletion O(1) without rewriting a log; telemetry is a few records a
minute, so the file count stays small.

Faults (the disk is full, a file is damaged) never stop telemetry for good:

- A write that fails (``ENOSPC``, ``EIO``, ...) sets ``error`` (one log line says so),
  evicts the oldest record and tries once more; when that fails too, or nothing was
  spooled, the new record is dropped (``dropped`` counts them). The first write that
  succeeds at once clears ``error`` and logs the recovery. Nothing waits for an operator.
- A sequence number is handed out only after ``next_seq`` beyond it is on disk (fsync of
  the file and its folder), so no number that was ever published is used again. A damaged
  ``next_seq`` is replaced by the time in milliseconds (a jump, never a repeat: numbers
  grow by about one per record) and the jump is logged.
- A record file that does not hold its own JSON record (``seq`` matching its name) is
  never published: it is deleted and logged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

_SUFFIX = ".json"
_SEQ_FILE = "next_seq"

log = logging.getLogger("edgecut.fleet.spool")


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
        self.dropped = 0
        self.corrupt = 0
        self.error = ""
        for path in sorted(self._dir.glob("*" + _SUFFIX)):
            try:
                seq = int(path.stem)
                size = path.stat().st_size
            except (ValueError, OSError):
                continue
            if seq < 0:
                continue
            self._sizes[seq] = size
            self._bytes += size
        for tmp in self._dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        last = next(reversed(self._sizes)) if self._sizes else -1
        self._next_seq = max(last + 1, self._read_seq())

    def _read_seq(self) -> int:
        path = self._dir / _SEQ_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            text = f"<unreadable: {exc}>"
        try:
            value = int(text.strip())
            if value >= 0:
                return value
        except ValueError:
            pass
        # Numbers before the damage may have been published: jump past any of them.
        floor = int(time.time() * 1000)
        log.error(json.dumps({"event": "spool_next_seq_ignored", "file": str(path),
                              "content": text[:64], "continuing_from": floor}))
        return floor

    def _path(self, seq: int) -> Path:
        return self._dir / f"{seq:016d}{_SUFFIX}"

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass  # not every file system fsyncs folders; the rename is atomic anyway
        finally:
            os.close(fd)

    def _evict_oldest(self) -> None:
        old, size = self._sizes.popitem(last=False)
        self._path(old).unlink(missing_ok=True)
        self._bytes -= size
        self.evicted += 1

    def _store(self, seq: int, payload: bytes) -> None:
        # The sequence counter is on disk beyond ``seq`` before ``seq`` can be published,
        # so sequence numbers never repeat for one device, even across restarts.
        self._write_atomic(self._dir / _SEQ_FILE, str(seq + 1).encode())
        self._write_atomic(self._path(seq), payload)

    def _failed(self, exc: OSError) -> None:
        if not self.error:
            log.error(json.dumps({"event": "spool_write_failed", "dir": str(self._dir),
                                  "error": f"{type(exc).__name__}: {exc}",
                                  "policy": "the oldest record makes room; when it cannot, "
                                            "the new record is dropped"}))
        self.error = f"{type(exc).__name__}: {exc}"

    def append(self, record: dict[str, Any]) -> tuple[int, bytes | None]:
        """Give ``record`` the next sequence number (field ``seq``), store it, return both.

        The payload is ``None`` when the record could not be stored and was dropped.
        """
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1  # used even when the write fails: never handed out twice
            payload = json.dumps({**record, "seq": seq}, separators=(",", ":")).encode()
            try:
                self._store(seq, payload)
            except OSError as exc:
                self._failed(exc)
                stored = False
                if self._sizes:
                    # The drop policy: the oldest record makes room, once; when that is
                    # not enough (or nothing is spooled) the new record is dropped.
                    self._evict_oldest()
                    try:
                        self._store(seq, payload)
                        stored = True
                    except OSError as again:
                        self._failed(again)
                if not stored:
                    self.dropped += 1
                    return seq, None
            else:
                if self.error:
                    log.warning(json.dumps({"event": "spool_recovered", "dir": str(self._dir),
                                            "dropped": self.dropped, "evicted": self.evicted}))
                    self.error = ""
            self._sizes[seq] = len(payload)
            self._bytes += len(payload)
            while self._bytes > self._max_bytes and len(self._sizes) > 1:
                self._evict_oldest()
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
        """The stored payload of ``seq``; ``None`` when it was evicted, deleted or damaged
        (a damaged one is deleted and logged, never published)."""
        try:
            data = self._path(seq).read_bytes()
        except OSError:
            return None
        try:
            record = json.loads(data.decode("utf-8"))
            ok = isinstance(record, dict) and record.get("seq") == seq
        except (UnicodeDecodeError, ValueError, RecursionError):
            ok = False
        if ok:
            return data
        self.corrupt += 1
        log.error(json.dumps({"event": "spool_record_dropped", "seq": seq,
                              "file": str(self._path(seq)), "bytes": len(data),
                              "reason": "not the JSON record of this sequence number"}))
        self.delete(seq)
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
