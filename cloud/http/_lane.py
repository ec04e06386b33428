"""The fast lane: inference requests a local server answers inside uvicorn's protocol.

Through the ordinary ASGI route a request costs an asyncio task, a dozen awaits, the
receive/send message dicts and two more trips through the event loop: about 0.3 ms on a
warm CPU, and two to three times that right after an inference has flushed the caches,
which is the common case on a device whose applications call the agent back to back.
For a local server that is most of what its API adds to a local inference.

:func:`lane_protocol` subclasses uvicorn's httptools protocol. A request that may take the
lane (``POST /v2/models/{name}/infer`` on an idle keep-alive HTTP/1.1 connection, with a
``Content-Length`` within the limit) has its body gathered by the protocol itself; once
complete, :meth:`_App.serve_now` decodes it and, when the model runs it inline, the answer
is written at once from the parser callback. Everything else, and every request the app
declines there (nothing was done for it yet), is handed to uvicorn's own request cycle
with the body already read, so the ASGI app answers it exactly as before. A request the
runtime queued for its worker is finished by a small ASGI callable through the same cycle.

The subclass uses uvicorn's protocol attributes (``cycle``, ``pipeline``, ``headers``,
``scope``, ``on_response_complete``); :func:`lane_protocol` returns ``None`` when the
installed uvicorn lacks them, and the server then runs without the lane.
"""

from __future__ import annotations

import http
import logging
import time
from typing import Any

from cloud._deferred import collecting, run_collected

__all__ = ["lane_protocol"]

log = logging.getLogger("edgecut.cloud.http")

# Bodies up to this size may take the lane: a camera frame as binary tensors with room to
# spare (shared-memory requests carry only a small JSON header).
_LANE_MAX_BODY = 16 * 1024 * 1024
_PREFIX = b"/v2/models/"
_SUFFIX = b"/infer"


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def lane_protocol(app: Any, timing: str | None = None) -> type | None:
    """uvicorn's httptools protocol with the fast lane into ``app`` (a ``create_app`` app).

    ``timing``: also add ``{timing};dur=MS`` to the ``Server-Timing`` header of lane
    answers (the time from the request's headers to its answer), as a wrapping ASGI app
    would for the ordinary route. ``None`` when httptools or a compatible uvicorn is
    missing.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    needed = ("on_headers_complete", "on_body", "on_message_complete", "on_response_complete")
    if not all(hasattr(HttpToolsProtocol, name) for name in needed):
        return None
    limit = min(_LANE_MAX_BODY, app.gate.max_body_bytes)

    class LaneProtocol(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        answered = 0  # requests answered in the lane, all connections together
        _lane: list[bytes] | None = None
        _lane_model = ""
        _lane_start = 0.0
        _lane_last = False  # the server is shutting down: close after this answer
        _lane_held = 0  # body bytes counted against the app's budget

        def shutdown(self) -> None:
            if self._lane is not None:  # a lane request's body is still arriving
                self._lane_last = True
                return
            super().shutdown()

        def on_headers_complete(self) -> None:
            model = self._lane_target()
            if model is None:
                self._lane = None
                super().on_headers_complete()
                return
            self._lane, self._lane_model, self._lane_start = [], model, time.perf_counter()

        def _hold(self, size: int) -> None:
            # Lane bodies count against the app's budget for request bodies held at once,
            # as the ordinary route's do (its _hold), from the headers until the answer.
            app.gate.pending_bytes += size - self._lane_held
            self._lane_held = size

        def connection_lost(self, exc: Exception | None) -> None:
            self._hold(0)
            self._lane = None
            super().connection_lost(exc)

        def _lane_target(self) -> str | None:
            """The model a request may take the lane for, or None for the ordinary route."""
            url = self.url
            if not (url.startswith(_PREFIX) and url.endswith(_SUFFIX)):
                return None
            name = url[len(_PREFIX):-len(_SUFFIX)]
            if not name or b"/" in name or b"%" in name or b"?" in name:
                return None
            parser = self.parser
            if (parser.get_method() != b"POST" or parser.get_http_version() != "1.1"
                    or not parser.should_keep_alive() or parser.should_upgrade()
                    or self.expect_100_continue or self.pipeline
                    or not (self.cycle is None or self.cycle.response_complete)):
                return None
            limit_concurrency = self.limit_concurrency
            if limit_concurrency is not None and (len(self.connections) >= limit_concurrency
                                                  or len(self.tasks) >= limit_concurrency):
                return None  # the ordinary route answers 503
            length = None
            for key, value in self.headers:
                if key == b"content-length":
                    length = value
                elif key == b"transfer-encoding":
                    return None
            if length is None or not length.isdigit() or int(length) > limit:
                return None
            if app.gate.pending_bytes + int(length) > app.gate.max_pending_bytes:
                return None  # the ordinary route answers 503
            return name.decode("ascii", "replace")

        def on_body(self, body: bytes) -> None:
            if self._lane is None:
                super().on_body(body)
            else:
                # Held as bytes arrive (not as declared: a client that declares a large
                # body and trickles it holds only what it sent).
                self._hold(self._lane_held + len(body))
                self._lane.append(body)

        def on_message_complete(self) -> None:
            chunks = self._lane
            if chunks is None:
                super().on_message_complete()
                return
            self._lane = None
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
            # Statistics, metrics and the request's log record wait until the answer is
            # written (cloud._deferred).
            collecting()
            try:
                try:
                    answer = app.serve_now(self._lane_model, headers, body,
                                           getattr(self, "_peer", None))
                except Exception:  # a bug: answer 500, log it, keep serving (as the app does)
                    log.exception("POST %s failed", self.url.decode("latin-1"))
                    answer = (500, b'{"error":"internal server error"}',
                              [(b"content-type", b"application/json"),
                               (b"content-length", b"33")])
                finally:
                    self._hold(0)
                if answer is None:
                    self._ordinary(body, None)
                elif isinstance(answer, tuple):
                    self._write(*answer)
                    LaneProtocol.answered += 1
                    if self._lane_last:
                        self.transport.close()
                    else:
                        self.on_response_complete()
                else:
                    self._ordinary(body, answer)
            finally:
                run_collected()

        def _with_timing(self, extra: list) -> list:
            if timing is None:
                return extra
            mine = f"{timing};dur={(time.perf_counter() - self._lane_start) * 1e3:.3f}"
            inner = [v.decode("latin-1") for k, v in extra if k == b"server-timing"]
            return [*(h for h in extra if h[0] != b"server-timing"),
                    (b"server-timing", ", ".join([*inner, mine]).encode("latin-1"))]

        def _write(self, status: int, body: bytes, extra: list) -> None:
            out = [_status_line(status)]
            for name, value in (*self.server_state.default_headers, *self._with_timing(extra)):
                out += [name, b": ", value, b"\r\n"]
            out += [b"\r\n", body]
            self.transport.write(b"".join(out))

        def _ordinary(self, body: bytes, pending: Any) -> None:
            """Hand the request to uvicorn's cycle with its body read.

            ``pending``: a coroutine giving the answer (the request was queued for the
            model's worker); else the server's ASGI app serves it from the start.
            """
            saved = self.app
            if pending is not None:
                protocol = self

                async def finish(scope: Any, receive: Any, send: Any) -> None:
                    status, out, extra = await pending
                    await send({"type": "http.response.start", "status": status,
                                "headers": protocol._with_timing(extra)})
                    await send({"type": "http.response.body", "body": out})

                self.app = finish
            try:
                super().on_headers_complete()
            finally:
                self.app = saved
            if self._lane_last and self.cycle is not None:
                self.cycle.keep_alive = False
            if body:
                super().on_body(body)
            super().on_message_complete()

    return LaneProtocol
