"""A deployment and its artifact: the validated ``models/deploy`` message, the download
(bounded, resumed, https only unless http is allowed) and the digest.

Trust decisions (signed documents, allowed sources) are :mod:`edge.agent._trust`'s; this
module checks that the message is well formed: names are names
(:mod:`edge.agent._names`), numbers are numbers in range.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import ModelUpdateError
from edge.agent._names import check_name

_SUFFIXES = (".onnx", ".ort", ".tflite")
_DEPLOY_FIELDS = {"model", "version", "sha256", "url", "path", "size",
                  "allow_interface_change", "probation_s"}
_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class Deployment:
    """A validated ``models/deploy`` request (``document``: its verified signed document)."""

    model: str
    version: str
    sha256: str
    url: str = ""
    path: str = ""
    size: int | None = None
    allow_interface_change: bool = False
    probation_s: float | None = None
    document: Any = None

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
                raise ModelUpdateError(f"deploy: field '{key}' has the wrong type "
                                       f"({type(value).__name__})")
            return value

        unknown = sorted(set(msg) - _DEPLOY_FIELDS)
        if unknown:
            raise ModelUpdateError(
                f"deploy: unknown field(s) {[str(u)[:32] for u in unknown[:8]]}; expected "
                f"{sorted(_DEPLOY_FIELDS | {'signed'})}"
            )
        model = check_name(field_("model", str, True), "model")
        version = check_name(field_("version", str, True), "version")
        sha = field_("sha256", str, True).lower()
        url = field_("url", str) or ""
        path = field_("path", str) or ""
        if len(sha) != 64 or not set(sha) <= _HEX:
            raise ModelUpdateError("deploy: field 'sha256' must be 64 hex digits")
        if bool(url) == bool(path):
            raise ModelUpdateError("deploy: give exactly one of 'url' or 'path'")
        if len(url) > 2048 or len(path) > 4096 or "\x00" in url + path:
            raise ModelUpdateError("deploy: field 'url' or 'path' is too long or holds NUL")
        size = field_("size", int)
        if size is not None and not 0 < size <= 1 << 62:
            raise ModelUpdateError(f"deploy: field 'size' must be a positive byte count, "
                                   f"got {size}")
        probation = field_("probation_s", (int, float))
        if probation is not None and not math.isfinite(probation):
            raise ModelUpdateError("deploy: field 'probation_s' must be a finite number")
        return Deployment(
            model=model,
            version=version,
            sha256=sha,
            url=url,
            path=path,
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


def download(url: str, dest: Path, max_bytes: int, timeout_s: float, attempts: int = 3,
             allow_http: bool = False) -> int:
    """Fetch ``url`` into ``dest``, resuming a partial ``dest.part`` with a Range request.

    Stops with :class:`ModelUpdateError` when the body would exceed ``max_bytes``, and
    when a redirect leads off https (unless ``allow_http``).
    """
    import httpx

    schemes = ("https", "http") if allow_http else ("https",)

    def check_hop(request: Any) -> None:
        if request.url.scheme not in schemes:
            raise ModelUpdateError(f"refused: download {url}: a redirect leads to a "
                                   f"{request.url.scheme}:// URL")

    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for _ in range(max(1, attempts)):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with httpx.Client(timeout=timeout_s, follow_redirects=True,
                              event_hooks={"request": [check_hop]}) as client, \
                    client.stream("GET", url, headers=headers) as resp:
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
                        f"refused: download {url}: larger than the limit of {max_bytes} bytes "
                        "(updates.max_download_bytes)"
                    )
                with open(part, "ab" if have else "wb") as fh:
                    total = have
                    for chunk in resp.iter_bytes():  # as it arrives: a drop keeps all of it
                        total += len(chunk)
                        if total > max_bytes:
                            raise ModelUpdateError(
                                f"refused: download {url}: larger than the limit of "
                                f"{max_bytes} bytes (updates.max_download_bytes)"
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
