"""The HTTP app's extension endpoints: Triton's system shared memory extension
(``/v2/systemsharedmemory/...``) and edgecut's profile extension
(``POST /v2/models/{m}[/versions/{v}]/profile``), as functions of the app."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

from cloud._peer import Peer, caller_of
from cloud.errors import CloudError, Forbidden, NotFound, Overloaded, ProtocolError

__all__ = ["JSON_HEADERS", "MethodNotAllowed", "allow", "json_bytes", "off_loop", "profile",
           "shared_memory"]

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


async def shared_memory(app: Any, method: str, path: str, parts: list[str],
                         headers: dict[str, str], receive: Any, held: list[int],
                         peer: Peer | None) -> tuple[int, bytes, list]:
    """``/v2/systemsharedmemory/...``: register, unregister and status (as Triton), each
    on the caller's own regions only."""
    assert app.shm is not None
    # Only a process on this host can share memory with the server; a remote peer
    # must not map (or have outputs written into) this host's shm objects.
    caller = caller_of(app._principal(headers), peer)
    if not caller.local:
        raise Forbidden(
            f"system shared memory is for clients on this host only, not {caller.principal}")
    n = len(parts)
    if n == 3 and parts[2] == "status":
        allow(method, "GET")
        return 200, json_bytes(app.shm.status(None, caller)), JSON_HEADERS
    if n == 3 and parts[2] == "unregister":
        allow(method, "POST")
        app.shm.unregister(None, caller)
        return 200, b"", JSON_HEADERS
    if n == 5 and parts[2] == "region" and parts[3]:
        name, action = parts[3], parts[4]
        if action == "status":
            allow(method, "GET")
            return 200, json_bytes(app.shm.status(name, caller)), JSON_HEADERS
        if action == "unregister":
            allow(method, "POST")
            app.shm.unregister(name, caller)
            return 200, b"", JSON_HEADERS
        if action == "register":
            allow(method, "POST")
            body = await app._json_body(headers, receive, held)
            # Opening a file: off the event loop, it may touch the disk.
            await off_loop(functools.partial(app.shm.register, name, body, caller))
            return 200, b"", JSON_HEADERS
    raise NotFound(f"no endpoint {path!r}")


async def profile(app: Any, model: str, version: str | None, headers: dict[str, str],
                   receive: Any, held: list[int]) -> tuple[int, bytes, list]:
    body = await app._json_body(headers, receive, held)
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
    if app._profiling:
        raise Overloaded("a profile is already running; one runs at a time, retry later")
    app._profiling = True
    try:
        result = await app.service.profile(model, version, runs, batch, shapes)
    finally:
        app._profiling = False
    return 200, json_bytes(result), JSON_HEADERS
