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
    relay_breaker_failures  failures of the next hop in a row that open its circuit
                       breaker (default 3, as policy.toml's [offload] breaker_failures)
    relay_breaker_reset_s   how long the breaker stays open before one trial request
                       (default 5, as [offload] breaker_reset_s)

The relay declares the rest model's signature, so a client sees one model whatever
happens behind it. When the next hop fails in any way (refused, times out, answers an
error or something that does not decode) the relay finishes the model itself from the
tensors it received, so the request is not lost. A next hop that failed is remembered
by a circuit breaker (the offload client's, ``cloud._breaker``; one per version, shared by
its instances): while it is open the relay finishes every request itself without trying
the next hop, so no request pays for a dead node (a timeout of ``relay_timeout_s`` when
the node is unreachable rather than refusing); after ``relay_breaker_reset_s`` one
request goes as the trial and an answer closes the breaker. Outcomes are counted
(``edgecut_relay_requests{model, outcome="forwarded"|"finished_here"|"next_hop_down"}``:
``finished_here`` after a failed try, ``next_hop_down`` without one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cloud._breaker import CircuitBreaker
from cloud._runtime import ModelRuntime, OnnxRuntime
from cloud.errors import RepositoryError

log = logging.getLogger("edgecut.relay")

RELAY_KEYS = ("relay_next_url", "relay_next_model", "relay_forward", "relay_timeout_s",
              "relay_token_file", "relay_breaker_failures", "relay_breaker_reset_s")


class _HopRefused(RuntimeError):
    """The next hop answered, refusing the request (4xx): it is up."""


class RelayRuntime(ModelRuntime):
    """One instance of a relaying model version (see the module docstring)."""

    platform = "edgecut_relay"

    def __init__(self, rest: OnnxRuntime, segment: OnnxRuntime | None, *, next_url: str,
                 next_model: str, forward: Sequence[str], timeout_s: float = 10.0,
                 token_file: str | Path | None = None,
                 on_outcome: Callable[[str], None] | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
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
        self.breaker = breaker or CircuitBreaker()
        self._client = httpx.Client(base_url=self.next_url, timeout=timeout_s)
        self._lock = threading.Lock()
        self.forwarded = 0
        self.finished_here = 0
        self.skipped = 0  # finished here without trying: the next hop's breaker was open

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
            kind = _HopRefused if 400 <= resp.status_code < 500 and resp.status_code != 429 else RuntimeError
            raise kind(f"next hop answered HTTP {resp.status_code}: {resp.text[:200]}")
        got = decode_infer_response(resp.content, resp.headers)
        out = {}
        for m in self.outputs:
            value = got.get(m.name, made.get(m.name))
            if value is None:
                raise RuntimeError(f"next hop's answer lacks output {m.name!r}")
            out[m.name] = value
        return out

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.breaker.allow():
            # the next hop failed lately: finish here without paying for another try
            out = self.rest.predict(inputs)
            with self._lock:
                self.skipped += 1
            self._on_outcome("next_hop_down")
            return out
        try:
            out = self._relay(inputs)
        except Exception as exc:  # noqa: BLE001 - any failure of the next hop: finish here
            if isinstance(exc, _HopRefused):
                self.breaker.record_success()  # it is up; this request is what it refused
            else:
                self.breaker.record_failure()
            log.warning("relay to %s (%s) failed, finishing here: %s: %s", self.next_url,
                        self.next_model, type(exc).__name__, exc)
            out = self.rest.predict(inputs)
            with self._lock:
                self.finished_here += 1
            self._on_outcome("finished_here")
            return out
        self.breaker.record_success()
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
    try:
        failures = int(params.get("relay_breaker_failures", "3"))
        reset_s = float(params.get("relay_breaker_reset_s", "5"))
    except ValueError:
        raise RepositoryError(f"model {name!r}: relay_breaker_failures must be an integer and "
                              "relay_breaker_reset_s a number") from None
    if failures < 1 or not reset_s >= 0:
        raise RepositoryError(f"model {name!r}: relay_breaker_failures must be >= 1 and "
                              f"relay_breaker_reset_s >= 0, got {failures} and {reset_s}")
    # one breaker for the version: every instance sees what the others learnt
    breaker = CircuitBreaker(failures, reset_s)
    seg_path = path.parent / "segment.onnx"
    forward = [t for t in params["relay_forward"].split(",") if t]
    return [
        RelayRuntime(r, make_segment(seg_path) if seg_path.is_file() else None,
                     next_url=params["relay_next_url"], next_model=params["relay_next_model"],
                     forward=forward, timeout_s=timeout,
                     token_file=params.get("relay_token_file") or None, on_outcome=on_outcome,
                     breaker=breaker)
        for r in rest
    ]
