"""``POST /v2/models/{m}[/versions/{v}]/infer``: on the ordinary route, and served without a
task for the local API's fast lane (:mod:`cloud.http._lane`).

Datatypes, shapes and element counts are checked against the model before any tensor is
decoded, so a request the model cannot take costs nothing to refuse. On the event loop
runs only what costs O(tensors) (binary numeric tensors are a view of the body); large
JSON and BYTES bodies are decoded and encoded in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from typing import Any

from cloud._gate import Gate
from cloud._peer import Peer, infer_into_shm, shm_view
from cloud._service import InferenceService, InferResult
from cloud._shm import SharedMemoryRegistry
from cloud.errors import CloudError
from cloud.http._answer import Answer, Answers, timed
from cloud.http._codec import HEADER_LENGTH, decode_infer_request, encode_infer_response
from cloud.http._extensions import off_loop
from cloud.http._request import Request

__all__ = ["InferRoute"]

# JSON bodies larger than this are decoded and encoded off the event loop (a 1x3x224x224
# float tensor as JSON takes ~100 ms to parse, which would stall every other request).
_OFFLOAD_JSON_BYTES = 64 * 1024
_OFFLOAD_JSON_ELEMENTS = 16 * 1024


class InferRoute:
    """Inference requests of one app: decoded, checked, served and answered."""

    def __init__(self, service: InferenceService, gate: Gate, shm: SharedMemoryRegistry | None,
                 answers: Answers, max_bytes_elements: int) -> None:
        self.service = service
        self.gate = gate
        self.shm = shm
        self.answers = answers
        self.max_bytes_elements = max_bytes_elements

    def shm_view(self, principal: Any, peer: Peer | None) -> Any:
        """The request's view of the shared memory regions (``None``: the extension is off)."""
        if self.shm is None:
            return None
        return shm_view(self.shm, principal, peer)

    async def handle(self, req: Request, model: str, version: str | None,
                     principal: Any) -> Answer:
        """The ordinary route (the caller has checked the method and ``principal``'s scope)."""
        service = self.service
        service.require(model, version)  # 404 before reading a body for nothing
        headers = req.headers
        body = await req.body(self.gate)
        shm = self.shm_view(principal, req.peer)
        check = service.input_check(model, version, self.max_bytes_elements)
        if len(body) > _OFFLOAD_JSON_BYTES and (HEADER_LENGTH.lower() not in headers
                                                or service.takes_bytes(model, version)):
            request = await off_loop(functools.partial(
                decode_infer_request, body, headers, shared_memory=shm, check=check))
        else:
            request = decode_infer_request(body, headers, shared_memory=shm, check=check)
        result, placed = await infer_into_shm(service, model, version, request, shm)
        binary = [name for name in result.outputs
                  if name not in placed and request.wants_binary(name)]
        json_elements = sum(a.size for n, a in result.outputs.items()
                            if n not in binary and n not in placed)
        kwargs = {"model_version": result.version, "request_id": request.id, "binary": binary,
                  "shared_memory": placed}
        if json_elements > _OFFLOAD_JSON_ELEMENTS:
            out, out_headers = await off_loop(
                functools.partial(encode_infer_response, model, result.outputs, **kwargs))
        else:
            out, out_headers = encode_infer_response(model, result.outputs, **kwargs)
        return 200, out, timed(out_headers, result)

    def serve_now(self, model: str, headers: dict[str, str], body: bytes, peer: Peer | None = None
                  ) -> Answer | Coroutine[Any, Any, Answer] | None:
        """See :meth:`cloud.http._app._App.serve_now`."""
        answers = self.answers
        request_id = answers.request_id(headers)
        path = f"/v2/models/{model}/infer"
        gate = self.gate
        if (headers.get("content-encoding", "identity") != "identity"
                or (HEADER_LENGTH.lower() not in headers and len(body) > _OFFLOAD_JSON_BYTES)
                or gate.in_flight >= gate.max_in_flight
                or len(body) > gate.max_body_bytes
                or (len(body) > _OFFLOAD_JSON_BYTES and self.service.takes_bytes(model, None))):
            return None
        refused: list[CloudError] = []
        try:
            # Who may use the model first: nothing is decoded for a refused caller (the
            # ordinary route then answers the refusal).
            principal = gate.principal(headers.get("authorization"))
            if principal is not None:
                principal.require(model)
            check = self.service.input_check(model, None, self.max_bytes_elements)

            def lane_check(name: str, datatype: str, shape: tuple[int, ...]) -> None:
                try:
                    check(name, datatype, shape)  # type: ignore[misc]
                except CloudError as exc:
                    refused.append(exc)
                    raise

            request = decode_infer_request(
                body, headers, shared_memory=self.shm_view(principal, peer),
                check=None if check is None else lane_check)
        except CloudError:
            if refused:  # the model's own refusal: the lane answers it as the route would
                return answers.final(*answers.error(refused[0], "POST", path, request_id),
                                     request_id)
            return None
        if any("shared_memory_region" in o.parameters for o in request.outputs or ()):
            return None
        gate.in_flight += 1
        try:
            result = self.service.infer_now(model, request)
        except CloudError as exc:
            return answers.final(*answers.error(exc, "POST", path, request_id), request_id)
        finally:
            gate.in_flight -= 1
        if result is None:
            return None
        if isinstance(result, InferResult):
            return answers.final(*_answer(model, request, result), request_id)

        async def settle() -> Answer:
            gate.in_flight += 1
            try:
                done = await result
            except CloudError as exc:
                return answers.final(*answers.error(exc, "POST", path, request_id), request_id)
            finally:
                gate.in_flight -= 1
            return answers.final(*_answer(model, request, done), request_id)

        return settle()


def _answer(model: str, request: Any, result: InferResult) -> Answer:
    """The response to an inference whose outputs all go in the body."""
    binary = [name for name in result.outputs if request.wants_binary(name)]
    out, out_headers = encode_infer_response(
        model, result.outputs, model_version=result.version, request_id=request.id,
        binary=binary)
    return 200, out, timed(out_headers, result)
