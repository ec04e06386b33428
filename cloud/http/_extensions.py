"""The HTTP app's extension endpoints: Triton's system shared memory extension
(``/v2/systemsharedmemory/...``) and edgecut's profile extension
(``POST /v2/models/{m}[/versions/{v}]/profile``), and the small helpers every route shares
(the JSON body and header, the method check, work off the event loop)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from cloud._gate import Gate
from cloud._peer import caller_of
from cloud._shm import SharedMemoryRegistry
from cloud.errors import CloudError, Forbidden, NotFound, Overloaded, ProtocolError
from cloud.http._request import Request

__all__ = ["JSON_HEADERS", "MethodNotAllowed", "ProfileRoute", "SharedMemoryRoutes", "allow",
           "json_bytes", "off_loop"]

JSON_HEADERS = [(b"content-type", b"application/json")]


class MethodNotAllowed(CloudError):
    status = 405

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(message)
        self.allowed = allowed


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} is not allowed here; use {allowed}", allowed)


async def off_loop(call: Callable[[], Any]) -> Any:
    # run_in_executor rather than asyncio.to_thread: the agent runs on Python 3.8.
    return await asyncio.get_running_loop().run_in_executor(None, call)


class SharedMemoryRoutes:
    """``/v2/systemsharedmemory/...``: register, unregister and status (as Triton), each
    on the caller's own regions only."""

    def __init__(self, shm: SharedMemoryRegistry, gate: Gate) -> None:
        self.shm = shm
        self.gate = gate

    async def handle(self, req: Request) -> tuple[int, bytes, list]:
        method, parts = req.method, req.parts
        # Only a process on this host can share memory with the server; a remote peer
        # must not map (or have outputs written into) this host's shm objects.
        caller = caller_of(self.gate.principal(req.authorization), req.peer)
        if not caller.local:
            raise Forbidden(
                f"system shared memory is for clients on this host only, not {caller.principal}")
        n = len(parts)
        if n == 3 and parts[2] == "status":
            allow(method, "GET")
            return 200, json_bytes(self.shm.status(None, caller)), JSON_HEADERS
        if n == 3 and parts[2] == "unregister":
            allow(method, "POST")
            self.shm.unregister(None, caller)
            return 200, b"", JSON_HEADERS
        if n == 5 and parts[2] == "region" and parts[3]:
            name, action = parts[3], parts[4]
            if action == "status":
                allow(method, "GET")
                return 200, json_bytes(self.shm.status(name, caller)), JSON_HEADERS
            if action == "unregister":
                allow(method, "POST")
                self.shm.unregister(name, caller)
                return 200, b"", JSON_HEADERS
            if action == "register":
                allow(method, "POST")
                body = await req.json_body(self.gate)
                # Opening a file: off the event loop, it may touch the disk.
                await off_loop(functools.partial(self.shm.register, name, body, caller))
                return 200, b"", JSON_HEADERS
        raise NotFound(f"no endpoint {req.path!r}")


class ProfileRoute:
    """``POST /v2/models/{m}[/versions/{v}]/profile``, one at a time: each profile takes
    every core it is given."""

    def __init__(self, service: Any, gate: Gate) -> None:
        self.service = service
        self.gate = gate
        self._running = False

    async def handle(self, req: Request, model: str, version: str | None
                     ) -> tuple[int, bytes, list]:
        body = await req.json_body(self.gate)
        runs = body.get("runs", 10)
        batch = body.get("batch", 1)
        shapes = body.get("shapes")
        for key, value, top in (("runs", runs, 1000), ("batch", batch, 1024)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ProtocolError(f"profile '{key}' must be an integer in 1..{top}, got {value!r}")
        if shapes is not None and not (
            isinstance(shapes, dict)
            and all(isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                                and d > 0 for d in v)
                    for v in shapes.values())
        ):
            raise ProtocolError("profile 'shapes' must map input names to lists of positive integers")
        if self._running:
            raise Overloaded("a profile is already running; one runs at a time, retry later")
        self._running = True
        try:
            result = await self.service.profile(model, version, runs, batch, shapes)
        finally:
            self._running = False
        return 200, json_bytes(result), JSON_HEADERS
