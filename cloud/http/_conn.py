"""Connection limits for the HTTP transport: what a handful of hostile sockets cannot exhaust.

uvicorn's own knobs cover the idle keep-alive timeout (``timeout_keep_alive``) and nothing
else an untrusted network needs with httptools; this thin layer subclasses its HTTP
protocol (or the fast lane's subclass of it) and adds:

* a header-read timeout: from a connection's first byte (or its opening, or the end of
  the previous answer's keep-alive wait) to the end of the request's headers; over it the
  client gets 408 and the connection is closed;
* a maximum size of the request line plus headers, counted on the raw bytes before the
  parser buffers them: 431 over it;
* a minimum body rate: after the headers, the body must arrive within ``body_timeout_s``
  plus one second per ``body_min_rate`` bytes received (as Apache's mod_reqtimeout); a
  body that trickles gets 408;
* a cap on connections, total and per client address (per uid on a Unix socket): a new
  connection beyond either gets 503 and is closed at once, while connections already
  open keep being served (uvicorn's ``limit_concurrency`` answered every request with 503
  once idle connections filled it, health probes included);
* the peer's identity for the app: ``scope["edgecut.peer"]`` is a :class:`Peer` (the
  client address, or the uid the kernel reports for a Unix-socket peer via
  ``SO_PEERCRED``).

Every limit is a field of :class:`ConnectionLimits` and a flag of ``edgecut serve``.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from cloud._peer import Peer

__all__ = ["ConnectionLimits", "guarded_protocol"]

log = logging.getLogger("edgecut.cloud.http")



@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits of the HTTP server (0 turns a cap or timeout off)."""

    #: seconds from a request's first byte (or the connection's opening) to its last header
    header_timeout_s: float = 10.0
    #: bytes of request line plus headers
    max_header_bytes: int = 64 * 1024
    #: seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive)
    keep_alive_timeout_s: float = 30.0
    #: seconds a body may take before the rate applies
    body_timeout_s: float = 20.0
    #: bytes per second a body must keep up after ``body_timeout_s``
    body_min_rate: float = 4096.0
    #: open connections, all clients together
    max_connections: int = 1024
    #: open connections from one client address (one uid on a Unix socket)
    max_connections_per_client: int = 256


def _peer_of(transport: Any) -> Peer:
    sock = transport.get_extra_info("socket")
    family = getattr(sock, "family", None)
    if family == getattr(socket, "AF_UNIX", None):
        uid = None
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", raw)[1]
        except (OSError, AttributeError):
            pass  # not Linux: the app then refuses what needs a uid
        return Peer(None, uid)
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return Peer(str(peer[0]))
    return Peer("unknown")


def _refusal(status: int, phrase: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


_IDLE, _HEAD, _BODY, _APP = range(4)
# How long a refused connection is drained before it is closed.
_LINGER_S = 10.0


def guarded_protocol(base: type, limits: ConnectionLimits) -> type:
    """``base`` (uvicorn's ``HttpToolsProtocol`` or a subclass) with ``limits`` enforced.

    Each call makes a class with its own connection counts: one per server.
    """
    open_by_client: dict[str, int] = {}
    totals = {"open": 0, "refused": 0, "timed_out": 0, "too_large": 0}

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        counts = totals
        _peer: Peer = Peer("unknown")
        _counted = False
        _refused = False
        _phase = _IDLE
        _head_bytes = 0
        _head_timer: Any = None
        _body_timer: Any = None
        _body_start = 0.0
        _body_bytes = 0

        # -------------------------------------------------------------- connections

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._peer = peer = _peer_of(transport)
            key = peer.key
            held = open_by_client.get(key, 0)
            per_client = limits.max_connections_per_client
            if ((limits.max_connections and totals["open"] >= limits.max_connections)
                    or (per_client and held >= per_client)):
                totals["refused"] += 1
                self._linger(_refusal(503, "Service Unavailable",
                                      "too many connections; retry later"))
                return
            self._counted = True
            totals["open"] += 1
            open_by_client[key] = held + 1
            self._arm_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                totals["open"] -= 1
                key = self._peer.key
                left = open_by_client.get(key, 1) - 1
                if left > 0:
                    open_by_client[key] = left
                else:
                    open_by_client.pop(key, None)
            self._cancel_timers()
            super().connection_lost(exc)

        def _cancel_timers(self) -> None:
            for name in ("_head_timer", "_body_timer"):
                timer = getattr(self, name)
                if timer is not None:
                    timer.cancel()
                    setattr(self, name, None)

        def _refuse(self, status: int, phrase: str, message: str) -> None:
            self._cancel_timers()
            if self.transport.is_closing() or self._refused:
                return
            cycle = self.cycle
            if cycle is not None and cycle.response_started:
                self.transport.close()  # too late for a status: just hang up
                return
            if cycle is not None:
                # The app sees a disconnect (receive) and its answer, if any, is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
            self._linger(_refusal(status, phrase, message))

        def _linger(self, answer: bytes) -> None:
            """Answer, stop reading requests, and close once the client has read it: what
            it still sends is dropped meanwhile (a close with unread data would reset the
            connection and could hide the answer)."""
            self._refused = True
            transport = self.transport
            transport.write(answer)
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(_LINGER_S, transport.close)

        # -------------------------------------------------------------- the head

        def _arm_head(self) -> None:
            if limits.header_timeout_s and self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.header_timeout_s,
                                                        self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._phase in (_IDLE, _HEAD):
                totals["timed_out"] += 1
                if self._phase == _IDLE and not self._head_bytes:
                    # Not a byte of a request yet: hang up without an answer, which a client
                    # that sends its first request just then would take for that request's.
                    self._cancel_timers()
                    self.transport.close()
                    return
                self._refuse(408, "Request Timeout",
                             f"request headers took longer than {limits.header_timeout_s} s")

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._phase == _BODY or not limits.max_header_bytes:
                super().data_received(data)
                return
            if self._phase == _IDLE:
                self._arm_head()
            room = limits.max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                super().data_received(data)
                return
            # Feed what the limit allows; the rest only if the head ended inside it.
            self._head_bytes += room
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._phase in (_IDLE, _HEAD):
                totals["too_large"] += 1
                self._refuse(431, "Request Header Fields Too Large",
                             f"request line and headers exceed {limits.max_header_bytes} bytes")
                return
            if not self._refused:
                self.data_received(data[room:])

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["edgecut.peer"] = self._peer
            self._phase = _HEAD

        def on_headers_complete(self) -> None:
            self._phase = _BODY
            self._head_bytes = 0
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._body_start = time.monotonic()
            self._body_bytes = 0
            if limits.body_min_rate > 0 and self._body_timer is None:
                self._body_timer = self.loop.call_later(1.0, self._check_body)
            super().on_headers_complete()

        # -------------------------------------------------------------- the body

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            super().on_body(body)

        def _check_body(self) -> None:
            self._body_timer = None
            if self._phase != _BODY or self.transport.is_closing():
                return
            allowed = limits.body_timeout_s + self._body_bytes / limits.body_min_rate
            if time.monotonic() - self._body_start > allowed:
                totals["timed_out"] += 1
                self._refuse(408, "Request Timeout",
                             f"request body arrives slower than {limits.body_min_rate:g} "
                             "bytes/s")
                return
            self._body_timer = self.loop.call_later(1.0, self._check_body)

        def on_message_complete(self) -> None:
            self._phase = _APP
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._phase = _IDLE
            super().on_response_complete()

    return GuardedProtocol
