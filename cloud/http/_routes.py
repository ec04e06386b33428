"""The app's route families over the service: the server (``/metrics``, ``/v2``, health),
one model (``/v2/models/...``) and the repository extension (``/v2/repository/...``).

Each family checks the method and who may ask before it calls the service, and answers
``(status, body, headers)``; :class:`cloud.http._app._App` picks the family from the
path's first segments and finishes the answer.
"""

from __future__ import annotations

import functools

from cloud._gate import Gate
from cloud._service import InferenceService
from cloud.errors import NotFound, ProtocolError
from cloud.http._answer import Answer
from cloud.http._extensions import JSON_HEADERS, ProfileRoute, allow, json_bytes, off_loop
from cloud.http._infer import InferRoute
from cloud.http._request import Request

__all__ = ["ModelRoutes", "RepositoryRoutes", "ServerRoutes"]


class ServerRoutes:
    """``/metrics`` (open unless ``metrics_require_auth``), server metadata (``/v2``, which
    lists ``system_shared_memory`` when ``shared_memory`` is on) and health."""

    def __init__(self, service: InferenceService, gate: Gate, *, metrics_require_auth: bool,
                 shared_memory: bool) -> None:
        self.service = service
        self.gate = gate
        self.metrics_require_auth = metrics_require_auth
        self.shared_memory = shared_memory

    def metrics(self, req: Request) -> Answer:
        allow(req.method, "GET")
        if self.metrics_require_auth:
            self.gate.principal(req.authorization)
        metrics = self.service.metrics
        return 200, metrics.exposition(), [(b"content-type", metrics.content_type.encode())]

    def metadata(self, req: Request) -> Answer:
        allow(req.method, "GET")
        self.gate.principal(req.authorization)
        meta = self.service.server_metadata()
        if self.shared_memory:
            meta["extensions"] = [*meta["extensions"], "system_shared_memory"]
        return 200, json_bytes(meta), JSON_HEADERS

    def health(self, req: Request) -> Answer:
        """``/v2/health/live`` and ``/v2/health/ready`` (the caller matched the path)."""
        allow(req.method, "GET")
        if req.parts[2] == "live":
            return 200, json_bytes({"live": True}), JSON_HEADERS
        ready = self.service.ready
        return (200 if ready else 503), json_bytes({"ready": ready}), JSON_HEADERS


class ModelRoutes:
    """``/v2/models/stats`` and ``/v2/models/{m}[/versions/{v}][/ready|config|stats|infer|
    profile]``: each scoped to the models the caller's token names."""

    def __init__(self, service: InferenceService, gate: Gate, infer: InferRoute) -> None:
        self.service = service
        self.gate = gate
        self.infer = infer
        self.profile = ProfileRoute(service, gate)

    async def handle(self, req: Request) -> Answer:
        method, path, parts = req.method, req.path, req.parts
        n = len(parts)
        if n == 3 and parts[2] == "stats":
            allow(method, "GET")
            visible = self.gate.visible(req.authorization)
            stats = self.service.statistics()
            stats["model_stats"] = [s for s in stats["model_stats"] if visible(s["name"])]
            return 200, json_bytes(stats), JSON_HEADERS
        if n < 3 or not parts[2]:
            raise NotFound(f"no endpoint {path!r}")
        model = parts[2]
        version: str | None = None
        rest = parts[3:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
            if not version:
                raise NotFound(f"no endpoint {path!r}")
        action = rest[0] if len(rest) == 1 else "" if not rest else None
        if action is None:
            raise NotFound(f"no endpoint {path!r}")
        if action == "infer":
            allow(method, "POST")
            principal = self.gate.principal(req.authorization)
            if principal is not None:
                principal.require(model)
            return await self.infer.handle(req, model, version, principal)
        self.gate.require_model(req.authorization, model)
        return await self._about(req, model, version, action)

    async def _about(self, req: Request, model: str, version: str | None, action: str
                     ) -> Answer:
        """What a model is and does: metadata, readiness, configuration, statistics and
        (for an admin) its per-node profile."""
        method, service = req.method, self.service
        if action == "":
            allow(method, "GET")
            return 200, json_bytes(service.model_metadata(model, version)), JSON_HEADERS
        if action == "ready":
            allow(method, "GET")
            if service.model_ready(model, version):
                return 200, json_bytes({"name": model, "ready": True}), JSON_HEADERS
            service.model_metadata(model, None)  # 404 for an unknown model
            return 400, json_bytes({"error": f"model {model!r} version {version!r} is not ready",
                                    "name": model, "ready": False}), JSON_HEADERS
        if action == "config":
            allow(method, "GET")
            return 200, json_bytes(service.model_config(model, version)), JSON_HEADERS
        if action == "stats":
            allow(method, "GET")
            return 200, json_bytes(service.statistics(model, version)), JSON_HEADERS
        if action == "profile":
            allow(method, "POST")
            self.gate.require_admin(req.authorization, model)
            return await self.profile.handle(req, model, version)
        raise NotFound(f"no endpoint {req.path!r}")


class RepositoryRoutes:
    """The repository extension: ``POST /v2/repository/index`` (the models the caller may
    see) and ``POST /v2/repository/models/{m}/load|unload`` (an admin's)."""

    def __init__(self, service: InferenceService, gate: Gate) -> None:
        self.service = service
        self.gate = gate

    async def handle(self, req: Request) -> Answer:
        method, parts = req.method, req.parts
        n = len(parts)
        if n == 3 and parts[2] == "index":
            allow(method, "POST")
            visible = self.gate.visible(req.authorization)
            body = await req.json_body(self.gate)
            ready_only = body.get("ready", False)
            if not isinstance(ready_only, bool):
                raise ProtocolError("'ready' must be a boolean")
            entries = [e for e in self.service.index(ready_only) if visible(e["name"])]
            return 200, json_bytes(entries), JSON_HEADERS
        if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
            allow(method, "POST")
            model = parts[3]
            self.gate.require_admin(req.authorization, model)
            body = await req.json_body(self.gate)
            params = body.get("parameters", {})
            if not isinstance(params, dict):
                raise ProtocolError("'parameters' must be an object")
            if parts[4] == "load":
                await off_loop(functools.partial(self.service.load, model, params))
            else:
                version = params.get("version")
                if version is not None and not isinstance(version, str):
                    raise ProtocolError("unload parameter 'version' must be a string")
                await off_loop(functools.partial(self.service.unload, model, version))
            return 200, b"", JSON_HEADERS
        raise NotFound(f"no endpoint {req.path!r}")
