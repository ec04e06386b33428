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

The steps' parts live beside this module: serving versions and slots (``_slots``), the
deployment message and its download and checks (``_fetch``), the versions on disk
(``_store``); here is the :class:`Updater` that runs them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devices import DeviceProfile
from devices.errors import EdgecutError, ModelUpdateError
from edge import runtime
from edge.agent._fetch import (
    Deployment,
    _DownloadInterrupted,
    download,
    sha256_file,
)
from edge.agent._names import is_inside
from edge.agent._slots import ModelSlot, ModelVersion, check_interface, sample_inputs, warm_up
from edge.agent._store import ModelStore

log = logging.getLogger("edgecut.updates")

# typing's Callable: the alias is evaluated at import, on Python 3.8 too.
AckFn = typing.Callable[..., None]


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
        gate: Any = None,
        trusted: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.slots = slots
        # The trust gate (edge.agent._trust.Gate): checks the file against a signed
        # document and records its counter before the version is used.
        self._gate = gate
        # (model, path) -> whether a path read back from state.json may be loaded.
        self._trusted = trusted or (lambda name, path: self.store.holds(path))
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
        limit = settings.max_download_bytes
        try:
            if dep.size is not None and dep.size > limit:
                raise ModelUpdateError(f"refused: the model is larger than the limit of {limit} "
                                       "bytes (updates.max_download_bytes)")
            if dep.url:
                size = download(dep.url, staging / name, limit, settings.download_timeout_s,
                                allow_http=settings.allow_http)
            else:
                self._copy_source(Path(dep.path), staging / name, settings)
                size = (staging / name).stat().st_size
            ack("downloaded")
            digest = sha256_file(staging / name)
            if digest != dep.sha256:
                # Neither digest in the answer: an unsigned deployment must not be a way
                # to learn what a file on the device or its network holds.
                raise ModelUpdateError("refused: the file does not match the sha256 given")
            if self._gate is not None:
                self._gate.verified(dep, digest, size)
        except _DownloadInterrupted:
            raise  # keep the partial file for the next attempt
        except EdgecutError:
            self.store.remove(staging)
            raise
        document = dep.document
        ack("verified", sha256=digest, bytes=size, signed=document is not None,
            **({"counter": document.freshness.counter} if document is not None else {}))
        self.store.remove(final)  # a leftover no state refers to
        final.parent.mkdir(parents=True, exist_ok=True)
        self.store.move(staging, final)
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
            self.store.remove(final)
            raise
        return ModelVersion(dep.model, dep.version, str(dest), session)

    @staticmethod
    def _copy_source(src: Path, dest: Path, settings: Any) -> None:
        """Copy a file source, proven (again, just before reading) to lie under
        ``updates.source_dir``: a link swapped in after admission is not followed out."""
        if not settings.source_dir or not is_inside(settings.source_dir, src):
            raise ModelUpdateError("refused: 'path' must be a file under updates.source_dir")
        real = Path(os.path.realpath(src))
        if not real.is_file():
            raise ModelUpdateError(f"model file '{src}' not found under updates.source_dir")
        if real.stat().st_size > settings.max_download_bytes:
            raise ModelUpdateError(
                f"refused: model file '{src}' is larger than the limit of "
                f"{settings.max_download_bytes} bytes (updates.max_download_bytes)")
        shutil.copyfile(real, dest)

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
                if not self._trusted(name, entry["path"]):
                    raise ModelUpdateError(
                        f"rollback: the previous version of '{name}' in state.json lies outside "
                        "the model store; it is not loaded")
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
    "warm_up",
]
