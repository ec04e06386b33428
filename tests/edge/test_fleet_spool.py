"""The telemetry spool on its own, and its size bound during a broker outage."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from edge.agent._daemon import Agent
from edge.agent._spool import TelemetrySpool
from tests.edge.conftest import tiny_model, write_agent_config


def test_records_are_numbered_stored_and_deleted_in_order(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path, max_bytes=10_000)
    seqs = [spool.append({"n": i})[0] for i in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert json.loads(spool.read(3)) == {"n": 3, "seq": 3}
    spool.delete(1)
    spool.delete(1)  # a repeated PUBACK is harmless
    assert spool.pending() == [0, 2, 3, 4]
    # Reopening (an agent restart) keeps the records and never reuses a number.
    again = TelemetrySpool(tmp_path, max_bytes=10_000)
    assert again.pending() == [0, 2, 3, 4]
    for seq in again.pending():
        again.delete(seq)
    assert len(again) == 0 and again.size_bytes == 0
    assert TelemetrySpool(tmp_path, max_bytes=10_000).append({"n": 9})[0] == 5


def test_the_oldest_records_are_evicted_past_the_bound(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path, max_bytes=200)
    for i in range(20):
        spool.append({"pad": "x" * 30, "n": i})
    assert spool.size_bytes <= 200
    kept = spool.pending()
    assert kept == list(range(20 - len(kept), 20))  # a suffix: oldest first out
    assert spool.evicted == 20 - len(kept)
    assert len(list(tmp_path.glob("*.json"))) == len(kept)
    with pytest.raises(ValueError, match="max_bytes"):
        TelemetrySpool(tmp_path / "x", max_bytes=0)


def test_outage_longer_than_the_spool_loses_only_the_oldest_records(
        tmp_path: Path, mosquitto, observer_factory) -> None:
    model = tiny_model(tmp_path / "tiny.onnx")
    cfg = write_agent_config(tmp_path, models={"tiny": model}, mqtt_port=mosquitto.port,
                             telemetry_s=0.05)
    text = cfg.read_text().replace("[updates]", "spool_max_bytes = 4096\n[updates]")
    cfg.write_text(text)
    obs = observer_factory(["t/dev1/telemetry"], client_id="spool-obs", qos=2)
    agent = Agent(cfg)
    agent.start_fleet()
    try:
        obs.wait_for(lambda: len(obs.json_on("t/dev1/telemetry")) >= 5, 15, "telemetry")
        mosquitto.stop(signal.SIGTERM)
        # A record every 50 ms into a 4 KiB spool: the oldest are evicted soon.
        obs.wait_for(lambda: agent.fleet.spool.evicted > 0, 15, "an eviction")
        assert agent.fleet.spool.size_bytes <= 4096
        mosquitto.start()
        agent.fleet.connected.wait(15)
        time.sleep(0.3)
        agent.fleet.telemetry_interval_s = 3600.0
        time.sleep(0.2)
        deadline = time.monotonic() + 20
        while len(agent.fleet.spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        last = agent.fleet.spool.next_seq - 1
        evicted = agent.fleet.spool.evicted
        obs.wait_for(lambda: len(obs.json_on("t/dev1/telemetry")) >= last + 1 - evicted, 20,
                     "the surviving records")
        seqs = [m["seq"] for m in obs.json_on("t/dev1/telemetry")]
        assert len(seqs) == len(set(seqs)), "duplicates"
        missing = sorted(set(range(last + 1)) - set(seqs))
        # Only evicted records are missing, and they are one run of the oldest records
        # spooled during the outage. (A record already handed to the MQTT client when
        # the link dropped is re-sent by it even if the spool evicted its copy.)
        assert 0 < len(missing) <= evicted
        assert missing == list(range(missing[0], missing[0] + len(missing)))
        records = obs.json_on("t/dev1/telemetry")
        assert max(r["spool"]["evicted"] for r in records) >= 1
    finally:
        agent.close()
