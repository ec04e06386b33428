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

Trace formats (:func:`load_trace` detects them from the file):

- FCC / HSDPA (Pensieve "cooked"): two columns ``time_s  Mbit/s``;
- Mahimahi (``mm-link``): one millisecond timestamp per line, one 1500-byte packet each;
- Ghent 4G JSON: ``uplink.trace_pattern`` of ``{time (end, s), duration (ms), capacity
  (bytes per ms)}``;
- NYU-METS CSV: ``value,unit`` rows with ``Mbits/sec``, ``Kbits/sec`` or ``bits/sec``;
- 5Gophers CSV: the static runs (``protocol,carrier,...,throughput_mbps``, one run chosen
  with ``select``) or the driving trace (one column per carrier).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.errors import ConfigError

# The proxy's socket buffers and read size: small, so that what a sender has handed over
# is about what the link has in flight (see LinkEmulator).
_SOCKET_BUFFER = 32 * 1024
_READ_CHUNK = 16 * 1024
_MIN_WINDOW = 32 * 1024

_NYU_UNITS = {"mbits/sec": 1e6, "kbits/sec": 1e3, "bits/sec": 1.0, "gbits/sec": 1e9}


@dataclass(frozen=True)
class Trace:
    """A bandwidth trace as a step function: ``rates_bps[i]`` holds from ``starts_s[i]``
    until the next start (the last one until ``duration_s``). Replays loop."""

    name: str
    starts_s: np.ndarray
    rates_bps: np.ndarray
    duration_s: float

    def __post_init__(self) -> None:
        if len(self.starts_s) == 0 or len(self.starts_s) != len(self.rates_bps):
            raise ConfigError(f"trace {self.name}: expected matching, non-empty time and rate columns")
        if self.duration_s <= 0:
            raise ConfigError(f"trace {self.name}: duration must be > 0, got {self.duration_s}")
        ends = np.append(self.starts_s[1:], self.duration_s)
        widths = np.maximum(ends - self.starts_s, 0.0)
        cum = np.concatenate([[0.0], np.cumsum(widths * self.rates_bps)])
        object.__setattr__(self, "_cum_bits", cum)

    @staticmethod
    def from_steps(steps: Sequence[tuple[float, float]], duration_s: float,
                   name: str = "steps") -> Trace:
        """A trace from ``(start_s, rate_bps)`` pairs, e.g. ``[(0, 50e6), (10, 1e6)]``."""
        starts = np.array([s for s, _ in steps], dtype=float)
        rates = np.array([r for _, r in steps], dtype=float)
        return Trace(name, starts, rates, float(duration_s))

    @property
    def mean_bps(self) -> float:
        """Time-weighted mean rate."""
        return float(self._cum_bits[-1] / self.duration_s)  # type: ignore[attr-defined]

    def clipped(self, max_bps: float) -> Trace:
        """The same trace with every rate capped (a proxy in Python tops out somewhere)."""
        return Trace(self.name, self.starts_s, np.minimum(self.rates_bps, max_bps),
                     self.duration_s)

    def rate_at(self, t: float) -> float:
        """Rate in bit/s at trace time ``t`` (looping)."""
        t = t % self.duration_s
        i = int(np.searchsorted(self.starts_s, t, side="right")) - 1
        return float(self.rates_bps[max(i, 0)])

    def bits_until(self, t: float) -> float:
        """Bits the trace carries from time 0 to ``t`` (looping, so it grows without end)."""
        loops, rem = divmod(t, self.duration_s)
        cum = self._cum_bits  # type: ignore[attr-defined]
        i = max(int(np.searchsorted(self.starts_s, rem, side="right")) - 1, 0)
        partial = cum[i] + (rem - self.starts_s[i]) * self.rates_bps[i]
        return float(loops * cum[-1] + partial)

    def mean_between(self, t0: float, t1: float) -> float:
        """Mean rate over trace time ``[t0, t1]`` (the rate at ``t0`` for an instant)."""
        if t1 <= t0:
            return self.rate_at(t0)
        return (self.bits_until(t1) - self.bits_until(t0)) / (t1 - t0)

    def send_time(self, t0: float, nbits: float, speedup: float = 1.0,
                  limit_s: float = 3600.0) -> float:
        """Wall seconds to move ``nbits`` starting at trace time ``t0`` (fluid model).

        At speedup ``s`` the link carries ``rate(t)`` bits per wall second while trace time
        advances ``s`` seconds per wall second.
        """
        if nbits <= 0:
            return 0.0
        if self._cum_bits[-1] <= 0:  # type: ignore[attr-defined]
            return limit_s
        target = self.bits_until(t0) + nbits * speedup
        lo, hi = t0, t0 + 1.0
        while self.bits_until(hi) < target:
            hi = t0 + (hi - t0) * 2
            if (hi - t0) / speedup > limit_s:
                return limit_s
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.bits_until(mid) < target:
                lo = mid
            else:
                hi = mid
        return (hi - t0) / speedup


def _parse_select(select: str | Mapping[str, str] | None) -> dict[str, str]:
    if select is None or isinstance(select, Mapping):
        return dict(select or {})
    out: dict[str, str] = {}
    for part in filter(None, select.split(",")):
        if "=" not in part:
            raise ConfigError(f"trace selector {select!r}: expected key=value[,key=value...]")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _from_samples(name: str, times: list[float], rates: list[float]) -> Trace:
    if not times:
        raise ConfigError(f"{name}: no samples")
    order = np.argsort(np.asarray(times, dtype=float), kind="stable")
    t = np.asarray(times, dtype=float)[order]
    r = np.maximum(np.asarray(rates, dtype=float)[order], 0.0)
    t = t - t[0]
    step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    return Trace(name, t, r, float(t[-1] + max(step, 1e-3)))


def _read_two_columns(path: Path, lines: list[str]) -> Trace:
    times, rates = [], []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ConfigError(f"{path}:{n}: expected 'time_s Mbit/s', got {line!r}")
        try:
            times.append(float(parts[0]))
            rates.append(float(parts[1]) * 1e6)
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: expected two numbers, got {line!r}") from exc
    return _from_samples(path.name, times, rates)


def _read_mahimahi(path: Path, lines: list[str], bin_s: float) -> Trace:
    stamps = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            stamps.append(int(line))
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: expected a millisecond timestamp, got {line!r}") from exc
    if not stamps:
        raise ConfigError(f"{path}: no packet timestamps")
    ms = np.asarray(stamps, dtype=float)
    nbins = max(int(math.ceil((ms[-1] + 1) / (bin_s * 1000.0))), 1)
    counts = np.bincount(np.minimum((ms / (bin_s * 1000.0)).astype(int), nbins - 1),
                         minlength=nbins)
    rates = counts * 1500 * 8 / bin_s
    return Trace(path.name, np.arange(nbins) * bin_s, rates.astype(float), nbins * bin_s)


def _read_ghent(path: Path, text: str) -> Trace:
    try:
        pattern = json.loads(text)["uplink"]["trace_pattern"]
        starts = [float(p["time"]) - float(p["duration"]) / 1000.0 for p in pattern]
        # capacity is bytes per millisecond: x 8000 gives bit/s.
        rates = [float(p["capacity"]) * 8000.0 for p in pattern]
        end = float(pattern[-1]["time"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(
            f"{path}: expected Ghent JSON {{'uplink': {{'trace_pattern': [{{time, duration, "
            f"capacity}}]}}}}: {exc}"
        ) from exc
    t0 = min(starts)
    return Trace(path.name, np.asarray(starts) - t0, np.asarray(rates), end - t0)


def _read_nyu(path: Path, rows: list[list[str]]) -> Trace:
    rates = []
    for n, row in enumerate(rows, 1):
        if not row:
            continue
        try:
            value, unit = float(row[0]), row[1].strip().lower()
            rates.append(value * _NYU_UNITS[unit])
        except (IndexError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"{path}:{n}: expected 'value,unit' with unit in Mbits/sec, Kbits/sec, "
                f"bits/sec; got {row!r}"
            ) from exc
    return _from_samples(path.name, [float(i) for i in range(len(rates))], rates)


def _read_5gophers(path: Path, rows: list[list[str]], select: dict[str, str]) -> Trace:
    header, body = rows[0], [r for r in rows[1:] if r]
    if "throughput_mbps" in header:
        keys = ("carrier", "num_tcp_conn", "server_location", "run_num")
        for k in select:
            if k not in keys:
                raise ConfigError(f"{path}: unknown selector key {k!r}, expected one of {keys}")
        idx = {k: header.index(k) for k in keys}
        first = None
        samples: list[tuple[float, float]] = []
        for row in body:
            run = tuple(row[idx[k]] for k in keys)
            if any(row[idx[k]].lower() != v.lower() for k, v in select.items()):
                continue
            if first is None:
                first = run
            if run != first:
                continue
            samples.append((float(row[header.index("seq_num")]),
                            float(row[header.index("throughput_mbps")]) * 1e6))
        if not samples:
            raise ConfigError(f"{path}: no run matches selector {select}")
        label = "/".join(first or ())
        return _from_samples(f"{path.name}#{label}", [s[0] for s in samples],
                             [s[1] for s in samples])
    columns = [h for h in header if h.endswith("_throughput_mbps")]
    if not columns:
        raise ConfigError(f"{path}: expected a 5Gophers CSV (throughput_mbps columns)")
    carrier = select.get("carrier", columns[0].split("_")[0])
    col = f"{carrier}_throughput_mbps"
    matches = [h for h in columns if h.lower() == col.lower()]
    if not matches:
        raise ConfigError(f"{path}: unknown carrier {carrier!r}, expected one of "
                          + ", ".join(h.split("_")[0] for h in columns))
    ci, si = header.index(matches[0]), header.index("seq_num")
    return _from_samples(f"{path.name}#{carrier}", [float(r[si]) for r in body],
                         [float(r[ci] or 0.0) * 1e6 for r in body])


def bundled_trace() -> Path:
    """The small FCC trace shipped with edgecut (US FCC open data; see its README)."""
    # Beside the package (importlib.resources.files needs Python 3.9).
    return Path(__file__).resolve().parents[1] / "data" / "traces" / "fcc_27175_amazon_360.txt"


def load_trace(path: str | Path, *, select: str | Mapping[str, str] | None = None,
               bin_s: float = 1.0) -> Trace:
    """Read a bandwidth trace in any of the supported formats (see the module docstring).

    ``select`` picks one series out of multi-series files (5Gophers), as
    ``"carrier=VERIZON,num_tcp_conn=8,server_location=US-East,run_num=3"`` or a mapping.
    A ``FILE#key=value,...`` path is split into path and selector.
    """
    text_path = str(path)
    if select is None and "#" in text_path and not Path(text_path).exists():
        text_path, select = text_path.split("#", 1)
    path = Path(text_path)
    sel = _parse_select(select)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: trace file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read trace: {exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _read_ghent(path, text)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if "," in first:
        rows = list(csv.reader(lines))
        if first.startswith("protocol,"):
            return _read_5gophers(path, rows, sel)
        return _read_nyu(path, rows)
    parts = first.split()
    if len(parts) == 2:
        return _read_two_columns(path, lines)
    if len(parts) == 1:
        return _read_mahimahi(path, lines, bin_s)
    raise ConfigError(
        f"{path}: unrecognised trace format; expected FCC/HSDPA two columns, Mahimahi "
        "timestamps, Ghent JSON, NYU-METS CSV or 5Gophers CSV"
    )


class TraceClock:
    """Trace time that advances ``speedup`` seconds per wall second from ``offset_s``."""

    def __init__(self, speedup: float = 1.0, offset_s: float = 0.0,
                 wall: Callable[[], float] = time.monotonic) -> None:
        if speedup <= 0:
            raise ConfigError(f"trace clock: speedup must be > 0, got {speedup}")
        self.speedup = speedup
        self.offset_s = offset_s
        self._wall = wall
        self._t0 = wall()

    def now(self) -> float:
        return self.offset_s + (self._wall() - self._t0) * self.speedup

    def wall(self) -> float:
        """The wall clock this trace clock runs on (seconds)."""
        return self._wall()

    def __call__(self) -> float:
        return self.now()


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
