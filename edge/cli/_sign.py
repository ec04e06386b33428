"""``edgecut sign``: the operator's side of signed fleet messages.

``keygen`` makes an Ed25519 key pair (the private key stays with the operator; the public
key goes to every device as ``updates.public_key_file``); ``deploy`` and ``config`` print
a ready ``models/deploy`` or ``config/set`` message whose ``signed`` field is a DSSE
envelope over the document described in :mod:`edge.agent._signing`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click


def _private_key(path: str):  # noqa: ANN202 - cryptography's key type, imported lazily
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from devices.errors import ConfigError

    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--key '{path}': not a readable unencrypted PEM private key ({exc})"
                          ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"--key '{path}': expected an Ed25519 key (make one with "
                          "`edgecut sign keygen`)")
    return key


def _freshness(counter: int | None, expires_in: float, devices: tuple[str, ...]) -> dict:
    now = time.time()
    doc = {"counter": counter if counter is not None else int(now * 1000),
           "issued_at": int(now), "expires_at": int(now + expires_in)}
    if devices:
        doc["devices"] = sorted(set(devices))
    return doc


_COMMON = [
    click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
                 help="The operator's Ed25519 private key (PEM)."),
    click.option("--counter", type=click.IntRange(1, 2 ** 53), default=None,
                 help="Counter of this document; must exceed every counter the device has "
                      "accepted for this model (default: the time in milliseconds)."),
    click.option("--expires-in", "expires_in", type=click.FloatRange(1, 366 * 86400),
                 default=86400.0, show_default=True, help="Seconds the document stays valid."),
    click.option("--device", "devices", multiple=True,
                 help="Limit the document to this device id (repeat for several)."),
    click.option("--id", "cid", default=None, help="Message id (default: derived)."),
]


def _common(fn):  # noqa: ANN001, ANN202
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


@click.group()
def sign() -> None:
    """Sign model deployments and config changes for the fleet (Ed25519, DSSE)."""


@sign.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Private key file to write (the public key goes next to it as .pub).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(out: str, force: bool) -> None:
    """Make an Ed25519 key pair: OUT (private, mode 0600) and OUT with suffix .pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from devices.errors import ConfigError
    from edge.agent._signing import key_id

    private = Path(out)
    public = private.with_suffix(".pub")
    for p in (private, public):
        if p.exists() and not force:
            raise ConfigError(f"{p} exists; pass --force to overwrite it")
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(private, 0o600)
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    click.echo(f"private   {private}  (keep it secret; it signs updates for the fleet)")
    click.echo(f"public    {public}  (copy to each device; updates.public_key_file)")
    click.echo(f"keyid     {key_id(key.public_key())}")


@sign.command()
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, help="Model name on the devices.")
@click.option("--version", "version", required=True, help="Version name of this file.")
@click.option("--url", default="", help="https:// URL the devices download the file from.")
@click.option("--path", "path", default="",
              help="Path of the file on the device (under updates.source_dir).")
@click.option("--probation-s", "probation_s", type=click.FloatRange(0, 3600), default=None)
@_common
def deploy(model_file: str, model: str, version: str, url: str, path: str,
           probation_s: float | None, key_path: str, counter: int | None, expires_in: float,
           devices: tuple[str, ...], cid: str | None) -> None:
    """Print a signed models/deploy message for MODEL_FILE (its sha256 and size)."""
    from devices.errors import ConfigError
    from edge.agent._names import check_name
    from edge.agent._signing import DEPLOY_TYPE
    from edge.agent._signing import sign as sign_doc
    from edge.agent._updates import sha256_file

    check_name(model, "model", "--model")
    check_name(version, "version", "--version")
    if bool(url) == bool(path):
        raise ConfigError("give exactly one of --url or --path (where the device gets the file)")
    key = _private_key(key_path)
    doc = {"type": "deploy", "model": model, "version": version,
           "sha256": sha256_file(Path(model_file)), "size": Path(model_file).stat().st_size,
           **_freshness(counter, expires_in, devices)}
    message: dict = {"id": cid or f"{model}-{version}-{doc['counter']}",
                     "signed": sign_doc(key, DEPLOY_TYPE, doc)}
    message["url" if url else "path"] = url or path
    if probation_s is not None:
        message["probation_s"] = probation_s
    click.echo(json.dumps(message))


@sign.command()
@click.argument("patch_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", required=True, help="Config version name.")
@_common
def config(patch_file: str, version: str, key_path: str, counter: int | None,
           expires_in: float, devices: tuple[str, ...], cid: str | None) -> None:
    """Print a signed config/set message; PATCH_FILE is JSON: {"config": {...}, "policy": {...}}."""
    from devices.errors import ConfigError
    from edge.agent._signing import CONFIG_TYPE
    from edge.agent._signing import sign as sign_doc

    try:
        patch = json.loads(Path(patch_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{patch_file}: not a readable JSON file ({exc})") from exc
    if not isinstance(patch, dict) or not set(patch) <= {"config", "policy"} or not patch:
        raise ConfigError(f"{patch_file}: expected an object with 'config' and/or 'policy'")
    key = _private_key(key_path)
    doc = {"type": "config", "version": version, **patch,
           **_freshness(counter, expires_in, devices)}
    click.echo(json.dumps({"id": cid or f"config-{version}-{doc['counter']}",
                           "signed": sign_doc(key, CONFIG_TYPE, doc)}))
