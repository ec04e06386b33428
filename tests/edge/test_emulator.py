from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from devices import ConfigError
from edge.lab._emulator import LinkEmulator, Trace, TraceClock, load_trace
from tests.conftest import serve_connections

# Per-trace means from ../shared/data/traces/README.md (Mbit/s).
KNOWN_MEANS = [
    ("mahimahi_us_cellular/ATT-LTE-driving.up", 0.83),
    ("mahimahi_us_cellular/TMobile-LTE-short.down", 16.70),
    ("orange4g_uplink_mahimahi/orange-4G-traces-A-up.pps", 2.44),
    ("lte_nyu_mets/7Train1.csv", 6.81),
    ("lte_nyu_mets/bus62.csv", 2.64),
]


@pytest.mark.parametrize("rel, mean", KNOWN_MEANS)
def test_trace_means_match_the_dataset_readme(traces_dir: Path, rel: str, mean: float) -> None:
    trace = load_trace(traces_dir / rel)
    assert trace.mean_bps / 1e6 == pytest.approx(mean, rel=0.02)


def test_every_trace_file_of_every_family_loads(traces_dir: Path) -> None:
    families: dict[str, int] = {}
    for path in sorted(traces_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("UPSTREAM") or path.suffix == ".md":
            continue
        trace = load_trace(path)
        assert trace.duration_s > 10 and np.all(trace.rates_bps >= 0)
        assert 0.05e6 < trace.mean_bps < 3000e6, path
        family = path.relative_to(traces_dir).parts[0]
        families[family] = families.get(family, 0) + 1
    assert set(families) == {"fcc", "hsdpa_norway", "mahimahi_us_cellular",
                             "orange4g_uplink_mahimahi", "lte_ghent_belgium", "lte_nyu_mets",
                             "nr5g_5gophers"}


def test_formats_in_detail(traces_dir: Path, tmp_path: Path) -> None:
    fcc = load_trace(traces_dir / "fcc/test_1s/test_fcc_trace_5554_http---www.amazon.com_0_0")
    assert fcc.rate_at(0.5) == pytest.approx(1.044e6)
    ghent = tmp_path / "g.json"
    ghent.write_text(json.dumps({"uplink": {"trace_pattern": [
        {"time": 1.0, "duration": 1000, "capacity": 1000},  # 1000 B/ms = 8 Mbit/s
        {"time": 1.5, "duration": 500, "capacity": 250}]}}))
    g = load_trace(ghent)
    assert g.rate_at(0.2) == 8e6 and g.rate_at(1.2) == 2e6 and g.duration_s == 1.5
    nyu = tmp_path / "n.csv"
    nyu.write_text("1.5,Mbits/sec\r\n500,Kbits/sec\r\n2000,bits/sec\r\n")
    assert list(load_trace(nyu).rates_bps) == [1.5e6, 0.5e6, 2000.0]
    mm = tmp_path / "m.up"
    mm.write_text("\n".join(["0"] * 10 + ["1500"] * 5) + "\n")  # 10 packets in s 0, 5 in s 1
    m = load_trace(mm)
    assert list(m.rates_bps) == [10 * 12000.0, 5 * 12000.0]
    static = traces_dir / "nr5g_5gophers/throughput_static_all_carriers.csv"
    a = load_trace(static, select="carrier=VERIZON,num_tcp_conn=8")
    b = load_trace(f"{static}#carrier=sprint,num_tcp_conn=1")
    assert "VERIZON/8" in a.name and "SPRINT/1" in b.name and a.mean_bps > b.mean_bps
    car = load_trace(traces_dir / "nr5g_5gophers/car-driving-trace-1.csv", select="carrier=TMobile")
    assert car.mean_bps / 1e6 == pytest.approx(97.1, rel=0.05)


def test_5gophers_layouts_other_than_the_shared_files(tmp_path: Path) -> None:
    """Every 5Gophers layout reads: a walking trace with one throughput column and no
    carrier (it stopped the benchmark with ``ValueError: 'carrier' is not in list``), a
    panel test whose ping rows have no throughput, and a per-carrier trace."""
    walk = tmp_path / "walking-trace-1.csv"
    walk.write_text("protocol,num_tcp_conn,seq_num,throughput_mbps\r\n"
                    "TCP,8,0,100.0\r\nTCP,8,1,300.0\r\nTCP,8,2,\r\nTCP,8,3,200.0\r\n")
    w = load_trace(walk)
    assert list(w.rates_bps) == [100e6, 300e6, 200e6]
    assert list(w.starts_s) == [0.0, 1.0, 3.0]
    panel = tmp_path / "data.csv"
    panel.write_text("protocol,num_tcp_conn,location,radio_type,run_num,seq_num,"
                     "throughput_mbps,rtt_in_ms\n"
                     "ICMP,,A,4G,93,1,,129.5\n"
                     "TCP,1.0,A,4G,1,20,356.5,62.58\nTCP,1.0,A,4G,1,21,367.0,61.8\n"
                     "TCP,1.0,A,5G,4,20,440.4,54.8\nTCP,1.0,A,5G,4,21,450.9,54.5\n")
    first = load_trace(panel)
    assert list(first.rates_bps) == [356.5e6, 367.0e6] and "A/4G/1" in first.name
    fiveg = load_trace(f"{panel}#radio_type=5G")
    assert list(fiveg.rates_bps) == [440.4e6, 450.9e6]
    with pytest.raises(ConfigError, match="unknown selector key 'carrier'"):
        load_trace(walk, select="carrier=Verizon")
    with pytest.raises(ConfigError, match=r"data.csv:3: column 'throughput_mbps'"):
        panel.write_text(panel.read_text().replace("356.5", "fast"))
        load_trace(panel)
    short = tmp_path / "short.csv"
    short.write_text("protocol,seq_num,throughput_mbps\nTCP,0\n")
    with pytest.raises(ConfigError, match="short.csv:2: expected 3 columns"):
        load_trace(short)
    down = tmp_path / "down.json"
    down.write_text(json.dumps({"uplink": {}, "downlink": {"trace_pattern": [
        {"time": 1.0, "duration": 1000, "capacity": 1000}]}}))
    assert load_trace(down).rate_at(0.5) == 8e6
    bom = tmp_path / "bom.log"
    bom.write_text("\ufeff0\t1.0\n1\t2.0\n")
    assert list(load_trace(bom).rates_bps) == [1e6, 2e6]


def test_bad_traces_are_named(tmp_path: Path, traces_dir: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text("0.0\t1.0\n1.0\tfast\n")
    with pytest.raises(ConfigError, match=r"bad.log:2: expected two numbers"):
        load_trace(bad)
    with pytest.raises(ConfigError, match="trace file not found"):
        load_trace(tmp_path / "none")
    nyu = tmp_path / "u.csv"
    nyu.write_text("3,Mbit\n")
    with pytest.raises(ConfigError, match="u.csv:1: expected 'value,unit'"):
        load_trace(nyu)
    with pytest.raises(ConfigError, match="unknown carrier"):
        load_trace(traces_dir / "nr5g_5gophers/car-driving-trace-1.csv", select="carrier=ATT")
    with pytest.raises(ConfigError, match="no run matches"):
        load_trace(traces_dir / "nr5g_5gophers/throughput_static_all_carriers.csv",
                   select="run_num=999")


def test_integral_and_fluid_send_time() -> None:
    t = Trace.from_steps([(0, 8e6), (1, 0.0), (2, 4e6)], 3.0)
    assert t.mean_bps == pytest.approx(4e6)
    assert t.bits_until(1.5) == pytest.approx(8e6)
    assert t.bits_until(3.0 + 0.5) == pytest.approx(12e6 + 4e6)  # loops
    assert t.send_time(0.5, 8e6) == pytest.approx(2.5)  # 4 Mbit, an outage, then 4 Mbit
    # x2: 16 Mbit of trace capacity needed; reached at trace time 4 (after one loop)
    assert t.send_time(0.5, 8e6, speedup=2.0) == pytest.approx((4.0 - 0.5) / 2)
    clock = TraceClock(speedup=10.0, offset_s=5.0, wall=lambda: 100.0)
    assert clock.now() == 5.0


class Sink:
    """A TCP server that reads ``n`` bytes and answers with one byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        serve_connections(self.sock, self._connection)

    @staticmethod
    def _connection(conn: socket.socket) -> None:
        with conn:
            want = int.from_bytes(conn.recv(8), "big")
            got = 0
            while got < want:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += len(chunk)
            conn.sendall(b"k")


def _send(port: int, n: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(n.to_bytes(8, "big") + b"\0" * n)
        assert s.recv(1) == b"k"
    return time.perf_counter() - t0


def test_rate_delay_and_trace_steps_through_the_proxy() -> None:
    sink = Sink()
    trace = Trace.from_steps([(0, 8e6), (100, 2e6)], 200.0)
    with LinkEmulator("127.0.0.1", sink.port, up=trace, delay_s=0.05) as emu:
        # Lower bounds only: a busy host makes a transfer slower, never faster than the
        # link (how close to the link it comes is bench/timing.py's).
        tiny = _send(emu.port, 10)
        assert tiny > 0.09  # one round trip of 2 x 50 ms
        took = _send(emu.port, 1_000_000)  # 8 Mbit at 8 Mbit/s
        assert took > 0.9
        emu.restart_clock(100.0)  # the trace steps down to 2 Mbit/s
        took = _send(emu.port, 250_000)  # 2 Mbit at 2 Mbit/s: as long as 8 Mbit at 8
        assert took > 0.9
        assert emu.bytes_up >= 1_250_000 and emu.connections == 3
    sink.sock.close()


def test_fast_trace_clock_replays_a_step_sooner() -> None:
    sink = Sink()
    # 0.8 Mbit/s for 10 trace seconds, then 16 Mbit/s; at x20 the step comes after 0.5 s.
    trace = Trace.from_steps([(0, 0.8e6), (10, 16e6)], 1000.0)
    with LinkEmulator("127.0.0.1", sink.port, up=trace, delay_s=0.0, speedup=20.0) as emu:
        took = _send(emu.port, 400_000)  # 3.2 Mbit: 0.4 Mbit in 0.5 s, then 2.8 at 16
        assert took > 0.55
        assert emu.trace_time() > 10.0
    sink.sock.close()


def test_an_idle_link_banks_no_capacity() -> None:
    sink = Sink()
    trace = Trace.from_steps([(0, 20e6)], 1000.0)  # 20 Mbit/s
    with LinkEmulator("127.0.0.1", sink.port, up=trace, delay_s=0.02) as emu:
        for _ in range(3):
            # A round trip (a health check), then at once 50 kB: 20 ms at the rate. The
            # capacity the link left unused during the round trip is not there to use:
            # a bucket left to fill would have let the 50 kB through at once.
            _send(emu.port, 10)
            took = _send(emu.port, 50_000)
            assert took >= 0.056  # 40 ms round trip + 20 ms, less the idle burst
    sink.sock.close()


def test_a_sender_sees_its_writes_progress_at_the_links_rate() -> None:
    sink = Sink()
    trace = Trace.from_steps([(0, 16e6)], 1000.0)  # 16 Mbit/s: 2 MB/s
    with LinkEmulator("127.0.0.1", sink.port, up=trace, delay_s=0.02) as emu:
        with socket.create_connection(("127.0.0.1", emu.port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 16384)
            n = 1_000_000
            s.sendall(n.to_bytes(8, "big"))
            stamps = []
            t0 = time.perf_counter()
            for sent in range(0, n, 16384):
                s.sendall(b"\0" * min(16384, n - sent))
                stamps.append((time.perf_counter() - t0, sent + 16384))
            assert s.recv(1) == b"k"
    sink.sock.close()
    # The proxy takes about a round trip of data (plus small socket buffers) at once, and
    # the rest only as the link passes it on: the writes' progress shows the rate.
    # (Bounds a busy host cannot break: it only delays the writes.)
    t_first, burst = next((t, b) for t, b in stamps if t > 0.01)
    assert burst < 300_000 + 2e6 * t_first
    (t1, b1), (t2, b2) = stamps[len(stamps) // 3], stamps[-1]
    assert (b2 - b1) * 8 / (t2 - t1) < 16e6 * 1.2  # never faster than the link
