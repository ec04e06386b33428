"""A middle node of a chain: run this node's segment, forward the rest to the next hop.

A chain plan (``partition.write_chain``) gives a middle node a model version folder with
``model.onnx`` (the whole rest of the model from the tensors that arrive here),
``segment.onnx`` (the part this node runs; absent when it only relays) and these
``config.pbtxt`` parameters::

    relay_next_url     the next node's base URL (http://host:port)
    relay_next_model   the model name the next node serves its part under
    relay_forward      comma-separated tensors to send on (made here or passed through)
    relay_timeout_s    how long the next hop may take (default 10)
    relay_token_file   optional: a file holding the bearer token for the next hop (read on
                       every request, so a rotated token is picked up)

The relay declares the rest model's signature, so a client sees one model whatever
happens behind it. When the next hop fails in any way (refused, times out, answers an
error or something that does not decode) the relay finishes the model itself from the
tensors it received, so the request is not lost; outcomes are counted
(``edgecut_relay_requests{model, outcome="forwarded"|"finished_here"}``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cloud._runtime import ModelRuntime, OnnxRuntime
from cloud.errors import RepositoryError

log = logging.getLogger("edgecut.relay")

RELAY_KEYS = ("relay_next_url", "relay_next_model", "relay_forward", "relay_timeout_s",
              "relay_token_file")


class RelayRuntime(ModelRuntime):
    """One instance of a relaying model version (see the module docstring)."""

    platform = "edgecut_relay"

    def __init__(self, rest: OnnxRuntime, segment: OnnxRuntime | None, *, next_url: str,
                 next_model: str, forward: Sequence[str], timeout_s: float = 10.0,
                 token_file: str | Path | None = None,
                 on_outcome: Callable[[str], None] | None = None) -> None:
        import httpx

        if not next_url.startswith(("http://", "https://")):
            raise RepositoryError(f"relay: relay_next_url must be an http(s) URL, got {next_url!r}")
        if not forward:
            raise RepositoryError("relay: relay_forward names no tensor to send on")
        if timeout_s <= 0:
            raise RepositoryError(f"relay: relay_timeout_s must be > 0, got {timeout_s}")
        known = {m.name for m in rest.inputs} | ({m.name for m in segment.outputs} if segment else set())
        unknown = [t for t in forward if t not in known]
        if unknown:
            raise RepositoryError(f"relay: relay_forward names {unknown}, which neither arrive "
                                  "here nor are made by segment.onnx")
        self.rest = rest
        self.segment = segment
        self.inputs = rest.inputs
        self.outputs = rest.outputs
        self.max_batch_size = rest.max_batch_size
        self.next_url = next_url.rstrip("/")
        self.next_model = next_model
        self.forward = tuple(forward)
        self.timeout_s = timeout_s
        self.token_file = Path(token_file) if token_file else None
        self._on_outcome = on_outcome or (lambda _o: None)
        self._client = httpx.Client(base_url=self.next_url, timeout=timeout_s)
        self._lock = threading.Lock()
        self.forwarded = 0
        self.finished_here = 0

    def _headers(self) -> dict[str, str]:
        if self.token_file is None:
            return {}
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    def _relay(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cloud.protocol import decode_infer_response, encode_infer_request

        made: dict[str, np.ndarray] = {}
        if self.segment is not None:
            made = self.segment.predict({m.name: inputs[m.name] for m in self.segment.inputs})
        send = {t: made[t] if t in made else inputs[t] for t in self.forward}
        body, headers = encode_infer_request(send, None, binary=True, binary_outputs=True)
        resp = self._client.post(f"/v2/models/{self.next_model}/infer", content=body,
                                 headers={**headers, **self._headers()})
        if resp.status_code != 200:
            raise RuntimeError(f"next hop answered HTTP {resp.status_code}: {resp.text[:200]}")
        got = decode_infer_response(resp.content, resp.headers)
        out = {}
        for m in self.outputs:
            value = got.get(m.name, made.get(m.name))
            if value is None:
                raise RuntimeError(f"next hop's answer lacks output {m.name!r}")
            out[m.name] = value
        return out

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            out = self._relay(inputs)
        except Exception as exc:  # noqa: BLE001 - any failure of the next hop: finish here
            log.warning("relay to %s (%s) failed, finishing here: %s: %s", self.next_url,
                        self.next_model, type(exc).__name__, exc)
            out = self.rest.predict(inputs)
            with self._lock:
                self.finished_here += 1
            self._on_outcome("finished_here")
            return out
        with self._lock:
            self.forwarded += 1
        self._on_outcome("forwarded")
        return out

    def close(self) -> None:
        self._client.close()
        self.rest.close()
        if self.segment is not None:
            self.segment.close()


def relay_instances(name: str, path: Path, params: Mapping[str, str], rest: Sequence[OnnxRuntime],
                    make_segment: Callable[[Path], OnnxRuntime],
                    on_outcome: Callable[[str], None] | None = None) -> list[RelayRuntime]:
    """Wrap each instance of a version whose config names a next hop in a relay."""
    missing = [k for k in ("relay_next_url", "relay_next_model", "relay_forward") if not params.get(k)]
    if missing:
        raise RepositoryError(f"model {name!r}: relay parameters {missing} are missing")
    try:
        timeout = float(params.get("relay_timeout_s", "10"))
    except ValueError:
        raise RepositoryError(f"model {name!r}: relay_timeout_s must be a number") from None
    seg_path = path.parent / "segment.onnx"
    forward = [t for t in params["relay_forward"].split(",") if t]
    return [
        RelayRuntime(r, make_segment(seg_path) if seg_path.is_file() else None,
                     next_url=params["relay_next_url"], next_model=params["relay_next_model"],
                     forward=forward, timeout_s=timeout,
                     token_file=params.get("relay_token_file") or None, on_outcome=on_outcome)
        for r in rest
    ]
