"""The fleet link's telemetry: a record every ``telemetry_interval_s`` through the
on-disk spool, published at QoS 2 in sequence order and removed once acknowledged.

``_Telemetry`` is one of the jobs of :class:`~edge.agent._fleet.FleetLink`.
"""

from __future__ import annotations

import logging
import time

from edge.agent._fleet_mqtt import now_iso

log = logging.getLogger("edgecut.fleet")

TELEMETRY_QOS = 2


class _Telemetry:
    """Telemetry records: made, spooled, sent, acknowledged."""

    def _telemetry_timer(self) -> None:
        next_at = time.monotonic() + self.telemetry_interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.telemetry_interval_s
            if next_at < time.monotonic():
                next_at = time.monotonic() + self.telemetry_interval_s
            self.emit_telemetry()

    def emit_telemetry(self) -> int:
        """Take one telemetry record from the agent, spool it, and wake the sender."""
        try:
            record = self.handler.telemetry()
        except Exception as exc:
            record = {"error": f"telemetry failed: {type(exc).__name__}: {exc}"}
        record.setdefault("device_id", self.device_id)
        record.setdefault("ts", now_iso())
        record["spool"] = {"pending": len(self.spool), "evicted": self.spool.evicted,
                           "dropped": self.spool.dropped, "corrupt": self.spool.corrupt,
                           "error": self.spool.error or None}
        record["fleet"] = {"connects": self.connects, "rejected_messages": self.rejected_messages,
                           "thread_restarts": sum(self.restarts.values())}
        seq, _ = self.spool.append(record)
        self._wake.set()
        return seq

    def _telemetry_sender(self) -> None:
        """Publish spooled records in order, at most ``inflight_window`` awaiting PUBACK."""
        topic = f"{self.base}/telemetry"
        inflight: dict[int, int] = {}  # mid -> seq
        handed: set[int] = set()
        draining = False
        drain_since = 0.0
        was_connected = False
        window = self.config.inflight_window
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._acked_mids:
                mid = self._acked_mids.pop(0)
                seq = inflight.pop(mid, None)
                if seq is not None:
                    handed.discard(seq)
                    self.spool.delete(seq)
            if self._stop.is_set():
                return
            connected = self.connected.is_set()
            if connected and not was_connected and inflight:
                # paho re-sends what was awaiting PUBACK when the link dropped; hold new
                # records back until those are acknowledged so the order stays intact.
                draining, drain_since = True, time.monotonic()
            was_connected = connected
            if not connected:
                continue
            if draining:
                if inflight and time.monotonic() - drain_since < 10.0:
                    continue
                draining = False
            for seq in self.spool.pending():
                if len(inflight) >= window:
                    break
                if seq in handed:
                    continue
                payload = self.spool.read(seq)
                if payload is None:
                    continue
                # QoS 2: the broker's PUBREC/PUBREL handshake makes a re-send after a lost
                # acknowledgement a no-op, where QoS 1 would deliver the record twice.
                info = self._client.publish(topic, payload, qos=TELEMETRY_QOS)
                if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                    break  # not taken (a full queue): the record stays spooled for later
                inflight[info.mid] = seq
                handed.add(seq)
            # Drop handed seqs that were evicted meanwhile so the set stays bounded.
            if len(handed) > 4 * window:
                handed &= set(inflight.values())
