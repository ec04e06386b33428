"""The system shared memory extension of the Open Inference Protocol (as Triton defines it).

A client on the same host puts a tensor in a POSIX shared memory object (``/dev/shm/<key>``),
registers a named *region* of it once (``POST /v2/systemsharedmemory/region/<name>/register``
with ``{"key", "offset", "byte_size"}``), and then sends only the JSON header of each
request: an input whose parameters carry ``shared_memory_region`` and
``shared_memory_byte_size`` (and optionally ``shared_memory_offset``) is read straight from
the mapping, as a read-only NumPy view with no copy. An output requested with the same
parameters is written into its region instead of into the response body.

This module owns the registry: name -> mapping, with the bounds checks. Every bad request
raises :class:`cloud.errors.ProtocolError` (HTTP 400) naming the region and the tensor.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.errors import NotFound, ProtocolError

__all__ = ["SharedMemoryRegistry", "SHM_ROOT"]

#: Where POSIX shared memory objects live (``shm_open`` names map to files here on Linux).
SHM_ROOT = "/dev/shm"

# A shm_open name: one leading slash (optional here), then no slash and no "." / "..".
_KEY_RE = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: object, what: str, minimum: int) -> None:
    """Refuse ``value`` unless it is an integer >= ``minimum`` (0 or 1), naming ``what``."""
    if not _is_int(value) or value < minimum:  # type: ignore[operator]
        kind = "a positive" if minimum > 0 else "a non-negative"
        raise ProtocolError(f"{what} must be {kind} integer, got {value!r}")


@dataclass(frozen=True)
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    writable: bool

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


class SharedMemoryRegistry:
    """Registered system shared memory regions of one server.

    Thread-safe. A region's mapping is never closed explicitly: requests in progress may
    hold NumPy views of it, and the mapping goes away with the last of them after
    ``unregister`` drops the registry's reference.
    """

    def __init__(self, root: str = SHM_ROOT) -> None:
        self.root = root
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ registration

    def register(self, name: str, body: Mapping[str, Any]) -> None:
        """Map ``body['byte_size']`` bytes of ``/dev/shm/<key>`` from ``offset`` as ``name``."""
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
        with self._lock:
            if name in self._regions:
                raise ProtocolError(
                    f"shared memory region {name!r} is already registered; unregister it first")
        path = os.path.join(self.root, key.lstrip("/"))
        writable = True
        try:
            fd = os.open(path, os.O_RDWR)
        except PermissionError:
            writable = False  # inputs only: outputs into it are refused with a clear error
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise ProtocolError(
                    f"shared memory region {name!r}: cannot open key {key!r} ({exc.strerror})"
                ) from None
        except OSError as exc:
            raise ProtocolError(
                f"shared memory region {name!r}: cannot open key {key!r} ({exc.strerror})"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise ProtocolError(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} "
                    f"runs past the {size} bytes of key {key!r}")
            # Map the whole object (mmap offsets must be page-aligned; the region's offset
            # need not be) and keep the region's window as offset/byte_size.
            mapping = mmap.mmap(fd, offset + byte_size,
                                access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        with self._lock:
            if name in self._regions:  # a concurrent registration of the same name won
                mapping.close()
                raise ProtocolError(
                    f"shared memory region {name!r} is already registered; unregister it first")
            self._regions[name] = _Region(name, key, offset, byte_size, mapping, writable)

    def unregister(self, name: str | None = None) -> None:
        """Forget region ``name``, or every region when ``name`` is ``None``.

        Unregistering a name that is not registered is not an error (as in Triton).
        """
        with self._lock:
            if name is None:
                self._regions.clear()
            else:
                self._regions.pop(name, None)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Triton's status form: a list of ``{name, key, offset, byte_size}``."""
        with self._lock:
            if name is None:
                return [r.status() for r in self._regions.values()]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"shared memory region {name!r} is not registered")
        return [region.status()]

    def __len__(self) -> int:
        return len(self._regions)

    # ------------------------------------------------------------------ tensors

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
        with self._lock:
            region = self._regions.get(name)
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
        """Input ``tensor`` as a read-only view of its region (no copy)."""
        from cloud._tensors import DATATYPES, decode_bytes_elements

        region, start, size = self._window(tensor, params)
        count = 1
        for d in shape:
            count *= d
        view = memoryview(region.mapping)[start:start + size]
        if datatype == "BYTES":
            return decode_bytes_elements(tensor, view, count).reshape(shape)
        dtype = DATATYPES[datatype]
        expected = count * dtype.itemsize
        if size != expected:
            raise ProtocolError(
                f"tensor {tensor!r}: shape {list(shape)} of {datatype} needs {expected} bytes, "
                f"shared_memory_byte_size is {size} (region {region.name!r})")
        array = np.frombuffer(view, dtype=dtype, count=count).reshape(shape)
        array.flags.writeable = False
        if not array.flags.aligned:
            array = array.copy()  # an odd offset: ONNX Runtime would take a slow path
        if datatype == "BOOL" and array.size and np.any(array.view(np.uint8) > 1):
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
        """Copy output ``array`` into its region; returns the bytes written."""
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
        region.mapping[start:start + data.nbytes] = memoryview(data).cast("B")
        return data.nbytes
