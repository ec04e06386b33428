"""JWT bearer tokens: verification on the service, minting for devices and tests.

The service holds only public keys (``*.pem`` files in a folder; ES256 for EC P-256 keys,
RS256 for RSA keys). The accepted algorithm is fixed by the key's type, never read from
the token, which shuts out ``alg: none`` and HS256 tokens signed with a public key. A token
must carry ``exp``, ``aud``, ``iss`` and ``sub``; ``nbf`` is checked when present. The
``models`` claim is a list of model names (``fnmatch`` patterns such as
``"resnet50*"``; ``"*"`` is every model) and decides which models a device may use;
``admin: true`` (the JSON value ``true``, nothing else) additionally allows the
repository's load and unload and the profile extension. Numeric claims (``exp``, ``nbf``,
``iat``) outside what a clock can hold are refused (401), and ``leeway_s`` (default 60 s)
absorbs clock skew: devices such as Jetson kits often boot without a battery-backed clock.
"""

from __future__ import annotations

import fnmatch
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cloud.errors import AuthError, Forbidden

__all__ = ["Principal", "TokenVerifier", "mint_token"]


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    models: tuple[str, ...]
    admin: bool = False

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def require(self, model: str) -> None:
        if not self.may_use(model):
            raise Forbidden(f"token of {self.subject!r} does not cover model {model!r}")

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden(f"token of {self.subject!r} is not allowed to change the repository")


def _algorithm(key: Any, where: str) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise AuthError(f"{where}: EC keys must be P-256 for ES256, got {key.curve.name}")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise AuthError(f"{where}: RSA keys must have at least 2048 bits")
        return "RS256"
    raise AuthError(f"{where}: only EC P-256 (ES256) and RSA (RS256) public keys are accepted")


class TokenVerifier:
    """Verifies bearer tokens against public keys for one audience and issuer(s)."""

    def __init__(
        self,
        keys: Iterable[tuple[str, Any]],
        *,
        audience: str,
        issuers: Sequence[str],
        leeway_s: float = 60.0,
    ) -> None:
        self._keys = [(kid, key, _algorithm(key, kid)) for kid, key in keys]
        if not self._keys:
            raise AuthError("no public keys configured for token verification")
        self.audience = audience
        self.issuers = list(issuers)
        self.leeway_s = leeway_s
        # token -> (principal, exp, nbf): a device re-sends the same token for an hour, and
        # verifying a signature costs far more than the rest of a request.
        self._cache: dict[str, tuple[Principal, float, float]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, *, audience: str, issuers: Sequence[str],
                    leeway_s: float = 60.0) -> TokenVerifier:
        """Every ``*.pem`` public key in ``folder``; the file stem is the key id (``kid``)."""
        path = Path(folder)
        if not path.is_dir():
            raise AuthError(f"auth keys folder {path} is not a directory")
        keys = []
        for pem in sorted(path.glob("*.pem")):
            try:
                key = serialization.load_pem_public_key(pem.read_bytes())
            except ValueError as exc:
                raise AuthError(f"{pem}: not a PEM public key ({exc})") from exc
            keys.append((pem.stem, key))
        if not keys:
            raise AuthError(f"auth keys folder {path} has no *.pem public keys")
        return cls(keys, audience=audience, issuers=issuers, leeway_s=leeway_s)

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; ``AuthError`` when invalid."""
        if not authorization:
            raise AuthError("missing bearer token (Authorization: Bearer <JWT>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <JWT>'")
        token = token.strip()
        cached = self._cache.get(token)
        if cached is not None:
            principal, exp, nbf = cached
            now = time.time()
            if now >= exp + self.leeway_s:
                raise AuthError("token has expired")
            if now < nbf - self.leeway_s:
                raise AuthError("token is not valid yet (nbf)")
            return principal
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        # The algorithm comes from the key, never from the token: a token naming any
        # other algorithm (none, HS256, ...) is refused before any key is tried.
        candidates = [k for k in self._keys if k[2] == alg]
        if not candidates:
            raise AuthError(f"token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        candidates = [k for k in candidates if k[0] == kid] or candidates
        last: Exception | None = None
        for _kid, key, algorithm in candidates:
            try:
                claims = _decode_checked(
                    token, key, algorithm, self.audience, self.issuers, self.leeway_s)
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue  # maybe another key signed it
            except jwt.InvalidAlgorithmError:
                last = AuthError(f"token algorithm {header.get('alg')!r} is not accepted")
                continue
            except jwt.ExpiredSignatureError:
                raise AuthError("token has expired") from None
            except jwt.ImmatureSignatureError:
                raise AuthError("token is not valid yet (nbf)") from None
            except jwt.InvalidAudienceError:
                raise AuthError(f"token audience is not {self.audience!r}") from None
            except jwt.InvalidIssuerError:
                raise AuthError(f"token issuer is not one of {self.issuers}") from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError(f"token lacks the {exc.claim!r} claim") from None
            except jwt.PyJWTError as exc:
                raise AuthError(f"invalid token: {exc}") from None
            principal = _principal(claims)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[token] = (principal, float(claims["exp"]), float(claims.get("nbf", 0)))
            return principal
        if isinstance(last, AuthError):
            raise last
        raise AuthError("token signature does not match any configured key")


# Numeric claims beyond this are not times (year 2^37); a float cannot even hold 10**400.
_MAX_TIME = 2.0 ** 42


def _decode_checked(token: str, key: Any, algorithm: str, audience: str,
                    issuers: list[str], leeway_s: float) -> dict[str, Any]:
    """``jwt.decode`` with the numeric claims checked first (after the signature), so an
    absurd ``exp`` is a 401 and never an overflow inside the library."""
    claims = jwt.decode(token, key, algorithms=[algorithm],
                        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                 "verify_aud": False, "verify_iss": False})
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not -_MAX_TIME <= value <= _MAX_TIME or value != value):
            raise AuthError(f"token's {name!r} claim is not a time in range: {str(value)[:40]}")
    try:
        return jwt.decode(
            token, key, algorithms=[algorithm], audience=audience, issuer=issuers,
            leeway=leeway_s, options={"require": ["exp", "aud", "iss", "sub"]})
    except (OverflowError, ValueError, TypeError) as exc:
        raise AuthError(f"invalid token claims ({type(exc).__name__})") from None


def _principal(claims: dict[str, Any]) -> Principal:
    models = claims.get("models")
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise AuthError("token's 'models' claim must be a list of model names")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise AuthError("token's 'sub' claim must be a string")
    admin = claims.get("admin", False)
    if not isinstance(admin, bool):
        # Read by truthiness, "false", "yes" and [0] all granted admin.
        raise AuthError(f"token's 'admin' claim must be true or false, got {str(admin)[:40]!r}")
    return Principal(sub, tuple(models), admin is True)


def mint_token(
    private_key_pem: bytes,
    *,
    subject: str,
    audience: str,
    issuer: str,
    models: Sequence[str],
    ttl_s: float = 3600,
    not_before_s: float | None = None,
    admin: bool = False,
    key_id: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a device token with a private key (ES256 for EC, RS256 for RSA)."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AuthError(f"not an unencrypted PEM private key ({exc})") from exc
    algorithm = _algorithm(key.public_key(), "private key")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        "aud": audience,
        "iss": issuer,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
        "jti": uuid.uuid4().hex,
        "models": list(models),
    }
    if not_before_s is not None:
        claims["nbf"] = int(issued + not_before_s)
    if admin:
        claims["admin"] = True
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
