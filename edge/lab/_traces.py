"""Bandwidth traces: the ``Trace`` a link follows, the readers of the formats it comes
in, and the ``TraceClock`` that runs trace time faster than real time.

Trace formats (:func:`load_trace` detects them from the file):

- FCC / HSDPA (Pensieve "cooked"): two columns ``time_s  Mbit/s``;
- Mahimahi (``mm-link``): one millisecond timestamp per line, one 1500-byte packet each;
- Ghent 4G JSON: ``uplink.trace_pattern`` of ``{time (end, s), duration (ms), capacity
  (bytes per ms)}``;
- NYU-METS CSV: ``value,unit`` rows with ``Mbits/sec``, ``Kbits/sec`` or ``bits/sec``;
- 5Gophers CSV, any of its layouts: one ``throughput_mbps`` column beside the columns that
  name a run (static runs ``carrier,num_tcp_conn,server_location,run_num``; walking and
  panel tests other ones, or none; one run chosen with ``select``), or one
  ``<carrier>_throughput_mbps`` column per carrier (the driving traces).
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
        doc = json.loads(text)
        # The data sit under "uplink" (the AlphaRTC-gym convention the conversion used);
        # a file with them under "downlink" instead is read from there.
        pattern = (doc.get("uplink") or {}).get("trace_pattern") or \
            (doc.get("downlink") or {}).get("trace_pattern")
        if not pattern:
            raise KeyError("trace_pattern")
        starts = [float(p["time"]) - float(p["duration"]) / 1000.0 for p in pattern]
        # capacity is bytes per millisecond: x 8000 gives bit/s.
        rates = [float(p["capacity"]) * 8000.0 for p in pattern]
        end = float(pattern[-1]["time"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
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


# Columns of a 5Gophers CSV that are measurements or sample indices, not what names a run.
_5G_MEASURES = ("seq_num", "throughput_mbps", "rtt_in_ms")


def _5g_number(path: Path, n: int, col: str, value: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"{path}:{n}: column {col!r}: expected a number, got {value!r}") from exc


def _read_5gophers(path: Path, rows: list[list[str]], select: dict[str, str]) -> Trace:
    """Any 5Gophers layout: one ``throughput_mbps`` column with the columns that name a
    run beside it (static runs: ``carrier,num_tcp_conn,server_location,run_num``; the
    walking and panel tests: others, or none), or one ``<carrier>_throughput_mbps``
    column per carrier (the driving traces). ``select`` picks a carrier and/or the run by
    any naming column (default: the first carrier, the first run); rows without a
    throughput (ping rows) are skipped; time is ``seq_num``, or the row number."""
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    body = [(n, r) for n, r in enumerate(rows[1:], 2) if any(c.strip() for c in r)]
    for n, r in body:
        if len(r) != len(header):
            raise ConfigError(f"{path}:{n}: expected {len(header)} columns as in the header, "
                              f"got {len(r)}")
    seq = lower.index("seq_num") if "seq_num" in lower else None
    per_carrier = [i for i, h in enumerate(lower)
                   if h.endswith("_throughput_mbps") and h != "throughput_mbps"]
    if "throughput_mbps" in lower:
        value_col = lower.index("throughput_mbps")
        keys = [h for h in lower if h not in _5G_MEASURES and not h.endswith("_mbps")
                and not h.endswith("_ms")]
        label_for = ""
    elif per_carrier:
        carriers = [lower[i][:-len("_throughput_mbps")] for i in per_carrier]
        want = select.get("carrier", carriers[0]).lower()
        if want not in carriers:
            raise ConfigError(f"{path}: unknown carrier {select['carrier']!r}, expected one of "
                              + ", ".join(header[i].split("_")[0] for i in per_carrier))
        value_col = per_carrier[carriers.index(want)]
        keys = [h for h in lower if h not in _5G_MEASURES and not h.endswith("_mbps")
                and not h.endswith("_ms")]
        label_for = header[value_col].split("_")[0]
        select = {k: v for k, v in select.items() if k.lower() != "carrier"}
        keys = []  # the carriers were measured side by side: one run per file
    else:
        raise ConfigError(f"{path}: expected a 5Gophers CSV with a 'throughput_mbps' column "
                          "or '<carrier>_throughput_mbps' columns")
    sel = {k.lower(): v for k, v in select.items()}
    for k in sel:
        if k not in keys:
            raise ConfigError(f"{path}: unknown selector key {k!r}, expected one of "
                              f"{tuple(keys) + (('carrier',) if per_carrier else ())}")
    idx = {k: lower.index(k) for k in keys}
    first: tuple[str, ...] | None = None
    times: list[float] = []
    rates: list[float] = []
    for row_no, (n, row) in enumerate(body):
        if any(row[idx[k]].strip().lower() != v.lower() for k, v in sel.items()):
            continue
        value = _5g_number(path, n, header[value_col], row[value_col])
        if value is None:  # a ping row, or a carrier without a sample then
            if per_carrier:
                value = 0.0
            else:
                continue
        run = tuple(row[idx[k]].strip() for k in keys)
        if first is None:
            first = run
        if run != first:
            continue
        t = _5g_number(path, n, "seq_num", row[seq]) if seq is not None else None
        times.append(float(row_no) if t is None else t)
        rates.append(value * 1e6)
    if first is None:
        raise ConfigError(f"{path}: no run matches selector {select}"
                          if sel else f"{path}: no throughput samples")
    label = "/".join(p for p in ((label_for,) + first) if p)
    return _from_samples(f"{path.name}#{label}" if label else path.name, times, rates)


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
    text = text.lstrip("\ufeff")  # a byte-order mark from a spreadsheet's export
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _read_ghent(path, text)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if "," in first:
        rows = list(csv.reader(lines))
        if "throughput_mbps" in first.lower():
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
