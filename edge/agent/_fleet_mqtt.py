"""The fleet link's MQTT connection: the client (TLS, credentials, last will, the packet
size told to the broker), connecting and reconnecting with backoff, supervised worker
threads, subscriptions, and the retained status.

``_Connection`` is one of the jobs of :class:`~edge.agent._fleet.FleetLink`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devices.errors import FleetError

log = logging.getLogger("edgecut.fleet")

# A command topic's suffix and the kind of message it carries.
_KINDS = {"config/set": "config", "models/deploy": "deploy", "cmd": "cmd"}
# Bytes of an MQTT PUBLISH packet besides the payload: fixed header, topic, packet id and
# properties; the limit told to the broker leaves room for them.
_PACKET_OVERHEAD = 4096
_RESTART_BACKOFF_S = 1.0


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + ""


class _Connection:
    """Connecting, staying connected, the worker threads, and the status message."""

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
