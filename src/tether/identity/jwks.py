"""Signing keys of external token issuers (Kubernetes, GitHub Actions, SPIRE, OIDC), as a JWKS.

An adapter: it reads a JWKS document from a file or an HTTPS URL and caches the parsed keys.

Security decisions:

* **Keys come only from the configured source**, never from a token (``jku``, ``x5u``, ``jwk``
  and ``x5c`` headers are ignored by design: a key named by the token proves nothing).
* **HTTPS only**, except to a loopback address (tests, a local sidecar). Redirects are not
  followed, a response is capped at ``MAX_JWKS_BYTES`` and a fetch at 5 seconds in all (not
  per read: a slow endpoint must not hold the issuer's tokens waiting).
* **A document publishing a private key is refused whole.** An issuer that leaked its private
  key cannot vouch for anything, so no key of it is used until it publishes a clean set.
  Individual keys Tether cannot use (``use: enc``, unknown ``kty``, RSA under 2048 bits, a point
  off its curve, an ``alg`` that does not fit the key) are skipped; a ``kid`` that appears twice
  is dropped, since choosing one of two keys would be a guess.
* **Refresh**: the set is re-fetched once ``ttl`` has passed, and early when a token names an
  unknown ``kid`` (the issuer rotated). Fetches are at least ``min_refresh_interval`` apart, so a
  flood of tokens with made-up kids costs the issuer one request per interval, not one per token;
  concurrent callers share one fetch. A successful fetch replaces the whole set, so a key the
  issuer withdrew stops verifying within ``ttl``, also after the clock stepped back (a set
  fetched "in the future" is fetched again).
* **When the issuer is unreachable**, the last good set keeps serving for ``max_stale`` past its
  ``ttl`` (an issuer outage should not stop every agent at once), then fails closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tether.httpbody import ACCEPT_IDENTITY, BodyError, read_bounded
from tether.identity.jose import b64url_decode, json_object

Clock = Callable[[], datetime]
Fetcher = Callable[[], Awaitable[bytes]]
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MAX_JWKS_BYTES: Final = 1 << 20
MAX_KEYS: Final = 64
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES: Final[Mapping[str, ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
#: The JWS algorithms Tether verifies for external issuers, and the key each one needs.
#: HMAC (``HS*``) and ``none`` are not here and never will be: the "key" of an external issuer is
#: public, so an HMAC "signature" with it proves nothing.
ALGORITHM_KEYS: Final[Mapping[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}

log = logging.getLogger(__name__)


class JwksError(Exception):
    """The issuer's key set cannot be had or used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKeyId(JwksError):
    """No key with this ``kid`` in the issuer's current set (after any allowed refresh)."""


@dataclass(frozen=True, slots=True)
class Jwk:
    """One usable public key of an issuer."""

    kid: str
    kty: str
    crv: str | None
    alg: str | None
    key: PublicKey

    def fits(self, alg: str) -> bool:
        """Whether this key may verify an ``alg`` signature (type, curve and own ``alg``)."""
        if alg not in ALGORITHM_KEYS or self.alg not in (None, alg):
            return False
        return ALGORITHM_KEYS[alg] == (self.kty, self.crv)


def parse_jwks(data: bytes) -> dict[str, Jwk]:
    """The usable keys of a JWKS document, by ``kid``; ``JwksError`` if the document is bad."""
    try:
        document = json_object(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwksError(f"JWKS is not a JSON object: {exc}") from None
    entries = document.get("keys")
    if not isinstance(entries, list) or len(entries) > MAX_KEYS:
        raise JwksError(f"JWKS must hold a 'keys' list of at most {MAX_KEYS} keys")
    keys: dict[str, Jwk] = {}
    duplicates: set[str] = set()
    for entry in entries:
        if isinstance(entry, dict) and PRIVATE_MEMBERS.intersection(entry):
            raise JwksError("JWKS publishes private key material: refusing every key in it")
        jwk = _parse_key(entry)
        if jwk is None:
            continue
        if jwk.kid in keys or jwk.kid in duplicates:
            duplicates.add(jwk.kid)
            keys.pop(jwk.kid, None)
            continue
        keys[jwk.kid] = jwk
    if not keys:
        raise JwksError("JWKS holds no usable signing key")
    return keys


def _parse_key(entry: object) -> Jwk | None:
    """One JWK, or None (logged) when Tether cannot or must not use it."""
    if not isinstance(entry, dict):
        return None
    kid, kty, alg, crv = (entry.get(m) for m in ("kid", "kty", "alg", "crv"))
    if not (isinstance(kid, str) and 0 < len(kid) <= 256) or not isinstance(kty, str):
        log.warning("JWKS key without a usable kid or kty skipped")
        return None
    key_ops = entry.get("key_ops", ["verify"])
    if entry.get("use", "sig") != "sig" or not isinstance(key_ops, list) or "verify" not in key_ops:
        return None
    try:
        key = _public_key(kty, crv, entry)
    except (ValueError, TypeError) as exc:
        log.warning("JWKS key %r skipped: %s", kid, exc)
        return None
    curve = crv if kty in ("EC", "OKP") and isinstance(crv, str) else None
    jwk = Jwk(kid, kty, curve, alg if isinstance(alg, str) else None, key)
    if alg is not None and not jwk.fits(jwk.alg or ""):
        log.warning("JWKS key %r skipped: alg does not fit the key", kid)
        return None
    return jwk


def _public_key(kty: str, crv: object, entry: dict[str, Any]) -> PublicKey:
    if kty == "RSA":
        n, e = _member(entry, "n"), _member(entry, "e")
        if len(n) > MAX_RSA_BITS // 8 + 1 or len(e) > 8:
            raise ValueError("RSA key too large")
        key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits")
        return key
    if kty == "EC" and isinstance(crv, str) and crv in _CURVES:
        curve = _CURVES[crv]
        x, y = _member(entry, "x"), _member(entry, "y")
        size = (curve.key_size + 7) // 8
        if len(x) != size or len(y) != size:
            raise ValueError("EC coordinates of the wrong size")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
    if kty == "OKP" and crv == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_member(entry, "x"))
    raise ValueError(f"unsupported key type {kty}")


def _member(entry: dict[str, Any], name: str) -> bytes:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"member {name} missing")
    return b64url_decode(value.rstrip("="))


@dataclass(frozen=True, slots=True)
class JwksSource:
    """Where an issuer's JWKS lives: exactly one of ``url`` and ``path``."""

    url: str | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.path is None):
            raise ValueError("a JWKS source is exactly one of a url and a path")
        if self.url is not None:
            _check_url(self.url)

    def fetcher(self, client: httpx.AsyncClient | None = None) -> Fetcher:
        """The function that reads this source's current document."""
        if self.path is not None:
            return file_fetcher(self.path)
        assert self.url is not None
        return http_fetcher(self.url, client)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise ValueError("a JWKS url must be https (plain http only to a loopback address)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def file_fetcher(path: Path) -> Fetcher:
    """Read the JWKS from ``path`` (e.g. the Kubernetes service-account issuer keys, exported)."""

    async def fetch() -> bytes:
        def read() -> bytes:
            with path.open("rb") as handle:
                return handle.read(MAX_JWKS_BYTES + 1)

        try:
            data = await asyncio.to_thread(read)
        except OSError as exc:
            raise JwksError(f"cannot read JWKS file: {exc.strerror}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise JwksError("JWKS file too large")
        return data

    return fetch


def http_fetcher(
    url: str, client: httpx.AsyncClient | None = None, timeout: float = 5.0
) -> Fetcher:
    """GET ``url`` with ``client`` (one per fetch when None); no redirects, size-capped.

    ``timeout`` bounds the whole fetch, not each read: httpx's own timeouts are per
    operation, so an endpoint sending a byte a second would hold the fetch, and every
    token of the issuer waiting on the cache's lock, for as long as it likes.
    """
    _check_url(url)

    async def fetch() -> bytes:
        try:
            async with asyncio.timeout(timeout):
                if client is not None:
                    return await _get(client, url, timeout)
                async with httpx.AsyncClient() as own:
                    return await _get(own, url, timeout)
        except httpx.HTTPError as exc:
            raise JwksError(f"JWKS fetch failed: {type(exc).__name__}") from None
        except TimeoutError:
            raise JwksError(f"JWKS fetch failed: no complete answer within {timeout:g}s") from None

    return fetch


async def _get(client: httpx.AsyncClient, url: str, timeout: float) -> bytes:
    headers = {"accept": "application/jwk-set+json, application/json", **ACCEPT_IDENTITY}
    request = client.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=False)
    async with request as response:
        if response.status_code != 200:
            raise JwksError(f"JWKS fetch answered HTTP {response.status_code}")
        try:  # capped after decoding, which httpx would do whole first (tether.httpbody)
            return await read_bounded(response, MAX_JWKS_BYTES)
        except BodyError as error:
            raise JwksError(f"JWKS response {error}") from None


class JwksCache:
    """An issuer's keys, cached; see the module docstring for the refresh rules."""

    def __init__(
        self,
        fetch: Fetcher,
        *,
        clock: Clock,
        ttl: timedelta = timedelta(minutes=5),
        min_refresh_interval: timedelta = timedelta(seconds=30),
        max_stale: timedelta = timedelta(minutes=15),
    ) -> None:
        self._fetch, self._clock = fetch, clock
        self._ttl, self._interval, self._max_stale = ttl, min_refresh_interval, max_stale
        self._keys: dict[str, Jwk] = {}
        self._fetched_at: datetime | None = None  # last successful fetch
        self._attempted_at: datetime | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()

    async def get_key(self, kid: str) -> Jwk:
        """The key named ``kid``; ``UnknownKeyId`` or ``JwksError`` when there is none."""
        now = self._clock()
        if self._fresh(now) and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            now = self._clock()
            if not self._fresh(now) or kid not in self._keys:
                await self._refresh(now)
            if not self._usable(now):
                raise JwksError("issuer keys unavailable")
            if kid not in self._keys:
                raise UnknownKeyId("unknown signing key")
            return self._keys[kid]

    # Ages are checked from both ends: after the clock stepped back (an NTP step, a VM
    # resumed) an age is negative, and a negative age is under any bound; the set would stay
    # fresh, a key the issuer withdrew would keep verifying and no refresh would be tried.

    def _fresh(self, now: datetime) -> bool:
        return _within(self._fetched_at, now, self._ttl)

    def _usable(self, now: datetime) -> bool:
        return _within(self._fetched_at, now, self._ttl + self._max_stale)

    async def _refresh(self, now: datetime) -> None:
        """Fetch unless the last attempt is too recent; keep the old set on failure."""
        if _within(self._attempted_at, now, self._interval):
            return
        self._attempted_at = now
        try:
            keys = parse_jwks(await self._fetch())
        except JwksError as exc:
            log.warning("JWKS refresh failed: %s", exc.reason)
            return
        self._keys, self._fetched_at = keys, now


def _within(since: datetime | None, now: datetime, bound: timedelta) -> bool:
    """Whether ``now`` is at most ``bound`` after ``since`` (never when it is before it)."""
    return since is not None and timedelta(0) <= now - since < bound
