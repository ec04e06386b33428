"""The routing table: which versions of which models serve, and how unversioned requests
pick one (the default version and the canary split).

``models`` is replaced, never mutated, under ``lock``, so a request sees either the old or
the new set of versions; a version taken out finishes what it queued before its sessions
close, which is how a hot load or a rollback loses no request. The table also remembers
what the last loads could not serve (``load_errors``, ``skipped``) for the repository
index and readiness. Requests read it without the lock; loads and unloads, which run in
threads, take it.
"""

from __future__ import annotations

import threading

from cloud._models import Model, Version, peek_default, replace_versions, version_key
from cloud.errors import NotFound, RepositoryError

__all__ = ["ModelTable"]


class ModelTable:
    """The served models by name, the lookups on them and the swaps that change them."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self.load_errors: dict[str, str] = {}  # model -> why its last load failed
        self.skipped: dict[str, list[str]] = {}  # model -> version folders passed over
        self.lock = threading.RLock()  # serializes loads and unloads, not requests
        self.closed = False

    # ------------------------------------------------------------------ lookups

    def require(self, name: str) -> Model:
        """The model called ``name`` (``NotFound`` when there is none)."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}")
        return model

    def version(self, name: str, version: str | None) -> Version:
        """The version asked for, or the one serving by default (``ModelNotReady``)."""
        model = self.require(name)
        if version is None:
            return peek_default(model)
        found = model.versions.get(version)
        if found is None:
            raise NotFound(
                f"model {name!r} has no version {version!r} loaded "
                f"(loaded: {sorted(model.versions, key=version_key)})"
            )
        return found

    def ready(self, strict: bool) -> bool:
        """Not closed, and (``strict``) every model a load was tried for is serving."""
        if self.closed:
            return False
        return not strict or all(name in self.models for name in self.load_errors)

    def failed(self) -> dict[str, str]:
        """Models whose last load failed and that serve no version: name -> why."""
        return {name: why for name, why in self.load_errors.items() if name not in self.models}

    # ------------------------------------------------------------------ swaps

    def put_version(self, name: str, version: str, built: Version) -> None:
        """Serve ``built`` as ``name``/``version``; the version it replaces drains and closes
        (which may block: call it off the event loop)."""
        with self.lock:
            current = self.models.get(name)
            versions = dict(current.versions) if current else {}
            old = versions.get(version)
            versions[version] = built
            model = Model(name, versions) if current is None else replace_versions(current, versions)
            self.models = {**self.models, name: model}
        if old is not None:
            old.close()

    def remove(self, name: str, version: str | None = None) -> None:
        """Stop serving ``name`` (or one version of it); queued requests finish first."""
        with self.lock:
            model = self.models.get(name)
            if model is None:
                raise NotFound(f"unknown model {name!r}")
            if version is None:
                closing = list(model.versions.values())
                self.models = {k: v for k, v in self.models.items() if k != name}
            else:
                if version not in model.versions:
                    raise NotFound(f"model {name!r} has no version {version!r} loaded")
                closing = [model.versions[version]]
                rest = {k: v for k, v in model.versions.items() if k != version}
                if rest:
                    self.models = {**self.models, name: replace_versions(model, rest)}
                else:
                    self.models = {k: v for k, v in self.models.items() if k != name}
        for item in closing:
            item.close()

    def set_routing(self, name: str, default_version: str | None, canary_version: str | None,
                    canary_fraction: float) -> None:
        """Route unversioned requests of ``name``: ``canary_fraction`` of them to
        ``canary_version``, the rest to ``default_version`` (``None``: the highest)."""
        if not 0.0 <= canary_fraction <= 1.0:
            raise RepositoryError(f"canary_fraction must be within [0, 1], got {canary_fraction}")
        with self.lock:
            model = self.require(name)
            for label, v in (("default_version", default_version), ("canary_version", canary_version)):
                if v is not None and v not in model.versions:
                    raise RepositoryError(
                        f"model {name!r}: {label} {v!r} is not loaded (loaded: {sorted(model.versions)})"
                    )
            model.default_version = default_version
            model.canary_version = canary_version
            model.canary_fraction = canary_fraction if canary_version else 0.0
            model._canary_acc = 0.0

    def close(self) -> None:
        """Take every model out and close its versions (queued requests finish first)."""
        with self.lock:
            self.closed = True
            models, self.models = self.models, {}
        for model in models.values():
            for version in model.versions.values():
                version.close()
