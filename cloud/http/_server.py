"""Running the ASGI app with uvicorn: in the foreground (the CLI) or in a thread (tests,
the edge agent); the JSON log layout is ``cloud._logs``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import uvicorn

from cloud._logs import JsonLogFormatter, configure_logging
from cloud.http._conn import ConnectionLimits, guarded_protocol

log = logging.getLogger("edgecut.cloud.http")

__all__ = ["JsonLogFormatter", "ServerThread", "configure_logging", "serve_with", "uvicorn_config"]

# uvicorn pauses reading a connection whenever 64 KiB of body wait for the app, so a 600 KB
# tensor arrives in ten pause/resume round trips through the event loop, which measured
# measurably more CPU and latency per request. The app reads bodies at once (and counts
# them against max_pending_bytes); what uvicorn may buffer ahead of it is this mark per
# connection, so connections x 1 MiB bounds that part.
_BODY_HIGH_WATER = 1024 * 1024


def _raise_body_high_water() -> None:
    from uvicorn.protocols.http import httptools_impl

    if getattr(httptools_impl, "HIGH_WATER_LIMIT", 0) < _BODY_HIGH_WATER:
        httptools_impl.HIGH_WATER_LIMIT = _BODY_HIGH_WATER


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8000, *,
                   limits: ConnectionLimits | None = None,
                   limit_concurrency: int | None = None, backlog: int = 2048,
                   log_level: str = "warning", base_protocol: type | None = None,
                   uds: str | None = None) -> uvicorn.Config:
    """uvicorn settings for the service: httptools and uvloop when installed, no access
    log (requests are logged by the app with their request id), HTTP/1.1 keep-alive, and
    the connection limits of :mod:`cloud.http._conn` (``limits``; ``limit_concurrency``, if
    given, sets its ``max_connections``).

    ``base_protocol``: a subclass of uvicorn's httptools protocol to guard instead of the
    plain one (the local API's fast lane). ``uds``: listen on this Unix socket instead.
    """
    limits = limits or ConnectionLimits()
    if limit_concurrency is not None:
        limits = dataclasses.replace(limits, max_connections=limit_concurrency)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    http: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        _raise_body_high_water()
        http = guarded_protocol(base_protocol or HttpToolsProtocol, limits)
    except ImportError:
        # Without httptools only uvicorn's own limits apply (h11 bounds the head's size).
        http = "h11"
        log.warning("httptools (an edgecut dependency) is missing: header and body "
                    "timeouts and the per-client connection cap are off "
                    "(pip install httptools)")
    # The connection cap is the guard's (new connections beyond it are refused while the
    # open ones keep being served), not uvicorn's limit_concurrency (which answered 503 to
    # every request once idle connections filled it).
    return uvicorn.Config(
        app, host=host, port=port, uds=uds, loop=loop, http=http, lifespan="on", access_log=False,
        log_config=None, log_level=log_level, limit_concurrency=None,
        backlog=backlog, timeout_keep_alive=max(1, int(round(limits.keep_alive_timeout_s))),
        h11_max_incomplete_event_size=limits.max_header_bytes or None,
    )


async def serve_with(server: uvicorn.Server, companions: Sequence[Any] = ()) -> None:
    """Run ``server`` with its companion servers (started first, stopped last)."""
    started = []
    try:
        for companion in companions:
            await companion.start()
            started.append(companion)
        await server.serve()
    finally:
        for companion in reversed(started):
            await companion.stop()


class ServerThread:
    """uvicorn serving ``app`` in a background thread; a context manager.

    ``with ServerThread(app, port=port) as server: ...`` returns once the socket listens
    and stops the server (graceful shutdown) on exit.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000, *,
                 companions: Sequence[Any] = (), **kwargs: Any) -> None:
        self.config = uvicorn_config(app, host, port, **kwargs)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, name="edgecut-uvicorn", daemon=True)
        uds = kwargs.get("uds")
        self.url = f"unix://{uds}" if uds else f"http://{host}:{port}"
        # Servers of other transports over the same service (e.g. cloud.grpc.GrpcServer):
        # async start()/stop() on this loop, the one the service serves requests on.
        self.companions = list(companions)

    def _run(self) -> None:
        if self.config.loop == "uvloop":
            import uvloop

            uvloop.run(serve_with(self.server, self.companions))
        else:
            asyncio.run(serve_with(self.server, self.companions))

    def start(self, timeout: float = 20.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
