"""The MQTT fleet link: status, telemetry, config and model commands, acknowledgements.

Topics (``P`` is ``mqtt.prefix``, ``D`` the device id, ``G`` each of ``mqtt.groups``)::

    P/D/status           retained; "online" on connect, "offline" as the last will
    P/D/telemetry        periodic records, each with a sequence number ``seq`` (QoS 2)
    P/D/config/set   ->  P/D/config/ack
    P/D/models/deploy -> P/D/models/ack      (one ack per deployment step)
    P/D/cmd          ->  P/D/cmd/ack
    P/fleet/{config/set,models/deploy,cmd}      every device
    P/group/G/{config/set,models/deploy,cmd}    devices in group G

Commands and acks use QoS 1. A command carries an ``id``; the link remembers the ids it
has finished (on disk, so a restart remembers them too) and answers a redelivered one with
the stored final ack instead of running it again. Payloads that are too large, not JSON,
or of the wrong shape get an error ack and change nothing. docs/mqtt.md has the schemas.

Everything that arrives is hostile until checked (docs/mqtt.md, "Trust model"): a
payload over ``mqtt.max_payload_bytes`` is refused before it is queued (and with MQTT 5
the broker is told the limit at connect, so it never sends one); the queues are bounded
by their payload bytes; a retained message on a command topic is refused (only status is
retained, so a command left on the broker is not run by every device that connects
later); an MQTT 5 response topic must lie under ``P/D/reply/``.

Telemetry goes through :class:`edge.agent._spool.TelemetrySpool`: a record is on disk before it
is published and leaves the disk only when the broker has acknowledged it (QoS 2, so a
re-send after a lost acknowledgement is not delivered twice), so an outage loses nothing
up to the spool bound and records are sent in sequence order after a reconnect.

This module handles the messages that come in (checked, deduplicated, run, acknowledged);
the connection is ``_fleet_mqtt`` and telemetry ``_fleet_telemetry``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from devices.errors import EdgecutError, FleetError
from edge.agent._config import MqttConfig
from edge.agent._fleet_mqtt import _KINDS, _Connection, now_iso
from edge.agent._fleet_telemetry import TELEMETRY_QOS, _Telemetry
from edge.agent._spool import TelemetrySpool

log = logging.getLogger("edgecut.fleet")

_ACK_TOPIC = {"config": "config/ack", "deploy": "models/ack", "cmd": "cmd/ack"}
_MAX_ID = 128
_FINAL_STEPS = ("committed", "rejected", "rolled_back", "superseded")
_REMEMBER_IDS = 1000
_MAX_QUEUED = 256


class FleetHandler(Protocol):
    """What the agent provides to the fleet link."""

    def apply_config(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply a ``config/set`` message; return ack fields or raise."""

    def deploy(self, msg: dict[str, Any], ack: Callable[..., None]) -> str:
        """Run a ``models/deploy`` message, acking each step; return the final step."""

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Run a ``cmd`` message; return ack fields or raise."""

    def status(self) -> dict[str, Any]:
        """The body of the retained status message (without ``state``)."""

    def telemetry(self) -> dict[str, Any]:
        """One telemetry record (the link adds ``seq``)."""



class _SeenIds:
    """Finished command ids and their final acks, bounded, persisted atomically."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._acks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                for k, v in data.items():
                    if isinstance(v, dict):
                        self._acks[k] = v
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._acks.get(key)

    def put(self, key: str, ack: dict[str, Any]) -> None:
        with self._lock:
            self._acks[key] = ack
            self._acks.move_to_end(key)
            while len(self._acks) > _REMEMBER_IDS:
                self._acks.popitem(last=False)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._acks))
            os.replace(tmp, self._path)


class FleetLink(_Connection, _Telemetry):
    """One MQTT connection for the agent, with its own threads (paho's loop and two workers).

    ``start()`` connects in the background (the broker need not be up yet) and keeps
    reconnecting with exponential backoff between ``reconnect_min_s`` and
    ``reconnect_max_s``; ``stop()`` publishes the offline status and disconnects.
    """

    def __init__(self, config: MqttConfig, device_id: str, data_dir: str | Path,
                 handler: FleetHandler) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.config = config
        self.device_id = device_id
        self.handler = handler
        self.base = f"{config.prefix}/{device_id}"
        state = Path(data_dir) / "fleet"
        state.mkdir(parents=True, exist_ok=True)
        self.spool = TelemetrySpool(state / "spool", config.spool_max_bytes)
        self._seen = _SeenIds(state / "commands.json")
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self.connected = threading.Event()
        self.connects = 0
        self.rejected_messages = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acked_mids: list[int] = []
        # Bounded: a flood of commands is answered "busy" rather than queued without end.
        self._commands: queue.Queue[tuple[Any, ...] | None] = queue.Queue(_MAX_QUEUED)
        self._deploys: queue.Queue[tuple[Any, ...] | None] = queue.Queue(_MAX_QUEUED)
        self._queued_bytes = 0
        self._queued_lock = threading.Lock()
        # Worker threads restarted after an uncaught error (each one is logged).
        self.restarts: dict[str, int] = {}
        self.last_thread_error = ""
        self._reply = threading.local()
        self._threads: list[threading.Thread] = []
        self.telemetry_interval_s = config.telemetry_interval_s
        self._client = self._make_client()

    # -- commands ------------------------------------------------------------------------

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic = message.topic
        kind = None
        for suffix, k in _KINDS.items():
            if topic.endswith("/" + suffix):
                kind = k
                break
        if kind is None:
            return
        size = len(message.payload)
        if message.retain:
            self._refuse(kind, topic, message.payload,
                         "refused: a retained message on a command topic is never run "
                         "(publish commands without the retain flag, and clear it)")
            return
        limit = self.config.max_payload_bytes
        if size > limit:
            self._refuse(kind, topic, b"", f"refused: payload of {size} bytes exceeds the "
                                           f"limit of {limit} (mqtt.max_payload_bytes)")
            return
        # MQTT 5 request/response: an operator may name a response topic and correlation
        # data; the acks then also go there (the ack topics get them in any case).
        props = getattr(message, "properties", None)
        response = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        if response is not None and not self._response_topic_ok(response):
            self._refuse(kind, topic, message.payload,
                         f"refused: response topic {str(response)[:128]!r} is not under "
                         f"'{self.base}/reply/'")
            return
        if correlation is not None and len(correlation) > 256:
            correlation = None
        item = (kind, bytes(message.payload), topic, (response, correlation))
        with self._queued_lock:
            busy = self._queued_bytes + size > self.config.max_queued_bytes
            if not busy:
                self._queued_bytes += size
        if not busy:
            try:
                (self._deploys if kind == "deploy" else self._commands).put_nowait(item)
                return
            except queue.Full:
                with self._queued_lock:
                    self._queued_bytes -= size
        self._refuse(kind, topic, message.payload,
                     f"busy: {_MAX_QUEUED} commands or {self.config.max_queued_bytes} bytes "
                     "(mqtt.max_queued_bytes) are already waiting")

    def _response_topic_ok(self, topic: object) -> bool:
        prefix = f"{self.base}/reply/"
        return (isinstance(topic, str) and topic.startswith(prefix) and len(topic) <= 256
                and len(topic) > len(prefix) and not any(c in topic for c in "+#\0"))

    def _refuse(self, kind: str, topic: str, payload: bytes, error: str) -> None:
        """Answer a message that is not queued (on paho's thread: no parsing of big data)."""
        self.rejected_messages += 1
        self.ack(kind, {"id": _peek_id(payload), "ok": False, "topic": topic, "error": error})
        log.warning(json.dumps({"event": "fleet_refused", "topic": topic, "error": error}))

    def _dequeued(self, item: tuple[Any, ...]) -> None:
        with self._queued_lock:
            self._queued_bytes -= len(item[1])

    def _command_worker(self) -> None:
        while True:
            item = self._commands.get()
            if item is None:
                return
            self._dequeued(item)
            self._handle(*item)

    def _deploy_worker(self) -> None:
        while True:
            item = self._deploys.get()
            if item is None:
                return
            self._dequeued(item)
            self._handle(*item)

    def ack(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"device_id": self.device_id, "ts": now_iso(), **body}
        payload = json.dumps(body)
        self._client.publish(f"{self.base}/{_ACK_TOPIC[kind]}", payload, qos=1)
        response_topic, correlation = getattr(self._reply, "to", (None, None))
        if response_topic and self.config.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            self._client.publish(response_topic, payload, qos=1, properties=props)
        return body

    def _decode(self, kind: str, payload: bytes) -> dict[str, Any]:
        limit = self.config.max_payload_bytes
        if len(payload) > limit:
            raise FleetError(
                f"payload of {len(payload)} bytes exceeds the limit of {limit} "
                "(mqtt.max_payload_bytes)"
            )
        try:
            msg = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FleetError(f"payload is not UTF-8 JSON: {exc}") from exc
        if not isinstance(msg, dict):
            raise FleetError(f"payload must be a JSON object, got {type(msg).__name__}")
        cid = msg.get("id")
        if not isinstance(cid, str) or not 0 < len(cid) <= _MAX_ID:
            raise FleetError(f"field 'id': expected a string of 1-{_MAX_ID} characters, got {cid!r}")
        return msg

    def _handle(self, kind: str, payload: bytes, topic: str,
                reply: tuple[str | None, bytes | None] = (None, None)) -> None:
        self._reply.to = reply
        try:
            self._handle_one(kind, payload, topic)
        finally:
            self._reply.to = (None, None)

    def _handle_one(self, kind: str, payload: bytes, topic: str) -> None:
        try:
            msg = self._decode(kind, payload)
        except FleetError as exc:
            self.rejected_messages += 1
            self.ack(kind, {"id": _peek_id(payload), "ok": False, "error": str(exc),
                            "topic": topic})
            log.warning(json.dumps({"event": "fleet_rejected", "topic": topic, "error": str(exc)}))
            return
        cid = msg["id"]
        key = f"{kind}:{cid}"
        done = self._seen.get(key)
        if done is not None:
            # A redelivery (QoS 1 is at-least-once): answer again, do not run it again.
            self.ack(kind, {**done, "duplicate": True})
            return
        with self._running_lock:
            if key in self._running:
                self.ack(kind, {"id": cid, "ok": True, "duplicate": True, "step": "in_progress"})
                return
            self._running.add(key)
        try:
            final = self._run(kind, cid, msg, topic)
        finally:
            with self._running_lock:
                self._running.discard(key)
        self._seen.put(key, {k: v for k, v in final.items() if k not in ("device_id", "ts")})

    def _run(self, kind: str, cid: str, msg: dict[str, Any], topic: str) -> dict[str, Any]:
        if kind == "deploy":
            last: dict[str, Any] = {}
            base = {"id": cid, "model": msg.get("model"), "version": msg.get("version")}

            def step(name: str, ok: bool = True, **fields: Any) -> None:
                nonlocal last
                body = self.ack("deploy", {**base, "step": name, "ok": ok, **fields})
                # A redelivery is answered with the outcome, not a later detail step.
                if name in _FINAL_STEPS or not last:
                    last = body

            try:
                self.handler.deploy(msg, step)
            except EdgecutError as exc:
                step("rejected", ok=False, error=str(exc), reason=str(exc))
            except Exception as exc:  # never let a bug in a step kill the worker
                log.exception("deploy failed")
                step("rejected", ok=False, error=f"internal error: {type(exc).__name__}: {exc}")
            self.publish_status()
            return last
        try:
            fields = (self.handler.apply_config if kind == "config" else self.handler.command)(msg)
            body = {"id": cid, "ok": True, **fields}
        except EdgecutError as exc:
            body = {"id": cid, "ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("fleet command failed")
            body = {"id": cid, "ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if kind == "config" and body.get("ok"):
            self.publish_status()
        return self.ack(kind, body)


def _peek_id(payload: bytes) -> str | None:
    """The ``id`` of a refused message, when it is small JSON with a string id."""
    if not payload or len(payload) > 65536:
        return None
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        return raw["id"][:_MAX_ID]
    return None


__all__ = ["TELEMETRY_QOS", "FleetHandler", "FleetLink", "now_iso"]
