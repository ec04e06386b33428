"""Who is at the other end of a connection, for the checks every transport shares.

A transport learns its peer from its own machinery (uvicorn's socket, ``SO_PEERCRED`` on a
Unix socket, gRPC's ``context.peer()``) and describes it as a :class:`Peer`;
:func:`caller_of` turns a peer and its verified token into the identity that owns shared
memory regions (:class:`cloud._shm.Caller`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud._shm import Caller, SharedMemoryRegistry
from cloud.errors import Forbidden, ProtocolError

__all__ = ["Peer", "caller_of", "infer_into_shm", "shm_view"]

_LOOPBACK = ("127.", "::1", "::ffff:127.")


@dataclass(frozen=True)
class Peer:
    """The other end of a connection: ``address`` for TCP, ``uid`` for a Unix socket
    (``address`` None; ``uid`` None when the kernel did not say)."""

    address: str | None = None
    uid: int | None = None

    @property
    def local(self) -> bool:
        """On this host: a Unix-socket peer or a loopback address."""
        if self.address is None:
            return True
        return self.address.startswith(_LOOPBACK) or self.address == "localhost"

    @property
    def key(self) -> str:
        """What connection caps count by: the address, or the uid on a Unix socket."""
        return f"uid:{self.uid}" if self.address is None else f"addr:{self.address}"


def caller_of(principal: Any, peer: Peer | None) -> Caller:
    """The shared memory identity of a request: its token's subject when auth is on, else
    the Unix-socket peer's uid, else the peer's address. The file-owner check uses the
    peer's uid wherever the kernel gave one."""
    peer = peer or Peer("unknown")
    uid = peer.uid if peer.address is None else None
    if principal is not None:
        name = f"sub:{principal.subject}"
    elif peer.address is None:
        if uid is None:
            raise Forbidden("system shared memory: the Unix-socket peer's uid is unknown")
        name = f"uid:{uid}"
    else:
        name = f"addr:{peer.address}"
    return Caller(name, uid, peer.local)


def shm_view(registry: SharedMemoryRegistry, principal: Any, peer: Peer | None) -> Any:
    """A request's view of ``registry`` (what the decoder reads inputs through), resolved
    on first use: most requests name no region and need no caller identity."""
    return _LazyView(registry, principal, peer)


class _LazyView:
    __slots__ = ("_registry", "_principal", "_peer", "_view")

    def __init__(self, registry: SharedMemoryRegistry, principal: Any, peer: Peer | None) -> None:
        self._registry, self._principal, self._peer, self._view = registry, principal, peer, None

    def _get(self) -> Any:
        if self._view is None:
            self._view = self._registry.for_caller(caller_of(self._principal, self._peer))
        return self._view

    def read(self, *args: Any) -> Any:
        return self._get().read(*args)

    def check_output(self, *args: Any) -> None:
        self._get().check_output(*args)

    def write(self, *args: Any) -> int:
        return self._get().write(*args)


async def infer_into_shm(service: Any, model: str, version: str | None, request: Any,
                         shm: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Run ``request`` and write the outputs that name a shared memory region into it.

    Every such output is checked against its region before the inference is spent. Returns
    the service's result and, per placed output, the parameters its response carries."""
    to_shm = {o.name: o.parameters for o in request.outputs or ()
              if "shared_memory_region" in o.parameters}
    if to_shm:
        if shm is None:
            raise ProtocolError(f"output {next(iter(to_shm))!r}: names shared_memory_region "
                                "but this server has the system shared memory extension off")
        for name, params in to_shm.items():
            shm.check_output(name, params)
    result = await service.infer(model, version, request)
    placed = {}
    for name, params in to_shm.items():
        if name in result.outputs:
            size = shm.write(name, result.outputs[name], params)
            placed[name] = {"shared_memory_region": params["shared_memory_region"],
                            "shared_memory_byte_size": size}
    return result, placed
