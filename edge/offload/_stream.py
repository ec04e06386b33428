"""Run a stream of frames as a pipeline: device head, uplink, cloud tail, downlink.

While frame n uploads, the device computes frame n+1's head; up to ``window`` frames are
past the device at once (each cloud leg is its own request on the keep-alive pool, so
the link and the cloud overlap too). Results come back in submission order.

Flow control, end to end:

* ``submit`` puts a frame in a queue of ``queue_size``. When it is full the ``overload``
  policy says what happens: ``block`` (back-pressure: the source waits), ``drop_oldest``
  (keep the newest frames: the oldest waiting one is dropped) or ``drop_newest`` (the
  arriving frame is refused). A dropped frame still gets a result in its place in the
  order (``status="dropped"``) and is counted: no frame disappears without a word.
* The device takes the next frame only when fewer than ``window`` frames are in flight
  beyond it, so a slow link or cloud backs the queue up instead of memory.
* A cloud leg that fails (error, circuit open, deadline) continues on the device from the
  cut (the local tail, else the whole model): ``status="fallback"``. Only a frame the
  device cannot run either ends as ``status="error"``, with the reason.

``set_candidate`` (or a ``chooser`` consulted every ``replan_every`` frames) changes the
plan for frames the device has not started; frames in flight finish on their own plan
and are delivered in order, so a re-plan loses and reorders nothing.

With ``uplink_bps`` (the link's rate), cloud legs start their uploads one after another
at that rate instead of all at once: uploads sharing the link would each take longer.

With ``slo_ms`` (the per-frame latency SLO), frames are admitted by their predicted
finish (``_slo_gate.SloGate``): the device starts a frame only when, behind the frames
already in flight, it is expected to finish within the SLO; otherwise it waits for a
frame in flight to finish (the window in force shrinks; waiting frames are subject to
the overload policy), and a frame that waited too long to make it even alone is dropped
(``status="dropped"``, counted in ``stats.dropped`` and ``stats.late``) under the drop
policies, run under ``block``.

The device is one resource: the head stage and any local fallback hold the same lock.
``device_time(kind, measured_ms)`` maps the time measured here to the emulated device's
(the stage is held that long), for running an emulated board on a faster host.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile
from devices.errors import ConfigError, EdgecutError, OffloadError
from edge.offload._sessions import SessionCache
from edge.offload._slo_gate import LATE, START, SloGate
from partition import LOCAL, OFFLOAD, CutCandidate

OVERLOAD_POLICIES = ("block", "drop_oldest", "drop_newest")


@dataclass(frozen=True)
class StreamResult:
    """One frame's result, delivered in submission order.

    ``status``: ``ok`` (as planned), ``fallback`` (the cloud leg failed; finished on the
    device), ``dropped`` (overload policy; ``outputs`` empty) or ``error`` (``error``
    says why). Times in ms: ``latency_ms`` from ``submit`` to completion, ``device_ms``
    the device stage as held, ``cloud_ms`` the cloud leg's wall time, ``server_ms`` the
    server's compute when it reports one."""

    seq: int
    status: str
    plan: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    latency_ms: float = 0.0
    device_ms: float = 0.0
    cloud_ms: float = 0.0
    server_ms: float | None = None
    error: str = ""
    compute_ms: float | None = None


@dataclass
class StreamStats:
    submitted: int = 0
    delivered: int = 0
    dropped: int = 0
    fallbacks: int = 0
    errors: int = 0
    replans: int = 0
    late: int = 0  # of the dropped: would have finished after the SLO

    @property
    def lost(self) -> int:
        """Frames submitted and never delivered (zero once the stream is closed)."""
        return self.submitted - self.delivered


class StreamPipeline:
    """A pipelined stream for one model (see the module docstring).

    ``plan_dir`` holds the candidates' head and tail models; ``whole_model`` the full
    model (local plans and fallbacks). ``client`` is an ``OffloadClient`` (``None``:
    every remote frame falls back). Use as a context manager or call ``close()``."""

    def __init__(self, plan_dir: str | Path, whole_model: str | Path, candidate: CutCandidate,
                 device: DeviceProfile, client: Any | None, output_names: Sequence[str], *,
                 window: int = 4, queue_size: int = 2, overload: str = "block",
                 cloud_timeout_s: float = 10.0,
                 device_time: Callable[[str, float], float] | None = None,
                 chooser: Callable[[], CutCandidate] | None = None, replan_every: int = 0,
                 intra_op_threads: int | None = None,
                 on_alone_leg: Callable[[Any], None] | None = None,
                 uplink_bps: Callable[[], float] | None = None, slo_ms: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if overload not in OVERLOAD_POLICIES:
            raise ConfigError(f"stream overload policy must be one of {', '.join(OVERLOAD_POLICIES)}, "
                              f"got {overload!r}")
        if window < 1 or queue_size < 1:
            raise ConfigError(f"stream window and queue_size must be >= 1, got {window} and {queue_size}")
        if slo_ms is not None and not slo_ms > 0:
            raise ConfigError(f"stream slo_ms must be > 0 (or None: no SLO), got {slo_ms}")
        self.plan_dir = Path(plan_dir)
        self.whole_model = Path(whole_model)
        self.device = device
        self.client = client
        self.output_names = tuple(output_names)
        self.window = window
        self.queue_size = queue_size
        self.overload = overload
        self.cloud_timeout_s = cloud_timeout_s
        self._chooser = chooser
        self._replan_every = replan_every
        self._on_alone_leg = on_alone_leg
        self._device_stage = _DeviceStage(device, device_time, intra_op_threads)
        self._pacer = _UplinkPacer(uplink_bps)
        self._cand = candidate
        # latencies and the SLO gate's times (seconds); injectable so tests set the times
        self._clock = clock
        self._gate = SloGate(slo_ms) if slo_ms is not None else None
        self._cv = threading.Condition()
        self._queue: deque[tuple[int, dict[str, np.ndarray], float]] = deque()
        self._done: dict[int, StreamResult] = {}
        self._next_seq = 0
        self._next_out = 0
        self._finished = 0  # frames with a result (delivered or not)
        self._inflight = 0  # cloud legs under way
        self._closing = False
        self._slots = threading.Semaphore(window)
        self.stats = StreamStats()
        self._pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="edgecut-stream-leg")
        self._device_thread = threading.Thread(target=self._device_loop, name="edgecut-stream-device",
                                               daemon=True)
        self._device_thread.start()

    # -- the source's side ----------------------------------------------------------------
    @property
    def candidate(self) -> CutCandidate:
        return self._cand

    def set_candidate(self, candidate: CutCandidate) -> None:
        """Use ``candidate`` for every frame the device has not started yet."""
        with self._cv:
            if candidate.cut_id != self._cand.cut_id:
                self.stats.replans += 1
            self._cand = candidate

    def submit(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Queue a frame; returns its sequence number (see ``overload``)."""
        now = self._clock()
        with self._cv:
            if self._closing:
                raise ConfigError("stream is closed; no more frames accepted")
            seq = self._next_seq
            self._next_seq += 1
            self.stats.submitted += 1
            while len(self._queue) >= self.queue_size:
                if self.overload == "block":
                    self._cv.wait()
                    continue
                if self.overload == "drop_newest":
                    self._finish_locked(StreamResult(seq, "dropped", self._cand.cut_id))
                    return seq
                old_seq, _, _ = self._queue.popleft()
                self._finish_locked(StreamResult(old_seq, "dropped", self._cand.cut_id))
            self._queue.append((seq, dict(feeds), now))
            self._cv.notify_all()
            return seq

    def results(self, timeout_s: float | None = None) -> Iterator[StreamResult]:
        """Results in submission order as they complete; ends once the stream is closed
        and every frame is delivered (or after ``timeout_s`` without one)."""
        while True:
            with self._cv:
                deadline = None if timeout_s is None else time.monotonic() + timeout_s
                while self._next_out not in self._done:
                    if self._closing and self._next_out >= self._next_seq:
                        return
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return
                    self._cv.wait(left)
                res = self._done.pop(self._next_out)
                self._next_out += 1
                self.stats.delivered += 1
                self._cv.notify_all()
            yield res

    def result(self, seq: int, timeout_s: float | None = None) -> StreamResult | None:
        """Wait for frame ``seq``'s result (``None`` after ``timeout_s``). For callers
        that wait per frame (one thread per frame in flight, as the agent's API does)
        instead of iterating ``results()``; use one way or the other on a pipeline."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while seq not in self._done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)
            self.stats.delivered += 1
            return self._done.pop(seq)

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop taking frames and wait until every submitted frame has finished."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            end = time.monotonic() + timeout_s
            while self._finished < self._next_seq and time.monotonic() < end:
                self._cv.wait(0.1)
        self._device_thread.join(timeout_s)
        self._pool.shutdown(wait=True)
        self._device_stage.close()

    def __enter__(self) -> StreamPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages ---------------------------------------------------------------------------
    def _finish_locked(self, res: StreamResult) -> None:
        self._done[res.seq] = res
        self._finished += 1
        if self._gate is not None:
            if res.status in ("ok", "fallback"):
                stage = max(res.device_ms, res.compute_ms or 0.0) / 1000.0
                self._gate.finished(res.seq, self._clock(), stage)
            else:
                self._gate.forget(res.seq)
        if res.status == "dropped":
            self.stats.dropped += 1
        elif res.status == "fallback":
            self.stats.fallbacks += 1
        elif res.status == "error":
            self.stats.errors += 1
        self._cv.notify_all()

    def _finish(self, res: StreamResult) -> None:
        with self._cv:
            self._finish_locked(res)

    def _device_loop(self) -> None:
        started = 0
        while True:
            # A slot first, then the frame: under drop_oldest the device then takes the
            # newest frame there is when it can start one, not one it held while waiting.
            self._slots.acquire()
            with self._cv:
                if not self._admit_locked():
                    self._slots.release()
                    return
                seq, feeds, t_in = self._queue.popleft()
                if self._gate is not None:
                    self._gate.started(seq, self._clock())
                self._cv.notify_all()
            if self._chooser is not None and self._replan_every and started % self._replan_every == 0:
                try:
                    self.set_candidate(self._chooser())
                except EdgecutError:
                    pass  # keep the plan in force; the next check may do better
            started += 1
            cand = self._cand
            try:
                self._start(seq, feeds, t_in, cand)
            except BaseException as exc:  # a frame must end with a result, whatever happened
                self._slots.release()
                self._finish(StreamResult(seq, "error", cand.cut_id, error=f"{type(exc).__name__}: {exc}",
                                          latency_ms=(self._clock() - t_in) * 1000.0))

    def _admit_locked(self) -> bool:
        """Wait until the frame at the head of the queue may start (False: closing and
        nothing left). With an SLO: a frame predicted to finish late waits while frames
        are in flight; one late even alone is dropped (not under ``block``)."""
        while True:
            while not self._queue and not self._closing:
                self._cv.wait()
            if not self._queue:
                return False
            if self._gate is None:
                return True
            seq, _, t_in = self._queue[0]
            verdict = self._gate.decide(self._clock(), t_in)
            if verdict == START or (verdict == LATE and self.overload == "block"):
                return True
            if verdict == LATE:
                self._queue.popleft()
                self.stats.late += 1
                self._finish_locked(StreamResult(
                    seq, "dropped", self._cand.cut_id,
                    latency_ms=(self._clock() - t_in) * 1000.0,
                    error=f"late: would finish after the {self._gate.slo_s * 1000.0:.0f} ms SLO"))
                continue
            # a frame in flight must finish first (or a newer frame replaces this one)
            self._cv.wait()

    def _start(self, seq: int, feeds: dict[str, np.ndarray], t_in: float, cand: CutCandidate) -> None:
        if cand.kind == LOCAL:
            out, ms = self._device_stage.run("local", self.whole_model, feeds)
            self._slots.release()
            self._finish(StreamResult(seq, "ok", cand.cut_id, self._outputs(out),
                                      (self._clock() - t_in) * 1000.0, ms))
            return
        if cand.kind == OFFLOAD:
            crossing, dev_ms = {k: v for k, v in feeds.items() if k in cand.tensors or not cand.tensors}, 0.0
        else:
            out, dev_ms = self._device_stage.run("head", self.plan_dir / cand.head_model, feeds)
            # a cut may carry a model input on (a chain's device sends what later nodes read)
            crossing = {k: out[k] if k in out else feeds[k] for k in cand.tensors}
        self._pool.submit(self._remote, seq, feeds, crossing, t_in, cand, dev_ms)

    def _remote(self, seq: int, feeds: dict[str, np.ndarray], crossing: dict[str, np.ndarray],
                t_in: float, cand: CutCandidate, dev_ms: float) -> None:
        self._pacer.wait_turn(cand.up_bytes)
        t0 = time.perf_counter()
        with self._cv:
            self._inflight += 1
            alone = self._inflight == 1
        try:
            try:
                if self.client is None:
                    raise OffloadError("no cloud client configured")
                result = self.client.infer(cand.cloud_model, cand.for_wire(crossing), self.output_names,
                                           deadline=time.monotonic() + self.cloud_timeout_s,
                                           request_id=f"stream-{seq}")
                cloud_ms = (time.perf_counter() - t0) * 1000.0
                with self._cv:
                    alone = alone and self._inflight == 1
                if alone and self._on_alone_leg is not None:
                    # Only a leg that had the link to itself measures the link: legs that
                    # overlapped shared it and would read it slower than it is.
                    try:
                        self._on_alone_leg(result)
                    except Exception:  # noqa: BLE001 - an observer must not cost the frame
                        pass
                server = result.server_s * 1000.0 if result.server_s is not None else None
                compute = getattr(result, "server_compute_s", None)
                res = StreamResult(seq, "ok", cand.cut_id, self._outputs(result.outputs),
                                   (self._clock() - t_in) * 1000.0, dev_ms, cloud_ms, server,
                                   compute_ms=compute * 1000.0 if compute is not None else None)
            except OffloadError as exc:
                cloud_ms = (time.perf_counter() - t0) * 1000.0
                res = self._fall_back(seq, feeds, crossing, t_in, cand, dev_ms, cloud_ms, exc)
        except BaseException as exc:  # noqa: BLE001 - the frame ends with a result
            res = StreamResult(seq, "error", cand.cut_id, error=f"{type(exc).__name__}: {exc}",
                               latency_ms=(self._clock() - t_in) * 1000.0)
        finally:
            with self._cv:
                self._inflight -= 1
            self._slots.release()
        self._finish(res)

    def _fall_back(self, seq: int, feeds: dict[str, np.ndarray], crossing: dict[str, np.ndarray],
                   t_in: float, cand: CutCandidate, dev_ms: float, cloud_ms: float,
                   exc: Exception) -> StreamResult:
        tail = self.plan_dir / cand.tail_model if cand.tail_model else None
        if cand.kind != OFFLOAD and tail is not None and tail.is_file():
            out, ms = self._device_stage.run("tail", tail, {**feeds, **crossing})
        else:
            out, ms = self._device_stage.run("local", self.whole_model, feeds)
        return StreamResult(seq, "fallback", cand.cut_id, self._outputs(out),
                            (self._clock() - t_in) * 1000.0, dev_ms + ms, cloud_ms,
                            error=f"{type(exc).__name__}: {exc}")

    def _outputs(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in out.items() if k in self.output_names}


class _DeviceStage:
    """The device as one resource: the stream's models, loaded once, run one at a time,
    each held for its emulated time (``device_time(kind, measured_ms)``)."""

    def __init__(self, device: DeviceProfile,
                 device_time: Callable[[str, float], float] | None,
                 intra_op_threads: int | None) -> None:
        self.device = device
        self._device_time = device_time or (lambda _kind, ms: ms)
        self._sessions = SessionCache(device, intra_op_threads, "stream")
        self._device_lock = threading.Lock()

    def _session(self, path: Path) -> Any:
        return self._sessions.get(path)

    def run(self, kind: str, path: Path, feeds: Mapping[str, np.ndarray]) -> tuple[dict, float]:
        """Run a model on the device, holding the device for its emulated time; returns
        the outputs and the time held (ms)."""
        with self._device_lock:
            t0 = time.perf_counter()
            sess = self._session(path)
            names = {s.name for s in sess.inputs}
            out = sess.run({k: v for k, v in feeds.items() if k in names})
            ms = (time.perf_counter() - t0) * 1000.0
            hold = self._device_time(kind, ms)
            rest = hold / 1000.0 - (time.perf_counter() - t0)
            if rest > 0:
                time.sleep(rest)
            return out, max(hold, ms)

    def close(self) -> None:
        self._sessions.close()


class _UplinkPacer:
    """Starts uploads one after another at the link's rate (``uplink_bps()``; ``None``:
    all at once): overlapping uploads share the link, so each would take longer and every
    frame would wait for the slowest."""

    def __init__(self, uplink_bps: Callable[[], float] | None) -> None:
        self._uplink_bps = uplink_bps
        self._lock = threading.Lock()
        self._next_up = 0.0

    def wait_turn(self, up_bytes: int) -> None:
        """Return when an upload of ``up_bytes`` may start."""
        if self._uplink_bps is None or not up_bytes:
            return
        rate = self._uplink_bps()
        if not rate or rate <= 0:
            return
        with self._lock:
            now = time.perf_counter()
            start = max(now, self._next_up)
            self._next_up = start + up_bytes * 8.0 / rate
        if start > now:
            time.sleep(start - now)
