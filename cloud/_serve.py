"""``edgecut serve`` put together: one service, its HTTP and gRPC servers on one loop.

The command (:mod:`cloud._cli`) only parses flags into :class:`ServeOptions`; :func:`run`
loads the repository, applies Triton's start-up rules (``--exit-on-error``,
``--strict-readiness``) and serves until SIGTERM/SIGINT. A runtime failure raises
``click.ClickException`` (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click
import uvicorn

log = logging.getLogger("edgecut.cloud")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``edgecut serve`` was asked for (see its ``--help``)."""

    repository: str
    host: str = "127.0.0.1"
    port: int = 8000
    allow_http: bool = True
    grpc_port: int | None = None  # None: no gRPC
    grpc_address: str = "127.0.0.1"
    metrics_port: int | None = None
    allow_metrics: bool = True
    exit_on_error: bool = False
    strict_readiness: bool = True
    exit_timeout_s: int = 30
    auth_keys: str | None = None
    audience: str = "edgecut"
    issuers: Sequence[str] = ("edgecut",)
    providers: Sequence[str] | None = None
    intra_op_threads: int | None = None
    max_queue: int = 128
    max_body_bytes: int = 64 * 1024 * 1024
    max_pending_bytes: int = 512 * 1024 * 1024
    max_connections: int = 1024
    max_in_flight: int = 512
    ort_spinning: bool = True
    shared_memory: bool = True
    dynamic_batching: bool = True
    log_level: str = "info"
    log_format: str = "json"
    # Against hostile clients (issue 23; cloud.http._conn, cloud._shm, cloud._auth)
    metrics_address: str | None = None  # None: host
    metrics_auth: bool = False
    max_connections_per_client: int = 256
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    keep_alive_timeout: float = 30.0
    body_timeout: float = 20.0
    body_min_rate: float = 4096.0
    max_bytes_elements: int = 1 << 20
    profile_max_elements: int = 1 << 24
    jwt_leeway: float = 60.0
    shm_allow_uids: Sequence[int] = ()


def _load(o: ServeOptions) -> tuple[Any, Any]:
    from cloud._auth import TokenVerifier
    from cloud._service import InferenceService
    from cloud.errors import CloudError

    try:
        verifier = None
        if o.auth_keys:
            verifier = TokenVerifier.from_folder(o.auth_keys, audience=o.audience,
                                                 issuers=list(o.issuers),
                                                 leeway_s=o.jwt_leeway)
        service = InferenceService(
            o.repository, providers=o.providers, intra_op_threads=o.intra_op_threads,
            max_queue_size=o.max_queue, dynamic_batching=o.dynamic_batching,
            ort_spinning=o.ort_spinning, profile_max_elements=o.profile_max_elements,
        )
    except CloudError as exc:
        raise click.ClickException(str(exc)) from exc
    service.strict_readiness = o.strict_readiness
    loaded = service.load_all()
    failed = service.failed()
    if failed and o.exit_on_error:
        service.close()
        reasons = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
        raise click.ClickException(
            f"{len(failed)} model(s) failed to load ({reasons}); --exit-on-error=false "
            "serves the others")
    log.info("serving %d models from %s on http://%s:%d", len(loaded), o.repository, o.host,
             o.port, extra={"models": ",".join(loaded), "pid": os.getpid()})
    return service, verifier


def metrics_http_server(metrics: Any, host: str, port: int) -> Any:
    """``GET /metrics`` on its own port (Triton's ``--metrics-port``), in a daemon thread;
    ``shutdown()`` the returned server to stop it."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # scrapes are not worth a log line each
            pass

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics\n"]
        body = metrics.exposition()
        start_response("200 OK", [("Content-Type", metrics.content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(host, port, app, server_class=Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="edgecut-metrics", daemon=True).start()
    return server


def run(o: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT; ``click.ClickException`` for a runtime failure."""

    from cloud._gate import Gate
    from cloud._logs import configure_logging
    from cloud._shm import SharedMemoryRegistry
    from cloud.http._app import create_app
    from cloud.http._conn import ConnectionLimits
    from cloud.http._server import uvicorn_config

    configure_logging(o.log_level, log_format=o.log_format)
    service, verifier = _load(o)
    gate = Gate(verifier, max_in_flight=o.max_in_flight, max_pending_bytes=o.max_pending_bytes,
                max_body_bytes=o.max_body_bytes)
    # Only local clients may share memory with the server: the extension is on for a
    # transport bound to a loopback address.
    shm = SharedMemoryRegistry(allowed_uids=o.shm_allow_uids) if o.shared_memory else None
    if o.metrics_auth and verifier is None:
        raise click.UsageError("--metrics-auth needs --auth-keys")
    companions: list[Any] = []
    metrics_server = None
    metrics_host = o.metrics_address or o.host
    try:
        if o.grpc_port is not None:
            try:
                from cloud.grpc._server import GrpcServer
            except ImportError as exc:
                raise click.ClickException(
                    f"gRPC needs the grpc extra: pip install 'edgecut[grpc]' ({exc})") from exc
            companions.append(GrpcServer(
                service, gate=gate, shm=shm if o.grpc_address in _LOOPBACK else None,
                host=o.grpc_address, port=o.grpc_port,
                max_bytes_elements=o.max_bytes_elements))
        if o.metrics_port is not None:
            try:
                metrics_server = metrics_http_server(service.metrics, metrics_host,
                                                     o.metrics_port)
            except OSError as exc:
                raise click.ClickException(
                    f"cannot serve metrics on {metrics_host}:{o.metrics_port} ({exc})") from exc
        server = None
        if o.allow_http:
            # With its own port, /metrics is served there only (as Triton): the API port
            # need not list every model and its traffic.
            app = create_app(service, gate=gate,
                             metrics=o.allow_metrics and o.metrics_port is None,
                             metrics_require_auth=o.metrics_auth,
                             max_bytes_elements=o.max_bytes_elements,
                             shared_memory=(shm if shm is not None else False)
                             if o.host in _LOOPBACK else False)
            limits = ConnectionLimits(
                header_timeout_s=o.header_timeout, max_header_bytes=o.max_header_bytes,
                keep_alive_timeout_s=o.keep_alive_timeout, body_timeout_s=o.body_timeout,
                body_min_rate=o.body_min_rate, max_connections=o.max_connections,
                max_connections_per_client=o.max_connections_per_client)
            config = uvicorn_config(app, o.host, o.port, limits=limits, log_level=o.log_level)
            config.timeout_graceful_shutdown = o.exit_timeout_s
            server = _CleanExitServer(config)
        _run_loop(_serve(server, companions, o.exit_timeout_s))
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        service.close()


class _CleanExitServer(uvicorn.Server):
    """uvicorn's server without re-raising SIGTERM/SIGINT after its graceful shutdown
    (which would end the process killed by the signal): a stop asked for by a signal exits
    0, as tritonserver's does."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _serve(server: Any, companions: list[Any], grace_s: float) -> None:
    from cloud.http._server import serve_with

    try:
        if server is not None:
            # uvicorn handles SIGTERM/SIGINT (graceful shutdown); companions stop after it.
            await serve_with(server, companions)
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        started = []
        try:
            for companion in companions:
                await companion.start()
                started.append(companion)
            await stop.wait()
        finally:
            for companion in reversed(started):
                await companion.stop(grace_s)
    except OSError as exc:  # a port already taken, an address not on this host
        raise click.ClickException(f"cannot serve: {exc}") from exc
