"""Signed fleet documents: what the operator's key vouches for, and how a device checks it.

An update or a security-relevant config change is a small JSON *document* wrapped in a
DSSE envelope (the Dead Simple Signing Envelope of in-toto and Sigstore)::

    {"payloadType": "application/vnd.edgecut.deploy+json",
     "payload": "<base64 of the document's bytes>",
     "signatures": [{"keyid": "<first 16 hex of sha256(raw public key)>", "sig": "<base64>"}]}

The Ed25519 signature (``cryptography``) covers DSSE's pre-authentication encoding of the
payload type and the exact payload bytes, so the device never re-serialises JSON to check
a signature and a deploy document cannot be passed off as a config one. The payload is
written canonically anyway (sorted keys, no spaces, ASCII: RFC 8785 for documents that hold
only strings and integers, which is all these hold) so the same document signs the same.

A deploy document names everything a device acts on::

    {"type": "deploy", "model": "m", "version": "7", "sha256": "<64 hex>", "size": 123,
     "counter": 42, "issued_at": 1765000000, "expires_at": 1765086400,
     "devices": ["cam-01"]}                                    (devices: optional scope)

so a signed file cannot be relabelled onto another model or version, an old document
cannot bring back an old version (``counter`` must exceed every counter the device has
accepted for that model), and a captured document stops working when it expires or once
it was used. A config document carries ``version``, ``config``, ``policy`` and the same
freshness fields, with one counter for all config documents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import TrustError
from edge.agent._names import check_name

DEPLOY_TYPE = "application/vnd.edgecut.deploy+json"
CONFIG_TYPE = "application/vnd.edgecut.config+json"
# A device's clock may run behind the operator's: a document issued up to this far in
# the future is still accepted.
CLOCK_SKEW_S = 300
MAX_COUNTER = 2 ** 53  # what every JSON reader keeps exact
_ENVELOPE_KEYS = {"payloadType", "payload", "signatures"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical(document: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a document of strings, integers, lists and objects."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key: Any, payload_type: str, document: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap ``document`` in a DSSE envelope signed with an Ed25519 private key."""
    payload = canonical(document)
    sig = private_key.sign(pae(payload_type, payload))
    return {"payloadType": payload_type,
            "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": key_id(private_key.public_key()),
                            "sig": base64.b64encode(sig).decode("ascii")}]}


def load_public_key(path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise TrustError(f"public key '{path}': unreadable ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"public key '{path}': expected an Ed25519 public key (PEM)")
    return key


def open_envelope(envelope: object, payload_type: str, public_key_file: str,
                  where: str) -> dict[str, Any]:
    """Verify a DSSE envelope with the key in ``public_key_file``; return its document.

    Raises :class:`TrustError` saying why it was refused.
    """
    from cryptography.exceptions import InvalidSignature

    if not isinstance(envelope, Mapping) or set(envelope) != _ENVELOPE_KEYS:
        raise TrustError(f"{where}: field 'signed' must be a DSSE envelope with "
                         f"{sorted(_ENVELOPE_KEYS)}")
    if envelope["payloadType"] != payload_type:
        raise TrustError(f"refused: {where}: the signed document is of type "
                         f"{str(envelope['payloadType'])[:80]!r}, expected {payload_type!r}")
    sigs = envelope["signatures"]
    payload_b64 = envelope["payload"]
    if not isinstance(payload_b64, str) or not isinstance(sigs, list) or not sigs:
        raise TrustError(f"{where}: the envelope's payload must be base64 text and "
                         "signatures a non-empty list")
    key = load_public_key(public_key_file)
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except ValueError as exc:
        raise TrustError(f"{where}: the envelope's payload is not base64") from exc
    message = pae(payload_type, payload)
    for entry in sigs[:8]:
        sig = entry.get("sig") if isinstance(entry, Mapping) else None
        if not isinstance(sig, str):
            continue
        try:
            key.verify(base64.b64decode(sig, validate=True), message)
        except (InvalidSignature, ValueError):
            continue
        break
    else:
        raise TrustError(f"refused: {where}: no signature verifies with the update key "
                         f"'{public_key_file}'")
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrustError(f"{where}: the signed payload is not UTF-8 JSON") from exc
    if not isinstance(document, dict):
        raise TrustError(f"{where}: the signed payload must be a JSON object")
    return document


def _int(doc: Mapping[str, Any], key: str, where: str, lo: int = 0,
         hi: int = MAX_COUNTER) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TrustError(f"{where}: signed field '{key}' must be an integer in "
                         f"[{lo}, {hi}], got {value!r}")
    return value


@dataclass(frozen=True)
class Freshness:
    """When a signed document was issued, until when it holds, and its counter."""

    counter: int
    issued_at: int
    expires_at: int

    @staticmethod
    def of(doc: Mapping[str, Any], where: str, device_id: str, now: float | None = None
           ) -> Freshness:
        """Check the freshness and scope fields of ``doc``; raise :class:`TrustError`."""
        now = time.time() if now is None else now
        fresh = Freshness(_int(doc, "counter", where, 1), _int(doc, "issued_at", where),
                          _int(doc, "expires_at", where))
        if fresh.issued_at > now + CLOCK_SKEW_S:
            raise TrustError(f"refused: {where}: the signed document was issued in the "
                             f"future (issued_at {fresh.issued_at}, device time {int(now)})")
        if fresh.expires_at <= now:
            raise TrustError(f"refused: {where}: the signed document expired at "
                             f"{fresh.expires_at} (device time {int(now)})")
        devices = doc.get("devices")
        if devices is not None:
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise TrustError(f"{where}: signed field 'devices' must be a list of ids")
            if device_id not in devices:
                raise TrustError(f"refused: {where}: the signed document is not for device "
                                 f"'{device_id}'")
        return fresh


@dataclass(frozen=True)
class UpdateDocument:
    """A verified deploy document."""

    model: str
    version: str
    sha256: str
    size: int
    freshness: Freshness

    @staticmethod
    def parse(doc: Mapping[str, Any], device_id: str, now: float | None = None
              ) -> UpdateDocument:
        where = "deploy"
        allowed = {"type", "model", "version", "sha256", "size", "counter", "issued_at",
                   "expires_at", "devices"}
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise TrustError(f"{where}: unknown signed field(s) {unknown}")
        if doc.get("type") != "deploy":
            raise TrustError(f"refused: {where}: the signed document is not a deploy document")
        model = check_name(doc.get("model"), "model", "signed deploy")
        version = check_name(doc.get("version"), "version", "signed deploy")
        digest = doc.get("sha256")
        if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
            raise TrustError(f"{where}: signed field 'sha256' must be 64 lower-case hex digits")
        size = _int(doc, "size", where, 1, 2 ** 62)
        return UpdateDocument(model, version, digest, size, Freshness.of(doc, where, device_id,
                                                                          now))


class Counters:
    """The highest counter accepted per stream (``deploy:<model>``, ``config``), on disk.

    Written with fsync of the file and its folder before the document is acted on, so a
    crash cannot make a used document acceptable again.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self.ignored = ""
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # A damaged file must not reopen every used document: keep the damaged copy
            # for the operator and refuse nothing it cannot read (logged by the caller).
            self.ignored = f"{self._path}: unreadable ({exc})"
            return
        if isinstance(data, dict):
            self._seen = {k: v for k, v in data.items()
                          if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}

    def check(self, stream: str, counter: int, where: str) -> None:
        with self._lock:
            last = self._seen.get(stream, 0)
        if counter <= last:
            what = "a replay" if counter == last else "older than one already accepted"
            raise TrustError(f"refused: {where}: counter {counter} is {what} (this device "
                             f"has accepted counter {last} for {stream}); sign a new document")

    def advance(self, stream: str, counter: int, where: str) -> None:
        """Record ``counter`` for ``stream``; raise when it does not exceed the last one."""
        with self._lock:
            last = self._seen.get(stream, 0)
            if counter <= last:
                raise TrustError(f"refused: {where}: counter {counter} for {stream} was "
                                 f"already used (last accepted {last})")
            seen = {**self._seen, stream: counter}
            write_durably(self._path, json.dumps(seen, sort_keys=True).encode())
            self._seen = seen

    def last(self, stream: str) -> int:
        with self._lock:
            return self._seen.get(stream, 0)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders; the rename is still atomic
    finally:
        os.close(fd)


__all__ = [
    "CLOCK_SKEW_S",
    "CONFIG_TYPE",
    "DEPLOY_TYPE",
    "Counters",
    "Freshness",
    "UpdateDocument",
    "canonical",
    "fsync_dir",
    "key_id",
    "load_public_key",
    "open_envelope",
    "pae",
    "sign",
    "write_durably",
]
