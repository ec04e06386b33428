"""The client's shared memory path: one ``/dev/shm`` region per thread and input name,
registered with a local server once, and requests that name the regions instead of
carrying the tensors (see ``edge.client``).

``_SharedMemory`` is one of the jobs of :class:`edge.client.Client`.
"""


from __future__ import annotations

import itertools
import json
import logging
import mmap
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from devices.errors import ModelInputError, OffloadRejected

log = logging.getLogger("edgecut.client")
_SHM_ROOT = "/dev/shm"
_region_ids = itertools.count(1)


class _Region:
    """One client-owned ``/dev/shm`` object registered with the server as a region."""

    def __init__(self, size: int) -> None:
        self.key = f"edgecut-{os.getpid()}-{next(_region_ids)}-{secrets.token_hex(4)}"
        self.path = os.path.join(_SHM_ROOT, self.key)
        self.size = size
        # 0600: tensors are the application's data; a server running as another user
        # cannot open it, registration fails and the client falls back to binary tensors.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)

    def release(self) -> None:
        try:
            self.mapping.close()
        except BufferError:  # a view is still alive somewhere; the unmap follows it
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _unlink_all(regions: list[_Region]) -> None:
    # At garbage collection or exit of a client that was never closed: no file is left
    # behind in /dev/shm (the server's mapping, if any, lives on until it unregisters).
    for region in list(regions):
        region.release()
    regions.clear()


_JSON_HEADERS = {"Content-Type": "application/json"}


class _RegionLost(Exception):
    pass



class _SharedMemory:
    """Inputs through shared memory regions (the client's ``_shm`` says whether)."""

    @property
    def uses_shared_memory(self) -> bool | None:
        """Whether inputs go through shared memory (``None`` until the first ``infer``)."""
        return self._shm

    def _use_shm(self, inputs: Mapping[str, np.ndarray]) -> bool:
        if self._shm is None:
            try:
                extensions = self.metadata().get("extensions", [])
            except (OffloadRejected, ModelInputError, ValueError):
                extensions = []
            self._shm = "system_shared_memory" in extensions and os.path.isdir(_SHM_ROOT)
        if not self._shm:
            return False
        # BYTES tensors have no fixed size per element: those requests go as binary.
        return all(np.asarray(v).dtype.kind not in "OSU" for v in inputs.values())

    def _drop_regions(self) -> None:
        regions: dict[str, _Region] = getattr(self._local, "regions", {})
        self._local.regions = {}
        with self._lock:
            for region in regions.values():
                if region in self._regions:
                    self._regions.remove(region)
        for region in regions.values():
            region.release()

    def _region_for(self, name: str, nbytes: int) -> _Region | None:
        """This thread's region for input ``name``, big enough; ``None``: use binary."""
        regions: dict[str, _Region] | None = getattr(self._local, "regions", None)
        if regions is None:
            regions = self._local.regions = {}
        region = regions.get(name)
        if region is not None and region.size >= nbytes:
            return region
        if region is not None:  # outgrown: replace it with one of the new size
            del regions[name]
            with self._lock:
                self._regions.remove(region)
            self._request("POST", f"/v2/systemsharedmemory/region/{region.key}/unregister")
            region.release()
        try:
            region = _Region(max(nbytes, 64))
        except OSError as exc:
            log.warning("no shared memory region (%s); sending binary tensors", exc)
            self._shm = False
            return None
        with self._lock:
            self._regions.append(region)
        status, data, _ = self._request(
            "POST", f"/v2/systemsharedmemory/region/{region.key}/register",
            json.dumps({"key": "/" + region.key, "offset": 0, "byte_size": region.size}).encode(),
            {"Content-Type": "application/json"})
        if status != 200:
            # E.g. the server runs as another user and cannot open the 0600 object.
            log.warning("server refused shared memory region (HTTP %d: %s); sending binary "
                        "tensors", status, data[:200].decode(errors="replace"))
            with self._lock:
                self._regions.remove(region)
            region.release()
            self._shm = False
            return None
        regions[name] = region
        return region

    def _infer_shm(self, model: str, inputs: Mapping[str, np.ndarray],
                   outputs: Sequence[str] | None, version: str | None) -> dict[str, np.ndarray]:
        from cloud.protocol import (
            DATATYPES,
            datatype_of,
            decode_infer_response,
            encode_infer_request,
        )

        described = []
        placed = []
        for name, value in inputs.items():
            array = np.asarray(value)
            datatype = datatype_of(array.dtype)
            dtype = DATATYPES[datatype]
            nbytes = array.size * dtype.itemsize
            region = self._region_for(name, nbytes)
            if region is None:  # shared memory turned out not to work: binary after all
                body, headers = encode_infer_request(inputs, outputs)
                return decode_infer_response(*self.infer_raw(model, body, headers,
                                                             version=version))
            # The one copy of the local path: into the region (little-endian, C order).
            np.copyto(np.ndarray(array.shape, dtype=dtype, buffer=region.mapping), array)
            placed.append((name, array.shape, datatype, region.key, nbytes))
        # An application sends the same shapes again and again: the request (path and
        # JSON message) is encoded once per thread and layout, and re-sent.
        key = (model, version, None if outputs is None else tuple(outputs), tuple(placed))
        cache: dict[tuple, tuple[str, bytes]] | None = getattr(self._local, "messages", None)
        if cache is None:
            cache = self._local.messages = {}
        encoded = cache.get(key)
        if encoded is None:
            for name, shape, datatype, region_key, nbytes in placed:
                described.append({"name": name, "shape": list(shape), "datatype": datatype,
                                  "parameters": {"shared_memory_region": region_key,
                                                 "shared_memory_byte_size": nbytes}})
            message: dict[str, Any] = {"inputs": described}
            if outputs is None:
                message["parameters"] = {"binary_data_output": True}
            else:
                message["outputs"] = [{"name": n, "parameters": {"binary_data": True}}
                                      for n in outputs]
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
            if len(cache) >= 32:
                cache.clear()
            encoded = cache[key] = (path, json.dumps(message, separators=(",", ":")).encode())
        status, data, hdrs = self._request("POST", encoded[0], encoded[1], _JSON_HEADERS)
        if status == 400 and b"is not registered" in data:
            raise _RegionLost
        if status == 400 and b"shared memory extension off" in data:
            self._shm = False
            raise _RegionLost
        self._raise_for(status, data, f"model '{model}'")
        return decode_infer_response(data, hdrs)
