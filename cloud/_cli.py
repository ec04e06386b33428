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
@click.option("--max-connections", type=click.IntRange(1, 1000000), default=1024,
              show_default=True,
              help="Open connections, all clients together; a new one beyond gets 503 and "
                   "is closed (open ones keep being served).")
@click.option("--max-connections-per-client", type=click.IntRange(0, 1000000), default=256,
              show_default=True,
              help="Open connections from one client address (one uid on a Unix socket); "
                   "0: no cap.")
@click.option("--header-timeout", type=click.FloatRange(0, 3600), default=10.0,
              show_default=True,
              help="Seconds from a request's first byte to its last header; over it, 408 "
                   "(0: off).")
@click.option("--max-header-bytes", type=click.IntRange(0, 1 << 30), default=64 * 1024,
              show_default=True, help="Request line plus headers; over it, 431 (0: no limit).")
@click.option("--keep-alive-timeout", type=click.FloatRange(1, 3600), default=30.0,
              show_default=True, help="Seconds an idle keep-alive connection stays open.")
@click.option("--body-timeout", type=click.FloatRange(0, 3600), default=20.0,
              show_default=True,
              help="Seconds a request body may take before --body-min-rate applies.")
@click.option("--body-min-rate", type=click.FloatRange(0, 1e12), default=4096.0,
              show_default=True,
              help="Bytes per second a body must keep up after --body-timeout (each byte "
                   "buys 1/rate s more); a body that trickles gets 408 (0: off).")
@click.option("--max-bytes-elements", type=click.IntRange(1, 1 << 40), default=1 << 20,
              show_default=True, help="Most BYTES elements one input tensor may have.")
@click.option("--profile-max-elements", type=click.IntRange(1, 1 << 40), default=1 << 24,
              show_default=True,
              help="Most input elements (all inputs together) one profile request may ask for.")
@click.option("--jwt-leeway", type=click.FloatRange(0, 86400), default=60.0, show_default=True,
              help="Seconds of clock skew allowed on a token's exp and nbf (devices often "
                   "boot without a battery-backed clock).")
@click.option("--metrics-auth", is_flag=True,
              help="Require a valid token on /metrics (it names every model and its traffic).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on this port of --metrics-host instead of the API port "
                   "(as Triton's --metrics-port).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address for --metrics-port.")
@click.option("--shm-allow-uid", "shm_allow_uids", type=click.IntRange(0, 1 << 32),
              multiple=True,
              help="A uid (besides the server's own) whose /dev/shm files TCP loopback "
                   "clients may register (repeatable); Unix-socket clients may register "
                   "only their own files.")
@click.option("--exit-on-error", is_flag=True,
              help="Exit at start if any model fails to load or a version folder is "
                   "skipped (Triton's strict behaviour); by default the rest is served "
                   "and the problem is shown in the repository index.")
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
          max_pending_mb: float, max_connections: int, max_connections_per_client: int,
          header_timeout: float, max_header_bytes: int, keep_alive_timeout: float,
          body_timeout: float, body_min_rate: float, max_bytes_elements: int,
          profile_max_elements: int, jwt_leeway: float, metrics_auth: bool,
          metrics_port: int | None, metrics_host: str, shm_allow_uids: tuple[int, ...],
          exit_on_error: bool, max_in_flight: int, ort_spinning: bool, no_shared_memory: bool,
          no_dynamic_batching: bool, log_level: str) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe v2 REST)."""
    import uvicorn

    from cloud._auth import TokenVerifier
    from cloud._service import InferenceService
    from cloud.errors import CloudError
    from cloud.http._app import create_app
    from cloud.http._conn import ConnectionLimits
    from cloud.http._server import configure_logging, uvicorn_config

    configure_logging(log_level)
    if no_auth and auth_keys:
        raise click.UsageError("--no-auth and --auth-keys exclude each other")
    if not no_auth and not auth_keys:
        raise click.UsageError("give --auth-keys DIR (public keys), or --no-auth for local use")
    try:
        verifier = None
        if auth_keys:
            verifier = TokenVerifier.from_folder(auth_keys, audience=audience, issuers=issuers,
                                                 leeway_s=jwt_leeway)
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
            profile_max_elements=profile_max_elements,
        )
        loaded = service.load_all()
    except CloudError as exc:
        raise click.ClickException(str(exc)) from exc
    problems = service.problems
    if problems and exit_on_error:
        service.close()
        raise click.ClickException(
            "--exit-on-error: " + "; ".join(f"{m}: {why}" for m, why in sorted(problems.items())))
    if metrics_auth and verifier is None:
        raise click.UsageError("--metrics-auth needs --auth-keys")
    log.info("serving %d models from %s on http://%s:%d", len(loaded), repository, host, port,
             extra={"models": ",".join(loaded), "pid": os.getpid()})
    if max_pending_mb < max_body_mb:
        raise click.UsageError("--max-pending-mb must be at least --max-body-mb")
    app = create_app(service, verifier=verifier, max_body_bytes=int(max_body_mb * 1024 * 1024),
                     max_in_flight=max_in_flight,
                     max_pending_bytes=int(max_pending_mb * 1024 * 1024),
                     shared_memory=not no_shared_memory and host in ("127.0.0.1", "::1",
                                                                     "localhost"),
                     shm_allowed_uids=shm_allow_uids, metrics_require_auth=metrics_auth,
                     metrics=metrics_port is None, max_bytes_elements=max_bytes_elements)
    limits = ConnectionLimits(
        header_timeout_s=header_timeout, max_header_bytes=max_header_bytes,
        keep_alive_timeout_s=keep_alive_timeout, body_timeout_s=body_timeout,
        body_min_rate=body_min_rate, max_connections=max_connections,
        max_connections_per_client=max_connections_per_client)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        # Its own small threaded server on another address (a scrape network), so the
        # API port need not expose model names and traffic.
        start_http_server(metrics_port, addr=metrics_host, registry=service.metrics.registry)
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    server = uvicorn.Server(uvicorn_config(app, host, port, limits=limits, log_level=log_level))
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
