"""The offload client: the Open Inference Protocol (KServe v2) over pooled HTTP/1.1.

- one ``httpx.Client`` with keep-alive pooling, binary tensors (the cloud codec);
- a JWT in ``Authorization`` from a token file (re-read when it changes) or minted from a
  private key (ES256/RS256, refreshed before it expires);
- a per-request deadline: the timeout of every attempt is what is left of it;
- retries only where they are safe (the request never left, or the call is idempotent,
  which inference is) and only while the deadline leaves room;
- a circuit breaker (closed -> open after N failures -> half-open trial -> closed);
- optionally a watched upload: the body goes out in slices, the rate its writes progress
  at is measured (the socket keeps little unsent data, ``TCP_NOTSENT_LOWAT``, so writes
  progress at the path's rate), and a caller's ``watch`` may give it up part-way.

Errors are translated at this one boundary into the edgecut tree::

    OffloadError
    ├── CloudUnavailable   connection refused/reset, 502/503/504, circuit open
    ├── OffloadRejected    any other error status (the server's message kept)
    └── DeadlineExceeded   the deadline passed or would pass before an answer
        └── TransferAbandoned  the watch gave the upload up
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

# One breaker for the offload client and a chain's relay: it lives in ``cloud`` (which the
# relay may import and the edge already does) and is re-exported here, where it always was.
from cloud._breaker import CLOSED as CLOSED
from cloud._breaker import HALF_OPEN as HALF_OPEN
from cloud._breaker import OPEN as OPEN
from cloud._breaker import CircuitBreaker as CircuitBreaker
from devices.errors import (
    CloudUnavailable,
    ConfigError,
    DeadlineExceeded,
    OffloadError,
    OffloadRejected,
    TransferAbandoned,
)
from edge.policy._link import WATCH_SLICE_BYTES

# ---------------------------------------------------------------------------- tokens


class TokenSource(Protocol):
    """Anything that hands out a bearer token; ``invalidate`` forces a fresh one."""

    def token(self) -> str: ...

    def invalidate(self) -> None: ...


class StaticToken:
    """A fixed token string."""

    def __init__(self, token: str) -> None:
        self._token = token.strip()

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        pass


class FileToken:
    """A token read from a file, re-read when the file changes or the token nears expiry.

    The file is written by whoever provisions the device (``edgecut token``, a fleet
    update); reading it lazily means a rotated token is used without a restart.
    """

    def __init__(self, path: str | Path, *, refresh_before_s: float = 30.0) -> None:
        self.path = Path(path)
        self.refresh_before_s = refresh_before_s
        self._token = ""
        self._stamp: tuple[int, int] | None = None
        self._exp: float | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            try:
                st = self.path.stat()
            except OSError as exc:
                raise ConfigError(f"{self.path}: token file not readable: {exc}") from exc
            stamp = (st.st_mtime_ns, st.st_size)
            near_exp = self._exp is not None and self._exp - time.time() < self.refresh_before_s
            if stamp != self._stamp or near_exp or not self._token:
                text = self.path.read_text().strip()
                if not text:
                    raise ConfigError(f"{self.path}: token file is empty")
                self._token, self._stamp, self._exp = text, stamp, _jwt_exp(text)
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._stamp = None


def _jwt_exp(token: str) -> float | None:
    try:
        import jwt

        claims = jwt.decode(token, options={"verify_signature": False})
        exp = claims.get("exp")
        return float(exp) if exp is not None else None
    except Exception:  # not a JWT we can read: treat as opaque, never expiring
        return None


class KeyToken:
    """Mints JWTs with a private key (claims ``sub``, ``aud``, ``iss``, ``iat``, ``exp``,
    ``models``) and mints a new one ``refresh_before_s`` before the current expires."""

    def __init__(self, private_key: str | Path | bytes, *, subject: str,
                 audience: str = "edgecut", issuer: str = "edgecut", models: Sequence[str] = ("*",), algorithm: str = "ES256",
                 ttl_s: float = 600.0, refresh_before_s: float = 60.0,
                 key_id: str | None = None) -> None:
        if algorithm not in ("ES256", "RS256", "ES384", "RS384", "EdDSA"):
            raise ConfigError(f"JWT algorithm {algorithm!r}: expected ES256 or RS256 "
                              "(asymmetric keys only)")
        if isinstance(private_key, bytes):
            self._key = private_key
        else:
            path = Path(private_key)
            try:
                self._key = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{path}: private key not readable: {exc}") from exc
        self.subject, self.audience, self.models = subject, audience, list(models)
        self.issuer = issuer
        self.algorithm, self.ttl_s, self.refresh_before_s = algorithm, ttl_s, refresh_before_s
        self.key_id = key_id
        self._token = ""
        self._exp = 0.0
        self._lock = threading.Lock()
        self.minted = 0

    def token(self) -> str:
        with self._lock:
            now = time.time()
            if not self._token or self._exp - now < self.refresh_before_s:
                import jwt

                claims = {"sub": self.subject, "aud": self.audience, "iss": self.issuer,
                          "iat": int(now),
                          "exp": int(now + self.ttl_s), "models": self.models}
                headers = {"kid": self.key_id} if self.key_id else None
                try:
                    self._token = jwt.encode(claims, self._key, algorithm=self.algorithm,
                                             headers=headers)
                except (ValueError, TypeError, jwt.PyJWTError) as exc:
                    raise ConfigError(f"cannot sign a {self.algorithm} JWT with the given "
                                      f"private key: {exc}") from exc
                self._exp = now + self.ttl_s
                self.minted += 1
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = ""


# ---------------------------------------------------------------------------- client


@dataclass(frozen=True)
class UploadProgress:
    """How a watched upload is going.

    ``rate_bps`` is the rate the writes progressed at since the path first held one back;
    ``held_bytes`` what was handed over until then: the path's buffers, in flight, not
    yet delivered.
    """

    elapsed_s: float
    sent_bytes: int
    total_bytes: int
    rate_bps: float
    held_bytes: int

    def serialise_s(self) -> float:
        """Time the whole body takes through the path at this rate: with the path's
        one-way delay added, when its last byte arrives after the first one was written."""
        if self.rate_bps <= 0:
            return float("inf")
        return self.total_bytes * 8.0 / self.rate_bps


# A watched body goes out in slices of WATCH_SLICE_BYTES (edge.policy._link); a write
# that waits longer than _BLOCKED_S was held back by the path; the rate is read once the
# path has held the writes back for at least _MIN_RATE_SPAN_S.
_BLOCKED_S = 0.002
_MIN_RATE_SPAN_S = 0.015
_NOTSENT_LOWAT = 16 * 1024


class _BodyProgress:
    """How much of a request body the network has taken (bytes whose write returned) and
    when the last of it was handed over (``perf_counter``; None until it all was): what a
    leg that runs out of time can say of the uplink."""

    __slots__ = ("sent", "done_at")

    def __init__(self) -> None:
        self.sent = 0
        self.done_at: float | None = None


def _watched_body(body: bytes, watch: Callable[[UploadProgress], str] | None,
                  progress: _BodyProgress | None = None) -> Iterator[bytes]:
    """Yield ``body`` in slices, noting in ``progress`` what was handed over; after each
    write the path held back, ask ``watch`` (if any) whether to go on (it returns a reason
    to give up, or "").

    The path takes data in bursts as its buffers drain, so the rate is the average since
    the first write it held back, read just after such a write (a burst's end would
    show the rate of the socket, not the path's)."""
    total = len(body)
    progress = progress if progress is not None else _BodyProgress()
    t0 = last = time.perf_counter()
    first: tuple[float, int] | None = None  # (time, bytes) when the path first held a write
    for sent in range(0, total, WATCH_SLICE_BYTES):
        if sent:
            progress.sent = sent  # the slices before this one were written
            now = time.perf_counter()
            if watch is not None and now - last > _BLOCKED_S:
                if first is None:
                    # What went before is in the path's buffers; this wait also held the
                    # path's one-way delay, so the rate is measured from here on.
                    first = (now, sent)
                elif now - first[0] >= _MIN_RATE_SPAN_S:
                    rate = (sent - first[1]) * 8.0 / (now - first[0])
                    why = watch(UploadProgress(now - t0, sent, total, rate, first[1]))
                    if why:
                        raise TransferAbandoned(why, rate_bps=rate, sent_bytes=sent,
                                                seconds=now - t0)
            last = now
        yield body[sent:sent + WATCH_SLICE_BYTES]
    progress.sent = total
    progress.done_at = time.perf_counter()


@dataclass(frozen=True)
class InferResult:
    """Outputs of one offloaded inference and what it cost on the wire.

    ``server_s`` is the server's own compute time when it reports one (the standard
    ``Server-Timing`` header), else ``None``.
    """

    outputs: dict[str, np.ndarray]
    seconds: float
    up_bytes: int
    down_bytes: int
    server_s: float | None
    attempts: int
    # The model's own run, without the wait in the server's queue (``edgecut serve``'s
    # ``compute`` metric), when the server reports it: a pipelined stream's cloud stage.
    server_compute_s: float | None = None


def _server_timing(headers: Mapping[str, str]) -> float | None:
    """Seconds the server spent on the request, from its ``Server-Timing`` header: the
    ``total`` (or ``agent``) metric when it sends one, which encloses the others, else the
    sum of every metric's duration (``edgecut serve`` sends ``queue`` and ``compute``)."""
    raw = headers.get("server-timing")
    if not raw:
        return None
    durations: dict[str, float] = {}
    for metric in raw.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        for param in params:
            if param.startswith("dur="):
                try:
                    durations[name] = durations.get(name, 0.0) + float(param[4:]) / 1000.0
                except ValueError:
                    pass
    if not durations:
        return None
    for enclosing in ("total", "agent"):
        if enclosing in durations:
            return durations[enclosing]
    return sum(durations.values())


def _server_compute(headers: Mapping[str, str]) -> float | None:
    """Seconds of the ``compute`` metric of a ``Server-Timing`` header, if there is one."""
    for metric in (headers.get("server-timing") or "").split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        if name == "compute":
            for param in params:
                if param.startswith("dur="):
                    try:
                        return float(param[4:]) / 1000.0
                    except ValueError:
                        return None
    return None


_RETRYABLE_STATUS = (502, 503, 504)


class OffloadClient:
    """Client of any Open Inference Protocol server (``edgecut serve``, Triton, KServe).

    ``infer`` sends binary tensors and returns :class:`InferResult`; failures raise the
    :class:`OffloadError` leaves. ``transport`` may be any ``httpx.BaseTransport`` (for
    fault injection in tests).
    """

    def __init__(self, base_url: str, *, token: TokenSource | None = None,
                 timeout_s: float = 10.0, max_retries: int = 1,
                 breaker: CircuitBreaker | None = None, max_connections: int = 4,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_source = token
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.breaker = breaker or CircuitBreaker()
        if transport is None:
            # Little unsent data in the socket: a watched upload's writes then progress at
            # the path's rate instead of vanishing into a send buffer of megabytes.
            opts = ([(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT)]
                    if hasattr(socket, "TCP_NOTSENT_LOWAT") else [])
            transport = httpx.HTTPTransport(
                socket_options=opts,
                limits=httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections,
                                    keepalive_expiry=60.0))
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections,
                                keepalive_expiry=60.0),
            transport=transport,
        )

    # -- plumbing -----------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self.token_source is None:
            return {}
        return {"Authorization": f"Bearer {self.token_source.token()}"}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OffloadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health -------------------------------------------------------------------------
    def live(self, timeout_s: float = 2.0) -> bool:
        try:
            return self._http.get("/v2/health/live", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self, model: str | None = None, timeout_s: float = 2.0) -> bool:
        path = "/v2/health/ready" if model is None else f"/v2/models/{model}/ready"
        try:
            return self._http.get(path, headers=self._headers(),
                                  timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def ping(self, timeout_s: float = 2.0) -> float:
        """Round trip of ``GET /v2/health/live`` in seconds (a light RTT probe)."""
        t0 = time.perf_counter()
        try:
            r = self._http.get("/v2/health/live", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise CloudUnavailable(f"{self.base_url}: health probe failed: {exc}") from exc
        if r.status_code != 200:
            raise CloudUnavailable(f"{self.base_url}: /v2/health/live answered {r.status_code}")
        return time.perf_counter() - t0

    # -- inference ----------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None, *, deadline: float | None = None,
              request_id: str | None = None, idempotent: bool = True,
              watch: Callable[[UploadProgress], str] | None = None) -> InferResult:
        """Run ``model`` on the server. ``deadline`` is a ``time.monotonic()`` instant.

        ``watch`` sees the upload's progress between slices of the body and may give it
        up by returning a reason; that raises :class:`TransferAbandoned` at once (no
        retry: the caller has better things to do with the time)."""
        from cloud import encode_infer_request

        if not self.breaker.allow():
            raise CloudUnavailable(f"{self.base_url}: circuit open after repeated failures")
        body, headers = encode_infer_request(
            inputs, outputs, binary=True, binary_outputs=True,
            request_id=request_id or uuid.uuid4().hex[:16])
        url = f"/v2/models/{model}/infer"

        def attempt(timeout: float) -> tuple[dict[str, np.ndarray], int, int, float | None]:
            sent_headers = {**headers, **self._headers()}
            # Always in slices, watched or not: a leg that runs out of time must tell a
            # link that could not take the upload from a server slow to answer it.
            progress = _BodyProgress()
            t_attempt = time.perf_counter()
            try:
                resp = self._http.post(url, content=_watched_body(body, watch, progress),
                                       headers={**sent_headers,
                                                "Content-Length": str(len(body))},
                                       timeout=httpx.Timeout(timeout))
            except httpx.TimeoutException as exc:
                connected = not isinstance(exc, httpx.ConnectTimeout)
                raise AttemptFailed(DeadlineExceeded(
                    f"model '{model}': no answer within {timeout * 1000:.0f} ms ({exc!r})",
                    sent_bytes=progress.sent if connected else 0,
                    upload_s=(progress.done_at - t_attempt
                              if progress.done_at is not None else None),
                    seconds=time.perf_counter() - t_attempt),
                    sent=connected) from exc
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError) as exc:
                raise AttemptFailed(
                    CloudUnavailable(f"{self.base_url}: cannot reach the service: {exc}"),
                    sent=not isinstance(exc, httpx.ConnectError)) from exc
            except httpx.HTTPError as exc:
                raise AttemptFailed(
                    CloudUnavailable(f"{self.base_url}: transport error: {exc}")) from exc
            if resp.status_code == 200:
                from cloud import decode_infer_response

                try:
                    result = decode_infer_response(resp.content, resp.headers)
                except Exception as exc:  # a server that speaks the protocol wrongly
                    raise OffloadRejected(f"model '{model}': malformed response: {exc}",
                                          status=200) from exc
                return (result, len(body), len(resp.content), _server_timing(resp.headers),
                        _server_compute(resp.headers))
            message = _error_message(resp)
            if resp.status_code in (401, 403):
                raise AuthRefused(OffloadRejected(
                    f"model '{model}': server answered {resp.status_code}: {message}",
                    status=resp.status_code))
            if resp.status_code not in _RETRYABLE_STATUS:
                raise OffloadRejected(
                    f"model '{model}': server answered {resp.status_code}: {message}",
                    status=resp.status_code)
            raise AttemptFailed(CloudUnavailable(
                f"model '{model}': server answered {resp.status_code}: {message}"))

        return self._with_retries(model, attempt, deadline, idempotent)

    def _with_retries(self, model: str,
                      attempt: Callable[[float], tuple[dict[str, np.ndarray], int, int, float | None,
                                                         float | None]],
                      deadline: float | None, idempotent: bool) -> InferResult:
        """The deadline, retry, re-authentication and breaker rules around ``attempt``
        (one try with the given timeout), the same for every transport.

        ``attempt`` returns (outputs, bytes up, bytes down, server seconds, server compute
        seconds) or raises:
        :class:`AttemptFailed` (may be retried), :class:`AuthRefused` (retried once with
        a fresh token), ``OffloadRejected`` (the service is up, the request is wrong) or
        ``TransferAbandoned`` (given up by the caller's watch).
        """
        attempts = 0
        auth_retried = False
        t_start = time.perf_counter()
        while True:
            attempts += 1
            now = time.monotonic()
            timeout = self.timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - now)
                if timeout <= 0:
                    self.breaker.release()
                    raise DeadlineExceeded(f"model '{model}': deadline passed before an answer "
                                           f"(after {attempts - 1} attempt(s))")
            t0 = time.perf_counter()
            try:
                outputs, up, down, server_s, compute_s = attempt(timeout)
            except TransferAbandoned:
                self.breaker.release()
                raise
            except AuthRefused as exc:
                if self.token_source and not auth_retried:
                    # The token may have been rotated under us: mint or read once more.
                    auth_retried = True
                    self.token_source.invalidate()
                    continue
                self.breaker.record_success()  # the service is up; the request is refused
                raise exc.error from None
            except OffloadRejected:
                self.breaker.record_success()  # the service is up; the request is wrong
                raise
            except AttemptFailed as exc:
                error, sent = exc.error, exc.sent
            else:
                self.breaker.record_success()
                return InferResult(outputs, time.perf_counter() - t_start, up, down, server_s,
                                   attempts, compute_s)
            # Retry only when it is safe and the deadline leaves room for another try.
            spent = time.perf_counter() - t0
            room = (deadline - time.monotonic()) if deadline is not None else self.timeout_s
            safe = idempotent or not sent
            if (attempts > self.max_retries or not safe or room < max(spent, 0.005)
                    or isinstance(error, DeadlineExceeded)):
                # Running out of our own deadline says the link or the cloud is slow, not
                # that it is down: only failures to get an answer open the circuit.
                if not isinstance(error, DeadlineExceeded):
                    self.breaker.record_failure()
                else:
                    self.breaker.release()
                raise error
            time.sleep(min(0.02 * attempts, max(room / 4, 0.0)))


class AttemptFailed(Exception):
    """One try got no answer (``error``); ``sent``: the request may have reached the server."""

    def __init__(self, error: OffloadError, sent: bool = True) -> None:
        super().__init__(str(error))
        self.error, self.sent = error, sent


class AuthRefused(Exception):
    """The server refused the token (``error`` is what to raise if a fresh one fails too)."""

    def __init__(self, error: OffloadRejected) -> None:
        super().__init__(str(error))
        self.error = error


def _error_message(resp: httpx.Response) -> str:
    try:
        data: Any = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return str(data)[:200]
