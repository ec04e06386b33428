"""``edgecut serve`` and ``edgecut token``: thin commands over the cloud library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("edgecut.cloud")


# Triton spells booleans --flag=true/false; click's BOOL reads those (and 1/0, yes/no).
_BOOL = click.BOOL


@click.command(context_settings={"show_default": True})
@click.option("--model-repository", "--repository", "repository", required=True,
              type=click.Path(file_okay=False, exists=True),
              help="Model repository in Triton's layout (<model>/<version>/model.onnx).")
@click.option("--http-address", "--host", "host", default="127.0.0.1",
              help="Address the HTTP (and, unless --grpc-address, the gRPC) server binds.")
@click.option("--http-port", "--port", "port", default=8000, type=click.IntRange(0, 65535),
              help="HTTP/REST port (KServe v2).")
@click.option("--allow-http", type=_BOOL, default=True, help="Serve HTTP/REST.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="gRPC port (KServe v2 / Triton GRPCInferenceService; 0: any free port). "
                   "Giving it turns gRPC on.  [default: 8001 with --allow-grpc=true]")
@click.option("--allow-grpc", type=_BOOL, default=None,
              help="Serve gRPC (needs edgecut[grpc]).  [default: when --grpc-port is given]")
@click.option("--grpc-address", default=None, help="Address the gRPC server binds.  "
              "[default: --http-address]")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on this port (as Triton's 8002) instead of the HTTP port, "
                   "so the API port does not list model names and traffic.")
@click.option("--metrics-address", default=None,
              help="Address of the --metrics-port server (a scrape network).  "
                   "[default: --http-address]")
@click.option("--metrics-auth", type=_BOOL, default=False,
              help="/metrics on the HTTP port needs a valid token (it names every model "
                   "and its traffic).")
@click.option("--allow-metrics", type=_BOOL, default=True,
              help="Serve Prometheus metrics at /metrics.")
@click.option("--exit-on-error", type=_BOOL, default=False,
              help="true: exit (status 1) when a model fails to load at start-up, as Triton "
                   "does by default; false (the default): serve the others and report the "
                   "failure in the repository index, so one bad model cannot take every "
                   "model down.")
@click.option("--strict-readiness", type=_BOOL, default=True,
              help="Ready only while every model is serving; false: ready once the server "
                   "is up.")
@click.option("--exit-timeout-secs", type=click.IntRange(0, 3600), default=30,
              help="On SIGTERM, how long requests in progress may take to finish.")
@click.option("--auth-keys", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder of *.pem public keys (ES256/RS256) that sign device tokens.")
@click.option("--no-auth", is_flag=True, help="Serve without authentication (local use only).")
@click.option("--audience", default="edgecut", help="Expected token 'aud'.")
@click.option("--issuer", "issuers", multiple=True, default=("edgecut",),
              help="Accepted token 'iss' (repeatable).")
@click.option("--providers", default=None,
              help="Comma-separated ONNX Runtime execution providers (default: CUDA if present, CPU).")
@click.option("--intra-op-threads", type=click.IntRange(1, 256), default=None,
              help="ONNX Runtime threads per model instance (default: cores / instances).")
@click.option("--max-queue", type=click.IntRange(1, 100000), default=128,
              help="Requests that may wait per model version before 503.")
@click.option("--max-body-mb", type=click.FloatRange(0.001, 4096), default=64,
              help="Largest accepted request body; larger gets 413 (gRPC: RESOURCE_EXHAUSTED).")
@click.option("--max-pending-mb", type=click.FloatRange(0.001, 1 << 20), default=512,
              help="Request bodies all requests in progress may hold together; beyond, 503.")
@click.option("--max-connections", type=click.IntRange(1, 1000000), default=1024,
              help="Open HTTP connections, all clients together; a new one beyond gets 503 "
                   "and is closed (the open ones keep being served).")
@click.option("--max-connections-per-client", type=click.IntRange(0, 1000000), default=256,
              help="Open HTTP connections from one client address (one uid on a Unix "
                   "socket); 0: no cap.")
@click.option("--header-timeout", type=click.FloatRange(0, 3600), default=10.0,
              help="Seconds from a request's first byte to its last header; over it, 408 "
                   "(0: off).")
@click.option("--max-header-bytes", type=click.IntRange(0, 1 << 30), default=64 * 1024,
              help="Request line plus headers; over it, 431 (0: no limit).")
@click.option("--keep-alive-timeout", type=click.FloatRange(1, 3600), default=30.0,
              help="Seconds an idle HTTP keep-alive connection stays open.")
@click.option("--body-timeout", type=click.FloatRange(0, 3600), default=20.0,
              help="Seconds a request body may take before --body-min-rate applies.")
@click.option("--body-min-rate", type=click.FloatRange(0, 1e12), default=4096.0,
              help="Bytes per second a body must keep up after --body-timeout (each byte "
                   "buys 1/rate s more); a body that trickles gets 408 (0: off).")
@click.option("--max-bytes-elements", type=click.IntRange(1, 1 << 40), default=1 << 20,
              help="Most BYTES elements one input tensor may have.")
@click.option("--profile-max-elements", type=click.IntRange(1, 1 << 40), default=1 << 24,
              help="Most input elements (all inputs together) one profile request may use.")
@click.option("--jwt-leeway", type=click.FloatRange(0, 86400), default=60.0,
              help="Seconds of clock skew allowed on a token's exp and nbf (devices often "
                   "boot without a battery-backed clock).")
@click.option("--shm-allow-uid", "shm_allow_uids", type=click.IntRange(0, 1 << 32),
              multiple=True,
              help="A uid (besides the server's own) whose /dev/shm files TCP loopback "
                   "clients may register (repeatable); Unix-socket clients may register "
                   "only their own files.")
@click.option("--max-in-flight", type=click.IntRange(1, 1000000), default=512,
              help="Requests in progress before new ones get 503 (before their body is read).")
@click.option("--ort-spinning/--no-ort-spinning", default=True,
              help="Let idle ONNX Runtime threads spin (turn off on a small shared host).")
@click.option("--no-shared-memory", is_flag=True,
              help="Turn off the system shared memory extension (on by default when the "
                   "address is a loopback one: only local clients may use it).")
@click.option("--no-dynamic-batching", is_flag=True,
              help="Do not batch models that have no config.pbtxt.")
@click.option("--log-level", default="info",
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-verbose", type=click.IntRange(0, 10), default=0,
              help="Triton's verbosity: 1 or more logs at debug level.")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json",
              help="json: one object per line (the agent's layout); text: for a terminal.")
def serve(repository: str, host: str, port: int, allow_http: bool, grpc_port: int | None,
          allow_grpc: bool | None, grpc_address: str | None, metrics_port: int | None,
          allow_metrics: bool, exit_on_error: bool, strict_readiness: bool,
          exit_timeout_secs: int, auth_keys: str | None, no_auth: bool, audience: str,
          issuers: tuple[str, ...], providers: str | None, intra_op_threads: int | None,
          max_queue: int, max_body_mb: float, max_pending_mb: float, max_connections: int,
          max_in_flight: int, ort_spinning: bool, no_shared_memory: bool,
          no_dynamic_batching: bool, log_level: str, log_verbose: int,
          log_format: str, **hardening: Any) -> None:
    """Serve a model repository over the Open Inference Protocol (KServe v2): HTTP/REST,
    and gRPC with --grpc-port. Every option may also come from an environment variable,
    EDGECUT_SERVE_<OPTION> (e.g. EDGECUT_SERVE_GRPC_PORT=8001). Exit status: 1 for a
    runtime error (a model that fails to load with --exit-on-error, a busy port), 2 for
    a usage error."""
    try:
        from cloud._serve import ServeOptions, run
    except ImportError as exc:
        raise click.ClickException(
            f"edgecut serve needs the cloud service's packages ({exc}): pip install "
            "'uvicorn>=0.30' (a plain `pip install edgecut` brings it; an install made with "
            "--no-deps, as on some Jetson images, does not)"
        ) from exc

    if no_auth and auth_keys:
        raise click.UsageError("--no-auth and --auth-keys exclude each other")
    if not no_auth and not auth_keys:
        raise click.UsageError("give --auth-keys DIR (public keys), or --no-auth for local use")
    if max_pending_mb < max_body_mb:
        raise click.UsageError("--max-pending-mb must be at least --max-body-mb")
    serve_grpc = allow_grpc if allow_grpc is not None else grpc_port is not None
    if allow_grpc is False and grpc_port is not None:
        raise click.UsageError("--grpc-port was given with --allow-grpc=false")
    if not allow_http and not serve_grpc:
        raise click.UsageError("--allow-http=false needs gRPC (--grpc-port or --allow-grpc=true)")
    options = ServeOptions(
        repository=repository, host=host, port=port, allow_http=allow_http,
        grpc_port=(8001 if grpc_port is None else grpc_port) if serve_grpc else None,
        grpc_address=grpc_address or host,
        metrics_port=metrics_port if allow_metrics else None, allow_metrics=allow_metrics,
        exit_on_error=exit_on_error, strict_readiness=strict_readiness,
        exit_timeout_s=exit_timeout_secs, auth_keys=auth_keys, audience=audience,
        issuers=issuers, providers=providers.split(",") if providers else None,
        intra_op_threads=intra_op_threads, max_queue=max_queue,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pending_bytes=int(max_pending_mb * 1024 * 1024), max_connections=max_connections,
        max_in_flight=max_in_flight, ort_spinning=ort_spinning,
        shared_memory=not no_shared_memory, dynamic_batching=not no_dynamic_batching,
        log_level="debug" if log_verbose > 0 else log_level, log_format=log_format,
        **hardening,
    )
    if not auth_keys:
        click.secho(
            "WARNING: authentication is OFF; anyone who reaches "
            f"{host}:{port} may run and load models", fg="red", bold=True, err=True,
        )
    run(options)


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
