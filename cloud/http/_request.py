"""One request on the app's ordinary route: what was asked, and its body read within the
limits of the :class:`~cloud._gate.Gate`.

A body counts against the gate's pending-bytes budget as it arrives (not as declared), is
refused past ``max_body_bytes`` (also once inflated, for gzip and deflate bodies), and a
client that goes away while sending it raises :class:`Disconnected` (nothing to answer).
"""

from __future__ import annotations

import json
import typing
import zlib
from typing import Any

from cloud._gate import Gate
from cloud._peer import Peer
from cloud.errors import PayloadTooLarge, ProtocolError

__all__ = ["Disconnected", "Receive", "Request"]

# typing's spelling: evaluated at import, and Python 3.8 cannot subscript
# collections.abc.Callable at run time.
Receive = typing.Callable[[], typing.Awaitable[typing.Dict[str, Any]]]


class Disconnected(Exception):
    """The client went away before its request was read."""


class Request:
    """``method`` and ``path`` (``parts``: the path split at '/'), lower-cased ``headers``,
    the ASGI ``receive`` its body comes from, the connection's ``peer`` and ``held`` (the
    body bytes counted against the gate, for the app to release when it has answered)."""

    __slots__ = ("method", "path", "parts", "headers", "receive", "peer", "held")

    def __init__(self, method: str, path: str, headers: dict[str, str], receive: Receive,
                 peer: Peer | None) -> None:
        self.method = method
        self.path = path
        self.parts = path.strip("/").split("/")
        self.headers = headers
        self.receive = receive
        self.peer = peer
        self.held = [0]

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    async def body(self, gate: Gate) -> bytes:
        """The body, inflated when it is gzip or deflate encoded."""
        headers = self.headers
        limit = gate.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ProtocolError(f"Content-Length must be an integer, got {declared!r}") from None
            gate.check_size(size)
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                # Held as it arrives, not as declared: a client that declares 64 MB and
                # sends one byte holds one byte of the budget.
                gate.hold(self.held, len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise ProtocolError(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
        inflater = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            # Bounded, so that a small compressed body cannot inflate past the limit.
            plain = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"body is not valid {encoding} data ({exc})") from None
        if len(plain) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
        gate.hold(self.held, len(plain))
        if not inflater.eof:
            raise ProtocolError(f"{encoding} body is truncated")
        return plain

    async def json_body(self, gate: Gate) -> dict[str, Any]:
        """The body as a JSON object (``{}`` for an empty body)."""
        body = await self.body(gate)
        if not body.strip():
            return {}
        try:
            value = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(f"malformed JSON body: {exc}") from None
        if not isinstance(value, dict):
            raise ProtocolError("the JSON body must be an object")
        return value
