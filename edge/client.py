"""``edge.Client``: a small Python API for applications on the board.

It speaks the Open Inference Protocol (binary tensors, keep-alive) to the edge agent over
TCP or its Unix socket, and works unchanged against the cloud service or any v2 server::

    with edge.Client("unix:///run/edgecut/agent.sock") as client:
        outputs = client.infer("squeezenet", {"data_0": image})

Errors: a request the server rejects raises :class:`edge.ModelInputError` (HTTP 400, the
server's message names the tensor) or :class:`edge.OffloadRejected` (other statuses, with
``status``); a server that cannot be reached raises :class:`edge.CloudUnavailable`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from devices.errors import CloudUnavailable, ModelInputError, OffloadRejected


class Client:
    """A keep-alive client of one inference server (the local agent by default).

    ``url`` is ``http://host:port`` or ``unix:///path/to/socket``.
    """

    def __init__(self, url: str = "http://127.0.0.1:8800", *, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None) -> None:
        if url.startswith("unix://"):
            path = url[len("unix://"):]
            if not path:
                raise ValueError(f"client url {url!r}: expected unix:///path/to/socket")
            transport = httpx.HTTPTransport(uds=path)
            base = "http://edgecut-agent"
        elif url.startswith(("http://", "https://")):
            transport = httpx.HTTPTransport()
            base = url.rstrip("/")
        else:
            raise ValueError(f"client url {url!r}: expected http(s)://host:port or unix:///path")
        self.url = url
        self._http = httpx.Client(base_url=base, transport=transport, timeout=timeout,
                                  headers=dict(headers or {}))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CloudUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _raise_for(resp: httpx.Response, what: str) -> None:
        if resp.status_code < 400:
            return
        try:
            message = resp.json().get("error", resp.text)
        except (ValueError, AttributeError):
            message = resp.text
        if resp.status_code == 400:
            raise ModelInputError(f"{what}: {message}")
        raise OffloadRejected(f"{what}: HTTP {resp.status_code}: {message}", resp.status_code)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None, *, version: str | None = None,
              binary: bool = True) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (arrays by input name); return outputs by name."""
        from cloud.protocol import decode_infer_response, encode_infer_request

        body, headers = encode_infer_request(inputs, outputs, binary=binary,
                                             binary_outputs=binary)
        return decode_infer_response(*self.infer_raw(model, body, headers, version=version))

    def infer_raw(self, model: str, body: bytes, headers: Mapping[str, str], *,
                  version: str | None = None) -> tuple[bytes, Mapping[str, str]]:
        """Send an already encoded request body (benchmarks re-send one body)."""
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        resp = self._request("POST", path, content=body, headers=headers)
        self._raise_for(resp, f"model '{model}'")
        return resp.content, resp.headers

    def live(self) -> bool:
        """True when the server process answers ``/v2/health/live``."""
        try:
            return self._request("GET", "/v2/health/live").status_code == 200
        except CloudUnavailable:
            return False

    def ready(self, model: str | None = None) -> bool:
        """True when the server (or ``model``) is ready to serve."""
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        try:
            return self._request("GET", path).status_code == 200
        except CloudUnavailable:
            return False

    def metadata(self, model: str | None = None) -> dict[str, Any]:
        """Server metadata, or a model's (inputs and outputs with datatypes and shapes)."""
        resp = self._request("GET", f"/v2/models/{model}" if model else "/v2")
        self._raise_for(resp, f"model '{model}'" if model else "server metadata")
        return resp.json()

    def agent_status(self) -> dict[str, Any]:
        """The agent's own status (models and versions, profile, config version)."""
        resp = self._request("GET", "/agent/status")
        self._raise_for(resp, "agent status")
        return json.loads(resp.content)
