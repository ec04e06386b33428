"""A user-space link emulator: a TCP proxy on 127.0.0.1 that shapes traffic to a trace.

Each direction has a one-way delay and a token bucket whose fill rate follows a bandwidth
trace over time. The trace clock may run faster than real time (``speedup``), so that a
long trace can be replayed in a short run: at wall time ``w`` after start the link carries
the rate the trace had at ``offset_s + speedup * w``. The bucket is filled with the exact
integral of the trace between two wall instants, so a step in the trace shows up at the
right moment even between refills. Connections share the bucket of their direction, as
flows share a real bottleneck. A link does not bank the capacity it leaves unused: when
data arrives at an idle direction only a small burst (two milliseconds at the current
rate) is ready, so that a transfer after a pause takes what the link's rate says, not
less (a bucket left full made a probe right after a health check look 15 ms faster on
every link). The bucket's full depth only keeps timer oversleep from throwing capacity
away while data waits.

The proxy reads from a sender only while the data it holds for that flow is under one
round trip at the current rate (what a TCP sender has in flight on a real path: its
congestion window settles near the bandwidth-delay product), and its sockets take small
buffers. So a sender sees its writes progress at the link's rate, as it would on a real
path, instead of handing the whole body to the proxy at once: the offload client uses
that progress to give up an upload that would miss its deadline.

The traces it follows and their formats are ``edge.lab._traces``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from devices.errors import ConfigError
from edge.lab._traces import Trace, TraceClock, bundled_trace, load_trace

# The proxy's socket buffers and read size: small, so that what a sender has handed over
# is about what the link has in flight (see LinkEmulator).
_SOCKET_BUFFER = 32 * 1024
_READ_CHUNK = 16 * 1024
_MIN_WINDOW = 32 * 1024


# The burst an idle link has ready (seconds at its current rate, at least one full-size
# packet).
_IDLE_BURST_S = 0.002
_PACKET_BITS = 1500 * 8


class _Bucket:
    """A token bucket (in bits) filled by the trace's integral between wall instants."""

    def __init__(self, trace: Trace, clock: TraceClock, burst_bits: float) -> None:
        self.trace = trace
        self.clock = clock
        self.burst_bits = burst_bits
        self._last_t = clock.now()
        self.tokens = self._idle_burst(self._last_t)
        self.lock = asyncio.Lock()
        self.bytes_sent = 0

    def _idle_burst(self, t: float) -> float:
        return min(self.burst_bits, max(_PACKET_BITS, self.trace.rate_at(t) * _IDLE_BURST_S))

    def wake(self) -> None:
        """Data arrived at an idle direction: what the link left unused meanwhile is gone,
        only the idle burst is ready (unless another connection's data is being sent)."""
        if self.lock.locked():
            return
        t = self._refill()
        self.tokens = min(self.tokens, self._idle_burst(t))

    def _refill(self) -> float:
        t = self.clock.now()
        gained = (self.trace.bits_until(t) - self.trace.bits_until(self._last_t)) / self.clock.speedup
        self._last_t = t
        self.tokens = min(self.tokens + gained, self.burst_bits)
        return t

    async def take(self, nbytes: int) -> None:
        need = nbytes * 8.0
        async with self.lock:  # FIFO across connections sharing this direction
            while True:
                t = self._refill()
                if self.tokens >= need or (self.tokens >= self.burst_bits and need > self.burst_bits):
                    self.tokens -= need
                    self.bytes_sent += nbytes
                    return
                rate = self.trace.rate_at(t)
                wait = (need - self.tokens) / rate if rate > 0 else 0.01
                await asyncio.sleep(min(max(wait, 0.0005), 0.02))


class LinkEmulator:
    """A shaping TCP proxy from ``127.0.0.1:<port>`` to ``target``.

    ``up`` shapes client -> server (the device's upload), ``down`` server -> client
    (default: the same trace). ``delay_s`` is the one-way delay each way, so the added
    round trip is ``2 * delay_s``. Run it with ``start()``/``stop()`` or as a context
    manager; it serves from its own thread and event loop.
    """

    def __init__(self, target_host: str, target_port: int, *, up: Trace,
                 down: Trace | None = None, delay_s: float = 0.02, speedup: float = 1.0,
                 offset_s: float = 0.0, listen_port: int = 0,
                 max_rate_bps: float | None = None) -> None:
        if delay_s < 0:
            raise ConfigError(f"link emulator: delay_s must be >= 0, got {delay_s}")
        self.target = (target_host, target_port)
        if max_rate_bps:
            up = up.clipped(max_rate_bps)
            down = down.clipped(max_rate_bps) if down is not None else None
        self.up_trace = up
        self.down_trace = down or up
        self.delay_s = delay_s
        self.clock = TraceClock(speedup, offset_s)
        self._listen_port = listen_port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._up: _Bucket | None = None
        self._down: _Bucket | None = None
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trace_time(self) -> float:
        """The trace clock now."""
        return self.clock.now()

    def rate_now_bps(self) -> float:
        """The upload rate the trace sets now."""
        return self.up_trace.rate_at(self.clock.now())

    def restart_clock(self, offset_s: float = 0.0) -> None:
        """Start the trace again at ``offset_s`` (buckets keep their current tokens)."""
        self.clock = TraceClock(self.clock.speedup, offset_s)
        for b in (self._up, self._down):
            if b is not None:
                b.clock = self.clock
                b._last_t = self.clock.now()

    @property
    def bytes_up(self) -> int:
        return self._up.bytes_sent if self._up else 0

    @property
    def bytes_down(self) -> int:
        return self._down.bytes_sent if self._down else 0

    def start(self) -> LinkEmulator:
        self._thread = threading.Thread(target=self._run, name="edgecut-link-emulator",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ConfigError(f"link emulator: cannot listen: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        # A bucket depth of about 20 ms at the trace's mean: deep enough that timer
        # oversleep on a busy host does not throw capacity away, shallow enough that a
        # step in the trace shows within a few tens of milliseconds.
        def burst(tr: Trace) -> float:
            return max(8 * 16384.0, tr.mean_bps * 0.02)
        self._up = _Bucket(self.up_trace, self.clock, burst(self.up_trace))
        self._down = _Bucket(self.down_trace, self.clock, burst(self.down_trace))
        try:
            # (IPPROTO_TCP named, or asyncio leaves Nagle on for the accepted sockets)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Set before listen so that accepted sockets advertise a small window.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            sock.bind(("127.0.0.1", self._listen_port))
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, sock=sock, limit=_READ_CHUNK))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target,
                                                                 limit=_READ_CHUNK)
        except OSError:
            writer.close()
            return
        assert self._up is not None and self._down is not None
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, self._up),
                self._pipe(up_reader, writer, self._down),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            # Stopping the emulator: end quietly (a cancelled handler task makes asyncio
            # log a traceback from inside its stream protocol).
            writer.close()
            up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    bucket: _Bucket) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        held = 0  # bytes read from the sender and not yet passed on
        room = asyncio.Event()
        room.set()

        def window() -> float:
            # One round trip at the current rate, and never less than a few segments.
            rate = bucket.trace.rate_at(bucket.clock.now())
            return max(_MIN_WINDOW, rate / 8.0 * (2.0 * self.delay_s + 0.005))

        async def pump() -> None:
            nonlocal held
            try:
                while True:
                    await room.wait()
                    data = await reader.read(_READ_CHUNK)
                    if not data:
                        break
                    held += len(data)
                    if held >= window():
                        room.clear()
                    await queue.put((time.monotonic() + self.delay_s, data))
            except (ConnectionError, OSError):
                pass
            finally:
                await queue.put(None)

        pumper = asyncio.create_task(pump())
        try:
            while True:
                idle = queue.empty()  # nothing of this flow was waiting to be sent
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if idle:
                    bucket.wake()
                view = memoryview(data)
                while view:
                    rate = bucket.trace.rate_at(bucket.clock.now())
                    piece = int(min(65536, max(1500, rate / 8 * 0.005)))
                    chunk, view = view[:piece], view[piece:]
                    await bucket.take(len(chunk))
                    writer.write(chunk)
                    held -= len(chunk)
                    if held < window():
                        room.set()
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pumper.cancel()
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass
            writer.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Let every connection handler finish its cancellation before the loop stops,
            # or asyncio reports them as destroyed while pending.
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()



__all__ = ["LinkEmulator", "Trace", "TraceClock", "bundled_trace", "load_trace"]
