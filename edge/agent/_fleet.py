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
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from devices.errors import EdgecutError, FleetError
from edge.agent._config import MqttConfig
from edge.agent._spool import TelemetrySpool

log = logging.getLogger("edgecut.fleet")

_KINDS = {"config/set": "config", "models/deploy": "deploy", "cmd": "cmd"}
_ACK_TOPIC = {"config": "config/ack", "deploy": "models/ack", "cmd": "cmd/ack"}
_MAX_ID = 128
TELEMETRY_QOS = 2
_FINAL_STEPS = ("committed", "rejected", "rolled_back", "superseded")
_REMEMBER_IDS = 1000
_MAX_QUEUED = 256
# Bytes of an MQTT PUBLISH packet besides the payload: fixed header, topic, packet id and
# properties; the limit told to the broker leaves room for them.
_PACKET_OVERHEAD = 4096
_RESTART_BACKOFF_S = 1.0


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


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + ""


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


class FleetLink:
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

    # -- connection ----------------------------------------------------------------------

    def _make_client(self) -> Any:
        mqtt = self._mqtt
        cfg = self.config
        v5 = cfg.protocol == "5"
        kwargs: dict[str, Any] = {
            "callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
            "client_id": cfg.client_id or f"edgecut-{self.device_id}",
            "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        }
        if not v5:
            # A persistent session keeps the command subscriptions (and QoS 1 commands
            # sent while the device was away) across reconnects.
            kwargs["clean_session"] = False
        client = mqtt.Client(**kwargs)
        if cfg.username:
            password = cfg.password
            if cfg.password_file:
                try:
                    password = Path(cfg.password_file).read_text().strip()
                except OSError as exc:
                    raise FleetError(f"mqtt.password_file '{cfg.password_file}': {exc}") from exc
            client.username_pw_set(cfg.username, password or None)
        if cfg.tls.enabled:
            import ssl

            try:
                client.tls_set(
                    ca_certs=cfg.tls.ca_file or None,
                    certfile=cfg.tls.cert_file or None,
                    keyfile=cfg.tls.key_file or None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise FleetError(f"mqtt.tls: cannot set up TLS: {exc}") from exc
            if cfg.tls.insecure:
                client.tls_insecure_set(True)
        offline = json.dumps({"state": "offline", "device_id": self.device_id,
                              "reason": "connection lost"})
        client.will_set(f"{self.base}/status", offline, qos=1, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_inflight_messages_set(max(cfg.inflight_window, 20))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        """Connect in the background and start the worker threads."""
        mqtt = self._mqtt
        props = None
        kwargs: dict[str, Any] = {}
        if self.config.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 7 * 24 * 3600
            # The broker must not send this client a packet larger than it will accept.
            props.MaximumPacketSize = min(self.config.max_payload_bytes + _PACKET_OVERHEAD,
                                          268_435_455)
            kwargs = {"clean_start": False, "properties": props}
        self._client.connect_async(self.config.host, self.config.port,
                                   self.config.keepalive_s, **kwargs)
        self._client.loop_start()
        del mqtt
        for target, name in ((self._command_worker, "fleet-commands"),
                             (self._deploy_worker, "fleet-deploys"),
                             (self._telemetry_sender, "fleet-telemetry"),
                             (self._telemetry_timer, "fleet-timer")):
            t = threading.Thread(target=self._supervised, args=(target, name), name=name,
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _supervised(self, target: Callable[[], None], name: str) -> None:
        """Run a worker loop; an uncaught error is logged, counted and the loop restarted.

        The link never goes on half-alive: a telemetry thread that died would leave the
        status saying "connected" while nothing is sent.
        """
        while not self._stop.is_set():
            try:
                target()
                return
            except Exception as exc:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.last_thread_error = f"{name}: {type(exc).__name__}: {exc}"
                log.exception(json.dumps({"event": "fleet_thread_restarted", "thread": name,
                                          "restarts": self.restarts[name],
                                          "error": f"{type(exc).__name__}: {exc}"}))
                self._stop.wait(_RESTART_BACKOFF_S)

    def health(self) -> dict[str, Any]:
        """The link's own state for status and telemetry: threads, restarts, the spool."""
        return {"threads_alive": sum(t.is_alive() for t in self._threads),
                "threads": len(self._threads), "restarts": dict(self.restarts),
                "last_thread_error": self.last_thread_error or None,
                "spool_error": self.spool.error or None,
                "spool_dropped": self.spool.dropped}

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect, and stop the threads.

        The last window's statistics become one more telemetry record first: spooled on
        disk, it goes out now or after the next start.
        """
        self.emit_telemetry()
        flush_until = time.monotonic() + min(1.0, timeout / 2)
        while len(self.spool) and self.connected.is_set() and time.monotonic() < flush_until:
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        for q in (self._commands, self._deploys):
            try:
                q.put_nowait(None)
            except queue.Full:
                pass  # the worker is a daemon thread; it stops with the process
        if self.connected.is_set():
            body = {"state": "offline", "device_id": self.device_id, "ts": now_iso(),
                    "reason": "agent stopped"}
            info = self._client.publish(f"{self.base}/status", json.dumps(body), qos=1,
                                        retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        # One deadline for all the threads: a deployment in the middle of a download is
        # a daemon thread and is abandoned (its partial file resumes next time).
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _subscriptions(self) -> list[str]:
        p = self.config.prefix
        bases = [self.base, f"{p}/fleet"] + [f"{p}/group/{g}" for g in self.config.groups]
        return [f"{b}/{suffix}" for b in bases for suffix in _KINDS]

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning(json.dumps({"event": "mqtt_connect_failed", "reason": str(reason)}))
            return
        self.connects += 1
        if self.config.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions

            # Retained commands are not sent at all (retainHandling 2), and a command
            # published with the retain flag keeps it (retainAsPublished), so it is
            # refused below even when it arrives live.
            opts = SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2)
            client.subscribe([(t, opts) for t in self._subscriptions()])
        else:
            client.subscribe([(t, 1) for t in self._subscriptions()])
        self.publish_status()
        self.connected.set()
        self._wake.set()
        log.info(json.dumps({"event": "mqtt_connected", "host": self.config.host,
                             "port": self.config.port, "connects": self.connects}))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any = None) -> None:
        self.connected.clear()
        self._wake.set()
        if not self._stop.is_set():
            log.warning(json.dumps({"event": "mqtt_disconnected", "reason": str(reason)}))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any = None,
                    properties: Any = None) -> None:
        # Called on paho's thread while it holds its own locks: only hand the id over.
        self._acked_mids.append(mid)
        self._wake.set()

    def publish_status(self, state: str = "online") -> None:
        body = {"state": state, "device_id": self.device_id, "ts": now_iso()}
        try:
            body.update(self.handler.status())
        except Exception as exc:  # status must go out even if a detail fails
            body["status_error"] = str(exc)
        self._client.publish(f"{self.base}/status", json.dumps(body), qos=1, retain=True)

    # -- telemetry -----------------------------------------------------------------------

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
