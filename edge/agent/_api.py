"""The agent's local API: the cloud package's Open Inference Protocol app over the
agent's models (``AgentModelRuntime`` per model), ``/agent/status``, its sockets, the
server with the daemon's signal handling, and systemd's readiness and watchdog pings.
With ``[api] grpc_port`` the same service also answers KServe v2 / Triton gRPC (the cloud
package's ``GrpcServer``, on the same event loop, with the same limits and shared
memory regions).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud._runtime import ModelRuntime, Prepared
from devices.errors import EdgecutError, ModelInputError
from edge import runtime
from edge.agent._config import AgentConfig
from edge.agent._logging import log

if TYPE_CHECKING:
    from edge.agent._daemon import Agent

_SOCKET_BUFFER = 4 << 20


class AgentModelRuntime(ModelRuntime):
    """The cloud service's model runtime over an agent model slot.

    ``inputs``/``outputs`` follow the serving version, so model metadata stays right
    after an update; ``predict`` runs on the device through the agent.
    """

    max_batch_size = 0
    platform = "edgecut_agent"

    def __init__(self, agent: Agent, name: str) -> None:
        self._agent = agent
        self.name = name

    def _metas(self, specs: tuple[runtime.TensorSpec, ...]) -> tuple[Any, ...]:
        from cloud import datatype_of
        from cloud._runtime import TensorMeta

        return tuple(
            TensorMeta(s.name, datatype_of(s.dtype), tuple(-1 if d is None else d for d in s.shape))
            for s in specs
        )

    @property
    def inputs(self) -> tuple[Any, ...]:  # type: ignore[override]
        return self._metas(self._agent.slots[self.name].current.session.inputs)

    @property
    def outputs(self) -> tuple[Any, ...]:  # type: ignore[override]
        return self._metas(self._agent.slots[self.name].current.session.outputs)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._errors_mapped(partial(self._agent.infer, self.name, inputs))

    def prepare(self, inputs: dict[str, np.ndarray]) -> Prepared | None:
        got = self._agent.prepare(self.name, inputs)
        if got is None:
            return None
        run, inline = got
        return Prepared(partial(self._errors_mapped, run), inline)

    @staticmethod
    def _errors_mapped(run: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        from cloud.errors import ExecutionError, ProtocolError

        try:
            return run()
        except ModelInputError as exc:
            raise ProtocolError(str(exc)) from exc
        except EdgecutError as exc:
            raise ExecutionError(str(exc)) from exc

    def close(self) -> None:
        """The agent owns the sessions; the service must not close them."""


def build_app(agent: Agent) -> tuple[Any, Any, Any]:
    """The cloud package's ASGI app serving the agent's models, plus ``/agent/status``.

    Returns ``(app, service, inner)``: ``inner`` is the v2 protocol app that ``app``
    wraps (the fast lane serves inference requests from it directly); close the service
    when done.
    """
    from cloud import InferenceService, create_app
    from edge.agent._stream import STREAM_SUFFIX, AgentStreams, StreamModelRuntime

    service = InferenceService(dynamic_batching=False)
    from edge.agent._metrics import AgentCollector

    # the device's own figures (decisions, fallbacks, link, energy, power) on /metrics
    service.metrics.registry.register(AgentCollector(agent))
    registered: set[str] = set()
    lock = threading.Lock()
    agent.streams = AgentStreams(agent)

    def sync() -> None:
        with lock:
            for name in list(agent.slots):
                if name not in registered:
                    # One runtime per worker: the service gives each its own thread; they
                    # share the slot, so a swap reaches all of them at once.
                    instances = [AgentModelRuntime(agent, name)
                                 for _ in range(agent.config.api.workers)]
                    service.add_runtime(name, instances, version="live")
                    # <model>.stream: frames of a camera stream through one pipeline (a
                    # thread per frame waiting on it; see edge/agent/_stream.py).
                    service.add_runtime(name + STREAM_SUFFIX, [
                        StreamModelRuntime(instances[0], name, agent.streams,
                                           partial(agent.infer, name))
                        for _ in range(agent.config.stream.window)], version="live")
                    registered.add(name)
            for name in list(registered):
                if name not in agent.slots:
                    service.remove_model(name)
                    service.remove_model(name + STREAM_SUFFIX)
                    registered.discard(name)

    sync()
    agent.model_listeners.append(sync)
    inner = create_app(service, shared_memory=agent.config.api.shared_memory,
                       shm_allowed_uids=agent.config.api.shm_allow_uids)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/agent/status":
            fleet = agent.fleet
            body = json.dumps({
                **agent.status(),
                "fleet": None if fleet is None else {
                    "connected": fleet.connected.is_set(), "connects": fleet.connects,
                    "telemetry_pending": len(fleet.spool), **fleet.health()},
            }).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        # Server-Timing on inference responses: the time the request spent in the agent,
        # from its first byte handed over by the server to the response's headers, so a
        # client can tell the agent's share from the transport's.
        start = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000.0
                mine = f"agent;dur={ms:.3f}".encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"server-timing"]
                inner_timing = [v for k, v in message.get("headers", []) if k == b"server-timing"]
                # One header: the service's queue and compute metrics, then the agent's
                # own, which encloses them.
                headers.append((b"server-timing", b", ".join([*inner_timing, mine])))
                message = {**message, "headers": headers}
            await send(message)

        await inner(scope, receive, timed_send)

    return app, service, inner


def _sockets(config: AgentConfig) -> list[Any]:
    import socket

    socks = []
    if config.api.port:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((config.api.host, config.api.port))
        s.listen(128)
        socks.append(s)
    if config.api.unix_socket:
        path = Path(config.api.unix_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.bind(str(path))
        os.chmod(path, 0o660)
        u.listen(128)
        socks.append(u)
    for s in socks:
        # Room for a whole camera frame per read: a 1x3x224x224 float tensor is 600 KB,
        # and with the default buffers it crosses in many small reads, each a wake-up
        # of the event loop (the kernel caps these at net.core.rmem_max/wmem_max).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        s.set_inheritable(True)
    return socks


class AgentServer:
    """The agent's local API on its sockets, in the foreground or in a background thread.

    ``serve_forever()`` (the daemon) installs the agent's signal handlers: SIGTERM/SIGINT
    drain in-flight requests (bounded by ``agent.shutdown_grace_s``) and stop, SIGHUP
    reloads the config. ``start()``/``stop()`` run it in a thread (tests, benchmarks).
    """

    def __init__(self, agent: Agent) -> None:
        import uvicorn

        from cloud.http._server import uvicorn_config

        self.agent = agent
        self.app, self.service, self.inner_app = build_app(agent)
        inner = self.inner_app
        self.sockets = _sockets(agent.config)
        # The fast lane: the same answers, with inline inferences served inside the HTTP
        # protocol (``lane.answered`` counts them); None without httptools or when off.
        # Either way the protocol is wrapped in the cloud server's connection limits.
        self.lane: Any = None
        if agent.config.api.fast_lane:
            from cloud.http._lane import lane_protocol

            self.lane = lane_protocol(inner, timing="agent")
        config = uvicorn_config(self.app, base_protocol=self.lane,
                                limits=agent.config.api.connection_limits())
        config.timeout_graceful_shutdown = int(max(1, round(agent.config.shutdown_grace_s)))
        config.lifespan = "off"
        self.config = config
        outer = self

        class _Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self):  # type: ignore[override]
                # uvicorn's own handlers would re-raise the signal after shutdown and
                # skip the agent's cleanup (the offline status); these do not.
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handlers = ((signal.SIGTERM, outer._on_stop), (signal.SIGINT, outer._on_stop),
                            (signal.SIGHUP, outer._on_hup))
                old = {sig: signal.signal(sig, fn) for sig, fn in handlers}
                try:
                    yield
                finally:
                    for sig, fn in old.items():
                        signal.signal(sig, fn)

        self.server = _Server(config)
        self._thread: threading.Thread | None = None
        # gRPC beside HTTP: the same service, limits and shm regions, on the same loop.
        self.grpc: Any = None
        api = agent.config.api
        if api.grpc_port:
            try:
                from cloud.grpc._server import GrpcServer
            except ImportError as exc:
                raise EdgecutError(f"[api] grpc_port needs the grpc extra: pip install "
                                   f"'edgecut[grpc]' ({exc})") from exc
            self.grpc = GrpcServer(self.service, gate=inner.gate, shm=inner.shm,
                                   host=api.host, port=api.grpc_port)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` when TCP is on, else ``unix://PATH``."""
        api = self.agent.config.api
        if api.port:
            return f"http://{api.host}:{api.port}"
        return f"unix://{api.unix_socket}"

    def _on_stop(self, sig: int, frame: Any) -> None:
        log.info(json.dumps({"event": "shutdown", "signal": signal.Signals(sig).name,
                             "grace_s": self.agent.config.shutdown_grace_s}))
        _sd_notify("STOPPING=1")
        self.server.should_exit = True

    def _on_hup(self, sig: int, frame: Any) -> None:
        def work() -> None:
            try:
                self.agent.reload()
            except EdgecutError as exc:
                log.error(json.dumps({"event": "reload_failed", "error": str(exc)}))

        threading.Thread(target=work, name="agent-reload", daemon=True).start()

    @property
    def grpc_target(self) -> str | None:
        """``host:port`` of the gRPC endpoint, or None when it is off."""
        return None if self.grpc is None else self.grpc.target

    async def _serve_all(self) -> None:
        if self.grpc is not None:
            await self.grpc.start()
        try:
            await self.server.serve(sockets=self.sockets)
        finally:
            if self.grpc is not None:
                await self.grpc.stop(self.agent.config.shutdown_grace_s)

    def _serve(self) -> None:
        import asyncio

        if self.config.loop == "uvloop":
            import uvloop

            uvloop.run(self._serve_all())
        else:
            asyncio.run(self._serve_all())

    def serve_forever(self) -> None:
        try:
            self._serve()
        finally:
            self.close()

    def start(self, timeout: float = 20.0) -> AgentServer:
        self._thread = threading.Thread(target=self._serve, name="agent-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the agent's local API did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        self.service.close()
        for s in self.sockets:
            s.close()
        if self.agent.config.api.unix_socket:
            Path(self.agent.config.api.unix_socket).unlink(missing_ok=True)

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket when the service runs under one."""
    import socket

    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError:
        return False


def _systemd_watch(server: AgentServer, stop: threading.Event) -> None:
    """READY=1 once the API answers, then WATCHDOG=1 while it keeps answering.

    The watchdog pings only after a real request to the agent's own API succeeds, so a
    wedged event loop stops the pings and systemd restarts the service.
    """
    from edge.client import Client

    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    interval = usec / 2e6 if usec > 0 else 0.0
    with Client(server.url, timeout=max(interval, 1.0)) as client:
        while not stop.is_set() and not server.server.started:
            stop.wait(0.05)
        if stop.is_set():
            return
        _sd_notify("READY=1\nSTATUS=serving " + ", ".join(server.agent.slots))
        while interval and not stop.wait(interval):
            if client.live():
                _sd_notify("WATCHDOG=1")
