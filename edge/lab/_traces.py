"""Bandwidth traces: the ``Trace`` a link follows, the readers of the formats it comes
in, and the ``TraceClock`` that runs trace time faster than real time.

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

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.errors import ConfigError

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
    from importlib import resources

    return Path(str(resources.files("edge") / "data" / "traces" / "fcc_27175_amazon_360.txt"))


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
