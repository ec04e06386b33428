"""``edgecut serve`` and ``edgecut token``: thin commands over the cloud library."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

log = logging.getLogger("edgecut.cloud")


@click.command()
@click.option("--repository", required=True, type=click.Path(file_okay=False, exists=True),
              help="Model repository in Triton's layout (<model>/<version>/model.onnx).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--auth-keys", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder of *.pem public keys (ES256/RS256) that sign device tokens.")
@click.option("--no-auth", is_flag=True, help="Serve without authentication (local use only).")
@click.option("--audience", default="edgecut", show_default=True, help="Expected token 'aud'.")
@click.option("--issuer", "issuers", multiple=True, default=("edgecut",), show_default=True,
              help="Accepted token 'iss' (repeatable).")
@click.option("--providers", default=None,
              help="Comma-separated ONNX Runtime execution providers (default: CUDA if present, CPU).")
@click.option("--intra-op-threads", type=click.IntRange(1, 256), default=None,
              help="ONNX Runtime threads per model instance (default: cores / instances).")
@click.option("--max-queue", type=click.IntRange(1, 100000), default=128, show_default=True,
              help="Requests that may wait per model version before 503.")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 4096), default=64, show_default=True,
              help="Largest accepted request body; larger gets 413.")
@click.option("--max-pending-mb", type=click.FloatRange(0.001, 1 << 20), default=512, show_default=True,
              help="Request bodies all requests in progress may hold together; beyond, 503.")
@click.option("--max-connections", type=click.IntRange(1, 1000000), default=512, show_default=True,
              help="Concurrent connections before the server answers 503.")
@click.option("--max-in-flight", type=click.IntRange(1, 1000000), default=512, show_default=True,
              help="Requests in progress before new ones get 503 (before their body is read).")
@click.option("--ort-spinning/--no-ort-spinning", default=True, show_default=True,
              help="Let idle ONNX Runtime threads spin (turn off on a small shared host).")
@click.option("--no-shared-memory", is_flag=True,
              help="Turn off the system shared memory extension (on by default when --host "
                   "is a loopback address: only local clients may use it).")
@click.option("--no-dynamic-batching", is_flag=True,
              help="Do not batch models that have no config.pbtxt.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(repository: str, host: str, port: int, auth_keys: str | None, no_auth: bool,
          audience: str, issuers: tuple[str, ...], providers: str | None,
          intra_op_threads: int | None, max_queue: int, max_body_mb: float,
          max_pending_mb: float, max_connections: int, max_in_flight: int, ort_spinning: bool, no_shared_memory: bool,
          no_dynamic_batching: bool, log_level: str) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe v2 REST)."""
    try:
        import uvicorn
    except ImportError as exc:
        raise click.ClickException(
            f"edgecut serve needs the ASGI server uvicorn ({exc}); install it with "
            "pip install 'uvicorn>=0.30' (a plain `pip install edgecut` brings it; an install "
            "made with --no-deps, as on some Jetson images, does not)"
        ) from exc

    from cloud._app import create_app
    from cloud._auth import TokenVerifier
    from cloud._server import configure_logging, uvicorn_config
    from cloud._service import InferenceService
    from cloud.errors import CloudError

    configure_logging(log_level)
    if no_auth and auth_keys:
        raise click.UsageError("--no-auth and --auth-keys exclude each other")
    if not no_auth and not auth_keys:
        raise click.UsageError("give --auth-keys DIR (public keys), or --no-auth for local use")
    try:
        verifier = None
        if auth_keys:
            verifier = TokenVerifier.from_folder(auth_keys, audience=audience, issuers=issuers)
        else:
            click.secho(
                "WARNING: authentication is OFF; anyone who reaches "
                f"{host}:{port} may run and load models", fg="red", bold=True, err=True,
            )
        service = InferenceService(
            repository,
            providers=providers.split(",") if providers else None,
            intra_op_threads=intra_op_threads,
            max_queue_size=max_queue,
            dynamic_batching=not no_dynamic_batching,
            ort_spinning=ort_spinning,
        )
        loaded = service.load_all()
    except CloudError as exc:
        raise click.ClickException(str(exc)) from exc
    log.info("serving %d models from %s on http://%s:%d", len(loaded), repository, host, port,
             extra={"models": ",".join(loaded), "pid": os.getpid()})
    if max_pending_mb < max_body_mb:
        raise click.UsageError("--max-pending-mb must be at least --max-body-mb")
    app = create_app(service, verifier=verifier, max_body_bytes=int(max_body_mb * 1024 * 1024),
                     max_in_flight=max_in_flight,
                     max_pending_bytes=int(max_pending_mb * 1024 * 1024),
                     shared_memory=not no_shared_memory and host in ("127.0.0.1", "::1",
                                                                     "localhost"))
    server = uvicorn.Server(uvicorn_config(app, host, port, limit_concurrency=max_connections,
                                           log_level=log_level))
    try:
        server.run()
    finally:
        service.close()


@click.command()
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="PEM private key (EC P-256 for ES256 or RSA for RS256).")
@click.option("--sub", "subject", required=True, help="Device id (the token's subject).")
@click.option("--aud", "audience", default="edgecut", show_default=True)
@click.option("--iss", "issuer", default="edgecut", show_default=True)
@click.option("--models", required=True, help="Comma-separated model names or patterns, or '*'.")
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, 10 * 365 * 86400),
              help="Lifetime in seconds.")
@click.option("--admin", is_flag=True, help="Also allow repository load and unload.")
@click.option("--kid", default=None, help="Key id header (the public key's file stem).")
def token(key_path: str, subject: str, audience: str, issuer: str, models: str, ttl: int,
          admin: bool, kid: str | None) -> None:
    """Mint a device token (JWT) signed with a private key; prints it on stdout."""
    from cloud._auth import mint_token
    from cloud.errors import CloudError

    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter("give at least one model name", param_hint="--models")
    try:
        jwt_text = mint_token(Path(key_path).read_bytes(), subject=subject, audience=audience,
                              issuer=issuer, models=names, ttl_s=ttl, admin=admin, key_id=kid)
    except CloudError as exc:
        raise click.ClickException(f"{key_path}: {exc}") from exc
    sys.stdout.write(jwt_text + "\n")
