"""Safe model updates: download, verify, warm up, swap with no failed request, probation.

A deployment goes through these steps, each reported to ``ack(step, ...)`` (the fleet
link publishes them on ``models/ack``)::

    accepted -> downloading -> downloaded -> verified -> loaded -> warmed -> swapped
             -> probation -> committed                 (the new version stays)
                          -> rolled_back               (health check or error rate failed)
    any step -> rejected (with the reason; the serving version is untouched)

Serving never waits for an update. A :class:`ModelSlot` holds a pointer to the serving
:class:`ModelVersion`; a request reads the pointer once and runs on that version to the
end, so swapping the pointer lets in-flight requests finish on the old session while new
ones start on the new one. The old session is freed by reference counting when its last
request lets go of it, and the previous version stays loaded through probation so a
rollback is another pointer swap. Versions live on disk under
``<data_dir>/models/<name>/<version>/`` and the serving choice is persisted in
``state.json``, so a restart serves what was committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices import DeviceProfile
from devices.errors import EdgecutError, ModelInputError, ModelUpdateError
from edge import runtime

log = logging.getLogger("edgecut.updates")

# typing's Callable: the alias is evaluated at import, on Python 3.8 too.
AckFn = typing.Callable[..., None]

_VERSION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")
_SUFFIXES = (".onnx", ".ort", ".tflite")
_DEPLOY_FIELDS = {"model", "version", "sha256", "url", "path", "signature", "size",
                  "allow_interface_change", "probation_s"}


@dataclass
class ModelVersion:
    """One loaded version of a model and its request counters."""

    name: str
    version: str
    path: str
    session: runtime.Session
    loaded_at: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, ok: bool) -> None:
        with self._lock:
            self.requests += 1
            if not ok:
                self.errors += 1

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.errors


class ModelSlot:
    """The serving version of one model, swapped atomically.

    ``run`` reads :attr:`current` once; the reference it holds keeps that version's
    session alive until the call returns, whatever swaps happen meanwhile.
    """

    def __init__(self, current: ModelVersion) -> None:
        self.current = current
        self.previous: ModelVersion | None = None
        self._listeners: list[Callable[[ModelVersion, bool], None]] = []

    @property
    def name(self) -> str:
        return self.current.name

    def add_listener(self, fn: Callable[[ModelVersion, bool], None]) -> None:
        """Call ``fn(version, ok)`` after every request (the probation monitor uses it)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ModelVersion, bool], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ModelVersion]:
        """Run the serving version; return its outputs and the version that ran."""
        version = self.current
        try:
            out = version.session.run(feeds)
        except ModelInputError:
            # The caller's mistake, not the model's: it does not count against a version.
            raise
        except Exception:
            version.record(False)
            for fn in list(self._listeners):
                fn(version, False)
            raise
        version.record(True)
        if self._listeners:
            for fn in list(self._listeners):
                fn(version, True)
        return out, version

    def swap(self, new: ModelVersion) -> ModelVersion:
        """Serve ``new`` from the next request on; return the version it replaced."""
        old = self.current
        self.previous = old
        self.current = new
        return old


def sample_inputs(session: runtime.Session, path: str = "", seed: int = 0) -> dict[str, np.ndarray]:
    """Warm-up feeds: the ``.npz`` at ``path`` when given, else seeded random tensors."""
    if path:
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ModelUpdateError(f"warm-up inputs '{path}': not a readable .npz ({exc})") from exc
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in session.inputs:
        shape = tuple(1 if d is None else d for d in spec.shape)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ModelUpdateError(
                f"input '{spec.name}' has dtype {spec.dtype}: give warm-up inputs as an .npz"
            )
    return feeds


def warm_up(session: runtime.Session, feeds: Mapping[str, np.ndarray], runs: int) -> float:
    """Run ``runs`` (at least one) inferences; fail on an error or a non-finite output.

    Returns the median latency in milliseconds.
    """
    times = []
    for i in range(max(1, runs)):
        start = time.perf_counter()
        try:
            out = session.run(feeds)
        except EdgecutError as exc:
            raise ModelUpdateError(f"warm-up inference {i + 1} failed: {exc}") from exc
        times.append((time.perf_counter() - start) * 1000)
        for name, value in out.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ModelUpdateError(f"warm-up inference {i + 1}: output '{name}' is not finite")
    return float(np.median(times))


def check_interface(old: runtime.Session, new: runtime.Session) -> None:
    """Reject a new version whose inputs or outputs differ from the serving one's.

    Applications on the board were written against the serving interface; a change in
    names, dtypes or ranks would make their requests fail after the swap.
    """
    for kind, a, b in (("input", old.inputs, new.inputs), ("output", old.outputs, new.outputs)):
        sa = {s.name: (s.dtype, len(s.shape)) for s in a}
        sb = {s.name: (s.dtype, len(s.shape)) for s in b}
        if sa != sb:
            def fmt(specs: tuple[runtime.TensorSpec, ...]) -> str:
                return ", ".join(s.describe() for s in specs)

            raise ModelUpdateError(
                f"{kind}s changed: serving version has {fmt(a)}, new version has {fmt(b)} "
                "(set allow_interface_change to deploy it anyway)"
            )


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


class ModelStore:
    """Model versions on disk and the persisted choice of the serving one."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"
        self._lock = threading.Lock()

    def version_dir(self, model: str, version: str) -> Path:
        return self.root / model / version

    def staging_dir(self, model: str, version: str) -> Path:
        return self.root / model / ".incoming" / version

    def state(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._state_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def record(self, model: str, current: ModelVersion, previous: ModelVersion | None) -> None:
        with self._lock:
            state = self.state()
            state[model] = {
                "version": current.version,
                "path": current.path,
                "previous": None
                if previous is None
                else {"version": previous.version, "path": previous.path},
            }
            tmp = self._state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, self._state_path)

    def forget(self, model: str) -> None:
        """Drop ``model`` from the persisted state (it is no longer served)."""
        with self._lock:
            state = self.state()
            if state.pop(model, None) is not None:
                tmp = self._state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=1))
                os.replace(tmp, self._state_path)

    def prune(self, model: str, keep: list[str], keep_count: int) -> list[str]:
        """Delete version folders beyond the newest ``keep_count``, never those in ``keep``."""
        folder = self.root / model
        if not folder.is_dir():
            return []
        dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.stat().st_mtime)
        removed = []
        excess = len(dirs) - keep_count
        for d in dirs:
            if excess <= 0:
                break
            if d.name in keep:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
            excess -= 1
        return removed


class Updater:
    """Runs deployments and rollbacks for the agent's model slots.

    ``on_committed(name, version)`` runs after a version passes probation (re-profiling,
    re-partitioning) and its result is acknowledged as ``reprofiled``;
    ``on_models_changed()`` runs when a deployment adds or removes a model.
    """

    def __init__(
        self,
        slots: dict[str, ModelSlot],
        store: ModelStore,
        profile: DeviceProfile | None,
        settings: Callable[[], Any],
        warmup: Callable[[str], tuple[int, str]],
        on_committed: Callable[[str, ModelVersion], dict[str, Any] | None] | None = None,
        on_models_changed: Callable[[], None] | None = None,
    ) -> None:
        self.slots = slots
        self.store = store
        self.profile = profile
        self._settings = settings  # returns the current UpdatesConfig (hot-reloadable)
        self._warmup = warmup  # model name -> (warm-up runs, warm-up inputs path)
        self._on_committed = on_committed
        self._on_models_changed = on_models_changed or (lambda: None)
        self._lock = threading.Lock()
        self._deploy_lock = threading.Lock()
        self._probations: dict[str, _Probation] = {}
        self.history: list[dict[str, Any]] = []

    def load(self, path: str) -> runtime.Session:
        return runtime.load(path, self.profile)

    # -- deployment ----------------------------------------------------------------------

    def deploy(self, dep: Deployment, ack: AckFn) -> str:
        """Run ``dep`` to its end (committed, rolled back or rejected); return that step.

        Blocking: the fleet link calls it from a worker thread.
        """
        # Downloads and warm-ups run one at a time but outside the slot lock, so a
        # rollback or a status request is not held up by a long download.
        with self._deploy_lock:
            with self._lock:
                slot = self.slots.get(dep.model)
                if slot is not None and slot.current.version == dep.version:
                    ack("committed", detail="this version is already serving")
                    return "committed"
            ack("accepted")
            try:
                new = self._prepare(dep, slot, ack)
            except EdgecutError as exc:
                ack("rejected", ok=False, reason=str(exc))
                self.history.append({"model": dep.model, "version": dep.version,
                                     "result": "rejected", "reason": str(exc)})
                return "rejected"
            with self._lock:
                slot = self.slots.get(dep.model)
                if slot is None:
                    slot = ModelSlot(new)
                    self.slots[dep.model] = slot
                    self._on_models_changed()
                else:
                    self._end_probation(dep.model)
                    slot.swap(new)
                self.store.record(dep.model, new, slot.previous)
                ack("swapped", previous=slot.previous.version if slot.previous else None)
        settings = self._settings()
        window = settings.probation_s if dep.probation_s is None else dep.probation_s
        return self._probation(dep.model, slot, new, window, ack)

    def _prepare(self, dep: Deployment, slot: ModelSlot | None, ack: AckFn) -> ModelVersion:
        settings = self._settings()
        final = self.store.version_dir(dep.model, dep.version)
        state = self.store.state().get(dep.model, {})
        in_use = {state.get("version"), (state.get("previous") or {}).get("version")}
        if dep.version in in_use and final.exists():
            # Versions are immutable: overwriting one a rollback may need would lose it.
            raise ModelUpdateError(
                f"version {dep.version} of '{dep.model}' is already on the device "
                "(serving or kept for rollback); deploy it under a new version name"
            )
        # Fetched and verified in a staging folder, so a failure never touches a kept
        # version; an interrupted download stays there and resumes next time.
        staging = self.store.staging_dir(dep.model, dep.version)
        staging.mkdir(parents=True, exist_ok=True)
        name = "model" + dep.suffix
        ack("downloading", source=dep.url or dep.path)
        try:
            if dep.size is not None and dep.size > settings.max_download_bytes:
                raise ModelUpdateError(
                    f"model size {dep.size} exceeds the limit of "
                    f"{settings.max_download_bytes} bytes"
                )
            if dep.url.startswith(("http://", "https://")):
                size = download(dep.url, staging / name, settings.max_download_bytes,
                                settings.download_timeout_s)
            else:
                src = Path(dep.path or dep.url[len("file://"):])
                if not src.is_file():
                    raise ModelUpdateError(f"model file '{src}' not found")
                if src.stat().st_size > settings.max_download_bytes:
                    raise ModelUpdateError(
                        f"model file '{src}' is {src.stat().st_size} bytes, over the limit of "
                        f"{settings.max_download_bytes}"
                    )
                shutil.copyfile(src, staging / name)
                size = (staging / name).stat().st_size
            ack("downloaded", bytes=size)
            digest = sha256_file(staging / name)
            if digest != dep.sha256:
                raise ModelUpdateError(
                    f"sha256 mismatch: expected {dep.sha256}, the file has {digest}"
                )
            if settings.public_key_file:
                verify_signature(settings.public_key_file, digest, dep.signature)
        except _DownloadInterrupted:
            raise  # keep the partial file for the next attempt
        except EdgecutError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ack("verified", sha256=digest, signed=bool(settings.public_key_file))
        shutil.rmtree(final, ignore_errors=True)  # a leftover no state refers to
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
        dest = final / name
        try:
            try:
                session = self.load(str(dest))
            except EdgecutError as exc:
                raise ModelUpdateError(f"cannot load the model: {exc}") from exc
            ack("loaded", providers=list(session.providers))
            if slot is not None and not dep.allow_interface_change:
                check_interface(slot.current.session, session)
            runs, inputs_path = self._warmup(dep.model)
            feeds = sample_inputs(session, inputs_path)
            ms = warm_up(session, feeds, runs)
            ack("warmed", warmup_ms=round(ms, 3))
        except EdgecutError:
            # A rejected version must not linger where a rollback could pick it up.
            shutil.rmtree(final, ignore_errors=True)
            raise
        return ModelVersion(dep.model, dep.version, str(dest), session)

    # -- probation -----------------------------------------------------------------------

    def _probation(
        self, name: str, slot: ModelSlot, new: ModelVersion, window: float, ack: AckFn
    ) -> str:
        settings = self._settings()
        prob = _Probation(new, settings.error_rate_threshold, settings.min_probation_requests)
        with self._lock:
            self._probations[name] = prob
        slot.add_listener(prob.observe)
        ack("probation", window_s=window, error_rate_threshold=settings.error_rate_threshold)
        runs, inputs_path = self._warmup(name)
        try:
            feeds = sample_inputs(new.session, inputs_path)
        except EdgecutError:
            feeds = {}
        deadline = time.monotonic() + window
        reason = ""
        while not reason:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if prob.tripped.wait(min(left, settings.health_interval_s)):
                reason = prob.reason or "probation cancelled"
                break
            if slot.current is not new:
                reason = "replaced during probation"
                break
            try:
                warm_up(new.session, feeds, 1)
            except EdgecutError as exc:
                reason = f"health check failed: {exc}"
        slot.remove_listener(prob.observe)
        with self._lock:
            if self._probations.get(name) is prob:
                del self._probations[name]
            if reason == "replaced during probation" or prob.cancelled:
                ack("superseded", ok=False, reason=reason)
                return "superseded"
            requests, errors = new.counts()
            if reason:
                previous = slot.previous
                serving: str | None = None
                if previous is not None and slot.current is new:
                    slot.swap(previous)
                    slot.previous = None
                    self.store.record(name, previous, None)
                    serving = previous.version
                elif previous is None and self.slots.get(name) is slot:
                    # A model that is new on this device has nothing to go back to: it
                    # stops being served.
                    del self.slots[name]
                    self.store.forget(name)
                    self._on_models_changed()
                ack("rolled_back", ok=False, reason=reason, requests=requests, errors=errors,
                    serving=serving)
                self.history.append({"model": name, "version": new.version,
                                     "result": "rolled_back", "reason": reason})
                return "rolled_back"
            previous = slot.previous
            self.store.record(name, new, previous)
            keep = [new.version] + ([previous.version] if previous else [])
            removed = self.store.prune(name, keep, max(settings.keep_versions, len(keep)))
            # The previous session is no longer needed in memory; it stays on disk.
            slot.previous = None
            ack("committed", requests=requests, errors=errors, pruned=removed)
            self.history.append({"model": name, "version": new.version, "result": "committed"})
        if self._on_committed is not None:
            try:
                result = self._on_committed(name, new)
                ack("reprofiled", **(result or {}))
            except Exception as exc:  # a failed re-profile must not undo a good update
                log.exception("re-profiling %s version %s failed", name, new.version)
                ack("reprofile_failed", ok=False, reason=f"{type(exc).__name__}: {exc}")
        return "committed"

    def _end_probation(self, name: str) -> None:
        prob = self._probations.get(name)
        if prob is not None:
            prob.cancel()

    # -- rollback ------------------------------------------------------------------------

    def rollback(self, name: str, ack: AckFn) -> str:
        """Serve the previous version of ``name`` again (from memory, or from disk)."""
        with self._lock:
            slot = self.slots.get(name)
            if slot is None:
                raise ModelUpdateError(f"rollback: no model named '{name}'")
            self._end_probation(name)
            previous = slot.previous
            if previous is None:
                entry = self.store.state().get(name, {}).get("previous")
                if not entry:
                    raise ModelUpdateError(f"rollback: model '{name}' has no previous version")
                try:
                    session = self.load(entry["path"])
                except EdgecutError as exc:
                    raise ModelUpdateError(
                        f"rollback: previous version {entry['version']} cannot load: {exc}"
                    ) from exc
                previous = ModelVersion(name, entry["version"], entry["path"], session)
            old = slot.swap(previous)
            slot.previous = old
            self.store.record(name, previous, old)
            ack("rolled_back", serving=previous.version, replaced=old.version)
            return previous.version


class _Probation:
    """Watches a new version's error rate; trips once it crosses the threshold."""

    def __init__(self, version: ModelVersion, threshold: float, min_requests: int) -> None:
        self.version = version
        self.threshold = threshold
        self.min_requests = min_requests
        self.tripped = threading.Event()
        self.reason = ""
        self.cancelled = False
        self._requests = 0
        self._errors = 0
        self._lock = threading.Lock()

    def observe(self, version: ModelVersion, ok: bool) -> None:
        if version is not self.version or self.tripped.is_set():
            return
        with self._lock:
            self._requests += 1
            if not ok:
                self._errors += 1
            n, e = self._requests, self._errors
        if n >= self.min_requests and e / n > self.threshold:
            self.reason = (
                f"error rate {e}/{n} = {e / n:.3f} exceeds the threshold "
                f"{self.threshold:.3f} (updates.error_rate_threshold)"
            )
            self.tripped.set()

    def cancel(self) -> None:
        self.cancelled = True
        self.tripped.set()


__all__ = [
    "Deployment",
    "ModelSlot",
    "ModelStore",
    "ModelVersion",
    "Updater",
    "check_interface",
    "download",
    "sample_inputs",
    "sha256_file",
    "verify_signature",
    "warm_up",
]
