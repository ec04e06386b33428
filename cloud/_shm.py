"""The system shared memory extension of the Open Inference Protocol (as Triton defines it).

A client on the same host puts a tensor in a POSIX shared memory object (``/dev/shm/<key>``),
registers a named *region* of it once (``POST /v2/systemsharedmemory/region/<name>/register``
with ``{"key", "offset", "byte_size"}``), and then sends only the JSON header of each
request: an input whose parameters carry ``shared_memory_region`` and
``shared_memory_byte_size`` (and optionally ``shared_memory_offset``) is read from the
region, and an output requested with the same parameters is written into its region
instead of into the response body.

The server may hold more rights than its clients (it often runs as another user, or as
root on a device), so the extension is built not to act as their deputy:

* a key is opened with ``O_NOFOLLOW | O_NONBLOCK`` (no symbolic link is followed, a FIFO
  cannot block the opener) and must be a regular file;
* the file must belong to the caller: over a Unix socket to the peer's uid (``SO_PEERCRED``),
  over TCP loopback to the server's own uid or one of ``allowed_uids``;
* each region belongs to the principal that registered it (a token's subject, else the
  Unix peer's uid, else the peer's address); names live in one namespace per principal,
  so another principal can neither use, list, nor unregister it (to it, the region does
  not exist);
* data moves with ``pread``/``pwrite`` on the file descriptor after checking the file's
  current size, never through a mapping: a client that truncates its file gets a 400
  naming the region instead of killing the server with SIGBUS.

Every bad request raises :class:`cloud.errors.ProtocolError` (HTTP 400) naming the region
and the tensor; a caller not on this host gets :class:`cloud.errors.Forbidden`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.errors import Forbidden, NotFound, ProtocolError

__all__ = ["Caller", "SharedMemoryRegistry", "SHM_ROOT"]

#: Where POSIX shared memory objects live (``shm_open`` names map to files here on Linux).
SHM_ROOT = "/dev/shm"

# A shm_open name: one leading slash (optional here), then no slash and no "." / "..".
_KEY_RE = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")

#: Regions one principal may hold at once (each keeps a file descriptor open).
MAX_REGIONS_PER_PRINCIPAL = 256


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: object, what: str, minimum: int) -> None:
    """Refuse ``value`` unless it is an integer >= ``minimum`` (0 or 1), naming ``what``."""
    if not _is_int(value) or value < minimum:  # type: ignore[operator]
        kind = "a positive" if minimum > 0 else "a non-negative"
        raise ProtocolError(f"{what} must be {kind} integer, got {value!r}")


@dataclass(frozen=True)
class Caller:
    """Who uses the extension: the principal its regions belong to, and what is known of
    the process behind the connection.

    ``principal``: ``"sub:<token subject>"``, ``"uid:<n>"`` (a Unix-socket peer without a
    token) or ``"addr:<ip>"`` (a TCP peer without a token). ``uid``: the peer's uid when the
    kernel told it (Unix socket), else ``None``. ``local``: on this host (loopback address or
    Unix socket); only local callers may use shared memory at all.
    """

    principal: str
    uid: int | None = None
    local: bool = True


@dataclass(frozen=True, eq=False)
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    file: io.FileIO  # closed when the last reference goes (requests in progress hold one)
    writable: bool

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}

    def check_size(self, tensor: str, end: int) -> None:
        """Refuse when the file no longer reaches ``end`` (the client truncated it)."""
        size = os.fstat(self.file.fileno()).st_size
        if end > size:
            raise ProtocolError(
                f"tensor {tensor!r}: shared memory region {self.name!r} (key {self.key!r}) "
                f"is now {size} bytes, the tensor needs bytes up to {end}; was the file "
                "truncated?")


class SharedMemoryRegistry:
    """Registered system shared memory regions of one server. Thread-safe.

    ``allowed_uids``: besides the server's own uid, the owners whose files a TCP loopback
    caller may register (a Unix-socket caller may register only its own files).
    """

    def __init__(self, root: str = SHM_ROOT, allowed_uids: Iterable[int] = ()) -> None:
        self.root = root
        self.allowed_uids = frozenset(allowed_uids) | {os.geteuid()}
        self._regions: dict[tuple[str, str], _Region] = {}
        self._lock = threading.Lock()

    def for_caller(self, caller: Caller) -> _CallerView:
        """The registry as ``caller`` sees it (what request decoding reads inputs through)."""
        _require_local(caller)
        return _CallerView(self, caller)

    # ------------------------------------------------------------------ registration

    def register(self, name: str, body: Mapping[str, Any], caller: Caller) -> None:
        """Open ``/dev/shm/<key>`` and keep ``byte_size`` bytes from ``offset`` as ``name``,
        a region of ``caller``'s."""
        _require_local(caller)
        if not _NAME_RE.match(name):
            raise ProtocolError(
                f"shared memory region name {name!r}: expected 1-200 letters, digits, '_', "
                "'.' or '-'")
        key = body.get("key")
        offset = body.get("offset", 0)
        byte_size = body.get("byte_size")
        if not isinstance(key, str) or not _KEY_RE.match(key) or key.strip("/") in (".", ".."):
            raise ProtocolError(
                f"shared memory region {name!r}: 'key' must be a shm_open name like "
                f"'/my_key' (no other '/'), got {key!r}")
        _check_int(offset, f"shared memory region {name!r}: 'offset'", 0)
        _check_int(byte_size, f"shared memory region {name!r}: 'byte_size'", 1)
        slot = (caller.principal, name)
        with self._lock:
            self._check_room(slot, name, caller)
        file, writable = self._open(name, key, caller)
        size = os.fstat(file.fileno()).st_size
        if offset + byte_size > size:
            file.close()
            raise ProtocolError(
                f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} "
                f"runs past the {size} bytes of key {key!r}")
        with self._lock:
            try:
                self._check_room(slot, name, caller)  # a concurrent registration may have won
            except ProtocolError:
                file.close()
                raise
            self._regions[slot] = _Region(name, key, offset, byte_size, file, writable)

    def _check_room(self, slot: tuple[str, str], name: str, caller: Caller) -> None:
        if slot in self._regions:
            raise ProtocolError(
                f"shared memory region {name!r} is already registered; unregister it first")
        held = sum(1 for principal, _ in self._regions if principal == caller.principal)
        if held >= MAX_REGIONS_PER_PRINCIPAL:
            raise ProtocolError(
                f"shared memory region {name!r}: {caller.principal} already holds "
                f"{held} regions, the limit; unregister some first")

    def _open(self, name: str, key: str, caller: Caller) -> tuple[io.FileIO, bool]:
        path = os.path.join(self.root, key.lstrip("/"))
        # O_NOFOLLOW: a symbolic link (to /etc/passwd, to another user's file) is refused
        # rather than followed; O_NONBLOCK: opening a FIFO planted under the key cannot
        # hang the opener (it is refused below as not a regular file).
        base = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | base)
        except PermissionError:
            writable = False  # inputs only: outputs into it are refused with a clear error
            try:
                fd = os.open(path, os.O_RDONLY | base)
            except OSError as exc:
                raise _open_error(name, key, exc) from None
        except OSError as exc:
            raise _open_error(name, key, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ProtocolError(
                    f"shared memory region {name!r}: key {key!r} is not a regular file")
            if caller.uid is not None:
                if info.st_uid != caller.uid:
                    raise ProtocolError(
                        f"shared memory region {name!r}: key {key!r} belongs to uid "
                        f"{info.st_uid}, not to the caller (uid {caller.uid})")
            elif info.st_uid not in self.allowed_uids:
                raise ProtocolError(
                    f"shared memory region {name!r}: key {key!r} belongs to uid "
                    f"{info.st_uid}; over TCP only files of uids "
                    f"{sorted(self.allowed_uids)} may be registered (connect over the Unix "
                    "socket to use your own files)")
            return io.FileIO(fd, "r+b" if writable else "rb", closefd=True), writable
        except BaseException:
            os.close(fd)
            raise

    def unregister(self, name: str | None, caller: Caller) -> None:
        """Forget ``caller``'s region ``name``, or all of its regions when ``name`` is ``None``.

        Unregistering a name that is not registered is not an error (as in Triton); another
        principal's region of the same name is not touched.
        """
        _require_local(caller)
        with self._lock:
            if name is None:
                for slot in [s for s in self._regions if s[0] == caller.principal]:
                    del self._regions[slot]
            else:
                self._regions.pop((caller.principal, name), None)

    def status(self, name: str | None, caller: Caller) -> list[dict[str, Any]]:
        """Triton's status form for ``caller``'s regions: a list of ``{name, key, offset,
        byte_size}``."""
        _require_local(caller)
        with self._lock:
            if name is None:
                return [r.status() for (p, _), r in sorted(self._regions.items())
                        if p == caller.principal]
            region = self._regions.get((caller.principal, name))
        if region is None:
            raise NotFound(f"shared memory region {name!r} is not registered")
        return [region.status()]

    def __len__(self) -> int:
        return len(self._regions)

    def _lookup(self, caller: Caller, name: str) -> _Region | None:
        with self._lock:
            return self._regions.get((caller.principal, name))


class _CallerView:
    """The regions of one caller: what request decoding and the output writer use."""

    def __init__(self, registry: SharedMemoryRegistry, caller: Caller) -> None:
        self._registry = registry
        self._caller = caller

    def _window(self, tensor: str, params: Mapping[str, Any]) -> tuple[_Region, int, int]:
        """The region and the absolute ``(start, size)`` a tensor's parameters name."""
        name = params.get("shared_memory_region")
        size = params.get("shared_memory_byte_size")
        offset = params.get("shared_memory_offset", 0)
        if not isinstance(name, str):
            raise ProtocolError(
                f"tensor {tensor!r}: shared_memory_region must be a string, got {name!r}")
        _check_int(size, f"tensor {tensor!r}: shared_memory_byte_size", 0)
        _check_int(offset, f"tensor {tensor!r}: shared_memory_offset", 0)
        region = self._registry._lookup(self._caller, name)
        if region is None:
            raise ProtocolError(
                f"tensor {tensor!r}: shared memory region {name!r} is not registered")
        if offset + size > region.byte_size:
            raise ProtocolError(
                f"tensor {tensor!r}: shared_memory_offset {offset} + shared_memory_byte_size "
                f"{size} runs past the {region.byte_size} bytes of region {name!r}")
        return region, region.offset + offset, size

    def read(self, tensor: str, datatype: str, shape: tuple[int, ...],
             params: Mapping[str, Any]) -> np.ndarray:
        """Input ``tensor``, copied out of its region with ``pread``."""
        from cloud._tensors import DATATYPES, decode_bytes_elements

        region, start, size = self._window(tensor, params)
        count = 1
        for d in shape:
            count *= d
        if datatype != "BYTES":
            expected = count * DATATYPES[datatype].itemsize
            if size != expected:
                raise ProtocolError(
                    f"tensor {tensor!r}: shape {list(shape)} of {datatype} needs {expected} "
                    f"bytes, shared_memory_byte_size is {size} (region {region.name!r})")
        region.check_size(tensor, start + size)
        buf = np.empty(size, dtype=np.uint8)
        view = memoryview(buf)
        done = 0
        fd = region.file.fileno()
        while done < size:
            got = os.preadv(fd, [view[done:]], start + done)
            if got <= 0:  # truncated between the size check and the read
                raise ProtocolError(
                    f"tensor {tensor!r}: shared memory region {region.name!r} (key "
                    f"{region.key!r}) ended after {done} of {size} bytes; was the file "
                    "truncated?")
            done += got
        if datatype == "BYTES":
            return decode_bytes_elements(tensor, view, count).reshape(shape)
        array = buf.view(DATATYPES[datatype]).reshape(shape)
        if datatype == "BOOL" and array.size and np.any(buf > 1):
            raise ProtocolError(f"tensor {tensor!r}: BOOL bytes must be 0 or 1")
        return array

    def check_output(self, tensor: str, params: Mapping[str, Any]) -> None:
        """Fail early (before inference) when an output's region parameters are wrong."""
        region, _start, _size = self._window(tensor, params)
        if not region.writable:
            raise ProtocolError(
                f"output {tensor!r}: region {region.name!r} (key {region.key!r}) is read-only "
                "for the server")

    def write(self, tensor: str, array: np.ndarray, params: Mapping[str, Any]) -> int:
        """Copy output ``array`` into its region with ``pwrite``; returns the bytes written."""
        region, start, size = self._window(tensor, params)
        if array.dtype.kind in "OSU":
            raise ProtocolError(
                f"output {tensor!r}: BYTES outputs cannot be written to shared memory here")
        data = np.ascontiguousarray(array)
        data = data.astype(data.dtype.newbyteorder("<"), copy=False)
        if data.nbytes > size:
            raise ProtocolError(
                f"output {tensor!r}: {data.nbytes} bytes do not fit shared_memory_byte_size "
                f"{size} (region {region.name!r})")
        if not region.writable:
            raise ProtocolError(
                f"output {tensor!r}: region {region.name!r} (key {region.key!r}) is read-only "
                "for the server")
        # Never past the file's end: pwrite would grow a file the client shrank.
        region.check_size(tensor, start + data.nbytes)
        view = memoryview(data).cast("B")
        done = 0
        fd = region.file.fileno()
        while done < len(view):
            done += os.pwrite(fd, view[done:], start + done)
        return data.nbytes


def _require_local(caller: Caller) -> None:
    if not caller.local:
        raise Forbidden(f"system shared memory is for clients on this host only, not "
                        f"{caller.principal}")


def _open_error(name: str, key: str, exc: OSError) -> ProtocolError:
    import errno

    if exc.errno == errno.ELOOP:
        return ProtocolError(
            f"shared memory region {name!r}: key {key!r} is a symbolic link; links are "
            "not followed")
    return ProtocolError(f"shared memory region {name!r}: cannot open key {key!r} "
                         f"({exc.strerror})")
