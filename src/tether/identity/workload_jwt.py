"""Signature and standard claims of external tokens, for :mod:`tether.identity.workload`.

``verify_signed`` returns the issuer configuration and the verified claims of a token, or
raises ``WorkloadTokenError`` with a reason Tether wrote (never text copied from the token).

Order of checks (cheap, attacker-independent checks first; no claim is trusted before the
signature verified, the unverified ``iss`` only selects which issuer's rules and keys apply):

1. at most ``MAX_TOKEN_BYTES`` of ASCII, three strict base64url parts, JSON objects without
   duplicate members in header and payload;
2. ``alg`` is one of the asymmetric algorithms Tether implements (``none`` and ``HS*`` are refused
   here, before any key is touched: an HMAC keyed with an issuer's *public* key is the classic
   algorithm-confusion forgery), ``kid`` is present, no ``crit`` extension;
3. ``iss`` names a configured issuer of the right kind (workload vs user), and ``alg`` is in that
   issuer's allow-list;
4. the key is the issuer's key named by ``kid``, from its JWKS (never from the token), and its
   type and curve fit ``alg``; PyJWT then verifies the signature with exactly that algorithm;
5. claims: ``aud`` holds one of the issuer's audiences, ``exp`` is required and not passed,
   ``nbf`` reached and ``iat`` not in the future (each within ``leeway``), and the lifetime
   (``exp`` minus ``iat``, else ``nbf``, else now) is at most ``max_lifetime``, so a token minted
   to live for a year is refused even while fresh;
6. the platform's shape: the claims that make the runtime id must be present and well-formed.

Step 6 (the platform's shape) is :mod:`tether.identity.workload_claims`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import jwt

from tether.identity.errors import CredentialError
from tether.identity.jose import b64url_decode, json_object
from tether.identity.jwks import ALGORITHM_KEYS, JwksCache, JwksError, UnknownKeyId
from tether.identity.workload_issuers import IssuerConfig, TrustedIssuers

MAX_TOKEN_BYTES: Final = 16_384
_MAX_LABEL_VALUE = 256


class WorkloadTokenError(CredentialError):
    """An external workload or user token is refused.

    It is presented to obtain a Tether credential (a JWT-bearer grant, RFC 7523 section 3.1, or
    the subject token of a token exchange), hence ``400 invalid_grant`` rather than 401.
    """

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_grant"
    default_reason: ClassVar[str] = "token refused"


async def verify_signed(
    token: str, issuers: TrustedIssuers, now: datetime, kinds: frozenset[str]
) -> tuple[IssuerConfig, dict[str, Any]]:
    """The issuer of ``token`` (one of ``kinds``) and its claims, checked in the order above."""
    header, claims = _decode_unverified(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHM_KEYS:
        raise WorkloadTokenError("algorithm not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or "crit" in header:
        raise WorkloadTokenError("header must name a kid and hold no crit")
    iss = claims.get("iss")
    found = issuers.lookup(iss) if isinstance(iss, str) else None
    if found is None:
        raise WorkloadTokenError("unknown issuer")
    config, keys = found
    if config.kind not in kinds:
        raise WorkloadTokenError(f"issuer is not trusted for this use ({config.kind})")
    if alg not in config.algorithms:
        raise WorkloadTokenError("algorithm not allowed for this issuer")
    await _check_signature(token, alg, kid, keys)
    _check_claims(config, claims, now)
    return config, claims


def _decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise WorkloadTokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise WorkloadTokenError("malformed token")
    try:
        header, claims = (json_object(b64url_decode(p)) for p in parts[:2])
        b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise WorkloadTokenError("malformed token") from None
    return header, claims


async def _check_signature(token: str, alg: str, kid: str, keys: JwksCache) -> None:
    try:
        jwk = await keys.get_key(kid)
    except UnknownKeyId:
        raise WorkloadTokenError("unknown signing key") from None
    except JwksError:
        raise WorkloadTokenError("issuer keys unavailable") from None
    if not jwk.fits(alg):
        raise WorkloadTokenError("signing key does not fit the algorithm")
    try:
        jwt.PyJWS().decode_complete(token, key=jwk.key, algorithms=[alg])
    except jwt.PyJWTError:
        raise WorkloadTokenError("signature does not verify") from None


def _check_claims(config: IssuerConfig, claims: dict[str, Any], now: datetime) -> None:
    if claims.get("iss") != config.issuer:  # selected by iss; checked again after verification
        raise WorkloadTokenError("unknown issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not set(config.audiences).intersection(
        a for a in audiences if isinstance(a, str)
    ):
        raise WorkloadTokenError("audience not accepted")
    if printable(claims.get("sub"), limit=2048) is None:  # SPIFFE IDs run to 2048 bytes
        raise WorkloadTokenError("sub missing or malformed")
    at, leeway = now.timestamp(), config.leeway.total_seconds()
    exp = _numeric(claims, "exp", required=True)
    nbf, iat = _numeric(claims, "nbf"), _numeric(claims, "iat")
    if exp is None or at >= exp + leeway:
        raise WorkloadTokenError("token expired")
    if nbf is not None and at < nbf - leeway:
        raise WorkloadTokenError("token not yet valid")
    if iat is not None and at < iat - leeway:
        raise WorkloadTokenError("token issued in the future")
    start = iat if iat is not None else nbf if nbf is not None else at
    if exp - start > config.max_lifetime.total_seconds():
        raise WorkloadTokenError("token lifetime exceeds the issuer's maximum")


def _numeric(claims: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkloadTokenError(f"{name} missing or not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise WorkloadTokenError(f"{name} missing or not a number")
    # Compared before any conversion: float() of a 400-digit integer raises OverflowError.
    if not 0 <= value < 253402300800:  # year 10000: beyond, datetime cannot represent it
        raise WorkloadTokenError(f"{name} out of range")
    return float(value)


def expiry(claims: Mapping[str, Any]) -> datetime:
    """The verified ``exp`` claim as a datetime."""
    return datetime.fromtimestamp(claims["exp"], UTC)


def printable(value: object, limit: int = _MAX_LABEL_VALUE) -> str | None:
    """A non-empty printable string of at most ``limit`` characters, else None."""
    if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable():
        return value
    return None
