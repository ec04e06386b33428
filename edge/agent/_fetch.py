"""A deployment and its artifact: the validated ``models/deploy`` message, the download
(bounded, resumed), the digest and the signature check.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import ModelUpdateError

_VERSION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")
_SUFFIXES = (".onnx", ".ort", ".tflite")
_DEPLOY_FIELDS = {"model", "version", "sha256", "url", "path", "signature", "size",
                  "allow_interface_change", "probation_s"}



@dataclass(frozen=True)
class Deployment:
    """A validated ``models/deploy`` request."""

    model: str
    version: str
    sha256: str
    url: str = ""
    path: str = ""
    signature: str = ""
    size: int | None = None
    allow_interface_change: bool = False
    probation_s: float | None = None

    @staticmethod
    def from_message(msg: Mapping[str, Any]) -> Deployment:
        """Check a decoded deploy message; raise :class:`ModelUpdateError` naming the field."""

        def field_(key: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
            if key not in msg:
                if required:
                    raise ModelUpdateError(f"deploy: missing required field '{key}'")
                return None
            value = msg[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise ModelUpdateError(f"deploy: field '{key}' has the wrong type ({value!r})")
            return value

        unknown = sorted(set(msg) - _DEPLOY_FIELDS)
        if unknown:
            raise ModelUpdateError(
                f"deploy: unknown field(s) {unknown}; expected {sorted(_DEPLOY_FIELDS)}"
            )
        model = field_("model", str, True)
        version = field_("version", str, True)
        sha = field_("sha256", str, True).lower()
        url = field_("url", str) or ""
        path = field_("path", str) or ""
        if not model or len(model) > 64:
            raise ModelUpdateError(f"deploy: field 'model' is not a model name ({model!r})")
        if not version or len(version) > 64 or not set(version) <= _VERSION_CHARS:
            raise ModelUpdateError(
                f"deploy: field 'version' must be 1-64 of [A-Za-z0-9._+-], got {version!r}"
            )
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ModelUpdateError(f"deploy: field 'sha256' must be 64 hex digits, got {sha!r}")
        if bool(url) == bool(path):
            raise ModelUpdateError("deploy: give exactly one of 'url' or 'path'")
        if url and not url.startswith(("http://", "https://", "file://")):
            raise ModelUpdateError(f"deploy: field 'url' must be http(s):// or file://, got {url!r}")
        size = field_("size", int)
        if size is not None and size <= 0:
            raise ModelUpdateError(f"deploy: field 'size' must be positive, got {size}")
        probation = field_("probation_s", (int, float))
        return Deployment(
            model=model,
            version=version,
            sha256=sha,
            url=url,
            path=path,
            signature=field_("signature", str) or "",
            size=size,
            allow_interface_change=bool(field_("allow_interface_change", bool) or False),
            probation_s=None if probation is None else float(probation),
        )

    @property
    def suffix(self) -> str:
        source = self.url or self.path
        for s in _SUFFIXES:
            if source.split("?")[0].endswith(s):
                return s
        return ".onnx"


class _DownloadInterrupted(ModelUpdateError):
    """The transfer broke off; what arrived is kept for a resumed attempt."""


def download(url: str, dest: Path, max_bytes: int, timeout_s: float, attempts: int = 3) -> int:
    """Fetch ``url`` into ``dest``, resuming a partial ``dest.part`` with a Range request.

    Stops with :class:`ModelUpdateError` when the body would exceed ``max_bytes``.
    """
    import httpx

    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for _ in range(max(1, attempts)):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with httpx.stream("GET", url, headers=headers, timeout=timeout_s,
                              follow_redirects=True) as resp:
                if resp.status_code == 416 and have:
                    # The part file already holds the whole body.
                    part.replace(dest)
                    return dest.stat().st_size
                if resp.status_code not in (200, 206):
                    raise ModelUpdateError(f"download {url}: HTTP {resp.status_code}")
                if resp.status_code == 200:
                    have = 0  # the server ignored Range: start over
                length = resp.headers.get("content-length")
                if length is not None and have + int(length) > max_bytes:
                    raise ModelUpdateError(
                        f"download {url}: {have + int(length)} bytes exceeds the limit of "
                        f"{max_bytes} (updates.max_download_bytes)"
                    )
                with open(part, "ab" if have else "wb") as fh:
                    total = have
                    for chunk in resp.iter_bytes():  # as it arrives: a drop keeps all of it
                        total += len(chunk)
                        if total > max_bytes:
                            raise ModelUpdateError(
                                f"download {url}: more than {max_bytes} bytes "
                                "(updates.max_download_bytes)"
                            )
                        fh.write(chunk)
            part.replace(dest)
            return dest.stat().st_size
        except ModelUpdateError:
            part.unlink(missing_ok=True)
            raise
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
    raise _DownloadInterrupted(
        f"download {url}: failed after {attempts} attempts ({last_error}); "
        "the partial file is kept and the next deployment resumes it"
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_signature(public_key_file: str, sha256_hex: str, signature_b64: str) -> None:
    """Check an Ed25519 signature of the file's 32-byte SHA-256 digest.

    Signing the digest (already verified against the file) keeps verification O(1) in
    memory for models of hundreds of megabytes.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not signature_b64:
        raise ModelUpdateError("deploy: a signature is required (updates.public_key_file is set)")
    try:
        key = load_pem_public_key(Path(public_key_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelUpdateError(f"public key '{public_key_file}': unreadable ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ModelUpdateError(f"public key '{public_key_file}': expected an Ed25519 key")
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        key.verify(sig, bytes.fromhex(sha256_hex))
    except (InvalidSignature, ValueError) as exc:
        raise ModelUpdateError("signature does not match the model's sha256 digest") from exc
