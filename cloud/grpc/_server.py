"""Running the gRPC servicer: a ``grpc.aio`` server on the HTTP server's event loop.

The core serves requests on one asyncio loop (its batchers resolve futures there, its
counters are touched there only), so the gRPC server shares the loop of the uvicorn
server beside it: :class:`GrpcServer` is started and stopped from coroutines on that loop
(``ServerThread(..., companions=[grpc_server])`` or ``edgecut serve --grpc-port``).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc

from cloud._gate import Gate
from cloud._service import InferenceService
from cloud.grpc._servicer import InferenceServicer

__all__ = ["GrpcServer"]

log = logging.getLogger("edgecut.cloud.grpc")


class GrpcServer:
    """Triton's ``GRPCInferenceService`` on ``host:port`` (port 0: a free one, read
    ``port`` after :meth:`start`).

    ``gate`` and ``shm`` are shared with the HTTP app of the same server (one token check,
    one set of limits, one set of shared memory regions). Messages above the gate's
    ``max_body_bytes`` are refused by gRPC itself (RESOURCE_EXHAUSTED).
    """

    def __init__(self, service: InferenceService, *, gate: Gate | None = None, shm: Any = None,
                 host: str = "127.0.0.1", port: int = 8001, max_streams: int = 1024,
                 max_bytes_elements: int = 1 << 20) -> None:
        self.service = service
        self.max_bytes_elements = max_bytes_elements
        self.gate = gate or Gate()
        self.shm = shm
        self.host = host
        self.port = port
        self.max_streams = max_streams
        self._server: Any = None

    @property
    def target(self) -> str:
        """``host:port`` as a gRPC client dials it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving (call on the service's event loop)."""
        limit = self.gate.max_body_bytes
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_concurrent_streams", self.max_streams),
            ("grpc.so_reuseport", 0),
        ])
        servicer = InferenceServicer(self.service, self.gate, self.shm,
                                     max_bytes_elements=self.max_bytes_elements)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        try:
            bound = server.add_insecure_port(f"{self._bind_host()}:{self.port}")
        except RuntimeError:  # grpcio's way of saying the address is taken or not here
            bound = 0
        if bound == 0:
            raise OSError(f"cannot bind the gRPC port {self.target} (in use, or not an "
                          "address of this host)")
        self.port = bound
        await server.start()
        self._server = server
        log.info("gRPC (KServe v2 / Triton GRPCInferenceService) on %s", self.target)

    def _bind_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting calls; calls in progress get ``grace_s`` to finish."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
